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


BLOCK_CACHE = {"blocks": "residual", "last_block": "hidden"}  # granularity -> the feature a Fastlane cache keeps


def cache_info(transformer_options: dict) -> dict | None:
    """Rank 0: the running Fastlane block cache's granularity and this call's decision, for the workers."""
    cache, call = transformer_options.get("fastlane_cache"), transformer_options.get("fastlane_call")
    granularity = getattr(cache, "granularity", None)
    if call is None or granularity not in BLOCK_CACHE:
        return None
    return {"granularity": granularity, "compute": bool(call.compute)}


def _block_cache_patches(comm: Comm, info: dict, call, model: torch.nn.Module, lengths: list[int]) -> dict:
    """The Fastlane cache's FLUX block patches (cachers/adapters/flux.py), run on every rank's share.

    The decision ``info["compute"]`` was made once, on rank 0. Computed call: the blocks run; the feature (the stack's
    residual, or the last block's hidden state) is all-gathered and rank 0's cache stores it whole, in rank order
    (a fixed permutation of the tokens, the same on every call of this shape: forecasts are per element). Cached
    call: the blocks pass through; rank 0's cache forecasts the whole feature and broadcasts it; each rank adds its
    share (``blocks``) or takes it as the hidden state (``last_block``)."""
    residual = info["granularity"] == "blocks"
    name = BLOCK_CACHE[info["granularity"]]
    compute, state = info["compute"], {}
    n_double, n_single = len(model.double_blocks), len(model.single_blocks)

    def double(i: int):
        def patch(args: dict, extra: dict) -> dict:
            if not compute:
                return {"img": args["img"], "txt": args["txt"]}
            if i == 0 and residual:
                state["entry"] = torch.cat((args["txt"], args["img"]), 1)  # a copy: blocks add in place
            return extra["original_block"](args)
        return patch

    def single(i: int):
        last = i == n_single - 1

        def patch(args: dict, extra: dict) -> dict:
            if compute:
                out = extra["original_block"](args)
                if last:
                    feature = out["img"] - state.pop("entry") if residual else out["img"]
                    whole = torch.cat(comm.all_gather_seq(feature, lengths, dim=1), dim=1)
                    if call is not None:
                        call.store(name, whole)
                return out
            if not last:
                return {"img": args["img"]}
            img = args["img"]
            if comm.rank == 0:
                whole = call.forecast(name).to(img.dtype).contiguous()
            else:
                whole = img.new_empty((img.shape[0], sum(lengths), img.shape[2]))
            comm.broadcast_(whole, 0)
            mine = shard(whole, lengths, comm.rank)
            return {"img": img + mine if residual else mine}
        return patch

    return {**{("double_block", i): double(i) for i in range(n_double)},
            **{("single_block", i): single(i) for i in range(n_single)}}


def run(model: torch.nn.Module, comm: Comm, mode: str, inputs: list, transformer_options: dict,
        cache: dict | None = None) -> torch.Tensor:
    """``inputs``: ``forward_orig``'s (img, img_ids, txt, txt_ids, timesteps, y, guidance), full and identical on
    every rank. Runs this rank's share; returns the full (B, img_tokens, C) output on every rank. ``cache``: a
    Fastlane block cache's granularity and decision for this call (``cache_info``), or None."""
    img, img_ids, txt, txt_ids, timesteps, y, guidance = inputs
    world, rank = comm.world, comm.rank
    img_sizes, txt_sizes = split_sizes(img.shape[1], world), split_sizes(txt.shape[1], world)
    lengths = [a + b for a, b in zip(txt_sizes, img_sizes)]
    options = dict(transformer_options)  # this call's copy: the override and block patches stay out of ComfyUI's
    options[OVERRIDE] = make_override(comm, lengths, mode, transformer_options.get(OVERRIDE))
    if cache is not None:
        call = transformer_options.get("fastlane_call") if rank == 0 else None
        options["patches_replace"] = {**options.get("patches_replace", {}),
                                      "dit": _block_cache_patches(comm, cache, call, model, lengths)}
    local = original_forward_orig(model)(
        shard(img, img_sizes, rank), shard(img_ids, img_sizes, rank), shard(txt, txt_sizes, rank),
        shard(txt_ids, txt_sizes, rank), timesteps, y, guidance, None, options, attn_mask=None)
    return torch.cat(comm.all_gather_seq(local, img_sizes, dim=1), dim=1)


def prepare_worker(model: torch.nn.Module) -> None:
    """Nothing to install on a worker's FLUX copy."""
