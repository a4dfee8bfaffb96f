"""SDXL step caching (DeepCache and the shared policies) inside ComfyUI's real sampling loop, on a small real SDXL
UNet (ComfyUI's own classes, random weights, CPU)."""
import comfy.controlnet
import comfy.sample
import nodes
import pytest
import torch

from fastlane.cachers.adapters.sdxl import SDXLAdapter, _capture_patch
from tiny_models import sample, sdxl_conditioning, tiny_flux, tiny_sdxl

NODE = nodes.NODE_CLASS_MAPPINGS
ALL = {"start": 0.0, "end": 1.0}
CFG = 7.0  # ComfyUI batches cond and uncond into one call


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    # Tiny convolutions on a shared 2-core machine: one thread is ~10x faster than two that fight.
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def sdxl():
    return tiny_sdxl()


def run(model, steps=6, sampler="euler", cfg=CFG, size=64, batch=1, positive=None, negative=None, seed=0, **kw):
    latent = kw.pop("latent", None)
    latent = torch.zeros(batch, 4, size // 8, size // 8) if latent is None else latent
    return sample(model, steps=steps, sampler=sampler, cfg=cfg, latent=latent, seed=seed,
                  positive=positive or sdxl_conditioning(1, size=size), negative=negative or sdxl_conditioning(2, size=size),
                  **kw)


def deepcache(model, interval=3, branch=0, **kw):
    return NODE["FastlaneDeepCache"].execute(model=model, interval=interval, branch=branch, **{**ALL, **kw}).result[0]


def fora(model, interval, granularity="auto", **kw):
    return NODE["FastlaneFORA"].execute(model=model, interval=interval, granularity=granularity, **{**ALL, **kw}).result[0]


def taylor(model, interval=3, order=2, warmup_steps=2, granularity="auto"):
    return NODE["FastlaneTaylorSeer"].execute(model=model, interval=interval, order=order, warmup_steps=warmup_steps,
                                              granularity=granularity, **ALL).result[0]


def target(model, fraction, order=1, granularity="auto"):
    return NODE["FastlaneTargetSpeedCache"].execute(model=model, compute_fraction=fraction, order=order,
                                                    granularity=granularity, **ALL).result[0]


def adaptive(model, threshold=0.15, granularity="auto"):
    return NODE["FastlaneAdaptiveCache"].execute(model=model, threshold=threshold, max_skips=3, order=1,
                                                 warmup_steps=2, granularity=granularity, **ALL).result[0]


class UNetCounter:
    """Forward calls of each input block, the middle block and each output block of the real UNet: hooks on each
    block's first layer (ComfyUI runs a block's layers through forward_timestep_embed, not the block's forward)."""

    def __init__(self, patcher) -> None:
        unet = patcher.model.diffusion_model
        self.n = len(unet.input_blocks)
        modules = {**{("input", i): b[0] for i, b in enumerate(unet.input_blocks)}, ("middle", 0): unet.middle_block[0],
                   **{("output", i): b[0] for i, b in enumerate(unet.output_blocks)}}
        self.calls = dict.fromkeys(modules, 0)
        self.handles = [m.register_forward_pre_hook(lambda _m, _a, k=k: self._hit(k)) for k, m in modules.items()]

    def _hit(self, key) -> None:
        self.calls[key] += 1

    def deep_and_shallow(self, branch: int = 0) -> tuple[set, set]:
        """Call counts of the blocks a cached step skips and of those it runs, for DeepCache branch ``branch``."""
        b = branch + 2
        shallow = {k for k in self.calls if (k[0] == "input" and k[1] < b) or (k[0] == "output" and k[1] >= self.n - b)}
        return {self.calls[k] for k in self.calls if k not in shallow}, {self.calls[k] for k in shallow}

    def close(self) -> None:
        for h in self.handles:
            h.remove()


@pytest.fixture
def counter(sdxl):
    c = UNetCounter(sdxl)
    yield c
    c.close()


# ---- exactness -----------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("sampler", ["euler", "heun", "dpmpp_2s_ancestral"])
def test_compute_every_step_is_bit_identical_to_no_cache(sdxl, sampler):
    reference = run(sdxl, sampler=sampler)
    for cached in (deepcache(sdxl, 1), deepcache(sdxl, 1, branch=5), fora(sdxl, 1), fora(sdxl, 1, "output"),
                   taylor(sdxl, interval=1)):
        assert torch.equal(run(cached, sampler=sampler), reference)


class _Call:
    """Stands in for a cacher Call: keeps the feature the capture patch handed out, and serves it back."""

    compute = True

    def __init__(self) -> None:
        self.stored = {}

    def store(self, feature, value):
        self.stored[feature] = value

    def forecast(self, feature):
        return self.stored[feature].clone()


def _block_shapes(unet, x, t, context, y):
    shapes = {}
    hooks = [b[-1].register_forward_hook(lambda _m, _i, out, i=i: shapes.setdefault(i, out.shape) and None)
             for i, b in enumerate(unet.input_blocks)]
    hooks.append(unet.middle_block[-1].register_forward_hook(lambda _m, _i, out: shapes.setdefault("middle", out.shape) and None))
    try:
        unet(x, t, context, y, transformer_options={})
    finally:
        for h in hooks:
            h.remove()
    return shapes


@pytest.mark.parametrize("branch", [0, 2, 7])
def test_the_shallow_path_is_the_full_unet_when_fed_its_own_deep_feature(sdxl, branch):
    """The cached-step path, given the deep feature of the same inputs, reproduces ComfyUI's UNet bit for bit with
    emb/input/output/attention patches and ControlNet residuals on every skip: it honours them all, in order."""
    unet = sdxl.model.diffusion_model
    g = torch.Generator().manual_seed(0)
    x, context = torch.randn(2, 4, 8, 8, generator=g), torch.randn(2, 8, 32, generator=g)
    y, t = torch.randn(2, unet.label_emb[0][0].in_features, generator=g), torch.tensor([700.0, 700.0])
    shapes = _block_shapes(unet, x, t, context, y)
    residuals = [0.1 * torch.randn(shapes[i], generator=g) for i in range(len(unet.input_blocks))]
    middle = 0.1 * torch.randn(shapes["middle"], generator=g)

    def control():  # popped from the end, one per block: "input" from block 0 on, "output" from the deepest skip on
        return {"input": [r * 0.5 for r in reversed(residuals)], "middle": [middle.clone()],
                "output": [r.clone() for r in residuals]}

    def freeu_like(h, hsp, to):  # writes into h in place, like FreeU
        h[:, :1] *= 1.1
        return h, hsp * 0.9

    seen = []

    def options(call):
        return {"fastlane_call": call, "patches": {
            "emb_patch": [lambda emb, ch, to: emb * 1.01],
            "input_block_patch": [lambda h, to: h * 1.02 if to["block"][1] % 2 else h],
            "input_block_patch_after_skip": [lambda h, to: h + 0.01],
            "output_block_patch": [_capture_patch(len(unet.output_blocks) - branch - 2), freeu_like],
            "attn1_patch": [lambda n, c, v, extra: (seen.append((extra["block"], extra["transformer_index"])), n * 0.95, c, v)[1:]],
        }}

    call = _Call()
    with torch.no_grad():
        full_options = options(call)
        full = unet(x, t, context, y, control=control(), transformer_options=full_options)
        call.store("deep", full_options["fastlane_deep_feature"])  # what the cacher's wrapper does after a full pass
        full_seen, seen[:] = list(seen), []
        call.compute = False
        shallow = SDXLAdapter(branch).shallow_forward(unet, call.forecast("deep"), x, t, context, y, control(),
                                                      options(call))
    assert torch.equal(shallow, full)
    b, n = branch + 2, len(unet.output_blocks)
    live = [s for s in full_seen if (s[0][0] == "input" and s[0][1] < b) or (s[0][0] == "output" and s[0][1] >= n - b)]
    assert seen == live and (branch == 0 or seen)  # the same attention calls, with the same transformer_index


# ---- cached steps skip the deep blocks ---------------------------------------------------------------------------

def test_cached_steps_run_only_the_shallow_blocks(sdxl, counter):
    out = run(deepcache(sdxl, 3), steps=9)  # steps 0, 3, 6 compute; cond+uncond in one call per step
    deep, shallow = counter.deep_and_shallow(branch=0)
    assert deep == {3} and shallow == {9}
    assert torch.isfinite(out).all()


@pytest.mark.parametrize("make, branch, computed", [
    (lambda m: deepcache(m, 2, branch=3), 3, 4),  # steps 0, 2, 4, 6
    (lambda m: fora(m, 2), 0, 4),
    (lambda m: taylor(m, interval=3, order=2, warmup_steps=2), 0, 4),  # 0, 1 (warmup), then 2, 5
    (lambda m: target(m, 0.25), 0, 2),
], ids=["deepcache_i2_b3", "fora2", "taylorseer_i3_o2", "target0.25"])
def test_policies_cache_the_deep_feature(sdxl, counter, make, branch, computed):
    run(make(sdxl), steps=8)
    deep, shallow = counter.deep_and_shallow(branch)
    assert deep == {computed} and shallow == {8}


def test_output_granularity_skips_the_whole_unet(sdxl, counter):
    run(fora(sdxl, 2, "output"), steps=8)
    assert set(counter.calls.values()) == {4}


def test_adaptive_runs_and_reports(sdxl, caplog):
    caplog.set_level("INFO", logger="fastlane")
    out = run(adaptive(sdxl, threshold=0.5), steps=10)
    assert "Adaptive" in caplog.text and torch.isfinite(out).all()
    run(deepcache(sdxl, 3), steps=10)
    assert "DeepCache/3/b0 (interval 3): computed 4 of 10 steps [0, 3, 6, 9], 6 calls from cache" in caplog.text


def test_taylor_forecast_of_the_deep_feature_differs_from_reuse(sdxl):
    reference = run(sdxl, steps=9)
    reuse = run(taylor(sdxl, interval=3, order=0, warmup_steps=2), steps=9)
    forecast = run(taylor(sdxl, interval=3, order=2, warmup_steps=2), steps=9)
    assert not torch.equal(reuse, forecast) and not torch.equal(reuse, reference)
    assert torch.isfinite(forecast).all()


def test_deeper_branches_stay_closer_to_the_uncached_model(sdxl):
    reference = run(sdxl, steps=9)

    def error(branch):
        return float((run(deepcache(sdxl, 3, branch=branch), steps=9) - reference).abs().mean())

    shallowest, deepest = error(0), error(7)
    assert 0 < deepest < shallowest


# ---- step identity, CFG batches, state -----------------------------------------------------------------------------

def test_step_identity_comes_from_sigmas(sdxl, counter):
    # heun: calls at sigma_i and sigma_{i+1} (no correction on the last step). Steps 0, 2, 4, 6 compute; a correction
    # belongs to the step of its sigma: 4 first calls + corrections of steps 1, 3, 5 (at 2, 4, 6) = 7 deep passes.
    run(deepcache(sdxl, 2), steps=8, sampler="heun")
    deep, shallow = counter.deep_and_shallow()
    assert deep == {7} and shallow == {15}
    # dpmpp_2s_ancestral: the midpoint call of step i sits between sigma_i and sigma_{i+1}, so it follows step i.
    counter.calls = dict.fromkeys(counter.calls, 0)
    run(deepcache(sdxl, 2), steps=8, sampler="dpmpp_2s_ancestral")
    deep, shallow = counter.deep_and_shallow()
    assert deep == {7} and shallow == {15}  # 8 steps, 2 calls each except the last (sigma 0: one euler call)


def test_cond_and_uncond_batched_apart_are_cached_apart(sdxl, counter):
    # 8 vs 13 context tokens cannot be padded into one batch: ComfyUI runs cond and uncond as separate calls.
    positive, negative = sdxl_conditioning(1, tokens=8), sdxl_conditioning(2, tokens=13)
    reference = run(sdxl, positive=positive, negative=negative)
    assert set(counter.calls.values()) == {12}  # 6 steps x 2 calls
    assert torch.equal(run(deepcache(sdxl, 1), positive=positive, negative=negative), reference)
    counter.calls = dict.fromkeys(counter.calls, 0)
    run(deepcache(sdxl, 3), positive=positive, negative=negative)
    deep, shallow = counter.deep_and_shallow()
    assert deep == {4} and shallow == {12}  # steps 0 and 3, each for cond and for uncond


def test_state_resets_between_runs_prompts_resolutions_and_batches(sdxl):
    cached = deepcache(sdxl, 3)
    first = run(cached, steps=7, seed=3)
    other_negative = run(cached, steps=7, seed=3, negative=sdxl_conditioning(5))
    other_shape = run(cached, steps=5, seed=4, size=32, batch=2)
    again = run(cached, steps=7, seed=3)
    assert torch.equal(first, again)
    assert torch.equal(other_negative, run(deepcache(sdxl, 3), steps=7, seed=3, negative=sdxl_conditioning(5)))
    assert not torch.equal(other_negative, first)
    assert torch.equal(other_shape, run(deepcache(sdxl, 3), steps=5, seed=4, size=32, batch=2))


def _stage(model, noise, latent, start, last, positive, negative, steps=10, add_noise=True):
    # What KSamplerAdvanced does: one schedule, steps start..last, leftover noise kept between the stages.
    return comfy.sample.sample(model, noise if add_noise else torch.zeros_like(noise), steps, CFG, "euler", "normal",
                               positive, negative, latent, start_step=start, last_step=last,
                               force_full_denoise=last >= steps, disable_noise=not add_noise, seed=0, disable_pbar=True)


def test_a_refiner_stage_starts_from_fresh_state(sdxl):
    refiner = tiny_sdxl(seed=1, refiner=True)
    positive, negative = sdxl_conditioning(1), sdxl_conditioning(2)
    latent = torch.zeros(1, 4, 8, 8)
    noise = comfy.sample.prepare_noise(latent, 0)
    base_cached, refiner_cached = deepcache(sdxl, 3), deepcache(refiner, 3)
    counter = UNetCounter(refiner)
    try:
        half = _stage(base_cached, noise, latent, 0, 6, positive, negative)
        refined = _stage(refiner_cached, noise, half, 6, 10, positive, negative, add_noise=False)
        deep, shallow = counter.deep_and_shallow()
        assert deep == {2} and shallow == {4}  # its own plan over the 4 steps left: steps 0 and 3 of 4 compute
    finally:
        counter.close()
    assert torch.equal(refined, _stage(deepcache(refiner, 3), noise, half, 6, 10, positive, negative, add_noise=False))
    # the second stage on the *same* cached MODEL as the first (KSamplerAdvanced twice) starts fresh as well
    again = _stage(base_cached, noise, half, 6, 10, positive, negative, add_noise=False)
    assert torch.equal(again, _stage(deepcache(sdxl, 3), noise, half, 6, 10, positive, negative, add_noise=False))


class _FixedControl(comfy.controlnet.ControlBase):
    """A ControlNet stand-in for the sampling loop: fixed residuals on every skip and on the middle block, applied on
    the calls numbered in ``active`` (all when None), zero on the others."""

    def __init__(self, residuals, middle, active=None):
        super().__init__()
        self.residuals, self.middle, self.active, self.calls = residuals, middle, active, 0

    def get_control(self, x_noisy, t, cond, batched_number, transformer_options):
        n, on = x_noisy.shape[0], self.active is None or self.calls in self.active
        self.calls += 1

        def out(r):
            return (r if on else torch.zeros_like(r)).expand(n, -1, -1, -1).clone()

        return {"input": [], "middle": [out(self.middle)], "output": [out(r) for r in self.residuals]}


def test_controlnet_residuals_reach_the_shallow_skips_on_cached_steps(sdxl, counter):
    unet = sdxl.model.diffusion_model
    g = torch.Generator().manual_seed(0)
    x, context = torch.randn(1, 4, 8, 8, generator=g), torch.randn(1, 8, 32, generator=g)
    shapes = _block_shapes(unet, x, torch.tensor([500.0]), context, torch.randn(1, unet.label_emb[0][0].in_features))
    residuals = [0.2 * torch.randn(shapes[i], generator=g) for i in range(len(unet.input_blocks))]
    middle = 0.2 * torch.randn(shapes["middle"], generator=g)

    def with_control(model, control):  # one control object for both, so that ComfyUI batches cond and uncond together
        positive, negative = ([[c[0][0], {**c[0][1], "control": control}]] for c in (sdxl_conditioning(1), sdxl_conditioning(2)))
        return run(model, positive=positive, negative=negative)

    reference = with_control(sdxl, _FixedControl(residuals, middle))
    assert not torch.equal(reference, run(sdxl))  # the residuals do something
    assert torch.equal(with_control(deepcache(sdxl, 1), _FixedControl(residuals, middle)), reference)
    counter.calls = dict.fromkeys(counter.calls, 0)
    assert torch.isfinite(with_control(deepcache(sdxl, 3), _FixedControl(residuals, middle))).all()
    deep, shallow = counter.deep_and_shallow()
    assert deep == {2} and shallow == {6}

    # Residuals only at step 1, which is served from the cache (steps 0 and 3 compute). On the two live skips they
    # change the result; on the deep skips and the middle block they cannot (the cached deep feature is from step 0).
    no_control = run(deepcache(sdxl, 3))
    zero = [torch.zeros_like(r) for r in residuals]
    shallow_only = _FixedControl(residuals[:2] + zero[2:], torch.zeros_like(middle), active={1})
    deep_only = _FixedControl(zero[:2] + residuals[2:], middle, active={1})
    assert not torch.equal(with_control(deepcache(sdxl, 3), shallow_only), no_control)
    assert torch.equal(with_control(deepcache(sdxl, 3), deep_only), no_control)


# ---- graph-level guarantees and errors ---------------------------------------------------------------------------

def test_the_input_model_is_unchanged(sdxl):
    before = run(sdxl)
    options_before, wrappers_before = repr(sdxl.model_options), repr(sdxl.wrappers)
    for make in (lambda m: deepcache(m, 3), lambda m: fora(m, 2), lambda m: taylor(m), lambda m: target(m, 0.4),
                 lambda m: adaptive(m), lambda m: fora(m, 2, "output")):
        cached = make(sdxl)
        run(cached)
        assert cached is not sdxl
    assert repr(sdxl.model_options) == options_before and repr(sdxl.wrappers) == wrappers_before
    assert torch.equal(run(sdxl), before)


def test_other_output_block_patches_are_kept_and_see_the_same_feature(sdxl):
    calls = []

    def patch(h, hsp, to):
        calls.append(to["block"])
        return h * 1.0, hsp

    patched = sdxl.clone()
    patched.set_model_output_block_patch(patch)
    before = repr(patched.model_options)
    reference = run(patched)
    assert torch.equal(run(deepcache(patched, 1)), reference)
    calls.clear()
    run(deepcache(patched, 3), steps=6)  # 2 computed steps (9 output blocks), 4 cached (the 2 shallow ones)
    assert len(calls) == 2 * 9 + 4 * 2
    assert repr(patched.model_options) == before  # the capture patch went into the clone's own list


def test_lora_style_weight_patches_before_and_after_the_cacher(sdxl):
    key = "diffusion_model.output_blocks.8.0.in_layers.2.weight"  # a shallow block: runs on cached steps too
    weight = sdxl.model.state_dict()[key]
    bump = ("diff", (torch.full_like(weight, 0.01),))
    patched_before = sdxl.clone()
    patched_before.add_patches({key: bump}, 1.0)
    patched_after = deepcache(sdxl, 3).clone()
    patched_after.add_patches({key: bump}, 1.0)
    assert torch.equal(run(patched_after), run(deepcache(patched_before, 3)))
    assert not torch.equal(run(patched_after), run(deepcache(sdxl, 3)))


@pytest.mark.parametrize("make, message", [
    (lambda m: deepcache(m, 0), "interval must be >= 1"),
    (lambda m: deepcache(m, 3, branch=8), r"branch must be in 0\.\.7"),
    (lambda m: deepcache(m, 3, start=0.9, end=0.1), "start"),
    (lambda m: fora(m, 2, "blocks"), "'blocks' is a FLUX / Qwen-Image / Wan / Chroma / HunyuanVideo / Lumina 2 / Z-Image option; this MODEL "
                                    "is SDXL, which takes auto \\(deep\\)"),
    (lambda m: taylor(m, order=4), "order must be 0..3"),
    (lambda m: target(m, 0.0), "compute fraction"),
])
def test_bad_parameters_and_flux_options_give_clear_errors(sdxl, make, message):
    options_before = repr(sdxl.model_options)
    with pytest.raises(ValueError, match=message):
        make(sdxl)
    assert repr(sdxl.model_options) == options_before


def test_sdxl_options_on_flux_give_clear_errors():
    flux = tiny_flux()
    with pytest.raises(ValueError, match="DeepCache needs a UNet model \\(SDXL\\); this MODEL is FLUX"):
        deepcache(flux, 3)
    with pytest.raises(ValueError, match="'deep' is a SDXL option; this MODEL is FLUX, which takes auto \\(blocks\\)"):
        fora(flux, 2, "deep")
    assert fora(flux, 2, "auto").model_options["transformer_options"]["fastlane_cache"].granularity == "blocks"


def test_auto_picks_deep_for_sdxl_and_one_cacher_per_chain(sdxl):
    assert fora(sdxl, 2).model_options["transformer_options"]["fastlane_cache"].granularity == "deep"
    with pytest.raises(ValueError, match="already has a Fastlane cacher"):
        fora(deepcache(sdxl, 3), 2)


def test_a_graph_replay_reusing_the_feature_memory_does_not_corrupt_the_cache(sdxl):
    # Under CUDA graphs (Compile whole, reduce-overhead) the deep feature comes out of the graph in memory that a later
    # replay overwrites. CPU stand-in: the feature is handed out in one static buffer, and the "shallow graph" of a
    # cached step scribbles over that buffer before it runs. The cache must hold its own copy.
    from comfy.patcher_extension import WrappersMP

    from fastlane.cachers.adapters.sdxl import DEEP_FEATURE_KEY
    from fastlane.compilers.call_wrappers import COMPILE_FN_KEY, transformer_options_of

    reference = run(deepcache(sdxl), steps=7)
    static = {}

    def feature_in_a_static_buffer(executor, *args, **kwargs):
        out = executor(*args, **kwargs)
        options = transformer_options_of(args, kwargs)
        buffer = static.setdefault("buffer", torch.empty_like(options[DEEP_FEATURE_KEY]))
        options[DEEP_FEATURE_KEY] = buffer.copy_(options[DEEP_FEATURE_KEY])
        return out

    def compile_fn(cls, attr):
        shallow = getattr(cls, attr)

        def replay(self, unet, deep_feature, *args, **kwargs):
            static["buffer"].fill_(float("nan"))
            return shallow(self, unet, deep_feature, *args, **kwargs)

        return replay

    model = deepcache(sdxl).clone()
    model.add_wrapper_with_key(WrappersMP.DIFFUSION_MODEL, "test_static_buffer", feature_in_a_static_buffer)
    model.model_options["transformer_options"][COMPILE_FN_KEY] = compile_fn
    out = run(model, steps=7)
    assert "buffer" in static  # the stand-in did run inside the cacher's call
    assert torch.equal(out, reference)
