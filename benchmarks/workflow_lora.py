"""A random LoRA for the workflow benchmark: how the shipped workflows behave when a user adds a LoRA and changes its
strength between images (``run_workflows.py --lora-strengths``).

The LoRA is written in ComfyUI's generic key format (``diffusion_model.<module>.lora_up/lora_down.weight``), rank 16,
on the attention projections (FLUX: every ``qkv`` and single-block ``linear1``; SDXL: every ``to_q/to_k/to_v``),
with shapes read from the model file the workflow loads, and ComfyUI's own ``LoraLoaderModelOnly`` goes right after
the model loader, so every branch of the graph gets it, before Fastlane Quantize (which bakes it in) and Compile.
"""
from __future__ import annotations

import json
import re
from pathlib import Path

LORA_NAME = "fastlane-random-lora.safetensors"
LORA_NODE = "fastlane_random_lora"
RANK = 16
TARGETS = {"flux": r"(img_attn|txt_attn)\.qkv\.weight$|^single_blocks\.\d+\.linear1\.weight$",
           "sdxl": r"attn[12]\.to_[qkv]\.weight$"}
LOADERS = ("UNETLoader", "CheckpointLoaderSimple")


def write_random_lora(model_file: Path, family: str, lora_dir: Path, seed: int = 0) -> dict[str, float]:
    """Writes ``LORA_NAME`` under ``lora_dir`` for the diffusion model in ``model_file``; returns its size in GiB."""
    import torch
    from safetensors import safe_open
    from safetensors.torch import save_file

    generator = torch.Generator().manual_seed(seed)
    tensors = {}
    with safe_open(str(model_file), framework="pt") as f:
        for key in f.keys():
            name = key.removeprefix("model.diffusion_model.")
            if not re.search(TARGETS[family], name):
                continue
            out_features, in_features = f.get_slice(key).get_shape()
            base = "diffusion_model." + name.removesuffix(".weight")
            down = torch.randn(RANK, in_features, generator=generator) / in_features ** 0.5
            up = torch.randn(out_features, RANK, generator=generator) * 0.01
            tensors[f"{base}.lora_down.weight"] = down.to(torch.bfloat16)
            tensors[f"{base}.lora_up.weight"] = up.to(torch.bfloat16)
            tensors[f"{base}.alpha"] = torch.tensor(float(RANK))
    if not tensors:
        raise RuntimeError(f"no {family} attention weights found in {model_file.name} for the random LoRA")
    lora_dir.mkdir(parents=True, exist_ok=True)
    path = lora_dir / LORA_NAME
    save_file(tensors, str(path), metadata={"fastlane": json.dumps({"random": True, "rank": RANK})})
    return {path.name: round(path.stat().st_size / 2**30, 3)}


def with_lora(prompt: dict) -> dict:
    """The API-format ``prompt`` with ``LoraLoaderModelOnly`` after its model loader, feeding every node that took the
    loader's MODEL."""
    loader = next(node_id for node_id, node in prompt.items() if node["class_type"] in LOADERS)
    prompt = {node_id: {**node, "inputs": {name: ([LORA_NODE, 0] if value == [loader, 0] else value)
                                           for name, value in node["inputs"].items()}}
              for node_id, node in prompt.items()}
    prompt[LORA_NODE] = {"class_type": "LoraLoaderModelOnly",
                         "inputs": {"model": [loader, 0], "lora_name": LORA_NAME, "strength_model": 1.0}}
    return prompt


def set_strength(prompt: dict, strength: float) -> None:
    prompt[LORA_NODE]["inputs"]["strength_model"] = strength
