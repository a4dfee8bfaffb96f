"""The torchao quantization node: MODEL in, a model of its own with quantized Linear copies out. Mechanism:
quantizers/patching.py and quantizers/model_copy.py. The save node writes such a MODEL (fp8 schemes) in ComfyUI's own
fp8 checkpoint layout: quantizers/export.py."""
from __future__ import annotations

import os

from comfy_api.latest import io

from ..quantizers import export, filters, patching, schemes

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
                        "auto), which saves 3 GiB on FLUX, 6.8 GB on Qwen-Image, at no measured cost (FLUX). By "
                        "default (filter entry+exit) the model's entry and exit projections stay 16-bit too: fp8 "
                        "there moved our demo models' images more than fp8 in all their blocks.",
            inputs=[
                io.Model.Input("model", tooltip="The MODEL to quantize (FLUX, SDXL, Qwen-Image, Wan, Z-Image, "
                                                "HunyuanVideo, Chroma, or any model with Linears)."),
                io.Combo.Input("scheme", options=list(schemes.SCHEMES), default="int8_weight_only",
                               tooltip="; ".join(f"{s.name}: {s.description}" for s in schemes.SCHEMES.values())),
                io.Combo.Input("filter", options=list(filters.PRESETS), default=filters.DEFAULT_PRESET,
                               tooltip="Which Linears stay in 16-bit besides the few-row ones. entry+exit: the "
                                       "model's entry and exit projections (FLUX img_in, txt_in, final_layer; "
                                       "0.03% of FLUX's Linear work, but fp8 there moved the image more than fp8 in "
                                       "all blocks together: +4 to +5 dB on our FLUX proxies). none: quantize all "
                                       "others. norm+embedding: entry+exit and norm/embedding-named layers. regex: "
                                       "keep names matching the regex below."),
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


class FastlaneSaveQuantized(io.ComfyNode):
    # ComfyUI's V3 DESCRIPTION (the node's help text) is the schema's description
    SUMMARY = ("Save a MODEL quantized by Fastlane Quantize (fp8_scaled_mm or fp8_scaled_mm_exact) as a "
               ".safetensors in models/diffusion_models, in ComfyUI's own mixed-precision fp8 layout: Load "
               "Diffusion Model reads it back with fp8 weights and their per-row scales, without quantizing "
               "again. ComfyUI computes these Linears by dequantizing the weight per call (fp8 memory, 16-bit "
               "matmuls); for the fp8 matmuls, run the loaded model through Fastlane Quantize again.")

    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="FastlaneSaveQuantized",
            display_name="Fastlane Save Quantized",
            category=CATEGORY,
            description=cls.SUMMARY,
            is_output_node=True,
            inputs=[
                io.Model.Input("model", tooltip="A MODEL from Fastlane Quantize with an fp8 scheme (fp8_scaled_mm, "
                                                "fp8_scaled_mm_exact, fp8_tensorwise, fp8_tensorwise_dynamic). It "
                                                "is only read, never changed."),
                io.String.Input("filename_prefix", default="fastlane/flux_fp8_scaled",
                                tooltip="File name under models/diffusion_models (a subfolder may be given); a "
                                        "counter and .safetensors are appended."),
            ],
            outputs=[io.String.Output(display_name="report", tooltip="The file written and what it holds.")],
        )

    @classmethod
    def execute(cls, model, filename_prefix: str) -> io.NodeOutput:
        import folder_paths

        export.fp8_linears(model)  # the clear error before any file is made
        root = folder_paths.get_folder_paths("diffusion_models")[0]
        folder, name, counter, _, _ = folder_paths.get_save_image_path(filename_prefix, root)
        os.makedirs(folder, exist_ok=True)
        path = os.path.join(folder, f"{name}_{counter:05}_.safetensors")
        summary = export.save(model, path)
        text = (f"Fastlane Save Quantized: wrote {os.path.relpath(path, root)} in models/diffusion_models: {summary}. "
                "Load it with Load Diffusion Model (weight_dtype default).")
        return io.NodeOutput(text, ui={"text": [text]})


NODES = [FastlaneQuantize, FastlaneSaveQuantized]
