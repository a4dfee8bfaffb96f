"""GPU probe of FLUX's few-row Linears (modulation of ``vec``): 16-bit vs fp8 weights (quantizers/fp8_weight_only.py).

    python benchmarks/probes/probe_few_rows.py [--out DIR]

For each FLUX.1-dev modulation shape and 1, 2 or 16 rows, three ways to compute the product:
- ``bf16``: the 16-bit ``nn.Linear`` (cuBLAS);
- ``inductor``: fp8 weights through torch.compile's fused multiply-sum (the compiled path before the Triton kernel);
- ``triton``: fp8 weights through ``fastlane::fp8_rows_linear`` (quantizers/fp8_rows_kernel.py), eager and compiled
  with ``fullgraph=True`` (a graph break would raise).
The first call of each is timed on its own (compiling and autotuning included; run the probe twice to see what
Triton's on-disk autotuning cache saves a second process). Then each is timed two ways, as medians of CUDA
events: one call at a time (launch cost included, what an eager step pays) and per call inside a CUDA graph of 20
calls (the GPU's time alone). The relative error is max |diff| / max |bf16|. Prints a table, writes
probe_few_rows.json.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from probe_kernels import bench  # noqa: E402  (benchmarks/probes/ is on sys.path when run as a script)
from quantizers.fp8_weight_only import Fp8WeightOnlyLinear, _kernel_runs  # noqa: E402

# (label, in K, out N, how many per FLUX.1-dev step)
SHAPES = [("double-block img_mod/txt_mod", 3072, 18432, 38), ("single-block modulation", 3072, 9216, 38)]
GRAPH_CALLS = 20


def graph_ms(fn) -> float:
    """Per-call GPU time of ``fn`` replayed in a CUDA graph of GRAPH_CALLS calls (no launch cost)."""
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        for _ in range(3):
            fn()
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        for _ in range(GRAPH_CALLS):
            fn()
    return bench(graph.replay, reps=20) / GRAPH_CALLS


def inductor_fused(fp8: Fp8WeightOnlyLinear):
    """The compiled multiply-sum over the fp8 weights that inductor fuses (the route of run s4-4)."""
    def product(x: torch.Tensor) -> torch.Tensor:
        out = (x.float().unsqueeze(1) * fp8.weight.float()).sum(-1) * fp8.weight_scale + fp8.bias.float()
        return out.to(x.dtype)
    return torch.compile(product, fullgraph=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    torch.manual_seed(0)
    rows_out = []
    print(f"{torch.cuda.get_device_name()} · torch {torch.__version__}")
    print("| Linear | rows | route | first call s | ms per call | ms in a CUDA graph | GB/s read (graph) "
          "| rel. error |")
    print("|---|---:|---|---:|---:|---:|---:|---:|")
    for label, k, n, per_step in SHAPES:
        linear = torch.nn.Linear(k, n, device="cuda", dtype=torch.bfloat16)
        fp8 = Fp8WeightOnlyLinear(linear.weight.data, linear.bias.data)
        torch._dynamo.reset()
        routes = {"bf16": linear, "inductor": inductor_fused(fp8), "triton eager": fp8,
                  "triton compiled": torch.compile(fp8, fullgraph=True)}
        for rows in (1, 2, 16):
            x = torch.randn(rows, k, device="cuda", dtype=torch.bfloat16)
            assert _kernel_runs(x)
            with torch.no_grad():
                ref = linear(x).float()
                for route, fn in routes.items():
                    torch.cuda.synchronize()
                    start = time.perf_counter()
                    fn(x)
                    torch.cuda.synchronize()
                    first_s = time.perf_counter() - start
                    err = float((fn(x).float() - ref).abs().max() / ref.abs().max())
                    per_call = bench(lambda: fn(x), reps=50)
                    in_graph = graph_ms(lambda: fn(x))
                    weight_bytes = n * k * (2 if route == "bf16" else 1)
                    row = {"linear": label, "k": k, "n": n, "rows": rows, "route": route, "first_s": first_s,
                           "ms": per_call, "graph_ms": in_graph, "gb_per_s": weight_bytes / in_graph / 1e6,
                           "rel_err": err, "per_step": per_step}
                    rows_out.append(row)
                    print(f"| {label} {k}→{n} | {rows} | {route} | {first_s:.2f} | {per_call:.4f} | {in_graph:.4f} | "
                          f"{row['gb_per_s']:.0f} | {err:.4f} |", flush=True)
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        meta = {"device": torch.cuda.get_device_name(), "torch": torch.__version__, "graph_calls": GRAPH_CALLS}
        (args.out / "probe_few_rows.json").write_text(json.dumps({"meta": meta, "rows": rows_out}, indent=1))


if __name__ == "__main__":
    main()
