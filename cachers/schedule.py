"""Step identity from the sampler's sigmas.

Samplers call the model at sigmas of the schedule (euler), at the next step's sigma too (heun's correction), or
between two sigmas (dpmpp_2s, midpoint methods). A call counter gets those wrong; the sigma itself does not.
"""
from __future__ import annotations

import bisect
from typing import Sequence

import torch


class StepClock:
    """Maps the sigma of a model call to a position on the run's schedule.

    ``sample_sigmas`` has one more entry than there are steps (the last is where sampling ends, usually 0).
    A call at ``sigmas[i]`` is at position ``i``; a call between ``sigmas[i]`` and ``sigmas[i+1]`` is at a
    fractional position, and it belongs to step ``i`` (the step whose interval holds it).
    """

    def __init__(self, sample_sigmas: Sequence[float] | torch.Tensor) -> None:
        sigmas = [float(s) for s in (sample_sigmas.tolist() if torch.is_tensor(sample_sigmas) else sample_sigmas)]
        if len(sigmas) < 2:
            raise ValueError(f"a schedule needs at least 2 sigmas, got {len(sigmas)}")
        self.sigmas = sigmas
        self._descending = [-s for s in sigmas]  # ascending, for bisect

    @property
    def num_steps(self) -> int:
        return len(self.sigmas) - 1

    def matches(self, sample_sigmas: Sequence[float] | torch.Tensor) -> bool:
        other = sample_sigmas.tolist() if torch.is_tensor(sample_sigmas) else list(sample_sigmas)
        return len(other) == len(self.sigmas) and all(abs(a - b) <= 1e-6 * max(1.0, abs(a)) for a, b in zip(other, self.sigmas))

    def position(self, sigma: float) -> float:
        """Continuous step coordinate of ``sigma`` (0 at the first sigma, ``num_steps`` at the last)."""
        sigma = float(sigma)
        if sigma >= self.sigmas[0]:
            return 0.0
        if sigma <= self.sigmas[-1]:
            return float(self.num_steps)
        i = bisect.bisect_right(self._descending, -sigma) - 1  # sigmas[i] >= sigma > sigmas[i+1]
        hi, lo = self.sigmas[i], self.sigmas[i + 1]
        return i + (hi - sigma) / (hi - lo) if hi != lo else float(i)

    def step_index(self, sigma: float) -> int:
        """The step a call at ``sigma`` belongs to, in ``range(num_steps)``."""
        pos = self.position(sigma)
        nearest = round(pos)
        step = nearest if abs(pos - nearest) < 1e-4 else int(pos)
        return min(step, self.num_steps - 1)

    def step_size(self, step: int) -> float:
        return abs(self.sigmas[step] - self.sigmas[step + 1])
