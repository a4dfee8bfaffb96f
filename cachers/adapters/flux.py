"""FLUX (ComfyUI's ``comfy.ldm.flux.model.Flux``): where a StepCache hooks.

Granularities:
- ``blocks``: the whole-stack residual. Every double and single block is replaced through ComfyUI's
  ``patches_replace["dit"]``. On computed steps the blocks run and the stack's residual (output of the last single
  block minus the concatenated txt/img entering the first double block) is stored; on cached steps every block
  passes its input through and the last adds the forecast residual. The input embeddings and the final layer run
  on every step, so the timestep's modulation of the output stays exact; they cost ~1-2% of a step.
- ``output``: forecast the model's whole output; cheapest, and works with anything that feeds the model.
"""
from __future__ import annotations

from typing import Callable

import torch

import comfy.ldm.flux.model

from ..comfy_hooks import current_call
from ..session import StepCache

BlockFn = Callable[[dict], dict]


class FluxAdapter:
    family = "FLUX"
    granularities = ("blocks", "output")

    def supports(self, diffusion_model: torch.nn.Module) -> bool:
        return isinstance(diffusion_model, comfy.ldm.flux.model.Flux)

    def features(self, granularity: str) -> tuple[str, ...]:
        return ("residual",) if granularity == "blocks" else ("out",)

    def check_call(self, cache: StepCache, args: tuple, kwargs: dict) -> None:
        control = args[6] if len(args) > 6 else kwargs.get("control")
        if control is not None and cache.granularity == "blocks":
            raise ValueError("Fastlane 'blocks' caching cannot follow a ControlNet, which adds to every block's "
                             "input; set the cacher's granularity to 'output' for graphs with a ControlNet.")

    def install(self, patcher, cache: StepCache) -> None:
        if cache.granularity != "blocks":
            return
        flux = patcher.model.diffusion_model
        n_double, n_single = len(flux.double_blocks), len(flux.single_blocks)
        if n_double == 0 or n_single == 0:
            raise ValueError("Fastlane 'blocks' caching needs a FLUX model with double and single blocks; "
                             "use granularity 'output'.")
        existing = patcher.model_options["transformer_options"].get("patches_replace", {}).get("dit", {})
        for i in range(n_double):
            key = ("double_block", i)
            patcher.set_model_patch_replace(_double_block_patch(first=i == 0, previous=existing.get(key)), "dit", *key)
        for i in range(n_single):
            key = ("single_block", i)
            patcher.set_model_patch_replace(_single_block_patch(last=i == n_single - 1, previous=existing.get(key)), "dit", *key)


def _runner(previous, extra: dict) -> BlockFn:
    if previous is None:
        return extra["original_block"]
    return lambda args: previous(args, extra)  # keep another node's block patch working on computed steps


def _double_block_patch(first: bool, previous) -> Callable[[dict, dict], dict]:
    def patch(args: dict, extra: dict) -> dict:
        call = current_call(args["transformer_options"])
        if call is None or call.compute:
            if call is not None and first:
                call.scratch["entry"] = torch.cat((args["txt"], args["img"]), 1)  # a copy: blocks add in place
            return _runner(previous, extra)(args)
        return {"img": args["img"], "txt": args["txt"]}

    return patch


def _single_block_patch(last: bool, previous) -> Callable[[dict, dict], dict]:
    def patch(args: dict, extra: dict) -> dict:
        call = current_call(args["transformer_options"])
        if call is None or call.compute:
            out = _runner(previous, extra)(args)
            if call is not None and last:
                call.store("residual", out["img"] - call.scratch.pop("entry"))
            return out
        if last:
            return {"img": args["img"] + call.forecast("residual")}
        return {"img": args["img"]}

    return patch
