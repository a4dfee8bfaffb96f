"""The embedded SDXL-class demo model, through the real ComfyUI: it is ComfyUI's own SDXL UNet (eps, discrete schedule)
in a real ModelPatcher, its 4-channel codec round-trips images, a plain core KSampler graph with CFG draws each
trained class recognisably, and Fastlane's DeepCache / FORA nodes run on it without losing the class."""
from __future__ import annotations

import pytest
import torch

SIZE = 128
SEED = 7
STEPS = 20
CFG = 5.0


@pytest.fixture(scope="module")
def demo():
    import fastlane.demo.codec
    import fastlane.demo.data
    import fastlane.demo.sdxl

    return fastlane.demo


@pytest.fixture(scope="module")
def names(demo) -> list[str]:
    return demo.sdxl.class_names()


@pytest.fixture(scope="module")
def references(demo, names) -> torch.Tensor:
    """Each class's training image, (classes, SIZE, SIZE, 3), in ``class_names()`` order."""
    return torch.cat([demo.data.reference_image(name, SIZE) for name in names])


def mse_to(images: torch.Tensor, references: torch.Tensor) -> torch.Tensor:
    """(generated, reference) pixel MSE."""
    return ((images[:, None] - references[None]) ** 2).mean(dim=(2, 3, 4))


def psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    return -10 * torch.log10(torch.mean((a - b) ** 2)).item()


def sdxl_graph(subjects: list[str], cacher: dict | None = None, seed: int = SEED) -> dict:
    """loader -> prompt / 'none' negative -> EmptyLatentImage -> core KSampler (euler/normal, cfg 5) ->
    FastlaneDemoDecode (``decode_<subject>``), per subject, each ending in a PreviewImage so ComfyUI executes it.
    With ``cacher`` (a node), a second branch samples the same prompts through it (``c_decode_<subject>``)."""
    prompt = {
        "loader": {"class_type": "FastlaneDemoModelLoader", "inputs": {"family": "sdxl"}},
        "negative": {"class_type": "FastlaneDemoPrompt", "inputs": {"family": "sdxl", "subject": "none"}},
        "latent": {"class_type": "EmptyLatentImage", "inputs": {"width": SIZE, "height": SIZE, "batch_size": 1}},
    }
    branches = {"": ["loader", 0]}
    if cacher is not None:
        prompt["cacher"] = {"class_type": cacher["class_type"], "inputs": {"model": ["loader", 0], **cacher["inputs"]}}
        branches["c_"] = ["cacher", 0]
    for subject in subjects:
        prompt[f"prompt_{subject}"] = {"class_type": "FastlaneDemoPrompt",
                                       "inputs": {"family": "sdxl", "subject": subject}}
        for tag, model in branches.items():
            prompt[f"{tag}sample_{subject}"] = {"class_type": "KSampler", "inputs": {
                "model": model, "positive": [f"prompt_{subject}", 0], "negative": ["negative", 0],
                "latent_image": ["latent", 0], "seed": seed, "steps": STEPS, "cfg": CFG, "sampler_name": "euler",
                "scheduler": "normal", "denoise": 1.0}}
            prompt[f"{tag}decode_{subject}"] = {"class_type": "FastlaneDemoDecode",
                                                "inputs": {"family": "sdxl", "samples": [f"{tag}sample_{subject}", 0]}}
            prompt[f"{tag}preview_{subject}"] = {"class_type": "PreviewImage",
                                                 "inputs": {"images": [f"{tag}decode_{subject}", 0]}}
    return prompt


def decoded(result: dict, subjects: list[str], tag: str = "") -> torch.Tensor:
    return torch.cat([result["outputs"][f"{tag}decode_{s}"][0] for s in subjects])


def test_loader_gives_comfyui_sdxl_in_a_model_patcher(demo):
    import comfy.latent_formats
    import comfy.model_base
    import comfy.model_patcher
    import comfy.model_sampling
    from comfy.ldm.modules.diffusionmodules.openaimodel import UNetModel

    patcher = demo.sdxl.load_demo_patcher()
    assert isinstance(patcher, comfy.model_patcher.ModelPatcher)
    assert type(patcher.model) is comfy.model_base.SDXL
    assert patcher.model.model_type == comfy.model_base.ModelType.EPS
    assert isinstance(patcher.model.model_sampling, comfy.model_sampling.ModelSamplingDiscrete)
    assert isinstance(patcher.model.model_sampling, comfy.model_sampling.EPS)
    assert isinstance(patcher.model.latent_format, comfy.latent_formats.SDXL)
    unet = patcher.model.diffusion_model
    assert type(unet) is UNetModel
    assert (len(unet.input_blocks), len(unet.output_blocks), unet.model_channels) == (9, 9, 64)
    assert all(torch.isfinite(p).all() for p in unet.parameters())
    assert next(unet.parameters()).dtype == torch.float32  # stored fp16, run in fp32 on the CPU (as UNETLoader picks)
    assert demo.sdxl.WEIGHTS.stat().st_size < 10e6


def test_conditioning_is_sdxl_conditioning(demo, names):
    [[context, options]] = demo.sdxl.conditioning("cat", batch=2)
    assert context.shape == (2, demo.sdxl.CONTEXT_TOKENS, demo.sdxl.CONTEXT_DIM)
    assert options["pooled_output"].shape == (2, demo.sdxl.POOLED_DIM)
    assert (options["width"], options["height"], options["crop_w"]) == (SIZE, SIZE, 0)
    adm = demo.sdxl.load_demo_patcher().model.encode_adm(**options)  # the ADM vector ComfyUI builds from it
    assert adm.shape == (2, demo.sdxl.UNET_CONFIG["adm_in_channels"])
    assert names == demo.data.CLASSES and "none" in demo.sdxl.class_names(include_unconditional=True)
    with pytest.raises(ValueError):
        demo.sdxl.conditioning("no such class")


def test_codec_round_trip_and_latent_statistics(demo, references):
    import comfy.latent_formats

    latent = demo.codec.encode(references, demo.sdxl.WEIGHTS)
    assert latent.shape == (len(references), 4, SIZE // 8, SIZE // 8)
    model_input = comfy.latent_formats.SDXL().process_in(latent)
    assert 0.6 < model_input.std().item() < 1.4 and abs(model_input.mean().item()) < 0.3
    decoded_images = demo.codec.decode(latent, demo.sdxl.WEIGHTS)
    assert decoded_images.shape == references.shape
    assert torch.mean((decoded_images - references) ** 2).item() < 0.01  # PSNR > 20 dB with only 4 channels
    with pytest.raises(ValueError, match="family"):
        demo.codec.decode(torch.zeros(1, 16, 4, 4), demo.sdxl.WEIGHTS)  # FLUX latents into the SDXL decoder


def test_core_ksampler_cfg_graph_draws_each_class_recognisably(names, references, graph):
    images = decoded(graph.run(sdxl_graph(names)), names)
    assert images.shape == (len(names), SIZE, SIZE, 3)
    mse = mse_to(images, references)
    nearest = [names[i] for i in mse.argmin(dim=1).tolist()]
    assert nearest == names, f"MSE generated x reference:\n{mse}"


@pytest.mark.parametrize("cacher", [
    {"class_type": "FastlaneDeepCache", "inputs": {"interval": 3, "branch": 0, "start": 0.0, "end": 1.0}},
    {"class_type": "FastlaneFORA", "inputs": {"interval": 2, "granularity": "auto", "start": 0.0, "end": 1.0}},
    {"class_type": "FastlaneFORA", "inputs": {"interval": 2, "granularity": "output", "start": 0.0, "end": 1.0}},
], ids=["deepcache-3", "fora-2-deep", "fora-2-output"])
def test_cacher_nodes_run_on_it_and_keep_the_class(cacher, names, references, graph):
    subjects = ["cat", "retina"]
    result = graph.run(sdxl_graph(subjects, cacher))
    uncached, cached = decoded(result, subjects), decoded(result, subjects, "c_")
    assert not torch.equal(cached, uncached)  # it did skip something
    for i, subject in enumerate(subjects):
        assert psnr(cached[i], uncached[i]) > 20, subject
        assert names[mse_to(cached[i:i + 1], references).argmin().item()] == subject


def test_cached_steps_skip_the_deep_unet(demo):
    """Counted on the real UNet: DeepCache interval 3 over 12 steps runs the middle block on 4 calls only, while
    the shallowest input block runs on every call (the shallow part of a cached step)."""
    import comfy.sample
    import nodes

    patcher = demo.sdxl.load_demo_patcher()
    unet = patcher.model.diffusion_model
    calls = {"middle": 0, "input0": 0}
    hooks = [unet.middle_block[0].register_forward_pre_hook(lambda *_: calls.__setitem__("middle", calls["middle"] + 1)),
             unet.input_blocks[0][0].register_forward_pre_hook(lambda *_: calls.__setitem__("input0", calls["input0"] + 1))]
    cached = nodes.NODE_CLASS_MAPPINGS["FastlaneDeepCache"].execute(model=patcher, interval=3, branch=0, start=0.0,
                                                                    end=1.0).result[0]
    latent = torch.zeros(1, 4, SIZE // 8, SIZE // 8)
    try:
        comfy.sample.sample(cached, comfy.sample.prepare_noise(latent, 0), 12, CFG, "euler", "normal",
                            demo.sdxl.conditioning("cat"), demo.sdxl.conditioning("none"), latent, seed=0,
                            disable_pbar=True)
    finally:
        for h in hooks:
            h.remove()
    model_calls = calls["input0"]
    assert model_calls in (12, 24)  # cond and uncond batched into one call per step, or not
    assert calls["middle"] == model_calls // 3


def test_encode_node_round_trips_for_img2img(names, references, graph):
    """Sample coffee, re-encode it with FastlaneDemoEncode and img2img at denoise 0.5 with CFG: the result stays
    close to the first image and is still the coffee class."""
    prompt = sdxl_graph(["coffee"])
    prompt.update({
        "encode": {"class_type": "FastlaneDemoEncode", "inputs": {"family": "sdxl", "pixels": ["decode_coffee", 0]}},
        "img2img": {"class_type": "KSampler", "inputs": {
            "model": ["loader", 0], "positive": ["prompt_coffee", 0], "negative": ["negative", 0],
            "latent_image": ["encode", 0], "seed": 3, "steps": 10, "cfg": CFG, "sampler_name": "euler",
            "scheduler": "normal", "denoise": 0.5}},
        "decode2": {"class_type": "FastlaneDemoDecode", "inputs": {"family": "sdxl", "samples": ["img2img", 0]}},
        "preview2": {"class_type": "PreviewImage", "inputs": {"images": ["decode2", 0]}},
    })
    out = graph.run(prompt)["outputs"]
    first, latent, second = out["decode_coffee"][0], out["encode"][0]["samples"], out["decode2"][0]
    assert latent.shape == (1, 4, SIZE // 8, SIZE // 8)
    assert torch.mean((second - first) ** 2).item() < 0.02
    assert names[mse_to(second, references).argmin().item()] == "coffee"
