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

// -- live speech: WS /v1/audio/speech/stream on `higgs-tts serve` ------------------------------------

/**
 * Just enough of RFC 6455 for a client on Node 20/21, which have no global WebSocket (Node 22+,
 * browsers, Deno and Bun have one, and LiveSpeech uses theirs): the browser API's subset that
 * LiveSpeech needs (onopen, onmessage, onclose, onerror, send, close), over node:net / node:tls.
 */
export class NodeWebSocket {
  constructor(url, { headers = {} } = {}) {
    this.readyState = 0;
    this.onopen = this.onmessage = this.onclose = this.onerror = null;
    this._open(new URL(url), headers).catch((error) => this._fail(error));
  }

  async _open(url, headers) {
    const [{ createHash, randomBytes }, net, tls] = await Promise.all([
      import("node:crypto"), import("node:net"), import("node:tls")]);
    const secure = url.protocol === "wss:" || url.protocol === "https:";
    const port = Number(url.port) || (secure ? 443 : 80);
    const key = randomBytes(16).toString("base64");
    this._mask = () => randomBytes(4);
    this._buffer = Buffer.alloc(0);
    this._parts = [];
    const socket = secure ? tls.connect({ host: url.hostname, port, servername: url.hostname })
      : net.connect({ host: url.hostname, port });
    this._socket = socket;
    socket.on("error", (error) => this._fail(error));
    socket.on("close", () => this._closed(1006));
    await new Promise((resolve) => socket.once(secure ? "secureConnect" : "connect", resolve));
    const lines = [`GET ${url.pathname}${url.search} HTTP/1.1`, `Host: ${url.host}`, "Upgrade: websocket",
      "Connection: Upgrade", `Sec-WebSocket-Key: ${key}`, "Sec-WebSocket-Version: 13",
      ...Object.entries(headers).map(([k, v]) => `${k}: ${v}`)];
    socket.write(lines.join("\r\n") + "\r\n\r\n");
    const accept = createHash("sha1").update(key + "258EAFA5-E914-47DA-95CA-C5AB0DC85B11").digest("base64");
    let handshaken = false;
    socket.on("data", (data) => {
      this._buffer = Buffer.concat([this._buffer, data]);
      if (!handshaken) {
        const end = this._buffer.indexOf("\r\n\r\n");
        if (end < 0) return;
        const head = this._buffer.subarray(0, end).toString("latin1").split("\r\n");
        this._buffer = this._buffer.subarray(end + 4);
        const fields = Object.fromEntries(head.slice(1).map((l) => [l.split(":")[0].trim().toLowerCase(),
          l.slice(l.indexOf(":") + 1).trim()]));
        if (!/^HTTP\/1\.1 101 /.test(head[0]) || fields["sec-websocket-accept"] !== accept) {
          this._fail(new Error(`no WebSocket at ${url.href} (${head[0]})`));
          socket.destroy();
          return;
        }
        handshaken = true;
        this.readyState = 1;
        this.onopen?.({});
      }
      this._frames();
    });
  }

  _frames() {
    for (;;) {
      const b = this._buffer;
      if (b.length < 2) return;
      let size = b[1] & 0x7f;
      let offset = 2;
      if (size === 126) {
        if (b.length < 4) return;
        size = b.readUInt16BE(2);
        offset = 4;
      } else if (size === 127) {
        if (b.length < 10) return;
        size = Number(b.readBigUInt64BE(2));
        offset = 10;
      }
      if (b.length < offset + size) return;
      const payload = b.subarray(offset, offset + size);
      this._buffer = b.subarray(offset + size);
      const opcode = b[0] & 0x0f;
      if (opcode === 0x8) {
        this._send(0x8, payload.subarray(0, 2));
        this._socket.end();
        this._closed(payload.length >= 2 ? payload.readUInt16BE(0) : 1005);
        return;
      }
      if (opcode === 0x9) this._send(0xa, payload);
      else if (opcode <= 0x2) {
        this._parts.push(Buffer.from(payload));
        if (b[0] & 0x80) {
          const data = Buffer.concat(this._parts).toString("utf8");
          this._parts = [];
          this.onmessage?.({ data });
        }
      }
    }
  }

  _send(opcode, payload) {
    const mask = this._mask();
    const size = payload.length;
    const head = size < 126 ? Buffer.from([0x80 | opcode, 0x80 | size])
      : size < 65536 ? Buffer.from([0x80 | opcode, 0x80 | 126, size >> 8, size & 0xff])
        : Buffer.concat([Buffer.from([0x80 | opcode, 0x80 | 127]), (() => {
          const n = Buffer.alloc(8); n.writeBigUInt64BE(BigInt(size)); return n;
        })()]);
    const masked = Buffer.from(payload);
    for (let i = 0; i < size; i++) masked[i] ^= mask[i & 3];
    if (!this._socket.destroyed) this._socket.write(Buffer.concat([head, mask, masked]));
  }

  send(text) {
    if (this.readyState !== 1) throw new Error("the WebSocket is not open");
    this._send(0x1, Buffer.from(text, "utf8"));
  }

  close(code = 1000) {
    if (this.readyState === 1) {
      this.readyState = 2;
      const body = Buffer.alloc(2);
      body.writeUInt16BE(code);
      this._send(0x8, body);
    }
  }

  _fail(error) {
    this.onerror?.({ error, message: error.message });
    this._closed(1006);
  }

  _closed(code) {
    if (this.readyState === 3) return;
    this.readyState = 3;
    this._socket?.destroy();
    this.onclose?.({ code });
  }
}

/**
 * Text in as it is written, speech out phrase by phrase (`higgs-tts serve`, docs/api.md, "Live speech").
 *
 *   const live = await LiveSpeech.open("http://127.0.0.1:8000", { apiKey, voice: "belinda" });
 *   for await (const event of live.speak(llmTokens())) {   // sends the pieces, then close
 *     if (event.type === "audio") play(event.pcm);         // 16-bit mono PCM at 24 kHz (the default)
 *   }
 *
 * Config fields (voice, response_format, instructions, seed, ...) go in the config message. The
 * key goes as `?api_key=` (a browser's WebSocket cannot send headers; NodeWebSocket sends it as a
 * header). `WebSocket` picks the implementation (default: the global one, else NodeWebSocket).
 */
export class LiveSpeech {
  static async open(serverUrl, { apiKey = null, WebSocket = globalThis.WebSocket, timeoutMs = 120_000,
    ...config } = {}) {
    const base = serverUrl.replace(/\/+$/, "").replace(/^http/, "ws") + "/v1/audio/speech/stream";
    const Impl = WebSocket ?? NodeWebSocket;
    const native = Impl !== NodeWebSocket;
    const ws = native ? new Impl(apiKey ? `${base}?api_key=${encodeURIComponent(apiKey)}` : base)
      : new Impl(base, { headers: apiKey ? { Authorization: `Bearer ${apiKey}` } : {} });
    const live = new LiveSpeech(ws, timeoutMs);
    await live._opened;
    try {
      live.send({ type: "config", ...config });
    } catch {
      // closed at once (a wrong key): the server's reason is the next message
    }
    live.ready = await live.receive();
    if (live.ready.type !== "ready") {
      ws.close();
      throw new HiggsTTSError(`live session refused: ${live.ready.message}`,
        { output: live.ready, status: live.ready.code ?? null });
    }
    return live;
  }

  constructor(ws, timeoutMs) {
    this.ws = ws;
    this.timeoutMs = timeoutMs;
    this._inbox = [];
    this._waiting = [];
    this._opened = new Promise((resolve, reject) => {
      ws.onopen = resolve;
      ws.onerror = (event) => reject(new HiggsTTSError(`WebSocket error: ${event.message ?? "connection failed"}`));
    });
    ws.onmessage = (event) => this._deliver(JSON.parse(typeof event.data === "string" ? event.data
      : Buffer.from(event.data).toString("utf8")));
    ws.onclose = () => this._deliver({ type: "closed" });
  }

  _deliver(message) {
    if (message.type === "closed") this._closed = true;
    if (message.type === "audio") message.pcm = Buffer.from(message.audio, "base64");
    const waiter = this._waiting.shift();
    if (waiter) waiter(message);
    else this._inbox.push(message);
  }

  /** The next message from the server ({type: "closed"} once the socket is gone). */
  receive() {
    if (this._inbox.length) return Promise.resolve(this._inbox.shift());
    if (this._closed) return Promise.resolve({ type: "closed" });
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => reject(new HiggsTTSError(`no message in ${this.timeoutMs} ms`)), this.timeoutMs);
      this._waiting.push((message) => { clearTimeout(timer); resolve(message); });
    });
  }

  send(message) { this.ws.send(JSON.stringify(message)); }
  text(text) { this.send({ type: "text", text }); }
  flush() { this.send({ type: "flush" }); }
  cancel() { this.send({ type: "cancel" }); }
  /** Speak what is buffered; the server then sends `done` and ends the session. */
  close() { this.send({ type: "close" }); }
  /** Drop the connection (the server stops generating and frees the engine slot). */
  disconnect() { this.ws.close(); }

  /** Messages until `done` (included); throws if the session ends without it. */
  async *events() {
    for (;;) {
      const event = await this.receive();
      if (event.type === "closed") throw new HiggsTTSError("the session ended before done");
      yield event;
      if (event.type === "done") return;
    }
  }

  /** Send `pieces` (an iterable or async iterable of text deltas), then close; yields the messages. */
  async *speak(pieces, { wordsPerSecond = null } = {}) {
    const feeding = (async () => {
      for await (const piece of pieces) {
        this.text(piece);
        if (wordsPerSecond) await sleep((Math.max(1, piece.trim().split(/\s+/).length) / wordsPerSecond) * 1000);
      }
      this.close();
    })();
    let failed = null;
    feeding.catch((error) => { failed = error; });
    yield* this.events();
    await feeding.catch(() => {});
    if (failed) throw failed;
  }
}

/** All the audio of `pieces` spoken live: {pcm: Buffer, done}. Error messages throw HiggsTTSError. */
export async function speakLive(serverUrl, pieces, options = {}) {
  const live = await LiveSpeech.open(serverUrl, options);
  const audio = [];
  try {
    for await (const event of live.speak(pieces)) {
      if (event.type === "audio") audio.push(event.pcm);
      else if (event.type === "error") {
        throw new HiggsTTSError(`live session: ${event.message}`, { output: event, status: event.code });
      } else if (event.type === "done") return { pcm: Buffer.concat(audio), done: event };
    }
  } finally {
    live.disconnect();
  }
  throw new HiggsTTSError("the session ended before done");
}
