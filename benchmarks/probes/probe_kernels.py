"""Kernel-level probes at FLUX/SDXL shapes on the GPU: SDPA backends, and bf16 vs fp8 (torch._scaled_mm) Linears.

    python benchmarks/probes/probe_kernels.py [--out DIR] [--no-compile] [--attention-only]

Besides PyTorch's SDPA kernels the attention table tries, where they exist: SageAttention (``sageattention`` from
PyPI, Triton; INT8 Q·K, 16-bit P·V) and SDPA on float8 inputs. Each is compared with the first SDPA kernel's output
(relative error = max |diff| / max |reference|).

Prints tables and writes probe_kernels.json. Times are CUDA-event medians of 20 runs after warm-up, in one process.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from quantizers.fp8_scaled import Fp8RowwiseLinear  # noqa: E402

# (label, batch, heads, q tokens, kv tokens, head dim, dtype)
ATTENTION = [
    ("FLUX 1024² joint attention", 1, 24, 4608, 4608, 128, torch.bfloat16),
    ("SDXL 1024² level-1 self-attn (CFG batch 2)", 2, 10, 4096, 4096, 64, torch.float16),
    ("SDXL 1024² level-2 self-attn", 2, 20, 1024, 1024, 64, torch.float16),
    ("SDXL 1024² level-1 cross-attn (77 tokens)", 2, 10, 4096, 77, 64, torch.float16),
]
# (label, rows M, in K, out N): the FLUX.1-dev Linears at 1024² (4096 image + 512 text tokens)
LINEARS = [
    ("double img qkv", 4096, 3072, 9216), ("double img proj", 4096, 3072, 3072),
    ("double img mlp.0", 4096, 3072, 12288), ("double img mlp.2", 4096, 12288, 3072),
    ("double txt qkv", 512, 3072, 9216), ("single linear1", 4608, 3072, 21504),
    ("single linear2", 4608, 15360, 3072),
]
BACKENDS = ["FLASH_ATTENTION", "EFFICIENT_ATTENTION", "CUDNN_ATTENTION"]


def bench(fn, reps: int = 20) -> float:
    for _ in range(3):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(reps):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        fn()
        b.record()
        b.synchronize()
        times.append(a.elapsed_time(b))
    return sorted(times)[len(times) // 2]


def _alternatives(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> dict:
    """Attention kernels outside SDPA's own list, as name -> callable (absent when not installed)."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    out = {}
    try:
        from sageattention import sageattn

        out["SAGE"] = lambda: sageattn(q, k, v, tensor_layout="HND", is_causal=False)
    except Exception as e:  # not installed, or its Triton kernels do not build here
        out["SAGE"] = e
    fp8 = [t.to(torch.float8_e4m3fn) for t in (q, k, v)]

    def sdpa_fp8():
        with sdpa_kernel([SDPBackend.CUDNN_ATTENTION]):
            return F.scaled_dot_product_attention(*fp8).to(q.dtype)

    out["CUDNN_FP8"] = sdpa_fp8
    return out


def attention_table() -> list[dict]:

    rows = []
    for label, b, h, lq, lk, d, dtype in ATTENTION:
        q = torch.randn(b, h, lq, d, device="cuda", dtype=dtype)
        k = torch.randn(b, h, lk, d, device="cuda", dtype=dtype)
        v = torch.randn_like(k)
        flops = 4 * b * h * lq * lk * d
        row = {"shape": label, "dims": [b, h, lq, lk, d], "dtype": str(dtype)}
        ref = None
        cases = {name: (lambda name=name: _sdpa_with(name, q, k, v)) for name in BACKENDS}
        cases.update(_alternatives(q, k, v))
        for name, fn in cases.items():
            try:
                if isinstance(fn, Exception):
                    raise fn
                out = fn()
                ms = bench(fn)
                ref = out if ref is None else ref
                rel = float((out.float() - ref.float()).abs().max() / ref.float().abs().max())
                row[name] = {"ms": round(ms, 3), "tflops": round(flops / ms / 1e9, 1), "rel_err_vs_first": round(rel, 5)}
            except Exception as e:
                row[name] = {"error": f"{type(e).__name__}: {str(e).splitlines()[0][:160] if str(e) else ''}"}
        rows.append(row)
        print(f"{label:45s} " + "  ".join(
            f"{n.lower()}: " + (f"{row[n]['ms']:.3f} ms {row[n]['tflops']:.0f} TF/s err {row[n]['rel_err_vs_first']:.4f}"
                                if "ms" in row[n] else row[n]["error"][:80]) for n in cases), flush=True)
    return rows


def _sdpa_with(name: str, q, k, v):
    from torch.nn.attention import SDPBackend, sdpa_kernel

    with sdpa_kernel([getattr(SDPBackend, name)]):
        return F.scaled_dot_product_attention(q, k, v)


def linear_table(compile_too: bool) -> list[dict]:
    rows = []
    for label, m, k, n in LINEARS:
        x = torch.randn(m, k, device="cuda", dtype=torch.bfloat16)
        w = torch.randn(n, k, device="cuda", dtype=torch.bfloat16) * 0.02
        bias = torch.zeros(n, device="cuda", dtype=torch.bfloat16)
        fp8 = Fp8RowwiseLinear(w, bias)
        xq, xs = __import__("quantizers.fp8_scaled", fromlist=["quantize_rows"]).quantize_rows(x)
        flops = 2 * m * k * n
        row = {"linear": label, "mkn": [m, k, n]}
        # one scale per tensor: cuBLASLt's fp8 kernels (row-wise scales run a CUTLASS kernel in torch 2.11)
        amax_w, amax_x = w.abs().max().float(), x.abs().max().float()
        wq_t, ws_t = (w.float() * (448.0 / amax_w)).to(torch.float8_e4m3fn), (amax_w / 448.0)
        xq_t, xs_t = (x.float() * (448.0 / amax_x)).to(torch.float8_e4m3fn), (amax_x / 448.0)
        cases = {
            "bf16 F.linear": lambda: F.linear(x, w, bias),
            "fp8 _scaled_mm only (x pre-quantized)": lambda: torch._scaled_mm(
                xq, fp8.weight.t(), scale_a=xs, scale_b=fp8.weight_scale, bias=fp8.bias, out_dtype=torch.bfloat16),
            "fp8 rowwise fast-accum (x pre-quantized)": lambda: torch._scaled_mm(
                xq, fp8.weight.t(), scale_a=xs, scale_b=fp8.weight_scale, bias=fp8.bias, out_dtype=torch.bfloat16,
                use_fast_accum=True),
            "fp8 tensorwise fast-accum (x pre-quantized)": lambda: torch._scaled_mm(
                xq_t, wq_t.t(), scale_a=xs_t, scale_b=ws_t, bias=bias, out_dtype=torch.bfloat16, use_fast_accum=True),
            "fp8 module eager (quantize x + mm)": lambda: fp8(x),
        }
        if compile_too:
            compiled = torch.compile(fp8, dynamic=False)
            t = time.perf_counter()
            compiled(x)
            row["compile_s"] = round(time.perf_counter() - t, 1)
            cases["fp8 module compiled"] = lambda: compiled(x)
        for name, fn in cases.items():
            ms = bench(fn)
            row[name] = {"ms": round(ms, 3), "tflops": round(flops / ms / 1e9, 1)}
        rows.append(row)
        print(f"{label:18s} {m}x{k}x{n}: " + "  ".join(f"{name}: {row[name]['ms']:.3f} ms ({row[name]['tflops']:.0f})"
                                                       for name in cases), flush=True)
    return rows


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--out", default="out/probe")
    p.add_argument("--no-compile", action="store_true")
    p.add_argument("--attention-only", action="store_true")
    args = p.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    print(f"{torch.cuda.get_device_name()} torch {torch.__version__} cudnn {torch.backends.cudnn.version()}", flush=True)
    result = {"device": torch.cuda.get_device_name(), "torch": torch.__version__,
              "cudnn": torch.backends.cudnn.version(), "date_utc": time.strftime("%Y-%m-%d %H:%M", time.gmtime())}
    print("== SDPA backends (forward) ==", flush=True)
    result["attention"] = attention_table()
    if not args.attention_only:
        print("== Linears: bf16 vs fp8 (ms, TFLOP/s) ==", flush=True)
        result["linears"] = linear_table(not args.no_compile)
    (out / "probe_kernels.json").write_text(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
