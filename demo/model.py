"""The demo FLUX model: a small config of ComfyUI's real ``Flux`` class, its trained weights, and its conditioning.

The model is built exactly the way ComfyUI builds FLUX.1-dev (``comfy.supported_models.Flux(...).get_model``, so
``comfy.model_base.Flux`` around ``comfy.ldm.flux.model.Flux``, ModelSamplingFlux, the Flux latent format) and wrapped
in a real ``ModelPatcher``; only the sizes are small. The "text encoder" is a fixed table of per-class embeddings
(context tokens + pooled vector) stored in the same weights file.
"""
from __future__ import annotations

from pathlib import Path

import torch

import comfy.model_base
import comfy.model_patcher
import comfy.supported_models

from . import weights_file
from .weights_file import CLASSES_METADATA, CONTEXT_KEY, MODEL_PREFIX, POOLED_KEY, UNCONDITIONAL  # noqa: F401

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


def model_config(dtype: torch.dtype = torch.float32, manual_cast_dtype: torch.dtype | None = None,
                 unet_config: dict | None = None) -> comfy.supported_models.Flux:
    """ComfyUI's own FLUX.1-dev model config class, with the demo's sizes (or ``unet_config``'s: the proxy's)."""
    config = comfy.supported_models.Flux(dict(unet_config or UNET_CONFIG))
    config.set_inference_dtype(dtype, manual_cast_dtype)
    return config


def build_model(dtype: torch.dtype = torch.float32, manual_cast_dtype: torch.dtype | None = None,
                device: torch.device | None = None, unet_config: dict | None = None) -> comfy.model_base.Flux:
    """An untrained ``comfy.model_base.Flux`` (ComfyUI leaves its weights uninitialised: load or initialise them)."""
    return model_config(dtype, manual_cast_dtype, unet_config).get_model({}, "", device=device)


def load_demo_patcher(path: str | Path | None = None, dtype: torch.dtype | None = None
                      ) -> comfy.model_patcher.ModelPatcher:
    """Load the trained demo model into a real ModelPatcher, choosing dtypes the way ComfyUI's UNETLoader does."""
    return weights_file.load_patcher(path or WEIGHTS, comfy.supported_models.Flux, UNET_CONFIG, dtype)


def class_names(path: str | Path | None = None, include_unconditional: bool = False) -> list[str]:
    """The classes (training images) the demo model draws, in weights-file order."""
    return weights_file.class_names(path or WEIGHTS, include_unconditional)


def conditioning(class_name: str, batch: int = 1, guidance: float | None = DEFAULT_GUIDANCE,
                 path: str | Path | None = None) -> list:
    """ComfyUI CONDITIONING for one class: ``[[context (batch, T, 64), {"pooled_output": (batch, 64), "guidance"}]]``.

    ``guidance`` is FLUX's embedded guidance (what FluxGuidance sets); the demo was trained with it varied over 1..5.
    """
    context, pooled = weights_file.class_embedding(path or WEIGHTS, class_name, batch)
    options: dict = {"pooled_output": pooled}
    if guidance is not None:
        options["guidance"] = float(guidance)
    return [[context, options]]
