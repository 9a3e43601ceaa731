/**
 * A dependency-free JavaScript client (Node 20+, global fetch) for the Higgs Audio TTS worker on
 * RunPod serverless, or the SDK's local `--rp_serve_api` server, or `higgs-tts serve`.
 *
 *   import { HiggsTTSClient, saveAudio } from "./higgs-tts.mjs";
 *   const client = new HiggsTTSClient({ endpointUrl: "https://api.runpod.ai/v2/ENDPOINT_ID", apiKey: "..." });
 *   const result = await client.generateAudio("Hello!", "belinda", { scene_prompt: "Audio is recorded from a quiet room." });
 *   await saveAudio(result, "hello.wav");
 *
 * The job contract: POST /run -> {id, status}; GET /status/{id} (the SDK's local server only takes
 * POST there, so a 405 switches to POST); POST /runsync may answer IN_QUEUE / IN_PROGRESS for long
 * jobs, then /status is polled. A streaming worker (STREAMING=1) returns outputs as a list whose
 * last item is the response; jobOutput() reads both shapes.
 */

import { writeFile } from "node:fs/promises";

const PENDING = new Set(["IN_QUEUE", "IN_PROGRESS"]);
const MODES = ["sync", "async"];

/** The job failed or the endpoint answered with an error. `output` holds what the worker returned with
 * the error ({} when nothing); `status` is the job's status ("FAILED", "TIMED_OUT", ...) or, for an
 * HTTP error, the HTTP status code (a number); null when the request never got an answer. */
export class HiggsTTSError extends Error {
  constructor(message, { output = null, status = null, cause = undefined } = {}) {
    super(message, cause === undefined ? undefined : { cause });
    this.name = "HiggsTTSError";
    this.output = output ?? {};
    this.status = status;
  }
}

/** A job's response: a streaming worker returns the list of what the job yielded; its last item is it.
 * A response too large for one stream item (1 MB) comes as `audio_part` items, then the response
 * with `audio_parts`: the parts are joined back. */
export function jobOutput(output) {
  if (Array.isArray(output)) {
    const items = output;
    output = items.length ? items[items.length - 1] : null;
    if (output && typeof output === "object" && output.audio_parts) {
      const parts = items.filter((i) => i && i.type === "audio_part").map((i) => i.audio_base64);
      output = { ...output, audio_base64: parts.join("") };
    }
  }
  return output !== null && typeof output === "object" && !Array.isArray(output) ? output : {};
}

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

export class HiggsTTSClient {
  /**
   * @param {object} [options]
   * @param {string} [options.endpointUrl] https://api.runpod.ai/v2/ENDPOINT_ID (default: $ENDPOINT_URL)
   * @param {string} [options.apiKey] RunPod API key (default: $RUNPOD_API_KEY)
   * @param {number} [options.timeoutMs] per request, and for polling a job (default 600000)
   * @param {number} [options.pollMs] between /status polls (default 1000)
   * @param {"sync"|"async"} [options.mode] what generateAudio uses: /runsync or /run + polling
   */
  constructor({ endpointUrl, apiKey, timeoutMs = 600_000, pollMs = 1000, mode = "sync" } = {}) {
    const env = globalThis.process?.env ?? {};
    const url = endpointUrl || env.ENDPOINT_URL || env.RUNPOD_ENDPOINT_URL;
    if (!url) {
      throw new HiggsTTSError("endpointUrl (or ENDPOINT_URL) is required, e.g. https://api.runpod.ai/v2/ENDPOINT_ID");
    }
    if (!MODES.includes(mode)) throw new HiggsTTSError(`mode must be one of ${MODES.join(", ")}, not ${mode}`);
    this.endpointUrl = url.replace(/\/+$/, "");
    this.apiKey = apiKey ?? env.RUNPOD_API_KEY ?? null;
    this.timeoutMs = timeoutMs;
    this.pollMs = pollMs;
    this.mode = mode;
    this._postPolls = false; // set once GET /status answers 405 (the SDK's local server)
  }

  async _request(method, path, body) {
    const headers = { Accept: "application/json" };
    if (body !== undefined) headers["Content-Type"] = "application/json";
    if (this.apiKey) headers.Authorization = `Bearer ${this.apiKey}`;
    let response;
    try {
      response = await fetch(this.endpointUrl + path, {
        method,
        headers,
        body: body === undefined ? undefined : JSON.stringify(body),
        signal: AbortSignal.timeout(this.timeoutMs),
      });
    } catch (error) {
      if (error?.name === "TimeoutError" || error?.name === "AbortError") {
        throw new HiggsTTSError(`${method} ${path}: no answer within ${this.timeoutMs / 1000} s`, { cause: error });
      }
      const reason = error?.cause?.code || error?.cause?.message || error?.message || String(error);
      throw new HiggsTTSError(`cannot reach ${this.endpointUrl}: ${reason}`, { cause: error });
    }
    const text = await response.text();
    if (!response.ok) {
      throw new HiggsTTSError(`HTTP ${response.status} from ${path}: ${text.slice(0, 500)}`, { status: response.status });
    }
    try {
      return JSON.parse(text);
    } catch {
      throw new HiggsTTSError(`${path} answered with something other than JSON: ${text.slice(0, 200)}`, {
        status: response.status,
      });
    }
  }

  async _poll(kind, id) {
    const path = `/${kind}/${encodeURIComponent(id)}`;
    if (!this._postPolls) {
      try {
        return await this._request("GET", path);
      } catch (error) {
        if (!(error instanceof HiggsTTSError) || error.status !== 405) throw error;
        this._postPolls = true;
      }
    }
    return this._request("POST", path);
  }

  async _finish(reply, pollMs) {
    const deadline = Date.now() + this.timeoutMs;
    while (PENDING.has(reply?.status) && Date.now() < deadline) {
      await sleep(pollMs);
      reply = await this.status(reply.id);
    }
    const output = jobOutput(reply?.output);
    const status = reply?.status;
    if (status === "FAILED" || output.success === false) {
      throw new HiggsTTSError(String(reply?.error || output.error || "job failed"), {
        output,
        status: status || "FAILED",
      });
    }
    if (status !== "COMPLETED") {
      throw new HiggsTTSError(`job did not finish: status ${JSON.stringify(status)}`, { output, status });
    }
    return output;
  }

  /** One job through /runsync (polling /status if RunPod answers before it is done); its `output`. */
  async runSync(input, { pollMs = this.pollMs } = {}) {
    return this._finish(await this._request("POST", "/runsync", { input }), pollMs);
  }

  /** Queue one job through /run; resolves to its id. */
  async run(input) {
    const reply = await this._request("POST", "/run", { input });
    if (!reply?.id) {
      throw new HiggsTTSError(`/run returned no job id: ${JSON.stringify(reply).slice(0, 300)}`, {
        status: reply?.status ?? null,
      });
    }
    return reply.id;
  }

  /** The job's status reply as RunPod sends it: {id, status, output | error}. */
  async status(id) {
    return this._poll("status", id);
  }

  /** One job through /run, polling /status until it is done; its `output` (errors as runSync). */
  async runAsync(input, { pollMs = this.pollMs } = {}) {
    return this._finish({ id: await this.run(input), status: "IN_QUEUE" }, pollMs);
  }

  /**
   * Speech for `text`. `options`: scene_prompt, s3_bucket and any other request field (seed,
   * max_new_tokens, output_format, ...); `async: true` (or mode "async") uses /run + polling.
   */
  async generateAudio(text, voice = null, options = {}) {
    const { async: useAsync, mode, ...fields } = options ?? {};
    const job = { transcript: text, ...fields };
    if (voice !== null && voice !== undefined) job.ref_audio = voice;
    for (const key of ["scene_prompt", "s3_bucket"]) if (job[key] === null || job[key] === undefined) delete job[key];
    const chosen = mode ?? (useAsync === undefined ? this.mode : useAsync ? "async" : "sync");
    if (!MODES.includes(chosen)) throw new HiggsTTSError(`mode must be one of ${MODES.join(", ")}, not ${chosen}`);
    return chosen === "async" ? this.runAsync(job) : this.runSync(job);
  }

  async health() {
    return this.runSync({ action: "health" });
  }

  /** [{name, kind, description}] */
  async listVoices() {
    return (await this.runSync({ action: "list_voices" })).voices;
  }

  /** Store a voice on the worker: `audioBase64` is the clip (any common format), `transcript` its words. */
  async addVoice(name, audioBase64, transcript, overwrite = false) {
    return this.runSync({
      action: "add_voice",
      voice_name: name,
      ref_audio_base64: audioBase64,
      ref_audio_transcript: transcript,
      overwrite,
    });
  }

  /**
   * Items of a streaming job (worker with STREAMING=1) as they arrive: audio items
   * {type: "audio", seq, audio_base64 (16-bit LE mono PCM), sample_rate, ...}, then the final response.
   */
  async *stream(input, { pollMs = 200 } = {}) {
    const id = await this.run({ ...input, stream: true });
    const deadline = Date.now() + this.timeoutMs;
    for (;;) {
      const reply = await this._poll("stream", id);
      for (const entry of reply?.stream ?? []) {
        const item = entry !== null && typeof entry === "object" ? entry.output : null;
        if (item === null || typeof item !== "object" || item.success === false) {
          throw new HiggsTTSError(String(item?.error || "stream failed"), { output: item, status: "FAILED" });
        }
        yield item;
      }
      const status = reply?.status;
      if (status === "COMPLETED") return;
      if (!PENDING.has(status) || reply?.error) {
        throw new HiggsTTSError(String(reply?.error || `stream ended with status ${JSON.stringify(status)}`), {
          status: status ?? null,
        });
      }
      if (Date.now() > deadline) {
        throw new HiggsTTSError(`stream did not finish within ${this.timeoutMs / 1000} s`, { status });
      }
      await sleep(pollMs);
    }
  }

  saveAudio(output, path) {
    return saveAudio(output, path);
  }
}

/** The inline audio of a result as a Buffer (throws when it was uploaded to S3 instead). */
export function audioBytes(output) {
  if (typeof output?.audio_base64 !== "string") {
    throw new HiggsTTSError(`the result has no inline audio; it was uploaded to ${output?.audio_url}`, { output });
  }
  return Buffer.from(output.audio_base64, "base64");
}

/** Write a result's inline audio to `path`; resolves to `path` (for S3 results, fetch `presigned_url`). */
export async function saveAudio(output, path) {
  await writeFile(path, audioBytes(output));
  return path;
}

/** A WAV file (Buffer) from 16-bit little-endian mono PCM, e.g. the joined audio items of a stream. */
export function pcmToWav(pcm, sampleRate = 24000) {
  const data = Buffer.isBuffer(pcm) ? pcm : Buffer.concat(pcm.map((part) => Buffer.from(part)));
  const header = Buffer.alloc(44);
  header.write("RIFF", 0, "ascii");
  header.writeUInt32LE(36 + data.length, 4);
  header.write("WAVEfmt ", 8, "ascii");
  header.writeUInt32LE(16, 16); // fmt chunk size
  header.writeUInt16LE(1, 20); // PCM
  header.writeUInt16LE(1, 22); // mono
  header.writeUInt32LE(sampleRate, 24);
  header.writeUInt32LE(sampleRate * 2, 28); // bytes per second
  header.writeUInt16LE(2, 32); // block align
  header.writeUInt16LE(16, 34); // bits per sample
  header.write("data", 36, "ascii");
  header.writeUInt32LE(data.length, 40);
  return Buffer.concat([header, data]);
}

/** The one-call form, configured by ENDPOINT_URL and RUNPOD_API_KEY. */
export async function generateAudio(text, voice = null, options = {}) {
  return new HiggsTTSClient().generateAudio(text, voice, options);
}
