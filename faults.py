"""Out-of-memory faults: what Fastlane's nodes raise and free when the GPU runs out during their work.

``FastlaneOutOfMemory`` subclasses ``torch.OutOfMemoryError`` (itself a ``RuntimeError``): ComfyUI shows its text on
the node, and its executor still recognises it as an OOM (``comfy.model_management.OOM_EXCEPTION``), so it unloads
the loaded models afterwards as for any OOM and the server stays usable for the next prompt.
"""
from __future__ import annotations

import gc

import torch

# the same class since torch 2.5; both named for older torch
OOM_ERRORS: tuple[type[BaseException], ...] = tuple({getattr(torch, "OutOfMemoryError", torch.cuda.OutOfMemoryError),
                                                     torch.cuda.OutOfMemoryError})

FREE_VRAM = ("free VRAM (fewer models loaded, other GPU programs closed; ComfyUI's 'Unload Models' / 'Free model and "
             "node cache')")


class FastlaneOutOfMemory(torch.cuda.OutOfMemoryError):
    """The GPU ran out of memory during a Fastlane node's work; the text says what ran out and what to try."""


def is_oom(error: BaseException | None) -> bool:
    """``error`` is an OOM, or wraps one (dynamo's ``BackendCompilerFailed`` and the like keep it as their cause)."""
    seen = set()
    while error is not None and id(error) not in seen:
        if isinstance(error, OOM_ERRORS):
            return True
        seen.add(id(error))
        error = getattr(error, "inner_exception", None) or error.__cause__ or error.__context__
    return False


def free_memory() -> None:
    """Give back what a failed attempt allocated: its tensors (once the caller dropped them) and torch's cached
    blocks."""
    gc.collect()
    try:
        import comfy.model_management

        comfy.model_management.soft_empty_cache()
    except Exception:  # noqa: BLE001  (freeing is best effort: never hide the OOM behind another error)
        if torch.cuda.is_available():
            torch.cuda.empty_cache()


def first_line(error: BaseException) -> str:
    """The first line of an error's text, for a message that quotes it."""
    text = str(error).strip()
    return (text.splitlines()[0] if text else type(error).__name__)[:200]


def run_without(node: str, done: str, what: str, call, *args, **kwargs):
    """The fall-back after an OOM in ``node``'s own work (``done``: what ran out, e.g. "compiling the model"): free
    the failed attempt's memory and run ``call`` plainly; if that runs out too, the model does not fit at this size,
    raised as a FastlaneOutOfMemory that says so (``what``: the plain run, e.g. "uncompiled")."""
    free_memory()
    failure = None
    try:
        return call(*args, **kwargs)
    except OOM_ERRORS as e:  # raised below, once the traceback (whose frames hold the activations) is gone
        failure = first_line(e)
    free_memory()
    raise FastlaneOutOfMemory(
        f"{node}: the GPU ran out of memory {done} and again running it {what} ({failure}): the model does not fit "
        f"at this resolution and batch. Try a smaller resolution or batch, {FREE_VRAM}; the received MODEL is "
        f"unchanged.")
