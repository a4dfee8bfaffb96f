#!/usr/bin/env python
"""Render the README's first picture, ``docs/images/demo-compare.png``: the shipped demo workflow
(``workflows/api/fastlane-demo-compare.api.json``) run by the real ComfyUI in this process, its plain image and its
Fastlane image side by side (enlarged, nearest-neighbour) beside the Benchmark Report's latency plot.

Made by a script, not by hand, so it always shows what the shipped workflow gives.

    python scripts/make_readme_figure.py [--out docs/images/demo-compare.png]
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

PACK_DIR = Path(__file__).resolve().parents[1]
WORKFLOW = PACK_DIR / "workflows" / "api" / "fastlane-demo-compare.api.json"
SIDE = 360  # each sample, enlarged from 128 px
GAP = 16
CAPTION = 28


def _pil(image) -> Image.Image:
    """The first image of a ComfyUI IMAGE tensor (B, H, W, 3 in 0..1) as a PIL image."""
    return Image.fromarray((image[0].clamp(0, 1).numpy() * 255).round().astype(np.uint8))


def run_workflow() -> tuple[dict, dict]:
    """The API workflow and its outputs, run by ComfyUI's executor with the pack loaded."""
    sys.path.insert(0, str(PACK_DIR / "tests"))
    from comfy_host import GraphRunner, load

    load()
    prompt = json.loads(WORKFLOW.read_text())
    return prompt, GraphRunner().run(prompt)["outputs"]


def compose(baseline: Image.Image, fastlane: Image.Image, plot: Image.Image, captions: tuple[str, str]) -> Image.Image:
    """baseline | fastlane | plot on white, each sample captioned above, the plot at its own size."""
    height = max(SIDE + CAPTION, plot.height)
    out = Image.new("RGB", (2 * SIDE + plot.width + 3 * GAP, height + 2 * GAP), "white")
    draw = ImageDraw.Draw(out)
    for k, (image, caption) in enumerate(zip((baseline, fastlane), captions)):
        x = GAP + k * (SIDE + GAP)
        draw.text((x, GAP + 2), caption, fill="black", font=ImageFont.load_default(size=16))
        out.paste(image.resize((SIDE, SIDE), Image.NEAREST), (x, GAP + CAPTION))
    out.paste(plot, (2 * (SIDE + GAP) + GAP, GAP))
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=PACK_DIR / "docs" / "images" / "demo-compare.png")
    args = parser.parse_args(argv)
    prompt, outputs = run_workflow()
    by_prefix = {n["inputs"]["filename_prefix"]: n["inputs"]["images"][0] for n in prompt.values()
                 if n["class_type"] == "SaveImage"}
    report_id = next(i for i, n in prompt.items() if n["class_type"] == "FastlaneBenchmarkReport")
    subject = next(n["inputs"]["subject"] for n in prompt.values() if n["class_type"] == "FastlaneDemoPrompt")
    result = json.loads(outputs[report_id][2])
    captions = ("plain: every step computed",
                f"Fastlane: {len(result['model']['computed_steps'])}/{result['model']['steps']} steps computed")
    figure = compose(_pil(outputs[by_prefix["fastlane/demo_baseline"]][0]),
                     _pil(outputs[by_prefix["fastlane/demo_fastlane"]][0]), _pil(outputs[report_id][1]), captions)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    figure.save(args.out, optimize=True)
    print(f"wrote {args.out.relative_to(PACK_DIR) if args.out.is_relative_to(PACK_DIR) else args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
