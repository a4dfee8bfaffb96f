"""The trained Qwen-Image, Z-Image and Wan 2.1 demo models (demo/qwen.py, demo/zimage.py, demo/wan.py; issue 19),
through the real ComfyUI: each is ComfyUI's own model class in a real ModelPatcher, draws a trained class recognisably
(Wan: a clip of 3 latent frames, every frame compared), a cache that computes every step gives the uncached result bit
for bit, and Target Speed 0.3 really runs fewer transformer blocks."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import pytest
import torch

import comfy.model_base
import comfy.sample
import nodes

NODE = nodes.NODE_CLASS_MAPPINGS
ALL = {"start": 0.0, "end": 1.0}
SIZE = 128
STEPS = 8
SUBJECT = "cat"
SEED = 3


@dataclass(frozen=True)
class Demo:
    module: Any
    model_class: type
    config_name: str  # the comfy.supported_models class the model was built by
    cfg: float
    blocks: Callable[[Any], list]  # the main stack a computed step runs (what block caching skips)
    frames: int = 0  # > 0: a video model (Wan): latents (B, 16, frames, H/8, W/8), decoded frame by frame


@pytest.fixture(scope="module")
def demos() -> dict[str, Demo]:
    import fastlane.demo.qwen
    import fastlane.demo.wan
    import fastlane.demo.zimage

    return {
        "qwen-image": Demo(fastlane.demo.qwen, comfy.model_base.QwenImage, "QwenImage", fastlane.demo.qwen.DEFAULT_CFG,
                           lambda dm: list(dm.transformer_blocks)),
        "z-image": Demo(fastlane.demo.zimage, comfy.model_base.Lumina2, "ZImage", fastlane.demo.zimage.DEFAULT_CFG,
                        lambda dm: list(dm.layers)),
        "wan": Demo(fastlane.demo.wan, comfy.model_base.WAN21, "WAN21_T2V", fastlane.demo.wan.DEFAULT_CFG,
                    lambda dm: list(dm.blocks), fastlane.demo.wan.FRAMES),
    }


@pytest.fixture(scope="module")
def patchers(demos) -> dict:
    return {name: demo.module.load_demo_patcher() for name, demo in demos.items()}


class BlockCalls:
    """Forward calls of the real transformer blocks (pre-hooks), while in the ``with`` block."""

    def __init__(self, modules: list[torch.nn.Module]) -> None:
        self.modules, self.calls, self.handles = modules, 0, []

    def __enter__(self) -> BlockCalls:
        self.handles = [m.register_forward_pre_hook(self._hit) for m in self.modules]
        return self

    def _hit(self, *_) -> None:
        self.calls += 1

    def __exit__(self, *_) -> None:
        for h in self.handles:
            h.remove()


def run(demo: Demo, model, base) -> tuple[torch.Tensor, int]:
    """(latent out, block calls) of one KSampler-style run (euler/simple) of ``SUBJECT``."""
    shape = (1, 16, demo.frames, SIZE // 8, SIZE // 8) if demo.frames else (1, 16, SIZE // 8, SIZE // 8)
    latent = comfy.sample.fix_empty_latent_channels(model, torch.zeros(shape))
    noise = comfy.sample.prepare_noise(latent, SEED)
    positive = demo.module.conditioning(SUBJECT)
    negative = demo.module.conditioning(demo.module.UNCONDITIONAL)
    with BlockCalls(demo.blocks(base.model.diffusion_model)) as counter:
        out = comfy.sample.sample(model, noise, STEPS, demo.cfg, "euler", "simple", positive, negative, latent,
                                  seed=SEED, disable_pbar=True)
    return out, counter.calls


@pytest.fixture(scope="module")
def references(demos, patchers) -> dict:
    return {name: run(demos[name], patchers[name], patchers[name]) for name in demos}


NAMES = ("qwen-image", "z-image", "wan")


def nearest_class(demo: Demo, images: torch.Tensor) -> tuple[str, torch.Tensor]:
    """(the class whose reference image, or reference clip for a video model, is nearest to ``images`` by pixel MSE,
    the MSE to each class)."""
    import fastlane.demo.data

    names = demo.module.class_names()
    if demo.frames:  # the whole clip against each class's reference clip
        refs = torch.stack([demo.module.reference_clip(n, demo.frames, SIZE) for n in names])
        mse = ((images.unflatten(0, (-1, demo.frames))[:1] - refs) ** 2).mean(dim=(1, 2, 3, 4))
    else:
        refs = torch.cat([fastlane.demo.data.reference_image(n, SIZE) for n in names])
        mse = ((images - refs) ** 2).mean(dim=(1, 2, 3))
    return names[int(mse.argmin())], mse


@pytest.mark.parametrize("name", NAMES)
def test_real_class_and_recognisable(name, demos, patchers, references):
    import fastlane.demo.codec

    demo, patcher = demos[name], patchers[name]
    assert type(patcher.model) is demo.model_class
    assert type(patcher.model.model_config).__name__ == demo.config_name
    out, calls = references[name]
    assert calls == STEPS * len(demo.blocks(patcher.model.diffusion_model))  # uncached: every block, every step
    if demo.frames:
        assert out.shape == (1, 16, demo.frames, SIZE // 8, SIZE // 8)
        image = demo.module.decode(out)
    else:
        image = fastlane.demo.codec.decode(out.squeeze(2) if out.ndim == 5 else out, demo.module.WEIGHTS)
    nearest, mse = nearest_class(demo, image)
    assert nearest == SUBJECT, f"{name}: sample nearest {nearest}, MSE {mse}"


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("setting", ["FORA interval 1", "Target 1.0"])
def test_compute_every_step_is_exact(name, setting, demos, patchers, references):
    patcher = patchers[name]
    if setting == "FORA interval 1":
        model = NODE["FastlaneFORA"].execute(model=patcher, interval=1, granularity="blocks", **ALL).result[0]
    else:
        model = NODE["FastlaneTargetSpeedCache"].execute(model=patcher, compute_fraction=1.0, order=2,
                                                         granularity="blocks", **ALL).result[0]
    out, calls = run(demos[name], model, patcher)
    reference, reference_calls = references[name]
    assert calls == reference_calls
    assert torch.equal(out, reference)


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("granularity", ["blocks", "last_block"])
def test_target_runs_fewer_blocks(name, granularity, demos, patchers, references):
    patcher = patchers[name]
    model = NODE["FastlaneTargetSpeedCache"].execute(model=patcher, compute_fraction=0.3, order=2,
                                                     granularity=granularity, **ALL).result[0]
    out, calls = run(demos[name], model, patcher)
    reference, reference_calls = references[name]
    per_step = len(demos[name].blocks(patcher.model.diffusion_model))
    computed = round(0.3 * STEPS)
    assert calls == computed * per_step < reference_calls  # only the planned steps ran the blocks
    assert torch.isfinite(out).all() and not torch.equal(out, reference)  # the others were forecast


@pytest.mark.parametrize("name", NAMES)
def test_demo_nodes_draw_it_in_a_core_ksampler_graph(name, demos, graph):
    """FastlaneDemoModelLoader -> FastlaneDemoPrompt -> EmptySD3LatentImage (Wan: EmptyHunyuanLatentVideo, as Wan's
    templates use) -> core KSampler -> FastlaneDemoDecode, as a user builds it, draws the subject; FastlaneDemoEncode
    gives latents in the model's own shape (img2img; Wan: the decoded frames back to one clip)."""
    demo = demos[name]
    if demo.frames:
        latent = {"class_type": "EmptyHunyuanLatentVideo", "inputs": {
            "width": SIZE, "height": SIZE, "length": demo.module.LENGTH, "batch_size": 1}}
    else:
        latent = {"class_type": "EmptySD3LatentImage", "inputs": {"width": SIZE, "height": SIZE, "batch_size": 1}}
    prompt = {
        "loader": {"class_type": "FastlaneDemoModelLoader", "inputs": {"family": name}},
        "positive": {"class_type": "FastlaneDemoPrompt", "inputs": {"family": name, "subject": SUBJECT}},
        "negative": {"class_type": "FastlaneDemoPrompt", "inputs": {"family": name, "subject": "none"}},
        "latent": latent,
        "sample": {"class_type": "KSampler", "inputs": {
            "model": ["loader", 0], "positive": ["positive", 0], "negative": ["negative", 0],
            "latent_image": ["latent", 0], "seed": SEED, "steps": STEPS, "cfg": demo.cfg, "sampler_name": "euler",
            "scheduler": "simple", "denoise": 1.0}},
        "decode": {"class_type": "FastlaneDemoDecode", "inputs": {"family": name, "samples": ["sample", 0]}},
        "preview": {"class_type": "PreviewImage", "inputs": {"images": ["decode", 0]}},
    }
    outputs = graph.run(prompt)["outputs"]
    image = outputs["decode"][0]
    latent = NODE["FastlaneDemoEncode"].execute(family=name, pixels=image).result[0]["samples"]
    nearest, mse = nearest_class(demo, image)
    assert nearest == SUBJECT, f"{name}: sample nearest {nearest}, MSE {mse}"
    expected = {"qwen-image": (1, 16, 1, SIZE // 8, SIZE // 8), "wan": (1, 16, demo.frames, SIZE // 8, SIZE // 8)
                }.get(name, (1, 16, SIZE // 8, SIZE // 8))
    assert tuple(latent.shape) == expected
    if demo.frames:
        assert tuple(image.shape) == (demo.frames, SIZE, SIZE, 3)  # the clip's frames, as an IMAGE batch
