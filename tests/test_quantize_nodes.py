"""Fastlane Quantize (torchao) on small real ComfyUI models, sampled in ComfyUI's loop on the CPU (int8 schemes)."""
import re

import nodes
import pytest
import torch
from torch._dynamo.utils import counters

from tiny_models import sample, sdxl_conditioning, tiny_flux, tiny_sdxl

NODE = nodes.NODE_CLASS_MAPPINGS
KEY = "diffusion_model.double_blocks.0.img_attn.qkv.weight"
BUMP = {}


def quantized(model, scheme="int8_weight_only", filter="none", regex="", **kw):
    out = NODE["FastlaneQuantize"].execute(model=model, scheme=scheme, filter=filter, regex=regex, **kw)
    return out.result[0], out.result[1]


def rel_err(a, b):
    return float((a - b).norm() / b.norm())


def lora(model, strength=1.0):
    patched = model.clone()
    patched.add_patches({KEY: ("diff", (BUMP["diff"],))}, strength)
    return patched


def quantized_names(model):
    from fastlane.quantizers.patching import quantized_paths

    return {p[len("diffusion_model."):] for p in quantized_paths(model)}


@pytest.fixture(scope="module")
def flux():
    model = tiny_flux()
    BUMP["diff"] = torch.full_like(model.model.state_dict()[KEY], 0.05)
    return model


@pytest.mark.parametrize("scheme", ["int8_weight_only", "int8_dynamic"])
def test_int8_schemes_run_close_to_16_bit_and_report_memory(flux, scheme):
    reference = sample(flux, steps=6)
    model, report = quantized(flux, scheme)
    out = sample(model, steps=6)
    assert torch.isfinite(out).all()
    assert 0 < rel_err(out, reference) < 0.05
    assert report.startswith(f"Fastlane Quantize {scheme}")
    before, after = map(float, re.search(r"Linear weights ([\d.]+) MB -> ([\d.]+) MB", report).groups())
    assert 0 < after < 0.3 * before  # int8 + per-row scales vs the fp32 weights of the tiny model
    total_before, total_after = map(float, re.search(r"model weights ([\d.]+) MB -> ([\d.]+) MB", report).groups())
    assert total_after < total_before


def test_the_received_model_is_unchanged(flux):
    before = sample(flux, steps=5)
    types_before = [type(m) for m in flux.model.diffusion_model.modules()]
    model, _ = quantized(flux, "int8_dynamic")
    sample(model, steps=5)
    assert flux.object_patches == {} and not flux.patches
    assert torch.equal(sample(flux, steps=5), before)
    # the received torch model never held the quantized copies
    assert [type(m) for m in flux.model.diffusion_model.modules()] == types_before


def test_few_row_linears_stay_16_bit_by_default_with_an_int8_scheme(flux):
    model, report = quantized(flux, "int8_dynamic")
    names = quantized_names(model)
    few_rows = ["double_blocks.0.img_mod.lin", "double_blocks.1.txt_mod.lin", "single_blocks.0.modulation.lin",
                "time_in.in_layer", "vector_in.out_layer", "guidance_in.in_layer", "final_layer.adaLN_modulation.1"]
    assert not names & set(few_rows)
    assert {"double_blocks.0.img_attn.qkv", "single_blocks.1.linear1", "img_in", "final_layer.linear"} <= names
    assert "kept (runs on a few rows" in report


def test_few_row_linears_can_hold_fp8_weights_instead(flux):
    from fastlane.quantizers.fp8_weight_only import Fp8WeightOnlyLinear
    from fastlane.quantizers.patching import QuantizedLinear

    reference = sample(flux, steps=6)
    kept, kept_report = quantized(flux)
    model, report = quantized(flux, few_row_linears="fp8 weights")
    few_rows = {"double_blocks.0.img_mod.lin", "single_blocks.0.modulation.lin", "time_in.in_layer",
                "final_layer.adaLN_modulation.1"}
    kinds = {name: type(model.get_model_object(f"diffusion_model.{name}")) for name in quantized_names(model)}
    assert {kinds[n] for n in few_rows} == {Fp8WeightOnlyLinear}
    assert kinds["double_blocks.0.img_attn.qkv"] is QuantizedLinear  # the scheme still does the others
    assert "few-row Linears (modulation/embedders) with fp8 weights only" in report
    after = float(re.search(r"model weights [\d.]+ MB -> ([\d.]+) MB", report).group(1))
    kept_after = float(re.search(r"model weights [\d.]+ MB -> ([\d.]+) MB", kept_report).group(1))
    assert after < kept_after
    out = sample(model, steps=6)
    # e4m3 weights move this tiny random model's image by ~0.11 (int8 weight-only by ~0.01): the modulation sets
    # every block's scale, shift and gate. Demo-model fidelity: docs/fidelity/fidelity_quant_table.md.
    assert 0 < rel_err(out, sample(kept, steps=6)) < 0.2
    assert flux.object_patches == {} and torch.equal(sample(flux, steps=6), reference)  # received MODEL unchanged
    late = model.clone()
    mod_key = "diffusion_model.double_blocks.0.img_mod.lin.weight"
    late.add_patches({mod_key: ("diff", (torch.zeros_like(flux.model.state_dict()[mod_key]),))}, 1.0)
    with pytest.raises(ValueError, match="after Fastlane Quantize"):
        sample(late, steps=2)


def test_entry_exit_is_the_default_filter_and_keeps_flux_projections_16_bit(flux):
    from fastlane.quantizers.filters import DEFAULT_PRESET

    schema = NODE["FastlaneQuantize"].GET_SCHEMA()
    assert next(i for i in schema.inputs if i.id == "filter").default == DEFAULT_PRESET == "entry+exit"
    reference = sample(flux, steps=4)
    model, report = quantized(flux, "int8_dynamic", filter="entry+exit")
    names = quantized_names(model)
    assert not names & {"img_in", "txt_in", "final_layer.linear"}
    assert {"double_blocks.0.img_attn.qkv", "double_blocks.1.txt_mlp.2", "single_blocks.1.linear2"} <= names
    assert "3 kept (the model's entry/exit projections)" in report
    for kept in ("img_in", "txt_in", "final_layer.linear"):  # plain Linears of the model's own copy, same weights
        copy, original = (m.get_model_object(f"diffusion_model.{kept}") for m in (model, flux))
        assert type(copy) is type(original) and torch.equal(copy.weight, original.weight)
    assert 0 < rel_err(sample(model, steps=4), reference) < 0.05


def test_norm_embedding_preset_and_regex(flux):
    model, _ = quantized(flux, filter="norm+embedding")
    names = quantized_names(model)
    assert not names & {"img_in", "txt_in", "final_layer.linear"}
    assert "double_blocks.0.img_mlp.0" in names
    model, report = quantized(flux, filter="regex", regex=r"^single_blocks\.1\.|_mlp\.2$")
    names = quantized_names(model)
    assert not any(n.startswith("single_blocks.1.") or n.endswith("_mlp.2") for n in names)
    assert "single_blocks.0.linear1" in names and "regex" in report


@pytest.mark.parametrize("kwargs, message", [
    (dict(scheme="fp8_dynamic_rowwise"), r"needs fp8 matmul hardware.*Use 'int8_weight_only' or 'int8_dynamic'"),
    (dict(scheme="fp8_weight_only"), r"compute capability 8.9"),
    (dict(scheme="fp8_scaled_mm"), r"needs fp8 matmul hardware"),
    (dict(filter="regex", regex=""), "needs a regex"),
    (dict(filter="regex", regex="("), "bad filter regex"),
    (dict(filter="regex", regex="."), "no Linear left to quantize"),
    (dict(few_row_linears="fp4"), "few_row_linears must be one of"),
])
def test_clear_errors(flux, kwargs, message):
    with pytest.raises(ValueError, match=message):
        quantized(flux, **kwargs)


def test_few_row_fp8_weights_on_a_gpu_without_fp8_is_a_clear_error_and_patches_nothing(flux, monkeypatch):
    from fastlane.quantizers import schemes

    monkeypatch.setattr(schemes, "fp8_supported", lambda device: False)  # an NVIDIA GPU before Ada
    gpu = flux.clone()
    gpu.load_device = torch.device("cuda", 0)
    with pytest.raises(ValueError, match=r"'fp8 weights' needs an NVIDIA GPU with compute capability 8.9\+.*16-bit"):
        quantized(gpu, few_row_linears="fp8 weights")
    assert gpu.object_patches == {} and flux.object_patches == {}


@pytest.mark.parametrize("family, fp8_weight_linears", [("flux", 83), ("sdxl", 0)])
def test_auto_gives_few_row_linears_fp8_weights_where_they_hold_a_real_share(family, fp8_weight_linears):
    import comfy.supported_models
    from fastlane.benchmarks.models import FLUX_DEV_UNET_CONFIG, SDXL_UNET_CONFIG
    from fastlane.quantizers.filters import select

    # the real FLUX.1-dev and SDXL architectures, built without storage: few-row Linears hold 28% and 1% of the
    # Linear weights
    cls, config = (comfy.supported_models.Flux, FLUX_DEV_UNET_CONFIG) if family == "flux" else \
        (comfy.supported_models.SDXL, SDXL_UNET_CONFIG)
    diffusion_model = cls(dict(config)).get_model({}, "", device=torch.device("meta")).diffusion_model
    assert len(select(diffusion_model, fp8=True).weights_only) == fp8_weight_linears  # fp8 scheme, auto
    assert select(diffusion_model, fp8=False).weights_only == []  # int8 scheme (GPUs without fp8 too), auto
    assert len(select(diffusion_model, fp8=False, few_rows="fp8 weights").weights_only) == \
        {"flux": 83, "sdxl": 21}[family]


def test_lora_before_quantizing_is_baked_in(flux):
    plain_q, _ = quantized(flux)
    reference = sample(lora(flux, 8.0), steps=5)
    model, report = quantized(lora(flux, 8.0))
    with_lora = rel_err(sample(model, steps=5), reference)
    without_lora = rel_err(sample(plain_q, steps=5), reference)
    assert without_lora > 0.05  # the patch matters
    assert with_lora < 0.3 * without_lora  # and the quantized copy carries it (up to quantization error)
    assert "1 LoRA/weight patches baked in" in report
    assert KEY not in model.patches  # ComfyUI must not apply it a second time


def test_lora_after_quantizing_is_refused_clearly(flux):
    model, _ = quantized(flux)
    with pytest.raises(ValueError, match="Put the LoRA loader before Fastlane Quantize"):
        sample(lora(model), steps=3)
    sample(model, steps=3)  # the quantized MODEL itself still works


def test_few_row_linears_get_fp8_weights_by_default_with_an_fp8_scheme(flux, fp8_on_cpu):
    from fastlane.quantizers.fp8_weight_only import Fp8WeightOnlyLinear

    default, report = quantized(flux, "fp8_scaled_mm")  # few_row_linears left out, as an API prompt may
    kinds = {name: type(default.get_model_object(f"diffusion_model.{name}")) for name in quantized_names(default)}
    assert kinds["double_blocks.0.img_mod.lin"] is Fp8WeightOnlyLinear and kinds["time_in.in_layer"] is \
        Fp8WeightOnlyLinear
    assert "few-row Linears (modulation/embedders) with fp8 weights only" in report
    kept, kept_report = quantized(flux, "fp8_scaled_mm", few_row_linears="16-bit")
    assert "double_blocks.0.img_mod.lin" not in quantized_names(kept)
    assert "kept (runs on a few rows" in kept_report


def test_quantizing_twice_is_refused(flux):
    model, _ = quantized(flux)
    with pytest.raises(ValueError, match="already went through Fastlane Quantize"):
        quantized(model)


@pytest.mark.parametrize("scheme, few_rows", [("int8_dynamic", "16-bit"), ("fp8_scaled_mm", "16-bit"),
                                              ("int8_weight_only", "fp8 weights")])
def test_quantized_then_compiled_regionally(flux, scheme, few_rows, request):
    if scheme.startswith("fp8"):
        request.getfixturevalue("fp8_on_cpu")
    torch._dynamo.reset()
    counters.clear()
    model, _ = quantized(flux, scheme, few_row_linears=few_rows)
    eager = sample(model, steps=4)
    compiled = NODE["FastlaneCompile"].execute(model=model, scope="regional", backend="eager", mode="default",
                                               dynamic="auto", fullgraph=True).result[0]
    # compiled calls use SDPA attention (eager CPU: ComfyUI's sub-quadratic one); int8/fp8 activation rounding
    # amplifies that ~1e-6 difference a little
    assert rel_err(sample(compiled, steps=4), eager) < 0.02
    assert counters["stats"]["unique_graphs"] == 2 and not counters["graph_break"]
    torch._dynamo.reset()


def test_sdxl_int8_weight_only():
    unet = tiny_sdxl()
    kw = dict(steps=4, cfg=2.0, latent=torch.zeros(1, 4, 8, 8), positive=sdxl_conditioning(1),
              negative=sdxl_conditioning(2))
    reference = sample(unet, **kw)
    model, report = quantized(unet)
    assert rel_err(sample(model, **kw), reference) < 0.05
    names = quantized_names(model)
    assert not any(n.startswith(("time_embed.", "label_emb.")) or ".emb_layers." in n for n in names)
    assert any(n.endswith("attn1.to_q") for n in names)


@pytest.fixture
def fp8_on_cpu(monkeypatch):
    """Lift the sm89+ check: torch's CPU build has an fp8 ``_scaled_mm`` kernel, so the fp8 path runs here for real."""
    from test_fp8_scaled import _cpu_scaled_mm_available

    if not _cpu_scaled_mm_available():
        pytest.skip("this torch has no CPU fp8 _scaled_mm")
    import fastlane.quantizers.schemes as schemes

    monkeypatch.setattr(schemes, "fp8_supported", lambda device: True)


def test_fp8_scaled_mm_in_the_sampler(flux, fp8_on_cpu):
    reference = sample(flux, steps=6)
    model, report = quantized(flux, "fp8_scaled_mm", few_row_linears="16-bit")  # the scheme's own rounding alone
    out = sample(model, steps=6)
    assert 0 < rel_err(out, reference) < 0.1
    before, after = map(float, re.search(r"Linear weights ([\d.]+) MB -> ([\d.]+) MB", report).groups())
    assert after < 0.3 * before  # e4m3 + fp32 row scales + bf16 bias vs fp32
    assert "double_blocks.0.img_attn.qkv" in quantized_names(model)
    assert not quantized_names(model) & {"double_blocks.0.img_mod.lin", "time_in.in_layer"}
    assert flux.object_patches == {}
    assert torch.equal(sample(flux, steps=6), reference)  # the received MODEL runs as before


def test_fp8_scaled_mm_bakes_lora_in(flux, fp8_on_cpu):
    reference = sample(lora(flux, 8.0), steps=5)
    with_lora = rel_err(sample(quantized(lora(flux, 8.0), "fp8_scaled_mm")[0], steps=5), reference)
    without_lora = rel_err(sample(quantized(flux, "fp8_scaled_mm")[0], steps=5), reference)
    assert with_lora < 0.7 * without_lora


def test_the_quantized_model_is_a_model_of_its_own_loaded_beside_the_received_one(flux):
    """A compare graph runs the received and the quantized MODEL in turn. As clones of one torch model they made
    ComfyUI move FLUX's weights out and in at every switch (9-16 s each on an H200, run s8-6); as two models ComfyUI
    keeps both loaded (here on the CPU, on a GPU while VRAM holds both) and switching moves nothing."""
    import comfy.model_management as mm

    reference = sample(flux, steps=4)
    mm.load_models_gpu([flux])
    model, report = quantized(flux)
    mm.load_models_gpu([model])
    loaded = [m.model for m in mm.current_loaded_models]
    assert any(m is flux for m in loaded) and any(m is model for m in loaded)  # neither unloaded the other
    assert model.model is not flux.model and not model.is_clone(flux)
    copies = [model.get_model_object(f"diffusion_model.{name}") for name in quantized_names(model)]
    assert copies and all(getattr(c, "comfy_patched_weights", False) for c in copies)  # placed by ComfyUI's load
    storage = lambda m: {t.untyped_storage().data_ptr() for t in m.model.state_dict().values()  # noqa: E731
                         if type(t) is torch.Tensor}  # (torchao's quantized tensors are subclasses)
    assert storage(model) and not storage(model) & storage(flux)  # none shared: moving one never moves the other
    uuid_before = flux.model.current_weight_patches_uuid
    mm.load_models_gpu([flux])  # and back: nothing to reload
    assert flux.model.current_weight_patches_uuid == uuid_before
    assert type(flux.model.diffusion_model.double_blocks[0].img_attn.qkv) is not type(copies[0])
    assert torch.equal(sample(flux, steps=4), reference)
    assert "model of its own" in report


def test_patches_on_weights_left_16_bit_are_applied_to_the_copy(flux):
    """A LoRA key that is not quantized (a 16-bit modulation Linear here) stays a patch, and ComfyUI applies it to
    the quantized MODEL's own copy of that weight when it loads it."""
    key = "diffusion_model.double_blocks.0.img_mod.lin.weight"
    with_patch = flux.clone()
    with_patch.add_patches({key: ("diff", (torch.full_like(flux.model.state_dict()[key], 0.2),))}, 1.0)
    plain, _ = quantized(flux)
    model, _ = quantized(with_patch)
    assert key in model.patches and "double_blocks.0.img_mod.lin" not in quantized_names(model)
    reference = sample(with_patch, steps=4)
    assert rel_err(sample(model, steps=4), reference) < 0.3 * rel_err(sample(plain, steps=4), reference)
    assert not torch.equal(sample(flux, steps=4), reference)  # the received MODEL did not take the patch


def test_the_copy_takes_the_original_weights_while_another_clone_has_its_patches_applied(flux):
    """ComfyUI patches the shared torch model in place when it loads a clone with a LoRA (the originals go to the
    clones' shared backup): a Quantize of the plain MODEL made meanwhile must start from the originals, for the
    quantized Linears and for the weights it copies as they are."""
    import comfy.model_management as mm

    mod_key = "diffusion_model.double_blocks.0.img_mod.lin.weight"  # left 16-bit: copied, not quantized
    plain, _ = quantized(flux)
    reference = sample(plain, steps=3)
    with_lora = flux.clone()
    with_lora.add_patches({KEY: ("diff", (BUMP["diff"] * 20,)),
                           mod_key: ("diff", (torch.full_like(flux.model.state_dict()[mod_key], 0.5),))}, 1.0)
    mm.load_models_gpu([with_lora])
    assert {KEY, mod_key} <= set(flux.backup)  # the LoRA is applied to the shared torch model right now
    model, _ = quantized(flux)
    assert torch.equal(sample(model, steps=3), reference)


def test_an_object_patch_on_the_received_model_comes_along_as_the_copys_own(flux):
    """Core's ModelSamplingFlux object-patches ``model_sampling`` with a module of its own: before or after
    Quantize it must act the same, and the quantized MODEL must hold its own copy of it (nothing shared)."""
    shift = NODE["ModelSamplingFlux"]().patch
    shifted = shift(flux, 1.15, 0.5, 64, 64)[0]
    before = quantized(shifted)[0]
    after = shift(quantized(flux)[0], 1.15, 0.5, 64, 64)[0]
    assert before.object_patches["model_sampling"] is not shifted.object_patches["model_sampling"]
    out = sample(before, steps=3)
    assert torch.equal(out, sample(after, steps=3))
    assert not torch.equal(out, sample(quantized(flux)[0], steps=3))  # the shift matters


def test_a_method_patched_onto_the_received_model_runs_on_the_quantized_copy(flux):
    """Patch nodes that replace a method (``diffusion_model.forward_orig``, as TeaCache-style nodes do) bind it to
    the received model's torch module; the quantized MODEL must run it on its own copy, not on the 16-bit weights."""
    import types

    seen = []
    dm = flux.model.diffusion_model

    def forward_orig(self, *args, **kwargs):
        seen.append(self)
        return type(self).forward_orig(self, *args, **kwargs)

    patched = flux.clone()
    patched.add_object_patch("diffusion_model.forward_orig", types.MethodType(forward_orig, dm))
    model, _ = quantized(patched)
    sample(model, steps=2)
    assert seen and all(s is model.model.diffusion_model for s in seen)
    seen.clear()
    sample(patched, steps=2)
    assert seen and all(s is dm for s in seen)


def test_copies_left_off_the_load_device_are_reported(flux, caplog):
    from comfy.patcher_extension import CallbacksMP

    model, _ = quantized(flux)
    model.load_device = torch.device("meta")  # stands for a GPU the copies did not reach (a lowvram load)
    for callback in model.get_all_callbacks(CallbacksMP.ON_PRE_RUN):
        callback(model)
    assert re.search(r"Fastlane Quantize: (\d+) of \1 quantized Linears stay on cpu while this MODEL runs on meta",
                     caplog.text)


def test_quantize_reports_progress_per_linear_up_to_its_total(flux):
    """ComfyUI's progress bar (the real global hook, as the server installs it) ticks once per Linear quantized."""
    import comfy.utils

    seen = []
    previous = comfy.utils.PROGRESS_BAR_HOOK
    comfy.utils.set_progress_bar_global_hook(lambda value, total, preview, node_id=None: seen.append((value, total)))
    try:
        model, _ = quantized(flux)
    finally:
        comfy.utils.set_progress_bar_global_hook(previous)
    total = len(quantized_names(model))
    assert total > 1 and {t for _, t in seen} == {total}
    assert [v for v, _ in seen] == list(range(1, total + 1))
