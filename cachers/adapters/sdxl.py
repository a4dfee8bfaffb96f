"""SDXL (ComfyUI's ``UNetModel``, as built by ``model_base.SDXL`` and the refiner): where a StepCache hooks.

ComfyUI's UNet runs ``input_blocks`` (each output pushed on the skip list ``hs``), the ``middle_block``, then
``output_blocks`` (each pops one skip and concatenates it). Skip branch ``k`` joins input block ``k`` to output block
``n - 1 - k``. Granularities:

- ``deep`` (DeepCache): a *branch* splits the UNet into a shallow part (input blocks ``0..b-1`` and the output blocks
  that consume their skips, ``n-b..n-1``, with ``b = branch + 2``; branch 0 is DeepCache's shallowest branch: the
  input conv and the first res block) and everything deeper. On computed steps ComfyUI's own ``_forward`` runs, and
  an ``output_block_patch`` placed first in the list hands out (through ``transformer_options``) a copy of the deep
  feature ``h`` entering output block ``n-b``, before the other patches touch it; the call's wrapper stores it in the
  cache once ``_forward`` has returned. The patch itself is a pure tensor copy with no cache logic, so Fastlane
  Compile's whole-model graph (and its CUDA graphs) can trace it: computed steps then run one compiled graph, cached
  steps another (the shallow pass, offered compiled by Fastlane Compile), while the cache state (storing, Taylor
  forecasts) stays in Python between them. Fastlane CUDA Graph records the same two passes (``GRAPH_FN_KEY``).
  On cached steps the adapter runs the shallow part itself, with the model's own modules and ComfyUI's
  ``forward_timestep_embed``, takes ``h`` from the cache (reused, or Taylor-forecast
  with order > 0) and never calls the deep blocks. Honoured on that path: ``emb_patch``, ``input_block_patch``,
  ``input_block_patch_after_skip``, ``output_block_patch``, ``forward_timestep_embed_patch``, attention patches
  and ``patches_replace`` of the shallow blocks (``transformer_options["block"]`` and ``transformer_index`` are
  what a full pass sets), ControlNet/T2I-Adapter residuals on the shallow skips (the deep ones are inside the
  cached feature, as computed at the last computed step; ControlNet itself still runs every step).
  Memory: one feature per batch composition and Taylor term, e.g. SDXL 1024² branch 0 with CFG: 2×320×128×128,
  21 MB in fp16.
- ``output``: forecast the UNet's whole output (served by the shared wrapper; no patch at all).

Cost (H100, SDXL 1024², CFG batch 2, fp16, eager): a cached call at branch 0 is ~5 ms of GPU time (~3 ms of CPU
launch) against ~60-90 ms for a full pass, whose CPU launch (~75 ms) is what bounds it in eager ComfyUI.

Claimed: every ComfyUI ``UNetModel`` that is not temporal (SDXL base and refiner are what the tests build; SD1.x/2.x
UNets have the same wiring). Not supported: temporal UNets (SVD), which the adapter does not claim.
"""
from __future__ import annotations

import dataclasses
from typing import ClassVar

import torch
from comfy.ldm.modules.attention import SpatialTransformer, SpatialVideoTransformer
from comfy.ldm.modules.diffusionmodules.openaimodel import UNetModel, apply_control, forward_timestep_embed
from comfy.ldm.modules.diffusionmodules.util import timestep_embedding

from ...compilers.call_wrappers import COMPILE_FN_KEY, GRAPH_FN_KEY, transformer_options_of
from ..session import Call, StepCache

DEEP = "deep"
DEEP_FEATURE_KEY = "fastlane_deep_feature"  # transformer_options key the capture patch hands the feature out under
FIRST_BRANCH_BLOCKS = 2  # branch 0 keeps input blocks 0 and 1 (conv_in, first res block) live, like DeepCache's


@dataclasses.dataclass(frozen=True)
class SDXLAdapter:
    """``branch`` is the DeepCache skip branch (0 = shallowest); ``with_branch`` gives a configured copy."""

    family: ClassVar[str] = "SDXL"
    granularities: ClassVar[tuple[str, ...]] = (DEEP, "output")
    default_granularity: ClassVar[str] = DEEP
    branch: int = 0

    def with_branch(self, branch: int) -> SDXLAdapter:
        return dataclasses.replace(self, branch=branch)

    def supports(self, diffusion_model: torch.nn.Module) -> bool:
        return isinstance(diffusion_model, UNetModel) and not _is_temporal(diffusion_model)

    def features(self, granularity: str) -> tuple[str, ...]:
        return (DEEP,) if granularity == DEEP else ("out",)

    @staticmethod
    def max_branch(unet: UNetModel) -> int:
        return len(unet.input_blocks) - FIRST_BRANCH_BLOCKS

    def shallow_blocks(self, unet: UNetModel) -> int:
        return self.branch + FIRST_BRANCH_BLOCKS

    def check_call(self, cache: StepCache, args: tuple, kwargs: dict) -> None:
        pass  # ControlNet, T2I-Adapter and the UNet patches are all honoured (see the module docstring)

    def install(self, patcher, cache: StepCache) -> None:
        if cache.granularity != DEEP:
            return
        unet = patcher.model.diffusion_model
        if len(unet.input_blocks) != len(unet.output_blocks):
            raise ValueError("Fastlane 'deep' caching needs a UNet whose skip connections pair every input block "
                             "with an output block; use granularity 'output'.")
        if not 0 <= self.branch <= self.max_branch(unet):
            raise ValueError(f"branch must be in 0..{self.max_branch(unet)} for this UNet "
                             f"({len(unet.input_blocks)} input blocks), got {self.branch}")
        first_cached_out = len(unet.output_blocks) - self.shallow_blocks(unet)
        options = patcher.model_options["transformer_options"]
        patches = options.setdefault("patches", {})
        # First in the list: the cache keeps h as the deep blocks made it, and a cached step hands it to every other
        # output_block_patch exactly as a computed step does. A new list, so the input MODEL's options stay as they are.
        patches["output_block_patch"] = [_capture_patch(first_cached_out), *patches.get("output_block_patch", [])]

    def run_call(self, cache: StepCache, call: Call, executor, args: tuple, kwargs: dict) -> torch.Tensor:
        """The diffusion-model call: ComfyUI's own UNet on computed calls (storing the deep feature its capture patch
        handed out), the shallow part on cached ones."""
        if cache.granularity != DEEP:
            return executor(*args, **kwargs)
        options = transformer_options_of(args, kwargs)
        try:
            if not call.compute:
                compile_fn = options.get(COMPILE_FN_KEY)
                shallow = (type(self).shallow_forward if compile_fn is None
                           else compile_fn(type(self), "shallow_forward"))
                unet = executor.class_obj
                graph_fn = options.get(GRAPH_FN_KEY)
                if graph_fn is not None:
                    return graph_fn(f"shallow pass, branch {self.branch}",
                                    lambda feature, *a, **k: shallow(self, unet, feature, *a, **k),
                                    (call.forecast(DEEP), *args), kwargs)
                return shallow(self, unet, call.forecast(DEEP), *args, **kwargs)
            out = executor(*args, **kwargs)
            feature = options.get(DEEP_FEATURE_KEY)
            if feature is None:
                raise RuntimeError("Fastlane DeepCache: the UNet ran without reaching its capture point (another node "
                                   "replaced the UNet's forward?); use granularity 'output'")
            # a copy again: out of a CUDA graph, the feature lives in memory the graph's next replay overwrites
            call.store(DEEP, feature.clone())
            return out
        finally:
            options.pop(DEEP_FEATURE_KEY, None)

    def shallow_forward(self, unet: UNetModel, deep_feature: torch.Tensor, x, timesteps=None, context=None, y=None,
                        control=None, transformer_options=None, **kwargs) -> torch.Tensor:
        """``UNetModel._forward`` (ComfyUI 0.3.x) restricted to the shallow blocks, with ``deep_feature`` (from the
        cache) in place of the deep blocks' output; kept line for line with the original so that every patch sees
        what a full pass would show it. Tensors in, tensor out: Fastlane Compile can trace it as one graph."""
        transformer_options = {} if transformer_options is None else transformer_options
        shallow = self.shallow_blocks(unet)
        n_out = len(unet.output_blocks)
        first_cached_out = n_out - shallow
        transformer_options["original_shape"] = list(x.shape)
        transformer_options["transformer_index"] = 0
        transformer_patches = transformer_options.get("patches", {})

        num_video_frames = kwargs.get("num_video_frames", unet.default_num_video_frames)
        image_only_indicator = kwargs.get("image_only_indicator", None)
        time_context = kwargs.get("time_context", None)
        embed_kwargs = {"time_context": time_context, "num_video_frames": num_video_frames,
                        "image_only_indicator": image_only_indicator}

        assert (y is not None) == (unet.num_classes is not None), \
            "must specify y if and only if the model is class-conditional"
        hs = []
        t_emb = timestep_embedding(timesteps, unet.model_channels, repeat_only=False).to(x.dtype)
        emb = unet.time_embed(t_emb)
        for p in transformer_patches.get("emb_patch", []):
            emb = p(emb, unet.model_channels, transformer_options)
        if unet.num_classes is not None:
            assert y.shape[0] == x.shape[0]
            emb = emb + unet.label_emb(y)

        h = x
        for id in range(shallow):
            transformer_options["block"] = ("input", id)
            h = forward_timestep_embed(unet.input_blocks[id], h, emb, context, transformer_options, **embed_kwargs)
            h = apply_control(h, control, "input")
            for p in transformer_patches.get("input_block_patch", []):
                h = p(h, transformer_options)
            hs.append(h)
            for p in transformer_patches.get("input_block_patch_after_skip", []):
                h = p(h, transformer_options)

        # The deep blocks do not run: advance what they would have advanced, then take their feature from the cache.
        transformer_options["transformer_index"] += _transformers_in(
            [*unet.input_blocks[shallow:], unet.middle_block, *unet.output_blocks[:first_cached_out]])
        if control is not None and control.get("output"):
            for _ in range(first_cached_out):  # the residuals of the deep skips (ComfyUI pops one per output block)
                if control["output"]:
                    control["output"].pop()
        h = deep_feature

        for id in range(first_cached_out, n_out):
            transformer_options["block"] = ("output", id)
            hsp = hs.pop()
            hsp = apply_control(hsp, control, "output")
            for p in transformer_patches.get("output_block_patch", []):
                h, hsp = p(h, hsp, transformer_options)
            h = torch.cat([h, hsp], dim=1)
            del hsp
            output_shape = hs[-1].shape if len(hs) > 0 else None
            h = forward_timestep_embed(unet.output_blocks[id], h, emb, context, transformer_options, output_shape,
                                       **embed_kwargs)
        h = h.type(x.dtype)
        if unet.predict_codebook_ids:
            return unet.id_predictor(h)
        return unet.out(h)


def _capture_patch(first_cached_out: int):
    def fastlane_deep_capture(h: torch.Tensor, hsp: torch.Tensor, transformer_options: dict):
        if transformer_options.get("block") == ("output", first_cached_out):
            # a copy: later output_block_patches (FreeU) may write into h in place
            transformer_options[DEEP_FEATURE_KEY] = h.clone()
        return h, hsp

    fastlane_deep_capture.fastlane_whole_compile_safe = True  # pure: a whole-model compile may trace it
    return fastlane_deep_capture


def _transformers_in(blocks) -> int:
    """How many times ``forward_timestep_embed`` would advance ``transformer_index`` running ``blocks``."""
    return sum(isinstance(layer, SpatialTransformer) for block in blocks if block is not None for layer in block)


def _is_temporal(unet: UNetModel) -> bool:
    return bool(getattr(unet, "use_temporal_resblocks", False)) or any(
        isinstance(m, SpatialVideoTransformer) for m in unet.modules())
