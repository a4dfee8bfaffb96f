"""A call's sigma from the sampler's progress instead of the GPU (cachers/sigma_source.py), in ComfyUI's real loop."""
import logging

import nodes
import pytest
import torch

from fastlane.cachers import sigma_source
from tiny_models import sample, tiny_flux

NODE = nodes.NODE_CLASS_MAPPINGS
HOLDER = "fastlane_cache"


def target(model, fraction=0.25):
    return NODE["FastlaneTargetSpeedCache"].execute(model=model, compute_fraction=fraction, order=1,
                                                    granularity="blocks", start=0.0, end=1.0).result[0]


@pytest.fixture(scope="module")
def flux():
    return tiny_flux()


@pytest.fixture
def runs(monkeypatch):
    """(predicted calls, wrong predictions) of every run that followed its sampler's progress."""
    seen = []
    original = sigma_source.SigmaSource.wrong_predictions

    def spy(self):
        wrong = original(self)
        seen.append((self.predicted_calls, wrong))
        return wrong

    monkeypatch.setattr(sigma_source.SigmaSource, "wrong_predictions", spy)
    return seen


def unpredicted(model):
    """A clone whose cacher reads every call's sigma back, as before sigma_source.py."""
    clone = model.clone()
    cache = clone.model_options["transformer_options"][HOLDER]
    clone.model_options["transformer_options"][HOLDER] = cache.fresh()
    clone.model_options["transformer_options"][HOLDER].predict_sigmas = False
    return clone


@pytest.mark.parametrize("sampler,cfg", [("euler", 1.0), ("euler", 3.0), ("dpmpp_2m", 3.0), ("euler_ancestral", 1.0)])
def test_predicted_sigmas_give_the_image_of_read_ones(flux, runs, sampler, cfg):
    cached = target(flux)
    image = sample(cached, steps=8, sampler=sampler, cfg=cfg, size=32)
    assert runs == [(8, 0)]  # every call's sigma predicted (cond and uncond share one batch), none wrong
    assert torch.equal(sample(unpredicted(cached), steps=8, sampler=sampler, cfg=cfg, size=32), image)
    assert len(runs) == 1  # the unpredicted run followed nothing


def test_samplers_that_call_again_after_the_callback_keep_reading_the_sigma(flux, runs):
    cached = target(flux)
    for sampler in ("heun", "dpmpp_2s_ancestral", "dpm_2"):
        sample(cached, steps=6, sampler=sampler, size=32)
    assert runs == []


def test_a_wrong_prediction_is_found_logged_and_turns_prediction_off(flux, runs, monkeypatch, caplog):
    # dpmpp_2s_ancestral's second call of a step comes after the callback, at a midpoint sigma: declared predictable
    # here on purpose, its predictions are wrong, and the run's end must say so and stop predicting
    monkeypatch.setattr(sigma_source, "PREDICTABLE", sigma_source.PREDICTABLE | {"sample_dpmpp_2s_ancestral"})
    cached = target(flux)
    with caplog.at_level(logging.WARNING, logger="fastlane"):
        sample(cached, steps=6, sampler="dpmpp_2s_ancestral", size=32)
    assert len(runs) == 1 and runs[0][1] > 0
    assert "not at the sigma the sampler's progress predicted" in caplog.text
    assert cached.model_options["transformer_options"][HOLDER].predict_sigmas is False
    image = sample(cached, steps=6, sampler="dpmpp_2s_ancestral", size=32)
    assert len(runs) == 1  # no more predictions for this cacher
    assert torch.equal(image, sample(unpredicted(cached), steps=6, sampler="dpmpp_2s_ancestral", size=32))


def test_a_user_callback_still_sees_every_step(flux):
    import comfy.sample

    steps = []
    latent = torch.zeros(1, 16, 4, 4)
    comfy.sample.sample(target(flux), comfy.sample.prepare_noise(latent, 0), 8, 1.0, "euler", "simple",
                        *_conds(), latent, seed=0, disable_pbar=True, callback=lambda i, *_: steps.append(i))
    assert steps == list(range(8))


def _conds():
    from tiny_models import flux_conditioning

    return flux_conditioning(1), flux_conditioning(2)


def test_the_source_predicts_a_batchs_first_call_per_step_and_reads_the_rest():
    source = sigma_source.SigmaSource()
    schedule = [1.0, 0.75, 0.5, 0.0]
    t = torch.tensor([0.75])
    assert source.sigma(torch.tensor([1.0]), "a", schedule) == 1.0
    assert source.sigma(torch.tensor([1.0]), "b", schedule) == 1.0  # another batch, same step: predicted
    assert source.sigma(torch.tensor([0.9]), "a", schedule) == pytest.approx(0.9)  # a's second call: read
    source.step_done(0)
    assert source.sigma(t, "a", schedule) == 0.75
    assert source.predicted_calls == 3 and source.wrong_predictions() == 0
    source.step_done(2)
    assert source.sigma(torch.tensor([0.25]), "a", schedule) == pytest.approx(0.25)  # past the last step: read
