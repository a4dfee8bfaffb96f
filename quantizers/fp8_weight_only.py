"""fp8 weights for the Linears that run on a handful of rows (modulation and embedders), activations untouched.

On FLUX.1-dev those Linears hold 3.3 B of the 11.9 B parameters (each block's modulation projection of the
one-row vector ``vec``) but almost no compute. Quantizing their activations buys nothing and int8's kernel refuses
so few rows, so the quantize node keeps them 16-bit unless asked. Stored as e4m3 with one fp32 scale per output row
they take half the memory: with ``fp8_scaled_mm``, FLUX.1-dev's weights go from 14.1 to 11.1 GiB.

The price is speed, measured on an H200 (docs/BENCHMARKS.md, run s4-4): compiled, the product is a multiply-and-sum
that inductor fuses with the e4m3 conversion (no 16-bit copy of the weight is ever made), but that kernel is ~2x
slower per call than cuBLAS's 16-bit matrix-vector product, +1.4 ms per FLUX step (103.2 -> 104.6 ms); eager, the
weight is converted per call, +12 ms per step. On CUDA it needs compute capability 8.9+ (Triton reads e4m3 there
only); on the CPU it runs anywhere.
"""
from __future__ import annotations

import torch

from .fp8_scaled import Fp8Weights

MAX_FUSED_ROWS = 16  # up to this many rows, the compiled path reads the weights once per row: a batch of images


class Fp8WeightOnlyLinear(Fp8Weights):
    """``y = x @ (q * s).T + b`` with ``q`` in e4m3 and one fp32 scale ``s`` per output row; ``x`` stays as it is."""

    fastlane_scheme = "fp8_weight_only_few_rows"

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None) -> None:
        super().__init__(weight, bias, scale_shape=(-1,))  # bias keeps its dtype

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weight, scale, bias = self.tensors_on(x.device)
        rows = x.reshape(-1, self.in_features)
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
