"""Fastlane Multi-GPU rows (issue 22): the same model on 2 or 4 GPUs, sequence-parallel, in the same run as the 1-GPU
``eager`` row, so the table's *vs eager* column is the speed-up over one GPU.

- ``multigpu2`` / ``multigpu4``: Fastlane Multi-GPU, Ulysses attention (all-to-all over heads), 2 / 4 ranks;
- ``multigpu2_kv``: 2 ranks, K/V all-gather attention;
- ``multigpu2_async`` / ``multigpu4_async``: as ``multigpu2`` / ``4`` with ``TORCH_NCCL_BLOCKING_WAIT=0`` (the node
  sets 1: every collective then waits on the host); the difference is what that host wait costs;
- ``multigpu2+target0.3`` / ``multigpu4+target0.3``: Target Speed cache 0.3 (order 2) then Multi-GPU: granularity
  auto (blocks) on FLUX / FLUX.2, ``output`` on Wan (block caches are refused there). Their 1-GPU reference is
  ``target0.3`` on FLUX (same settings) and ``target0.3_output`` on Wan (added here).

A row needs ``gpus`` visible CUDA devices (``torch.cuda.device_count()``), else it is reported skipped with the count.
On a CPU run (``--tiny``) the ranks are CPU processes joined by gloo (``device="cpu"``): a smoke of the plumbing, not
a timing. Workers: each row's session is stopped after the row (the runner's ``unload_all_models`` detaches the
MODEL, and the node stops its workers then); the row logs the worker pids it saw and whether they exited, and any
session a previous row left running is stopped before the next multi-GPU row starts its own, so every row begins
with a clean world. Each rank holds a whole copy of the weights (FLUX.1-dev bf16: 24 GB a GPU).
"""
from __future__ import annotations

import logging
import os
import weakref

from .comfy_node import node
from .registry import CTX, RowSkipped, row

log = logging.getLogger("fastlane")
FAMILIES = ("flux", "wan22", "flux2")
TIMEOUT_S = 300  # per collective; the first call of a row also broadcasts the weights (28 GB for Wan 14B)
_SESSIONS: list[weakref.ref] = []  # every session a row made: stopped before the next multi-GPU row, if still up
# The last row's patched MODEL, kept alive until the next multi-GPU row: the runner drops its own references before
# unloading, so ComfyUI's loaded-model entry falls back to this parent patcher, and its detach (with our callbacks and
# the node's) runs in the runner's unload_all_models right after the row, not at some later garbage collection.
_KEEP: list = []


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _stop_leftovers() -> None:
    for ref in list(_SESSIONS):
        session = ref()
        if session is not None and session.worker_pids:
            log.warning("Fastlane bench: a previous row's Multi-GPU workers (pids %s) were still running: stopped",
                        session.worker_pids)
            session.release()
    _SESSIONS.clear()
    _KEEP.clear()


def _check(gpus: int, attention: str, model) -> str:
    """The node's ``device`` for this run, or RowSkipped with the reason."""
    import torch

    if CTX.device is not None and CTX.device.type == "cpu":
        device = "cpu"
    else:
        count = torch.cuda.device_count()
        if count < gpus:
            raise RowSkipped(f"skipped: needs {gpus} GPUs, {count} visible (torch.cuda.device_count())")
        device = "cuda"
    heads = getattr(model.model.diffusion_model, "num_heads", None)
    if attention == "ulysses" and heads and heads % gpus:
        tiny = " tiny" if CTX.tiny else ""
        raise RowSkipped(f"skipped: ulysses splits the {heads} heads over {gpus} ranks (this{tiny} model's head "
                         "count does not divide)")
    return device


BLOCKING_WAIT = "TORCH_NCCL_BLOCKING_WAIT"


def multigpu(model, gpus: int, attention: str = "ulysses", cache: dict | None = None, name: str = "",
             blocking_wait: bool = True):
    """``model`` (with the Target Speed cache first when ``cache``) through Fastlane Multi-GPU. Two ON_DETACH callbacks
    bracket the node's own (which stops the workers when ComfyUI unloads the MODEL after the row): the first, added
    before the node runs, notes the worker pids; the second, added after, logs whether they all exited.

    ``blocking_wait``: NCCL's ``TORCH_NCCL_BLOCKING_WAIT`` for this row's process groups (read when each is built, in
    rank 0 and in the workers, which inherit the environment at start). The node sets 1 (a hung worker then fails
    the prompt instead of NCCL's watchdog ending ComfyUI), which makes every collective wait on the host; the
    ``_async`` rows set 0 (the stream waits, the host runs ahead) to measure what that host wait costs."""
    from comfy.patcher_extension import CallbacksMP

    device = _check(gpus, attention, model)
    _stop_leftovers()
    os.environ[BLOCKING_WAIT] = "1" if blocking_wait else "0"
    base = node("FastlaneTargetSpeedCache", model, **cache) if cache else model.clone()
    seen: list[int] = []
    box: dict = {}

    def before(patcher, unpatch_all: bool = True) -> None:
        if unpatch_all and box.get("session") is not None:
            seen[:] = box["session"].worker_pids

    def after(patcher, unpatch_all: bool = True) -> None:
        if not unpatch_all or not seen:
            return
        left = [p for p in seen if _alive(p)]
        log.info("Fastlane bench %s: %d Multi-GPU workers stopped after the row (pids %s): %s", name, len(seen),
                 seen, f"STILL RUNNING {left}" if left else "all exited")
        seen.clear()

    base.add_callback_with_key(CallbacksMP.ON_DETACH, "fastlane_bench_multigpu_pids", before)
    patched = node("FastlaneMultiGPU", base, gpus=gpus, attention=attention, device=device, timeout=TIMEOUT_S)
    session = patched.object_patches["diffusion_model.forward_orig"].session
    box["session"] = session
    _SESSIONS.append(weakref.ref(session))
    patched.add_callback_with_key(CallbacksMP.ON_DETACH, "fastlane_bench_multigpu_exit", after)
    _KEEP[:] = [patched]
    return patched


def _target(granularity: str | None = None) -> dict:
    """Target Speed 0.3 order 2, as the ``target0.3`` row; ``granularity`` None: the family's (blocks on FLUX),
    ``output`` on Wan (Multi-GPU refuses block caches there)."""
    g = granularity or ("output" if CTX.family == "wan22" else "auto")
    return {"compute_fraction": 0.3, "order": 2, "granularity": g}


for _name, _gpus, _attention, _cache, _blocking, _note in [
    ("multigpu2", 2, "ulysses", False, True, "Fastlane Multi-GPU, 2 GPUs, Ulysses all-to-all attention (vs eager: "
                                             "speed-up over 1 GPU)"),
    ("multigpu4", 4, "ulysses", False, True, "Fastlane Multi-GPU, 4 GPUs, Ulysses all-to-all attention"),
    ("multigpu2_kv", 2, "kv_gather", False, True, "Fastlane Multi-GPU, 2 GPUs, K/V all-gather attention"),
    ("multigpu2_async", 2, "ulysses", False, False, "multigpu2 with TORCH_NCCL_BLOCKING_WAIT=0 (no host wait per "
                                                    "collective; a hung worker is then NCCL's watchdog's)"),
    ("multigpu4_async", 4, "ulysses", False, False, "multigpu4 with TORCH_NCCL_BLOCKING_WAIT=0"),
    ("multigpu2+target0.3", 2, "ulysses", True, True, "Target Speed 0.3 order 2 (FLUX blocks, Wan output) then "
                                                      "Multi-GPU on 2 GPUs, Ulysses (1-GPU reference: target0.3 / Wan "
                                                      "target0.3_output)"),
    ("multigpu4+target0.3", 4, "ulysses", True, True, "Target Speed 0.3 order 2 (FLUX blocks, Wan output) then "
                                                      "Multi-GPU on 4 GPUs, Ulysses"),
]:
    row(_name, families=FAMILIES, note=_note)(
        lambda model, _g=_gpus, _a=_attention, _c=_cache, _n=_name, _b=_blocking: multigpu(
            model, _g, _a, _target() if _c else None, _n, _b))


@row("target0.3_output", families=FAMILIES,
     note="Target Speed 0.3 order 2 at granularity output, 1 GPU (the reference of multigpu*+target0.3 on Wan)")
def target03_output(model):
    return node("FastlaneTargetSpeedCache", model, **_target("output"))
