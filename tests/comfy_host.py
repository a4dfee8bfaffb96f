"""Bring the real ComfyUI into this test process, with the Fastlane pack loaded the way ComfyUI loads it.

ComfyUI is found as scripts/setup.sh found it (.fastlane-env), or through $COMFYUI_PATH.
The pack's modules are reachable as ``fastlane.<module>`` (an alias of the copy ComfyUI loaded), so tests and
ComfyUI share one set of classes.
"""
from __future__ import annotations

import asyncio
import contextlib
import inspect
import os
import sys
import uuid
from pathlib import Path
from typing import Any

PACK_DIR = Path(__file__).resolve().parents[1]


def comfyui_path() -> Path:
    if os.environ.get("COMFYUI_PATH"):
        return Path(os.environ["COMFYUI_PATH"]).resolve()
    env_file = PACK_DIR / ".fastlane-env"
    if env_file.exists():
        for line in env_file.read_text().splitlines():
            if line.startswith("COMFYUI_PATH="):
                return Path(line.split("=", 1)[1]).resolve()
    raise RuntimeError("No ComfyUI found: run scripts/setup.sh or set COMFYUI_PATH")


_loaded = False


def load(cpu: bool = True) -> None:
    """Import ComfyUI (on the CPU unless told otherwise: benchmarks/run_workflows.py runs graphs on the GPU), its
    built-in extra nodes, and this pack (once per process)."""
    global _loaded
    if _loaded:
        return
    comfy_dir = str(comfyui_path())
    if comfy_dir not in sys.path:
        sys.path.insert(0, comfy_dir)
    from comfy.cli_args import args

    args.cpu = cpu
    with contextlib.suppress(ImportError):  # main.py imports it first: nodes.py then puts comfy/ on sys.path, and
        import utils.extra_config  # noqa: F401  comfy/utils.py would shadow this package (nodes_images needs it)
    args.disable_all_custom_nodes = True  # only this pack, loaded explicitly below
    import comfy.model_management  # noqa: F401  (reads args.cpu at import)
    import nodes

    asyncio.run(nodes.init_extra_nodes(init_custom_nodes=False, init_api_nodes=False))
    ok = asyncio.run(nodes.load_custom_node(str(PACK_DIR)))
    if not ok:
        raise RuntimeError("ComfyUI did not load the Fastlane pack")
    _alias_pack_modules(str(PACK_DIR).replace(".", "_x_"))
    _loaded = True


def _alias_pack_modules(loaded_name: str) -> None:
    for name, module in list(sys.modules.items()):
        if name == loaded_name or name.startswith(loaded_name + "."):
            sys.modules["fastlane" + name[len(loaded_name):]] = module


class _MessageSink:
    """Stands where ComfyUI's PromptServer stands for PromptExecutor: it keeps the messages sent to clients."""

    def __init__(self) -> None:
        self.client_id = None
        self.last_node_id = None
        self.last_prompt_id = None
        self.messages: list[tuple[str, Any]] = []

    def send_sync(self, event, data, sid=None) -> None:
        self.messages.append((event, data))


class GraphRunner:
    """Validates and executes API-format graphs with ComfyUI's own PromptExecutor, keeping its node-output cache
    between runs the way a long-running ComfyUI server does."""

    def __init__(self, cpu: bool = True) -> None:
        load(cpu)
        import execution

        self.sink = _MessageSink()
        if "cache_args" in inspect.signature(execution.PromptExecutor).parameters:
            self.executor = execution.PromptExecutor(self.sink, cache_args={"lru": 0, "ram": 0})
        else:  # ComfyUI before 0.3.7x
            self.executor = execution.PromptExecutor(self.sink)  # its default: the classic per-prompt cache

    def validate(self, prompt: dict) -> tuple[bool, Any, list, dict]:
        import execution

        return asyncio.run(execution.validate_prompt(str(uuid.uuid4()), prompt, None))

    def run(self, prompt: dict) -> dict:
        """Execute ``prompt``; returns ``{"ui": history outputs, "outputs": {node_id: output tuple}}``."""
        valid, error, outputs, node_errors = self.validate(prompt)
        if not valid:
            raise GraphError(f"invalid graph: {error} {node_errors}")
        self.sink.messages.clear()
        self.executor.execute(prompt, str(uuid.uuid4()), {}, outputs)
        if not self.executor.success:
            errors = [d for e, d in self.executor.status_messages if e == "execution_error"]
            raise GraphError(errors[0]["exception_message"] if errors else "execution failed", errors)
        return {"ui": self.executor.history_result["outputs"], "outputs": self.node_outputs(prompt)}

    def node_outputs(self, prompt: dict) -> dict:
        result = {}
        for node_id in prompt:
            entry = self.executor.caches.outputs.get(node_id)
            if entry is not None:
                outputs = getattr(entry, "outputs", entry)  # ComfyUI before 0.3.7x cached the bare output list
                result[node_id] = [values[0] if len(values) == 1 else values for values in outputs]
        return result


class GraphError(RuntimeError):
    def __init__(self, message: str, details: Any = None) -> None:
        super().__init__(message)
        self.details = details
