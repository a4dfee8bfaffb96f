"""The Multi-GPU node: MODEL in, a clone whose FLUX / Wan calls run sequence-parallel on N ranks out. Mechanism:
parallel/."""
from __future__ import annotations

import pickle

import torch
from comfy_api.latest import io

from ..parallel import wan
from ..parallel.attention import MODES
from ..parallel.launcher import LaunchSpec
from ..parallel.session import (
    ParallelSession,
    ShardedForward,
    WanShardedForward,
    granularity_refusal,
    wrapper_refusal,
)

CATEGORY = "fastlane/speed"
KEY = "fastlane_multigpu"
DESCRIPTION = (
    "Run one image's (or video's) model calls on several GPUs at once (sequence parallel): the image and text tokens are "
    "split across N processes, and attention joins them (Ulysses: all-to-all over heads; kv_gather: each rank "
    "gathers the full keys/values). ComfyUI's process is rank 0; the node starts N-1 worker processes that take "
    "the weights from rank 0 over NCCL (gloo on CPU), never through the disk, and again after a LoRA changes them. "
    "Same result as one GPU up to float rounding. Workers stop when ComfyUI unloads or frees the MODEL, or exits; "
    "a crashed or hung worker makes the prompt fail with its rank and error (no hang), and the next prompt starts "
    "new ones. Fastlane cachers: the skip decision is made once, on rank 0. Granularity 'output' (any model): a "
    "skipped step makes no parallel call. FLUX 'blocks' / 'last_block' (and 'auto'): the cached feature is gathered "
    "whole on rank 0 and each rank gets its share of the forecast. Refused with a clear error: 'attention_mlp' and "
    "Wan block granularities, ControlNet, "
    "attention masks, model patches that replace blocks, Fastlane Compile / CUDA Graph / Quantize on the same "
    "MODEL (they would apply to rank 0 only), and ComfyUI's lowvram mode. Models: FLUX / FLUX.2, and Wan 2.1/2.2 "
    "text/image-to-video (not VACE, camera, S2V, HuMo, Animate).")


def _family(dm) -> str:
    """"flux" or "wan" when ``dm`` runs the exact ``forward_orig`` the sharded call was written for."""
    import comfy.ldm.flux.model
    import comfy.ldm.wan.model

    if type(dm).forward_orig is comfy.ldm.flux.model.Flux.forward_orig:
        return "flux"
    if type(dm).forward_orig is comfy.ldm.wan.model.WanModel.forward_orig and all(
            type(b) is comfy.ldm.wan.model.WanAttentionBlock for b in dm.blocks):
        return "wan"
    raise ValueError(f"Fastlane Multi-GPU supports FLUX / FLUX.2 and Wan 2.1/2.2 (text/image to video) for now; "
                     f"this MODEL is {type(dm).__name__}")


def _devices(model, world: int, device: str) -> tuple[str, tuple[str, ...]]:
    """(backend, one device per rank): rank 0 keeps ComfyUI's device, the workers take the next GPUs."""
    load = torch.device(model.load_device)
    if device == "auto":
        device = "cuda" if load.type == "cuda" else "cpu"
    if device == "cpu":
        if load.type != "cpu":
            raise ValueError(f"device 'cpu' needs ComfyUI running on the CPU (--cpu); this MODEL runs on {load}")
        return "gloo", ("cpu",) * world
    if load.type != "cuda":
        raise ValueError(f"device 'cuda' needs ComfyUI on a GPU; this MODEL runs on {load}")
    count = torch.cuda.device_count()
    if world > count:
        raise ValueError(f"{world} GPUs asked for, {count} visible")
    first = load.index or 0
    return "nccl", tuple(f"cuda:{(first + r) % count}" for r in range(world))


def _build_spec(model, family: str) -> dict:
    """What a worker needs to build the same diffusion model class on the meta device."""
    base, dm = model.model, model.model.diffusion_model
    cfg = base.model_config
    build = {"family": family, "module": type(dm).__module__, "name": type(dm).__name__, "unet_config": dict(cfg.unet_config),
             "manual_cast_dtype": base.manual_cast_dtype, "fp8": cfg.optimizations.get("fp8", False),
             "scaled_fp8": getattr(cfg, "scaled_fp8", None), "custom_operations": cfg.custom_operations}
    try:
        pickle.dumps(build)
    except Exception as e:
        raise ValueError(f"Fastlane Multi-GPU cannot describe this model to the workers ({e}); custom operations "
                         "(mixed-precision checkpoints) are not supported yet") from e
    return build


def attach(model, gpus: int, attention: str, device: str, timeout_s: float = 600.0):
    """A clone of ``model`` whose FLUX ``forward_orig`` runs on ``gpus`` ranks; returns (clone, session)."""
    from comfy.patcher_extension import CallbacksMP

    dm = model.model.diffusion_model
    family = _family(dm)
    if attention == "ulysses" and dm.num_heads % gpus:
        raise ValueError(f"ulysses splits the {dm.num_heads} attention heads across ranks: pick a rank count that "
                         f"divides {dm.num_heads}, or attention 'kv_gather'")
    cache = model.model_options.get("transformer_options", {}).get("fastlane_cache")
    refusal = wrapper_refusal(model.wrappers) or (cache and granularity_refusal(family, cache.granularity))
    if refusal:
        raise ValueError(refusal)
    backend, devices = _devices(model, gpus, device)
    spec = LaunchSpec(world=gpus, backend=backend, devices=devices, timeout_s=float(timeout_s),
                      threads=torch.get_num_threads())
    session = ParallelSession(spec, attention, _build_spec(model, family))
    patched = model.clone()
    forward = (ShardedForward if family == "flux" else WanShardedForward)(session, dm, model.model)
    patched.add_object_patch("diffusion_model.forward_orig", forward)
    if family == "wan":  # arm the parallel attention for self-attention only (cross-attention stays local)
        for path in wan.self_attention_paths(dm):
            module = dm.get_submodule(path)
            patched.add_object_patch(f"diffusion_model.{path}.forward", wan.SelfAttentionHook(module))
    patched.add_callback_with_key(CallbacksMP.ON_DETACH, KEY, _on_detach(session))
    for event in (CallbacksMP.ON_LOAD, CallbacksMP.ON_PRE_RUN):  # what a load can change is checked once after it
        patched.add_callback_with_key(event, KEY, lambda *args, **kwargs: session.mark_reloaded())
    return patched, session


def _on_detach(session: ParallelSession):
    """ComfyUI detaches with ``unpatch_all`` when it unloads the MODEL (free memory, unload_all_models); a detach
    without it happens on every re-load of a model already loaded, which must keep the workers."""

    def on_detach(patcher, unpatch_all: bool = True) -> None:
        if unpatch_all:
            session.release()

    return on_detach


class FastlaneMultiGPU(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="FastlaneMultiGPU",
            display_name="Fastlane Multi-GPU",
            category=CATEGORY,
            description=DESCRIPTION,
            inputs=[
                io.Model.Input("model", tooltip="A FLUX / FLUX.2 or Wan 2.1/2.2 MODEL (Load Diffusion Model, LoRA, a "
                                                "Fastlane cacher at granularity 'output')."),
                io.Int.Input("gpus", default=2, min=2, max=8,
                             tooltip="Ranks, one process per GPU: ComfyUI's GPU plus gpus-1 more (the next ones)."),
                io.Combo.Input("attention", options=list(MODES), default="ulysses",
                               tooltip="ulysses: all-to-all over heads (least traffic; heads must divide by gpus, "
                                       "FLUX.1 has 24). kv_gather: every rank gathers all keys/values (any gpus)."),
                io.Combo.Input("device", options=["auto", "cuda", "cpu"], default="auto",
                               tooltip="auto: NCCL on GPUs when ComfyUI runs on one, else gloo on CPU processes "
                                       "(for testing: CPU ranks are not faster)."),
                io.Int.Input("timeout", default=600, min=5, max=7200,
                             tooltip="Seconds a collective may wait for a worker before the prompt fails (the "
                                     "first call also sends the weights)."),
            ],
            outputs=[io.Model.Output(tooltip="The model, its calls split across the ranks (the input MODEL is "
                                             "unchanged).")],
        )

    @classmethod
    def execute(cls, model, gpus: int, attention: str, device: str, timeout: int = 600) -> io.NodeOutput:
        if not hasattr(model, "clone") or not hasattr(model, "get_model_object"):
            raise ValueError(f"Fastlane Multi-GPU needs a MODEL (a ComfyUI ModelPatcher), got {type(model).__name__}")
        patched, _ = attach(model, gpus, attention, device, timeout)
        return io.NodeOutput(patched)


NODES = [FastlaneMultiGPU]
