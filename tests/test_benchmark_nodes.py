"""The benchmark and report nodes on real sampling runs in ComfyUI."""
import json

import nodes
import pytest
import torch

from tiny_models import sample, tiny_flux

NODE = nodes.NODE_CLASS_MAPPINGS


def bench(model, label):
    return NODE["FastlaneBenchmark"].execute(model=model, label=label).result[0]


def as_image(latent):
    return ((latent[:, :3].permute(0, 2, 3, 1).clamp(-1, 1) + 1) / 2).float()


@pytest.fixture(scope="module")
def flux():
    return tiny_flux()


def test_records_every_step_with_real_time_and_cache_decisions(flux):
    cached = NODE["FastlaneFORA"].execute(model=flux, interval=2, granularity="blocks", start=0.0, end=1.0).result[0]
    base, fast = bench(flux, "baseline"), bench(cached, "fora")
    ref_latent, latent = sample(base, steps=8, size=64), sample(fast, steps=8, size=64)
    out = NODE["FastlaneBenchmarkReport"].execute(model=fast, image=as_image(latent), reference_model=base,
                                                  reference_image=as_image(ref_latent))
    text, plot, data = out.result
    result = json.loads(data)
    run = result["runs"]["model"]
    assert [c["step"] for c in run["calls"]] == list(range(8))
    assert all(c["ms"] > 0 for c in run["calls"])
    assert result["model"]["computed_steps"] == [0, 2, 4, 6]
    assert result["reference"]["computed_steps"] is None
    computed = [c["ms"] for c in run["calls"] if c["computed"]]
    cached_ms = [c["ms"] for c in run["calls"] if not c["computed"]]
    assert sorted(cached_ms)[len(cached_ms) // 2] < sorted(computed)[len(computed) // 2]  # cached steps are cheaper
    assert result["model"]["cold"] and result["model"]["sampling_s"] > 0
    assert result["fidelity"]["psnr_db"] > 0 and -1 <= result["fidelity"]["ssim"] <= 1
    assert "speed-up" in text and "cache" in text and "LPIPS: not computed" in text
    assert plot.shape == (1, 400, 800, 3) and plot.min() < 1.0
    # a second run of the same MODEL is recorded as warm
    sample(fast, steps=8, size=64)
    out = NODE["FastlaneBenchmarkReport"].execute(model=fast, image=as_image(latent))
    assert json.loads(out.result[2])["model"]["cold"] is False


def test_the_benchmark_leaves_the_model_and_its_output_unchanged(flux):
    reference = sample(flux, steps=5)
    assert torch.equal(sample(bench(flux, "x"), steps=5), reference)
    assert "fastlane_recorder" not in flux.model_options.get("transformer_options", {})


def test_clear_errors_for_bad_input(flux):
    with pytest.raises(ValueError, match="needs a MODEL"):
        NODE["FastlaneBenchmark"].execute(model="not a model", label="x")
    with pytest.raises(ValueError, match="has no recorded sampling run"):
        NODE["FastlaneBenchmarkReport"].execute(model=bench(flux, "never"), image=torch.zeros(1, 8, 8, 3))
    with pytest.raises(ValueError, match="has no Fastlane Benchmark"):
        NODE["FastlaneBenchmarkReport"].execute(model=flux, image=torch.zeros(1, 8, 8, 3))


def test_the_cold_start_of_a_compiled_model_is_reported(flux):
    torch._dynamo.reset()
    compiled = NODE["FastlaneCompile"].execute(model=flux, scope="regional", backend="eager", mode="default",
                                               dynamic="auto", fullgraph=True).result[0]
    measured = bench(compiled, "compiled")
    reports = []
    for _ in range(2):
        latent = sample(measured, steps=4, size=32)
        reports.append(NODE["FastlaneBenchmarkReport"].execute(model=measured, image=as_image(latent)).result)
    cold, warm = (json.loads(r[2])["model"] for r in reports)
    assert cold["compiled_graphs"] == 2 and cold["compile_s"] > 0  # FLUX: one graph per block kind
    assert "cold start: torch.compile built 2 graph(s)" in reports[0][0]
    assert warm["compiled_graphs"] == 0 and "cold start" not in reports[1][0]
    torch._dynamo.reset()


def test_time_comfyui_spends_loading_weights_is_reported_apart_from_sampling(flux):
    """A graph whose branches use different forms of one model (quantized and not) makes ComfyUI move weights
    before each branch samples (run s8-6: ~10 s per switch for FLUX on an H200). The report keeps that out of the
    sampling time and says it; here a ComfyUI PREPARE_SAMPLING wrapper that sleeps stands for the slow move."""
    import time

    from comfy.patcher_extension import WrappersMP

    measured = bench(flux, "slow load").clone()
    measured.add_wrapper_with_key(WrappersMP.PREPARE_SAMPLING, "test_slow_load",
                                  lambda executor, *a, **k: (time.sleep(0.3), executor(*a, **k))[1])
    base = bench(flux, "base")
    latent, ref_latent = sample(measured, steps=4, size=32), sample(base, steps=4, size=32, seed=1)
    text, _, data = NODE["FastlaneBenchmarkReport"].execute(model=measured, image=as_image(latent), reference_model=base,
                                                           reference_image=as_image(ref_latent)).result
    result = json.loads(data)
    model, wall = result["model"], result["runs"]["model"]["wall_s"]
    assert model["load_s"] >= 0.3 and abs(model["sampling_s"] - (wall - model["load_s"])) < 1e-3
    assert result["reference"]["load_s"] < 0.3
    assert f"loading: ComfyUI spent {model['load_s']:.2f} s" in text


def test_the_plot_is_labelled_and_its_title_carries_the_speed_up_and_psnr(flux, monkeypatch):
    """matplotlib draws it (axis labels with units, computed and cached calls in the legend, the speed-up and PSNR
    in the title); without matplotlib the PIL fallback still gives an image of the same size."""
    import builtins

    from matplotlib.axes import Axes

    cached = NODE["FastlaneTargetSpeedCache"].execute(model=flux, compute_fraction=0.5, order=1, granularity="auto",
                                                      start=0.0, end=1.0).result[0]
    base, fast = bench(flux, "baseline"), bench(cached, "target")
    ref_latent, latent = sample(base, steps=6, size=32), sample(fast, steps=6, size=32)
    drawn: dict[str, list] = {"title": [], "xlabel": [], "ylabel": [], "legend": []}
    for name in ("title", "xlabel", "ylabel"):
        original = getattr(Axes, f"set_{name}")
        monkeypatch.setattr(Axes, f"set_{name}", lambda self, text, *a, _o=original, _n=name, **k: (
            drawn[_n].append(text), _o(self, text, *a, **k))[1])
    original_legend = Axes.legend
    monkeypatch.setattr(Axes, "legend", lambda self, *a, **k: (
        drawn["legend"].append(self.get_legend_handles_labels()[1]), original_legend(self, *a, **k))[1])

    def report():
        return NODE["FastlaneBenchmarkReport"].execute(model=fast, image=as_image(latent), reference_model=base,
                                                       reference_image=as_image(ref_latent)).result

    _, plot, data = report()
    result = json.loads(data)
    assert plot.shape == (1, 400, 800, 3) and plot.min() < 0.5
    (title,) = drawn["title"]
    assert f"{result['speedup_sampling']}x faster" in title and f"PSNR {result['fidelity']['psnr_db']:.1f} dB" in title
    assert drawn["xlabel"] == ["sampling step"] and drawn["ylabel"] == ["ms per model call"]
    (labels,) = drawn["legend"]
    assert labels == ["target: computed (3)", "target: from cache (3)", "baseline: every call computed (6)"]

    real_import = builtins.__import__
    monkeypatch.setattr(builtins, "__import__", lambda name, *a, **k: (
        (_ for _ in ()).throw(ImportError(name)) if name.startswith("matplotlib") else real_import(name, *a, **k)))
    _, fallback, _ = report()
    assert fallback.shape == (1, 400, 800, 3) and fallback.min() < 0.5
