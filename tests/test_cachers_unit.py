"""Policies, forecasts and step identity on plain tensors (no model)."""
import random

import pytest
import torch

from fastlane.cachers.forecast import TaylorForecaster
from fastlane.cachers.policies import AdaptivePolicy, IntervalPolicy, TargetSpeedPolicy, Window
from fastlane.cachers.schedule import StepClock


def run_policy(policy, n, signals=None):
    policy.begin(n, [1.0] * n)
    return [policy.decide(i, None if signals is None else signals[i]) for i in range(n)]


def test_interval_one_computes_every_step():
    assert all(run_policy(IntervalPolicy(1), 17))


def test_interval_two_computes_every_other_step_inside_window():
    plan = run_policy(IntervalPolicy(2, Window(0.25, 0.75)), 8)
    assert plan == [True, True, True, False, True, False, True, True]


@pytest.mark.parametrize("bad", [0, -1])
def test_interval_below_one_is_refused(bad):
    with pytest.raises(ValueError, match="interval must be >= 1"):
        IntervalPolicy(bad)


def test_window_validation():
    with pytest.raises(ValueError, match="start"):
        Window(0.8, 0.2)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        Window(-0.1, 1.0)


@pytest.mark.parametrize("fraction", [0.05, 0.2, 0.33, 0.4, 0.5, 0.75, 1.0])
def test_target_speed_hits_the_compute_fraction_exactly_for_any_step_count(fraction):
    rng = random.Random(0)
    for n in range(1, 61):
        signals = [rng.choice([None, rng.random() * rng.choice([0.01, 1.0, 10.0])]) for _ in range(n)]
        plan = run_policy(TargetSpeedPolicy(fraction), n, signals)
        assert sum(plan) == min(n, max(1, round(fraction * n))), (n, plan)
        assert plan[0]


def test_target_speed_spreads_its_computes_evenly_up_to_the_last_step():
    plan = run_policy(TargetSpeedPolicy(0.3), 28)
    assert [i for i, c in enumerate(plan) if c] == [0, 4, 8, 12, 15, 19, 23, 27]
    plan = run_policy(TargetSpeedPolicy(0.4, warmup=2), 28)
    assert [i for i, c in enumerate(plan) if c] == [0, 1, 4, 7, 10, 13, 15, 18, 21, 24, 27]
    noisy = run_policy(TargetSpeedPolicy(0.3), 28, [10.0 if i % 2 else 0.0 for i in range(28)])
    assert noisy == run_policy(TargetSpeedPolicy(0.3), 28)  # a fixed plan: no signal, no sync per step
    assert not TargetSpeedPolicy.needs_signal


def test_target_speed_computes_at_least_min_steps_whatever_the_step_count():
    for steps, computed in [(10, 6), (20, 6), (28, 6), (40, 8), (50, 10), (4, 4)]:
        plan = run_policy(TargetSpeedPolicy(0.2, min_steps=6), steps)
        assert sum(plan) == computed and plan[0] and plan[-1], (steps, plan)
    assert run_policy(TargetSpeedPolicy(0.2, min_steps=0), 20) == run_policy(TargetSpeedPolicy(0.2), 20)
    assert "at least 6" in TargetSpeedPolicy(0.2, min_steps=6).describe()
    with pytest.raises(ValueError, match="minimum of computed steps"):
        TargetSpeedPolicy(0.2, min_steps=-1)


def test_target_speed_window_steps_compute_on_top_of_the_budget():
    plan = run_policy(TargetSpeedPolicy(0.25, Window(0.25, 1.0)), 20)
    assert all(plan[:5]) and sum(plan[5:]) == 5 and plan[-1]  # budget round(0.25 * 20) inside the window


def test_adaptive_skips_under_threshold_and_caps_consecutive_skips():
    plan = run_policy(AdaptivePolicy(threshold=1.0, max_skips=2, warmup=1), 10, [None] + [0.01] * 9)
    assert plan == [True, False, False, True, False, False, True, False, False, True]
    plan = run_policy(AdaptivePolicy(threshold=0.1, max_skips=5, warmup=0), 6, [0.0, 0.2, 0.2, 0.05, 0.05, 0.05])
    assert plan == [False, True, True, False, True, False]


def test_adaptive_validation():
    with pytest.raises(ValueError, match="threshold"):
        AdaptivePolicy(-0.1)


@pytest.mark.parametrize("order", [0, 1, 2, 3])
def test_taylor_forecast_is_exact_for_polynomials_of_its_order(order):
    coeffs = torch.randn(order + 1, 5, dtype=torch.float64)
    f = lambda p: sum(coeffs[k] * p**k for k in range(order + 1))  # noqa: E731
    forecaster = TaylorForecaster(order)
    for p in [0.0, 1.0, 3.0, 4.5, 6.0]:  # unevenly spaced, more points than the order needs
        forecaster.update(p, f(p))
    for p in [6.0, 7.0, 8.5]:
        assert torch.allclose(forecaster.predict(p), f(p))


def test_taylor_order_validation():
    with pytest.raises(ValueError, match="0..3"):
        TaylorForecaster(4)


def test_forecaster_replaces_value_at_the_same_position():
    fc = TaylorForecaster(1)
    fc.update(0.0, torch.zeros(2))
    fc.update(1.0, torch.ones(2))
    fc.update(1.0, torch.full((2,), 3.0))  # heun: a second computed call at the same sigma
    assert torch.equal(fc.predict(1.0), torch.full((2,), 3.0))


def test_step_clock_maps_sigmas_to_steps():
    clock = StepClock([1.0, 0.75, 0.5, 0.25, 0.0])
    assert clock.num_steps == 4
    assert [clock.step_index(s) for s in [1.0, 0.75, 0.6, 0.5, 0.25]] == [0, 1, 1, 2, 3]
    assert clock.position(0.625) == pytest.approx(1.5)
    assert clock.matches(torch.tensor([1.0, 0.75, 0.5, 0.25, 0.0]))
    assert not clock.matches([1.0, 0.5, 0.0])
