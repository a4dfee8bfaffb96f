"""DiT families whose forward loops over block lists through ComfyUI's ``patches_replace["dit"]``: where a StepCache
hooks. One table row per family (``FAMILIES``) names its block lists and how their output reaches the final layer.

The blocks a family runs, in order, are its ``("double_block", i)`` list, then its ``("single_block", i)`` list
(single blocks run on the concatenation of txt and img; Chroma puts txt first like FLUX, HunyuanVideo img first).
Granularities:
- ``blocks``: the whole-stack residual, as in the FLUX adapter. On computed steps every block runs; the first one
  keeps the stack's entry (img and txt) and the last stores its output minus that entry (img; for double-only
  stacks whose blocks return txt, txt as well). On cached steps every block passes its input through and the last
  adds the forecast residual. Embeddings and the final layer run every step, with the current timestep.
- ``last_block``: Spectrum's feature: the last block's output itself, forecast on cached steps.
- ``output``: the whole model output (the shared wrapper; no patch).

Only the exact classes in the table are claimed: variants that add to the hidden state between blocks (Wan VACE,
S2V's audio injector, Animate's face adapter) would add it twice on cached steps, and go to the generic adapter.
ControlNet inputs (``control``) and Qwen-Image's ``patches["double_block"]`` (DiffSynth ControlNet) also add to
each block's output, so block granularities refuse them with a clear error.
"""
from __future__ import annotations

import dataclasses
import functools
import inspect
from typing import Callable, ClassVar

import torch

import comfy.ldm.chroma.model
import comfy.ldm.chroma_radiance.model
import comfy.ldm.hunyuan_video.model
import comfy.ldm.qwen_image.model
import comfy.ldm.wan.model

from ...compilers.call_wrappers import transformer_options_of
from ..comfy_hooks import current_call
from ..session import StepCache
from .flux import _runner

DOUBLE, SINGLE = "double_block", "single_block"


@dataclasses.dataclass(frozen=True)
class Family:
    """A DiT family: its block lists, and how its single blocks see the two streams."""

    name: str
    classes: tuple[type, ...]
    double: str  # attribute of the ("double_block", i) list: blocks taking {"img", "txt"}
    single: str | None = None  # attribute of the ("single_block", i) list: blocks taking one stream {"img"}
    txt_first: bool = True  # single blocks run on cat(txt, img) (else cat(img, txt))
    double_txt: bool = False  # a double-only stack whose blocks return txt: its residual is kept too
    skips: tuple[str, str] | None = None  # attributes listing the double / single indices the model skips


FAMILIES = (
    Family("Qwen-Image", (comfy.ldm.qwen_image.model.QwenImageTransformer2DModel,), "transformer_blocks",
           double_txt=True),
    Family("Wan", (comfy.ldm.wan.model.WanModel, comfy.ldm.wan.model.CameraWanModel,
                   comfy.ldm.wan.model.HumoWanModel), "blocks"),
    Family("Chroma", (comfy.ldm.chroma.model.Chroma, comfy.ldm.chroma_radiance.model.ChromaRadiance), "double_blocks",
           "single_blocks", skips=("skip_mmdit", "skip_dit")),
    Family("HunyuanVideo", (comfy.ldm.hunyuan_video.model.HunyuanVideo,), "double_blocks", "single_blocks",
           txt_first=False),
)


def family_of(diffusion_model: torch.nn.Module) -> Family | None:
    return next((f for f in FAMILIES if type(diffusion_model) in f.classes), None)


@dataclasses.dataclass(frozen=True)
class DiTAdapter:
    """In the registry ``spec`` is ``None`` (it claims every row of ``FAMILIES``); ``for_model`` gives the copy for
    one model: its family's row and its class (whose ``_forward`` signature tells where ``control`` is passed)."""

    granularities: ClassVar[tuple[str, ...]] = ("blocks", "last_block", "output")
    default_granularity: ClassVar[str] = "blocks"
    spec: Family | None = None
    model_class: type | None = None

    @property
    def family(self) -> str:
        return self.spec.name if self.spec else " / ".join(f.name for f in FAMILIES)

    def supports(self, diffusion_model: torch.nn.Module) -> bool:
        return family_of(diffusion_model) is not None

    def for_model(self, model) -> DiTAdapter:
        diffusion_model = model.model.diffusion_model
        return dataclasses.replace(self, spec=family_of(diffusion_model), model_class=type(diffusion_model))

    def features(self, granularity: str) -> tuple[str, ...]:
        return {"blocks": ("residual.img",), "last_block": ("hidden.img",)}.get(granularity, ("out",))

    def check_call(self, cache: StepCache, args: tuple, kwargs: dict) -> None:
        if cache.granularity == "output":
            return
        options = transformer_options_of(args, kwargs)
        if _control_of(self.model_class, args, kwargs) is not None or options.get("patches", {}).get(DOUBLE):
            raise block_patch_refusal(cache.granularity)

    def install(self, patcher, cache: StepCache) -> None:
        if cache.granularity == "output":
            return
        model = patcher.model.diffusion_model
        spec = self.spec or family_of(model)
        order = _blocks_run(model, spec)
        if not order:
            raise ValueError(f"Fastlane '{cache.granularity}' caching found no blocks in this {spec.name} model; "
                             "use granularity 'output'.")
        existing = patcher.model_options["transformer_options"].get("patches_replace", {}).get("dit", {})
        joins = order[-1][0] == SINGLE
        for key in order:
            patch = _block_patch(key, first=key == order[0], last=key == order[-1], spec=spec, joins=joins,
                                 residual=cache.granularity == "blocks", previous=existing.get(key))
            patcher.set_model_patch_replace(patch, "dit", *key)


def block_patch_refusal(granularity: str) -> ValueError:
    """The error of a block granularity meeting a ControlNet or a patch that adds to every block's output (a forecast
    residual would miss what it adds on cached steps)."""
    return ValueError(f"Fastlane '{granularity}' caching cannot follow a ControlNet (or a model patch that adds to "
                      "every block's output); set the cacher's granularity to 'output' for graphs with one.")


def _blocks_run(model: torch.nn.Module, spec: Family) -> list[tuple[str, int]]:
    """The (kind, index) keys of the blocks a forward pass runs, in order."""
    skip_double, skip_single = (set(getattr(model, a, ())) for a in spec.skips) if spec.skips else (set(), set())
    order = [(DOUBLE, i) for i in range(len(getattr(model, spec.double))) if i not in skip_double]
    if spec.single:
        order += [(SINGLE, i) for i in range(len(getattr(model, spec.single))) if i not in skip_single]
    return order


def _block_patch(key: tuple[str, int], first: bool, last: bool, spec: Family, joins: bool, residual: bool, previous
                 ) -> Callable[[dict, dict], dict]:
    """``first`` keeps the stack's entry (``blocks``), in the layout of the last block's output (``joins``: the
    stack ends in single blocks, which see txt and img concatenated); ``last`` stores (computed) or serves (cached)
    the feature. ``previous``: another node's patch of this block, run in its place on computed steps."""
    name = "residual" if residual else "hidden"
    double = key[0] == DOUBLE
    streams = ("img", "txt") if double and spec.double_txt else ("img",)  # what the feature holds (at the last block)

    def patch(args: dict, extra: dict) -> dict:
        call = current_call(args.get("transformer_options") or {})
        if call is None or call.compute:
            if call is not None and first and residual:
                call.scratch["entry"] = _entry(args, double and joins, spec, streams)
            out = _runner(previous, extra)(args)
            if call is not None and last:
                entry = call.scratch.pop("entry") if residual else None
                for k in streams:
                    call.store(f"{name}.{k}", out[k] - entry[k] if residual else out[k].clone())
            return out
        out = {"img": args["img"], "txt": args["txt"]} if double else {"img": args["img"]}
        if last:
            for k in streams:
                out[k] = out[k] + call.forecast(f"{name}.{k}") if residual else call.forecast(f"{name}.{k}")
        return out

    return patch


def _entry(args: dict, join: bool, spec: Family, streams: tuple[str, ...]) -> dict:
    """A copy of the stack's entry (blocks may add in place), joined as the single blocks join txt and img."""
    if join:
        pair = (args["txt"], args["img"]) if spec.txt_first else (args["img"], args["txt"])
        return {"img": torch.cat(pair, 1)}
    return {k: args[k].clone() for k in streams}


def _control_of(model_class: type | None, args: tuple, kwargs: dict):
    """The call's ``control`` argument: by name, or at its position in the class's ``_forward`` (what the wrapper's
    executor runs; Chroma and HunyuanVideo pass it by position)."""
    if "control" in kwargs:
        return kwargs["control"]
    names = _positional_names(model_class) if model_class is not None else ()
    index = names.index("control") if "control" in names else len(args)
    return args[index] if index < len(args) else None


@functools.cache
def _positional_names(model_class: type) -> tuple[str, ...]:
    forward = getattr(model_class, "_forward", model_class.forward)
    return tuple(p.name for p in inspect.signature(forward).parameters.values()
                 if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD))[1:]  # without self
