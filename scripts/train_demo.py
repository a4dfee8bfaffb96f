#!/usr/bin/env python
"""Train an embedded demo model (demo/weights/fastlane-demo-{flux,sdxl,qwen-image,z-image,wan}.safetensors) on the CPU,
deterministically, or the proxy FLUX model (demo/weights/fastlane-proxy-flux.safetensors), seed-fixed, on a GPU.

What it trains, on a few RGB sample images bundled with scikit-image (one class each, mild random crops as
augmentation), in the latent space of the demo's PCA patch codec, always through ComfyUI's own
``BaseModel.apply_model`` and the model's own ``model_sampling`` maths, so the trained trajectory is exactly the one
ComfyUI's samplers follow. A 10% condition dropout trains an unconditional class ("none").

- ``--family flux``: the small ``comfy.supported_models.Flux`` of ``demo/model.py`` (16-channel codec), by rectified
  flow (``ModelSamplingFlux``/``CONST``: x_t = (1-s)*x0 + s*eps, denoised = x_t - s*out), sigma drawn logit-normal and
  shifted the way FLUX shifts it, FLUX guidance embedding varied over 1..5.
- ``--family sdxl``: the small ``comfy.supported_models.SDXL`` UNet of ``demo/sdxl.py`` (4-channel codec), by
  eps-prediction on SD's discrete schedule (``ModelSamplingDiscrete``/``EPS``: x_t = x0 + sigma*eps, denoised =
  x_t - sigma*out), timestep uniform over 0..999 (continuous, so the 'normal' scheduler's in-between timesteps are
  trained too), EDM loss weighting (``--weighting``, see ``sdxl_loss``: the denoised image's error counts the same
  at every sigma), conditioned like SDXL (context tokens + ADM vector of the pooled embedding and the size/crop
  embeddings). Stored in fp16 (7.4 MB). Chosen by 600-step trials, sampled at cfg 5: EDM weighting put 14/16
  preview samples nearest their own class (own-class pixel MSE 0.038) where plain eps MSE put 11/16 (0.053).
- ``--family qwen-image`` / ``--family z-image`` (issue 19): the small ``comfy.supported_models.QwenImage`` of
  ``demo/qwen.py`` (``QwenImageTransformer2DModel``, 6 dual-stream blocks, 3.7M parameters) and ``ZImage`` of
  ``demo/zimage.py`` (``NextDiT`` with Z-Image's modulation and token padding, 4 main layers + 1 refiner layer each,
  4.8M parameters), 16-channel codec, by rectified flow through each class's own ``model_sampling`` (``flow_loss``:
  ModelSamplingFlux with shift 1.15 / ModelSamplingDiscreteFlow with shift 3, sigma = the shifted logit-normal
  timestep), no guidance embedding, conditioned by context tokens only, as those classes are. Init: ``init_dit``
  (zeroed modulations and output projection). Qwen-Image's latents are 5-dim with the ``Wan21`` per-channel latent
  format, which ``fold_latent_format`` folds into the codec. Stored in fp16; the preview (euler/simple, 20 steps;
  Qwen-Image cfg 2.5 against 'none', Z-Image cfg 1) is recorded in the file's metadata.
- ``--family wan`` (issue 19): the small text-to-video ``comfy.supported_models.WAN21_T2V`` of ``demo/wan.py``
  (``WanModel``, dim 128, 3 blocks, 0.83M parameters, 1.7 MB in fp16), trained on panning clips: per class the
  reference clip and ``--crops`` random ones, each 3 latent frames of square crops moving 8 pixels right per frame
  (``demo/wan.training_clips``), every frame encoded by the codec into ``(B, 16, 3, H/8, W/8)`` video latents with
  the ``Wan21`` format folded in. ``flow_loss`` through ModelSamplingDiscreteFlow (shift 8, multiplier 1000: the
  timestep is scaled by it) with *uniform* timesteps (see ``flow_loss``), context tokens only; ``init_dit`` zeroes
  every ``modulation``, the time projection and the head's output. The preview samples 3-frame clips (20 steps, cfg
  ``demo/wan.DEFAULT_CFG`` against 'none') and compares whole clips with each class's reference clip; its PNG shows
  the first and the last frame of each clip.

- ``--family flux-proxy``: the proxy FLUX model of ``demo/proxy.py`` (ComfyUI's ``Flux`` at hidden 192, 3 double +
  6 single blocks, 7.7M parameters, bfloat16 weights, 15.5 MB), on which step-caching defaults are chosen. Trained
  like ``flux`` (``flux_loss``, EMA, 10% condition dropout to the empty prompt) but on procedural scenes with
  compositional prompts (``demo/scenes.py``: sky, ground and 1-3 objects of 7 shapes x 9 colours x 3 sizes at 5
  places or in 4 relations, e.g. "a large red circle left of a small blue star, sunset sky, snowy ground"), a bank of
  ``--bank`` scenes rendered once on ``--device``: it must generalise over prompts rather than memorise images, so
  its trajectory decides the layout early and the details late, as a text-to-image model's does. Its "text encoder"
  is a fixed random word + position table (stored in the file). Made for one GPU: ``--device cuda`` (bf16 autocast,
  batch 512, lr 1e-3, 6000 steps at ~61 ms/step on an H100: ~6 min plus ~35 s of set-up; seed-fixed, not
  bit-identical on CUDA). ``--max-seconds`` stops training cleanly at a wall-clock budget counted from the start
  (set-up included) and saves the EMA weights. The preview samples each ``scenes.EVAL_PROMPTS`` prompt twice with
  ComfyUI's sampler (euler/simple, 20 steps, cfg 1, guidance 3.5) and prints the mean PSNR against the prompt's
  reference render and how many samples are nearest their own reference (a 2,800-step trial on an H100, 170 s:
  16/16, 17.1 dB; the PSNR is bounded by what prompts leave open: exact positions, horizon, textures).
  Train it from the repo root (ComfyUI found through $COMFYUI_PATH, e.g. the carried ``.devcarry/ComfyUI``; its
  samplers need torchsde, carried as a wheel in ``.devcarry/whl`` and installed to /tmp/site):
      PYTHONPATH=/tmp/site:.devcarry/ComfyUI COMFYUI_PATH=.devcarry/ComfyUI python3 scripts/train_demo.py \
          --family flux-proxy --device cuda --max-seconds 480
  A short CPU check: ``--family flux-proxy --steps 30 --batch 8 --bank 256 --out /tmp/p.safetensors``.

Usage:  .venv/bin/python scripts/train_demo.py --family flux|sdxl|qwen-image|z-image|wan|flux-proxy [--steps N]
        [--out PATH]
The committed weights came from (CPU of this workplace, 2 cores; times are wall clock on a shared machine):
    flux:  scripts/train_demo.py --family flux --steps 1200 --batch 16   (930 s of training, final avg loss 0.331,
           as the file's metadata records; its thread count was not recorded, --threads defaults to 1)
    sdxl:  scripts/train_demo.py --family sdxl --steps 2000 --batch 16 --threads 1 --weighting edm   (2026-11-23:
           1197 s of training, 600 ms/step; final avg loss 0.0069 (EDM-weighted); preview 16/16 samples nearest
           their own class; recorded in the file's metadata)
    qwen-image: scripts/train_demo.py --family qwen-image --steps 4000 --batch 16 --threads 1   (2026-12-07:
           694 s of training, 173 ms/step; final avg loss 0.2303; preview (20 steps, cfg 2.5) 16/16 samples nearest
           their own class, mean PSNR to it 18.64 dB; recorded in the file's metadata; 7.4 MB)
    z-image: scripts/train_demo.py --family z-image --steps 2500 --batch 16 --threads 1   (2026-12-07:
           997 s of training, 399 ms/step; final avg loss 0.2515; preview (20 steps, cfg 1) 16/16 samples nearest
           their own class, mean PSNR to it 18.86 dB; recorded in the file's metadata; 9.6 MB)
    wan:   scripts/train_demo.py --family wan --steps 3000 --batch 16 --threads 1   (2026-12-07: 703 s of training,
           234 ms/step; final avg loss 0.3921; preview (20 steps, cfg 4, whole 3-frame clips) 16/16 samples nearest
           their own class's reference clip, mean PSNR to it 14.43 dB; recorded in the file's metadata; 1.7 MB)
(--threads 1: on this shared 2-core machine, 2 threads ran at 1.2-3.5 s/step whenever other work ran beside them.)
Same command, same torch build and thread count: same weights (seeded generators, deterministic algorithms).
ComfyUI is found through $COMFYUI_PATH or .fastlane-env (written by scripts/setup.sh). Needs no network and no GPU
(``flux-proxy`` can use one).
"""
from __future__ import annotations

import argparse
import copy
import importlib.util
import json
import math
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

PACK_DIR = Path(__file__).resolve().parents[1]


sys.path.insert(0, str(PACK_DIR / "tests"))
from comfy_host import comfyui_path  # noqa: E402  (one place that knows how ComfyUI is found)


def import_comfy_and_demo(cpu: bool = True):
    """Import ComfyUI (on the CPU only, unless ``cpu`` is False) and the pack's ``demo`` subpackage on its own (the
    pack's nodes are not needed)."""
    sys.path.insert(0, str(comfyui_path()))
    from comfy.cli_args import args

    args.cpu = cpu
    import comfy.model_management  # noqa: F401  (reads args.cpu at import)

    spec = importlib.util.spec_from_file_location("fastlane_demo", PACK_DIR / "demo" / "__init__.py",
                                                  submodule_search_locations=[str(PACK_DIR / "demo")])
    package = importlib.util.module_from_spec(spec)
    sys.modules["fastlane_demo"] = package
    spec.loader.exec_module(package)
    import fastlane_demo.codec
    import fastlane_demo.data
    import fastlane_demo.model
    import fastlane_demo.proxy
    import fastlane_demo.qwen
    import fastlane_demo.scenes
    import fastlane_demo.sdxl
    import fastlane_demo.wan
    import fastlane_demo.weights_file
    import fastlane_demo.zimage

    return fastlane_demo


def init_weights(diffusion_model) -> None:
    """DiT-style init (ComfyUI's ops leave weights uninitialised): Xavier linears, unit RMSNorm scales, and zeroed
    adaLN modulations and output layer so every block starts as the identity."""
    import torch

    for module in diffusion_model.modules():
        if isinstance(module, torch.nn.Linear):
            torch.nn.init.xavier_uniform_(module.weight)
            if module.bias is not None:
                torch.nn.init.zeros_(module.bias)
    for name, param in diffusion_model.named_parameters():
        if name.endswith(".scale"):  # flux RMSNorm (QK norm)
            torch.nn.init.ones_(param)
        if ".lin." in name or "adaLN_modulation" in name or name.startswith("final_layer.linear"):
            torch.nn.init.zeros_(param)
    for embedder in (diffusion_model.time_in, diffusion_model.guidance_in, diffusion_model.vector_in):
        torch.nn.init.normal_(embedder.in_layer.weight, std=0.02)


def init_unet(unet) -> None:
    """The original UNet's init (ComfyUI's ops leave weights uninitialised): PyTorch's default init of every conv,
    linear and norm, and zeroed last conv of each res block, transformer ``proj_out`` and output conv (the
    ``zero_module`` calls of the original code), so every residual branch starts as the identity."""
    import torch
    from comfy.ldm.modules.attention import SpatialTransformer
    from comfy.ldm.modules.diffusionmodules.openaimodel import ResBlock

    with torch.no_grad():
        for p in unet.parameters():
            p.fill_(float("nan"))  # so a parameter no rule below reaches is caught
    kinds = (torch.nn.Linear, torch.nn.Conv2d, torch.nn.GroupNorm, torch.nn.LayerNorm)
    for module in unet.modules():
        for kind in kinds:
            if isinstance(module, kind):
                kind.reset_parameters(module)  # the torch class's own init (ComfyUI's subclasses skip it)
    zeroed = [unet.out[-1]]
    for module in unet.modules():
        if isinstance(module, ResBlock):
            zeroed.append(module.out_layers[-1])
        if isinstance(module, SpatialTransformer):
            zeroed.append(module.proj_out)
    with torch.no_grad():
        for module in zeroed:
            for p in module.parameters():
                p.zero_()
    bad = [n for n, p in unet.named_parameters() if not torch.isfinite(p).all()]
    if bad:
        raise RuntimeError(f"init left parameters unset: {bad[:5]}")


#: Parameters :func:`init_dit` zeroes, per family (name substrings): the modulations (adaLN gates: every block starts
#: as the identity) and the output projection (the model starts predicting zero).
DIT_ZEROED = {
    "qwen-image": ("img_mod.", "txt_mod.", "norm_out.linear.", "proj_out."),
    "z-image": ("adaLN_modulation.", "final_layer.linear."),
    # Wan: every block's and the head's learned ``modulation`` and the shared time projection (so the gates start at
    # zero), and the head's output projection (the original Wan init zeroes ``head.head`` too)
    "wan": ("modulation", "time_projection.1.", "head.head."),
}


def init_dit(diffusion_model, zeroed: tuple[str, ...]) -> None:
    """DiT-style init of a Qwen-Image, NextDiT or Wan transformer (ComfyUI's ops leave weights uninitialised): Xavier
    linears with zero biases, Xavier patch-embedding convs over their flattened kernel (Wan's ``Conv3d``, as the
    original Wan code does), unit norm scales, small learned pad tokens, and the ``zeroed`` parameters at zero."""
    import torch

    with torch.no_grad():
        for p in diffusion_model.parameters():
            p.fill_(float("nan"))  # so a parameter no rule below reaches is caught
        for module in diffusion_model.modules():
            if isinstance(module, torch.nn.Linear):
                torch.nn.init.xavier_uniform_(module.weight)
                if module.bias is not None:
                    torch.nn.init.zeros_(module.bias)
            elif isinstance(module, (torch.nn.Conv2d, torch.nn.Conv3d)):
                torch.nn.init.xavier_uniform_(module.weight.flatten(1))
                if module.bias is not None:
                    torch.nn.init.zeros_(module.bias)
            elif "Norm" in type(module).__name__:
                for name, p in module.named_parameters(recurse=False):
                    (torch.nn.init.ones_ if name == "weight" else torch.nn.init.zeros_)(p)
        for name, p in diffusion_model.named_parameters():
            if name.endswith("pad_token"):
                torch.nn.init.normal_(p, std=0.02)
            if any(z in name for z in zeroed):
                torch.nn.init.zeros_(p)
    bad = [n for n, p in diffusion_model.named_parameters() if not torch.isfinite(p).all()]
    if bad:
        raise RuntimeError(f"init left parameters unset: {bad[:5]}")


def fold_latent_format(codec, model_format: str):
    """A codec whose raw latents are in ``model_format``'s space, for a model whose latent format is per-channel
    (Qwen-Image: ``Wan21``, a mean and std per channel, on 5-dim latents) while ``demo/codec.py`` applies only
    channel-free formats. The codec is fitted in ``Flux``'s terms; this folds the per-channel affine map into its
    scales and patch mean, so that ``model_format.process_in(raw)`` gives the fitted unit-variance coefficients,
    as a real VAE's latents do after ``process_in``. Decoding is unchanged (the same images come back)."""
    import torch

    from fastlane_demo.codec import PatchCodec, latent_format

    target, stored = latent_format(model_format), latent_format(codec.latent_format)
    unit = torch.zeros(2, codec.channels, 1, 1, 1)
    unit[1] = 1.0
    z = stored.process_in(target.process_out(unit)).flatten(1)  # coefficient/scale 0 and 1 -> the stored z
    offset, gain = z[0], z[1] - z[0]  # stored z = gain * z0 + offset, per channel
    scale = codec.scale / gain
    mean = codec.mean - codec.basis @ (offset * scale)
    return PatchCodec(mean, codec.basis, scale, codec.latent_format)


def _keep_copy(tensor):
    """Autograd pack hook: ComfyUI's Flux blocks add residuals in place (``img += ...``; it is inference code), which
    would overwrite activations autograd saved; saving a copy of each (parameters excepted) keeps them intact. This is
    about 30% cheaper than ``torch.autograd.graph.allow_mutation_on_saved_tensors`` and gives identical gradients."""
    return tensor if tensor.is_leaf and tensor.requires_grad else tensor.clone()


def _same(tensor):
    return tensor


def flux_loss(model, x0, context, y, gen):
    """Rectified-flow velocity MSE at a logit-normal, FLUX-shifted sigma, with FLUX guidance drawn from 1..5."""
    import torch

    batch, device = x0.shape[0], gen.device  # (draws on the generator's device: a CUDA one for --device cuda)
    sampling = model.model_sampling
    sigma = sampling.sigma(torch.sigmoid(torch.randn(batch, generator=gen, device=device))).clamp(1e-3, 1.0)
    noise = torch.randn(x0.shape, generator=gen, device=device)
    x_t = sampling.noise_scaling(sigma, noise, x0)
    guidance = 1.0 + 4.0 * torch.rand(batch, generator=gen, device=device)
    with torch.autograd.graph.saved_tensors_hooks(_keep_copy, _same):
        denoised = model.apply_model(x_t, sigma, c_crossattn=context, y=y, guidance=guidance)
        velocity = (x_t - denoised) / sigma.view(-1, 1, 1, 1)
        return torch.mean((velocity - (noise - x0)) ** 2)


def flow_loss(model, x0, context, y, gen, model_kwargs: Callable | None = None, timesteps: str = "logit-normal"):
    """Rectified-flow velocity MSE through the model's own ``model_sampling`` (Qwen-Image: ModelSamplingFlux, shift
    1.15; Z-Image: ModelSamplingDiscreteFlow, shift 3): sigma = its shifted ``sigma`` of a logit-normal timestep,
    x_t = (1-s)*x0 + s*eps, denoised = x_t - s*out; no guidance embedding and no pooled vector (``y`` is unused).
    ``model_kwargs(context)`` adds what the class's ``extra_conds`` derives from the context (Lumina2:
    ``num_tokens``). Works on 4- and 5-dim (Qwen-Image: B, C, 1, H, W; Wan: B, C, T, H, W) latents.

    ``sampling.sigma`` takes the timestep in the class's own units: ModelSamplingDiscreteFlow divides it by its
    ``multiplier`` (Z-Image: 1, Wan: 1000), so the 0..1 timestep is scaled by it first (without that, Wan trained at
    sigma <= 0.01 only). ``timesteps``: ``logit-normal`` (SD3's, Qwen-Image and Z-Image) or ``uniform`` (Wan: the
    simple scheduler visits timesteps uniformly, and Wan's shift 8 already puts half of them above sigma 0.89; a
    logit-normal draw would leave 2% of training below sigma 0.5)."""
    import torch

    batch = x0.shape[0]
    sampling = model.model_sampling
    if timesteps == "uniform":
        t = torch.rand(batch, generator=gen)
    else:
        t = torch.sigmoid(torch.randn(batch, generator=gen))
    sigma = sampling.sigma(t * getattr(sampling, "multiplier", 1.0)).clamp(1e-3, 1.0)
    noise = torch.randn(x0.shape, generator=gen)
    x_t = sampling.noise_scaling(sigma, noise, x0)
    with torch.autograd.graph.saved_tensors_hooks(_keep_copy, _same):
        denoised = model.apply_model(x_t, sigma, c_crossattn=context, **(model_kwargs(context) if model_kwargs else {}))
        velocity = (x_t - denoised) / sigma.view(-1, *[1] * (x0.ndim - 1))
        return torch.mean((velocity - (noise - x0)) ** 2)


def sdxl_loss(model, x0, context, y, gen, weighting: str = "edm"):
    """Eps MSE on SD's discrete schedule at a uniform (continuous) timestep, weighted per sample by ``weighting``:

    - ``eps``: 1 (plain eps MSE, how SD was trained);
    - ``min-snr``: min(SNR, 5) / SNR with SNR = 1/sigma^2 (Hang et al. 2023: the low-noise steps count less);
    - ``edm``: 1 + sigma^2 (sigma_data = 1), i.e. EDM's weighting: the error of the *denoised* image counts the same
      at every sigma. With eps-prediction, denoised = x_t - sigma * eps, so at sigma 10 an eps error of 0.01 is a
      0.1 error of the image; the plain eps loss barely sees it, and a small model then draws spurious texture in
      the early steps that the later ones keep.

    Weights are divided by their mean over the timestep distribution, so the loss stays about as large as plain eps.
    """
    import torch

    sampling = model.model_sampling
    t = torch.rand(x0.shape[0], generator=gen) * (len(sampling.sigmas) - 1)
    sigma = sampling.sigma(t)
    noise = torch.randn(x0.shape, generator=gen)
    x_t = sampling.noise_scaling(sigma, noise, x0)
    denoised = model.apply_model(x_t, sigma, c_crossattn=context, y=y)
    eps = (x_t - denoised) / sigma.view(-1, 1, 1, 1)
    weight = _loss_weight(weighting, sigma) / _loss_weight(weighting, sampling.sigmas).mean()
    return torch.mean(weight.view(-1, 1, 1, 1) * (eps - noise) ** 2)


def _loss_weight(weighting: str, sigma):
    import torch

    if weighting == "eps":
        return torch.ones_like(sigma)
    if weighting == "min-snr":
        return torch.clamp(5.0 * sigma ** 2, max=1.0)
    if weighting == "edm":
        return 1.0 + sigma ** 2
    raise ValueError(f"unknown loss weighting {weighting!r}")


@dataclass(frozen=True)
class Recipe:
    """What differs between the families: model module, codec, objective, stored dtype, and how to preview."""

    module: Any  # fastlane_demo.model, .sdxl, .qwen or .zimage
    channels: int
    latent_format: str
    context_dim: int
    pooled_dim: int
    init: Callable
    loss: Callable
    adm: Callable  # (model, pooled table) -> the ``y`` each class is trained with
    store_dtype: str
    steps: int
    preview: dict  # sampler settings: steps, cfg, sampler, scheduler, negative (class name or None = the positive)
    model_format: str | None = None  # the model's per-channel latent format, folded into the codec (see above)
    frames: int = 0  # > 0: a video model trained on panning clips of this many latent frames (Wan)


def recipes(demo) -> dict[str, Recipe]:
    flux, sdxl, qwen, zimage, wan = demo.model, demo.sdxl, demo.qwen, demo.zimage, demo.wan
    no_adm = lambda model, pooled: pooled  # noqa: E731  (context-only families: the pooled table is stored, unused)
    return {
        "flux": Recipe(flux, 16, "Flux", flux.UNET_CONFIG["context_in_dim"], flux.UNET_CONFIG["vec_in_dim"],
                       init_weights, flux_loss, lambda model, pooled: pooled, "float32", 1200,
                       dict(steps=20, cfg=1.0, sampler="euler", scheduler="simple", negative=None)),
        "sdxl": Recipe(sdxl, 4, "SDXL", sdxl.CONTEXT_DIM, sdxl.POOLED_DIM, init_unet, sdxl_loss,
                       lambda model, pooled: model.encode_adm(pooled_output=pooled, **sdxl.size_conditioning()),
                       "float16", 2000,
                       dict(steps=25, cfg=sdxl.DEFAULT_CFG, sampler="euler", scheduler="normal",
                            negative=sdxl.UNCONDITIONAL)),
        "qwen-image": Recipe(qwen, 16, "Flux", qwen.CONTEXT_DIM, 1, partial(init_dit, zeroed=DIT_ZEROED["qwen-image"]),
                             flow_loss, no_adm, "float16", 4000,
                             dict(steps=20, cfg=qwen.DEFAULT_CFG, sampler="euler", scheduler="simple",
                                  negative=qwen.UNCONDITIONAL), model_format="Wan21"),
        "z-image": Recipe(zimage, 16, "Flux", zimage.CONTEXT_DIM, 1, partial(init_dit, zeroed=DIT_ZEROED["z-image"]),
                          partial(flow_loss, model_kwargs=lambda context: {"num_tokens": context.shape[1]}), no_adm,
                          "float16", 2500,
                          dict(steps=20, cfg=zimage.DEFAULT_CFG, sampler="euler", scheduler="simple", negative=None)),
        "wan": Recipe(wan, 16, "Flux", wan.CONTEXT_DIM, 1, partial(init_dit, zeroed=DIT_ZEROED["wan"]),
                      partial(flow_loss, timesteps="uniform"), no_adm, "float16", 3000,
                      dict(steps=20, cfg=wan.DEFAULT_CFG, sampler="euler", scheduler="simple",
                           negative=wan.UNCONDITIONAL), model_format="Wan21", frames=wan.FRAMES),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--family", choices=["flux", "sdxl", "qwen-image", "z-image", "wan", "flux-proxy"],
                        default="flux")
    parser.add_argument("--steps", type=int, default=None,
                        help=f"default: flux 1200, sdxl 2000, qwen-image 4000, z-image 2500, wan 3000, flux-proxy "
                             f"{PROXY_DEFAULTS['steps']}")
    parser.add_argument("--batch", type=int, default=None,
                        help=f"default: flux/sdxl 16, flux-proxy {PROXY_DEFAULTS['batch']}")
    parser.add_argument("--lr", type=float, default=None,
                        help=f"default: flux/sdxl 1e-3, flux-proxy {PROXY_DEFAULTS['lr']}")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--crops", type=int, default=96, help="augmented crops per class")
    parser.add_argument("--min-scale", type=float, default=0.85, help="smallest crop side, as a part of the image")
    parser.add_argument("--whiten", type=float, default=0.0,
                        help="codec channel whitening: 0 keeps the PCA spectrum (loss = pixel MSE), 1 whitens")
    parser.add_argument("--ema", type=float, default=0.998)
    parser.add_argument("--weighting", choices=["edm", "eps", "min-snr"], default="edm",
                        help="sdxl: loss weighting over sigma (see sdxl_loss)")
    parser.add_argument("--threads", type=int, default=1,
                        help="CPU threads; 1 is deterministic and robust on shared machines (2 threads on a busy "
                             "2-core box spin-wait and run several times slower)")
    parser.add_argument("--out", type=Path, default=None, help="weights file (default: the committed demo weights)")
    parser.add_argument("--preview", type=Path, default=None,
                        help="PNG grid of samples made with ComfyUI's KSampler after training "
                             "(default out/demo-preview[-sdxl|-flux-proxy].png)")
    proxy = parser.add_argument_group("flux-proxy only")
    proxy.add_argument("--device", default="cpu", help="cpu, or cuda (bf16 autocast; ComfyUI then runs on the GPU)")
    proxy.add_argument("--bank", type=int, default=None,
                       help=f"scenes rendered once at the start and trained on (default {PROXY_DEFAULTS['bank']}; "
                            f"on a CPU {PROXY_CPU_BANK}: rendering takes ~20 ms a scene there)")
    proxy.add_argument("--codec-scenes", type=int, default=1024, help="scenes of the bank the PCA codec is fitted on")
    proxy.add_argument("--max-seconds", type=float, default=None,
                       help="stop training once this much wall-clock time has passed since the start (bank "
                            "rendering included), then save the EMA weights and preview as usual")
    proxy.add_argument("--preview-steps", type=int, default=20, help="sampler steps of the preview")
    opts = parser.parse_args()
    if opts.family == "flux-proxy":
        return train_proxy(opts)
    if opts.device != "cpu":
        parser.error("--device: only --family flux-proxy trains on a GPU")
    opts.batch = opts.batch or 16
    opts.lr = opts.lr or 1e-3

    import torch
    from safetensors.torch import save_file

    demo = import_comfy_and_demo()
    recipe = recipes(demo)[opts.family]
    opts.steps = opts.steps or recipe.steps
    suffix = "" if opts.family == "flux" else f"-{opts.family}"
    opts.preview = opts.preview or PACK_DIR / "out" / f"demo-preview{suffix}.png"
    data, codec_mod, model_mod = demo.data, demo.codec, recipe.module
    torch.manual_seed(opts.seed)
    torch.set_num_threads(opts.threads)
    torch.use_deterministic_algorithms(True)
    out_path = opts.out or model_mod.WEIGHTS
    t_start = time.perf_counter()

    # -- data: augmented crops per class, a PCA codec fitted on them, latents in the model's input space
    gen = torch.Generator().manual_seed(opts.seed)
    classes = data.CLASSES
    images, labels = [], []
    for i, name in enumerate(classes):
        if recipe.frames:  # Wan: the reference clip and --crops random panning clips (demo/wan.py), frame by frame
            crops = model_mod.training_clips(name, opts.crops, gen, recipe.frames).flatten(0, 1)
            images.append(crops)
        else:
            crops = data.augmented_crops(name, opts.crops, min_scale=opts.min_scale, generator=gen)
            images += [data.reference_image(name), crops]
        labels += [i] * (opts.crops + 1)
    images = torch.cat(images)
    labels = torch.tensor(labels)
    codec = codec_mod.fit(images, channels=recipe.channels, whiten=opts.whiten, latent_format=recipe.latent_format)
    if recipe.model_format:
        codec = fold_latent_format(codec, recipe.model_format)
    recon = codec.decode(codec.encode(images))
    psnr = -10 * math.log10(torch.mean((recon - images) ** 2).item())
    model = model_mod.build_model(torch.float32)
    recipe.init(model.diffusion_model)
    latents = codec.encode(images)
    if recipe.frames:  # Wan: (clips, C, T, H, W), as its VAE's video latents
        latents = latents.unflatten(0, (-1, recipe.frames)).movedim(1, 2).contiguous()
    elif model.latent_format.latent_dimensions == 3:  # Qwen-Image: (B, C, 1, H, W), as its VAE's image latents
        latents = latents.unsqueeze(2)
    x0_bank = model.process_latent_in(latents)
    print(f"data: {len(classes)} classes x {opts.crops + 1} {'clips' if recipe.frames else 'images'}"
          f"{f' of {recipe.frames} frames' if recipe.frames else ''} {tuple(images.shape[1:3])},"
          f" codec ({recipe.channels} channels) PSNR {psnr:.1f} dB,"
          f" model-input latent mean {x0_bank.mean():.3f} std {x0_bank.std():.3f}"
          f" [{time.perf_counter() - t_start:.1f}s]", flush=True)

    # -- the fixed "text encoder": a random context/pooled embedding per class, plus the unconditional one
    names = classes + [demo.weights_file.UNCONDITIONAL]
    context_table = torch.randn(len(names), model_mod.CONTEXT_TOKENS, recipe.context_dim, generator=gen)
    pooled_table = torch.randn(len(names), recipe.pooled_dim, generator=gen)
    y_table = recipe.adm(model, pooled_table)
    uncond = len(names) - 1

    # -- training
    params = sum(p.numel() for p in model.diffusion_model.parameters())
    print(f"model: {type(model).__module__}.{type(model).__name__} / {type(model.diffusion_model).__module__}."
          f"{type(model.diffusion_model).__name__}, {params / 1e6:.2f}M parameters", flush=True)
    ema = copy.deepcopy(model.diffusion_model).requires_grad_(False)
    optimizer = torch.optim.AdamW(model.diffusion_model.parameters(), lr=opts.lr, betas=(0.9, 0.99), weight_decay=0.0)
    warmup = max(1, opts.steps // 20)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: min(1.0, (s + 1) / warmup) * (
        0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, s / opts.steps)))))
    loss_fn = partial(recipe.loss, weighting=opts.weighting) if opts.family == "sdxl" else recipe.loss
    model.train()
    t_train, cpu_train, running = time.perf_counter(), time.process_time(), None
    for step in range(1, opts.steps + 1):
        idx = torch.randint(0, len(labels), (opts.batch,), generator=gen)
        x0 = x0_bank[idx]
        cls = torch.where(torch.rand(opts.batch, generator=gen) < 0.1, uncond, labels[idx])
        loss = loss_fn(model, x0, context_table[cls], y_table[cls], gen)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.diffusion_model.parameters(), 1.0)
        optimizer.step()
        schedule.step()
        with torch.no_grad():
            decay = min(opts.ema, (1 + step) / (10 + step))
            for e, p in zip(ema.parameters(), model.diffusion_model.parameters()):
                e.lerp_(p, 1 - decay)
        running = loss.item() if running is None else 0.98 * running + 0.02 * loss.item()
        if step % 100 == 0 or step == opts.steps:
            elapsed, cpu = time.perf_counter() - t_train, time.process_time() - cpu_train
            print(f"step {step:5d}  loss {loss.item():.4f}  avg {running:.4f}  lr {schedule.get_last_lr()[0]:.2e}"
                  f"  {elapsed / step * 1000:.0f} ms/step ({cpu / step * 1000:.0f} ms CPU)  [{elapsed:.0f}s]",
                  flush=True)
    train_s = time.perf_counter() - t_train

    # -- save: EMA weights under ComfyUI's checkpoint prefix, codec, text tables, and provenance metadata
    store = getattr(torch, recipe.store_dtype)
    layout = demo.weights_file
    tensors = {layout.MODEL_PREFIX + k: v.detach().to(store).contiguous() for k, v in ema.state_dict().items()}
    tensors.update({k: v.contiguous() for k, v in codec.state_dict().items()})
    tensors[layout.CONTEXT_KEY] = context_table.contiguous()
    tensors[layout.POOLED_KEY] = pooled_table.contiguous()
    metadata = {
        layout.CLASSES_METADATA: json.dumps(names),
        "fastlane.unet_config": json.dumps(model_mod.UNET_CONFIG),
        **codec.metadata(),
        "fastlane.training": json.dumps({
            "script": "scripts/train_demo.py", "family": opts.family, "steps": opts.steps, "batch": opts.batch,
            "lr": opts.lr, "seed": opts.seed, "crops_per_class": opts.crops, "min_scale": opts.min_scale,
            "whiten": opts.whiten, "ema": opts.ema, "weighting": opts.weighting if opts.family == "sdxl" else None, "image_size": data.IMAGE_SIZE, "threads": opts.threads,
            "torch": torch.__version__, "final_avg_loss": round(running, 5), "train_seconds": round(train_s, 1),
            "codec_psnr_db": round(psnr, 2), "weights_dtype": recipe.store_dtype,
            **({"frames": recipe.frames, "pan_px": model_mod.PAN_PX, "clip_scale": list(model_mod.CLIP_SCALE),
                "clips_per_class": opts.crops + 1} if recipe.frames else {}),
        }),
    }
    out_path.parent.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(out_path), metadata=metadata)
    print(f"wrote {out_path} ({out_path.stat().st_size / 1e6:.1f} MB); training {train_s:.0f}s,"
          f" total {time.perf_counter() - t_start:.0f}s, final avg loss {running:.4f}", flush=True)
    score = preview(demo, recipe, out_path, opts.preview)
    if opts.family in ("qwen-image", "z-image", "wan"):  # the newer files record their preview score too
        training = json.loads(metadata["fastlane.training"])
        training["preview"] = {**recipe.preview, **score}
        metadata["fastlane.training"] = json.dumps(training)
        save_file(tensors, str(out_path), metadata=metadata)
        print(f"recorded the preview score in {out_path}'s metadata", flush=True)


def preview(demo, recipe: Recipe, weights: Path, png: Path) -> dict[str, float]:
    """Sample every class with ComfyUI's real sampler (the family's settings, see ``recipes``) and report how many
    samples are nearest (pixel MSE) to their own class's training image, and their mean PSNR to it."""
    import numpy as np
    import torch

    import comfy.sample

    settings = recipe.preview
    patcher = recipe.module.load_demo_patcher(weights)
    names = recipe.module.class_names(weights)
    size = demo.data.IMAGE_SIZE
    frames = recipe.frames or 1  # Wan: whole clips are compared, every frame
    if recipe.frames:
        refs = torch.stack([recipe.module.reference_clip(n, frames) for n in names])  # (N, T, H, W, 3)
    else:
        refs = torch.cat([demo.data.reference_image(n) for n in names]).unsqueeze(1)
    rows, hits, psnrs = [], 0, []
    for i, name in enumerate(names):
        shape = (2, recipe.channels, *((frames,) if recipe.frames else ()), size // 8, size // 8)
        latent = comfy.sample.fix_empty_latent_channels(patcher, torch.zeros(shape))
        noise = comfy.sample.prepare_noise(latent, 42 + i)
        positive = recipe.module.conditioning(name, path=weights)
        negative = recipe.module.conditioning(settings["negative"], path=weights) if settings["negative"] else positive
        samples = comfy.sample.sample(patcher, noise, settings["steps"], settings["cfg"], settings["sampler"],
                                      settings["scheduler"], positive, negative, latent, disable_pbar=True, seed=42 + i)
        clips = demo.codec.decode(samples, weights).unflatten(0, (2, frames))  # (2, T, H, W, 3)
        mse = ((clips[:, None] - refs[None]) ** 2).mean(dim=(2, 3, 4, 5))
        hits += int((mse.argmin(1) == i).sum())
        psnrs += (-10 * torch.log10(mse[:, i])).tolist()
        print(f"  {name:12s} MSE to own {'clip' if recipe.frames else 'image'} {mse[:, i].mean():.4f}, to nearest other"
              f" {mse[:, [j for j in range(len(names)) if j != i]].min(1).values.mean():.4f}")
        ends = sorted({0, frames - 1})  # the first and the last frame of each clip
        rows.append(torch.cat([refs[i, f] for f in ends] + [clip[f] for clip in clips for f in ends], dim=1))
    score = {"nearest_own": hits, "samples": 2 * len(names), "psnr_db": round(sum(psnrs) / len(psnrs), 2)}
    print(f"preview ({settings}): {hits}/{2 * len(names)} samples nearest to their own class's"
          f" {'clip' if recipe.frames else 'image'}, mean PSNR to it {score['psnr_db']:.2f} dB")
    png.parent.mkdir(parents=True, exist_ok=True)
    from PIL import Image

    Image.fromarray((torch.cat(rows, dim=0).numpy() * 255).round().astype(np.uint8)).save(png)
    what = "; first and last frame of each clip" if recipe.frames else ""
    print(f"wrote {png} (rows: reference | two samples{what})")
    return score


#: flux-proxy defaults, for ~6-7 minutes of training on one H100. Measured there (2026-12-06, torch 2.11, bf16
#: autocast): a step is bound by launching its thousands of small kernels, so it costs about the same at batch 128 to
#: 512 (73-83 ms in deterministic mode, 96 ms at 1024); without deterministic mode batch 512 ran at 61 ms/step
#: (2,800 steps in 170 s); rendering and encoding the 50k-scene bank took 31 s including ComfyUI's import.
PROXY_DEFAULTS: dict[str, Any] = {"steps": 6000, "batch": 512, "lr": 1e-3, "bank": 50000}
PROXY_CPU_BANK = 1024


def train_proxy(opts: argparse.Namespace) -> None:
    """``--family flux-proxy``: render a bank of random scenes, fit the codec on part of it, train the proxy FLUX
    model on it with ``flux_loss`` (EMA, 10% condition dropout to the empty prompt), save, preview."""
    import contextlib

    t_start = time.perf_counter()
    cuda = opts.device.startswith("cuda")
    import torch

    demo = import_comfy_and_demo(cpu=not cuda)
    scenes, proxy, codec_mod = demo.scenes, demo.proxy, demo.codec
    for key, value in PROXY_DEFAULTS.items():
        if getattr(opts, key, None) is None:
            setattr(opts, key, value if cuda or key != "bank" else PROXY_CPU_BANK)
    opts.preview = opts.preview or PACK_DIR / "out" / "demo-preview-flux-proxy.png"
    out_path = opts.out or proxy.WEIGHTS
    device = torch.device(opts.device)
    torch.manual_seed(opts.seed)
    torch.set_num_threads(opts.threads)
    # CPU: bit-identical reruns. CUDA: seed-fixed only (cuDNN attention's backward is not deterministic anyway, and
    # deterministic mode cost 12% of the step time there).
    torch.use_deterministic_algorithms(not cuda)
    gen = torch.Generator().manual_seed(opts.seed)  # scenes, text tables (CPU: the same on every device)
    step_gen = torch.Generator(device).manual_seed(opts.seed + 1)  # batches, sigmas, noise (where the model is)

    # -- data: a bank of random scenes, rendered on the device; the codec fitted on its first scenes
    specs = scenes.sample_specs(opts.bank, gen)
    ids_bank = proxy.token_ids([s.prompt for s in specs]).to(device)
    chunk = 512 if cuda else 32
    fit_count = max(1, min(opts.codec_scenes, opts.bank))
    fit_images = scenes.render_batch(specs[:fit_count], device=device, chunk=chunk)
    codec = codec_mod.fit(fit_images.cpu(), channels=16, whiten=opts.whiten, latent_format="Flux")
    psnr = scenes.psnr(codec.decode(codec.encode(fit_images)), fit_images.cpu()).mean().item()
    model = proxy.build_model(torch.float32)
    init_weights(model.diffusion_model)
    model.to(device)
    latents = [codec.encode(fit_images, device)]
    del fit_images
    for i in range(fit_count, len(specs), chunk):
        latents.append(codec.encode(scenes.render_batch(specs[i:i + chunk], device=device, chunk=chunk), device))
    x0_bank = model.process_latent_in(torch.cat(latents))
    del latents
    tables = {k: v.to(device) for k, v in proxy.fixed_text_tables(gen).items()}
    print(f"data: {opts.bank} scenes {scenes.IMAGE_SIZE}px on {device} (e.g. {specs[0].prompt!r}), codec PSNR"
          f" {psnr:.1f} dB on {fit_count} of them, model-input latent mean {x0_bank.mean():.3f} std"
          f" {x0_bank.std():.3f} [{time.perf_counter() - t_start:.1f}s]", flush=True)

    # -- training
    diffusion = model.diffusion_model
    params = [p for p in diffusion.parameters()]
    print(f"model: {type(model).__module__}.{type(model).__name__} / {type(diffusion).__module__}."
          f"{type(diffusion).__name__}, {sum(p.numel() for p in params) / 1e6:.2f}M parameters; batch {opts.batch},"
          f" {opts.steps} steps, lr {opts.lr:g}{', bf16 autocast' if cuda else ''}", flush=True)
    ema = copy.deepcopy(diffusion).requires_grad_(False)
    ema_params = list(ema.parameters())
    optimizer = torch.optim.AdamW(params, lr=opts.lr, betas=(0.9, 0.99), weight_decay=0.0,
                                  **({"fused": True} if cuda else {}))
    warmup = max(1, opts.steps // 20)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: min(1.0, (s + 1) / warmup) * (
        0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, s / opts.steps)))))
    autocast = (lambda: torch.autocast("cuda", dtype=torch.bfloat16)) if cuda else contextlib.nullcontext
    model.train()
    t_train = t_last = time.perf_counter()
    running, stopped_by_time, step, last_step = torch.zeros((), device=device), False, 0, 0
    for step in range(1, opts.steps + 1):
        idx = torch.randint(0, opts.bank, (opts.batch,), generator=step_gen, device=device)
        drop = torch.rand(opts.batch, generator=step_gen, device=device) < 0.1  # -> the empty prompt
        context, pooled = proxy.encode_ids(torch.where(drop[:, None], 0, ids_bank[idx]), tables)
        with autocast():
            loss = flux_loss(model, x0_bank[idx], context, pooled, step_gen)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        schedule.step()
        with torch.no_grad():
            torch._foreach_lerp_(ema_params, params, 1 - min(opts.ema, (1 + step) / (10 + step)))
            running = loss.detach() if step == 1 else 0.98 * running + 0.02 * loss.detach()
        out_of_time = opts.max_seconds is not None and time.perf_counter() - t_start > opts.max_seconds
        if step % 100 == 0 or step == opts.steps or out_of_time:
            now = time.perf_counter()
            print(f"step {step:6d}  loss {loss.item():.4f}  avg {running.item():.4f}  lr"
                  f" {schedule.get_last_lr()[0]:.2e}  {(now - t_last) / (step - last_step) * 1000:.1f}"
                  f" ms/step (mean {(now - t_train) / step * 1000:.1f})  [train {now - t_train:.0f}s, total"
                  f" {now - t_start:.0f}s]", flush=True)
            t_last, last_step = now, step
        if out_of_time:
            stopped_by_time = step < opts.steps
            print(f"--max-seconds {opts.max_seconds:g} reached after {step} of {opts.steps} steps: stopping",
                  flush=True)
            break
    if cuda:
        torch.cuda.synchronize()
    train_s = time.perf_counter() - t_train

    # -- save: EMA weights in bfloat16, codec, text tables, provenance
    training = {
        "script": "scripts/train_demo.py", "family": opts.family, "steps": opts.steps, "steps_done": step,
        "stopped_by_time": stopped_by_time, "max_seconds": opts.max_seconds, "batch": opts.batch, "lr": opts.lr,
        "seed": opts.seed, "bank": opts.bank, "codec_scenes": fit_count, "whiten": opts.whiten, "ema": opts.ema,
        "condition_dropout": 0.1, "image_size": scenes.IMAGE_SIZE, "device": str(device),
        "gpu": torch.cuda.get_device_name(device) if cuda else None, "autocast": "bfloat16" if cuda else None,
        "threads": opts.threads, "torch": torch.__version__, "final_avg_loss": round(running.item(), 5),
        "train_seconds": round(train_s, 1), "ms_per_step": round(train_s / max(step, 1) * 1000, 2),
        "codec_psnr_db": round(psnr, 2), "weights_dtype": "bfloat16", "text_tables": "fixed random (seeded)",
    }
    proxy.save_weights(out_path, ema.state_dict(), codec, tables, {"fastlane.training": json.dumps(training)})
    print(f"wrote {out_path} ({out_path.stat().st_size / 1e6:.1f} MB); {step} steps in {train_s:.0f}s"
          f" ({train_s / max(step, 1) * 1000:.1f} ms/step), total {time.perf_counter() - t_start:.0f}s, final avg"
          f" loss {running.item():.4f}", flush=True)
    del x0_bank, ema, model, optimizer
    preview_proxy(demo, out_path, opts.preview, opts.preview_steps)


def preview_proxy(demo, weights: Path, png: Path, steps: int = 20) -> dict[str, float]:
    """Sample every evaluation prompt twice (seeds 42+i, 43+i in one batch) with ComfyUI's real sampler (euler/simple,
    cfg 1, guidance 3.5, as FLUX.1-dev is run) and score the samples against each prompt's reference render: mean PSNR
    and how many are nearest (pixel MSE) to their own prompt's reference among all evaluation references."""
    import numpy as np
    import torch

    import comfy.sample

    scenes, proxy = demo.scenes, demo.proxy
    patcher = proxy.load_demo_patcher(weights)
    refs = scenes.eval_references()
    size = refs.shape[1]
    rows, hits, psnrs = [], 0, []
    for i, prompt in enumerate(scenes.EVAL_PROMPTS):
        latent = torch.zeros(2, 16, size // 8, size // 8)
        noise = comfy.sample.prepare_noise(latent, 42 + i)
        positive = proxy.conditioning(prompt, path=weights)
        samples = comfy.sample.sample(patcher, noise, steps, 1.0, "euler", "simple", positive, positive, latent,
                                      disable_pbar=True, seed=42 + i)
        images = demo.codec.decode(samples, weights)
        mse = ((images[:, None] - refs[None]) ** 2).mean(dim=(2, 3, 4))
        hits += int((mse.argmin(1) == i).sum())
        psnrs += scenes.psnr(images, refs[i:i + 1].expand_as(images)).tolist()
        print(f"  PSNR to own reference {sum(psnrs[-2:]) / 2:5.2f} dB  {prompt}")
        rows.append(torch.cat([refs[i], *images], dim=1))
    score = {"psnr_db": sum(psnrs) / len(psnrs), "nearest_own": hits / len(psnrs)}
    print(f"preview (euler/simple, {steps} steps, cfg 1, guidance 3.5): mean PSNR to the prompt's reference"
          f" {score['psnr_db']:.2f} dB; {hits}/{len(psnrs)} samples nearest their own prompt's reference", flush=True)
    png.parent.mkdir(parents=True, exist_ok=True)
    from PIL import Image

    Image.fromarray((torch.cat(rows, dim=0).numpy() * 255).round().astype(np.uint8)).save(png)
    print(f"wrote {png} (rows: reference | two samples)")
    return score


if __name__ == "__main__":
    main()
