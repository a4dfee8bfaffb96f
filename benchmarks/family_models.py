"""The model families beyond FLUX.1 / SDXL at their real sizes: Qwen-Image, Z-Image, Wan 2.2 (one A14B expert) and
FLUX.2-dev, each as ComfyUI 0.3.75 builds it from the real checkpoint, for ``benchmarks/run.py`` (issue 19).

Each family is a :class:`FamilyDef`: the ``comfy.supported_models`` class (so ``model_base``, ``model_sampling`` and the
latent format are ComfyUI's own), the ``unet_config`` that ``comfy/model_detection.py`` derives from the real checkpoint
(and a tiny one of the same classes for CPU smoke runs), the conditioning the family's text-encode nodes produce
(shapes read from ``model_base.<Class>.extra_conds`` and the ldm forwards), its empty latent, its usual sampling
settings, and an analytic FLOP count per step (matmuls + attention) for the floor column and for planning time limits.

Random weights: timing only. Import this module only after ComfyUI is importable (``run.py`` takes care of that).
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

# ----------------------------------------------------------------------------------------------------------------------
# unet_configs as comfy/model_detection.py detects them (ComfyUI 0.3.75)
# ----------------------------------------------------------------------------------------------------------------------

# qwen_image_fp8/bf16.safetensors: detection sets image_model, in_channels (img_in: 64 = 16 ch x 2x2) and num_layers
# (60); everything else is QwenImageTransformer2DModel's defaults: 24 heads x 128 = 3072 wide, Qwen2.5-VL-7B context
# 3584, axes (16, 56, 56). 20.4 B parameters.
QWEN_IMAGE_UNET_CONFIG: dict[str, Any] = {"image_model": "qwen_image", "in_channels": 64, "num_layers": 60}
QWEN_IMAGE_TINY_UNET_CONFIG: dict[str, Any] = {
    "image_model": "qwen_image", "in_channels": 64, "out_channels": 16, "num_layers": 2, "attention_head_dim": 16,
    "num_attention_heads": 2, "joint_attention_dim": 32, "axes_dims_rope": (4, 6, 6)}

# z_image_turbo_bf16.safetensors: the Lumina 2 branch with dim 3840 (cap_embedder.1: 3840 x 2560, Qwen3-4B context),
# 30 layers, the "Z image" settings and pad_tokens_multiple 32 (the checkpoint has cap_pad_token). NextDiT's defaults
# give the rest: 2 noise- and 2 context-refiner layers, FFN 10240 (8/3 x 3840, multiple of 256). 6.15 B parameters.
Z_IMAGE_UNET_CONFIG: dict[str, Any] = {
    "image_model": "lumina2", "patch_size": 2, "in_channels": 16, "dim": 3840, "cap_feat_dim": 2560, "n_layers": 30,
    "qk_norm": True, "n_heads": 30, "n_kv_heads": 30, "axes_dims": [32, 48, 48], "axes_lens": [1536, 512, 512],
    "rope_theta": 256.0, "ffn_dim_multiplier": 8.0 / 3.0, "z_image_modulation": True, "time_scale": 1000.0,
    "pad_tokens_multiple": 32}
Z_IMAGE_TINY_UNET_CONFIG: dict[str, Any] = {
    **Z_IMAGE_UNET_CONFIG, "dim": 256, "cap_feat_dim": 32, "n_layers": 2, "n_refiner_layers": 1, "n_heads": 4,
    "n_kv_heads": 4, "axes_dims": [16, 24, 24], "axes_lens": [64, 64, 64], "multiple_of": 16}  # z_image: dim >= 256

# wan2.2_t2v_high_noise_14B / low_noise_14B (each expert is a Wan 2.1 14B-shaped model, out_dim 16, so detection
# picks WAN21_T2V): dim 5120 (head.modulation), 40 heads of 128, FFN 13824, 40 blocks, in/out 16 ch. 14.3 B parameters.
WAN22_A14B_UNET_CONFIG: dict[str, Any] = {
    "image_model": "wan2.1", "model_type": "t2v", "dim": 5120, "out_dim": 16, "num_heads": 40, "ffn_dim": 13824,
    "num_layers": 40, "patch_size": (1, 2, 2), "freq_dim": 256, "window_size": (-1, -1), "qk_norm": True,
    "cross_attn_norm": True, "eps": 1e-6, "in_dim": 16}
WAN22_TINY_UNET_CONFIG: dict[str, Any] = {
    **WAN22_A14B_UNET_CONFIG, "dim": 32, "num_heads": 2, "ffn_dim": 64, "num_layers": 2, "freq_dim": 32, "text_dim": 32}

# flux2-dev.safetensors: the Flux branch with double_stream_modulation_img (FLUX.2): hidden 6144 (img_in: 6144 x 128,
# patch 1), context 15360 (txt_in: Mistral-Small-3.1 layers 10/20/30 stacked, 3 x 5120), 8 double + 48 single blocks,
# guidance_in present. 32.2 B parameters.
FLUX2_DEV_UNET_CONFIG: dict[str, Any] = {
    "image_model": "flux2", "axes_dim": [32, 32, 32, 32], "num_heads": 48, "mlp_ratio": 3.0, "theta": 2000,
    "out_channels": 128, "global_modulation": True, "vec_in_dim": None, "mlp_silu_act": True, "qkv_bias": False,
    "ops_bias": False, "default_ref_method": "index", "ref_index_scale": 10.0, "patch_size": 1, "in_channels": 128,
    "hidden_size": 6144, "context_in_dim": 15360, "depth": 8, "depth_single_blocks": 48, "guidance_embed": True}
FLUX2_TINY_UNET_CONFIG: dict[str, Any] = {
    **FLUX2_DEV_UNET_CONFIG, "axes_dim": [2, 2, 6, 6], "num_heads": 2, "mlp_ratio": 2.0, "hidden_size": 32,
    "context_in_dim": 32, "depth": 1, "depth_single_blocks": 1}


# ----------------------------------------------------------------------------------------------------------------------
# Families
# ----------------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class FamilyDef:
    """One family: how ComfyUI builds it, what its nodes feed it, and how it is usually sampled."""

    name: str
    model_class: str  # attribute of comfy.supported_models
    unet_config: dict[str, Any]
    tiny_unet_config: dict[str, Any]
    latent_channels: int
    context_dim: int  # text-encoder width the model's context input takes (real config)
    context_tokens: int  # text tokens per prompt in the benchmark (see each family's note)
    width: int
    height: int
    steps: int
    cfg: float
    sampler: str = "euler"
    scheduler: str = "simple"
    guidance: float | None = None  # FLUX.2's distilled guidance (FluxGuidance), in the cond dict
    frames: int | None = None  # video families: pixel frames (latent T = (frames - 1) // 4 + 1)
    spatial: int = 8  # pixel -> latent downscale
    dtype: torch.dtype = torch.bfloat16
    note: str = ""
    extra_cond: Callable[[int], dict[str, Any]] = field(default=lambda batch: {})

    def config(self, tiny: bool) -> dict[str, Any]:
        return dict(self.tiny_unet_config if tiny else self.unet_config)

    def ctx_dim(self, tiny: bool) -> int:
        cfg = self.config(tiny)
        return int(cfg.get("joint_attention_dim") or cfg.get("cap_feat_dim") or cfg.get("text_dim")
                   or cfg.get("context_in_dim") or self.context_dim)

    def latent_shape(self, width: int, height: int, frames: int | None = None, batch: int = 1) -> tuple[int, ...]:
        """The empty latent of the family's latent node (EmptySD3LatentImage, EmptyHunyuanLatentVideo,
        EmptyFlux2LatentImage)."""
        h, w = height // self.spatial, width // self.spatial
        if self.frames is not None:
            t = ((frames or self.frames) - 1) // 4 + 1
            return (batch, self.latent_channels, t, h, w)
        return (batch, self.latent_channels, h, w)


FAMILIES: dict[str, FamilyDef] = {
    "qwen-image": FamilyDef(
        "qwen-image", "QwenImage", QWEN_IMAGE_UNET_CONFIG, QWEN_IMAGE_TINY_UNET_CONFIG, latent_channels=16,
        context_dim=3584, context_tokens=128, width=1328, height=1328, steps=20, cfg=4.0,
        note="Qwen2.5-VL-7B hidden states (B, T, 3584), template dropped; T = 128 for a long prompt (variable in "
             "real use). cfg 4: cond and uncond of equal length, one batch-2 call per step"),
    "z-image": FamilyDef(
        "z-image", "ZImage", Z_IMAGE_UNET_CONFIG, Z_IMAGE_TINY_UNET_CONFIG, latent_channels=16, context_dim=2560,
        context_tokens=128, width=1024, height=1024, steps=8, cfg=1.0,
        note="Z-Image-Turbo: Qwen3-4B hidden states (B, T, 2560), num_tokens = T (Lumina2.extra_conds), T = 128 "
             "(padded to a multiple of 32 inside); 8 steps at cfg 1 (the turbo setting: one batch-1 call per step)"),
    "wan22": FamilyDef(
        "wan22", "WAN21_T2V", WAN22_A14B_UNET_CONFIG, WAN22_TINY_UNET_CONFIG, latent_channels=16, context_dim=4096,
        context_tokens=512, width=832, height=480, steps=20, cfg=4.0, frames=81, dtype=torch.float16,
        note="one Wan 2.2 A14B expert (the high- and low-noise experts have this same shape): umT5-XXL context "
             "(B, 512, 4096, padded to 512 by the tokenizer), latent (B, 16, 21, 60, 104) for 81 frames at 832x480; "
             "cfg 4: one batch-2 call per step. ComfyUI's template loads the fp16 experts: fp16"),
    "flux2": FamilyDef(
        "flux2", "Flux2", FLUX2_DEV_UNET_CONFIG, FLUX2_TINY_UNET_CONFIG, latent_channels=128, context_dim=15360,
        context_tokens=512, width=1024, height=1024, steps=28, cfg=1.0, guidance=4.0, spatial=16,
        extra_cond=lambda batch: {"pooled_output": None},
        note="FLUX.2-dev: Mistral-Small-3.1 context (B, 512, 15360; Flux2.extra_conds pads to 512), no pooled "
             "vector, guidance 4 in the cond (FluxGuidance); latent (B, 128, H/16, W/16); cfg 1"),
}


def family(name: str) -> FamilyDef:
    if name not in FAMILIES:
        raise ValueError(f"unknown family {name!r} ({'|'.join(FAMILIES)})")
    return FAMILIES[name]


def supported_model_class(name: str) -> type:
    import comfy.supported_models

    return getattr(comfy.supported_models, family(name).model_class)


# ----------------------------------------------------------------------------------------------------------------------
# Conditioning and latents
# ----------------------------------------------------------------------------------------------------------------------


def conditioning(spec: Any, seed: int = 1, batch: int = 1) -> tuple[list, list]:
    """Positive and negative conditioning as the family's text-encode nodes give it: ``[[context, {...}]]`` with the
    context (B, tokens, width) and the entries ``model_base.<Class>.extra_conds`` reads. Negative and positive have the
    same token count, so at cfg > 1 ComfyUI batches them into one call (as with equal-length prompts)."""
    fam = family(spec.name)
    g = torch.Generator().manual_seed(seed)

    def one() -> list:
        ctx = torch.randn(batch, spec.context_tokens, spec.context_dim, generator=g) * 0.2
        extra = dict(fam.extra_cond(batch))
        if fam.guidance is not None:
            extra["guidance"] = spec.extra.get("guidance", fam.guidance)
        return [[ctx, extra]]

    return one(), one()


def empty_latent(spec: Any, width: int, height: int, frames: int | None = None, batch: int = 1) -> torch.Tensor:
    return torch.zeros(family(spec.name).latent_shape(width, height, frames, batch))


# ----------------------------------------------------------------------------------------------------------------------
# Analytic cost: matmul + attention FLOPs of one sampling step (all calls of the step, CFG batch included)
# ----------------------------------------------------------------------------------------------------------------------


def tokens(name: str, cfg: dict[str, Any], width: int, height: int, frames: int | None, txt: int) -> dict[str, int]:
    """Sequence lengths one forward sees: image/video tokens and text tokens."""
    fam = family(name)
    shape = fam.latent_shape(width, height, frames)
    if name == "wan22":
        _, _, t, h, w = shape
        return {"img": t * (h // 2) * (w // 2), "txt": txt}
    if name == "flux2":
        return {"img": shape[2] * shape[3], "txt": max(txt, 512)}
    img = (shape[-2] // 2) * (shape[-1] // 2)
    if name == "z-image":
        pad = cfg.get("pad_tokens_multiple") or 1
        img, txt = -(-img // pad) * pad, -(-txt // pad) * pad
    return {"img": img, "txt": txt}


def flops_per_step(name: str, cfg: dict[str, Any], width: int, height: int, frames: int | None, txt: int,
                   batch: int) -> float:
    """2 FLOP per multiply-add of every per-token Linear, plus 4·N²·D for QKᵀ and AV in each attention; modulation
    / timestep MLPs (one row per sample) and norms are left out (< 1 %). ``batch`` is the CFG batch (2 at cfg > 1)."""
    n = tokens(name, cfg, width, height, frames, txt)
    img, t = n["img"], n["txt"]
    if name == "qwen-image":
        d = cfg.get("num_attention_heads", 24) * cfg.get("attention_head_dim", 128)
        per_tok = 12 * d * d  # per stream: q, k, v, out (4 D²) + GELU MLP D -> 4D -> D (8 D²)
        total = cfg["num_layers"] * (2 * per_tok * (img + t) + 4 * (img + t) ** 2 * d)
    elif name == "z-image":
        d = cfg["dim"]
        m = cfg.get("multiple_of", 256)
        ffn = m * ((int(cfg["ffn_dim_multiplier"] * d) + m - 1) // m)  # lumina FeedForward(hidden_dim=dim)
        per_tok = 4 * d * d + 3 * d * ffn  # attention q, k, v, out + SwiGLU w1, w2, w3
        refiners = cfg.get("n_refiner_layers", 2)
        total = cfg["n_layers"] * (2 * per_tok * (img + t) + 4 * (img + t) ** 2 * d)
        total += refiners * (2 * per_tok * img + 4 * img ** 2 * d)  # noise refiner (image tokens)
        total += refiners * (2 * per_tok * t + 4 * t ** 2 * d)  # context refiner (caption tokens)
    elif name == "wan22":
        d, ffn = cfg["dim"], cfg["ffn_dim"]
        self_attn = 2 * 4 * d * d * img + 4 * img * img * d
        cross = 2 * 2 * d * d * img + 2 * 2 * d * d * t + 4 * img * t * d  # q, o on video; k, v on text
        mlp = 2 * 2 * d * ffn * img
        total = cfg["num_layers"] * (self_attn + cross + mlp)
    elif name == "flux2":
        d, r = cfg["hidden_size"], cfg["mlp_ratio"]
        per_tok = 4 * d * d + 3 * r * d * d  # qkv + proj, SiLU-gated MLP D -> 2rD, rD -> D
        nn_ = img + t
        total = (cfg["depth"] + cfg["depth_single_blocks"]) * (2 * per_tok * nn_ + 4 * nn_ * nn_ * d)
    else:
        raise ValueError(name)
    return float(batch * total)
