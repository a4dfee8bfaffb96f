"""Baseline rows: ComfyUI as shipped (eager, its compile, EasyCache, LazyCache, fp8 weights) and diffusers' models
at the same shapes."""
from __future__ import annotations

import importlib.util
from typing import Any, Callable

from .comfy_node import node
from .registry import CTX, RowSkipped, row


@row("eager", note="the base model, ComfyUI as shipped (baseline of the speed-up column)")
def eager(model):
    return model.clone()


@row("compile", note="core TorchCompileModel node, backend inductor (compiles the whole diffusion_model)", heavy=True)
def compile_(model):
    return node("TorchCompileModel", model, backend="inductor")


@row("easycache", note="core EasyCache node, defaults (threshold 0.2, 0.15-0.95)")
def easycache(model):
    return node("EasyCache", model)


@row("lazycache", note="core LazyCache node, defaults (threshold 0.2, 0.15-0.95)")
def lazycache(model):
    return node("LazyCache", model)


_NATIVE_FP8: dict[int, Any] = {}


def native_fp8(model):
    """What core's UNETLoader builds for weight_dtype ``fp8_e4m3fn_fast``: the family's model config with inference
    dtype float8_e4m3fn, bf16 compute and ``optimizations["fp8"] = True`` (as ``load_diffusion_model_state_dict``
    does), its weights the base model's cast to e4m3 (random weights: timing only). Built once per base model."""
    import comfy.model_patcher
    import comfy.supported_models
    import torch

    key = id(model.model)
    if key not in _NATIVE_FP8:
        cls = comfy.supported_models.Flux if CTX.family == "flux" else comfy.supported_models.SDXL
        config = cls(dict(CTX.spec.unet_config))
        config.set_inference_dtype(torch.float8_e4m3fn, torch.bfloat16)
        config.optimizations["fp8"] = True
        built = config.get_model({}, "", device=model.load_device)
        built.diffusion_model.load_state_dict(model.model.diffusion_model.state_dict())
        built.to(model.load_device)
        built.eval()
        _NATIVE_FP8.clear()
        _NATIVE_FP8[key] = comfy.model_patcher.ModelPatcher(built, load_device=model.load_device,
                                                            offload_device=model.offload_device)
    return _NATIVE_FP8[key].clone()


@row("native_fp8", note="core UNETLoader weight_dtype fp8_e4m3fn_fast (fp8 weights, _scaled_mm at scale 1)")
def native_fp8_row(model):
    return native_fp8(model)


@row("native_fp8+compile", heavy=True,
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
