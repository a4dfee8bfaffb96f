"""The plumbing Fastlane Compile and Fastlane CUDA Graph share: their APPLY_MODEL / OUTER_SAMPLE wrappers on a
MODEL, finding the object behind a wrapper, the keys under which they hand a call's compiled / recorded functions to
a step cache (``cachers/`` reads them from here), and the notes a sampling run collects.

Why a module of its own: each node must see whether the other is already on a MODEL (their settings do not all
stack), and both install themselves the same way; keeping that here lets ``cuda_graphs`` build on ``engine``
without ``engine`` importing ``cuda_graphs`` back.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from .. import host_memory
from . import conds

COMPILE_KEY = "fastlane_compile"  # Fastlane Compile's wrappers (compilers/engine.py)
CUDA_GRAPH_KEY = "fastlane_cuda_graph"  # Fastlane CUDA Graph's wrappers (compilers/cuda_graphs.py)
# Set by Fastlane Compile (scope whole) for the call: ``compile_fn(cls, attr)`` gives ``cls.attr`` compiled with the
# node's settings, so an adapter that runs part of the model itself (SDXL DeepCache's shallow pass) runs it compiled.
COMPILE_FN_KEY = "fastlane_compile_fn"
# Set by Fastlane CUDA Graph for the call: ``graph_fn(tag, fn, args, kwargs)`` runs ``fn(*args, **kwargs)`` recorded
# in a CUDA graph per ``tag`` and signature, so an adapter's own partial pass (the shallow pass) replays too.
GRAPH_FN_KEY = "fastlane_graph_fn"


@dataclass
class RunNotes:
    """What a sampling run should tell the user, each said once (the log lines after the run)."""

    notes: list[str] = field(default_factory=list)

    def note(self, text: str) -> None:
        if text not in self.notes:
            self.notes.append(text)


def transformer_options_of(args: tuple, kwargs: dict) -> dict:
    """The ``transformer_options`` dict of a diffusion-model call: a keyword, or the last dict positional argument."""
    options = kwargs.get("transformer_options")
    if options is None:
        options = next(a for a in reversed(args) if isinstance(a, dict))
    return options


def install_call_wrappers(patched, key: str, owner) -> None:
    """Put ``owner``'s APPLY_MODEL and OUTER_SAMPLE wrappers on ``patched`` (a clone the caller owns) under ``key``,
    replacing any earlier ones of that key, and keep the run's conditioning on the GPU (a copy from CPU memory inside
    a call stalls the stream, and cannot be recorded in a CUDA graph)."""
    from comfy.patcher_extension import WrappersMP

    patched.remove_wrappers_with_key(WrappersMP.APPLY_MODEL, key)
    patched.remove_wrappers_with_key(WrappersMP.OUTER_SAMPLE, key)
    patched.add_wrapper_with_key(WrappersMP.APPLY_MODEL, key, owner.apply_model_wrapper)
    patched.add_wrapper_with_key(WrappersMP.OUTER_SAMPLE, key, owner.outer_sample_wrapper)
    host_memory.attach(patched)
    conds.attach(patched)


def wrapper_owner(model, key: str, cls: type | None = None) -> Any:
    """The object (of class ``cls``, if given) whose APPLY_MODEL wrapper ``model`` carries under ``key``, or None."""
    from comfy.patcher_extension import WrappersMP

    for wrapper in model.get_wrappers(WrappersMP.APPLY_MODEL, key):
        owner = getattr(wrapper, "__self__", None)
        if owner is not None and (cls is None or isinstance(owner, cls)):
            return owner
    return None
