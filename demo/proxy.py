"""The proxy FLUX model: a larger config of ComfyUI's real ``Flux`` class trained on procedural scenes with
compositional prompts (:mod:`.scenes`), so its denoising trajectory looks like a text-to-image model's (the layout is
decided early, the details late) rather than the 8-photo demo's (which snaps to a memorised image). Step-caching
defaults are chosen on it.

Built exactly as :mod:`.model` builds the demo (``comfy.supported_models.Flux(...).get_model``, ModelSamplingFlux,
the Flux latent format, a real ``ModelPatcher``; the PCA patch codec of :mod:`.codec` as its VAE), at 192 hidden,
3 heads of 64 (RoPE axes 8:28:28, FLUX's 16:56:56 proportion), 3 double + 6 single blocks (FLUX.1: 19 + 38),
128-dim context and pooled vector: 7.69M parameters, 15.4 MB in bfloat16.

The "text encoder" is fixed and random (seeded by the training script, stored in the weights file), not learned:
a prompt's word ids (:func:`.scenes.tokenize`, 32 tokens, 0 = padding) index

- ``text_encoder.token_embedding`` (len(VOCAB), 128): one vector per word, the padding one included;
- ``text_encoder.position_embedding`` (32, 128): added per token position (FLUX gives text tokens no RoPE
  position, so word order reaches the model only through it);

giving the context (tokens, 128); the pooled vector is the sum of the non-padding word vectors divided by the square
root of their count, through ``text_encoder.pooled_projection`` (128, 128) (a bag of words, like CLIP's pooled output
in spirit). The file's metadata ``fastlane.vocabulary`` (JSON word list) must equal :data:`.scenes.VOCAB`.
The unconditional prompt (CFG negative, condition dropout) is the empty prompt; ``"none"`` means it too.
"""
from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file

import comfy.model_base
import comfy.model_patcher
import comfy.supported_models

from . import model as demo_model, scenes, weights_file
from .codec import PatchCodec
from .weights_file import MODEL_PREFIX, UNCONDITIONAL

WEIGHTS = Path(__file__).resolve().parent / "weights" / "fastlane-proxy-flux.safetensors"

CONTEXT_DIM = 128
POOLED_DIM = 128
CONTEXT_TOKENS = scenes.MAX_TOKENS
DEFAULT_GUIDANCE = 3.5

#: FLUX.1-dev's transformer (guidance embedding, double + single stream blocks, RoPE), scaled to ~7.7M parameters.
UNET_CONFIG: dict = {
    "image_model": "flux",
    "in_channels": 16,
    "out_channels": 16,
    "patch_size": 2,
    "hidden_size": 192,
    "num_heads": 3,
    "axes_dim": [8, 28, 28],  # sums to the head dim (64), in FLUX's 16:56:56 proportion
    "theta": 10000,
    "mlp_ratio": 4.0,
    "depth": 3,
    "depth_single_blocks": 6,
    "context_in_dim": CONTEXT_DIM,
    "vec_in_dim": POOLED_DIM,
    "qkv_bias": True,
    "guidance_embed": True,
}

TOKEN_KEY = "text_encoder.token_embedding"
POSITION_KEY = "text_encoder.position_embedding"
POOL_KEY = "text_encoder.pooled_projection"
TEXT_KEYS = (TOKEN_KEY, POSITION_KEY, POOL_KEY)
VOCAB_METADATA = "fastlane.vocabulary"


def build_model(dtype: torch.dtype = torch.float32, manual_cast_dtype: torch.dtype | None = None,
                device: torch.device | None = None) -> comfy.model_base.Flux:
    """An untrained proxy: the demo's ``comfy.model_base.Flux`` builder at the proxy's sizes."""
    return demo_model.build_model(dtype, manual_cast_dtype, device, UNET_CONFIG)


def load_demo_patcher(path: str | Path | None = None, dtype: torch.dtype | None = None
                      ) -> comfy.model_patcher.ModelPatcher:
    """Load the trained proxy into a real ModelPatcher, choosing dtypes the way ComfyUI's UNETLoader does (its
    bfloat16 weights run in float32 on a CPU, in bfloat16 on a GPU that has it)."""
    return weights_file.load_patcher(path or WEIGHTS, comfy.supported_models.Flux, UNET_CONFIG, dtype)


def class_names(path: str | Path | None = None, include_unconditional: bool = False) -> list[str]:
    """The evaluation prompts (:data:`.scenes.EVAL_PROMPTS`); any prompt over the vocabulary works as well."""
    return list(scenes.EVAL_PROMPTS) + ([UNCONDITIONAL] if include_unconditional else [])


# -- the fixed "text encoder" ----------------------------------------------------------------------------------------

def fixed_text_tables(generator: torch.Generator) -> dict[str, torch.Tensor]:
    """Random token/position/pooling tables (seeded by ``generator``), keyed as stored in the weights file."""
    return {
        TOKEN_KEY: torch.randn(len(scenes.VOCAB), CONTEXT_DIM, generator=generator),
        POSITION_KEY: 0.5 * torch.randn(CONTEXT_TOKENS, CONTEXT_DIM, generator=generator),
        POOL_KEY: torch.randn(CONTEXT_DIM, POOLED_DIM, generator=generator) / CONTEXT_DIM ** 0.5,
    }


def token_ids(prompts: list[str]) -> torch.Tensor:
    """(len(prompts), CONTEXT_TOKENS) word ids; the unconditional prompt ("" or "none") is all padding."""
    return torch.tensor([scenes.tokenize("" if p.strip() == UNCONDITIONAL else p, CONTEXT_TOKENS) for p in prompts],
                        dtype=torch.long)


def encode_ids(ids: torch.Tensor, tables: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """Word ids (B, T) -> (context (B, T, CONTEXT_DIM), pooled (B, POOLED_DIM)) on the tables' device."""
    ids = ids.to(tables[TOKEN_KEY].device)
    words = tables[TOKEN_KEY][ids]
    context = words + tables[POSITION_KEY][: ids.shape[1]]
    said = (ids != 0).unsqueeze(-1).to(words.dtype)
    bag = (words * said).sum(1) / said.sum(1).clamp_min(1.0).sqrt()
    return context, bag @ tables[POOL_KEY]


@lru_cache(maxsize=4)
def _load_tables(path: str) -> dict[str, torch.Tensor]:
    with safe_open(path, framework="pt") as f:
        vocab = json.loads((f.metadata() or {}).get(VOCAB_METADATA, "[]"))
        if vocab != list(scenes.VOCAB):
            raise ValueError(f"{path} was trained with another vocabulary than demo/scenes.py's VOCAB: retrain it")
        return {k: f.get_tensor(k).float() for k in TEXT_KEYS}


def text_tables(path: str | Path | None = None) -> dict[str, torch.Tensor]:
    """The text tables of a proxy weights file (cached per file)."""
    return _load_tables(str(Path(path or WEIGHTS).resolve()))


def conditioning(prompt: str, batch: int = 1, guidance: float | None = DEFAULT_GUIDANCE,
                 path: str | Path | None = None) -> list:
    """ComfyUI CONDITIONING for any prompt over :data:`.scenes.VOCAB`:
    ``[[context (batch, 32, 128), {"pooled_output": (batch, 128), "guidance": guidance}]]``.

    ``guidance`` is FLUX's embedded guidance (what FluxGuidance sets); the proxy is trained with it drawn from 1..5
    but, not being guidance-distilled, it barely depends on it.
    """
    context, pooled = encode_ids(token_ids([prompt]), text_tables(path))
    options: dict = {"pooled_output": pooled.repeat(batch, 1)}
    if guidance is not None:
        options["guidance"] = float(guidance)
    return [[context.repeat(batch, 1, 1), options]]


def save_weights(path: str | Path, diffusion_state: dict[str, torch.Tensor], codec: PatchCodec,
                 tables: dict[str, torch.Tensor], metadata: dict[str, str], dtype: torch.dtype = torch.bfloat16
                 ) -> None:
    """Write a proxy weights file: the diffusion model (``dtype``) under ComfyUI's checkpoint prefix, the codec
    (``codec.*``) and the text tables (float32), with the vocabulary, unet config and ``metadata``."""
    tensors = {MODEL_PREFIX + k: v.detach().to("cpu", dtype).contiguous() for k, v in diffusion_state.items()}
    tensors.update({k: v.detach().cpu().contiguous() for k, v in codec.state_dict().items()})
    tensors.update({k: v.detach().float().cpu().contiguous() for k, v in tables.items()})
    meta = {VOCAB_METADATA: json.dumps(list(scenes.VOCAB)), "fastlane.unet_config": json.dumps(UNET_CONFIG),
            **codec.metadata(), **metadata}
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(path), metadata=meta)
    _load_tables.cache_clear()
