"""The fallback for any diffusion model no other adapter claims (SD3 ``MMDiT``, HiDream, Wan VACE, LTXV, ...; Lumina 2
/ Z-Image's ``NextDiT`` has block granularities of its own, in ``lumina.py``): only the ``output`` granularity, the
shared wrapper forecasting the whole model output.

It is the least precise granularity (a cached step reuses even the final layer's timestep modulation), so the first
time a model class falls back here, the ``fastlane`` logger says so. Some ComfyUI models (SD3's MMDiT, PixArt) do not
run the ``DIFFUSION_MODEL`` wrappers the cache hooks through; for those, ``install`` routes the model's ``forward``
through them with a ModelPatcher object patch (applied while the patched MODEL is loaded, undone after).
"""
from __future__ import annotations

import dataclasses
import logging
from typing import Callable, ClassVar

import torch

from comfy.patcher_extension import WrapperExecutor, WrappersMP, get_all_wrappers

from ..session import StepCache

log = logging.getLogger("fastlane")
_announced: set[type] = set()
FORWARD = "diffusion_model.forward"


@dataclasses.dataclass(frozen=True)
class GenericAdapter:
    """``family`` names the model once ``for_model`` has seen it (e.g. ``HiDream (HiDreamImageTransformer2DModel)``)."""

    granularities: ClassVar[tuple[str, ...]] = ("output",)
    default_granularity: ClassVar[str] = "output"
    family: str = "any other diffusion model"

    def supports(self, diffusion_model: torch.nn.Module) -> bool:
        return True

    def for_model(self, model) -> GenericAdapter:
        cls = type(model.model.diffusion_model)
        if cls not in _announced:
            _announced.add(cls)
            log.warning("Fastlane: no block-level cache for %s (%s); caching the whole model output, the least "
                        "precise granularity.", type(model.model).__name__, cls.__name__)
        return dataclasses.replace(self, family=f"{type(model.model).__name__} ({cls.__name__})")

    def features(self, granularity: str) -> tuple[str, ...]:
        return ("out",)

    def check_call(self, cache: StepCache, args: tuple, kwargs: dict) -> None:
        pass  # the whole output: ControlNet and every patch inside the model run on computed steps as usual

    def install(self, patcher, cache: StepCache) -> None:
        if not runs_wrappers(type(patcher.model.diffusion_model)):
            module = patcher.model.diffusion_model
            patcher.add_object_patch(FORWARD, _through_wrappers(module, patcher.get_model_object(FORWARD)))


def runs_wrappers(cls: type) -> bool:
    """Whether ``cls.forward`` (or an inherited one) runs ComfyUI's ``DIFFUSION_MODEL`` wrappers: it names them."""
    codes = (getattr(k.__dict__.get("forward"), "__code__", None) for k in cls.__mro__)
    return any(code is not None and "DIFFUSION_MODEL" in code.co_names for code in codes)


def _through_wrappers(module: torch.nn.Module, forward: Callable) -> Callable:
    """``forward`` run the way ComfyUI's own models run theirs: through the ``DIFFUSION_MODEL`` wrappers."""

    def fastlane_forward(*args, **kwargs):
        options = kwargs.get("transformer_options")
        options = options if options is not None else next((a for a in args if isinstance(a, dict)), {})
        wrappers = get_all_wrappers(WrappersMP.DIFFUSION_MODEL, options)
        return WrapperExecutor.new_class_executor(forward, module, wrappers).execute(*args, **kwargs)

    return fastlane_forward
