"""Fastlane CUDA Graph on small real ComfyUI models in ComfyUI's sampling loop (CPU).

A CPU records no CUDA graph, so these tests give the recorder a stand-in with a graph's contract: the tensors a
recording read and wrote stay fixed, and each replay recomputes from the recorded inputs and writes its results
into the recorded outputs in place, never into the caller's dicts. What the recorder must get right around it
(refilling inputs, copying outputs and DeepCache's deep feature out, when to record, when not, when to start over)
is then the same code a GPU runs. The CUDA recording itself is checked on the GPU: benchmarks/check_shapes.py
(bit-identical to eager across sizes) and docs/BENCHMARKS.md.
"""
import logging

import nodes
import pytest
import torch

from tiny_models import replay_by_recomputing, sample, sdxl_conditioning, tiny_flux, tiny_sdxl, with_input_block_patch

NODE = nodes.NODE_CLASS_MAPPINGS
ALL = dict(start=0.0, end=1.0)
logging.getLogger("fastlane").setLevel(logging.INFO)


def graphed(model, record=replay_by_recomputing):
    from fastlane.compilers import cuda_graphs

    return cuda_graphs.attach(model, record=record)


def deepcache(model, interval=3):
    return NODE["FastlaneDeepCache"].execute(model=model, interval=interval, branch=0, **ALL).result[0]


def compiled(model, scope="regional", mode="default"):
    return NODE["FastlaneCompile"].execute(model=model, scope=scope, backend="eager", mode=mode, dynamic="auto",
                                           fullgraph=True).result[0]


def run_sdxl(model, steps=9, size=8, tokens=8):
    return sample(model, steps=steps, cfg=2.0, latent=torch.zeros(1, 4, size, size),
                  positive=sdxl_conditioning(1, tokens=tokens), negative=sdxl_conditioning(2, tokens=tokens))


def last_run(recorder) -> dict:
    return recorder.report()["last_run"]


@pytest.fixture(scope="module")
def sdxl():
    return tiny_sdxl()


@pytest.fixture(scope="module")
def flux():
    return tiny_flux(depth=2, depth_single_blocks=2)


def test_sdxl_replays_give_the_eager_result_exactly(sdxl):
    reference = run_sdxl(sdxl)
    model, recorder = graphed(sdxl)
    assert torch.equal(run_sdxl(model), reference)
    first = last_run(recorder)
    # the first call warms up; the second is recorded and replayed
    assert first["calls"] == 9 and first["recorded"] == 1 and first["replays"] == 8
    assert torch.equal(run_sdxl(model), reference)
    assert last_run(recorder)["recorded"] == 0 and last_run(recorder)["replays"] == 9
    other = run_sdxl(sdxl, size=12, tokens=20)  # a new size and prompt length: a new recording
    assert torch.equal(run_sdxl(model, size=12, tokens=20), other)
    assert last_run(recorder)["recorded"] == 1
    assert recorder.report()["graphs"] == 2


def test_flux_replays_give_the_eager_result_exactly(flux):
    reference = sample(flux, steps=5)
    model, recorder = graphed(flux)
    assert torch.equal(sample(model, steps=5), reference)
    assert last_run(recorder)["replays"] == 4


@pytest.mark.parametrize("granularity, recorded", [("output", True), ("blocks", False)])
def test_flux_caches_on_the_output_are_recorded_block_caches_are_not(flux, granularity, recorded, caplog):
    caplog.set_level("INFO", logger="fastlane")

    def target(model):
        return NODE["FastlaneTargetSpeedCache"].execute(model=model, compute_fraction=0.5, order=1,
                                                        granularity=granularity, **ALL).result[0]

    reference = sample(target(flux), steps=8)
    model, recorder = graphed(target(flux))
    assert torch.equal(sample(model, steps=8), reference)
    assert (last_run(recorder)["replays"] > 0) == recorded
    assert ("block patches" in caplog.text) == (not recorded)


@pytest.mark.parametrize("graph_first", [True, False], ids=["graph-then-deepcache", "deepcache-then-graph"])
def test_deepcache_computed_calls_replay_with_their_deep_feature(sdxl, graph_first):
    reference = run_sdxl(deepcache(sdxl))
    model, recorder = (deepcache(graphed(sdxl)[0]), None) if graph_first else graphed(deepcache(sdxl))
    if recorder is None:
        from fastlane.compilers.cuda_graphs import recorder_of

        recorder = recorder_of(model)
    run_sdxl(model)
    assert torch.equal(run_sdxl(model), reference)  # the cached steps reuse the deep feature the replays handed out
    assert last_run(recorder)["replays"] == 9  # the full pass at steps 0, 3, 6 and the shallow pass at the others
    assert recorder.report()["graphs"] == 2


def test_new_weights_between_runs_are_recorded_again(sdxl):
    key = "diffusion_model.input_blocks.1.0.in_layers.2.weight"
    bump = {key: ("diff", (torch.full_like(sdxl.model.state_dict()[key], 0.05),))}
    model, recorder = graphed(sdxl)
    plain = run_sdxl(model)
    with_lora, eager_lora = model.clone(), sdxl.clone()
    with_lora.add_patches(bump, 1.0)
    eager_lora.add_patches(bump, 1.0)
    reference = run_sdxl(eager_lora)
    assert not torch.equal(reference, plain)  # the patch matters
    assert torch.equal(run_sdxl(with_lora), reference)
    assert last_run(recorder)["recorded"] == 1
    assert any("weights moved" in n for n in last_run(recorder)["notes"])
    assert torch.equal(run_sdxl(model), plain)  # unpatched again: recorded again on the original weights


def test_calls_with_patches_run_without_a_graph_and_say_why(sdxl, caplog):
    caplog.set_level("INFO", logger="fastlane")

    reference = run_sdxl(with_input_block_patch(sdxl))
    model, recorder = graphed(with_input_block_patch(sdxl))
    assert torch.equal(run_sdxl(model), reference)
    assert last_run(recorder)["replays"] == 0
    assert "ComfyUI patches (input_block_patch)" in caplog.text


@pytest.mark.parametrize("graph_first", [True, False], ids=["graph-then-compile", "compile-then-graph"])
def test_stacks_with_regional_compile_in_either_order(sdxl, graph_first):
    torch._dynamo.reset()
    reference = run_sdxl(compiled(sdxl))
    if graph_first:
        from fastlane.compilers.cuda_graphs import recorder_of

        model = compiled(graphed(sdxl)[0])
        recorder = recorder_of(model)
    else:
        model, recorder = graphed(compiled(sdxl))
    assert torch.allclose(run_sdxl(model), reference, atol=1e-6, rtol=1e-6)
    assert last_run(recorder)["replays"] == 8


@pytest.mark.parametrize("settings", [dict(scope="whole"), dict(mode="reduce-overhead")], ids=["whole", "ro"])
def test_compile_that_records_or_compiles_the_whole_model_is_refused_in_either_order(sdxl, settings):
    from fastlane.compilers import engine

    with pytest.raises(ValueError, match="reduce-overhead"):
        graphed(engine.attach(sdxl, engine.CompileSpec(**settings))[0])
    with pytest.raises(ValueError, match="reduce-overhead"):
        engine.attach(graphed(sdxl)[0], engine.CompileSpec(**settings))


def test_a_recording_that_fails_runs_the_call_as_before(sdxl, caplog):
    caplog.set_level("INFO", logger="fastlane")

    def failing(fn, pool=None):
        raise RuntimeError("operation not permitted when stream is capturing")

    reference = run_sdxl(sdxl)
    model, recorder = graphed(sdxl, record=failing)
    assert torch.equal(run_sdxl(model), reference)
    assert last_run(recorder)["replays"] == 0 and last_run(recorder)["recorded"] == 0
    assert "could not be recorded" in caplog.text
    caplog.clear()
    run_sdxl(model)
    assert "recording failed" not in caplog.text  # tried once per signature


def test_the_received_model_is_unchanged(sdxl):
    before = run_sdxl(sdxl, steps=4)
    options, wrappers = repr(sdxl.model_options), repr(sdxl.wrappers)
    model, _ = graphed(sdxl)
    run_sdxl(model, steps=4)
    assert repr(sdxl.model_options) == options and repr(sdxl.wrappers) == wrappers
    assert "_forward" not in sdxl.model.diffusion_model.__dict__
    assert torch.equal(run_sdxl(sdxl, steps=4), before)


def test_the_node_refuses_a_model_on_the_cpu_with_what_to_do(sdxl):
    wrappers = repr(sdxl.wrappers)
    with pytest.raises(ValueError, match=r"runs on cpu: bypass this node"):
        NODE["FastlaneCudaGraph"].execute(model=sdxl)
    with pytest.raises(ValueError, match="needs a MODEL"):
        NODE["FastlaneCudaGraph"].execute(model="not a model")
    assert repr(sdxl.wrappers) == wrappers


def test_the_node_describes_itself():
    schema = NODE["FastlaneCudaGraph"].define_schema()
    assert schema.description and schema.display_name == "Fastlane CUDA Graph"
    assert all(i.tooltip for i in schema.inputs) and all(o.tooltip for o in schema.outputs)


def test_the_recording_lets_other_threads_call_cuda(monkeypatch):
    """ComfyUI's server thread answers /system_stats (torch.cuda.memory_stats) while the prompt thread records; the
    capture must be thread-local so that poll cannot invalidate it (under the default "global" mode it did, and the
    server aborted: the soak on an H100, 2026-12-07). The CUDA calls are stand-ins here; the mode is what is checked."""
    import contextlib

    from fastlane.compilers import cuda_graphs

    seen = {}

    @contextlib.contextmanager
    def fake_graph(graph, pool=None, stream=None, capture_error_mode="global"):
        seen.update(pool=pool, mode=capture_error_mode)
        yield

    class Stream:
        def wait_stream(self, other):
            pass

    monkeypatch.setattr(torch.cuda, "Stream", Stream)
    monkeypatch.setattr(torch.cuda, "current_stream", Stream)
    monkeypatch.setattr(torch.cuda, "stream", lambda s: contextlib.nullcontext())
    monkeypatch.setattr(torch.cuda, "CUDAGraph", lambda: type("G", (), {"replay": lambda self: None})())
    monkeypatch.setattr(torch.cuda, "graph", fake_graph)
    _, output = cuda_graphs.record_cuda_graph(lambda: torch.ones(2), pool="pool")
    assert seen == {"pool": "pool", "mode": "thread_local"} and torch.equal(output, torch.ones(2))


def test_under_comfyuis_async_allocator_the_node_passes_the_model_through_and_says_how_to_record(
        sdxl, monkeypatch, caplog):
    from fastlane.compilers import allocator, cuda_graphs

    monkeypatch.setattr(allocator, "_warned", set())
    model = sdxl.clone()
    model.load_device = torch.device("cuda", 0)
    wrappers = repr(model.wrappers)
    monkeypatch.setattr(torch.cuda.memory, "get_allocator_backend", lambda: "native")
    assert cuda_graphs.recorder_of(NODE["FastlaneCudaGraph"].execute(model=model).result[0]) is not None
    monkeypatch.setattr(torch.cuda.memory, "get_allocator_backend", lambda: "cudaMallocAsync")
    with caplog.at_level(logging.WARNING, logger="fastlane"):
        out = NODE["FastlaneCudaGraph"].execute(model=model).result[0]
    assert out is model and repr(model.wrappers) == wrappers and cuda_graphs.recorder_of(out) is None
    assert "--disable-cuda-malloc" in caplog.text and "passes through" in caplog.text
