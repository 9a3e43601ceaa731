// The playground: calls this server's own API (same origin only), nothing else.
// Live playback: `pcm` (for pcm and wav) into Web Audio, `mp3` into MediaSource; other formats
// play when complete. The transport is `speechStream` alone, so a WebSocket can replace it.
"use strict";

const $ = (id) => document.getElementById(id);
const RATE = 24000; // the model's sample rate: pcm is signed 16-bit little-endian mono at this rate
const KEY = "higgs-tts-api-key"; // sessionStorage: gone when the tab closes
const MAX_TAKES = 10;
const state = { voices: [], ref: null, recorder: null, controller: null, takes: 0 };

function authHeaders(extra = {}) {
  const key = $("key").value.trim();
  return key ? { ...extra, Authorization: `Bearer ${key}` } : extra;
}

// The server's error body {"error": {"message", "type", "param", "code"}} as one line.
async function errorText(response) {
  const text = await response.text();
  try {
    const e = JSON.parse(text).error;
    if (e && e.message) return `${response.status} ${e.code || e.type}: ${e.message}${e.param ? ` (field: ${e.param})` : ""}`;
  } catch (_) { /* not JSON */ }
  return `${response.status} ${response.statusText}: ${text.slice(0, 300)}`;
}

async function api(path, options = {}) {
  const response = await fetch(path, { ...options, headers: authHeaders(options.headers) });
  if (!response.ok) throw new Error(await errorText(response));
  return response.json();
}

// The transport: POST the speech body, hand each piece of audio to onBytes as it arrives.
async function speechStream(body, onBytes, signal) {
  const response = await fetch("/v1/audio/speech", {
    method: "POST", body: JSON.stringify(body), signal,
    headers: authHeaders({ "Content-Type": "application/json" }),
  });
  if (!response.ok) throw new Error(await errorText(response));
  const reader = response.body.getReader();
  for (;;) {
    const { done, value } = await reader.read();
    if (done) return response.headers;
    if (value.byteLength) onBytes(value);
  }
}

function showError(message) {
  $("error").textContent = message;
  $("error").hidden = !message;
}

function setStatus(message) { $("status").textContent = message; }

// ---- voices -----------------------------------------------------------------------------------

async function loadVoices() {
  try {
    state.voices = (await api("/v1/audio/voices")).voices;
    showError("");
  } catch (err) {
    state.voices = [];
    showError(`Could not list voices: ${err.message}`);
  }
  for (const select of document.querySelectorAll("#speakers select")) fillVoices(select, select.value);
}

function fillVoices(select, chosen) {
  select.replaceChildren(new Option("(no voice: the model picks one)", ""));
  for (const v of state.voices) select.add(new Option(`${v.id} (${v.kind})`, v.id));
  select.value = state.voices.some((v) => v.id === chosen) ? chosen : "";
  describe(select);
}

function describe(select) {
  const voice = state.voices.find((v) => v.id === select.value);
  select.nextElementSibling.textContent = voice ? voice.description || "" : "";
}

function addSpeaker() {
  const row = document.createElement("div");
  row.className = "speaker";
  const n = $("speakers").children.length;
  const select = document.createElement("select");
  select.className = "voice";
  select.setAttribute("aria-label", `voice of SPEAKER${n}`);
  const desc = document.createElement("span");
  desc.className = "desc";
  const tag = document.createElement("code");
  tag.textContent = `SPEAKER${n}`;
  row.append(tag, select, desc);
  if (n > 0) {
    const remove = document.createElement("button");
    remove.type = "button";
    remove.textContent = "×";
    remove.title = "remove this speaker";
    remove.addEventListener("click", () => row.remove());
    row.append(remove);
  }
  select.addEventListener("change", () => describe(select));
  $("speakers").append(row);
  fillVoices(select, "");
}

function chosenVoices() {
  return [...document.querySelectorAll("#speakers select")].map((s) => s.value).filter(Boolean);
}

// ---- reference clip ---------------------------------------------------------------------------

function setReference(blob, name) {
  state.ref = { blob, name };
  $("ref-preview").src = URL.createObjectURL(blob);
}

async function toggleRecording() {
  if (state.recorder) { state.recorder.stop(); return; }
  if (!navigator.mediaDevices || !window.MediaRecorder) {
    showError("Recording needs a browser with MediaRecorder on a secure origin (https or localhost).");
    return;
  }
  try {
    const stream = await navigator.mediaDevices.getUserMedia({ audio: true });
    const recorder = new MediaRecorder(stream);
    const parts = [];
    recorder.addEventListener("dataavailable", (e) => parts.push(e.data));
    recorder.addEventListener("stop", () => {
      stream.getTracks().forEach((t) => t.stop());
      setReference(new Blob(parts, { type: recorder.mimeType || "audio/webm" }), "recording.webm");
      state.recorder = null;
      $("record").textContent = "● Record";
    });
    recorder.start();
    state.recorder = recorder;
    $("record").textContent = "■ Stop recording";
  } catch (err) {
    showError(`Microphone: ${err.message}`);
  }
}

function dataUrl(blob) {
  return new Promise((resolve, reject) => {
    const reader = new FileReader();
    reader.onload = () => resolve(reader.result);
    reader.onerror = () => reject(reader.error);
    reader.readAsDataURL(blob);
  });
}

async function saveVoice() {
  showError("");
  if (!state.ref) { showError("Choose or record a reference clip first."); return; }
  const form = new FormData();
  form.append("name", $("voice-name").value.trim());
  form.append("transcript", $("ref-transcript").value);
  if ($("voice-description").value.trim()) form.append("description", $("voice-description").value.trim());
  form.append("file", state.ref.blob, state.ref.name);
  try {
    const voice = await api("/v1/voices", { method: "POST", body: form });
    await loadVoices();
    const first = document.querySelector("#speakers select");
    first.value = voice.name;
    describe(first);
    setStatus(`Saved voice ${voice.name}.`);
  } catch (err) {
    showError(`Saving the voice failed: ${err.message}`);
  }
}

// ---- players ----------------------------------------------------------------------------------

// Web Audio, fed 16-bit pcm pieces as they come (a piece may end mid-sample).
function pcmPlayer() {
  const ctx = new AudioContext({ sampleRate: RATE });
  let next = 0;
  let carry = null;
  return {
    push(bytes) {
      if (carry) { const joined = new Uint8Array(carry.length + bytes.length); joined.set(carry); joined.set(bytes, carry.length); bytes = joined; carry = null; }
      const whole = bytes.length - (bytes.length % 2);
      if (whole < bytes.length) carry = bytes.slice(whole);
      if (!whole) return;
      const ints = new Int16Array(bytes.buffer.slice(bytes.byteOffset, bytes.byteOffset + whole));
      const buffer = ctx.createBuffer(1, ints.length, RATE);
      const channel = buffer.getChannelData(0);
      for (let i = 0; i < ints.length; i++) channel[i] = ints[i] / 32768;
      const source = ctx.createBufferSource();
      source.buffer = buffer;
      source.connect(ctx.destination);
      next = Math.max(next, ctx.currentTime + 0.05);
      source.start(next);
      next += buffer.duration;
    },
    end() { setTimeout(() => ctx.close(), Math.max(0, (next - ctx.currentTime) * 1000) + 500); },
    stop() { ctx.close(); },
  };
}

// MediaSource, for mp3 pieces as they come.
function msePlayer(mime) {
  const media = new MediaSource();
  const audio = $("live");
  audio.src = URL.createObjectURL(media);
  const queue = [];
  let buffer = null;
  let ended = false;
  const pump = () => {
    if (!buffer || buffer.updating) return;
    if (queue.length) buffer.appendBuffer(queue.shift());
    else if (ended && media.readyState === "open") media.endOfStream();
  };
  media.addEventListener("sourceopen", () => {
    buffer = media.addSourceBuffer(mime);
    buffer.addEventListener("updateend", pump);
    pump();
  });
  return {
    push(bytes) { queue.push(bytes); pump(); audio.play().catch(() => {}); },
    end() { ended = true; pump(); },
    stop() { audio.pause(); },
  };
}

function livePlayer(format) {
  if (format === "pcm" || format === "wav") return pcmPlayer();
  if (format === "mp3" && window.MediaSource && MediaSource.isTypeSupported("audio/mpeg")) return msePlayer("audio/mpeg");
  return null; // played when complete
}

// ---- the result -------------------------------------------------------------------------------

function wavFile(pcm) {
  const header = new DataView(new ArrayBuffer(44));
  const text = (at, s) => [...s].forEach((c, i) => header.setUint8(at + i, c.charCodeAt(0)));
  text(0, "RIFF"); header.setUint32(4, 36 + pcm.length, true); text(8, "WAVE"); text(12, "fmt ");
  header.setUint32(16, 16, true); header.setUint16(20, 1, true); header.setUint16(22, 1, true);
  header.setUint32(24, RATE, true); header.setUint32(28, RATE * 2, true); header.setUint16(32, 2, true);
  header.setUint16(34, 16, true); text(36, "data"); header.setUint32(40, pcm.length, true);
  return new Blob([header, pcm], { type: "audio/wav" });
}

const MIME = { wav: "audio/wav", pcm: "audio/pcm", mp3: "audio/mpeg", opus: "audio/ogg", aac: "audio/aac", flac: "audio/flac" };

async function decoded(blob) {
  const ctx = new OfflineAudioContext(1, 1, RATE);
  try { return await ctx.decodeAudioData(await blob.arrayBuffer()); } catch (_) { return null; }
}

function drawWave(audio) {
  const canvas = $("wave");
  const g = canvas.getContext("2d");
  g.clearRect(0, 0, canvas.width, canvas.height);
  if (!audio) return;
  const data = audio.getChannelData(0);
  const step = Math.max(1, Math.floor(data.length / canvas.width));
  let peak = 1e-4; // scaled to the loudest sample, so quiet takes show too
  for (let i = 0; i < data.length; i++) peak = Math.max(peak, Math.abs(data[i]));
  const mid = canvas.height / 2;
  const scale = (mid * 0.95) / peak;
  g.fillStyle = "#5b9cff";
  for (let x = 0; x < canvas.width; x++) {
    let lo = 0, hi = 0;
    for (let i = x * step; i < Math.min(data.length, (x + 1) * step); i++) { lo = Math.min(lo, data[i]); hi = Math.max(hi, data[i]); }
    g.fillRect(x, mid - hi * scale, 1, Math.max(1, (hi - lo) * scale));
  }
}

function addTake(take) {
  const item = document.createElement("li");
  const facts = document.createElement("div");
  facts.className = "take";
  facts.textContent = `#${take.n} ${take.voice} · seed ${take.seed} · T ${take.temperature} · top_p ${take.top_p} · ${take.format}`
    + ` · ${take.duration.toFixed(2)} s · first audio ${take.ttfa.toFixed(2)} s · RTF ${take.rtf.toFixed(2)}`
    + (take.scene ? ` · scene: ${take.scene.slice(0, 60)}${take.scene.length > 60 ? "…" : ""}` : "");
  const audio = document.createElement("audio");
  audio.controls = true;
  audio.src = take.playUrl;
  const link = document.createElement("a");
  link.href = take.fileUrl;
  link.download = take.filename;
  link.textContent = "download";
  item.append(facts, audio, link);
  $("history").prepend(item);
  while ($("history").children.length > MAX_TAKES) $("history").lastElementChild.remove();
}

function number(id) {
  const raw = $(id).value.trim();
  return raw === "" ? undefined : Number(raw);
}

function speechBody() {
  const format = $("format").value;
  const seed = number("seed") ?? Math.floor(Math.random() * 2147483647); // shown in the take, to redo it
  const body = { model: "higgs-audio-v2", input: $("text").value, response_format: format === "wav" ? "pcm" : format, seed };
  for (const id of ["temperature", "top_p", "max_new_tokens"]) if (number(id) !== undefined) body[id] = number(id);
  if ($("scene").value.trim()) body.scene_prompt = $("scene").value;
  return body;
}

async function speak() {
  showError("");
  const format = $("format").value;
  const body = speechBody();
  let voice = chosenVoices().join(",");
  if ($("use-ref").checked) {
    if (!state.ref) { showError("Clone once: choose or record a reference clip first."); return; }
    body.ref_audio_base64 = await dataUrl(state.ref.blob);
    body.ref_audio_transcript = $("ref-transcript").value;
    voice = `clone of ${state.ref.name}`;
  } else if (voice) {
    body.voice = voice;
  }
  const player = livePlayer(format);
  const pieces = [];
  let received = 0;
  let first = null;
  state.controller = new AbortController();
  $("speak").disabled = true;
  $("stop").disabled = false;
  setStatus("Generating…");
  const started = performance.now();
  try {
    await speechStream(body, (bytes) => {
      if (first === null) { first = performance.now() - started; setStatus(`Playing while generating (first audio after ${(first / 1000).toFixed(2)} s)…`); }
      received += bytes.length;
      pieces.push(bytes);
      if (player) player.push(bytes);
    }, state.controller.signal);
    const elapsed = (performance.now() - started) / 1000;
    if (player) player.end();
    const raw = new Blob(pieces, { type: MIME[body.response_format] });
    const playable = body.response_format === "pcm" ? wavFile(new Uint8Array(await raw.arrayBuffer())) : raw;
    const file = format === "wav" ? playable : raw;
    const audio = await decoded(playable);
    const duration = audio ? audio.duration : 0;
    drawWave(audio);
    const playUrl = URL.createObjectURL(playable);
    const fileUrl = file === playable ? playUrl : URL.createObjectURL(file);
    $("player").src = playUrl;
    if (!player) $("player").play().catch(() => {});
    $("download").href = fileUrl;
    $("download").download = `take-${state.takes + 1}.${format}`;
    $("download").hidden = false;
    const rtf = duration ? elapsed / duration : NaN;
    $("metrics").textContent = `${(received / 1024).toFixed(1)} KiB in ${pieces.length} pieces · ${duration.toFixed(2)} s of audio · time to first audio `
      + `${((first ?? 0) / 1000).toFixed(2)} s · real-time factor ${rtf.toFixed(2)} (generation time / audio time)`;
    state.takes += 1;
    addTake({ n: state.takes, voice: voice || "(model's pick)", seed: body.seed, temperature: body.temperature ?? "default",
      top_p: body.top_p ?? "default", format, scene: body.scene_prompt || "", duration, ttfa: (first ?? 0) / 1000, rtf,
      playUrl, fileUrl, filename: `take-${state.takes}.${format}` });
    setStatus(`Done in ${elapsed.toFixed(2)} s.`);
  } catch (err) {
    if (player) player.stop();
    setStatus("");
    showError(err.name === "AbortError" ? "Stopped." : err.message);
  } finally {
    $("speak").disabled = false;
    $("stop").disabled = true;
    state.controller = null;
  }
}

// ---- wiring -----------------------------------------------------------------------------------

window.addEventListener("DOMContentLoaded", () => {
  $("key").value = sessionStorage.getItem(KEY) || "";
  $("key").addEventListener("change", () => { sessionStorage.setItem(KEY, $("key").value.trim()); loadVoices(); });
  $("reload").addEventListener("click", loadVoices);
  $("add-speaker").addEventListener("click", addSpeaker);
  $("scene-examples").addEventListener("change", () => { $("scene").value = $("scene-examples").value; });
  $("ref-file").addEventListener("change", () => { const f = $("ref-file").files[0]; if (f) setReference(f, f.name); });
  $("record").addEventListener("click", toggleRecording);
  $("save-voice").addEventListener("click", saveVoice);
  $("speak").addEventListener("click", speak);
  $("stop").addEventListener("click", () => state.controller && state.controller.abort());
  addSpeaker();
  loadVoices();
});
