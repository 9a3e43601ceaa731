// LiveSpeech against `higgs-tts serve` (WS /v1/audio/speech/stream), skipped without its URL:
//   HIGGS_TTS_SERVE_URL   `higgs-tts serve`, with HIGGS_TTS_API_KEY its API_KEY
import assert from "node:assert/strict";
import { describe, test } from "node:test";

import { HiggsTTSError, LiveSpeech, NodeWebSocket, speakLive } from "../higgs-tts.mjs";

const serveUrl = process.env.HIGGS_TTS_SERVE_URL;
const apiKey = process.env.HIGGS_TTS_API_KEY;
const LIVE = { voice: "belinda", seed: 5, max_new_tokens: 40 }; // phrases of at most 2 words

describe("live speech on higgs-tts serve", { skip: !serveUrl && "HIGGS_TTS_SERVE_URL is not set" }, () => {
  test("the session's PCM equals the same phrases as one chunked request", async () => {
    const { pcm, done } = await speakLive(serveUrl, ["Hello ", "there. ", "Bye", "."], { apiKey, ...LIVE });
    assert.equal(done.segments, 2);
    assert.equal(pcm.length, Math.round(done.duration_seconds * 24000) * 2);
    const whole = await fetch(`${serveUrl}/v1/audio/speech`, {
      method: "POST",
      headers: { "Content-Type": "application/json", Authorization: `Bearer ${apiKey}` },
      body: JSON.stringify({ input: "Hello there. Bye.", response_format: "pcm", chunk_method: "sentence",
        chunk_max_word_num: 2, ...LIVE }),
    });
    assert.equal(whole.status, 200);
    assert.ok(pcm.length > 0 && pcm.equals(Buffer.from(await whole.arrayBuffer())));
  });

  test("events, a bad text message and an async token stream", async () => {
    const live = await LiveSpeech.open(serveUrl, { apiKey, WebSocket: NodeWebSocket, ...LIVE });
    assert.equal(live.ready.type, "ready");
    assert.equal(live.ready.seed, 5);
    live.text("Say <|audio_bos|> this");
    const error = await live.receive();
    assert.equal(error.type, "error");
    assert.equal(error.code, "invalid_input");
    async function* tokens() {
      for (const token of ["One", " two", ".", " Three"]) yield token;
    }
    const events = [];
    for await (const event of live.speak(tokens(), { wordsPerSecond: 50 })) events.push(event);
    assert.deepEqual(events.filter((e) => e.type === "segment").map((e) => e.text), ["One two.", "Three"]);
    assert.ok(events.filter((e) => e.type === "audio").every((e) => Buffer.isBuffer(e.pcm)));
    assert.equal(events.at(-1).type, "done");
  });

  test("a refused config and a wrong key throw HiggsTTSError", async () => {
    await assert.rejects(LiveSpeech.open(serveUrl, { apiKey, voice: "nobody_at_all" }),
      (e) => e instanceof HiggsTTSError && e.status === "unknown_voice" && /voice/.test(e.message));
    await assert.rejects(LiveSpeech.open(serveUrl, { apiKey: "wrong", ...LIVE }),
      (e) => e instanceof HiggsTTSError && e.status === "invalid_api_key");
  });
});
