"""The benchmark's row registry: what a row is, ``@row`` to add one, and ``CTX``, the run a row builds for.

A row turns the base ``ModelPatcher`` into a patched clone the way a ComfyUI node does; ``benchmarks/run.py`` times
it. Kept apart from the runner so that adding a row never means reading the timing code.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable


class RowSkipped(Exception):
    """Raise from a row to report it as skipped (e.g. a dependency is missing); the run goes on."""


@dataclass
class Row:
    name: str
    fn: Callable
    families: tuple[str, ...]
    kind: str  # "patcher": fn(ModelPatcher) -> ModelPatcher;  "standalone": fn() -> callable doing one denoiser call
    note: str = ""
    heavy: bool = False  # long cold run (compilation): scheduled after the cheap rows
    step_cache: bool | None = None  # skips work on some steps; None: inferred from the name (see caches_steps)

    @property
    def caches_steps(self) -> bool:
        """Does the row's cost per step depend on the step count (a step cache)? Rows without one cost the same at
        every step, so ``run.py --uniform-steps N`` may time them over N steps and scale to --steps (Wan 2.2: a
        20-step eager run is ~2 min on an H100). Explicit ``step_cache=`` wins; else any cache node's word in the
        row's name counts."""
        if self.step_cache is not None:
            return self.step_cache
        return any(w in self.name for w in STEP_CACHE_WORDS)


STEP_CACHE_WORDS = ("fora", "taylorseer", "target", "spectrum", "adaptive", "easycache", "lazycache", "deepcache")

# Issue 19's families at real size (benchmarks/family_models.py); rows opt in by naming them.
NEW_FAMILIES: tuple[str, ...] = ("qwen-image", "z-image", "wan22", "flux2")
ALL_FAMILIES: tuple[str, ...] = ("flux", "sdxl", *NEW_FAMILIES)

ROWS: dict[str, Row] = {}


def row(name: str, families: tuple[str, ...] = ("flux", "sdxl"), kind: str = "patcher", note: str = "",
        heavy: bool = False, step_cache: bool | None = None) -> Callable:
    """Register a row. A patcher row receives the base ModelPatcher and returns a patched *clone* (never mutate the
    base); the runner clones it once more to add its timing wrapper. Use ``CTX`` for the family, device, tiny flag.
    ``heavy=True`` (anything that compiles) runs after the cheap rows, so a stage cut short loses the least."""
    def deco(fn: Callable) -> Callable:
        ROWS[name] = Row(name, fn, tuple(families), kind, note, heavy, step_cache)
        return fn
    return deco


@dataclass
class Context:
    family: str = ""
    tiny: bool = False
    device: Any = None
    dtype: Any = None
    width: int = 1024
    height: int = 1024
    steps: int = 28
    frames: int | None = None
    spec: Any = None
    pack_status: str = "not loaded"


CTX = Context()
