#!/usr/bin/env python3
"""Fastlane GPU benchmark runner: real FLUX.1-dev / SDXL architectures (random weights), real ComfyUI sampling loop.

Each *row* turns the base ``ModelPatcher`` into a patched clone, the way a ComfyUI node does (``eager``, ``compile``,
``easycache``, ...). The runner samples with ``comfy.sample.sample`` (FLUX: euler/simple, cfg 1.0, guidance 3.5 in the
cond; SDXL: euler/normal, cfg 7 so ComfyUI batches cond+uncond), times every diffusion-model call with CUDA events
from an APPLY_MODEL wrapper, and writes results.json / results.md / steps.png into --out.

    python benchmarks/run.py --family flux --rows eager,compile --steps 28 --out out/flux
    python benchmarks/run.py --family sdxl --tiny --rows eager,easycache --steps 4 --out /tmp/bench_sdxl   # CPU smoke

Random weights: timing only. See benchmarks/README.md for every column, and benchmarks/rows/ to add rows.
"""
from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as _dt
import gc
import importlib.machinery
import importlib.util
import json
import logging
import os
import platform
import re
import shlex
import signal
import statistics
import subprocess
import sys
import time
import traceback
import types
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

BENCH_DIR = Path(__file__).resolve().parent
PACK_DIR = BENCH_DIR.parent
_T0 = time.perf_counter()

RANDOM_WEIGHTS_NOTE = "random weights: timing only"
# Measured on the lent H100 (shared/device/NOTES.md): dense bf16 matmul 8192^3.
DEFAULT_PEAK_TFLOPS = 779.0


def log(msg: str) -> None:
    now = _dt.datetime.now().strftime("%H:%M:%S")
    print(f"[{now} +{time.perf_counter() - _T0:7.1f}s] {msg}", flush=True)


# ======================================================================================================================
# Bringing ComfyUI in
# ======================================================================================================================


def locate_comfyui() -> Path | None:
    """$COMFYUI_PATH, then .fastlane-env (scripts/setup.sh), then .devcarry/ComfyUI (used only when `comfy` is not
    importable already, e.g. through PYTHONPATH on the device)."""
    candidates = []
    if os.environ.get("COMFYUI_PATH"):
        candidates.append(Path(os.environ["COMFYUI_PATH"]))
    env_file = PACK_DIR / ".fastlane-env"
    if env_file.exists():
        for line in env_file.read_text().splitlines():
            if line.startswith("COMFYUI_PATH="):
                candidates.append(Path(line.split("=", 1)[1].strip()))
    candidates.append(PACK_DIR / ".devcarry" / "ComfyUI")
    for c in candidates:
        if (c / "comfy" / "model_patcher.py").exists():
            return c.resolve()
    return None


def _stub_package(root: str, submodules: list[str]) -> None:
    def _getattr(name: str) -> Any:
        if name.startswith("__"):
            raise AttributeError(name)
        return type(name, (), {"__module__": root})

    for name in [root, *[f"{root}.{s}" for s in submodules]]:
        mod = types.ModuleType(name)
        mod.__getattr__ = _getattr  # type: ignore[attr-defined]
        mod.__path__ = []  # type: ignore[attr-defined]
        mod.__spec__ = importlib.machinery.ModuleSpec(name, None, is_package=True)
        mod.__fastlane_stub__ = True  # type: ignore[attr-defined]
        sys.modules[name] = mod
        parent, _, leaf = name.rpartition(".")
        if parent:
            setattr(sys.modules[parent], leaf, mod)


def stub_missing_modules() -> list[str]:
    """Inert stand-ins for modules ComfyUI imports at module level but that nothing here runs:

    - ``av`` (PyAV): comfy_api.latest imports it for its video types; the device image has no PyAV, and without it
      the V3 node API (core and Fastlane nodes) would not import.
    - ``torchvision``: comfy.model_base imports model files (Cosmos, Cascade) that import it at module level. The
      device image is believed to have it; the stand-in only comes in where it is missing, and says so.

    Only modules that cannot be found are stubbed; the list is printed and written into results.json."""
    stubbed = []
    if importlib.util.find_spec("torchvision") is None:
        # transformers/diffusers decide once whether torchvision is there; let them decide before the stand-in exists
        for mod in ("transformers", "diffusers"):
            with contextlib.suppress(Exception):
                if importlib.util.find_spec(mod) is not None:
                    importlib.import_module(mod + ".utils.import_utils").is_torchvision_available()
    wanted = {
        "av": ["container", "subtitles", "subtitles.stream", "video", "video.frame", "audio", "audio.frame", "error"],
        "torchvision": ["transforms", "transforms.functional", "transforms.v2", "ops", "io", "utils", "models"],
    }
    for root, subs in wanted.items():
        if root not in sys.modules and importlib.util.find_spec(root) is None:
            _stub_package(root, subs)
            stubbed.append(root)
    return stubbed


def import_comfyui(use_cpu: bool) -> dict[str, Any]:
    if importlib.util.find_spec("comfy") is None:  # not on PYTHONPATH (the device puts .devcarry/ComfyUI there)
        path = locate_comfyui()
        if path is not None and str(path) not in sys.path:
            sys.path.insert(0, str(path))
    if importlib.util.find_spec("comfy") is None:
        raise SystemExit("ComfyUI not found: set COMFYUI_PATH, run scripts/setup.sh, or put it on PYTHONPATH")
    stubbed = stub_missing_modules()
    from comfy.cli_args import args

    args.cpu = use_cpu
    args.disable_all_custom_nodes = True
    import comfy.model_management  # noqa: F401  (reads args.cpu at import)
    import comfy.model_patcher  # noqa: F401
    import comfy.sample  # noqa: F401
    import comfy.supported_models  # noqa: F401

    failed = {}
    for mod in ["comfy_api.latest", "comfy_api.torch_helpers", *sorted({m for m, _ in CORE_EXTRA_NODES.values()}),
                "nodes"]:
        try:
            importlib.import_module(mod)
        except Exception as e:  # noqa: BLE001  (the rows that need it will fail and say so)
            failed[mod] = f"{type(e).__name__}: {e}"

    comfy_root = Path(comfy.model_management.__file__).resolve().parents[1]
    return {"path": str(comfy_root), "version": comfyui_version(comfy_root), "stubbed_modules": stubbed,
            "import_failures": failed}


def comfyui_version(comfy_root: Path) -> str:
    vfile = comfy_root / "comfyui_version.py"
    m = re.search(r'__version__\s*=\s*"([^"]+)"', vfile.read_text()) if vfile.exists() else None
    return m.group(1) if m else "?"


def hide_stubs() -> None:
    """After ComfyUI (and the pack) imported, take the torchvision stand-in out of sys.modules so that nothing later
    mistakes it for the real package."""
    for name in [n for n in sys.modules if n == "torchvision" or n.startswith("torchvision.")]:
        if getattr(sys.modules[name], "__fastlane_stub__", False):
            del sys.modules[name]


def load_pack(catcher: "CacheLogCatcher") -> str:
    """Load this pack the way ComfyUI loads custom nodes, so its V3 nodes land in nodes.NODE_CLASS_MAPPINGS."""
    import nodes

    before = set(nodes.NODE_CLASS_MAPPINGS)
    catcher.warnings = []
    ok = asyncio.run(nodes.load_custom_node(str(PACK_DIR)))
    added = sorted(set(nodes.NODE_CLASS_MAPPINGS) - before)
    registered = f"{len(added)} nodes registered: {', '.join(added) if added else '-'}"
    if not ok:  # ComfyUI registers node by node, so a failure can leave the nodes before it registered
        why = catcher.warnings[-1] if catcher.warnings else "no message"
        return f"load_custom_node failed ({why[:240]}); {registered}"
    return f"loaded, {registered}"


# ======================================================================================================================
# Rows (benchmarks/rows/: the registry, the node() helper, every row definition)
# ======================================================================================================================

if str(BENCH_DIR) not in sys.path:  # rows/ is imported by name, as this file's sibling (also when run.py is imported)
    sys.path.insert(0, str(BENCH_DIR))
from rows import CTX, ROWS, Row, RowSkipped, node, row  # noqa: E402  (node: also check_shapes.py's)
from rows.registry import ALL_FAMILIES, NEW_FAMILIES  # noqa: E402
from rows.comfy_node import CORE_EXTRA_NODES  # noqa: E402


# ======================================================================================================================
# Timing
# ======================================================================================================================


class CallTimer:
    """APPLY_MODEL wrapper: CUDA events (or perf_counter on CPU) around each diffusion-model call."""

    KEY = "fastlane_bench_timer"

    def __init__(self, device) -> None:
        import torch

        self.torch = torch
        self.cuda = device.type == "cuda"
        self.pairs: list = []

    def reset(self) -> None:
        self.pairs = []

    def wrapper(self, executor, *args, **kwargs):
        if self.cuda:
            start = self.torch.cuda.Event(enable_timing=True)
            end = self.torch.cuda.Event(enable_timing=True)
            start.record()
            out = executor(*args, **kwargs)
            end.record()
            self.pairs.append((start, end))
        else:
            t = time.perf_counter()
            out = executor(*args, **kwargs)
            self.pairs.append(time.perf_counter() - t)
        return out

    def timed_call(self, fn: Callable[[], Any]) -> Any:
        return self.wrapper(lambda: fn())

    def collect_ms(self) -> list[float]:
        if self.cuda:
            self.torch.cuda.synchronize()
            return [s.elapsed_time(e) for s, e in self.pairs]
        return [p * 1000.0 for p in self.pairs]


class RowTimeout(Exception):
    pass


@contextlib.contextmanager
def time_guard(seconds: float):
    """SIGALRM-based guard: raises RowTimeout in the main thread when the row runs past ``seconds``, and again every
    5 s after that (torch's compile stack swallows some exceptions, e.g. inside cache look-ups, so one signal is not
    always enough). It cannot interrupt a single blocking C call (a hung kernel): device_run.sh wraps each stage in
    `timeout` for that."""
    if not seconds or seconds <= 0 or not hasattr(signal, "SIGALRM"):
        yield
        return

    def handler(signum, frame):
        raise RowTimeout(f"timeout: row exceeded its {seconds:g} s guard")

    old = signal.signal(signal.SIGALRM, handler)
    signal.setitimer(signal.ITIMER_REAL, seconds, 5.0)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)


class CacheLogCatcher(logging.Handler):
    """Prints ComfyUI's log lines (prefixed) and keeps the step caches' summaries per row, and the warnings."""

    # core EasyCache/LazyCache: "skipped 9/28 steps"; Fastlane caches: "computed 14 of 28 steps"
    PATTERN = re.compile(r"skipped \d+/\d+ steps|computed \d+ of \d+ steps")

    def __init__(self) -> None:
        super().__init__(level=logging.INFO)
        self.cache_lines: list[str] = []
        self.warnings: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        try:
            msg = record.getMessage()
        except Exception:  # noqa: BLE001
            return
        if self.PATTERN.search(msg):
            self.cache_lines.append(msg)
        if record.levelno >= logging.WARNING:
            self.warnings.append(msg)
        print(f"    [comfy {record.levelname.lower()}] {msg}", flush=True)


def sync(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def free_memory(device) -> None:
    import torch
    import comfy.model_management as mm

    with contextlib.suppress(Exception):
        mm.unload_all_models()
    gc.collect()
    with contextlib.suppress(Exception):
        torch._dynamo.reset()
    with contextlib.suppress(Exception):
        mm.soft_empty_cache()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def reset_peak(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def allocated_gib(device) -> float | None:
    import torch

    if device.type == "cuda":
        return round(torch.cuda.memory_allocated(device) / 2**30, 2)
    return None


def peak_gib(device) -> float | None:
    import torch

    if device.type == "cuda":
        return round(torch.cuda.max_memory_allocated(device) / 2**30, 2)
    return None


def dynamo_counts() -> dict[str, int] | None:
    """torch._dynamo's global counters: graphs compiled and graph breaks (cleared at the start of each row)."""
    try:
        from torch._dynamo.utils import counters

        return {"graphs": int(counters["stats"]["unique_graphs"]),
                "graph_breaks": int(sum(counters["graph_break"].values())),
                "frames_compiled": int(counters["frames"]["ok"])}
    except Exception:  # noqa: BLE001
        return None


def clear_dynamo_counts() -> None:
    with contextlib.suppress(Exception):
        from torch._dynamo.utils import counters

        counters.clear()


def _median(xs: list[float]) -> float | None:
    return statistics.median(xs) if xs else None


def _pct(xs: list[float], q: float) -> float | None:
    if not xs:
        return None
    s = sorted(xs)
    return s[min(len(s) - 1, int(round(q * (len(s) - 1))))]


# ======================================================================================================================
# One row
# ======================================================================================================================


@dataclass
class Bench:
    args: argparse.Namespace
    device: Any
    built: Any = None
    positive: list = field(default_factory=list)
    negative: list = field(default_factory=list)
    latent: Any = None
    noise: Any = None
    cfg: float = 1.0
    sampler: str = "euler"
    scheduler: str = "simple"
    catcher: CacheLogCatcher | None = None
    steps: int = 0  # steps of the row being timed: --steps, or --uniform-steps for a row without a step cache

    def sample(self, model) -> Any:
        import comfy.sample

        return comfy.sample.sample(model, self.noise, self.steps or self.args.steps, self.cfg, self.sampler,
                                   self.scheduler, self.positive, self.negative, self.latent, disable_pbar=True,
                                   seed=self.args.seed)


def _compare_repeat(res: dict[str, Any], cold: Any, out: Any) -> None:
    """Whether a warm run returned the cold run's output bit for bit (same seed and inputs: a row whose runs differ
    carries state between runs, or its kernels are not deterministic): ``repeats_identical`` and
    ``repeat_max_abs_diff`` over the warm runs so far."""
    import torch

    out = out[0] if isinstance(out, (tuple, list)) else out
    if not isinstance(cold, torch.Tensor) or not isinstance(out, torch.Tensor) or out.shape != cold.shape:
        return
    same = bool(torch.equal(out, cold))
    diff = 0.0 if same else float((out.float() - cold.float()).abs().max())
    res["repeats_identical"] = res.get("repeats_identical", True) and same
    res["repeat_max_abs_diff"] = max(res.get("repeat_max_abs_diff", 0.0), diff)


def _finish_stats(res: dict[str, Any], warm_ms: list[list[float]], warm_s: list[float], steps: int,
                  full_steps: int | None = None) -> None:
    """Warm-run statistics. ``steps``: the steps the row ran; ``full_steps``: the run's --steps. A row without a step
    cache timed over fewer steps (--uniform-steps) gets ``sampling_s_at_steps`` = its ms/step x --steps (marked
    projected); otherwise that is its measured sampling s. The speed-up column compares these."""
    flat = [x for run in warm_ms for x in run]
    res["warm_runs"] = len(warm_s)
    res["sampling_s"] = _median(warm_s)
    res["sampling_s_all"] = warm_s
    res["ms_per_step"] = res["sampling_s"] * 1000.0 / steps if res["sampling_s"] else None
    res["steps_run"] = steps
    full_steps = full_steps or steps
    if res["sampling_s"]:
        res["sampling_s_at_steps"] = res["sampling_s"] * full_steps / steps
        res["projected"] = full_steps != steps
    res["median_ms_per_call"] = _median(flat)
    res["p10_ms_per_call"] = _pct(flat, 0.1)
    res["p90_ms_per_call"] = _pct(flat, 0.9)
    res["calls_per_run"] = len(warm_ms[-1]) if warm_ms else res.get("cold_calls")
    # A step cache shows as two populations of calls: full passes and cheap cached ones. Count the calls of the last
    # warm run above half the row's own p90 (self-relative, so a uniformly faster row still counts all calls full).
    if warm_ms and warm_ms[-1] and res["p90_ms_per_call"]:
        res["full_calls_per_run"] = sum(1 for x in warm_ms[-1] if x >= 0.5 * res["p90_ms_per_call"])
    res["call_ms"] = warm_ms


def _find_in_chain(e: BaseException, kind: type) -> BaseException | None:
    seen = set()
    while e is not None and id(e) not in seen:
        if isinstance(e, kind):
            return e
        seen.add(id(e))
        e = e.__cause__ or e.__context__
    return None


def copy_bytes_per_param(r: Row, fp8_base: bool) -> float:
    """Bytes per base-model parameter a row adds while it runs: its own copy of the weights. Fastlane Quantize makes
    a model of its own (quantizers/model_copy.py: 1 byte per quantized weight for fp8/int8); the native fp8 rows cast
    the base to e4m3 (1 byte) unless the base is fp8 already (then they share its tensors). Compile, caches,
    attention: no copy."""
    name = r.name
    if name.startswith("native_fp8"):
        return 0.0 if fp8_base else 1.0
    if r.kind == "patcher" and any(w in name for w in ("fp8", "int8")):
        return 1.0
    return 0.0


def memory_check(bench: Bench, r: Row) -> str | None:
    """On CUDA, before the row builds anything: does the card have room for the row's copy of the weights plus the
    activations (ComfyUI's own estimate for this latent and CFG batch, + 2 GiB)? Returns a 'skipped: ...' reason or
    None. A 20-32 B model in 16-bit plus an fp8 copy does not fit an 80 GB card for FLUX.2-dev (see --weights)."""
    import torch

    if bench.device.type != "cuda" or bench.built is None or bench.args.no_memory_check:
        return None
    extra = copy_bytes_per_param(r, bool(bench.built.spec.extra.get("fp8_weights"))) * bench.built.params
    batch = 2 if bench.cfg > 1.0 else 1
    shape = [batch, *bench.latent.shape[1:]]
    try:
        act = float(bench.built.patcher.model.memory_required(shape))
    except Exception:  # noqa: BLE001
        act = 4 * 2**30
    need = extra + act + 2 * 2**30
    free, total = torch.cuda.mem_get_info(bench.device)
    free += torch.cuda.memory_reserved(bench.device) - torch.cuda.memory_allocated(bench.device)
    if need > free:
        return (f"skipped: needs ≥ {need / 2**30:.1f} GiB free ({extra / 2**30:.1f} GiB for its copy of the weights "
                f"+ {act / 2**30:.1f} GiB activations + 2 GiB), {free / 2**30:.1f} GiB free of {total / 2**30:.1f}; "
                f"a larger card, or --weights fp8 for the native fp8 rows")
    return None


def run_row(bench: Bench, r: Row, budget: float) -> dict[str, Any]:
    """Prepare the row, one cold run, up to --repeats warm runs; all under a ``budget``-second guard."""
    import torch

    args, device = bench.args, bench.device
    res: dict[str, Any] = {"row": r.name, "kind": r.kind, "note": r.note, "status": "ok", "guard_s": budget}
    if bench.built is not None and bench.built.spec.extra.get("fp8_weights") and r.kind == "patcher":
        res["note"] += " [base weights float8_e4m3fn (--weights fp8): eager = UNETLoader weight_dtype fp8_e4m3fn]"
    warm_ms: list[list[float]] = []
    warm_s: list[float] = []
    t_row = time.perf_counter()
    if bench.catcher:
        bench.catcher.cache_lines = []
    res["allocated_start_gib"] = allocated_gib(device)
    reset_peak(device)
    clear_dynamo_counts()
    timer = CallTimer(device)
    model = patched = call = one_run = None
    bench.steps = args.steps
    if args.uniform_steps and args.uniform_steps < args.steps and not r.caches_steps:
        bench.steps = args.uniform_steps  # cost per step is uniform: time fewer steps, project to --steps
    res["steps_run"] = bench.steps
    try:
        with time_guard(budget), torch.inference_mode():
            need = memory_check(bench, r)
            if need:
                raise RowSkipped(need)
            log(f"row {r.name}: prepare")
            if r.kind == "patcher":
                patched = r.fn(bench.built.patcher)
                model = patched.clone()
                import comfy.patcher_extension

                model.add_wrapper_with_key(comfy.patcher_extension.WrappersMP.APPLY_MODEL, CallTimer.KEY,
                                           timer.wrapper)

                def one_run() -> Any:
                    return bench.sample(model)
            else:
                call = r.fn()

                def one_run() -> Any:
                    out = None
                    for _ in range(bench.steps):
                        out = timer.timed_call(call)
                    return out
            res["prepare_s"] = round(time.perf_counter() - t_row, 3)

            log(f"row {r.name}: cold run (includes compilation/autotuning, if any)")
            timer.reset()
            t = time.perf_counter()
            out = one_run()
            sync(device)
            res["cold_s"] = round(time.perf_counter() - t, 3)
            cold_ms = timer.collect_ms()
            res["cold_calls"] = len(cold_ms)
            res["cold_call_ms"] = cold_ms
            first = out[0] if isinstance(out, (tuple, list)) else out
            cold_out = None
            if isinstance(first, torch.Tensor):
                res["output_finite"] = bool(torch.isfinite(first.float()).all())
                res["output_std"] = round(float(first.float().std()), 4)
                cold_out = first.detach().clone()  # the warm runs are compared with it: same seed, same inputs
            del out, first
            res["dynamo_after_cold"] = dynamo_counts()
            if res["dynamo_after_cold"] and res["dynamo_after_cold"].get("graphs"):
                from torch._dynamo.utils import compile_times

                res["compile_times"] = str(compile_times(repr="str", aggregate=True))
                log(f"row {r.name}: compile phases (torch._dynamo.utils.compile_times, cumulative in this "
                    f"process):\n{res['compile_times']}")
            log(f"row {r.name}: cold {res['cold_s']:.2f} s, {len(cold_ms)} calls, dynamo {res['dynamo_after_cold']}")

            for i in range(args.repeats):
                spent = time.perf_counter() - t_row
                last = warm_s[-1] if warm_s else res["cold_s"]
                if budget and i > 0 and spent + 1.3 * last > budget:
                    res["repeats_cut"] = f"{i}/{args.repeats} warm runs: time guard"
                    log(f"row {r.name}: stopping after {i} warm runs to stay inside its {budget:g} s guard")
                    break
                timer.reset()
                t = time.perf_counter()
                out = one_run()
                sync(device)
                warm_s.append(time.perf_counter() - t)
                _compare_repeat(res, cold_out, out)
                del out
                warm_ms.append(timer.collect_ms())
                log(f"row {r.name}: warm {i + 1}/{args.repeats}: {warm_s[-1]:.3f} s, "
                    f"median {(_median(warm_ms[-1]) or float('nan')):.1f} ms/call over {len(warm_ms[-1])} calls")
            if r.name in args.profile.split(",") and warm_s:
                import profiling

                res["profile"] = profiling.profile_run(one_run, lambda: sync(device), bench.steps)
                log(profiling.text(r.name, res["profile"]))
    except RowSkipped as e:
        res["status"] = str(e) if str(e).startswith("skipped") else f"skipped: {e}"
        log(f"row {r.name}: {res['status']}")
    except Exception as e:  # noqa: BLE001  (a failing row is reported and the run goes on)
        timeout = _find_in_chain(e, RowTimeout)  # torch._dynamo wraps exceptions raised while it compiles
        if timeout is not None:
            res["status"] = str(timeout).strip().splitlines()[0]  # dynamo appends its user stack to the message
            log(f"row {r.name}: {res['status']}")
        else:
            res["status"] = f"error: {type(e).__name__}: {str(e).splitlines()[0][:300] if str(e) else ''}"
            res["traceback"] = traceback.format_exc()
            log(f"row {r.name}: FAILED\n{res['traceback']}")
    res["row_s"] = round(time.perf_counter() - t_row, 3)
    res["dynamo_after_warm"] = dynamo_counts()
    cold_d, warm_d = res.get("dynamo_after_cold"), res["dynamo_after_warm"]
    if cold_d and warm_d and warm_s:
        res["warm_new_graphs"] = warm_d["graphs"] - cold_d["graphs"]
    res["peak_gib"] = peak_gib(device)
    if warm_s:
        _finish_stats(res, warm_ms, warm_s, bench.steps, args.steps)
    if bench.catcher and bench.catcher.cache_lines:
        res["cache_log"] = list(bench.catcher.cache_lines)
    own = _own_model_ref(bench, patched)
    model = patched = call = one_run = timer = cold_out = None  # drop the row's references before freeing memory
    free_memory(device)
    if own is not None and own() is not None:
        gc.collect()
        if own() is not None:  # its weights would stay resident beside the next row's
            warning = "the row's own model (a copy of the weights) is still referenced after the row: not freed"
            res.setdefault("warnings", []).append(warning)
            log(f"row {r.name}: WARNING {warning}")
    res["own_model_freed"] = None if own is None else own() is None
    return res


def _own_model_ref(bench: Bench, patched: Any) -> Any:
    """A weak reference to the torch model of a row that built one of its own (Fastlane Quantize's copy, the native
    fp8 model), to check that it is freed after the row: a 20-32 B model must never keep two copies resident."""
    import weakref

    base = bench.built.patcher.model if bench.built is not None else None
    own = getattr(patched, "model", None)
    return weakref.ref(own) if own is not None and base is not None and own is not base else None


# ======================================================================================================================
# Environment, reporting
# ======================================================================================================================


def _version(dist: str) -> str:
    try:
        from importlib.metadata import version

        return version(dist)
    except Exception:  # noqa: BLE001
        return "missing"


def gpu_topology() -> tuple[str | None, str | None]:
    """``nvidia-smi topo -m`` and what links the GPUs (``interconnect``), for runs with more than one GPU visible."""
    try:
        text = subprocess.run(["nvidia-smi", "topo", "-m"], capture_output=True, text=True, timeout=20).stdout
    except Exception as e:  # noqa: BLE001
        return None, f"unknown (nvidia-smi topo -m: {type(e).__name__})"
    return text, interconnect(text)


def interconnect(topo: str) -> str:
    """What links the GPUs to each other, read from the GPU-to-GPU cells of ``nvidia-smi topo -m``: "NVLink (NV18)"
    where any is NV<n>, else the PCIe path kinds found (PIX / PXB / PHB / NODE / SYS)."""
    rows = [t for t in (re.sub(r"\x1b\[[0-9;]*m", "", line).split() for line in topo.splitlines())
            if len(t) > 1 and re.fullmatch(r"GPU\d+", t[0]) and not re.fullmatch(r"GPU\d+", t[1])]  # not the header
    if len(rows) < 2:
        return "unknown (no GPU-to-GPU rows in nvidia-smi topo -m)"
    cells = {c for r in rows for c in r[1:len(rows) + 1] if c != "X"}
    nv = sorted(c for c in cells if re.fullmatch(r"NV\d+", c))
    if nv:
        rest = sorted(cells - set(nv))
        return f"NVLink ({', '.join(nv)})" + (f"; also {', '.join(rest)}" if rest else "")
    return f"PCIe / host ({', '.join(sorted(cells))})"


def environment(device, comfy_info: dict[str, Any]) -> dict[str, Any]:
    import torch

    env: dict[str, Any] = {
        "note": RANDOM_WEIGHTS_NOTE,
        "date_utc": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "command": " ".join(shlex.quote(a) for a in [sys.executable, *sys.argv]),
        "cwd": os.getcwd(),
        "host": platform.node(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cuda_runtime": torch.version.cuda,
        "triton": _version("triton"),
        "diffusers": _version("diffusers"),
        "torchao": _version("torchao"),
        "comfyui": comfy_info.get("version"),
        "comfyui_path": comfy_info.get("path"),
        "stubbed_modules": comfy_info.get("stubbed_modules"),
        "import_failures": comfy_info.get("import_failures") or None,
        "device": str(device),
    }
    if device.type == "cuda":
        p = torch.cuda.get_device_properties(device)
        env["device_name"] = torch.cuda.get_device_name(device)
        env["device_capability"] = f"{p.major}.{p.minor}"
        env["device_memory_gib"] = round(p.total_memory / 2**30, 1)
        env["gpu_count"] = torch.cuda.device_count()
        if env["gpu_count"] > 1:  # Multi-GPU rows (issue 22): how the GPUs are linked
            env["gpu_topology"], env["interconnect"] = gpu_topology()
    else:
        env["device_name"] = f"CPU ({platform.processor() or platform.machine()}, {os.cpu_count()} cores, "\
                             f"{torch.get_num_threads()} torch threads)"
    with contextlib.suppress(Exception):
        import comfy.ldm.modules.attention as attn
        import comfy.model_management as mm

        env["comfy_attention"] = attn.optimized_attention.__name__
        env["comfy_vram_state"] = mm.vram_state.name
    with contextlib.suppress(Exception):
        env["pack_commit"] = pack_commit()
    return env


def pack_commit() -> str | None:
    """The pack's git commit, marked "+changes" when tracked files differ from it: the device tool lays a copy of
    the working tree over a checkout of an older commit, so HEAD alone names code that did not run there."""
    def git(*args: str) -> str:
        return subprocess.run(["git", "-C", str(PACK_DIR), *args], capture_output=True, text=True,
                              timeout=10).stdout.strip()

    head = git("rev-parse", "--short", "HEAD")
    if not head:
        return None
    changed = git("status", "--porcelain", "--untracked-files=no")
    return f"{head}+changes ({len(changed.splitlines())} files differ)" if changed else head


def _fmt(x: Any, nd: int = 1) -> str:
    if x is None:
        return "–"
    if isinstance(x, float):
        return f"{x:.{nd}f}"
    return str(x)


def markdown(results: dict[str, Any]) -> str:
    env, cfg, rows = results["environment"], results["config"], results["rows"]
    lines = [
        f"# Fastlane benchmark: {cfg['family']}{' (tiny)' if cfg['tiny'] else ''} — {RANDOM_WEIGHTS_NOTE}",
        "",
        f"- device: {env.get('device_name')} · torch {env['torch']} · triton {env['triton']} · diffusers "
        f"{env['diffusers']} · torchao {env['torchao']} · ComfyUI {env['comfyui']} · python {env['python']}",
        f"- date (UTC): {env['date_utc']} · attention: {env.get('comfy_attention')} · "
        f"vram_state: {env.get('comfy_vram_state')} · pack: {cfg.get('pack_status')} (commit {env.get('pack_commit')})",
        f"- command: `{env['command']}`",
        f"- sampling: {cfg['width']}x{cfg['height']}"
        f"{', ' + str(cfg['frames']) + ' frames' if cfg.get('frames') else ''}, {cfg['steps']} steps, "
        f"{cfg['sampler']}/{cfg['scheduler']}, "
        f"cfg {cfg['cfg']}{', guidance ' + str(cfg['guidance']) if cfg['family'] in ('flux', 'flux2') else ''}, "
        f"latent {cfg['latent_shape']}, dtype {cfg['dtype']}, {cfg['repeats']} warm repeats after 1 cold run",
        f"- model: {cfg['model_class']}, {cfg['params_b']:.3f} B params, {cfg['weights_gib']} GiB weights, "
        f"built in {cfg['build_s']:.1f} s",
    ]
    if cfg.get("uniform_steps"):
        lines.append(f"- rows without a step cache ran {cfg['uniform_steps']} steps (--uniform-steps): their *s @ "
                     f"{cfg['steps']} steps* is ms/step x {cfg['steps']}, marked *; cache rows ran all {cfg['steps']}")
    if cfg.get("family_note"):
        lines.append(f"- conditioning: {cfg['family_note']}")
    if cfg.get("context_shape"):
        lines.append(f"- context {cfg['context_shape']}, weights {cfg.get('weights')}"
                     f"{' · ComfyUI vram_state set to ' + cfg['vram_state'] if cfg.get('vram_state') else ''}")
    if cfg.get("floor_ms"):
        lines.append(f"- physical floor: {cfg['flops_per_step']:.3g} FLOP/step at {cfg['peak_tflops']:g} TFLOP/s "
                     f"= {cfg['floor_ms']:.1f} ms/step")
    if env.get("stubbed_modules"):
        lines.append(f"- stand-ins for missing modules (not used by these rows): {', '.join(env['stubbed_modules'])}")
    lines += [
        "",
        f"| row | status | cold s | steps run | sampling s | s @ {cfg['steps']} steps | ms/step | median ms/call | "
        "p10–p90 ms/call | calls/run | ≈full | vs eager | × floor | peak GiB |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        status = " ".join(str(r["status"]).split()).replace("|", "/")
        spread = "–" if r.get("p10_ms_per_call") is None else \
            f"{r['p10_ms_per_call']:.1f}–{r['p90_ms_per_call']:.1f}"
        lines.append(
            f"| {r['row']} | {status}{' (' + r['repeats_cut'] + ')' if r.get('repeats_cut') else ''} | "
            f"{_fmt(r.get('cold_s'), 2)} | {_fmt(r.get('steps_run'))} | {_fmt(r.get('sampling_s'), 3)} | "
            f"{_fmt(r.get('sampling_s_at_steps'), 2)}{'*' if r.get('projected') else ''} | "
            f"{_fmt(r.get('ms_per_step'))} | "
            f"{_fmt(r.get('median_ms_per_call'))} | {spread} | {_fmt(r.get('calls_per_run'))} | "
            f"{_fmt(r.get('full_calls_per_run'))} | "
            f"{_fmt(r.get('speedup_vs_eager'), 2)}{'×' if r.get('speedup_vs_eager') else ''} | "
            f"{_fmt(r.get('x_floor'), 2)} | {_fmt(r.get('peak_gib'), 2)} |")
    lines.append("")
    notes = []
    for r in rows:
        bits = []
        if r.get("note"):
            bits.append(r["note"])
        if r.get("cache_log"):
            bits.append("cache: " + "; ".join(sorted(set(r["cache_log"]))))
        d = r.get("dynamo_after_warm") or {}
        if d.get("graphs") or d.get("graph_breaks"):
            bits.append(f"dynamo: {d.get('graphs')} graphs, {d.get('graph_breaks')} graph breaks, "
                        f"{d.get('frames_compiled')} frames compiled")
        if r.get("warm_new_graphs"):
            bits.append(f"WARNING: {r['warm_new_graphs']} graphs compiled during the warm runs (timings include them)")
        bits += r.get("warnings", [])
        if r.get("output_finite") is False:
            bits.append("OUTPUT NOT FINITE")
        if r.get("repeats_identical") is False:
            bits.append(f"warm runs differ from the cold run (max abs diff {r['repeat_max_abs_diff']:.3g})")
        if bits:
            notes.append(f"- **{r['row']}**: " + " · ".join(bits))
    if notes:
        lines += ["Rows:", *notes, ""]
    lines += [
        "Columns: *cold s* first sampling run, wall, incl. compilation · *sampling s* median wall time of the warm "
        "runs (synchronised, whole `comfy.sample.sample` call) over *steps run* · *s @ N steps* the same at the "
        "run's --steps (* = projected from ms/step, --uniform-steps) · *ms/step* = sampling s / steps run · "
        "*ms/call* CUDA events around each diffusion-model call (APPLY_MODEL wrapper; a step cache that skips inside "
        "the model still counts a cheap call, LazyCache skips the call) · *≈full* calls of the last warm run that "
        "cost at least half the row's p90 call, i.e. full model passes (estimate) · *vs eager* eager s / row s, both "
        "at --steps · *× floor* median ms/call / physical floor · *peak GiB* torch.cuda.max_memory_allocated during "
        "the row.",
        "",
        f"**{RANDOM_WEIGHTS_NOTE}.** With random weights, how often a step cache decides to skip is not what it "
        "would be with a real checkpoint; compare its *cost per call*, not its hit rate.",
    ]
    return "\n".join(lines) + "\n"


def plot(results: dict[str, Any], path: Path) -> str | None:
    """Per-call latency of each row (median over warm runs at each call index)."""
    series = []
    for r in results["rows"]:
        runs = r.get("call_ms") or []
        if not runs:
            continue
        n = max(len(x) for x in runs)
        ys = [statistics.median([run[i] for run in runs if i < len(run)]) for i in range(n)]
        series.append((r["row"], ys))
    if not series:
        return None
    title = f"{results['config']['family']} {results['config']['width']}px - ms per diffusion-model call " \
            f"(median of warm runs) - {RANDOM_WEIGHTS_NOTE}"
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(10, 5), dpi=100)
        for name, ys in series:
            ax.plot(range(1, len(ys) + 1), ys, marker="o", markersize=3, label=name)
        ax.set_xlabel("call (sampler step)")
        ax.set_ylabel("ms")
        ax.set_ylim(bottom=0)
        ax.set_title(title, fontsize=9)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
        fig.tight_layout()
        fig.savefig(path)
        plt.close(fig)
        return "matplotlib"
    except Exception:  # noqa: BLE001
        pass
    try:
        from PIL import Image, ImageDraw

        w, h, ml, mr, mt, mb = 1000, 500, 60, 160, 30, 40
        img = Image.new("RGB", (w, h), "white")
        d = ImageDraw.Draw(img)
        ymax = max(max(ys) for _, ys in series) * 1.1 or 1.0
        xmax = max(len(ys) for _, ys in series)
        colors = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f"]
        d.text((ml, 8), title, fill="black")
        d.line([(ml, mt), (ml, h - mb), (w - mr, h - mb)], fill="black")
        for k in range(5):
            yv = ymax * k / 4
            yp = h - mb - (h - mt - mb) * k / 4
            d.text((5, yp - 6), f"{yv:.1f}", fill="black")
            d.line([(ml, yp), (w - mr, yp)], fill="#dddddd")
        d.text((ml + (w - ml - mr) // 2 - 40, h - mb + 15), "call (sampler step)", fill="black")
        for idx, (name, ys) in enumerate(series):
            c = colors[idx % len(colors)]
            pts = [(ml + (w - ml - mr) * (i / max(1, xmax - 1)), h - mb - (h - mt - mb) * (y / ymax))
                   for i, y in enumerate(ys)]
            if len(pts) > 1:
                d.line(pts, fill=c, width=2)
            for x, y in pts:
                d.ellipse([x - 2, y - 2, x + 2, y + 2], fill=c)
            d.text((w - mr + 10, mt + 15 * idx), name, fill=c)
        img.save(path)
        return "PIL"
    except Exception as e:  # noqa: BLE001
        log(f"plot failed: {e}")
        return None


def write_results(results: dict[str, Any], out: Path, final: bool) -> None:
    out.mkdir(parents=True, exist_ok=True)
    rows = results["rows"]
    eager_row = next((r for r in rows if r["row"] == "eager" and r.get("sampling_s")), None)
    floor = results["config"].get("floor_ms")
    for r in rows:
        if eager_row and r.get("sampling_s"):  # at --steps (a --uniform-steps row: projected from its ms/step)
            r["speedup_vs_eager"] = (eager_row.get("sampling_s_at_steps") or eager_row["sampling_s"]) / \
                (r.get("sampling_s_at_steps") or r["sampling_s"])
        if floor and r.get("median_ms_per_call"):
            r["x_floor"] = r["median_ms_per_call"] / floor
    results["complete"] = final
    (out / "results.json").write_text(json.dumps(results, indent=1, default=str))
    (out / "results.md").write_text(markdown(results))
    if final:
        how = plot(results, out / "steps.png")
        if how:
            log(f"plot: {out / 'steps.png'} ({how})")


# ======================================================================================================================
# Main
# ======================================================================================================================


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--family", choices=list(ALL_FAMILIES), required=True,
                   help="flux (FLUX.1-dev), sdxl, qwen-image (20 B), z-image (6 B), wan22 (one 14 B expert), "
                        "flux2 (FLUX.2-dev, 32 B)")
    p.add_argument("--rows", default="eager", help="comma-separated row names, or 'all' (rows of this family)")
    p.add_argument("--steps", type=int, default=None,
                   help="sampler steps (default flux 28, sdxl 30, qwen-image 20, z-image 8, wan22 20, flux2 28)")
    p.add_argument("--res", type=int, default=None,
                   help="square resolution in pixels (default 1024, qwen-image 1328; --tiny: 64)")
    p.add_argument("--width", type=int, default=None, help="width in pixels (overrides --res; wan22 default 832)")
    p.add_argument("--height", type=int, default=None, help="height in pixels (overrides --res; wan22 default 480)")
    p.add_argument("--frames", type=int, default=None,
                   help="video frames (wan22 default 81 -> 21 latent frames; --tiny: 5)")
    p.add_argument("--context-tokens", type=int, default=None,
                   help="text tokens of the new families' prompts (default qwen-image/z-image 128, wan22/flux2 512)")
    p.add_argument("--uniform-steps", type=int, default=0,
                   help="time rows WITHOUT a step cache over this many steps and project their sampling s to --steps "
                        "from ms/step (their cost per step is uniform); cache rows run all --steps. 0 = off. For "
                        "Wan 2.2, whose eager step is seconds")
    p.add_argument("--weights", choices=["auto", "16bit", "fp8"], default="auto",
                   help="base weights: 16bit (--dtype), fp8 (float8_e4m3fn storage, 16-bit compute, as UNETLoader's "
                        "fp8_e4m3fn; the native fp8 rows then share them), auto: fp8 only where a 16-bit base + an "
                        "fp8 copy + activations would not fit the card (FLUX.2-dev on an 80 GB H100)")
    p.add_argument("--vram-state", choices=["auto", "high", "comfy"], default="auto",
                   help="auto: HIGH_VRAM for the new families on CUDA (their weights sit on the GPU already, so "
                        "ComfyUI's free-memory estimate would count them twice and load a 20-32 B model partially), "
                        "ComfyUI's own choice for flux/sdxl; high / comfy force one")
    p.add_argument("--no-memory-check", action="store_true",
                   help="do not skip rows whose weight copy would not fit the card's free memory")
    p.add_argument("--repeats", type=int, default=3, help="warm runs after the cold run (default 3)")
    p.add_argument("--tiny", action="store_true", help="small widths/depths, same classes: CPU smoke runs")
    p.add_argument("--out", default=None, help="output folder (default out/bench-<family>)")
    p.add_argument("--timeout-per-row", type=float, default=420.0, help="seconds per row, 0 = none (default 420)")
    p.add_argument("--time-budget", type=float, default=0.0,
                   help="seconds for the whole run (0 = none): each row's guard shrinks to what is left, rows that "
                        "no longer fit are reported as skipped, and the tables are still written")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--cfg", type=float, default=None, help="default flux 1.0, sdxl 7.0")
    p.add_argument("--guidance", type=float, default=None,
                   help="FLUX / FLUX.2 distilled guidance in the cond (default flux 3.5, flux2 4.0)")
    p.add_argument("--sampler", default=None, help="default euler")
    p.add_argument("--scheduler", default=None, help="default flux simple, sdxl normal")
    p.add_argument("--dtype", choices=["auto", "bf16", "fp16", "fp32"], default="auto",
                   help="auto: flux bf16 / sdxl fp16 on GPU, fp32 on CPU")
    p.add_argument("--device", choices=["auto", "cuda", "cpu"], default="auto")
    p.add_argument("--cpu-threads", type=int, default=1,
                   help="torch threads when running on the CPU (default 1: OpenMP spinning on a shared 2-core box "
                        "made the tiny smoke runs 50x slower)")
    p.add_argument("--peak-tflops", type=float, default=DEFAULT_PEAK_TFLOPS,
                   help="dense bf16 TFLOP/s for the floor column (H100 measured: 779)")
    p.add_argument("--no-pack", action="store_true", help="do not load the Fastlane pack (core rows only)")
    p.add_argument("--keep-model", action="store_true",
                   help="keep the ComfyUI model in memory during standalone (diffusers) rows")
    p.add_argument("--extra-rows", action="append", default=[], help="python file registering more rows")
    p.add_argument("--list", action="store_true", help="list the rows and exit")
    p.add_argument("--profile", default="", help="comma-separated rows to profile (one extra run under "
                                                  "torch.profiler after the timed runs; kernel time by category)")
    a = p.parse_args(argv)
    if a.family in NEW_FAMILIES:
        import family_models

        fam = family_models.family(a.family)
        a.steps = a.steps or fam.steps
        a.width = a.width or a.res or (64 if a.tiny else fam.width)
        a.height = a.height or a.res or (64 if a.tiny else fam.height)
        a.frames = (a.frames or (5 if a.tiny else fam.frames)) if fam.frames else None
        a.cfg = a.cfg if a.cfg is not None else fam.cfg
        a.scheduler = a.scheduler or fam.scheduler
        a.sampler = a.sampler or fam.sampler
        a.guidance = a.guidance if a.guidance is not None else (fam.guidance or 3.5)
    else:
        a.steps = a.steps or (28 if a.family == "flux" else 30)
        a.width = a.width or a.res or (64 if a.tiny else 1024)
        a.height = a.height or a.res or (64 if a.tiny else 1024)
        a.frames = None
        a.cfg = a.cfg if a.cfg is not None else (1.0 if a.family == "flux" else 7.0)
        a.scheduler = a.scheduler or ("simple" if a.family == "flux" else "normal")
        a.sampler = a.sampler or "euler"
        a.guidance = a.guidance if a.guidance is not None else 3.5
    a.res = a.width if a.width == a.height else None
    a.out = Path(a.out) if a.out else PACK_DIR / "out" / f"bench-{a.family}"
    return a


def set_vram_state(args: argparse.Namespace, device) -> str | None:
    """HIGH_VRAM where the weights were built on the GPU: ComfyUI's loader subtracts a model's size from the free
    memory as if it still had to move in, so a 20-32 B model built in place (already on the card) would be loaded
    partially (lowvram) although a real checkpoint of that size loads fully on the same card. Returns what was set."""
    import comfy.model_management as mm

    want = args.vram_state
    if device.type != "cuda" or want == "comfy" or (want == "auto" and args.family not in NEW_FAMILIES):
        return None
    mm.vram_state = mm.VRAMState.HIGH_VRAM
    return "HIGH_VRAM (weights built on the GPU; see --vram-state)"


def choose_weights(args: argparse.Namespace, device, dtype) -> tuple[bool, str]:
    """--weights: fp8 base weights or 16-bit ones. auto picks fp8 only on CUDA and only where a 16-bit base plus one
    fp8 copy (a quantize or native fp8 row) plus ~12 GiB of activations and workspace would not fit the card."""
    import models
    import torch

    compute = str(dtype).replace("torch.", "")
    if args.weights == "fp8":
        return True, f"float8_e4m3fn storage, {compute} compute (--weights fp8)"
    if args.weights == "16bit" or device.type != "cuda":
        return False, f"{str(dtype).replace('torch.', '')} (--weights {args.weights})"
    params = models.count_params(args.family, args.tiny)
    total = torch.cuda.get_device_properties(device).total_memory
    need = params * (torch.finfo(dtype).bits // 8 + 1) + 12 * 2**30
    if need > total:
        return True, (f"float8_e4m3fn storage, {compute} compute (--weights auto: {params / 1e9:.1f} B params in "
                      f"{str(dtype).replace('torch.', '')} + an fp8 copy + 12 GiB = {need / 2**30:.0f} GiB > "
                      f"{total / 2**30:.0f} GiB on this card)")
    return False, f"{str(dtype).replace('torch.', '')} (--weights auto: 16-bit base + an fp8 copy fit " \
                  f"{total / 2**30:.0f} GiB)"


def select_rows(spec: str, family: str) -> tuple[list[Row], list[dict[str, Any]]]:
    names = [n.strip() for n in spec.split(",") if n.strip()]
    if names == ["all"]:
        names = [n for n, r in ROWS.items() if family in r.families]
    chosen, skipped = [], []
    for n in names:
        r = ROWS.get(n)
        if r is None:
            skipped.append({"row": n, "status": "error: unknown row (see --list)", "kind": "?"})
        elif family not in r.families:
            skipped.append({"row": n, "status": f"skipped: not a {family} row", "kind": r.kind, "note": r.note})
        else:
            chosen.append(r)
    # eager first (it is the baseline), then the given order with heavy (compiling) rows after the cheap ones,
    # standalone rows last (the ComfyUI model is freed before them)
    chosen.sort(key=lambda r: (r.name != "eager", r.kind != "patcher", r.heavy))
    return chosen, skipped


def main(argv: list[str] | None = None) -> int:
    with contextlib.suppress(Exception):
        sys.stdout.reconfigure(line_buffering=True)  # type: ignore[attr-defined]
    args = parse_args(argv)
    if str(BENCH_DIR) not in sys.path:
        sys.path.insert(0, str(BENCH_DIR))
    for f in args.extra_rows:
        exec(compile(Path(f).read_text(), f, "exec"), {"row": row, "node": node, "CTX": CTX, "RowSkipped": RowSkipped,
                                                        "__name__": "fastlane_bench_extra_rows"})
    if args.list:
        for n, r in ROWS.items():
            print(f"{n:28s} {r.kind:10s} {','.join(r.families):10s} {r.note}")
        return 0

    # Our handler goes on the root logger before ComfyUI logs anything (else logging.warning() would install its own
    # stderr handler): ComfyUI's INFO lines ("Requested to load", "EasyCache - skipped 9/28 steps") show in the log.
    catcher = CacheLogCatcher()
    root = logging.getLogger()
    root.handlers = [h for h in root.handlers if not isinstance(h, CacheLogCatcher)] + [catcher]
    root.setLevel(logging.INFO)
    log(f"Fastlane benchmark — {RANDOM_WEIGHTS_NOTE}")
    log(f"command: {' '.join(shlex.quote(a) for a in [sys.executable, *sys.argv])}")
    import torch

    want_cuda = args.device == "cuda" or (args.device == "auto" and torch.cuda.is_available())
    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda but torch sees no GPU")
    log("stage: import ComfyUI")
    comfy_info = import_comfyui(use_cpu=not want_cuda)
    import comfy.model_management as mm

    device = mm.get_torch_device()
    if device.type == "cpu" and args.cpu_threads > 0:
        torch.set_num_threads(args.cpu_threads)
    env = environment(device, comfy_info)
    for k in ["note", "date_utc", "device_name", "device_capability", "device_memory_gib", "gpu_count",
              "interconnect", "gpu_topology", "python", "torch",
              "cuda_runtime", "triton", "diffusers", "torchao", "comfyui", "comfyui_path", "comfy_attention",
              "comfy_vram_state", "stubbed_modules", "import_failures", "pack_commit", "command"]:
        if k in env:
            log(f"  {k}: {env[k]}")

    pack_status = "skipped (--no-pack)"
    if not args.no_pack:
        log("stage: load the Fastlane pack (ComfyUI's load_custom_node)")
        try:
            pack_status = load_pack(catcher)
        except Exception as e:  # noqa: BLE001
            pack_status = f"failed: {type(e).__name__}: {e}"
        log(f"  pack: {pack_status}")
    hide_stubs()

    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}.get(args.dtype)
    if dtype is None:
        if device.type != "cuda":
            dtype = torch.float32
        elif args.family in NEW_FAMILIES:
            import family_models

            dtype = family_models.family(args.family).dtype
        else:
            dtype = torch.bfloat16 if args.family == "flux" else torch.float16
    vram_note = set_vram_state(args, device)
    fp8_weights, weights_note = choose_weights(args, device, dtype)
    log(f"  weights: {weights_note}")

    chosen, pre_skipped = select_rows(args.rows, args.family)
    log(f"rows: {[r.name for r in chosen]}" + (f"; not run: {[s['row'] for s in pre_skipped]}" if pre_skipped else ""))

    import models

    log(f"stage: build {args.family}{' tiny' if args.tiny else ''} on {device} in {dtype} (meta -> to_empty -> "
        f"random init)")
    built = models.build_model(args.family, tiny=args.tiny, device=device, dtype=dtype, seed=args.seed,
                               fp8_weights=fp8_weights, context_tokens=args.context_tokens)
    log(f"  built {built.info['class']} / {built.info['diffusion_model']}: {built.params / 1e9:.3f} B params, "
        f"{built.info['weights_gib']} GiB, {built.build_s:.1f} s")
    width, height = args.width, args.height
    CTX.family, CTX.tiny, CTX.device, CTX.dtype = args.family, args.tiny, device, dtype
    CTX.width, CTX.height, CTX.steps, CTX.spec, CTX.pack_status = width, height, args.steps, built.spec, pack_status
    CTX.frames = args.frames

    bench = Bench(args=args, device=device, built=built, cfg=args.cfg, sampler=args.sampler,
                  scheduler=args.scheduler, catcher=catcher)
    bench.positive, bench.negative = models.conditioning(built.spec, width, height, guidance=args.guidance,
                                                         seed=args.seed + 1)
    bench.latent = models.empty_latent(built.spec, width, height, frames=args.frames)
    import comfy.sample

    if args.family in NEW_FAMILIES:  # as KSampler does: Qwen-Image's 3-D latent format takes (B, C, 1, H, W)
        bench.latent = comfy.sample.fix_empty_latent_channels(built.patcher, bench.latent)

    bench.noise = comfy.sample.prepare_noise(bench.latent, args.seed)

    config: dict[str, Any] = {
        "family": args.family, "tiny": args.tiny, "width": width, "height": height, "steps": args.steps,
        "repeats": args.repeats, "cfg": args.cfg, "guidance": args.guidance, "sampler": args.sampler,
        "scheduler": args.scheduler, "dtype": str(dtype).replace("torch.", ""), "seed": args.seed,
        "latent_shape": list(bench.latent.shape), "timeout_per_row": args.timeout_per_row,
        "model_class": built.info["class"], "params_b": built.params / 1e9, "weights_gib": built.info["weights_gib"],
        "build_s": built.build_s, "unet_config": built.info["unet_config"], "pack_status": pack_status,
        "peak_tflops": args.peak_tflops,
        "context_shape": list(bench.positive[0][0].shape),
        "frames": args.frames, "uniform_steps": args.uniform_steps if args.uniform_steps < args.steps else 0,
        "weights": weights_note, "vram_state": vram_note,
    }
    if args.family in NEW_FAMILIES:
        import family_models

        config["family_note"] = family_models.family(args.family).note
        batch = 2 if args.cfg > 1.0 else 1
        flops = family_models.flops_per_step(args.family, built.spec.unet_config, width, height, args.frames,
                                             built.spec.context_tokens, batch)
        config["flops_per_step"] = flops
        if device.type == "cuda":
            config["floor_ms"] = flops / (args.peak_tflops * 1e12) * 1000.0
        log(f"  FLOPs/step {flops:.3g} (CFG batch {batch})" + (
            f" -> floor {config['floor_ms']:.1f} ms/step at {args.peak_tflops:g} TFLOP/s" if "floor_ms" in config
            else ""))
    if args.family == "flux":
        flops = models.flux_flops_per_step(built.spec.unet_config, width, height, built.spec.context_tokens)
        config["flops_per_step"] = flops
        if device.type == "cuda":
            config["floor_ms"] = flops / (args.peak_tflops * 1e12) * 1000.0
        log(f"  FLUX FLOPs/step {flops:.3g}" + (f" -> floor {config['floor_ms']:.1f} ms at {args.peak_tflops:g} "
                                                 f"TFLOP/s" if "floor_ms" in config else ""))
    results: dict[str, Any] = {"environment": env, "config": config, "rows": []}
    write_results(results, args.out, final=False)

    model_dropped = False
    for r in chosen:
        if r.kind == "standalone" and not model_dropped and not args.keep_model:
            log("stage: free the ComfyUI model before standalone rows")
            import weakref

            dm_ref = weakref.ref(built.diffusion_model)
            bench.built = None
            built = None
            free_memory(device)
            model_dropped = True
            log(f"  allocated after freeing: {_fmt(allocated_gib(device), 2)} GiB; ComfyUI diffusion model "
                f"{'still referenced somewhere' if dm_ref() is not None else 'freed'}")
        guard = args.timeout_per_row
        if args.time_budget:
            left = args.time_budget - (time.perf_counter() - _T0) - 15.0  # keep 15 s to free memory and write files
            if left < 20.0:
                log(f"stage: row {r.name}: skipped, --time-budget spent")
                results["rows"].append({"row": r.name, "kind": r.kind, "note": r.note,
                                        "status": "skipped: --time-budget spent"})
                continue
            guard = min(guard, left) if guard else left
        log(f"stage: row {r.name} ({r.note}); guard {guard:.0f} s; allocated {_fmt(allocated_gib(device), 2)} GiB")
        res = run_row(bench, r, guard)
        if bench.built is not None:
            restored = bench.built.ensure_pristine()
            if restored:
                res.setdefault("warnings", []).append(restored)
                log(f"row {r.name}: WARNING {restored}")
        results["rows"].append(res)
        write_results(results, args.out, final=False)
        log(f"row {r.name}: {res['status']}, cold {_fmt(res.get('cold_s'), 2)} s, sampling "
            f"{_fmt(res.get('sampling_s'), 3)} s, median {_fmt(res.get('median_ms_per_call'))} ms/call, "
            f"peak {_fmt(res.get('peak_gib'), 2)} GiB, row took {res['row_s']:.1f} s")

    results["rows"].extend(pre_skipped)
    write_results(results, args.out, final=True)
    print("", flush=True)
    print(markdown(results), flush=True)
    log(f"wrote {args.out / 'results.json'}, {args.out / 'results.md'}")
    failed = [r["row"] for r in results["rows"] if r["status"].startswith(("error", "timeout"))]
    if failed:
        log(f"rows that failed: {failed}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
