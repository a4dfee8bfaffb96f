"""The model-switch probe (benchmarks/probes/probe_switch_determinism.py), on the demo models on the CPU: it tells
each SDXL run that follows a FLUX prompt or a full unload from one that follows SDXL (a fresh model object or the
same), and on the CPU every one of them is bit-identical to the first at every stage it hashes."""
import json
import subprocess
import sys
from pathlib import Path

PROBE = Path(__file__).resolve().parents[1] / "benchmarks" / "probes" / "probe_switch_determinism.py"


def test_probe_compares_every_sdxl_run_after_a_switch_stage_by_stage(tmp_path):
    out = subprocess.run([sys.executable, str(PROBE), "--demo", "--cpu", "--sequence", "A B A F A X A", "--steps", "2",
                          "--size", "64", "--out", str(tmp_path)], capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert [(c["index"], c["after"], c["same_model_object"]) for c in summary["compared"]] == \
        [(2, "B", True), (4, "F", False), (6, "X", False)]
    assert all(c["identical"] for c in summary["compared"]), summary["compared"]
    records = [json.loads(line) for line in (tmp_path / "records.jsonl").read_text().splitlines()]
    flux = next(r for r in records if r["token"] == "F")
    assert flux["model_class"] == "Flux" and flux["latent_out"] != records[0]["latent_out"]
    assert records[1]["noise"] != records[0]["noise"] and records[0]["image"] == records[2]["image"]
