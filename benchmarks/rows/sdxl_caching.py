"""SDXL step-cache rows: DeepCache, and the shared policies on the UNet's deep feature."""
from __future__ import annotations

from .comfy_node import node
from .registry import row


# SDXL step caching: DeepCache (FastlaneDeepCache) and the shared policies on the UNet's deep feature ("auto" = deep).
for _name, _node_id, _widgets, _note in [
    ("deepcache", "FastlaneDeepCache", {}, "DeepCache defaults: interval 5, branch 0 (deep UNet on steps 0,5,10,..)"),
    ("deepcache_i3", "FastlaneDeepCache", {"interval": 3}, "DeepCache interval 3, branch 0 (closer to uncached)"),
    ("deepcache_b1", "FastlaneDeepCache", {"branch": 1}, "DeepCache interval 5, branch 1 (SDXL: all of level 0 live)"),
    ("deepcache_b2", "FastlaneDeepCache", {"branch": 2}, "DeepCache interval 5, branch 2 (SDXL: + one level-1 block)"),
    ("fora2_sdxl", "FastlaneFORA", {"interval": 2}, "FORA interval 2 on the deep feature (granularity auto = deep)"),
    ("fora3_output_sdxl", "FastlaneFORA", {"interval": 3, "granularity": "output"},
     "FORA interval 3 on the whole UNet output"),
    ("taylorseer_sdxl", "FastlaneTaylorSeer", {}, "TaylorSeer defaults (interval 3, order 2, 2 warmup) on the deep feature"),
    ("target0.4_sdxl", "FastlaneTargetSpeedCache", {"compute_fraction": 0.4}, "target 0.4 of the steps, deep feature"),
    ("spectrum0.4_sdxl", "FastlaneSpectrumCache", {"compute_fraction": 0.4}, "Spectrum 0.4 on the deep feature"),
]:
    row(_name, families=("sdxl",), note=_note)(lambda model, _id=_node_id, _w=_widgets: node(_id, model, **_w))
