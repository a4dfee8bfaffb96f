"""The benchmark report names the code that ran: on the device the working tree is laid over an older checkout, so
``benchmarks/run.py`` marks a commit whose tracked files were changed."""
import importlib.util
import subprocess
import sys
from pathlib import Path

PACK = Path(__file__).resolve().parents[1]


def load_run():
    spec = importlib.util.spec_from_file_location("fastlane_bench_run", PACK / "benchmarks" / "run.py")
    module = sys.modules.setdefault(spec.name, importlib.util.module_from_spec(spec))
    spec.loader.exec_module(module)
    return module


def test_a_changed_tracked_file_marks_the_commit(tmp_path, monkeypatch):
    run = load_run()
    git = ["git", "-C", str(tmp_path), "-c", "user.name=t", "-c", "user.email=t@t"]
    subprocess.run([*git[:3], "init", "-q"], check=True)
    (tmp_path / "a.py").write_text("x = 1\n")
    subprocess.run([*git, "add", "a.py"], check=True)
    subprocess.run([*git, "commit", "-qm", "one"], check=True)
    head = subprocess.run([*git, "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    monkeypatch.setattr(run, "PACK_DIR", tmp_path)
    (tmp_path / "untracked.txt").write_text("not the pack's code\n")
    assert run.pack_commit() == head
    (tmp_path / "a.py").write_text("x = 2\n")
    assert run.pack_commit() == f"{head}+changes (1 files differ)"
