"""How a trained proxy's features move along a run, and how well each forecaster predicts them (open loop, CPU).

Samples the uncached model (ComfyUI's real sampler) and records, at every step, the three features the cachers can
forecast: the block stack's residual (``blocks``), the last block's hidden state (``last_block``) and the model output
(``output``). Then it prints:

- the relative change of each feature per step (||F[t+1] - F[t]|| / ||F[t]||): do features change fast early and
  slowly late, as on real diffusion transformers?
- the open-loop forecast error of each forecaster on a computed-step plan: every skipped step is forecast from the
  computed steps before it (the true features, so errors do not feed back), relative L2, averaged over skipped steps
  and cases, for Taylor orders 0-2 and Spectrum variants, in the step and sigma coordinates.

    .venv/bin/python benchmarks/probes/probe_feature_dynamics.py --family flux-proxy --classes 4 --fraction 0.3
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

PACK = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(PACK / "tests"))

import comfy_host  # noqa: E402

comfy_host.load()

import torch  # noqa: E402

import comfy.sample  # noqa: E402
import comfy.samplers  # noqa: E402
from fastlane.cachers.forecast import ForecastSpec  # noqa: E402
from fastlane.cachers.policies import TargetSpeedPolicy  # noqa: E402
from fastlane.demo import model as demo, proxy  # noqa: E402

FAMILIES = {"flux": demo, "flux-proxy": proxy}


def trajectory(module, class_name: str, seed: int, steps: int, size: int = 128) -> tuple[dict, list[float]]:
    """Per-step features of an uncached run, and the schedule's sigmas."""
    patcher = module.load_demo_patcher(dtype=torch.float32)
    flux = patcher.model.diffusion_model
    feats: dict[str, list[torch.Tensor]] = {"blocks": [], "last_block": [], "output": []}
    entry: list[torch.Tensor] = []

    def keep_last_block(_module, _args, out: torch.Tensor) -> None:  # (returns None: the output stays as it is)
        feats["last_block"].append(out.clone())
        feats["blocks"].append(out - entry.pop())

    hooks = [
        flux.double_blocks[0].register_forward_pre_hook(
            lambda _m, args, kwargs: entry.append(torch.cat((kwargs["txt"], kwargs["img"]), 1).clone()),
            with_kwargs=True),
        flux.single_blocks[-1].register_forward_hook(keep_last_block),
        flux.final_layer.register_forward_hook(lambda _m, _a, out: feats["output"].append(out.clone())),
    ]
    sigmas: list[float] = []
    try:
        latent = torch.zeros(1, 16, size // 8, size // 8)
        noise = comfy.sample.prepare_noise(latent, seed)
        positive = module.conditioning(class_name)
        comfy.sample.sample(patcher, noise, steps, 1.0, "euler", "simple", positive, positive, latent, seed=seed,
                            disable_pbar=True)
        sigmas = comfy.samplers.calculate_sigmas(patcher.get_model_object("model_sampling"), "simple",
                                                 steps).tolist()
    finally:
        for h in hooks:
            h.remove()
    return feats, sigmas


def open_loop_error(values: list[torch.Tensor], plan: list[int], spec: ForecastSpec, coords: list[float],
                    domain: tuple[float, float]) -> list[float]:
    """Relative L2 error of each skipped step's forecast from the true computed features before it."""
    forecaster = spec.make(domain)
    errors = []
    for step, value in enumerate(values):
        if step in plan:
            forecaster.update(coords[step], value.double())
        else:
            guess = forecaster.predict(coords[step])
            errors.append(float((guess - value.double()).norm() / value.double().norm()))
    return errors


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--family", choices=list(FAMILIES), default="flux-proxy")
    parser.add_argument("--classes", type=int, default=4)
    parser.add_argument("--seeds", type=int, default=1)
    parser.add_argument("--steps", type=int, default=28)
    parser.add_argument("--fraction", type=float, default=0.3)
    args = parser.parse_args()
    module = FAMILIES[args.family]
    cases = [(c, s) for c in module.class_names()[: args.classes] for s in range(args.seeds)]
    runs = [trajectory(module, c, s, args.steps) for c, s in cases]

    print(f"# {args.family}: relative change per step (mean over {len(cases)} cases)")
    for name in ("blocks", "last_block", "output"):
        rel = torch.tensor([[float((f[name][t + 1] - f[name][t]).norm() / f[name][t].norm())
                             for t in range(args.steps - 1)] for f, _ in runs]).mean(0)
        print(f"{name:11s} " + " ".join(f"{v:.3f}" for v in rel.tolist()))

    policy = TargetSpeedPolicy(args.fraction)
    policy.begin(args.steps)
    plans = {"even": sorted(policy.plan)}
    grown = TargetSpeedPolicy(args.fraction, growth=0.5)
    grown.begin(args.steps)
    plans["growing 0.5"] = sorted(grown.plan)
    specs = {
        "Taylor 0 (reuse)": ForecastSpec("taylor", order=0),
        "Taylor 1": ForecastSpec("taylor", order=1),
        "Taylor 2": ForecastSpec("taylor", order=2),
        "Taylor 2 in sigma": ForecastSpec("taylor", order=2, coordinate="sigma"),
        "Spectrum M4 l0.1 w0.5": ForecastSpec("spectrum"),
        "Spectrum M4 l0.1 w1": ForecastSpec("spectrum", blend=1.0),
        "Spectrum M4 l0 w1": ForecastSpec("spectrum", ridge=0.0, blend=1.0),
        "Spectrum M2 l0 w1": ForecastSpec("spectrum", degree=2, ridge=0.0, blend=1.0),
        "Spectrum M4 l0.1 w1 sigma": ForecastSpec("spectrum", blend=1.0, coordinate="sigma"),
        "Spectrum M3 l0.01 w1 half-life 0.2": ForecastSpec("spectrum", degree=3, ridge=0.01, blend=1.0,
                                                           half_life=0.2),
    }
    for plan_name, plan in plans.items():
        print(f"\n# open-loop relative forecast error, plan {plan_name} {plan} (mean over skipped steps, cases)")
        print(f"{'forecaster':36s} " + " ".join(f"{n:>11s}" for n in ("blocks", "last_block", "output")))
        for label, spec in specs.items():
            cells = []
            for name in ("blocks", "last_block", "output"):
                errs = []
                for feats, sigmas in runs:
                    coords = list(range(args.steps + 1)) if spec.coordinate == "step" else sigmas
                    domain = (coords[0], coords[-1])
                    errs += open_loop_error(feats[name], plan, spec, coords, domain)
                cells.append(sum(errs) / len(errs))
            print(f"{label:36s} " + " ".join(f"{c:11.4f}" for c in cells))


if __name__ == "__main__":
    main()
