"""After a Fastlane MODEL's sampling run, hand the host memory the process has freed back to the OS.

Why: a ComfyUI server's RSS climbs with every model load, LoRA strength change and Quantize even though nothing
keeps the memory (``tests/test_no_model_leak.py``): glibc's malloc keeps freed chunks below its mmap threshold (which
it raises up to 32 MB as large blocks are freed, so most of a checkpoint's tensors) inside its heaps for reuse. On
the lent H100 (s17-1, 128 prompts of FLUX.1-dev / SDXL workflows) the memory no file backs, seen after SDXL prompts,
grew 2.8 → 9.3 GB in 47 prompts and to 15.5 GB after 128; the same soak with ``MALLOC_MMAP_THRESHOLD_=131072``
(s17-4) stayed at 1.5-1.8 GB (2.9-3.2 GB with a LoRA's backed-up weights) over 37 prompts. That variable must be
set before Python starts and makes every CPU tensor over 128 kB an mmap (a chain of CPU matmuls ran 8-11 % slower
with it on this workplace's 2-core box), so the pack calls glibc's ``malloc_trim(0)`` instead: it returns the free
pages inside the heaps without changing how anything is allocated (at most every 30 s unless RSS grew 64 MB).
``FASTLANE_MALLOC_TRIM=0`` turns it off; off glibc (macOS, Windows, musl) it does nothing.
"""
from __future__ import annotations

import ctypes
import functools
import logging
import os
import sys
import time
from typing import Any, Callable

ENV = "FASTLANE_MALLOC_TRIM"
WRAPPER_KEY = "fastlane_host_memory"
# A trim walks every free chunk of every heap (a madvise each), inside the sampling time the benchmark nodes measure,
# so back-to-back warm runs that loaded nothing skip it: a run trims once RSS has grown GROWTH_MB since the last trim
# or MIN_INTERVAL_S have passed. RSS alone cannot gate it: freeing a FLUX model's host copy lowers RSS while leaving
# gigabytes of freed chunks resident, and only the interval catches those.
GROWTH_MB = 64.0
MIN_INTERVAL_S = 30.0
_said = False
_rss_after_last_trim: float | None = None
_last_trim_at: float | None = None


@functools.cache
def _malloc_trim() -> Callable[[int], int] | None:
    """glibc's ``malloc_trim``, or None where there is none (or the user turned it off)."""
    if not sys.platform.startswith("linux") or os.environ.get(ENV, "1").strip() == "0":
        return None
    try:
        trim = ctypes.CDLL("libc.so.6").malloc_trim
    except (OSError, AttributeError):  # musl and other C libraries: no malloc_trim
        return None
    trim.argtypes, trim.restype = [ctypes.c_size_t], ctypes.c_int
    return trim


def resident_mb() -> float | None:
    """This process's resident set size in MB (Linux: /proc/self/statm), or None."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
    except (OSError, ValueError, IndexError):
        return None


def release_free_host_memory() -> dict | None:
    """Return the heaps' free pages to the OS now. None where unavailable, else RSS before/after (MB) and seconds."""
    trim = _malloc_trim()
    if trim is None:
        return None
    before, start = resident_mb(), time.perf_counter()
    trim(0)
    result = {"rss_before_mb": before, "rss_after_mb": resident_mb(), "seconds": time.perf_counter() - start}
    _log(result)
    return result


def release_if_due(min_growth_mb: float | None = None, min_interval_s: float | None = None) -> dict | None:
    """``release_free_host_memory()`` if none ran yet, RSS grew ``min_growth_mb`` (default ``GROWTH_MB``) since the
    last trim, or ``min_interval_s`` (default ``MIN_INTERVAL_S``) passed since it; else None."""
    global _rss_after_last_trim, _last_trim_at
    if _malloc_trim() is None:
        return None
    growth = GROWTH_MB if min_growth_mb is None else min_growth_mb
    interval = MIN_INTERVAL_S if min_interval_s is None else min_interval_s
    now, rss = time.monotonic(), resident_mb()
    if _last_trim_at is not None and now - _last_trim_at < interval and rss is not None \
            and _rss_after_last_trim is not None and rss - _rss_after_last_trim < growth:
        return None
    result = release_free_host_memory()
    if result is not None:
        _rss_after_last_trim, _last_trim_at = result["rss_after_mb"], time.monotonic()
    return result


def _log(result: dict) -> None:
    """One line per trim (a trim follows a load or a LoRA change, not every prompt): what it gave back and cost, which
    the soak reads from the server log (``soak_real.parse_log``)."""
    global _said
    freed = (result["rss_before_mb"] or 0.0) - (result["rss_after_mb"] or 0.0)
    text = (f"Fastlane: returned {freed:.0f} MB of freed host memory to the OS after sampling (malloc_trim, "
            f"{result['seconds'] * 1000:.0f} ms)")
    if not _said:
        _said = True
        text += (f"; it runs after a Fastlane sampling run once RSS grew {GROWTH_MB:.0f} MB or {MIN_INTERVAL_S:.0f} s "
                 f"passed since the last, {ENV}=0 turns it off")
    logging.info(text)


def outer_sample_wrapper(executor, *args: Any, **kwargs: Any):
    """OUTER_SAMPLE wrapper: the sampling run (which loads and unloads the models), then the trim when it is due,
    also when the run was interrupted or failed."""
    try:
        return executor(*args, **kwargs)
    finally:
        release_if_due()


def attach(patched) -> None:
    """Put the trim on ``patched`` (a MODEL the caller owns) once, however many Fastlane nodes the chain holds."""
    from comfy.patcher_extension import WrappersMP

    patched.remove_wrappers_with_key(WrappersMP.OUTER_SAMPLE, WRAPPER_KEY)
    patched.add_wrapper_with_key(WrappersMP.OUTER_SAMPLE, WRAPPER_KEY, outer_sample_wrapper)
