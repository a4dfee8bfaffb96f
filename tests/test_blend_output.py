"""Granularity ``blocks+output``: a skipped call runs no block and returns the mean of the ``blocks`` forecast's output
and a forecast of the whole output; Target Speed takes it on FLUX at ``auto``. Small real FLUX / SDXL models, ComfyUI's
real sampling loop (CPU)."""
import nodes
import pytest
import torch

from comfy.patcher_extension import WrappersMP

from fastlane.cachers.session import StepCache, split_blend
from tiny_models import BlockCounter, sample, sdxl_conditioning, tiny_flux, tiny_sdxl

NODE = nodes.NODE_CLASS_MAPPINGS
STEPS = 8


def target(model, fraction: float, granularity: str, order: int = 2):
    return NODE["FastlaneTargetSpeedCache"].execute(model=model, compute_fraction=fraction, order=order,
                                                    granularity=granularity, start=0.0, end=1.0).result[0]


def cache_of(model) -> StepCache:
    return model.model_options["transformer_options"]["fastlane_cache"]


class Outputs:
    """Every diffusion-model call's output as the sampler receives it (a wrapper outside the cache's)."""

    def __init__(self) -> None:
        self.calls: list[torch.Tensor] = []

    def wrapper(self, executor, *args, **kwargs):
        out = executor(*args, **kwargs)
        self.calls.append(out.detach().clone())
        return out


def outputs_of(flux, fraction: float, granularity: str) -> list[torch.Tensor]:
    seen = Outputs()
    outer = flux.clone()
    outer.add_wrapper_with_key(WrappersMP.DIFFUSION_MODEL, "a_test_outputs", seen.wrapper)
    sample(target(outer, fraction, granularity), steps=STEPS)
    return seen.calls


def test_compute_every_step_is_bit_identical_to_no_cache():
    flux = tiny_flux()
    assert torch.equal(sample(target(flux, 1.0, "blocks+output"), steps=STEPS), sample(flux, steps=STEPS))


def test_a_skipped_call_runs_no_block_and_returns_the_mean_of_both_forecasts():
    flux = tiny_flux()
    blocks, output, blend = (outputs_of(flux, 0.5, g) for g in ("blocks", "output", "blocks+output"))
    computed = cache_of(target(flux, 0.5, "blocks")).make_policy()
    computed.begin(STEPS, [1.0] * STEPS)
    plan = [computed.decide(step, None) for step in range(STEPS)]
    first_skip = plan.index(False)
    assert all(plan[:first_skip]) and first_skip >= 1  # the same computed history in all three runs up to here
    for step in range(first_skip):
        assert torch.equal(blend[step], blocks[step]) and torch.equal(blend[step], output[step])
    assert not torch.allclose(blocks[first_skip], output[first_skip])  # two different forecasts ...
    mean = torch.lerp(blocks[first_skip], output[first_skip], 0.5)  # ... and the blend is their mean
    assert torch.allclose(blend[first_skip], mean, rtol=1e-5, atol=1e-6)

    counter = BlockCounter(flux)
    try:
        sample(target(flux, 0.5, "blocks+output"), steps=STEPS)
    finally:
        counter.close()
    assert counter.calls == sum(plan) * counter.blocks  # skipped calls ran no block


def test_state_resets_between_runs_and_the_received_model_is_unchanged():
    flux = tiny_flux()
    options_before = repr(flux.model_options)
    cached = target(flux, 0.4, "blocks+output")
    first, second = sample(cached, steps=STEPS), sample(cached, steps=STEPS)
    assert torch.equal(first, second)
    assert not torch.equal(first, sample(flux, steps=STEPS))
    assert repr(flux.model_options) == options_before


def test_target_speed_auto_takes_it_on_flux_not_on_sdxl_nor_for_fora():
    auto = cache_of(target(tiny_flux(), 0.4, "auto"))
    assert (auto.granularity, auto.blend_output, auto.option) == ("blocks", True, "blocks+output")
    assert cache_of(target(tiny_sdxl(), 0.4, "auto")).option == "deep"
    fora = NODE["FastlaneFORA"].execute(model=tiny_flux(), interval=2, granularity="auto", start=0.0, end=1.0)
    assert cache_of(fora.result[0]).option == "blocks"


def test_summary_names_the_blend():
    cached = target(tiny_flux(), 0.5, "blocks+output")
    sample(cached, steps=STEPS)  # the run's cache is the fresh copy the OUTER_SAMPLE wrapper made; its config:
    assert cache_of(cached).fresh().option == "blocks+output"


def test_bad_granularities_get_clear_errors():
    with pytest.raises(ValueError, match="SDXL.*takes auto"):
        target(tiny_sdxl(), 0.4, "blocks+output")
    for bad in ("output+output", "+output", "blocks+output+output"):
        with pytest.raises(ValueError, match="only a block granularity can be blended"):
            split_blend(bad)
    assert split_blend("last_block") == ("last_block", False)


def test_sdxl_runs_with_its_own_auto_unchanged():
    sdxl = tiny_sdxl()
    positive, negative = sdxl_conditioning(1), sdxl_conditioning(2)
    latent = torch.zeros(1, 4, 8, 8)
    out = sample(target(sdxl, 0.5, "auto", order=1), steps=STEPS, positive=positive, negative=negative, latent=latent)
    assert torch.isfinite(out).all()
