"""fp8_tensorwise (quantizers/fp8_tensorwise.py): one scale per weight tensor and per activation tensor, through
``_scaled_mm``'s tensor-wise mode; the module on tiny tensors, then the scheme on the tiny FLUX in ComfyUI's real
sampling loop (torch's CPU fp8 kernel: the hardware check of the node is lifted)."""
import json

import pytest
import torch
from fastlane.quantizers import schemes
from fastlane.quantizers.fp8_scaled import FP8, FP8_MAX
from fastlane.quantizers.fp8_tensorwise import Fp8TensorwiseLinear, quantize_tensor
from safetensors import safe_open
from test_fp8_scaled import _cpu_scaled_mm_available
from test_save_quantized import models_dir, tiny_flux_detection  # noqa: F401  (fixtures)
from tiny_models import sample, tiny_flux
from torch._dynamo.utils import counters

import nodes

NODE = nodes.NODE_CLASS_MAPPINGS
needs_kernel = pytest.mark.skipif(not _cpu_scaled_mm_available(), reason="this torch has no CPU fp8 _scaled_mm")
pytestmark = needs_kernel
STEPS = 4


def rel_err(a, b):
    return float((a.float() - b.float()).norm() / b.float().norm())


@pytest.fixture
def fp8_on_cpu(monkeypatch):
    monkeypatch.setattr(schemes, "fp8_supported", lambda device: True)


def quantize(model, scheme="fp8_tensorwise", few_rows="auto"):
    return NODE["FastlaneQuantize"].execute(model=model, scheme=scheme, filter="none",
                                            few_row_linears=few_rows).result[0]


def tensorwise_modules(model):
    return {n: m for n, m in model.model.diffusion_model.named_modules() if isinstance(m, Fp8TensorwiseLinear)}


def test_one_scale_per_tensor_maps_the_abs_max_to_448():
    x = torch.tensor([[1.0, -2.0, 0.5], [0.0, 0.0, 0.0], [10.0, 3.0, -7.0]])
    q, scale = quantize_tensor(x)
    assert q.dtype == FP8 and scale.shape == () and scale.dtype == torch.float32
    assert float(q.float().abs().max()) == FP8_MAX and torch.equal(q[1].float(), torch.zeros(3))
    assert rel_err(q.float() * scale, x) < 0.05
    q2, scale2 = quantize_tensor(x, margin=2.0)
    assert torch.equal(scale2, scale * 2) and float(q2.float().abs().max()) == FP8_MAX / 2
    _, zero = quantize_tensor(torch.zeros(4, 4))
    assert torch.isfinite(zero) and zero > 0  # an all-zero tensor: no division by zero


@pytest.mark.parametrize("mode", ["dynamic", "calibrated"])
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_output_matches_the_fp8_math_and_stays_close_to_the_linear(mode, bias, dtype):
    torch.manual_seed(0)
    linear = torch.nn.Linear(64, 48, bias=bias)
    fp8 = Fp8TensorwiseLinear(linear.weight.data, linear.bias.data if bias else None, mode=mode)
    assert fp8.weight.dtype == FP8 and fp8.weight_scale.shape == ()
    x = torch.randn(2, 9, 64)
    out = fp8(x.to(dtype))
    q, s = quantize_tensor(x.to(dtype).reshape(-1, 64))
    emulated = (q.float() * s) @ fp8.dequantized_weight().t()
    if bias:
        emulated = emulated + linear.bias.data.to(dtype).float()
    assert out.shape == (2, 9, 48) and out.dtype == dtype
    assert rel_err(out.reshape(-1, 48), emulated) < (1e-5 if dtype == torch.float32 else 5e-3)
    assert rel_err(out, linear(x)) < 0.08  # e4m3 keeps 3 mantissa bits


def test_calibrated_scale_is_set_on_the_first_call_kept_then_measured_again_after_recalibrate():
    torch.manual_seed(0)
    linear = torch.nn.Linear(32, 16)
    fp8 = Fp8TensorwiseLinear(linear.weight.data, linear.bias.data, mode="calibrated", margin=2.0)
    assert fp8.calibrating and float(fp8.input_scale) == 0.0
    first = torch.randn(8, 32)
    fp8(first)
    expected = first.abs().amax() * 2.0 / FP8_MAX
    assert not fp8.calibrating and torch.allclose(fp8.input_scale, expected)
    fp8(torch.randn(8, 32) * 0.1)  # a later call of the same run: the scale stays
    assert torch.allclose(fp8.input_scale, expected)
    fp8.recalibrate()  # a new sampling run
    bigger = torch.randn(8, 32) * 5
    fp8(bigger)
    assert torch.allclose(fp8.input_scale, bigger.abs().amax() * 2.0 / FP8_MAX)
    dynamic = Fp8TensorwiseLinear(linear.weight.data, linear.bias.data, mode="dynamic")
    dynamic(first)
    assert not dynamic.calibrating and float(dynamic.input_scale) == 0.0  # nothing stored: measured per call


def test_input_beyond_the_calibrated_range_saturates_instead_of_inf_or_nan():
    torch.manual_seed(0)
    linear = torch.nn.Linear(32, 16)
    fp8 = Fp8TensorwiseLinear(linear.weight.data, linear.bias.data, mode="calibrated", margin=1.0)
    fp8(torch.randn(4, 32))
    x = torch.randn(4, 32)
    x[0, 0] = 1e4  # far beyond the first call's abs-max
    out = fp8(x)
    assert torch.isfinite(out).all()
    saturated = x.clone()
    saturated[0, 0] = FP8_MAX * float(fp8.input_scale)  # what the clamp makes of it
    assert rel_err(out, linear(saturated)) < 0.08
    assert torch.isfinite(Fp8TensorwiseLinear(linear.weight.data, None, mode="dynamic")(x * 1e30)).all()


def test_device_and_dtype_moves_keep_the_codes_scales_and_calibration_state():
    linear = torch.nn.Linear(32, 16)
    fp8 = Fp8TensorwiseLinear(linear.weight.data, linear.bias.data)
    fp8(torch.randn(4, 32))
    scale = fp8.input_scale.clone()
    fp8.to(torch.float16)  # what Module.to(dtype) on a whole model would do
    fp8.to("cpu")
    assert fp8.weight.dtype == FP8 and fp8.weight_scale.dtype == torch.float32 and fp8.bias.dtype == torch.float32
    assert fp8.input_scale.dtype == torch.float32 and torch.equal(fp8.input_scale, scale)
    meta = Fp8TensorwiseLinear(linear.weight.data, linear.bias.data).to("meta")
    assert meta.weight.device.type == "meta" and meta.input_scale.device.type == "meta"
    assert meta.weight.dtype == FP8 and meta.input_scale.dtype == torch.float32
    assert sum(t.numel() * t.element_size() for t in fp8.state_dict().values()) < 0.4 * 4 * (32 * 16 + 16)


def test_compiled_module_keeps_two_graphs_over_many_calls_and_runs(fresh_dynamo):
    """The calibrating call and the calibrated call: one graph each, whatever the number of calls and runs."""
    torch.manual_seed(0)
    linear = torch.nn.Linear(32, 16)
    fp8 = Fp8TensorwiseLinear(linear.weight.data, linear.bias.data)
    compiled = torch.compile(fp8, backend="inductor", fullgraph=True)
    xs = [torch.randn(6, 32) * (i + 1) for i in range(4)]
    runs = []
    for _ in range(3):  # three sampling runs of four calls
        fp8.recalibrate()
        runs.append([compiled(x) for x in xs])
    assert counters["stats"]["unique_graphs"] == 2 and not counters["graph_break"]
    assert all(torch.equal(a, b) for a, b in zip(runs[0], runs[2]))
    fp8.recalibrate()
    assert all(torch.allclose(fp8(x), y, rtol=1e-5, atol=1e-5) for x, y in zip(xs, runs[0]))  # eager alike


def test_the_node_lists_the_schemes_and_builds_them(fp8_on_cpu):
    options = next(i for i in NODE["FastlaneQuantize"].GET_SCHEMA().inputs if i.id == "scheme").options
    assert "fp8_tensorwise" in options and "fp8_tensorwise_dynamic" in options
    assert schemes.SCHEMES["fp8_tensorwise"].tensorwise == "calibrated"
    for scheme, mode in [("fp8_tensorwise", "calibrated"), ("fp8_tensorwise_dynamic", "dynamic")]:
        model = quantize(tiny_flux(), scheme)
        mods = tensorwise_modules(model)
        assert mods and {m.mode for m in mods.values()} == {mode}
        assert {m.fastlane_scheme for m in mods.values()} == {scheme}
        assert "double_blocks.0.img_attn.qkv" in mods and "double_blocks.0.img_mod.lin" not in mods  # few-row


@pytest.mark.parametrize("scheme", ["fp8_tensorwise", "fp8_tensorwise_dynamic"])
def test_samples_close_to_16_bit(fp8_on_cpu, scheme):
    flux = tiny_flux()
    reference = sample(flux, steps=STEPS)
    out = sample(quantize(flux, scheme, "16-bit"), steps=STEPS)
    err = rel_err(out, reference)
    rowwise = rel_err(sample(quantize(flux, "fp8_scaled_mm", "16-bit"), steps=STEPS), reference)
    print(f"\n{scheme}: rel. error vs 16-bit {err:.4f} (fp8_scaled_mm: {rowwise:.4f})")
    # the tiny FLUX's random weights (std 0.2) amplify rounding over the steps: 0.05-0.07 here
    assert torch.isfinite(out).all() and err < 0.1 and err < 2 * rowwise


def test_each_sampling_run_recalibrates_and_a_repeated_run_is_bit_identical(fp8_on_cpu):
    model = quantize(tiny_flux())
    mods = tensorwise_modules(model)
    qkv = mods["double_blocks.0.img_attn.qkv"]
    first_inputs = []
    handle = qkv.register_forward_pre_hook(
        lambda m, args: first_inputs.append(args[0].abs().amax()) if m.calibrating else None)
    a = sample(model, steps=STEPS, seed=0)
    scale_a = qkv.input_scale.clone()
    assert len(first_inputs) == 1  # measured on the run's first call only
    assert torch.allclose(scale_a, first_inputs[0].float() * qkv.margin / FP8_MAX)
    b = sample(model, steps=STEPS, seed=1, latent=torch.ones(1, 16, 2, 2) * 3, denoise=0.7)  # other inputs
    assert len(first_inputs) == 2 and not torch.equal(qkv.input_scale, scale_a)  # recalibrated
    again = sample(model, steps=STEPS, seed=0)
    handle.remove()
    assert torch.equal(qkv.input_scale, scale_a) and torch.equal(again, a)  # determinism per run
    assert not torch.equal(b, a)


def test_quantized_then_compiled_regionally_compiles_once_per_state(fp8_on_cpu, fresh_dynamo):
    model = quantize(tiny_flux())
    eager = sample(model, steps=STEPS)
    compiled = NODE["FastlaneCompile"].execute(model=model, scope="regional", backend="eager", mode="default",
                                               dynamic="auto", fullgraph=True).result[0]
    first = sample(compiled, steps=STEPS)
    graphs = counters["stats"]["unique_graphs"]
    # two block kinds (double, single), each as a calibrating and a calibrated graph
    assert graphs == 4 and not counters["graph_break"]
    second = sample(compiled, steps=STEPS)
    assert counters["stats"]["unique_graphs"] == graphs  # the next run re-uses both
    assert torch.equal(first, second)
    assert rel_err(first, eager) < 0.02


def test_saved_in_comfyui_layout_with_per_tensor_scales_and_loads_back(fp8_on_cpu, tiny_flux_detection,  # noqa: F811
                                                                         models_dir):  # noqa: F811
    import comfy.sd
    from comfy.quant_ops import QuantizedTensor

    quantized = quantize(tiny_flux(), few_rows="16-bit")
    reference = sample(quantized, steps=STEPS)
    report = NODE["FastlaneSaveQuantized"].execute(model=quantized, filename_prefix="fastlane/tw").result[0]
    assert "per-tensor scales" in report
    path = next(models_dir.rglob("*.safetensors"))
    with safe_open(str(path), "pt") as f:
        assert json.loads(f.metadata()["fastlane"])["schemes"] == ["fp8_tensorwise"]
        assert f.get_tensor("double_blocks.0.img_attn.qkv.weight_scale").shape == ()
    loaded = comfy.sd.load_diffusion_model(str(path))
    mods = tensorwise_modules(quantized)
    for name, ours in mods.items():
        theirs = loaded.model.diffusion_model.get_submodule(name)
        assert isinstance(theirs.weight, QuantizedTensor)
        assert torch.equal(theirs.weight._qdata.view(torch.uint8), ours.weight.view(torch.uint8))
        assert torch.equal(theirs.weight._layout_params["scale"].float(), ours.weight_scale)
    assert rel_err(sample(loaded, steps=STEPS), reference) < 0.1  # ComfyUI: same weights, 16-bit activations
    # dequantized then requantized per tensor: the same codes, the scale within fp32 rounding (448 * s / 448)
    again = quantize(loaded, few_rows="16-bit")
    for name, ours in mods.items():
        other = again.get_model_object(f"diffusion_model.{name}")
        assert torch.equal(other.weight.view(torch.uint8), ours.weight.view(torch.uint8)), name
        assert torch.allclose(other.weight_scale, ours.weight_scale, rtol=1e-6, atol=0), name



def test_under_cuda_graph_each_run_recalibrates_on_a_call_that_runs_its_python(fp8_on_cpu):
    """A replay skips the module's Python (its calibrating flag): the run's first call must run unrecorded so the
    scales are measured again; later replays read them from the buffer."""
    from fastlane.compilers import cuda_graphs
    from tiny_models import replay_by_recomputing

    model = quantize(tiny_flux())
    mods = list(tensorwise_modules(model).values())

    def replay_like_a_graph(fn, pool=None):  # a replay runs the recorded kernels: no calibration in it
        replay, out = replay_by_recomputing(fn, pool)

        def replay_without_python():
            armed = [m for m in mods if m.calibrating]
            for m in armed:
                m.calibrating = False
            try:
                replay()
            finally:
                for m in armed:
                    m.calibrating = True
        return replay_without_python, out

    graphed, recorder = cuda_graphs.attach(model, record=replay_like_a_graph)
    sample(graphed, steps=STEPS, seed=0)
    assert recorder.runs[-1].replays > 0
    other = dict(seed=1, latent=torch.ones(1, 16, 2, 2) * 3, denoise=0.7)
    b = sample(graphed, steps=STEPS, **other)
    run = recorder.runs[-1]
    assert run.replays == run.calls - 1 and any("calibrates" in n for n in run.notes)
    fresh = quantize(tiny_flux())
    expected = sample(fresh, steps=STEPS, **other)  # no graph: calibrated on this run's own first call
    fresh_mods = list(tensorwise_modules(fresh).values())
    assert all(torch.equal(m.input_scale, f.input_scale) for m, f in zip(mods, fresh_mods))
    assert not any(m.calibrating for m in mods)
    assert torch.equal(b, expected)
