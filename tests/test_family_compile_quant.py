"""Fastlane Compile and Fastlane Quantize on the model families beyond FLUX and SDXL: tiny configurations of ComfyUI
0.3.75's real classes (built by ``test_model_coverage``: Qwen-Image, Wan 2.1/2.2, Z-Image/Lumina2, HunyuanVideo,
Chroma, FLUX.2, SD3), sampled in ComfyUI's real loop on the CPU.

Compile traces with backend "eager" (dynamo's graph capture, guards and recompiles are inductor's; only kernel
generation is skipped), plus one inductor run; Quantize runs int8_dynamic and, where torch's CPU build has the
kernel, fp8_scaled_mm (the fp8 path for real, with the sm89+ check lifted).
"""
from __future__ import annotations

import comfy.sample
import nodes
import pytest
import torch
from torch._dynamo.utils import counters

from test_model_coverage import CTX, FAMILIES, build, fora

NODE = nodes.NODE_CLASS_MAPPINGS
# family -> (the Family name regional compile reports, graphs: one per block class and signature)
REGIONAL = {
    "qwen_image": ("Qwen-Image", 1),  # QwenImageTransformerBlock
    "wan21": ("Wan", 1),  # WanAttentionBlock (the first block's transposed input is packed: no second graph)
    "wan22_5b": ("Wan", 1),  # the same block, per-token timestep modulation
    "z_image": ("Lumina2 / Z-Image", 2),  # JointTransformerBlock with modulation (noise refiner + layers), without
    "hunyuan_video": ("HunyuanVideo", 2),  # FLUX's DoubleStreamBlock + SingleStreamBlock
    "chroma": ("Chroma", 2),
    "flux2": ("FLUX", 2),  # FLUX.2 is ComfyUI's Flux class
}
# the Linears of each family that run on one row per image: never an activation-quantized kernel
FEW_ROWS = {
    "qwen_image": ["time_text_embed.timestep_embedder.linear_1", "time_text_embed.timestep_embedder.linear_2",
                   "transformer_blocks.0.img_mod.1", "transformer_blocks.1.txt_mod.1", "norm_out.linear"],
    "wan21": ["time_embedding.0", "time_embedding.2", "time_projection.1"],
    "z_image": ["t_embedder.mlp.0", "t_embedder.mlp.2", "layers.0.adaLN_modulation.0",
                "noise_refiner.0.adaLN_modulation.0", "final_layer.adaLN_modulation.1"],
    "hunyuan_video": ["time_in.in_layer", "vector_in.out_layer", "guidance_in.in_layer", "txt_in.t_embedder.in_layer",
                      "txt_in.c_embedder.out_layer", "txt_in.individual_token_refiner.blocks.0.adaLN_modulation.1",
                      "double_blocks.0.img_mod.lin", "double_blocks.1.txt_mod.lin", "single_blocks.0.modulation.lin",
                      "final_layer.adaLN_modulation.1"],
    "chroma": ["distilled_guidance_layer.in_proj", "distilled_guidance_layer.layers.0.in_layer",
               "distilled_guidance_layer.out_proj"],
}
# a Linear of each family that does get quantized (a block's attention or MLP projection)
MAIN = {"qwen_image": "transformer_blocks.0.attn.to_q", "wan21": "blocks.1.ffn.0",
        "z_image": "layers.1.feed_forward.w1", "hunyuan_video": "single_blocks.1.linear1",
        "chroma": "double_blocks.0.img_attn.qkv"}

pytestmark = pytest.mark.usefixtures("fresh_dynamo")  # each test compiles from a clean dynamo


# ---- helpers ---------------------------------------------------------------------------------------------------------

def conditioning(name: str, seed: int, tokens: int) -> list:
    g = torch.Generator().manual_seed(seed)
    context = torch.randn(1, tokens, CTX, generator=g)
    return [[context, {key: torch.randn(shape, generator=g) for key, shape in FAMILIES[name].conds}]]


def run(name: str, model, steps: int = 4, tokens: int = 8) -> torch.Tensor:
    """ComfyUI's sampling loop, CFG 2 (cond and uncond in one batch), a prompt of ``tokens`` tokens."""
    latent = torch.zeros(FAMILIES[name].latent)
    noise = comfy.sample.prepare_noise(latent, 0)
    return comfy.sample.sample(model, noise, steps, 2.0, "euler", "simple", conditioning(name, 1, tokens),
                               conditioning(name, 2, tokens), latent, seed=0, disable_pbar=True)


def compiled(model, scope: str = "regional", backend: str = "eager"):
    return NODE["FastlaneCompile"].execute(model=model, scope=scope, backend=backend, mode="default",
                                           dynamic="auto", fullgraph=True).result[0]


def quantized(model, scheme: str, few_row_linears: str = "auto"):
    out = NODE["FastlaneQuantize"].execute(model=model, scheme=scheme, filter="none", regex="",
                                           few_row_linears=few_row_linears)
    return out.result[0], out.result[1]


def new_graphs() -> int:
    n = int(counters["stats"]["unique_graphs"])
    counters.clear()
    return n


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm())


def compiler_of(model):
    from fastlane.compilers.engine import compiler_of

    return compiler_of(model)


@pytest.fixture(scope="module")
def models():
    return {name: build(name) for name in [*REGIONAL, "sd3", "hidream"]}


@pytest.fixture(scope="module")
def references(models):
    return {name: run(name, model) for name, model in models.items()}


@pytest.fixture
def fp8_on_cpu(monkeypatch):
    """Lift the sm89+ check: torch's CPU build has an fp8 ``_scaled_mm`` kernel, so the fp8 path runs here for real."""
    from test_fp8_scaled import _cpu_scaled_mm_available

    if not _cpu_scaled_mm_available():
        pytest.skip("this torch has no CPU fp8 _scaled_mm")
    import fastlane.quantizers.schemes as schemes

    monkeypatch.setattr(schemes, "fp8_supported", lambda device: True)


# ---- Compile ---------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", REGIONAL)
def test_regional_matches_eager_with_one_graph_per_block_kind(models, references, name):
    family, graphs = REGIONAL[name]
    model = compiled(models[name])
    # eager CPU uses ComfyUI's sub-quadratic attention, compiled calls PyTorch SDPA: equal up to rounding
    assert torch.allclose(run(name, model), references[name], atol=1e-4, rtol=1e-4)
    assert not counters["graph_break"]
    assert new_graphs() == graphs
    report = compiler_of(model).report()
    blocks = len(FAMILIES[name].blocks(models[name].model.diffusion_model))
    assert report["family"] == family
    assert any(path.startswith("regional (") and int(path.split("(")[1].split()[0]) >= blocks
               for path in report["last_run"]["paths"])
    for tokens, steps in ((13, 4), (40, 5)):  # a new prompt length, a new step count: text dims are dynamic
        run(name, model, steps=steps, tokens=tokens)
    assert new_graphs() == 0
    assert not any("forward" in b.__dict__ for b in FAMILIES[name].blocks(models[name].model.diffusion_model))


@pytest.mark.parametrize("name", ["qwen_image", "wan21", "z_image", "sd3"])
def test_whole_scope_compiles_any_family_to_one_graph(models, references, name):
    model = compiled(models[name], scope="whole")
    assert torch.allclose(run(name, model), references[name], atol=1e-4, rtol=1e-4)
    assert new_graphs() == 1
    run(name, model, tokens=21, steps=5)
    assert new_graphs() == 0


@pytest.mark.parametrize("name, cls", [("sd3", "OpenAISignatureMMDITWrapper"),
                                       ("hidream", "HiDreamImageTransformer2DModel")])
def test_regional_on_a_family_without_known_blocks_is_refused_at_node_time(models, name, cls):
    options = repr(models[name].model_options)
    with pytest.raises(ValueError, match=rf"this MODEL is {cls}, whose blocks it does not know: use scope 'whole'"):
        compiled(models[name])
    assert repr(models[name].model_options) == options


@pytest.mark.parametrize("name", ["qwen_image", "wan21"])
def test_regional_stacks_with_a_block_cache_and_whole_yields_to_it(models, name, caplog):
    caplog.set_level("INFO", logger="fastlane")
    reference = run(name, fora(models[name], 2, "blocks"), steps=6)
    for model in (fora(compiled(models[name]), 2, "blocks"), compiled(fora(models[name], 2, "blocks"))):
        assert torch.allclose(run(name, model, steps=6), reference, atol=1e-4, rtol=1e-4)
    assert new_graphs() == REGIONAL[name][1]  # the cache's patches call the compiled blocks
    whole = fora(compiled(models[name], scope="whole"), 2, "blocks")
    assert torch.allclose(run(name, whole, steps=6), reference, atol=1e-4, rtol=1e-4)
    assert "compiled per block instead" in caplog.text


def test_block_patched_names_the_patches_that_decide_per_block(models):
    from fastlane.compilers import families

    def patch(args, extra):
        return extra["original_block"](args)

    for name in REGIONAL:
        family = families.family_of(models[name].model.diffusion_model)
        assert not family.block_patched({}) and not family.block_patched({"patches": {"post_input": [patch]}})
        assert family.block_patched({"patches_replace": {"dit": {("double_block", 0): patch}}})
    qwen = families.family_of(models["qwen_image"].model.diffusion_model)
    assert qwen.block_patched({"patches": {"double_block": [patch]}})  # DiffSynth ControlNet: runs after each block


def test_hunyuan_videos_text_mask_is_dynamic_too(models):
    """HunyuanVideo's text mask becomes an (1, 1, image + text) attention mask: marked dynamic with the text, a new
    prompt length does not recompile (unmarked, it pins the joint length: two new graphs per prompt). CFG 1: ComfyUI's
    masked HunyuanVideo takes one conditioning per call."""
    def masked(seed: int, tokens: int) -> list:
        (context, extra), = conditioning("hunyuan_video", seed, tokens)
        mask = torch.ones(1, tokens)
        mask[:, -2:] = 0
        return [[context, {**extra, "attention_mask": mask}]]

    def go(model, tokens: int) -> torch.Tensor:
        latent = torch.zeros(FAMILIES["hunyuan_video"].latent)
        noise = comfy.sample.prepare_noise(latent, 0)
        return comfy.sample.sample(model, noise, 3, 1.0, "euler", "simple", masked(1, tokens), masked(2, tokens),
                                   latent, seed=0, disable_pbar=True)

    model = compiled(models["hunyuan_video"])
    for i, tokens in enumerate((8, 13, 40)):
        reference = go(models["hunyuan_video"], tokens)
        assert torch.allclose(go(model, tokens), reference, atol=1e-4, rtol=1e-4)
        assert new_graphs() == (2 if i == 0 else 0)


def test_inductor_compiles_a_qwen_image_block():
    one_block = build("qwen_image")
    del one_block.model.diffusion_model.transformer_blocks[1:]
    reference = run("qwen_image", one_block, steps=2)
    out = run("qwen_image", compiled(one_block, backend="inductor"), steps=2)
    assert torch.allclose(out, reference, atol=1e-4, rtol=1e-4)
    assert new_graphs() == 1


def test_the_received_model_is_unchanged_by_compile(models, references):
    wan = models["wan21"]
    options, wrappers = repr(wan.model_options), repr(wan.wrappers)
    run("wan21", compiled(wan))
    assert repr(wan.model_options) == options and repr(wan.wrappers) == wrappers
    counters.clear()
    assert torch.equal(run("wan21", wan), references["wan21"])
    assert new_graphs() == 0


# ---- Quantize --------------------------------------------------------------------------------------------------------

def kinds(model, names):
    return {name: type(model.get_model_object(f"diffusion_model.{name}")) for name in names}


def assert_few_rows_untouched(model, received, name: str) -> None:
    from fastlane.quantizers.fp8_scaled import Fp8Weights
    from fastlane.quantizers.patching import QuantizedLinear

    for few in FEW_ROWS[name]:
        module = model.get_model_object(f"diffusion_model.{few}")
        assert not isinstance(module, (QuantizedLinear, Fp8Weights)), (name, few, type(module))
        assert module.weight.dtype == received.get_model_object(f"diffusion_model.{few}").weight.dtype


@pytest.mark.parametrize("name", FEW_ROWS)
def test_int8_dynamic_samples_and_keeps_the_few_row_linears_16_bit(models, references, name):
    from fastlane.quantizers.patching import QuantizedLinear, quantized_paths

    received = models[name]
    model, report = quantized(received, "int8_dynamic")
    out = run(name, model)
    assert torch.isfinite(out).all() and 0 < rel_err(out, references[name]) < 0.1
    assert_few_rows_untouched(model, received, name)
    assert kinds(model, [MAIN[name]])[MAIN[name]] is QuantizedLinear
    assert f"diffusion_model.{MAIN[name]}" in quantized_paths(model)
    assert "kept (runs on a few rows" in report
    assert received.object_patches == {} and not received.patches
    assert torch.equal(run(name, received), references[name])  # the received MODEL runs as before


@pytest.mark.parametrize("name", FEW_ROWS)
def test_fp8_scaled_mm_samples_and_never_quantizes_few_row_inputs(models, references, name, fp8_on_cpu):
    from fastlane.quantizers.fp8_scaled import Fp8RowwiseLinear
    from fastlane.quantizers.fp8_weight_only import Fp8WeightOnlyLinear

    received = models[name]
    kept, _ = quantized(received, "fp8_scaled_mm", few_row_linears="16-bit")
    out = run(name, kept)
    assert torch.isfinite(out).all() and 0 < rel_err(out, references[name]) < 0.2
    assert_few_rows_untouched(kept, received, name)
    assert kinds(kept, [MAIN[name]])[MAIN[name]] is Fp8RowwiseLinear
    weights, report = quantized(received, "fp8_scaled_mm", few_row_linears="fp8 weights")
    assert set(kinds(weights, FEW_ROWS[name]).values()) == {Fp8WeightOnlyLinear}  # weights only: 16-bit inputs
    assert "with fp8 weights only" in report and torch.isfinite(run(name, weights)).all()
    assert received.object_patches == {} and torch.equal(run(name, received), references[name])


@pytest.mark.parametrize("name", ["qwen_image", "wan21", "z_image"])
def test_quantized_then_compiled_regionally(models, name, fp8_on_cpu):
    model, _ = quantized(models[name], "fp8_scaled_mm")
    eager = run(name, model)
    counters.clear()
    assert rel_err(run(name, compiled(model)), eager) < 0.02
    assert new_graphs() == REGIONAL[name][1] and not counters["graph_break"]


@pytest.mark.parametrize("name, fp8_weight_linears", [("qwen_image", 123), ("wan22_14b", 0), ("z_image", 0)])
def test_auto_gives_few_row_fp8_weights_where_they_hold_a_real_share(name, fp8_weight_linears):
    """The real architectures, built without storage: the few-row Linears hold 33% of Qwen-Image's Linear weights
    (6.8 B parameters: fp8 weights with an fp8 scheme), 1.3% of Wan 2.2 14B's and 2% of Z-Image's (kept 16-bit)."""
    import comfy.supported_models as sm

    from fastlane.quantizers.filters import FEW_ROWS as PATTERN, select

    cls, config = {
        "qwen_image": (sm.QwenImage, dict(image_model="qwen_image", in_channels=64, num_layers=60)),
        "wan22_14b": (sm.WAN21_T2V, dict(image_model="wan2.1", model_type="t2v", dim=5120, out_dim=16, num_heads=40,
                                         ffn_dim=13824, num_layers=40, patch_size=(1, 2, 2), freq_dim=256,
                                         window_size=(-1, -1), qk_norm=True, cross_attn_norm=True, eps=1e-6,
                                         in_dim=16)),
        "z_image": (sm.ZImage, dict(image_model="lumina2", patch_size=2, in_channels=16, dim=3840, cap_feat_dim=2560,
                                    n_layers=30, qk_norm=True, n_heads=30, n_kv_heads=30, axes_dims=[32, 48, 48],
                                    axes_lens=[1536, 512, 512], rope_theta=256.0, ffn_dim_multiplier=8.0 / 3.0,
                                    z_image_modulation=True, time_scale=1000.0, pad_tokens_multiple=32)),
    }[name]
    diffusion_model = cls(dict(config)).get_model({}, "", device=torch.device("meta")).diffusion_model
    assert len(select(diffusion_model, fp8=True).weights_only) == fp8_weight_linears
    few = [n for n, m in diffusion_model.named_modules() if isinstance(m, torch.nn.Linear) and PATTERN.search(n)]
    assert few and select(diffusion_model, fp8=False).weights_only == []
    assert not set(few) & set(select(diffusion_model, fp8=True, few_rows="16-bit").targets)


# the entry and exit projections of each family: what Quantize's default filter ``entry+exit`` keeps 16-bit
ENTRY_EXIT = {
    "qwen_image": ["img_in", "txt_in", "proj_out"],
    "wan21": ["text_embedding.0", "text_embedding.2", "head.head"],
    "wan22_5b": ["text_embedding.0", "text_embedding.2", "head.head"],
    "hunyuan_video": ["txt_in.input_embedder", "final_layer.linear"],
    "chroma": ["img_in", "txt_in", "final_layer.linear"],
    "chroma_radiance": ["txt_in", "nerf_image_embedder.embedder.0", "nerf_final_layer.linear"],
    "flux2": ["img_in", "txt_in", "final_layer.linear"],
    "z_image": ["x_embedder", "cap_embedder.1", "final_layer.linear"],
    "lumina2": ["x_embedder", "cap_embedder.1", "final_layer.linear"],
    "sd3": ["context_embedder", "final_layer.linear"],
    "hidream": ["x_embedder.proj", "final_layer.linear", "caption_projection.0.linear", "caption_projection.1.linear",
                "caption_projection.2.linear"],
    "sd15": [],  # a UNet enters and leaves through convolutions
}


@pytest.mark.parametrize("name", sorted(ENTRY_EXIT))
def test_entry_exit_filter_keeps_each_familys_input_and_output_projections(name):
    """Quantize's default filter keeps exactly the Linears outside the block stacks that take the latent and the text
    in and give the prediction out (every block Linear is still quantized; few-row Linears keep their own rule)."""
    from fastlane.quantizers.filters import select

    diffusion_model = build(name).model.diffusion_model
    kept = select(diffusion_model, "entry+exit", fp8=True).skipped.get("the model's entry/exit projections", [])
    assert sorted(kept) == sorted(ENTRY_EXIT[name])
    none = select(diffusion_model, "none", fp8=True)
    assert set(none.targets) - set(kept) == set(select(diffusion_model, "entry+exit", fp8=True).targets)


# ---- checkpoints stored in scaled fp8 (wan2.2_*_fp8_scaled.safetensors) -------------------------------------------

def scaled_fp8_wan():
    """The tiny Wan as ComfyUI loads an ``*_fp8_scaled`` checkpoint: its scaled-fp8 Linears (e4m3 weights, each
    with a ``scale_weight``; the effective weight is their product), computing in fp32."""
    import comfy.model_management as mm
    import comfy.model_patcher

    tiny = FAMILIES["wan21"]
    config = tiny.config(dict(tiny.unet_config))
    config.scaled_fp8 = torch.float8_e4m3fn
    config.set_inference_dtype(torch.float8_e4m3fn, torch.float32)
    model = config.get_model({})
    torch.manual_seed(0)
    with torch.no_grad():
        for name, p in model.diffusion_model.named_parameters():
            if name.endswith("scale_weight"):
                p.fill_(0.02)
            elif p.dtype == torch.float8_e4m3fn:
                p.copy_((torch.randn(p.shape) * 2.5).to(p.dtype))  # times 0.02: weights of about 0.05
            elif p.is_floating_point():
                p.normal_(0.0, 0.05)
    return comfy.model_patcher.ModelPatcher(model, load_device=mm.get_torch_device(),
                                            offload_device=mm.unet_offload_device())


def test_an_fp8_scaled_checkpoint_is_quantized_from_its_scaled_weights(fp8_on_cpu):
    wan = scaled_fp8_wan()
    assert hasattr(wan.get_model_object("diffusion_model.blocks.0.ffn.0"), "scale_weight")
    reference = run("wan21", wan)
    for scheme in ("int8_weight_only", "fp8_scaled_mm"):  # weight x scale_weight, as ComfyUI computes with
        model, _ = quantized(wan, scheme)
        eager = run("wan21", model)
        assert rel_err(eager, reference) < 0.05, scheme
    counters.clear()
    assert rel_err(run("wan21", compiled(model)), eager) < 0.02  # then compiled: still one block graph
    assert new_graphs() == 1
    assert torch.equal(run("wan21", wan), reference)


def test_the_fastest_flux_chain_as_shipped_samples_compiles_to_two_graphs_and_skips_blocks(fp8_on_cpu):
    """The fastest FLUX workflow's chain with the nodes' settings as shipped (scripts/make_workflows.py): Quantize
    fp8_scaled_mm with the default filter entry+exit → Target Speed 0.2 (order 2, auto) → Compile regional, on the
    tiny FLUX in ComfyUI's loop: two block graphs, 2 of 10 steps run the blocks, the entry/exit projections 16-bit,
    and compiling changes the image no more than rounding does."""
    from tiny_models import BlockCounter, sample, tiny_flux

    from fastlane.quantizers.patching import quantized_paths

    flux = tiny_flux()
    quantized = NODE["FastlaneQuantize"].execute(model=flux, scheme="fp8_scaled_mm", filter="entry+exit", regex="",
                                                 few_row_linears="auto").result[0]
    assert not {"diffusion_model.img_in", "diffusion_model.txt_in",
                "diffusion_model.final_layer.linear"} & quantized_paths(quantized)
    cached = NODE["FastlaneTargetSpeedCache"].execute(model=quantized, compute_fraction=0.2, order=2,
                                                      granularity="auto", start=0.0, end=1.0).result[0]
    eager = sample(cached, steps=10)
    counters.clear()
    fast = compiled(cached)
    blocks = BlockCounter(fast)
    out = sample(fast, steps=10)
    blocks.close()
    assert new_graphs() == 2 and not counters["graph_break"]
    assert blocks.calls == 2 * blocks.blocks  # round(0.2 * 10) computed steps
    assert torch.isfinite(out).all() and rel_err(out, eager) < 0.02
