"""A real ComfyUI server process with the Fastlane pack, driven over its HTTP and websocket API.

The server runs ComfyUI's own ``main.py`` (found as scripts/setup.sh found it: ``$COMFYUI_PATH`` or ``.fastlane-env``)
on the CPU, listening on 127.0.0.1 only, with every directory it writes to (models, input, output, temp, user, the
database) in a private base directory whose ``custom_nodes/`` holds just a link to this pack, so a user's own
ComfyUI install and its other custom nodes are never touched or loaded.

    with ComfyServer(tmp_dir) as server:
        run = server.run(api_prompt)          # POST /prompt, follow /ws until done, GET /history/{id}
        run.images("9")                       # paths of the PNGs node 9 saved

Needs ``requests`` and ``websocket-client`` (both come with the dev requirements: comfy-cli depends on them).
"""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import requests

PACK_DIR = Path(__file__).resolve().parents[1]
PACK_NAME = "comfyui-fastlane"
READY_NODE = "FastlaneBenchmark"  # answering /object_info/<this> means the server is up *and* loaded the pack


def _env_file() -> dict[str, str]:
    path = PACK_DIR / ".fastlane-env"
    if not path.exists():
        return {}
    return dict(line.split("=", 1) for line in path.read_text().splitlines() if "=" in line)


def comfyui_path() -> Path:
    path = os.environ.get("COMFYUI_PATH") or _env_file().get("COMFYUI_PATH")
    if not path or not (Path(path) / "main.py").exists():
        raise RuntimeError("No ComfyUI found: run scripts/setup.sh or set COMFYUI_PATH")
    return Path(path).resolve()


def comfyui_python() -> str:
    return os.environ.get("FASTLANE_PYTHON") or _env_file().get("PYTHON") or sys.executable


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ServerError(RuntimeError):
    """The server did not start, or stopped, or a run did not finish; the message ends with the server log."""


class PromptRejected(RuntimeError):
    """``POST /prompt`` answered with an error (HTTP 400 for ComfyUI's validation errors)."""

    def __init__(self, status: int, body: dict) -> None:
        error = body.get("error", {})
        super().__init__(f"HTTP {status}: {error.get('message')} {error.get('details', '')} "
                         f"node_errors={json.dumps(body.get('node_errors', {}))}")
        self.status = status
        self.body = body
        self.error = error
        self.node_errors: dict = body.get("node_errors", {})

    def messages(self) -> list[str]:
        """Every error of every node as ``"<class_type> <input>: <message>: <details>"``."""
        out = []
        for node in self.node_errors.values():
            for e in node["errors"]:
                out.append(f"{node['class_type']} {e.get('extra_info', {}).get('input_name', '')}: "
                           f"{e['message']}: {e['details']}")
        return out


@dataclass
class Run:
    """One executed prompt: its websocket messages (in order) and its /history entry."""

    server: ComfyServer
    prompt_id: str
    messages: list[tuple[str, dict]] = field(default_factory=list)
    history: dict = field(default_factory=dict)
    #: Validation errors of outputs ComfyUI dropped while queueing the valid rest (HTTP 200 with node_errors).
    node_errors: dict = field(default_factory=dict)

    @property
    def status(self) -> dict:
        return self.history.get("status", {})

    @property
    def succeeded(self) -> bool:
        return self.status.get("status_str") == "success" and self.status.get("completed", False)

    def events(self, kind: str) -> list[dict]:
        return [data for event, data in self.messages if event == kind]

    def error(self) -> dict | None:
        errors = self.events("execution_error")
        return errors[0] if errors else None

    def ui(self, node_id: str) -> dict:
        """The ui output a node returned (what /history and the ``executed`` message carry)."""
        return self.history.get("outputs", {}).get(node_id, {})

    def images(self, node_id: str, kind: str = "images") -> list[Path]:
        """Files on disk of the images a node reported (SaveImage: output/, PreviewImage: temp/)."""
        return [self.server.file_path(entry) for entry in self.ui(node_id).get(kind, [])]


class ComfyServer:
    """ComfyUI's ``main.py --cpu`` as a subprocess, on 127.0.0.1:<port>, with a private base directory."""

    def __init__(self, base_dir: str | Path, port: int | None = None, comfy_dir: str | Path | None = None,
                 python: str | None = None, extra_args: list[str] | tuple[str, ...] = ("--disable-api-nodes",),
                 startup_timeout: float = 180.0) -> None:
        self.base_dir = Path(base_dir).resolve()
        self.port = port or free_port()
        self.comfy_dir = Path(comfy_dir).resolve() if comfy_dir else comfyui_path()
        self.python = python or comfyui_python()
        self.extra_args = list(extra_args)
        self.startup_timeout = startup_timeout
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = self.base_dir / "comfyui.log"
        self.process: subprocess.Popen | None = None
        self._log_file = None

    # -- directories -------------------------------------------------------------------------------------------
    @property
    def output_dir(self) -> Path:
        return self.base_dir / "output"

    @property
    def input_dir(self) -> Path:
        return self.base_dir / "input"

    @property
    def temp_dir(self) -> Path:
        return self.base_dir / "temp"

    @property
    def models_dir(self) -> Path:
        return self.base_dir / "models"

    def file_path(self, entry: dict) -> Path:
        """Path of an ``{"filename", "subfolder", "type"}`` entry of a ui output."""
        root = {"output": self.output_dir, "temp": self.temp_dir, "input": self.input_dir}[entry.get("type", "output")]
        return root / entry.get("subfolder", "") / entry["filename"]

    def command(self) -> list[str]:
        return [self.python, "main.py", "--cpu", "--listen", "127.0.0.1", "--port", str(self.port),
                "--disable-auto-launch", "--base-directory", str(self.base_dir),
                # the database otherwise lives in <ComfyUI>/user/ whatever --base-directory says
                "--database-url", f"sqlite:///{self.base_dir / 'user' / 'comfyui.db'}",
                *self.extra_args]

    # -- process -----------------------------------------------------------------------------------------------
    def start(self) -> ComfyServer:
        for sub in ("custom_nodes", "models", "input", "output", "temp", "user"):
            (self.base_dir / sub).mkdir(parents=True, exist_ok=True)
        link = self.base_dir / "custom_nodes" / PACK_NAME
        if not link.exists():
            link.symlink_to(PACK_DIR, target_is_directory=True)
        env = {**os.environ, "PYTHONUNBUFFERED": "1", "DO_NOT_TRACK": "1"}
        env.pop("COMFYUI_PATH", None)
        self._log_file = open(self.log_path, "ab")
        self.process = subprocess.Popen(self.command(), cwd=self.comfy_dir, env=env, stdin=subprocess.DEVNULL,
                                        stdout=self._log_file, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            self._wait_ready()
        except BaseException:
            self.stop()
            raise
        return self

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + self.startup_timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise ServerError(f"ComfyUI exited with code {self.process.returncode} while starting"
                                  f"{self.log_tail()}")
            try:
                r = requests.get(f"{self.url}/object_info/{READY_NODE}", timeout=5)
            except requests.ConnectionError:
                time.sleep(0.5)
                continue
            if r.ok and READY_NODE in r.json():
                return
            if r.ok:  # up, but without the pack's nodes
                raise ServerError(f"ComfyUI is up on {self.url} but did not load the Fastlane pack{self.log_tail()}")
            time.sleep(0.5)
        raise ServerError(f"ComfyUI did not answer on {self.url} within {self.startup_timeout:.0f}s{self.log_tail()}")

    def stop(self, timeout: float = 15.0) -> None:
        if self.process is not None and self.process.poll() is None:
            # SIGTERM, not SIGINT: a process started in the background of a non-interactive shell (CI) inherits
            # SIGINT ignored, and ComfyUI has nothing to flush: its state lives in the private base directory
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout)
        if self._log_file is not None:
            self._log_file.close()
            self._log_file = None

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def log_tail(self, chars: int = 6000) -> str:
        return f"\n--- ComfyUI log ({self.log_path}) ---\n{self.log()[-chars:]}"

    def __enter__(self) -> ComfyServer:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    # -- HTTP API ----------------------------------------------------------------------------------------------
    def get(self, path: str, **kwargs) -> requests.Response:
        return requests.get(f"{self.url}{path}", timeout=kwargs.pop("timeout", 30), **kwargs)

    def object_info(self, node_type: str | None = None) -> dict:
        r = self.get(f"/object_info/{node_type}" if node_type else "/object_info")
        r.raise_for_status()
        return r.json()

    def post_prompt(self, prompt: dict, client_id: str | None = None) -> requests.Response:
        """``POST /prompt`` as the frontend sends it; returns the raw response (200 or ComfyUI's 400)."""
        body: dict[str, Any] = {"prompt": prompt}
        if client_id:
            body["client_id"] = client_id
        return requests.post(f"{self.url}/prompt", json=body, timeout=30)

    def queue(self, prompt: dict, client_id: str | None = None) -> dict:
        """Queue ``prompt``; ComfyUI's answer (``prompt_id``, ``number``, ``node_errors``), or
        :class:`PromptRejected` with ComfyUI's validation errors when no output of the prompt is valid.

        When only some outputs fail validation ComfyUI queues the others and answers 200, naming the failed
        nodes in ``node_errors``.
        """
        r = self.post_prompt(prompt, client_id)
        if r.status_code != 200:
            raise PromptRejected(r.status_code, r.json())
        return r.json()

    def history(self, prompt_id: str) -> dict:
        r = self.get(f"/history/{prompt_id}")
        r.raise_for_status()
        return r.json().get(prompt_id, {})

    def run(self, prompt: dict, timeout: float = 300.0) -> Run:
        """Queue ``prompt`` and follow it over the websocket until ComfyUI reports it done, then read its history.

        Raises :class:`PromptRejected` if validation fails; a failed execution comes back as a Run with
        ``succeeded`` False and ``error()`` set (callers assert on it).
        """
        import websocket  # websocket-client

        client_id = uuid.uuid4().hex
        ws = websocket.create_connection(f"ws://127.0.0.1:{self.port}/ws?clientId={client_id}", timeout=timeout)
        try:
            answer = self.queue(prompt, client_id)
            prompt_id = answer["prompt_id"]
            run = Run(self, prompt_id, node_errors=answer.get("node_errors", {}))
            deadline = time.monotonic() + timeout
            while True:
                if time.monotonic() > deadline or self.process is not None and self.process.poll() is not None:
                    raise ServerError(f"prompt {prompt_id} did not finish in {timeout:.0f}s{self.log_tail()}")
                ws.settimeout(max(deadline - time.monotonic(), 0.1))
                try:
                    raw = ws.recv()
                except websocket.WebSocketTimeoutException:
                    continue
                if not isinstance(raw, str):
                    continue  # binary frames: latent previews
                message = json.loads(raw)
                event, data = message["type"], message.get("data", {})
                if data.get("prompt_id", prompt_id) != prompt_id:
                    continue
                run.messages.append((event, data))
                if event == "executing" and data.get("node") is None and data.get("prompt_id") == prompt_id:
                    break
        finally:
            ws.close()
        run.history = self.history(prompt_id)
        return run

    def view(self, entry: dict) -> bytes:
        """The bytes of an image through ``GET /view`` (what the browser shows)."""
        r = self.get("/view", params={"filename": entry["filename"], "subfolder": entry.get("subfolder", ""),
                                      "type": entry.get("type", "output")})
        r.raise_for_status()
        return r.content


def main(argv: list[str] | None = None) -> int:
    """``python tests/comfy_server.py WORKFLOW.api.json`` starts a private server, runs the workflow, prints the
    ui outputs and stops (a quick manual check; scripts/demo.sh is the user-facing demo)."""
    import argparse
    import tempfile

    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("workflow")
    parser.add_argument("--timeout", type=float, default=300.0)
    args = parser.parse_args(argv)
    prompt = json.loads(Path(args.workflow).read_text())
    with tempfile.TemporaryDirectory(prefix="fastlane-comfy-") as tmp, ComfyServer(tmp) as server:
        run = server.run(prompt, timeout=args.timeout)
        print(json.dumps({"status": run.status, "outputs": run.history.get("outputs", {})}, indent=1))
        return 0 if run.succeeded else 1


if __name__ == "__main__":
    sys.exit(main())
