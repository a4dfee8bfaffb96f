"""Step-caching nodes: MODEL in, a clone with a StepCache attached out. The policies live in ``cachers/``."""
from __future__ import annotations

from functools import partial

from comfy_api.latest import io

from ..cachers.adapters import ADAPTERS, adapter_for, all_granularities, default_granularity
from ..cachers.comfy_hooks import attach, granularity_options
from ..cachers.forecast import COORDINATES, ForecastSpec
from ..cachers.policies import AdaptivePolicy, IntervalPolicy, TargetSpeedPolicy, Window
from ..cachers.session import StepCache

CATEGORY = "fastlane/cache"
GRANULARITY_TIP = ("What a cached step reuses. auto: the model family's best (FLUX, Qwen-Image, Wan, Chroma, "
                   "HunyuanVideo, Z-Image / Lumina 2: blocks; SDXL/SD1.5: deep; any other model: output). blocks: "
                   "skip every transformer block and forecast their summed residual (embeddings, Z-Image's refiners "
                   "and the final layer still run, so the timestep modulation stays exact). last_block: forecast the "
                   "hidden state leaving the last block (Spectrum's feature). deep (UNets): DeepCache, run only the "
                   "shallowest blocks and forecast the deep feature entering them. output: forecast the whole model "
                   "output (any model; the least precise; works with ControlNet). blocks+output: blocks, then a "
                   "skipped step returns the mean of that output and a forecast of the whole output (two forecasts "
                   "whose errors partly cancel; Target Speed's auto on FLUX, Qwen-Image and Z-Image).")


# Where Target Speed's auto blends (blocks+output): the families whose trained proxies it kept closer than blocks
# (docs/FIDELITY.md, "Two forecasts, one output": FLUX both proxies, Qwen-Image and Z-Image +0.5 to +1.8 dB at 0.3;
# the Wan demo model -0.6 dB at 0.3, so Wan keeps blocks; Chroma and HunyuanVideo are not measured).
BLENDED_BY_DEFAULT = ("FLUX", "Qwen-Image", "Z-Image")


def _common_inputs() -> list:
    return [
        io.Combo.Input("granularity", options=["auto", *all_granularities()], default="auto", tooltip=GRANULARITY_TIP),
        io.Float.Input("start", default=0.0, min=0.0, max=1.0, step=0.01,
                       tooltip="Fraction of the steps before which every step computes."),
        io.Float.Input("end", default=1.0, min=0.0, max=1.0, step=0.01,
                       tooltip="Fraction of the steps from which every step computes again (1.0: to the end)."),
    ]


MODEL_TIP = ("Any diffusion model. Block-level caching (blocks, last_block): FLUX and FLUX.2, Qwen-Image, Wan 2.1/2.2, "
             "Chroma, HunyuanVideo, Z-Image / Lumina 2 (their main layers; the refiners run every step); DeepCache "
             "(deep): SDXL and SD1.x/2.x UNets; every other model (SD3, HiDream, Wan VACE, ...): output only")


def _min_computed_steps_input() -> io.Int.Input:
    """The floor of a fixed-budget plan (Target Speed, Spectrum): optional and last, so saved workflows keep their
    widget order."""
    return io.Int.Input("min_computed_steps", default=0, min=0, max=1000, optional=True,
                        tooltip="At least this many steps run the full model, whatever the fraction (0: no minimum). "
                                "The image follows how many steps compute more than the fraction: with fp8 on our "
                                "FLUX proxies 6 computed kept about 40 dB PSNR at 20 and at 28 steps, 4 dropped to "
                                "33-36 dB. The fastest FLUX workflow sets 6, so fewer sampler steps keep its image.")


def _model_input(families: str = MODEL_TIP) -> io.Model.Input:
    return io.Model.Input("model", tooltip=f"{families} (from Load Diffusion Model, a checkpoint loader, or LoRA).")


def _granularity_for(adapter, granularity: str) -> str:
    if granularity == "auto":
        return default_granularity(adapter)
    if granularity not in granularity_options(adapter):
        owners = [a.family for a in ADAPTERS if granularity in granularity_options(a)]
        meant = f"a {' / '.join(owners)} option" if owners else "not a known option"
        raise ValueError(f"granularity '{granularity}' is {meant}; this MODEL is {adapter.family}, which takes "
                         f"auto ({default_granularity(adapter)}) or {', '.join(granularity_options(adapter))}.")
    return granularity


def _cached(model, make_policy, forecast: ForecastSpec | int, granularity: str, label: str, adapter=None
            ) -> io.NodeOutput:
    adapter = adapter or adapter_for(model)
    cache = StepCache(make_policy, forecast, _granularity_for(adapter, granularity), label)
    return io.NodeOutput(attach(model, cache, adapter))


class FastlaneFORA(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="FastlaneFORA",
            display_name="Fastlane FORA Cache",
            category=CATEGORY,
            description="FORA: run the diffusion model every `interval` steps and reuse its "
                        "result in between. interval 2 halves the model passes. interval 1 is exactly the uncached "
                        "model.",
            inputs=[
                _model_input(),
                io.Int.Input("interval", default=2, min=1, max=10, tooltip="Compute every N-th step; reuse in between."),
                *_common_inputs(),
            ],
            outputs=[io.Model.Output(tooltip="The model with FORA caching (the input MODEL is unchanged).")],
        )

    @classmethod
    def execute(cls, model, interval: int, granularity: str, start: float, end: float) -> io.NodeOutput:
        return _cached(model, partial(IntervalPolicy, interval, Window(start, end)), 0, granularity, f"FORA/{interval}")


class FastlaneTaylorSeer(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="FastlaneTaylorSeer",
            display_name="Fastlane TaylorSeer Cache",
            category=CATEGORY,
            description="TaylorSeer: run the diffusion model every `interval` steps and, in "
                        "between, forecast its result from a Taylor expansion of the computed steps (order 0 = "
                        "FORA's plain reuse).",
            inputs=[
                _model_input(),
                io.Int.Input("interval", default=3, min=1, max=10, tooltip="Compute every N-th step; forecast in between."),
                io.Int.Input("order", default=2, min=0, max=3, tooltip="Taylor order of the forecast (0: reuse)."),
                io.Int.Input("warmup_steps", default=2, min=0, max=100,
                             tooltip="Steps at the start that always compute (the forecast needs history)."),
                *_common_inputs(),
            ],
            outputs=[io.Model.Output(tooltip="The model with TaylorSeer caching (the input MODEL is unchanged).")],
        )

    @classmethod
    def execute(cls, model, interval: int, order: int, warmup_steps: int, granularity: str, start: float,
                end: float) -> io.NodeOutput:
        policy = partial(IntervalPolicy, interval, Window(start, end), warmup_steps)
        return _cached(model, policy, order, granularity, f"TaylorSeer/{interval}/o{order}")


class FastlaneAdaptiveCache(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="FastlaneAdaptiveCache",
            display_name="Fastlane Adaptive Cache",
            category=CATEGORY,
            description="Adaptive caching: skip steps while the estimated change of the model's output, accumulated "
                        "since the last computed step, stays under `threshold`. Higher threshold: faster, looser.",
            inputs=[
                _model_input(),
                io.Float.Input("threshold", default=0.15, min=0.0, max=3.0, step=0.01,
                               tooltip="Accumulated relative output change that forces a computed step."),
                io.Int.Input("max_skips", default=3, min=1, max=20, tooltip="Never serve more steps in a row from the cache."),
                io.Int.Input("order", default=1, min=0, max=3, tooltip="Taylor order of the forecast on skipped steps."),
                io.Int.Input("warmup_steps", default=2, min=0, max=100, tooltip="Steps at the start that always compute."),
                *_common_inputs(),
            ],
            outputs=[io.Model.Output(tooltip="The model with adaptive caching (the input MODEL is unchanged).")],
        )

    @classmethod
    def execute(cls, model, threshold: float, max_skips: int, order: int, warmup_steps: int, granularity: str,
                start: float, end: float) -> io.NodeOutput:
        policy = partial(AdaptivePolicy, threshold, max_skips, Window(start, end), warmup_steps)
        return _cached(model, policy, order, granularity, f"Adaptive/{threshold:g}")


class FastlaneTargetSpeedCache(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="FastlaneTargetSpeedCache",
            display_name="Fastlane Target Speed Cache",
            category=CATEGORY,
            description="Ask for a speed, get it: exactly `compute_fraction` of the steps run the full model "
                        "(0.4 = 2.5x fewer passes): the first step, then evenly spread up to the last step; the "
                        "steps between are forecast (Taylor series of `order`). A fixed plan: no per-step "
                        "measurement, so cached steps cost the least. Granularity auto on FLUX, Qwen-Image and "
                        "Z-Image forecasts both the blocks' residual and the whole output and returns their mean "
                        "(blocks+output); elsewhere the family's default. On the FLUX "
                        "demo model 0.4 kept 52.4 dB PSNR (order 2); on the SDXL one 37.6 dB (order 1).",
            inputs=[
                _model_input(),
                io.Float.Input("compute_fraction", default=0.4, min=0.05, max=1.0, step=0.01,
                               tooltip="Fraction of the steps that run the full model (rounded, at least one, and "
                                       "at least min_computed_steps)."),
                io.Int.Input("order", default=1, min=0, max=3,
                             tooltip="Taylor order of the forecast on skipped steps. On the demo models: FLUX is "
                                     "closest at 2 (+1-2 dB over 1), SDXL and Qwen-Image at 1 (+5 / +3 dB over 2), "
                                     "Z-Image alike at 1 and 2. 0 reuses the last computed result, FORA-style."),
                *_common_inputs(),
                _min_computed_steps_input(),
            ],
            outputs=[io.Model.Output(tooltip="The model with target-speed caching (the input MODEL is unchanged).")],
        )

    @classmethod
    def execute(cls, model, compute_fraction: float, order: int, granularity: str, start: float,
                end: float, min_computed_steps: int = 0) -> io.NodeOutput:
        adapter = adapter_for(model)
        if granularity == "auto" and adapter.family in BLENDED_BY_DEFAULT:
            granularity = "blocks+output"
        policy = partial(TargetSpeedPolicy, compute_fraction, Window(start, end), min_steps=min_computed_steps)
        label = f"Target/{compute_fraction:g}" + (f"/min{min_computed_steps}" if min_computed_steps else "")
        return _cached(model, policy, order, granularity, label, adapter)


class FastlaneDeepCache(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="FastlaneDeepCache",
            display_name="Fastlane DeepCache (SDXL)",
            category=CATEGORY,
            description="DeepCache for UNet models (SDXL): every `interval` steps the whole UNet runs and the deep "
                        "feature entering the shallow skip `branch` is kept; in between only the shallow blocks run "
                        "(~7% of a pass at branch 0) and reuse it. The default, interval 5, branch 0, measured "
                        "2.5-4.5x on SDXL 1024² 30 steps (H100, eager); interval 3 stays closer to the uncached model "
                        "(1.9-2.7x there: ComfyUI's eager UNet pass is bound by the CPU launching it, so each computed "
                        "step costs what it did). interval 1 is exactly the uncached model. FLUX has no UNet: use "
                        "FORA or TaylorSeer there.",
            inputs=[
                _model_input("An SDXL (base or refiner) or SD1.x/2.x UNet model"),
                io.Int.Input("interval", default=5, min=1, max=10,
                             tooltip="Run the whole UNet every N-th step; the shallow blocks only in between "
                                     "(3: closer to the uncached model, 5: faster)."),
                io.Int.Input("branch", default=0, min=0, max=10,
                             tooltip="Skip branch whose deep feature is cached, from the shallowest (0: the input "
                                     "conv and first res block stay live, the fastest; higher: more blocks run on "
                                     "cached steps, closer to the uncached model; SDXL: 0..7)."),
                io.Float.Input("start", default=0.0, min=0.0, max=1.0, step=0.01,
                               tooltip="Fraction of the steps before which every step runs the whole UNet."),
                io.Float.Input("end", default=1.0, min=0.0, max=1.0, step=0.01,
                               tooltip="Fraction of the steps from which every step runs the whole UNet again."),
            ],
            outputs=[io.Model.Output(tooltip="The model with DeepCache (the input MODEL is unchanged).")],
        )

    @classmethod
    def execute(cls, model, interval: int, branch: int, start: float, end: float) -> io.NodeOutput:
        adapter = adapter_for(model)
        if not hasattr(adapter, "with_branch"):
            raise ValueError(f"Fastlane DeepCache needs a UNet model (SDXL); this MODEL is {adapter.family}, which has "
                             "no UNet skip branches. Use Fastlane FORA or TaylorSeer (granularity blocks) for it.")
        policy = partial(IntervalPolicy, interval, Window(start, end))
        return _cached(model, policy, 0, "deep", f"DeepCache/{interval}/b{branch}", adapter.with_branch(branch))


class FastlaneSpectrumCache(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="FastlaneSpectrumCache",
            display_name="Fastlane Spectrum Cache",
            category=CATEGORY,
            description="Spectrum-class caching (CVPR 2026, 'Adaptive Spectral Feature Forecasting'): exactly "
                        "`compute_fraction` of the steps run the full model; every other step is forecast from a "
                        "Chebyshev series over the run's time, ridge-fitted to *all* computed steps and blended with "
                        "a linear extrapolation of the last two, on the last block's hidden state (FLUX-class "
                        "models; UNets: the deep feature; others: the output). On our two FLUX-class proxies, with these "
                        "defaults, it was the closest forecast at 0.15 computed and 1-4 dB further from the uncached "
                        "image than Target Speed from 0.2 up (docs/FIDELITY.md); try both on your model with the "
                        "Benchmark Report. "
                        "compute_fraction 1 is exactly the uncached model.",
            inputs=[
                _model_input(),
                io.Float.Input("compute_fraction", default=0.3, min=0.05, max=1.0, step=0.01,
                               tooltip="Fraction of the steps that run the full model (0.3: 3.3x fewer passes)."),
                io.Int.Input("degree", default=2, min=1, max=8,
                             tooltip="Chebyshev degree M of the fitted series (Spectrum: 4; 2 was closer on both of "
                                     "our proxies). Truncated while fewer than M+1 steps have computed."),
                io.Float.Input("ridge", default=0.01, min=0.0, max=10.0, step=0.01,
                               tooltip="Ridge regularisation lambda of the fit (Spectrum: 0.1; 0.01 was closer on both "
                                       "of our proxies: the ridge pulls the forecast towards zero)."),
                io.Float.Input("blend", default=0.5, min=0.0, max=1.0, step=0.05,
                               tooltip="Weight w of the spectral forecast against linear extrapolation of the last "
                                       "two computed steps (1: spectral only, 0: linear only)."),
                io.Int.Input("warmup_steps", default=1, min=0, max=100,
                             tooltip="Steps at the start that always compute, part of the budget (Spectrum: 5, "
                                     "which leaves too few computes for the rest of a 28-step run at 0.3)."),
                io.Float.Input("growth", default=0.0, min=0.0, max=1.0, step=0.05,
                               tooltip="How much the gaps between computed steps grow along the run (0: even "
                                       "spacing, 1: from dense to sparse, Spectrum's shape; even was closer on our "
                                       "proxies, whose features change fast at both ends of the run)."),
                io.Combo.Input("coordinate", options=list(COORDINATES), default="step",
                               tooltip="The time axis the series is fitted over: step (position on the schedule), "
                                       "sigma (noise level) or time (the model's own timestep)."),
                *_common_inputs(),
                _min_computed_steps_input(),
            ],
            outputs=[io.Model.Output(tooltip="The model with Spectrum caching (the input MODEL is unchanged).")],
        )

    @classmethod
    def execute(cls, model, compute_fraction: float, degree: int, ridge: float, blend: float, warmup_steps: int,
                growth: float, coordinate: str, granularity: str, start: float, end: float,
                min_computed_steps: int = 0) -> io.NodeOutput:
        adapter = adapter_for(model)
        if granularity == "auto" and "last_block" in adapter.granularities:
            granularity = "last_block"  # Spectrum's feature; on both proxies 4-5 dB closer than blocks for it
        policy = partial(TargetSpeedPolicy, compute_fraction, Window(start, end), warmup_steps, True, growth,
                         min_steps=min_computed_steps)
        forecast = ForecastSpec("spectrum", degree=degree, ridge=ridge, blend=blend, coordinate=coordinate)
        return _cached(model, policy, forecast, granularity, f"Spectrum/{compute_fraction:g}/M{degree}", adapter)


NODES = [FastlaneFORA, FastlaneTaylorSeer, FastlaneAdaptiveCache, FastlaneTargetSpeedCache, FastlaneSpectrumCache,
         FastlaneDeepCache]
