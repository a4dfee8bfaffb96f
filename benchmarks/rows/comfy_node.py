"""Running a ComfyUI node from a row: ``node("EasyCache", model, ...)`` executes it as ComfyUI's executor would,
with its schema defaults for every widget not given."""
from __future__ import annotations

import asyncio
import importlib
import inspect
from typing import Any

from .registry import CTX


# Core nodes we use, importable without nodes.init_extra_nodes() (which would import ~100 comfy_extras modules).
CORE_EXTRA_NODES = {
    "TorchCompileModel": ("comfy_extras.nodes_torch_compile", "TorchCompileModel"),
    "EasyCache": ("comfy_extras.nodes_easycache", "EasyCacheNode"),
    "LazyCache": ("comfy_extras.nodes_easycache", "LazyCacheNode"),
    "ModelSamplingFlux": ("comfy_extras.nodes_model_advanced", "ModelSamplingFlux"),
}


def resolve_node(node: str | type) -> type:
    if not isinstance(node, str):
        return node
    if node in CORE_EXTRA_NODES:
        mod, attr = CORE_EXTRA_NODES[node]
        return getattr(importlib.import_module(mod), attr)
    import nodes

    if node in nodes.NODE_CLASS_MAPPINGS:
        return nodes.NODE_CLASS_MAPPINGS[node]
    raise KeyError(f"node {node!r} not registered (is the Fastlane pack loaded? pack: {CTX.pack_status})")


def node_defaults(cls: type) -> tuple[dict[str, Any], str | None]:
    """Widget defaults of a V3 or V1 node, and the name of its first MODEL input."""
    defaults: dict[str, Any] = {}
    model_key = None
    if hasattr(cls, "GET_SCHEMA"):
        for inp in cls.GET_SCHEMA().inputs:
            if str(getattr(inp, "io_type", "")) == "MODEL" and model_key is None:
                model_key = inp.id
                continue
            default = getattr(inp, "default", None)
            if default is None and getattr(inp, "options", None):
                default = inp.options[0]
            if default is not None:
                defaults[inp.id] = default
        return defaults, model_key
    spec = cls.INPUT_TYPES()
    for section in ("required", "optional"):
        for key, value in spec.get(section, {}).items():
            kind = value[0]
            opts = value[1] if len(value) > 1 and isinstance(value[1], dict) else {}
            if kind == "MODEL" and model_key is None:
                model_key = key
            elif isinstance(kind, (list, tuple)) and kind:
                defaults[key] = opts.get("default", kind[0])
            elif "default" in opts:
                defaults[key] = opts["default"]
    return defaults, model_key


def node(node: str | type, model: Any = None, output: int = 0, **inputs: Any) -> Any:
    """Run a ComfyUI node (V3 ``io.ComfyNode`` or V1) the way the executor does and return output ``output``.

    ``node`` is a node_id (``"EasyCache"``, or any id registered by the Fastlane pack) or the class itself; widgets
    you don't pass get their schema defaults; ``model`` goes to the node's first MODEL input. V3: the executor calls
    ``PREPARE_CLASS_CLONE(hidden)`` then ``execute``; the result is ``NodeOutput.result[output]`` (= ``.args``).
    """
    cls = resolve_node(node)
    kwargs, model_key = node_defaults(cls)
    if model is not None:
        if model_key is None:
            raise TypeError(f"{cls.__name__} has no MODEL input")
        kwargs[model_key] = model
    kwargs.update(inputs)
    if hasattr(cls, "PREPARE_CLASS_CLONE"):  # V3
        out = cls.PREPARE_CLASS_CLONE({}).execute(**kwargs)
        if inspect.isawaitable(out):
            out = asyncio.run(out)
        result = out.result if hasattr(out, "result") else out
        return result[output]
    obj = cls()
    out = getattr(obj, cls.FUNCTION)(**kwargs)
    if inspect.isawaitable(out):
        out = asyncio.run(out)
    if isinstance(out, dict):
        out = out["result"]
    return out[output]
