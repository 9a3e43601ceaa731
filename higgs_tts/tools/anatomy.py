"""Counting what a GPU would be asked to do, on any device: kernels and host syncs.

At batch 1 a decode step costs about one launch (~2-3 us on a GPU) per kernel plus one weight
read, and every host sync stalls the pipeline, so these counts decide GPU speed long before FLOPs
do. They are exact on any device, CPU included, because they are counted from the operators
torch dispatches, not timed:

- kernels: every aten operator that computes (views, `empty` and other metadata-only operators are
  free). A fused operator counts once even where the CPU runs it as a composite:
  `F.rms_norm` and `F.scaled_dot_product_attention` are one kernel each on CUDA.
- host syncs: every point where the host must wait for the device: a device-to-host copy
  (`.cpu()`, `.to("cpu")`), reading a value (`.item()`, `.tolist()`, `bool(t)`, `int(t)`) of a
  device tensor, a host-to-device copy from a Python list (`torch.tensor(..., device=...)`), and
  the operators whose output size depends on data (`nonzero`, boolean-mask indexing,
  `masked_select`). Work on what a counted copy already brought to the host (and on tensors built
  on the host from Python values) is free: neither a kernel nor a sync.

    with Anatomy() as counted:
        step()
    counted.kernels, counted.syncs, counted.by_op
"""

from __future__ import annotations

import weakref
from collections import Counter

import torch
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode
from torch.utils._python_dispatch import TorchDispatchMode

aten = torch.ops.aten

# Fused on CUDA: counted once, whatever they decompose into below.
FUSED = {F.rms_norm, torch.rms_norm, F.scaled_dot_product_attention}

# Operators that launch nothing (metadata, allocation).
FREE = {
    aten.empty.memory_format, aten.empty_strided.default, aten.empty_like.default, aten.detach.default,
    aten.lift_fresh.default, aten.alias.default, aten._reshape_alias.default, aten.set_.source_Tensor,
    aten.resize_.default, aten.sym_size.int, aten.sym_stride.int, aten.sym_numel.default,
    aten.is_same_size.default, aten.sym_storage_offset.default, aten.is_pinned.default,
}

# Operators whose output size depends on the data: the host waits for the device to size it.
DATA_DEPENDENT = {aten.nonzero.default, aten.masked_select.default, aten.unique_dim.default,
                  aten._unique2.default, aten.nonzero_static.default}

# Tensor methods that bring device data to the host.
READS = {torch.Tensor.item, torch.Tensor.tolist, torch.Tensor.numpy, torch.Tensor.__bool__,
         torch.Tensor.__int__, torch.Tensor.__float__, torch.Tensor.__index__}
COPIES_OUT = {torch.Tensor.cpu}
MOVES = {torch.Tensor.to}
FROM_HOST = {torch.tensor, torch.as_tensor}


def _is_free(func) -> bool:
    if func in FREE:
        return True
    schema = func._schema
    # A view returns an alias of its input and launches nothing.
    return bool(schema.returns) and all(r.alias_info is not None and not r.alias_info.is_write
                                        for r in schema.returns)


def _to_host(args, kwargs) -> bool:
    """Whether a `Tensor.to(...)` call moves the tensor to the host."""
    for value in (*args[1:], kwargs.get("device")):
        if isinstance(value, torch.device | str) and torch.device(value).type == "cpu":
            return True
        if isinstance(value, torch.Tensor):
            return value.device.type == "cpu"
    return False


class _Kernels(TorchDispatchMode):
    def __init__(self, owner: Anatomy) -> None:
        super().__init__()
        self.owner = owner  # the counts live there, shared with the function mode

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        owner = self.owner
        inputs = [t for t in torch.utils._pytree.tree_leaves((args, kwargs)) if isinstance(t, torch.Tensor)]
        if not owner._to_device and inputs and all(owner._on_host(t) for t in inputs):  # host work on host data
            result = func(*args, **kwargs)
            for t in torch.utils._pytree.tree_leaves(result):
                if isinstance(t, torch.Tensor):
                    owner.mark_host(t)
            return result
        if not owner._inside_fused and not _is_free(func):
            owner.kernels += 1
            owner.by_op[str(func.overloadpacket.__name__)] += 1
        if not owner._inside_read:
            if func in DATA_DEPENDENT:
                owner.syncs += 1
            elif func in (aten.index.Tensor, aten.index_put_.default, aten.index_put.default):
                indices = args[1]
                if any(i is not None and i.dtype == torch.bool for i in indices):
                    owner.syncs += 1  # boolean-mask indexing runs nonzero first
        return func(*args, **kwargs)


class _Calls(TorchFunctionMode):
    def __init__(self, owner: Anatomy) -> None:
        super().__init__()
        self.owner = owner

    def __torch_function__(self, func, types, args=(), kwargs=None):
        owner, kwargs = self.owner, kwargs or {}
        if func in FUSED and not owner._inside_fused:
            owner.kernels += 1
            owner.by_op[getattr(func, "__name__", str(func))] += 1
            owner._inside_fused = True
            try:
                return func(*args, **kwargs)
            finally:
                owner._inside_fused = False
        sync = None
        if func in READS and not owner._on_host(args[0]):
            sync = "read"
        elif func in MOVES and owner._on_host(args[0]):
            sync = "from_host"  # host data to the device
        elif func in COPIES_OUT or (func in MOVES and _to_host(args, kwargs)):
            sync = "copy"
        elif func in FROM_HOST and kwargs.get("device") is not None:
            sync = "from_host"
        if sync is None:
            result = func(*args, **kwargs)
            if func in FROM_HOST and isinstance(result, torch.Tensor):
                owner.mark_host(result)  # built on the host from Python values
            return result
        if not owner._inside_read:
            owner.syncs += 1
            owner.sync_kinds[sync] += 1
        owner._inside_read += 1
        owner._to_device = sync == "from_host"  # what it makes lives on the device, whatever it came from
        try:
            result = func(*args, **kwargs)
        finally:
            owner._inside_read -= 1
            owner._to_device = False
        if (sync == "copy" and isinstance(result, torch.Tensor)
                and result.untyped_storage().data_ptr() != args[0].untyped_storage().data_ptr()):
            owner.mark_host(result)  # a copy of its own on the host: reading it costs nothing more
        return result


class Anatomy:
    """Counts kernels and host syncs of whatever runs inside `with Anatomy() as a:`."""

    def __init__(self) -> None:
        self.kernels = 0
        self.syncs = 0
        self.by_op: Counter[str] = Counter()
        self.sync_kinds: Counter[str] = Counter()
        self._inside_fused = False
        self._inside_read = 0
        self._to_device = False
        self._host: dict[int, list[weakref.ref]] = {}  # storage address -> tensors on it (a view outlives its base)
        self._modes = (_Calls(self), _Kernels(self))

    def _on_host(self, tensor: torch.Tensor) -> bool:
        refs = self._host.get(tensor.untyped_storage().data_ptr(), [])
        return any(ref() is not None for ref in refs)  # a marked tensor still holds that storage

    def mark_host(self, tensor: torch.Tensor) -> None:
        """`tensor` (and every view of its storage) lives on the host: reading it is free. Every
        marked tensor is kept (weakly): a view made on the host still counts once its base is gone."""
        address = tensor.untyped_storage().data_ptr()
        refs = self._host.get(address, []) if self._on_host(tensor) else []  # storage reused: forget the dead
        self._host[address] = [ref for ref in refs if ref() is not None] + [weakref.ref(tensor)]

    def __enter__(self) -> Anatomy:
        for mode in self._modes:
            mode.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        for mode in reversed(self._modes):
            mode.__exit__(*exc)


# -- the engine's figures -----------------------------------------------------------------------


def expand_layers(model, layers: int):
    """The model with `layers` decoder layers, the checkpoint's own repeated in order (the tiny
    checkpoint as deep as the real model: per-layer counts are the real model's, totals too)."""
    import copy

    import torch.nn as nn

    own = list(model.model.layers)
    if layers == len(own):
        return model
    grown = copy.deepcopy(model)
    stack = [copy.deepcopy(own[i % len(own)]) for i in range(layers)]
    for index, layer in enumerate(stack):
        layer.self_attn.layer_idx = index
    grown.model.layers = nn.ModuleList(stack)
    grown.config.num_hidden_layers = layers
    grown.model.config.num_hidden_layers = layers
    if hasattr(grown.config, "layer_types") and grown.config.layer_types:
        grown.config.layer_types = [grown.config.layer_types[0]] * layers
    return grown


def first_audio_frames(num_codebooks: int) -> int:
    """Frames generated before the servers' streaming decoder hands out its first audio."""
    import numpy as np

    from ..core.streaming import StreamingDecoder

    decoder = StreamingDecoder(lambda frames: np.zeros(frames.shape[0] * 960, dtype=np.float32))
    frames = 0
    while not decoder.push(torch.zeros((1, num_codebooks), dtype=torch.long)):
        frames += 1
    return frames + 1


def measure(model, plain: dict, clone: dict, batch_sizes: tuple[int, ...] = (1, 8, 32), bursts: int = 3) -> dict:
    """Every structural figure of the engine on `model`'s device (see the module's docstring):
    kernels per layer and per step inside the captured step, eager kernels per step around it,
    host syncs per burst, the prefill's kernels and syncs, and host time per step outside the
    captured step for each batch size."""
    from ..core.sampling import SamplingParams
    from ..engine.batch import Batch, bucket_length
    from ..engine.model_runner import PREFILL_PACK_TOKENS
    from ..engine.prefix_cache import PrefixCache
    from ..engine.scheduler import STEPS_PER_SYNC
    from ..engine.sequence import EngineRequest, Sequence

    params = SamplingParams(temperature=0.8, max_new_tokens=STEPS_PER_SYNC * (bursts + 2))
    prompt_len = max(int(plain["input_ids"].shape[1]), int(clone["input_ids"].shape[1]))
    max_len = bucket_length(prompt_len + params.max_new_tokens + STEPS_PER_SYNC + 1)
    figures: dict = {"layers": len(model.model.layers), "steps_per_sync": STEPS_PER_SYNC}

    def batch_of(rows: int) -> Batch:
        batch = Batch(model, rows, max_len, STEPS_PER_SYNC, use_cuda_graphs=model.device.type == "cuda")
        for slot in range(rows):
            batch.admit(Sequence(EngineRequest(plain, params, slot), ignore_eos=True), slot)
        return batch

    # The captured step, and one layer inside it, at batch 1.
    batch = batch_of(1)
    rows, length = batch.shape()
    step = batch.make_step(rows, length)
    per_layer: list[int] = []
    runner = batch.runner
    original = runner.layer

    def counted_layer(*args, **kwargs):
        before = counter.kernels
        out = original(*args, **kwargs)
        per_layer.append(counter.kernels - before)
        return out

    runner.layer = counted_layer
    try:
        with torch.inference_mode(), Anatomy() as counter:
            step()
    finally:
        del runner.layer
    figures["captured_kernels_per_layer"] = max(per_layer)
    figures["captured_kernels_per_step"] = counter.kernels
    figures["captured_kernels_by_op"] = dict(counter.by_op.most_common())
    figures["captured_syncs_per_step"] = counter.syncs

    # A whole burst: launch and collect, graphs where the device has them.
    batch.collect(batch.launch())  # warm-up (and capture on CUDA)
    with Anatomy() as whole:
        taken = batch.collect(batch.launch())
    assert taken, "the burst handed nothing out"
    replays = 0 if batch.graphs is not None else STEPS_PER_SYNC * counter.kernels
    figures["eager_kernels_per_step"] = (whole.kernels - replays) / STEPS_PER_SYNC
    figures["syncs_per_burst"] = whole.syncs
    figures["eager_kernels_by_op_per_burst"] = dict(whole.by_op.most_common()) if batch.graphs is not None else {
        op: n - STEPS_PER_SYNC * counter.by_op.get(op, 0) for op, n in whole.by_op.items()
        if n - STEPS_PER_SYNC * counter.by_op.get(op, 0)}

    # A cloned voice's admission: its prefill through the model's forward, and its settings; then
    # the same voice again, its prefix from the prefix cache.
    del batch
    batch = Batch(model, 1, max_len, STEPS_PER_SYNC, prefix_cache=PrefixCache(2**40))
    for cached in (False, True):
        with torch.inference_mode(), Anatomy() as prefill:
            batch.admit(Sequence(EngineRequest(clone, params, 0), ignore_eos=True), 0)
        batch.release(0)
        suffix = "_cached_voice" if cached else ""
        figures[f"prefill_kernels{suffix}"] = prefill.kernels
        figures[f"prefill_syncs{suffix}"] = prefill.syncs
        figures[f"prefill_tokens{suffix}"] = batch.runner.prefilled_tokens
    del batch
    # Four cloned voices joining together: one packed prefill (CUDA's default, forced on any device).
    batch = Batch(model, 4, max_len, STEPS_PER_SYNC, pack_tokens=PREFILL_PACK_TOKENS)
    with torch.inference_mode(), Anatomy() as packed:
        batch.admit_many([(Sequence(EngineRequest(clone, params, slot), ignore_eos=True), slot) for slot in range(4)])
    figures["prefill_kernels_4_packed"] = packed.kernels
    figures["prefill_syncs_4_packed"] = packed.syncs
    figures["first_audio_frames"] = first_audio_frames(model.config.num_codebooks)
    del batch

    # Host time per step outside the captured step, per batch size.
    host_ms = {f"b{size}": host_ms_per_step(batch_of(size), bursts) for size in batch_sizes}
    figures["host_ms_per_step"] = host_ms
    return figures


def host_ms_per_step(batch, bursts: int) -> float:
    """Host milliseconds per step spent outside the captured step (launching it, the burst's copy
    and hand-out), the median over `bursts` bursts."""
    import statistics
    import time

    from ..engine.scheduler import STEPS_PER_SYNC

    rows, length = batch.shape()
    inner = batch._step_fn(rows, length)
    spent = [0.0]

    def timed() -> None:
        started = time.perf_counter()
        inner()
        if batch.device.type == "cuda":
            torch.cuda.synchronize(batch.device)
        spent[0] += time.perf_counter() - started

    batch._step_fn = lambda rows, length: timed
    batch.collect(batch.launch())
    outside = []
    for _ in range(bursts):
        spent[0] = 0.0
        started = time.perf_counter()
        batch.collect(batch.launch())
        outside.append((time.perf_counter() - started - spent[0]) / STEPS_PER_SYNC * 1e3)
    return statistics.median(outside)
