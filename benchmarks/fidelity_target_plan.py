"""Where should a target-speed cache put its computed steps? Fixed plans compared on the trained demo model (CPU).

Each variant computes the same number of steps (round(fraction * 28)) with the Target Speed policy's fixed plan:
``warmup`` leading steps, then the rest spread evenly, ending on the last step (``last``) or centred. Same protocol
as benchmarks/fidelity.py (4 classes x 2 seeds, 128x128, euler/simple 28 steps; PSNR/SSIM vs the uncached image).
The policy's defaults (warmup 1, last True) come from this table: docs/fidelity/target_plan.txt.

    .venv/bin/python benchmarks/fidelity_target_plan.py | tee docs/fidelity/target_plan.txt
"""
import sys
from functools import partial
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import fidelity as F  # noqa: E402  (loads ComfyUI with the pack)

import torch  # noqa: E402

from fastlane.cachers.policies import TargetSpeedPolicy, Window  # noqa: E402
from fastlane.nodes import cache_nodes  # noqa: E402

torch.set_num_threads(1)
FLUX = F.FAMILIES["flux"]
demo = FLUX.module
base = demo.load_demo_patcher()
cases = [(c, s) for c in demo.class_names()[:4] for s in range(2)]
ref = {c: F.sample(FLUX, base, *c, 28, 128) for c in cases}


def score(model) -> tuple[float, float]:
    imgs = {c: F.sample(FLUX, model, *c, 28, 128) for c in cases}
    sc = [F.fidelity(imgs[c], ref[c]) for c in cases]
    return sum(s["psnr_db"] for s in sc) / len(sc), sum(s["ssim"] for s in sc) / len(sc)


for f in (0.4, 0.3):
    for order in (1, 2):
        for w in (1, 2, 3):
            for last in (True, False):
                if w == 3 and order == 1:
                    continue
                pol = partial(TargetSpeedPolicy, f, Window(0, 1), warmup=w, last=last)
                m = cache_nodes._cached(base, pol, order, "blocks", "t").result[0]
                p, s = score(m)
                print(f"target {f} order {order} warmup {w} last {last}: PSNR {p:.2f} SSIM {s:.4f}", flush=True)
