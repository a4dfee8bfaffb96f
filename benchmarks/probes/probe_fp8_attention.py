"""GPU probe: would fp8 attention through cuDNN speed up FLUX's joint attention (1024²: 4096 image + 512 text
tokens, 24 heads of 128) enough to pay for its error?

    python benchmarks/probes/probe_fp8_attention.py [--out DIR]

PyTorch 2.11 has no fp8 attention kernel of its own (its quantized SDPA entry point needs FlashAttention-3
kernels registered from a separate package), but the cuDNN library it loads has an fp8 SDPA forward on Hopper,
reached through NVIDIA's ``nvidia-cudnn-frontend`` (PyPI; carried to the device as a wheel). Scales: one per
tensor for Q, K and V (cuDNN takes scalar descales), from each tensor's absolute maximum; P is stored as e4m3
times 448 inside the kernel; on Hopper the output is e4m3 too (16-bit output needs Blackwell), at the largest scale
that cannot overflow (each output row is a convex combination of V's rows: |O| <= max |V| (1 + 2^-4)).

Routes, each timed as the median of CUDA events one call at a time and per call inside a CUDA graph of 20 calls
(GPU time alone):
- ``torch cudnn bf16`` / ``torch flash bf16``: PyTorch's SDPA kernels (what Fastlane Attention Kernel picks from);
- ``fe bf16 <implementation>``: cuDNN's bf16 SDPA built through the frontend;
- ``fe fp8 kernel [plan]``: the fp8 kernel on Q, K, V already in e4m3, for every execution plan cuDNN offers;
- ``rope + bf16 sdpa`` vs ``rope + quantize + fp8``: what a compiled FLUX block would run — RoPE on q and k
  then attention — with the quantization compiled together with RoPE (the fair comparison: under torch.compile the
  quantization fuses into the kernels that produce q, k, v).
Errors are against attention in fp32 (max |diff| / max |ref|, and the RMS ratio); ``emulated fp8`` rounds like
the kernel in fp32 torch (runs on the CPU), compared with the kernel's output too. Inputs q, k ~ N(0, σ²) with
σ = 1 and 2.5 (logits of standard deviation 1 and ~6: flat and peaked softmax), v ~ N(0, 1).
Writes probe_fp8_attention.json.
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
from probe_few_rows import graph_ms  # noqa: E402  (benchmarks/probes/ is on sys.path when run as a script)
from probe_kernels import bench  # noqa: E402

B, H, S, D = 1, 24, 4608, 128
E4M3_MAX = float(torch.finfo(torch.float8_e4m3fn).max)
P_HEADROOM = 1.0625  # e4m3 rounds P up by at most 2^-4 of itself


def quantize(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """e4m3 codes of ``x`` with one scale for the tensor, and the fp32 descale ([1]) that undoes it."""
    amax = x.abs().amax().float().clamp(min=1e-12).reshape(1)
    return (x.float() * (E4M3_MAX / amax)).to(torch.float8_e4m3fn), amax / E4M3_MAX


def _build_plans(g, all_plans: bool = False) -> None:
    """Validate a frontend graph and build its execution plans: the heuristics' choice, or every plan offered."""
    import cudnn

    g.validate()
    g.build_operation_graph()
    modes = [cudnn.heur_mode.A, cudnn.heur_mode.FALLBACK]
    g.create_execution_plans([cudnn.heur_mode.A, cudnn.heur_mode.B, cudnn.heur_mode.FALLBACK] if all_plans else modes)
    g.check_support()
    g.build_plans(cudnn.build_plan_policy.ALL if all_plans else cudnn.build_plan_policy.HEURISTICS_CHOICE)


class CudnnFp8Attention:
    """cuDNN's fp8 SDPA forward for one shape/layout, built through the frontend; ``plan`` None = heuristics'."""

    def __init__(self, q8: torch.Tensor, k8: torch.Tensor, v8: torch.Tensor, all_plans: bool = False):
        import cudnn

        self.cudnn = cudnn
        self.handle = cudnn.create_handle()
        fp8, f32 = cudnn.data_type.FP8_E4M3, cudnn.data_type.FLOAT
        g = cudnn.pygraph(io_data_type=fp8, intermediate_data_type=f32, compute_data_type=f32, handle=self.handle)
        t = {n: g.tensor(name=n, dim=list(x.shape), stride=list(x.stride()), data_type=fp8)
             for n, x in (("q", q8), ("k", k8), ("v", v8))}
        for name in ("descale_q", "descale_k", "descale_v", "descale_s", "scale_s", "scale_o"):
            t[name] = g.tensor(name=name, dim=[1, 1, 1, 1], stride=[1, 1, 1, 1], data_type=f32)
        o, _, amax_s, amax_o = g.sdpa_fp8(
            q=t["q"], k=t["k"], v=t["v"], descale_q=t["descale_q"], descale_k=t["descale_k"],
            descale_v=t["descale_v"], descale_s=t["descale_s"], scale_s=t["scale_s"], scale_o=t["scale_o"],
            generate_stats=False, attn_scale=D ** -0.5)
        o.set_output(True).set_dim([B, H, S, D]).set_stride([S * H * D, D, H * D, 1]).set_data_type(fp8)
        for amax in (amax_s, amax_o):
            amax.set_output(True).set_dim([1, 1, 1, 1]).set_stride([1, 1, 1, 1]).set_data_type(f32)
        t.update(o=o, amax_s=amax_s, amax_o=amax_o)
        _build_plans(g, all_plans)
        self.graph, self.t = g, t
        self.plans = [(i, g.get_plan_name_at_index(i)) for i in range(g.get_execution_plan_count())] if all_plans \
            else []
        self.workspace = torch.empty(max([g.get_workspace_size()] + [g.get_workspace_size_plan_at_index(i)
                                                                     for i, _ in self.plans] + [1]),
                                     device="cuda", dtype=torch.uint8)
        self.s_consts = torch.tensor([1.0 / E4M3_MAX, E4M3_MAX], device="cuda")
        self.amaxes = torch.empty(2, device="cuda")

    def __call__(self, q8, k8, v8, scales: torch.Tensor, plan: int | None = None) -> torch.Tensor:
        """``scales`` = [descale_q, descale_k, descale_v, scale_o]; returns O's e4m3 codes as (B, S, H, D)."""
        t = self.t
        out = torch.empty(B, S, H, D, device="cuda", dtype=torch.float8_e4m3fn)
        pack = {t["q"]: q8, t["k"]: k8, t["v"]: v8, t["descale_q"]: scales[0:1], t["descale_k"]: scales[1:2],
                t["descale_v"]: scales[2:3], t["scale_o"]: scales[3:4], t["descale_s"]: self.s_consts[0:1],
                t["scale_s"]: self.s_consts[1:2], t["amax_s"]: self.amaxes[0:1], t["amax_o"]: self.amaxes[1:2],
                t["o"]: out}
        self.cudnn.set_stream(handle=self.handle, stream=torch.cuda.current_stream().cuda_stream)
        if plan is None:
            self.graph.execute(pack, self.workspace, handle=self.handle)
        else:
            self.graph.execute_plan_at_index(pack, self.workspace, plan, handle=self.handle)
        return out


def _fe_bf16(q, k, v, implementation: str):
    """cuDNN bf16 SDPA through the frontend, BHSD in, BSHD out; returns a callable."""
    import cudnn

    bf16, f32 = cudnn.data_type.BFLOAT16, cudnn.data_type.FLOAT
    handle = cudnn.create_handle()
    g = cudnn.pygraph(io_data_type=bf16, intermediate_data_type=f32, compute_data_type=f32, handle=handle)
    tq, tk, tv = (g.tensor(name=n, dim=list(t.shape), stride=list(t.stride()), data_type=bf16)
                  for n, t in (("q", q), ("k", k), ("v", v)))
    o, _ = g.sdpa(q=tq, k=tk, v=tv, generate_stats=False, attn_scale=D ** -0.5,
                  implementation=getattr(cudnn.attention_implementation, implementation))
    o.set_output(True).set_dim([B, H, S, D]).set_stride([S * H * D, D, H * D, 1]).set_data_type(bf16)
    _build_plans(g)
    out = torch.empty(B, S, H, D, device=q.device, dtype=q.dtype)
    ws = torch.empty(max(g.get_workspace_size(), 1), device=q.device, dtype=torch.uint8)

    def run():
        cudnn.set_stream(handle=handle, stream=torch.cuda.current_stream().cuda_stream)
        g.execute({tq: q, tk: k, tv: v, o: out}, ws, handle=handle)
        return out
    return run


def emulate(q, k, v) -> torch.Tensor:
    """The fp8 kernel's rounding in fp32 torch: e4m3 Q, K, V (per-tensor scales), e4m3 exp(S - rowmax) at scale
    448 with the row sums taken before that rounding, e4m3 O at the output scale; returns (B, S, H, D)."""
    def rnd(x, scale):
        return (x * scale).to(torch.float8_e4m3fn).float() / scale
    scales = [E4M3_MAX / t.float().abs().amax().clamp(min=1e-12) for t in (q, k, v)]
    qf, kf, vf = (rnd(t.float(), s) for t, s in zip((q, k, v), scales))
    outs = []
    for h in range(0, q.shape[1], 4):
        logits = qf[:, h:h + 4] @ kf[:, h:h + 4].transpose(-1, -2) * D ** -0.5
        p = torch.exp(logits - logits.amax(-1, keepdim=True))
        outs.append(rnd(p, E4M3_MAX) @ vf[:, h:h + 4] / p.sum(-1, keepdim=True))
    return rnd(torch.cat(outs, 1), scales[2] / P_HEADROOM).transpose(1, 2)


def _reference(q, k, v) -> torch.Tensor:
    """fp32 attention, (B, S, H, D), a few heads at a time."""
    return torch.cat([F.scaled_dot_product_attention(q[:, h:h + 4].float(), k[:, h:h + 4].float(),
                                                     v[:, h:h + 4].float()) for h in range(0, H, 4)], 1).transpose(1, 2)


def _errors(out: torch.Tensor, ref: torch.Tensor) -> dict:
    diff = (out.float() - ref).reshape(-1)
    return {"rel_max": float(diff.abs().max() / ref.abs().max()), "rel_rms": float(diff.norm() / ref.norm())}


def _rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """FLUX-style rotary embedding on pairs of channels (the producer the quantization fuses into)."""
    x2 = x.float().unflatten(-1, (-1, 2))
    out = torch.stack([x2[..., 0] * cos - x2[..., 1] * sin, x2[..., 0] * sin + x2[..., 1] * cos], -1)
    return out.flatten(-2).to(x.dtype)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    torch.manual_seed(0)
    import cudnn
    from torch.nn.attention import SDPBackend, sdpa_kernel

    info = {"device": torch.cuda.get_device_name(), "torch": torch.__version__,
            "cudnn_torch": torch.backends.cudnn.version(), "cudnn_frontend": getattr(cudnn, "__version__", "?"),
            "cudnn_backend_seen_by_frontend": cudnn.backend_version(), "rows": []}
    print(json.dumps({k: v for k, v in info.items() if k != "rows"}), flush=True)
    flops = 4 * B * H * S * S * D
    print("| σ | route | first call s | ms per call | ms in a CUDA graph | TFLOP/s (graph) | rel. max err | "
          "rel. RMS err |")
    print("|---:|---|---:|---:|---:|---:|---:|---:|")
    angles = torch.rand(S, D // 2, device="cuda") * 6.28
    cos, sin = angles.cos(), angles.sin()
    for sigma in (1.0, 2.5):
        q = torch.randn(B, H, S, D, device="cuda", dtype=torch.bfloat16) * sigma
        k = torch.randn(B, H, S, D, device="cuda", dtype=torch.bfloat16) * sigma
        v = torch.randn(B, S, H, D, device="cuda", dtype=torch.bfloat16).transpose(1, 2)  # FLUX's v: a strided view
        ref = _reference(q, k, v)
        pre = [quantize(t) for t in (q, k, v)]
        scale_o = 1.0 / (pre[2][1] * P_HEADROOM)
        scales = torch.cat([p[1] for p in pre] + [scale_o])
        fp8 = CudnnFp8Attention(pre[0][0], pre[1][0], pre[2][0], all_plans=True)

        def torch_sdpa(backend):
            def run():
                with sdpa_kernel([backend]):
                    return F.scaled_dot_product_attention(q, k, v).transpose(1, 2)
            return run

        def rope_bf16(qq, kk, vv):
            with sdpa_kernel([SDPBackend.CUDNN_ATTENTION]):
                return F.scaled_dot_product_attention(_rope(qq, cos, sin), _rope(kk, cos, sin), vv).transpose(1, 2)

        def rope_quantize(qq, kk, vv):
            (q8, dq), (k8, dk), (v8, dv) = quantize(_rope(qq, cos, sin)), quantize(_rope(kk, cos, sin)), quantize(vv)
            return q8, k8, v8, torch.cat([dq, dk, dv, 1.0 / (dv * P_HEADROOM)])

        rope_bf16_c = torch.compile(rope_bf16, fullgraph=True)
        rope_quantize_c = torch.compile(rope_quantize, fullgraph=True)
        fp8_rope = CudnnFp8Attention(*rope_quantize_c(q, k, v)[:3])

        def rope_fp8():
            q8, k8, v8, sc = rope_quantize_c(q, k, v)
            return fp8_rope(q8, k8, v8, sc).float() / sc[3]

        routes = {"torch cudnn bf16": lambda: torch_sdpa(SDPBackend.CUDNN_ATTENTION),
                  "torch flash bf16": lambda: torch_sdpa(SDPBackend.FLASH_ATTENTION)}
        for impl in ("AUTO", "UNIFIED"):
            routes[f"fe bf16 {impl}"] = lambda impl=impl: _fe_bf16(q, k, v, impl)
        routes["fe fp8 kernel (heuristics' plan)"] = lambda: (
            lambda: fp8(pre[0][0], pre[1][0], pre[2][0], scales).float() / scale_o)
        for index, name in fp8.plans:
            routes[f"fe fp8 kernel plan {index} {name}"] = lambda index=index: (
                lambda: fp8(pre[0][0], pre[1][0], pre[2][0], scales, plan=index).float() / scale_o)
        routes["compiled rope + bf16 cudnn sdpa"] = lambda: (lambda: rope_bf16_c(q, k, v))
        routes["compiled rope + quantize, fp8 kernel, dequantize"] = lambda: rope_fp8
        fp8_out = None
        for name, make in routes.items():
            row = {"sigma": sigma, "route": name}
            try:
                start = time.perf_counter()
                fn = make()
                out = fn()
                torch.cuda.synchronize()
                row["first_call_s"] = round(time.perf_counter() - start, 3)
                if "rope" not in name:
                    row.update(_errors(out, ref))
                if name.startswith("fe fp8 kernel (heur"):
                    fp8_out = out.float().clone()
                row["ms_per_call"] = round(bench(fn), 4)
                try:
                    row["ms_in_graph"] = round(graph_ms(fn), 4)
                except Exception as e:  # this route cannot be captured
                    row["graph_error"] = f"{type(e).__name__}: {str(e)[:160]}"
            except Exception as e:
                row["error"] = f"{type(e).__name__}: {str(e)[:300]}"
            info["rows"].append(row)
            ms = row.get("ms_in_graph", row.get("ms_per_call"))
            print(f"| {sigma} | {name} | {row.get('first_call_s', '—')} | {row.get('ms_per_call', '—')} | "
                  f"{row.get('ms_in_graph', '—')} | {round(flops / ms / 1e9) if ms else '—'} | "
                  f"{row.get('rel_max', float('nan')):.4f} | {row.get('rel_rms', float('nan')):.4f} |"
                  + (f" {row['error']}" if "error" in row else "")
                  + (f" graph: {row['graph_error']}" if "graph_error" in row else ""), flush=True)
        emulated = emulate(q, k, v)
        row = {"sigma": sigma, "route": "emulated fp8 (fp32 math)", **_errors(emulated, ref)}
        if fp8_out is not None:
            row["vs_fp8_kernel"] = _errors(emulated, fp8_out)
        info["rows"].append(row)
        print(f"| {sigma} | emulated fp8 | — | — | — | — | {row['rel_max']:.4f} | {row['rel_rms']:.4f} | vs the "
              f"kernel: {row.get('vs_fp8_kernel')}", flush=True)
        del q, k, v, ref, fp8, fp8_rope, emulated
        torch.cuda.empty_cache()
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "probe_fp8_attention.json").write_text(json.dumps(info, indent=1))


if __name__ == "__main__":
    main()
