"""Conditioning on the GPU for the whole sampling run, instead of copied from the CPU at every model call.

ComfyUI keeps a run's conditioning (text embeddings, pooled vectors, FLUX guidance) on the CPU and casts it onto the
GPU inside every model call. A copy from pageable CPU memory synchronises the CUDA stream, so each step the CPU waits
for the GPU to drain before it can queue more work: three such copies per FLUX step measured as GPU idle time in the
profile (docs/BENCHMARKS.md). A SAMPLER_SAMPLE wrapper (it runs after ComfyUI built the run's conditioning) moves
those tensors to the model's device once per run, keeping their dtype, so the per-call casts stay the same
operations and the results are unchanged.
"""
from __future__ import annotations

from typing import Any

import torch

KEY = "fastlane_conds_on_device"


def move_conds(conds: dict[str, list[dict]], device: torch.device) -> int:
    """Move every tensor model condition of ``conds`` (a guider's processed conds) to ``device``; returns how many."""
    moved = 0
    for cond_list in conds.values():
        for cond in cond_list:
            for model_cond in cond.get("model_conds", {}).values():
                value = getattr(model_cond, "cond", None)
                if isinstance(value, torch.Tensor) and value.device != device:
                    model_cond.cond = value.to(device)
                    moved += 1
    return moved


def sampler_sample_wrapper(executor, guider, *args, **kwargs) -> Any:
    device = torch.device(guider.model_patcher.load_device)
    if device.type != "cpu" and isinstance(getattr(guider, "conds", None), dict):
        move_conds(guider.conds, device)
    return executor(guider, *args, **kwargs)


def attach(patcher) -> None:
    """Install the wrapper on ``patcher`` (a clone the caller owns); idempotent."""
    from comfy.patcher_extension import WrappersMP

    if not patcher.get_wrappers(WrappersMP.SAMPLER_SAMPLE, KEY):
        patcher.add_wrapper_with_key(WrappersMP.SAMPLER_SAMPLE, KEY, sampler_sample_wrapper)
