#!/usr/bin/env python
"""Train the embedded demo model (demo/weights/fastlane-demo-flux.safetensors) on the CPU, deterministically.

What it trains: the small ``comfy.supported_models.Flux`` config of ``demo/model.py``, by rectified flow, on a few RGB
sample images bundled with scikit-image (one class each, mild random crops as augmentation), in the latent space of
the demo's PCA patch codec. Every training step goes through ComfyUI's own ``BaseModel.apply_model`` and the model's
own ``ModelSamplingFlux``/``CONST`` maths (``noise_scaling``: x_t = (1-s)*x0 + s*eps; ``calculate_denoised``:
denoised = x_t - s*out), with sigma drawn logit-normal and shifted the way FLUX shifts it, so the trained trajectory
is exactly the one ComfyUI's samplers follow. A 10% condition dropout trains an unconditional class ("none").

Usage:  .venv/bin/python scripts/train_demo.py [--steps N] [--out PATH]
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
from pathlib import Path

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


def _keep_copy(tensor):
    """Autograd pack hook: ComfyUI's Flux blocks add residuals in place (``img += ...``; it is inference code), which
    would overwrite activations autograd saved; saving a copy of each (parameters excepted) keeps them intact. This is
    about 30% cheaper than ``torch.autograd.graph.allow_mutation_on_saved_tensors`` and gives identical gradients."""
    return tensor if tensor.is_leaf and tensor.requires_grad else tensor.clone()


def _same(tensor):
    return tensor


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=3000)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--crops", type=int, default=96, help="augmented crops per class")
    parser.add_argument("--min-scale", type=float, default=0.85, help="smallest crop side, as a part of the image")
    parser.add_argument("--whiten", type=float, default=0.0,
                        help="codec channel whitening: 0 keeps the PCA spectrum (loss = pixel MSE), 1 whitens")
    parser.add_argument("--ema", type=float, default=0.998)
    parser.add_argument("--threads", type=int, default=1,
                        help="CPU threads; 1 is deterministic and robust on shared machines (2 threads on a busy "
                             "2-core box spin-wait and run several times slower)")
    parser.add_argument("--out", type=Path, default=None, help="weights file (default: the committed demo weights)")
    parser.add_argument("--preview", type=Path, default=PACK_DIR / "out" / "demo-preview.png",
                        help="PNG grid of samples made with ComfyUI's KSampler after training")
    opts = parser.parse_args()

    import torch
    from safetensors.torch import save_file

    demo = import_comfy_and_demo()
    data, codec_mod, model_mod = demo.data, demo.codec, demo.model
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
    codec = codec_mod.fit(images, whiten=opts.whiten)
    recon = codec.decode(codec.encode(images))
    psnr = -10 * math.log10(torch.mean((recon - images) ** 2).item())
    model = model_mod.build_model(torch.float32)
    init_weights(model.diffusion_model)
    x0_bank = model.process_latent_in(codec.encode(images))
    print(f"data: {len(classes)} classes x {opts.crops + 1} images {tuple(images.shape[1:3])},"
          f" codec PSNR {psnr:.1f} dB,"
          f" model-input latent mean {x0_bank.mean():.3f} std {x0_bank.std():.3f}"
          f" [{time.perf_counter() - t_start:.1f}s]", flush=True)

    # -- the fixed "text encoder": a random context/pooled embedding per class, plus the unconditional one
    names = classes + [model_mod.UNCONDITIONAL]
    cfg = model_mod.UNET_CONFIG
    context_table = torch.randn(len(names), model_mod.CONTEXT_TOKENS, cfg["context_in_dim"], generator=gen)
    pooled_table = torch.randn(len(names), cfg["vec_in_dim"], generator=gen)
    uncond = len(names) - 1

    # -- training
    params = sum(p.numel() for p in model.diffusion_model.parameters())
    print(f"model: comfy.model_base.Flux / comfy.ldm.flux.model.Flux, {params / 1e6:.2f}M parameters", flush=True)
    ema = copy.deepcopy(model.diffusion_model).requires_grad_(False)
    optimizer = torch.optim.AdamW(model.diffusion_model.parameters(), lr=opts.lr, betas=(0.9, 0.99), weight_decay=0.0)
    warmup = max(1, opts.steps // 20)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: min(1.0, (s + 1) / warmup) * (
        0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, s / opts.steps)))))
    sampling = model.model_sampling
    model.train()
    t_train, cpu_train, running = time.perf_counter(), time.process_time(), None
    for step in range(1, opts.steps + 1):
        idx = torch.randint(0, len(labels), (opts.batch,), generator=gen)
        x0 = x0_bank[idx]
        cls = torch.where(torch.rand(opts.batch, generator=gen) < 0.1, uncond, labels[idx])
        sigma = sampling.sigma(torch.sigmoid(torch.randn(opts.batch, generator=gen))).clamp(1e-3, 1.0)
        noise = torch.randn(x0.shape, generator=gen)
        x_t = sampling.noise_scaling(sigma, noise, x0)
        guidance = 1.0 + 4.0 * torch.rand(opts.batch, generator=gen)
        with torch.autograd.graph.saved_tensors_hooks(_keep_copy, _same):
            denoised = model.apply_model(x_t, sigma, c_crossattn=context_table[cls], y=pooled_table[cls],
                                         guidance=guidance)
            velocity = (x_t - denoised) / sigma.view(-1, 1, 1, 1)
            loss = torch.mean((velocity - (noise - x0)) ** 2)
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
    tensors = {model_mod.MODEL_PREFIX + k: v.detach().contiguous() for k, v in ema.state_dict().items()}
    tensors.update({k: v.contiguous() for k, v in codec.state_dict().items()})
    tensors[model_mod.CONTEXT_KEY] = context_table.contiguous()
    tensors[model_mod.POOLED_KEY] = pooled_table.contiguous()
    metadata = {
        model_mod.CLASSES_METADATA: json.dumps(names),
        "fastlane.unet_config": json.dumps(cfg),
        "fastlane.training": json.dumps({
            "script": "scripts/train_demo.py", "steps": opts.steps, "batch": opts.batch, "lr": opts.lr,
            "seed": opts.seed, "crops_per_class": opts.crops, "min_scale": opts.min_scale, "whiten": opts.whiten,
            "ema": opts.ema, "image_size": data.IMAGE_SIZE,
            "final_avg_loss": round(running, 5), "train_seconds": round(train_s, 1), "codec_psnr_db": round(psnr, 2),
        }),
    }
    out_path.parent.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(out_path), metadata=metadata)
    print(f"wrote {out_path} ({out_path.stat().st_size / 1e6:.1f} MB); training {train_s:.0f}s,"
          f" total {time.perf_counter() - t_start:.0f}s, final avg loss {running:.4f}", flush=True)
    preview(demo, out_path, opts.preview)


def preview(demo, weights: Path, png: Path) -> None:
    """Sample every class with ComfyUI's real KSampler (euler/simple, 20 steps, cfg 1) and report recognisability."""
    import numpy as np
    import torch

    import comfy.sample

    patcher = demo.model.load_demo_patcher(weights)
    names = demo.model.class_names(weights)
    size = demo.data.IMAGE_SIZE
    rows, hits = [], 0
    for i, name in enumerate(names):
        latent = torch.zeros(2, 16, size // 8, size // 8)
        noise = comfy.sample.prepare_noise(latent, 42 + i)
        positive = demo.model.conditioning(name, path=weights)
        samples = comfy.sample.sample(patcher, noise, 20, 1.0, "euler", "simple", positive, positive, latent,
                                      disable_pbar=True, seed=42 + i)
        image = demo.codec.decode(samples, weights)
        refs = torch.cat([demo.data.reference_image(n) for n in names])
        mse = ((image[:, None] - refs[None]) ** 2).mean(dim=(2, 3, 4))
        hits += int((mse.argmin(1) == i).sum())
        print(f"  {name:12s} MSE to own image {mse[:, i].mean():.4f}, to nearest other"
              f" {mse[:, [j for j in range(len(names)) if j != i]].min(1).values.mean():.4f}")
        rows.append(torch.cat([refs[i], *image], dim=1))
    print(f"preview: {hits}/{2 * len(names)} samples nearest to their own class's image")
    png.parent.mkdir(parents=True, exist_ok=True)
    from PIL import Image

    Image.fromarray((torch.cat(rows, dim=0).numpy() * 255).round().astype(np.uint8)).save(png)
    print(f"wrote {png} (rows: reference | two samples)")


if __name__ == "__main__":
    main()
