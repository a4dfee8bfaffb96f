"""GPU probe of FLUX's few-row Linears (modulation of ``vec``): 16-bit vs fp8 weights (quantizers/fp8_weight_only.py).

    python benchmarks/probe_few_rows.py [--out DIR]

For each FLUX.1-dev modulation shape and 1 or 2 rows: the bf16 Linear, the fp8-weight Linear run eagerly and
compiled (inductor), as CUDA-event medians of 50 calls after warm-up, and the compiled output's relative error
against the bf16 Linear (max |diff| / max |reference|). Prints a table, writes probe_few_rows.json.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from probe_kernels import bench  # noqa: E402  (benchmarks/ is on sys.path when run as a script)
from quantizers.fp8_weight_only import Fp8WeightOnlyLinear  # noqa: E402

# (label, in K, out N, how many per FLUX.1-dev step)
SHAPES = [("double-block img_mod/txt_mod", 3072, 18432, 38), ("single-block modulation", 3072, 9216, 38)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    torch.manual_seed(0)
    rows_out = []
    print(f"{torch.cuda.get_device_name()} · torch {torch.__version__}")
    print("| Linear | rows | bf16 ms | fp8 weights eager ms | fp8 weights compiled ms | compiled rel. error "
          "| per step (bf16 → compiled fp8) |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for label, k, n, per_step in SHAPES:
        linear = torch.nn.Linear(k, n, device="cuda", dtype=torch.bfloat16)
        fp8 = Fp8WeightOnlyLinear(linear.weight.data, linear.bias.data)
        torch._dynamo.reset()
        compiled = torch.compile(fp8, fullgraph=True)
        for rows in (1, 2):
            x = torch.randn(rows, k, device="cuda", dtype=torch.bfloat16)
            with torch.no_grad():
                ref = linear(x)
                err = float((compiled(x).float() - ref.float()).abs().max() / ref.float().abs().max())
                t_bf16 = bench(lambda: linear(x), reps=50)
                t_eager = bench(lambda: fp8(x), reps=50)
                t_compiled = bench(lambda: compiled(x), reps=50)
            row = {"linear": label, "rows": rows, "k": k, "n": n, "bf16_ms": t_bf16, "fp8_eager_ms": t_eager,
                   "fp8_compiled_ms": t_compiled, "rel_err": err, "per_step": per_step}
            rows_out.append(row)
            print(f"| {label} {k}→{n} | {rows} | {t_bf16:.4f} | {t_eager:.4f} | {t_compiled:.4f} | {err:.4f} | "
                  f"{per_step} × : {per_step * t_bf16:.2f} → {per_step * t_compiled:.2f} ms |")
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        meta = {"device": torch.cuda.get_device_name(), "torch": torch.__version__}
        (args.out / "probe_few_rows.json").write_text(json.dumps({"meta": meta, "rows": rows_out}, indent=1))


if __name__ == "__main__":
    main()
