"""Tensors from rank 0 to every worker: model weights (once per weight state) and each call's inputs.

Everything travels as raw bytes in buckets, so any dtype crosses any backend (gloo has no fp8) and a model's
hundreds of small tensors cost a few collectives, not hundreds. Weights go rank 0 memory -> worker memory through
the process group; nothing is written to disk.
"""
from __future__ import annotations

import torch

from .comm import Comm

BUCKET_BYTES = 256 * 2**20
ALIGN = 16  # each tensor starts at a multiple of 16 bytes in its bucket, so its bytes view back as any dtype
Manifest = list[tuple[tuple[int, ...], torch.dtype]]


def manifest_of(tensors: list[torch.Tensor | None]) -> list[tuple[tuple[int, ...], torch.dtype] | None]:
    return [None if t is None else (tuple(t.shape), t.dtype) for t in tensors]


def _nbytes(shape: tuple[int, ...], dtype: torch.dtype) -> int:
    n = 1
    for s in shape:
        n *= s
    return n * torch.empty((), dtype=dtype).element_size()


def _padded(n: int) -> int:
    return -(-n // ALIGN) * ALIGN


def _buckets(manifest: list) -> list[list[int]]:
    """Indices of the non-None entries, grouped into buckets of at most BUCKET_BYTES (one big tensor alone)."""
    out: list[list[int]] = [[]]
    size = 0
    for i, entry in enumerate(manifest):
        if entry is None:
            continue
        n = _padded(_nbytes(*entry))
        if out[-1] and size + n > BUCKET_BYTES:
            out.append([])
            size = 0
        out[-1].append(i)
        size += n
    return [b for b in out if b]


def send(comm: Comm, tensors: list[torch.Tensor | None]) -> None:
    """Rank 0: broadcast ``tensors`` (its manifest went ahead through the store)."""
    for bucket in _buckets(manifest_of(tensors)):
        parts = []
        for i in bucket:
            raw = tensors[i].detach().contiguous().reshape(-1).view(torch.uint8).to(comm.device)
            pad = _padded(raw.numel()) - raw.numel()
            parts += [raw, raw.new_zeros(pad)] if pad else [raw]
        comm.broadcast_(torch.cat(parts), 0)


def receive(comm: Comm, manifest: list, device: torch.device) -> list[torch.Tensor | None]:
    """A worker: the tensors rank 0 sends for ``manifest``, on ``device``."""
    out: list[torch.Tensor | None] = [None] * len(manifest)
    for bucket in _buckets(manifest):
        sizes = [_padded(_nbytes(*manifest[i])) for i in bucket]
        flat = comm.broadcast_(torch.empty(sum(sizes), dtype=torch.uint8, device=comm.device), 0).to(device)
        for i, chunk in zip(bucket, flat.split(sizes)):
            shape, dtype = manifest[i]
            out[i] = chunk[:_nbytes(shape, dtype)].view(dtype).reshape(shape)
    return out
