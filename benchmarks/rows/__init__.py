"""The benchmark's rows, apart from the runner (``benchmarks/run.py``): the registry (``registry.py``), the helper
that runs a ComfyUI node from a row (``comfy_node.py``), and the row definitions, registered on import in this order
(``--list`` and ``--rows all`` follow it): ComfyUI / diffusers baselines (``core.py``), Fastlane caches
(``caching.py``), compile / quantize / attention / fusion / CUDA graph stacks (``stacks.py``), SDXL caches
(``sdxl_caching.py``), issue 19's families (``families.py``: opens rows to them, adds their own), and issue 22's
Multi-GPU rows (``multigpu.py``: 2 / 4 GPUs in the same run as the 1-GPU ``eager`` row).

To add a row, decorate a function in one of those files (or in a file passed with ``--extra-rows FILE``, exec'd with
``row``, ``node``, ``CTX``, ``RowSkipped`` in scope)::

    @row("fastlane_fora3_compile", note="FORA interval 3 on top of torch.compile")
    def fastlane_fora3_compile(model):
        return node("TorchCompileModel", node("FastlaneFORA", model, interval=3), backend="inductor")
"""
from __future__ import annotations

import importlib

from .comfy_node import node, node_defaults, resolve_node
from .registry import CTX, ROWS, Context, Row, RowSkipped, row

for _module in ("core", "caching", "stacks", "sdxl_caching", "families", "multigpu"):  # each registers its rows on import, in this order
    importlib.import_module(f"{__name__}.{_module}")

__all__ = ["CTX", "ROWS", "Context", "Row", "RowSkipped", "node", "node_defaults", "resolve_node", "row"]
