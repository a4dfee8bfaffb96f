"""Feature forecasts between computed steps (TaylorSeer's idea); order 0 is plain reuse (FORA).

TaylorSeer expands a feature in step distance with derivatives estimated by finite differences. We keep the
same ingredients in Newton's divided-difference form over the last ``order + 1`` computed positions, which is
exact for features that are polynomials of degree ``order`` in the step coordinate, also when computed steps are
unevenly spaced (adaptive and target-speed schedules), where equal-spacing finite differences are biased.
"""
from __future__ import annotations

import torch


class TaylorForecaster:
    """Divided differences of one feature at its last ``order + 1`` computed positions."""

    def __init__(self, order: int) -> None:
        if not 0 <= order <= 3:
            raise ValueError(f"Taylor order must be 0..3, got {order}")
        self.order = order
        self.positions: list[float] = []  # newest first
        self.differences: list[torch.Tensor] = []  # differences[k] = f[x_n, ..., x_{n-k}]

    @property
    def ready(self) -> bool:
        return bool(self.positions)

    @property
    def position(self) -> float | None:
        return self.positions[0] if self.positions else None

    def update(self, position: float, value: torch.Tensor) -> None:
        value = value.detach()
        if self.positions and position == self.positions[0]:
            # A second computed call at the same sigma (heun's correction): keep the newest value.
            self.differences = [value] + self.differences[1:]
            return
        new = [value]
        for k in range(min(self.order, len(self.differences))):
            new.append((new[k] - self.differences[k]) / (position - self.positions[k]))
        self.differences = new
        self.positions = ([position] + self.positions)[: self.order + 1]

    def predict(self, position: float) -> torch.Tensor:
        if not self.positions:
            raise RuntimeError("forecast requested before any computed step")
        out = self.differences[0].clone()
        weight = 1.0
        for k in range(1, len(self.differences)):
            weight *= position - self.positions[k - 1]
            out.add_(self.differences[k], alpha=weight)
        return out

    def nbytes(self) -> int:
        return sum(d.numel() * d.element_size() for d in self.differences)
