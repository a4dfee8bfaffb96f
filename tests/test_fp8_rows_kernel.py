"""The Triton kernel for few rows x fp8 weights (quantizers/fp8_rows_kernel.py), run in Triton's CPU interpreter.

The interpreter executes the kernel's own code (loads, masks, tile loop, scale, bias, store) on the CPU, so its
arithmetic is checked here; its speed is measured on the GPU (benchmarks/probes/probe_few_rows.py). The interpreter
computes ``tl.dot`` wrongly for bf16 operands (a Triton interpreter limitation, fp16 is right), so the several-row
path (``tl.dot``) is checked with fp16 inputs and the one-row path (a reduction) with both 16-bit types; and it
truncates fp32 to bf16 where the GPU rounds to nearest, so bf16 outputs are allowed one bf16 step.
"""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("triton")

REPO = Path(__file__).resolve().parents[1]

CHECK = r"""
import json, torch
from quantizers import fp8_rows_kernel
from quantizers.fp8_weight_only import Fp8WeightOnlyLinear, _kernel_runs
assert fp8_rows_kernel.INTERPRETED
torch.manual_seed(0)
results = []
# K and N not multiples of the interpreter's 32 x 128 tile: the masks matter
for rows, dtype, bias, k, n in [(1, torch.bfloat16, True, 300, 70), (1, torch.float16, False, 300, 70),
                                (2, torch.float16, True, 300, 70), (5, torch.float16, False, 131, 33),
                                (16, torch.float16, True, 256, 64)]:
    linear = torch.nn.Linear(k, n, bias=bias)
    fp8 = Fp8WeightOnlyLinear(linear.weight.data.to(dtype), linear.bias.data.to(dtype) if bias else None)
    x = (torch.randn(rows, k) * 3).to(dtype)
    exact = torch.nn.functional.linear(x.double(), fp8.dequantized_weight().double(),
                                       fp8.bias.double() if bias else None)
    direct = fp8_rows_kernel.fp8_rows_linear(x, fp8.weight, fp8.weight_scale, fp8.bias)
    # the registered operator (what torch.compile calls) launches the same kernel
    assert torch.equal(fp8_rows_kernel._fp8_rows_linear_op(x, fp8.weight, fp8.weight_scale, fp8.bias), direct)
    through_module = fp8(x.unsqueeze(0))
    results.append({"rows": rows, "dtype": str(dtype), "bias": bias, "kernel_taken": _kernel_runs(x),
                    "out_dtype": str(direct.dtype), "module_shape": list(through_module.shape),
                    "err": float((direct.double() - exact).abs().max() / exact.abs().max()),
                    "module_err": float((through_module[0].double() - exact).abs().max() / exact.abs().max())})
print(json.dumps(results))
"""


def test_kernel_matches_the_exact_product_in_the_interpreter():
    env = {**os.environ, "TRITON_INTERPRET": "1", "PYTHONPATH": str(REPO)}
    done = subprocess.run([sys.executable, "-c", CHECK], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    results = json.loads(done.stdout.strip().splitlines()[-1])
    assert len(results) == 5
    for r in results:
        assert r["kernel_taken"], r
        assert r["out_dtype"] == r["dtype"], r
        assert r["module_shape"][0] == 1 and r["module_shape"][1] == r["rows"], r
        # the output's own 16-bit rounding and nothing more (a lost scale, bias or tile would be off by far more)
        tolerance = 2 ** -7 if r["dtype"] == "torch.bfloat16" else 2 ** -10
        assert r["err"] < tolerance and r["module_err"] < tolerance, r
