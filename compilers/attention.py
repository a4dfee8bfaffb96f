"""Which PyTorch SDPA kernel runs the diffusion model's attention.

PyTorch picks flash attention (v2) first on CUDA; on Hopper its cuDNN attention kernel is faster at FLUX/SDXL
shapes (docs/BENCHMARKS.md has the measured figures). ComfyUI itself prefers cuDNN only on Windows. This module
installs an APPLY_MODEL wrapper that holds ``torch.nn.attention.sdpa_kernel(order, set_priority=True)`` around each
model call: eager calls pick the kernel at run time, compiled code picks it while tracing (inside the same call), so
it works with or without Fastlane Compile in either node order. The wrapper only sets a priority: a kernel that can't
take an input (head size, mask, dtype) falls through to the next one.

``sage`` is the exception: not an SDPA kernel but SageAttention (``pip install sageattention``; Triton kernels, INT8
Q·K with smoothed K, 16-bit P·V), run through ComfyUI's own ``attention_sage`` for this MODEL's calls only (ComfyUI's
``--use-sage-attention`` switches it for every model in the process). It changes the numbers a little: not lossless.
"""
from __future__ import annotations

import logging
from typing import Callable

import torch

KEY = "fastlane_attention"
CHOICES = ("auto", "cudnn", "flash", "efficient", "math", "sage")
log = logging.getLogger("fastlane")


def _order(choice: str) -> list:
    from torch.nn.attention import SDPBackend

    rest = [SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.CUDNN_ATTENTION, SDPBackend.MATH]
    first = {"cudnn": SDPBackend.CUDNN_ATTENTION, "flash": SDPBackend.FLASH_ATTENTION,
             "efficient": SDPBackend.EFFICIENT_ATTENTION, "math": SDPBackend.MATH}[choice]
    return [first, *[b for b in rest if b != first]]


def resolve(choice: str, device: torch.device) -> str:
    """``auto``: cuDNN on Hopper and newer (sm90+), where it measured fastest; flash elsewhere (PyTorch's default)."""
    if choice not in CHOICES:
        raise ValueError(f"attention backend must be one of {CHOICES}, not '{choice}'")
    if choice == "sage":
        _check_sage(torch.device(device))
    if choice != "auto":
        return choice
    device = torch.device(device)
    if device.type == "cuda" and torch.cuda.is_available() and torch.cuda.get_device_capability(device) >= (9, 0):
        return "cudnn"
    return "flash"


def _check_sage(device: torch.device) -> None:
    import comfy.ldm.modules.attention as attention

    if device.type != "cuda":
        raise ValueError(f"SageAttention runs on NVIDIA GPUs (Triton kernels); this model runs on {device}: pick "
                         "'auto' or another SDPA kernel")
    if not getattr(attention, "SAGE_ATTENTION_IS_AVAILABLE", False):
        raise ValueError("SageAttention is not installed in ComfyUI's Python: `pip install sageattention` and restart "
                         "ComfyUI, or pick 'auto' (cuDNN on Hopper)")


def _sage(func, *args, **kwargs):
    import comfy.ldm.modules.attention as attention

    return attention.attention_sage(*args, **kwargs)


def _sdpa(func, *args, **kwargs):
    import comfy.ldm.modules.attention as attention

    return attention.attention_pytorch(*args, **kwargs)


def _uses_sdpa() -> bool:
    import comfy.ldm.modules.attention as attention

    return attention.optimized_attention is attention.attention_pytorch


def make_wrapper(backend: str) -> Callable:
    """An APPLY_MODEL wrapper that runs each call with ``backend`` first in SDPA's priority list (or, for ``sage``,
    with SageAttention as the call's attention function)."""
    from torch.nn.attention import sdpa_kernel

    order = _order("cudnn" if backend == "sage" else backend)
    function = _sage if backend == "sage" else _sdpa

    def apply_model_wrapper(executor, *args, **kwargs):
        options = kwargs.get("transformer_options")
        if options is None and len(args) > 5 and isinstance(args[5], dict):
            options = args[5]
        override = options is not None and "optimized_attention_override" not in options and (
            backend == "sage" or not _uses_sdpa())
        if override:
            options["optimized_attention_override"] = function
        try:
            with sdpa_kernel(order, set_priority=True):
                return executor(*args, **kwargs)
        finally:
            if override:
                options.pop("optimized_attention_override", None)

    return apply_model_wrapper


def attach(model, choice: str):
    """A clone of ``model`` whose attention runs through SDPA with the chosen kernel first; returns (clone, backend)."""
    from comfy.patcher_extension import WrappersMP

    backend = resolve(choice, model.load_device)
    patched = model.clone()
    patched.remove_wrappers_with_key(WrappersMP.APPLY_MODEL, KEY)
    patched.add_wrapper_with_key(WrappersMP.APPLY_MODEL, KEY, make_wrapper(backend))
    if not _uses_sdpa():
        log.info("Fastlane Attention: ComfyUI's attention is not PyTorch SDPA in this process; this MODEL's calls use "
                 "SDPA with %s first", backend)
    return patched, backend
