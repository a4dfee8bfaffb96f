"""FLUX's ``forward_orig`` on one rank's share of the tokens (``comfy.ldm.flux.model.Flux``).

Every rank calls ``run_sharded`` with the full, identical inputs of one ``forward_orig`` call (rank 0 broadcasts
them). It cuts img / img_ids / txt / txt_ids to the rank's share and runs the model's own ``forward_orig`` on it:
the rope ``pe`` then comes from the local ids (right for each local token), every per-token layer works on local
tokens only, and the one place tokens meet, attention, goes through ``attention.make_override``. The last line of
``forward_orig`` (``img[:, txt.shape[1]:]``) drops the local txt tokens, so what comes back is the rank's img
tokens; an all-gather in rank order restores the full sequence, which ComfyUI then unpatchifies as usual.
"""
from __future__ import annotations

from collections.abc import Callable

import torch

from .attention import make_override
from .comm import Comm

OVERRIDE = "optimized_attention_override"


def split_sizes(total: int, world: int) -> list[int]:
    """Tokens per rank: as even as possible, the first ``total % world`` ranks one more."""
    base, extra = divmod(total, world)
    return [base + (r < extra) for r in range(world)]


def shard(t: torch.Tensor, sizes: list[int], rank: int, dim: int = 1) -> torch.Tensor:
    return t.narrow(dim, sum(sizes[:rank]), sizes[rank])


def original_forward_orig(model: torch.nn.Module) -> Callable:
    """The class's own ``forward_orig`` bound to ``model`` (our object patch may sit on the instance)."""
    return type(model).forward_orig.__get__(model)


def run(model: torch.nn.Module, comm: Comm, mode: str, inputs: list, transformer_options: dict) -> torch.Tensor:
    """``inputs``: ``forward_orig``'s (img, img_ids, txt, txt_ids, timesteps, y, guidance), full and identical on
    every rank. Runs this rank's share; returns the full (B, img_tokens, C) output on every rank."""
    img, img_ids, txt, txt_ids, timesteps, y, guidance = inputs
    world, rank = comm.world, comm.rank
    img_sizes, txt_sizes = split_sizes(img.shape[1], world), split_sizes(txt.shape[1], world)
    lengths = [a + b for a, b in zip(txt_sizes, img_sizes)]
    previous = transformer_options.get(OVERRIDE)
    transformer_options[OVERRIDE] = make_override(comm, lengths, mode, previous)
    try:
        local = original_forward_orig(model)(
            shard(img, img_sizes, rank), shard(img_ids, img_sizes, rank), shard(txt, txt_sizes, rank),
            shard(txt_ids, txt_sizes, rank), timesteps, y, guidance, None, transformer_options, attn_mask=None)
    finally:
        if previous is None:
            transformer_options.pop(OVERRIDE, None)
        else:
            transformer_options[OVERRIDE] = previous
    return torch.cat(comm.all_gather_seq(local, img_sizes, dim=1), dim=1)


def prepare_worker(model: torch.nn.Module) -> None:
    """Nothing to install on a worker's FLUX copy."""
