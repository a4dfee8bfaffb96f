#!/usr/bin/env python
"""Build the shipped workflows from one Python description each, in both of ComfyUI's formats:

* ``workflows/<name>.json``: the UI (LiteGraph) format a user drags onto ComfyUI's canvas, as ComfyUI 0.3.75's
  frontend (1.32) saves it: ``last_node_id``, ``last_link_id``, ``nodes[]`` (id, type, pos, size, inputs = sockets,
  outputs, widgets_values in the node's input order, with the seed's "control after generate" value), ``links[]``
  (``[id, from_node, from_slot, to_node, to_slot, type]``), ``groups``, ``version`` 0.4;
* ``workflows/api/<name>.api.json``: the API format ``POST /prompt`` and ``comfy run`` take (a subfolder, so that
  ComfyUI's templates browser, which lists ``workflows/*.json``, offers only the UI files).

Sockets, widget order and output types come from the node definitions of the real ComfyUI with this pack loaded
(the same data ``GET /object_info`` serves), so the files match what the frontend would save.

    python scripts/make_workflows.py            # (re)write workflows/
    python scripts/make_workflows.py --check    # exit 1 if workflows/ differs from what this script builds
"""
from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

PACK_DIR = Path(__file__).resolve().parents[1]
WORKFLOWS_DIR = PACK_DIR / "workflows"

#: Node types that exist only in the frontend (never sent to the server).
UI_ONLY_TYPES = {"Note", "MarkdownNote"}
#: The frontend's mode of a muted node (Ctrl+M; "Never"): drawn, kept in the file, not queued.
MUTED = 2
#: Input types the frontend draws as widgets (anything else is a socket).
WIDGET_TYPES = {"INT", "FLOAT", "STRING", "BOOLEAN", "COMBO"}


# -- description ---------------------------------------------------------------------------------------------------
@dataclass
class Node:
    id: int
    type: str
    pos: tuple[float, float]
    widgets: dict[str, Any] = field(default_factory=dict)
    links: dict[str, tuple[Node, int]] = field(default_factory=dict)  # input name -> (source node, output slot)
    title: str | None = None
    size: tuple[float, float] | None = None
    color: str | None = None
    bgcolor: str | None = None
    mode: int = 0  # the frontend's node mode: 0 runs, 2 muted ("never": not sent to the server until switched on)

    def out(self, slot: int = 0) -> tuple[Node, int]:
        return (self, slot)


@dataclass
class Group:
    title: str
    members: list[Node]
    color: str = "#3f789e"


@dataclass
class Workflow:
    name: str
    nodes: list[Node]
    groups: list[Group] = field(default_factory=list)


# -- the workflows -------------------------------------------------------------------------------------------------
DEMO_FAMILY = "flux-proxy"  # the FLUX proxy draws the scene its prompt describes (demo/proxy.py)
DEMO_SUBJECT = ("a medium yellow star on the left and a small blue square on the right, sunset sky, "
                "calm water")  # one of demo/scenes.py's EVAL_PROMPTS: it has a reference render
DEMO_SEED = 42
DEMO_STEPS = 20
DEMO_SIZE = 128
DEMO_FRACTION = 0.3  # Target Speed: the duel in docs/FIDELITY.md found order 2 closest on the proxy at 0.3


def demo_compare() -> Workflow:
    """The FLUX proxy demo model sampled twice with the same seed: through Fastlane Target Speed Cache and plain, each
    branch measured by a Fastlane Benchmark node, compared by a Fastlane Benchmark Report."""
    note = Node(1, "MarkdownNote", (-420, 40), size=(360, 300), title="Fastlane demo", widgets={"text": (
        "## Fastlane: step caching, measured\n\n"
        f"The **top** branch samples through **Fastlane Target Speed Cache** (the transformer runs on "
        f"{DEMO_FRACTION:.0%} of the steps; the steps between are forecast by a Taylor series of order 2), the "
        "**bottom** branch samples the same model plainly. "
        "Both use the same seed, and each passes a **Fastlane Benchmark** node right before its sampler.\n\n"
        "**Fastlane Benchmark Report** shows the per-step latency, the speed-up and how far the image moved "
        "(PSNR/SSIM against the plain branch).\n\n"
        "The demo model (*flux-proxy*: ComfyUI's Flux at 7.7M parameters, trained on procedural scenes) runs on a "
        "CPU; change the prompt's *text* to any scene over its words (shapes, colours, sizes, places, skies, "
        "grounds). For FLUX, replace the three demo nodes with "
        "*Load Diffusion Model*, *CLIP Text Encode* and *VAE Decode*.")})
    loader = Node(2, "FastlaneDemoModelLoader", (0, 40), widgets={"family": DEMO_FAMILY})
    prompt = Node(3, "FastlaneDemoPrompt", (0, 200), size=(320, 160),
                  widgets={"family": DEMO_FAMILY, "subject": DEMO_SUBJECT, "text": ""})
    negative = Node(4, "ConditioningZeroOut", (0, 380), links={"conditioning": prompt.out()})
    latent = Node(5, "EmptySD3LatentImage", (0, 480), widgets={"width": DEMO_SIZE, "height": DEMO_SIZE, "batch_size": 1})
    cache = Node(6, "FastlaneTargetSpeedCache", (360, 40), links={"model": loader.out()},
                 widgets={"compute_fraction": DEMO_FRACTION, "order": 2, "granularity": "auto", "start": 0.0,
                          "end": 1.0})
    bench_fast = Node(7, "FastlaneBenchmark", (720, 40), links={"model": cache.out()}, widgets={"label": "fastlane"})
    bench_base = Node(8, "FastlaneBenchmark", (720, 660), links={"model": loader.out()}, widgets={"label": "baseline"})
    sampler = dict(seed=DEMO_SEED, steps=DEMO_STEPS, cfg=1.0, sampler_name="euler", scheduler="simple", denoise=1.0)
    ks_fast = Node(9, "KSampler", (1080, 40), widgets=sampler, title="KSampler (Fastlane)",
                   links={"model": bench_fast.out(), "positive": prompt.out(), "negative": negative.out(),
                          "latent_image": latent.out()})
    ks_base = Node(10, "KSampler", (1080, 660), widgets=sampler, title="KSampler (baseline)",
                   links={"model": bench_base.out(), "positive": prompt.out(), "negative": negative.out(),
                          "latent_image": latent.out()})
    dec_fast = Node(11, "FastlaneDemoDecode", (1440, 40), links={"samples": ks_fast.out()},
                    widgets={"family": DEMO_FAMILY})
    dec_base = Node(12, "FastlaneDemoDecode", (1440, 660), links={"samples": ks_base.out()},
                    widgets={"family": DEMO_FAMILY})
    save_fast = Node(13, "SaveImage", (1780, 40), size=(300, 340), links={"images": dec_fast.out()},
                     widgets={"filename_prefix": "fastlane/demo_fastlane"})
    save_base = Node(14, "SaveImage", (1780, 660), size=(300, 340), links={"images": dec_base.out()},
                     widgets={"filename_prefix": "fastlane/demo_baseline"})
    report = Node(15, "FastlaneBenchmarkReport", (1440, 450), size=(280, 140),
                  links={"model": bench_fast.out(), "image": dec_fast.out(), "reference_model": bench_base.out(),
                         "reference_image": dec_base.out()})
    show = Node(16, "PreviewAny", (2120, 40), size=(560, 420), title="Benchmark report",
                links={"source": report.out(0)})
    save_plot = Node(17, "SaveImage", (2120, 500), size=(560, 380), title="Save benchmark plot",
                     links={"images": report.out(1)}, widgets={"filename_prefix": "fastlane/demo_plot"})
    nodes = [note, loader, prompt, negative, latent, cache, bench_fast, bench_base, ks_fast, ks_base, dec_fast,
             dec_base, save_fast, save_base, report, show, save_plot]
    return Workflow("fastlane-demo-compare", nodes, groups=[
        Group("Fastlane (cached)", [cache, bench_fast, ks_fast, dec_fast, save_fast], "#3f789e"),
        Group("Baseline (plain)", [bench_base, ks_base, dec_base, save_base], "#8A8A8A"),
    ])


# -- FLUX.1-dev and SDXL with ComfyUI's standard loaders (the model files are the user's) ---------------------------
FLUX_FILES = ("flux1-dev.safetensors", "t5xxl_fp16.safetensors", "clip_l.safetensors", "ae.safetensors")
SDXL_FILE = "sd_xl_base_1.0.safetensors"
PROMPT = "a red fox in fresh snow at dawn, detailed fur, soft light"
FIGURES = "measured figures for each variant: docs/BENCHMARKS.md in the Fastlane pack (H100 and H200, random weights)"


def _note(title: str, text: str) -> Node:
    return Node(1, "MarkdownNote", (-460, 40), size=(400, 360), title=title, widgets={"text": text})


def _flux_base(accelerate, title: str, note: str, name: str) -> Workflow:
    """FLUX.1-dev text-to-image; ``accelerate(model) -> (nodes, model_out)`` inserts Fastlane nodes."""
    unet, t5, clip_l, vae_file = FLUX_FILES
    loader = Node(2, "UNETLoader", (0, 40), widgets={"unet_name": unet, "weight_dtype": "default"})
    clip = Node(3, "DualCLIPLoader", (0, 200), widgets={"clip_name1": clip_l, "clip_name2": t5, "type": "flux"})
    vae = Node(4, "VAELoader", (0, 380), widgets={"vae_name": vae_file})
    text = Node(5, "CLIPTextEncode", (360, 200), size=(400, 160), links={"clip": clip.out()}, widgets={"text": PROMPT})
    guidance = Node(6, "FluxGuidance", (800, 200), links={"conditioning": text.out()}, widgets={"guidance": 3.5})
    negative = Node(7, "ConditioningZeroOut", (800, 320), links={"conditioning": text.out()})
    latent = Node(8, "EmptySD3LatentImage", (800, 420), widgets={"width": 1024, "height": 1024, "batch_size": 1})
    extra, model = accelerate(loader.out())
    sampler = Node(20, "KSampler", (1500, 40), links={"model": model, "positive": guidance.out(),
                                                       "negative": negative.out(), "latent_image": latent.out()},
                   widgets=dict(seed=42, steps=28, cfg=1.0, sampler_name="euler", scheduler="simple", denoise=1.0))
    decode = Node(21, "VAEDecode", (1860, 40), links={"samples": sampler.out(), "vae": vae.out()})
    save = Node(22, "SaveImage", (2100, 40), size=(400, 440), links={"images": decode.out()},
                widgets={"filename_prefix": f"fastlane/{name}"})
    return Workflow(name, [_note(title, note), loader, clip, vae, text, guidance, negative, latent, *extra, sampler,
                           decode, save])


def _sdxl_base(accelerate, title: str, note: str, name: str) -> Workflow:
    ckpt = Node(2, "CheckpointLoaderSimple", (0, 40), widgets={"ckpt_name": SDXL_FILE})
    positive = Node(3, "CLIPTextEncode", (360, 200), size=(400, 160), links={"clip": ckpt.out(1)},
                    widgets={"text": PROMPT})
    negative = Node(4, "CLIPTextEncode", (360, 400), size=(400, 120), links={"clip": ckpt.out(1)},
                    widgets={"text": "blurry, low quality"})
    latent = Node(5, "EmptyLatentImage", (800, 420), widgets={"width": 1024, "height": 1024, "batch_size": 1})
    extra, model = accelerate(ckpt.out(0))
    sampler = Node(20, "KSampler", (1500, 40), links={"model": model, "positive": positive.out(),
                                                       "negative": negative.out(), "latent_image": latent.out()},
                   widgets=dict(seed=42, steps=30, cfg=7.0, sampler_name="euler", scheduler="normal", denoise=1.0))
    decode = Node(21, "VAEDecode", (1860, 40), links={"samples": sampler.out(), "vae": ckpt.out(2)})
    save = Node(22, "SaveImage", (2100, 40), size=(400, 440), links={"images": decode.out()},
                widgets={"filename_prefix": f"fastlane/{name}"})
    return Workflow(name, [_note(title, note), ckpt, positive, negative, latent, *extra, sampler, decode, save])


def _chain(*steps: tuple[str, dict]) -> Callable:
    """Fastlane nodes one after the other on the MODEL, ids 10, 11, ..."""
    def accelerate(model):
        made = []
        for i, (node_type, widgets) in enumerate(steps):
            node = Node(10 + i, node_type, (400 + 360 * i, 620),
                        links={"model": model}, widgets=widgets)
            made.append(node)
            model = node.out()
        return made, model
    return accelerate


TARGET = {"granularity": "auto", "order": 2, "start": 0.0, "end": 1.0}
# fp8 with the model's entry and exit projections kept 16-bit (the node's default filter; docs/FIDELITY.md)
QUANTIZE = {"scheme": "fp8_scaled_mm", "filter": "entry+exit", "regex": ""}
COMPILE = {"scope": "regional", "backend": "inductor", "mode": "default", "dynamic": "auto", "fullgraph": False}
FLUX_FILES_TEXT = ("Model files (ComfyUI's folders): `models/diffusion_models/flux1-dev.safetensors`, "
                   "`models/text_encoders/t5xxl_fp16.safetensors` and `clip_l.safetensors`, `models/vae/ae.safetensors`.")
SDXL_FILES_TEXT = f"Model file: `models/checkpoints/{SDXL_FILE}`."


def flux_baseline() -> Workflow:
    return _flux_base(_chain(), "FLUX.1-dev baseline", "## FLUX.1-dev, as ComfyUI ships it\n\nThe reference the other "
                      f"Fastlane FLUX workflows are measured against: 1024², 28 steps, euler.\n\n{FLUX_FILES_TEXT}",
                      "fastlane-flux-baseline")


def flux_balanced() -> Workflow:
    return _flux_base(_chain(("FastlaneTargetSpeedCache", {"compute_fraction": 0.4, **TARGET}),
                             ("FastlaneCompile", COMPILE)),
                      "FLUX.1-dev balanced", "## FLUX.1-dev, balanced\n\n**Target Speed Cache 0.4** (the model runs "
                      "on 11 of 28 steps, the rest forecast) then **Compile** (regional: two block graphs, compiled "
                      "on the first run). No quantization: weights stay 16-bit.\n\n"
                      f"{FLUX_FILES_TEXT}\n\nSpeed: {FIGURES}.", "fastlane-flux-balanced")


# The FLUX fastest workflow's Target Speed fraction: 6 of 28 steps. With the entry/exit projections 16-bit it kept
# both FLUX proxies closer to the 16-bit image than the 0.3 tier with every Linear fp8 did (docs/FIDELITY.md); the
# image follows the count of computed steps, so at fewer sampler steps the count stays at 6 (min_computed_steps).
FLUX_FASTEST_FRACTION = 0.2
FLUX_FASTEST_MIN_STEPS = 6


def flux_fastest() -> Workflow:
    return _flux_base(_chain(("FastlaneQuantize", QUANTIZE),
                             ("FastlaneTargetSpeedCache", {"compute_fraction": FLUX_FASTEST_FRACTION, **TARGET,
                                                           "min_computed_steps": FLUX_FASTEST_MIN_STEPS}),
                             ("FastlaneCompile", COMPILE)),
                      "FLUX.1-dev fastest", "## FLUX.1-dev, fastest\n\n**Quantize fp8_scaled_mm** (needs an Ada, "
                      "Hopper or Blackwell GPU; its few_row_linears `auto` stores the modulation weights in fp8 too: "
                      "FLUX's weights take 11.1 GiB; filter `entry+exit` keeps img_in, txt_in and the final layer "
                      f"16-bit) → **Target Speed Cache {FLUX_FASTEST_FRACTION}** (the model runs on 6 of 28 "
                      "steps) → **Compile** regional. The first run compiles (about 20 s on an H100); queue again "
                      "for the warm speed. The same chain at 0.3 with every Linear fp8 took 0.92 s per image on an "
                      "H100 (random weights); this 0.2 chain is not yet timed on a GPU. For more fidelity, set Target "
                      "Speed to 0.3 (8 steps). The image follows the number of computed steps more than the "
                      f"fraction, so `min_computed_steps` {FLUX_FASTEST_MIN_STEPS} keeps 6 computed at fewer sampler "
                      "steps: at 20 steps 0.2 alone computes 4, and our FLUX proxies lost 5 to 6 dB against 6.\n\n"
                      f"{FLUX_FILES_TEXT}\n\nSpeed: {FIGURES}.", "fastlane-flux-fastest")


def sdxl_baseline() -> Workflow:
    return _sdxl_base(_chain(), "SDXL baseline", "## SDXL, as ComfyUI ships it\n\n1024², 30 steps, CFG 7: the "
                      f"reference for the other Fastlane SDXL workflows.\n\n{SDXL_FILES_TEXT}", "fastlane-sdxl-baseline")


RECORDED_TEXT = ("→ **Compile** regional (each block kind compiled once, ~40 s on the first run) → **CUDA Graph**: "
                 "the computed steps and the cached (shallow) steps are each recorded once as a CUDA graph and "
                 "replayed, which removes the CPU's kernel launches that bound an SDXL step. A new image size costs "
                 "a short recompile of the blocks and a recording, not a whole-model compile. NVIDIA GPUs only "
                 "(bypass Compile and CUDA Graph elsewhere), with ComfyUI started with `--disable-cuda-malloc` "
                 "(under its default allocator CUDA Graph passes the model through, logged); queue it twice.")


def _sdxl_recorded(interval: int, tier: str, what: str) -> Workflow:
    """DeepCache at ``interval``, regional compile, and the whole call recorded as CUDA graphs by Fastlane CUDA
    Graph."""
    return _sdxl_base(_chain(("FastlaneDeepCache", {"interval": interval, "branch": 0, "start": 0.0, "end": 1.0}),
                             ("FastlaneCompile", COMPILE), ("FastlaneCudaGraph", {})),
                      f"SDXL {tier}", f"## SDXL, {tier}\n\n**DeepCache interval {interval}** ({what}) "
                      f"{RECORDED_TEXT}\n\n{SDXL_FILES_TEXT}\n\nSpeed: {FIGURES}.", f"fastlane-sdxl-{tier}")


def sdxl_balanced() -> Workflow:
    return _sdxl_recorded(3, "balanced", "the deep UNet on every third step")


def sdxl_fastest() -> Workflow:
    return _sdxl_recorded(5, "fastest", "its defaults: the deep UNet on every fifth step")


def _compare(accelerated: Workflow, name: str, title: str, note: str,
             base_model: tuple[Node, int] | None = None, base_y: float = 900,
             native: Callable[[list[Node]], tuple[list[Node], tuple[Node, int], str]] | None = None) -> Workflow:
    """``accelerated`` and its plain twin (same loaders, prompt and seed) as two branches, each through a Fastlane
    Benchmark node before its KSampler, compared by a Fastlane Benchmark Report. ``base_model``: where the plain
    branch takes its MODEL (default: the loader; a family's sampling-shift node where it has one); ``base_y``: the
    height of the plain branch on the canvas. ``native(shared nodes) -> (nodes, MODEL, label)``: ComfyUI's own fast
    path as a third branch, muted (the user switches it on), with its own report against the same baseline."""
    by_id = {n.id: n for n in accelerated.nodes}
    fast_sampler, fast_decode = by_id[20], by_id[21]
    shared = [n for n in accelerated.nodes if n.id < 20 and n.type != "MarkdownNote"]
    loader_out = base_model or next(n for n in shared if n.type in ("UNETLoader", "CheckpointLoaderSimple")).out(0)
    bench_fast = Node(30, "FastlaneBenchmark", (1140, 40), links={"model": fast_sampler.links["model"]},
                      widgets={"label": "fastlane"})
    bench_base = Node(31, "FastlaneBenchmark", (1140, base_y), links={"model": loader_out}, widgets={"label": "baseline"})
    fast_sampler.links["model"] = bench_fast.out()
    base_sampler = Node(32, "KSampler", (1500, base_y), title="KSampler (baseline)",
                        links={**fast_sampler.links, "model": bench_base.out()}, widgets=dict(fast_sampler.widgets))
    base_decode = Node(33, "VAEDecode", (1860, base_y), links={"samples": base_sampler.out(),
                                                            "vae": fast_decode.links["vae"]})
    fast_sampler.title = "KSampler (Fastlane)"
    report = Node(34, "FastlaneBenchmarkReport", (1860, 560), size=(280, 140),
                  links={"model": bench_fast.out(), "image": fast_decode.out(), "reference_model": bench_base.out(),
                         "reference_image": base_decode.out()})
    show = Node(35, "PreviewAny", (2540, 40), size=(560, 420), title="Benchmark report", links={"source": report.out(0)})
    save_fast = Node(22, "SaveImage", (2100, 40), size=(400, 440), links={"images": fast_decode.out()},
                     widgets={"filename_prefix": f"fastlane/{name}_fastlane"})
    save_base = Node(36, "SaveImage", (2100, base_y), size=(400, 440), links={"images": base_decode.out()},
                     widgets={"filename_prefix": f"fastlane/{name}_baseline"})
    save_plot = Node(37, "SaveImage", (2540, 500), size=(560, 380), title="Save benchmark plot",
                     links={"images": report.out(1)}, widgets={"filename_prefix": f"fastlane/{name}_plot"})
    nodes = [_note(title, note), *shared, bench_fast, fast_sampler, fast_decode, save_fast, bench_base, base_sampler,
             base_decode, save_base, report, show, save_plot]
    groups = [Group("Fastlane", [n for n in shared if n.type.startswith("Fastlane")] + [bench_fast, fast_sampler,
                                                                                      fast_decode, save_fast], "#3f789e"),
              Group("Baseline (plain)", [bench_base, base_sampler, base_decode, save_base], "#8A8A8A")]
    if native is not None:
        branch = _native_branch(native(shared), name, base_sampler, fast_decode.links["vae"], bench_base,
                                base_decode, base_y + 900)
        nodes += branch
        groups.append(Group(NATIVE_GROUP, branch, "#8A6A3A"))
    return Workflow(name, nodes, groups=groups)


NATIVE_GROUP = "ComfyUI's own fast path (muted: select this group, Ctrl+M to switch it on)"


def _native_branch(native: tuple[list[Node], tuple[Node, int], str], name: str, base_sampler: Node,
                   vae: tuple[Node, int], bench_base: Node, base_decode: Node, y: float) -> list[Node]:
    """ComfyUI's own fast path sampled a third time, muted: its nodes (ids 40-), a Fastlane Benchmark labelled
    ``label``, KSampler, decode, save, and a Benchmark Report against the same plain baseline as Fastlane's."""
    made, model, label = native
    bench = Node(50, "FastlaneBenchmark", (1140, y), links={"model": model}, widgets={"label": label})
    sampler = Node(51, "KSampler", (1500, y), title=f"KSampler ({label})",
                   links={**base_sampler.links, "model": bench.out()}, widgets=dict(base_sampler.widgets))
    decode = Node(52, "VAEDecode", (1860, y), links={"samples": sampler.out(), "vae": vae})
    save = Node(53, "SaveImage", (2100, y), size=(400, 440), links={"images": decode.out()},
                widgets={"filename_prefix": f"fastlane/{name}_native"})
    report = Node(54, "FastlaneBenchmarkReport", (1860, y + 520), size=(280, 140), title=f"Benchmark report ({label})",
                  links={"model": bench.out(), "image": decode.out(), "reference_model": bench_base.out(),
                         "reference_image": base_decode.out()})
    show = Node(55, "PreviewAny", (2540, y), size=(560, 420), title=f"Benchmark report ({label})",
                links={"source": report.out(0)})
    for node in made:
        node.pos = (node.pos[0], y)
    branch = [*made, bench, sampler, decode, save, report, show]
    for node in branch:
        node.mode = MUTED
    return branch


def _native_fp8_compiled(loader_type: str, shift: float | None = None) -> Callable:
    """The fastest native stack a ComfyUI user has for a DiT (docs/BENCHMARKS.md, issue 20): the same diffusion model
    file loaded again with weight_dtype ``fp8_e4m3fn_fast`` (fp8 weights and matmuls), then core TorchCompileModel;
    a family's ModelSamplingAuraFlow shift in between where it has one."""
    def build(shared: list[Node]) -> tuple[list[Node], tuple[Node, int], str]:
        loader = next(n for n in shared if n.type == loader_type)
        native_loader = Node(40, loader_type, (0, 0), title="Load Diffusion Model (fp8_e4m3fn_fast)",
                             widgets={**loader.widgets, "weight_dtype": "fp8_e4m3fn_fast"})
        made, model = [native_loader], native_loader.out()
        if shift is not None:
            shifted = Node(41, "ModelSamplingAuraFlow", (360, 0), links={"model": model}, widgets={"shift": shift})
            made.append(shifted)
            model = shifted.out()
        compiled = Node(42, "TorchCompileModel", (740, 0), links={"model": model}, widgets={"backend": "inductor"})
        return made + [compiled], compiled.out(), "native fp8_e4m3fn_fast + TorchCompileModel"
    return build


def _native_compiled(shared: list[Node]) -> tuple[list[Node], tuple[Node, int], str]:
    """SDXL's best native lossless row (docs/BENCHMARKS.md): core TorchCompileModel on the checkpoint's MODEL."""
    ckpt = next(n for n in shared if n.type == "CheckpointLoaderSimple")
    compiled = Node(42, "TorchCompileModel", (740, 0), links={"model": ckpt.out(0)}, widgets={"backend": "inductor"})
    return [compiled], compiled.out(), "native TorchCompileModel"


NATIVE_NOTE_DIT = ("**ComfyUI's own fast path** (bottom group, muted): the same file loaded again at weight_dtype "
                   "`fp8_e4m3fn_fast` and core **TorchCompileModel**, with its own report against the same "
                   "baseline. Select the group and press Ctrl+M to switch it on: it loads a second copy of the "
                   "model (fp8), so leave it off on a card that barely holds one.")
NATIVE_NOTE_SDXL = ("**ComfyUI's own fast path** (bottom group, muted): core **TorchCompileModel** on the same "
                    "checkpoint, with its own report against the same baseline. Select the group and press Ctrl+M "
                    "to switch it on.")
COMPARE_NOTE = ("The same loaders, prompt and seed sampled twice: through the Fastlane nodes (top) and plainly "
                "(bottom), each measured by a **Fastlane Benchmark** node. **Fastlane Benchmark Report** shows the "
                "per-step latency on your GPU, the speed-up and how far the image moved (PSNR/SSIM). Queue twice: "
                "the first run includes compilation.")


def flux_compare() -> Workflow:
    return _compare(flux_fastest(), "fastlane-flux-compare", "FLUX.1-dev: fastest vs baseline",
                    f"## FLUX.1-dev: Fastlane fastest vs baseline\n\n{COMPARE_NOTE}\n\n{NATIVE_NOTE_DIT}\n\n"
                    f"{FLUX_FILES_TEXT}", native=_native_fp8_compiled("UNETLoader"))


def sdxl_compare() -> Workflow:
    return _compare(sdxl_fastest(), "fastlane-sdxl-compare", "SDXL: DeepCache + CUDA graphs vs baseline",
                    f"## SDXL: Fastlane DeepCache + Compile + CUDA Graph vs baseline\n\n{COMPARE_NOTE}\n\n"
                    f"{NATIVE_NOTE_SDXL}\n\n{SDXL_FILES_TEXT}", native=_native_compiled)


# -- Qwen-Image, Z-Image and Wan 2.2 14B with ComfyUI's standard loaders (file names as ComfyUI's own templates) -----
UNMEASURED = ("Speed: not measured on a GPU for this family yet (Fastlane's figures are FLUX and SDXL); the "
              "`-compare` workflow measures it on yours, with the image's PSNR/SSIM against the plain model.")


def _files_text(*files: tuple[str, str]) -> str:
    """``(folder, file)`` pairs as the notes list them."""
    return "Model files (ComfyUI's folders): " + ", ".join(f"`models/{d}/{f}`" for d, f in files) + "."


def _fastest_chain(fraction: float, order: int = 2) -> Callable:
    """Quantize fp8_scaled_mm → Target Speed (``compute_fraction``, Taylor ``order``: 2 beat the Spectrum Cache from
    0.2 computed up on both FLUX-class proxies; the Qwen-Image demo model is closer at 1, docs/FIDELITY.md) →
    Compile regional."""
    return _chain(("FastlaneQuantize", QUANTIZE),
                  ("FastlaneTargetSpeedCache", {"compute_fraction": fraction, "order": order}),
                  ("FastlaneCompile", COMPILE))


@dataclass(frozen=True)
class ImageFamily:
    """A text-to-image DiT as ComfyUI's own template loads and samples it."""

    key: str  # fastlane-<key>-fastest / -compare
    title: str
    unet: str
    clip: str
    clip_type: str  # CLIPLoader's type
    vae: str
    shift: float  # ModelSamplingAuraFlow
    size: int
    sampler: dict  # KSampler widgets
    negative: str | None  # None: ConditioningZeroOut of the prompt (a distilled model at CFG 1)
    fraction: float  # Target Speed compute_fraction
    order: int  # Target Speed's Taylor order: the closer one on the family's demo model (docs/FIDELITY.md)
    about: str
    speed: str = UNMEASURED  # what a GPU measured of this chain (docs/BENCHMARKS.md), else UNMEASURED

    def files_text(self) -> str:
        return _files_text(("diffusion_models", self.unet), ("text_encoders", self.clip), ("vae", self.vae))


QWEN_IMAGE = ImageFamily(
    "qwen-image", "Qwen-Image", "qwen_image_fp8_e4m3fn.safetensors", "qwen_2.5_vl_7b_fp8_scaled.safetensors",
    "qwen_image", "qwen_image_vae.safetensors", 3.5, 1328,
    dict(seed=42, steps=20, cfg=4.0, sampler_name="euler", scheduler="simple", denoise=1.0),
    "low quality, blurry, bad anatomy, extra digits, missing limbs", 0.35, 1,
    "1328², 20 steps, CFG 4, shift 3.5, as ComfyUI's Qwen-Image template. Quantize's few_row_linears `auto` stores "
    "the modulation weights (`img_mod`/`txt_mod`: a third of Qwen-Image's 20 B parameters) in fp8 too; their "
    "inputs stay 16-bit. Target Speed 0.35: the model runs on 7 of 20 steps; Taylor order 1, which kept the Qwen-Image demo model "
    "3 dB closer than order 2 at 0.3-0.4 computed. Compile regional: one block graph.",
    "Speed (one H100 80GB, Qwen-Image's real 20 B architecture with random weights, this size, steps and CFG; "
    "docs/BENCHMARKS.md, run s14-3): eager 11.65 s per image; the same chain at Target Speed 0.3 (6 computed steps, "
    "order 2) 2.31 s, 5.05x, after a 15.6 s first run. This workflow's 0.35 runs 7 steps: about 2.7 s by the "
    "measured 371 ms per computed step (an estimate, not a run). The `-compare` workflow measures it on your GPU.")
Z_IMAGE = ImageFamily(
    "z-image", "Z-Image Turbo", "z_image_turbo_bf16.safetensors", "qwen_3_4b.safetensors", "lumina2",
    "ae.safetensors", 3.0, 1024,
    dict(seed=42, steps=8, cfg=1.0, sampler_name="res_multistep", scheduler="simple", denoise=1.0),
    None, 0.4, 2,
    "1024², 8 steps of res_multistep at CFG 1, shift 3, as ComfyUI's Z-Image Turbo template. Target Speed 0.4: "
    "the model runs on 3 of the 8 steps (the turbo model leaves few steps to skip: check the image in the compare "
    "workflow). Compile regional: two block graphs (refiner and main blocks); the modulation Linears stay 16-bit.",
    "Speed (one H100 80GB, Z-Image's real 6 B architecture with random weights, 1024², 8 steps; docs/BENCHMARKS.md, "
    "run s12-3): eager 0.98 s per image; the same chain at Target Speed 0.5 (4 of 8 steps) 0.34 s, 2.86x. This "
    "workflow's 0.4 (3 of 8 steps) is not measured on a GPU; the `-compare` workflow measures it on yours.")


def _image_family(family: ImageFamily, accelerate: Callable, title: str, note: str, name: str) -> Workflow:
    loader = Node(2, "UNETLoader", (0, 40), widgets={"unet_name": family.unet, "weight_dtype": "default"})
    clip = Node(3, "CLIPLoader", (0, 200), widgets={"clip_name": family.clip, "type": family.clip_type})
    vae = Node(4, "VAELoader", (0, 380), widgets={"vae_name": family.vae})
    text = Node(5, "CLIPTextEncode", (360, 200), size=(400, 160), links={"clip": clip.out()}, widgets={"text": PROMPT})
    if family.negative is None:
        negative = Node(6, "ConditioningZeroOut", (800, 320), links={"conditioning": text.out()})
    else:
        negative = Node(6, "CLIPTextEncode", (360, 400), size=(400, 120), links={"clip": clip.out()},
                        widgets={"text": family.negative})
    latent = Node(7, "EmptySD3LatentImage", (800, 420),
                  widgets={"width": family.size, "height": family.size, "batch_size": 1})
    shift = Node(8, "ModelSamplingAuraFlow", (360, 40), links={"model": loader.out()}, widgets={"shift": family.shift})
    extra, model = accelerate(shift.out())
    sampler = Node(20, "KSampler", (1500, 40), links={"model": model, "positive": text.out(),
                                                       "negative": negative.out(), "latent_image": latent.out()},
                   widgets=dict(family.sampler))
    decode = Node(21, "VAEDecode", (1860, 40), links={"samples": sampler.out(), "vae": vae.out()})
    save = Node(22, "SaveImage", (2100, 40), size=(400, 440), links={"images": decode.out()},
                widgets={"filename_prefix": f"fastlane/{name}"})
    return Workflow(name, [_note(title, note), loader, clip, vae, text, negative, latent, shift, *extra, sampler,
                           decode, save])


def _image_fastest(family: ImageFamily) -> Workflow:
    return _image_family(family, _fastest_chain(family.fraction, family.order), f"{family.title} fastest",
                         f"## {family.title}, fastest\n\n**Quantize fp8_scaled_mm** (an Ada, Hopper or Blackwell "
                         f"GPU) → **Target Speed Cache {family.fraction}** (order {family.order}) → **Compile** regional (compiled on the first "
                         f"run; queue again for the warm speed).\n\n{family.about}\n\n{family.files_text()}\n\n"
                         f"{family.speed}", f"fastlane-{family.key}-fastest")


def _image_compare(family: ImageFamily) -> Workflow:
    fastest = _image_fastest(family)
    shift = next(n for n in fastest.nodes if n.type == "ModelSamplingAuraFlow")
    return _compare(fastest, f"fastlane-{family.key}-compare", f"{family.title}: fastest vs baseline",
                    f"## {family.title}: Fastlane fastest vs baseline\n\n{COMPARE_NOTE}\n\n{NATIVE_NOTE_DIT}\n\n"
                    f"{family.files_text()}", base_model=shift.out(), base_y=1100,
                    native=_native_fp8_compiled("UNETLoader", family.shift))


def qwen_image_fastest() -> Workflow:
    return _image_fastest(QWEN_IMAGE)


def qwen_image_compare() -> Workflow:
    return _image_compare(QWEN_IMAGE)


def z_image_fastest() -> Workflow:
    return _image_fastest(Z_IMAGE)


def z_image_compare() -> Workflow:
    return _image_compare(Z_IMAGE)


WAN22_FILES = ("wan2.2_t2v_high_noise_14B_fp8_scaled.safetensors", "wan2.2_t2v_low_noise_14B_fp8_scaled.safetensors",
               "umt5_xxl_fp8_e4m3fn_scaled.safetensors", "wan_2.1_vae.safetensors")
WAN22_PROMPT = "a red fox trotting through fresh snow at dawn, the camera tracking alongside, soft golden light"
WAN22_NEGATIVE = "blurry, low quality, static, overexposed, subtitles, watermark, deformed limbs, cluttered background"
WAN22_STEPS, WAN22_SWITCH, WAN22_FRACTION = 20, 10, 0.35
WAN22_ORDER = 1  # the Wan 2.1 demo model: order 1 kept 34.5 dB at 0.4 computed where order 2 kept 30.7 (docs/FIDELITY.md)
WAN22_FILES_TEXT = _files_text(("diffusion_models", WAN22_FILES[0]), ("diffusion_models", WAN22_FILES[1]),
                               ("text_encoders", WAN22_FILES[2]), ("vae", WAN22_FILES[3]))
WAN22_ABOUT = (f"Wan 2.2 14B text-to-video, 832×480, 81 frames: the high-noise expert samples steps 0-{WAN22_SWITCH} "
               f"and the low-noise expert steps {WAN22_SWITCH}-{WAN22_STEPS} of {WAN22_STEPS} (two KSamplerAdvanced "
               "stages, CFG 3.5, shift 8, as ComfyUI's Wan 2.2 template). Each expert has its own Quantize, "
               f"Target Speed Cache and Compile: each cache plans over its own stage ({WAN22_FRACTION}: 4 of "
               "its 10 steps computed) and starts clean at each run. The loaders read the fp8_scaled files at "
               "weight_dtype `default`; ComfyUI moves the experts in and out of VRAM as the stages need them.")


def _wan22(compare: bool) -> Workflow:
    """Wan 2.2 14B T2V: two experts, each Quantize → Target Speed → Compile, two KSamplerAdvanced stages; ``compare``
    adds the plain branch, a Fastlane Benchmark on each of the four sampled MODELs, and one report per expert."""
    name = f"fastlane-wan22-{'compare' if compare else 'fastest'}"
    high_file, low_file, clip_file, vae_file = WAN22_FILES
    high = Node(2, "UNETLoader", (0, 40), title="Load Diffusion Model (high noise)",
                widgets={"unet_name": high_file, "weight_dtype": "default"})
    low = Node(3, "UNETLoader", (0, 200), title="Load Diffusion Model (low noise)",
               widgets={"unet_name": low_file, "weight_dtype": "default"})
    clip = Node(4, "CLIPLoader", (0, 360), widgets={"clip_name": clip_file, "type": "wan"})
    vae = Node(5, "VAELoader", (0, 540), widgets={"vae_name": vae_file})
    text = Node(6, "CLIPTextEncode", (360, 360), size=(400, 160), links={"clip": clip.out()},
                widgets={"text": WAN22_PROMPT})
    negative = Node(7, "CLIPTextEncode", (360, 560), size=(400, 120), links={"clip": clip.out()},
                    widgets={"text": WAN22_NEGATIVE})
    latent = Node(8, "EmptyHunyuanLatentVideo", (800, 560),
                  widgets={"width": 832, "height": 480, "length": 81, "batch_size": 1})
    shifts = [Node(9 + i, "ModelSamplingSD3", (360, 40 + 160 * i), links={"model": loader.out()},
                   widgets={"shift": 8.0}) for i, loader in enumerate((high, low))]
    chains = []
    for i, shift in enumerate(shifts):  # ids 11-13 (high noise), 14-16 (low noise)
        made, model = _fastest_chain(WAN22_FRACTION, WAN22_ORDER)(shift.out())
        for j, node in enumerate(made):
            node.id, node.pos = 11 + 3 * i + j, (400 + 360 * j, 780 + 420 * i)
        chains.append((made, model))
    shared = [high, low, clip, vae, text, negative, latent, *shifts]
    fast = _wan22_branch(20, [m for _, m in chains], text, negative, latent, vae, name, "fastlane", 40)
    nodes = [_note("Wan 2.2 14B " + ("fastest vs baseline" if compare else "fastest"), _wan22_note(compare)),
             *shared, *chains[0][0], *chains[1][0]]
    if not compare:
        return Workflow(name, nodes + fast.nodes)
    fast_benches = [Node(30 + i, "FastlaneBenchmark", (1140, 40 + 160 * i), links={"model": model},
                         widgets={"label": f"fastlane {expert}"})
                    for i, ((_, model), expert) in enumerate(zip(chains, ("high", "low")))]
    base_benches = [Node(32 + i, "FastlaneBenchmark", (1140, 1700 + 160 * i), links={"model": shift.out()},
                         widgets={"label": f"baseline {expert}"})
                    for i, (shift, expert) in enumerate(zip(shifts, ("high", "low")))]
    fast = _wan22_branch(20, [b.out() for b in fast_benches], text, negative, latent, vae, name, "fastlane", 40)
    base = _wan22_branch(50, [b.out() for b in base_benches], text, negative, latent, vae, name, "baseline", 1700)
    reports = []
    for i, expert in enumerate(("high", "low")):
        report = Node(40 + 3 * i, "FastlaneBenchmarkReport", (1860, 1000 + 200 * i), size=(280, 140),
                      title=f"Fastlane Benchmark Report ({expert}-noise expert)",
                      links={"model": fast_benches[i].out(), "image": fast.decode.out(),
                             "reference_model": base_benches[i].out(), "reference_image": base.decode.out()})
        show = Node(41 + 3 * i, "PreviewAny", (2540, 40 + 900 * i), size=(560, 420),
                    title=f"Benchmark report ({expert}-noise expert)", links={"source": report.out(0)})
        plot = Node(42 + 3 * i, "SaveImage", (2540, 500 + 900 * i), size=(560, 380),
                    title=f"Save benchmark plot ({expert}-noise expert)", links={"images": report.out(1)},
                    widgets={"filename_prefix": f"fastlane/{name}_plot_{expert}"})
        reports += [report, show, plot]
    fast_group = [*chains[0][0], *chains[1][0], *fast_benches, *fast.nodes]
    return Workflow(name, [*nodes, *fast_benches, *fast.nodes, *base_benches, *base.nodes, *reports], groups=[
        Group("Fastlane", fast_group, "#3f789e"), Group("Baseline (plain)", [*base_benches, *base.nodes], "#8A8A8A")])


@dataclass
class _Branch:
    nodes: list[Node]
    decode: Node


def _wan22_branch(first_id: int, models: list[tuple[Node, int]], text: Node, negative: Node, latent: Node, vae: Node,
                  name: str, label: str, y: float) -> _Branch:
    """The two KSamplerAdvanced stages (high-noise expert, then low-noise expert), decode and save, at ids
    ``first_id``.. and height ``y``."""
    stage = dict(steps=WAN22_STEPS, cfg=3.5, sampler_name="euler", scheduler="simple")
    high = Node(first_id, "KSamplerAdvanced", (1500, y), title=f"KSamplerAdvanced (high noise, {label})",
                links={"model": models[0], "positive": text.out(), "negative": negative.out(),
                       "latent_image": latent.out()},
                widgets=dict(add_noise="enable", noise_seed=42, **stage, start_at_step=0, end_at_step=WAN22_SWITCH,
                             return_with_leftover_noise="enable"))
    low = Node(first_id + 3, "KSamplerAdvanced", (1500, y + 460), title=f"KSamplerAdvanced (low noise, {label})",
               links={"model": models[1], "positive": text.out(), "negative": negative.out(),
                      "latent_image": high.out()},
               widgets=dict(add_noise="disable", noise_seed=0, **stage, start_at_step=WAN22_SWITCH,
                            end_at_step=10000, return_with_leftover_noise="disable"))
    decode = Node(first_id + 1, "VAEDecode", (1860, y), links={"samples": low.out(), "vae": vae.out()})
    video = Node(first_id + 4, "CreateVideo", (1860, y + 120), links={"images": decode.out()}, widgets={"fps": 16.0})
    save = Node(first_id + 2, "SaveVideo", (2100, y), size=(400, 440), links={"video": video.out()},
                widgets={"filename_prefix": f"fastlane/{name}_{label}"})
    return _Branch([high, low, decode, video, save], decode)


def _wan22_note(compare: bool) -> str:
    if compare:
        return (f"## Wan 2.2 14B: Fastlane fastest vs baseline\n\n{COMPARE_NOTE} Each expert has its own Fastlane "
                "Benchmark on both branches and its own report (both compare the final videos' frames).\n\n"
                f"{WAN22_FILES_TEXT}")
    return ("## Wan 2.2 14B, fastest\n\nPer expert: **Quantize fp8_scaled_mm** (an Ada, Hopper or Blackwell GPU) → "
            f"**Target Speed Cache {WAN22_FRACTION}** (order {WAN22_ORDER}) → **Compile** regional (one block graph per expert, compiled on the "
            f"first run; queue again for the warm speed).\n\n{WAN22_ABOUT}\n\n{WAN22_FILES_TEXT}\n\n{UNMEASURED}")


def wan22_fastest() -> Workflow:
    return _wan22(compare=False)


def wan22_compare() -> Workflow:
    return _wan22(compare=True)


WORKFLOWS = [demo_compare, flux_baseline, flux_balanced, flux_fastest, flux_compare, sdxl_baseline, sdxl_balanced,
             sdxl_fastest, sdxl_compare, qwen_image_fastest, qwen_image_compare, z_image_fastest, z_image_compare,
             wan22_fastest, wan22_compare]


# -- node definitions ----------------------------------------------------------------------------------------------
def load_comfyui() -> None:
    """Import the real ComfyUI (found as scripts/setup.sh found it) with this pack loaded, in this process."""
    sys.path.insert(0, str(PACK_DIR / "tests"))
    import comfy_host

    comfy_host.load()


def node_info(node_type: str) -> dict:
    """What ``GET /object_info/<node_type>`` answers, computed in this process (ComfyUI's server.py logic)."""
    from comfy_api.internal import _ComfyNodeInternal

    import nodes

    cls = nodes.NODE_CLASS_MAPPINGS[node_type]
    if issubclass(cls, _ComfyNodeInternal):
        return cls.GET_NODE_INFO_V1()
    inputs = cls.INPUT_TYPES()
    return {
        "input": inputs,
        "input_order": {k: list(v) for k, v in inputs.items()},
        "output": list(cls.RETURN_TYPES),
        "output_name": list(getattr(cls, "RETURN_NAMES", cls.RETURN_TYPES)),
        "output_node": bool(getattr(cls, "OUTPUT_NODE", False)),
        "display_name": nodes.NODE_DISPLAY_NAME_MAPPINGS.get(node_type, node_type),
    }


def input_specs(info: dict) -> list[tuple[str, Any, dict]]:
    """(name, type, options) of every required and optional input, in the order the frontend lays them out."""
    specs = []
    for section in ("required", "optional"):
        for name in info.get("input_order", {}).get(section, []):
            spec = info["input"][section][name]
            specs.append((name, spec[0], spec[1] if len(spec) > 1 and isinstance(spec[1], dict) else {}))
    return specs


def is_widget(input_type: Any, options: dict) -> bool:
    return (isinstance(input_type, list) or input_type in WIDGET_TYPES) and not options.get("forceInput", False)


def widget_value(node: Node, name: str, input_type: Any, options: dict) -> Any:
    """The node's value for a widget: as described, else the input's default (a combo's first option)."""
    if name in node.widgets:
        return node.widgets[name]
    if "default" in options:
        return options["default"]
    choices = input_type if isinstance(input_type, list) else options.get("options")
    if choices:
        return choices[0]
    raise ValueError(f"node {node.id} ({node.type}): widget {name} has no value and no default")


def has_seed_control(name: str, input_type: Any, options: dict) -> bool:
    """The frontend adds a "control after generate" widget (saved right after the value) to these INT inputs."""
    return input_type == "INT" and options.get("control_after_generate", name in ("seed", "noise_seed"))


# -- formats -------------------------------------------------------------------------------------------------------
def _executable(workflow: Workflow, include_muted: bool = True) -> list[Node]:
    return [n for n in workflow.nodes if n.type not in UI_ONLY_TYPES and (include_muted or n.mode != MUTED)]


def api_format(workflow: Workflow, include_muted: bool = False) -> dict:
    """``{"<id>": {"class_type", "inputs", "_meta": {"title"}}}`` with inputs in the node's input order. Muted nodes
    are left out, as the frontend leaves them out of the prompt it queues; ``include_muted``: the prompt the UI file
    queues once its muted groups are switched on."""
    out = {}
    for node in _executable(workflow, include_muted):
        info = node_info(node.type)
        inputs: dict[str, Any] = {}
        for name, input_type, options in input_specs(info):
            if name in node.links:
                source, slot = node.links[name]
                inputs[name] = [str(source.id), slot]
            elif is_widget(input_type, options):
                inputs[name] = widget_value(node, name, input_type, options)
        unknown = (set(node.links) | set(node.widgets)) - set(inputs)
        if unknown:
            raise ValueError(f"node {node.id} ({node.type}) has no inputs {sorted(unknown)}")
        out[str(node.id)] = {"class_type": node.type, "inputs": inputs,
                             "_meta": {"title": node.title or info.get("display_name") or node.type}}
    return out


def _topological_order(workflow: Workflow) -> dict[int, int]:
    order: dict[int, int] = {}
    remaining = list(workflow.nodes)
    while remaining:
        ready = [n for n in remaining if all(src.id in order for src, _ in n.links.values())]
        if not ready:
            raise ValueError(f"{workflow.name}: the graph has a cycle")
        for n in ready:
            order[n.id] = len(order)
            remaining.remove(n)
    return order


def _default_size(sockets: int, outputs: int, widgets: int) -> list[float]:
    return [300.0, float(30 + 22 * max(sockets, outputs) + 26 * widgets + 10)]


def ui_format(workflow: Workflow) -> dict:
    order = _topological_order(workflow)
    links: list[list] = []
    ui_nodes: list[dict] = []
    # output (node id, slot) -> link ids, filled while the inputs are laid out
    output_links: dict[tuple[int, int], list[int]] = {}
    infos = {n.type: node_info(n.type) for n in _executable(workflow)}
    for node in sorted(workflow.nodes, key=lambda n: n.id):
        for name, (source, slot) in node.links.items():
            output_links.setdefault((source.id, slot), [])
    for node in sorted(workflow.nodes, key=lambda n: n.id):
        if node.type in UI_ONLY_TYPES:
            ui_nodes.append({
                "id": node.id, "type": node.type, "pos": list(node.pos), "size": list(node.size or (400, 200)),
                "flags": {}, "order": order[node.id], "mode": 0, "inputs": [], "outputs": [], "properties": {},
                "widgets_values": [node.widgets["text"]], **({"title": node.title} if node.title else {}),
                "color": "#432", "bgcolor": "#653"})
            continue
        info = infos[node.type]
        sockets, widgets_values = [], []
        for name, input_type, options in input_specs(info):
            if is_widget(input_type, options):
                if name in node.links:
                    raise ValueError(f"node {node.id}: {name} is a widget; converting widgets to inputs is not supported")
                widgets_values.append(widget_value(node, name, input_type, options))
                if has_seed_control(name, input_type, options):
                    widgets_values.append("fixed")
                elif options.get("control_after_generate"):
                    raise ValueError(f"node {node.id}: combo with control_after_generate is not supported")
                continue
            link = None
            if name in node.links:
                source, slot = node.links[name]
                link = len(links) + 1
                source_type = infos[source.type]["output"][slot]
                links.append([link, source.id, slot, node.id, len(sockets), source_type])
                output_links[(source.id, slot)].append(link)
            elif name in info["input"].get("required", {}):
                raise ValueError(f"node {node.id} ({node.type}): required input {name} is not connected")
            sockets.append({"name": name, "type": input_type, "link": link})
        outputs = [{"name": out_name, "type": out_type, "links": output_links.get((node.id, slot), []),
                    "slot_index": slot}
                   for slot, (out_type, out_name) in enumerate(zip(info["output"], info["output_name"]))]
        entry = {"id": node.id, "type": node.type, "pos": list(node.pos),
                 "size": list(node.size or _default_size(len(sockets), len(outputs), len(widgets_values))),
                 "flags": {}, "order": order[node.id], "mode": node.mode, "inputs": sockets, "outputs": outputs,
                 "properties": {"Node name for S&R": node.type}, "widgets_values": widgets_values}
        if node.title:
            entry["title"] = node.title
        ui_nodes.append(entry)
    groups = []
    for i, group in enumerate(workflow.groups, 1):
        boxes = [(n.pos[0], n.pos[1], n.pos[0] + _size_of(ui_nodes, n.id)[0], n.pos[1] + _size_of(ui_nodes, n.id)[1])
                 for n in group.members]
        x0, y0 = min(b[0] for b in boxes) - 20, min(b[1] for b in boxes) - 60
        x1, y1 = max(b[2] for b in boxes) + 20, max(b[3] for b in boxes) + 20
        groups.append({"id": i, "title": group.title, "bounding": [x0, y0, x1 - x0, y1 - y0], "color": group.color,
                       "font_size": 24, "flags": {}})
    return {"last_node_id": max(n.id for n in workflow.nodes), "last_link_id": len(links), "nodes": ui_nodes,
            "links": links, "groups": groups, "config": {}, "extra": {"ds": {"scale": 0.7, "offset": [460, 80]}},
            "version": 0.4}


def _size_of(ui_nodes: list[dict], node_id: int) -> list[float]:
    return next(n["size"] for n in ui_nodes if n["id"] == node_id)


def render(workflow: Workflow) -> dict[Path, str]:
    """File path -> file text of both formats of ``workflow``."""
    def dump(data: dict) -> str:
        return json.dumps(data, indent=2) + "\n"

    return {WORKFLOWS_DIR / f"{workflow.name}.json": dump(ui_format(workflow)),
            WORKFLOWS_DIR / "api" / f"{workflow.name}.api.json": dump(api_format(workflow))}


def build_all() -> dict[Path, str]:
    files: dict[Path, str] = {}
    for make in WORKFLOWS:
        files.update(render(make()))
    return files


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true", help="only compare; exit 1 if a file is missing or differs")
    args = parser.parse_args(argv)
    load_comfyui()
    stale = []
    for path, text in build_all().items():
        current = path.read_text() if path.exists() else None
        if current == text:
            continue
        stale.append(path)
        if not args.check:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text)
            print(f"wrote {path.relative_to(PACK_DIR)}")
    if args.check and stale:
        print("out of date (run scripts/make_workflows.py): " + ", ".join(str(p.relative_to(PACK_DIR)) for p in stale))
        return 1
    if not stale:
        print("workflows/ is up to date")
    return 0


if __name__ == "__main__":
    sys.exit(main())
