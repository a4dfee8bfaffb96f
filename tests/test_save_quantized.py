"""Fastlane Save Quantized: an fp8_scaled_mm MODEL written in ComfyUI's mixed-precision fp8 layout and read back by
ComfyUI's own loader (comfy.sd.load_diffusion_model), on the CPU with the tiny FLUX."""
import json
import time

import pytest
import torch
from safetensors import safe_open
from tiny_models import FLUX_CONFIG, sample, tiny_flux

import nodes

NODE = nodes.NODE_CLASS_MAPPINGS
STEPS = 6


def rel_err(a, b):
    return float((a.float() - b.float()).norm() / b.float().norm())


@pytest.fixture
def fp8_on_cpu(monkeypatch):
    """Lift the sm89+ check: torch's CPU build has an fp8 ``_scaled_mm`` kernel (as in test_quantize_nodes.py)."""
    from test_fp8_scaled import _cpu_scaled_mm_available

    if not _cpu_scaled_mm_available():
        pytest.skip("this torch has no CPU fp8 _scaled_mm")
    from fastlane.quantizers import schemes

    monkeypatch.setattr(schemes, "fp8_supported", lambda device: True)


@pytest.fixture
def tiny_flux_detection(monkeypatch):
    """ComfyUI's FLUX detection hard-codes the full model's heads, MLP ratio and rotary axes (24 heads of 128); the
    tiny FLUX has 2 heads of 32. Everything read from the tensors (depth, widths, guidance) is still detected by
    ComfyUI; only those constants are set to the tiny model's. The quantization path is ComfyUI's own."""
    import comfy.model_detection as md

    detect = md.detect_unet_config

    def tiny(state_dict, key_prefix, metadata=None):
        config = detect(state_dict, key_prefix, metadata=metadata)
        if config is not None and config.get("image_model") == "flux":
            config.update({k: FLUX_CONFIG[k] for k in ("num_heads", "mlp_ratio", "axes_dim", "theta")})
        return config

    monkeypatch.setattr(md, "detect_unet_config", tiny)


@pytest.fixture
def models_dir(tmp_path, monkeypatch):
    import folder_paths

    monkeypatch.setitem(folder_paths.folder_names_and_paths, "diffusion_models",
                        ([str(tmp_path)], folder_paths.supported_pt_extensions))
    return tmp_path


def quantize(model, filter="none", **kw):
    return NODE["FastlaneQuantize"].execute(model=model, scheme="fp8_scaled_mm", filter=filter, **kw).result[0]


def save(model, prefix="fastlane/tiny_flux"):
    out = NODE["FastlaneSaveQuantized"].execute(model=model, filename_prefix=prefix)
    return out.result[0]


@pytest.mark.parametrize("filter", ["none", "entry+exit"])
def test_saved_fp8_model_loads_back_in_comfyui_with_fp8_weights_and_samples_alike(fp8_on_cpu, tiny_flux_detection,
                                                                                   models_dir, filter):
    import comfy.sd
    from comfy.quant_ops import QuantizedTensor
    from fastlane.quantizers.fp8_scaled import Fp8Weights

    flux = tiny_flux()
    reference16 = sample(flux, steps=STEPS)
    quantized = quantize(flux, filter)
    reference = sample(quantized, steps=STEPS)
    before = {k: v.clone() for k, v in quantized.model.diffusion_model.state_dict().items()}

    report = save(quantized)
    files = list(models_dir.rglob("*.safetensors"))
    assert len(files) == 1 and files[0].parent.name == "fastlane" and files[0].name.startswith("tiny_flux_00001")
    assert "Fastlane Save Quantized: wrote" in report

    with safe_open(str(files[0]), "pt") as f:
        meta = f.metadata()
        assert json.loads(meta["fastlane"])["writer"] == "Fastlane Save Quantized"
        layers = json.loads(meta["_quantization_metadata"])["layers"]
        fp8_names = {n for n, m in quantized.model.diffusion_model.named_modules() if isinstance(m, Fp8Weights)}
        assert set(layers) == fp8_names and "double_blocks.0.img_attn.qkv" in layers
        assert f.get_tensor("double_blocks.0.img_attn.qkv.weight").dtype == torch.float8_e4m3fn
        assert f.get_tensor("double_blocks.0.img_attn.qkv.weight_scale").shape == (3 * 64, 1)

    loaded = comfy.sd.load_diffusion_model(str(files[0]))
    dm = loaded.model.diffusion_model
    for name in fp8_names:
        ours, theirs = quantized.get_model_object(f"diffusion_model.{name}"), dm.get_submodule(name)
        assert isinstance(theirs.weight, QuantizedTensor) and theirs.weight._qdata.dtype == torch.float8_e4m3fn
        # the very codes and per-row scales of the quantized model, not requantized
        assert torch.equal(theirs.weight._qdata.view(torch.uint8), ours.weight.view(torch.uint8))
        assert torch.equal(theirs.weight._layout_params["scale"].flatten(), ours.weight_scale.flatten().float())
    # with entry+exit the projections in and out are written and loaded back 16-bit
    assert isinstance(dm.final_layer.linear.weight, QuantizedTensor) == (filter == "none")
    assert isinstance(dm.img_in.weight, QuantizedTensor) == (filter == "none")

    out = sample(loaded, steps=STEPS)
    err = rel_err(out, reference)
    print(f"\nround trip: rel. error of the loaded model's sample vs the quantized model's: {err:.4f}; "
          f"quantized vs 16-bit: {rel_err(reference, reference16):.4f}; loaded vs 16-bit: {rel_err(out, reference16):.4f}")
    # the loaded model computes the same fp8 weights in 16-bit (ComfyUI dequantizes them per call) where
    # fp8_scaled_mm also rounds each activation row to e4m3: the gap is that activation rounding, no more
    assert err < 0.1
    assert rel_err(out, reference16) <= rel_err(reference, reference16) * 1.5
    after = quantized.model.diffusion_model.state_dict()
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)
    assert torch.equal(sample(quantized, steps=STEPS), reference)  # the received MODEL is unchanged


def test_lora_on_16_bit_weights_is_baked_into_the_file(fp8_on_cpu, tiny_flux_detection, models_dir):
    import comfy.sd

    flux = tiny_flux()
    key = "diffusion_model.double_blocks.0.img_attn.norm.key_norm.scale"  # a weight Quantize leaves 16-bit
    patched = flux.clone()
    patched.add_patches({key: ("diff", (torch.full_like(flux.model.state_dict()[key], 0.5),))}, 1.0)
    quantized = quantize(patched)
    assert key in quantized.patches
    save(quantized)
    loaded = comfy.sd.load_diffusion_model(str(next(models_dir.rglob("*.safetensors"))))
    expected = flux.model.state_dict()[key] + 0.5
    assert torch.allclose(loaded.model.diffusion_model.double_blocks[0].img_attn.norm.key_norm.scale.float(),
                          expected.float())


@pytest.mark.parametrize("scheme", [None, "int8_weight_only"])
def test_a_model_without_fastlane_fp8_linears_is_a_clear_error(models_dir, scheme):
    flux = tiny_flux()
    model = flux if scheme is None else \
        NODE["FastlaneQuantize"].execute(model=flux, scheme=scheme, filter="none").result[0]
    message = r"takes a MODEL from Fastlane Quantize with (an fp8 scheme|scheme fp8_scaled_mm)"
    with pytest.raises(ValueError, match=message):
        save(model)
    assert not list(models_dir.rglob("*"))  # no file made


def test_load_time_of_the_saved_file_vs_16_bit_file_and_quantizing(fp8_on_cpu, tiny_flux_detection, models_dir,
                                                                   tmp_path):
    """Tiny model on the CPU: reported, not asserted (the real-size comparison needs a GPU and FLUX.1-dev)."""
    import comfy.sd
    import comfy.utils

    flux = tiny_flux()
    plain = tmp_path / "plain.safetensors"
    comfy.utils.save_torch_file({k: v.to(torch.bfloat16) for k, v in flux.model.diffusion_model.state_dict().items()},
                                str(plain))
    save(quantize(flux))
    saved = next(models_dir.rglob("*.safetensors"))

    def timed(fn, n=3):
        best = float("inf")
        for _ in range(n):
            start = time.perf_counter()
            fn()
            best = min(best, time.perf_counter() - start)
        return best

    t_saved = timed(lambda: comfy.sd.load_diffusion_model(str(saved)))
    t_quant = timed(lambda: quantize(comfy.sd.load_diffusion_model(str(plain))))
    print(f"\nload the saved fp8 file: {t_saved * 1e3:.1f} ms; load the 16-bit file + Fastlane Quantize "
          f"fp8_scaled_mm: {t_quant * 1e3:.1f} ms (tiny FLUX, CPU)")


def test_schema_is_an_output_node_with_tooltips():
    schema = NODE["FastlaneSaveQuantized"].GET_SCHEMA()
    assert schema.is_output_node and schema.category == NODE["FastlaneQuantize"].GET_SCHEMA().category
    assert all(i.tooltip for i in schema.inputs) and "Load Diffusion Model" in NODE["FastlaneSaveQuantized"].DESCRIPTION


def test_the_loaded_file_quantized_again_gives_back_the_same_fp8_scaled_mm_model(fp8_on_cpu, tiny_flux_detection,
                                                                                  models_dir):
    """Load Diffusion Model (the saved file) -> Fastlane Quantize fp8_scaled_mm: the fp8 matmuls again, from the same
    codes and scales (dequantized per row, requantized per row: exact), without the 16-bit file."""
    import comfy.sd
    from fastlane.quantizers.fp8_scaled import Fp8Weights

    quantized = quantize(tiny_flux())
    save(quantized)
    again = quantize(comfy.sd.load_diffusion_model(str(next(models_dir.rglob("*.safetensors")))))
    for name, m in quantized.model.diffusion_model.named_modules():
        if isinstance(m, Fp8Weights):
            other = again.get_model_object(f"diffusion_model.{name}")
            assert type(other) is type(m)
            assert torch.equal(other.weight.view(torch.uint8), m.weight.view(torch.uint8)), name
            assert torch.equal(other.weight_scale, m.weight_scale), name
    assert rel_err(sample(again, steps=STEPS), sample(quantized, steps=STEPS)) < 1e-5
