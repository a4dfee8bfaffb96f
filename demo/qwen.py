"""The demo Qwen-Image model: a small config of ComfyUI's real ``QwenImage`` class, its trained weights, conditioning.

Built the way ComfyUI builds Qwen-Image (``comfy.supported_models.QwenImage(...).get_model``, so
``comfy.model_base.QwenImage`` around ``comfy.ldm.qwen_image.model.QwenImageTransformer2DModel``, ModelSamplingFlux
with shift 1.15, the Wan 2.1 latent format: 16 channels with a time axis, ``(B, 16, 1, H/8, W/8)``) and wrapped in a
real ``ModelPatcher``. It keeps Qwen-Image's layout (a stack of dual-stream MMDiT blocks with separate text and image
modulation, RMS-normed text input, QK norm, 3-axis RoPE in the 16:56:56 proportion, no pooled vector, no guidance
embedding); only the sizes are small: hidden 128 (4 heads of 32), 6 blocks, 64-dim context. The "text encoder" is a
fixed table of per-class context tokens stored in the weights file (Qwen-Image's conditioning is context only).

Its codec latents are Wan 2.1-scaled (``scripts/train_demo.py`` folds ``Wan21``'s per-channel mean and std into the
PCA codec), so the sampler's ``process_in`` hands the model unit-variance inputs, as with the real VAE. Sample it like
Qwen-Image: empty latent (KSampler adds the time axis: ``comfy.sample.fix_empty_latent_channels``), euler/simple,
cfg 2.5 against the ``none`` class.
Trained on this workplace's CPU (2 cores, 1 thread) by
    scripts/train_demo.py --family qwen-image --steps 4000 --batch 16 --threads 1
(2026-12-07: 694 s of training at 173 ms/step, final avg loss 0.230; preview, 20 steps at cfg 2.5: 16/16 samples
nearest their own class, 18.6 dB mean PSNR to it; all in the file's ``fastlane.training`` metadata). 7.4 MB, fp16.
"""
from __future__ import annotations

from pathlib import Path


import comfy.supported_models

from . import weights_file
from .weights_file import UNCONDITIONAL  # noqa: F401  (the negative prompt's class)

WEIGHTS = Path(__file__).resolve().parent / "weights" / "fastlane-demo-qwen-image.safetensors"

CONTEXT_DIM = 64  # Qwen-Image: 3584 (Qwen2.5-VL 7B hidden states)
CONTEXT_TOKENS = 8
DEFAULT_CFG = 2.5

#: Qwen-Image's transformer (comfy/model_detection.py: 60 blocks, 24 heads of 128, 3584-dim context), scaled down.
UNET_CONFIG: dict = {
    "image_model": "qwen_image",
    "patch_size": 2,
    "in_channels": 64,  # 16 latent channels x 2x2 patch
    "out_channels": 16,
    "num_layers": 6,
    "attention_head_dim": 32,
    "num_attention_heads": 4,
    "joint_attention_dim": CONTEXT_DIM,
    "axes_dims_rope": [4, 14, 14],  # sums to the head dim, in Qwen-Image's 16:56:56 proportion
}


_DEMO = weights_file.DemoModel(comfy.supported_models.QwenImage, UNET_CONFIG, WEIGHTS)
model_config, build_model = _DEMO.model_config, _DEMO.build_model
load_demo_patcher, class_names = _DEMO.load_demo_patcher, _DEMO.class_names


def conditioning(class_name: str, batch: int = 1, path: str | Path | None = None) -> list:
    """ComfyUI CONDITIONING for one class, shaped like the Qwen-Image text encoder's: ``[[context (batch, T, 64),
    {}]]`` (``QwenImage.extra_conds`` reads only the context; the pooled table of the file is unused)."""
    context, _ = weights_file.class_embedding(path or WEIGHTS, class_name, batch)
    return [[context, {}]]
