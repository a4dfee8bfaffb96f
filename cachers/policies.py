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
    """Compute exactly ``round(fraction * steps)`` of the steps (at least 1, and at least ``min_steps``) on a plan
    fixed when the run starts.

    The plan: the first ``warmup`` steps (the forecast needs ``order + 1`` computed points before it extrapolates
    well), then the rest of the budget spread evenly over the remaining steps, the last step included (``last``).
    Steps outside the window always compute, on top of the budget. A fixed plan needs no per-step change signal, so
    a cached step costs no GPU->CPU sync and no extra work; on the demo model it also kept the image closer than
    placing computes by the change signal did (docs/FIDELITY.md).
    """

    name = "target"

    def __init__(self, fraction: float, window: Window = Window(), warmup: int = 1, last: bool = True,
                 growth: float = 0.0, min_steps: int = 0) -> None:
        if not 0.0 < fraction <= 1.0:
            raise ValueError(f"compute fraction must be in (0, 1], got {fraction}")
        if min_steps < 0:
            raise ValueError(f"the minimum of computed steps must be 0 (no minimum) or more, got {min_steps}")
        if not 0.0 <= growth <= 1.0:
            raise ValueError(f"spacing growth must be in [0, 1] (0: even gaps, 1: gaps growing from 0), got {growth}")
        super().__init__(window, warmup)
        self.fraction = fraction
        self.last = last
        self.growth = growth
        self.min_steps = min_steps
        self.plan: set[int] = set()

    def begin(self, num_steps: int, step_sizes: list[float] | None = None) -> None:
        super().begin(num_steps)
        budget = min(num_steps, max(1, self.min_steps, round(self.fraction * num_steps)))
        outside = {s for s in range(num_steps) if not self.window.contains(s, num_steps)}
        inside = [s for s in range(num_steps) if s not in outside]
        plan = set(inside[:min(self.warmup, budget)])
        free = [s for s in inside if s not in plan]
        self.plan = outside | plan | set(spread(free, budget - len(plan), self.last, self.growth))

    def decide(self, step: int, signal: float | None) -> bool:
        return step in self.plan

    def describe(self) -> str:
        return (f"target {self.fraction:g} of steps" + (f", at least {self.min_steps}" if self.min_steps else "")
                + (f", gaps growing {self.growth:g}" if self.growth else ""))


def spread(items: list[int], k: int, last: bool = True, growth: float = 0.0) -> list[int]:
    """``k`` of ``items`` at even spacing; with ``last`` the final item is one of them, else they sit centred.

    ``growth`` > 0 (with ``last``) makes the gaps grow along the run, Spectrum's schedule shape (dense where features
    change fast, sparse late): item ``j`` of ``k`` sits at ``n * ((1 - growth) * s + growth * s**2)``, ``s = j / k``,
    pushed forward where rounding would put two on one item.
    """
    n = len(items)
    if k <= 0 or n == 0:
        return []
    if k >= n:
        return list(items)
    if not last:
        return [items[round((j + 1) * (n + 1) / (k + 1)) - 1] for j in range(k)]
    picked: list[int] = []
    for j in range(1, k + 1):
        s = j / k
        index = max(round(n * ((1.0 - growth) * s + growth * s * s)) - 1, picked[-1] + 1 if picked else 0)
        picked.append(min(index, n - 1 - (k - j)))
    return [items[i] for i in picked]
