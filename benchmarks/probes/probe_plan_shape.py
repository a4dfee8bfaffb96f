"""Probe (issue 18): does Target Speed's plan gain from computing more steps at both ends of the run?

Both FLUX proxies' features change fastest at the start and the end of a run (probe_feature_dynamics.py). Target
Speed plans evenly: step 0, then the budget spread evenly up to the last step. Here the spread is blended with a
cosine spacing (dense at both ends): position ``(1 - ends) * s + ends * (1 - cos(pi * s)) / 2`` for ``s = j / k``;
``ends`` 0 is today's even plan. Same Taylor order-2 forecast on ``blocks``, same cases and reference as
benchmarks/fidelity.py (euler/simple, 28 steps, 128², fp32, PSNR of the decoded image against the uncached run).

    .venv/bin/python benchmarks/probes/probe_plan_shape.py --family flux-proxy --classes 8 --ends 0,0.1,0.2,0.3
"""
from __future__ import annotations

import argparse
import math
from functools import partial

from closed_loop import ClosedLoop

from fastlane.cachers.policies import TargetSpeedPolicy, Window
from fastlane.cachers.session import StepCache


def ends_plan(steps: int, budget: int, ends: float) -> set[int]:
    """Step 0 plus ``budget - 1`` steps up to the last, spaced between even (``ends`` 0) and cosine (1)."""
    k, free = budget - 1, list(range(1, steps))
    picked: list[int] = []
    for j in range(1, k + 1):
        s = j / k
        position = (1 - ends) * s + ends * (1 - math.cos(math.pi * s)) / 2
        index = max(round(len(free) * position) - 1, picked[-1] + 1 if picked else 0)
        picked.append(min(index, len(free) - 1 - (k - j)))
    return {0} | {free[i] for i in picked}


class EndsPlan(TargetSpeedPolicy):
    def __init__(self, fraction: float, ends: float) -> None:
        super().__init__(fraction, Window(), 1, True, 0.0)
        self.ends = ends

    def begin(self, num_steps: int, step_sizes: list[float] | None = None) -> None:
        super().begin(num_steps)
        self.plan = ends_plan(num_steps, min(num_steps, max(1, round(self.fraction * num_steps))), self.ends)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--family", choices=["flux", "flux-proxy"], default="flux-proxy")
    p.add_argument("--classes", type=int, default=8)
    p.add_argument("--seeds", type=int, default=2)
    p.add_argument("--fractions", default="0.15,0.2,0.25,0.3,0.35,0.4,0.5")
    p.add_argument("--ends", default="0,0.1,0.2,0.3")
    args = p.parse_args()
    bench = ClosedLoop(args.family, args.classes, args.seeds)
    print(f"# {bench.title}, Taylor order 2 on blocks")
    print("| fraction | ends | plan | PSNR dB |\n|---:|---:|---|---:|")
    for fraction in map(float, args.fractions.split(",")):
        for ends in map(float, args.ends.split(",")):
            scores = bench.psnr(StepCache(partial(EndsPlan, fraction, ends), 2, "blocks", f"ends {ends:g}"))
            plan = sorted(ends_plan(28, round(fraction * 28), ends))
            print(f"| {fraction:g} | {ends:g} | {plan} | {sum(scores) / len(scores):.2f} |", flush=True)


if __name__ == "__main__":
    main()
