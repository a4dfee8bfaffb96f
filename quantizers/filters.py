"""Which Linears of a diffusion model get quantized.

Never given to the scheme, whatever the preset: Linears that run on a handful of rows (one per image: the
timestep/guidance/pooled-text embedders and every modulation/adaLN projection of ``vec``). They hold little compute,
and the activation-quantized kernels fail or crawl on so few rows (int8 ``_int_mm`` needs more than 16).

Per family, the Linears that stay 16-bit (``FEW_ROWS``; names inside ``diffusion_model``, ``N`` a block index):

==============  ========================================================================================
family          few-row Linears (16-bit; fp8 *weights* only with ``few_rows="fp8 weights"``)
==============  ========================================================================================
FLUX.1          ``time_in.*``, ``vector_in.*``, ``guidance_in.*``, ``double_blocks.N.{img,txt}_mod.lin``,
                ``single_blocks.N.modulation.lin``, ``final_layer.adaLN_modulation.1``
FLUX.2          ``time_in.*``, ``guidance_in.*``, ``double_stream_modulation_{img,txt}.lin``,
                ``single_stream_modulation.lin``, ``final_layer.adaLN_modulation.1``
SDXL / SD1.x    ``time_embed.*``, ``label_emb.*``, ``*.emb_layers.1``
Qwen-Image      ``time_text_embed.timestep_embedder.linear_{1,2}``, ``transformer_blocks.N.{img,txt}_mod.1``,
                ``norm_out.linear``
Wan 2.1 / 2.2   ``time_embedding.{0,2}``, ``time_projection.1`` (each block's ``modulation`` is a Parameter
                added to it, not a Linear: never quantized)
Lumina2 /       ``t_embedder.mlp.{0,2}``, ``{layers,noise_refiner}.N.adaLN_modulation.*``,
Z-Image         ``final_layer.adaLN_modulation.1`` (the context refiner has no modulation)
HunyuanVideo    FLUX's names, plus ``txt_in.t_embedder.*``, ``txt_in.c_embedder.*`` (pooled text),
                ``txt_in.individual_token_refiner.blocks.N.adaLN_modulation.1``, ``time_r_in.*`` (1.5)
Chroma          ``distilled_guidance_layer.*`` (the approximator: 344 rows per image, but it makes every
                block's scale, shift and gate); its blocks have no modulation Linears
SD3 / HiDream   ``t_embedder.*``, ``y_embedder.*`` / ``p_embedder.*``, ``*.adaLN_modulation.*``
==============  ========================================================================================

Presets on top of that:
- ``entry+exit`` (the node's default): also keep the model's entry and exit projections, the Linears outside its
  block stacks that take the latent and the text in and give the prediction out (``ENTRY_EXIT``: FLUX.1/FLUX.2/Chroma
  ``img_in``, ``txt_in``, ``final_layer.linear``; Qwen-Image ``img_in``, ``txt_in``, ``proj_out``; Wan
  ``text_embedding.*``, ``head.head``; Z-Image/Lumina2 ``x_embedder``, ``cap_embedder.1``, ``final_layer.linear``;
  HunyuanVideo ``txt_in.input_embedder``, ``final_layer.linear``; SD3 ``context_embedder``; HiDream's caption
  projections; SDXL/SD1.x enter and leave through convolutions: nothing). On FLUX.1-dev they hold 0.03% of the
  Linear FLOPs of a 1024² step, and fp8 there moved the image more than fp8 in every block together: on both FLUX
  proxies fp8_scaled_mm went from 41.95 / 40.39 to 46.96 / 44.59 dB with them kept (docs/FIDELITY.md);
- ``none``: quantize every other Linear;
- ``norm+embedding``: ``entry+exit``, and also Linears named like a norm or an embedding or a ``proj_out``
  (SDXL's transformer projections); the usual "sensitive layers" recipe;
- ``regex``: also keep every Linear whose qualified name (inside the diffusion model) matches the regex.

The few-row Linears can instead have their *weights* stored in fp8 (``few_rows="fp8 weights"``; activations stay
16-bit, so no activation-quantized kernel ever runs on them): a memory saving at no measured cost, see
``fp8_weight_only.py``. ``auto`` does that with the fp8 schemes (the GPU has fp8 then, and the user chose fp8
rounding of the weights) where those Linears hold a real share of the weights (FLUX.1-dev: 28%, Qwen-Image: 33%;
SDXL: 1%, Wan 2.2 14B and 5B: 1.3%, Z-Image: 2%, not worth an extra kernel per call), and keeps them 16-bit
otherwise, as with the int8 schemes (which also serve GPUs without fp8).
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Callable

import torch

PRESETS = ("entry+exit", "none", "norm+embedding", "regex")
DEFAULT_PRESET = "entry+exit"
FEW_ROWS_MODES = ("auto", "16-bit", "fp8 weights")
AUTO_FP8_MIN_SHARE = 0.1  # auto: fp8 few-row weights only where they are at least this share of the Linear weights

# Names (inside diffusion_model) of Linears that see one row per image, by family, plus generic spellings.
FEW_ROWS = re.compile("|".join([
    r"(^|\.)(img_mod|txt_mod|modulation)\.lin$",                 # FLUX/HunyuanVideo blocks: Modulation.lin on vec
    r"^(double_stream_modulation_img|double_stream_modulation_txt|single_stream_modulation)\.lin$",  # FLUX.2 global
    r"^(time_in|vector_in|guidance_in|time_r_in)\.",              # FLUX/Hunyuan embedders of t, pooled text, guidance
    r"^final_layer\.adaLN_modulation\.",                          # FLUX final layer's adaLN
    r"^time_embed\.", r"^label_emb\.", r"\.emb_layers\.",         # UNet: timestep / ADM embedders, ResBlock emb
    r"(^|\.)(adaLN_modulation|t_embedder|y_embedder|p_embedder|time_text_embed|time_embedding)(\.|$)",  # DiT names
    r"^transformer_blocks\.\d+\.(img_mod|txt_mod)\.1$", r"^norm_out\.linear$",  # Qwen-Image: block and final mod
    r"^time_projection\.",                                        # Wan: the six per-block modulations of t
    r"^txt_in\.c_embedder\.",                                     # HunyuanVideo: pooled text of the token refiner
    r"^distilled_guidance_layer\.",                               # Chroma: makes every block's modulation (344 rows)
]))
NORM_OR_EMBEDDING = re.compile(r"norm|emb|(^|\.)(img_in|txt_in|final_layer|proj_out|head)(\.|$)")
# The entry and exit projections of each family (names inside diffusion_model; see the table above).
ENTRY_EXIT = re.compile("^(" + "|".join([
    r"img_in", r"txt_in", r"final_layer\.linear",                       # FLUX.1, FLUX.2, Chroma, Qwen-Image (in)
    r"proj_out",                                                         # Qwen-Image out
    r"text_embedding\.\d+", r"head\.head",                                # Wan 2.1 / 2.2
    r"x_embedder(\.proj)?", r"cap_embedder\.\d+",                         # Z-Image / Lumina2, HiDream
    r"txt_in\.input_embedder",                                           # HunyuanVideo
    r"context_embedder", r"caption_projection\.\d+\.linear",             # SD3, HiDream
    r"nerf_image_embedder\.embedder\.\d+", r"nerf_final_layer\.linear",   # Chroma Radiance
]) + ")$")


@dataclass
class Selection:
    targets: list[str] = field(default_factory=list)
    weights_only: list[str] = field(default_factory=list)  # few-row Linears whose weights go fp8
    skipped: dict[str, list[str]] = field(default_factory=dict)  # reason -> names

    @property
    def quantized(self) -> list[str]:
        """Every Linear that gets a quantized copy: the scheme's targets, then the fp8-weight few-row ones."""
        return [*self.targets, *self.weights_only]

    def skip(self, reason: str, name: str) -> None:
        self.skipped.setdefault(reason, []).append(name)

    def summary(self) -> str:
        parts = [f"{len(self.targets)} Linears quantized"]
        if self.weights_only:
            parts.append(f"{len(self.weights_only)} few-row Linears (modulation/embedders) with fp8 weights only")
        parts += [f"{len(names)} kept ({reason})" for reason, names in self.skipped.items()]
        return ", ".join(parts)


def few_rows_mode(mode: str, fp8_scheme: bool, few_row_share: float) -> str:
    """``mode`` with ``auto`` decided: fp8 weights alongside an fp8 scheme where the few-row Linears hold
    ``few_row_share`` >= AUTO_FP8_MIN_SHARE of the Linear weights, else 16-bit."""
    if mode not in FEW_ROWS_MODES:
        raise ValueError(f"few_row_linears must be one of {FEW_ROWS_MODES}, not '{mode}'")
    if mode == "auto":
        return "fp8 weights" if fp8_scheme and few_row_share >= AUTO_FP8_MIN_SHARE else "16-bit"
    return mode


def is_linear(module: torch.nn.Module) -> bool:
    """A torch Linear, or the Linear of ComfyUI's mixed-precision fp8 checkpoints (``comfy.ops.mixed_precision_ops``,
    a plain Module holding a ``QuantizedTensor`` weight: a file written by Fastlane Save Quantized, loaded back)."""
    if isinstance(module, torch.nn.Linear):
        return True
    return (type(module).__name__ == "Linear" and type(module).__qualname__.startswith("mixed_precision_ops.")
            and hasattr(module, "in_features") and getattr(module, "weight", None) is not None)


def select(diffusion_model: torch.nn.Module, preset: str = DEFAULT_PRESET, regex: str = "", fp8: bool = False,
           few_rows: str = "auto",
           original: Callable[[str, torch.nn.Module], torch.nn.Module] = lambda name, module: module) -> Selection:
    """The Linears to quantize. ``original(name, module)`` maps a module that another MODEL's object patch has
    swapped in right now (a quantized copy of a clone ComfyUI has loaded) back to the original."""
    if preset not in PRESETS:
        raise ValueError(f"filter must be one of {PRESETS}, not '{preset}'")
    linears = [(name, module) for name, module in
               ((name, original(name, module)) for name, module in diffusion_model.named_modules())
               if is_linear(module)]
    few_row_names = {name for name, _ in linears if FEW_ROWS.search(name)}
    few_row_numel = sum(m.weight.numel() for name, m in linears if name in few_row_names)
    few_rows = few_rows_mode(few_rows, fp8, few_row_numel / max(1, sum(m.weight.numel() for _, m in linears)))
    pattern = None
    if preset == "regex":
        if not regex.strip():
            raise ValueError("filter 'regex' needs a regex (matched against Linear names such as "
                             "'double_blocks.0.img_attn.qkv'); or choose filter 'none'")
        try:
            pattern = re.compile(regex)
        except re.error as e:
            raise ValueError(f"bad filter regex {regex!r}: {e}") from None
    selection = Selection()
    for name, module in linears:
        if name in few_row_names and few_rows == "fp8 weights":
            selection.weights_only.append(name)
        elif name in few_row_names:
            selection.skip("runs on a few rows: modulation/embedders", name)
        elif preset in ("entry+exit", "norm+embedding") and ENTRY_EXIT.search(name):
            selection.skip("the model's entry/exit projections", name)
        elif preset == "norm+embedding" and NORM_OR_EMBEDDING.search(name):
            selection.skip("norm/embedding preset", name)
        elif pattern is not None and pattern.search(name):
            selection.skip(f"regex {regex!r}", name)
        elif fp8 and (module.in_features % 16 or module.out_features % 16):
            selection.skip("fp8 matmul needs sizes divisible by 16", name)
        else:
            selection.targets.append(name)
    return selection
