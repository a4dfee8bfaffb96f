"""The QKV fusion node: MODEL in, a clone whose q/k/v projections run as one matmul out. Mechanism:
compilers/qkv_fusion.py."""
from __future__ import annotations

from comfy_api.latest import io

from ..compilers import qkv_fusion

CATEGORY = "fastlane/speed"


class FastlaneQKVFusion(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="FastlaneQKVFusion",
            display_name="Fastlane QKV Fusion",
            category=CATEGORY,
            description="Fuse the separate q/k/v projections of SDXL (and SD1.x) attention into one matmul "
                        "(self-attention: q/k/v; cross-attention: k/v). Same outputs up to float rounding; fewer, "
                        "larger matmuls. Costs a copy of the fused weights in VRAM while loaded. FLUX needs none "
                        "(ComfyUI's FLUX already fuses them): the MODEL then passes through unchanged. Put it before "
                        "Fastlane Compile; LoRA works before or after it.",
            inputs=[io.Model.Input("model", tooltip="An SDXL/SD1.x MODEL (FLUX passes through, with a note).")],
            outputs=[
                io.Model.Output(tooltip="The model with fused attention projections (the input MODEL is unchanged)."),
                io.String.Output(display_name="report", tooltip="What was fused, and the memory the fused copy takes."),
            ],
        )

    @classmethod
    def execute(cls, model) -> io.NodeOutput:
        if not hasattr(model, "clone") or not hasattr(model, "get_model_object"):
            raise ValueError(f"Fastlane QKV Fusion needs a MODEL (a ComfyUI ModelPatcher), got {type(model).__name__}")
        patched, text = qkv_fusion.fuse(model)
        return io.NodeOutput(patched, text, ui={"text": [text]})


NODES = [FastlaneQKVFusion]
