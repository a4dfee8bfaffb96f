"""When to compute: one small policy per caching algorithm, plain Python, no ComfyUI.

A policy sees each sampling step once (``decide``) and answers True (run the model) or False (serve the step from
the cache). ``signal`` is the run's estimate of the relative output change this step would bring, or None before
the estimate exists (it needs two computed steps); static policies ignore it.
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass


@dataclass(frozen=True)
class Window:
    """Fractions of the run's steps inside which caching may skip; outside it every step computes."""

    start: float = 0.0
    end: float = 1.0

    def __post_init__(self) -> None:
        if not (0.0 <= self.start <= 1.0 and 0.0 <= self.end <= 1.0):
            raise ValueError(f"start/end must be fractions of the schedule in [0, 1], got {self.start}, {self.end}")
        if self.start > self.end:
            raise ValueError(f"start ({self.start}) must not be after end ({self.end})")

    def first_step(self, num_steps: int) -> int:
        return int(round(self.start * num_steps))

    def contains(self, step: int, num_steps: int) -> bool:
        return self.first_step(num_steps) <= step < int(round(self.end * num_steps))


class Policy(ABC):
    """Decides per step whether the model runs. ``begin`` starts a run; state lives until the next ``begin``."""

    name: str = "policy"

    def __init__(self, window: Window = Window(), warmup: int = 0) -> None:
        if warmup < 0:
            raise ValueError(f"warmup steps must be >= 0, got {warmup}")
        self.window = window
        self.warmup = warmup
        self.num_steps = 0

    needs_signal = False

    def begin(self, num_steps: int, step_sizes: list[float] | None = None) -> None:
        self.num_steps = num_steps

    def must_compute(self, step: int) -> bool:
        return step < self.warmup or not self.window.contains(step, self.num_steps)

    @abstractmethod
    def decide(self, step: int, signal: float | None) -> bool: ...

    def describe(self) -> str:
        return self.name


class ComputeEveryStep(Policy):
    name = "every step"

    def decide(self, step: int, signal: float | None) -> bool:
        return True


class IntervalPolicy(Policy):
    """FORA and TaylorSeer: compute every ``interval``-th step of the window, serve the others from the cache."""

    name = "interval"

    def __init__(self, interval: int, window: Window = Window(), warmup: int = 0) -> None:
        if interval < 1:
            raise ValueError(f"interval must be >= 1 (1 computes every step), got {interval}")
        super().__init__(window, warmup)
        self.interval = interval

    def decide(self, step: int, signal: float | None) -> bool:
        if self.must_compute(step):
            return True
        anchor = max(self.window.first_step(self.num_steps), self.warmup)
        return (step - anchor) % self.interval == 0

    def describe(self) -> str:
        return f"interval {self.interval}"


class AdaptivePolicy(Policy):
    """Skip while the accumulated estimated output change stays under ``threshold`` (the EasyCache/TeaCache idea),
    never more than ``max_skips`` steps in a row."""

    name = "adaptive"

    def __init__(self, threshold: float, max_skips: int = 3, window: Window = Window(), warmup: int = 2) -> None:
        if threshold < 0:
            raise ValueError(f"threshold must be >= 0, got {threshold}")
        if max_skips < 1:
            raise ValueError(f"max consecutive skips must be >= 1, got {max_skips}")
        super().__init__(window, warmup)
        self.threshold = threshold
        self.max_skips = max_skips
        self.accumulated = 0.0
        self.skipped_in_row = 0

    needs_signal = True

    def begin(self, num_steps: int, step_sizes: list[float] | None = None) -> None:
        super().begin(num_steps)
        self.accumulated = 0.0
        self.skipped_in_row = 0

    def decide(self, step: int, signal: float | None) -> bool:
        compute = self.must_compute(step) or signal is None or self.skipped_in_row >= self.max_skips
        if not compute:
            self.accumulated += signal
            compute = self.accumulated >= self.threshold
        if compute:
            self.accumulated = 0.0
            self.skipped_in_row = 0
        else:
            self.skipped_in_row += 1
        return compute

    def describe(self) -> str:
        return f"adaptive threshold {self.threshold}"


class TargetSpeedPolicy(Policy):
    """Compute exactly ``round(fraction * steps)`` of the steps (at least 1), placed where the output changes most.

    Budgeting: the signal is this step's estimated relative output change. The change still to come is estimated
    from the average change per unit of sigma seen so far in this run, times the sigma left; that total is split
    evenly between the computes left, and a step computes once the change accumulated since the last compute
    reaches its share. Steps that change more than usual therefore compute sooner, quiet stretches skip longer.
    Two hard rules make the count exact: compute when the computes left equal the steps left; skip when none are.
    """

    name = "target"
    needs_signal = True

    def __init__(self, fraction: float, window: Window = Window(), warmup: int = 1) -> None:
        if not 0.0 < fraction <= 1.0:
            raise ValueError(f"compute fraction must be in (0, 1], got {fraction}")
        super().__init__(window, warmup)
        self.fraction = fraction
        self.step_sizes: list[float] = []
        self.budget = 0
        self.computed = 0
        self.accumulated = 0.0
        self.seen_change = 0.0
        self.seen_sigma = 0.0

    def begin(self, num_steps: int, step_sizes: list[float] | None = None) -> None:
        super().begin(num_steps)
        self.step_sizes = [max(s, 1e-12) for s in (step_sizes or [1.0] * num_steps)]
        self.budget = min(num_steps, max(1, round(self.fraction * num_steps)))
        self.computed = 0
        self.accumulated = 0.0
        self.seen_change = 0.0
        self.seen_sigma = 0.0

    def decide(self, step: int, signal: float | None) -> bool:
        left, steps_left = self.budget - self.computed, self.num_steps - step
        if signal is not None:
            self.seen_change += signal
            self.seen_sigma += self.step_sizes[step]
        if left <= 0:
            compute = False
        elif left >= steps_left or self.computed == 0 or self.must_compute(step) or signal is None:
            compute = True
        else:
            future = self.seen_change / self.seen_sigma * sum(self.step_sizes[step + 1:])
            share = (self.accumulated + signal + future) / (left + 1)
            compute = self.accumulated + signal >= share
        if compute:
            self.computed += 1
            self.accumulated = 0.0
        else:
            self.accumulated += signal or 0.0
        return compute

    def describe(self) -> str:
        return f"target {self.fraction:g} of steps"
