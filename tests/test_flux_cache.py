"""FLUX step caching inside ComfyUI's real sampling loop, on a small real Flux model (CPU)."""
import nodes
import pytest
import torch

from tiny_models import BlockCounter, sample, tiny_flux

NODE = nodes.NODE_CLASS_MAPPINGS
ALL = dict(start=0.0, end=1.0)


def fora(model, interval, granularity="blocks", **kw):
    return NODE["FastlaneFORA"].execute(model=model, interval=interval, granularity=granularity, **{**ALL, **kw}).result[0]


def taylor(model, interval=3, order=2, warmup_steps=2, granularity="blocks"):
    return NODE["FastlaneTaylorSeer"].execute(model=model, interval=interval, order=order, warmup_steps=warmup_steps,
                                              granularity=granularity, **ALL).result[0]


def target(model, fraction, order=1, granularity="blocks"):
    return NODE["FastlaneTargetSpeedCache"].execute(model=model, compute_fraction=fraction, order=order,
                                                    granularity=granularity, **ALL).result[0]


def adaptive(model, threshold=0.15, granularity="blocks"):
    return NODE["FastlaneAdaptiveCache"].execute(model=model, threshold=threshold, max_skips=3, order=1,
                                                 warmup_steps=2, granularity=granularity, **ALL).result[0]


@pytest.fixture(scope="module")
def flux():
    return tiny_flux()


@pytest.mark.parametrize("granularity", ["blocks", "attention_mlp", "output"])
@pytest.mark.parametrize("sampler", ["euler", "heun", "dpmpp_2s_ancestral"])
def test_compute_every_step_is_bit_identical_to_no_cache(flux, granularity, sampler):
    reference = sample(flux, steps=6, sampler=sampler, size=32)
    cached = fora(flux, 1, granularity)
    assert torch.equal(sample(cached, steps=6, sampler=sampler, size=32), reference)
    assert torch.equal(sample(taylor(flux, interval=1, granularity=granularity), steps=6, sampler=sampler, size=32), reference)


def test_cached_steps_run_no_block(flux):
    counter = BlockCounter(flux)
    try:
        sample(fora(flux, 2), steps=8)
        assert counter.calls == 4 * counter.blocks  # steps 0, 2, 4, 6
        counter.calls = 0
        sample(target(flux, 0.25), steps=8)
        assert counter.calls == 2 * counter.blocks
        counter.calls = 0
        sample(fora(flux, 2, "output"), steps=8)
        assert counter.calls == 4 * counter.blocks
        counter.calls = 0
        sample(fora(flux, 2, "attention_mlp"), steps=8)
        assert counter.calls == 4 * counter.blocks
    finally:
        counter.close()


@pytest.mark.parametrize("granularity", ["blocks", "blocks+output", "last_block", "attention_mlp"])
def test_a_cached_call_builds_no_rope_table_and_gives_the_same_image(flux, granularity):
    """Cached calls skip FLUX's RoPE table (their blocks do not run): it is built on the 2 computed steps of 8 only,
    and the image equals the one of a run where another post_input patch after the cacher's keeps the table built
    at every call."""
    built = []
    hook = flux.model.diffusion_model.pe_embedder.register_forward_hook(lambda *_: built.append(1))
    try:
        cached = target(flux, 0.25, granularity=granularity)
        image = sample(cached, steps=8)
        assert len(built) == 2
        built.clear()
        after = cached.clone()
        after.set_model_post_input_patch(lambda args: dict(args))  # another node's patch, after the cacher's
        assert torch.equal(sample(after, steps=8), image)
        assert len(built) == 8
    finally:
        hook.remove()


@pytest.mark.parametrize("granularity", ["blocks", "attention_mlp", "output"])
def test_skipping_changes_the_result_but_keeps_it_close(flux, granularity):
    reference = sample(flux, steps=12, size=32)
    cached = sample(fora(flux, 2, granularity), steps=12, size=32)
    assert not torch.equal(cached, reference)
    assert torch.isfinite(cached).all()
    assert (cached - reference).abs().mean() < reference.abs().mean()


def test_per_block_cache_gates_forecasts_with_the_current_timestep(flux):
    # attention_mlp recomputes each block's modulation on cached steps: with FORA reuse it differs from
    # reusing the whole stack's residual, which keeps the gates of the last computed step.
    stack = sample(fora(flux, 2, "blocks"), steps=8, size=32)
    per_block = sample(fora(flux, 2, "attention_mlp"), steps=8, size=32)
    assert not torch.equal(stack, per_block)


def test_step_identity_comes_from_sigmas_with_two_calls_per_step(flux):
    counter = BlockCounter(flux)
    try:
        # heun: calls at sigma_i and sigma_{i+1} (not on the last step). Steps 0,2,4,6 compute; the correction call
        # of step i runs at sigma_{i+1} and follows step i+1's decision: 4 first calls + 3 corrections compute.
        sample(fora(flux, 2), steps=8, sampler="heun")
        assert counter.calls == 7 * counter.blocks
    finally:
        counter.close()


def test_state_resets_between_runs_and_samplers_sharing_one_model(flux):
    cached = fora(flux, 2)
    first = sample(cached, steps=8, size=32, seed=3)
    other = sample(cached, steps=5, size=48, seed=4, batch=2)  # another KSampler, another resolution and batch
    fresh_other = sample(fora(flux, 2), steps=5, size=48, seed=4, batch=2)
    again = sample(cached, steps=8, size=32, seed=3)
    assert torch.equal(first, again)
    assert torch.equal(other, fresh_other)


def test_cfg_batches_are_cached_per_batch_composition(flux):
    # cfg > 1: ComfyUI batches cond and uncond; compute-every-step stays exact, and skipping runs no block.
    reference = sample(flux, steps=6, cfg=2.0)
    assert torch.equal(sample(fora(flux, 1), steps=6, cfg=2.0), reference)
    counter = BlockCounter(flux)
    try:
        sample(fora(flux, 3), steps=6, cfg=2.0)
        assert counter.calls == 2 * counter.blocks
    finally:
        counter.close()


def test_img2img_partial_denoise_plans_over_its_own_steps(flux):
    latent = sample(flux, steps=4, size=32)
    reference = sample(flux, steps=10, size=32, latent=latent, denoise=0.5)
    assert torch.equal(sample(fora(flux, 1), steps=10, size=32, latent=latent, denoise=0.5), reference)
    counter = BlockCounter(flux)
    try:
        sample(target(flux, 0.4), steps=10, size=32, latent=latent, denoise=0.5)
        # ComfyUI runs denoise 0.5 as the last 10 steps of a 20-step schedule: the plan covers those 10, 4 compute.
        assert counter.calls == 4 * counter.blocks
    finally:
        counter.close()


def test_target_speed_min_computed_steps_holds_at_fewer_sampler_steps(flux):
    counter = BlockCounter(flux)
    try:
        for steps, computed in [(10, 6), (30, 6), (40, 8)]:  # fraction 0.2, at least 6 (the fastest FLUX workflow)
            counter.calls = 0
            cached = NODE["FastlaneTargetSpeedCache"].execute(model=flux, compute_fraction=0.2, order=2,
                                                              granularity="blocks", min_computed_steps=6,
                                                              **ALL).result[0]
            sample(cached, steps=steps, size=32)
            assert counter.calls == computed * counter.blocks, steps
    finally:
        counter.close()


def test_the_input_model_is_unchanged(flux):
    before = sample(flux, steps=6)
    options_before = repr(flux.model_options)
    wrappers_before = repr(flux.wrappers)
    for make in (lambda m: fora(m, 2), lambda m: taylor(m), lambda m: target(m, 0.4), lambda m: adaptive(m)):
        cached = make(flux)
        sample(cached, steps=6)
        assert cached is not flux
    assert repr(flux.model_options) == options_before
    assert repr(flux.wrappers) == wrappers_before
    assert torch.equal(sample(flux, steps=6), before)


def test_lora_style_weight_patches_before_and_after_the_cacher(flux):
    key = "diffusion_model.double_blocks.0.img_attn.qkv.weight"
    weight = flux.model.state_dict()[key]
    bump = ("diff", (torch.full_like(weight, 0.05),))

    patched_after = fora(flux, 1).clone()
    patched_after.add_patches({key: bump}, 1.0)
    patched_before = flux.clone()
    patched_before.add_patches({key: bump}, 1.0)
    reference = sample(patched_before, steps=6)
    assert not torch.equal(reference, sample(flux, steps=6))  # the patch does something
    assert torch.equal(sample(fora(patched_before, 1), steps=6), reference)
    assert torch.equal(sample(patched_after, steps=6), reference)


def test_adaptive_and_target_run_and_report(flux, caplog):
    caplog.set_level("INFO", logger="fastlane")
    sample(target(flux, 0.5), steps=10)
    assert "computed 5 of 10 steps" in caplog.text
    sample(adaptive(flux, threshold=0.5), steps=10)
    assert "Adaptive" in caplog.text


@pytest.mark.parametrize("make, message", [
    (lambda m: fora(m, 0), "interval must be >= 1"),
    (lambda m: taylor(m, order=4), "order must be 0..3"),
    (lambda m: adaptive(m, threshold=-1.0), "threshold must be >= 0"),
    (lambda m: target(m, 0.0), "compute fraction"),
    (lambda m: fora(m, 2, start=0.9, end=0.1), "start"),
])
def test_bad_parameters_give_clear_errors_and_leave_the_model_alone(flux, make, message):
    options_before = repr(flux.model_options)
    with pytest.raises(ValueError, match=message):
        make(flux)
    assert repr(flux.model_options) == options_before


def test_one_cacher_per_chain(flux):
    with pytest.raises(ValueError, match="already has a Fastlane cacher"):
        fora(fora(flux, 2), 3)
