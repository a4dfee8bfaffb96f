"""The proxy FLUX model (demo/proxy.py) and its training data (demo/scenes.py), through the real ComfyUI: scenes are
deterministic and every prompt is in the vocabulary, the conditioning is what ComfyUI's Flux expects, an untrained
proxy-config model samples with the core KSampler, and the training script's short run writes a loadable file.
Tests of the trained weights are skipped while demo/weights/fastlane-proxy-flux.safetensors does not exist."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

PACK_DIR = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def demo():
    import fastlane.demo.codec
    import fastlane.demo.proxy
    import fastlane.demo.scenes

    return fastlane.demo


@pytest.fixture(scope="module")
def untrained_file(demo, tmp_path_factory) -> Path:
    """A proxy weights file with random (untrained) weights at the proxy's config, written by ``save_weights``."""
    proxy, scenes = demo.proxy, demo.scenes
    gen = torch.Generator().manual_seed(0)
    model = proxy.build_model(torch.float32)
    with torch.no_grad():
        for p in model.diffusion_model.parameters():
            p.normal_(0.0, 0.02, generator=gen)
    images, _ = scenes.sample_scenes(8, generator=gen)
    codec = demo.codec.fit(images)
    path = tmp_path_factory.mktemp("proxy") / "untrained.safetensors"
    proxy.save_weights(path, model.diffusion_model.state_dict(), codec, proxy.fixed_text_tables(gen), {})
    return path


def test_scenes_are_seed_deterministic_and_prompts_stay_in_the_vocabulary(demo):
    scenes = demo.scenes
    first, prompts = scenes.sample_scenes(12, 64, torch.Generator().manual_seed(3))
    again, prompts_again = scenes.sample_scenes(12, 64, torch.Generator().manual_seed(3))
    other, _ = scenes.sample_scenes(12, 64, torch.Generator().manual_seed(4))
    assert first.shape == (12, 64, 64, 3) and first.dtype == torch.float32
    assert 0.0 <= first.min() and first.max() <= 1.0
    assert torch.equal(first, again) and prompts == prompts_again
    assert not torch.equal(first, other)
    specs = scenes.sample_specs(300, torch.Generator().manual_seed(5))
    assert {len(s.objects) for s in specs} == {1, 2, 3} and any(s.relation for s in specs)
    for prompt in [s.prompt for s in specs] + scenes.EVAL_PROMPTS:
        ids = scenes.tokenize(prompt)
        assert len(ids) == scenes.MAX_TOKENS and all(0 <= i < len(scenes.VOCAB) for i in ids)
        said = [scenes.VOCAB[i] for i in ids if i]
        assert said == prompt.replace(",", "").split(), prompt  # nothing truncated, every word known
    with pytest.raises(KeyError):
        scenes.tokenize("a large red dragon")


def test_eval_prompts_have_distinct_reference_renders(demo):
    scenes = demo.scenes
    assert len(scenes.EVAL_PROMPTS) == len(set(scenes.EVAL_PROMPTS)) >= 8
    refs = scenes.eval_references()
    assert refs.shape == (len(scenes.EVAL_PROMPTS), scenes.IMAGE_SIZE, scenes.IMAGE_SIZE, 3)
    assert torch.equal(scenes.render(scenes.EVAL_SPECS[0]), refs[:1])
    red = refs[0, 64, 64]  # "a large red circle in the centre"
    assert red[0] > 0.6 and red[1] < 0.3 and red[2] < 0.3
    mse = ((refs[:, None] - refs[None]) ** 2).mean(dim=(2, 3, 4))
    assert (mse + torch.eye(len(refs))).min() > 0.005  # every pair differs visibly


def test_conditioning_is_comfyui_flux_conditioning_for_any_prompt(demo, untrained_file):
    proxy, scenes = demo.proxy, demo.scenes
    prompt = scenes.sample_specs(1, torch.Generator().manual_seed(9))[0].prompt  # not an evaluation prompt
    [[context, options]] = proxy.conditioning(prompt, batch=2, path=untrained_file)
    assert context.shape == (2, proxy.CONTEXT_TOKENS, proxy.UNET_CONFIG["context_in_dim"])
    assert options["pooled_output"].shape == (2, proxy.UNET_CONFIG["vec_in_dim"]) and options["guidance"] == 3.5
    assert torch.equal(context[0], context[1])
    [[other, _]] = proxy.conditioning(scenes.EVAL_PROMPTS[0], path=untrained_file)
    assert not torch.equal(context[:1], other)
    empty = proxy.conditioning("", path=untrained_file)[0]
    none = proxy.conditioning(proxy.UNCONDITIONAL, path=untrained_file)[0]
    assert torch.equal(empty[0], none[0]) and torch.equal(none[1]["pooled_output"], torch.zeros(1, proxy.POOLED_DIM))
    assert proxy.class_names() == scenes.EVAL_PROMPTS
    with pytest.raises(KeyError):
        proxy.conditioning("a purple unicorn", path=untrained_file)


def test_untrained_proxy_is_comfyui_flux_and_runs_a_core_ksampler_step(demo, untrained_file):
    import comfy.ldm.flux.model
    import comfy.model_base
    import nodes

    proxy = demo.proxy
    assert untrained_file.stat().st_size <= 18e6
    patcher = proxy.load_demo_patcher(untrained_file)
    assert type(patcher.model) is comfy.model_base.Flux
    flux = patcher.model.diffusion_model
    assert type(flux) is comfy.ldm.flux.model.Flux
    assert (len(flux.double_blocks), len(flux.single_blocks), flux.hidden_size) == (3, 6, 192)
    assert sum(p.numel() for p in flux.parameters()) * 2 <= 18e6  # bfloat16
    positive = proxy.conditioning(demo.scenes.EVAL_PROMPTS[1], path=untrained_file)
    negative = proxy.conditioning(proxy.UNCONDITIONAL, path=untrained_file)
    latent = {"samples": torch.zeros(1, 16, 8, 8)}
    (out,) = nodes.KSampler().sample(patcher, 1, 1, 2.0, "euler", "simple", positive, negative, latent)
    assert out["samples"].shape == (1, 16, 8, 8) and torch.isfinite(out["samples"]).all()
    image = demo.codec.decode(out["samples"], untrained_file)
    assert image.shape == (1, 64, 64, 3)


def test_training_script_short_run_writes_a_loadable_file(demo, tmp_path):
    """``--family flux-proxy`` end to end at toy sizes (2 steps, 8 scenes, 1 preview step): < 20 s."""
    out, png = tmp_path / "proxy.safetensors", tmp_path / "preview.png"
    run = subprocess.run(
        [sys.executable, str(PACK_DIR / "scripts" / "train_demo.py"), "--family", "flux-proxy", "--steps", "2",
         "--batch", "2", "--bank", "8", "--codec-scenes", "8", "--preview-steps", "1", "--out", str(out),
         "--preview", str(png)],
        check=False, cwd=PACK_DIR, capture_output=True, text=True, timeout=180,
        env={**os.environ, "PYTHONUNBUFFERED": "1"})
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    assert "mean PSNR to the prompt's reference" in run.stdout and png.exists()
    assert out.stat().st_size <= 18e6
    from safetensors import safe_open

    with safe_open(str(out), framework="pt") as f:
        meta = f.metadata()
    training = json.loads(meta["fastlane.training"])
    assert (training["steps_done"], training["batch"], training["bank"]) == (2, 2, 8)
    assert json.loads(meta["fastlane.unet_config"]) == demo.proxy.UNET_CONFIG
    patcher = demo.proxy.load_demo_patcher(out)
    assert all(torch.isfinite(p).all() for p in patcher.model.diffusion_model.parameters())


@pytest.mark.skipif(not (PACK_DIR / "demo" / "weights" / "fastlane-proxy-flux.safetensors").exists(),
                    reason="the trained proxy weights (demo/weights/fastlane-proxy-flux.safetensors) are not there: "
                           "train them with scripts/train_demo.py --family flux-proxy --device cuda")
def test_trained_proxy_draws_its_evaluation_prompts(demo):
    import comfy.sample

    proxy, scenes = demo.proxy, demo.scenes
    assert proxy.WEIGHTS.stat().st_size <= 18e6
    patcher = proxy.load_demo_patcher()
    refs = scenes.eval_references()
    hits = 0
    for i, prompt in enumerate(scenes.EVAL_PROMPTS[:4]):
        latent = torch.zeros(1, 16, 16, 16)
        noise = comfy.sample.prepare_noise(latent, 42 + i)
        positive = proxy.conditioning(prompt)
        samples = comfy.sample.sample(patcher, noise, 20, 1.0, "euler", "simple", positive, positive, latent,
                                      disable_pbar=True, seed=42 + i)
        image = demo.codec.decode(samples, proxy.WEIGHTS)
        hits += int(((image - refs) ** 2).mean(dim=(1, 2, 3)).argmin() == i)
    assert hits >= 3, f"only {hits}/4 samples are nearest to their own prompt's reference render"
