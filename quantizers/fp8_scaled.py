"""fp8 Linear through torch's own ``torch._scaled_mm``: the fp8 route that compiles.

Weights are stored once in float8 e4m3 with one fp32 scale per output row; at run time each input row (token) gets
its own scale, is cast to e4m3, and ``_scaled_mm`` multiplies on the fp8 tensor cores with fp32 accumulation,
applying both scales and the bias in its epilogue. Everything is plain tensors and aten ops - no tensor subclass - so
torch.compile traces it like any other module and fuses the activation quantization (abs-max, divide, cast) into one
kernel ahead of the matmul. Same math as torchao's ``Float8DynamicActivationFloat8WeightConfig(PerRow())``.
"""
from __future__ import annotations

from collections.abc import Callable

import torch

FP8 = torch.float8_e4m3fn
FP8_MAX = float(torch.finfo(FP8).max)  # 448
_MIN_AMAX = 1e-12  # an all-zero row gets scale 1e-12/448 instead of a division by zero


def quantize_rows(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``x`` (2-D) as e4m3 with one fp32 scale per row: ``x ~= q.float() * scale``."""
    amax = x.abs().amax(dim=-1, keepdim=True).float().clamp(min=_MIN_AMAX)
    scale = amax / FP8_MAX
    q = (x.float() / scale).clamp(-FP8_MAX, FP8_MAX).to(FP8)
    return q, scale


class Fp8Weights(torch.nn.Module):
    """Base of the modules holding e4m3 ``weight`` codes with a ``weight_scale`` and an optional ``bias``."""

    fastlane_scheme = ""  # every quantized module names its scheme here; QKV fusion recognises a quantized MODEL by it

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None, scale_shape: tuple[int, ...],
                 bias_dtype: torch.dtype | None = None,
                 quantize: Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]] = quantize_rows) -> None:
        """``quantize``: weight -> (e4m3 codes, scales), one scale per row by default."""
        super().__init__()
        self.out_features, self.in_features = weight.shape
        with torch.no_grad():
            q, scale = quantize(weight.detach())
        self.weight = torch.nn.Parameter(q, requires_grad=False)
        self.register_buffer("weight_scale", scale.reshape(scale_shape).contiguous())
        self.bias = None if bias is None else torch.nn.Parameter(
            bias.detach().to(bias_dtype or bias.dtype, copy=True), requires_grad=False)

    def tensors_on(self, device: torch.device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """weight, scale, bias on ``device``: if ComfyUI left this module offloaded, the fp8 copy comes along for
        this call."""
        weight, scale, bias = self.weight, self.weight_scale, self.bias
        if weight.device != device:
            weight, scale = weight.to(device, non_blocking=True), scale.to(device, non_blocking=True)
            bias = bias.to(device, non_blocking=True) if bias is not None else None
        return weight, scale, bias

    def _apply(self, fn, recurse: bool = True):
        # Device moves only: a dtype cast (Module.to(float16)) would turn the e4m3 codes into numbers without their
        # scales, so each tensor keeps its dtype and follows fn's device.
        for store in (self._parameters, self._buffers):
            for name, t in list(store.items()):
                if t is None:
                    continue
                moved = fn(t)
                if moved.dtype != t.dtype:
                    moved = t.to(moved.device)
                store[name] = torch.nn.Parameter(moved, requires_grad=False) if store is self._parameters else moved
        return self

    def dequantized_weight(self) -> torch.Tensor:
        return self.weight.float() * self.weight_scale.reshape(-1, 1)


class Fp8RowwiseLinear(Fp8Weights):
    """``y = x @ W.T + b`` with ``W`` in e4m3 (per-output-row scales) and ``x`` quantized per token at run time.

    Output is computed in bf16 (``_scaled_mm``'s row-wise mode requires it) and returned in the input's dtype.
    Needs fp8 matmul hardware (sm89+) and sizes divisible by 16; the quantize node checks both beforehand.
    """

    fastlane_scheme = "fp8_scaled_mm"

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None, fast_accum: bool = True) -> None:
        # scale [1, out] for _scaled_mm's scale_b; its row-wise mode wants a bf16 bias
        super().__init__(weight, bias, scale_shape=(1, -1), bias_dtype=torch.bfloat16)
        # Hopper's fast fp8 accumulation (no periodic promotion to fp32 inside the K loop): torchao's inference
        # default too; ``fast_accum=False`` is the exact-accumulation variant
        self.fast_accum = fast_accum

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weight, scale, bias = self.tensors_on(x.device)
        rows = x.reshape(-1, self.in_features)
        q, row_scale = quantize_rows(rows)
        out = torch._scaled_mm(q, weight.t(), scale_a=row_scale, scale_b=scale, bias=bias,
                               out_dtype=torch.bfloat16, use_fast_accum=self.fast_accum)
        return out.to(x.dtype).reshape(*x.shape[:-1], self.out_features)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}, " \
               f"e4m3 per-row weights, per-token activations (torch._scaled_mm, fast_accum={self.fast_accum})"
