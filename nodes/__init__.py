"""ComfyUI glue: every node module exposes ``NODES``, a list of V3 node classes."""
from __future__ import annotations

from comfy_api.latest import ComfyExtension, io

from . import benchmark_nodes, cache_nodes, compile_nodes, demo_nodes, fusion_nodes, multigpu_nodes, quantize_nodes


class FastlaneExtension(ComfyExtension):
    async def get_node_list(self) -> list[type[io.ComfyNode]]:
        return [*cache_nodes.NODES, *benchmark_nodes.NODES, *demo_nodes.NODES, *compile_nodes.NODES, *quantize_nodes.NODES,
                *fusion_nodes.NODES, *multigpu_nodes.NODES]


async def comfy_entrypoint() -> FastlaneExtension:
    return FastlaneExtension()
