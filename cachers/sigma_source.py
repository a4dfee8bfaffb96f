"""Where a model call's sigma comes from: the sampler's progress (no GPU sync) or the call's own timestep (a sync).

The cache needs each call's sigma as a Python float to find its step. The timestep ComfyUI hands the model is a GPU
tensor made by a kernel queued behind all earlier work, so reading it (``float(t)``) waits for the GPU to finish
every call queued before, and the CPU can never run ahead of it: each cached call's few milliseconds of Python and
launches then add to the GPU's time instead of hiding behind the computed call still running.

For samplers that call the model once per step, at the schedule's sigma, and report each step through ComfyUI's
callback (``PREDICTABLE``; euler without churn, ...), the sigma of a batch's first call after step ``i``'s callback
is ``sample_sigmas[i + 1]``, known on the CPU. Any other call (a second call of the batch in a step: another node
calling the model again, a sampler's correction step) reads its timestep as before. A run keeps a reference to each
predicted call's timestep and compares them all once, at its end (one sync per run): a wrong prediction is logged
and turns prediction off for that cacher (``StepCache.predict_sigmas``), so a sampler that breaks the assumption
costs one run planned on wrong step numbers, not silently wrong runs.
"""
from __future__ import annotations

from typing import Hashable

import torch

# k-diffusion samplers (ComfyUI's sampler_function names) with one model call per step at sigmas[i] and one callback
# per step after it. Heun, dpm_2, dpmpp_sde and dpmpp_2s call the model a second time after the callback, at
# another sigma: they keep reading it.
PREDICTABLE = frozenset({"sample_euler", "sample_euler_ancestral", "sample_lms", "sample_dpmpp_2m",
                         "sample_dpmpp_2m_sde"})


def predictable(sampler) -> bool:
    """Does ``sampler`` (ComfyUI's KSAMPLER) call the model once per step at the schedule's sigmas?"""
    name = getattr(getattr(sampler, "sampler_function", None), "__name__", "")
    churn = (getattr(sampler, "extra_options", None) or {}).get("s_churn", 0.0)
    return name in PREDICTABLE and not churn


class SigmaSource:
    """One sampling run's record of the sampler's progress and of the sigmas it predicted."""

    def __init__(self) -> None:
        self.steps_done = 0
        self._seen: set[Hashable] = set()
        self._checks: list[tuple[torch.Tensor, float]] = []

    def step_done(self, index: int) -> None:
        """The sampler's callback for step ``index``: the next call of every batch starts step ``index + 1``."""
        self.steps_done = index + 1
        self._seen.clear()

    def sigma(self, timestep: torch.Tensor, key: Hashable, schedule: list[float]) -> float:
        """The sigma of this call: predicted for a batch's first call in a step, read from ``timestep`` else."""
        first = key not in self._seen
        self._seen.add(key)
        if first and self.steps_done < len(schedule) - 1:
            predicted = schedule[self.steps_done]
            self._checks.append((timestep.reshape(-1)[0], predicted))
            return predicted
        return float(timestep.reshape(-1)[0])

    @property
    def predicted_calls(self) -> int:
        return len(self._checks)

    def wrong_predictions(self) -> int:
        """How many predicted sigmas differ from the timesteps the calls got (one GPU sync, at the run's end)."""
        if not self._checks:
            return 0
        actual = torch.stack([t.float() for t, _ in self._checks]).cpu().tolist()
        return sum(abs(a - p) > 1e-6 * max(1.0, abs(p)) for a, (_, p) in zip(actual, self._checks))
