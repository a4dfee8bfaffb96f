"""The demo FLUX model: a small config of ComfyUI's real ``Flux`` class, its trained weights, and its conditioning.

The model is built exactly the way ComfyUI builds FLUX.1-dev (``comfy.supported_models.Flux(...).get_model``, so
``comfy.model_base.Flux`` around ``comfy.ldm.flux.model.Flux``, ModelSamplingFlux, the Flux latent format) and wrapped
in a real ``ModelPatcher``; only the sizes are small. The "text encoder" is a fixed table of per-class embeddings
(context tokens + pooled vector) stored in the same weights file.
"""
from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path

import torch
from safetensors import safe_open

import comfy.model_base
import comfy.model_management
import comfy.model_patcher
import comfy.supported_models
import comfy.utils

WEIGHTS = Path(__file__).resolve().parent / "weights" / "fastlane-demo-flux.safetensors"

#: A FLUX.1-dev-shaped transformer (guidance embedding, double + single stream blocks, RoPE), scaled down.
UNET_CONFIG: dict = {
    "image_model": "flux",
    "in_channels": 16,
    "out_channels": 16,
    "patch_size": 2,
    "hidden_size": 128,
    "num_heads": 4,
    "axes_dim": [4, 14, 14],  # sums to the head dim (32), in FLUX's 16:56:56 proportion
    "theta": 256,
    "mlp_ratio": 4.0,
    "depth": 2,
    "depth_single_blocks": 4,
    "context_in_dim": 64,
    "vec_in_dim": 64,
    "qkv_bias": True,
    "guidance_embed": True,
}
CONTEXT_TOKENS = 8
DEFAULT_GUIDANCE = 3.5
#: The class trained by condition dropout: the model's unconditional prediction (useful as a cfg > 1 negative).
UNCONDITIONAL = "none"

MODEL_PREFIX = "model.diffusion_model."
CONTEXT_KEY = "text_encoder.context"  # (classes, CONTEXT_TOKENS, context_in_dim)
POOLED_KEY = "text_encoder.pooled"  # (classes, vec_in_dim)
CLASSES_METADATA = "fastlane.classes"  # JSON list naming the rows of the two tables above


def model_config(dtype: torch.dtype = torch.float32, manual_cast_dtype: torch.dtype | None = None
                 ) -> comfy.supported_models.Flux:
    """ComfyUI's own FLUX.1-dev model config class, with the demo's sizes."""
    config = comfy.supported_models.Flux(dict(UNET_CONFIG))
    config.set_inference_dtype(dtype, manual_cast_dtype)
    return config


def build_model(dtype: torch.dtype = torch.float32, manual_cast_dtype: torch.dtype | None = None,
                device: torch.device | None = None) -> comfy.model_base.Flux:
    """An untrained ``comfy.model_base.Flux`` (ComfyUI leaves its weights uninitialised: load or initialise them)."""
    return model_config(dtype, manual_cast_dtype).get_model({}, "", device=device)


def load_demo_patcher(path: str | Path | None = None, dtype: torch.dtype | None = None
                      ) -> comfy.model_patcher.ModelPatcher:
    """Load the trained demo model into a real ModelPatcher, choosing dtypes the way ComfyUI's UNETLoader does."""
    sd, _ = comfy.utils.load_torch_file(str(path or WEIGHTS), return_metadata=True)
    unet_sd = {k: v for k, v in sd.items() if k.startswith(MODEL_PREFIX)}
    load_device = comfy.model_management.get_torch_device()
    offload_device = comfy.model_management.unet_offload_device()
    supported = comfy.supported_models.Flux.supported_inference_dtypes
    if dtype is None:
        dtype = comfy.model_management.unet_dtype(model_params=comfy.utils.calculate_parameters(unet_sd),
                                                  supported_dtypes=supported,
                                                  weight_dtype=comfy.utils.weight_dtype(unet_sd))
    manual_cast = comfy.model_management.unet_manual_cast(dtype, load_device, supported)
    model = build_model(dtype, manual_cast).to(offload_device)
    missing = set(model.diffusion_model.state_dict()) - {k[len(MODEL_PREFIX):] for k in unet_sd}
    model.load_model_weights(unet_sd, MODEL_PREFIX)  # (it consumes unet_sd)
    if missing:
        raise RuntimeError(f"demo weights {path or WEIGHTS} lack {sorted(missing)[:5]}")
    return comfy.model_patcher.ModelPatcher(model, load_device=load_device, offload_device=offload_device)


@lru_cache(maxsize=4)
def _text_tables(path: str) -> tuple[list[str], torch.Tensor, torch.Tensor]:
    with safe_open(path, framework="pt") as f:
        names = json.loads(f.metadata()[CLASSES_METADATA])
        return names, f.get_tensor(CONTEXT_KEY).float(), f.get_tensor(POOLED_KEY).float()


def _tables(path: str | Path | None) -> tuple[list[str], torch.Tensor, torch.Tensor]:
    return _text_tables(str(Path(path or WEIGHTS).resolve()))


def class_names(path: str | Path | None = None, include_unconditional: bool = False) -> list[str]:
    """The classes (training images) the demo model draws, in weights-file order."""
    names = _tables(path)[0]
    return list(names) if include_unconditional else [n for n in names if n != UNCONDITIONAL]


def conditioning(class_name: str, batch: int = 1, guidance: float | None = DEFAULT_GUIDANCE,
                 path: str | Path | None = None) -> list:
    """ComfyUI CONDITIONING for one class: ``[[context (batch, T, 64), {"pooled_output": (batch, 64), "guidance"}]]``.

    ``guidance`` is FLUX's embedded guidance (what FluxGuidance sets); the demo was trained with it varied over 1..5.
    """
    names, context, pooled = _tables(path)
    if class_name not in names:
        raise ValueError(f"unknown demo class {class_name!r}; known: {names}")
    i = names.index(class_name)
    options: dict = {"pooled_output": pooled[i:i + 1].repeat(batch, 1)}
    if guidance is not None:
        options["guidance"] = float(guidance)
    return [[context[i:i + 1].repeat(batch, 1, 1), options]]
