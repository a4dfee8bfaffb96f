"""The shipped workflows through comfy-cli (``comfy run``) against the session's real ComfyUI server.

comfy-cli needs no ComfyUI workspace to submit to a running server (``--host/--port``). It is kept offline and
out of the user's config: HOME is a temporary directory, telemetry is off (``--no-enable-telemetry`` and
DO_NOT_TRACK), ``--skip-prompt`` answers every question with its default.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from urllib.parse import parse_qs, urlparse

import pytest
from server_fixtures import comfy_server  # noqa: F401  (the session's one server)

pytestmark = pytest.mark.server

WORKFLOWS = Path(__file__).resolve().parents[1] / "workflows"


def comfy_cli() -> str:
    exe = Path(sys.executable).parent / "comfy"
    found = str(exe) if exe.exists() else shutil.which("comfy")
    if not found:
        pytest.skip("comfy-cli is not installed (pip install comfy-cli)")
    return found


def comfy(tmp_path: Path, *args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    home = tmp_path / "home"
    home.mkdir(exist_ok=True)
    env = {**os.environ, "HOME": str(home), "DO_NOT_TRACK": "1", "COMFY_NO_TELEMETRY": "1", "NO_COLOR": "1"}
    env.pop("COMFY_LOCAL_URL", None)
    return subprocess.run([comfy_cli(), "--skip-prompt", "--no-enable-telemetry", *args], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL)


def envelope(result: subprocess.CompletedProcess) -> dict:
    """The final JSON envelope comfy-cli prints on stdout (``--json``)."""
    lines = [line for line in result.stdout.splitlines() if line.startswith("{")]
    assert lines, f"no JSON from comfy-cli (rc {result.returncode}):\n{result.stdout}\n{result.stderr}"
    return json.loads(lines[-1])


def test_comfy_run_executes_the_demo_workflow_and_saves_its_images(comfy_server, tmp_path):
    prompt = json.loads((WORKFLOWS / "api" / "fastlane-demo-compare.api.json").read_text())
    for node in prompt.values():  # own file names, so this run saves new files whatever ran before
        if node["class_type"] == "SaveImage":
            node["inputs"]["filename_prefix"] = node["inputs"]["filename_prefix"].replace("fastlane/", "comfy-cli/")
    workflow = tmp_path / "demo.api.json"
    workflow.write_text(json.dumps(prompt))

    result = comfy(tmp_path, "--json", "run", "--workflow", str(workflow), "--wait", "--host", "127.0.0.1",
                   "--port", str(comfy_server.port), "--timeout", "300")
    data = envelope(result)
    assert result.returncode == 0 and data["ok"], data
    assert data["data"]["status"] == "completed"
    saves = {i for i, n in prompt.items() if n["class_type"] == "SaveImage"}
    assert set(data["data"]["outputs_by_node"]) >= saves
    files = []
    for node_id in saves:
        (url,) = data["data"]["outputs_by_node"][node_id]
        query = {k: v[0] for k, v in parse_qs(urlparse(url).query, keep_blank_values=True).items()}
        assert query["type"] == "output" and query["subfolder"] == "comfy-cli"
        path = comfy_server.output_dir / query["subfolder"] / query["filename"]
        assert path.is_file() and path.stat().st_size > 0
        files.append(path)
    assert {p.name.rsplit("_", 2)[0] for p in files} == {"demo_fastlane", "demo_baseline", "demo_plot"}
    # no workspace, no config outside the temporary HOME
    assert not (tmp_path / "ComfyUI").exists()


def test_comfy_cli_converts_the_ui_workflow_to_the_shipped_api_twin(comfy_server, tmp_path):
    # comfy-cli converts a UI-format file with the server's /object_info, as the frontend does on "Queue"
    result = comfy(tmp_path, "--json", "run", "--workflow", str(WORKFLOWS / "fastlane-demo-compare.json"),
                   "--print-prompt", "--host", "127.0.0.1", "--port", str(comfy_server.port))
    data = envelope(result)
    assert result.returncode == 0 and data["ok"], data
    converted = data["data"]["prompt"] if "prompt" in data["data"] else data["data"]
    twin = json.loads((WORKFLOWS / "api" / "fastlane-demo-compare.api.json").read_text())
    assert {i: n["class_type"] for i, n in converted.items()} == {i: n["class_type"] for i, n in twin.items()}
    for node_id, node in twin.items():
        assert converted[node_id]["inputs"] == node["inputs"], node["class_type"]
