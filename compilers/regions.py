"""Where a model family is compiled: its repeated blocks ("regions"), and which of their input dimensions carry the
text length (marked dynamic so that a new prompt never recompiles).

A region kind is one block class. Every instance of that class shares one compiled graph per input shape (dynamo
caches per code object and, with parameters lifted to graph inputs, does not specialise on the module instance), so
FLUX's 19 double + 38 single blocks compile two graphs, not 57.

Families: FLUX.1/FLUX.2 and the SDXL/SD1.x UNet here; Qwen-Image, Wan, Lumina2 / Z-Image, HunyuanVideo and Chroma in
``dit_regions.py``; ``families.py`` lists them all. A model of any other class has no regions: Fastlane Compile refuses ``regional`` for it at node
time and compiles it with ``whole``.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch

TextDims = Callable[[tuple, dict], list[tuple[torch.Tensor, int]]]
OptionsFilter = Callable[[dict], dict]
Layout = Callable[[tuple, dict], tuple[tuple, dict]]

# Keys of transformer_options that SDXL's BasicTransformerBlock reads for attention patches (IP-Adapter, etc.).
_SDXL_ATTN_PATCHES = ("attn1_patch", "attn1_output_patch", "middle_patch", "attn2_patch", "attn2_output_patch")


@dataclass(frozen=True)
class RegionKind:
    cls: type
    text_dims: TextDims
    options: OptionsFilter | None = None  # reduces transformer_options to what the block reads (avoids guards)
    # Gives views the layout every call of the kind shares (Wan's first block gets a transposed view, Lumina's noise
    # refiner an offset slice of the RoPE table): dynamo guards on strides and offsets, one graph then serves all.
    layout: Layout | None = None


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


def _contiguous_strides(shape: torch.Size) -> tuple[int, ...]:
    strides, step = [], 1
    for size in reversed(shape):
        strides.append(step)
        step *= max(size, 1)
    return tuple(reversed(strides))


def packed(args: tuple, kwargs: dict, *where: tuple[int, str]) -> tuple[tuple, dict]:
    """``args``/``kwargs`` with the tensors at ``where`` (position, name) laid out as a fresh contiguous tensor would
    be: the same values; a copy only for a view that is not contiguous or starts at an offset, a free restride for a
    contiguous one whose size-1 dims carry other strides (after ``movedim``)."""
    args, kwargs = list(args), dict(kwargs)
    for index, name in where:
        holder, key = (args, index) if len(args) > index else (kwargs, name)
        t = holder[key] if holder is args or key in holder else None
        if not isinstance(t, torch.Tensor):
            continue
        if not t.is_contiguous() or t.storage_offset():
            holder[key] = t.clone(memory_format=torch.contiguous_format)
        elif t.stride() != _contiguous_strides(t.shape):
            holder[key] = t.as_strided(t.shape, _contiguous_strides(t.shape))
    return tuple(args), kwargs


# ---- FLUX.1 / FLUX.2 (comfy.ldm.flux.model.Flux; FLUX.2 is the same class with global modulation) --------------

def _mask_dims(mask) -> list[tuple[torch.Tensor, int]]:
    """An attention mask over the joint sequence: (B, L, L) (FLUX, upscaled by ComfyUI) or (1, 1, L) (HunyuanVideo's
    text mask): its key dimension, and its query dimension where it is square."""
    if not isinstance(mask, torch.Tensor) or mask.ndim == 0:
        return []
    dims = [(mask, mask.ndim - 1)]
    if mask.ndim >= 2 and mask.shape[-2] == mask.shape[-1] and mask.shape[-1] > 1:
        dims.append((mask, mask.ndim - 2))
    return dims


def flux_block_kinds() -> tuple[RegionKind, RegionKind]:
    """FLUX's DoubleStreamBlock and SingleStreamBlock, with their text dims (Chroma and HunyuanVideo reuse them)."""
    import comfy.ldm.flux.layers as layers

    def double_text(args, kwargs):  # forward(img, txt, vec, pe, attn_mask, ...): txt (B, T, D); pe (1|B, 1, T+I, ..)
        return _dims((_arg(args, kwargs, 1, "txt"), 1), (_arg(args, kwargs, 3, "pe"), 2)) + \
            _mask_dims(_arg(args, kwargs, 4, "attn_mask"))

    def single_text(args, kwargs):  # forward(x, vec, pe, attn_mask, ...): x (B, T+I, D)
        return _dims((_arg(args, kwargs, 0, "x"), 1), (_arg(args, kwargs, 2, "pe"), 2)) + \
            _mask_dims(_arg(args, kwargs, 3, "attn_mask"))

    return RegionKind(layers.DoubleStreamBlock, double_text), RegionKind(layers.SingleStreamBlock, single_text)


def flux_family() -> Family:
    import comfy.ldm.flux.model as flux

    def block_patched(options: dict) -> bool:
        return bool(options.get("patches_replace", {}).get("dit"))

    return Family(
        name="FLUX",
        supports=lambda dm: isinstance(dm, flux.Flux),
        regions=lambda dm: [*dm.double_blocks, *dm.single_blocks],
        kinds=flux_block_kinds(),
        block_patched=block_patched,
    )


# ---- SDXL / SD1.x UNet (comfy.ldm.modules.diffusionmodules.openaimodel.UNetModel) ---------------------------------

def unet_family() -> Family:
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


def whole_text_dims(args: tuple, kwargs: dict) -> list[tuple[torch.Tensor, int]]:
    """``_forward(x, timestep, context, ...)`` of FLUX, the UNet and every DiT in ``dit_regions`` (Qwen-Image, Wan,
    Lumina2 / Z-Image, HunyuanVideo, Chroma): context (B, T, D) carries the text length."""
    return _dims((_arg(args, kwargs, 2, "context"), 1))
