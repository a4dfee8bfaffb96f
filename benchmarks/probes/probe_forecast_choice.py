"""Probe (issue 18): can a forecast that checks itself beat Target Speed's fixed Taylor order 2?

At every computed step the true feature is known, so each candidate forecast made from the points before it can be
scored against it for free (no extra model call). Candidates here, all on Target Speed's even plan and ``blocks``:

- ``fixed k``: Taylor order ``k`` (order 2 is today's Target Speed);
- ``damped g``: order 2 with its second-difference term scaled by ``g`` (``g`` 0.5 is the mean of orders 1 and 2);
- ``checked``: orders 1 and 2 scored at each computed step by their relative error on the new point (a running
  mean over the run), and the next gap forecast with the order that has scored best so far.

Same cases and reference as benchmarks/fidelity.py (euler/simple, 28 steps, 128², fp32, PSNR of the decoded image
against the uncached run).

    .venv/bin/python benchmarks/probes/probe_forecast_choice.py --family flux-proxy --classes 8
"""
from __future__ import annotations

import argparse
from dataclasses import dataclass
from functools import partial

from closed_loop import ClosedLoop

import torch

from fastlane.cachers.forecast import ForecastSpec, TaylorForecaster
from fastlane.cachers.policies import TargetSpeedPolicy, Window
from fastlane.cachers.session import StepCache


class DampedTaylor(TaylorForecaster):
    """Taylor order 2 with the second-difference term scaled by ``gain``."""

    def __init__(self, gain: float) -> None:
        super().__init__(2)
        self.gain = gain

    def predict(self, position: float) -> torch.Tensor:
        out = self.differences[0].clone()
        if len(self.differences) > 1:
            out.add_(self.differences[1], alpha=position - self.positions[0])
        if len(self.differences) > 2:
            w = (position - self.positions[0]) * (position - self.positions[1]) * self.gain
            out.add_(self.differences[2], alpha=w)
        return out


def truncated(taylor: TaylorForecaster, order: int, position: float) -> torch.Tensor:
    """The order-``order`` Newton forecast from the same divided differences."""
    out = taylor.differences[0].clone()
    weight = 1.0
    for k in range(1, min(order, len(taylor.differences) - 1) + 1):
        weight *= position - taylor.positions[k - 1]
        out.add_(taylor.differences[k], alpha=weight)
    return out


class CheckedTaylor(TaylorForecaster):
    """Orders 1..``top`` scored on each new computed point; forecasts with the best running score."""

    def __init__(self, top: int = 2) -> None:
        super().__init__(top)
        self.errors = {k: [] for k in range(1, top + 1)}
        self.choices: list[int] = []

    def update(self, position: float, value: torch.Tensor) -> None:
        if self.positions and position != self.positions[0]:
            scale = value.float().norm().clamp_min(1e-12)
            for k in self.errors:
                if len(self.differences) > k:  # order k is fully determined by the points so far
                    error = (truncated(self, k, position).float() - value.float()).norm() / scale
                    self.errors[k].append(float(error))
        super().update(position, value)

    def choice(self) -> int:
        scored = {k: sum(e) / len(e) for k, e in self.errors.items() if e}
        if not scored:
            return self.order
        return min(scored, key=scored.get)

    def predict(self, position: float) -> torch.Tensor:
        order = self.choice()
        self.choices.append(order)
        return truncated(self, order, position)


@dataclass(frozen=True)
class ProbeSpec(ForecastSpec):
    variant: str = "fixed"
    gain: float = 1.0

    def make(self, domain: tuple[float, float]):
        if self.variant == "damped":
            return DampedTaylor(self.gain)
        if self.variant == "checked":
            return CheckedTaylor(self.order)
        return TaylorForecaster(self.order)


VARIANTS = {
    "fixed 1": ProbeSpec(order=1),
    "fixed 2": ProbeSpec(order=2),
    "damped 0.5": ProbeSpec(order=2, variant="damped", gain=0.5),
    "damped 0.75": ProbeSpec(order=2, variant="damped", gain=0.75),
    "checked 1-2": ProbeSpec(order=2, variant="checked"),
    "checked 1-3": ProbeSpec(order=3, variant="checked"),
}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--family", choices=["flux", "flux-proxy"], default="flux-proxy")
    p.add_argument("--classes", type=int, default=8)
    p.add_argument("--seeds", type=int, default=2)
    p.add_argument("--fractions", default="0.2,0.3,0.4")
    p.add_argument("--variants", default=",".join(VARIANTS))
    p.add_argument("--granularity", default="blocks", help="blocks, last_block or output (comma list)")
    args = p.parse_args()
    bench = ClosedLoop(args.family, args.classes, args.seeds)
    print(f"# {bench.title}, Target Speed plan")
    print("| fraction | forecast | PSNR dB | min dB |\n|---:|---|---:|---:|")
    for fraction in map(float, args.fractions.split(",")):
        for name, granularity in [(v, g) for g in args.granularity.split(",") for v in args.variants.split(",")]:
            policy = partial(TargetSpeedPolicy, fraction, Window(), 1, True, 0.0)
            scores = bench.psnr(StepCache(policy, VARIANTS[name], granularity, name))
            print(f"| {fraction:g} | {name} ({granularity}) | {sum(scores) / len(scores):.2f} | {min(scores):.2f} |", flush=True)


if __name__ == "__main__":
    main()
