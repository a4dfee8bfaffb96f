"""Run the shipped workflow files end to end, as a headless ComfyUI runs an API-format workflow, and time each image.

    python3 benchmarks/run_workflows.py --workflows sdxl-baseline,sdxl-balanced,sdxl-fastest,sdxl-compare \
        --images 3 --out out/workflows

benchmarks/run.py times the sampler around a model built in memory. This times what a user waits for: ComfyUI's own
PromptExecutor validates and executes the workflow file from ``workflows/api/`` (model loaders, text encoders, the
Fastlane nodes, KSampler, VAE decode, SaveImage), the way the server executes a queued prompt. No real weights are
reachable here, so the model files the workflows name are written first: the real architectures (SDXL's checkpoint;
FLUX.1-dev's diffusion model, CLIP-L, T5-XXL and autoencoder) with random weights, each in the layout of the
published file, so that ComfyUI's loaders detect and load them as they load the real ones (and keep them in RAM
until sampling moves them to the GPU, as with real files).

All workflows run in one process, in the order given, each ``--images`` times with a new seed each time: ComfyUI
then executes the sampler and what follows again and keeps the loader's and text encoders' outputs, as a running
server does. Image 1 of a workflow includes its quantization, compilation and graph recording (and, for the first
workflow of a family, loading the model files); the later images are what each further image costs. ``sampling s``
is the time inside ``comfy.sample.sample`` (the sampler alone; the rest of an image is text encoding, VAE decode and
writing the PNG).
Random weights: the images are noise; timing and "it runs" only.
"""
from __future__ import annotations

import argparse
import copy
import json
import logging
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

BENCH_DIR = Path(__file__).resolve().parent
PACK_DIR = BENCH_DIR.parent
sys.path[:0] = [str(BENCH_DIR), str(PACK_DIR / "tests")]

import run as bench  # noqa: E402  (benchmarks/run.py: log, module stand-ins, the environment record)
import small_card  # noqa: E402
import workflow_lora  # noqa: E402

WORKFLOWS = PACK_DIR / "workflows" / "api"
# comfy.sd.VAE's SD1.x/SDXL autoencoder (its default when a state dict names no other kind); FLUX's has 16 channels
SD_VAE_CONFIG = {"double_z": True, "z_channels": 4, "resolution": 256, "in_channels": 3, "out_ch": 3, "ch": 128,
                 "ch_mult": [1, 2, 4, 4], "num_res_blocks": 2, "attn_resolutions": [], "dropout": 0.0}


# the diffusion model file each family's workflows load (the random LoRA reads its shapes)
MODEL_FILES = {"sdxl": "checkpoints/sd_xl_base_1.0.safetensors", "flux": "diffusion_models/flux1-dev.safetensors"}


def write_random_sdxl_files(models_dir: Path, device) -> dict[str, float]:
    """SDXL (UNet, CLIP-L and CLIP-G, VAE) with random weights in the layout of ``sd_xl_base_1.0.safetensors``,
    written by ComfyUI's own ``save_checkpoint``, so ``CheckpointLoaderSimple`` detects and loads it as the real
    file."""
    import comfy.sd
    import models
    import torch
    from comfy.ldm.models.autoencoder import AutoencoderKL

    built = models.build_model("sdxl", device=device, dtype=torch.float16)
    clip = comfy.sd.CLIP(target=built.patcher.model.model_config.clip_target(), model_options=_placed(device))
    models.random_init_(clip.cond_stage_model, seed=1)
    autoencoder = AutoencoderKL(ddconfig=SD_VAE_CONFIG, embed_dim=4)
    models.random_init_(autoencoder, seed=2)
    path = models_dir / MODEL_FILES["sdxl"]
    comfy.sd.save_checkpoint(str(path), built.patcher, clip, comfy.sd.VAE(sd=autoencoder.state_dict()),
                             metadata={"fastlane": bench.RANDOM_WEIGHTS_NOTE})
    return _sizes(path)


def write_random_flux_files(models_dir: Path, device) -> dict[str, float]:
    """FLUX.1-dev's four files with random weights, each in the layout its ComfyUI loader reads: the diffusion model
    (``UNETLoader``), CLIP-L and T5-XXL fp16 (``DualCLIPLoader``, type flux) and the 16-channel autoencoder
    (``VAELoader``)."""
    import comfy.sd
    import comfy.utils
    import models
    import torch
    from comfy.ldm.models.autoencoder import AutoencodingEngine

    built = models.build_model("flux", device=device, dtype=torch.bfloat16)
    target = built.patcher.model.model_config.clip_target()
    paths = {"unet": models_dir / MODEL_FILES["flux"],
             "clip_l": models_dir / "text_encoders" / "clip_l.safetensors",
             "t5xxl": models_dir / "text_encoders" / "t5xxl_fp16.safetensors",
             "vae": models_dir / "vae" / "ae.safetensors"}
    comfy.utils.save_torch_file(built.patcher.model.diffusion_model.state_dict(), str(paths["unet"]))
    del built
    clip = comfy.sd.CLIP(target=target, model_options=_placed(device))
    models.random_init_(clip.cond_stage_model, seed=1)
    encoders = clip.cond_stage_model.state_dict()
    for name in ("clip_l", "t5xxl"):  # each file holds one encoder's transformer, as the published files do
        prefix = f"{name}.transformer."
        comfy.utils.save_torch_file({k[len(prefix):]: v for k, v in encoders.items() if k.startswith(prefix)},
                                    str(paths[name]))
    del clip, encoders
    ddconfig = {**SD_VAE_CONFIG, "z_channels": 16}
    autoencoder = AutoencodingEngine(
        regularizer_config={"target": "comfy.ldm.models.autoencoder.DiagonalGaussianRegularizer"},
        encoder_config={"target": "comfy.ldm.modules.diffusionmodules.model.Encoder", "params": ddconfig},
        decoder_config={"target": "comfy.ldm.modules.diffusionmodules.model.Decoder", "params": ddconfig})
    models.random_init_(autoencoder, seed=2)
    comfy.utils.save_torch_file(autoencoder.state_dict(), str(paths["vae"]))
    return _sizes(*paths.values())


WRITERS = {"sdxl": write_random_sdxl_files, "flux": write_random_flux_files}


def _placed(device) -> dict:
    return {"initial_device": device, "load_device": device, "offload_device": device}


def _sizes(*paths: Path) -> dict[str, float]:
    return {p.name: round(p.stat().st_size / 2**30, 2) for p in paths}


def write_model_files(families: list[str], models_dir: Path, device, lora: bool = False) -> dict[str, Any]:
    """The random-weight files the workflows of ``families`` name, under ``models_dir``'s ComfyUI folders (and a
    random LoRA per family with ``lora``: one family per run then, the LoRA file name being the same)."""
    import comfy.model_management as mm
    import folder_paths

    for folder in ("checkpoints", "diffusion_models", "text_encoders", "vae", "loras"):
        (models_dir / folder).mkdir(parents=True, exist_ok=True)
        folder_paths.add_model_folder_path(folder, str(models_dir / folder), is_default=True)
    started, files = time.perf_counter(), {}
    for family in families:
        files.update(WRITERS[family](models_dir, device))
        if lora:
            files.update(workflow_lora.write_random_lora(models_dir / MODEL_FILES[family], family,
                                                         models_dir / "loras"))
        mm.unload_all_models()
        mm.soft_empty_cache()
    return {"files_gib": files, "written_s": round(time.perf_counter() - started, 1)}


class FastlaneLines(logging.Handler):
    """Keeps the Fastlane nodes' log lines (compilation, graph recording, cache summaries) of the current image."""

    def __init__(self) -> None:
        super().__init__(level=logging.INFO)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        msg = record.getMessage()
        if msg.startswith("Fastlane") or record.levelno >= logging.WARNING:
            self.lines.append(msg)
            print(f"    [{record.levelname.lower()}] {msg}", flush=True)


class SamplerClock:
    """Times each ``comfy.sample.sample`` call (what KSampler runs), synchronised, for the sampler's share of an
    image."""

    def __init__(self, device) -> None:
        import comfy.sample

        self.device, self.calls = device, []
        self._original = comfy.sample.sample
        comfy.sample.sample = self._timed

    def _timed(self, *args, **kwargs):
        bench.sync(self.device)
        started = time.perf_counter()
        try:
            return self._original(*args, **kwargs)
        finally:
            bench.sync(self.device)
            self.calls.append(time.perf_counter() - started)


def prepared(prompt: dict, image: int, size: int | None, steps: int | None) -> dict:
    """The workflow with a new seed per image (so ComfyUI samples again) and, for smoke runs, a smaller job."""
    prompt = copy.deepcopy(prompt)
    for node in prompt.values():
        inputs = node["inputs"]
        if node["class_type"] == "KSampler":
            inputs["seed"] += image
            if steps:
                inputs["steps"] = steps
        if size and node["class_type"] in ("EmptyLatentImage", "EmptySD3LatentImage"):
            inputs["width"] = inputs["height"] = size
    return prompt


def saved_images(result: dict, output_dir: Path) -> list[Path]:
    return [output_dir / entry["subfolder"] / entry["filename"]
            for ui in result["ui"].values() for entry in ui.get("images", []) if entry.get("type") == "output"]


def run_workflow(runner, name: str, args, output_dir: Path, lines: FastlaneLines, clock: SamplerClock) -> dict:
    prompt = json.loads((WORKFLOWS / f"fastlane-{name}.api.json").read_text())
    strengths = args.lora_strengths
    if strengths:
        prompt = workflow_lora.with_lora(prompt)
        name = f"{name}+lora"
    images = []
    for i in range(args.images):
        lines.lines, clock.calls = [], []
        bench.reset_peak(clock.device)
        strength = strengths[i % len(strengths)] if strengths else None
        if strength is not None:
            workflow_lora.set_strength(prompt, strength)
        bench.log(f"{name}: image {i + 1}/{args.images}" + (f", LoRA strength {strength}" if strengths else ""))
        started = time.perf_counter()
        try:
            result = runner.run(prepared(prompt, i, args.size, args.steps))
        except Exception as e:  # noqa: BLE001  (recorded: the table says which workflow failed and why)
            bench.log(f"{name}: image {i + 1} FAILED: {type(e).__name__}: {e}")
            return {"workflow": name, "status": f"error: {type(e).__name__}: {str(e)[:300]}", "images": images}
        bench.sync(clock.device)
        files = saved_images(result, output_dir)
        texts = [t for ui in result["ui"].values() for t in ui.get("text", [])]
        images.append({"image_s": round(time.perf_counter() - started, 3),
                       "sampling_s": [round(s, 3) for s in clock.calls],
                       "saved": [{"file": f.name, "bytes": f.stat().st_size} for f in files if f.is_file()],
                       "missing": [f.name for f in files if not f.is_file()],
                       "fastlane_log": list(lines.lines), "text_outputs": texts,
                       "peak_gib": bench.peak_gib(clock.device)})
        bench.log(f"{name}: image {i + 1}: {images[-1]['image_s']:.2f} s, sampler {images[-1]['sampling_s']}, "
                  f"peak {images[-1]['peak_gib']} GiB allocated")
    return {"workflow": name, "status": "ok", "images": images}


def summary_row(result: dict, baseline: dict | None) -> dict:
    """Image 1, the median of the later images, and (for one-sampler workflows) the ratio to the baseline's."""
    images = result["images"]
    later = images[1:] or images
    row = {"workflow": result["workflow"], "status": result["status"],
           "first_image_s": images[0]["image_s"] if images else None,
           "peak_gib": max((i.get("peak_gib") or 0 for i in images), default=None) or None,
           "image_s": statistics.median(i["image_s"] for i in later) if later else None,
           "sampling_s": [statistics.median(s) for s in zip(*(i["sampling_s"] for i in later))] if later else []}
    if baseline and len(row["sampling_s"]) == 1 == len(baseline["sampling_s"]) and row["image_s"]:
        row["vs_baseline_image"] = round(baseline["image_s"] / row["image_s"], 2)
        row["vs_baseline_sampling"] = round(baseline["sampling_s"][0] / row["sampling_s"][0], 2)
    return row


def markdown(env: dict, model_files: dict, rows: list[dict], results: list[dict], args) -> str:
    out = [f"# Shipped workflows, end to end — {bench.RANDOM_WEIGHTS_NOTE}", "",
           f"- device: {env.get('device_name')} · torch {env['torch']} · ComfyUI {env['comfyui']} · "
           f"date (UTC) {env['date_utc']}",
           f"- command: `{env['command']}`",
           *([f"- simulated card: {env['simulated_card']['vram_gb']} GB of the {env['simulated_card']['gpu_total_gb']}"
              f" GB GPU (ComfyUI reserves the rest; torch allocations past it raise OOM; small_card.py)"]
             if env.get("simulated_card") else []),
           f"- model files (random weights, written in {model_files['written_s']} s, read by the workflows' own "
           f"ComfyUI loaders): " + ", ".join(f"{name} {gib} GiB" for name, gib in model_files["files_gib"].items()),
           f"- {args.images} image(s) per workflow, a new seed each; size/steps as in the files"
           + (f", except size {args.size}" if args.size else "") + (f", steps {args.steps}" if args.steps else "")
           + (f"; a random LoRA (rank {workflow_lora.RANK}) after the model loader, image i at strength "
              f"{args.lora_strengths} (cycled)" if args.lora_strengths else ""),
           "", "| workflow | status | image 1 s | later images s (median) | sampler s | vs baseline: image | "
           "vs baseline: sampler | peak GiB |", "|---|---|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        out.append(f"| {r['workflow']} | {r['status'][:60]} | {r['first_image_s'] or '–'} | {r['image_s'] or '–'} | "
                   f"{' + '.join(f'{x:.3f}' for x in r['sampling_s']) or '–'} | "
                   f"{r.get('vs_baseline_image', '–')} | {r.get('vs_baseline_sampling', '–')} | "
                   f"{r.get('peak_gib') or '–'} |")
    out += ["", "Fastlane's log of each workflow's first image:"]
    for res in results:
        first = res["images"][0]["fastlane_log"] if res["images"] else []
        out.append(f"- **{res['workflow']}**: " + ("; ".join(first) if first else "(none)"))
    return "\n".join(out) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--workflows", default="sdxl-baseline,sdxl-balanced,sdxl-fastest,sdxl-compare",
                   help="names under workflows/api/ without 'fastlane-' and '.api.json'; the first of each family "
                        "is its baseline")
    p.add_argument("--images", type=int, default=3, help="images per workflow (a new seed each)")
    p.add_argument("--size", type=int, help="override the latent's width and height (smoke runs)")
    p.add_argument("--steps", type=int, help="override the sampler's steps (smoke runs)")
    p.add_argument("--cpu", action="store_true", help="run ComfyUI on the CPU (a smoke run of this script)")
    p.add_argument("--lora-strengths", type=lambda text: [float(x) for x in text.split(",")], default=None,
                   help="add a random LoRA after each workflow's model loader (workflow_lora.py), image i at the "
                        "i-th of these strengths (cycled), e.g. 1,1,0.5,0.5: what a LoRA strength change costs")
    p.add_argument("--vram-gb", type=float, default=None,
                   help="simulate a card with this much VRAM on a larger GPU (small_card.py): ComfyUI reserves the "
                        "rest (its --reserve-vram) and torch may allocate no more (a real OOM past it)")
    p.add_argument("--out", type=Path, default=Path("out/workflows"))
    args = p.parse_args(argv)
    names = [n.strip() for n in args.workflows.split(",") if n.strip()]
    unknown = [n for n in names
               if n.split("-")[0] not in WRITERS or not (WORKFLOWS / f"fastlane-{n}.api.json").is_file()]
    if unknown:
        raise SystemExit(f"no such workflow (or no model-file writer for its family): {unknown}")
    args.out.mkdir(parents=True, exist_ok=True)

    stubbed = bench.stub_missing_modules()
    import comfy_host

    runner = comfy_host.GraphRunner(cpu=args.cpu)
    bench.hide_stubs()
    import comfy.model_management as mm
    import folder_paths

    logging.getLogger().setLevel(logging.INFO)
    lines = FastlaneLines()
    logging.getLogger().addHandler(lines)
    device = mm.get_torch_device()
    card = small_card.simulate(args.vram_gb, device) if args.vram_gb else None
    root = comfy_host.comfyui_path()
    env = bench.environment(device, {"version": bench.comfyui_version(root), "path": str(root),
                                     "stubbed_modules": stubbed})
    bench.log(f"device {env.get('device_name')}, torch {env['torch']}, ComfyUI {env['comfyui']}")
    if card:
        env["simulated_card"] = card
        bench.log(f"simulated card: {card}")

    scratch = Path(tempfile.mkdtemp(prefix="fastlane_workflows_"))
    folder_paths.set_output_directory(str(scratch / "output"))
    families = sorted({name.split("-")[0] for name in names})
    bench.log(f"writing random-weight model files for {families} under {scratch}")
    if args.lora_strengths and len(families) > 1:
        raise SystemExit("--lora-strengths: one family per run (the random LoRA's file name is the same)")
    model_files = write_model_files(families, scratch / "models", device, lora=bool(args.lora_strengths))
    bench.log(f"model files: {model_files}")

    clock = SamplerClock(device)
    try:
        results = [run_workflow(runner, name, args, scratch / "output", lines, clock) for name in names]
    finally:
        shutil.rmtree(scratch, ignore_errors=True)  # the model files: ~7 GB for SDXL, ~32 GB for FLUX
    rows, baselines = [], {}  # the first workflow of each family is its baseline
    for res in results:
        family = res["workflow"].split("-")[0]
        rows.append(summary_row(res, baselines.get(family)))
        baselines.setdefault(family, rows[-1])
    text = markdown(env, model_files, rows, results, args)
    print("\n" + text, flush=True)
    (args.out / "results.md").write_text(text)
    (args.out / "results.json").write_text(json.dumps(
        {"environment": env, "model_files": model_files, "summary": rows, "workflows": results}, indent=2))
    return 0 if all(r["status"] == "ok" for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
