"""CPU smoke of the Multi-GPU benchmark (issue 22, measured on a lent multi-GPU kind with
``benchmarks/device_multigpu.sh``): ``run.py --tiny`` times the 1-GPU ``eager`` row and ``multigpu2`` (2 CPU ranks
joined by gloo, the node's real worker processes) in one run, and ``probes/probe_multigpu_comm.py`` times the node's
collectives on 2 gloo ranks at a tiny shape. Timings on a CPU mean nothing; what is checked is the plumbing the GPU
run depends on: both rows ok, the same output (the runner records the output's std), the workers stopped after the
row, the probe's Ulysses round trip exact and every op timed. The two runs go side by side (~15 s on 2 cores)."""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

PACK = Path(__file__).resolve().parents[1]


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("bench_multigpu")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    commands = {
        "bench": [sys.executable, str(PACK / "benchmarks" / "run.py"), "--family", "flux", "--tiny", "--rows",
                  "eager,multigpu2", "--steps", "2", "--repeats", "1", "--timeout-per-row", "60", "--out",
                  str(root / "bench")],
        "probe": [sys.executable, str(PACK / "benchmarks" / "probes" / "probe_multigpu_comm.py"), "--shape", "tiny",
                  "--worlds", "2", "--backend", "gloo", "--iters", "20", "--warmup", "2", "--timeout", "60", "--out",
                  str(root / "probe")],
    }
    procs = {k: subprocess.Popen(c, cwd=PACK, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
             for k, c in commands.items()}
    out = {}
    for k, proc in procs.items():
        log, _ = proc.communicate(timeout=120)
        assert proc.returncode == 0, f"{k}: exited {proc.returncode}\n{log[-4000:]}"
        out[k] = log
    out["results"] = json.loads((root / "bench" / "results.json").read_text())
    out["probe_json"] = json.loads((root / "probe" / "probe_multigpu_comm.json").read_text())
    return out


def test_eager_and_multigpu2_rows_ran_and_agree(runs):
    res = runs["results"]
    assert res["complete"] and res["config"]["tiny"]
    rows = {r["row"]: r for r in res["rows"]}
    assert sorted(rows) == ["eager", "multigpu2"]
    for name, r in rows.items():
        assert r["status"] == "ok", f"{name}: {r['status']}\n{r.get('traceback', '')}"
        assert r["output_finite"] and r["calls_per_run"] == 2 and r["ms_per_step"] > 0
    assert rows["eager"]["speedup_vs_eager"] == pytest.approx(1.0)
    assert rows["multigpu2"]["speedup_vs_eager"] > 0  # the column a GPU run reads its speed-up from
    # the runner keeps the output's std (4 decimals), not the output: the sequence-parallel run must give the same
    assert rows["multigpu2"]["output_std"] == pytest.approx(rows["eager"]["output_std"], rel=1e-3, abs=2e-4)


def test_multigpu_workers_started_and_stopped_after_the_row(runs):
    log = runs["bench"]
    started = re.findall(r"Fastlane Multi-GPU: 1 workers started .*\(pids \[(\d+)\], gloo on cpu", log)
    assert len(started) == 1, log[-3000:]
    stopped = re.search(r"Fastlane bench multigpu2: 1 Multi-GPU workers stopped after the row \(pids \[(\d+)\]\): "
                        r"all exited", log)
    assert stopped and stopped.group(1) == started[0], log[-3000:]
    # stopped inside the row's clean-up: before the runner reported the row done
    assert log.index(stopped.group(0)) < log.index("row multigpu2: ok")
    assert not _alive(int(started[0]))


def test_comm_probe_on_two_gloo_ranks(runs):
    rep = runs["probe_json"]
    assert rep["shape_name"] == "tiny" and rep["iters"] == 20
    (world,) = rep["worlds"]
    assert world["world"] == 2 and world["backend"] == "gloo" and "error" not in world, world.get("error")
    assert world["round_trip_exact"] and world["exit_codes"] == [0, 0]
    assert set(world["ops"]) == {"a2a_qkv_raw", "ulysses_in", "ulysses_out", "kv_gather", "output_gather",
                                 "inputs_broadcast", "feature_gather", "forecast_broadcast"}
    for name, op in world["ops"].items():
        assert op["median_ms"] > 0 and op["MB_exchanged_per_rank"] > 0 and op["bus_GBps"] > 0, name
    assert set(world["per_model_call_ms"]) == {"ulysses", "kv_gather"}
    assert "Ulysses round trip exact: True" in runs["probe"]


def test_interconnect_read_from_nvidia_smi_topo():
    sys.path.insert(0, str(PACK / "benchmarks"))
    import run

    nvlink = ("\t\x1b[4mGPU0\tGPU1\tGPU2\tGPU3\tCPU Affinity\tNUMA Affinity\x1b[0m\n"
              "GPU0\t X \tNV18\tNV18\tNV18\t0-63\t0\nGPU1\tNV18\t X \tNV18\tNV18\t0-63\t0\n"
              "GPU2\tNV18\tNV18\t X \tNV18\t64-127\t1\nGPU3\tNV18\tNV18\tNV18\t X \t64-127\t1\n\nLegend:\n  X = Self\n")
    assert run.interconnect(nvlink) == "NVLink (NV18)"
    pcie = "\tGPU0\tGPU1\tCPU Affinity\nGPU0\t X \tPHB\t0-31\nGPU1\tPHB\t X \t0-31\n"
    assert run.interconnect(pcie) == "PCIe / host (PHB)"
    assert run.interconnect("").startswith("unknown")
