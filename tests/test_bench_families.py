"""CPU smoke of the GPU benchmark runner on issue 19's families: ``benchmarks/run.py --tiny`` for Qwen-Image, Z-Image,
Wan 2.2 and FLUX.2 (tiny configurations of ComfyUI's own classes, real sampling loop), each with a baseline, a step
cache and a quantize row, 2 steps. Proves the plumbing the device run depends on: the family's model class,
conditioning and latent, the rows opened to it, ``--uniform-steps`` projection, ``--weights fp8`` (native fp8 rows
sharing the base's tensors), results.json. Timings on a CPU mean nothing.

The four runs go as two pairs of subprocesses (one torch thread each, 2 cores): ~25 s here.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

PACK = Path(__file__).resolve().parents[1]
ROWS = "eager,target0.3,int8dyn"
# family -> extra run.py arguments: Wan 2.2 times its uniform rows over 1 of the 2 steps (projected) in bf16 (a
# 16-bit model keeps ComfyUI's float32 patch embedding: a build casting every weight failed on the H100, s14), FLUX.2
# builds its weights in fp8 as on an 80 GB H100 and adds the native fp8 row that shares them
RUNS: dict[str, list[str]] = {
    "qwen-image": [],
    "z-image": [],
    "wan22": ["--uniform-steps", "1", "--dtype", "bf16"],
    "flux2": ["--weights", "fp8", "--rows", ROWS + ",native_fp8"],
}


def _command(family: str, out: Path) -> list[str]:
    extra = RUNS[family]
    rows = [] if "--rows" in extra else ["--rows", ROWS]
    return [sys.executable, str(PACK / "benchmarks" / "run.py"), "--family", family, "--tiny", "--steps", "2",
            "--repeats", "1", "--timeout-per-row", "120", "--out", str(out), *rows, *extra]


@pytest.fixture(scope="module")
def results(tmp_path_factory) -> dict[str, dict]:
    root = tmp_path_factory.mktemp("bench_families")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    out: dict[str, dict] = {}
    families = list(RUNS)
    for pair in (families[:2], families[2:]):
        procs = {f: subprocess.Popen(_command(f, root / f), cwd=PACK, env=env, stdout=subprocess.PIPE,
                                     stderr=subprocess.STDOUT, text=True) for f in pair}
        for f, proc in procs.items():
            log, _ = proc.communicate(timeout=300)
            assert proc.returncode == 0, f"{f}: run.py exited {proc.returncode}\n{log[-4000:]}"
            out[f] = json.loads((root / f / "results.json").read_text())
    return out


@pytest.mark.parametrize("family", list(RUNS))
def test_every_row_timed_none_failed(results, family):
    res = results[family]
    assert res["complete"]
    assert res["config"]["family"] == family and res["config"]["tiny"]
    rows = {r["row"]: r for r in res["rows"]}
    want = ROWS.split(",") + (["native_fp8"] if family == "flux2" else [])
    assert sorted(rows) == sorted(want)
    for name, r in rows.items():
        assert r["status"] == "ok", f"{family}/{name}: {r['status']}\n{r.get('traceback', '')}"
        assert r["sampling_s"] > 0 and r["ms_per_step"] > 0 and r["calls_per_run"] >= 1
        assert r["output_finite"], f"{family}/{name}: non-finite output"
        assert r["repeats_identical"] is True, f"{family}/{name}: the warm run differs from the cold one"
    assert rows["eager"]["speedup_vs_eager"] == pytest.approx(1.0)
    # rows that build a model of their own (the quantized copy, the native fp8 model) free it after the row
    for name in ("int8dyn", "native_fp8"):
        if name in rows:
            assert rows[name]["own_model_freed"] is True, f"{family}/{name}: {rows[name].get('warnings')}"
    assert rows["eager"]["own_model_freed"] is None
    # the cache row ran the whole schedule and computed fewer steps than it was called for
    cache = rows["target0.3"]
    assert cache["steps_run"] == 2 and any("computed 1 of 2 steps" in line for line in cache["cache_log"])


def test_family_shapes(results):
    """Each family's latent and context as its nodes give them (tiny widths): Qwen-Image's 3-D latent format takes
    (B, 16, 1, H/8, W/8) as KSampler makes it; Wan (B, 16, (frames-1)/4+1, H/8, W/8); FLUX.2 128 channels at 1/16."""
    cfg = {f: r["config"] for f, r in results.items()}
    assert cfg["qwen-image"]["latent_shape"] == [1, 16, 1, 8, 8]
    assert cfg["z-image"]["latent_shape"] == [1, 16, 8, 8]
    assert cfg["wan22"]["latent_shape"] == [1, 16, 2, 8, 8] and cfg["wan22"]["frames"] == 5
    assert cfg["flux2"]["latent_shape"] == [1, 128, 4, 4] and cfg["flux2"]["guidance"] == 4.0
    assert cfg["qwen-image"]["cfg"] == 4.0 and cfg["wan22"]["cfg"] == 4.0 and cfg["z-image"]["cfg"] == 1.0
    assert cfg["z-image"]["steps"] == 2  # overridden from the family's 8
    assert all(c["context_shape"] == [1, 8, 32] for c in cfg.values())
    for f, c in cfg.items():
        assert c["flops_per_step"] > 0, f


def test_uniform_steps_are_projected(results):
    """Wan 2.2 with --uniform-steps 1: rows without a step cache ran 1 step and their sampling s at --steps is
    projected from ms/step; the cache row ran both steps."""
    rows = {r["row"]: r for r in results["wan22"]["rows"]}
    for name in ("eager", "int8dyn"):
        r = rows[name]
        assert r["steps_run"] == 1 and r["projected"] and r["calls_per_run"] == 1
        assert r["sampling_s_at_steps"] == pytest.approx(2 * r["sampling_s"])
    assert rows["target0.3"]["steps_run"] == 2 and not rows["target0.3"]["projected"]


def test_fp8_weights_base(results):
    """--weights fp8: the base model is built in float8_e4m3fn storage (UNETLoader's fp8_e4m3fn) and the native fp8
    row runs on the same tensors."""
    cfg = results["flux2"]["config"]
    assert "float8_e4m3fn" in cfg["dtype"] or "float8_e4m3fn" in cfg["weights"]
