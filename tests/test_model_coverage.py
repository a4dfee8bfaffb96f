"""Step caching on every model family ComfyUI users run: tiny configurations of ComfyUI 0.3.75's real model classes
(built by ``comfy.supported_models``, random weights, CPU) in ComfyUI's real sampling loop, cached by the nodes."""
from __future__ import annotations

import dataclasses
import logging
from typing import Callable

import comfy.controlnet
import comfy.model_management as mm
import comfy.model_patcher
import comfy.sample
import comfy.supported_models as sm
import nodes
import pytest
import torch

from fastlane.cachers.adapters import adapter_for, generic

NODE = nodes.NODE_CLASS_MAPPINGS
ALL = {"start": 0.0, "end": 1.0}
CTX = 32  # text-encoder width of every tiny family
DIT = ("blocks", "last_block", "output")  # what the DiT adapter offers
WAN = dict(image_model="wan2.1", model_type="t2v", dim=32, ffn_dim=64, num_heads=2, num_layers=2, in_dim=16, out_dim=16,
           text_dim=CTX, patch_size=(1, 2, 2), freq_dim=32, window_size=(-1, -1), qk_norm=True, cross_attn_norm=True,
           eps=1e-6)
QWEN = dict(image_model="qwen_image", in_channels=64, out_channels=16, num_layers=2, attention_head_dim=16,
            num_attention_heads=2, joint_attention_dim=CTX, axes_dims_rope=(4, 6, 6))
HUNYUAN = dict(image_model="hunyuan_video", in_channels=16, out_channels=16, patch_size=[1, 2, 2], vec_in_dim=CTX,
               axes_dim=[4, 6, 6], meanflow=False, context_in_dim=CTX, hidden_size=32, mlp_ratio=2.0, num_heads=2,
               depth=2, depth_single_blocks=2, theta=256, qkv_bias=True, byt5=False, guidance_embed=True,
               use_cond_type_embedding=False, vision_in_dim=None)
CHROMA = dict(image_model="chroma", in_channels=64, out_channels=64, context_in_dim=CTX, hidden_size=32, mlp_ratio=2.0,
              num_heads=2, depth=2, depth_single_blocks=2, axes_dim=[4, 6, 6], theta=10000, patch_size=2, qkv_bias=True,
              in_dim=64, out_dim=32, hidden_dim=32, n_layers=1)
RADIANCE = dict(CHROMA, image_model="chroma_radiance", in_channels=3, out_channels=3, patch_size=4, nerf_hidden_size=16,
                nerf_mlp_ratio=2, nerf_depth=1, nerf_max_freqs=4, nerf_tile_size=0, nerf_final_head_type="linear",
                nerf_embedder_dtype=torch.float32)
FLUX2 = dict(image_model="flux2", axes_dim=[2, 2, 6, 6], num_heads=2, mlp_ratio=2.0, theta=2000, in_channels=128,
             out_channels=128, global_modulation=True, vec_in_dim=None, mlp_silu_act=True, qkv_bias=False,
             ops_bias=False, default_ref_method="index", ref_index_scale=10.0, patch_size=1, hidden_size=32,
             context_in_dim=CTX, depth=1, depth_single_blocks=1, guidance_embed=True)
Z_IMAGE = dict(image_model="lumina2", patch_size=2, in_channels=16, dim=256, cap_feat_dim=CTX, n_layers=2,
               n_refiner_layers=1, qk_norm=True, n_heads=4, n_kv_heads=4, axes_dims=[16, 24, 24],
               axes_lens=[64, 64, 64], rope_theta=256.0, ffn_dim_multiplier=8.0 / 3.0, multiple_of=16,
               z_image_modulation=True, time_scale=1000.0, pad_tokens_multiple=32)  # Z-Image: dim >= 256
LUMINA2 = dict(image_model="lumina2", patch_size=2, in_channels=16, dim=64, cap_feat_dim=CTX, n_layers=2,
               n_refiner_layers=1, qk_norm=True, n_heads=2, n_kv_heads=1, axes_dims=[8, 12, 12],
               axes_lens=[64, 64, 64], multiple_of=16)  # Lumina 2: no token padding, the original modulation
SD3 = dict(in_channels=16, pos_embed_scaling_factor=None, depth=2, patch_size=2, out_channels=16, adm_in_channels=CTX,
           pos_embed_max_size=16, num_patches=256, qk_norm=None,
           context_embedder_config={"target": "torch.nn.Linear", "params": {"in_features": CTX, "out_features": 128}})
HIDREAM = dict(image_model="hidream", patch_size=2, in_channels=16, out_channels=None, num_layers=1,
               num_single_layers=1, attention_head_dim=16, num_attention_heads=2, caption_channels=[CTX, CTX],
               text_emb_dim=CTX, num_routed_experts=2, num_activated_experts=1, axes_dims_rope=(4, 6, 6),
               max_resolution=(16, 16), llama_layers=[0, 1])
SD15 = dict(use_checkpoint=False, image_size=32, out_channels=4, use_spatial_transformer=True, legacy=False,
            adm_in_channels=None, in_channels=4, model_channels=32, num_res_blocks=[1, 1], transformer_depth=[1, 1],
            channel_mult=[1, 2], transformer_depth_middle=1, use_linear_in_transformer=False, context_dim=CTX,
            transformer_depth_output=[1, 1, 1, 1], num_heads=2, num_head_channels=-1, use_temporal_attention=False,
            use_temporal_resblock=False)


POOLED = (("pooled_output", (1, CTX)),)


def _stack(*names: str) -> Callable:
    return lambda dm: [b for n in names for b in getattr(dm, n)]


@dataclasses.dataclass(frozen=True)
class Tiny:
    """A family's tiny model: its ComfyUI config class and unet_config, latent shape, what the adapter calls it and
    offers, and the modules that run only on computed steps (at every granularity it offers)."""

    config: type
    unet_config: dict
    latent: tuple
    family: str
    granularities: tuple
    blocks: Callable[[torch.nn.Module], list]
    conds: tuple = ()  # extra conditioning entries beside the text context


FAMILIES = {
    "qwen_image": Tiny(sm.QwenImage, QWEN, (1, 16, 1, 8, 8), "Qwen-Image", DIT, _stack("transformer_blocks")),
    "wan21": Tiny(sm.WAN21_T2V, WAN, (1, 16, 3, 8, 8), "Wan", DIT, _stack("blocks")),
    "wan22_5b": Tiny(sm.WAN22_T2V, dict(WAN, in_dim=48, out_dim=48), (1, 48, 2, 8, 8), "Wan", DIT, _stack("blocks")),
    "hunyuan_video": Tiny(sm.HunyuanVideo, HUNYUAN, (1, 16, 2, 8, 8), "HunyuanVideo", DIT,
                          _stack("double_blocks", "single_blocks"), POOLED),
    "chroma": Tiny(sm.Chroma, CHROMA, (1, 16, 8, 8), "Chroma", DIT, _stack("double_blocks", "single_blocks"), POOLED),
    "chroma_radiance": Tiny(sm.ChromaRadiance, RADIANCE, (1, 3, 16, 16), "Chroma", DIT,
                            _stack("double_blocks", "single_blocks"), POOLED),
    # FLUX.2 is ComfyUI's Flux class (global modulation): the FLUX adapter claims it
    "flux2": Tiny(sm.Flux2, FLUX2, (1, 128, 4, 4), "FLUX", ("blocks", "last_block", "attention_mlp", "output"),
                  _stack("double_blocks", "single_blocks"), POOLED),
    # Z-Image and Lumina 2 are ComfyUI's NextDiT: the Lumina adapter hooks its main ``layers`` stack (the refiners run)
    "z_image": Tiny(sm.ZImage, Z_IMAGE, (1, 16, 8, 8), "Z-Image", DIT, _stack("layers")),
    "lumina2": Tiny(sm.Lumina2, LUMINA2, (1, 16, 8, 8), "Lumina 2", DIT, _stack("layers")),
    # SD3's MMDiT does not run the DIFFUSION_MODEL wrappers itself: the generic adapter routes it through them
    "sd3": Tiny(sm.SD3, SD3, (1, 16, 8, 8), "SD3 (OpenAISignatureMMDITWrapper)", ("output",), _stack("joint_blocks"),
                POOLED),
    "hidream": Tiny(sm.HiDream, HIDREAM, (1, 16, 8, 8), "HiDream (HiDreamImageTransformer2DModel)", ("output",),
                    _stack("double_stream_blocks", "single_stream_blocks"),
                    (*POOLED, ("conditioning_llama3", (1, 2, 8, CTX)))),  # two Llama layers, picked by llama_layers
    # SD1.5 is a non-temporal UNetModel: the SDXL adapter (DeepCache) claims it. Its deep part: the middle block.
    "sd15": Tiny(sm.SD15, SD15, (1, 4, 8, 8), "SDXL", ("deep", "output"), lambda dm: [dm.middle_block[0]]),
}
CASES = [(name, g) for name, tiny in FAMILIES.items() for g in tiny.granularities]


def build(name: str, seed: int = 0) -> comfy.model_patcher.ModelPatcher:
    tiny = FAMILIES[name]
    config = tiny.config(tiny.unet_config)
    config.set_inference_dtype(torch.float32, None)
    model = config.get_model({})
    torch.manual_seed(seed)
    with torch.no_grad():
        for t in [*model.diffusion_model.parameters(), *model.diffusion_model.buffers()]:
            if t.is_floating_point():
                t.normal_(0.0, 0.05)  # buffers too: SD3's positional embedding is allocated empty
    return comfy.model_patcher.ModelPatcher(model, load_device=mm.get_torch_device(),
                                            offload_device=mm.unet_offload_device())


def conditioning(name: str, seed: int) -> list:
    g = torch.Generator().manual_seed(seed)
    context = torch.randn(1, 8, CTX, generator=g)
    return [[context, {key: torch.randn(shape, generator=g) for key, shape in FAMILIES[name].conds}]]


def sample(name: str, model, steps: int = 6, cfg: float = 2.0, start: int | None = None, last: int | None = None,
           latent=None, add_noise: bool = True) -> torch.Tensor:
    """ComfyUI's sampling loop (cond and uncond batched: one model call per step); with ``start``/``last``, one
    KSamplerAdvanced stage of a ``steps``-step schedule."""
    latent = torch.zeros(FAMILIES[name].latent) if latent is None else latent
    noise = comfy.sample.prepare_noise(torch.zeros(FAMILIES[name].latent), 0)
    return comfy.sample.sample(model, noise if add_noise else torch.zeros_like(noise), steps, cfg, "euler", "simple",
                               conditioning(name, 1), conditioning(name, 2), latent, start_step=start, last_step=last,
                               force_full_denoise=last is None or last >= steps, disable_noise=not add_noise, seed=0,
                               disable_pbar=True)


def fora(model, interval: int, granularity: str = "auto"):
    return NODE["FastlaneFORA"].execute(model=model, interval=interval, granularity=granularity, **ALL).result[0]


def spectrum(model, fraction: float, granularity: str = "auto"):
    return NODE["FastlaneSpectrumCache"].execute(
        model=model, compute_fraction=fraction, degree=4, ridge=0.1, blend=0.5, warmup_steps=2, growth=0.5,
        coordinate="step", granularity=granularity, **ALL).result[0]


class Counter:
    """Forward calls of the modules a cached step skips (real forward pre-hooks), and ``computed``: the model calls
    (here one per step) in which they ran."""

    def __init__(self, name: str, model) -> None:
        dm = model.model.diffusion_model
        self.blocks = FAMILIES[name].blocks(dm)
        self.calls, self.model_calls, self.computed = 0, 0, []
        self.handles = [b.register_forward_pre_hook(self._block) for b in self.blocks]
        self.handles.append(dm.register_forward_pre_hook(self._model))

    def _block(self, *_) -> None:
        if not self.computed or self.computed[-1] != self.model_calls - 1:
            self.computed.append(self.model_calls - 1)
        self.calls += 1

    def _model(self, *_) -> None:
        self.model_calls += 1

    def __enter__(self) -> Counter:
        return self

    def __exit__(self, *_) -> None:
        for h in self.handles:
            h.remove()


@pytest.fixture(scope="module")
def models():
    return {name: build(name) for name in FAMILIES}


@pytest.fixture(scope="module")
def references(models):
    return {name: sample(name, model) for name, model in models.items()}


# ---- every family ---------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", FAMILIES)
def test_each_family_gets_its_adapter(models, name):
    adapter = adapter_for(models[name])
    assert adapter.family == FAMILIES[name].family
    assert adapter.granularities == FAMILIES[name].granularities


@pytest.mark.parametrize("name, granularity", CASES)
def test_compute_every_step_is_bit_identical_to_no_cache(models, references, name, granularity):
    assert torch.equal(sample(name, fora(models[name], 1, granularity)), references[name])


@pytest.mark.parametrize("name, granularity", CASES)
def test_cached_steps_run_no_block(models, references, name, granularity):
    with Counter(name, models[name]) as counter:
        cached = sample(name, fora(models[name], 2, granularity))
    assert counter.computed == [0, 2, 4] and counter.calls == 3 * len(counter.blocks)
    assert torch.isfinite(cached).all() and not torch.equal(cached, references[name])


@pytest.mark.parametrize("name", [n for n, tiny in FAMILIES.items() if "blocks" in tiny.granularities])
def test_the_stack_residual_stays_closer_than_reusing_the_output(models, references, name):
    # A cached step adds the forecast residual to the current entry of the stack: far closer than the whole output
    # (a wrong entry, e.g. txt and img joined in the wrong order, would be far off).
    error = {g: (sample(name, fora(models[name], 2, g)) - references[name]).abs().mean() for g in ("blocks", "output")}
    assert error["blocks"] < 0.5 * error["output"]


@pytest.mark.parametrize("name", FAMILIES)
def test_spectrum_caches_every_family(models, references, name):
    assert torch.equal(sample(name, spectrum(models[name], 1.0)), references[name])
    with Counter(name, models[name]) as counter:
        cached = sample(name, spectrum(models[name], 0.5), steps=8)
    assert counter.calls == 4 * len(counter.blocks) and torch.isfinite(cached).all()


@pytest.mark.parametrize("name", FAMILIES)
def test_target_speed_auto_blends_on_flux_qwen_image_and_z_image(models, references, name):
    def target(fraction: float):
        return NODE["FastlaneTargetSpeedCache"].execute(model=models[name], compute_fraction=fraction, order=1,
                                                        granularity="auto", **ALL).result[0]

    blended = FAMILIES[name].family in ("FLUX", "Qwen-Image", "Z-Image")
    assert target(0.5).model_options["transformer_options"]["fastlane_cache"].option == \
        ("blocks+output" if blended else FAMILIES[name].granularities[0])
    assert torch.equal(sample(name, target(1.0)), references[name])
    with Counter(name, models[name]) as counter:
        cached = sample(name, target(0.5), steps=8)
    assert counter.calls == 4 * len(counter.blocks) and torch.isfinite(cached).all()


# ---- Wan 2.2 A14B: two experts, two KSamplerAdvanced stages ---------------------------------------------------------

def test_wan22_experts_each_start_clean_on_their_own_schedule(models):
    high, low = models["wan21"], build("wan21", seed=1)  # Wan 2.2 A14B's experts load as Wan 2.1-shaped models
    high_cached, low_cached = fora(high, 2), fora(low, 2)
    half = sample("wan21", high_cached, steps=10, start=0, last=5)
    with Counter("wan21", low) as counter:
        out = sample("wan21", low_cached, steps=10, start=5, last=10, latent=half, add_noise=False)
    # The low-noise stage plans over its own 5 steps (its sigmas): it computes its steps 0, 2 and 4.
    assert counter.computed == [0, 2, 4] and counter.calls == 3 * len(counter.blocks)
    assert torch.isfinite(out).all()
    assert torch.equal(out, sample("wan21", fora(low, 2), steps=10, start=5, last=10, latent=half, add_noise=False))
    assert torch.equal(sample("wan21", high_cached, steps=10, start=0, last=5), half)  # a second queue run: fresh too


# ---- what the DiT adapter keeps and refuses -------------------------------------------------------------------------

def test_skipped_chroma_blocks_move_the_stack_ends():
    chroma = build("chroma")
    chroma.model.diffusion_model.skip_mmdit, chroma.model.diffusion_model.skip_dit = [0], [1]  # first and last
    reference = sample("chroma", chroma)
    for granularity in ("blocks", "last_block"):
        assert torch.equal(sample("chroma", fora(chroma, 1, granularity)), reference)
        with Counter("chroma", chroma) as counter:
            assert torch.isfinite(sample("chroma", fora(chroma, 2, granularity))).all()
        assert counter.computed == [0, 2, 4] and counter.calls == 3 * 2  # double 1 and single 0 run


def test_another_nodes_block_patch_keeps_working(models):
    wan = models["wan21"].clone()
    for i in range(2):
        wan.set_model_patch_replace(lambda args, extra: {"img": extra["original_block"](args)["img"] * 1.01},
                                    "dit", "double_block", i)
    reference = sample("wan21", wan)
    assert not torch.equal(reference, sample("wan21", models["wan21"]))
    for granularity in ("blocks", "last_block"):
        assert torch.equal(sample("wan21", fora(wan, 1, granularity)), reference)


class _Control(comfy.controlnet.ControlBase):
    """A ControlNet stand-in: present in the call, adds nothing."""

    def get_control(self, x_noisy, t, cond, batched_number, transformer_options):
        return {"input": [], "output": []}


@pytest.mark.parametrize("name", ["qwen_image", "chroma", "hunyuan_video"])
def test_controlnet_needs_output_granularity(models, name):
    control = _Control()
    positive, negative = ([[c[0][0], {**c[0][1], "control": control}]] for c in (conditioning(name, 1),
                                                                                   conditioning(name, 2)))
    noise = comfy.sample.prepare_noise(torch.zeros(FAMILIES[name].latent), 0)

    def run(model):
        return comfy.sample.sample(model, noise, 4, 2.0, "euler", "simple", positive, negative,
                                   torch.zeros(FAMILIES[name].latent), seed=0, disable_pbar=True)

    with pytest.raises(ValueError, match="cannot follow a ControlNet"):
        run(fora(models[name], 2, "blocks"))
    assert torch.isfinite(run(fora(models[name], 2, "output"))).all()


def test_qwen_double_block_patch_needs_output_granularity(models):
    patched = models["qwen_image"].clone()
    patched.set_model_double_block_patch(lambda args: {"img": args["img"], "txt": args["txt"]})
    with pytest.raises(ValueError, match="cannot follow a ControlNet"):
        sample("qwen_image", fora(patched, 2, "last_block"))


# ---- the generic fallback and bad inputs ----------------------------------------------------------------------------

def test_an_unclaimed_family_caches_the_output_and_says_so_once(models, caplog):
    hidream = models["hidream"]
    generic._announced.discard(type(hidream.model.diffusion_model))
    caplog.set_level(logging.INFO, logger="fastlane")
    cached = fora(hidream, 2)  # auto
    spectrum(hidream, 0.5, "output")
    fora(hidream, 3)
    assert cached.model_options["transformer_options"]["fastlane_cache"].granularity == "output"
    notes = [r for r in caplog.records
             if "no block-level cache for HiDream (HiDreamImageTransformer2DModel)" in r.getMessage()]
    assert len(notes) == 1 and "whole model output" in notes[0].getMessage()


def test_variants_that_add_between_blocks_fall_back_to_output():
    config = sm.WAN21_Vace(dict(WAN, model_type="vace", vace_layers=1, vace_in_dim=96))
    config.set_inference_dtype(torch.float32, None)
    vace = comfy.model_patcher.ModelPatcher(config.get_model({}), load_device=mm.get_torch_device(),
                                            offload_device=mm.unet_offload_device())
    adapter = adapter_for(vace)
    assert adapter.family == "WAN21_Vace (VaceWanModel)" and adapter.granularities == ("output",)


@pytest.mark.parametrize("name, granularity, message", [
    ("hidream", "blocks", (r"'blocks' is a FLUX / Qwen-Image / Wan / Chroma / HunyuanVideo / Lumina 2 / Z-Image "
                           r"option; this MODEL is HiDream \(HiDreamImageTransformer2DModel\), which takes auto "
                           r"\(output\) or output")),
    ("z_image", "deep", r"'deep' is a SDXL option; this MODEL is Z-Image, which takes auto \(blocks\) or blocks"),
    ("sd3", "last_block", r"this MODEL is SD3 \(OpenAISignatureMMDITWrapper\), which takes auto \(output\) or output"),
    ("wan21", "deep", (r"'deep' is a SDXL option; this MODEL is Wan, which takes auto \(blocks\) or blocks, "
                       r"blocks\+output, last_block, output")),
    ("qwen_image", "attention_mlp", r"'attention_mlp' is a FLUX option; this MODEL is Qwen-Image"),
])
def test_a_granularity_the_family_lacks_is_a_clear_error(models, name, granularity, message):
    options = repr(models[name].model_options)
    with pytest.raises(ValueError, match=message):
        fora(models[name], 2, granularity)
    assert repr(models[name].model_options) == options


def test_a_vae_or_clip_as_model_is_a_clear_error():
    import comfy.sd

    not_diffusion = comfy.model_patcher.ModelPatcher(torch.nn.Linear(2, 2), load_device=mm.get_torch_device(),
                                                     offload_device=mm.unet_offload_device())
    for wrong in (object.__new__(comfy.sd.VAE), object.__new__(comfy.sd.CLIP), not_diffusion):
        message = f"expects a MODEL from a diffusion-model loader.*, got {type(wrong).__name__}"
        with pytest.raises(ValueError, match=message):
            fora(wrong, 2)


def test_routing_a_wrapperless_model_through_the_wrappers_leaves_the_input_model_alone(models, references):
    sd3 = models["sd3"]
    options, patches = repr(sd3.model_options), dict(sd3.object_patches)
    sample("sd3", fora(sd3, 2))
    assert repr(sd3.model_options) == options and sd3.object_patches == patches
    with Counter("sd3", sd3) as counter:
        assert torch.equal(sample("sd3", sd3), references["sd3"])
    assert counter.calls == 6 * len(counter.blocks)
    assert sd3.model.diffusion_model.forward.__name__ == "forward"  # ComfyUI undid the routing when it switched MODELs
