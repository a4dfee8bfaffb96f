"""Fidelity of every cacher setting on the trained demo model (CPU): how far the image moves, per computed fraction.

For each setting, samples the demo FLUX-class model (ComfyUI's real sampling loop, euler, 28 steps) for several
classes and seeds, and compares the decoded images with the uncached run of the same seed: PSNR and SSIM
(scikit-image). The computed fraction is counted from real block calls, so a cached step that secretly computed
would show. Writes a markdown table and JSON (and prints the table).

    .venv/bin/python benchmarks/fidelity.py --out docs            # full grid (a few minutes on 2 cores)
    .venv/bin/python benchmarks/fidelity.py --quick               # a handful of rows
"""
from __future__ import annotations

import argparse
import datetime
import json
import platform
import sys
import time
from pathlib import Path

PACK = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(PACK / "tests"))

import comfy_host  # noqa: E402  (brings ComfyUI into this process, with the pack loaded)

comfy_host.load()

import torch  # noqa: E402

import comfy.sample  # noqa: E402
import nodes  # noqa: E402
from fastlane.demo import codec, model as demo  # noqa: E402
from fastlane.measure.report import fidelity  # noqa: E402

NODE = nodes.NODE_CLASS_MAPPINGS
ALL = dict(start=0.0, end=1.0)


def grid(quick: bool) -> list[tuple[str, callable]]:
    rows = [("no cache", lambda m: m)]
    for i in (2, 3, 4):
        for g in ("blocks", "attention_mlp", "output"):
            rows.append((f"FORA interval {i} ({g})", lambda m, i=i, g=g: NODE["FastlaneFORA"].execute(
                model=m, interval=i, granularity=g, **ALL).result[0]))
        for order in (1, 2):
            rows.append((f"TaylorSeer interval {i} order {order} (blocks)", lambda m, i=i, o=order: NODE["FastlaneTaylorSeer"].execute(
                model=m, interval=i, order=o, warmup_steps=2, granularity="blocks", **ALL).result[0]))
    for t in (0.05, 0.1, 0.2, 0.4):
        rows.append((f"Adaptive threshold {t} order 1 (blocks)", lambda m, t=t: NODE["FastlaneAdaptiveCache"].execute(
            model=m, threshold=t, max_skips=3, order=1, warmup_steps=2, granularity="blocks", **ALL).result[0]))
    for f in (0.5, 0.4, 0.3, 0.25):
        for order in (0, 1, 2):
            rows.append((f"Target {f} order {order} (blocks)", lambda m, f=f, o=order: NODE["FastlaneTargetSpeedCache"].execute(
                model=m, compute_fraction=f, order=o, granularity="blocks", **ALL).result[0]))
    for name in ("EasyCache", "LazyCache"):
        rows.append((f"core {name} (defaults)", lambda m, n=name: NODE[n].execute(
            model=m, reuse_threshold=0.2, start_percent=0.15, end_percent=0.95, verbose=False).result[0]))
    if quick:
        keep = ("no cache", "FORA interval 2 (blocks)", "TaylorSeer interval 3 order 2 (blocks)",
                "Target 0.4 order 1 (blocks)", "Adaptive threshold 0.1 order 1 (blocks)", "core EasyCache (defaults)")
        rows = [r for r in rows if r[0] in keep]
    return rows


def sample(model, class_name: str, seed: int, steps: int, size: int) -> torch.Tensor:
    latent = torch.zeros(1, 16, size // 8, size // 8)
    noise = comfy.sample.prepare_noise(latent, seed)
    positive = demo.conditioning(class_name)
    negative = demo.conditioning(demo.UNCONDITIONAL)
    out = comfy.sample.sample(model, noise, steps, 1.0, "euler", "simple", positive, negative, latent, seed=seed,
                              disable_pbar=True)
    return codec.decode(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=28)
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--seeds", type=int, default=2)
    parser.add_argument("--classes", type=int, default=4)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()

    base = demo.load_demo_patcher()
    flux = base.model.diffusion_model
    blocks = [*flux.double_blocks, *flux.single_blocks]
    counter = {"calls": 0}
    hooks = [b.register_forward_pre_hook(lambda *_: counter.__setitem__("calls", counter["calls"] + 1)) for b in blocks]
    cases = [(c, s) for c in demo.class_names()[: args.classes] for s in range(args.seeds)]
    reference = {case: sample(base, *case, args.steps, args.size) for case in cases}

    results = []
    for name, make in grid(args.quick):
        model = make(base)
        counter["calls"] = 0
        t0 = time.perf_counter()
        images = {case: sample(model, *case, args.steps, args.size) for case in cases}
        seconds = time.perf_counter() - t0
        computed = counter["calls"] / len(blocks) / (args.steps * len(cases))
        scores = [fidelity(images[c], reference[c]) for c in cases]
        psnr = [s["psnr_db"] for s in scores]
        ssim = [s["ssim"] for s in scores]
        row = {"setting": name, "computed_fraction": round(computed, 3),
               "psnr_db": round(sum(psnr) / len(psnr), 2) if name != "no cache" else None,
               "ssim": round(sum(ssim) / len(ssim), 4), "cpu_seconds": round(seconds, 2)}
        results.append(row)
        print(f"{name:48s} computed {row['computed_fraction']:.3f}  PSNR {row['psnr_db']}  SSIM {row['ssim']}", flush=True)
    for h in hooks:
        h.remove()

    meta = {"date": datetime.date.today().isoformat(), "command": "python " + " ".join(sys.argv),
            "model": "Fastlane demo FLUX-class model (demo/weights, trained by scripts/train_demo.py)",
            "sampling": f"euler/simple, {args.steps} steps, {args.size}x{args.size}, guidance 3.5, cfg 1",
            "cases": f"{args.classes} classes x {args.seeds} seeds", "torch": torch.__version__,
            "python": platform.python_version()}
    lines = [f"| setting | computed fraction | PSNR dB vs no cache | SSIM |", "|---|---|---|---|"]
    lines += [f"| {r['setting']} | {r['computed_fraction']:.3f} | {r['psnr_db'] if r['psnr_db'] is not None else '—'} | {r['ssim']} |"
              for r in results]
    table = "\n".join(lines)
    print(table)
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "fidelity.json").write_text(json.dumps({"meta": meta, "rows": results}, indent=1))
        (args.out / "fidelity_table.md").write_text(
            "\n".join(f"- {k}: {v}" for k, v in meta.items()) + "\n\n" + table + "\n")


if __name__ == "__main__":
    main()
