"""fp8 weights for the Linears that run on a handful of rows (modulation and embedders), activations untouched.

On FLUX.1-dev those Linears hold 3.3 B of the 11.9 B parameters (each block's modulation projection of the
one-row vector ``vec``) but almost no compute. Quantizing their activations buys nothing and int8's kernel refuses
so few rows, so the quantize node never does; with the fp8 schemes it stores their weights this way. As e4m3 with
one fp32 scale per output row they take half the memory: with ``fp8_scaled_mm``, FLUX.1-dev's weights go from 14.1
to 11.1 GiB.

On CUDA, with 16-bit inputs, the product runs in a Triton kernel (fp8_rows_kernel.py) that reads each code once.
Measured on an H200 (docs/BENCHMARKS.md, run s5-4): inside a CUDA graph it is faster than cuBLAS's 16-bit product
(0.018 vs 0.032 ms at 3072 -> 18432, one row), and the FLUX.1-dev step takes the same time with these weights in
fp8 or 16-bit (103.1 vs 103.5 ms/step compiled, 188.5 both eager). Elsewhere (the CPU, fp32 inputs) the compiled
path is inductor's fused multiply-sum and the eager path converts the weight per call. On CUDA it needs compute
capability 8.9+ (Triton reads e4m3 there only).
"""
from __future__ import annotations

import torch

from . import fp8_rows_kernel
from .fp8_scaled import Fp8Weights

MAX_FUSED_ROWS = 16  # up to this many rows (a batch of images) the compiled fallback reads the weights once per row


class Fp8WeightOnlyLinear(Fp8Weights):
    """``y = x @ (q * s).T + b`` with ``q`` in e4m3 and one fp32 scale ``s`` per output row; ``x`` stays as it is."""

    fastlane_scheme = "fp8_weight_only_few_rows"

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None) -> None:
        super().__init__(weight, bias, scale_shape=(-1,))  # bias keeps its dtype

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weight, scale, bias = self.tensors_on(x.device)
        rows = x.reshape(-1, self.in_features)
        if _kernel_runs(rows):
            out = fp8_rows_kernel.fp8_rows_linear(rows.contiguous(), weight, scale, bias)
            return out.reshape(*x.shape[:-1], self.out_features)
        if torch.compiler.is_compiling() and rows.shape[0] <= MAX_FUSED_ROWS:
            out = (rows.float().unsqueeze(1) * weight.float()).sum(-1)  # one fused reduction over the fp8 weights
        else:
            out = torch.nn.functional.linear(rows, weight.to(rows.dtype)).float()
        out = out * scale
        if bias is not None:
            out = out + bias.float()
        return out.to(x.dtype).reshape(*x.shape[:-1], self.out_features)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}, " \
               "e4m3 per-row weights, activations unquantized"


def _kernel_runs(rows: torch.Tensor) -> bool:
    """Whether the Triton kernel takes this call: 16-bit rows, few enough, on CUDA (or in Triton's CPU interpreter)."""
    return (fp8_rows_kernel.available() and rows.shape[0] <= fp8_rows_kernel.MAX_ROWS
            and rows.dtype in (torch.bfloat16, torch.float16)
            and (rows.is_cuda or fp8_rows_kernel.INTERPRETED))
