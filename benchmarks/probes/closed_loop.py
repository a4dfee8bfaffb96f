"""The closed-loop fidelity bench the forecast probes share: a FLUX proxy, its cases, their uncached references, and
the PSNR of a StepCache's images against them (same cases and settings as benchmarks/fidelity.py: euler/simple,
28 steps, 128², fp32, one CPU thread)."""
from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import fidelity as F  # noqa: E402  (loads ComfyUI with the pack)

import torch  # noqa: E402

from fastlane.cachers.adapters import adapter_for  # noqa: E402
from fastlane.cachers.comfy_hooks import attach  # noqa: E402
from fastlane.cachers.session import StepCache  # noqa: E402

STEPS, SIZE = 28, 128


class ClosedLoop:
    """``classes`` prompts x ``seeds`` seeds of one proxy family, sampled once uncached as the reference."""

    def __init__(self, family: str, classes: int, seeds: int) -> None:
        torch.set_num_threads(1)
        self.name, self.family = family, F.FAMILIES[family]
        self.base = self.family.module.load_demo_patcher(dtype=torch.float32)
        self.cases = [(c, s) for c in self.family.module.class_names()[:classes] for s in range(seeds)]
        self.reference = {c: self.sample(self.base, c) for c in self.cases}
        self.title = f"{family}: {classes} prompts x {seeds} seeds, {STEPS} steps"

    def sample(self, model, case: tuple[str, int]) -> torch.Tensor:
        return F.sample(self.family, model, *case, STEPS, SIZE)

    def psnr(self, cache: StepCache) -> list[float]:
        """PSNR dB of each case sampled through ``cache`` against its uncached reference."""
        model = attach(self.base, cache, adapter_for(self.base))
        return [F.fidelity(self.sample(model, c), self.reference[c])["psnr_db"] for c in self.cases]
