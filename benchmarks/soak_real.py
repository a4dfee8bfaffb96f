"""The soak's ``--real`` mix (issue 21): prompts built from the shipped FLUX.1-dev / SDXL workflows, for a ComfyUI
server on the GPU whose models folder holds random-weight files of the real architectures.

Three parts, used by ``soak.py --real`` (and by ``benchmarks/device_soak.sh``):

- ``write_models(models_dir, families)``: the files the shipped workflows name (FLUX.1-dev diffusion model, CLIP-L,
  T5-XXL fp16, autoencoder; SDXL's checkpoint), written once by ``run_workflows.py``'s writers in the published
  layouts (ComfyUI's own loaders read them), plus a random LoRA per family (``workflow_lora.py``) under its own name.
  Run in a subprocess (``python benchmarks/soak_real.py write-models DIR``) so that its GPU memory is given back
  before the server starts. ~50 s for FLUX (22 GB + 9 GB) and ~11 s for SDXL (7 GB) on an H100/H200.
- ``serve``: the server's launcher (``python benchmarks/soak_real.py serve main.py ARGS...``): stand-ins for modules
  ComfyUI imports at module level but the soak never runs (PyAV, torchvision where absent: ``run.py``'s
  ``stub_missing_modules``), an empty ``--front-end-root`` (the device image has no frontend package; the soak uses
  only the HTTP API), then ComfyUI's ``main.py`` as ``__main__``.
- ``RealMix``: per prompt, one of flux-/sdxl-baseline/balanced/fastest varied in size, steps, batch, sampler, step
  cacher (the workflow's own, Target Speed at a varying compute fraction, FORA, Spectrum, none), compile on/off, and
  a LoraLoaderModelOnly at a varying strength (or none); malformed variants for the rejection goal; and the keys the
  recompile check groups compiled graphs by (family + quantization + compile settings; shape = width, height,
  batch). Compiled prompts draw their shape from ``compile_shapes`` only (each new shape costs FLUX ~10-25 s and
  SDXL's 14 regional graphs ~25-40 s of compiling on an H100/H200), the others from every size up to ``max_size``.
"""
from __future__ import annotations

import copy
import json
import random
import re
import sys
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

BENCH_DIR = Path(__file__).resolve().parent
PACK_DIR = BENCH_DIR.parent
WORKFLOWS = PACK_DIR / "workflows" / "api"
WORKFLOW_NAMES = ("flux-baseline", "flux-balanced", "flux-fastest", "sdxl-baseline", "sdxl-balanced", "sdxl-fastest")
FAMILIES = ("flux", "sdxl")
CACHERS = {"flux": ("workflow", "TargetSpeed", "FORA", "Spectrum", "none"),
           "sdxl": ("workflow", "DeepCache", "TargetSpeed", "FORA", "Spectrum", "none")}
SAMPLERS = ("euler", "euler", "dpmpp_2m", "euler_ancestral", "heun")  # euler twice: the shipped files' choice
SIZES = (512, 768, 1024)
LORA_STRENGTHS = (None, None, 1.0, 0.5, 0.8)  # None: no LoRA node
SUBJECTS = ("a red fox in fresh snow at dawn, detailed fur, soft light", "a lighthouse on a cliff in a storm",
            "a bowl of ramen on a wooden table, steam, top view", "an astronaut riding a horse on the moon",
            "a watercolor of a harbour town at sunset")
BAD_KINDS = ("unknown_node", "compute_fraction_0", "missing_input", "bad_sampler", "dangling_link",
             "missing_model_file", "lora_strength_out_of_range")
CHAIN = ("FastlaneQuantize", "FastlaneTargetSpeedCache", "FastlaneDeepCache", "FastlaneFORA", "FastlaneSpectrumCache",
         "FastlaneCompile", "FastlaneCudaGraph", "LoraLoaderModelOnly")
LOADERS = {"flux": "UNETLoader", "sdxl": "CheckpointLoaderSimple"}
DEFAULT_COMPILE = {"scope": "regional", "backend": "inductor", "mode": "default", "dynamic": "auto",
                   "fullgraph": False, "cache_dir": ""}
SAVE_NODE = "22"
SAMPLER_NODE = "20"
LORA_ID, QUANT_ID, CACHE_ID, COMPILE_ID, GRAPH_ID = "30", "31", "32", "33", "34"


def lora_name(family: str) -> str:
    return f"fastlane-random-lora-{family}.safetensors"


def load_workflow(name: str) -> dict:
    return json.loads((WORKFLOWS / f"fastlane-{name}.api.json").read_text())


def parse_families(text: str) -> tuple[tuple[str, ...], dict[str, float] | None]:
    """``"flux,sdxl"`` -> (("flux", "sdxl"), None); ``"flux:1,sdxl:3"`` -> the same families and their weights (a
    quarter of the prompts FLUX): fewer of the slow FLUX prompts fit more prompts in one device call."""
    names, weights = [], {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        name, _, weight = part.partition(":")
        if name not in FAMILIES:
            raise ValueError(f"unknown family {name!r} in {text!r}: one of {', '.join(FAMILIES)}")
        names.append(name)
        if weight:
            weights[name] = float(weight)
            if weights[name] <= 0:
                raise ValueError(f"family weight must be > 0, not {weight!r} in {text!r}")
    return tuple(names), (weights or None)


def parse_shapes(text: str) -> list[tuple[int, int]]:
    """``"512x1,768x1"`` -> [(512, 1), (768, 1)]: (square size, batch)."""
    shapes = []
    for part in filter(None, (p.strip() for p in text.split(","))):
        size, _, batch = part.partition("x")
        shapes.append((int(size), int(batch or 1)))
    return shapes


@dataclass
class RealMix:
    """The seeded prompt mix of ``soak.py --real``; the demo mix (``soak.DemoMix``) has the same methods."""

    max_size: int = 1024
    steps_range: tuple[int, int] = (8, 14)
    compile_shapes: list[tuple[int, int]] = field(default_factory=lambda: [(512, 1), (512, 2)])
    size_weights: dict[int, float] = field(default_factory=lambda: {512: 0.7, 768: 0.2, 1024: 0.1})
    compile_share: float = 0.5  # of the prompts whose workflow compiles, how many keep compiling
    workflows: tuple[str, ...] = WORKFLOW_NAMES
    families: tuple[str, ...] = FAMILIES
    family_weights: dict[str, float] | None = None  # share of prompts per family; None: each workflow alike
    save_node: str = SAVE_NODE
    sampler_node: str = SAMPLER_NODE
    bad_kinds: tuple[str, ...] = BAD_KINDS
    _workflows: dict[str, dict] = field(default_factory=dict, repr=False)
    # derived from family_weights: a family's weight spread over its workflows; None: every workflow alike
    _workflow_weights: list[float] | None = field(default=None, init=False, repr=False)

    def __post_init__(self) -> None:
        self.workflows = tuple(w for w in self.workflows if w.split("-")[0] in self.families)
        if self.family_weights is not None:
            per_family = Counter(w.split("-")[0] for w in self.workflows)
            self._workflow_weights = [self.family_weights.get(w.split("-")[0], 1.0) / per_family[w.split("-")[0]]
                                      for w in self.workflows]
        self._workflows = {w: load_workflow(w) for w in self.workflows}
        sizes = [s for s in SIZES if s <= self.max_size] or [min(SIZES)]
        self.size_weights = {s: self.size_weights.get(s, 0.1) for s in sizes}
        self.compile_shapes = [s for s in self.compile_shapes if s[0] <= self.max_size] or [(sizes[0], 1)]

    # -- one prompt --------------------------------------------------------------------------------------------
    def random_spec(self, rng: random.Random, long: bool = False) -> dict:
        """``long``: an interrupted prompt, sampled long enough for the interrupt to land while it samples."""
        if self._workflow_weights is None:
            workflow = rng.choice(self.workflows)
        else:
            workflow = rng.choices(self.workflows, weights=self._workflow_weights)[0]
        family = workflow.split("-")[0]
        shipped = self._workflows[workflow]
        classes = {n["class_type"] for n in shipped.values()}
        compiles = "FastlaneCompile" in classes and rng.random() < self.compile_share \
            or "FastlaneCompile" not in classes and rng.random() < 0.1
        if compiles:
            size, batch = rng.choice(self.compile_shapes)
        else:
            sizes = list(self.size_weights)
            size = rng.choices(sizes, weights=[self.size_weights[s] for s in sizes])[0]
            batch = rng.choice((1, 1, 2))
        low, high = self.steps_range
        steps = rng.randint(low, high) * (3 if long else 1)
        return {"workflow": workflow, "family": family, "size": size, "batch": batch, "steps": min(steps, 100),
                "sampler": rng.choice(SAMPLERS), "cacher": rng.choice(CACHERS[family]), "compile": compiles,
                "cudagraph": "FastlaneCudaGraph" in classes, "quantize": "FastlaneQuantize" in classes,
                "lora": rng.choice(LORA_STRENGTHS), "subject": rng.choice(SUBJECTS), "seed": rng.randrange(2**32),
                "fraction": rng.choice((0.25, 0.3, 0.4, 0.5)), "interval": rng.choice((2, 3, 5))}

    def build(self, spec: dict, rng: random.Random | None = None) -> dict:
        """The shipped workflow of ``spec`` with its model chain rebuilt: loader -> [LoRA] -> [Quantize] -> [cacher]
        -> [Compile] -> [CUDA Graph] -> KSampler; the rest (text encoders, VAE, SaveImage) as shipped."""
        prompt = copy.deepcopy(self._workflows[spec["workflow"]])
        family = spec["family"]
        shipped = {n["class_type"]: n for n in prompt.values()}
        for node_id in [i for i, n in prompt.items() if n["class_type"] in CHAIN]:
            del prompt[node_id]
        loader = next(i for i, n in prompt.items() if n["class_type"] == LOADERS[family])
        ref = [loader, 0]
        if spec["lora"] is not None:
            prompt[LORA_ID] = {"class_type": "LoraLoaderModelOnly", "inputs": {
                "model": ref, "lora_name": lora_name(family), "strength_model": spec["lora"]}}
            ref = [LORA_ID, 0]
        if spec["quantize"]:
            prompt[QUANT_ID] = {"class_type": "FastlaneQuantize",
                                "inputs": {**shipped["FastlaneQuantize"]["inputs"], "model": ref}}
            ref = [QUANT_ID, 0]
        cacher = self._cacher(spec, shipped, ref)
        if cacher is not None:
            prompt[CACHE_ID] = cacher
            ref = [CACHE_ID, 0]
        if spec["compile"]:
            inputs = shipped["FastlaneCompile"]["inputs"] if "FastlaneCompile" in shipped else DEFAULT_COMPILE
            prompt[COMPILE_ID] = {"class_type": "FastlaneCompile", "inputs": {**inputs, "model": ref}}
            ref = [COMPILE_ID, 0]
        if spec["cudagraph"]:
            prompt[GRAPH_ID] = {"class_type": "FastlaneCudaGraph", "inputs": {"model": ref}}
            ref = [GRAPH_ID, 0]
        for node in prompt.values():
            inputs = node["inputs"]
            if node["class_type"] == "KSampler":
                inputs.update(model=ref, seed=spec["seed"], steps=spec["steps"], sampler_name=spec["sampler"])
            elif node["class_type"] in ("EmptyLatentImage", "EmptySD3LatentImage"):
                inputs.update(width=spec["size"], height=spec["size"], batch_size=spec["batch"])
            elif node["class_type"] == "SaveImage":
                inputs["filename_prefix"] = f"soak/{spec['workflow']}"
        positive = prompt[SAMPLER_NODE]["inputs"]["positive"][0]
        encoder = prompt[positive] if prompt[positive]["class_type"] == "CLIPTextEncode" else \
            prompt[prompt[positive]["inputs"]["conditioning"][0]]  # FLUX: CLIPTextEncode -> FluxGuidance
        encoder["inputs"]["text"] = spec["subject"]
        return prompt

    @staticmethod
    def _cacher(spec: dict, shipped: dict, ref: list) -> dict | None:
        name = spec["cacher"]
        full = {"start": 0.0, "end": 1.0}
        if name == "workflow":
            node = next((n for c, n in shipped.items() if c in ("FastlaneTargetSpeedCache", "FastlaneDeepCache")),
                        None)
            return None if node is None else {"class_type": node["class_type"], "inputs": {**node["inputs"],
                                                                                          "model": ref}}
        if name == "none":
            return None
        if name == "TargetSpeed":
            return {"class_type": "FastlaneTargetSpeedCache", "inputs": {
                "model": ref, "compute_fraction": spec["fraction"], "order": 2, "granularity": "auto", **full}}
        if name == "DeepCache":
            return {"class_type": "FastlaneDeepCache", "inputs": {"model": ref, "interval": spec["interval"],
                                                                  "branch": 0, **full}}
        if name == "FORA":
            return {"class_type": "FastlaneFORA", "inputs": {"model": ref, "interval": min(spec["interval"], 3),
                                                             "granularity": "auto", **full}}
        if name == "Spectrum":
            return {"class_type": "FastlaneSpectrumCache", "inputs": {
                "model": ref, "compute_fraction": max(spec["fraction"], 0.3), "degree": 2, "ridge": 0.01,
                "blend": 0.5, "warmup_steps": 1, "growth": 0.0, "coordinate": "step", "granularity": "auto", **full}}
        raise ValueError(name)

    def malform(self, prompt: dict, kind: str) -> dict:
        """A copy of ``prompt`` ComfyUI's validation must reject as a whole (HTTP 400, node_errors where a node is
        to blame)."""
        bad = copy.deepcopy(prompt)
        sampler = bad[SAMPLER_NODE]["inputs"]
        loader = next(i for i, n in bad.items() if n["class_type"] in LOADERS.values())
        family = next(f for f, c in LOADERS.items() if bad[loader]["class_type"] == c)
        if kind == "unknown_node":
            bad[SAVE_NODE]["class_type"] = "FastlaneNoSuchNode"
        elif kind == "compute_fraction_0":
            bad[CACHE_ID] = {"class_type": "FastlaneTargetSpeedCache", "inputs": {
                "model": [loader, 0], "compute_fraction": 0.0, "order": 1, "granularity": "auto", "start": 0.0,
                "end": 1.0}}
            for node_id in (LORA_ID, QUANT_ID, COMPILE_ID, GRAPH_ID):
                bad.pop(node_id, None)
            sampler["model"] = [CACHE_ID, 0]
        elif kind == "missing_input":
            del sampler["latent_image"]
        elif kind == "bad_sampler":
            sampler["sampler_name"] = "no_such_sampler"
        elif kind == "dangling_link":
            decode = next(n for n in bad.values() if n["class_type"] == "VAEDecode")
            decode["inputs"]["samples"] = ["404", 0]
        elif kind == "missing_model_file":
            name = "unet_name" if family == "flux" else "ckpt_name"
            bad[loader]["inputs"][name] = "no-such-model.safetensors"
        elif kind == "lora_strength_out_of_range":
            bad[LORA_ID] = {"class_type": "LoraLoaderModelOnly", "inputs": {
                "model": [loader, 0], "lora_name": lora_name(family), "strength_model": 1000.0}}
            sampler["model"] = [LORA_ID, 0]
            for node_id in (QUANT_ID, CACHE_ID, COMPILE_ID, GRAPH_ID):
                bad.pop(node_id, None)
        else:
            raise ValueError(kind)
        return bad

    @staticmethod
    def describe(spec: dict) -> str:
        lora = "" if spec["lora"] is None else f" lora{spec['lora']}"
        return (f"{spec['workflow']} {spec['size']}x{spec['batch']} {spec['steps']}st {spec['sampler']} "
                f"{spec['cacher']}{' compile' if spec['compile'] else ''}{lora}")

    @staticmethod
    def graph_key(spec: dict) -> str:
        """What one set of compiled graphs serves: the family, its quantization, the compile settings."""
        return f"{spec['family']}{'+fp8' if spec['quantize'] else ''}+compile"

    @staticmethod
    def shape(spec: dict) -> str:
        return f"{spec['size']}x{spec['size']}x{spec['batch']}"

    @staticmethod
    def deterministic(spec: dict) -> bool:
        return True


# -- the server log: compilations and recordings per prompt -----------------------------------------------------------

COMPILED = re.compile(r"Fastlane compile \[(?P<label>[^\]]*)\]: compiled (?P<graphs>\d+) graph\(s\) in "
                      r"(?P<seconds>[\d.]+) s during (?P<during>\d+) of (?P<calls>\d+) calls")
NOT_COMPILED = re.compile(r"Fastlane compile \[(?P<label>[^\]]*)\]: no compilation in (?P<calls>\d+) calls")
RECORDED = re.compile(r"Fastlane CUDA graph: recorded (?P<graphs>\d+) graph\(s\)")
OOM = re.compile(r"ran out of memory|OutOfMemoryError|CUDA out of memory")
TRIMMED = re.compile(r"Fastlane: returned (?P<mb>-?\d+) MB of freed host memory to the OS after sampling \(malloc_trim, "
                     r"(?P<ms>\d+) ms\)")


def parse_log(text: str) -> dict:
    """What one prompt's share of the server log says: compiled graphs (and seconds), compile runs, CUDA graphs
    recorded, OOM messages, host-memory trims (``host_memory.py``: MB given back, ms spent)."""
    out = {"compile_runs": 0, "compile_calls": 0, "graphs_compiled": 0, "compile_s": 0.0, "cuda_graphs_recorded": 0,
           "compile_labels": [], "oom_lines": [], "trims": 0, "trim_mb": 0, "trim_ms": 0}
    for line in text.splitlines():
        m = TRIMMED.search(line)
        if m:
            out["trims"] += 1
            out["trim_mb"] += int(m["mb"])
            out["trim_ms"] += int(m["ms"])
            continue
        m = COMPILED.search(line)
        if m:
            out["compile_runs"] += 1
            out["compile_calls"] += int(m["calls"])
            out["graphs_compiled"] += int(m["graphs"])
            out["compile_s"] = round(out["compile_s"] + float(m["seconds"]), 1)
            out["compile_labels"].append(m["label"])
            continue
        m = NOT_COMPILED.search(line)
        if m:
            out["compile_runs"] += 1
            out["compile_calls"] += int(m["calls"])
            out["compile_labels"].append(m["label"])
            continue
        m = RECORDED.search(line)
        if m:
            out["cuda_graphs_recorded"] += int(m["graphs"])
        if OOM.search(line):
            out["oom_lines"].append(line.strip()[:300])
    out["compile_labels"] = sorted(set(out["compile_labels"]))
    return out


def recompiles(records: list[dict], mix) -> dict:
    """Compiled graphs per (graph key, shape) over the soak, in prompt order: the first compile at a key and shape is
    expected (cold start or a new shape); a compile at a key and shape an earlier prompt already ran compiled to its end
    is an unexpected recompile (what users see as "it recompiles on every new prompt")."""
    seen: set[tuple[str, str]] = set()
    per_key: dict[str, int] = {}
    unexpected = []
    for r in records:
        spec, log = r.get("spec"), r.get("log")
        if not spec or not log or not log.get("compile_runs"):
            continue
        key = (mix.graph_key(spec) + "/" + ",".join(log["compile_labels"]), mix.shape(spec))
        if log["graphs_compiled"]:
            per_key[f"{key[0]} @ {key[1]}"] = per_key.get(f"{key[0]} @ {key[1]}", 0) + log["graphs_compiled"]
            if key in seen:
                unexpected.append({"index": r["index"], "graph": key[0], "shape": key[1],
                                   "graphs": log["graphs_compiled"], "seconds": log["compile_s"]})
        if log["compile_calls"] and r.get("outcome", "ok") == "ok":
            # an interrupted prompt may have stopped before every block kind ran once (compiled): what the next
            # prompt compiles at this key and shape is then still its first compile
            seen.add(key)
    return {"graphs_per_key_shape": per_key, "unexpected": unexpected,
            "compile_s": round(sum((r.get("log") or {}).get("compile_s", 0.0) for r in records), 1)}


# -- the model files --------------------------------------------------------------------------------------------------

def write_models(models_dir: Path, families: list[str], cpu: bool = False) -> dict:
    """The random-weight files of ``families`` under ``models_dir`` (skipped where a previous run left them: a
    ``.written`` marker per family), and a random LoRA per family named ``lora_name(family)``."""
    todo = [f for f in families if not (models_dir / f".written-{f}").exists()]
    if not todo:
        return {f: "kept from an earlier run" for f in families}
    sys.path[:0] = [str(BENCH_DIR), str(PACK_DIR / "tests")]
    import run as bench
    import run_workflows
    import workflow_lora

    bench.stub_missing_modules()
    import comfy_host

    comfy_host.load(cpu=cpu)
    bench.hide_stubs()
    import comfy.model_management as mm

    device = mm.get_torch_device()
    written = {}
    for family in families:
        marker = models_dir / f".written-{family}"
        if marker.exists():
            written[family] = "kept from an earlier run"
            continue
        info = run_workflows.write_model_files([family], models_dir, device, lora=True)
        lora = models_dir / "loras" / workflow_lora.LORA_NAME
        lora.rename(lora.with_name(lora_name(family)))
        marker.write_text(json.dumps(info))
        written[family] = info
    return written


def write_models_subprocess(models_dir: Path, families: list[str], cpu: bool = False, timeout: float = 400) -> None:
    """``write_models`` in a process of its own (its GPU memory is given back when it exits)."""
    import subprocess
    import time

    if all((models_dir / f".written-{f}").exists() for f in families):
        print(f"model files for {families}: kept from an earlier run in {models_dir}", flush=True)
        return
    started = time.monotonic()
    cmd = [sys.executable, str(Path(__file__).resolve()), "write-models", str(models_dir), "--families",
           ",".join(families), *(["--cpu"] if cpu else [])]
    print(f"writing random-weight model files for {families} under {models_dir}", flush=True)
    subprocess.run(cmd, check=True, timeout=timeout)
    print(f"model files ready after {time.monotonic() - started:.0f} s", flush=True)


def real_server_class():
    sys.path.insert(0, str(PACK_DIR / "tests"))
    from comfy_server import ComfyServer

    class RealServer(ComfyServer):
        """tests/comfy_server.py's private server, on the GPU (``cpu``: on the CPU, for smoke runs), started
        through ``serve`` (stand-ins, no frontend), its models folder a link to ``models_dir``."""

        def __init__(self, base_dir, models_dir: Path, cpu: bool = False, **kwargs) -> None:
            super().__init__(base_dir, startup_timeout=kwargs.pop("startup_timeout", 300.0), **kwargs)
            self.real_models_dir, self.cpu = Path(models_dir).resolve(), cpu

        def command(self) -> list[str]:
            cmd = super().command()
            if not self.cpu:
                cmd.remove("--cpu")
            # faulthandler: a crash in native code (CUDA, a kernel) still leaves a Python stack in the log
            return [cmd[0], "-X", "faulthandler", str(Path(__file__).resolve()), "serve", *cmd[1:]]

        def start(self):
            models = self.base_dir / "models"
            self.base_dir.mkdir(parents=True, exist_ok=True)
            self.real_models_dir.mkdir(parents=True, exist_ok=True)
            if not models.exists():
                models.symlink_to(self.real_models_dir, target_is_directory=True)
            return super().start()

    return RealServer


def RealServer(base_dir, models_dir: Path, cpu: bool = False, **kwargs):  # a class, made on demand
    return real_server_class()(base_dir, models_dir, cpu=cpu, **kwargs)


# -- the server's launcher --------------------------------------------------------------------------------------------

def serve(argv: list[str]) -> None:
    """``serve main.py ARGS...`` in ComfyUI's folder: stubs, an empty frontend root, then main.py as __main__."""
    import os
    import runpy
    import tempfile

    sys.path.insert(0, str(BENCH_DIR))
    import run as bench

    stubbed = bench.stub_missing_modules()
    sys.path[:] = [e for e in sys.path if Path(e or ".").resolve() != BENCH_DIR]  # ComfyUI's modules, not ours
    script, *args = argv
    if "--front-end-root" not in args:
        base = args[args.index("--base-directory") + 1] if "--base-directory" in args else None
        root = Path(base) / "frontend" if base else Path(tempfile.mkdtemp(prefix="fastlane-soak-frontend-"))
        root.mkdir(parents=True, exist_ok=True)
        (root / "index.html").write_text("<html><body>Fastlane soak: API only</body></html>")
        args += ["--front-end-root", str(root)]
    print(f"soak_real serve: stand-ins for {stubbed or 'nothing'}; {script} {' '.join(args)}", flush=True)
    sys.path.insert(0, os.getcwd())
    sys.argv = [script, *args]
    runpy.run_path(script, run_name="__main__")


def main(argv: list[str] | None = None) -> int:
    import argparse

    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == "serve":
        serve(argv[1:])
        return 0
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="command", required=True)
    w = sub.add_parser("write-models", help="write the random-weight model files (on the GPU unless --cpu)")
    w.add_argument("models_dir", type=Path)
    w.add_argument("--families", default="flux,sdxl")
    w.add_argument("--cpu", action="store_true")
    sub.add_parser("serve", help="serve main.py ARGS...: ComfyUI's main.py with stand-ins and no frontend")
    args = p.parse_args(argv)
    print(json.dumps(write_models(args.models_dir, list(parse_families(args.families)[0]), args.cpu), indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
