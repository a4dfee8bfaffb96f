"""The demo "VAE": a fixed linear patch codec (PCA), 8x8x3 RGB patch <-> 16 (FLUX) or 4 (SDXL) latent channels.

It gives latents the family's latent shape (FLUX: 16 channels, SDXL: 4 channels; both H/8, W/8). PCA coefficients
are divided by per-channel scales (fitted so the channels together have unit variance on the training images,
optionally partly whitened), then mapped through the inverse of the family's ComfyUI latent format (``Flux``:
(latent - shift) * scale; ``SDXL``: latent * 0.13025), so the sampler's ``process_in`` hands the model roughly
unit-variance inputs, as with the real VAEs. The basis is fitted by ``scripts/train_demo.py`` and stored in the demo
weights file under ``codec.*``, the latent format's name in its metadata (absent: ``Flux``).
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import cache, lru_cache
from pathlib import Path

import torch
from safetensors import safe_open

import comfy.latent_formats

PATCH = 8
CHANNELS = 16  # FLUX; the SDXL demo's codec has 4
PATCH_DIM = PATCH * PATCH * 3
KEYS = ("codec.mean", "codec.basis", "codec.scale")
FORMAT_METADATA = "fastlane.latent_format"  # name of the comfy.latent_formats class the latents are scaled for


@cache
def latent_format(name: str) -> comfy.latent_formats.LatentFormat:
    """ComfyUI's latent format by class name ("Flux", "SDXL")."""
    return getattr(comfy.latent_formats, name)()


def _patches(images: torch.Tensor) -> torch.Tensor:
    """BHWC images (cropped to multiples of 8, like ComfyUI's VAE encode) -> (B, H/8, W/8, 192) patch vectors."""
    b, h, w, _ = images.shape
    h, w = h // PATCH * PATCH, w // PATCH * PATCH
    x = images[:, :h, :w, :3].reshape(b, h // PATCH, PATCH, w // PATCH, PATCH, 3)
    return x.permute(0, 1, 3, 2, 4, 5).reshape(b, h // PATCH, w // PATCH, PATCH_DIM)


def _unpatch(patches: torch.Tensor) -> torch.Tensor:
    b, gh, gw, _ = patches.shape
    x = patches.reshape(b, gh, gw, PATCH, PATCH, 3).permute(0, 1, 3, 2, 4, 5)
    return x.reshape(b, gh * PATCH, gw * PATCH, 3)


@dataclass(frozen=True)
class PatchCodec:
    """mean (192,), basis (192, C) with orthonormal columns, scale (C,): latent channel k = coefficient k / scale,
    stored scaled for the ComfyUI latent format named ``latent_format``."""

    mean: torch.Tensor
    basis: torch.Tensor
    scale: torch.Tensor
    latent_format: str = "Flux"

    @property
    def channels(self) -> int:
        return self.basis.shape[1]

    def encode(self, images: torch.Tensor, device: torch.device | str | None = None) -> torch.Tensor:
        """ComfyUI IMAGE (B, H, W, 3+, 0..1) -> raw latent (B, C, H/8, W/8), as a VAE's ``encode`` returns it: on the
        CPU, or on ``device`` if given (the proxy's training encodes its scene bank where it trains)."""
        x = _patches(images.float().to(device or "cpu"))
        mean, basis, scale = (t.to(x.device) for t in (self.mean, self.basis, self.scale))
        z = ((x - mean) @ basis) / scale
        raw = latent_format(self.latent_format).process_out(z)
        return raw.permute(0, 3, 1, 2).contiguous()

    def decode(self, latent: torch.Tensor) -> torch.Tensor:
        """Raw latent (B, C, h, w) -> ComfyUI IMAGE (B, 8h, 8w, 3) clamped to 0..1."""
        if latent.ndim != 4 or latent.shape[1] != self.channels:
            raise ValueError(f"this demo codec decodes (B, {self.channels}, h, w) latents ({self.latent_format} "
                             f"latent format), got {tuple(latent.shape)}: is the Decode node's family the model's?")
        z = latent_format(self.latent_format).process_in(latent.float().cpu())
        x = (z.permute(0, 2, 3, 1) * self.scale) @ self.basis.T + self.mean
        return _unpatch(x).clamp(0.0, 1.0)

    def state_dict(self) -> dict[str, torch.Tensor]:
        return dict(zip(KEYS, (self.mean, self.basis, self.scale)))

    def metadata(self) -> dict[str, str]:
        """What the weights file's metadata must hold for :func:`load` to rebuild this codec."""
        return {FORMAT_METADATA: self.latent_format}


def fit(images: torch.Tensor, channels: int = CHANNELS, whiten: float = 0.0, latent_format: str = "Flux"
        ) -> PatchCodec:
    """PCA of all 8x8 patches of ``images`` (BHWC, 0..1): the top ``channels`` components, with channel scales
    proportional to (component std) ** ``whiten`` and normalised to unit overall variance. ``whiten=0`` keeps the
    PCA spectrum (latent MSE is then pixel MSE, so a model's loss weighs what the eye sees); 1 whitens every channel.
    ``latent_format`` names the ComfyUI latent format the raw latents are scaled for ("Flux", "SDXL")."""
    x = _patches(images.double()).reshape(-1, PATCH_DIM)
    mean = x.mean(0)
    cov = (x - mean).T @ (x - mean) / (x.shape[0] - 1)
    eigvals, eigvecs = torch.linalg.eigh(cov)
    order = torch.argsort(eigvals, descending=True)[:channels]
    basis = eigvecs[:, order]
    basis = basis * torch.sign(basis.sum(0, keepdim=True) + 1e-12)  # a fixed sign per component (deterministic)
    std = eigvals[order].clamp_min(1e-12).sqrt()
    scale = std ** whiten
    scale = scale * torch.sqrt(torch.mean((std / scale) ** 2))
    return PatchCodec(mean.float(), basis.float().contiguous(), scale.float(), latent_format)


def load(path: str | Path) -> PatchCodec:
    """The codec stored in a demo weights file (cached per path)."""
    return _load(str(Path(path).resolve()))


@lru_cache(maxsize=4)
def _load(path: str) -> PatchCodec:
    with safe_open(path, framework="pt") as f:
        name = (f.metadata() or {}).get(FORMAT_METADATA, "Flux")
        return PatchCodec(*(f.get_tensor(k).float() for k in KEYS), latent_format=name)


def _default_path() -> Path:
    from .model import WEIGHTS

    return WEIGHTS


def encode(images: torch.Tensor, path: str | Path | None = None) -> torch.Tensor:
    """Encode ComfyUI IMAGEs with the codec of the demo weights file: BHWC 0..1 -> raw latent BCHW."""
    return load(path or _default_path()).encode(images)


def decode(latent: torch.Tensor, path: str | Path | None = None) -> torch.Tensor:
    """Decode raw latents with the codec of the demo weights file: BCHW -> BHWC clamped to 0..1. A video latent
    (B, C, T, H, W: Wan, or Qwen-Image's T = 1) gives its frames clip after clip, (B*T, H, W, 3), as ComfyUI passes
    video; the codec is per frame."""
    if latent.ndim == 5:
        latent = latent.movedim(2, 1).flatten(0, 1)
    return load(path or _default_path()).decode(latent)
