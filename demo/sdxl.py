"""The demo SDXL model: a small config of ComfyUI's real SDXL UNet, its trained weights, and its conditioning.

Built the way ComfyUI builds SDXL base (``comfy.supported_models.SDXL(...).get_model``, so ``comfy.model_base.SDXL``
around ``openaimodel.UNetModel``, eps-prediction with the discrete SD schedule (``ModelSamplingDiscrete``), the SDXL
latent format) and wrapped in a real ``ModelPatcher``. It keeps SDXL's layout (3 levels with 2 res blocks each,
transformers on levels 1 and 2 and in the middle block, 9 input and 9 output blocks, linear proj in the transformers,
64-channel attention heads, the ADM vector of pooled text embedding + six 256-dim size/crop embeddings); only the
sizes are small: 64 channels on every level, one transformer layer per block, 64-dim context, 3.7M parameters.
Why 64 and not 32 channels: ComfyUI's UNet normalises with ``GroupNorm(32, channels)``; at 32 channels every group is
one channel, so the output norm erases each channel's per-image mean, the UNet cannot predict the mean of the noise,
and at high sigma (an eps error of 1/16 is an image error of ~1 at sigma 14.6) samples come out tiled with one
repeated patch pattern. Two channels per group (as SDXL has ten) carry it.
Sample it like SDXL: empty 4-channel latent, CFG ~5 with the ``none`` class as the negative, euler/normal. The
weights are stored in fp16 (7.4 MB); ComfyUI's loader runs them in fp32 on a CPU.
"""
from __future__ import annotations

from pathlib import Path


import comfy.supported_models

from . import weights_file
from .data import IMAGE_SIZE
from .weights_file import UNCONDITIONAL  # noqa: F401  (the negative prompt's class)

WEIGHTS = Path(__file__).resolve().parent / "weights" / "fastlane-demo-sdxl.safetensors"

CONTEXT_DIM = 64  # SDXL: 2048 (CLIP-L + CLIP-G hidden states)
POOLED_DIM = 64  # SDXL: 1280 (CLIP-G pooled)
CONTEXT_TOKENS = 8
DEFAULT_CFG = 5.0

#: SDXL base's UNet layout (comfy/model_detection.py: channel_mult [1, 2, 4], 320 channels), narrowed.
UNET_CONFIG: dict = {
    "use_checkpoint": False,
    "image_size": 32,
    "in_channels": 4,
    "out_channels": 4,
    "model_channels": 64,
    "channel_mult": [1, 1, 1],
    "num_res_blocks": [2, 2, 2],
    "transformer_depth": [0, 0, 1, 1, 1, 1],
    "transformer_depth_middle": 1,
    "transformer_depth_output": [0, 0, 0, 1, 1, 1, 1, 1, 1],
    "use_spatial_transformer": True,
    "use_linear_in_transformer": True,
    "legacy": False,
    "context_dim": CONTEXT_DIM,
    "num_classes": "sequential",
    "adm_in_channels": POOLED_DIM + 6 * 256,  # pooled + (height, width, crop_h, crop_w, target_h, target_w) embeddings
    "use_temporal_attention": False,
    "use_temporal_resblock": False,
}


_DEMO = weights_file.DemoModel(comfy.supported_models.SDXL, UNET_CONFIG, WEIGHTS)
model_config, build_model = _DEMO.model_config, _DEMO.build_model
load_demo_patcher, class_names = _DEMO.load_demo_patcher, _DEMO.class_names


def size_conditioning(size: int = IMAGE_SIZE) -> dict:
    """The size/crop entries CLIPTextEncodeSDXL puts in SDXL conditioning; the demo was trained with these values
    (a square ``size`` image, no crop), so they are what it should be given."""
    return {"width": size, "height": size, "crop_w": 0, "crop_h": 0, "target_width": size, "target_height": size}


def conditioning(class_name: str, batch: int = 1, path: str | Path | None = None) -> list:
    """ComfyUI CONDITIONING for one class, shaped like CLIPTextEncodeSDXL's: ``[[context (batch, T, 64),
    {"pooled_output": (batch, 64), "width", "height", "crop_w", "crop_h", "target_width", "target_height"}]]``."""
    context, pooled = weights_file.class_embedding(path or WEIGHTS, class_name, batch)
    return [[context, {"pooled_output": pooled, **size_conditioning()}]]
