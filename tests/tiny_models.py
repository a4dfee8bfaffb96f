"""Small configurations of ComfyUI's real model classes, with random weights, for fast CPU tests of behaviour."""
from __future__ import annotations

import torch

FLUX_CONFIG = dict(
    image_model="flux", in_channels=16, out_channels=16, vec_in_dim=32, context_in_dim=32, hidden_size=64,
    mlp_ratio=2.0, num_heads=2, depth=2, depth_single_blocks=2, axes_dim=[8, 12, 12], theta=10000, patch_size=2,
    qkv_bias=True, guidance_embed=True,
)


def tiny_flux(seed: int = 0, **overrides):
    """A real ModelPatcher around ComfyUI's real Flux model (2 double + 2 single blocks, hidden 64), random weights."""
    import comfy.model_management as mm
    import comfy.model_patcher
    import comfy.supported_models

    config = comfy.supported_models.Flux({**FLUX_CONFIG, **overrides})
    config.set_inference_dtype(torch.float32, None)
    model = config.get_model({})
    torch.manual_seed(seed)
    with torch.no_grad():
        for p in model.diffusion_model.parameters():
            p.normal_(0.0, 0.2)
    return comfy.model_patcher.ModelPatcher(model, load_device=mm.get_torch_device(), offload_device=mm.unet_offload_device())


def flux_conditioning(seed: int = 0, tokens: int = 8, batch: int = 1, guidance: float = 3.5):
    g = torch.Generator().manual_seed(seed)
    context = torch.randn(batch, tokens, FLUX_CONFIG["context_in_dim"], generator=g)
    pooled = torch.randn(batch, FLUX_CONFIG["vec_in_dim"], generator=g)
    return [[context, {"pooled_output": pooled, "guidance": guidance}]]


def sample(model, steps: int = 8, sampler: str = "euler", scheduler: str = "simple", size: int = 16, batch: int = 1,
           cfg: float = 1.0, positive=None, negative=None, seed: int = 0, denoise: float = 1.0, latent=None):
    """Sample with ComfyUI's real sampling loop (comfy.sample.sample)."""
    import comfy.sample

    positive = positive if positive is not None else flux_conditioning(1)
    negative = negative if negative is not None else flux_conditioning(2)
    if latent is None:
        latent = torch.zeros(batch, 16, size // 8, size // 8)
    noise = comfy.sample.prepare_noise(latent, seed)
    return comfy.sample.sample(model, noise, steps, cfg, sampler, scheduler, positive, negative, latent,
                               denoise=denoise, seed=seed, disable_pbar=True)


class BlockCounter:
    """Counts forward calls of every transformer block of a Flux model (a real forward hook, not a stand-in)."""

    def __init__(self, patcher) -> None:
        flux = patcher.model.diffusion_model
        self.calls = 0
        self.handles = [b.register_forward_pre_hook(self._hook) for b in [*flux.double_blocks, *flux.single_blocks]]
        self.blocks = len(self.handles)

    def _hook(self, module, args):
        self.calls += 1

    def close(self) -> None:
        for h in self.handles:
            h.remove()


# SDXL's layout (comfy/model_detection.py "SDXL": 3 levels, 2 res blocks each, transformers on levels 1 and 2, so 9
# input and 9 output blocks with the same skip wiring), shrunk: 32/64/128 channels, one transformer layer per block.
SDXL_POOLED_DIM = 32
SDXL_CONFIG = dict(
    use_checkpoint=False, image_size=32, out_channels=4, use_spatial_transformer=True, legacy=False,
    num_classes="sequential", adm_in_channels=SDXL_POOLED_DIM + 6 * 256, in_channels=4, model_channels=32,
    num_res_blocks=[2, 2, 2], transformer_depth=[0, 0, 1, 1, 1, 1], channel_mult=[1, 2, 4], transformer_depth_middle=1,
    use_linear_in_transformer=True, context_dim=32, transformer_depth_output=[0, 0, 0, 1, 1, 1, 1, 1, 1],
    use_temporal_attention=False, use_temporal_resblock=False,
)
# The refiner's layout (4 levels, transformers on the middle two, pooled + 5 size/aesthetic embeddings), shrunk.
SDXL_REFINER_CONFIG = dict(
    SDXL_CONFIG, adm_in_channels=SDXL_POOLED_DIM + 5 * 256, channel_mult=[1, 2, 2, 2], num_res_blocks=[1, 1, 1, 1],
    transformer_depth=[0, 1, 1, 0], transformer_depth_middle=1, transformer_depth_output=[0, 0, 1, 1, 1, 1, 0, 0],
)


def tiny_sdxl(seed: int = 0, refiner: bool = False, **overrides):
    """A real ModelPatcher around ComfyUI's real SDXL UNet (``model_base.SDXL``/``UNetModel``; with ``refiner``, the
    SDXL refiner's classes), a few million parameters, random weights. Latents: 4 channels, sides a multiple of 4."""
    import comfy.model_management as mm
    import comfy.model_patcher
    import comfy.supported_models

    cls = comfy.supported_models.SDXLRefiner if refiner else comfy.supported_models.SDXL
    config = cls({**(SDXL_REFINER_CONFIG if refiner else SDXL_CONFIG), **overrides})
    config.set_inference_dtype(torch.float32, None)
    model = config.get_model({})
    torch.manual_seed(seed)
    with torch.no_grad():
        for p in model.diffusion_model.parameters():
            p.normal_(0.0, 0.05)
    return comfy.model_patcher.ModelPatcher(model, load_device=mm.get_torch_device(), offload_device=mm.unet_offload_device())


def sdxl_conditioning(seed: int = 0, tokens: int = 8, batch: int = 1, size: int = 64):
    """What CLIPTextEncodeSDXL gives: context, pooled output and the size/crop entries of the ADM vector."""
    g = torch.Generator().manual_seed(seed)
    context = torch.randn(batch, tokens, SDXL_CONFIG["context_dim"], generator=g)
    pooled = torch.randn(batch, SDXL_POOLED_DIM, generator=g)
    return [[context, {"pooled_output": pooled, "width": size, "height": size, "crop_w": 0, "crop_h": 0,
                       "target_width": size, "target_height": size}]]


def with_input_block_patch(model):
    """A clone of ``model`` with a ComfyUI input-block patch (Python that runs per call, like FreeU or IP-Adapter)."""
    patched = model.clone()
    patched.set_model_input_block_patch(lambda h, options: h * 1.01)
    return patched


def replay_by_recomputing(fn, pool=None):
    """Fastlane CUDA Graph's recorder stand-in on the CPU (``record=`` of ``cuda_graphs.attach``): "recording" runs
    the call once, "replaying" runs it again and copies its outputs into the recorded tensors, as a replay refills
    the graph's static outputs."""
    recorded = fn()

    def tensors(r):
        return [r[0], *(r[1][k] for k in sorted(r[1]))]

    def replay():
        for old, new in zip(tensors(recorded), tensors(fn())):
            old.copy_(new)

    return replay, recorded
