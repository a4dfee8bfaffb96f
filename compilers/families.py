"""The model families Fastlane Compile knows the blocks of, and which one a diffusion model is.

A module of its own so that the families' definitions (``regions``: FLUX, UNet; ``dit_regions``: the DiTs, built on
``regions``' helpers) do not import each other back.
"""
from __future__ import annotations

import torch

from .dit_regions import dit_families
from .regions import Family, flux_family, unet_family

_FAMILIES: list[Family] | None = None


def families() -> list[Family]:
    """Every known family, built once (their block classes are imported from ComfyUI on first use)."""
    global _FAMILIES
    if _FAMILIES is None:
        _FAMILIES = [flux_family(), unet_family(), *dit_families()]
    return _FAMILIES


def family_of(diffusion_model: torch.nn.Module) -> Family | None:
    """The family whose blocks ``diffusion_model`` has, or None (then only scope 'whole' compiles it)."""
    return next((f for f in families() if f.supports(diffusion_model)), None)
