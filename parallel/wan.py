"""Wan 2.x's ``forward_orig`` on one rank's share of the video tokens (``comfy.ldm.wan.model.WanModel``).

Unlike FLUX, Wan patch-embeds and unpatchifies inside ``forward_orig``, so the cut happens at the blocks: every
rank runs the (cheap) patch embedding, time and text embeddings on the full, identical inputs, then block
replacements (ComfyUI's ``patches_replace["dit"]``) cut the tokens before the first block, cut the rope ``freqs``
(and per-token modulation, Wan 2.2's masked timesteps) for every block, and all-gather the tokens after the last
block; the head and unpatchify run on the full sequence again.

Only self-attention mixes tokens: cross-attention's queries are local and its keys come from the (full) text, so it
needs no communication. The attention override is therefore armed only while a block's ``self_attn`` runs (a hook on
``self_attn.forward``: an object patch on rank 0, set on the workers' own copies). Rope is applied before
``optimized_attention`` there too, so the Ulysses / K/V-gather exchange of ``attention.py`` is exact.
"""
from __future__ import annotations

from typing import Any

import torch

from .attention import make_override
from .comm import Comm
from .flux import OVERRIDE, shard, split_sizes

ARMED = "fastlane_parallel_self_attention"  # the override waiting for the next self-attention


class SelfAttentionHook:
    """Replaces a ``WanSelfAttention``'s ``forward``: arms the sequence-parallel override for this call only."""

    def __init__(self, module: torch.nn.Module) -> None:
        self.original = type(module).forward.__get__(module)

    def __call__(self, x, freqs, transformer_options={}):  # noqa: B006 (ComfyUI's signature)
        armed = transformer_options.get(ARMED)
        if armed is None:
            return self.original(x, freqs, transformer_options=transformer_options)
        previous = transformer_options.get(OVERRIDE)
        transformer_options[OVERRIDE] = armed(previous)
        try:
            return self.original(x, freqs, transformer_options=transformer_options)
        finally:
            if previous is None:
                transformer_options.pop(OVERRIDE, None)
            else:
                transformer_options[OVERRIDE] = previous


def self_attention_paths(model: torch.nn.Module) -> list[str]:
    return [f"blocks.{i}.self_attn" for i in range(len(model.blocks))]


def prepare_worker(model: torch.nn.Module) -> None:
    """A worker's own copy: hook every block's self-attention (rank 0 does it with object patches)."""
    for block in model.blocks:
        block.self_attn.forward = SelfAttentionHook(block.self_attn)


def per_token(vec: torch.Tensor, tokens: int) -> torch.Tensor:
    """Wan 2.2's per-frame modulation (B, F, 6, C) spread to one row per token, the way ``repeat_e`` spreads it
    inside each block: a share of the tokens no longer knows which frame its first token belongs to."""
    if vec.shape[1] == tokens:
        return vec
    repeats = tokens // vec.shape[1]
    if repeats * vec.shape[1] != tokens:
        repeats += 1
    return torch.repeat_interleave(vec, repeats, dim=1)[:, :tokens]


def _block_patch(comm: Comm, mode: str, state: dict, first: bool, last: bool):
    def patch(args: dict, extra: dict) -> dict:
        img = args["img"]
        if first:
            full = img.shape[1]
            sizes = state["sizes"] = split_sizes(full, comm.world)
            pe, vec = args["pe"], args["vec"]
            state["pe"] = shard(pe, sizes, comm.rank) if pe is not None and pe.shape[1] == full else pe
            if vec.ndim == 4 and vec.shape[1] > 1:  # per-frame / per-token modulation (Wan 2.2 masked timesteps)
                vec = shard(per_token(vec, full), sizes, comm.rank)
            state["vec"] = vec
            args["transformer_options"][ARMED] = lambda previous: make_override(comm, sizes, mode, previous)
            img = shard(img, sizes, comm.rank)
        out = extra["original_block"](dict(args, img=img, pe=state["pe"], vec=state["vec"]))
        if last:
            out = dict(out, img=torch.cat(comm.all_gather_seq(out["img"], state["sizes"], dim=1), dim=1))
            args["transformer_options"].pop(ARMED, None)
        return out

    return patch


def cache_info(transformer_options: dict) -> None:
    """Block caches are refused on Wan (``session.check_splittable``): nothing for the workers."""


def run(model: torch.nn.Module, comm: Comm, mode: str, inputs: list, transformer_options: dict,
        cache: dict | None = None) -> torch.Tensor:
    """``inputs``: ``forward_orig``'s (x, t, context, clip_fea, freqs), full and identical on every rank."""
    x, t, context, clip_fea, freqs = inputs
    blocks = len(model.blocks)
    state: dict[str, Any] = {}
    replace = {("double_block", i): _block_patch(comm, mode, state, i == 0, i == blocks - 1) for i in range(blocks)}
    options = dict(transformer_options)
    options["patches_replace"] = {**options.get("patches_replace", {}), "dit": replace}
    try:
        return type(model).forward_orig(model, x, t, context, clip_fea=clip_fea, freqs=freqs,
                                        transformer_options=options)
    finally:
        options.pop(ARMED, None)
