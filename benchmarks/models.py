"""Real FLUX.1-dev and SDXL diffusion models with random weights, built inside ComfyUI's own classes.

Nothing is loaded from disk: the architecture comes from ``comfy.supported_models.Flux`` / ``comfy.supported_models.SDXL``
with the same ``unet_config`` ComfyUI's model detection produces for the real checkpoints. The diffusion model is
constructed on the ``meta`` device, materialised straight on the target device with ``to_empty`` and filled with a cheap
random init (normal std 0.02 for matrices, ones for 1-D scales, zeros for biases), so the full-size FLUX (11.9 B
parameters) is ready in seconds. The result is a real ``comfy.model_patcher.ModelPatcher``.

Random weights: timing only. Outputs are meaningless pictures, and anything that depends on the data (e.g. how many
steps a step cache decides to skip) is not representative of real checkpoints.

Import this module only after ComfyUI is importable (``run.py`` takes care of that).
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import torch

# ----------------------------------------------------------------------------------------------------------------------
# Configurations
# ----------------------------------------------------------------------------------------------------------------------

# What comfy/model_detection.py derives from a FLUX.1-dev checkpoint (flux1-dev.safetensors).
FLUX_DEV_UNET_CONFIG: dict[str, Any] = {
    "image_model": "flux",
    "in_channels": 16,
    "out_channels": 16,
    "patch_size": 2,
    "hidden_size": 3072,
    "num_heads": 24,
    "mlp_ratio": 4.0,
    "depth": 19,
    "depth_single_blocks": 38,
    "axes_dim": [16, 56, 56],
    "theta": 10000,
    "qkv_bias": True,
    "guidance_embed": True,
    "context_in_dim": 4096,
    "vec_in_dim": 768,
}

# Same classes, small widths/depths: for CPU smoke runs only.
FLUX_TINY_UNET_CONFIG: dict[str, Any] = {
    **FLUX_DEV_UNET_CONFIG,
    "hidden_size": 128,
    "num_heads": 2,
    "axes_dim": [16, 24, 24],
    "depth": 1,
    "depth_single_blocks": 2,
    "context_in_dim": 64,
    "vec_in_dim": 32,
}

# comfy/model_detection.py, unet_config_from_diffusers_unet(): "SDXL" (identical to what a checkpoint detects to).
SDXL_UNET_CONFIG: dict[str, Any] = {
    "use_checkpoint": False,
    "image_size": 32,
    "out_channels": 4,
    "use_spatial_transformer": True,
    "legacy": False,
    "num_classes": "sequential",
    "adm_in_channels": 2816,
    "in_channels": 4,
    "model_channels": 320,
    "num_res_blocks": [2, 2, 2],
    "transformer_depth": [0, 0, 2, 2, 10, 10],
    "channel_mult": [1, 2, 4],
    "transformer_depth_middle": 10,
    "use_linear_in_transformer": True,
    "context_dim": 2048,
    "num_head_channels": 64,
    "transformer_depth_output": [0, 0, 0, 2, 2, 2, 10, 10, 10],
    "use_temporal_attention": False,
    "use_temporal_resblock": False,
}

# SDXL's ADM vector = pooled CLIP-G (1280) + 6 size/crop Fourier embeddings of 256 each (model_base.SDXL.encode_adm).
_SDXL_SIZE_EMBED = 6 * 256

SDXL_TINY_UNET_CONFIG: dict[str, Any] = {
    **SDXL_UNET_CONFIG,
    "adm_in_channels": 64 + _SDXL_SIZE_EMBED,
    "model_channels": 64,  # SDXL's class forces num_head_channels=64, so channels must be multiples of 64
    "num_res_blocks": [1, 1],
    "transformer_depth": [0, 1],
    "channel_mult": [1, 2],
    "transformer_depth_middle": 1,
    "context_dim": 64,
    "transformer_depth_output": [0, 0, 1, 1],
}


# Issue 19's families (benchmarks/family_models.py), beside FLUX.1-dev and SDXL.
NEW_FAMILIES: tuple[str, ...] = ("qwen-image", "z-image", "wan22", "flux2")
ALL_FAMILIES: tuple[str, ...] = ("flux", "sdxl", *NEW_FAMILIES)


@dataclass
class FamilySpec:
    """Everything the runner needs to know to condition and sample one model family."""

    name: str
    unet_config: dict[str, Any]
    dtype: torch.dtype
    latent_channels: int
    context_tokens: int
    context_dim: int
    pooled_dim: int
    tiny: bool
    extra: dict[str, Any] = field(default_factory=dict)


def flux_spec(tiny: bool = False, dtype: torch.dtype | None = None) -> FamilySpec:
    cfg = FLUX_TINY_UNET_CONFIG if tiny else FLUX_DEV_UNET_CONFIG
    return FamilySpec(
        name="flux",
        unet_config=dict(cfg),
        dtype=dtype or torch.bfloat16,
        latent_channels=16,
        context_tokens=16 if tiny else 512,
        context_dim=cfg["context_in_dim"],
        pooled_dim=cfg["vec_in_dim"],
        tiny=tiny,
    )


def sdxl_spec(tiny: bool = False, dtype: torch.dtype | None = None) -> FamilySpec:
    cfg = SDXL_TINY_UNET_CONFIG if tiny else SDXL_UNET_CONFIG
    return FamilySpec(
        name="sdxl",
        unet_config=dict(cfg),
        dtype=dtype or torch.float16,
        latent_channels=4,
        context_tokens=77,
        context_dim=cfg["context_dim"],
        pooled_dim=cfg["adm_in_channels"] - _SDXL_SIZE_EMBED,
        tiny=tiny,
    )


def new_family_spec(name: str, tiny: bool = False, dtype: torch.dtype | None = None,
                    context_tokens: int | None = None) -> FamilySpec:
    """Qwen-Image, Z-Image, Wan 2.2 (one A14B expert), FLUX.2-dev: see family_models.py."""
    import family_models

    fam = family_models.family(name)
    return FamilySpec(
        name=name,
        unet_config=fam.config(tiny),
        dtype=dtype or fam.dtype,
        latent_channels=fam.latent_channels,
        context_tokens=context_tokens or (8 if tiny else fam.context_tokens),
        context_dim=fam.ctx_dim(tiny),
        pooled_dim=0,
        tiny=tiny,
    )


def family_spec(family: str, tiny: bool = False, dtype: torch.dtype | None = None,
                context_tokens: int | None = None) -> FamilySpec:
    if family == "flux":
        return flux_spec(tiny, dtype)
    if family == "sdxl":
        return sdxl_spec(tiny, dtype)
    if family in NEW_FAMILIES:
        return new_family_spec(family, tiny, dtype, context_tokens)
    raise ValueError(f"unknown family {family!r} ({'|'.join(ALL_FAMILIES)})")


# ----------------------------------------------------------------------------------------------------------------------
# Random init on the target device
# ----------------------------------------------------------------------------------------------------------------------


@torch.no_grad()
def random_init_(module: torch.nn.Module, std: float = 0.02, seed: int = 0) -> dict[str, int]:
    """Fill every parameter in place: matrices/kernels ~ N(0, std), 1-D ``*bias`` zeros, other 1-D (norm scales) ones.
    Buffers (left uninitialised by ``to_empty``) are zeroed. A float8_e4m3fn matrix (which has no ``normal_``) is
    drawn in bfloat16 one at a time and cast in (the temporary is one parameter, at most ~0.7 GB for FLUX.2's largest
    Linear). Returns counts for the log."""
    gen_device = next((p.device for p in module.parameters()), torch.device("cpu"))
    gen = torch.Generator(device=gen_device)
    gen.manual_seed(seed)
    counts = {"matrices": 0, "biases": 0, "scales": 0, "buffers": 0, "params": 0, "fp8": 0}
    for name, p in module.named_parameters():
        counts["params"] += p.numel()
        if p.ndim >= 2:
            if p.dtype == torch.float8_e4m3fn:
                p.copy_(torch.empty(p.shape, device=p.device, dtype=torch.bfloat16).normal_(0.0, std, generator=gen))
                counts["fp8"] += 1
            else:
                p.normal_(0.0, std, generator=gen)
            counts["matrices"] += 1
        elif name.endswith("bias"):
            p.zero_()
            counts["biases"] += 1
        else:
            p.fill_(1.0)
            counts["scales"] += 1
    for _, b in module.named_buffers():
        if b.is_floating_point():
            b.zero_()
        counts["buffers"] += 1
    return counts


def _materialise(diffusion_model: torch.nn.Module, device: torch.device, dtype: torch.dtype | None,
                 seed: int) -> dict[str, int]:
    """Random weights on ``device``; ``dtype`` casts every parameter first (diffusers builds in float32), None keeps
    the dtypes the model was built with (ComfyUI's: its ops take the inference dtype, and a few layers stay float32
    on purpose, e.g. Wan's patch embedding, which a real checkpoint's load keeps float32 too)."""
    if dtype is not None:
        diffusion_model.to(dtype=dtype)  # on meta: free
    diffusion_model.to_empty(device=device)
    counts = random_init_(diffusion_model, seed=seed)
    for p in diffusion_model.parameters():
        p.requires_grad_(False)
    return counts


# ----------------------------------------------------------------------------------------------------------------------
# ComfyUI models
# ----------------------------------------------------------------------------------------------------------------------


@dataclass
class BuiltModel:
    patcher: Any  # comfy.model_patcher.ModelPatcher
    spec: FamilySpec
    device: torch.device
    build_s: float
    params: int
    info: dict[str, Any]
    diffusion_model: Any = None  # the module built here, to detect a row leaving another one in its place

    def ensure_pristine(self) -> str | None:
        """Put the original diffusion_model back if a row left something else on the shared BaseModel (e.g. a
        compile wrapper interrupted by a timeout before its `finally` restored it). Returns a warning or None."""
        model = self.patcher.model
        if self.diffusion_model is not None and model.diffusion_model is not self.diffusion_model:
            found = type(model.diffusion_model).__name__
            model.diffusion_model = self.diffusion_model
            return f"base model's diffusion_model was left replaced by a {found}; restored"
        return None


def model_config_class(family: str) -> type:
    """The ``comfy.supported_models`` class ComfyUI picks for the family's real checkpoint."""
    import comfy.supported_models

    if family in NEW_FAMILIES:
        import family_models

        return family_models.supported_model_class(family)
    return comfy.supported_models.Flux if family == "flux" else comfy.supported_models.SDXL


def count_params(family: str, tiny: bool = False) -> int:
    """Parameters of the family's diffusion model, counted on the meta device (no memory, about a second)."""
    spec = family_spec(family, tiny)
    config = model_config_class(family)(spec.unet_config)
    config.set_inference_dtype(spec.dtype, None)
    model = config.get_model({}, "", device=torch.device("meta"))
    return sum(p.numel() for p in model.diffusion_model.parameters())


def build_model(family: str, tiny: bool = False, device: torch.device | str | None = None,
                dtype: torch.dtype | None = None, seed: int = 0, fp8_weights: bool = False,
                context_tokens: int | None = None) -> BuiltModel:
    """Build a family at its real shape (or the tiny variant) with random weights, wrapped in a ModelPatcher.

    The weights are created directly on ``device`` (default: ComfyUI's torch device). The patcher's offload device is
    the same device, so ComfyUI's unloading between rows never copies the weights to the host and back: the
    benchmark measures sampling, not model loading.

    ``fp8_weights``: build the model as core's UNETLoader does for weight_dtype ``fp8_e4m3fn``: float8_e4m3fn storage,
    ``dtype`` (bf16) compute, each layer's weight upcast per call (ComfyUI's manual_cast ops). For a model whose 16-bit
    weights leave no room on the card (FLUX.2-dev, 32 B parameters, on an 80 GB H100): the native fp8 rows then share
    these tensors instead of making an fp8 copy.
    """
    import comfy.model_management as mm
    import comfy.model_patcher

    t0 = time.perf_counter()
    spec = family_spec(family, tiny, dtype, context_tokens)
    device = torch.device(device) if device is not None else mm.get_torch_device()
    cls = model_config_class(family)
    model_config = cls(spec.unet_config)
    if fp8_weights:
        model_config.set_inference_dtype(torch.float8_e4m3fn, spec.dtype)
        spec.extra["fp8_weights"] = True
    else:
        model_config.set_inference_dtype(spec.dtype, None)
    # Real checkpoints load the diffusion model on the offload device first; we build it on meta and then put the
    # storage straight where it will run. The rest of BaseModel (model_sampling, SDXL's embedder) is tiny and built on
    # the CPU exactly as ComfyUI builds it; ComfyUI moves it with the model when it loads it.
    model = model_config.get_model({}, "", device=torch.device("meta"))
    counts = _materialise(model.diffusion_model, device, None, seed)  # built in its dtypes by set_inference_dtype
    model.to(device)
    model.device = device
    model.eval()
    patcher = comfy.model_patcher.ModelPatcher(model, load_device=device, offload_device=device)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    build_s = time.perf_counter() - t0
    info = {
        "class": f"comfy.supported_models.{cls.__name__} -> {type(model).__module__}.{type(model).__name__}",
        "diffusion_model": f"{type(model.diffusion_model).__module__}.{type(model.diffusion_model).__name__}",
        "dtype": str(spec.dtype).replace("torch.", "") + (" compute, float8_e4m3fn weights" if fp8_weights else ""),
        "weights_gib": round(sum(p.numel() * p.element_size() for p in model.diffusion_model.parameters()) / 2**30, 2),
        "init": counts,
        "unet_config": {k: v for k, v in spec.unet_config.items()},
    }
    return BuiltModel(patcher=patcher, spec=spec, device=device, build_s=build_s, params=counts["params"], info=info,
                      diffusion_model=model.diffusion_model)


# ----------------------------------------------------------------------------------------------------------------------
# Conditioning and latents the way ComfyUI's nodes produce them
# ----------------------------------------------------------------------------------------------------------------------


def flux_conditioning(spec: FamilySpec, guidance: float = 3.5, seed: int = 1, batch: int = 1) -> tuple[list, list]:
    """Like CLIPTextEncodeFlux/CLIPTextEncode + FluxGuidance: T5-XXL context (B, 512, 4096) + CLIP-L pooled (B, 768)
    with ``guidance`` in the cond dict. The negative is there only because the sampler API wants one; at cfg 1.0
    ComfyUI never evaluates it."""
    g = torch.Generator().manual_seed(seed)
    ctx = torch.randn(batch, spec.context_tokens, spec.context_dim, generator=g) * 0.2
    pooled = torch.randn(batch, spec.pooled_dim, generator=g)
    positive = [[ctx, {"pooled_output": pooled, "guidance": guidance}]]
    negative = [[torch.zeros_like(ctx), {"pooled_output": torch.zeros_like(pooled), "guidance": guidance}]]
    return positive, negative


def sdxl_conditioning(spec: FamilySpec, width: int, height: int, seed: int = 1, batch: int = 1) -> tuple[list, list]:
    """Like CLIPTextEncodeSDXL: CLIP-L+G context (B, 77, 2048), CLIP-G pooled (B, 1280), and the size/crop entries
    (``width``, ``height``, ``crop_w``, ``crop_h``, ``target_width``, ``target_height``) that model_base.SDXL.encode_adm
    turns into the 2816-wide ADM vector."""
    g = torch.Generator().manual_seed(seed)

    def one() -> list:
        ctx = torch.randn(batch, spec.context_tokens, spec.context_dim, generator=g)
        pooled = torch.randn(batch, spec.pooled_dim, generator=g)
        return [[ctx, {"pooled_output": pooled, "width": width, "height": height, "crop_w": 0, "crop_h": 0,
                       "target_width": width, "target_height": height}]]

    return one(), one()


def conditioning(spec: FamilySpec, width: int, height: int, guidance: float = 3.5, seed: int = 1) -> tuple[list, list]:
    if spec.name == "flux":
        return flux_conditioning(spec, guidance=guidance, seed=seed)
    if spec.name in NEW_FAMILIES:
        import family_models

        spec.extra.setdefault("guidance", guidance)
        return family_models.conditioning(spec, seed=seed)
    return sdxl_conditioning(spec, width, height, seed=seed)


def empty_latent(spec: FamilySpec, width: int, height: int, batch: int = 1, frames: int | None = None) -> torch.Tensor:
    """EmptySD3LatentImage (FLUX, 16 channels) / EmptyLatentImage (SDXL, 4 channels): zeros at 1/8 resolution; the
    new families' own latent nodes (family_models.py)."""
    if spec.name in NEW_FAMILIES:
        import family_models

        return family_models.empty_latent(spec, width, height, frames, batch)
    return torch.zeros(batch, spec.latent_channels, height // 8, width // 8)


# ----------------------------------------------------------------------------------------------------------------------
# Analytic cost (FLUX): for the distance to the physical floor
# ----------------------------------------------------------------------------------------------------------------------


def flux_flops_per_step(unet_config: dict[str, Any], width: int, height: int, txt_tokens: int = 512,
                        batch: int = 1) -> float:
    """Matmul + attention FLOPs of one FLUX forward (what dominates; embedders/modulation are < 0.5 %).

    Per token and block, both block types do 12·D² multiply-adds in their linears (double: qkv 3D² + proj D² + MLP 8D²;
    single: linear1 7D² + linear2 5D²), and attention does 2·N·D per token for QKᵀ and AV. At 1024² (4096 image + 512
    text tokens) this gives 7.44e13 FLOP, the figure counted on the device."""
    d = unet_config["hidden_size"]
    p = unet_config["patch_size"]
    n_img = (height // 8 // p) * (width // 8 // p)
    n = n_img + txt_tokens
    blocks = unet_config["depth"] + unet_config["depth_single_blocks"]
    per_block = 2 * 12 * d * d * n + 4 * n * n * d
    return float(batch * blocks * per_block)


# ----------------------------------------------------------------------------------------------------------------------
# diffusers counterparts (for the reference rows)
# ----------------------------------------------------------------------------------------------------------------------


def diffusers_flux_config(tiny: bool = False) -> dict[str, Any]:
    cfg = FLUX_TINY_UNET_CONFIG if tiny else FLUX_DEV_UNET_CONFIG
    head_dim = cfg["hidden_size"] // cfg["num_heads"]
    return {
        "patch_size": 1,
        "in_channels": cfg["in_channels"] * cfg["patch_size"] ** 2,
        "num_layers": cfg["depth"],
        "num_single_layers": cfg["depth_single_blocks"],
        "attention_head_dim": head_dim,
        "num_attention_heads": cfg["num_heads"],
        "joint_attention_dim": cfg["context_in_dim"],
        "pooled_projection_dim": cfg["vec_in_dim"],
        "guidance_embeds": cfg["guidance_embed"],
        "axes_dims_rope": tuple(cfg["axes_dim"]),
    }


def diffusers_sdxl_config(tiny: bool = False) -> dict[str, Any]:
    if tiny:
        return {
            "sample_size": 8, "in_channels": 4, "out_channels": 4,
            "down_block_types": ("DownBlock2D", "CrossAttnDownBlock2D"),
            "up_block_types": ("CrossAttnUpBlock2D", "UpBlock2D"),
            "block_out_channels": (64, 128), "layers_per_block": 1, "cross_attention_dim": 64,
            "transformer_layers_per_block": (0, 1), "attention_head_dim": (1, 2), "use_linear_projection": True,
            "addition_embed_type": "text_time", "addition_time_embed_dim": 256,
            "projection_class_embeddings_input_dim": 64 + _SDXL_SIZE_EMBED, "norm_num_groups": 32,
        }
    # stabilityai/stable-diffusion-xl-base-1.0 unet/config.json
    return {
        "sample_size": 128, "in_channels": 4, "out_channels": 4,
        "down_block_types": ("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        "up_block_types": ("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
        "block_out_channels": (320, 640, 1280), "layers_per_block": 2, "cross_attention_dim": 2048,
        "transformer_layers_per_block": (1, 2, 10), "attention_head_dim": (5, 10, 20), "use_linear_projection": True,
        "addition_embed_type": "text_time", "addition_time_embed_dim": 256,
        "projection_class_embeddings_input_dim": 2816, "norm_num_groups": 32,
    }


def build_diffusers(family: str, tiny: bool, device: torch.device, dtype: torch.dtype, seed: int = 0):
    """diffusers' FluxTransformer2DModel / UNet2DConditionModel at the real config, random weights on ``device``.
    Raises ImportError when diffusers is missing."""
    import diffusers

    if family == "flux":
        cls, cfg = diffusers.FluxTransformer2DModel, diffusers_flux_config(tiny)
    else:
        cls, cfg = diffusers.UNet2DConditionModel, diffusers_sdxl_config(tiny)
    with torch.device("meta"):
        model = cls(**cfg)
    counts = _materialise(model, device, dtype, seed)
    model.eval()
    return model, counts


def diffusers_inputs(family: str, spec: FamilySpec, width: int, height: int, device: torch.device,
                     dtype: torch.dtype, guidance: float = 3.5) -> dict[str, Any]:
    """Inputs of one denoiser call at the same token counts / batch as ComfyUI's sampling uses
    (FLUX: batch 1, packed 2x2 patches; SDXL: batch 2 = cond + uncond as CFG batches it)."""
    g = torch.Generator().manual_seed(2)
    if family == "flux":
        h, w = height // 16, width // 16
        n_img, c = h * w, spec.latent_channels * 4
        img_ids = torch.zeros(h, w, 3)
        img_ids[..., 1] = torch.arange(h)[:, None]
        img_ids[..., 2] = torch.arange(w)[None, :]
        return {
            "hidden_states": torch.randn(1, n_img, c, generator=g).to(device, dtype),
            "encoder_hidden_states": (torch.randn(1, spec.context_tokens, spec.context_dim, generator=g) * 0.2).to(device, dtype),
            "pooled_projections": torch.randn(1, spec.pooled_dim, generator=g).to(device, dtype),
            "timestep": torch.tensor([0.5], device=device, dtype=dtype),
            "img_ids": img_ids.reshape(n_img, 3).to(device, dtype),
            "txt_ids": torch.zeros(spec.context_tokens, 3, device=device, dtype=dtype),
            "guidance": torch.tensor([guidance], device=device, dtype=dtype),
            "return_dict": False,
        }
    b = 2
    return {
        "sample": torch.randn(b, 4, height // 8, width // 8, generator=g).to(device, dtype),
        "timestep": torch.tensor(500.0, device=device),
        "encoder_hidden_states": torch.randn(b, spec.context_tokens, spec.context_dim, generator=g).to(device, dtype),
        "added_cond_kwargs": {
            "text_embeds": torch.randn(b, spec.pooled_dim, generator=g).to(device, dtype),
            "time_ids": torch.tensor([[height, width, 0, 0, height, width]] * b, device=device, dtype=dtype),
        },
        "return_dict": False,
    }
