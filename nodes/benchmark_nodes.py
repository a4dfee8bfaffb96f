"""The benchmark node (records every model call of each sampling run) and the report node (reads it out)."""
from __future__ import annotations

from comfy_api.latest import io
from comfy.patcher_extension import WrappersMP

from ..cachers.comfy_hooks import RECORDER_KEY
from ..measure import report as reports
from ..measure.recorder import Recorder

CATEGORY = "fastlane/benchmark"


def _apply_model_wrapper(executor, x, t, *args, **kwargs):
    options = kwargs.get("transformer_options") or (args[3] if len(args) > 3 else {})
    recorder: Recorder = options[RECORDER_KEY]
    return recorder.time_call(executor, x, float(t.flatten()[0]), t, *args, **kwargs)


def _prepare_sampling_wrapper(executor, model, *args, **kwargs):
    recorder: Recorder = model.model_options["transformer_options"][RECORDER_KEY]
    return recorder.time_preparation(executor, model, *args, **kwargs)


def _outer_sample_wrapper(executor, *args, **kwargs):
    guider = executor.class_obj
    recorder: Recorder = guider.model_options["transformer_options"][RECORDER_KEY]
    device = guider.model_patcher.load_device
    recorder.start_run(args[3], device)  # OUTER_SAMPLE args: noise, latent, sampler, sigmas, ...
    try:
        return executor(*args, **kwargs)
    finally:
        recorder.end_run(device)


class FastlaneBenchmark(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="FastlaneBenchmark",
            display_name="Fastlane Benchmark",
            category=CATEGORY,
            description="Put this on a MODEL right before the sampler: every sampling run with it is timed per step "
                        "(CUDA events on a GPU), with peak memory and which steps a Fastlane cacher computed. "
                        "Read the numbers with Fastlane Benchmark Report. Adds no work to the model itself.",
            inputs=[
                io.Model.Input("model", tooltip="The MODEL to measure (plain, or after Fastlane/other patch nodes)."),
                io.String.Input("label", default="accelerated", tooltip="Name of this branch in the report."),
            ],
            outputs=[io.Model.Output(tooltip="The same model, measured when sampled (the input MODEL is unchanged).")],
        )

    @classmethod
    def execute(cls, model, label: str) -> io.NodeOutput:
        if not hasattr(model, "clone") or not hasattr(model, "model_options"):
            raise ValueError(f"Fastlane Benchmark needs a MODEL (a ComfyUI ModelPatcher), got {type(model).__name__}")
        measured = model.clone()
        if RECORDER_KEY in measured.model_options.get("transformer_options", {}):
            raise ValueError("this MODEL already passes through a Fastlane Benchmark node; use one per branch")
        measured.model_options["transformer_options"][RECORDER_KEY] = Recorder(label)
        measured.add_wrapper_with_key(WrappersMP.OUTER_SAMPLE, "fastlane_benchmark", _outer_sample_wrapper)
        measured.add_wrapper_with_key(WrappersMP.APPLY_MODEL, "fastlane_benchmark", _apply_model_wrapper)
        measured.add_wrapper_with_key(WrappersMP.PREPARE_SAMPLING, "fastlane_benchmark", _prepare_sampling_wrapper)
        return io.NodeOutput(measured)


def _recorder_of(model, role: str) -> Recorder:
    recorder = getattr(model, "model_options", {}).get("transformer_options", {}).get(RECORDER_KEY)
    if recorder is None:
        raise ValueError(f"the {role} MODEL has no Fastlane Benchmark: connect the MODEL output of a "
                         "'Fastlane Benchmark' node (the one feeding the sampler) to this input")
    if recorder.last_run is None:
        raise ValueError(f"the {role} MODEL ('{recorder.label}') has no recorded sampling run: connect the image "
                         "sampled from it to this report, so the sampler runs before the report")
    return recorder


class FastlaneBenchmarkReport(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="FastlaneBenchmarkReport",
            display_name="Fastlane Benchmark Report",
            category=CATEGORY,
            is_output_node=True,
            description="Reads the last sampling run of a Fastlane Benchmark MODEL: per-step latency table and plot, "
                        "JSON for scripts, and — given a reference branch (same seed, e.g. the uncached model) — "
                        "the speed-up and how far the image moved (PSNR, SSIM).",
            inputs=[
                io.Model.Input("model", tooltip="MODEL output of the Fastlane Benchmark node of the branch to report."),
                io.Image.Input("image", tooltip="Image decoded from that branch's sampler (orders the report after it)."),
                io.Model.Input("reference_model", optional=True,
                               tooltip="MODEL output of the Fastlane Benchmark node of the reference branch."),
                io.Image.Input("reference_image", optional=True,
                               tooltip="Image of the reference branch, same seed and size, for PSNR/SSIM."),
            ],
            outputs=[
                io.String.Output(display_name="report", tooltip="The report as text."),
                io.Image.Output(display_name="plot",
                                tooltip="Milliseconds per model call at each step, computed and cached calls "
                                        "marked apart, the speed-up and PSNR in the title."),
                io.String.Output(display_name="json", tooltip="Everything measured, as JSON."),
            ],
        )

    @classmethod
    def execute(cls, model, image, reference_model=None, reference_image=None) -> io.NodeOutput:
        recorder = _recorder_of(model, "measured")
        reference = _recorder_of(reference_model, "reference") if reference_model is not None else None
        text, result = reports.report(
            recorder.label, recorder.last_run,
            reference.label if reference else None, reference.last_run if reference else None,
            image, reference_image if reference is not None else None)
        series = {recorder.label: reports.call_ms(recorder.last_run)}
        computed = {recorder.label: recorder.last_run.computed_steps()}
        if reference is not None:
            series[reference.label] = reports.call_ms(reference.last_run)
            computed[reference.label] = reference.last_run.computed_steps()
        plot = reports.plot(series, computed, title=reports.plot_title(result))
        return io.NodeOutput(text, plot, reports.to_json(result), ui={"text": [text]})


NODES = [FastlaneBenchmark, FastlaneBenchmarkReport]
