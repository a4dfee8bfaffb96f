"""One adapter per model family: it says where in the network a StepCache hooks."""
from __future__ import annotations

from .flux import FluxAdapter

ADAPTERS = [FluxAdapter()]


def adapter_for(model) -> "FluxAdapter":
    """The adapter for a ModelPatcher's diffusion model, or a ValueError naming the families supported."""
    diffusion_model = model.model.diffusion_model
    for adapter in ADAPTERS:
        if adapter.supports(diffusion_model):
            return adapter
    families = ", ".join(a.family for a in ADAPTERS)
    raise ValueError(f"Fastlane caching supports {families} models; this MODEL is "
                     f"{type(model.model).__name__} ({type(diffusion_model).__name__}).")
