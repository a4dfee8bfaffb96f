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
