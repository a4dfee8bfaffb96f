"""The embedded demo model, through the real ComfyUI: it is ComfyUI's own Flux model in a real ModelPatcher, its
codec round-trips images, and a plain core KSampler graph draws each trained class recognisably and reproducibly."""
from __future__ import annotations

import pytest
import torch

SIZE = 128
SEED = 7


@pytest.fixture(scope="module")
def demo():
    import fastlane.demo.codec
    import fastlane.demo.data
    import fastlane.demo.model

    return fastlane.demo


@pytest.fixture(scope="module")
def references(demo) -> torch.Tensor:
    """Each class's training image, (classes, SIZE, SIZE, 3), in ``class_names()`` order."""
    return torch.cat([demo.data.reference_image(name, SIZE) for name in demo.model.class_names()])


def sample_graph(subjects: list[str], seed: int = SEED, negative: str = "none", steps: int = 20) -> dict:
    """loader -> prompt -> EmptySD3LatentImage -> core KSampler (euler/simple, cfg 1) -> FastlaneDemoDecode, per
    subject, each ending in a PreviewImage so ComfyUI executes it."""
    prompt = {
        "loader": {"class_type": "FastlaneDemoModelLoader", "inputs": {"family": "flux"}},
        "negative": {"class_type": "FastlaneDemoPrompt", "inputs": {"family": "flux", "subject": negative}},
        "latent": {"class_type": "EmptySD3LatentImage", "inputs": {"width": SIZE, "height": SIZE, "batch_size": 1}},
    }
    for subject in subjects:
        prompt[f"prompt_{subject}"] = {"class_type": "FastlaneDemoPrompt",
                                       "inputs": {"family": "flux", "subject": subject}}
        prompt[f"sample_{subject}"] = {"class_type": "KSampler", "inputs": {
            "model": ["loader", 0], "positive": [f"prompt_{subject}", 0], "negative": ["negative", 0],
            "latent_image": ["latent", 0], "seed": seed, "steps": steps, "cfg": 1.0, "sampler_name": "euler",
            "scheduler": "simple", "denoise": 1.0}}
        prompt[f"decode_{subject}"] = {"class_type": "FastlaneDemoDecode",
                                       "inputs": {"family": "flux", "samples": [f"sample_{subject}", 0]}}
        prompt[f"preview_{subject}"] = {"class_type": "PreviewImage", "inputs": {"images": [f"decode_{subject}", 0]}}
    return prompt


def test_loader_gives_comfyui_flux_in_a_model_patcher(demo):
    import comfy.latent_formats
    import comfy.ldm.flux.model
    import comfy.model_base
    import comfy.model_patcher
    import comfy.model_sampling

    patcher = demo.model.load_demo_patcher()
    assert isinstance(patcher, comfy.model_patcher.ModelPatcher)
    assert type(patcher.model) is comfy.model_base.Flux
    assert type(patcher.model.diffusion_model) is comfy.ldm.flux.model.Flux
    assert isinstance(patcher.model.model_sampling, comfy.model_sampling.ModelSamplingFlux)
    assert isinstance(patcher.model.latent_format, comfy.latent_formats.Flux)
    flux = patcher.model.diffusion_model
    assert (len(flux.double_blocks), len(flux.single_blocks), flux.hidden_size) == (2, 4, 128)
    assert flux.params.guidance_embed
    assert all(torch.isfinite(p).all() for p in flux.parameters())


def test_conditioning_is_comfyui_flux_conditioning(demo):
    [[context, options]] = demo.model.conditioning("cat", batch=2)
    assert context.shape == (2, demo.model.CONTEXT_TOKENS, 64)
    assert options["pooled_output"].shape == (2, 64) and options["guidance"] == 3.5
    assert len(demo.model.class_names()) >= 6 and "none" not in demo.model.class_names()
    with pytest.raises(ValueError):
        demo.model.conditioning("no such class")


def test_codec_round_trip_and_latent_statistics(demo, references):
    import comfy.latent_formats

    latent = demo.codec.encode(references)
    assert latent.shape == (len(references), 16, SIZE // 8, SIZE // 8)
    model_input = comfy.latent_formats.Flux().process_in(latent)
    assert 0.6 < model_input.std().item() < 1.4 and abs(model_input.mean().item()) < 0.3
    decoded = demo.codec.decode(latent)
    assert decoded.shape == references.shape and decoded.min() >= 0 and decoded.max() <= 1
    assert torch.mean((decoded - references) ** 2).item() < 0.005  # PSNR > 23 dB


def test_core_ksampler_graph_draws_each_class_recognisably(demo, references, graph):
    names = demo.model.class_names()
    result = graph.run(sample_graph(names))
    images = torch.cat([result["outputs"][f"decode_{n}"][0] for n in names])
    assert images.shape == (len(names), SIZE, SIZE, 3)
    mse = ((images[:, None] - references[None]) ** 2).mean(dim=(2, 3, 4))  # (generated, reference)
    nearest = [names[i] for i in mse.argmin(dim=1).tolist()]
    assert nearest == names, f"MSE generated x reference:\n{mse}"


def test_same_seed_same_image_other_seed_other_image(graph):
    first = graph.run(sample_graph(["cat"]))["outputs"]["decode_cat"][0]
    from comfy_host import GraphRunner

    again = GraphRunner().run(sample_graph(["cat"]))["outputs"]["decode_cat"][0]
    other = GraphRunner().run(sample_graph(["cat"], seed=SEED + 1))["outputs"]["decode_cat"][0]
    assert torch.equal(first, again)
    assert not torch.equal(first, other)


def test_encode_node_round_trips_for_img2img(demo, references, graph):
    """Sample, re-encode with FastlaneDemoEncode, and img2img at denoise 0.5 with SamplerCustomAdvanced +
    FluxGuidance: the result stays close to the first image."""
    prompt = sample_graph(["coffee"])
    prompt.update({
        "encode": {"class_type": "FastlaneDemoEncode", "inputs": {"family": "flux", "pixels": ["decode_coffee", 0]}},
        "guided": {"class_type": "FluxGuidance", "inputs": {"conditioning": ["prompt_coffee", 0], "guidance": 3.5}},
        "guider": {"class_type": "BasicGuider", "inputs": {"model": ["loader", 0], "conditioning": ["guided", 0]}},
        "sampler": {"class_type": "KSamplerSelect", "inputs": {"sampler_name": "euler"}},
        "sigmas": {"class_type": "BasicScheduler",
                   "inputs": {"model": ["loader", 0], "scheduler": "simple", "steps": 10, "denoise": 0.5}},
        "noise": {"class_type": "RandomNoise", "inputs": {"noise_seed": 3}},
        "img2img": {"class_type": "SamplerCustomAdvanced", "inputs": {
            "noise": ["noise", 0], "guider": ["guider", 0], "sampler": ["sampler", 0], "sigmas": ["sigmas", 0],
            "latent_image": ["encode", 0]}},
        "decode2": {"class_type": "FastlaneDemoDecode", "inputs": {"family": "flux", "samples": ["img2img", 0]}},
        "preview2": {"class_type": "PreviewImage", "inputs": {"images": ["decode2", 0]}},
    })
    out = graph.run(prompt)["outputs"]
    first, latent, second = out["decode_coffee"][0], out["encode"][0]["samples"], out["decode2"][0]
    assert latent.shape == (1, 16, SIZE // 8, SIZE // 8)
    assert torch.mean((second - first) ** 2).item() < 0.02
    coffee = demo.model.class_names().index("coffee")
    mse = ((second[0][None] - references) ** 2).mean(dim=(1, 2, 3))
    assert mse.argmin().item() == coffee


def proxy_graph(prompts: list[str], seed: int = SEED, steps: int = 20) -> dict:
    """The FLUX proxy through the same core graph: loader -> prompt (free text) -> EmptySD3LatentImage -> KSampler
    (euler/simple, cfg 1, the zeroed prompt as the unused negative, as the demo workflow has it) -> decode."""
    family = {"family": "flux-proxy"}
    prompt = {
        "loader": {"class_type": "FastlaneDemoModelLoader", "inputs": family},
        "latent": {"class_type": "EmptySD3LatentImage", "inputs": {"width": SIZE, "height": SIZE, "batch_size": 1}},
    }
    for i, text in enumerate(prompts):
        prompt[f"prompt_{i}"] = {"class_type": "FastlaneDemoPrompt",
                                 "inputs": {**family, "subject": "none", "text": text}}
        prompt[f"negative_{i}"] = {"class_type": "ConditioningZeroOut", "inputs": {"conditioning": [f"prompt_{i}", 0]}}
        prompt[f"sample_{i}"] = {"class_type": "KSampler", "inputs": {
            "model": ["loader", 0], "positive": [f"prompt_{i}", 0], "negative": [f"negative_{i}", 0],
            "latent_image": ["latent", 0], "seed": seed, "steps": steps, "cfg": 1.0, "sampler_name": "euler",
            "scheduler": "simple", "denoise": 1.0}}
        prompt[f"decode_{i}"] = {"class_type": "FastlaneDemoDecode", "inputs": {**family, "samples": [f"sample_{i}", 0]}}
        prompt[f"preview_{i}"] = {"class_type": "PreviewImage", "inputs": {"images": [f"decode_{i}", 0]}}
    return prompt


def test_proxy_through_a_core_ksampler_graph_draws_its_prompts_recognisably(graph):
    """Two evaluation prompts, typed as free text: each image is >= 15 dB PSNR from its prompt's reference render
    and nearer to it than to any other evaluation prompt's."""
    from fastlane.demo import scenes

    chosen = [0, 1]
    result = graph.run(proxy_graph([scenes.EVAL_PROMPTS[i] for i in chosen]))
    images = torch.cat([result["outputs"][f"decode_{k}"][0] for k in range(len(chosen))])
    assert images.shape == (len(chosen), SIZE, SIZE, 3)
    refs = scenes.eval_references(SIZE)
    psnr = -10 * torch.log10(((images[:, None] - refs[None]) ** 2).mean(dim=(2, 3, 4)))  # (generated, reference)
    for k, i in enumerate(chosen):
        assert psnr[k, i] >= 15 and psnr[k].argmax().item() == i, f"PSNR generated x reference:\n{psnr}"


def test_proxy_prompt_names_its_vocabulary_for_an_unknown_word():
    import nodes

    prompt = nodes.NODE_CLASS_MAPPINGS["FastlaneDemoPrompt"]
    [[context, options]] = prompt.execute(family="flux-proxy", subject="none",
                                          text="a small blue star on the left, day sky, calm water").result[0]
    assert context.shape[0] == 1 and options["guidance"] == 3.5
    with pytest.raises(ValueError, match="dragon.*only these words: a, and, on"):
        prompt.execute(family="flux-proxy", subject="none", text="a red dragon")
