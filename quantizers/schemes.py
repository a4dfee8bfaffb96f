"""The quantization schemes: one object per scheme, mapping to ``torchao.quantization.quantize_(module, Config())``.

``needs_rows``: activation-quantizing schemes run an int8/fp8 matmul on the activations, which torch's kernels
refuse (int8 ``_int_mm``: more than 16 rows) or handle badly for a handful of rows; the filter always keeps such
Linears (FLUX modulation on ``vec``, timestep/guidance/vector embedders, adaLN of the final layer) in high precision.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch


@dataclass(frozen=True)
class Scheme:
    name: str
    description: str
    make_config: Callable[[], object] | None  # torchao config factory; None: Fastlane's own torch._scaled_mm module
    fp8: bool  # needs fp8 hardware (NVIDIA compute capability 8.9+: Ada, Hopper, Blackwell)
    quantizes_activations: bool
    fast_accum: bool = True  # Fastlane's _scaled_mm schemes only
    # Fastlane's tensor-wise fp8 (fp8_tensorwise.py): "" for the row-wise schemes, else "dynamic" or "calibrated"
    tensorwise: str = ""
    margin: float = 1.0  # calibrated tensor-wise: the first input's abs-max times this is the run's activation range

    @property
    def uses_torchao(self) -> bool:
        return self.make_config is not None

    def config(self):
        return self.make_config()


def _int8_dynamic():
    from torchao.quantization import Int8DynamicActivationInt8WeightConfig

    return Int8DynamicActivationInt8WeightConfig()


def _fp8_dynamic_rowwise():
    from torchao.quantization import Float8DynamicActivationFloat8WeightConfig, PerRow

    return Float8DynamicActivationFloat8WeightConfig(granularity=PerRow())


def _int8_weight_only():
    from torchao.quantization import Int8WeightOnlyConfig

    return Int8WeightOnlyConfig()


def _fp8_weight_only():
    from torchao.quantization import Float8WeightOnlyConfig

    return Float8WeightOnlyConfig()


TENSORWISE_MARGIN = 2.0  # fp8_tensorwise's calibration margin: see docs/COMPILE_QUANT.md (fidelity per margin)

SCHEMES: dict[str, Scheme] = {s.name: s for s in [
    Scheme("fp8_scaled_mm", "fp8 e4m3 weights (per row) and activations (per token) multiplied by torch's own "
           "_scaled_mm with fast accumulation (sm89+): the math of fp8_dynamic_rowwise without a tensor subclass, "
           "so it compiles in seconds; the fastest scheme with Fastlane Compile", None, fp8=True,
           quantizes_activations=True),
    Scheme("fp8_scaled_mm_exact", "as fp8_scaled_mm, with exact fp32 accumulation inside the matmul (a little "
           "slower, a little closer to 16-bit)", None, fp8=True, quantizes_activations=True, fast_accum=False),
    Scheme("fp8_tensorwise", "fp8 e4m3 weights with one scale per tensor, activations with one scale per Linear "
           "measured on its first call of each sampling run (its abs-max times 2; then fixed for that run, saturating "
           "above it): "
           "_scaled_mm's tensor-wise mode, the kernel of ComfyUI's fp8_e4m3fn_fast, with real scales instead of 1 "
           "(sm89+)", None, fp8=True, quantizes_activations=True, tensorwise="calibrated", margin=TENSORWISE_MARGIN),
    Scheme("fp8_tensorwise_dynamic", "as fp8_tensorwise, with the activation scale measured on every call (one "
           "abs-max over the input): never saturates, one reduction more per Linear", None, fp8=True,
           quantizes_activations=True, tensorwise="dynamic"),
    Scheme("int8_dynamic", "int8 weights (per row) and int8 activations quantized per token at run time: int8 "
           "tensor-core matmuls; best with Fastlane Compile", _int8_dynamic, fp8=False, quantizes_activations=True),
    Scheme("fp8_dynamic_rowwise", "fp8 e4m3 weights and activations, one scale per row/token: fp8 tensor-core "
           "matmuls (sm89+); best with Fastlane Compile", _fp8_dynamic_rowwise, fp8=True, quantizes_activations=True),
    Scheme("int8_weight_only", "int8 weights (per row), matmuls in the model's dtype: halves linear-weight memory "
           "(vs 16-bit); speed-up only where weight reading dominates", _int8_weight_only, fp8=False,
           quantizes_activations=False),
    Scheme("fp8_weight_only", "fp8 e4m3 weights, matmuls in the model's dtype (sm89+): halves linear-weight memory",
           _fp8_weight_only, fp8=True, quantizes_activations=False),
]}


def fp8_supported(device: torch.device) -> bool:
    device = torch.device(device)
    if device.type != "cuda" or not torch.cuda.is_available():
        return False
    return torch.cuda.get_device_capability(device) >= (8, 9)


def fp8_storage_supported(device: torch.device) -> bool:
    """Can this device run e4m3 weights through a compiled model? CPU: yes; NVIDIA: Triton reads e4m3 on 8.9+."""
    return torch.device(device).type == "cpu" or fp8_supported(device)


def get(name: str, device: torch.device) -> Scheme:
    """The scheme called ``name``, checked against the device the model runs on (clear error if it can't run)."""
    scheme = SCHEMES.get(name)
    if scheme is None:
        raise ValueError(f"unknown quantization scheme '{name}'; choose one of {', '.join(SCHEMES)}")
    if scheme.fp8 and not fp8_supported(device):
        device = torch.device(device)
        where = device.type if device.type != "cuda" else \
            f"{torch.cuda.get_device_name(device)} (compute capability {'.'.join(map(str, torch.cuda.get_device_capability(device)))})"
        raise ValueError(f"'{name}' needs fp8 matmul hardware (NVIDIA compute capability 8.9+: Ada, Hopper, "
                         f"Blackwell); this model runs on {where}. Use 'int8_weight_only' or 'int8_dynamic' there.")
    return scheme
