"""Baseline rows: ComfyUI as shipped (eager, its compile, EasyCache, LazyCache, fp8 weights) and diffusers' models
at the same shapes."""
from __future__ import annotations

import importlib.util
from typing import Any, Callable

from .comfy_node import node
from .registry import ALL_FAMILIES, CTX, RowSkipped, row


@row("eager", families=ALL_FAMILIES, note="the base model, ComfyUI as shipped (baseline of the speed-up column)")
def eager(model):
    return model.clone()


@row("compile", families=ALL_FAMILIES, heavy=True,
     note="core TorchCompileModel node, backend inductor (compiles the whole diffusion_model)")
def compile_(model):
    return node("TorchCompileModel", model, backend="inductor")


@row("easycache", families=ALL_FAMILIES, note="core EasyCache node, defaults (threshold 0.2, 0.15-0.95)")
def easycache(model):
    return node("EasyCache", model)


@row("lazycache", note="core LazyCache node, defaults (threshold 0.2, 0.15-0.95)")
def lazycache(model):
    return node("LazyCache", model)


def _share_tensors(dst, src) -> None:
    """Make every parameter and buffer of ``dst`` the very tensor of ``src`` (same module tree, same names): the
    native fp8 model then uses the base model's fp8 weights instead of a copy."""
    src_modules = dict(src.named_modules())
    for name, mod in dst.named_modules():
        other = src_modules[name]
        for key in list(mod._parameters):
            mod._parameters[key] = other._parameters[key]
        for key in list(mod._buffers):
            mod._buffers[key] = other._buffers[key]


def native_fp8(model):
    """What core's UNETLoader builds for weight_dtype ``fp8_e4m3fn_fast``: the family's model config with inference
    dtype float8_e4m3fn, 16-bit compute and ``optimizations["fp8"] = True`` (as ``load_diffusion_model_state_dict``
    does). Weights: where the base model was built in fp8 (``--weights fp8``), its very tensors (no copy); else the
    base model's cast to e4m3, a copy of half the 16-bit size that lives only while the row runs (the row's patcher
    is its only owner; rows are built again, never cached across rows, so that a 20-32 B model never has two copies
    resident beyond one row). Random weights: timing only."""
    import comfy.model_patcher
    import models
    import torch

    config = models.model_config_class(CTX.family)(dict(CTX.spec.unet_config))
    compute = CTX.dtype if CTX.dtype in (torch.bfloat16, torch.float16) else torch.bfloat16
    config.set_inference_dtype(torch.float8_e4m3fn, compute)
    config.optimizations["fp8"] = True
    base = model.model.diffusion_model
    if CTX.spec.extra.get("fp8_weights"):
        built = config.get_model({}, "", device=torch.device("meta"))
        _share_tensors(built.diffusion_model, base)
    else:
        built = config.get_model({}, "", device=model.load_device)
        built.diffusion_model.load_state_dict(base.state_dict())
    built.to(model.load_device)
    built.eval()
    return comfy.model_patcher.ModelPatcher(built, load_device=model.load_device, offload_device=model.offload_device)


@row("native_fp8", families=ALL_FAMILIES,
     note="core UNETLoader weight_dtype fp8_e4m3fn_fast (fp8 weights, _scaled_mm at scale 1)")
def native_fp8_row(model):
    return native_fp8(model)


@row("native_fp8+compile", families=ALL_FAMILIES, heavy=True,
     note="core fp8_e4m3fn_fast + core TorchCompileModel: the best native stack per computed step")
def native_fp8_compile(model):
    return node("TorchCompileModel", native_fp8(model), backend="inductor")


def _diffusers_row(family: str) -> Callable[[], Callable[[], Any]]:
    def build() -> Callable[[], Any]:
        if importlib.util.find_spec("diffusers") is None:
            raise RowSkipped("skipped: diffusers missing")
        import models

        model, _ = models.build_diffusers(family, CTX.tiny, CTX.device, CTX.dtype)
        inputs = models.diffusers_inputs(family, CTX.spec, CTX.width, CTX.height, CTX.device, CTX.dtype)

        def call() -> Any:
            return model(**inputs)

        return call
    return build


row("diffusers_flux_eager", families=("flux",), kind="standalone",
    note="diffusers FluxTransformer2DModel, direct forward x steps at the same token counts (no sampler)")(
    _diffusers_row("flux"))
row("diffusers_sdxl_eager", families=("sdxl",), kind="standalone",
    note="diffusers UNet2DConditionModel, direct forward x steps, batch 2 like CFG (no sampler)")(
    _diffusers_row("sdxl"))
