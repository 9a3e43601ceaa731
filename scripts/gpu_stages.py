"""The stages of scripts/gpu-check.sh that are Python: a tool beside the package (it imports
higgs_tts; the package never imports it).

    python3 scripts/gpu_stages.py env|smoke|timing|summary --out DIR

Each stage appends one JSON line per figure to DIR/results.jsonl as soon as it has it, so a stage
cut short by its `timeout` still leaves what it measured:
    {"stage": "smoke", "name": "graph vs eager, 8 rows", "value": "max |d| 0.0", "status": "ok"}
status is "ok", "FAIL" (a check that did not hold), "info" (a figure) or "skipped: no CUDA".

On CUDA the model is the full-size one with random weights in bf16 (speed and numerics depend on
the shapes, not on the values). Without CUDA (the dry run, scripts/gpu-dryrun.sh) the same code
runs on the tiny checkpoint in float32 on CPU, and the parts that need a GPU say so.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

OUT = Path(os.environ.get("OUT", "out/gpu-check"))
CUDA = torch.cuda.is_available()
NO_CUDA = "skipped: no CUDA"
TEXT = "The quick brown fox jumps over the lazy dog, and then it runs far away into the forest."
# bf16 agreement thresholds: a random full-size model has near-uniform logits, so a top-1 flip
# needs only a tiny error; these are the floors below which something is wrong, not a tight fit.
TOP1_MIN = 0.90  # teacher-forced top-1 agreement of our step with transformers' forward
REL_ERR_MAX = 0.05  # median relative error of our step's logits against transformers' forward
BIG = 64 if CUDA else 4  # the large batch of the timing stage (a CPU run only checks the code path)
REPEATS = 50 if CUDA else 3
WIDTH = 240  # characters per summary line (40 of them fit a 12,000-character log tail)


def record(stage: str, name: str, value, status: str = "info") -> None:
    line = {"stage": stage, "name": name, "value": value, "status": status}
    print(f"[{stage}] {name}: {value} ({status})", flush=True)
    with open(OUT / "results.jsonl", "a") as out:
        out.write(json.dumps(line) + "\n")


def guarded(stage: str, name: str, fn) -> None:
    """Run one part; an exception is recorded as a failure of that part, and the stage goes on."""
    try:
        fn()
    except Exception as exc:  # noqa: BLE001 - one broken part must not hide the others' figures
        record(stage, name, f"{type(exc).__name__}: {str(exc)[:160]}", "FAIL")
        import traceback

        traceback.print_exc()


def sync() -> None:
    if CUDA:
        torch.cuda.synchronize()


def gib(n: float) -> str:
    return f"{n / 2**30:.2f} GiB"


# -- environment ---------------------------------------------------------------------------------


def stage_env() -> None:
    import importlib
    import importlib.metadata as md
    import platform

    versions = [f"python {platform.python_version()}", f"torch {torch.__version__} (cuda {torch.version.cuda})"]
    for name in ("transformers", "numpy", "tokenizers", "huggingface_hub", "safetensors", "regex", "soundfile",
                 "langid", "triton"):
        try:
            module = importlib.import_module(name)
            where = "carried" if "/tmp/site" in (getattr(module, "__file__", "") or "") else "system"
            versions.append(f"{name} {md.version(name)} ({where})")
        except Exception as exc:  # noqa: BLE001
            versions.append(f"{name} missing ({type(exc).__name__})")
    record("env", "versions", "; ".join(versions))
    import transformers

    ok = transformers.__version__.startswith("5.23")
    record("env", "transformers in use", f"{transformers.__version__} from {Path(transformers.__file__).parent}",
           "ok" if ok else "FAIL")
    if not CUDA:
        record("env", "GPU", NO_CUDA, NO_CUDA)
        return
    props = torch.cuda.get_device_properties(0)
    record("env", "GPU", f"{props.name}, {gib(props.total_memory)}, {props.multi_processor_count} SMs, "
                         f"cc {props.major}.{props.minor}")
    query = "driver_version,clocks.sm,clocks.max.sm,clocks.mem,power.draw,power.limit,temperature.gpu"
    try:
        smi = subprocess.run(["nvidia-smi", f"--query-gpu={query}", "--format=csv,noheader"], capture_output=True,
                             text=True, timeout=20).stdout.strip()
    except (OSError, subprocess.TimeoutExpired) as exc:
        smi = f"nvidia-smi failed: {exc}"
    record("env", "driver, clocks (sm, max sm, mem), power, temp", smi)
    record("env", "cudnn", str(torch.backends.cudnn.version()))
    guarded("env", "attention kernels", _attention_kernels)


def _attention_kernels() -> None:
    """Which SDPA backends take the decode step's call: [B, Hkv, G, D] bf16 with a boolean mask."""
    import torch.nn.functional as F
    from torch.nn.attention import SDPBackend, sdpa_kernel

    q = torch.randn(8, 8, 3, 128, dtype=torch.bfloat16, device="cuda")
    k = torch.randn(8, 8, 1024, 128, dtype=torch.bfloat16, device="cuda")
    mask = torch.ones(8, 1, 1, 1024, dtype=torch.bool, device="cuda")
    found = []
    for backend in (SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.CUDNN_ATTENTION,
                    SDPBackend.MATH):
        for label, m in (("mask", mask), ("no mask", None)):
            try:
                with sdpa_kernel(backend):
                    F.scaled_dot_product_attention(q, k, k, attn_mask=m)
                sync()
                found.append(f"{backend.name.lower()}({label})")
            except RuntimeError:
                pass
    record("env", "SDPA backends that run the step's shape", ", ".join(found) or "none")


# -- the model -----------------------------------------------------------------------------------


def load():
    """The full-size random model in bf16 on CUDA; else the tiny checkpoint in float32 on CPU."""
    if CUDA:
        from higgs_tts.tools.tiny_checkpoint import full_size_random_model

        return full_size_random_model("cuda", "bfloat16")
    from higgs_tts.core.checkpoint import load_model
    from higgs_tts.settings import Settings
    from higgs_tts.tools.tiny_checkpoint import write_tiny_checkpoint

    model_dir, codec_dir = write_tiny_checkpoint(tempfile.mkdtemp(prefix="gpu-stages-"))
    return load_model(Settings(model_path=str(model_dir), tokenizer_path=str(codec_dir), device="cpu",
                               dtype="float32"))


def prompt_inputs(loaded, clone_seconds: float = 0.0):
    from higgs_tts.core.prompt import PromptRenderer, PromptVoice, build_prompt

    voices = []
    if clone_seconds:
        frames = torch.randint(0, 1024, (int(clone_seconds * 25), 8), generator=torch.Generator().manual_seed(0))
        voices = [PromptVoice(description="reference", transcript=TEXT, frames=frames, is_clone=True)]
    prompt = build_prompt(TEXT, transcript=TEXT, voices=voices, scene="")
    return PromptRenderer(loaded.processor).inputs(prompt, loaded.device)


def admitted_batch(loaded, rows: int, graphs: bool, max_len: int = 1024):
    """A Batch with `rows` sequences prefilled (different seeds), ready to burst."""
    from higgs_tts.core.sampling import SamplingParams
    from higgs_tts.engine.batch import Batch
    from higgs_tts.engine.sequence import EngineRequest, Sequence

    inputs = prompt_inputs(loaded)
    batch = Batch(loaded.model, rows, max_len, use_cuda_graphs=graphs, pad_rows=graphs)
    params = SamplingParams(temperature=0.8, max_new_tokens=max_len - int(inputs["input_ids"].shape[1]) - 40)
    for slot in range(rows):
        batch.admit(Sequence(EngineRequest(inputs, params, slot), ignore_eos=True), slot)
    return batch


# -- smoke ---------------------------------------------------------------------------------------


def stage_smoke() -> None:
    started = time.perf_counter()
    loaded = load()
    record("smoke", "model", f"{loaded.model_path}, {str(loaded.dtype).removeprefix('torch.')}, built in "
                             f"{time.perf_counter() - started:.1f} s")
    for rows in (1, 8):
        guarded("smoke", f"graph vs eager, {rows} rows", lambda r=rows: _graph_vs_eager(loaded, r))
    for rows in (1, 8):
        guarded("smoke", f"64 greedy steps, graphs on/off, {rows} rows", lambda r=rows: _graphs_on_off(loaded, r))
    guarded("smoke", "teacher-forced vs transformers", lambda: _teacher_forced(loaded))
    guarded("smoke", "bursts: NaN and memory", lambda: _bursts(loaded))
    from higgs_tts.engine.sizing import MAX_SLOTS, engine_size
    from higgs_tts.settings import Settings

    defaults = Settings()
    # The slots a server would choose here (from free memory on CUDA), and the most it ever chooses.
    size = engine_size(loaded.model, defaults.engine_slots, defaults.engine_max_len, defaults.engine_queue,
                       defaults.prefix_cache_max_bytes)
    record("smoke", "engine size", f"{size.slots} slots, queue {size.queue} ({size.sized_by})")
    for slots in sorted({size.slots, MAX_SLOTS}):
        guarded("smoke", f"capture, {slots} slots", lambda s=slots: _capture(loaded, s, defaults.engine_max_len))


def skipped(stage: str, name: str, ran: str) -> None:
    """A GPU-only check without CUDA: its code ran with eager steps in place of graphs (that is all)."""
    record(stage, name, f"{NO_CUDA} (its code ran eagerly: {ran})", NO_CUDA)


def captured(batch) -> bool:
    """The batch runs its step from CUDA graphs: a failed capture falls back to eager steps by itself (a
    warning in the log), which a graph-versus-eager comparison would then pass without comparing anything."""
    return batch.graphs is not None and len(batch.graphs) > 0


def _graph_vs_eager(loaded, rows: int) -> None:
    """One whole step (sampler, bookkeeping, layers) replayed from its graph, against the same step
    run eagerly from the same state: the logits it leaves for the next step."""
    name = f"graph vs eager step, {rows} rows"
    batch = admitted_batch(loaded, rows, graphs=CUDA)
    rows_run, length = batch.shape()
    with torch.inference_mode():
        graphed_step = batch._step_fn(rows_run, length)  # captured (the state is put back after)
        saved = [t.clone() for t in batch.state()]
        batch.make_step(rows_run, length)()
        eager = batch.logits[:rows_run].clone()
        for tensor, value in zip(batch.state(), saved, strict=True):
            tensor.copy_(value)
        graphed_step()
        graphed = batch.logits[:rows_run].clone()
    delta = (graphed - eager).abs().max().item()
    if not CUDA:
        return skipped("smoke", name, f"max |d logits| {delta:.3g}")
    if not captured(batch):
        return record("smoke", name, "the capture failed: the step fell back to eager (see the log)", "FAIL")
    record("smoke", name, f"max |d logits| {delta:.3g} (logits max {eager.abs().max().item():.3g})",
           "ok" if delta <= 1e-2 * max(eager.abs().max().item(), 1.0) and torch.isfinite(graphed).all() else "FAIL")


def _graphs_on_off(loaded, rows: int) -> None:
    from higgs_tts.core.sampling import SamplingParams
    from higgs_tts.engine.engine import Engine, EngineRequest

    name = f"64 greedy steps, graphs on vs off, {rows} rows"
    greedy = SamplingParams(temperature=0.0, ras_win_len=0, max_new_tokens=64 if CUDA else 16)
    requests = [EngineRequest(prompt_inputs(loaded), greedy, seed) for seed in range(rows)]
    graphed = Engine(loaded.model, use_cuda_graphs=CUDA, pad_batches=True)
    on = graphed.generate(requests, ignore_eos=True)
    off = Engine(loaded.model, use_cuda_graphs=False, pad_batches=True).generate(requests, ignore_eos=True)
    same = sum(int((a == b).all(dim=1).sum()) for a, b in zip(on, off, strict=True))
    total = sum(a.shape[0] for a in on)
    if not CUDA:
        return skipped("smoke", name, f"{same}/{total} columns identical")
    if not all(captured(scheduler.batch) for scheduler in graphed._schedulers.values()):
        return record("smoke", name, "the capture failed: the steps fell back to eager (see the log)", "FAIL")
    record("smoke", name, f"{same}/{total} columns identical", "ok" if same == total else "FAIL")


@torch.inference_mode()
def _teacher_forced(loaded) -> None:
    """transformers' generate() (greedy, its raw logits kept), then our eager step fed the same
    columns: top-1 agreement per (step, codebook) and the relative error of the logits."""
    from higgs_tts.core.generate import generation_config_for
    from higgs_tts.core.sampling import SamplingParams
    from higgs_tts.engine.model_runner import ModelRunner

    steps = 64 if CUDA else 24
    inputs = prompt_inputs(loaded)
    config = generation_config_for(loaded.model, SamplingParams(temperature=0.0, ras_win_len=0,
                                                                max_new_tokens=steps))
    config.output_logits = True
    out = loaded.model.generate(**inputs, generation_config=config)
    k, v = loaded.model.config.num_codebooks, loaded.model.config.codebook_size
    theirs = [step.float().view(-1, k, v)[0] for step in out.logits]
    columns = out.audio_sequences[0, -len(theirs):]
    runner = ModelRunner(loaded.model, 1024)
    cache = runner.allocate_cache(1)
    prompt_len = int(inputs["input_ids"].shape[1])
    ours = [runner.prefill(inputs, cache, 0)]
    for t in range(len(theirs) - 1):
        position = torch.tensor([prompt_len + t], device=loaded.device)
        ours.append(runner.decode_one_token(cache, columns[t][None], position)[0])
    ours_t, theirs_t = torch.stack(ours), torch.stack(theirs)
    agree = (ours_t.argmax(-1) == theirs_t.argmax(-1)).float().mean().item()
    rel = [((a - b).norm() / b.norm()).item() for a, b in zip(ours_t, theirs_t, strict=True)]
    median = statistics.median(rel)
    record("smoke", f"teacher-forced top-1 agreement vs transformers ({len(theirs)} steps x {k} codebooks)",
           f"{agree:.4f} (threshold {TOP1_MIN})", "ok" if agree >= TOP1_MIN else "FAIL")
    record("smoke", "teacher-forced relative error of logits", f"median {median:.2e}, max {max(rel):.2e} "
                                                               f"(threshold median {REL_ERR_MAX})",
           "ok" if median <= REL_ERR_MAX else "FAIL")


def _bursts(loaded) -> None:
    rows = 8 if CUDA else 2
    batch = admitted_batch(loaded, rows, graphs=CUDA)
    if CUDA:
        torch.cuda.reset_peak_memory_stats()
    finite = True
    for _ in range(4):
        batch.collect(batch.launch())
        finite &= bool(torch.isfinite(batch.logits[:rows]).all())
    record("smoke", f"NaN/inf in logits after 4 bursts x {rows} rows", "none" if finite else "found",
           "ok" if finite else "FAIL")
    if not CUDA:
        record("smoke", "memory after bursts", NO_CUDA, NO_CUDA)
        return
    sync()
    free, total = torch.cuda.mem_get_info()
    record("smoke", "memory after bursts", f"allocated {gib(torch.cuda.memory_allocated())}, peak "
                                          f"{gib(torch.cuda.max_memory_allocated())}, reserved "
                                          f"{gib(torch.cuda.memory_reserved())}, free {gib(free)} of {gib(total)}")


def _capture(loaded, slots: int, max_len: int) -> None:
    name = f"graph capture, scheduler at {slots} slots x {max_len} positions"
    if not CUDA:
        record("smoke", name, NO_CUDA, NO_CUDA)
        return
    from higgs_tts.engine.batch import Batch
    from higgs_tts.engine.graphs import free_cached_memory

    free_cached_memory()
    before = torch.cuda.memory_allocated()
    started = time.perf_counter()
    batch = Batch(loaded.model, slots, max_len, use_cuda_graphs=True, pad_rows=True)
    allocated = torch.cuda.memory_allocated()
    graphs = batch.capture_all()
    sync()
    seconds = time.perf_counter() - started
    record("smoke", name, f"{graphs} graphs in {seconds:.1f} s; KV cache {gib(allocated - before)}, graphs "
                          f"{gib(torch.cuda.memory_allocated() - allocated)} more (reserved "
                          f"{gib(torch.cuda.memory_reserved())})", "ok" if graphs else "FAIL")
    del batch
    free_cached_memory()


# -- timing --------------------------------------------------------------------------------------


def stage_timing() -> None:
    loaded = load()
    for rows in (1, BIG):
        guarded("timing", f"split, {rows} rows", lambda r=rows: _split(loaded, r))
    guarded("timing", "kernels per step", lambda: _kernels(loaded))


def _events_ms(fn, repeats: int) -> float:
    """Median device time of fn() over `repeats`, CUDA events around each call (on CPU, the clock)."""
    times = []
    for _ in range(repeats):
        if not CUDA:
            started = time.perf_counter()
            fn()
            times.append((time.perf_counter() - started) * 1e3)
            continue
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end))
    return statistics.median(times)


@torch.inference_mode()
def _split(loaded, rows: int) -> None:
    # Without CUDA the same split runs eagerly on the clock: it checks the code, its figures mean little.
    name = f"timing split at {rows} rows" + ("" if CUDA else " (CPU, eager step, no graphs)")
    batch = admitted_batch(loaded, rows, graphs=CUDA)
    batch.collect(batch.launch())  # captures this shape
    rows_run, length = batch.shape()
    step = batch._step_fn(rows_run, length)
    if CUDA and not captured(batch):
        return record("timing", name, "the capture failed: the step fell back to eager (see the log)", "FAIL")
    every = batch.steps_per_sync
    replay = _events_ms(step, REPEATS)  # one whole step: sampler, bookkeeping, layers

    def steps_only() -> None:  # a burst's device work, without its copy to the host
        for _ in range(every):
            step()

    device = _events_ms(steps_only, 5 if CUDA else 1)
    walls = []
    for _ in range(10 if CUDA else 2):
        started = time.perf_counter()
        batch.collect(batch.launch())  # the real one: its steps, one copy to the host, the hand-out
        walls.append((time.perf_counter() - started) * 1e3)
    wall = statistics.median(walls)
    what = "graph replay" if CUDA else "eager step"
    record("timing", name, f"{what} {replay:.3f} ms; {every} steps {device:.2f} ms device "
                           f"({1e3 * every / device:.0f} f/s/stream); burst {wall:.2f} ms wall "
                           f"({1e3 * every / wall:.0f} f/s), +{max(wall - device, 0):.2f} ms copy and hand-out")


@torch.inference_mode()
def _kernels(loaded) -> None:
    """Kernels launched per decode step: one burst under the profiler, divided by its steps."""
    from torch.profiler import ProfilerActivity, profile

    # Without CUDA: aten operators per step instead of kernels (it checks the code path).
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if CUDA else [])
    kind = torch.autograd.DeviceType.CUDA if CUDA else torch.autograd.DeviceType.CPU
    lines = []
    for rows in (1, BIG):
        batch = admitted_batch(loaded, rows, graphs=CUDA)
        batch.collect(batch.launch())
        with profile(activities=activities) as prof:
            batch.collect(batch.launch())
            sync()
        events = [e for e in prof.events() if e.device_type == kind and (CUDA or e.name.startswith("aten::"))]
        every = batch.steps_per_sync
        what = "device events (kernels, copies)" if CUDA else "aten operators (CPU, no CUDA)"
        record("timing", f"kernels per step at {rows} rows", f"{len(events) / every:.0f} {what} per step "
                                                             f"({len(events)} in a burst of {every})")
        lines.append(f"== {rows} rows, one burst of {every} steps\n")
        lines.append(prof.key_averages().table(sort_by="device_time_total" if CUDA else "cpu_time_total",
                                               row_limit=25))
        del batch
    (OUT / "profile.txt").write_text("\n".join(lines))


# -- summary -------------------------------------------------------------------------------------


def stage_summary(stages: list[str]) -> None:
    """At most 40 lines: stage status, then every figure and check, then bench and tests."""
    results = []
    if (OUT / "results.jsonl").is_file():
        results = [json.loads(line) for line in (OUT / "results.jsonl").read_text().splitlines() if line.strip()]
    lines = ["=" * 30 + " gpu-check summary " + "=" * 30]
    lines.append("stages: " + "; ".join(stages))
    for r in results:
        mark = {"ok": "ok  ", "FAIL": "FAIL", "info": "    "}.get(r["status"], "skip")
        lines.append(f"{mark} {r['stage']:<6} {r['name']}: {r['value']}"[:WIDTH])
    anatomy = OUT / "anatomy.json"
    if anatomy.is_file() and anatomy.stat().st_size:
        try:
            a = json.loads(anatomy.read_text())
            speed = (f"; b1 {a['frames_per_s_b1']:.0f} f/s = {a['roofline_fraction']:.0%} of roofline "
                     f"{a['roofline_frames_per_s']:.0f}") if "frames_per_s_b1" in a else ""
            lines.append(f"     anatomy {a['layers']} layers: {a['captured_kernels_per_layer']} kernels/layer, "
                         f"{a['captured_kernels_per_step']} captured + {a['eager_kernels_per_step']:.2f} eager per "
                         f"step, {a['syncs_per_burst']} sync/burst; prefill {a['prefill_kernels']} kernels "
                         f"{a['prefill_syncs']} syncs{speed}")
        except (ValueError, KeyError) as exc:
            lines.append(f"FAIL anatomy unreadable anatomy.json: {exc}")
    bench = OUT / "bench.json"
    if bench.is_file() and bench.stat().st_size:
        try:
            b = json.loads(bench.read_text())
            lines.append(f"     bench  {b['device']} {b['dtype']}: roofline b1 {b['roofline_frames_per_s']:.0f} f/s "
                         f"({b['copy_bandwidth_gbs']:.0f} GB/s), first frame {b['first_frame_ms']:.0f} ms, "
                         f"clone prefill {b['clone_prefill_ms']:.0f} ms")
            lines.append("     bench  batches: " + "; ".join(
                f"b{x['batch']} {x['frames_per_s_per_stream']:.0f} f/s/stream {x['audio_seconds_per_s']:.0f} aud-s/s"
                for x in b["batches"]))
            lines.append("     bench  scheduler: " + "; ".join(
                f"{c['streams']} streams {c['audio_seconds_per_s']:.0f} aud-s/s, {c['x_real_time_per_stream']:.2f}x "
                f"rt, TTFA {c['time_to_first_audio_ms']:.0f} ms" for c in b["concurrency"]))
            lines.append(f"     bench  streamed cloned voice: first audio {b['stream_first_audio_ms']:.0f} ms, "
                         f"{b['stream_underruns']} underruns; reference generate() "
                         f"{b['reference_frames_per_s']:.0f} f/s; codec {b['codec_decode_s_per_min']:.2f} s/min")
        except (ValueError, KeyError) as exc:
            lines.append(f"FAIL bench  unreadable bench.json: {exc}")
    else:
        lines.append("FAIL bench  no bench.json")
    tests = OUT / "tests.txt"
    if tests.is_file():
        tail = [line for line in tests.read_text().splitlines() if line.strip()]
        lines.append(f"     tests  {tail[-1] if tail else 'no output'}"[:WIDTH])
        lines += [f"FAIL tests  {line[7:]}"[:WIDTH] for line in tail if line.startswith("FAILED ")][:5]
    lines = lines[:39]
    lines.append("=" * 79)
    print("\n".join(lines))


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("stage", choices=["env", "smoke", "timing", "summary"])
    parser.add_argument("--stages", default="", help="summary: 'name status in N s' of each stage, ';'-separated")
    args = parser.parse_args()
    OUT.mkdir(parents=True, exist_ok=True)
    if args.stage == "summary":
        stage_summary([s for s in args.stages.split(";") if s])
    else:
        {"env": stage_env, "smoke": stage_smoke, "timing": stage_timing}[args.stage]()
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    sys.exit(main())
