"""Lumina 2 and Z-Image (ComfyUI's ``comfy.ldm.lumina.model.NextDiT``): where a StepCache hooks.

``NextDiT._forward`` embeds the timestep and the caption, runs the two refiner stacks (``context_refiner`` on the
caption tokens, ``noise_refiner`` on the image tokens, both inside ``patchify_and_embed``), then the main stack
``for layer in self.layers: x = layer(x, mask, freqs_cis, adaln_input, ...)`` on the joint (caption + image) sequence,
then ``final_layer``. That loop has no ``patches_replace`` hook, so the adapter hooks the stack itself.

Granularities:
- ``blocks`` (default): the residual of the whole ``layers`` stack. On computed steps every layer runs; the stack's
  entry is kept and, after the last layer, its output minus that entry is stored. On cached steps no layer runs: the
  forecast residual is added to the current entry. The embedders, both refiner stacks and the final layer run on
  every step with the current timestep, as the embeddings and final layer of the other DiT families do.
- ``last_block``: Spectrum's feature: the last layer's output itself, forecast on cached steps.
- ``output``: the whole model output (the shared wrapper; no hook).

Mechanism: ``install`` registers the stack's replacement in ComfyUI's ``patches_replace["dit"]`` under
``STACK_KEY`` (a clone's model options, so the received MODEL keeps its own), and ``run_call`` (run by the cache's
``DIFFUSION_MODEL`` wrapper) gives the NextDiT being called an instance attribute ``layers`` for the length of that
one call: a plain list that ``_forward``'s loop iterates instead of the ``ModuleList`` (computed: an entry keeper,
the real layer modules, a feature store; cached: one function serving the forecast). The attribute shadows the
registered submodule without touching it (``state_dict``, ``named_modules``, weight patching and lowvram casting see
the module tree as it is) and is removed when the call returns or raises. Why not object patches on the layers'
``forward``: ComfyUI would keep them on the shared torch model while the MODEL is loaded, and Fastlane Compile
(``regional``) leaves a layer whose ``forward`` is already replaced uncompiled. This way:
- Fastlane Compile ``regional``, in either node order, compiles the real layers (its APPLY_MODEL wrapper runs outside
  the cache's DIFFUSION_MODEL wrapper, so it sees the ``ModuleList``); a cached step simply never calls them. Its
  ``whole`` scope sees the block replacement in ``patches_replace["dit"]`` and compiles per block instead, as for
  the other DiT families' block caches; Fastlane CUDA Graph refuses block-patched MODELs the same way.
- Fastlane Quantize's model of its own keeps this MODEL's options and wrappers, and the hook takes the layers of
  whichever NextDiT is being called, so the quantized copy's layers are the ones that run.

Z-Image pads the caption and the image tokens to multiples of 32 (``pad_tokens_multiple``): the stack's residual
covers the padded sequence. Its shape is fixed by the latent's shape and the conditioning's length, both constant for
a batch composition within a sampling run (which is what a forecast is keyed by); a new prompt or resolution is a new
run, with a fresh cache.
"""
from __future__ import annotations

import contextlib
import dataclasses
from typing import Callable, ClassVar, Iterator, Sequence

import torch

import comfy.ldm.lumina.model

from ...compilers.call_wrappers import transformer_options_of
from ..session import Call, StepCache
from .dit import block_patch_refusal

STACK_KEY = ("fastlane_layer_stack", 0)  # patches_replace["dit"] key of the replacement of NextDiT's ``layers``
NAMES = {"ZImage": "Z-Image", "Lumina2": "Lumina 2"}  # ComfyUI's model config class -> what users call the model
Layer = Callable[..., torch.Tensor]  # layer(x, mask, freqs_cis, adaln_input, transformer_options=...) -> x


@dataclasses.dataclass(frozen=True)
class LayerStack:
    """The replacement of NextDiT's ``layers`` stack for one cache: which feature it keeps (``residual``: the stack's
    residual, else the last layer's output), and the layers one call runs (``for_call``)."""

    residual: bool

    @property
    def feature(self) -> str:
        return "residual" if self.residual else "hidden"

    def for_call(self, layers: Sequence[torch.nn.Module], call: Call) -> list[Layer]:
        """What ``_forward``'s loop runs in ``call``: the real ``layers`` with the feature kept around them
        (computed), or one function that serves the forecast (cached)."""
        if not call.compute:
            return [self._serve(call)]
        return [*([self._keep_entry(call)] if self.residual else []), *layers, self._store(call)]

    @staticmethod
    def _keep_entry(call: Call) -> Layer:
        def keep_entry(x: torch.Tensor, *args, **kwargs) -> torch.Tensor:
            call.scratch["entry"] = x.clone()  # a copy: a layer may add to its input in place
            return x

        return keep_entry

    def _store(self, call: Call) -> Layer:
        def store(x: torch.Tensor, *args, **kwargs) -> torch.Tensor:
            call.store(self.feature, x - call.scratch.pop("entry") if self.residual else x.clone())
            return x

        return store

    def _serve(self, call: Call) -> Layer:
        def serve(x: torch.Tensor, *args, **kwargs) -> torch.Tensor:
            forecast = call.forecast(self.feature)
            return x + forecast if self.residual else forecast

        return serve


@dataclasses.dataclass(frozen=True)
class LuminaAdapter:
    """``family`` names the model once ``for_model`` has seen it (``Z-Image`` or ``Lumina 2``)."""

    granularities: ClassVar[tuple[str, ...]] = ("blocks", "last_block", "output")
    default_granularity: ClassVar[str] = "blocks"
    family: str = "Lumina 2 / Z-Image"

    def supports(self, diffusion_model: torch.nn.Module) -> bool:
        # the exact class: a subclass may add to the hidden state between layers (it would be added twice when cached)
        return type(diffusion_model) is comfy.ldm.lumina.model.NextDiT

    def for_model(self, model) -> LuminaAdapter:
        config = type(getattr(model.model, "model_config", None)).__name__
        return dataclasses.replace(self, family=NAMES.get(config, self.family))

    def features(self, granularity: str) -> tuple[str, ...]:
        return {"blocks": ("residual",), "last_block": ("hidden",)}.get(granularity, ("out",))

    def check_call(self, cache: StepCache, args: tuple, kwargs: dict) -> None:
        if cache.granularity == "output":
            return
        # ComfyUI 0.3.75's NextDiT reads no patches; later ones run patches["double_block"] after every layer
        # (Z-Image Fun ControlNet), which adds to each layer's output like a ControlNet.
        if transformer_options_of(args, kwargs).get("patches", {}).get("double_block"):
            raise block_patch_refusal(cache.granularity)

    def install(self, patcher, cache: StepCache) -> None:
        if cache.granularity == "output":
            return
        if len(patcher.model.diffusion_model.layers) == 0:
            raise ValueError(f"Fastlane '{cache.granularity}' caching found no layers in this {self.family} model; "
                             "use granularity 'output'.")
        patcher.set_model_patch_replace(LayerStack(residual=cache.granularity == "blocks"), "dit", *STACK_KEY)

    def run_call(self, cache: StepCache, call: Call, executor, args: tuple, kwargs: dict) -> torch.Tensor:
        """The diffusion-model call, with the registered stack replacement in place of the layers of the NextDiT
        being called (the executor's; a quantized copy's own) for this call only."""
        options = transformer_options_of(args, kwargs)
        stack = options.get("patches_replace", {}).get("dit", {}).get(STACK_KEY)
        if cache.granularity == "output" or stack is None:
            return executor(*args, **kwargs)
        with _layers_shadowed(executor.class_obj, stack, call):
            return executor(*args, **kwargs)


@contextlib.contextmanager
def _layers_shadowed(model: torch.nn.Module, stack: LayerStack, call: Call) -> Iterator[None]:
    """``model.layers`` reads ``stack.for_call(...)`` inside the block: an instance attribute, found before
    ``nn.Module.__getattr__`` looks in ``_modules``; removed (or another one put back) afterwards."""
    state = model.__dict__
    had, previous = "layers" in state, state.get("layers")
    state["layers"] = stack.for_call(model.layers, call)
    try:
        yield
    finally:
        if had:
            state["layers"] = previous
        else:
            state.pop("layers", None)
