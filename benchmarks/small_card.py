"""A smaller card on the lent GPU: how a 24 GB or 16 GB consumer card runs the shipped workflows.

ComfyUI decides what to load, offload and split (lowvram) from the free memory it sees less what it reserves for
other programs (its ``--reserve-vram``). Reserving everything above ``N`` GB makes it plan as on an ``N`` GB card;
capping torch's allocator at the same ``N`` GB (``torch.cuda.set_per_process_memory_fraction``) makes any allocation
past that raise the out-of-memory error a real card would, so a workflow that "fits" only because the big card had
room cannot pass unnoticed.

What this cannot tell: a real consumer card's bandwidth, compute and PCIe speed (offloaded weights stream over the
lent machine's bus), or the driver and desktop's own share of VRAM. Times from it say "it completes" and how the
offloading scales, not what a 4090 or a 4060 Ti takes.
"""
from __future__ import annotations

from typing import Any


def simulate(vram_gb: float, device) -> dict[str, Any]:
    """Make ComfyUI and torch behave as on a card of ``vram_gb`` GB (1e9 bytes, as cards are sold) on ``device``.

    Call after ComfyUI's ``model_management`` is imported and before any model is loaded."""
    import comfy.model_management as mm
    import torch

    if device.type != "cuda":
        raise SystemExit("--vram-gb simulates a smaller CUDA card; it needs the GPU (not --cpu)")
    total = torch.cuda.get_device_properties(device).total_memory
    card = int(vram_gb * 1e9)
    if card >= total:
        raise SystemExit(f"--vram-gb {vram_gb}: this GPU has only {total / 1e9:.1f} GB")
    torch.cuda.set_per_process_memory_fraction(card / total, device)
    reserved_before = mm.EXTRA_RESERVED_VRAM
    mm.EXTRA_RESERVED_VRAM = reserved_before + (total - card)  # ComfyUI's own 0.4-0.6 GB margin stays on top
    return {"vram_gb": vram_gb, "gpu_total_gb": round(total / 1e9, 1),
            "torch_fraction": round(card / total, 4),
            "comfy_reserved_gb": round(mm.EXTRA_RESERVED_VRAM / 1e9, 2),
            "note": "ComfyUI reserves all above the simulated size; torch allocations past it raise OOM"}
