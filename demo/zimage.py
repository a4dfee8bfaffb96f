"""The demo Z-Image model: a small config of ComfyUI's real ``ZImage`` class, its trained weights, its conditioning.

Built the way ComfyUI builds Z-Image (``comfy.supported_models.ZImage(...).get_model``, so ``comfy.model_base.Lumina2``
around ``comfy.ldm.lumina.model.NextDiT``, discrete-flow sampling (``ModelSamplingDiscreteFlow``, ``CONST``) with
shift 3, the Flux latent format) and wrapped in a real ``ModelPatcher``. It keeps Z-Image's layout (single-stream
NextDiT: a context refiner on the caption tokens and a noise refiner on the image tokens, then the main ``layers``
stack on the joint sequence; Z-Image's 256-dim adaLN modulation with tanh gates, QK norm, 3-axis RoPE in its 32:48:48
proportion with theta 256, SwiGLU FFN, time scale 1000, caption and image tokens padded to multiples of 32 with
learned pad tokens); only the sizes are small: dim 256 (4 heads of 64), 4 main layers, 1 refiner layer each (Z-Image:
30 and 2), an FFN of 352 (1.375 x dim; Z-Image's is 2.67 x), 64-dim context, 4.8M parameters, stored in fp16.
Why dim 256 and not 128: Z-Image's modulation feeds a 256-dim timestep embedding to ``Linear(min(dim, 256), ...)``
layers, so NextDiT with ``z_image_modulation`` cannot be built below dim 256; the FFN is narrowed instead so that
the file stays under 10 MB. The "text encoder" is a fixed table of per-class context tokens stored in the weights file
(Z-Image's conditioning is context only; ``Lumina2.extra_conds`` derives ``num_tokens`` from it).

Sample it like Z-Image Turbo (euler/simple, cfg 1; 8 steps) or at 28 steps. Trained on this workplace's CPU (2 cores,
1 thread) by
    scripts/train_demo.py --family z-image --steps 2500 --batch 16 --threads 1
(2026-12-07: 997 s of training at 399 ms/step, final avg loss 0.252; preview, 20 steps at cfg 1: 16/16 samples nearest
their own class, 18.9 dB mean PSNR to it; all in the file's ``fastlane.training`` metadata). 9.6 MB, fp16.
"""
from __future__ import annotations

from pathlib import Path


import comfy.supported_models

from . import weights_file
from .weights_file import UNCONDITIONAL  # noqa: F401  (the negative prompt's class)

WEIGHTS = Path(__file__).resolve().parent / "weights" / "fastlane-demo-z-image.safetensors"

CONTEXT_DIM = 64  # Z-Image: 2560 (Qwen3 4B hidden states)
CONTEXT_TOKENS = 8
DEFAULT_CFG = 1.0

#: Z-Image's NextDiT (comfy/model_detection.py: dim 3840, 30 heads, 30 layers), scaled down.
UNET_CONFIG: dict = {
    "image_model": "lumina2",
    "patch_size": 2,
    "in_channels": 16,
    "dim": 256,
    "cap_feat_dim": CONTEXT_DIM,
    "n_layers": 4,
    "n_refiner_layers": 1,
    "n_heads": 4,
    "n_kv_heads": 4,
    "multiple_of": 32,  # Z-Image: 256 (the rounding of the FFN width)
    "qk_norm": True,
    "axes_dims": [16, 24, 24],  # sums to the head dim (64), in Z-Image's 32:48:48 proportion
    "axes_lens": [1536, 512, 512],
    "rope_theta": 256.0,
    "ffn_dim_multiplier": 4.0 / 3.0,  # Z-Image: 8/3 (FFN 10240 of 3840); halved here to fit 10 MB
    "z_image_modulation": True,
    "time_scale": 1000.0,
    "pad_tokens_multiple": 32,
}


_DEMO = weights_file.DemoModel(comfy.supported_models.ZImage, UNET_CONFIG, WEIGHTS)
model_config, build_model = _DEMO.model_config, _DEMO.build_model
load_demo_patcher, class_names = _DEMO.load_demo_patcher, _DEMO.class_names


def conditioning(class_name: str, batch: int = 1, path: str | Path | None = None) -> list:
    """ComfyUI CONDITIONING for one class, shaped like the Z-Image text encoder's: ``[[context (batch, T, 64), {}]]``
    (``Lumina2.extra_conds`` takes ``num_tokens`` from the context; the pooled table of the file is unused)."""
    context, _ = weights_file.class_embedding(path or WEIGHTS, class_name, batch)
    return [[context, {}]]
