#!/usr/bin/env python
"""Train an embedded demo model (demo/weights/fastlane-demo-{flux,sdxl}.safetensors) on the CPU, deterministically.

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

Usage:  .venv/bin/python scripts/train_demo.py --family flux|sdxl [--steps N] [--out PATH]
The committed weights came from (CPU of this workplace, 2 cores; times are wall clock on a shared machine):
    flux:  scripts/train_demo.py --family flux --steps 1200 --batch 16   (930 s of training, final avg loss 0.331,
           as the file's metadata records; its thread count was not recorded, --threads defaults to 1)
    sdxl:  scripts/train_demo.py --family sdxl --steps 2000 --batch 16 --threads 1 --weighting edm   (2026-11-23:
           1197 s of training, 600 ms/step; final avg loss 0.0069 (EDM-weighted); preview 16/16 samples nearest
           their own class; recorded in the file's metadata)
(--threads 1: on this shared 2-core machine, 2 threads ran at 1.2-3.5 s/step whenever other work ran beside them.)
Same command, same torch build and thread count: same weights (seeded generators, deterministic algorithms).
ComfyUI is found through $COMFYUI_PATH or .fastlane-env (written by scripts/setup.sh). Needs no network and no GPU.
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


def import_comfy_and_demo():
    """Import ComfyUI (CPU only) and the pack's ``demo`` subpackage on its own (the pack's nodes are not needed)."""
    sys.path.insert(0, str(comfyui_path()))
    from comfy.cli_args import args

    args.cpu = True
    import comfy.model_management  # noqa: F401  (reads args.cpu at import)

    spec = importlib.util.spec_from_file_location("fastlane_demo", PACK_DIR / "demo" / "__init__.py",
                                                  submodule_search_locations=[str(PACK_DIR / "demo")])
    package = importlib.util.module_from_spec(spec)
    sys.modules["fastlane_demo"] = package
    spec.loader.exec_module(package)
    import fastlane_demo.codec
    import fastlane_demo.data
    import fastlane_demo.model
    import fastlane_demo.sdxl
    import fastlane_demo.weights_file

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

    batch = x0.shape[0]
    sampling = model.model_sampling
    sigma = sampling.sigma(torch.sigmoid(torch.randn(batch, generator=gen))).clamp(1e-3, 1.0)
    noise = torch.randn(x0.shape, generator=gen)
    x_t = sampling.noise_scaling(sigma, noise, x0)
    guidance = 1.0 + 4.0 * torch.rand(batch, generator=gen)
    with torch.autograd.graph.saved_tensors_hooks(_keep_copy, _same):
        denoised = model.apply_model(x_t, sigma, c_crossattn=context, y=y, guidance=guidance)
        velocity = (x_t - denoised) / sigma.view(-1, 1, 1, 1)
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

    module: Any  # fastlane_demo.model or fastlane_demo.sdxl
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


def recipes(demo) -> dict[str, Recipe]:
    flux, sdxl = demo.model, demo.sdxl
    return {
        "flux": Recipe(flux, 16, "Flux", flux.UNET_CONFIG["context_in_dim"], flux.UNET_CONFIG["vec_in_dim"],
                       init_weights, flux_loss, lambda model, pooled: pooled, "float32", 1200,
                       dict(steps=20, cfg=1.0, sampler="euler", scheduler="simple", negative=None)),
        "sdxl": Recipe(sdxl, 4, "SDXL", sdxl.CONTEXT_DIM, sdxl.POOLED_DIM, init_unet, sdxl_loss,
                       lambda model, pooled: model.encode_adm(pooled_output=pooled, **sdxl.size_conditioning()),
                       "float16", 2000,
                       dict(steps=25, cfg=sdxl.DEFAULT_CFG, sampler="euler", scheduler="normal",
                            negative=sdxl.UNCONDITIONAL)),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--family", choices=["flux", "sdxl"], default="flux")
    parser.add_argument("--steps", type=int, default=None, help="default: flux 1200, sdxl 2000")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--lr", type=float, default=1e-3)
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
                             "(default out/demo-preview[-sdxl].png)")
    opts = parser.parse_args()

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
        crops = data.augmented_crops(name, opts.crops, min_scale=opts.min_scale, generator=gen)
        images += [data.reference_image(name), crops]
        labels += [i] * (opts.crops + 1)
    images = torch.cat(images)
    labels = torch.tensor(labels)
    codec = codec_mod.fit(images, channels=recipe.channels, whiten=opts.whiten, latent_format=recipe.latent_format)
    recon = codec.decode(codec.encode(images))
    psnr = -10 * math.log10(torch.mean((recon - images) ** 2).item())
    model = model_mod.build_model(torch.float32)
    recipe.init(model.diffusion_model)
    x0_bank = model.process_latent_in(codec.encode(images))
    print(f"data: {len(classes)} classes x {opts.crops + 1} images {tuple(images.shape[1:3])},"
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
        }),
    }
    out_path.parent.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(out_path), metadata=metadata)
    print(f"wrote {out_path} ({out_path.stat().st_size / 1e6:.1f} MB); training {train_s:.0f}s,"
          f" total {time.perf_counter() - t_start:.0f}s, final avg loss {running:.4f}", flush=True)
    preview(demo, recipe, out_path, opts.preview)


def preview(demo, recipe: Recipe, weights: Path, png: Path) -> None:
    """Sample every class with ComfyUI's real sampler (the family's settings, see ``recipes``) and report how many
    samples are nearest (pixel MSE) to their own class's training image."""
    import numpy as np
    import torch

    import comfy.sample

    settings = recipe.preview
    patcher = recipe.module.load_demo_patcher(weights)
    names = recipe.module.class_names(weights)
    size = demo.data.IMAGE_SIZE
    refs = torch.cat([demo.data.reference_image(n) for n in names])
    rows, hits = [], 0
    for i, name in enumerate(names):
        latent = torch.zeros(2, recipe.channels, size // 8, size // 8)
        noise = comfy.sample.prepare_noise(latent, 42 + i)
        positive = recipe.module.conditioning(name, path=weights)
        negative = recipe.module.conditioning(settings["negative"], path=weights) if settings["negative"] else positive
        samples = comfy.sample.sample(patcher, noise, settings["steps"], settings["cfg"], settings["sampler"],
                                      settings["scheduler"], positive, negative, latent, disable_pbar=True, seed=42 + i)
        image = demo.codec.decode(samples, weights)
        mse = ((image[:, None] - refs[None]) ** 2).mean(dim=(2, 3, 4))
        hits += int((mse.argmin(1) == i).sum())
        print(f"  {name:12s} MSE to own image {mse[:, i].mean():.4f}, to nearest other"
              f" {mse[:, [j for j in range(len(names)) if j != i]].min(1).values.mean():.4f}")
        rows.append(torch.cat([refs[i], *image], dim=1))
    print(f"preview ({settings}): {hits}/{2 * len(names)} samples nearest to their own class's image")
    png.parent.mkdir(parents=True, exist_ok=True)
    from PIL import Image

    Image.fromarray((torch.cat(rows, dim=0).numpy() * 255).round().astype(np.uint8)).save(png)
    print(f"wrote {png} (rows: reference | two samples)")


if __name__ == "__main__":
    main()
