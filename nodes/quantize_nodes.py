"""The torchao quantization node: MODEL in, a model of its own with quantized Linear copies out. Mechanism:
quantizers/patching.py and quantizers/model_copy.py."""
from __future__ import annotations

from comfy_api.latest import io

from ..quantizers import filters, patching, schemes

CATEGORY = "fastlane/speed"


class FastlaneQuantize(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="FastlaneQuantize",
            display_name="Fastlane Quantize (torchao)",
            category=CATEGORY,
            description="Quantize the diffusion model's Linear layers with torchao. The input MODEL is unchanged: "
                        "this MODEL is a model of its own holding the quantized copies, so ComfyUI keeps both loaded "
                        "when VRAM holds them (a compare graph switches at no cost). Put LoRA loaders before "
                        "this node (their LoRA is baked in first); follow it with Fastlane Compile for speed - "
                        "without compiling, the dynamic schemes are usually slower than 16-bit. Linears that run "
                        "on one row per image (modulation, embedders: FLUX, Qwen-Image, Wan, Z-Image/Lumina2, "
                        "HunyuanVideo, Chroma, SDXL each have their list) never get their inputs quantized; with an "
                        "fp8 scheme on FLUX and Qwen-Image their weights are stored in fp8 too (few_row_linears: "
                        "auto), which saves 3 GiB on FLUX, 6.8 GB on Qwen-Image, at no measured cost (FLUX).",
            inputs=[
                io.Model.Input("model", tooltip="The MODEL to quantize (FLUX, SDXL, Qwen-Image, Wan, Z-Image, "
                                                "HunyuanVideo, Chroma, or any model with Linears)."),
                io.Combo.Input("scheme", options=list(schemes.SCHEMES), default="int8_weight_only",
                               tooltip="; ".join(f"{s.name}: {s.description}" for s in schemes.SCHEMES.values())),
                io.Combo.Input("filter", options=list(filters.PRESETS), default="none",
                               tooltip="Which Linears stay in 16-bit besides the few-row ones. none: quantize all "
                                       "others. norm+embedding: also keep norm/embedding layers and the input/output "
                                       "projections. regex: also keep names matching the regex below."),
                io.String.Input("regex", default="", optional=True,
                                tooltip="With filter 'regex': Linears whose name inside the diffusion model matches "
                                        "(re.search) stay in 16-bit, e.g. 'single_blocks\\.(3[0-7])\\.' or "
                                        "'img_in|final_layer'."),
                io.Combo.Input("few_row_linears", options=list(filters.FEW_ROWS_MODES), default="auto",
                               optional=True,
                               tooltip="The Linears that run on one row per image (modulation, embedders: 3.3 B of "
                                       "FLUX.1-dev's 11.9 B parameters). fp8 weights: stored as fp8 (weights only; "
                                       "their inputs stay 16-bit): FLUX.1-dev with fp8_scaled_mm needs 11.1 instead "
                                       "of 14.1 GiB at the same speed (H200, compiled and eager); NVIDIA compute "
                                       "capability 8.9+. 16-bit: untouched. auto: fp8 weights with the fp8 schemes "
                                       "where these Linears hold 10%+ of the weights (FLUX: 28%, Qwen-Image: 33%; "
                                       "SDXL 1%, Wan 1.3%, Z-Image 2%: kept 16-bit), else 16-bit."),
            ],
            outputs=[
                io.Model.Output(tooltip="The quantized model (the input MODEL is unchanged)."),
                io.String.Output(display_name="report", tooltip="What was quantized and the weight memory before "
                                                                  "and after."),
            ],
        )

    @classmethod
    def execute(cls, model, scheme: str, filter: str, regex: str = "",
                few_row_linears: str = "auto") -> io.NodeOutput:
        if not hasattr(model, "clone") or not hasattr(model, "get_model_object"):
            raise ValueError(f"Fastlane Quantize needs a MODEL (a ComfyUI ModelPatcher), got {type(model).__name__}")
        patched, report = patching.quantize(model, scheme, filter, regex or "", few_row_linears)
        text = report.text()
        return io.NodeOutput(patched, text, ui={"text": [text]})


NODES = [FastlaneQuantize]
