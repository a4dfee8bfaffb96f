"""Turns recorded runs into what a person reads: a table, a per-step latency plot (:mod:`.plot`), JSON, and image
fidelity."""
from __future__ import annotations

import json
import statistics

import numpy as np
import torch
from .plot import plot  # noqa: F401  (the report's plot, drawn there)
from .recorder import RunRecord

LPIPS_NOTE = "LPIPS: not computed (its backbone weights are not bundled and are never downloaded)"


def run_summary(run: RunRecord) -> dict:
    per_step = run.step_ms()
    computed = run.computed_steps()
    ms = list(per_step.values())
    summary = {
        "run": run.index, "cold": run.cold, "device": run.device, "steps": run.steps, "calls": len(run.calls),
        "sampling_s": round(run.wall_s - run.load_s, 4), "load_s": round(run.load_s, 4),
        "model_ms_total": round(sum(ms), 2),
        "median_step_ms": round(statistics.median(ms), 3) if ms else None,
        "peak_memory_mb": None if run.peak_memory_mb is None else round(run.peak_memory_mb, 1),
        "computed_steps": computed,
        "compile_s": round(run.compile_s, 2), "compiled_graphs": run.compiled_graphs,
    }
    if computed is not None:
        cached = [v for s, v in per_step.items() if s not in computed]
        done = [v for s, v in per_step.items() if s in computed]
        summary["computed_fraction"] = round(len(computed) / max(run.steps, 1), 3)
        summary["median_computed_step_ms"] = round(statistics.median(done), 3) if done else None
        summary["median_cached_step_ms"] = round(statistics.median(cached), 3) if cached else None
    return summary


def fidelity(image: torch.Tensor, reference: torch.Tensor) -> dict:
    """PSNR and SSIM (scikit-image) of ``image`` against ``reference`` (ComfyUI IMAGE tensors, BHWC in 0..1)."""
    from skimage.metrics import peak_signal_noise_ratio, structural_similarity

    if image.shape != reference.shape:
        raise ValueError(f"images to compare differ in shape: {tuple(image.shape)} vs {tuple(reference.shape)}; "
                         "use the same resolution and batch size in both branches")
    a, b = image.float().cpu().numpy(), reference.float().cpu().numpy()
    psnr = [peak_signal_noise_ratio(r, x, data_range=1.0) for x, r in zip(a, b)]
    side = min(a.shape[1:3])
    win = 7 if side >= 7 else side - (1 - side % 2)
    ssim = None
    if win >= 3:
        ssim = round(float(np.mean([structural_similarity(r, x, data_range=1.0, channel_axis=-1, win_size=win)
                                    for x, r in zip(a, b)])), 4)
    return {"psnr_db": round(float(np.mean(psnr)), 3), "ssim": ssim, "lpips": LPIPS_NOTE}


def compare(run: RunRecord, reference: RunRecord | None) -> dict:
    result = {"model": run_summary(run)}
    if reference is not None:
        ref = run_summary(reference)
        result["reference"] = ref
        result["speedup_sampling"] = (round(ref["sampling_s"] / result["model"]["sampling_s"], 3)
                                      if result["model"]["sampling_s"] else None)
        if ref["model_ms_total"] and result["model"]["model_ms_total"]:
            result["speedup_model_time"] = round(ref["model_ms_total"] / result["model"]["model_ms_total"], 3)
    return result


def table(label: str, result: dict, reference_label: str | None = None) -> str:
    """The report as text that reads the same plain (API ``ui.text``, logs, report.txt) and rendered as Markdown
    (ComfyUI's Preview Any node renders Markdown): a title, one bullet per summary line, the per-step table fenced."""
    model, ref = result["model"], result.get("reference")
    title = f"Fastlane benchmark — {label} on {model['device']} ({'cold' if model['cold'] else 'warm'} run {model['run']})"
    lines = [f"sampling {model['sampling_s']:.3f} s, {model['steps']} steps, {model['calls']} model calls, "
             f"median step {model['median_step_ms']} ms" + (f", peak {model['peak_memory_mb']} MB" if model["peak_memory_mb"] else "")]
    if model.get("compiled_graphs"):
        lines.append(f"cold start: torch.compile built {model['compiled_graphs']} graph(s) in {model['compile_s']:.1f} s "
                     f"during this run; first image took {model['sampling_s']:.1f} s of sampling; queue again for "
                     f"warm figures")
    if model.get("computed_steps") is not None:
        lines.append(f"computed {len(model['computed_steps'])}/{model['steps']} steps; median computed step "
                     f"{model['median_computed_step_ms']} ms, median cached step {model['median_cached_step_ms']} ms")
    if ref is not None:
        lines.append(f"reference {reference_label}: sampling {ref['sampling_s']:.3f} s ({'cold' if ref['cold'] else 'warm'}), "
                     f"median step {ref['median_step_ms']} ms")
        lines.append(f"speed-up: {result.get('speedup_sampling')}x sampling, {result.get('speedup_model_time')}x model time")
        if max(model["load_s"], ref["load_s"]) >= 0.05:
            lines.append(f"loading: ComfyUI spent {model['load_s']:.2f} s ({reference_label}: {ref['load_s']:.2f} s) "
                         "loading or moving model weights before sampling, not counted above (a graph whose branches "
                         "use different forms of one model, e.g. quantized and not, moves weights at each switch)")
        if model["cold"] or ref["cold"]:
            lines.append("note: a cold run includes first-use costs (compilation, loading); queue again for warm figures")
    if "fidelity" in result:
        f = result["fidelity"]
        lines.append(f"fidelity vs reference: PSNR {f['psnr_db']} dB, SSIM {f['ssim']}; {f['lpips']}")
    rows = [f"{'step':>4} {'ms':>10} {'how':>8}" + (f" {'ref ms':>10}" if ref else "")]
    ref_ms = result.get("_reference_step_ms", {})
    for step, ms in sorted(result["_step_ms"].items()):
        how = "—" if result["_computed"] is None else ("compute" if step in result["_computed"] else "cache")
        rows.append(f"{step:>4} {ms:>10.3f} {how:>8}" + (f" {ref_ms.get(step, float('nan')):>10.3f}" if ref else ""))
    return "\n".join([title] + [f"- {line}" for line in lines] + ["", "```"] + rows + ["```"])


def report(label: str, run: RunRecord, reference_label: str | None = None, reference: RunRecord | None = None,
           image: torch.Tensor | None = None, reference_image: torch.Tensor | None = None) -> tuple[str, dict]:
    """Build the text table and the JSON-ready dict for one run, compared with a reference run if given."""
    result = compare(run, reference)
    if image is not None and reference_image is not None:
        result["fidelity"] = fidelity(image, reference_image)
    result["label"], result["reference_label"] = label, reference_label
    result["_step_ms"], result["_computed"] = run.step_ms(), run.computed_steps()
    if reference is not None:
        result["_reference_step_ms"] = reference.step_ms()
    text = table(label, result, reference_label)
    public = {k: v for k, v in result.items() if not k.startswith("_")}
    public["runs"] = {"model": run.to_dict(), **({"reference": reference.to_dict()} if reference else {})}
    return text, public


def to_json(result: dict) -> str:
    return json.dumps(result, indent=1, default=str)


def call_ms(run: RunRecord) -> dict[int, float]:
    """Mean milliseconds per model call at each step (what the plot draws: a step with cfg > 1 may make two)."""
    total, count = run.step_ms(), {}
    for c in run.calls:
        count[c.step] = count.get(c.step, 0) + 1
    return {step: ms / count[step] for step, ms in total.items()}


def plot_title(result: dict) -> str:
    """The plot's title: the speed-up and the PSNR against the reference when there is one, else the computed
    share of the steps."""
    model, label = result["model"], result.get("label") or "model"
    if result.get("reference") is None:
        computed = model.get("computed_steps")
        share = f", {len(computed)}/{model['steps']} steps computed" if computed is not None else ""
        return f"{label}: {model['steps']} steps, median {model['median_step_ms']} ms per step{share}"
    title = f"{label} vs {result.get('reference_label')}: {result.get('speedup_sampling')}x faster sampling"
    if result.get("speedup_model_time"):
        title += f" ({result['speedup_model_time']}x model time)"
    if "fidelity" in result:
        title += f", PSNR {result['fidelity']['psnr_db']:.1f} dB"
    return title
