"""Fidelity of every cacher setting on a trained demo model (CPU): how far the image moves, per computed fraction.

For each setting, samples a demo model (ComfyUI's real sampling loop) for several classes and seeds, and compares
the decoded images with the uncached run of the same seed: PSNR and SSIM (scikit-image). The computed fraction is
counted from real calls, so a cached step that secretly computed would show. Writes a markdown table and JSON (and
prints the table).

- ``--family flux`` (default): the FLUX-class demo, euler/simple, 28 steps, cfg 1 (guidance 3.5); computed fraction =
  transformer-block calls / those of the uncached run (which calls every block once per step).
- ``--family sdxl``: the SDXL-class demo UNet, euler/normal, 30 steps, cfg 5 against the 'none' class; computed
  fraction = full UNet passes (middle-block calls) / those of the uncached run, and "blocks run" = all UNet block
  calls (input, middle, output) / those of the uncached run, which shows the shallow blocks a DeepCache step still
  runs. Outputs are named fidelity_sdxl.json / fidelity_sdxl_table.md.
- ``--family qwen-image`` / ``--family z-image``: the Qwen-Image- and Z-Image-class demo models (demo/qwen.py,
  demo/zimage.py; issue 19), euler/simple, 28 steps (Qwen-Image: cfg 2.5 against the 'none' class; Z-Image: cfg 1;
  ``--steps 8`` for Z-Image Turbo's step count); the grid of ``dit_grid``; computed fraction = main transformer
  block calls / those of the uncached run; for Z-Image "blocks run" also counts the two refiner stacks, which run on
  every step. Outputs: fidelity_qwen-image*, fidelity_z-image* (a non-default step count is in the name: _8steps).
- ``--family wan``: the Wan 2.1 T2V-class demo model (demo/wan.py), a text-to-video model sampled as trained: 3 latent
  frames (``EmptyHunyuanLatentVideo`` length 9) of a panning clip, euler/simple, 28 steps, cfg 4 against 'none';
  ``dit_grid``; every latent frame is decoded and the whole clip compared (PSNR/SSIM averaged over the frames).
  Outputs: fidelity_wan*.

    .venv/bin/python benchmarks/fidelity.py --out docs/fidelity                   # FLUX grid (minutes on 2 cores)
    .venv/bin/python benchmarks/fidelity.py --family sdxl --out docs/fidelity     # SDXL grid
    .venv/bin/python benchmarks/fidelity.py --family z-image --steps 8 --out docs/fidelity
    .venv/bin/python benchmarks/fidelity.py --quick                               # a handful of rows
"""
from __future__ import annotations

import argparse
import datetime
import json
import platform
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

PACK = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(PACK / "tests"))

import comfy_host  # noqa: E402  (brings ComfyUI into this process, with the pack loaded)

# --device cuda samples on the GPU (the proxy's duel in minutes instead of an hour on 2 CPU cores); read before
# ComfyUI's model management is imported, which picks its device once.
comfy_host.load(cpu="cuda" not in sys.argv[sys.argv.index("--device") + 1:][:1] if "--device" in sys.argv else True)

import torch  # noqa: E402

import comfy.sample  # noqa: E402
import nodes  # noqa: E402
from fastlane.demo import codec, model as demo, proxy, qwen, sdxl, wan, zimage  # noqa: E402
from fastlane.measure.report import fidelity  # noqa: E402

NODE = nodes.NODE_CLASS_MAPPINGS
ALL = dict(start=0.0, end=1.0)


def flux_grid(quick: bool) -> list[tuple[str, callable]]:
    """The FLUX settings (the grid of docs/FIDELITY.md's first table)."""
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


def sdxl_grid(quick: bool) -> list[tuple[str, callable]]:
    """The SDXL settings: DeepCache, FORA and TaylorSeer on the deep feature or the whole output, adaptive,
    target speed, and ComfyUI core's EasyCache/LazyCache at their defaults."""
    rows = [("no cache", lambda m: m)]
    for i in (3, 5):
        for b in (0, 1):
            rows.append((f"DeepCache interval {i} branch {b}", lambda m, i=i, b=b: NODE["FastlaneDeepCache"].execute(
                model=m, interval=i, branch=b, **ALL).result[0]))
    for i in (2, 3):
        for g in ("deep", "output"):
            rows.append((f"FORA interval {i} ({g})", lambda m, i=i, g=g: NODE["FastlaneFORA"].execute(
                model=m, interval=i, granularity=g, **ALL).result[0]))
    for order in (2, 1):
        label = "TaylorSeer defaults: interval 3 order 2 (deep)" if order == 2 else "TaylorSeer interval 3 order 1 (deep)"
        rows.append((label, lambda m, o=order: NODE["FastlaneTaylorSeer"].execute(
            model=m, interval=3, order=o, warmup_steps=2, granularity="auto", **ALL).result[0]))
    for t in (0.05, 0.1, 0.2):
        rows.append((f"Adaptive threshold {t} order 1 (deep)", lambda m, t=t: NODE["FastlaneAdaptiveCache"].execute(
            model=m, threshold=t, max_skips=3, order=1, warmup_steps=2, granularity="auto", **ALL).result[0]))
    for f in (0.4, 0.3):
        for order in (2, 1):
            label = f"Target {f} order {order} (deep{', default order' if order == 2 else ''})"
            rows.append((label, lambda m, f=f, o=order: NODE["FastlaneTargetSpeedCache"].execute(
                model=m, compute_fraction=f, order=o, granularity="auto", **ALL).result[0]))
    for name in ("EasyCache", "LazyCache"):
        rows.append((f"core {name} (defaults)", lambda m, n=name: NODE[n].execute(
            model=m, reuse_threshold=0.2, start_percent=0.15, end_percent=0.95, verbose=False).result[0]))
    if quick:
        keep = ("no cache", "DeepCache interval 3 branch 0", "FORA interval 2 (output)",
                "TaylorSeer defaults: interval 3 order 2 (deep)", "Target 0.4 order 2 (deep, default order)",
                "core EasyCache (defaults)")
        rows = [r for r in rows if r[0] in keep]
    return rows


def dit_grid(quick: bool, granularity: str = "blocks") -> list[tuple[str, callable]]:
    """The Qwen-Image / Z-Image / Wan settings (issue 19): compute-every-step controls (must be identical to no cache),
    Target Speed orders 0-2 at 0.2/0.3/0.4/0.5 on the family's block granularity and on ``last_block``, the Spectrum node
    at its defaults, and core EasyCache at its defaults and threshold 0.1 (each also with its input copied: see
    ``easycache_input_copied``)."""
    rows = [("no cache", lambda m: m),
            (f"FORA interval 1 ({granularity}, computes every step)", lambda m: NODE["FastlaneFORA"].execute(
                model=m, interval=1, granularity=granularity, **ALL).result[0]),
            (f"Target 1.0 order 2 ({granularity}, computes every step)", lambda m: NODE[
                "FastlaneTargetSpeedCache"].execute(model=m, compute_fraction=1.0, order=2, granularity=granularity,
                                                    **ALL).result[0])]
    for g in (granularity, "last_block"):
        for f in (0.5, 0.4, 0.3, 0.2):  # (0.4: at 8 steps 0.3 and 0.2 both round to 2 computed steps, 0.4 to 3)
            for order in (0, 1, 2):
                rows.append((f"Target {f} order {order} ({g})", lambda m, f=f, o=order, g=g: NODE[
                    "FastlaneTargetSpeedCache"].execute(model=m, compute_fraction=f, order=o, granularity=g,
                                                        **ALL).result[0]))
    for f in (0.3, 0.2):
        rows.append((f"Spectrum {f} (node defaults)", lambda m, f=f: spectrum_node(m, f, "auto", **SPECTRUM_TUNED)))
    for label, t in (("defaults", 0.2), ("threshold 0.1", 0.1)):
        rows.append((f"core EasyCache ({label})", lambda m, t=t: NODE["EasyCache"].execute(
            model=m, reuse_threshold=t, start_percent=0.15, end_percent=0.95, verbose=False).result[0]))
        rows.append((f"core EasyCache ({label}), input copied (probe)", lambda m, t=t: easycache_input_copied(m, t)))
    if quick:
        keep = ("no cache", f"Target 1.0 order 2 ({granularity}, computes every step)",
                f"Target 0.3 order 2 ({granularity})", "Spectrum 0.3 (node defaults)", "core EasyCache (defaults)")
        rows = [r for r in rows if r[0] in keep]
    return rows


FRACTIONS = (0.15, 0.2, 0.3, 0.4, 0.5, 0.6)
CORE_THRESHOLDS = (0.05, 0.1, 0.2, 0.3, 0.5)


# Spectrum as published (the official scripts' w = 0.5; warm-up 2, not 5, for 28 steps), the duel's baseline; the
# node's defaults came out of this grid ("Spectrum tuned" rows).
SPECTRUM_DEFAULTS = dict(degree=4, ridge=0.1, blend=0.5, warmup_steps=2, growth=0.5, coordinate="step")
SPECTRUM_TUNED = dict(degree=2, ridge=0.01, blend=0.5, warmup_steps=1, growth=0.0, coordinate="step")


def spectrum_node(m, fraction: float, granularity: str, **kw):
    settings = {**SPECTRUM_DEFAULTS, **kw}
    extra = {k: settings.pop(k) for k in ("half_life", "penalise_level") if k in settings}
    model = NODE["FastlaneSpectrumCache"].execute(model=m, compute_fraction=fraction, granularity=granularity,
                                                  **settings, **ALL).result[0]
    if extra:  # research knobs not on the node: set on the attached cache's forecast spec
        import dataclasses
        cache = model.model_options["transformer_options"]["fastlane_cache"]
        cache.forecast = dataclasses.replace(cache.forecast, **extra)
    return model


def duel_grid(quick: bool, deep: str = "blocks") -> list[tuple]:
    """Issue 18's duel: every cacher over computed fractions 0.15-0.6, with the same subjects and seeds, as
    ``(setting, make, method)``; ``method`` groups a curve in the plot. ``deep`` is the family's block granularity
    (FLUX: blocks; SDXL: deep)."""
    rows: list[tuple] = [("no cache", lambda m: m, "none")]
    fractions = (0.2, 0.3) if quick else FRACTIONS
    for f in fractions:
        for order in (0, 1, 2, 3):
            method = "FORA (reuse)" if order == 0 else f"Target Speed order {order}"
            rows.append((f"Target {f} order {order} ({deep})", lambda m, f=f, o=order: NODE[
                "FastlaneTargetSpeedCache"].execute(model=m, compute_fraction=f, order=o, granularity=deep,
                                                    **ALL).result[0], method))
        rows.append((f"Spectrum {f} (defaults, {deep})", lambda m, f=f: spectrum_node(m, f, deep), "Spectrum"))
        if deep == "blocks":
            rows.append((f"Spectrum {f} (defaults, last_block)", lambda m, f=f: spectrum_node(m, f, "last_block"),
                         "Spectrum last_block"))
        rows.append((f"Spectrum {f} tuned (node defaults)", lambda m, f=f: spectrum_node(m, f, "auto", **SPECTRUM_TUNED),
                     "Spectrum tuned (node defaults)"))
    if quick:
        return rows
    for interval in (2, 3, 4, 5, 6):
        for order in (1, 2, 3):
            rows.append((f"TaylorSeer interval {interval} order {order} ({deep})", lambda m, i=interval, o=order: NODE[
                "FastlaneTaylorSeer"].execute(model=m, interval=i, order=o, warmup_steps=2, granularity=deep,
                                              **ALL).result[0], f"TaylorSeer order {order}"))
    for t in (0.05, 0.1, 0.2, 0.4, 0.8):
        rows.append((f"Adaptive threshold {t} order 1 ({deep})", lambda m, t=t: NODE["FastlaneAdaptiveCache"].execute(
            model=m, threshold=t, max_skips=3, order=1, warmup_steps=2, granularity=deep, **ALL).result[0],
            "Adaptive"))
    for name in ("EasyCache", "LazyCache"):
        for t in CORE_THRESHOLDS:
            rows.append((f"core {name} threshold {t}", lambda m, n=name, t=t: NODE[n].execute(
                model=m, reuse_threshold=t, start_percent=0.15, end_percent=0.95, verbose=False).result[0],
                f"core {name}"))
    for t in CORE_THRESHOLDS:  # why core EasyCache fares badly on the fp32 demo models: see easycache_input_copied
        rows.append((f"core EasyCache threshold {t}, input copied (probe)",
                     lambda m, t=t: easycache_input_copied(m, t), "core EasyCache, input copied (probe)"))
    for f in (0.3, 0.2):  # the plan's shape for the Taylor forecast: gaps growing along the run, Spectrum-style
        for growth in (0.25, 0.5):
            rows.append((f"Target {f} order 2 growth {growth} ({deep})", lambda m, f=f, g=growth: target_grown(
                m, f, g, deep), "plan variants"))
    # Spectrum's ingredients one at a time, at 0.3 and 0.2 computed
    variants = [("growth 0 (even plan)", dict(growth=0.0)), ("growth 1", dict(growth=1.0)),
                ("warm-up 1", dict(warmup_steps=1)), ("warm-up 5 (paper)", dict(warmup_steps=5)),
                ("blend 1 (spectral only)", dict(blend=1.0)), ("blend 0 (linear only)", dict(blend=0.0)),
                ("ridge 0.01", dict(ridge=0.01)), ("ridge 1", dict(ridge=1.0)),
                ("degree 2", dict(degree=2)), ("degree 6", dict(degree=6)),
                ("coordinate sigma", dict(coordinate="sigma")),
                ("level unpenalised", dict(penalise_level=False)),
                ("half-life 0.1", dict(half_life=0.1)), ("half-life 0.25", dict(half_life=0.25)),
                ("even, half-life 0.1, level free", dict(growth=0.0, half_life=0.1, penalise_level=False)),
                ("even, half-life 0.25, level free", dict(growth=0.0, half_life=0.25, penalise_level=False))]
    for f in (0.3, 0.2):
        for label, kw in variants:
            rows.append((f"Spectrum {f} {label} ({deep})", lambda m, f=f, kw=kw: spectrum_node(m, f, deep, **kw),
                         "Spectrum variants"))
        rows.append((f"Spectrum {f} (defaults, output)", lambda m, f=f: spectrum_node(m, f, "output"),
                     "Spectrum variants"))
        if deep == "blocks":  # which feature: the same forecasts on FLUX's other granularities
            for granularity in ("last_block", "output"):
                for order in (1, 2):
                    rows.append((f"Target {f} order {order} ({granularity})", lambda m, f=f, o=order, g=granularity:
                                 NODE["FastlaneTargetSpeedCache"].execute(model=m, compute_fraction=f, order=o,
                                                                          granularity=g, **ALL).result[0],
                                 "granularity variants"))
                rows.append((f"Spectrum {f} growth 0 (even plan) ({granularity})",
                             lambda m, f=f, g=granularity: spectrum_node(m, f, g, growth=0.0), "granularity variants"))
    return rows


def target_grown(m, fraction: float, growth: float, granularity: str, order: int = 2):
    """Target Speed's Taylor forecast on a plan whose gaps grow along the run (the node plans evenly)."""
    from functools import partial

    from fastlane.cachers.adapters import adapter_for
    from fastlane.cachers.comfy_hooks import attach
    from fastlane.cachers.policies import TargetSpeedPolicy, Window
    from fastlane.cachers.session import StepCache

    policy = partial(TargetSpeedPolicy, fraction, Window(), 1, True, growth)
    return attach(m, StepCache(policy, order, granularity, f"Target/{fraction:g}/growth {growth:g}"), adapter_for(m))


def easycache_input_copied(m, threshold: float):
    """Core EasyCache with the diffusion model's input copied before EasyCache sees it.

    On a skipped step core EasyCache adds its cached difference to the model's input *in place* and returns that
    tensor. For a flow model (FLUX: ``calculate_input`` is the identity) running in the sampler's dtype (float32, as
    the demo models do on a CPU), that input is the very tensor ComfyUI then computes the denoised image from, so
    the skipped step's denoised = (1 - sigma) * (x + diff) instead of x - sigma * (x + diff). A 16-bit model (real
    FLUX on a GPU) gets a cast copy and never shows it. This probe gives EasyCache that copy on a float32 model."""
    from comfy.patcher_extension import WrappersMP

    model = NODE["EasyCache"].execute(model=m, reuse_threshold=threshold, start_percent=0.15, end_percent=0.95,
                                      verbose=False).result[0]

    def copy_input(executor, x, *args, **kwargs):
        return executor(x.clone(), *args, **kwargs)

    model.wrappers.setdefault(WrappersMP.DIFFUSION_MODEL, {}).setdefault("easycache", []).insert(0, copy_input)
    return model


class CallCounter:
    """Counts forward calls of modules of the real model with forward pre-hooks (not a stand-in)."""

    def __init__(self, modules: list[torch.nn.Module]) -> None:
        self.calls = 0
        self.handles = [m.register_forward_pre_hook(self._hit) for m in modules]

    def _hit(self, *_) -> None:
        self.calls += 1

    def close(self) -> None:
        for h in self.handles:
            h.remove()


@dataclass(frozen=True)
class Family:
    """How one demo family is sampled, and which of its modules a computed step must call."""

    module: Any  # fastlane.demo.model (FLUX) or fastlane.demo.sdxl
    grid: Callable[[bool], list]
    steps: int
    cfg: float
    scheduler: str
    channels: int
    stem: str  # output file name stem
    model_note: str
    sampling_note: str
    counted: Callable[[Any], list]  # diffusion model -> modules a full computation calls once per model call
    blocks: Callable[[Any], list] | None = None  # diffusion model -> every block (for the "blocks run" column)
    block_granularity: str = "blocks"  # the cachers' block-level granularity for this family (the duel uses it)
    frames: int = 0  # > 0: a video model, sampled and compared as clips of this many latent frames (Wan)


def _unet_blocks(unet) -> list[torch.nn.Module]:
    """The first layer of every input, middle and output block (ComfyUI runs a block's layers through
    ``forward_timestep_embed``, not through the block's own forward)."""
    return [b[0] for b in (*unet.input_blocks, unet.middle_block, *unet.output_blocks)]


def _nextdit_blocks(nextdit) -> list[torch.nn.Module]:
    """Every transformer block of a NextDiT: both refiner stacks (run on every step) and the main ``layers``."""
    return [*nextdit.context_refiner, *nextdit.noise_refiner, *nextdit.layers]


FAMILIES = {
    "flux": Family(demo, flux_grid, 28, 1.0, "simple", 16, "fidelity",
                   "Fastlane demo FLUX-class model (demo/weights, trained by scripts/train_demo.py)",
                   "euler/simple, {steps} steps, {size}x{size}, guidance 3.5, cfg 1",
                   lambda flux: [*flux.double_blocks, *flux.single_blocks]),
    "flux-proxy": Family(proxy, flux_grid, 28, 1.0, "simple", 16, "fidelity_proxy",
                         "Fastlane proxy FLUX-class model (demo/weights/fastlane-proxy-flux.safetensors, procedural "
                         "scenes, trained by scripts/train_demo.py --family flux-proxy)",
                         "euler/simple, {steps} steps, {size}x{size}, guidance 3.5, cfg 1",
                         lambda flux: [*flux.double_blocks, *flux.single_blocks]),
    "sdxl": Family(sdxl, sdxl_grid, 30, sdxl.DEFAULT_CFG, "normal", 4, "fidelity_sdxl",
                   "Fastlane demo SDXL-class UNet (demo/weights/fastlane-demo-sdxl.safetensors, eps, trained by "
                   "scripts/train_demo.py --family sdxl)",
                   "euler/normal, {steps} steps, {size}x{size}, cfg {cfg} (negative: the 'none' class)",
                   lambda unet: [unet.middle_block[0]], _unet_blocks, "deep"),
    "qwen-image": Family(qwen, dit_grid, 28, qwen.DEFAULT_CFG, "simple", 16, "fidelity_qwen-image",
                         "Fastlane demo Qwen-Image-class model (demo/weights/fastlane-demo-qwen-image.safetensors, "
                         "trained by scripts/train_demo.py --family qwen-image)",
                         "euler/simple, {steps} steps, {size}x{size}, cfg {cfg} (negative: the 'none' class)",
                         lambda qwen_image: list(qwen_image.transformer_blocks)),
    "z-image": Family(zimage, dit_grid, 28, zimage.DEFAULT_CFG, "simple", 16, "fidelity_z-image",
                      "Fastlane demo Z-Image-class model (demo/weights/fastlane-demo-z-image.safetensors, trained by "
                      "scripts/train_demo.py --family z-image)",
                      "euler/simple, {steps} steps, {size}x{size}, cfg {cfg}",
                      lambda nextdit: list(nextdit.layers), _nextdit_blocks),
    "wan": Family(wan, dit_grid, 28, wan.DEFAULT_CFG, "simple", 16, "fidelity_wan",
                  "Fastlane demo Wan 2.1 T2V-class model (demo/weights/fastlane-demo-wan.safetensors, panning clips, "
                  "trained by scripts/train_demo.py --family wan)",
                  f"euler/simple, {{steps}} steps, {{size}}x{{size}}, {wan.FRAMES} latent frames"
                  f" (EmptyHunyuanLatentVideo length {wan.LENGTH}), cfg {{cfg}} (negative: the 'none' class);"
                  " PSNR/SSIM over every decoded frame",
                  lambda wan_model: list(wan_model.blocks), frames=wan.FRAMES),
}


def sample(family: Family, model, class_name: str, seed: int, steps: int, size: int) -> torch.Tensor:
    """One sampled image, or for a video family every decoded frame of the clip: (frames, size, size, 3)."""
    frames = (family.frames,) if family.frames else ()  # Wan: EmptyHunyuanLatentVideo's (1, 16, T, H/8, W/8)
    latent = torch.zeros(1, family.channels, *frames, size // 8, size // 8)
    # as KSampler does: an empty latent gets the model's latent shape (Qwen-Image: a time axis, B, C, 1, H, W)
    latent = comfy.sample.fix_empty_latent_channels(model, latent)
    noise = comfy.sample.prepare_noise(latent, seed)
    positive = family.module.conditioning(class_name)
    negative = family.module.conditioning(family.module.UNCONDITIONAL)
    out = comfy.sample.sample(model, noise, steps, family.cfg, "euler", family.scheduler, positive, negative, latent,
                              seed=seed, disable_pbar=True)
    return codec.decode(out, family.module.WEIGHTS)  # a video latent (Wan, Qwen-Image's T = 1) gives its frames


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--family", choices=list(FAMILIES), default="flux")
    parser.add_argument("--steps", type=int, default=None,
                        help="default: flux 28, sdxl 30, qwen-image 28, z-image 28 (Z-Image Turbo: 8), wan 28")
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--seeds", type=int, default=2)
    parser.add_argument("--classes", type=int, default=4)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--grid", choices=["default", "duel"], default="default",
                        help="duel: issue 18's comparison of every cacher over computed fractions 0.15-0.6")
    parser.add_argument("--only", default="", help="comma-separated substrings: run only settings containing one")
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--plot-from", type=Path, default=None, help="only draw the duel plot of a written JSON")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    if args.plot_from:
        written = json.loads(args.plot_from.read_text())
        return plot_duel(written["rows"], written["meta"], args.plot_from.with_suffix(".png"))
    family = FAMILIES[args.family]
    default_steps = family.steps
    args.steps = args.steps or family.steps
    grid = family.grid(args.quick) if args.grid == "default" else duel_grid(args.quick, family.block_granularity)
    if args.only:
        grid = [row for row in grid if row[0] == "no cache" or any(k in row[0] for k in args.only.split(","))]

    base = family.module.load_demo_patcher(dtype=torch.float32)  # fp32 on a GPU too: no bf16 noise in the scores
    net = base.model.diffusion_model
    counted = CallCounter(family.counted(net))
    blocks = CallCounter(family.blocks(net)) if family.blocks else None
    cases = [(c, s) for c in family.module.class_names()[: args.classes] for s in range(args.seeds)]
    reference = {case: sample(family, base, *case, args.steps, args.size) for case in cases}
    ref_counted, ref_blocks = counted.calls, blocks.calls if blocks else None

    results = []
    for name, make, *method in grid:
        model = make(base)
        counted.calls = 0
        if blocks:
            blocks.calls = 0
        t0 = time.perf_counter()
        images = {case: sample(family, model, *case, args.steps, args.size) for case in cases}
        seconds = time.perf_counter() - t0
        scores = [fidelity(images[c], reference[c]) for c in cases]
        psnr = [s["psnr_db"] for s in scores]
        ssim = [s["ssim"] for s in scores]
        row = {"setting": name, "method": method[0] if method else name,
               "computed_fraction": round(counted.calls / ref_counted, 3)}
        if blocks:
            row["blocks_run_fraction"] = round(blocks.calls / ref_blocks, 3)
        row.update({"psnr_db": round(sum(psnr) / len(psnr), 2) if name != "no cache" else None,
                    "ssim": round(sum(ssim) / len(ssim), 4), "cpu_seconds": round(seconds, 2)})
        results.append(row)
        print(f"{name:48s} computed {row['computed_fraction']:.3f}  PSNR {row['psnr_db']}  SSIM {row['ssim']}", flush=True)
    counted.close()
    if blocks:
        blocks.close()

    meta = {"date": datetime.date.today().isoformat(), "command": "python " + " ".join(sys.argv),
            "model": family.model_note,
            "sampling": family.sampling_note.format(steps=args.steps, size=args.size, cfg=family.cfg),
            "cases": f"{args.classes} classes x {args.seeds} seeds", "torch": torch.__version__,
            "python": platform.python_version()}
    table = markdown_table(results, with_blocks=blocks is not None)
    print(table)
    if args.out:
        stem = family.stem + ("_duel" if args.grid == "duel" else "") + (
            f"_{args.steps}steps" if args.steps != default_steps and args.family in ("qwen-image", "z-image", "wan")
            else "")
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / f"{stem}.json").write_text(json.dumps({"meta": meta, "rows": results}, indent=1))
        (args.out / f"{stem}_table.md").write_text(
            "\n".join(f"- {k}: {v}" for k, v in meta.items()) + "\n\n" + table + "\n")
        if args.grid == "duel":
            plot_duel(results, meta, args.out / f"{stem}.png")


def plot_duel(results: list[dict], meta: dict, png: Path) -> None:
    """PSNR against computed fraction, one curve per method (matplotlib, where installed)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib not installed: no plot")
        return
    fig, ax = plt.subplots(figsize=(8, 5.5))
    methods = [m for m in dict.fromkeys(r["method"] for r in results)
               if m not in ("none", "Spectrum variants", "granularity variants", "plan variants")]
    for i, method in enumerate(methods):
        points = sorted((r["computed_fraction"], r["psnr_db"]) for r in results if r["method"] == method)
        style = "-o" if "Spectrum" in method or "Target" in method else "--s" if "core" in method else ":^"
        ax.plot(*zip(*points), style, label=method, markersize=4, color=plt.cm.tab20(i % 20))
    ax.set_xlabel("computed fraction (full model passes / steps)")
    ax.set_ylabel("PSNR vs uncached (dB)")
    ax.set_title(f"{meta['model'].split('(')[0].strip()}: {meta['cases']}, {meta['sampling']}", fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    fig.savefig(png, dpi=110)
    print(f"wrote {png}")


def markdown_table(results: list[dict], with_blocks: bool) -> str:
    """The results as a markdown table (the "blocks run" column only where it was counted)."""
    head = ["setting", "computed fraction", *(["blocks run"] if with_blocks else []), "PSNR dB vs no cache", "SSIM"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in results:
        cells = [r["setting"], f"{r['computed_fraction']:.3f}",
                 *([f"{r['blocks_run_fraction']:.3f}"] if with_blocks else []),
                 str(r["psnr_db"]) if r["psnr_db"] is not None else "—", str(r["ssim"])]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
