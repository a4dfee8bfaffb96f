"""The fp8 ``torch._scaled_mm`` Linear (quantizers/fp8_scaled.py) on tiny tensors, using torch's CPU fp8 kernel."""
import pytest
import torch

from fastlane.quantizers.fp8_scaled import FP8, FP8_MAX, Fp8RowwiseLinear, quantize_rows


def _cpu_scaled_mm_available() -> bool:
    try:
        a = torch.zeros(16, 16, dtype=FP8)
        torch._scaled_mm(a, a.t(), scale_a=torch.ones(16, 1), scale_b=torch.ones(1, 16), out_dtype=torch.bfloat16)
        return True
    except (RuntimeError, NotImplementedError):
        return False


needs_kernel = pytest.mark.skipif(not _cpu_scaled_mm_available(), reason="this torch has no CPU fp8 _scaled_mm")


def rel_err(a, b):
    return float((a.float() - b.float()).norm() / b.float().norm())


def test_rows_are_scaled_to_the_e4m3_range():
    x = torch.tensor([[1.0, -2.0, 0.5], [0.0, 0.0, 0.0], [1e3, 3.0, -7.0]])
    q, scale = quantize_rows(x)
    assert q.dtype == FP8 and scale.shape == (3, 1)
    assert torch.equal(q.float().abs().amax(dim=1)[[0, 2]], torch.tensor([FP8_MAX, FP8_MAX]))
    assert torch.equal(q[1].float(), torch.zeros(3))  # an all-zero row stays zero, no NaN
    assert rel_err(q.float() * scale, x) < 0.05


@needs_kernel
@pytest.mark.parametrize("bias", [True, False])
def test_matches_the_fp8_math_and_stays_close_to_the_linear(bias):
    torch.manual_seed(0)
    linear = torch.nn.Linear(64, 48, bias=bias)
    fp8 = Fp8RowwiseLinear(linear.weight.data, linear.bias.data if bias else None)
    x = torch.randn(2, 9, 64)
    out = fp8(x.bfloat16())
    # the same products done in fp32 from the e4m3 codes and their scales: only bf16 output rounding differs
    q, s = quantize_rows(x.bfloat16().reshape(-1, 64))
    emulated = (q.float() * s) @ fp8.dequantized_weight().t()
    if bias:
        emulated = emulated + linear.bias.data.bfloat16().float()
    assert out.shape == (2, 9, 48) and out.dtype == torch.bfloat16
    assert rel_err(out.reshape(-1, 48), emulated) < 5e-3
    assert rel_err(out, linear(x)) < 0.08  # e4m3 keeps 3 mantissa bits


@needs_kernel
def test_returns_the_input_dtype_and_ignores_dtype_casts():
    linear = torch.nn.Linear(32, 16)
    fp8 = Fp8RowwiseLinear(linear.weight.data, linear.bias.data)
    assert fp8(torch.randn(3, 32, dtype=torch.float16)).dtype == torch.float16
    fp8.to(torch.float16)  # what Module.to(dtype) on a whole model would do
    assert fp8.weight.dtype == FP8 and fp8.weight_scale.dtype == torch.float32
    assert fp8.bias.dtype == torch.bfloat16
    assert sum(t.numel() * t.element_size() for t in fp8.state_dict().values()) < 0.3 * 4 * (32 * 16 + 16)


@needs_kernel
def test_compiles_without_graph_breaks():
    from torch._dynamo.utils import counters

    torch._dynamo.reset()
    counters.clear()
    linear = torch.nn.Linear(32, 16)
    fp8 = Fp8RowwiseLinear(linear.weight.data, linear.bias.data)
    x = torch.randn(5, 32, dtype=torch.bfloat16)
    compiled = torch.compile(fp8, backend="aot_eager", fullgraph=True)
    assert torch.equal(compiled(x), fp8(x))
    assert not counters["graph_break"]
    torch._dynamo.reset()
