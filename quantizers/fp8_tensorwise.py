"""fp8 Linear with ONE scale per tensor for the weight and for the activation: ``_scaled_mm``'s tensor-wise mode.

ComfyUI's native ``fp8_e4m3fn_fast`` also runs the tensor-wise mode (scalar scales: cuBLASLt's fast path, no per-row
epilogue), but at scale 1 for both operands: FLUX weights of std ~0.02 then sit in e4m3's subnormal range and lose
most of their mantissa. Here the weight is scaled once so its abs-max lands on 448 (the scale kept in fp32), and the
activation gets a per-tensor scale too, in one of two modes:

- ``dynamic``: the abs-max over the whole input at every call (one reduction ahead of the cast);
- ``calibrated``: the abs-max of the input of this Linear's FIRST call in a sampling run, times ``margin``, kept for
  the rest of the run; later inputs are divided by it and clamped at +-448 (saturation, never inf/NaN). The quantized
  MODEL's OUTER_SAMPLE wrapper (``recalibrate_each_run``) re-arms the calibration at the start of every sampling
  run, so a repeated prompt recalibrates from the same first input and gives a bit-identical image.

Compiling: the calibration state is a Python flag on the module (``calibrating``), not a tensor test. A tensor test
(``torch.where(calibrated, stored, amax(x))``) keeps one graph but computes the abs-max at every call - exactly the
reduction this mode exists to skip - and ``torch.cond`` on a GPU tensor makes Inductor read the predicate back to
the host (a sync per Linear per call). The flag flips once per module per run: Dynamo compiles the calibrating call
(abs-max, store into the ``input_scale`` buffer in-graph) and the calibrated call (a plain divide-clamp-cast), keeps
both, and from then on every sampling run re-uses them: two graphs per compiled region in all, no recompile per call
or per run.

Plain tensors and aten ops, no tensor subclass, as ``fp8_scaled.Fp8RowwiseLinear``; device moves (``Module.to``,
ComfyUI's offloading) come from ``Fp8Weights``.
"""
from __future__ import annotations

import torch

from .fp8_scaled import _MIN_AMAX, FP8, FP8_MAX, Fp8Weights

MODES = ("dynamic", "calibrated")


def quantize_tensor(x: torch.Tensor, margin: float = 1.0) -> tuple[torch.Tensor, torch.Tensor]:
    """``x`` as e4m3 with one fp32 scale (0-d) for the whole tensor: ``x ~= q.float() * scale``. ``margin`` > 1
    leaves headroom above the abs-max (for later inputs measured against this scale)."""
    scale = x.detach().abs().amax().float().clamp(min=_MIN_AMAX) / (FP8_MAX / margin)
    return to_e4m3(x, scale), scale


def to_e4m3(x: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """``x / scale`` in e4m3, clamped at +-448 first (the cast alone would give NaN above the range)."""
    return (x.float() / scale).clamp(-FP8_MAX, FP8_MAX).to(FP8)


class Fp8TensorwiseLinear(Fp8Weights):
    """``y = x @ W.T + b`` with ``W`` in e4m3 under one fp32 scale and ``x`` cast to e4m3 under one scale per tensor
    (``mode``: ``dynamic`` or ``calibrated``, see the module docstring). Output in the input's dtype (tensor-wise
    ``_scaled_mm`` takes fp32, bf16 or fp16 out); the bias goes into the matmul's epilogue in the output dtype for
    16-bit inputs, and is added after it for fp32 inputs (CUDA's tensor-wise kernel refuses a bias with fp32 out in
    some torch versions). Needs fp8 matmul hardware (sm89+) and sizes divisible by 16, as the other fp8 schemes."""

    fastlane_scheme = "fp8_tensorwise"

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None, mode: str = "calibrated",
                 margin: float = 1.0, fast_accum: bool = True) -> None:
        if mode not in MODES:
            raise ValueError(f"unknown activation-scale mode '{mode}'; choose one of {', '.join(MODES)}")
        super().__init__(weight, bias, scale_shape=(), quantize=quantize_tensor)  # one 0-d weight scale
        self.mode, self.margin, self.fast_accum = mode, float(margin), fast_accum
        if mode == "dynamic":
            self.fastlane_scheme = "fp8_tensorwise_dynamic"
        # the calibrated activation scale of this run (0: none yet); a buffer, so it follows the module's device
        self.register_buffer("input_scale", torch.zeros((), dtype=torch.float32))
        self.calibrating = mode == "calibrated"

    def recalibrate(self) -> None:
        """Measure the activation scale again at the next call (the start of a sampling run)."""
        self.calibrating = self.mode == "calibrated"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weight, w_scale, bias = self.tensors_on(x.device)
        rows = x.reshape(-1, self.in_features)
        if self.mode == "dynamic":
            q, x_scale = quantize_tensor(rows)
        elif self.calibrating:
            q, x_scale = quantize_tensor(rows, self.margin)
            with torch.no_grad():
                self.input_scale.copy_(x_scale)
            self.calibrating = False
        else:
            x_scale = self.input_scale.to(x.device)
            q = to_e4m3(rows, x_scale)
        out_dtype = x.dtype if x.dtype in (torch.float32, torch.bfloat16, torch.float16) else torch.bfloat16
        fused_bias = bias is not None and out_dtype != torch.float32
        out = torch._scaled_mm(q, weight.t(), scale_a=x_scale, scale_b=w_scale,
                               bias=bias.to(out_dtype) if fused_bias else None, out_dtype=out_dtype,
                               use_fast_accum=self.fast_accum)
        if bias is not None and not fused_bias:
            out = out + bias.to(out_dtype)
        return out.to(x.dtype).reshape(*x.shape[:-1], self.out_features)

    def extra_repr(self) -> str:
        acts = "per-tensor dynamic" if self.mode == "dynamic" else f"per-tensor calibrated (margin {self.margin})"
        return f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}, " \
               f"e4m3 per-tensor weights, {acts} activations (torch._scaled_mm tensor-wise, " \
               f"fast_accum={self.fast_accum})"


def recalibrate_each_run():
    """OUTER_SAMPLE wrapper of a MODEL holding calibrated ``Fp8TensorwiseLinear``: re-arm every one's calibration at
    the start of a sampling run, so each run measures its own first input (a repeated prompt: the same scales, a
    bit-identical image)."""
    def outer_sample_wrapper(executor, *args, **kwargs):
        dm = executor.class_obj.model_patcher.model.diffusion_model
        for m in dm.modules():
            if isinstance(m, Fp8TensorwiseLinear):
                m.recalibrate()
        return executor(*args, **kwargs)

    return outer_sample_wrapper
