"""The diffusion model's call recorded once in a CUDA graph per input signature, then replayed with one launch.

Why: SDXL in ComfyUI is bound by the CPU launching ~1,800 kernels per call; inductor's own CUDA graphs
(``reduce-overhead``) need the whole UNet compiled, ~2 minutes at every new image size. A graph recorded around
the call takes ~0.2 s per size, over eager blocks (bit-identical to eager) or over Fastlane Compile's regional
blocks (compiled once for all sizes they share).

Mechanism: an APPLY_MODEL wrapper gives the diffusion model, for the length of one call, an instance ``_forward``
(the method ComfyUI calls inside its DIFFUSION_MODEL wrappers, so Fastlane cachers keep deciding in Python outside
the graph). Per signature (the shapes, dtypes and devices of the call's tensors, its other arguments, the
attention override) the first call runs as usual (warm-up: regional compilation, library workspaces), the second
is recorded, and later ones copy their tensors into the recorded inputs, replay, and return a copy of the output.
Tensors the call leaves in ``transformer_options`` (Fastlane DeepCache's deep feature) come back the same way, and
DeepCache's shallow pass on cached steps is recorded as a function of its own (``GRAPH_FN_KEY``).

Recorded only when replaying is exactly re-running: not while the model is partially loaded (lowvram: weights are
copied in per call), and not for calls carrying ComfyUI patches or ControlNet residuals (their Python runs at each
call and would not on a replay); those calls run as they would without this node, and the run's log says why.
A graph reads the weights where they were when it was recorded: every sampling run checks their addresses, and a
moved or replaced weight (a LoRA patched in, the model reloaded) drops the graphs, which are recorded again.
A module that measures something on its first call of a run (its ``calibrating`` attribute True: Fastlane
``fp8_tensorwise``'s activation scales, re-armed at every run start) needs that call's Python, which a replay would
skip: the first call of such a run runs unrecorded, and the replays after it read the new values in place (they
live in buffers the graphs read by address).
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any, Callable

import torch

from ..faults import FREE_VRAM, first_line, is_oom, run_without
from . import engine, families
from .call_wrappers import (CUDA_GRAPH_KEY, GRAPH_FN_KEY, RunNotes, install_call_wrappers, transformer_options_of,
                            wrapper_owner)

KEY = CUDA_GRAPH_KEY
CALIBRATING_ATTR = "calibrating"  # a module with this attribute True measures something on its next call
MAX_GRAPHS = 16  # per model; more signatures than this (many sizes in one session) start over
SAFE_PATCH_FLAG = "fastlane_whole_compile_safe"  # a patch that only hands a tensor out (DeepCache's capture)
RECORDED_FAMILIES = ("FLUX", "UNet (SDXL/SD1.x)")  # the regional-compile families whose replays were checked on a GPU
log = logging.getLogger("fastlane")


@dataclass
class GraphRunStats(RunNotes):
    calls: int = 0
    replays: int = 0
    recorded: int = 0
    record_s: float = 0.0
    graph_mib: float = 0.0


@dataclass
class Recording:
    """What a replay needs: the graph, the tensors it reads (refilled per call) and the tensors it writes."""

    replay: Callable[[], None]
    inputs: list[torch.Tensor]
    output: torch.Tensor
    side_outputs: dict[str, torch.Tensor]


def _flatten(args: tuple, kwargs: dict, options: dict) -> tuple[list[torch.Tensor], tuple]:
    """The call's tensors (positional, keyword, and top-level in transformer_options: the sigmas), and a hashable
    signature of the call: tensor layouts plus every other argument. TypeError for an argument a replay could not
    refill (a dict of ControlNet residuals, an object)."""
    tensors: list[torch.Tensor] = []
    signature: list = []

    def add(name, value) -> None:
        if isinstance(value, torch.Tensor):
            tensors.append(value)
            signature.append((name, tuple(value.shape), tuple(value.stride()), value.dtype, str(value.device)))
        elif value is None or isinstance(value, (bool, int, float, str)):
            signature.append((name, value))
        else:
            raise TypeError(f"argument {name!r} of the call is a {type(value).__name__}")

    for i, value in enumerate(args):
        if value is not options:
            add(i, value)
    for name in sorted(kwargs):
        if kwargs[name] is not options:
            add(name, kwargs[name])
    for name in sorted(options):
        value = options[name]
        if isinstance(value, torch.Tensor):
            add(("options", name), value)
        elif callable(value) and name == "optimized_attention_override":
            signature.append((name, id(value)))
    return tensors, tuple(signature)


def _rebuild(args: tuple, kwargs: dict, options: dict, tensors: list[torch.Tensor]) -> tuple[tuple, dict, dict]:
    """The call with its tensors replaced, in ``_flatten``'s order, by ``tensors``; options is a shallow copy."""
    it = iter(tensors)
    options_copy = dict(options)
    new_args = tuple(options_copy if a is options else next(it) if isinstance(a, torch.Tensor) else a for a in args)
    new_kwargs = {}
    for name in sorted(kwargs):
        value = kwargs[name]
        new_kwargs[name] = options_copy if value is options else next(it) if isinstance(value, torch.Tensor) else value
    for name in sorted(options):
        if isinstance(options[name], torch.Tensor):
            options_copy[name] = next(it)
    return new_args, new_kwargs, options_copy


def why_not_recorded(options: dict) -> str | None:
    """Why this call must run unrecorded, or None: patches (other than a pure capture) run Python at every call that
    a replay would skip. (ControlNet residuals, a dict argument, are refused by ``_flatten``.)"""
    if any(options.get("patches_replace", {}).values()):
        return "the MODEL carries block patches (a Fastlane block cache at 'blocks' granularity or another patch node)"
    patches = options.get("patches", {})
    unsafe = sorted(k for k, ps in patches.items() if any(not getattr(p, SAFE_PATCH_FLAG, False) for p in ps))
    if unsafe:
        return f"the MODEL carries ComfyUI patches ({', '.join(unsafe)})"
    return None


def weights_fingerprint(module: torch.nn.Module) -> int:
    return hash(tuple((t.data_ptr(), t.dtype) for t in (*module.parameters(), *module.buffers())))


class CudaGraphRecorder:
    """One per node output; shared by the MODEL's clones through the wrappers' closures."""

    def __init__(self,
                 record: Callable[[Callable[[], Any], Any], tuple[Callable[[], None], Any]] | None = None) -> None:
        """``record(fn, pool)`` runs ``fn`` as recorded (its memory from ``pool``) and returns (replay, what ``fn``
        returned, rewritten by each replay): a CUDA graph by default."""
        self._record = record or record_cuda_graph
        self._recordings: dict[tuple, Recording | None] = {}  # None: the signature was seen once (warm-up done)
        self._failed: set[tuple] = set()
        self._weights: int | None = None  # fingerprint of the weights the graphs read
        self._weights_checked = False  # in this sampling run
        self._calibrate_first = False  # this run's first call must run its Python (a module calibrates on it)
        self._pool = None  # the memory pool this recorder's graphs share; lives as long as one of them does
        self.run: GraphRunStats | None = None
        self.runs: list[GraphRunStats] = []

    def reset(self) -> None:
        """Drop every recorded graph (and, with the last reference, its memory)."""
        self._recordings.clear()
        self._failed.clear()
        self._pool = None  # a pool outlives no graph: its handle must not be reused once they are gone

    # ---- one call ---------------------------------------------------------------------------------------------

    def call(self, forward: Callable, args: tuple, kwargs: dict, options: dict, tag: str = "_forward"):
        """``forward(*args, **kwargs)``: run (the first time per signature), recorded, or replayed. ``tag`` names
        the function: calls of different functions never share a recording."""
        run = self.run or GraphRunStats()
        run.calls += 1
        reason = why_not_recorded(options)
        if reason is None:
            try:
                tensors, signature = _flatten(args, kwargs, options)
                signature = (tag, *signature)
            except TypeError as e:
                reason = f"{e}: ControlNet residuals or another per-call structure a replay cannot refill"
        if reason is not None:
            run.note(f"calls ran without a CUDA graph: {reason}")
            return forward(*args, **kwargs)
        if signature in self._failed:
            return forward(*args, **kwargs)
        if signature not in self._recordings:
            if len(self._recordings) >= MAX_GRAPHS:
                run.note(f"more than {MAX_GRAPHS} call signatures (sizes, batches): graphs dropped and recorded again")
                self.reset()
            out = forward(*args, **kwargs)  # warm-up: compiles regional blocks, picks kernels; records nothing
            self._recordings[signature] = None
            return out
        recording = self._recordings[signature]
        if recording is None:
            oom = None
            try:
                recording = self._record_call(forward, args, kwargs, options, tensors, run)
            except Exception as e:  # noqa: BLE001  (recording can fail in code we do not own: run it as it was)
                if not is_oom(e):
                    self._failed.add(signature)
                    return self._run_after_failed_recording(forward, args, kwargs, run, e)
                oom = first_line(e)  # only text: the traceback's frames hold the failed recording's memory
            if oom is not None:
                return self._run_after_oom(forward, args, kwargs, run, signature, oom)
            self._recordings[signature] = recording
        else:
            for static, new in zip(recording.inputs, tensors):
                static.copy_(new)
        recording.replay()
        run.replays += 1
        for name, tensor in recording.side_outputs.items():
            options[name] = tensor.clone()
        return recording.output.clone()

    @staticmethod
    def _run_after_failed_recording(forward: Callable, args: tuple, kwargs: dict, run: GraphRunStats,
                                    e: Exception):
        """Any other failure: the call runs as it was (recording can fail in code we do not own)."""
        run.note(f"a call could not be recorded, it runs without a CUDA graph ({type(e).__name__}: "
                 f"{str(e)[:200]})")
        log.warning("Fastlane CUDA graph: recording failed, running eagerly: %s. A failed recording can "
                    "leave torch's CUDA state unusable for later compiles in this process: if errors follow, "
                    "restart ComfyUI and bypass Fastlane CUDA Graph for this graph", e)
        return forward(*args, **kwargs)

    def _run_after_oom(self, forward: Callable, args: tuple, kwargs: dict, run: GraphRunStats, signature: tuple,
                       what: str):
        """An OOM while recording falls back to the unrecorded call, as any failed recording does, rather than
        failing the prompt: the sampler may be well into its run, and a recording needs memory the plain call does
        not (its own copy of the call's inputs and activations, kept in the graph's pool). This recorder's graphs are
        dropped as well, freeing their pool for the rest of the run; this signature is not recorded again (until the
        model reloads or more signatures start the recorder over). If the plain call runs out too, the model does
        not fit at this size: raised as a FastlaneOutOfMemory saying so."""
        self.reset()  # the graphs' pool: given back for the calls that now run eagerly
        self._failed.add(signature)
        message = (f"the GPU ran out of memory recording a CUDA graph ({what}): graphs dropped, this call signature "
                   f"runs without a CUDA graph. A recording keeps its own copy of the call's activations; to record, "
                   f"use a smaller resolution or batch, {FREE_VRAM}; or bypass Fastlane CUDA Graph")
        run.note(message)
        log.warning("Fastlane CUDA graph: %s", message)
        return run_without("Fastlane CUDA Graph", f"recording a graph ({what})", "without one", forward, *args,
                           **kwargs)

    def _record_call(self, forward: Callable, args: tuple, kwargs: dict, options: dict,
                     tensors: list[torch.Tensor], run: GraphRunStats) -> Recording:
        started = time.perf_counter()
        statics = [t.clone() for t in tensors]
        new_args, new_kwargs, options_copy = _rebuild(args, kwargs, options, statics)
        keys_before = set(options_copy)

        def run_once() -> tuple[Any, dict[str, torch.Tensor]]:
            out = forward(*new_args, **new_kwargs)
            side = {k: v for k, v in options_copy.items() if k not in keys_before and isinstance(v, torch.Tensor)}
            for k in side:  # the next run (the capture after the warm-up) starts from the same options
                del options_copy[k]
            return out, side

        memory_before = _reserved(statics)
        if self._pool is None and torch.cuda.is_available():
            self._pool = torch.cuda.graph_pool_handle()
        replay, (output, side) = self._record(run_once, self._pool)
        if not isinstance(output, torch.Tensor):
            raise TypeError(f"the model returned a {type(output).__name__}, not a tensor")
        for static, new in zip(statics, tensors):
            static.copy_(new)
        run.recorded += 1
        run.record_s += time.perf_counter() - started
        run.graph_mib += (_reserved(statics) - memory_before) / 2**20
        return Recording(replay=replay, inputs=statics, output=output, side_outputs=side)

    # ---- ComfyUI wrappers -------------------------------------------------------------------------------------------

    def apply_model_wrapper(self, executor, *args, **kwargs):
        base = executor.class_obj
        dm = base.diffusion_model
        if not self._weights_checked:  # first call of the run: did the weights move since the graphs were recorded?
            fingerprint = weights_fingerprint(dm)
            if self._recordings and fingerprint != self._weights:
                if self.run:
                    self.run.note("the weights moved or changed since the last run (LoRA, reload): graphs recorded "
                                  "again")
                self.reset()
            self._weights, self._weights_checked = fingerprint, True
            self._calibrate_first = any(getattr(m, CALIBRATING_ATTR, False) is True for m in dm.modules())
        if self._calibrate_first:
            self._calibrate_first = False
            if self.run:
                self.run.calls += 1
                self.run.note("the run's first call ran without a CUDA graph: the model calibrates on it "
                              "(fp8_tensorwise activation scales); later replays read the new scales")
            return executor(*args, **kwargs)
        if getattr(base, "model_lowvram", False):
            if self.run:
                self.run.calls += 1
                self.run.note("the model is partially loaded (lowvram: weights copied in per call): no CUDA graph; "
                              "free VRAM or load fewer models")
            return executor(*args, **kwargs)
        previous = dm.__dict__.get("_forward")
        inner = previous if previous is not None else type(dm)._forward.__get__(dm)

        def _forward(*a, **k):
            return self.call(inner, a, k, transformer_options_of(a, k))

        dm._forward = _forward
        call_options = transformer_options_of(args, kwargs)
        call_options[GRAPH_FN_KEY] = lambda tag, fn, a, k: self.call(fn, a, k, call_options, tag)
        try:
            return executor(*args, **kwargs)
        finally:
            call_options.pop(GRAPH_FN_KEY, None)
            if previous is None:
                dm.__dict__.pop("_forward", None)
            else:
                dm._forward = previous

    def outer_sample_wrapper(self, executor, *args, **kwargs):
        self.run = GraphRunStats()
        self._weights_checked = False
        started = time.perf_counter()
        try:
            return executor(*args, **kwargs)
        finally:
            run, self.run = self.run, None
            self.runs = [*self.runs[-15:], run]
            self._log(run, time.perf_counter() - started)

    def _log(self, run: GraphRunStats, wall_s: float) -> None:
        recorded = (f"recorded {run.recorded} graph(s) in {run.record_s:.2f} s (GPU memory torch reserves: "
                    f"{run.graph_mib:+.0f} MiB across the recordings), "
                    if run.recorded else "")
        log.info("Fastlane CUDA graph: %s%d of %d calls replayed; run took %.1f s", recorded, run.replays, run.calls,
                 wall_s)
        for note in run.notes:
            log.info("Fastlane CUDA graph: %s", note)

    def report(self) -> dict[str, Any]:
        last = self.runs[-1] if self.runs else None
        return {"graphs": sum(r is not None for r in self._recordings.values()),
                "last_run": None if last is None else {
                    "calls": last.calls, "replays": last.replays, "recorded": last.recorded,
                    "record_s": round(last.record_s, 3), "graph_mib": round(last.graph_mib, 1),
                    "notes": list(last.notes)}}


def _reserved(tensors: list[torch.Tensor]) -> int:
    """GPU memory torch holds (its caching allocator and graph pools) on the call's device."""
    device = next((t.device for t in tensors if t.device.type == "cuda"), None)
    return torch.cuda.memory_reserved(device) if device is not None else 0


def record_cuda_graph(fn: Callable[[], Any], pool=None) -> tuple[Callable[[], None], Any]:
    """Record ``fn`` (already run once on these shapes) in a CUDA graph; returns (replay, the output it writes).
    A recorder's graphs share one memory pool: they are replayed one at a time and their outputs are copied out at
    once, so a later graph may reuse what an earlier one only needed while it ran. (torch frees a pool with its
    last graph, so a handle is never kept past them: reusing it fails an allocator assertion, seen on an H200.)"""
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):  # one more eager run off the capture stream, as torch's own recipe does
        fn()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    # "thread_local": only this thread's unsafe CUDA calls break the capture. ComfyUI's server answers
    # /system_stats (torch.cuda.memory_stats) on another thread while a prompt samples; under torch's default
    # "global" mode such a poll invalidated the recording, and the freed capture memory then aborted the process
    # under ComfyUI's cudaMallocAsync allocator (the soak on an H100, 2026-12-07). Inductor's CUDA graphs do the same.
    with torch.cuda.graph(graph, pool=pool, capture_error_mode="thread_local"):
        output = fn()
    return graph.replay, output


def attach(model, record: Callable | None = None):
    """A clone of ``model`` whose diffusion-model calls are recorded and replayed as CUDA graphs; ``model`` itself
    is left untouched. ``record`` replaces the CUDA recording (tests on machines without a GPU)."""
    dm = model.get_model_object("diffusion_model")
    family = families.family_of(dm)
    if family is None or family.name not in RECORDED_FAMILIES or not hasattr(type(dm), "_forward"):
        raise ValueError(f"Fastlane CUDA Graph knows FLUX and SDXL/SD1.x UNets; this MODEL is {type(dm).__name__}")
    compiler = engine.compiler_of(model)
    if compiler is not None:
        engine.check_stacks_with_cuda_graph(compiler.spec)
    recorder = CudaGraphRecorder(record)
    patched = model.clone()
    install_call_wrappers(patched, KEY, recorder)
    return patched, recorder


def recorder_of(model) -> CudaGraphRecorder | None:
    """The recorder Fastlane CUDA Graph attached to a MODEL, or None."""
    return wrapper_owner(model, KEY, CudaGraphRecorder)
