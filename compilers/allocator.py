"""Whether this process's PyTorch allocator lets CUDA graphs be recorded, and what to tell the user when it does not.

ComfyUI starts PyTorch with ``PYTORCH_CUDA_ALLOC_CONF=backend:cudaMallocAsync`` on NVIDIA GPUs unless it is launched
with ``--disable-cuda-malloc`` (its ``cuda_malloc.py``). That allocator has no graph-private memory pools: inductor's
CUDA graphs (Compile modes ``reduce-overhead`` and ``max-autotune``) call ``getCheckpointState``, which it does not
implement, and Fastlane CUDA Graph's recordings are freed outside the graph that owns their memory. On an H100 the
soak's server (2026-12-07, docs/runs/2026-12-07-h100-s14-1-soak-async-allocator) replayed its first recording, then
failed the next one ("CUDA driver error: invalid argument") and aborted the process freeing it. So under this
allocator nothing records CUDA graphs: the nodes say so once and run without them.
"""
from __future__ import annotations

import logging

import torch

ASYNC_BACKEND = "cudaMallocAsync"
GRAPH_MODES = {"reduce-overhead": "default", "max-autotune": "max-autotune-no-cudagraphs"}  # -> the same, no graphs
log = logging.getLogger("fastlane")
_warned: set[str] = set()


def graphs_blocked(what: str) -> str | None:
    """Why ``what`` (a node or a mode that records CUDA graphs) cannot record them in this process, or None."""
    # fixed for the process by PYTORCH_CUDA_ALLOC_CONF when torch starts
    if torch.cuda.memory.get_allocator_backend() != ASYNC_BACKEND:
        return None
    return (f"{what} needs PyTorch's native CUDA allocator, and ComfyUI runs {ASYNC_BACKEND} (its default on NVIDIA "
            "GPUs), under which recording CUDA graphs fails and can abort the server: start ComfyUI with "
            "--disable-cuda-malloc to use it")


def warn_once(message: str) -> None:
    """Log ``message`` as a warning the first time this process sees it (nodes run at every prompt)."""
    if message not in _warned:
        _warned.add(message)
        log.warning("Fastlane: %s", message)
