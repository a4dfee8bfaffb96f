"""Records every diffusion-model call of a sampling run: time, step, whether a cacher computed or forecast it.

On CUDA each call is bracketed by CUDA events and resolved once at the end of the run (no per-call sync, so the
recording itself does not slow the pipeline it measures); on the CPU, perf_counter.
"""
from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field

import torch

from ..cachers.schedule import StepClock


@dataclass
class CallRecord:
    step: int
    sigma: float
    ms: float = 0.0
    computed: bool | None = None  # None: no cacher on this model
    cache_label: str | None = None


@dataclass
class RunRecord:
    index: int
    cold: bool
    device: str
    steps: int
    calls: list[CallRecord] = field(default_factory=list)
    wall_s: float = 0.0  # the whole sampling call, loading included
    load_s: float = 0.0  # of which ComfyUI's preparation: loading or moving model weights onto the device
    peak_memory_mb: float | None = None
    compile_s: float = 0.0  # torch.compile work (dynamo + inductor) done during this run: the cold-start cost
    compiled_graphs: int = 0

    def step_ms(self) -> dict[int, float]:
        per_step: dict[int, float] = {}
        for c in self.calls:
            per_step[c.step] = per_step.get(c.step, 0.0) + c.ms
        return per_step

    def computed_steps(self) -> list[int] | None:
        if all(c.computed is None for c in self.calls):
            return None
        return sorted({c.step for c in self.calls if c.computed})

    def to_dict(self) -> dict:
        return {**asdict(self), "step_ms": self.step_ms(), "computed_steps": self.computed_steps()}


class Recorder:
    """Lives in a MODEL's transformer_options; one per Benchmark node output, shared by the MODEL's clones."""

    def __init__(self, label: str) -> None:
        self.label = label
        self.runs: list[RunRecord] = []
        self._run: RunRecord | None = None
        self._clock: StepClock | None = None
        self._pending: list[tuple[CallRecord, object, object]] = []
        self._t0 = 0.0
        self._device: torch.device | None = None
        self._compile_at_start = (0.0, 0)

    @property
    def last_run(self) -> RunRecord | None:
        return self.runs[-1] if self.runs else None

    def start_run(self, sigmas: torch.Tensor, device: torch.device) -> None:
        self._clock = StepClock(sigmas)
        self._run = RunRecord(index=len(self.runs), cold=not self.runs, device=_device_name(device),
                              steps=self._clock.num_steps)
        self._pending = []
        self._device = device
        if device.type == "cuda":
            torch.cuda.synchronize(device)
            torch.cuda.reset_peak_memory_stats(device)
        self._compile_at_start = compile_totals()
        self._t0 = time.perf_counter()

    def time_preparation(self, executor, *args, **kwargs):
        """ComfyUI's prepare_sampling (it loads the models, moving weights when another MODEL of the graph held the
        device): timed apart, so that a graph switching models between branches does not read as slow sampling."""
        if self._run is None:
            return executor(*args, **kwargs)
        _sync(self._device)
        started = time.perf_counter()
        try:
            return executor(*args, **kwargs)
        finally:
            _sync(self._device)
            self._run.load_s += time.perf_counter() - started

    def end_run(self, device: torch.device) -> None:
        run = self._run
        if run is None:
            return
        if device.type == "cuda":
            torch.cuda.synchronize(device)
            run.peak_memory_mb = torch.cuda.max_memory_allocated(device) / 2**20
        run.wall_s = time.perf_counter() - self._t0
        seconds, graphs = compile_totals()
        run.compile_s = seconds - self._compile_at_start[0]
        run.compiled_graphs = graphs - self._compile_at_start[1]
        for record, start, end in self._pending:
            record.ms = start.elapsed_time(end) if hasattr(start, "elapsed_time") else (end - start) * 1000.0
        self.runs.append(run)
        self._run, self._pending = None, []

    def time_call(self, executor, x: torch.Tensor, sigma: float, *args, **kwargs):
        if self._run is None or self._clock is None:
            return executor(x, *args, **kwargs)
        record = CallRecord(step=self._clock.step_index(sigma), sigma=sigma)
        self._run.calls.append(record)
        if x.device.type == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            out = executor(x, *args, **kwargs)
            end.record()
        else:
            start = time.perf_counter()
            out = executor(x, *args, **kwargs)
            end = time.perf_counter()
        self._pending.append((record, start, end))
        return out

    def mark_call(self, computed: bool, label: str) -> None:
        """Called by a cacher for the call being timed: was the model run, or was the call served from cache?"""
        if self._run is not None and self._run.calls:
            self._run.calls[-1].computed = computed
            self._run.calls[-1].cache_label = label


def compile_totals() -> tuple[float, int]:
    """Seconds torch.compile has spent in this process (dynamo frames, including the inductor work they trigger),
    and graphs compiled: any compile, Fastlane's or ComfyUI's TorchCompileModel."""
    try:
        from torch._dynamo.utils import compilation_time_metrics, counters
    except ImportError:  # a torch without dynamo
        return 0.0, 0
    seconds = float(sum(compilation_time_metrics.get("_compile.compile_inner", ())))
    return seconds, int(counters["stats"]["unique_graphs"])


def _sync(device: torch.device | None) -> None:
    if device is not None and device.type == "cuda":
        torch.cuda.synchronize(device)


def _device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return str(device)
