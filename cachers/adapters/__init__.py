"""One adapter per model family: it says where in the network a StepCache hooks.

Every adapter has ``family``, ``granularities`` (what a cached step may reuse) and ``default_granularity`` (what the
nodes' ``auto`` picks), ``supports(diffusion_model)``, ``features(granularity)``, ``check_call``, ``install``, and
optionally ``run_call`` (see comfy_hooks) and ``for_model(model)`` (a copy of the adapter for that ModelPatcher,
naming its family: the DiT, Lumina and generic adapters each cover several).

Order matters: FLUX (and FLUX.2, the same ``Flux`` class) and SDXL (every non-temporal ``UNetModel``, SD1.x/2.x
included) first, then the DiT block-stack families (Qwen-Image, Wan, Chroma, HunyuanVideo) and Lumina 2 / Z-Image
(``NextDiT``, whose layer loop has no block patches: hooked per call), then the generic ``output``-only fallback,
which claims any other diffusion model.
"""
from __future__ import annotations

import torch

from ..comfy_hooks import granularity_options
from .dit import DiTAdapter
from .flux import FluxAdapter
from .generic import GenericAdapter
from .lumina import LuminaAdapter
from .sdxl import SDXLAdapter

ADAPTERS = [FluxAdapter(), SDXLAdapter(), DiTAdapter(), LuminaAdapter(), GenericAdapter()]


def adapter_for(model):
    """The adapter for a ModelPatcher's diffusion model (the generic ``output`` one when no other claims it), or a
    ValueError when ``model`` is not a diffusion MODEL at all (a VAE, a CLIP, ...)."""
    diffusion_model = getattr(getattr(model, "model", None), "diffusion_model", None)
    if not isinstance(diffusion_model, torch.nn.Module):
        raise ValueError(f"Fastlane caching expects a MODEL from a diffusion-model loader (Load Diffusion Model, a "
                         f"checkpoint loader, LoRA), got {type(model).__name__}.")
    adapter = next(a for a in ADAPTERS if a.supports(diffusion_model))
    for_model = getattr(adapter, "for_model", None)
    return adapter if for_model is None else for_model(model)


def default_granularity(adapter) -> str:
    return getattr(adapter, "default_granularity", adapter.granularities[0])


def all_granularities() -> list[str]:
    """Every adapter's granularities, once each, in adapter order, with ``blocks+output`` after ``blocks`` and
    ``output`` (shared by all) last."""
    names = list(dict.fromkeys(g for a in ADAPTERS for g in granularity_options(a)))
    return [g for g in names if g != "output"] + (["output"] if "output" in names else [])
