"""Where a model family is compiled: its repeated blocks ("regions"), and which of their input dimensions carry the
text length (marked dynamic so that a new prompt never recompiles).

A region kind is one block class. Every instance of that class shares one compiled graph per input shape (dynamo
caches per code object and, with parameters lifted to graph inputs, does not specialise on the module instance), so
FLUX's 19 double + 38 single blocks compile two graphs, not 57.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch

TextDims = Callable[[tuple, dict], list[tuple[torch.Tensor, int]]]
OptionsFilter = Callable[[dict], dict]

# Keys of transformer_options that SDXL's BasicTransformerBlock reads for attention patches (IP-Adapter, etc.).
_SDXL_ATTN_PATCHES = ("attn1_patch", "attn1_output_patch", "middle_patch", "attn2_patch", "attn2_output_patch")


@dataclass(frozen=True)
class RegionKind:
    cls: type
    text_dims: TextDims
    options: OptionsFilter | None = None  # reduces transformer_options to what the block reads (avoids guards)


@dataclass(frozen=True)
class Family:
    name: str
    supports: Callable[[torch.nn.Module], bool]
    regions: Callable[[torch.nn.Module], list[torch.nn.Module]]
    kinds: tuple[RegionKind, ...]
    block_patched: Callable[[dict], bool]  # does this call carry patches that decide per block what runs?

    def kind_of(self, module: torch.nn.Module) -> RegionKind:
        return next(k for k in self.kinds if type(module) is k.cls)


def _dims(*pairs) -> list[tuple[torch.Tensor, int]]:
    return [(t, d) for t, d in pairs if isinstance(t, torch.Tensor) and t.ndim > d]


def _arg(args: tuple, kwargs: dict, index: int, name: str):
    return args[index] if len(args) > index else kwargs.get(name)


# ---- FLUX (comfy.ldm.flux.model.Flux and its subclasses: Chroma-style variants keep the same blocks) -------------

def _flux_family() -> Family:
    import comfy.ldm.flux.layers as layers
    import comfy.ldm.flux.model as flux

    def double_text(args, kwargs):  # forward(img, txt, vec, pe, ...): txt (B, T, D); pe (1|B, 1, T+I, d/2, 2, 2)
        return _dims((_arg(args, kwargs, 1, "txt"), 1), (_arg(args, kwargs, 3, "pe"), 2))

    def single_text(args, kwargs):  # forward(x, vec, pe, ...): x (B, T+I, D)
        return _dims((_arg(args, kwargs, 0, "x"), 1), (_arg(args, kwargs, 2, "pe"), 2))

    def block_patched(options: dict) -> bool:
        return bool(options.get("patches_replace", {}).get("dit"))

    return Family(
        name="FLUX",
        supports=lambda dm: isinstance(dm, flux.Flux),
        regions=lambda dm: [*dm.double_blocks, *dm.single_blocks],
        kinds=(RegionKind(layers.DoubleStreamBlock, double_text), RegionKind(layers.SingleStreamBlock, single_text)),
        block_patched=block_patched,
    )


# ---- SDXL / SD1.x UNet (comfy.ldm.modules.diffusionmodules.openaimodel.UNetModel) ---------------------------------

def _unet_family() -> Family:
    import comfy.ldm.modules.attention as attention
    import comfy.ldm.modules.diffusionmodules.openaimodel as unet

    def transformer_text(args, kwargs):  # forward(x, context=None, transformer_options={})
        return _dims((_arg(args, kwargs, 1, "context"), 1))

    def transformer_options(options: dict) -> dict:
        patches = options.get("patches", {})
        replace = options.get("patches_replace", {})
        if any(k in patches for k in _SDXL_ATTN_PATCHES) or replace.get("attn1") or replace.get("attn2"):
            return options  # patches look blocks up by their index: pass everything (one graph per block)
        # Without attention patches the block reads nothing else; passing the full dict would make dynamo guard on
        # the block's position (transformer_options["block"], ["block_index"]) and compile one graph per block.
        return {k: options[k] for k in ("optimized_attention_override",) if k in options}

    def block_patched(options: dict) -> bool:
        # Fastlane DeepCache's capture patch is marked safe: it copies a tensor and decides nothing (its cached
        # calls never enter _forward), so the whole UNet still compiles to one graph with it.
        patches = options.get("patches", {})
        return bool(options.get("patches_replace")) or any(
            not getattr(p, "fastlane_whole_compile_safe", False)
            for k in ("input_block_patch", "input_block_patch_after_skip", "output_block_patch",
                      "middle_block_patch", "forward_timestep_embed_patch") for p in patches.get(k, ()))

    def regions(dm):
        return [m for m in dm.modules() if type(m) in (attention.BasicTransformerBlock, unet.ResBlock)]

    return Family(
        name="UNet (SDXL/SD1.x)",
        supports=lambda dm: isinstance(dm, unet.UNetModel),
        regions=regions,
        kinds=(RegionKind(attention.BasicTransformerBlock, transformer_text, transformer_options),
               RegionKind(unet.ResBlock, lambda a, k: [])),
        block_patched=block_patched,
    )


_FAMILIES: list[Family] | None = None


def families() -> list[Family]:
    global _FAMILIES
    if _FAMILIES is None:
        _FAMILIES = [_flux_family(), _unet_family()]
    return _FAMILIES


def family_of(diffusion_model: torch.nn.Module) -> Family | None:
    return next((f for f in families() if f.supports(diffusion_model)), None)


def whole_text_dims(args: tuple, kwargs: dict) -> list[tuple[torch.Tensor, int]]:
    """``_forward(x, timestep, context, ...)`` of FLUX and the UNet: context (B, T, D) carries the text length."""
    return _dims((_arg(args, kwargs, 2, "context"), 1))
