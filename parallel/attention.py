"""Sequence-parallel attention through ComfyUI's attention override hook.

ComfyUI routes every ``optimized_attention`` call through ``transformer_options["optimized_attention_override"]``
when one is set (``comfy/ldm/modules/attention.py``, ``wrap_attn``). FLUX applies rope *before* that call, so the
q/k/v arriving here already carry their positions, and attention without a mask is permutation-equivariant: the
full sequence may be assembled in rank order ``[txt_0, img_0, txt_1, img_1, ...]`` and each rank's queries still get
exactly their single-process output (up to float summation order).

Two ways, both exact:
- ``ulysses``: one all-to-all turns (B, H, L_rank, D) into (B, H/N, L_full, D) (q, k and v in one buffer), the
  attention kernel runs on all tokens for H/N heads, a second all-to-all returns each rank its tokens for all heads.
  Needs H divisible by N. Traffic per call: 4 x the local activations.
- ``kv_gather``: each rank keeps its queries and all-gathers K and V (ring attention without the ring: the whole K/V
  is materialised). Any N; traffic grows with N.
Uneven shares (token counts not divisible by N) use per-rank split sizes; nothing is padded in the result.
"""
from __future__ import annotations

from collections.abc import Callable

import torch

from .comm import Comm

MODES = ("ulysses", "kv_gather")


def _to_heads(t: torch.Tensor, heads: int, skip_reshape: bool) -> torch.Tensor:
    if skip_reshape:
        return t
    b, n, hd = t.shape
    return t.view(b, n, heads, hd // heads).transpose(1, 2)


def _ulysses(comm: Comm, qkv: torch.Tensor, lengths: list[int]) -> torch.Tensor:
    """(3, B, H, L_rank, D) -> (3, B, H/N, L_full, D): this rank's head group for every rank's tokens."""
    n = comm.world
    three, b, h, length, d = qkv.shape
    group = h // n
    send = qkv.view(three, b, n, group, length, d).permute(2, 0, 1, 3, 4, 5).reshape(-1)  # destination-major
    recv_sizes = [three * b * group * other * d for other in lengths]
    recv = comm.all_to_all_flat(send, [three * b * group * length * d] * n, recv_sizes)
    parts = [p.view(three, b, group, other, d) for p, other in zip(recv.split(recv_sizes), lengths)]
    return torch.cat(parts, dim=3)


def _ulysses_back(comm: Comm, out: torch.Tensor, lengths: list[int]) -> torch.Tensor:
    """(B, H/N, L_full, D) -> (B, H, L_rank, D): every rank's head group for this rank's tokens."""
    b, group, _, d = out.shape
    length = lengths[comm.rank]
    send = torch.cat([chunk.reshape(-1) for chunk in out.split(lengths, dim=2)])
    piece = b * group * length * d
    recv = comm.all_to_all_flat(send, [b * group * other * d for other in lengths], [piece] * comm.world)
    return recv.view(comm.world, b, group, length, d).transpose(0, 1).reshape(b, comm.world * group, length, d)


def make_override(comm: Comm, lengths: list[int], mode: str, previous: Callable | None = None) -> Callable:
    """An ``optimized_attention_override`` for one sharded call; ``lengths[r]`` is rank r's local sequence length.
    ``previous``: an override already in the options (e.g. Fastlane Attention's kernel choice) runs the local
    attention itself."""
    if mode not in MODES:
        raise ValueError(f"attention mode must be one of {MODES}, not '{mode}'")

    def local_attention(func, q, k, v, heads, kwargs):
        kwargs = {**kwargs, "skip_reshape": True, "skip_output_reshape": True}
        if previous is not None:
            return previous(func, q, k, v, heads, **kwargs)
        return func(q, k, v, heads, **kwargs)

    def override(func: Callable, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, heads: int, *args, **kwargs):
        if args or kwargs.get("mask") is not None:
            raise ValueError("Fastlane Multi-GPU: attention with a mask (or positional options) cannot be split "
                             "across ranks; this model/graph needs a single GPU")
        skip_reshape, skip_output = kwargs.pop("skip_reshape", False), kwargs.pop("skip_output_reshape", False)
        q, k, v = (_to_heads(t, heads, skip_reshape) for t in (q, k, v))
        b, h, length, d = q.shape
        if length != lengths[comm.rank]:
            raise RuntimeError(f"Fastlane Multi-GPU: rank {comm.rank} expected {lengths[comm.rank]} tokens in "
                               f"attention, got {length}")
        if mode == "ulysses":
            full = _ulysses(comm, torch.stack((q, k, v)), lengths)
            out = local_attention(func, full[0], full[1], full[2], h // comm.world, kwargs)
            out = _ulysses_back(comm, out, lengths)
        else:
            kv = torch.cat(comm.all_gather_seq(torch.stack((k, v)), lengths, dim=3), dim=3)
            out = local_attention(func, q, kv[0], kv[1], h, kwargs)
        if skip_output:
            return out
        return out.transpose(1, 2).reshape(b, length, h * d)

    return override
