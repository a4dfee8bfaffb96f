"""Fastlane: faster FLUX and SDXL sampling in ComfyUI, measured honestly.

ComfyUI imports this package from ``custom_nodes/`` and calls :func:`comfy_entrypoint` (V3 node API).
"""
from .nodes import comfy_entrypoint

__all__ = ["comfy_entrypoint"]
