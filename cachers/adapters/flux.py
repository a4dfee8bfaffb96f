"""FLUX (ComfyUI's ``comfy.ldm.flux.model.Flux``): where a StepCache hooks.

Granularities:
- ``blocks``: the whole-stack residual. Every double and single block is replaced through ComfyUI's
  ``patches_replace["dit"]``. On computed steps the blocks run and the stack's residual (output of the last single
  block minus the concatenated txt/img entering the first double block) is stored; on cached steps every block
  passes its input through and the last adds the forecast residual. The input embeddings and the final layer run
  on every step, so the timestep's modulation of the output stays exact; they cost ~1-2% of a step.
- ``last_block``: Spectrum's feature: the hidden state leaving the last single block (before the final layer's
  timestep-modulated norm and projection, which run on every step). Cached steps pass every block through and the
  last returns the forecast state itself; unlike ``blocks`` no current input is added back.
- ``attention_mlp``: FORA's original granularity. Per block, the attention and MLP outputs are kept *before* their
  adaLN gates (captured with forward hooks on the block's own ``proj``/``mlp``/``linear2`` modules, registered only
  for the duration of a computed call); on cached steps each block recomputes its modulation from the current
  timestep (one row through ``img_mod``/``txt_mod``/``modulation``) and adds gate × forecast. Costs more memory
  (two tensors per double-block stream, one per single block) and a little more time than ``blocks``.
- ``output``: forecast the model's whole output; cheapest, and works with anything that feeds the model.

On a call served from the cache (every granularity but ``output``) no block runs, so the RoPE table FLUX builds for
the blocks at every call (``pe_embedder``: ~47 ops, ~1 ms of launches on a GPU, a third of such a call) is not
built: a ``post_input`` patch hands ``forward_orig`` no ``img_ids`` on those calls, its own way of skipping RoPE.
Only while it is the last ``post_input`` patch: one added after it (another node's) still gets the ids.
"""
from __future__ import annotations

from typing import Callable

import torch

import comfy.ldm.flux.model
from comfy.ldm.flux.layers import apply_mod

from ...compilers.call_wrappers import transformer_options_of
from ..comfy_hooks import current_call
from ..session import Call, StepCache

BlockFn = Callable[[dict], dict]
ROPE_GATE_KEY = "fastlane_flux_rope_gate"


class RopeGate:
    """FLUX ``post_input`` patch: while ``skip`` is set (a call served from the cache), ``img_ids`` None, so that
    ``forward_orig`` builds no RoPE table for blocks that will not run."""

    fastlane_split_safe = True  # parallel/session.py: only removes work, whatever tokens a Multi-GPU rank holds

    def __init__(self) -> None:
        self.skip = False

    def __call__(self, args: dict) -> dict:
        return {**args, "img_ids": None} if self.skip else args


class FluxAdapter:
    family = "FLUX"
    granularities = ("blocks", "last_block", "attention_mlp", "output")

    def supports(self, diffusion_model: torch.nn.Module) -> bool:
        return isinstance(diffusion_model, comfy.ldm.flux.model.Flux)

    def features(self, granularity: str) -> tuple[str, ...]:
        return {"blocks": ("residual",), "last_block": ("hidden",),
                "attention_mlp": ("double0.img_attn",)}.get(granularity, ("out",))

    def check_call(self, cache: StepCache, args: tuple, kwargs: dict) -> None:
        control = args[6] if len(args) > 6 else kwargs.get("control")
        if control is not None and cache.granularity != "output":
            raise ValueError(f"Fastlane '{cache.granularity}' caching cannot follow a ControlNet, which adds to every block's "
                             "input; set the cacher's granularity to 'output' for graphs with a ControlNet.")

    def install(self, patcher, cache: StepCache) -> None:
        if cache.granularity == "output":
            return
        flux = patcher.model.diffusion_model
        n_double, n_single = len(flux.double_blocks), len(flux.single_blocks)
        if n_double == 0 or n_single == 0:
            raise ValueError(f"Fastlane '{cache.granularity}' caching needs a FLUX model with double and single "
                             "blocks; use granularity 'output'.")
        gate = RopeGate()
        patcher.set_model_post_input_patch(gate)
        patcher.model_options["transformer_options"][ROPE_GATE_KEY] = gate
        existing = patcher.model_options["transformer_options"].get("patches_replace", {}).get("dit", {})
        per_block = cache.granularity == "attention_mlp"
        residual = cache.granularity == "blocks"
        for i in range(n_double):
            key = ("double_block", i)
            patch = (_double_attention_mlp_patch(i, flux.double_blocks[i], existing.get(key)) if per_block
                     else _double_block_patch(first=i == 0 and residual, previous=existing.get(key)))
            patcher.set_model_patch_replace(patch, "dit", *key)
        for i in range(n_single):
            key = ("single_block", i)
            patch = (_single_attention_mlp_patch(i, flux.single_blocks[i], existing.get(key)) if per_block
                     else _single_block_patch(last=i == n_single - 1, previous=existing.get(key), residual=residual))
            patcher.set_model_patch_replace(patch, "dit", *key)

    def run_call(self, cache: StepCache, call: Call, executor, args: tuple, kwargs: dict):
        """Run the call; on a cached one, without the RoPE table (see the module docstring)."""
        options = transformer_options_of(args, kwargs)
        gate = options.get(ROPE_GATE_KEY)
        if gate is None or call.compute or options.get("patches", {}).get("post_input", [None])[-1] is not gate:
            return executor(*args, **kwargs)
        gate.skip = True
        try:
            return executor(*args, **kwargs)
        finally:
            gate.skip = False


def _runner(previous, extra: dict) -> BlockFn:
    if previous is None:
        return extra["original_block"]
    return lambda args: previous(args, extra)  # keep another node's block patch working on computed steps


def _double_block_patch(first: bool, previous) -> Callable[[dict, dict], dict]:
    """``first``: keep the stack's entry (for the ``blocks`` residual)."""

    def patch(args: dict, extra: dict) -> dict:
        call = current_call(args["transformer_options"])
        if call is None or call.compute:
            if call is not None and first:
                call.scratch["entry"] = torch.cat((args["txt"], args["img"]), 1)  # a copy: blocks add in place
            return _runner(previous, extra)(args)
        return {"img": args["img"], "txt": args["txt"]}

    return patch


def _single_block_patch(last: bool, previous, residual: bool = True) -> Callable[[dict, dict], dict]:
    """``last`` stores (computed) or serves (cached) the feature: the stack's residual, or the hidden state itself."""

    def patch(args: dict, extra: dict) -> dict:
        call = current_call(args["transformer_options"])
        if call is None or call.compute:
            out = _runner(previous, extra)(args)
            if call is not None and last:
                if residual:
                    call.store("residual", out["img"] - call.scratch.pop("entry"))
                else:
                    call.store("hidden", out["img"].clone())  # a copy: ControlNet-free, but later code may slice it
            return out
        if last:
            return {"img": args["img"] + call.forecast("residual") if residual else call.forecast("hidden")}
        return {"img": args["img"]}

    return patch


def _run_capturing(run: BlockFn, args: dict, modules: dict[str, torch.nn.Module]) -> tuple[dict, dict]:
    """Run a block with forward hooks that keep the named submodules' outputs, removed again right after."""
    captured: dict[str, torch.Tensor] = {}
    hooks = [m.register_forward_hook(lambda _m, _i, out, name=name: captured.__setitem__(name, out))
             for name, m in modules.items()]
    try:
        return run(args), captured
    finally:
        for h in hooks:
            h.remove()


def _double_attention_mlp_patch(index: int, block: torch.nn.Module, previous) -> Callable[[dict, dict], dict]:
    prefix = f"double{index}."
    captures = {"img_attn": block.img_attn.proj, "img_mlp": block.img_mlp,
                "txt_attn": block.txt_attn.proj, "txt_mlp": block.txt_mlp}

    def patch(args: dict, extra: dict) -> dict:
        call = current_call(args["transformer_options"])
        if call is None:
            return _runner(previous, extra)(args)
        if call.compute:
            out, captured = _run_capturing(_runner(previous, extra), args, captures)
            for name, value in captured.items():
                call.store(prefix + name, value)
            return out
        if getattr(block, "modulation", True):  # ComfyUI < 0.3.7x: every double block has its own modulation
            (img_mod1, img_mod2), (txt_mod1, txt_mod2) = block.img_mod(args["vec"]), block.txt_mod(args["vec"])
        else:
            (img_mod1, img_mod2), (txt_mod1, txt_mod2) = args["vec"]
        img = args["img"] + apply_mod(call.forecast(prefix + "img_attn"), img_mod1.gate)
        img = img + apply_mod(call.forecast(prefix + "img_mlp"), img_mod2.gate)
        txt = args["txt"] + apply_mod(call.forecast(prefix + "txt_attn"), txt_mod1.gate)
        txt = txt + apply_mod(call.forecast(prefix + "txt_mlp"), txt_mod2.gate)
        return {"img": img, "txt": txt}

    return patch


def _single_attention_mlp_patch(index: int, block: torch.nn.Module, previous) -> Callable[[dict, dict], dict]:
    name = f"single{index}.out"

    def patch(args: dict, extra: dict) -> dict:
        call = current_call(args["transformer_options"])
        if call is None:
            return _runner(previous, extra)(args)
        if call.compute:
            out, captured = _run_capturing(_runner(previous, extra), args, {name: block.linear2})
            call.store(name, captured[name])
            return out
        mod = block.modulation(args["vec"])[0] if block.modulation else args["vec"]
        return {"img": args["img"] + apply_mod(call.forecast(name), mod.gate)}

    return patch
