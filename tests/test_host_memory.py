"""After a Fastlane MODEL's sampling run the freed host memory goes back to the OS (``host_memory.py``, issue 21):
glibc's malloc_trim really shrinks RSS after a fragmenting free; it runs once RSS has grown or time has passed since
the last trim; and a prompt through ComfyUI's executor trims at most once per sampling run however many Fastlane
nodes the chain holds, and never without one."""
from __future__ import annotations

import json
import os
import random
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import soak  # noqa: E402

PACK = Path(__file__).resolve().parents[1]
GLIBC = sys.platform.startswith("linux") and os.confstr("CS_GNU_LIBC_VERSION") is not None

FRAGMENT = textwrap.dedent("""
    import importlib.util, json, sys, torch
    spec = importlib.util.spec_from_file_location("host_memory", sys.argv[1])
    host_memory = importlib.util.module_from_spec(spec); spec.loader.exec_module(host_memory)
    # 3,000 CPU tensors of 100 kB (below glibc's mmap threshold: heap chunks), every 100th kept alive so the freed
    # ones sit between live chunks, where glibc cannot shrink the heap by itself
    tensors = [torch.ones(25_600) for _ in range(3_000)]
    kept = tensors[::100]
    del tensors
    print(json.dumps({"rss_mb": host_memory.resident_mb(), "trim": host_memory.release_free_host_memory()}))
""")


def fragment_and_trim(env: dict) -> dict:
    out = subprocess.run([sys.executable, "-c", FRAGMENT, str(PACK / "host_memory.py")], capture_output=True,
                         text=True, env={**os.environ, **env}, timeout=120)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.mark.skipif(not GLIBC, reason="malloc_trim is glibc's")
def test_the_trim_returns_freed_heap_pages_to_the_os():
    result = fragment_and_trim({"FASTLANE_MALLOC_TRIM": "1"})["trim"]
    freed = result["rss_before_mb"] - result["rss_after_mb"]
    assert freed > 150, result  # of the ~290 MB freed (3 MB stay alive)


def test_the_trim_can_be_turned_off():
    result = fragment_and_trim({"FASTLANE_MALLOC_TRIM": "0"})
    assert result["trim"] is None and result["rss_mb"] is not None


def prompt(rng: random.Random, cacher: str, quantize: str | None, compile_: bool) -> dict:
    spec = {"family": "flux", "subject": soak.SUBJECTS["flux"][0], "size": 64, "batch": 1, "sampler": "euler",
            "cacher": cacher, "seed": 1, "steps": 3, "lora": None, "quantize": quantize, "compile": compile_}
    return soak.build_prompt(spec, rng)


@pytest.mark.usefixtures("fresh_dynamo")
def test_one_trim_per_sampling_run_and_none_without_fastlane(graph, monkeypatch):
    from fastlane import host_memory

    calls = []
    monkeypatch.setattr(host_memory, "_malloc_trim", lambda: (lambda pad: calls.append(pad) or 1))
    monkeypatch.setattr(host_memory, "GROWTH_MB", float("-inf"))  # every run trims: count the wrappers
    rng = random.Random(0)
    graph.run(prompt(rng, "none", None, False))  # no Fastlane node acts on the MODEL
    assert calls == []
    graph.run(prompt(rng, "TargetSpeed", "int8_weight_only", True))  # Quantize -> cacher -> Compile: three attach
    assert calls == [0]
    graph.run(prompt(rng, "FORA", None, False))
    assert calls == [0, 0]


def test_a_trim_is_due_once_rss_grew_or_the_interval_passed(monkeypatch):
    """Back-to-back warm runs that loaded nothing read RSS once and trim nothing (the trim stays out of steady-state
    timings); growth or time since the last trim makes one due."""
    from fastlane import host_memory

    # RSS as read: the gate, then before and after each trim that runs; the clock as read: the gate, after a trim
    reads = iter([1000.0, 1000.0, 900.0, 1100.0, 1200.0, 1200.0, 950.0, 1000.0, 1000.0, 1000.0, 990.0])
    clock = iter([0.0, 0.1, 5.0, 6.0, 6.1, 10.0, 40.0, 40.2])
    trims = []
    monkeypatch.setattr(host_memory, "_malloc_trim", lambda: (lambda pad: trims.append(pad) or 1))
    monkeypatch.setattr(host_memory, "resident_mb", lambda: next(reads))
    monkeypatch.setattr(host_memory.time, "monotonic", lambda: next(clock))
    monkeypatch.setattr(host_memory, "_rss_after_last_trim", None)
    monkeypatch.setattr(host_memory, "_last_trim_at", None)
    due = lambda: host_memory.release_if_due(256.0, 30.0)  # noqa: E731
    assert due()["rss_after_mb"] == 900.0  # the first run trims
    assert due() is None  # t 5 s, RSS 1100: 200 MB over the last trim's 900
    assert due()["rss_after_mb"] == 950.0  # t 6 s, RSS 1200: 300 MB over it
    assert due() is None  # t 10 s, RSS 1000: 50 MB over 950
    assert due()["rss_after_mb"] == 990.0  # t 40 s: 30 s since the last trim, whatever RSS did
    assert trims == [0, 0, 0]
