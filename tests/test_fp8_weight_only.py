"""fp8 weights for the few-row Linears (quantizers/fp8_weight_only.py) on tiny tensors, eager and compiled (CPU)."""
import re

import torch
from torch._inductor.utils import run_and_get_code

from fastlane.quantizers.fp8_weight_only import MAX_FUSED_ROWS, Fp8WeightOnlyLinear


def rel_err(a, b):
    return float((a.float() - b.float()).norm() / b.float().norm())


def layer(bias=True):
    torch.manual_seed(0)
    linear = torch.nn.Linear(64, 96, bias=bias)
    return linear, Fp8WeightOnlyLinear(linear.weight.data, linear.bias.data if bias else None)


def test_holds_fp8_weights_and_computes_with_them():
    linear, fp8 = layer()
    assert fp8.weight.dtype == torch.float8_e4m3fn and fp8.weight_scale.shape == (96,)
    x = torch.randn(3, 64)
    out = fp8(x)
    assert out.dtype == x.dtype and out.shape == (3, 96)
    assert rel_err(out, torch.nn.functional.linear(x, fp8.dequantized_weight(), linear.bias)) < 1e-5
    assert 0 < rel_err(out, linear(x)) < 0.05  # e4m3 rounding of the weights, nothing else


def test_the_inputs_keep_their_precision():
    linear, fp8 = layer(bias=False)
    x = torch.randn(1, 64)
    x[0, 0] = 1e-4  # would be lost next to the other inputs if they were cast to e4m3 with one scale
    exact = torch.nn.functional.linear(x.double(), fp8.dequantized_weight().double())
    assert rel_err(fp8(x), exact) < 1e-6


def test_dtype_casts_keep_the_codes_and_16_bit_inputs_give_16_bit_outputs():
    linear, fp8 = layer()
    fp8.to(torch.float16)
    assert fp8.weight.dtype == torch.float8_e4m3fn and fp8.weight_scale.dtype == torch.float32
    assert fp8(torch.randn(2, 64, dtype=torch.bfloat16)).dtype == torch.bfloat16


def test_compiled_reads_the_fp8_weights_in_one_fused_reduction():
    linear, fp8 = layer()
    x = torch.randn(2, 64)  # a batch of two images' vec: a few rows
    torch._dynamo.reset()
    compiled = torch.compile(fp8, backend="inductor", fullgraph=True)
    out, code = run_and_get_code(compiled, x)
    code = "\n".join(code)
    assert not re.search(r"extern_kernels\.\w+\(", code)  # no matmul call on a dequantized 16-bit copy
    assert len(re.findall(r"fused_\w*mul_sum", code)) >= 1  # conversion, multiply and sum in one kernel
    assert rel_err(out, fp8(x)) < 1e-5
    many = torch.randn(MAX_FUSED_ROWS + 1, 64)  # many rows: an ordinary matmul
    assert rel_err(compiled(many), fp8(many)) < 1e-5
