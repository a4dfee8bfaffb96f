"""Fastlane Compile on small real ComfyUI models in ComfyUI's sampling loop (CPU).

Most tests trace with backend "eager" (dynamo's graph capture, guards and recompilation are the same as with
inductor; only the kernel generation is skipped); one test runs inductor on a one-block FLUX.
"""
import logging
import os

import nodes
import pytest
import torch
from torch._dynamo.utils import counters

from tiny_models import (BlockCounter, flux_conditioning, sample, sdxl_conditioning, tiny_flux, tiny_sdxl,
                         with_input_block_patch)

NODE = nodes.NODE_CLASS_MAPPINGS
ALL = dict(start=0.0, end=1.0)
logging.getLogger("fastlane").setLevel(logging.INFO)

pytestmark = pytest.mark.usefixtures("fresh_dynamo")  # each test compiles from a clean dynamo


def compiled(model, scope="regional", backend="eager", mode="default", dynamic="auto", fullgraph=True, **kw):
    return NODE["FastlaneCompile"].execute(model=model, scope=scope, backend=backend, mode=mode, dynamic=dynamic,
                                           fullgraph=fullgraph, **kw).result[0]


def fora(model, interval=2, granularity="blocks"):
    return NODE["FastlaneFORA"].execute(model=model, interval=interval, granularity=granularity, **ALL).result[0]


def target(model, fraction=0.5, granularity="blocks"):
    return NODE["FastlaneTargetSpeedCache"].execute(model=model, compute_fraction=fraction, order=1,
                                                    granularity=granularity, **ALL).result[0]


def text(tokens):
    return dict(positive=flux_conditioning(1, tokens=tokens), negative=flux_conditioning(2, tokens=tokens))


def new_graphs() -> int:
    n = int(counters["stats"]["unique_graphs"])
    counters.clear()
    return n


def graph_breaks() -> int:
    return int(sum(counters["graph_break"].values()))


def close(a, b, tol=1e-4):
    return torch.allclose(a, b, atol=tol, rtol=tol)


@pytest.fixture(scope="module")
def flux():
    return tiny_flux(depth=3, depth_single_blocks=3)  # 3 + 3 blocks: regional must still compile just 2 graphs


def test_regional_matches_eager_with_one_graph_per_block_kind(flux):
    reference = sample(flux, steps=4)
    out = sample(compiled(flux), steps=4)
    assert close(out, reference)  # eager CPU uses ComfyUI's sub-quadratic attention, compiled calls SDPA
    assert graph_breaks() == 0
    assert new_graphs() == 2  # DoubleStreamBlock + SingleStreamBlock, reused by all 6 blocks
    assert close(sample(compiled(flux), steps=4), out, 1e-6)


def test_new_prompt_length_and_step_count_do_not_recompile(flux):
    model = compiled(flux)
    sample(model, steps=4, **text(8))
    assert new_graphs() == 2
    for tokens, steps in ((12, 4), (16, 6), (77, 3), (8, 5)):
        sample(model, steps=steps, **text(tokens))
    assert new_graphs() == 0


def test_new_resolution_or_batch_compiles_once_and_is_logged(flux, caplog):
    caplog.set_level("INFO", logger="fastlane")
    model = compiled(flux)
    sample(model, steps=3, size=16)
    new_graphs()
    sample(model, steps=3, size=32)
    # the double block's image tokens are static: one new graph; the single block's joint sequence (text + image)
    # is already dynamic, as it carries the text length
    assert new_graphs() == 1
    assert "compiled 1 graph(s)" in caplog.text
    sample(model, steps=3, size=16)
    sample(model, steps=3, size=32)
    assert new_graphs() == 0  # both sizes stay cached
    sample(model, steps=3, size=16, batch=2)
    assert new_graphs() == 2
    assert "no compilation in 3 calls" in caplog.text


@pytest.mark.parametrize("make_cache", [fora, target, lambda m: fora(m, 2, "output")], ids=["fora", "target", "fora-output"])
@pytest.mark.parametrize("compile_first", [True, False], ids=["compile-then-cache", "cache-then-compile"])
def test_stacks_with_fastlane_caches_in_both_orders(flux, make_cache, compile_first):
    reference = sample(make_cache(flux), steps=8)
    model = make_cache(compiled(flux)) if compile_first else compiled(make_cache(flux))
    counter = BlockCounter(flux)
    try:
        out = sample(model, steps=8)
        cached_calls = counter.calls
        assert cached_calls < 8 * counter.blocks  # the cache still skips blocks
    finally:
        counter.close()
    assert close(out, reference)
    assert graph_breaks() == 0
    assert new_graphs() == 2
    for _ in range(2):  # cached and computed steps alternate; a second run, a new prompt: nothing recompiles
        sample(model, steps=8, **text(11))
    assert new_graphs() == 0


def test_lora_after_compile_takes_effect_without_recompiling(flux):
    key = "diffusion_model.double_blocks.0.img_attn.qkv.weight"
    bump = {key: ("diff", (torch.full_like(flux.model.state_dict()[key], 0.05),))}
    model = compiled(flux)
    plain = sample(model, steps=4)
    assert new_graphs() == 2
    with_lora = model.clone()
    with_lora.add_patches(bump, 1.0)
    eager_lora = flux.clone()
    eager_lora.add_patches(bump, 1.0)
    reference = sample(eager_lora, steps=4)
    assert not close(reference, plain, 1e-2)  # the patch matters
    assert close(sample(with_lora, steps=4), reference)
    stronger = model.clone()
    stronger.add_patches(bump, 2.0)
    sample(stronger, steps=4)
    assert close(sample(model, steps=4), plain, 1e-6)  # unpatched again
    assert new_graphs() == 0  # weights are graph inputs: patches never recompile


def test_lowvram_blocks_run_uncompiled_and_stay_correct(flux, caplog):
    """ComfyUI's real partial unloading (the lowvram path, run here right before sampling) marks modules to be cast on the fly: their blocks run
    eagerly (with the on-the-fly LoRA), the rest compiled."""
    from comfy.patcher_extension import CallbacksMP

    caplog.set_level("INFO", logger="fastlane")
    key = "diffusion_model.single_blocks.2.linear1.weight"
    bump = {key: ("diff", (torch.full_like(flux.model.state_dict()[key], 0.05),))}
    eager = flux.clone()
    eager.add_patches(bump, 1.0)
    reference = sample(eager, steps=3)
    model = compiled(flux).clone()
    model.add_patches(bump, 1.0)
    size = sum(p.numel() * p.element_size() for p in flux.model.diffusion_model.single_blocks[2].parameters())
    model.add_callback_with_key(CallbacksMP.ON_PRE_RUN, "test_lowvram",
                                lambda patcher, *a: patcher.partially_unload(patcher.offload_device, size))
    try:
        out = sample(model, steps=3)
        report = fastlane_compiler(model).report()["last_run"]
        assert report["eager_blocks"] >= 1
        assert "run uncompiled" in caplog.text
        assert close(out, reference)
    finally:
        import comfy.model_management as mm

        mm.unload_all_models()


def fastlane_compiler(model):
    from fastlane.compilers.engine import compiler_of

    return compiler_of(model)


def test_whole_scope_is_one_graph_and_yields_to_block_patches(flux, caplog):
    caplog.set_level("INFO", logger="fastlane")
    reference = sample(flux, steps=4)
    model = compiled(flux, scope="whole")
    assert close(sample(model, steps=4), reference)
    assert new_graphs() == 1
    sample(model, steps=5, **text(13))
    assert new_graphs() == 0
    cached = fora(model)  # block patches decide per step which blocks run: compiled per block instead
    assert close(sample(cached, steps=6), sample(fora(flux), steps=6))
    assert "compiled per block instead" in caplog.text
    assert fastlane_compiler(model).report()["last_run"] is not None


def test_the_received_model_is_unchanged(flux):
    before = sample(flux, steps=4)
    options, wrappers = repr(flux.model_options), repr(flux.wrappers)
    model = compiled(flux)
    sample(model, steps=4)
    assert repr(flux.model_options) == options and repr(flux.wrappers) == wrappers
    blocks = [*flux.model.diffusion_model.double_blocks, *flux.model.diffusion_model.single_blocks]
    assert not any("forward" in b.__dict__ for b in blocks)  # the per-call override is gone
    counters.clear()
    assert torch.equal(sample(flux, steps=4), before)
    assert new_graphs() == 0  # and the received model runs eagerly


def test_sdxl_regional_reuses_block_graphs(caplog):
    caplog.set_level("INFO", logger="fastlane")
    unet = tiny_sdxl()

    def run(model, tokens=8, steps=3):
        return sample(model, steps=steps, cfg=2.0, latent=torch.zeros(1, 4, 8, 8),
                      positive=sdxl_conditioning(1, tokens=tokens), negative=sdxl_conditioning(2, tokens=tokens))

    reference = run(unet)
    model = compiled(unet)
    assert close(run(model), reference)
    assert graph_breaks() == 0
    graphs = new_graphs()
    blocks = len(fastlane_compiler(model)._regions[id(unet.model.diffusion_model)])
    assert graphs < blocks  # 28 blocks (ResBlocks + transformer blocks): one graph per distinct shape
    run(model, tokens=20)  # prompt of another length: the transformer blocks' context dim is dynamic
    run(model, tokens=77, steps=4)
    assert new_graphs() == 0


def test_inductor_on_one_block_flux():
    small = tiny_flux(depth=1, depth_single_blocks=1)
    reference = sample(small, steps=2)
    out = sample(compiled(small, backend="inductor"), steps=2)
    assert close(out, reference)
    assert new_graphs() == 2


@pytest.mark.parametrize("kwargs, message", [
    (dict(backend="eager", mode="max-autotune-no-cudagraphs"), "inductor setting"),
    (dict(backend="inductor", mode="reduce-overhead"), "CUDA graphs"),
    (dict(scope="everything"), "scope must be one of"),
])
def test_bad_options_give_clear_errors(flux, kwargs, message):
    with pytest.raises(ValueError, match=message):
        compiled(flux, **kwargs)


def test_not_a_model_is_refused():
    with pytest.raises(ValueError, match="needs a MODEL"):
        compiled("nope")


def test_cache_dir_points_inductor_caches_there(flux, tmp_path, monkeypatch):
    monkeypatch.delenv("TORCHINDUCTOR_CACHE_DIR", raising=False)
    compiled(flux, cache_dir=str(tmp_path / "cache"))
    assert os.environ["TORCHINDUCTOR_CACHE_DIR"] == str(tmp_path / "cache")
    assert (tmp_path / "cache").is_dir()


def test_every_input_has_a_tooltip():
    for node_id in ("FastlaneCompile", "FastlaneQuantize", "FastlaneQKVFusion"):
        schema = NODE[node_id].GET_SCHEMA()
        assert schema.description and schema.display_name.startswith("Fastlane")
        assert all(i.tooltip for i in schema.inputs), node_id
        assert schema.category.startswith("fastlane/")



def test_replaces_an_upstream_core_torch_compile(flux):
    from comfy.patcher_extension import WrappersMP

    core = NODE["TorchCompileModel"]().execute(model=flux, backend="inductor")
    core = core.result[0] if hasattr(core, "result") else core[0]
    model = compiled(core)
    assert not model.get_wrappers(WrappersMP.APPLY_MODEL, "torch.compile")
    assert core.get_wrappers(WrappersMP.APPLY_MODEL, "torch.compile")  # the received MODEL keeps its own
    sample(model, steps=2)
    assert new_graphs() == 2


def deepcache(model, interval=3, branch=0):
    return NODE["FastlaneDeepCache"].execute(model=model, interval=interval, branch=branch, **ALL).result[0]


def run_sdxl(model, tokens=8, steps=9, size=8):
    return sample(model, steps=steps, cfg=2.0, latent=torch.zeros(1, 4, size, size),
                  positive=sdxl_conditioning(1, tokens=tokens), negative=sdxl_conditioning(2, tokens=tokens))


@pytest.fixture(scope="module")
def sdxl():
    return tiny_sdxl()


@pytest.mark.parametrize("compile_first", [True, False], ids=["compile-then-deepcache", "deepcache-then-compile"])
def test_sdxl_whole_scope_stacks_with_deepcache(sdxl, compile_first, caplog):
    # DeepCache's only block patch hands out a tensor: the computed steps run one whole-UNet graph, the cached steps
    # one graph of the shallow blocks (CUDA graphs with mode reduce-overhead on a GPU); the cache state stays in
    # Python between them.
    caplog.set_level("INFO", logger="fastlane")
    reference = run_sdxl(deepcache(sdxl))
    model = deepcache(compiled(sdxl, scope="whole")) if compile_first else compiled(deepcache(sdxl), scope="whole")
    assert close(run_sdxl(model), reference)  # the deep feature is cached and reused as without compile
    assert "compiled per block instead" not in caplog.text
    assert graph_breaks() == 0
    assert new_graphs() == 2  # the full pass and the shallow pass
    run_sdxl(model, tokens=20, steps=7)  # another prompt length, another step count
    assert new_graphs() == 0
    run_sdxl(model, size=16)  # another resolution: a bounded recompile of both
    assert new_graphs() == 2
    assert fastlane_compiler(model).report()["last_run"] is not None
    assert {attr for _, attr in fastlane_compiler(model)._compiled} == {"_forward", "shallow_forward"}
    assert not close(run_sdxl(compiled(sdxl, scope="whole")), reference)  # (caching does change the result here)


def test_sdxl_whole_scope_with_deepcache_leaves_the_received_model_unchanged(sdxl):
    before = run_sdxl(sdxl, steps=4)
    options, wrappers = repr(sdxl.model_options), repr(sdxl.wrappers)
    run_sdxl(compiled(deepcache(sdxl), scope="whole"), steps=4)
    assert repr(sdxl.model_options) == options and repr(sdxl.wrappers) == wrappers
    assert "_forward" not in sdxl.model.diffusion_model.__dict__  # the per-call override is gone
    counters.clear()
    assert torch.equal(run_sdxl(sdxl, steps=4), before)
    assert new_graphs() == 0  # and the received model runs eagerly, uncached


def test_sdxl_whole_scope_with_deepcache_computing_every_step_is_plain_whole_compile(sdxl):
    plain = run_sdxl(compiled(sdxl, scope="whole"), steps=4)
    model = compiled(deepcache(sdxl, interval=1), scope="whole")
    assert close(run_sdxl(model, steps=4), plain, 1e-6)
    assert list(fastlane_compiler(model)._compiled) == [(type(sdxl.model.diffusion_model), "_forward")]  # no shallow


def test_sdxl_whole_scope_yields_to_other_block_patches(sdxl, caplog):
    caplog.set_level("INFO", logger="fastlane")

    reference = run_sdxl(deepcache(with_input_block_patch(sdxl)))
    out = run_sdxl(compiled(deepcache(with_input_block_patch(sdxl)), scope="whole"))
    assert "compiled per block instead" in caplog.text
    assert close(out, reference)


def test_first_compile_advances_a_progress_bar_per_block_kind(flux):
    """The first run ticks ComfyUI's progress bar as each block kind's graph gets built; a warm run adds nothing."""
    import comfy.utils

    seen = []
    previous = comfy.utils.PROGRESS_BAR_HOOK
    comfy.utils.set_progress_bar_global_hook(lambda value, total, preview, node_id=None: seen.append((value, total)))
    try:
        model = compiled(flux)
        sample(model, steps=2)
        first = list(seen)
        sample(model, steps=2)
    finally:
        comfy.utils.set_progress_bar_global_hook(previous)
    assert first == [(1, 2), (2, 2)]  # DoubleStreamBlock, SingleStreamBlock
    assert seen == first


def on_gpu(model):
    """A clone that says it loads on an NVIDIA GPU (what the nodes check before anything CUDA-graph related)."""
    clone = model.clone()
    clone.load_device = torch.device("cuda", 0)
    return clone


@pytest.mark.parametrize("mode, without_graphs", [("reduce-overhead", "default"),
                                                  ("max-autotune", "max-autotune-no-cudagraphs")])
def test_graph_modes_under_comfyuis_async_allocator_compile_without_graphs_and_say_how_to_get_them(
        flux, monkeypatch, caplog, mode, without_graphs):
    from fastlane.compilers import allocator, engine

    monkeypatch.setattr(allocator, "_warned", set())
    model = on_gpu(flux)
    monkeypatch.setattr(torch.cuda.memory, "get_allocator_backend", lambda: "native")
    assert engine.compiler_of(compiled(model, backend="inductor", mode=mode)).spec.mode == mode
    monkeypatch.setattr(torch.cuda.memory, "get_allocator_backend", lambda: "cudaMallocAsync")
    with caplog.at_level(logging.WARNING, logger="fastlane"):
        out = compiled(model, backend="inductor", mode=mode)
        compiled(model, backend="inductor", mode=mode)
    assert engine.compiler_of(out).spec.mode == without_graphs
    warnings = [r.getMessage() for r in caplog.records if "--disable-cuda-malloc" in r.getMessage()]
    assert len(warnings) == 1 and f"mode '{without_graphs}'" in warnings[0]  # once per process, not per prompt
