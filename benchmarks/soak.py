"""Soak runner (issue 21): a long-running ComfyUI server with the Fastlane pack must never need a restart.

A script, not a timed unit test (``tests/test_soak.py`` runs a short version of it in CI). It starts a private
headless ComfyUI (``tests/comfy_server.py``: ``main.py --cpu`` on 127.0.0.1, private base directory, only this pack
among the custom nodes) or attaches to a running one (``--url``, ``--pid``), and drives it only through its HTTP API
(``POST /prompt``, ``GET /history/<id>``, ``GET /queue``, ``POST /interrupt``, ``GET /system_stats``) with N prompts
built from the pack's CPU-runnable demo graphs: a seeded random mix of model family (flux, flux-proxy, sdxl),
resolution (96/128/160), batch (1/2), sampler (euler, heun, dpmpp_2m), step cacher (none, FORA, TaylorSeer, Target
Speed with a varying compute fraction, Spectrum Cache, Adaptive, ComfyUI's own EasyCache), LoRA strength (ComfyUI's
LoraLoaderModelOnly with a random LoRA per demo family, written into the server's loras folder), Fastlane Quantize
(int8 weight-only / dynamic) and Fastlane Compile on or off (at 128x128 batch 1; a compile at a family and
quantization already compiled at that shape is an unexpected recompile: a goal). Every ``--interrupt-every``
-th prompt gets ``POST /interrupt`` shortly after it starts; every ``--bad-every``-th prompt is malformed (unknown
node, compute_fraction 0, a missing input, ...) and must be answered with HTTP 400 (+ node_errors where a node is to
blame); every ``--repeat-every``-th prompt repeats an earlier completed prompt verbatim, whose saved image must be
bit-identical (decoded pixels) to the first run's.

After each prompt it records the server's RSS (psutil on the server PID) and the part of it no file backs (``anon``:
RSS less shared, file-backed pages such as mapped model files), and, where CUDA exists, the VRAM in use from
/system_stats, and writes one JSON line to ``OUT/prompts.jsonl``; at the end ``OUT/summary.json`` and a printed
summary. Exit status 1 when a goal fails: the server died, a malformed prompt was not rejected, a valid prompt failed,
a repeated prompt's output differed from its first run, or the host memory slope after warm-up (least-squares line
over prompts of anon memory, per model family when the mix has several, the steepest counting) exceeds
``--max-rss-slope-mb`` per 100 prompts.

    .venv/bin/python benchmarks/soak.py --prompts 500 --out out/soak

``--real`` (the lent GPU; ``benchmarks/device_soak.sh`` runs it): the prompt mix of ``soak_real.py`` (the shipped
FLUX.1-dev / SDXL workflows with random-weight model files of the real architectures, varied in size, steps, batch,
sampler, cacher, compile, LoRA strength), a server on the GPU, and per prompt also torch's allocated memory, the
compilations and CUDA-graph recordings the server logged (a compile at a graph and shape compiled before is an
unexpected recompile: a goal), and VRAM floors (``POST /free``, then what torch still holds) at the start and the
end. A repeat whose pixels differ is reported with its largest difference; ``--repeat-tolerance`` (8-bit levels)
sets what passes, and the prompt is repeated once more after another prompt (a follow-up, which also counts as a
repeat): its pixels equal to the first run's mean a one-off, equal to the differing repeat's mean state kept between
prompts, unlike both mean GPU kernels that vary run to run. ``--end-by`` / ``--time-budget`` stop sending prompts in
time; ``--min-prompts`` is then the goal.
"""
from __future__ import annotations

import argparse
import copy
import hashlib
import io
import json
import random
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import requests

PACK_DIR = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(PACK_DIR / "tests"))
from comfy_server import ComfyServer  # noqa: E402  (tests/comfy_server.py: the server the tests start)
# the chain the GPU mix builds, shared: its node ids, LoRA strengths and Compile settings
from soak_real import COMPILE_ID, DEFAULT_COMPILE, LORA_ID, LORA_STRENGTHS, QUANT_ID  # noqa: E402,F401

FAMILIES = ("flux", "flux-proxy", "sdxl")
SIZES = (96, 128, 160)
BATCHES = (1, 2)
SAMPLERS = ("euler", "heun", "dpmpp_2m")
CACHERS = ("none", "FORA", "TaylorSeer", "TargetSpeed", "Spectrum", "Adaptive", "EasyCache")
SUBJECTS = {
    "flux": ("cat", "retina"),
    "sdxl": ("cat", "retina"),
    "flux-proxy": ("a medium yellow star on the left and a small blue square on the right, sunset sky, calm water",
                   "a large red circle in the centre, night sky, snowy ground"),
}
BAD_KINDS = ("unknown_node", "compute_fraction_0", "missing_input", "bad_sampler", "dangling_link")
SAVE_NODE = "9"
QUANTIZE_SCHEMES = (None, None, None, "int8_weight_only", "int8_dynamic")  # None: no Quantize node
DEMO_LORA_TARGETS = {"flux": ("fastlane-demo-flux", "flux"), "flux-proxy": ("fastlane-proxy-flux", "flux"),
                     "sdxl": ("fastlane-demo-sdxl", "sdxl")}  # family -> (demo weights file, LoRA targets)


def demo_lora_name(family: str) -> str:
    return f"fastlane-soak-demo-{family}.safetensors"


def write_demo_loras(lora_dir: Path) -> list[str]:
    """A random LoRA (``workflow_lora.py``: rank 16 on the attention projections, ComfyUI's generic keys) for each
    demo family under ``lora_dir`` (a server's ``models/loras``), named ``demo_lora_name(family)``."""
    import workflow_lora

    weights = PACK_DIR / "demo" / "weights"
    names = []
    for family, (stem, targets) in DEMO_LORA_TARGETS.items():
        with tempfile.TemporaryDirectory() as tmp:
            workflow_lora.write_random_lora(weights / f"{stem}.safetensors", targets, Path(tmp))
            lora_dir.mkdir(parents=True, exist_ok=True)
            shutil.move(str(Path(tmp) / workflow_lora.LORA_NAME), str(lora_dir / demo_lora_name(family)))
        names.append(demo_lora_name(family))
    return names


# -- the prompts ------------------------------------------------------------------------------------------------------

def cacher_node(name: str, model_ref: list, rng: random.Random) -> dict | None:
    full = {"start": 0.0, "end": 1.0}
    if name == "none":
        return None
    if name == "FORA":
        return {"class_type": "FastlaneFORA", "inputs": {"model": model_ref, "interval": rng.choice((2, 3)),
                                                          "granularity": "auto", **full}}
    if name == "TaylorSeer":
        return {"class_type": "FastlaneTaylorSeer", "inputs": {"model": model_ref, "interval": 3, "order": 2,
                                                                "warmup_steps": 2, "granularity": "auto", **full}}
    if name == "TargetSpeed":  # the "strength" knob of the mix: a different compute fraction each time
        return {"class_type": "FastlaneTargetSpeedCache",
                "inputs": {"model": model_ref, "compute_fraction": rng.choice((0.25, 0.3, 0.4, 0.5, 0.7)),
                           "order": rng.choice((1, 2)), "granularity": "auto", **full}}
    if name == "Spectrum":
        return {"class_type": "FastlaneSpectrumCache",
                "inputs": {"model": model_ref, "compute_fraction": rng.choice((0.3, 0.5)), "degree": 2, "ridge": 0.01,
                           "blend": 0.5, "warmup_steps": 1, "growth": 0.0, "coordinate": "step", "granularity": "auto",
                           **full}}
    if name == "Adaptive":
        return {"class_type": "FastlaneAdaptiveCache",
                "inputs": {"model": model_ref, "threshold": 0.15, "max_skips": 3, "order": 1, "warmup_steps": 2,
                           "granularity": "auto", **full}}
    if name == "EasyCache":
        return {"class_type": "EasyCache", "inputs": {"model": model_ref, "reuse_threshold": 0.2,
                                                       "start_percent": 0.15, "end_percent": 0.95, "verbose": False}}
    raise ValueError(name)


def build_prompt(spec: dict, rng: random.Random) -> dict:
    """The demo graph (loader -> [LoRA] -> [Quantize] -> [cacher] -> [Compile] -> KSampler -> decode -> SaveImage)
    for one ``spec``."""
    family, size, batch = spec["family"], spec["size"], spec["batch"]
    sdxl = family == "sdxl"
    positive = {"family": family, "subject": "none", "text": spec["subject"]}
    graph: dict[str, dict] = {
        "1": {"class_type": "FastlaneDemoModelLoader", "inputs": {"family": family}},
        "2": {"class_type": "FastlaneDemoPrompt", "inputs": positive},
        "4": {"class_type": "EmptyLatentImage" if sdxl else "EmptySD3LatentImage",
              "inputs": {"width": size, "height": size, "batch_size": batch}},
    }
    if sdxl:
        graph["3"] = {"class_type": "FastlaneDemoPrompt", "inputs": {"family": family, "subject": "none", "text": ""}}
    else:
        graph["3"] = {"class_type": "ConditioningZeroOut", "inputs": {"conditioning": ["2", 0]}}
    model_ref = ["1", 0]
    if spec.get("lora") is not None:
        graph[LORA_ID] = {"class_type": "LoraLoaderModelOnly", "inputs": {
            "model": model_ref, "lora_name": demo_lora_name(family), "strength_model": spec["lora"]}}
        model_ref = [LORA_ID, 0]
    if spec.get("quantize"):
        graph[QUANT_ID] = {"class_type": "FastlaneQuantize", "inputs": {
            "model": model_ref, "scheme": spec["quantize"], "filter": "none", "few_row_linears": "auto"}}
        model_ref = [QUANT_ID, 0]
    cacher = cacher_node(spec["cacher"], model_ref, rng)
    if cacher is not None:
        graph["5"] = cacher
        model_ref = ["5", 0]
    if spec.get("compile"):
        graph[COMPILE_ID] = {"class_type": "FastlaneCompile", "inputs": {"model": model_ref, **DEFAULT_COMPILE}}
        model_ref = [COMPILE_ID, 0]
    graph["7"] = {"class_type": "KSampler", "inputs": {
        "model": model_ref, "seed": spec["seed"], "steps": spec["steps"], "cfg": 5.0 if sdxl else 1.0,
        "sampler_name": spec["sampler"], "scheduler": "normal" if sdxl else "simple",
        "positive": ["2", 0], "negative": ["3", 0], "latent_image": ["4", 0], "denoise": 1.0}}
    graph["8"] = {"class_type": "FastlaneDemoDecode", "inputs": {"family": family, "samples": ["7", 0]}}
    graph[SAVE_NODE] = {"class_type": "SaveImage", "inputs": {"images": ["8", 0], "filename_prefix": "soak/soak"}}
    return graph


def random_spec(rng: random.Random, steps: int) -> dict:
    family = rng.choice(FAMILIES)
    return {"family": family, "subject": rng.choice(SUBJECTS[family]), "size": rng.choice(SIZES),
            "batch": rng.choice(BATCHES), "sampler": rng.choice(SAMPLERS), "cacher": rng.choice(CACHERS),
            "seed": rng.randrange(2**32), "steps": steps}


class DemoMix:
    """The demo-model mix (the CPU soak and CI); ``soak_real.RealMix`` is the real-architecture one (``--real``).

    Besides family, size, batch, sampler and cacher, a prompt may put ComfyUI's ``LoraLoaderModelOnly`` (a random
    LoRA per demo family, strengths 0.5-1.0; only where ``loras`` says the server has the files:
    ``write_demo_loras``), Fastlane Quantize (int8 weight-only or dynamic: the schemes a CPU runs) and Fastlane
    Compile (regional, inductor; at ``compile_shapes`` only, since each new shape compiles new graphs) in front of
    its cacher, in the order of the shipped workflows: loader -> LoRA -> Quantize -> cacher -> Compile.
    """

    bad_kinds = BAD_KINDS
    save_node = SAVE_NODE
    sampler_node = "7"

    def __init__(self, steps: int = 20, loras: bool = False, compile_share: float = 0.2,
                 compile_shapes: tuple[tuple[int, int], ...] = ((128, 1),)) -> None:
        self.steps, self.loras = steps, loras
        self.compile_share, self.compile_shapes = compile_share, compile_shapes

    def random_spec(self, rng: random.Random, long: bool = False) -> dict:
        spec = random_spec(rng, self.steps * (4 if long else 1))
        spec["lora"] = rng.choice(LORA_STRENGTHS) if self.loras else None
        spec["quantize"] = rng.choice(QUANTIZE_SCHEMES)
        spec["compile"] = rng.random() < self.compile_share
        if spec["compile"]:
            spec["size"], spec["batch"] = rng.choice(self.compile_shapes)
        return spec

    def build(self, spec: dict, rng: random.Random) -> dict:
        return build_prompt(spec, rng)

    def malform(self, prompt: dict, kind: str) -> dict:
        return malform(prompt, kind)

    @staticmethod
    def describe(spec: dict) -> str:
        extras = "".join((f" lora{spec['lora']}" if spec.get("lora") is not None else "",
                          f" {spec['quantize']}" if spec.get("quantize") else "",
                          " compile" if spec.get("compile") else ""))
        return f"{spec['family']} {spec['size']}x{spec['batch']} {spec['sampler']} {spec['cacher']}{extras}"

    @staticmethod
    def graph_key(spec: dict) -> str:
        """What one set of compiled graphs serves: the family and its quantization (a LoRA strength or a cacher
        changes weights and calls, not the graphs)."""
        return spec["family"] + (f"+{spec['quantize']}" if spec.get("quantize") else "") + "+compile"

    @staticmethod
    def shape(spec: dict) -> str:
        return f"{spec['size']}x{spec['size']}x{spec['batch']}"


def fill_defaults(prompt: dict, object_info: dict) -> dict:
    """Adds any required widget input a node of ``prompt`` lacks, at its default from /object_info (so a new input
    of a pack node does not turn the soak's valid prompts into rejected ones)."""
    for node in prompt.values():
        required = object_info.get(node["class_type"], {}).get("input", {}).get("required", {})
        for name, spec in required.items():
            if name not in node["inputs"] and len(spec) > 1 and isinstance(spec[1], dict) and "default" in spec[1]:
                node["inputs"][name] = spec[1]["default"]
    return prompt


def malform(prompt: dict, kind: str) -> dict:
    """A copy of ``prompt`` that ComfyUI's validation must reject as a whole (HTTP 400)."""
    bad = copy.deepcopy(prompt)
    if kind == "unknown_node":
        bad["8"]["class_type"] = "FastlaneNoSuchNode"
    elif kind == "compute_fraction_0":
        bad["5"] = {"class_type": "FastlaneTargetSpeedCache",
                    "inputs": {"model": ["1", 0], "compute_fraction": 0.0, "order": 1, "granularity": "auto",
                               "start": 0.0, "end": 1.0}}
        bad["7"]["inputs"]["model"] = ["5", 0]
    elif kind == "missing_input":
        del bad["7"]["inputs"]["latent_image"]
    elif kind == "bad_sampler":
        bad["7"]["inputs"]["sampler_name"] = "no_such_sampler"
    elif kind == "dangling_link":
        bad["8"]["inputs"]["samples"] = ["404", 0]
    else:
        raise ValueError(kind)
    return bad


# -- the server -------------------------------------------------------------------------------------------------------

@dataclass
class Api:
    """The HTTP API of one server (started here or attached to), and its process for RSS."""

    url: str
    pid: int | None = None
    server: ComfyServer | None = None
    log_path: Path | None = None  # the server's log (compilations, recordings, OOMs per prompt); None: not read
    _log_offset: int = 0

    def __post_init__(self) -> None:
        if self.log_path is None and self.server is not None:
            self.log_path = self.server.log_path
        self.mark_log()

    def mark_log(self) -> None:
        """From here on, ``log_since_mark`` returns what the server logs."""
        self._log_offset = self.log_path.stat().st_size if self.log_path and self.log_path.exists() else 0

    def log_since_mark(self) -> str:
        if not self.log_path or not self.log_path.exists():
            return ""
        with open(self.log_path, "rb") as f:
            f.seek(self._log_offset)
            data = f.read()
        self._log_offset += len(data)
        return data.decode(errors="replace")

    def post(self, path: str, body: dict | None = None, timeout: float = 30) -> requests.Response:
        return requests.post(f"{self.url}{path}", json=body if body is not None else {}, timeout=timeout)

    def get(self, path: str, timeout: float = 30) -> requests.Response:
        return requests.get(f"{self.url}{path}", timeout=timeout)

    def exit_code(self) -> int | None:
        """The server's exit code once its process has ended (None: running, or not started here)."""
        if self.server is None or self.server.process is None:
            return None
        return self.server.process.poll()

    def alive(self, tries: int = 3) -> bool:
        """True while the server answers; a server busy for a few seconds (loading a checkpoint, compiling) is
        asked again ``tries`` times before it counts as gone. A process that has ended is gone at once."""
        for attempt in range(tries):
            if self.exit_code() is not None:
                return False
            try:
                if self.get("/system_stats", timeout=10).ok:
                    return True
            except requests.RequestException:
                pass
            if attempt + 1 < tries:
                time.sleep(2.0)
        return False

    def death(self, lines: int = 60) -> dict:
        """What is known of a server that stopped answering: its exit code (negative: the signal that killed it)
        and the end of its log, where a Python traceback or faulthandler's dump says why."""
        text = ""
        if self.log_path and self.log_path.exists():
            with open(self.log_path, "rb") as f:
                f.seek(max(0, self.log_path.stat().st_size - 20000))
                text = f.read().decode(errors="replace")
        return {"exit_code": self.exit_code(), "log_tail": text.splitlines()[-lines:]}

    def host_memory(self) -> dict:
        """The server's RSS and the part of it no file backs (``anon_mb``: RSS less its shared, file-backed pages;
        Linux), MB: the second is what a leak grows; the rest of RSS is pages of mapped model files, which the kernel
        may drop and map again, so it follows which model files were read last rather than what the process keeps.
        None where there is no PID (or the server is gone)."""
        if self.pid is None:
            return {"rss_mb": None, "anon_mb": None}
        import psutil
        try:
            info = psutil.Process(self.pid).memory_info()
        except psutil.Error:
            return {"rss_mb": None, "anon_mb": None}
        shared = getattr(info, "shared", None)
        return {"rss_mb": info.rss / 2**20, "anon_mb": (info.rss - shared) / 2**20 if shared is not None else None}

    def vram(self) -> dict:
        """The first CUDA device per /system_stats, MB: ``vram_mb`` in use on the device (vram_total - vram_free:
        every process, torch's cached blocks not counted), ``torch_allocated_mb`` (torch_vram_total - torch_vram_free:
        the server's live tensors), ``torch_reserved_mb`` (its caching allocator's total). {} on a CPU-only server."""
        try:
            devices = self.get("/system_stats", timeout=10).json().get("devices", [])
        except (requests.RequestException, ValueError):
            return {}
        for d in devices:
            if d.get("type") == "cuda":
                return {"vram_mb": round((d.get("vram_total", 0) - d.get("vram_free", 0)) / 2**20, 1),
                        "torch_allocated_mb": round((d.get("torch_vram_total", 0) - d.get("torch_vram_free", 0))
                                                    / 2**20, 1),
                        "torch_reserved_mb": round(d.get("torch_vram_total", 0) / 2**20, 1)}
        return {}

    def vram_mb(self) -> float | None:
        return self.vram().get("vram_mb")

    def floor(self, settle: float = 3.0) -> dict:
        """POST /free (unload every model, drop ComfyUI's node cache), wait for the worker to do it, then the VRAM
        and RSS left: what the server keeps when nothing is loaded (leaks show here, not in the noisy per-prompt
        numbers of a mix that loads and unloads 5-22 GB models)."""
        self.post("/free", {"unload_models": True, "free_memory": True})
        time.sleep(settle)
        last, deadline = self.vram(), time.monotonic() + 20  # unloading moves 5-22 GB models to the CPU first
        while last and time.monotonic() < deadline:
            time.sleep(1.0)
            now = self.vram()
            if now.get("torch_allocated_mb") == last.get("torch_allocated_mb"):
                break
            last = now
        return {**last, **self.host_memory()}

    def running(self, prompt_id: str) -> bool:
        try:
            return any(item[1] == prompt_id for item in self.get("/queue", timeout=10).json().get("queue_running", []))
        except (requests.RequestException, ValueError):
            return False

    def wait(self, prompt_id: str, timeout: float) -> dict:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            entry = self.get(f"/history/{prompt_id}").json().get(prompt_id)
            if entry and entry.get("status", {}).get("completed") is not None \
                    and entry["status"].get("status_str") in ("success", "error"):
                return entry
            if not self.alive():
                raise RuntimeError(f"server died while running {prompt_id}")
            time.sleep(0.05)
        raise TimeoutError(f"prompt {prompt_id} did not finish in {timeout:.0f}s")


def find_pid(port: int) -> int | None:
    """PID of the process listening on 127.0.0.1:``port`` (may need privileges; None when not found)."""
    import psutil
    try:
        for c in psutil.net_connections("tcp"):
            if c.status == psutil.CONN_LISTEN and c.laddr and c.laddr.port == port and c.pid:
                return c.pid
    except psutil.Error:
        pass
    return None


def image_hash(path: Path) -> str:
    """sha256 of the decoded pixels (not the PNG bytes: those carry the prompt as metadata)."""
    from PIL import Image
    with Image.open(path) as im:
        return hashlib.sha256(f"{im.mode}{im.size}".encode() + im.tobytes()).hexdigest()


def output_images(api: Api, entry: dict, save_node: str = SAVE_NODE) -> list:
    """The saved images of a finished prompt: local paths (a server started here) or PIL images read via /view."""
    from PIL import Image
    images = entry.get("outputs", {}).get(save_node, {}).get("images", [])
    out = []
    for img in images:
        if api.server is not None:
            out.append(api.server.file_path(img))
        else:  # attached: read it through /view
            params = {"filename": img["filename"], "subfolder": img.get("subfolder", ""),
                      "type": img.get("type", "output")}
            r = requests.get(f"{api.url}/view", params=params, timeout=30)
            r.raise_for_status()
            with Image.open(io.BytesIO(r.content)) as im:
                out.append(im.copy())
    return out


def _pixels(image):
    from PIL import Image
    if isinstance(image, Path):
        with Image.open(image) as im:
            return im.copy()
    return image


def output_hash(api: Api, entry: dict, save_node: str = SAVE_NODE) -> tuple[str | None, list]:
    images = output_images(api, entry, save_node)
    if not images:
        return None, []
    digest = hashlib.sha256()
    for img in images:
        im = _pixels(img)
        digest.update(hashlib.sha256(f"{im.mode}{im.size}".encode() + im.tobytes()).hexdigest().encode())
    return digest.hexdigest(), images


def pixel_diff(first: list, again: list) -> dict:
    """Largest and mean absolute difference (8-bit levels) between two runs' images."""
    import numpy as np
    if len(first) != len(again):
        return {"max": 255, "mean": 255.0, "note": f"{len(first)} vs {len(again)} images"}
    worst, means = 0, []
    for a, b in zip(first, again):
        x, y = np.asarray(_pixels(a), dtype=np.int16), np.asarray(_pixels(b), dtype=np.int16)
        if x.shape != y.shape:
            return {"max": 255, "mean": 255.0, "note": f"shapes {x.shape} vs {y.shape}"}
        d = np.abs(x - y)
        worst, means = max(worst, int(d.max())), means + [float(d.mean())]
    return {"max": worst, "mean": round(sum(means) / len(means), 4)}


# -- the soak ---------------------------------------------------------------------------------------------------------

@dataclass
class SoakConfig:
    prompts: int = 500
    seed: int = 0
    steps: int = 20
    interrupt_every: int = 10
    bad_every: int = 9
    repeat_every: int = 6
    warmup: int | None = None  # prompts left out of the RSS fit; default max(10, prompts // 5)
    max_rss_slope_mb: float = 25.0
    prompt_timeout: float = 300.0
    clear_history: bool = False
    out: Path | None = None
    mix: Any = None  # DemoMix(steps) unless given (soak_real.RealMix for --real)
    repeat_tolerance: int = 0  # largest pixel difference (8-bit levels) a repeat may show; 0: bit-identical
    time_budget: float | None = None  # stop sending prompts after this many seconds ...
    finish_by: float | None = None  # unix time: a prompt still running then is cut (not a failure), no end floor
    min_prompts: int | None = None  # ... but a run with fewer than these fails (default: all of them)
    vram_floors: bool = False  # POST /free at the start and the end; the VRAM left is the floor
    warm_floor: bool = False  # ... and after warm-up (the next prompts load their models again: ~10-30 s on a GPU)
    max_vram_floor_growth_mb: float = 512.0  # largest allowed growth of torch's allocated floor (end vs warm/start)
    server_args: str = ""  # the --real server's extra ComfyUI arguments (e.g. --deterministic), kept in the summary
    follow_up_repeats: bool = True  # a repeat that differs is repeated once more (after another prompt): see below
    fail_on_recompile: bool = True

    def warmup_prompts(self) -> int:
        return self.warmup if self.warmup is not None else max(10, self.prompts // 5)


@dataclass
class SoakResult:
    records: list[dict] = field(default_factory=list)
    summary: dict = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return not self.summary.get("failures")


def linear_slope(xs: list[float], ys: list[float]) -> float | None:
    n = len(xs)
    if n < 3:
        return None
    mx, my = sum(xs) / n, sum(ys) / n
    sxx = sum((x - mx) ** 2 for x in xs)
    return sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / sxx if sxx else None


def plan(config: SoakConfig) -> list[str]:
    """The kind of each prompt: run, interrupt, bad, repeat (repeat needs earlier completed prompts)."""
    kinds = []
    for i in range(1, config.prompts + 1):
        if config.bad_every and i % config.bad_every == 0:
            kinds.append("bad")
        elif config.interrupt_every and i % config.interrupt_every == 0:
            kinds.append("interrupt")
        elif config.repeat_every and i % config.repeat_every == 0 and i > config.repeat_every:
            kinds.append("repeat")
        else:
            kinds.append("run")
    return kinds


def follow_up_verdict(first_hash: str, differing_hash: str, follow_up_hash: str) -> str:
    """What a second repeat of a prompt whose first repeat differed says about the cause.

    ``first``: the follow-up gives the first run's pixels again, so the differing repeat was a one-off (GPU work
    that varies between runs, or state that a prompt in between left and the next one cleared); ``repeat``: it gives
    the differing repeat's pixels, so the server's output for this prompt changed after the first run and stayed
    changed (state kept between prompts: a patched weight, a model loaded another way); ``neither``: every run gives
    other pixels (GPU kernels that are not run-to-run deterministic).
    """
    if follow_up_hash == first_hash:
        return "first"
    return "repeat" if follow_up_hash == differing_hash else "neither"


FOLLOW_UP_WORDS = {"first": "the first run's pixels again", "repeat": "the differing repeat's pixels again",
                   "neither": "pixels unlike both"}


def after_model_switch(records: list[dict], index: int) -> bool:
    """Prompt ``index`` came straight after an executed prompt of another model family (malformed prompts, which
    run nothing, skipped): ComfyUI had loaded the other family's models in between.

    Why the soak tells this apart: on the lent H100 (s14-2 and s17-1, 16 repeats) every SDXL repeat whose first run or
    repeat came straight after a FLUX prompt differed by up to 10 levels (5 of 5, one with no Fastlane node acting),
    while the one FLUX repeat after an SDXL prompt and all 10 repeats without a switch were bit-identical."""
    family = lambda r: ((r or {}).get("spec") or {}).get("family")  # noqa: E731
    this = next((r for r in records if r["index"] == index), None)
    before = last_executed([r for r in records if r["index"] < index])
    return family(this) is not None and family(before) is not None and family(before) != family(this)


def last_executed(records: list[dict]) -> dict | None:
    """The record of the prompt ComfyUI executed last: a malformed prompt is rejected before it runs, so it changes
    no cache and loads no model."""
    return next((r for r in reversed(records) if r["kind"] != "bad"), None)


def last_executed_key(records: list[dict]) -> str | None:
    """The key of the prompt ComfyUI executed last: a verbatim repeat of it would be answered from ComfyUI's output
    cache without sampling again."""
    return (last_executed(records) or {}).get("key")


def run_soak(api: Api, config: SoakConfig, log=print) -> SoakResult:
    mix = config.mix or DemoMix(config.steps)
    rng = random.Random(config.seed)
    result = SoakResult()
    firsts: dict[str, dict] = {}  # canonical prompt json -> {"hash", "index", "prompt", "spec", "images"}
    follow_ups: list[dict] = []  # repeats that differed, waiting for their follow-up: {"key", "index", "hash"}
    out_file = None
    if config.out is not None:
        config.out.mkdir(parents=True, exist_ok=True)
        out_file = open(config.out / "prompts.jsonl", "w")
    bad_count = 0
    alive = True
    started = time.monotonic()
    object_info = api.get("/object_info", timeout=120).json()
    floors = {"start": api.floor(settle=1.0)} if config.vram_floors else {}
    try:
        for index, kind in enumerate(plan(config)):
            if config.time_budget is not None and time.monotonic() - started > config.time_budget:
                log(f"time budget of {config.time_budget:.0f} s spent after {index} prompts: stopping")
                break
            if config.vram_floors and config.warm_floor and index == config.warmup_prompts() and index:
                floors["warm"] = {**api.floor(), "after_prompts": index}
            # an interrupted prompt runs long enough for the interrupt to land while it samples
            spec = mix.random_spec(rng, long=kind == "interrupt")
            prompt = fill_defaults(mix.build(spec, rng), object_info)
            record: dict[str, Any] = {"index": index, "kind": kind}
            last = last_executed_key(result.records)
            waiting = next((f for f in follow_ups if f["key"] != last), None) if kind == "run" else None
            if waiting is not None:
                # the follow-up of a repeat that differed: the same prompt once more, after another prompt ran
                follow_ups.remove(waiting)
                kind = record["kind"] = "repeat"
                prompt = copy.deepcopy(firsts[waiting["key"]]["prompt"])
                spec = firsts[waiting["key"]]["spec"]
                record.update(repeat_of=firsts[waiting["key"]]["index"], follow_up_of=waiting["index"],
                              differing_hash=waiting["hash"])
            elif kind == "repeat":
                # an earlier completed prompt, verbatim, but not the last one (that would be served from the cache)
                candidates = [k for k in firsts if k != last]
                if candidates:
                    key = rng.choice(candidates)
                    prompt = copy.deepcopy(firsts[key]["prompt"])
                    spec = firsts[key]["spec"]
                    record["repeat_of"] = firsts[key]["index"]
                else:
                    kind = record["kind"] = "run"
            if kind == "bad":
                bad_kind = mix.bad_kinds[bad_count % len(mix.bad_kinds)]
                bad_count += 1
                prompt = mix.malform(prompt, bad_kind)
                record["bad_kind"] = bad_kind
            else:
                record["spec"] = spec
            key = json.dumps(prompt, sort_keys=True)
            record["key"] = key
            t0 = time.monotonic()
            api.mark_log()

            def unanswered(outcome: str, error: str, record: dict = record, t0: float = t0) -> bool:
                """Record a prompt the server did not answer; True when the server is gone (the soak stops)."""
                record.update(outcome=outcome, error=error)
                alive = api.alive()
                if not alive:
                    record["death"] = api.death()
                    log(f"server gone at prompt {record['index']}: exit code {record['death']['exit_code']}; "
                        "its log ends:\n  " + "\n  ".join(record["death"]["log_tail"][-25:]))
                _finish(api, record, result, out_file, t0, log, config, mix)
                return not alive

            try:
                r = api.post("/prompt", {"prompt": prompt, "client_id": "fastlane-soak"})
            except requests.RequestException as e:
                if unanswered("http_error", str(e)):
                    break
                continue
            record["http_status"] = r.status_code
            body = r.json() if r.headers.get("content-type", "").startswith("application/json") else {}
            if kind == "bad":
                record["node_errors"] = sorted(body.get("node_errors", {}))
                record["error_type"] = body.get("error", {}).get("type")
                rejected = r.status_code == 400 and "error" in body and (
                    bad_kind == "unknown_node" or bool(body.get("node_errors")))
                record["outcome"] = "rejected" if rejected else "not_rejected"
                if r.status_code == 200 and "prompt_id" in body:  # wrongly queued: let it finish, don't overlap
                    try:
                        api.wait(body["prompt_id"], config.prompt_timeout)
                    except Exception as e:  # noqa: BLE001
                        record["error"] = str(e)
                _finish(api, record, result, out_file, t0, log, config, mix)
                continue
            if r.status_code != 200:
                record.update(outcome="rejected_valid", error=json.dumps(body)[:2000])
                _finish(api, record, result, out_file, t0, log, config, mix)
                continue
            prompt_id = body["prompt_id"]
            record["prompt_id"] = prompt_id
            if kind == "interrupt":
                deadline = time.monotonic() + 30
                while time.monotonic() < deadline and not api.running(prompt_id):
                    if api.get(f"/history/{prompt_id}").json().get(prompt_id):
                        break  # already done
                    time.sleep(0.02)
                time.sleep(rng.uniform(0.02, 0.15))
                api.post("/interrupt", {"prompt_id": prompt_id})
            timeout = config.prompt_timeout
            if config.finish_by is not None:
                timeout = max(1.0, min(timeout, config.finish_by - time.time()))
            try:
                entry = api.wait(prompt_id, timeout)
            except (TimeoutError, RuntimeError, requests.RequestException) as e:
                if isinstance(e, TimeoutError) and config.finish_by is not None \
                        and time.time() >= config.finish_by - 1:
                    record.update(outcome="cut", error=f"still running at the end of the time budget: {e}")
                    api.post("/interrupt", {"prompt_id": prompt_id})
                    _finish(api, record, result, out_file, t0, log, config, mix)
                    break
                if unanswered("lost", str(e)):
                    break
                continue
            status = entry.get("status", {})
            events = [m[0] for m in status.get("messages", [])]
            if "execution_interrupted" in events:
                record["outcome"] = "interrupted"
            elif status.get("status_str") == "success":
                record["outcome"] = "ok"
                cached = next((m[1].get("nodes", []) for m in status["messages"] if m[0] == "execution_cached"), [])
                record["sampler_recomputed"] = mix.sampler_node not in cached  # a repeat must sample again
                h, images = output_hash(api, entry, mix.save_node)
                record["hash"] = h
                first = firsts.get(key)
                if first is None:
                    firsts[key] = {"hash": h, "index": index, "prompt": prompt, "spec": spec, "images": images}
                else:
                    record["first_hash"] = first["hash"]
                    record["hash_match"] = h == first["hash"]
                    if not record["hash_match"]:
                        record["pixel_diff"] = pixel_diff(first["images"], images)
                    if "follow_up_of" in record:
                        record["follow_up"] = follow_up_verdict(first["hash"], record["differing_hash"], h)
                    elif not record["hash_match"] and config.follow_up_repeats:
                        follow_ups.append({"key": key, "index": index, "hash": h})
            else:
                record["outcome"] = "failed"
                errors = [m[1] for m in status.get("messages", []) if m[0] == "execution_error"]
                record["error"] = json.dumps(errors)[:2000]
            _finish(api, record, result, out_file, t0, log, config, mix)
    finally:
        if out_file is not None:
            out_file.close()
    alive = api.alive()
    if config.vram_floors and alive:
        if config.finish_by is None or config.finish_by - time.time() > 25:
            floors["end"] = {**api.floor(), "after_prompts": len(result.records)}
        else:
            log("no time left for the end floor")
    result.summary = summarize(result.records, config, alive, time.monotonic() - started, mix, floors)
    if config.out is not None:
        (config.out / "summary.json").write_text(json.dumps(result.summary, indent=1))
    return result


def _finish(api: Api, record: dict, result: SoakResult, out_file, t0: float, log, config: SoakConfig,
            mix=None) -> None:
    record["seconds"] = round(time.monotonic() - t0, 3)
    if config.clear_history:  # ComfyUI keeps up to 10000 prompts in its history: tells its share of RSS growth apart
        try:
            api.post("/history", {"clear": True})
        except requests.RequestException:
            pass
    record.update(api.host_memory())
    vram = api.vram()
    record["vram_mb"] = vram.get("vram_mb")
    if vram:
        record["torch_allocated_mb"] = vram["torch_allocated_mb"]
        record["torch_reserved_mb"] = vram["torch_reserved_mb"]
    text = api.log_since_mark()
    if text:
        import soak_real
        record["log"] = soak_real.parse_log(text)
    result.records.append(record)
    if out_file is not None:
        out_file.write(json.dumps({k: v for k, v in record.items() if k != "key"}) + "\n")
        out_file.flush()
    spec = record.get("spec") or {}
    mix = mix or DemoMix()
    desc = record.get("bad_kind") or (mix.describe(spec) if spec else "")
    if "repeat_of" in record:
        desc = f"repeat of #{record['repeat_of']}: {desc}"
    rss = f"{record['rss_mb']:.0f} MB" if record["rss_mb"] is not None else "-"
    vram_text = f" vram {record['vram_mb'] / 1024:.1f} GB" if record.get("vram_mb") is not None else ""
    compiled = (record.get("log") or {}).get("graphs_compiled")
    compiled_text = f" compiled {compiled} graph(s)" if compiled else ""
    match = "" if "hash_match" not in record else (" hash=" + ("same" if record["hash_match"] else
                                                               f"DIFFERENT {record.get('pixel_diff')}"))
    log(f"[{record['index']:4d}] {record['kind']:9s} {record.get('outcome'):12s} {record['seconds']:6.2f}s "
        f"rss {rss:>8s}{vram_text}  {desc}{compiled_text}{match}")


def summarize(records: list[dict], config: SoakConfig, alive: bool, seconds: float, mix=None,
              floors: dict | None = None) -> dict:
    import soak_real
    mix = mix or DemoMix(config.steps)
    count = lambda outcome: sum(r.get("outcome") == outcome for r in records)  # noqa: E731
    warm = config.warmup_prompts()

    def slope_of(name: str, family: str | None = None) -> float | None:
        pts = [(r["index"], r[name]) for r in records if r["index"] >= warm and r.get(name) is not None
               and (family is None or (r.get("spec") or {}).get("family") == family)]
        slope = linear_slope([p[0] for p in pts], [p[1] for p in pts])
        return round(slope * 100, 2) if slope is not None else None

    # host memory after a prompt depends on which models it loaded: with several families, each one's prompts get
    # their own line, and the goal is the steepest of them
    families = sorted({(r.get("spec") or {}).get("family") for r in records} - {None})
    by_family = {f: {"prompts": sum((r.get("spec") or {}).get("family") == f and r["index"] >= warm for r in records),
                     "rss": slope_of("rss_mb", f), "anon": slope_of("anon_mb", f)} for f in families}
    memory_name = "anon" if any(r.get("anon_mb") is not None for r in records) else "rss"
    if len(families) > 1 and any(v[memory_name] is not None for v in by_family.values()):
        goal_family = max((f for f in families if by_family[f][memory_name] is not None),
                          key=lambda f: by_family[f][memory_name])
        goal_slope, goal_basis = by_family[goal_family][memory_name], f"{memory_name}, {goal_family} prompts"
    else:
        goal_slope, goal_basis = slope_of(f"{memory_name}_mb"), f"{memory_name}, all prompts"

    rss = [r["rss_mb"] for r in records if r.get("rss_mb") is not None]
    vram = [r["vram_mb"] for r in records if r.get("vram_mb") is not None]
    repeats = [r for r in records if "hash_match" in r]
    # differing repeat's index -> its follow-up's index and what it gave
    follow_ups = {r["follow_up_of"]: {"index": r["index"], "gives": r["follow_up"]} for r in repeats if "follow_up" in r}
    switched = {r["index"]: after_model_switch(records, r["repeat_of"]) or after_model_switch(records, r["index"])
                for r in repeats}
    differing = [{"index": r["index"], "repeat_of": r.get("repeat_of"), "pixel_diff": r.get("pixel_diff"),
                  "hash": r["hash"], "first_hash": r["first_hash"], "follow_up": follow_ups.get(r["index"]),
                  "after_model_switch": switched[r["index"]]}
                 for r in repeats if not r["hash_match"]]
    # repeats whose first run or repeat came straight after another family's prompt, and the rest: (checked, differing)
    by_switch = {name: {"checked": sum(switched[r["index"]] == flag for r in repeats),
                        "differing": sum(switched[r["index"]] == flag and not r["hash_match"] for r in repeats)}
                 for name, flag in (("after_model_switch", True), ("same_family_before", False))}
    mismatches = [d for d in differing if (d["pixel_diff"] or {}).get("max", 255) > config.repeat_tolerance]
    not_rejected = [r["index"] for r in records if r.get("outcome") == "not_rejected"]
    failed = [{"index": r["index"], "outcome": r.get("outcome"), "error": r.get("error", "")[:500]}
              for r in records if r.get("outcome") in ("failed", "rejected_valid", "lost", "http_error")]
    compiles = soak_real.recompiles(records, mix)
    oom_lines = [{"index": r["index"], "lines": r["log"]["oom_lines"]} for r in records
                 if (r.get("log") or {}).get("oom_lines")]
    logs = [r.get("log") or {} for r in records]
    trims = {"trims": sum(g.get("trims", 0) for g in logs), "mb_returned": sum(g.get("trim_mb", 0) for g in logs),
             "ms": sum(g.get("trim_ms", 0) for g in logs),
             "max_ms": max((g.get("trim_ms", 0) for g in logs if g.get("trims")), default=0)}
    summary = {
        "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "config": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(config).items() if k != "mix"},
        "mix": type(mix).__name__,
        "seconds": round(seconds, 1),
        "prompts": len(records),
        "ok": count("ok"),
        "interrupted": count("interrupted"),
        "cut_by_time_budget": count("cut"),
        "interrupt_sent": sum(r["kind"] == "interrupt" for r in records),
        "rejected": count("rejected"),
        "bad_sent": sum(r["kind"] == "bad" for r in records),
        "failed": failed,
        "server_alive": alive,
        "server_death": next((r["death"] for r in records if r.get("death")), None),
        "hash_checks": len(repeats),
        "hash_checks_resampled": sum(r.get("sampler_recomputed", False) for r in repeats),
        "repeats_bit_identical": sum(r["hash_match"] for r in repeats),
        "repeats_within_tolerance": len(differing) - len(mismatches),
        "repeat_tolerance": config.repeat_tolerance,
        "repeats_differing": differing,
        "follow_ups": [{"follow_up_of": of, **f} for of, f in follow_ups.items()],
        "repeats_by_model_switch": by_switch,
        "hash_mismatches": mismatches,
        "rss_mb_first": rss[0] if rss else None,
        "rss_mb_last": rss[-1] if rss else None,
        "rss_mb_max": max(rss) if rss else None,
        "rss_warmup_prompts": warm,
        "rss_slope_mb_per_100": slope_of("rss_mb"),
        "anon_mb_first": next((r["anon_mb"] for r in records if r.get("anon_mb") is not None), None),
        "anon_mb_last": next((r["anon_mb"] for r in reversed(records) if r.get("anon_mb") is not None), None),
        "anon_slope_mb_per_100": slope_of("anon_mb"),
        "memory_slopes_by_family": by_family,
        "memory_goal_slope_mb_per_100": goal_slope,
        "memory_goal_basis": goal_basis,
        "vram_mb_first": vram[0] if vram else None,
        "vram_mb_last": vram[-1] if vram else None,
        "vram_mb_max": max(vram) if vram else None,
        "vram_slope_mb_per_100": slope_of("vram_mb"),
        "torch_allocated_slope_mb_per_100": slope_of("torch_allocated_mb"),
        "vram_floors": floors or {},
        "compile": compiles,
        "oom_lines": oom_lines,
        "host_memory_trims": trims,
    }
    failures = []
    if not alive:
        death = summary["server_death"] or {}
        failures.append(f"server died (exit code {death.get('exit_code')}; the summary's server_death holds the "
                        "end of its log)")
    wanted = config.prompts if config.min_prompts is None else config.min_prompts
    if len(records) < wanted:
        failures.append(f"only {len(records)} of {wanted} prompts were sent")
    if not_rejected:
        failures.append(f"malformed prompts not rejected with HTTP 400: {not_rejected}")
    if failed:
        failures.append(f"valid prompts that failed: {[f['index'] for f in failed]}")
    if mismatches:
        failures.append(f"repeated prompts whose output differs from the first run by more than "
                        f"{config.repeat_tolerance} levels: {[m['index'] for m in mismatches]}")
    if goal_slope is not None and goal_slope > config.max_rss_slope_mb:
        failures.append(f"host memory slope {goal_slope:.1f} MB/100 prompts ({goal_basis}) > {config.max_rss_slope_mb}")
    if compiles["unexpected"] and config.fail_on_recompile:
        failures.append(f"recompiled at a shape already compiled: prompts {[u['index'] for u in compiles['unexpected']]}")
    since = "warm" if floors and "warm" in floors else "start"
    if floors and since in floors and "end" in floors and floors["end"].get("torch_allocated_mb") is not None:
        growth = floors["end"]["torch_allocated_mb"] - (floors[since].get("torch_allocated_mb") or 0)
        summary["vram_floor_growth_mb"] = round(growth, 1)
        summary["vram_floor_since"] = since
        if growth > config.max_vram_floor_growth_mb:
            failures.append(f"torch memory left with every model unloaded grew {growth:.0f} MB since the {since} "
                            f"floor > {config.max_vram_floor_growth_mb}")
    summary["failures"] = failures
    return summary


def format_summary(s: dict) -> str:
    fmt = lambda v: "-" if v is None else f"{v:.0f}"  # noqa: E731
    floors = s.get("vram_floors") or {}
    floor_text = ", ".join(f"{k} {fmt(v.get('torch_allocated_mb'))}/{fmt(v.get('vram_mb'))}"
                           for k, v in floors.items())
    compile_ = s.get("compile") or {}
    lines = [
        (f"prompts {s['prompts']} in {s['seconds']:.0f}s: ok {s['ok']}, interrupted {s['interrupted']} "
         f"(of {s['interrupt_sent']} interrupts sent), rejected {s['rejected']} (of {s['bad_sent']} malformed), "
         f"failed {len(s['failed'])}" + (f", cut by the time budget {s['cut_by_time_budget']}"
                                           if s.get("cut_by_time_budget") else "")),
        f"server alive: {s['server_alive']}" + (
            f" (died: exit code {s['server_death'].get('exit_code')}; log ends: "
            + " | ".join(s['server_death'].get('log_tail', [])[-8:]) + ")" if s.get("server_death") else ""),
        (f"RSS MB first {fmt(s['rss_mb_first'])}, last {fmt(s['rss_mb_last'])}, max {fmt(s['rss_mb_max'])}, "
         f"slope {s['rss_slope_mb_per_100']} MB/100 prompts after {s['rss_warmup_prompts']} warm-up prompts; "
         f"not file-backed (anon) MB first {fmt(s.get('anon_mb_first'))}, last {fmt(s.get('anon_mb_last'))}, "
         f"slope {s.get('anon_slope_mb_per_100')}"
         + "".join(f"; {f} prompts ({v['prompts']}): RSS {v['rss']}, anon {v['anon']}"
                   for f, v in (s.get("memory_slopes_by_family") or {}).items())
         + f"; goal slope {s.get('memory_goal_slope_mb_per_100')} ({s.get('memory_goal_basis')})"),
        (f"VRAM MB first {fmt(s['vram_mb_first'])}, last {fmt(s['vram_mb_last'])}, max {fmt(s.get('vram_mb_max'))}, "
         f"slope {s.get('vram_slope_mb_per_100')} MB/100 (torch allocated: {s.get('torch_allocated_slope_mb_per_100')})"
         + (f"; floors with every model unloaded, torch allocated/device used MB: {floor_text}" if floors else "")),
        (f"deterministic repeats checked {s['hash_checks']} ({s['hash_checks_resampled']} sampled again): "
         f"bit-identical {s.get('repeats_bit_identical')}, within {s.get('repeat_tolerance')} levels "
         f"{s.get('repeats_within_tolerance')}, mismatching {len(s['hash_mismatches'])}"
         + "".join(f"; #{d['index']} vs #{d['repeat_of']}: {d['pixel_diff']}"
                   + (f" (follow-up #{d['follow_up']['index']}: {FOLLOW_UP_WORDS[d['follow_up']['gives']]})"
                      if d.get("follow_up") else "")
                   + (", after a model switch" if d.get("after_model_switch") else "")
                   for d in s.get("repeats_differing", []))
         + "".join(f"; differing where the first run or the repeat followed another model family: "
                   f"{v['after_model_switch']['differing']} of {v['after_model_switch']['checked']}, elsewhere "
                   f"{v['same_family_before']['differing']} of {v['same_family_before']['checked']}"
                   for v in [s.get("repeats_by_model_switch")] if v)),
        (f"compiles: {compile_.get('graphs_per_key_shape') or 'none'}, {compile_.get('compile_s', 0)} s; "
         f"unexpected recompiles {len(compile_.get('unexpected', []))} {compile_.get('unexpected') or ''}"),
        *([f"OOM lines in the server log: {s['oom_lines']}"] if s.get("oom_lines") else []),
        *[f"host memory trims (host_memory.py): {t['trims']}, {t['mb_returned']} MB returned in {t['ms']} ms "
          f"(longest prompt's {t['max_ms']} ms)" for t in [s.get("host_memory_trims")] if t and t["trims"]],
        "GOALS MET" if not s["failures"] else "GOALS FAILED: " + "; ".join(s["failures"]),
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--prompts", type=int, default=500)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--steps", type=int, default=20, help="sampling steps of every demo prompt")
    p.add_argument("--out", type=Path, default=None, help="directory for prompts.jsonl and summary.json")
    p.add_argument("--max-rss-slope-mb", type=float, default=None,
                   help="largest allowed host memory growth, MB per 100 prompts after warm-up (linear fit of the "
                        "memory no file backs, per model family, the steepest; 25, --real 200)")
    p.add_argument("--warmup", type=int, default=None, help="prompts left out of the RSS fit (max(10, N/5))")
    p.add_argument("--compile-share", type=float, default=0.2,
                   help="demo mix: share of prompts through Fastlane Compile (each at 128x128, batch 1)")
    p.add_argument("--demo-loras-dir", type=Path, default=None,
                   help="demo mix with --url: the server's models/loras folder; the demo LoRAs are written there and "
                        "prompts use them (a server the soak starts gets them without this)")
    p.add_argument("--interrupt-every", type=int, default=10)
    p.add_argument("--bad-every", type=int, default=9)
    p.add_argument("--repeat-every", type=int, default=6)
    p.add_argument("--clear-history", action="store_true",
                   help="POST /history {clear} after each prompt (ComfyUI's history is kept in memory)")
    p.add_argument("--url", default=None, help="attach to this server (http://127.0.0.1:PORT) instead of starting one")
    p.add_argument("--pid", type=int, default=None, help="with --url: the server's PID for RSS (else looked up)")
    p.add_argument("--server-log", type=Path, default=None, help="with --url: its log file (compiles per prompt)")
    p.add_argument("--keep", action="store_true", help="keep the private server's base directory")
    p.add_argument("--time-budget", type=float, default=None, help="stop sending prompts after this many seconds")
    p.add_argument("--end-by", type=float, default=None,
                   help="unix time by which the last prompt must have been sent (sets --time-budget once the server "
                        "is up; device_soak.sh: its call's end less a reserve for the summary)")
    p.add_argument("--finish-by", type=float, default=None,
                   help="unix time by which the soak must be done (default: --end-by + 35): a prompt still running "
                        "is cut (interrupted, not a failure), the end floor skipped when short of time")
    p.add_argument("--min-prompts", type=int, default=None, help="with --time-budget: fewer sent is a failure")
    p.add_argument("--repeat-tolerance", type=int, default=0,
                   help="largest pixel difference (8-bit levels) a repeated prompt may show (0: bit-identical)")
    p.add_argument("--no-follow-up-repeats", dest="follow_up_repeats", action="store_false",
                   help="do not repeat a differing repeat once more (the follow-up tells a one-off from state kept "
                        "between prompts and from kernels that vary run to run)")
    real = p.add_argument_group("--real: the shipped FLUX/SDXL workflows, real architectures, random weights, GPU")
    real.add_argument("--real", action="store_true")
    real.add_argument("--models-dir", type=Path, default=None,
                      help="where the random-weight files are (written there first unless present; default: a "
                           "temporary folder, deleted afterwards)")
    real.add_argument("--families", default="flux,sdxl",
                      help="families, each optionally weighted: flux:1,sdxl:3 sends a quarter of the prompts to FLUX "
                           "(unweighted: every shipped workflow alike)")
    real.add_argument("--max-size", type=int, default=1024)
    real.add_argument("--steps-range", default="8,14", help="LOW,HIGH sampling steps of --real prompts")
    real.add_argument("--compile-shapes", default="512x1,512x2",
                      help="SIZExBATCH shapes compiled prompts draw from (each new one compiles once)")
    real.add_argument("--server-cpu", action="store_true", help="the --real server on the CPU (a smoke run)")
    real.add_argument("--server-args", default="",
                      help="more ComfyUI arguments for the --real server, with =: --server-args=--disable-cuda-malloc (ComfyUI's "
                           "default on an H100 is torch's cudaMallocAsync allocator), --server-args=--deterministic (ComfyUI's "
                           "deterministic kernels: tells GPU numerics from state leaking between prompts when a "
                           "repeat differs) or \"--highvram\"")
    real.add_argument("--no-vram-floors", action="store_true", help="skip POST /free at the start and the end")
    real.add_argument("--warm-floor", action="store_true", help="POST /free after the warm-up prompts too")
    real.add_argument("--max-vram-floor-growth-mb", type=float, default=512.0)
    real.add_argument("--allow-recompiles", action="store_true", help="report recompiles, do not fail on them")
    args = p.parse_args(argv)
    if not args.real:
        # LoRA prompts need the files in the server's loras folder: written there for a server of our own, or into
        # --demo-loras-dir for one at --url
        if args.demo_loras_dir is not None:
            write_demo_loras(args.demo_loras_dir)
        mix = DemoMix(args.steps, loras=not args.url or args.demo_loras_dir is not None,
                      compile_share=args.compile_share)
    else:
        import soak_real
        low, high = (int(x) for x in args.steps_range.split(","))
        families, family_weights = soak_real.parse_families(args.families)
        mix = soak_real.RealMix(max_size=args.max_size, steps_range=(low, high),
                                compile_shapes=soak_real.parse_shapes(args.compile_shapes),
                                families=families, family_weights=family_weights)
    config = SoakConfig(prompts=args.prompts, seed=args.seed, steps=args.steps, interrupt_every=args.interrupt_every,
                        bad_every=args.bad_every, repeat_every=args.repeat_every, warmup=args.warmup,
                        max_rss_slope_mb=args.max_rss_slope_mb or (200.0 if args.real else 25.0), out=args.out,
                        clear_history=args.clear_history, mix=mix, repeat_tolerance=args.repeat_tolerance,
                        follow_up_repeats=args.follow_up_repeats,
                        time_budget=args.time_budget, min_prompts=args.min_prompts,
                        vram_floors=args.real and not args.no_vram_floors, warm_floor=args.warm_floor,
                        max_vram_floor_growth_mb=args.max_vram_floor_growth_mb,
                        fail_on_recompile=not args.allow_recompiles,
                        prompt_timeout=300.0, server_args=args.server_args if args.real else "")
    if args.url:
        url = args.url.rstrip("/")
        if not url.startswith(("http://127.0.0.1", "http://localhost")):
            p.error("--url must be a loopback address")
        pid = args.pid or find_pid(int(url.rsplit(":", 1)[1]))
        if pid is None:
            print("warning: no server PID (--pid): RSS is not recorded", file=sys.stderr)
        result = run_soak(Api(url, pid, log_path=args.server_log), config)
    else:
        base = Path(tempfile.mkdtemp(prefix="fastlane-soak-"))
        if args.real:
            import soak_real
            models_dir = args.models_dir or base / "models-real"  # a temporary one goes with the base directory
            soak_real.write_models_subprocess(models_dir, list(families), cpu=args.server_cpu)
            import shlex
            server = soak_real.RealServer(base, models_dir, cpu=args.server_cpu,
                                          extra_args=("--disable-api-nodes", *shlex.split(args.server_args)))
        else:
            server = ComfyServer(base)
            write_demo_loras(server.models_dir / "loras")
        try:
            server.start()
            print(f"ComfyUI on {server.url} (pid {server.process.pid}, log {server.log_path})", flush=True)
            if args.end_by:
                config.time_budget = args.end_by - time.time()
                config.finish_by = args.finish_by or args.end_by + 35
                print(f"time budget for prompts: {config.time_budget:.0f} s", flush=True)
            result = run_soak(Api(server.url, server.process.pid, server), config)
        finally:
            server.stop()
            if args.out is not None:
                args.out.mkdir(parents=True, exist_ok=True)
                shutil.copy(server.log_path, args.out / "comfyui.log") if server.log_path.exists() else None
            if not args.keep:
                shutil.rmtree(base, ignore_errors=True)
    print(format_summary(result.summary))
    return 0 if result.ok else 1


if __name__ == "__main__":
    sys.exit(main())
