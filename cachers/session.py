"""The state of step caching for one sampling run, and the per-call protocol the ComfyUI glue drives.

``StepCache`` is the holder a node attaches to a model (configuration only). At the start of every sampling run
the glue swaps in ``StepCache.fresh()``, so nothing survives from one run, one KSampler or one branch to the next.
Within a run, features are keyed by batch composition (which conds are in the batch, and the latent's shape):
cond and uncond batched together or apart, a new resolution or batch size each get their own forecasts.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Hashable

import torch

from .forecast import Forecaster, ForecastSpec
from .policies import Policy
from .schedule import StepClock

BLEND_SUFFIX = "+output"
SIGNAL_SUBSAMPLE = 4  # spatial stride of the copies kept for the change signal: cheap, and enough to rank steps


def split_blend(granularity: str) -> tuple[str, bool]:
    """``"blocks+output"`` -> ``("blocks", True)``; any other granularity -> ``(granularity, False)``.

    Blending: a skipped call runs the model with its block granularity's forecast (the final layer at the current
    timestep), and returns the mean of that output and a Taylor forecast of the whole output over the same computed
    calls: two forecasts of one quantity whose errors partly cancel (docs/FIDELITY.md, "Two forecasts, one output")."""
    base, suffix, _ = granularity.partition(BLEND_SUFFIX)
    if not suffix:
        return granularity, False
    if not base or base == "output" or granularity != base + BLEND_SUFFIX:
        raise ValueError(f"granularity '{granularity}': only a block granularity can be blended with the output, "
                         f"e.g. 'blocks{BLEND_SUFFIX}'")
    return base, True


@dataclass
class Call:
    """One diffusion-model call: where it sits on the schedule and whether the model runs."""

    step: int
    position: float  # on the schedule (0..steps)
    coordinate: float  # in the forecaster's coordinate (step position, sigma or model time)
    key: Hashable
    compute: bool
    run: "CacheRun"
    scratch: dict = field(default_factory=dict)  # adapters keep per-call tensors here (e.g. the block-stack input)

    def forecast(self, feature: str) -> torch.Tensor:
        return self.run.forecasters[(self.key, feature)].predict(self.coordinate)

    def store(self, feature: str, value: torch.Tensor) -> None:
        forecaster = self.run.forecasters.get((self.key, feature))
        if forecaster is None:
            forecaster = self.run.forecasters[(self.key, feature)] = self.run.forecast.make(self.run.domain)
        forecaster.update(self.coordinate, value)


@dataclass
class _ChangeSignal:
    """Estimates how much the output would change at a step from how much the input changed (EasyCache's idea):
    output change per unit of input change is measured between computed calls and assumed locally constant."""

    x_prev: torch.Tensor | None = None
    x_computed: torch.Tensor | None = None
    out_computed: torch.Tensor | None = None
    ratio: float | None = None

    @staticmethod
    def _small(t: torch.Tensor) -> torch.Tensor:
        return t[..., ::SIGNAL_SUBSAMPLE, ::SIGNAL_SUBSAMPLE].detach().float().clone() if t.ndim >= 3 else t.detach().float().clone()

    def estimate(self, x: torch.Tensor) -> float | None:
        small = self._small(x)
        estimate = None
        if self.ratio is not None and self.x_prev is not None and self.x_prev.shape == small.shape:
            input_change = (small - self.x_prev).abs().mean()
            estimate = float(self.ratio * input_change / self.out_computed.abs().mean().clamp_min(1e-12))
        self.x_prev = small
        return estimate

    def observe_output(self, x: torch.Tensor, out: torch.Tensor) -> None:
        x_small, out_small = self._small(x), self._small(out)
        if self.x_computed is not None and self.x_computed.shape == x_small.shape:
            input_change = float((x_small - self.x_computed).abs().mean())
            if input_change > 0:
                self.ratio = float((out_small - self.out_computed).abs().mean()) / input_change
        self.x_computed, self.out_computed = x_small, out_small


@dataclass
class CacheRun:
    """Everything one sampling run learns; dropped whole at the end of the run."""

    clock: StepClock
    policy: Policy
    forecast: ForecastSpec
    time_fn: Callable[[float], float] | None = None  # sigma -> the model's timestep (for the "time" coordinate)
    decisions: dict[int, bool] = field(default_factory=dict)
    forecasters: dict[tuple, Forecaster] = field(default_factory=dict)
    signal: _ChangeSignal = field(default_factory=_ChangeSignal)
    lead_key: Hashable | None = None
    computed_calls: int = 0
    forecast_calls: int = 0

    def __post_init__(self) -> None:
        n = self.clock.num_steps
        self.policy.begin(n, [self.clock.step_size(i) for i in range(n)])
        first, last = self.clock.sigmas[0], self.clock.sigmas[-1]
        self.domain = (self.coordinate(first, 0.0), self.coordinate(last, float(n)))

    def coordinate(self, sigma: float, position: float) -> float:
        """Where a call at ``sigma`` (schedule ``position``) sits in the forecaster's coordinate."""
        kind = self.forecast.coordinate
        if kind == "step":
            return position
        if kind == "sigma" or self.time_fn is None:
            return sigma
        return self.time_fn(sigma)

    def decide(self, step: int, key: Hashable, x: torch.Tensor) -> bool:
        if self.lead_key is None:
            self.lead_key = key
        if step not in self.decisions:
            # The first batch to reach a step decides for every batch of that step (cond and uncond agree).
            signal = self.signal.estimate(x) if self.policy.needs_signal and key == self.lead_key else None
            self.decisions[step] = self.policy.decide(step, signal)
        elif self.policy.needs_signal and key == self.lead_key:
            self.signal.estimate(x)
        return self.decisions[step]

    def cache_bytes(self) -> int:
        return sum(f.nbytes() for f in self.forecasters.values())


class StepCache:
    """What a cacher node attaches to a model: how to decide (a policy factory), how far to forecast (Taylor order),
    and what to cache (granularity, interpreted by the model family's adapter)."""

    def __init__(self, make_policy: Callable[[], Policy], forecast: ForecastSpec | int, granularity: str,
                 label: str, blend_weight: float = 0.5) -> None:
        make_policy()  # validates the policy's parameters now, at node time, not mid-sampling
        self.make_policy = make_policy
        # a plain int is a Taylor order (validated by the spec)
        self.forecast = forecast if isinstance(forecast, ForecastSpec) else ForecastSpec("taylor", order=forecast)
        # "blocks+output": the adapter caches at "blocks", and a skipped call's output is blended with a forecast
        # of the whole output (BLEND_SUFFIX); adapters only ever see the block granularity
        self.granularity, self.blend_output = split_blend(granularity)
        # the share of the whole-output forecast in a blended skipped call (0.5: the mean of the two forecasts)
        self.blend_weight = blend_weight
        self.label = label
        self.time_fn: Callable[[float], float] | None = None  # set per run by the glue (the model's sigma -> t)
        self.run: CacheRun | None = None
        self._sigmas = None
        # sigma_source.py: may this cacher take a call's sigma from the sampler's progress (no GPU sync)? Turned off
        # for good on the node's own StepCache (``template``) when a run finds a prediction wrong.
        self.predict_sigmas = True
        self.sigma_source = None  # a run's SigmaSource, while a predictable sampler runs
        self.template: StepCache | None = None

    @property
    def order(self) -> int:
        return self.forecast.order

    @property
    def option(self) -> str:
        """The granularity as the node names it (``blocks+output`` for a blended cache)."""
        return self.granularity + (BLEND_SUFFIX if self.blend_output else "")

    @property
    def features(self) -> tuple[str, ...]:
        """What the shared wrapper itself keeps per batch key: the whole output (``out``) at ``output`` and when
        blending; nothing else (the adapter keeps its block features)."""
        return ("out",) if self.granularity == "output" or self.blend_output else ()

    def fresh(self, time_fn: Callable[[float], float] | None = None) -> "StepCache":
        cache = StepCache(self.make_policy, self.forecast, self.option, self.label, self.blend_weight)
        cache.time_fn = time_fn
        cache.predict_sigmas = self.predict_sigmas
        cache.template = self
        return cache

    def begin_call(self, x: torch.Tensor, timestep: torch.Tensor, sample_sigmas, key: Hashable,
                   features: tuple[str, ...]) -> Call:
        """Decide one model call. ``timestep``: the sigmas the call got; its value is read (a GPU sync) only where the
        run's ``sigma_source`` cannot tell it from the sampler's progress."""
        if self.run is None or (sample_sigmas is not self._sigmas and not self.run.clock.matches(sample_sigmas)):
            self.run = CacheRun(StepClock(sample_sigmas), self.make_policy(), self.forecast, self.time_fn)
        self._sigmas = sample_sigmas  # the sampler passes the same tensor every call: skip the value comparison
        run = self.run
        sigma = (self.sigma_source.sigma(timestep, key, run.clock.sigmas) if self.sigma_source is not None
                 else float(timestep.reshape(-1)[0]))
        step = run.clock.step_index(sigma)
        position = run.clock.position(sigma)
        compute = run.decide(step, key, x)
        if not compute and not all((key, f) in run.forecasters for f in features):
            compute = True  # this batch composition has nothing cached yet
        return Call(step, position, run.coordinate(sigma, position), key, compute, run)

    def end_call(self, call: Call, x: torch.Tensor, out: torch.Tensor) -> None:
        run = call.run
        if call.compute:
            run.computed_calls += 1
            if run.policy.needs_signal and call.key == run.lead_key:
                run.signal.observe_output(x, out)
        else:
            run.forecast_calls += 1

    def summary(self) -> dict:
        run = self.run
        if run is None:
            return {"label": self.label, "steps": 0}
        computed = sorted(s for s, c in run.decisions.items() if c)
        return {
            "label": self.label,
            "policy": run.policy.describe(),
            "forecast": self.forecast.describe(),
            "order": self.order,
            "granularity": self.option,
            "steps": run.clock.num_steps,
            "computed_steps": computed,
            "computed_calls": run.computed_calls,
            "forecast_calls": run.forecast_calls,
            "cache_bytes": run.cache_bytes(),
        }
