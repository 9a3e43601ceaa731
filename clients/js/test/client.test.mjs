// The JavaScript client against running servers, each suite skipped without its URL:
//   HIGGS_TTS_URL         a worker without streaming (`python handler.py --rp_serve_api`)
//   HIGGS_TTS_STREAM_URL  a worker with STREAMING=1
//   HIGGS_TTS_SERVE_URL   `higgs-tts serve` (GET polling, as on RunPod), with HIGGS_TTS_API_KEY its API_KEY
//   HIGGS_TTS_VOICE_CLIP  a voice clip for addVoice
import assert from "node:assert/strict";
import { readFile, mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, before, describe, test } from "node:test";

import {
  HiggsTTSClient,
  HiggsTTSError,
  audioBytes,
  generateAudio,
  jobOutput,
  pcmToWav,
  saveAudio,
} from "../higgs-tts.mjs";

// Job options that keep the tiny test checkpoint fast.
const QUICK = { max_new_tokens: 40, seed: 5 };

/** {sampleRate, channels, bitsPerSample, dataBytes} of a RIFF/WAVE buffer, walking its chunks. */
function readWav(buffer) {
  if (buffer.toString("ascii", 0, 4) !== "RIFF" || buffer.toString("ascii", 8, 12) !== "WAVE") {
    throw new Error(`not a WAV file: ${JSON.stringify(buffer.toString("latin1", 0, 12))}`);
  }
  const info = {};
  for (let offset = 12; offset + 8 <= buffer.length; ) {
    const id = buffer.toString("ascii", offset, offset + 4);
    const size = buffer.readUInt32LE(offset + 4);
    if (id === "fmt ") {
      info.format = buffer.readUInt16LE(offset + 8);
      info.channels = buffer.readUInt16LE(offset + 10);
      info.sampleRate = buffer.readUInt32LE(offset + 12);
      info.bitsPerSample = buffer.readUInt16LE(offset + 22);
    } else if (id === "data") {
      info.dataBytes = Math.min(size, buffer.length - offset - 8);
      break;
    }
    offset += 8 + size + (size % 2);
  }
  return info;
}

/** Run `fn` with environment variables set (undefined: unset), then put them back. */
async function withEnv(changes, fn) {
  const saved = Object.fromEntries(Object.keys(changes).map((key) => [key, process.env[key]]));
  const apply = (values) => {
    for (const [key, value] of Object.entries(values)) {
      if (value === undefined) delete process.env[key];
      else process.env[key] = value;
    }
  };
  apply(changes);
  try {
    return await fn();
  } finally {
    apply(saved);
  }
}

const url = process.env.HIGGS_TTS_URL;
const streamUrl = process.env.HIGGS_TTS_STREAM_URL;
const serveUrl = process.env.HIGGS_TTS_SERVE_URL;

describe("whole-response worker", { skip: !url && "HIGGS_TTS_URL is not set" }, () => {
  let client;
  let dir;
  before(async () => {
    client = new HiggsTTSClient({ endpointUrl: url, timeoutMs: 300_000, pollMs: 200 });
    dir = await mkdtemp(join(tmpdir(), "higgs-tts-js-"));
  });
  after(async () => {
    if (dir) await rm(dir, { recursive: true, force: true });
  });

  test("generateAudio() from the environment returns inline 24 kHz WAV", async () => {
    await withEnv({ ENDPOINT_URL: url, RUNPOD_ENDPOINT_URL: undefined, RUNPOD_API_KEY: undefined }, async () => {
      const result = await generateAudio("Hello from JavaScript.", null, QUICK);
      assert.equal(result.success, true);
      assert.equal(result.content_type, "audio/wav");
      const wav = readWav(audioBytes(result));
      assert.equal(wav.sampleRate, 24000);
      assert.equal(wav.channels, 1);
      assert.ok(wav.dataBytes > 0);
      assert.equal(result.sample_rate, 24000);
      const path = await saveAudio(result, join(dir, "hello.wav"));
      assert.deepEqual(readWav(await readFile(path)), wav);
    });
  });

  test("a clone voice with a scene prompt", async () => {
    const result = await client.generateAudio("Cloned from JavaScript.", "belinda", {
      scene_prompt: "Audio is recorded in a large cathedral.",
      s3_bucket: null,
      ...QUICK,
    });
    assert.equal(result.metadata.voice_clone, "belinda");
    assert.equal(result.metadata.generation_parameters.seed, QUICK.seed);
    assert.equal(readWav(audioBytes(result)).sampleRate, 24000);
  });

  test("runAsync polls /status (POST after the local server's 405) and matches runSync", async () => {
    const job = { transcript: "Queued, then polled.", ref_audio: "chadwick", ...QUICK };
    const queued = await client.runAsync(job);
    assert.equal(queued.success, true);
    assert.equal(client._postPolls, true);
    const direct = await client.runSync(job);
    assert.equal(queued.audio_base64, direct.audio_base64);
    const viaOption = await client.generateAudio("Queued, then polled.", "chadwick", { ...QUICK, async: true });
    assert.equal(viaOption.audio_base64, direct.audio_base64);
    const asyncClient = new HiggsTTSClient({ endpointUrl: url, mode: "async", pollMs: 100 });
    const viaMode = await asyncClient.generateAudio("Queued, then polled.", "chadwick", QUICK);
    assert.equal(viaMode.audio_base64, direct.audio_base64);
  });

  test("run() and status() by hand", async () => {
    const id = await client.run({ transcript: "By hand.", ...QUICK });
    assert.equal(typeof id, "string");
    let reply = await client.status(id);
    while (reply.status === "IN_QUEUE" || reply.status === "IN_PROGRESS") reply = await client.status(id);
    assert.equal(reply.status, "COMPLETED");
    assert.equal(jobOutput(reply.output).success, true);
  });

  test("health", async () => {
    const health = await client.health();
    assert.equal(health.status, "healthy");
    assert.ok(health.model_info.voice_prompts_available > 0);
  });

  test("listVoices", async () => {
    const voices = await client.listVoices();
    const names = new Set(voices.map((voice) => voice.name));
    for (const name of ["belinda", "chadwick", "elsa"]) assert.ok(names.has(name), `${name} missing`);
    assert.ok(voices.every((voice) => typeof voice.kind === "string"));
  });

  test("addVoice, then speech in that voice", { skip: !process.env.HIGGS_TTS_VOICE_CLIP && "no clip" }, async () => {
    const clip = (await readFile(process.env.HIGGS_TTS_VOICE_CLIP)).toString("base64");
    const added = await client.addVoice("js_guest", clip, "Maintaining your ability to learn.");
    assert.equal(added.voice.kind, "clone");
    await assert.rejects(client.addVoice("js_guest", clip, "Again."), HiggsTTSError);
    assert.equal((await client.addVoice("js_guest", clip, "Again.", true)).voice.name, "js_guest");
    const used = await client.generateAudio("In the added voice.", "js_guest", QUICK);
    assert.equal(used.metadata.voice_clone, "js_guest");
  });

  test("a bad request throws HiggsTTSError naming the field", async () => {
    const cases = [
      [() => client.generateAudio("x", "nobody", QUICK), "unknown voice 'nobody'"],
      [() => client.generateAudio("x", null, { temperature: 3 }), "temperature"],
      [() => client.generateAudio("x", null, { colour: "blue" }), "unknown field 'colour'"],
      [() => client.generateAudio("x", null, { max_new_tokens: 100000, async: true }), "max_new_tokens"],
      [() => client.runSync({ transcript: "" }), "transcript"],
    ];
    for (const [call, message] of cases) {
      await assert.rejects(call, (error) => {
        assert.ok(error instanceof HiggsTTSError, `not a HiggsTTSError: ${error}`);
        assert.ok(error.message.includes(message), `${JSON.stringify(error.message)} lacks ${message}`);
        assert.ok(!error.message.includes("Traceback"));
        assert.equal(error.status, "FAILED");
        assert.equal(typeof error.output, "object");
        return true;
      });
    }
  });

  test("streaming on a worker without STREAMING=1 fails", async () => {
    // RunPod fails the job with the worker's message (naming STREAMING=1); the SDK's local server
    // refuses /stream itself ("handler must be a generator").
    await assert.rejects(async () => {
      for await (const item of client.stream({ transcript: "x", ...QUICK })) assert.fail(`got ${item.type}`);
    }, (error) => error instanceof HiggsTTSError && /STREAMING=1|generator/.test(error.message));
  });

  test("HTTP and connection errors are HiggsTTSErrors", async () => {
    const wrongPath = new HiggsTTSClient({ endpointUrl: `${url}/no/such/path/` });
    await assert.rejects(wrongPath.health(), (error) => error instanceof HiggsTTSError && error.status === 404);
    const nobody = new HiggsTTSClient({ endpointUrl: "http://127.0.0.1:9", timeoutMs: 5000 });
    await assert.rejects(nobody.health(), (error) => error instanceof HiggsTTSError && /cannot reach/.test(error.message));
    await withEnv({ ENDPOINT_URL: undefined, RUNPOD_ENDPOINT_URL: undefined }, () => {
      assert.throws(() => new HiggsTTSClient(), (error) => error instanceof HiggsTTSError && /ENDPOINT_URL/.test(error.message));
    });
    await assert.rejects(saveAudio({ audio_url: "s3://b/k" }, join(dir, "none.wav")), /s3:\/\/b\/k/);
  });
});

describe("streaming worker", { skip: !streamUrl && "HIGGS_TTS_STREAM_URL is not set" }, () => {
  const client = () => new HiggsTTSClient({ endpointUrl: streamUrl, timeoutMs: 300_000, pollMs: 200 });

  test("stream() yields audio items, then the final response", async () => {
    const items = [];
    for await (const item of client().stream({ transcript: "Streamed to JavaScript.", ref_audio: "chadwick", ...QUICK })) {
      items.push(item);
    }
    const audio = items.slice(0, -1);
    const final = items.at(-1);
    assert.ok(audio.length > 0);
    assert.ok(audio.every((item) => item.type === "audio" && item.format === "pcm" && item.sample_rate === 24000));
    assert.deepEqual(items.map((item) => item.seq), items.map((_, index) => index));
    assert.equal(final.type, "final");
    assert.equal(final.success, true);
    assert.equal(final.audio_items, audio.length);
    assert.equal(final.audio_base64, undefined);
    const pcm = Buffer.concat(audio.map((item) => Buffer.from(item.audio_base64, "base64")));
    assert.ok(Math.abs(final.duration_seconds - pcm.length / 2 / 24000) < 1e-3);
    const wav = readWav(pcmToWav(pcm, audio[0].sample_rate));
    assert.equal(wav.sampleRate, 24000);
    assert.equal(wav.dataBytes, pcm.length);
  });

  test("a failing stream throws HiggsTTSError naming the field", async () => {
    await assert.rejects(async () => {
      for await (const item of client().stream({ transcript: "x", speed: 2.0 })) assert.fail(`got ${item.type}`);
    }, (error) => error instanceof HiggsTTSError && /speed/.test(error.message));
  });

  test("generateAudio, runAsync and health read the list-shaped outputs", async () => {
    const c = client();
    const result = await c.generateAudio("Whole, on a streaming worker.", "belinda", QUICK);
    assert.equal(result.success, true);
    assert.equal(readWav(audioBytes(result)).sampleRate, 24000);
    const queued = await c.generateAudio("Whole, on a streaming worker.", "belinda", { ...QUICK, async: true });
    assert.equal(queued.audio_base64, result.audio_base64);
    assert.equal((await c.health()).status, "healthy");
    await assert.rejects(c.generateAudio("x", "nobody", QUICK), /unknown voice 'nobody'/);
  });
});

describe("higgs-tts serve (GET polling, API key)", { skip: !serveUrl && "HIGGS_TTS_SERVE_URL is not set" }, () => {
  const apiKey = process.env.HIGGS_TTS_API_KEY;
  const client = () => new HiggsTTSClient({ endpointUrl: serveUrl, apiKey, timeoutMs: 300_000, pollMs: 100 });

  test("runAsync polls GET /status from IN_QUEUE to COMPLETED", async () => {
    const c = client();
    const id = await c.run({ transcript: "Queued on the HTTP server.", ...QUICK });
    const first = await c.status(id);
    assert.ok(["IN_QUEUE", "IN_PROGRESS", "COMPLETED"].includes(first.status), first.status);
    const result = await c.generateAudio("Queued on the HTTP server.", "belinda", { ...QUICK, async: true });
    assert.equal(c._postPolls, false);
    assert.equal(readWav(audioBytes(result)).sampleRate, 24000);
    assert.equal((await c.runSync({ transcript: "Queued on the HTTP server.", ref_audio: "belinda", ...QUICK })).audio_base64,
      result.audio_base64);
    await assert.rejects(c.runAsync({ transcript: "x", ref_audio: "nobody" }), (error) =>
      error instanceof HiggsTTSError && error.status === "FAILED" && /ref_audio/.test(error.message));
  });

  test("stream() over GET /stream", async () => {
    const items = [];
    for await (const item of client().stream({ transcript: "Streamed over HTTP.", ...QUICK })) items.push(item);
    assert.ok(items.length >= 2);
    assert.equal(items.at(-1).type, "final");
    assert.deepEqual(items.map((item) => item.seq), items.map((_, index) => index));
  });

  test("a wrong API key is an HTTP 401 HiggsTTSError", async () => {
    const wrong = new HiggsTTSClient({ endpointUrl: serveUrl, apiKey: "wrong" });
    await assert.rejects(wrong.listVoices(), (error) => error instanceof HiggsTTSError && error.status === 401);
  });
});
