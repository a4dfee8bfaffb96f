"""Fastlane Multi-GPU on CPU: real worker processes joined by gloo, ComfyUI's real Flux class (tiny configs).

The parallel output must equal the single-process output within float32 tolerance (Ulysses and K/V all-gather,
2-4 ranks, token counts that do not divide evenly), inside ComfyUI's real sampler too; an output-granularity cacher
must decide the same steps; workers must exit when the MODEL is unloaded or released, and a killed or hung worker
must fail the call with a clear error in bounded time."""
import gc
import os
import signal
import time

import pytest
import torch
from tiny_models import BlockCounter, flux_conditioning, sample, tiny_flux

import nodes

NODE = nodes.NODE_CLASS_MAPPINGS
ALL = {"start": 0.0, "end": 1.0}


def multigpu(model, gpus=2, attention="ulysses", timeout=30):
    return NODE["FastlaneMultiGPU"].execute(model=model, gpus=gpus, attention=attention, device="cpu",
                                            timeout=timeout).result[0]


def session_of(model):
    return model.object_patches["diffusion_model.forward_orig"].session


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def direct_call(patcher, size=(6, 10), tokens=5, batch=1, seed=0, **kwargs):
    """One diffusion-model call with this patcher loaded (uneven splits: 15 img + 5 txt tokens)."""
    import comfy.model_management as mm

    g = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, 16, *size, generator=g)
    context = torch.randn(batch, tokens, 32, generator=g)
    y = torch.randn(batch, 32, generator=g)
    mm.load_models_gpu([patcher])
    with torch.no_grad():
        return patcher.model.diffusion_model(x, torch.full((batch,), 0.7), context, y, torch.full((batch,), 3.5),
                                             transformer_options={}, **kwargs)


def close(actual, expected, tol=2e-5):
    return (actual - expected).abs().max().item() <= tol * expected.abs().max().item()


@pytest.fixture(scope="module")
def flux():
    return tiny_flux()


@pytest.mark.parametrize("gpus,attention,heads", [(2, "ulysses", 2), (3, "kv_gather", 2), (4, "ulysses", 4)])
def test_one_call_equals_single_process(gpus, attention, heads):
    model = tiny_flux(seed=1, num_heads=heads, axes_dim=[8, 12, 12] if heads == 2 else [4, 6, 6])
    reference = direct_call(model, batch=2)
    parallel = multigpu(model, gpus, attention)
    out = direct_call(parallel, batch=2)
    session = session_of(parallel)
    assert session.calls == 1 and len(session.worker_pids) == gpus - 1
    assert close(out, reference), (out - reference).abs().max()
    session.release()


def test_fp8_weights_with_manual_cast_reach_the_workers():
    """An fp8 checkpoint as ComfyUI loads it (fp8_e4m3fn weights, float32 compute through manual-cast ops): the
    workers build the same operations and take the fp8 bytes as they are (gloo has no fp8 type)."""
    import comfy.model_management as mm
    import comfy.model_patcher
    import comfy.supported_models
    from tiny_models import FLUX_CONFIG

    config = comfy.supported_models.Flux(dict(FLUX_CONFIG))
    config.set_inference_dtype(torch.float8_e4m3fn, torch.float32)
    model = config.get_model({})
    torch.manual_seed(0)
    with torch.no_grad():
        for p in model.diffusion_model.parameters():
            p.copy_(torch.randn(p.shape) * 0.2)
    assert {p.dtype for p in model.diffusion_model.parameters()} == {torch.float8_e4m3fn}
    fp8 = comfy.model_patcher.ModelPatcher(model, load_device=mm.get_torch_device(),
                                           offload_device=mm.unet_offload_device())
    reference = direct_call(fp8)
    parallel = multigpu(fp8, 2, "kv_gather")
    assert close(direct_call(parallel), reference)
    session_of(parallel).release()


def test_sampling_matches_and_weights_follow_patches(flux):
    reference = sample(flux, steps=4, size=32, cfg=2.0)
    parallel = multigpu(flux, 2, "kv_gather")
    session = session_of(parallel)
    assert close(sample(parallel, steps=4, size=32, cfg=2.0), reference)
    assert session.calls == 4 and session.weight_sends == 1
    # A LoRA-like weight patch on top: the workers must get the patched weights (re-sent once).
    key = "diffusion_model.double_blocks.0.img_attn.qkv.weight"
    weight = flux.model.state_dict()[key]
    lora = parallel.clone()
    lora.add_patches({key: (torch.randn(weight.shape, generator=torch.Generator().manual_seed(3)) * 0.2,)}, 1.0)
    single_lora = flux.clone()
    single_lora.add_patches({key: lora.patches[key][0][1]}, 1.0)
    patched_reference = sample(single_lora, steps=4, size=32, cfg=2.0)
    assert session.calls == 4  # ComfyUI restored forward_orig for the plain patcher: it ran in this process only
    assert not close(patched_reference, reference)
    assert close(sample(lora, steps=4, size=32, cfg=2.0), patched_reference)
    assert session.weight_sends >= 2
    session.release()


@pytest.mark.parametrize("granularity", ["output", "blocks", "last_block", "blocks+output"])
def test_cache_decides_the_same_steps(flux, granularity):
    """An adaptive cacher (its signal comes from the whole output) computes the same steps as in one process, and
    the forecasts (whole output, or the block stack's residual / hidden state gathered on rank 0) give the same
    result; cacher before or after the Multi-GPU node."""
    adaptive = dict(threshold=1.0, max_skips=3, order=1, warmup_steps=2, granularity=granularity, **ALL)
    single = NODE["FastlaneAdaptiveCache"].execute(model=flux, **adaptive).result[0]
    counter = BlockCounter(flux)
    try:
        reference = sample(single, steps=10, size=32, cfg=2.0)
        single_calls = counter.calls // counter.blocks
        counter.calls = 0
        for model in (NODE["FastlaneAdaptiveCache"].execute(model=multigpu(flux), **adaptive).result[0],
                      multigpu(single)):
            session = session_of(model)
            out = sample(model, steps=10, size=32, cfg=2.0)
            assert close(out, reference, tol=1e-4), (out - reference).abs().max()
            computed = counter.calls // counter.blocks
            assert computed == single_calls < 10
            # output: a cached step makes no parallel call; blocks/last_block: every step is one (cached ones skip
            # the blocks on every rank)
            assert session.calls == (computed if granularity == "output" else 10)
            counter.calls = 0
            session.release()
    finally:
        counter.close()


def test_per_block_cache_controlnet_and_indivisible_heads_are_refused(flux):
    per_block = NODE["FastlaneFORA"].execute(model=flux, interval=2, granularity="attention_mlp", **ALL).result[0]
    with pytest.raises(ValueError, match="granularity output / blocks / last_block; this MODEL's cacher uses "
                                         "'attention_mlp'"):
        multigpu(per_block)
    later = NODE["FastlaneFORA"].execute(model=multigpu(flux), interval=2, granularity="attention_mlp",
                                         **ALL).result[0]
    with pytest.raises(RuntimeError, match="'attention_mlp'"):
        sample(later, steps=2)
    assert session_of(later).worker_pids == []  # refused before any worker started
    with pytest.raises(ValueError, match="divides 2"):
        multigpu(flux, 3, "ulysses")
    parallel = multigpu(flux)
    with pytest.raises(RuntimeError, match="cannot split a call with a ControlNet"):
        direct_call(parallel, control={"input": [torch.zeros(1, 15, 64)], "output": []})
    assert session_of(parallel).worker_pids == []


def test_compile_and_quantize_are_refused_in_either_order(flux):
    def compiled(model):
        return NODE["FastlaneCompile"].execute(model=model, scope="regional", backend="eager", mode="default",
                                               dynamic="auto", fullgraph=False).result[0]

    def quantized(model):
        return NODE["FastlaneQuantize"].execute(model=model, scheme="int8_weight_only", filter="none",
                                                regex="").result[0]

    for attach_first in (compiled, quantized):
        with pytest.raises(ValueError, match="does not run Fastlane (Compile|Quantize) on the worker ranks"):
            multigpu(attach_first(flux))
    for attach_after in (compiled, quantized):
        later = attach_after(multigpu(flux))
        with pytest.raises(RuntimeError, match="does not run Fastlane (Compile|Quantize) on the worker ranks"):
            sample(later, steps=2)
        assert session_of(later).worker_pids == []


def test_workers_exit_when_the_model_is_unloaded_or_released(flux):
    import comfy.model_management as mm

    parallel = multigpu(flux)
    direct_call(parallel)
    pids = session_of(parallel).worker_pids
    assert pids and all(alive(p) for p in pids)
    mm.unload_all_models()  # ComfyUI detaches the MODEL: the workers stop
    assert not any(alive(p) for p in pids)
    direct_call(parallel)  # the next call starts new ones
    pids = session_of(parallel).worker_pids
    assert pids and all(alive(p) for p in pids)
    mm.unload_all_models()
    direct_call(parallel)
    pids = session_of(parallel).worker_pids
    mm.load_models_gpu([flux])  # another patcher of the same model takes its place: detached
    del parallel
    gc.collect()
    assert not any(alive(p) for p in pids)


def test_killed_worker_fails_the_prompt_clearly_and_the_next_one_recovers(flux):
    from fastlane.parallel.session import ParallelError

    parallel = multigpu(flux, 3, "kv_gather")
    session = session_of(parallel)
    reference = sample(flux, steps=4, size=32)

    def kill_at_step_1(step, *args):
        if step == 1:
            os.kill(session.worker_pids[1], signal.SIGKILL)

    start = time.monotonic()
    with pytest.raises(ParallelError, match=r"worker rank 2 \(pid \d+\) was killed by signal 9"):
        sample_with_callback(parallel, kill_at_step_1)
    assert time.monotonic() - start < 20
    assert session.worker_pids == []
    assert close(sample(parallel, steps=4, size=32), reference)  # fresh workers
    session.release()


def test_a_worker_error_reaches_the_prompt_with_its_traceback(flux):
    from fastlane.parallel.session import ParallelError

    parallel = multigpu(flux)
    session = session_of(parallel)
    session.build = {**session.build, "name": "NoSuchModel"}  # the worker cannot build what rank 0 describes
    with pytest.raises(ParallelError, match=r"(?s)worker rank 1 \(pid \d+\) exited with code 1; its error:.*"
                                            r"AttributeError.*NoSuchModel"):
        direct_call(parallel)
    assert session.worker_pids == []


def test_idle_workers_outlive_the_timeout_and_a_hung_one_times_out(flux):
    from fastlane.parallel.session import ParallelError

    parallel = multigpu(flux, 2, "ulysses", timeout=5)
    reference = direct_call(parallel)
    session = session_of(parallel)
    pid = session.worker_pids[0]
    time.sleep(6)  # idle between prompts for longer than the collective timeout: the workers wait on the store
    assert torch.equal(direct_call(parallel), reference) and session.worker_pids == [pid]
    os.kill(pid, signal.SIGSTOP)
    start = time.monotonic()
    with pytest.raises(ParallelError, match="failed or timed out"):
        direct_call(parallel)
    assert time.monotonic() - start < 15
    assert not alive(pid)


def sample_with_callback(model, callback, steps=4):
    import comfy.sample

    latent = torch.zeros(1, 16, 4, 4)
    return comfy.sample.sample(model, comfy.sample.prepare_noise(latent, 0), steps, 1.0, "euler", "simple",
                               flux_conditioning(1), flux_conditioning(2), latent, seed=0, disable_pbar=True,
                               callback=callback)


def test_ksampler_graph_through_comfyui_matches(graph):
    """The node inside a real ComfyUI prompt (PromptExecutor, core KSampler) on the demo FLUX-class model."""
    def ksampler(model):
        return {"class_type": "KSampler", "inputs": {
            "model": model, "positive": ["prompt", 0], "negative": ["negative", 0], "latent_image": ["latent", 0],
            "seed": 3, "steps": 3, "cfg": 1.0, "sampler_name": "euler", "scheduler": "simple", "denoise": 1.0}}

    prompt = {
        "loader": {"class_type": "FastlaneDemoModelLoader", "inputs": {"family": "flux"}},
        "prompt": {"class_type": "FastlaneDemoPrompt", "inputs": {"family": "flux", "subject": "none"}},
        "negative": {"class_type": "FastlaneDemoPrompt", "inputs": {"family": "flux", "subject": "none"}},
        "latent": {"class_type": "EmptySD3LatentImage", "inputs": {"width": 64, "height": 64, "batch_size": 1}},
        "multigpu": {"class_type": "FastlaneMultiGPU", "inputs": {"model": ["loader", 0], "gpus": 2,
                                                                  "attention": "kv_gather", "device": "cpu",
                                                                  "timeout": 30}},
        "single": ksampler(["loader", 0]),
        "parallel": ksampler(["multigpu", 0]),
    }
    for name in ("single", "parallel"):  # output nodes, so ComfyUI executes both branches
        prompt[f"decode_{name}"] = {"class_type": "FastlaneDemoDecode", "inputs": {"family": "flux",
                                                                                 "samples": [name, 0]}}
        prompt[f"preview_{name}"] = {"class_type": "PreviewImage", "inputs": {"images": [f"decode_{name}", 0]}}
    outputs = graph.run(prompt)["outputs"]
    single, parallel = outputs["single"][0]["samples"], outputs["parallel"][0]["samples"]
    assert close(parallel, single, tol=1e-4)
    assert session_of(outputs["multigpu"][0]).calls == 3
    session_of(outputs["multigpu"][0]).release()


WAN = {"image_model": "wan2.1", "model_type": "t2v", "dim": 32, "ffn_dim": 64, "num_heads": 2, "num_layers": 2,
       "in_dim": 16, "out_dim": 16, "text_dim": 32, "patch_size": (1, 2, 2), "freq_dim": 32, "window_size": (-1, -1),
       "qk_norm": True, "cross_attn_norm": True, "eps": 1e-6}


def tiny_wan(seed: int = 0):
    """A real ModelPatcher around ComfyUI's real WanModel (Wan 2.1 text-to-video layout, 2 blocks, dim 32)."""
    import comfy.model_management as mm
    import comfy.model_patcher
    import comfy.supported_models

    config = comfy.supported_models.WAN21_T2V(dict(WAN))
    config.set_inference_dtype(torch.float32, None)
    model = config.get_model({})
    torch.manual_seed(seed)
    with torch.no_grad():
        for p in model.diffusion_model.parameters():
            p.normal_(0.0, 0.1)
    return comfy.model_patcher.ModelPatcher(model, load_device=mm.get_torch_device(),
                                            offload_device=mm.unet_offload_device())


def wan_call(patcher, per_frame: bool = False):
    """One Wan call: 3 frames of 6x10 latents = 45 video tokens (uneven on 2 ranks), 7 text tokens, batch 2;
    ``per_frame``: one timestep per latent frame (Wan 2.2's masked-timestep modulation)."""
    import comfy.model_management as mm

    g = torch.Generator().manual_seed(5)
    x = torch.randn(2, 16, 3, 6, 10, generator=g)
    context = torch.randn(2, 7, 32, generator=g)
    t = torch.tensor([[0.9, 0.5, 0.2], [0.7, 0.7, 0.1]]) if per_frame else torch.tensor([0.6, 0.3])
    mm.load_models_gpu([patcher])
    with torch.no_grad():
        return patcher.model.diffusion_model(x, t * 1000, context, transformer_options={})


def test_wan_calls_equal_single_process():
    model = tiny_wan()
    references = [wan_call(model), wan_call(model, per_frame=True)]
    for gpus, attention in ((2, "ulysses"), (3, "kv_gather")):
        parallel = multigpu(model, gpus, attention)
        for per_frame, reference in zip((False, True), references):
            out = wan_call(parallel, per_frame)
            assert close(out, reference), (gpus, attention, per_frame, (out - reference).abs().max())
        assert session_of(parallel).calls == 2
        session_of(parallel).release()
    assert close(sample_wan(multigpu(model)), sample_wan(model))
    blocks = NODE["FastlaneFORA"].execute(model=model, interval=2, granularity="blocks", **ALL).result[0]
    with pytest.raises(ValueError, match="runs wan with cachers at granularity output;"):
        multigpu(blocks)


def sample_wan(model):
    import comfy.sample

    g = torch.Generator().manual_seed(1)
    positive = [[torch.randn(1, 7, 32, generator=g), {}]]
    negative = [[torch.randn(1, 7, 32, generator=g), {}]]
    latent = torch.zeros(1, 16, 2, 4, 6)
    out = comfy.sample.sample(model, comfy.sample.prepare_noise(latent, 0), 3, 3.0, "euler", "simple", positive,
                              negative, latent, seed=0, disable_pbar=True)
    if "diffusion_model.forward_orig" in model.object_patches:
        assert session_of(model).calls == 3
        session_of(model).release()
    return out


def test_node_schema_has_tooltips_and_description():
    schema = NODE["FastlaneMultiGPU"].define_schema()
    assert "output" in schema.description and "ControlNet" in schema.description
    assert all(i.tooltip for i in schema.inputs) and all(o.tooltip for o in schema.outputs)
