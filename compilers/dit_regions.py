"""Regional-compile families of the DiTs besides FLUX: Qwen-Image, Wan 2.1/2.2, Lumina 2 / Z-Image, HunyuanVideo and
Chroma. FLUX.2 is ComfyUI's ``Flux`` class (global modulation), so the FLUX family in ``regions.py`` covers it.

Each row names the block classes (one compiled graph per class and input signature, shared by every block of that
class) and the dimensions of their inputs that carry the text length, marked dynamic so that a new prompt length
never recompiles:

============  =======================================  =========================================================
family        block classes (regions)                  text-length dims
============  =======================================  =========================================================
Qwen-Image    QwenImageTransformerBlock                encoder_hidden_states (B, T, D) dim 1, its mask dim 1,
                                                       image_rotary_emb (B, 1, T+I, ...) dim 2
Wan           WanAttentionBlock, VaceWanAttentionBlock, context (B, T, D) dim 1 (I2V: 257 CLIP tokens + T)
              WanAttentionBlockAudio (HuMo)
Lumina2       JointTransformerBlock (context refiner,  x (B, L, D) dim 1, x_mask dim 1, freqs_cis (B, L, ...)
/ Z-Image     noise refiner and main layers)           dim 1: L is T (context refiner), T+I (main layers) or
                                                       I (noise refiner, dynamic too: one graph serves it and
                                                       the main layers)
HunyuanVideo  DoubleStreamBlock, SingleStreamBlock     as FLUX, plus attn_mask (1, 1, I+T) last dim
              (FLUX's classes)
Chroma        DoubleStreamBlock, SingleStreamBlock     as FLUX
              (FLUX's classes, without modulation)
============  =======================================  =========================================================

Image tokens and batch stay static (the fastest kernels); a new resolution or batch compiles once per class.
"""
from __future__ import annotations

import torch

from .regions import Family, RegionKind, _arg, _dims, flux_block_kinds, packed


def _dit_patched(options: dict) -> bool:
    """Block patches (``patches_replace["dit"]``: Fastlane block caches, other patch nodes) decide per block what
    runs: a whole-model graph cannot hold them."""
    return bool(options.get("patches_replace", {}).get("dit"))


def _of_types(modules, classes: tuple[type, ...]) -> list[torch.nn.Module]:
    return [m for m in modules if type(m) in classes]


# ---- Qwen-Image (comfy.ldm.qwen_image.model) ----------------------------------------------------------------------

def qwen_image_family() -> Family:
    import comfy.ldm.qwen_image.model as qwen

    def block_text(args, kwargs):  # forward(hidden_states, encoder_hidden_states, encoder_hidden_states_mask, temb,
        return _dims((_arg(args, kwargs, 1, "encoder_hidden_states"), 1),  # image_rotary_emb, transformer_options)
                     (_arg(args, kwargs, 2, "encoder_hidden_states_mask"), 1),
                     (_arg(args, kwargs, 4, "image_rotary_emb"), 2))

    def block_patched(options: dict) -> bool:  # patches["double_block"] (DiffSynth ControlNet) runs after each block
        return _dit_patched(options) or bool(options.get("patches", {}).get("double_block"))

    return Family(
        name="Qwen-Image",
        supports=lambda dm: isinstance(dm, qwen.QwenImageTransformer2DModel),
        regions=lambda dm: list(dm.transformer_blocks),
        kinds=(RegionKind(qwen.QwenImageTransformerBlock, block_text),),
        block_patched=block_patched,
    )


# ---- Wan 2.1 / 2.2 and variants (comfy.ldm.wan.model) ---------------------------------------------------------------

def wan_family() -> Family:
    import comfy.ldm.wan.model as wan

    def block_text(args, kwargs):  # forward(x, e, freqs, context, ...); VACE: forward(c, x=, context=, ...)
        return _dims((_arg(args, kwargs, 3, "context"), 1))

    def layout(args, kwargs):  # the first block gets x as a transposed view of the patch embedding
        return packed(args, kwargs, (0, "x"))

    classes = (wan.WanAttentionBlock, wan.VaceWanAttentionBlock, wan.WanAttentionBlockAudio)
    return Family(
        name="Wan",
        supports=lambda dm: isinstance(dm, wan.WanModel),  # T2V, I2V, FLF, Camera, VACE, S2V, HuMo, Animate
        regions=lambda dm: _of_types([*dm.blocks, *getattr(dm, "vace_blocks", ())], classes),
        kinds=tuple(RegionKind(cls, block_text, layout=layout) for cls in classes),
        block_patched=_dit_patched,
    )


# ---- Lumina 2 / Z-Image (comfy.ldm.lumina.model.NextDiT) ------------------------------------------------------------

def lumina_family() -> Family:
    import comfy.ldm.lumina.model as lumina

    def block_text(args, kwargs):  # forward(x, x_mask, freqs_cis, adaln_input=None, transformer_options={})
        return _dims((_arg(args, kwargs, 0, "x"), 1), (_arg(args, kwargs, 1, "x_mask"), 1),
                     (_arg(args, kwargs, 2, "freqs_cis"), 1))

    def layout(args, kwargs):  # the refiners get slices of the RoPE table (the noise refiner's at an offset)
        return packed(args, kwargs, (2, "freqs_cis"))

    return Family(
        name="Lumina2 / Z-Image",
        supports=lambda dm: isinstance(dm, lumina.NextDiT),
        regions=lambda dm: [*dm.context_refiner, *dm.noise_refiner, *dm.layers],
        kinds=(RegionKind(lumina.JointTransformerBlock, block_text, layout=layout),),
        block_patched=_dit_patched,
    )


# ---- HunyuanVideo (1.0 and 1.5) and Chroma: FLUX's block classes in other models ----------------------------------

def hunyuan_video_family() -> Family:
    import comfy.ldm.hunyuan_video.model as hunyuan

    return Family(
        name="HunyuanVideo",
        supports=lambda dm: isinstance(dm, hunyuan.HunyuanVideo),
        regions=lambda dm: [*dm.double_blocks, *dm.single_blocks],
        kinds=flux_block_kinds(),
        block_patched=_dit_patched,
    )


def chroma_family() -> Family:
    import comfy.ldm.chroma.model as chroma

    return Family(
        name="Chroma",
        supports=lambda dm: isinstance(dm, chroma.Chroma),  # and Chroma Radiance
        regions=lambda dm: [*dm.double_blocks, *dm.single_blocks],
        kinds=flux_block_kinds(),
        block_patched=_dit_patched,
    )


def dit_families() -> list[Family]:
    return [qwen_image_family(), wan_family(), lumina_family(), hunyuan_video_family(), chroma_family()]
