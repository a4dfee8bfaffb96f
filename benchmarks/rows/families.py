"""Rows for issue 19's families at real size (Qwen-Image, Z-Image, Wan 2.2, FLUX.2-dev): the existing FLUX rows that
apply to every DiT family are opened to them, plus the rows these families need of their own.

Which rows and why:

- baselines (``core.py``, open to every family there): ``eager``, ``native_fp8`` (core fp8_e4m3fn_fast),
  ``native_fp8+compile`` (+ core TorchCompileModel: ComfyUI's own fast path), ``compile``, ``easycache``;
- Fastlane, opened here: ``compile_regional``, the fp8 tier (``fp8sm``, ``fp8sm+compile_regional``,
  ``fp8sm_fewfp8+compile_regional``), the caches alone (``target0.3``, ``fastlane_target``) and the fast tier
  ``fast_target0.3_fewfp8`` (Target Speed 0.3 order 2 + Quantize fp8_scaled_mm with few_row_linears auto + Compile
  regional; each family's adapter picks its granularity: blocks for Qwen-Image / Wan / FLUX.2 / Z-Image);
- new: ``int8dyn`` (eager int8 dynamic: the quantize row that also runs on a CPU, for the smoke test) and
  ``fast_target0.5_fewfp8`` (the fast tier computing half the steps: Z-Image's 8 turbo steps leave a cache little
  room, 0.3 of 8 computes only 3) and ``fast_target0.4_fewfp8`` (3 of 8 computed: the step past it).
"""
from __future__ import annotations

from .comfy_node import node
from .registry import NEW_FAMILIES, ROWS, row
from .stacks import quantized  # filter none, as these rows were measured (before the entry+exit default)

OPENED = ("compile_regional", "fp8sm", "fp8sm+compile_regional", "fp8sm_fewfp8", "fp8sm_fewfp8+compile_regional",
          "target0.3", "fastlane_target", "fast_target0.3_fewfp8", "fast_target0.3", "int8wo",
          "int8dyn+compile_regional")
for _name in OPENED:
    _row = ROWS[_name]
    _row.families = tuple(dict.fromkeys((*_row.families, *NEW_FAMILIES)))


@row("int8dyn", families=("flux", "sdxl", *NEW_FAMILIES),
     note="Fastlane Quantize int8 dynamic activations + int8 weights (torchao), eager; runs on a CPU too")
def int8dyn(model):
    return quantized(model, "int8_dynamic")


@row("fast_target0.5_fewfp8", families=("flux", *NEW_FAMILIES), heavy=True,
     note="fp8_scaled_mm (few-row weights fp8), target-speed 0.5 order 2, Fastlane Compile regional: the fast tier "
          "for short schedules (Z-Image's 8 steps)")
def fast_target05(model):
    return _fast_tier(model, 0.5)


@row("fast_target0.4_fewfp8", families=("flux", *NEW_FAMILIES), heavy=True,
     note="fp8_scaled_mm (few-row weights fp8), target-speed 0.4 order 2, Fastlane Compile regional: 3 of Z-Image's "
          "8 steps computed")
def fast_target04(model):
    return _fast_tier(model, 0.4)


def _fast_tier(model, fraction: float):
    cached = node("FastlaneTargetSpeedCache", quantized(model, "fp8_scaled_mm", "auto"), compute_fraction=fraction,
                  order=2)
    return node("FastlaneCompile", cached)
