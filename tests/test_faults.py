"""Out-of-memory faults in Fastlane Quantize, Compile and CUDA Graph (issue 21), and partially loaded models.

A CPU runs out of no GPU memory, so each test raises ``torch.OutOfMemoryError`` where the real allocation would fail
(the quantization of the N-th Linear, a compiled function's call, a graph capture), then checks the message, that the
received MODEL is unchanged (weights, options, a sample bit-identical to one taken before), and that the same graph
runs normally afterwards.
"""
import logging

import nodes
import pytest
import torch

from tiny_models import replay_by_recomputing, sample, sdxl_conditioning, tiny_flux, tiny_sdxl

NODE = nodes.NODE_CLASS_MAPPINGS
ALL = dict(start=0.0, end=1.0)
OOM = "CUDA out of memory. Tried to allocate 2.00 GiB (GPU 0; 79.10 GiB total capacity)"
logging.getLogger("fastlane").setLevel(logging.INFO)


@pytest.fixture(scope="module")
def flux():
    return tiny_flux(depth=2, depth_single_blocks=2)


@pytest.fixture(scope="module")
def sdxl():
    return tiny_sdxl()


class Snapshot:
    """What must not change in a received MODEL: its weights, options and what it samples."""

    def __init__(self, model, run) -> None:
        self.model, self.run = model, run
        self.weights = {k: v.clone() for k, v in model.model.state_dict().items()}
        self.options = repr(model.model_options)
        self.patches = dict(model.patches), dict(model.object_patches)
        self.out = run(model)

    def assert_unchanged(self) -> None:
        state = self.model.model.state_dict()
        assert state.keys() == self.weights.keys()
        assert all(torch.equal(state[k], v) for k, v in self.weights.items())
        assert repr(self.model.model_options) == self.options
        assert (dict(self.model.patches), dict(self.model.object_patches)) == self.patches
        assert torch.equal(self.run(self.model), self.out)


def run_flux(model):
    return sample(model, steps=3)


def run_sdxl(model, steps=5):
    return sample(model, steps=steps, cfg=2.0, latent=torch.zeros(1, 4, 8, 8),
                  positive=sdxl_conditioning(1), negative=sdxl_conditioning(2))


def assert_actionable(error_text: str, *parts: str) -> None:
    for part in ("ran out of memory", "free VRAM", "smaller", *parts):
        assert part in error_text, (part, error_text)


# ---- Fastlane Quantize -----------------------------------------------------------------------------------------


def quantize(model, scheme="int8_weight_only"):
    return NODE["FastlaneQuantize"].execute(model=model, scheme=scheme, filter="none", regex="").result[0]


@pytest.mark.parametrize("where", ["third Linear", "copying the rest"])
def test_quantize_oom_raises_what_to_try_and_leaves_the_model_intact(flux, monkeypatch, where):
    from fastlane.faults import FastlaneOutOfMemory
    from fastlane.quantizers import model_copy, patching

    before = Snapshot(flux, run_flux)
    freed = []
    monkeypatch.setattr("comfy.model_management.soft_empty_cache", lambda *a, **k: freed.append(1))
    if where == "third Linear":
        build, calls = patching._build, []

        def build_until_oom(*args, **kwargs):
            calls.append(1)
            if len(calls) == 3:
                raise torch.OutOfMemoryError(OOM)
            return build(*args, **kwargs)

        monkeypatch.setattr(patching, "_build", build_until_oom)
    else:
        def own_model(*args, **kwargs):
            raise torch.cuda.OutOfMemoryError(OOM)

        monkeypatch.setattr(model_copy, "own_model", own_model)
    with pytest.raises(FastlaneOutOfMemory) as failed:
        quantize(flux)
    text = str(failed.value)
    assert isinstance(failed.value, RuntimeError)  # ComfyUI shows the text on the node ...
    assert isinstance(failed.value, torch.OutOfMemoryError)  # ... and unloads its models as after any OOM
    assert_actionable(text, "Fastlane Quantize", "few_row_linears", "bypass Fastlane Quantize", "unchanged", OOM)
    assert ("Linear 3 of" in text) == (where == "third Linear")
    assert freed
    before.assert_unchanged()
    monkeypatch.undo()  # memory again: the same graph runs
    out = run_flux(quantize(flux))
    assert torch.isfinite(out).all() and not torch.equal(out, before.out)
    before.assert_unchanged()


# ---- Fastlane Compile ----------------------------------------------------------------------------------------------


def compiled(model):
    return NODE["FastlaneCompile"].execute(model=model, scope="regional", backend="eager", mode="default",
                                           dynamic="auto", fullgraph=True).result[0]


def compile_running_out(monkeypatch, ooms: int):
    """torch.compile whose compiled functions raise an OOM on their first ``ooms`` calls (all of them together),
    then run the function itself."""
    calls = []

    def fake_compile(fn, **kwargs):
        def call(*args, **kw):
            calls.append(1)
            if len(calls) <= ooms:
                raise torch.OutOfMemoryError(OOM)
            return fn(*args, **kw)

        return call

    monkeypatch.setattr(torch, "compile", fake_compile)
    return calls


@pytest.mark.usefixtures("fresh_dynamo")
def test_compile_oom_runs_the_rest_of_the_run_uncompiled_with_a_warning(flux, monkeypatch, caplog):
    from fastlane.compilers.engine import compiler_of

    caplog.set_level("INFO", logger="fastlane")
    before = Snapshot(flux, run_flux)
    calls = compile_running_out(monkeypatch, ooms=1)
    model = compiled(flux)
    assert torch.equal(run_flux(model), before.out)  # the failed call ran again uncompiled, and so did the rest
    assert len(calls) == 1
    assert_actionable(caplog.text, "continues uncompiled", "bypass Fastlane Compile")
    assert any("ran out of memory" in n for n in compiler_of(model).report()["last_run"]["notes"])
    before.assert_unchanged()
    caplog.clear()
    # the next run compiles again (here: the stand-in, with compiled calls' SDPA attention: close, not identical)
    assert torch.allclose(run_flux(model), before.out, atol=1e-4, rtol=1e-4)
    assert len(calls) > 1 and "ran out of memory" not in caplog.text


@pytest.mark.usefixtures("fresh_dynamo")
def test_compile_oom_that_the_uncompiled_call_hits_too_is_raised_clearly(flux, monkeypatch):
    from comfy.ldm.flux.layers import DoubleStreamBlock
    from fastlane.faults import FastlaneOutOfMemory

    before = Snapshot(flux, run_flux)
    compile_running_out(monkeypatch, ooms=10 ** 6)

    def no_memory(*args, **kwargs):
        raise torch.OutOfMemoryError(OOM)

    monkeypatch.setattr(DoubleStreamBlock, "forward", no_memory)
    model = compiled(flux)
    with pytest.raises(FastlaneOutOfMemory) as failed:
        run_flux(model)
    assert_actionable(str(failed.value), "uncompiled", "does not fit", "unchanged")
    monkeypatch.undo()
    before.assert_unchanged()
    assert torch.isfinite(run_flux(model)).all()  # the same compiled MODEL runs once memory is there


# ---- Fastlane CUDA Graph ----------------------------------------------------------------------------------------


def graphed(model, record):
    from fastlane.compilers import cuda_graphs

    return cuda_graphs.attach(model, record=record)


def test_graph_oom_runs_the_call_unrecorded_and_drops_the_graphs(sdxl, caplog):
    caplog.set_level("INFO", logger="fastlane")
    before = Snapshot(sdxl, run_sdxl)
    captures = []

    def capture_oom_once(fn, pool=None):
        captures.append(1)
        if len(captures) == 2:
            raise torch.OutOfMemoryError(OOM)
        return replay_by_recomputing(fn, pool)

    model, recorder = graphed(sdxl, capture_oom_once)
    assert torch.equal(run_sdxl(model), before.out)  # size 8 recorded
    assert recorder.report()["graphs"] == 1
    bigger = dict(steps=4, cfg=2.0, latent=torch.zeros(1, 4, 12, 12), positive=sdxl_conditioning(1),
                  negative=sdxl_conditioning(2))
    reference = sample(sdxl, **bigger)
    assert torch.equal(sample(model, **bigger), reference)  # its recording runs out: run unrecorded
    assert recorder.report()["graphs"] == 0  # ... and the graphs' memory is given back
    assert_actionable(caplog.text, "recording a CUDA graph", "bypass Fastlane CUDA Graph")
    assert not recorder.report()["last_run"]["recorded"]
    before.assert_unchanged()
    caplog.clear()
    assert torch.equal(sample(model, **bigger), reference)  # not recorded again
    assert len(captures) == 2 and "ran out of memory" not in caplog.text
    assert torch.equal(run_sdxl(model), before.out)  # size 8 is recorded again
    assert recorder.report()["graphs"] == 1


def test_graph_oom_that_the_plain_call_hits_too_is_raised_clearly(sdxl, monkeypatch):
    from fastlane.faults import FastlaneOutOfMemory

    before = Snapshot(sdxl, run_sdxl)
    dm_class = type(sdxl.model.diffusion_model)
    plain_forward = dm_class._forward
    out_of_memory = []

    def forward(self, *args, **kwargs):
        if out_of_memory:
            raise torch.OutOfMemoryError(OOM)
        return plain_forward(self, *args, **kwargs)

    def capture_oom(fn, pool=None):
        out_of_memory.append(1)  # the GPU is full from now on
        raise torch.OutOfMemoryError(OOM)

    monkeypatch.setattr(dm_class, "_forward", forward)
    model, _ = graphed(sdxl, capture_oom)
    with pytest.raises(FastlaneOutOfMemory) as failed:
        run_sdxl(model)
    assert_actionable(str(failed.value), "Fastlane CUDA Graph", "without one", "does not fit", "unchanged")
    out_of_memory.clear()
    monkeypatch.undo()
    before.assert_unchanged()
    assert torch.equal(run_sdxl(model), before.out)  # the next run works (this signature stays unrecorded)


# ---- partially loaded (lowvram) models -------------------------------------------------------------------------


def partially_loaded(model, module):
    """``model`` with ComfyUI's real partial unloading of ``module``'s size right before each run (lowvram)."""
    from comfy.patcher_extension import CallbacksMP

    size = sum(p.numel() * p.element_size() for p in module.parameters())
    partial = model.clone()
    partial.add_callback_with_key(CallbacksMP.ON_PRE_RUN, "test_lowvram",
                                  lambda patcher, *a: patcher.partially_unload(patcher.offload_device, size))
    return partial


def test_a_partially_loaded_model_runs_without_a_graph_and_says_why(sdxl, caplog):
    import comfy.model_management as mm

    caplog.set_level("INFO", logger="fastlane")
    reference = run_sdxl(sdxl)
    model, recorder = graphed(partially_loaded(sdxl, sdxl.model.diffusion_model.output_blocks[0]),
                              replay_by_recomputing)
    try:
        assert torch.equal(run_sdxl(model), reference)
        assert recorder.report()["last_run"]["replays"] == 0
        assert "partially loaded" in caplog.text
    finally:
        mm.unload_all_models()


def test_a_partially_loaded_model_under_a_cache_node_caches_as_when_fully_loaded(flux):
    import comfy.model_management as mm

    def fora(model):
        return NODE["FastlaneFORA"].execute(model=model, interval=2, granularity="blocks", **ALL).result[0]

    reference = sample(fora(flux), steps=6)
    try:
        out = sample(fora(partially_loaded(flux, flux.model.diffusion_model.single_blocks[1])), steps=6)
    finally:
        mm.unload_all_models()
    assert torch.allclose(out, reference, atol=1e-5, rtol=1e-5)
