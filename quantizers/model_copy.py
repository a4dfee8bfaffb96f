"""A model of its own for Fastlane Quantize: a copy of the MODEL's torch model with the quantized Linears in place of
the originals, in a patcher that ComfyUI manages apart from the received MODEL.

Why not object patches on a clone (sessions 1-8): ComfyUI's clones share one torch model, so a clone whose Linears
differ makes ComfyUI move the shared model's weights out and back in at every switch between the 16-bit and the
quantized MODEL: 9-16 s per switch for FLUX on an H200, 32 s per image of a compare workflow (run s8-6). Two models
are what ComfyUI knows how to keep: both stay loaded while VRAM holds them, as with two checkpoints, and the idle one
is offloaded when it does not.

Nothing is shared between the two torch models: the copy takes the *original* weights (another clone's LoRA or
object patches may be applied to the shared model right now: ComfyUI keeps the originals in the clones' shared
backups) and ComfyUI applies this MODEL's remaining patches to the copy when it loads it. Cost: the quantized Linears
plus a copy of every other weight (FLUX with fp8 few-row weights: its norms, 0.1 MB, run s9-1; SDXL: its
convolutions too), kept on the offload device.
"""
from __future__ import annotations

import copy
import inspect
import types
import uuid
from typing import Any

import torch


class _Copier:
    """Copies a module tree once: each module, parameter and buffer gets exactly one copy, so a module reachable
    from two places (an object patch that holds the model's own modules) stays one module in the copy."""

    def __init__(self, model, replacements: dict[str, torch.nn.Module], device: torch.device) -> None:
        self.model = model
        self.replacements = replacements
        self.device = device
        self.copies: dict[int, Any] = {}
        self.copied_bytes = 0

    def _unpatched(self, path: str, live: Any) -> Any:
        """What ``path`` holds without the object patches applied to the shared model right now."""
        return self.model.object_patches_backup.get(path, live)

    def tensor(self, key: str, t: torch.Tensor | None) -> torch.Tensor | None:
        if t is None:
            return None
        backup = self.model.backup.get(key)  # another clone's weight patches are applied right now
        source = backup.weight if backup is not None else t
        if id(t) not in self.copies:
            copied = source.detach().to(self.device, copy=True)
            self.copied_bytes += copied.numel() * copied.element_size()
            if isinstance(t, torch.nn.Parameter):
                copied = torch.nn.Parameter(copied, requires_grad=t.requires_grad)
            self.copies[id(t)] = copied
        return self.copies[id(t)]

    def module(self, module: torch.nn.Module, path: str) -> torch.nn.Module:
        if id(module) in self.copies:
            return self.copies[id(module)]
        import comfy.model_patcher

        new = copy.copy(module)
        self.copies[id(module)] = new
        d = new.__dict__
        for name, value in list(d.items()):
            if name in ("_parameters", "_buffers", "_modules"):
                continue
            value = self._unpatched(path + name, value)
            if isinstance(value, (list, dict, set)):
                value = copy.copy(value)  # hook dicts, ComfyUI's weight_function lists: the copy's own
            d[name] = self.rebound(value)
        new._parameters = {n: self.tensor(path + n, p) for n, p in module._parameters.items()}
        new._buffers = {n: self.tensor(path + n, b) for n, b in module._buffers.items()}
        new._modules = {}
        for name, child in module._modules.items():
            child_path = path + name
            if child_path in self.replacements:
                new._modules[name] = self.replacements[child_path]
                continue
            child = self._unpatched(child_path, child)
            new._modules[name] = None if child is None else self.module(child, child_path + ".")
        # ComfyUI's per-module load state: the copy is not loaded anywhere yet
        comfy.model_patcher.wipe_lowvram_weight(new)
        if hasattr(new, "comfy_patched_weights"):
            new.comfy_patched_weights = False
        return new

    def rebound(self, value: Any) -> Any:
        """A method bound to one of the copied modules (an instance ``forward``, a patched ``forward_orig``) is bound
        to that module's copy instead, so the copy never runs the original's weights."""
        if inspect.ismethod(value) and id(value.__self__) in self.copies:
            return types.MethodType(value.__func__, self.copies[id(value.__self__)])
        return value

    def object_patch(self, key: str, value: Any) -> Any:
        if isinstance(value, torch.nn.Module):
            return self.module(value, key + ".")
        return self.rebound(value)


def own_model(model, replacements: dict[str, torch.nn.Module]):
    """A patcher of ``model``'s kind around a copy of its torch model in which the modules at ``replacements``' paths
    (``diffusion_model.<name>``) are the given ones; returns (patcher, bytes copied besides the replacements)."""
    copier = _Copier(model, replacements, torch.device(model.offload_device))
    base = copier.module(model.model, "")
    patcher = model.clone()  # the MODEL's patches, options, wrappers and callbacks ...
    patcher.model = base  # ... around a torch model of its own
    patcher.object_patches = {k: copier.object_patch(k, v) for k, v in patcher.object_patches.items()}
    patcher.parent = None  # not a clone: ComfyUI loads and offloads it as a model of its own
    patcher.size = 0
    patcher.backup = {}
    patcher.object_patches_backup = {}
    patcher.pinned = set()
    patcher.is_injected = False
    if hasattr(patcher, "hook_backup"):
        patcher.hook_backup = {}
    patcher.patches_uuid = uuid.uuid4()
    base.device = torch.device(model.offload_device)
    for name, unloaded in (("model_loaded_weight_memory", 0), ("lowvram_patch_counter", 0), ("model_lowvram", False),
                           ("current_weight_patches_uuid", None), ("model_offload_buffer_memory", 0),
                           ("current_patcher", None)):
        if hasattr(base, name):
            setattr(base, name, unloaded)
    return patcher, copier.copied_bytes
