"""Block-level step caching for Lumina 2 / Z-Image (ComfyUI's ``NextDiT``; ``cachers/adapters/lumina.py``): the tiny
real models of ``test_model_coverage`` in ComfyUI's sampling loop (CFG 2: cond and uncond in one batch of 2), with the
cache nodes, Fastlane Compile (backend eager) and Fastlane Quantize (int8_dynamic) around them, on the CPU."""
from __future__ import annotations

from collections import defaultdict

import pytest
import torch
from torch._dynamo.utils import counters

from fastlane.cachers.adapters import adapter_for
from fastlane.cachers.adapters.lumina import STACK_KEY, LuminaAdapter
from test_family_compile_quant import compiled, compiler_of, new_graphs, quantized
from test_model_coverage import NODE, build, fora, sample, spectrum

ALL = {"start": 0.0, "end": 1.0}
NAMES = ("z_image", "lumina2")
BLOCK = ("blocks", "last_block")


class Parts:
    """Which parts of a NextDiT ran in each model call (real forward pre-hooks): ``runs[call]`` maps ``layers``,
    ``noise_refiner``, ``context_refiner`` and ``final_layer`` to their forward calls; ``batch``: the batch sizes the
    layers saw."""

    def __init__(self, model) -> None:
        dm = model.model.diffusion_model
        self.runs: list[dict[str, int]] = []
        self.batch: set[int] = set()
        self.handles = [dm.register_forward_pre_hook(lambda *_: self.runs.append(defaultdict(int)))]
        for part in ("layers", "noise_refiner", "context_refiner"):
            for module in getattr(dm, part):
                self.handles.append(module.register_forward_pre_hook(self._counter(part)))
        self.handles.append(dm.final_layer.register_forward_pre_hook(self._counter("final_layer")))

    def _counter(self, part: str):
        def count(_module, args) -> None:
            self.runs[-1][part] += 1
            if part == "layers":
                self.batch.add(args[0].shape[0])

        return count

    def __enter__(self) -> Parts:
        return self

    def __exit__(self, *_) -> None:
        for h in self.handles:
            h.remove()


@pytest.fixture(scope="module")
def models():
    return {name: build(name) for name in NAMES}


@pytest.fixture(scope="module")
def references(models):
    return {name: sample(name, model) for name, model in models.items()}


def assert_untouched(model, options: str, wrappers: str) -> None:
    """The received MODEL: its options and wrappers as they were, no object patches, and its NextDiT's own layers
    (no instance ``layers`` shadowing the ModuleList, no instance ``forward`` on any layer)."""
    dm = model.model.diffusion_model
    assert repr(model.model_options) == options and repr(model.wrappers) == wrappers
    assert model.object_patches == {} and model.object_patches_backup == {}
    assert "layers" not in dm.__dict__ and isinstance(dm.layers, torch.nn.ModuleList)
    assert not any("forward" in m.__dict__ for m in [*dm.layers, *dm.noise_refiner, *dm.context_refiner])


# ---- the adapter -----------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("name, family", [("z_image", "Z-Image"), ("lumina2", "Lumina 2")])
def test_nextdit_gets_the_lumina_adapter_with_blocks_by_default(models, name, family):
    adapter = adapter_for(models[name])
    assert isinstance(adapter, LuminaAdapter) and adapter.family == family
    assert adapter.granularities == ("blocks", "last_block", "output") and adapter.default_granularity == "blocks"
    cached = fora(models[name], 2)  # auto
    assert cached.model_options["transformer_options"]["fastlane_cache"].granularity == "blocks"
    assert STACK_KEY in cached.model_options["transformer_options"]["patches_replace"]["dit"]
    assert "patches_replace" not in models[name].model_options["transformer_options"]


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("granularity", BLOCK)
def test_cached_steps_skip_the_layers_but_run_the_refiners_and_final_layer(models, references, name, granularity):
    model = models[name]
    dm = model.model.diffusion_model
    with Parts(model) as parts:
        assert torch.equal(sample(name, fora(model, 1, granularity)), references[name])
    assert len(parts.runs) == 6 and all(r["layers"] == len(dm.layers) for r in parts.runs)
    with Parts(model) as parts:
        cached = sample(name, fora(model, 2, granularity))
    assert torch.isfinite(cached).all() and not torch.equal(cached, references[name])
    assert [r["layers"] for r in parts.runs] == [len(dm.layers), 0] * 3  # steps 0, 2, 4 computed
    assert all(r["noise_refiner"] == len(dm.noise_refiner) and r["context_refiner"] == len(dm.context_refiner)
               and r["final_layer"] == 1 for r in parts.runs)
    assert parts.batch == {2}  # CFG: cond and uncond in one call


@pytest.mark.parametrize("name", NAMES)
def test_the_stack_residual_is_closer_than_the_output(models, references, name):
    error = {g: float((sample(name, fora(models[name], 2, g)) - references[name]).abs().mean())
             for g in ("blocks", "last_block", "output")}
    assert error["blocks"] < 0.5 * error["output"] and error["last_block"] <= error["output"] * 1.01


def test_every_cacher_runs_through_it(models, references):
    model, name = models["z_image"], "z_image"
    cachers = {
        "FastlaneTaylorSeer": dict(interval=2, order=1, warmup_steps=1),
        "FastlaneAdaptiveCache": dict(threshold=0.5, max_skips=2, order=1, warmup_steps=1),
        "FastlaneTargetSpeedCache": dict(compute_fraction=0.5, order=1),
    }
    for node, settings in cachers.items():
        cached = NODE[node].execute(model=model, granularity="blocks", **settings, **ALL).result[0]
        with Parts(model) as parts:
            out = sample(name, cached)
        skipped = [r["layers"] for r in parts.runs].count(0)
        assert torch.isfinite(out).all() and 0 < skipped < 6, node
        assert all(r["final_layer"] == 1 and r["noise_refiner"] for r in parts.runs), node


def test_spectrum_forecasts_the_last_layers_output(models, references):
    model, name = models["z_image"], "z_image"
    assert torch.equal(sample(name, spectrum(model, 1.0, "last_block")), references[name])
    auto = spectrum(model, 0.5)
    assert auto.model_options["transformer_options"]["fastlane_cache"].granularity == "last_block"
    with Parts(model) as parts:
        out = sample(name, auto, steps=8)
    assert torch.isfinite(out).all() and [r["layers"] > 0 for r in parts.runs].count(True) == 4


def test_state_resets_between_runs(models):
    name = "z_image"
    cached = fora(models[name], 3, "blocks")
    first = sample(name, cached)
    other = sample(name, cached, steps=5)  # another schedule in between
    assert torch.equal(sample(name, cached), first)
    assert torch.equal(other, sample(name, fora(models[name], 3, "blocks"), steps=5))


@pytest.mark.parametrize("granularity", BLOCK)
def test_the_received_model_is_unchanged(models, references, granularity):
    name = "z_image"
    model = models[name]
    options, wrappers = repr(model.model_options), repr(model.wrappers)
    sample(name, fora(model, 2, granularity))
    assert_untouched(model, options, wrappers)
    assert torch.equal(sample(name, model), references[name])


def test_a_call_that_raises_still_restores_the_layers(models):
    name = "z_image"
    model = models[name]
    options, wrappers = repr(model.model_options), repr(model.wrappers)

    def fail(*_):
        raise RuntimeError("boom")

    handle = model.model.diffusion_model.final_layer.register_forward_pre_hook(fail)
    try:
        with pytest.raises(RuntimeError, match="boom"):
            sample(name, fora(model, 2, "blocks"))
    finally:
        handle.remove()
    assert_untouched(model, options, wrappers)


def test_a_patch_that_adds_to_every_layer_needs_output_granularity(models):
    patched = models["z_image"].clone()
    patched.set_model_double_block_patch(lambda args: args)  # what later ComfyUI's Z-Image Fun ControlNet sets
    with pytest.raises(ValueError, match="cannot follow a ControlNet"):
        sample("z_image", fora(patched, 2, "blocks"))
    assert torch.isfinite(sample("z_image", fora(patched, 2, "output"))).all()


# ---- with Fastlane Compile and Fastlane Quantize ---------------------------------------------------------------------

@pytest.mark.usefixtures("fresh_dynamo")
@pytest.mark.parametrize("granularity", BLOCK)
def test_regional_compile_in_either_order_compiles_the_layers_a_cached_step_skips(models, granularity, caplog):
    name = "z_image"
    model = models[name]
    options, wrappers = repr(model.model_options), repr(model.wrappers)
    reference = sample(name, fora(model, 2, granularity))
    for both in (fora(compiled(model), 2, granularity), compiled(fora(model, 2, granularity))):
        with Parts(model) as parts:
            out = sample(name, both)
        # eager CPU uses ComfyUI's sub-quadratic attention, compiled blocks PyTorch SDPA: equal up to rounding
        assert torch.allclose(out, reference, atol=1e-4, rtol=1e-4)
        assert [r["layers"] for r in parts.runs] == [2, 0] * 3
        assert any(p.startswith("regional (") for p in compiler_of(both).report()["last_run"]["paths"])
    assert new_graphs() == 2 and not counters["graph_break"]  # JointTransformerBlock with / without modulation
    caplog.set_level("INFO", logger="fastlane")
    whole = fora(compiled(model, scope="whole"), 2, granularity)
    assert torch.allclose(sample(name, whole), reference, atol=1e-4, rtol=1e-4)
    assert "compiled per block instead" in caplog.text
    assert_untouched(model, options, wrappers)


@pytest.mark.parametrize("granularity", BLOCK)
def test_quantize_before_or_after_the_cache(models, granularity):
    name = "z_image"
    model = models[name]
    options, wrappers = repr(model.model_options), repr(model.wrappers)
    quant, _ = quantized(model, "int8_dynamic")
    assert torch.equal(sample(name, fora(quant, 1, granularity)), sample(name, quant))
    with Parts(quant) as parts:  # the quantized copy's own layers are the ones skipped
        first = sample(name, fora(quant, 2, granularity))
    assert [r["layers"] for r in parts.runs] == [2, 0] * 3 and torch.isfinite(first).all()
    after, _ = quantized(fora(model, 2, granularity), "int8_dynamic")
    with Parts(after) as parts:
        second = sample(name, after)
    assert [r["layers"] for r in parts.runs] == [2, 0] * 3
    assert torch.allclose(second, first, atol=1e-5, rtol=1e-5)
    assert_untouched(model, options, wrappers)
