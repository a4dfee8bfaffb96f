"""One adapter per model family: it says where in the network a StepCache hooks.

Every adapter has ``family``, ``granularities`` (what a cached step may reuse) and ``default_granularity`` (what the
nodes' ``auto`` picks), ``supports(diffusion_model)``, ``features(granularity)``, ``check_call``, ``install``, and
optionally ``run_call`` (see comfy_hooks).
"""
from __future__ import annotations

from .flux import FluxAdapter
from .sdxl import SDXLAdapter

ADAPTERS = [FluxAdapter(), SDXLAdapter()]


def adapter_for(model):
    """The adapter for a ModelPatcher's diffusion model, or a ValueError naming the families supported."""
    diffusion_model = model.model.diffusion_model
    for adapter in ADAPTERS:
        if adapter.supports(diffusion_model):
            return adapter
    families = ", ".join(a.family for a in ADAPTERS)
    raise ValueError(f"Fastlane caching supports {families} models; this MODEL is "
                     f"{type(model.model).__name__} ({type(diffusion_model).__name__}).")


def default_granularity(adapter) -> str:
    return getattr(adapter, "default_granularity", adapter.granularities[0])


def all_granularities() -> list[str]:
    """Every adapter's granularities, once each, in adapter order, with ``output`` (shared by all) last."""
    names = list(dict.fromkeys(g for a in ADAPTERS for g in a.granularities))
    return [g for g in names if g != "output"] + (["output"] if "output" in names else [])
