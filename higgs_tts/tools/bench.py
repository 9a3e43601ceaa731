"""`higgs-tts bench`: what the engine achieves on this machine, next to transformers' generate().

Figures: decode frames/s and x-real-time per batch size, time to first audio frame, prefill time
of a cloned-voice prompt, codec decode time per minute of audio, transformers' generate() in the
same run, the weight-read roofline (bytes read per audio step / measured copy bandwidth), and with
`--concurrency` N requests at once end to end (scheduler, streaming decoder, codec worker): aggregate
audio seconds per second, per-stream x-real-time and p50/p95 time to first audio.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field

import torch

from ..core.audio import FRAMES_PER_SECOND
from ..core.checkpoint import LoadedModel
from ..core.codes import generated_frames
from ..core.generate import transformers_generate
from ..core.prompt import PromptRenderer, PromptVoice, build_prompt
from ..core.sampling import SamplingParams
from ..core.streaming import StreamingDecoder
from ..engine.batch import bucket_length
from ..engine.engine import Engine, EngineRequest
from ..engine.scheduler import Scheduler
from ..synthesis.codec_worker import CodecWorker

TEXT = "The quick brown fox jumps over the lazy dog, and then it runs far away into the forest."


@dataclass
class BenchResult:
    device: str
    model: str
    dtype: str
    weight_bytes_per_step: int = 0
    copy_bandwidth_gbs: float = 0.0
    roofline_frames_per_s: float = 0.0
    batches: list[dict] = field(default_factory=list)
    first_frame_ms: float = 0.0
    clone_prefill_ms: float = 0.0
    clone_prompt_tokens: int = 0
    codec_decode_s_per_min: float = 0.0
    reference_frames_per_s: float = 0.0
    engine_over_reference: float = 0.0
    roofline_fraction: float = 0.0
    concurrency: list[dict] = field(default_factory=list)  # continuous batching, N requests at once
    stream_first_audio_ms: float = 0.0  # cloned voice, streamed: call -> first decoded audio chunk
    stream_underruns: int = 0  # chunks that would arrive late for playback at 1x from the first chunk
    stream_min_slack_s: float = 0.0  # the closest any chunk came to its playback deadline

    def table(self) -> str:
        rows = [
            ("device", self.device), ("model", self.model), ("dtype", self.dtype),
            ("weights read per audio step", f"{self.weight_bytes_per_step / 1e9:.3f} GB"),
            ("measured copy bandwidth", f"{self.copy_bandwidth_gbs:.1f} GB/s"),
            ("roofline, batch 1", f"{self.roofline_frames_per_s:.1f} frames/s "
                                  f"({self.roofline_frames_per_s / FRAMES_PER_SECOND:.1f}x real time)"),
        ]
        for b in self.batches:
            rows.append((f"fast engine, batch {b['batch']}",
                         f"{b['frames_per_s_per_stream']:.1f} frames/s per stream "
                         f"({b['x_real_time_per_stream']:.2f}x real time), "
                         f"{b['audio_seconds_per_s']:.1f} audio-s/s in all"))
        rows += [
            ("fraction of roofline, batch 1", f"{self.roofline_fraction:.1%}"),
            ("time to first audio frame", f"{self.first_frame_ms:.1f} ms"),
            ("prefill, cloned-voice prompt", f"{self.clone_prefill_ms:.1f} ms ({self.clone_prompt_tokens} tokens)"),
            ("codec decode per minute of audio", f"{self.codec_decode_s_per_min:.3f} s"),
            ("streamed, cloned voice", f"first audio {self.stream_first_audio_ms:.0f} ms, {self.stream_underruns} "
                                       f"underrun(s) at 1x playback (min slack {self.stream_min_slack_s:.2f} s)"),
            ("reference generate(), batch 1", f"{self.reference_frames_per_s:.1f} frames/s "
                                              f"({self.reference_frames_per_s / FRAMES_PER_SECOND:.2f}x real time)"),
            ("fast engine / reference", f"{self.engine_over_reference:.1f}x"),
        ]
        for c in self.concurrency:
            rows.append((f"end to end, {c['streams']} concurrent",
                         f"{c['audio_seconds_per_s']:.1f} audio-s/s in all, {c['x_real_time_per_stream']:.2f}x "
                         f"real time per stream (slowest {c['slowest_stream_x_real_time']:.2f}x), first audio "
                         f"p50 {c['time_to_first_audio_ms']:.0f} ms / p95 {c['time_to_first_audio_p95_ms']:.0f} ms"))
        width = max(len(name) for name, _ in rows)
        return "\n".join(f"{name.ljust(width)}  {value}" for name, value in rows)

    def to_json(self) -> str:
        return json.dumps(self.__dict__, indent=2)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def step_weight_bytes(model) -> int:
    """Bytes of the weights an audio decode step reads: attention, audio norms/MLPs, head."""
    modules = [model.model.norm, model.audio_lm_head]
    for layer in model.model.layers:
        modules += [layer.self_attn, layer.audio_input_layernorm, layer.audio_post_attention_layernorm,
                    layer.audio_mlp]
    return sum(p.numel() * p.element_size() for m in modules for p in m.parameters())


def copy_bandwidth(device: torch.device, megabytes: int) -> float:
    """Device memory bandwidth in bytes/s, from timed copies (each moves the bytes twice)."""
    source = torch.empty(megabytes * 2**20, dtype=torch.uint8, device=device)
    target = torch.empty_like(source)
    target.copy_(source)
    _sync(device)
    repeats = 10
    started = time.perf_counter()
    for _ in range(repeats):
        target.copy_(source)
    _sync(device)
    return 2 * source.numel() * repeats / (time.perf_counter() - started)


def streamed(loaded: LoadedModel, engine: Engine, inputs: dict, steps: int) -> tuple[float, int, float]:
    """One request streamed as the servers stream it (engine columns -> frames -> StreamingDecoder
    chunks): time to the first audio chunk, and whether a player that starts at that chunk and
    plays at 1x would run dry (underruns, and the smallest margin any chunk had)."""
    from ..core.codes import generated_frames
    from ..core.streaming import StreamingDecoder

    def decode(frames: torch.Tensor):
        codes = frames.transpose(0, 1)[None].to(loaded.device)
        return loaded.codec.decode(codes).audio_values.reshape(-1).float().cpu().numpy()

    decoder = StreamingDecoder(decode, hop=loaded.hop_length)
    arrivals: list[tuple[float, int]] = []  # (time, samples) per chunk
    columns, sent = [], 0
    started = time.perf_counter()
    with torch.inference_mode():
        request = EngineRequest(inputs, SamplingParams(temperature=0.8, max_new_tokens=steps), 0)
        for piece in engine.stream(request, ignore_eos=True):
            columns.append(piece.cpu())
            frames = generated_frames(torch.cat(columns))
            for chunk in decoder.push(frames[sent:]):
                arrivals.append((time.perf_counter(), len(chunk)))
            sent = frames.shape[0]
        arrivals.append((time.perf_counter(), len(decoder.finish())))
    first = arrivals[0][0]
    played, underruns, slack = arrivals[0][1], 0, float("inf")
    for arrived, samples in arrivals[1:]:  # the first chunk starts the clock
        deadline = first + played / loaded.sample_rate
        slack = min(slack, deadline - arrived)
        underruns += arrived > deadline + 1e-6
        played += samples
    return (first - started) * 1e3, underruns, slack if arrivals[1:] else played / loaded.sample_rate


def concurrent(loaded: LoadedModel, inputs: dict, counts: list[int], steps: int) -> list[dict]:
    """N requests submitted at once, for each N in `counts`, end to end as the servers run them: the
    continuous-batching scheduler generates, each stream's StreamingDecoder cuts its pieces, and the
    codec worker decodes them (batched across streams where the device allows)."""
    import threading

    prompt_len = int(inputs["input_ids"].shape[1])
    scheduler = Scheduler(loaded.model, slots=max(counts), max_len=bucket_length(prompt_len + steps + 32),
                          max_waiting=max(counts)).start()
    codec = CodecWorker(loaded.codec, loaded.device)
    params = SamplingParams(temperature=0.8, max_new_tokens=steps)
    results = []

    def one(index: int, timings: list) -> None:
        submitted = time.perf_counter()
        decoder = StreamingDecoder(codec.decode, hop=loaded.hop_length)
        first, samples, columns, sent = None, 0, [], 0
        for piece in scheduler.submit(EngineRequest(inputs, params, index), ignore_eos=True).pieces():
            columns.append(piece.cpu())
            # delay reverted as synthesis/run.py does; no EOS ends it (ignore_eos: every column is audio)
            frames = generated_frames(torch.cat(columns), eos=-1)
            for audio in decoder.push(frames[sent:]):
                first = first or time.perf_counter()
                samples += len(audio)
            sent = frames.shape[0]
        samples += len(decoder.finish())
        timings[index] = (submitted, first or time.perf_counter(), time.perf_counter(), samples)

    def round_of(n: int) -> tuple[list, float]:
        timings: list = [None] * n  # per request: submitted, first audio, end, samples
        started = time.perf_counter()
        threads = [threading.Thread(target=one, args=(i, timings)) for i in range(n)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        return timings, time.perf_counter() - started

    try:
        round_of(1)  # waits for the engine's start (it captures every graph shape then) and warms up
        for n in counts:
            calls, pieces = codec.stats.calls, codec.stats.pieces
            timings, wall = round_of(n)
            audio = [t[3] / loaded.sample_rate for t in timings]  # seconds of audio per stream
            # a stream's real-time factor: its audio over the time from submission to its last sample
            per_stream = [seconds / (end - s) for seconds, (s, _, end, _) in zip(audio, timings, strict=True)]
            first_ms = [(f - s) * 1e3 for s, f, _, _ in timings]
            results.append({
                "streams": n,
                "steps": steps,
                "audio_seconds_per_s": sum(audio) / wall,
                "x_real_time_per_stream": percentile(per_stream, 50),
                "slowest_stream_x_real_time": min(per_stream),
                "time_to_first_audio_ms": percentile(first_ms, 50),
                "time_to_first_audio_p95_ms": percentile(first_ms, 95),
                "codec_pieces_per_call": (codec.stats.pieces - pieces) / max(1, codec.stats.calls - calls),
            })
    finally:
        scheduler.close()
        codec.close()
    return results


def percentile(values: list[float], q: float) -> float:
    """The q-th percentile, linearly interpolated (numpy's default)."""
    import numpy as np

    return float(np.percentile(values, q))


def run(loaded: LoadedModel, batch_sizes: list[int], steps: int, reference_steps: int,
        clone_seconds: float = 10.0, concurrency: list[int] | None = None) -> BenchResult:
    device = loaded.device
    model = loaded.model
    renderer = PromptRenderer(loaded.processor)
    engine = Engine(model)
    result = BenchResult(device=torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
                         model=loaded.model_path, dtype=str(loaded.dtype).removeprefix("torch."))

    result.weight_bytes_per_step = step_weight_bytes(model)
    bandwidth = copy_bandwidth(device, 1024 if device.type == "cuda" else 128)
    result.copy_bandwidth_gbs = bandwidth / 1e9
    result.roofline_frames_per_s = bandwidth / result.weight_bytes_per_step

    plain = renderer.inputs(build_prompt(TEXT, transcript=TEXT, voices=[], scene=""), device)
    sampled = SamplingParams(temperature=0.8, max_new_tokens=steps)
    engine.generate([EngineRequest(plain, sampled, 0)], ignore_eos=True)  # warm-up and graph capture
    for batch in batch_sizes:
        requests = [EngineRequest(plain, sampled, seed) for seed in range(batch)]
        engine.generate(requests, ignore_eos=True)  # capture this batch size
        engine.generate(requests, ignore_eos=True)
        stats = engine.stats
        per_stream = stats.steps / stats.decode_seconds
        result.batches.append({
            "batch": batch,
            "steps": stats.steps,
            "frames_per_s_per_stream": per_stream,
            "x_real_time_per_stream": per_stream / FRAMES_PER_SECOND,
            "audio_seconds_per_s": batch * per_stream / FRAMES_PER_SECOND,
        })
        if batch == 1:
            result.first_frame_ms = stats.first_columns_seconds * 1e3
    if result.batches:
        result.roofline_fraction = result.batches[0]["frames_per_s_per_stream"] / result.roofline_frames_per_s

    # A cloned-voice prompt: a reference clip of `clone_seconds` seconds (its codes are what counts).
    generator = torch.Generator().manual_seed(0)
    frames = torch.randint(0, 1024, (int(clone_seconds * FRAMES_PER_SECOND), 8), generator=generator)
    voice = PromptVoice(description="reference", transcript=TEXT, frames=frames, is_clone=True)
    clone = renderer.inputs(build_prompt(TEXT, transcript=TEXT, voices=[voice], scene=""), device)
    short = SamplingParams(temperature=0.8, max_new_tokens=16)
    engine.generate([EngineRequest(clone, short, 0)], ignore_eos=True)
    engine.generate([EngineRequest(clone, short, 0)], ignore_eos=True)
    result.clone_prefill_ms = engine.stats.prefill_seconds * 1e3
    result.clone_prompt_tokens = int(clone["input_ids"].shape[1])
    result.stream_first_audio_ms, result.stream_underruns, result.stream_min_slack_s = streamed(
        loaded, engine, clone, max(steps, 96))

    minute = torch.randint(0, 1024, (1, 8, int(60 * FRAMES_PER_SECOND)), generator=generator).to(device)
    with torch.inference_mode():
        loaded.codec.decode(minute[:, :, :50])  # warm-up
        _sync(device)
        started = time.perf_counter()
        loaded.codec.decode(minute)
        _sync(device)
    result.codec_decode_s_per_min = time.perf_counter() - started

    reference = SamplingParams(temperature=0.8, max_new_tokens=reference_steps)
    transformers_generate(model, plain, SamplingParams(temperature=0.8, max_new_tokens=4), 0)  # warm-up
    _sync(device)
    started = time.perf_counter()
    columns = transformers_generate(model, plain, reference, 0)
    _sync(device)
    result.reference_frames_per_s = columns.shape[0] / (time.perf_counter() - started)
    if result.batches and result.reference_frames_per_s:
        result.engine_over_reference = result.batches[0]["frames_per_s_per_stream"] / result.reference_frames_per_s
    if concurrency:
        result.concurrency = concurrent(loaded, plain, concurrency, steps)
    return result


def anatomy(loaded: LoadedModel, layers: int | None = None, batch_sizes: tuple[int, ...] = (1, 8, 32)) -> dict:
    """`bench --anatomy`: the engine's structural figures (tools/anatomy.py), and on CUDA the
    decode speed at batch 1 with its share of the weight-read roofline."""
    from . import anatomy as counting

    model = counting.expand_layers(loaded.model, layers) if layers else loaded.model
    renderer = PromptRenderer(loaded.processor)
    plain = renderer.inputs(build_prompt(TEXT, transcript=TEXT, voices=[], scene=""), loaded.device)
    generator = torch.Generator().manual_seed(0)
    frames = torch.randint(0, 1024, (int(10 * FRAMES_PER_SECOND), 8), generator=generator)
    voice = PromptVoice(description="reference", transcript=TEXT, frames=frames, is_clone=True)
    clone = renderer.inputs(build_prompt(TEXT, transcript=TEXT, voices=[voice], scene=""), loaded.device)
    figures = {"device": torch.cuda.get_device_name(loaded.device) if loaded.device.type == "cuda" else "cpu",
               "dtype": str(loaded.dtype).removeprefix("torch."), "text": TEXT,
               **counting.measure(model, plain, clone, batch_sizes)}
    if loaded.device.type == "cuda":
        engine = Engine(model)
        sampled = SamplingParams(temperature=0.8, max_new_tokens=512)
        engine.generate([EngineRequest(plain, sampled, 0)], ignore_eos=True)  # capture
        engine.generate([EngineRequest(plain, sampled, 0)], ignore_eos=True)
        frames_per_s = engine.stats.steps / engine.stats.decode_seconds
        roofline = copy_bandwidth(loaded.device, 1024) / step_weight_bytes(model)
        figures.update(frames_per_s_b1=frames_per_s, roofline_frames_per_s=roofline,
                       roofline_fraction=frames_per_s / roofline)
    return figures


def anatomy_table(figures: dict) -> str:
    rows = [(name, value) for name, value in figures.items() if not isinstance(value, dict)]
    rows.append(("host_ms_per_step", ", ".join(f"{b} {ms:.3f}" for b, ms in figures["host_ms_per_step"].items())))
    captured = figures["captured_kernels_by_op"]
    rows.append(("captured kernels by op", ", ".join(f"{op} {n}" for op, n in captured.items())))
    rows.append(("eager kernels by op, per burst",
                 ", ".join(f"{op} {n}" for op, n in figures["eager_kernels_by_op_per_burst"].items()) or "none"))
    width = max(len(name) for name, _ in rows)
    return "\n".join(f"{name.ljust(width)}  {value}" for name, value in rows)
