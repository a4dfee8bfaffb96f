"""Probe (issue 18): forecast the model output in which space? velocity, denoised image or noise.

Target Speed on ``output`` forecasts what FLUX returns, the velocity v. A flow model's output fixes two more
quantities given the call's own input x_t (known on every call, skipped or not): the denoised image
x0 = x_t - sigma * v and the noise eps = x_t + (1 - sigma) * v. Forecasting x0 (or eps) over the computed calls and
turning it back into a velocity with the *current* x_t uses that free information: a skipped call's output then
follows the sampler's actual state, not only the history of outputs. The probe wraps the cache's ``output``
granularity in two ``DIFFUSION_MODEL`` wrappers (one inside the cache turning v into the forecast quantity, one
outside turning the forecast back), so the cache, its policy and its forecaster are today's.

Same cases and reference as benchmarks/fidelity.py (euler/simple, 28 steps, 128², fp32, PSNR of the decoded image
against the uncached run), Target Speed's even plan. ``blend`` is the granularity ``blocks+output`` (a skipped call
returns the mean of the ``blocks`` forecast's output and the ``output`` forecast), which came out of this probe.

    .venv/bin/python benchmarks/probes/probe_forecast_space.py --family flux-proxy --classes 8
"""
from __future__ import annotations

import argparse
from functools import partial

from closed_loop import ClosedLoop

from comfy.patcher_extension import WrappersMP

from fastlane.cachers.adapters import adapter_for
from fastlane.cachers.comfy_hooks import attach
from fastlane.cachers.forecast import ForecastSpec
from fastlane.cachers.policies import TargetSpeedPolicy, Window
from fastlane.cachers.session import StepCache
from fastlane.compilers.call_wrappers import transformer_options_of

# space -> (v -> forecast quantity, forecast quantity -> v), for a flow model (x_t = (1 - s) x0 + s eps, v = eps - x0)
SPACES = {
    "x0": (lambda x, s, v: x - s * v, lambda x, s, q: (x - q) / s),
    "eps": (lambda x, s, v: x + (1 - s) * v, lambda x, s, q: (q - x) / (1 - s)),
}


class Conversion:
    """The two wrappers of one space. On a computed call the inner one keeps the model's own velocity, and the outer
    one returns it as it is (exact, also where the conversion back divides by zero: eps at sigma 1)."""

    def __init__(self, space: str) -> None:
        self.to_space, self.from_space = SPACES[space]
        self.computed: tuple[int, object] | None = None

    def inner(self, executor, *args, **kwargs):
        v = executor(*args, **kwargs)
        self.computed = (id(args[0]), v)
        return self.to_space(args[0], _sigma(args, kwargs), v)

    def outer(self, executor, *args, **kwargs):
        self.computed = None
        q = executor(*args, **kwargs)
        if self.computed is not None and self.computed[0] == id(args[0]):
            return self.computed[1]
        return self.from_space(args[0], _sigma(args, kwargs), q)


def _sigma(args, kwargs) -> float:
    return float(transformer_options_of(args, kwargs)["sigmas"][0])


class SpaceLoop(ClosedLoop):
    def psnr_in(self, cache: StepCache, space: str) -> list[float]:
        if space in ("v", "blocks") or space.startswith("blend"):
            return self.psnr(cache)
        conversion = Conversion(space)
        outer = self.base.clone()
        outer.add_wrapper_with_key(WrappersMP.DIFFUSION_MODEL, "probe_from_space", conversion.outer)
        model = attach(outer, cache, adapter_for(outer))
        model.add_wrapper_with_key(WrappersMP.DIFFUSION_MODEL, "probe_to_space", conversion.inner)
        return [F_psnr(self, model, c) for c in self.cases]


def F_psnr(bench: ClosedLoop, model, case) -> float:
    import fidelity as F
    return F.fidelity(bench.sample(model, case), bench.reference[case])["psnr_db"]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--family", choices=["flux", "flux-proxy", "qwen-image", "z-image", "wan"], default="flux-proxy")
    p.add_argument("--classes", type=int, default=8)
    p.add_argument("--seeds", type=int, default=2)
    p.add_argument("--fractions", default="0.2,0.3,0.4")
    p.add_argument("--orders", default="1,2")
    p.add_argument("--spaces", default="blocks,v,x0,eps",
                   help="blocks, v (output), x0, eps, blend (blocks+output: the mean of blocks and v), blendW "
                        "(blocks+output with the whole-output forecast's share W, e.g. blend0.7)")
    args = p.parse_args()
    bench = SpaceLoop(args.family, args.classes, args.seeds)
    print(f"# {bench.title}, Target Speed plan")
    print("| fraction | order | space | PSNR dB | min dB | mean / lowest case minus blocks, dB |\n"
          "|---:|---:|---|---:|---:|---|")
    for fraction in map(float, args.fractions.split(",")):
        for order in map(int, args.orders.split(",")):
            blocks = None
            for space in args.spaces.split(","):
                policy = partial(TargetSpeedPolicy, fraction, Window(), 1, True, 0.0)
                blend = space.startswith("blend")
                granularity = "blocks" if space == "blocks" else "blocks+output" if blend else "output"
                weight = float(space[len("blend"):] or 0.5) if blend else 0.5
                cache = StepCache(policy, ForecastSpec("taylor", order=order), granularity, f"{space} {order}",
                                  blend_weight=weight)
                scores = bench.psnr_in(cache, space)
                blocks = scores if space == "blocks" else blocks
                delta = "" if blocks is None or space == "blocks" else \
                    "{:+.2f} / {:+.2f}".format(*(f(a - b for a, b in zip(scores, blocks)) for f in (_mean, min)))
                print(f"| {fraction:g} | {order} | {space} | {_mean(scores):.2f} | {min(scores):.2f} | {delta} |",
                      flush=True)


def _mean(values) -> float:
    values = list(values)
    return sum(values) / len(values)


if __name__ == "__main__":
    main()
