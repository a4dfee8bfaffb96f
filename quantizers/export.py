"""A Fastlane-quantized MODEL as a ``.safetensors`` that ComfyUI's own loaders read back (Load Diffusion Model).

Layout: ComfyUI's mixed-precision checkpoint format (ComfyUI 0.3.75, ``comfy/ops.py`` ``mixed_precision_ops``):

- each quantized Linear ``<name>`` stores ``<name>.weight`` as float8 e4m3 codes and ``<name>.weight_scale`` as
  float32, and is listed in the safetensors metadata entry ``_quantization_metadata`` (JSON
  ``{"format_version": "1.0", "layers": {"<name>": {"format": "float8_e4m3fn"}}}``); ComfyUI then builds that Linear
  with its ``TensorCoreFP8Layout`` ``QuantizedTensor`` (codes + scale) instead of a 16-bit weight;
- every other tensor as it is in the MODEL (16-bit), with LoRA/weight patches still pending on the MODEL baked in;
- an empty ``scaled_fp8`` marker tensor (what ComfyUI's own ``model_base.state_dict_for_saving`` writes for fp8
  models): without it ComfyUI picks the checkpoint's majority weight dtype (fp8) as the model dtype on fp8 GPUs and
  would build the non-Linear parameters (FLUX's RMSNorm scales) in fp8.

Scales: Fastlane's row-wise fp8 Linears (fp8_scaled_mm) have one scale per output row; fp8_tensorwise's have one
per tensor, written 0-d (ComfyUI's own per-tensor shape; its activation scale is per run, so no ``input_scale``).
The classic scaled-fp8 layout (``scale_weight`` per Linear) holds a single per-tensor scale only: its Linear
declares a 0-d ``scale_weight`` (a per-row tensor fails to load) and its fp8 matmul path is per-tensor. The
mixed-precision layout takes the scale tensor as given and dequantizes with ``codes.to(dtype) * scale``, so a
``[out, 1]`` scale broadcasts per row: the saved codes and scales are the quantized model's, bit for bit, with no
requantization. ComfyUI 0.3.75 computes these Linears by
dequantizing the weight at each call (its fp8 ``_scaled_mm`` path needs a static ``input_scale``, which Fastlane's
per-token scheme does not have, so none is written): fp8 weight memory, 16-bit matmuls.
"""
from __future__ import annotations

import json
import os

import torch

from .fp8_scaled import FP8, Fp8Weights

FORMAT = "float8_e4m3fn"  # ComfyUI's QUANT_ALGOS key for e4m3 + TensorCoreFP8Layout
WRITER = "Fastlane Save Quantized"


def _fastlane_version() -> str:
    try:
        import tomllib

        with open(os.path.join(os.path.dirname(os.path.dirname(__file__)), "pyproject.toml"), "rb") as f:
            return tomllib.load(f)["project"]["version"]
    except (OSError, KeyError, ValueError):  # a packaged copy without pyproject.toml
        return "unknown"


def fp8_linears(model) -> dict[str, Fp8Weights]:
    """The Fastlane fp8 Linears of ``model`` (name inside the diffusion model -> module); a clear error for a MODEL
    that holds none, or that holds torchao-quantized Linears (whose tensors this layout does not take)."""
    from .patching import QuantizedLinear

    if not hasattr(model, "model") or not hasattr(getattr(model, "model", None), "diffusion_model"):
        raise ValueError(f"{WRITER} takes a MODEL (a ComfyUI ModelPatcher), got {type(model).__name__}")
    dm = model.model.diffusion_model
    fp8, torchao = {}, {}
    for name, m in dm.named_modules():
        if isinstance(m, Fp8Weights):
            fp8[name] = m
        elif isinstance(m, QuantizedLinear):
            torchao[name] = m.fastlane_scheme
    if torchao:
        scheme = min(torchao.values())
        raise ValueError(f"{WRITER} takes a MODEL from Fastlane Quantize with scheme fp8_scaled_mm, "
                         f"fp8_scaled_mm_exact or fp8_tensorwise(_dynamic); this MODEL was quantized with "
                         f"torchao's '{scheme}' ({len(torchao)} Linears), whose tensors ComfyUI's fp8 checkpoint "
                         "layout does not hold. Quantize with fp8_scaled_mm to save.")
    if not fp8:
        raise ValueError(f"{WRITER} takes a MODEL from Fastlane Quantize with an fp8 scheme (fp8_scaled_mm, "
                         "fp8_scaled_mm_exact, fp8_tensorwise); this MODEL has no quantized Linears. Put "
                         "Fastlane Quantize (fp8_scaled_mm) between the loader and this node.")
    return fp8


def state_dict(model) -> tuple[dict[str, torch.Tensor], dict[str, str], str]:
    """(tensors, safetensors metadata, one-line summary) of ``model`` in ComfyUI's mixed-precision fp8 layout.
    Reads ``model`` only: its tensors are copied to the CPU, nothing on it changes."""
    from . import patching

    linears = fp8_linears(model)
    dm = model.model.diffusion_model
    out: dict[str, torch.Tensor] = {}
    quantized_keys = set()
    for name, m in linears.items():
        out[f"{name}.weight"] = m.weight.detach().to("cpu", copy=True).contiguous()
        # Fastlane keeps [1, out] (scale_b of _scaled_mm) or [out]; ComfyUI multiplies codes [out, in] by the scale.
        # fp8_tensorwise's single scale stays 0-d: ComfyUI's own per-tensor scale shape
        scale = m.weight_scale.detach().float()
        scale = scale if scale.dim() == 0 else scale.reshape(-1, 1)
        out[f"{name}.weight_scale"] = scale.to("cpu", copy=True).contiguous()
        if m.bias is not None:
            out[f"{name}.bias"] = m.bias.detach().to("cpu", copy=True).contiguous()
        quantized_keys.update(f"{name}.{p}" for p in ("weight", "weight_scale", "bias"))
    baked = 0
    for key, t in dm.state_dict(keep_vars=True).items():
        if key in quantized_keys or t is None:
            continue
        path = f"diffusion_model.{key}"
        live = patching._original(model, path, t)  # the original if ComfyUI has this MODEL's patches applied now
        if path in model.patches:  # a LoRA on a 16-bit weight: ComfyUI would apply it at load; the file has it in
            baked += 1
            tensor = patching._patched(model, path, live, live.dtype, torch.device("cpu"))
        else:
            tensor = live.detach()
        out[key] = tensor.to("cpu", copy=True).contiguous()
    if out and FP8 not in {t.dtype for t in out.values()}:
        raise AssertionError("no fp8 tensor in the export")  # cannot happen: linears is not empty
    out["scaled_fp8"] = torch.tensor([], dtype=FP8)
    schemes = sorted({m.fastlane_scheme for m in linears.values()})
    per_tensor = {m.weight_scale.dim() == 0 for m in linears.values()}  # which scale shapes the file holds
    metadata = {
        "_quantization_metadata": json.dumps({
            "format_version": "1.0",
            "layers": {name: {"format": FORMAT} for name in sorted(linears)},
        }),
        "fastlane": json.dumps({
            "writer": WRITER, "fastlane_version": _fastlane_version(), "schemes": schemes,
            "quantized_linears": len(linears),
            "weight_scale": "; ".join(sorted("per tensor, float32 0-d" if t else "per output row, float32 [out, 1]"
                                             for t in per_tensor)),
            "patches_baked": baked, "layout": "ComfyUI mixed precision (TensorCoreFP8Layout, no input_scale)",
        }),
        "modelspec.author": WRITER,
    }
    fp8_bytes = sum(out[f"{n}.weight"].numel() for n in linears)
    total = sum(t.numel() * t.element_size() for t in out.values())
    kinds = " and ".join(sorted("per-tensor" if t else "per-row" for t in per_tensor))
    summary = (f"{len(linears)} fp8 Linears ({', '.join(schemes)}; {fp8_bytes / 2 ** 20:.1f} MB of e4m3 weights with "
               f"{kinds} scales), {total / 2 ** 20:.1f} MB in all; {baked} pending LoRA/weight patches baked in")
    return out, metadata, summary


def save(model, path: str) -> str:
    """Write ``model`` to ``path`` (a .safetensors); returns the summary."""
    import comfy.utils

    tensors, metadata, summary = state_dict(model)
    comfy.utils.save_torch_file(tensors, path, metadata=metadata)
    return summary
