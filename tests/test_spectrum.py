"""The Spectrum-class forecaster: its maths on plain tensors, and Fastlane Spectrum Cache in ComfyUI's real sampling
loop on small real FLUX and SDXL models (CPU)."""
import math

import nodes
import pytest
import torch

from fastlane.cachers.comfy_hooks import attach
from fastlane.cachers.adapters import adapter_for
from fastlane.cachers.forecast import ForecastSpec, SpectrumForecaster, chebyshev
from fastlane.cachers.policies import AdaptivePolicy, IntervalPolicy, TargetSpeedPolicy, spread
from fastlane.cachers.session import StepCache
from tiny_models import BlockCounter, sample, sdxl_conditioning, tiny_flux, tiny_sdxl

NODE = nodes.NODE_CLASS_MAPPINGS
ALL = dict(start=0.0, end=1.0)


def spectrum(model, fraction=0.4, degree=4, ridge=0.1, blend=0.5, warmup_steps=2, growth=0.5, coordinate="step",
             granularity="auto", **kw):
    return NODE["FastlaneSpectrumCache"].execute(
        model=model, compute_fraction=fraction, degree=degree, ridge=ridge, blend=blend, warmup_steps=warmup_steps,
        growth=growth, coordinate=coordinate, granularity=granularity, **{**ALL, **kw}).result[0]


# ---- the forecaster on plain tensors --------------------------------------------------------------------------------

def test_chebyshev_basis_matches_the_cosine_definition():
    for tau in (-1.0, -0.3, 0.0, 0.7, 1.0):
        expected = [math.cos(k * math.acos(tau)) for k in range(6)]
        assert torch.allclose(chebyshev(tau, 5), torch.tensor(expected, dtype=torch.float64), atol=1e-12)


@pytest.mark.parametrize("degree", [1, 2, 4, 6])
def test_exact_on_polynomials_of_its_degree_in_its_coordinate(degree):
    coeffs = torch.randn(degree + 1, 7, dtype=torch.float64)
    f = lambda p: sum(coeffs[k] * (p / 10) ** k for k in range(degree + 1))  # noqa: E731
    forecaster = SpectrumForecaster(degree, ridge=0.0, blend=1.0, domain=(0.0, 28.0))
    points = [0.0, 1.0, 2.5, 4.0, 7.0, 11.0, 16.0, 22.0]
    for p in points[:1] + points[-degree - 1:]:  # uneven over the run, one point more than the degree needs
        forecaster.update(p, f(p))  # float64 features: the fit is exact up to float64 rounding
    for p in [3.0, 12.0, 25.0, 28.0]:
        assert torch.allclose(forecaster.predict(p), f(p), rtol=1e-8, atol=1e-8), p


def test_ridge_shrinks_and_blend_mixes_with_linear_extrapolation():
    f = lambda p: torch.full((3,), 2.0 + 0.1 * p * p)  # noqa: E731
    points = [0.0, 2.0, 5.0, 9.0, 14.0, 20.0]
    spectral = SpectrumForecaster(4, 0.0, 1.0, (0.0, 28.0))
    shrunk = SpectrumForecaster(4, 10.0, 1.0, (0.0, 28.0))
    blended = SpectrumForecaster(4, 0.0, 0.5, (0.0, 28.0))
    linear = SpectrumForecaster(4, 0.0, 0.0, (0.0, 28.0))
    for p in points:
        for fc in (spectral, shrunk, blended, linear):
            fc.update(p, f(p))
    assert torch.allclose(spectral.predict(24.0), f(24.0), atol=1e-3)
    assert (shrunk.predict(24.0) - f(24.0)).abs().max() > 0.1  # a heavy ridge pulls the fit away from the data
    lin = f(20.0) + (f(20.0) - f(14.0)) * (24.0 - 20.0) / 6.0
    assert torch.allclose(linear.predict(24.0), lin, atol=1e-4)
    assert torch.allclose(blended.predict(24.0), 0.5 * (lin + f(24.0)), atol=1e-3)


def test_few_points_truncate_the_series_and_repeated_times_replace_the_value():
    fc = SpectrumForecaster(4, 0.0, 1.0, (0.0, 10.0))
    fc.update(0.0, torch.ones(4))
    assert torch.equal(fc.predict(3.0), torch.ones(4))  # one point: reuse
    fc.update(2.0, torch.full((4,), 3.0))
    assert torch.allclose(fc.predict(4.0), torch.full((4,), 5.0))  # two points: the line through them
    fc.update(2.0, torch.full((4,), 5.0))  # heun: a second computed call at the same time replaces the value
    again = SpectrumForecaster(4, 0.0, 1.0, (0.0, 10.0))
    again.update(0.0, torch.ones(4))
    again.update(2.0, torch.full((4,), 5.0))
    assert fc.points == 2
    assert torch.allclose(fc.predict(4.0), again.predict(4.0), atol=1e-5)


def test_memory_does_not_grow_with_the_computed_steps():
    fc = SpectrumForecaster(4, 0.1, 0.5, (0.0, 50.0))
    sizes = []
    for p in range(20):
        fc.update(float(p), torch.randn(64))
        sizes.append(fc.nbytes())
    assert sizes[5] == sizes[-1] == (5 + 2) * 64 * 4  # M + 1 moments and the two linear terms


@pytest.mark.parametrize("kwargs, message", [
    (dict(degree=0), "degree must be 1..8"),
    (dict(degree=9), "degree must be 1..8"),
    (dict(ridge=-0.1), "lambda must be >= 0"),
    (dict(blend=1.5), "blend must be in"),
    (dict(coordinate="frames"), "coordinate must be one of"),
])
def test_forecast_spec_refuses_bad_parameters(kwargs, message):
    with pytest.raises(ValueError, match=message):
        ForecastSpec("spectrum", **kwargs)


@pytest.mark.parametrize("fraction, growth", [(0.15, 0.5), (0.3, 0.5), (0.3, 1.0), (0.5, 1.0), (0.6, 0.3)])
def test_growing_plans_keep_the_exact_count_first_and_last_step(fraction, growth):
    for n in (8, 20, 28, 50):
        policy = TargetSpeedPolicy(fraction, warmup=2, growth=growth)
        policy.begin(n)
        plan = sorted(policy.plan)
        budget = min(n, max(1, round(fraction * n)))
        assert len(plan) == budget
        assert plan[:2] == [0, 1][:budget]  # the warm-up, from the budget
        assert budget <= 2 or plan[-1] == n - 1
    gaps = [b - a for a, b in zip(spread(list(range(40)), 8, growth=1.0), spread(list(range(40)), 8, growth=1.0)[1:])]
    assert gaps[-1] > gaps[0]  # dense early, sparse late


# ---- in ComfyUI's sampling loop -------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def flux():
    return tiny_flux()


@pytest.mark.parametrize("granularity", ["blocks", "last_block", "output"])
@pytest.mark.parametrize("sampler", ["euler", "heun"])
def test_compute_every_step_is_bit_identical_to_no_cache(flux, granularity, sampler):
    reference = sample(flux, steps=6, sampler=sampler, size=32)
    assert torch.equal(sample(spectrum(flux, 1.0, granularity=granularity), steps=6, sampler=sampler, size=32),
                       reference)


@pytest.mark.parametrize("granularity", ["blocks", "last_block", "output"])
def test_cached_steps_run_no_block_and_stay_close(flux, granularity):
    reference = sample(flux, steps=12, size=32)
    counter = BlockCounter(flux)
    try:
        cached = sample(spectrum(flux, 0.5, granularity=granularity), steps=12, size=32)
        assert counter.calls == 6 * counter.blocks
    finally:
        counter.close()
    assert not torch.equal(cached, reference)
    assert torch.isfinite(cached).all()
    assert (cached - reference).abs().mean() < 0.5 * reference.abs().mean()


def test_min_computed_steps_is_a_floor_on_the_plan(flux):
    counter = BlockCounter(flux)
    try:
        sample(spectrum(flux, 0.2, min_computed_steps=6), steps=12, size=32)  # round(0.2 * 12) = 2, floor 6
        assert counter.calls == 6 * counter.blocks
    finally:
        counter.close()


def test_spectral_forecast_differs_from_linear_and_both_run_with_heun(flux):
    spectral = sample(spectrum(flux, 0.5, blend=1.0), steps=12, size=32, sampler="heun")
    linear = sample(spectrum(flux, 0.5, blend=0.0), steps=12, size=32, sampler="heun")
    assert torch.isfinite(spectral).all() and torch.isfinite(linear).all()
    assert not torch.equal(spectral, linear)


def test_flux_time_is_sigma(flux):
    # FLUX's model timestep is its sigma, so the two coordinates give the same forecasts; step differs.
    by_sigma = sample(spectrum(flux, 0.4, coordinate="sigma"), steps=10, size=32)
    assert torch.equal(sample(spectrum(flux, 0.4, coordinate="time"), steps=10, size=32), by_sigma)
    assert not torch.equal(sample(spectrum(flux, 0.4, coordinate="step"), steps=10, size=32), by_sigma)


def test_state_resets_between_runs_resolutions_and_batches(flux):
    cached = spectrum(flux, 0.4)
    first = sample(cached, steps=10, size=32, seed=3)
    other = sample(cached, steps=7, size=48, seed=4, batch=2)
    assert torch.equal(other, sample(spectrum(flux, 0.4), steps=7, size=48, seed=4, batch=2))
    assert torch.equal(sample(cached, steps=10, size=32, seed=3), first)


def test_cfg_batches_forecast_apart_and_compute_every_step_stays_exact(flux):
    reference = sample(flux, steps=6, cfg=2.0)
    assert torch.equal(sample(spectrum(flux, 1.0), steps=6, cfg=2.0), reference)
    counter = BlockCounter(flux)
    try:
        out = sample(spectrum(flux, 0.5), steps=8, cfg=2.0)
        assert counter.calls == 4 * counter.blocks  # cond and uncond in one batch: one call per computed step
    finally:
        counter.close()
    assert torch.isfinite(out).all()


@pytest.mark.parametrize("make_policy, computed", [
    (lambda: IntervalPolicy(3, warmup=2), 5),
    (lambda: AdaptivePolicy(1e9, max_skips=2, warmup=2), 4),
    (lambda: TargetSpeedPolicy(0.3), 3),
])
def test_the_spectrum_forecaster_works_under_every_policy(flux, make_policy, computed):
    cache = StepCache(make_policy, ForecastSpec("spectrum", degree=3), "blocks", "spectrum under a policy")
    model = attach(flux, cache, adapter_for(flux))
    counter = BlockCounter(flux)
    try:
        out = sample(model, steps=10, size=32)
        assert counter.calls == computed * counter.blocks
    finally:
        counter.close()
    assert torch.isfinite(out).all()


def test_lora_style_patches_before_and_after_the_cacher(flux):
    key = "diffusion_model.double_blocks.0.img_attn.qkv.weight"
    bump = ("diff", (torch.full_like(flux.model.state_dict()[key], 0.05),))
    before = flux.clone()
    before.add_patches({key: bump}, 1.0)
    after = spectrum(flux, 1.0).clone()
    after.add_patches({key: bump}, 1.0)
    reference = sample(before, steps=6)
    assert torch.equal(sample(spectrum(before, 1.0), steps=6), reference)
    assert torch.equal(sample(after, steps=6), reference)


def test_the_input_model_is_unchanged(flux):
    before = sample(flux, steps=6)
    options = repr(flux.model_options)
    sample(spectrum(flux, 0.4, granularity="last_block"), steps=6)
    assert repr(flux.model_options) == options
    assert torch.equal(sample(flux, steps=6), before)


@pytest.mark.parametrize("kwargs, message", [
    (dict(fraction=0.0), "compute fraction"),
    (dict(fraction=1.5), "compute fraction"),
    (dict(degree=0), "degree must be 1..8"),
    (dict(ridge=-1.0), "lambda must be >= 0"),
    (dict(blend=2.0), "blend must be in"),
    (dict(growth=-0.5), "growth must be in"),
    (dict(granularity="deep"), "granularity 'deep' is a SDXL option"),
])
def test_bad_parameters_give_clear_errors_at_node_time(flux, kwargs, message):
    options = repr(flux.model_options)
    with pytest.raises(ValueError, match=message):
        spectrum(flux, **{"fraction": 0.4, **kwargs})
    assert repr(flux.model_options) == options


def test_sdxl_deep_feature_is_forecast_by_the_spectrum_forecaster():
    torch.set_num_threads(1)
    sdxl = tiny_sdxl()
    kw = dict(cfg=5.0, positive=sdxl_conditioning(1, size=64), negative=sdxl_conditioning(2, size=64),
              latent=torch.zeros(1, 4, 8, 8))
    reference = sample(sdxl, steps=8, **kw)
    assert torch.equal(sample(spectrum(sdxl, 1.0, coordinate="time"), steps=8, **kw), reference)
    cached = sample(spectrum(sdxl, 0.5, coordinate="time"), steps=8, **kw)
    assert torch.isfinite(cached).all() and not torch.equal(cached, reference)
