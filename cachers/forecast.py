"""Feature forecasts between computed steps: how a skipped step gets its feature.

- ``TaylorForecaster`` (TaylorSeer's idea; order 0 is FORA's plain reuse) expands a feature around the newest
  computed step. We keep TaylorSeer's ingredients in Newton's divided-difference form over the last ``order + 1``
  computed positions, which is exact for features that are polynomials of degree ``order`` in the coordinate, also
  when computed steps are unevenly spaced (adaptive and target-speed schedules), where equal-spacing finite
  differences are biased.
- ``SpectrumForecaster`` (Spectrum, CVPR 2026: "Adaptive Spectral Feature Forecasting for Diffusion Sampling
  Acceleration") fits the feature as a Chebyshev series of degree ``M`` over the whole run's normalised time, by
  ridge regression over *every* computed step, and blends it with a local linear extrapolation.

Both see one coordinate per call (``Coordinate``: the step position, the sigma, or the model's own timestep), chosen
per forecaster because which one extrapolates best is a property of the model, measured in docs/FIDELITY.md.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import torch

COORDINATES = ("step", "sigma", "time")


class Forecaster(Protocol):
    """What the run asks of a forecaster: feed it computed values, ask it for a skipped step's value."""

    def update(self, position: float, value: torch.Tensor) -> None: ...

    def predict(self, position: float) -> torch.Tensor: ...

    def nbytes(self) -> int: ...


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


def chebyshev(tau: float, degree: int) -> torch.Tensor:
    """``[T_0(tau), ..., T_degree(tau)]`` (Chebyshev polynomials of the first kind), float64 on the CPU."""
    values = [1.0, tau][: degree + 1]
    while len(values) <= degree:
        values.append(2.0 * tau * values[-1] - values[-2])
    return torch.tensor(values, dtype=torch.float64)


class SpectrumForecaster:
    """Ridge-regressed Chebyshev series over the run's normalised time, blended with linear extrapolation.

    The run's coordinate domain ``[lo, hi]`` (known when the run starts: the schedule's first and last points) maps to
    ``tau`` in ``[-1, 1]``. With ``phi(tau)`` the basis row, the fit after computed points ``(tau_i, h_i)`` is
    ``C = (Phi^T Phi + lam I)^-1 Phi^T H``, and the forecast is ``phi(tau*)^T C``. Both ``Phi^T Phi`` (a
    ``(M+1)^2`` matrix, float64 on the CPU) and ``Phi^T H`` (``M + 1`` feature-sized float32 accumulators on the
    feature's device; float32 rounding limits a degree-6 extrapolation to ~1e-3 relative) are kept as running sums, so memory does not grow with the number of computed steps and a
    forecast is ``M + 1`` multiply-adds over the feature with weights solved on the CPU (no GPU sync).

    ``blend`` is Spectrum's ``w``: ``(1 - w) * linear + w * chebyshev``, where ``linear`` extrapolates the last two
    computed values (Taylor order 1); ``w = 1`` is the pure spectral forecast. With fewer than ``M + 1`` points the
    series is truncated to the degree they determine (``points - 1``; one point: the linear part alone, i.e. reuse),
    so a sparse plan never fits more terms than it has points. A second computed call at the same time (heun's
    correction) replaces that point's value, as Taylor does.
    """

    def __init__(self, degree: int, ridge: float, blend: float, domain: tuple[float, float],
                 half_life: float = 0.0, penalise_level: bool = True) -> None:
        validate_spectrum(degree, ridge, blend)
        if half_life < 0:
            raise ValueError(f"Spectrum half-life must be >= 0 (0: every computed step weighs the same), got {half_life}")
        lo, hi = domain
        self.degree, self.ridge, self.blend = degree, ridge, blend
        self.half_life, self.penalise_level = half_life, penalise_level
        self.center, self.half_width = (lo + hi) / 2.0, ((hi - lo) / 2.0) or 1.0
        self.gram = torch.zeros(degree + 1, degree + 1, dtype=torch.float64)
        self.moments: torch.Tensor | None = None  # Phi^T H: (M + 1, *feature shape), float32
        self.linear = TaylorForecaster(1)
        self.points = 0
        self._solved: tuple[int, torch.Tensor] | None = None  # (points, inverse of the regularised Gram matrix)

    @property
    def ready(self) -> bool:
        return self.linear.ready

    def tau(self, position: float) -> float:
        return (position - self.center) / self.half_width

    def update(self, position: float, value: torch.Tensor) -> None:
        value = value.detach()
        phi = chebyshev(self.tau(position), self.degree)
        if self.moments is None:  # accumulated in float32 at least (float64 features stay float64)
            dtype = torch.promote_types(value.dtype, torch.float32)
            self.moments = torch.zeros((self.degree + 1, *value.shape), dtype=dtype, device=value.device)
        flat = self.moments.view(self.degree + 1, -1)
        newest = self.linear.position
        if self.half_life and newest is not None and position != newest:
            # older points fade: weight 1/2 per half-life (a fraction of the run) between them and the newest point
            fade = 0.5 ** (abs(self.tau(position) - self.tau(newest)) / 2.0 / self.half_life)
            self.gram *= fade
            self.moments *= fade
        if newest == position:  # replace the value of the newest point
            flat.addr_(phi.to(flat), (value.to(flat) - self.linear.differences[0].to(flat)).reshape(-1))
        else:
            self.gram += torch.outer(phi, phi)
            flat.addr_(phi.to(flat), value.to(flat).reshape(-1))
            self.points += 1
        self.linear.update(position, value)

    def weights(self, position: float) -> torch.Tensor:
        """The forecast's weight on each accumulated moment, ``phi(tau*)^T (Phi^T Phi + lam I)^-1``, for the series
        truncated to the degree the points determine."""
        degree = min(self.degree, self.points - 1)
        if self._solved is None or self._solved[0] != self.points:
            gram = self.gram[: degree + 1, : degree + 1]
            penalty = torch.eye(degree + 1, dtype=gram.dtype)
            if not self.penalise_level:
                penalty[0, 0] = 0.0  # shrink the series' shape, not its level (ridge pulls the level towards 0)
            self._solved = (self.points, torch.linalg.inv(gram + self.ridge * penalty))
        return chebyshev(self.tau(position), degree) @ self._solved[1]

    def predict(self, position: float) -> torch.Tensor:
        if not self.linear.ready:
            raise RuntimeError("forecast requested before any computed step")
        linear = self.linear.predict(position)
        if self.blend == 0.0 or self.points < 2:
            return linear
        weights = self.weights(position).tolist()
        spectral = self.moments[0] * weights[0]
        for k in range(1, len(weights)):
            spectral.add_(self.moments[k], alpha=weights[k])
        if self.blend == 1.0:
            return spectral.to(linear.dtype)
        return linear.lerp_(spectral.to(linear.dtype), self.blend)

    def nbytes(self) -> int:
        moments = 0 if self.moments is None else self.moments.numel() * self.moments.element_size()
        return moments + self.linear.nbytes()


def validate_spectrum(degree: int, ridge: float, blend: float) -> None:
    if not 1 <= degree <= 8:
        raise ValueError(f"Spectrum degree must be 1..8 (Chebyshev terms beyond the constant), got {degree}")
    if ridge < 0:
        raise ValueError(f"Spectrum ridge lambda must be >= 0, got {ridge}")
    if not 0.0 <= blend <= 1.0:
        raise ValueError(f"Spectrum blend must be in [0, 1] (0: linear extrapolation only, 1: spectral only), "
                         f"got {blend}")


@dataclass(frozen=True)
class ForecastSpec:
    """How a cacher forecasts skipped steps: which forecaster, its parameters, and its coordinate.

    ``kind`` "taylor" uses ``order``; "spectrum" uses ``degree``, ``ridge`` and ``blend``. ``coordinate``: "step" (the
    position on the schedule, 0..steps), "sigma" (the noise level), "time" (the model's own timestep, e.g. FLUX's
    t = sigma, SD's 0..999 index), each normalised over the run by the Spectrum forecaster.
    """

    kind: str = "taylor"
    order: int = 1
    degree: int = 4
    ridge: float = 0.1
    blend: float = 0.5
    coordinate: str = "step"
    half_life: float = 0.0
    penalise_level: bool = True

    def __post_init__(self) -> None:
        if self.kind == "taylor":
            TaylorForecaster(self.order)
        elif self.kind == "spectrum":
            validate_spectrum(self.degree, self.ridge, self.blend)
        else:
            raise ValueError(f"forecaster must be 'taylor' or 'spectrum', got {self.kind!r}")
        if self.coordinate not in COORDINATES:
            raise ValueError(f"coordinate must be one of {COORDINATES}, got {self.coordinate!r}")

    def make(self, domain: tuple[float, float]) -> Forecaster:
        if self.kind == "taylor":
            return TaylorForecaster(self.order)
        return SpectrumForecaster(self.degree, self.ridge, self.blend, domain, self.half_life, self.penalise_level)

    def describe(self) -> str:
        if self.kind == "taylor":
            return f"Taylor order {self.order} in {self.coordinate}"
        return f"Spectrum M={self.degree} lambda={self.ridge:g} w={self.blend:g} in {self.coordinate}"
