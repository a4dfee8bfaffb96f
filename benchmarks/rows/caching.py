"""Fastlane step-cache rows: each cache node at its defaults, and FLUX caching at explicit settings."""
from __future__ import annotations

from .comfy_node import node
from .registry import row

# Fastlane rows: the pack's own nodes, run through ComfyUI's node API with their schema defaults (rows/__init__.py
# shows a row that passes widgets and chains nodes).

for _name, _node_id in [("fastlane_fora", "FastlaneFORA"), ("fastlane_taylorseer", "FastlaneTaylorSeer"),
                        ("fastlane_adaptive", "FastlaneAdaptiveCache"), ("fastlane_target", "FastlaneTargetSpeedCache")]:
    row(_name, note=f"Fastlane {_node_id} node, defaults")(lambda model, _id=_node_id: node(_id, model))

# FLUX step caching at explicit settings: both granularities of FORA, and the target-speed cacher at two targets.
for _name, _node_id, _widgets, _note in [
    ("fora2_blocks", "FastlaneFORA", {"interval": 2, "granularity": "blocks"}, "FORA interval 2, whole-stack residual"),
    ("fora2_attention_mlp", "FastlaneFORA", {"interval": 2, "granularity": "attention_mlp"},
     "FORA interval 2, per-block attention/MLP outputs gated at the current timestep"),
    ("fora2_output", "FastlaneFORA", {"interval": 2, "granularity": "output"}, "FORA interval 2, whole model output"),
    ("fora3_blocks", "FastlaneFORA", {"interval": 3, "granularity": "blocks"}, "FORA interval 3, whole-stack residual"),
    ("taylorseer_i3o2_attention_mlp", "FastlaneTaylorSeer", {"granularity": "attention_mlp"},
     "TaylorSeer interval 3 order 2, per-block features (memory: 3 derivatives per block feature)"),
    ("target0.3", "FastlaneTargetSpeedCache", {"compute_fraction": 0.3, "order": 2}, "target 0.3 of the steps, order 2, blocks"),
    ("spectrum0.3", "FastlaneSpectrumCache", {"compute_fraction": 0.3}, "Spectrum 0.3 (node defaults), blocks"),
    ("spectrum0.3_last_block", "FastlaneSpectrumCache", {"compute_fraction": 0.3, "granularity": "last_block"},
     "Spectrum 0.3, the last block's hidden state (Spectrum's feature)"),
    ("spectrum0.3_output", "FastlaneSpectrumCache", {"compute_fraction": 0.3, "granularity": "output"},
     "Spectrum 0.3 on the whole model output"),
]:
    row(_name, families=("flux",), note=_note)(lambda model, _id=_node_id, _w=_widgets: node(_id, model, **_w))
