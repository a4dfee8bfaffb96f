"""The layout of a demo weights file, shared by both demo families (FLUX and SDXL), and how it is loaded.

A file holds the diffusion model's weights under ComfyUI's checkpoint prefix, the patch codec (``codec.*``, see
:mod:`.codec`), and the fixed "text encoder": one row of context tokens and one pooled vector per class, with the
class names in the metadata. Keeping one layout means one loader, one conditioning lookup and one training script.
"""
from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path

import torch
from safetensors import safe_open

import comfy.model_management
import comfy.model_patcher
import comfy.supported_models_base
import comfy.utils

#: The class trained by condition dropout: the model's unconditional prediction (the negative for cfg > 1).
UNCONDITIONAL = "none"

MODEL_PREFIX = "model.diffusion_model."
CONTEXT_KEY = "text_encoder.context"  # (classes, tokens, context dim)
POOLED_KEY = "text_encoder.pooled"  # (classes, pooled dim)
CLASSES_METADATA = "fastlane.classes"  # JSON list naming the rows of the two tables above


def load_patcher(path: str | Path, config_class: type[comfy.supported_models_base.BASE], unet_config: dict,
                 dtype: torch.dtype | None = None) -> comfy.model_patcher.ModelPatcher:
    """Load a demo file's diffusion model into a real ModelPatcher: ``config_class(unet_config).get_model``, as
    ComfyUI builds that family, with dtypes chosen the way ComfyUI's UNETLoader chooses them (fp16-stored weights
    run in fp32 on a CPU, for example)."""
    sd, _ = comfy.utils.load_torch_file(str(path), return_metadata=True)
    unet_sd = {k: v for k, v in sd.items() if k.startswith(MODEL_PREFIX)}
    load_device = comfy.model_management.get_torch_device()
    offload_device = comfy.model_management.unet_offload_device()
    supported = config_class.supported_inference_dtypes
    if dtype is None:
        dtype = comfy.model_management.unet_dtype(model_params=comfy.utils.calculate_parameters(unet_sd),
                                                  supported_dtypes=supported,
                                                  weight_dtype=comfy.utils.weight_dtype(unet_sd))
    manual_cast = comfy.model_management.unet_manual_cast(dtype, load_device, supported)
    config = config_class(dict(unet_config))
    config.set_inference_dtype(dtype, manual_cast)
    model = config.get_model({}, "").to(offload_device)
    missing = set(model.diffusion_model.state_dict()) - {k[len(MODEL_PREFIX):] for k in unet_sd}
    model.load_model_weights(unet_sd, MODEL_PREFIX)  # (it consumes unet_sd)
    if missing:
        raise RuntimeError(f"demo weights {path} lack {sorted(missing)[:5]}")
    return comfy.model_patcher.ModelPatcher(model, load_device=load_device, offload_device=offload_device)


@lru_cache(maxsize=8)
def _text_tables(path: str) -> tuple[list[str], torch.Tensor, torch.Tensor]:
    with safe_open(path, framework="pt") as f:
        names = json.loads(f.metadata()[CLASSES_METADATA])
        return names, f.get_tensor(CONTEXT_KEY).float(), f.get_tensor(POOLED_KEY).float()


def text_tables(path: str | Path) -> tuple[list[str], torch.Tensor, torch.Tensor]:
    """(class names, context table, pooled table) of a demo weights file (cached per file)."""
    return _text_tables(str(Path(path).resolve()))


def class_names(path: str | Path, include_unconditional: bool = False) -> list[str]:
    """The classes (training images) a demo model draws, in weights-file order."""
    names = text_tables(path)[0]
    return list(names) if include_unconditional else [n for n in names if n != UNCONDITIONAL]


def class_embedding(path: str | Path, class_name: str, batch: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    """(context (batch, tokens, dim), pooled (batch, dim)) of one class: what the demo's "text encoder" returns."""
    names, context, pooled = text_tables(path)
    if class_name not in names:
        raise ValueError(f"unknown demo class {class_name!r}; known: {names}")
    i = names.index(class_name)
    return context[i:i + 1].repeat(batch, 1, 1), pooled[i:i + 1].repeat(batch, 1)


class DemoModel:
    """What every demo module builds and loads the same way: ComfyUI's own model config class with the demo's sizes
    (``unet_config``) and its weights file. A module binds these as its ``model_config``, ``build_model``,
    ``load_demo_patcher`` and ``class_names``."""

    def __init__(self, config_class: type[comfy.supported_models_base.BASE], unet_config: dict,
                 weights: Path) -> None:
        self.config_class, self.unet_config, self.weights = config_class, unet_config, weights

    def model_config(self, dtype: torch.dtype = torch.float32, manual_cast_dtype: torch.dtype | None = None):
        """ComfyUI's own model config class, with the demo's sizes."""
        config = self.config_class(dict(self.unet_config))
        config.set_inference_dtype(dtype, manual_cast_dtype)
        return config

    def build_model(self, dtype: torch.dtype = torch.float32, manual_cast_dtype: torch.dtype | None = None,
                    device: torch.device | None = None):
        """An untrained ComfyUI model (``comfy.model_base``; weights uninitialised: load or initialise them)."""
        return self.model_config(dtype, manual_cast_dtype).get_model({}, "", device=device)

    def load_demo_patcher(self, path: str | Path | None = None, dtype: torch.dtype | None = None
                          ) -> comfy.model_patcher.ModelPatcher:
        """The trained demo model in a real ModelPatcher, dtypes chosen as ComfyUI's UNETLoader does."""
        return load_patcher(path or self.weights, self.config_class, self.unet_config, dtype)

    def class_names(self, path: str | Path | None = None, include_unconditional: bool = False) -> list[str]:
        """The classes (training images) the demo model draws, in weights-file order."""
        return class_names(path or self.weights, include_unconditional)
