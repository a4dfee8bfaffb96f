"""Which stage of an SDXL prompt changes when it runs straight after a FLUX prompt (issue 21's differing repeats).

On the lent H100 (soak runs s14-2 and s17-1) every SDXL repeat whose first run or itself came right after a FLUX
prompt differed by up to 10 levels, one of them with no Fastlane node in the graph; every other repeat was
bit-identical. This probe replays that in one process with ComfyUI's own PromptExecutor, the shipped
``sdxl-baseline`` and ``flux-baseline`` workflows (no Fastlane node; random-weight model files in the published
layouts: the GPU soak's, ``--models``, written by ``soak_real.py write-models`` where absent) and a scripted
sequence:

    A  the SDXL prompt under test (fixed seed)     B  the same workflow at another seed (so A samples again)
    F  a FLUX prompt                                X  what the server's ``POST /free`` does: unload every model and
                                                       drop the executor's node cache (the next A loads fresh files)

For every sampling run it records hashes of what goes in and what comes out of ``comfy.sample.sample`` (noise,
positive and negative conditioning, the latent out), a fingerprint of a few UNet weights as loaded, whether the
model object is the one the previous run used, and the saved image's hash. The summary lists, for each A after the
first, which of those differ from the first A's and what preceded it: conditioning differing points at the text
encoder, only the latent at the UNet's sampling, only the image at the VAE; F and X telling "FLUX ran" apart from
"the checkpoint was loaded again".

    python3 benchmarks/probes/probe_switch_determinism.py --out $OUT/switch              # the GPU run (~3-4 min)
    python3 benchmarks/probes/probe_switch_determinism.py --allocator native ...         # torch's own allocator
    python3 benchmarks/probes/probe_switch_determinism.py --demo --cpu --sequence "A B A F A X A"  # CPU smoke

``--allocator async`` (default) sets ``PYTORCH_CUDA_ALLOC_CONF=backend:cudaMallocAsync`` before torch loads, as
ComfyUI's ``main.py`` does on NVIDIA GPUs (the soak's server ran so; in-process runners otherwise get the native
allocator). ``--deterministic`` sets what ComfyUI's ``--deterministic`` sets. ``--demo`` runs the pack's demo models
instead (FLUX and SDXL demo families, no model files: a smoke of the probe's plumbing).
"""
from __future__ import annotations

import argparse
import copy
import hashlib
import json
import os
import random
import shutil
import sys
import tempfile
from pathlib import Path

BENCH = Path(__file__).resolve().parents[1]
PACK = BENCH.parent
sys.path[:0] = [str(BENCH), str(PACK / "tests")]

WEIGHT_PROBES = ("input_blocks.0.0.weight", "middle_block.1.transformer_blocks.0.attn1.to_q.weight", "out.2.weight")


def digest(value) -> str | None:
    """A short hash of the tensors in ``value`` (nested lists/tuples/dicts), bytes as stored."""
    import torch

    h, found = hashlib.sha256(), False

    def walk(v):
        nonlocal found
        if isinstance(v, torch.Tensor):
            found = True
            t = v.detach().contiguous().cpu()
            h.update(str((tuple(t.shape), t.dtype)).encode())
            h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
        elif isinstance(v, dict):
            for k in sorted(v, key=str):
                walk(v[k])
        elif isinstance(v, (list, tuple)):
            for item in v:
                walk(item)

    walk(value)
    return h.hexdigest()[:16] if found else None


class SampleRecorder:
    """Wraps ``comfy.sample.sample`` (what KSampler calls): per run, the hashes of its inputs and output."""

    def __init__(self) -> None:
        import comfy.sample

        self.runs: list[dict] = []
        self._last_model = None
        self._original = comfy.sample.sample
        comfy.sample.sample = self._sample

    def _sample(self, model, noise, steps, cfg, sampler_name, scheduler, positive, negative, latent_image, **kwargs):
        out = self._original(model, noise, steps, cfg, sampler_name, scheduler, positive, negative, latent_image,
                             **kwargs)
        inner = model.model
        named = dict(inner.diffusion_model.named_parameters()) if hasattr(inner, "diffusion_model") else {}
        self.runs.append({
            "noise": digest(noise), "positive": digest(positive), "negative": digest(negative),
            "latent_in": digest(latent_image), "latent_out": digest(out),
            "weights": digest([named[k] for k in WEIGHT_PROBES if k in named]) or "n/a",
            "same_model_object": inner is self._last_model, "model_class": type(inner).__name__,
            "weights_device": str(next(iter(named.values())).device) if named else "n/a"})
        self._last_model = inner
        return out

    def close(self) -> None:
        import comfy.sample

        comfy.sample.sample = self._original


def image_digest(result: dict, output_dir: Path) -> str | None:
    import run_workflows

    paths = run_workflows.saved_images(result, output_dir)
    h = hashlib.sha256()
    for path in paths:
        h.update(path.read_bytes())
    return h.hexdigest()[:16] if paths else None


def shipped_prompts(steps: int | None, size: int | None) -> dict[str, dict]:
    """A and B: sdxl-baseline at two seeds; F: flux-baseline."""
    import run_workflows

    def load(name: str, seed_offset: int) -> dict:
        prompt = json.loads((run_workflows.WORKFLOWS / f"fastlane-{name}.api.json").read_text())
        return run_workflows.prepared(prompt, seed_offset, size, steps)

    return {"A": load("sdxl-baseline", 0), "B": load("sdxl-baseline", 1), "F": load("flux-baseline", 0)}


def demo_prompts(steps: int | None, size: int | None) -> dict[str, dict]:
    """A and B: the SDXL demo model at two seeds; F: the FLUX demo model (soak.py's demo graphs)."""
    import soak

    def spec(family: str, seed: int) -> dict:
        return {"family": family, "subject": soak.SUBJECTS[family][0], "size": size or 64, "batch": 1,
                "sampler": "euler", "cacher": "none", "seed": seed, "steps": steps or 3, "lora": None,
                "quantize": None, "compile": False}

    rng = random.Random(0)
    return {"A": soak.build_prompt(spec("sdxl", 1), rng), "B": soak.build_prompt(spec("sdxl", 2), rng),
            "F": soak.build_prompt(spec("flux", 1), rng)}


def summarize(records: list[dict]) -> dict:
    """Each A after the first against the first A: the stages that differ, and the token before it."""
    keys = ("positive", "negative", "noise", "latent_in", "weights", "latent_out", "image")
    firsts = [r for r in records if r["token"] == "A"]
    if not firsts:
        return {"a_runs": 0, "compared": []}
    first = firsts[0]
    compared = []
    for r in firsts[1:]:
        differing = [k for k in keys if r.get(k) != first.get(k)]
        compared.append({"index": r["index"], "after": r["after"], "same_model_object": r.get("same_model_object"),
                         "differing": differing, "identical": not differing})
    by_after: dict[str, dict] = {}
    for c in compared:
        entry = by_after.setdefault(c["after"], {"runs": 0, "identical": 0})
        entry["runs"] += 1
        entry["identical"] += c["identical"]
    return {"a_runs": len(firsts), "compared": compared, "by_preceding_token": by_after}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--sequence", default="A B A F A B A X A B A F B A",
                   help="tokens A (SDXL under test), B (SDXL, other seed), F (FLUX), X (unload all, drop the cache)")
    p.add_argument("--steps", type=int, default=10, help="sampler steps (the soak's prompts ran 6-10)")
    p.add_argument("--size", type=int, default=512)
    p.add_argument("--allocator", choices=("async", "native"), default="async")
    p.add_argument("--deterministic", action="store_true", help="as ComfyUI's --deterministic")
    p.add_argument("--demo", action="store_true", help="the pack's demo models (CPU smoke of the plumbing)")
    p.add_argument("--cpu", action="store_true")
    p.add_argument("--models", type=Path, default=Path("/tmp/fastlane-soak-models"),
                   help="the random-weight model files (soak_real.py write-models; written here if absent)")
    p.add_argument("--out", type=Path, default=Path("out/switch"))
    args = p.parse_args(argv)
    tokens = args.sequence.split()
    if not set(tokens) <= {"A", "B", "F", "X"} or "A" not in tokens:
        raise SystemExit(f"--sequence takes tokens A, B, F, X and at least one A, not {args.sequence!r}")
    if args.allocator == "async" and not args.cpu:
        os.environ.setdefault("PYTORCH_CUDA_ALLOC_CONF", "backend:cudaMallocAsync")
    if args.deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    args.out.mkdir(parents=True, exist_ok=True)

    import run as bench  # benchmarks/run.py: module stand-ins, log

    bench.stub_missing_modules()
    import comfy_host

    runner = comfy_host.GraphRunner(cpu=args.cpu)
    bench.hide_stubs()
    import comfy.model_management as mm
    import folder_paths
    import torch

    if args.deterministic:  # what ComfyUI's --deterministic does: torch's switch, and no non-blocking copies
        import comfy.cli_args

        comfy.cli_args.args.deterministic = True
        torch.use_deterministic_algorithms(True, warn_only=True)
    scratch = Path(tempfile.mkdtemp(prefix="fastlane_switch_"))
    folder_paths.set_output_directory(str(scratch / "output"))
    if args.demo:
        prompts = demo_prompts(args.steps, args.size)
    else:
        import soak_real

        # the soak's model files (kept on a warm machine: the disk holds one set of the ~38 GB), written by a process
        # of its own so that its GPU memory is gone before the probe loads anything
        soak_real.write_models_subprocess(args.models, ["sdxl", "flux"])
        for folder in ("checkpoints", "diffusion_models", "text_encoders", "vae", "loras"):
            folder_paths.add_model_folder_path(folder, str(args.models / folder), is_default=True)
        prompts = shipped_prompts(args.steps, args.size)
    recorder = SampleRecorder()
    try:
        records = run_sequence(tokens, prompts, runner, recorder, scratch / "output")
    finally:
        recorder.close()
        shutil.rmtree(scratch, ignore_errors=True)
    summary = {"sequence": args.sequence, "allocator": os.environ.get("PYTORCH_CUDA_ALLOC_CONF", "native"),
               "deterministic": args.deterministic, "demo": args.demo, "steps": args.steps, "size": args.size,
               "device": str(mm.get_torch_device()), **summarize(records)}
    (args.out / "records.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    (args.out / "summary.json").write_text(json.dumps(summary, indent=2))
    for c in summary["compared"]:
        bench.log(f"A #{c['index']} after {c['after']}: " + ("identical to the first A" if c["identical"] else
                  f"differs in {c['differing']}") + f" (same model object: {c['same_model_object']})")
    bench.log(f"by what came before: {summary.get('by_preceding_token')}")
    return 0


def run_sequence(tokens: list[str], prompts: dict[str, dict], runner, recorder: SampleRecorder,
                 output_dir: Path) -> list[dict]:
    """Run the tokens in order; one record per token."""
    import comfy.model_management as mm
    import run as bench

    records, before = [], "start"
    for index, token in enumerate(tokens):
        if token == "X":
            mm.unload_all_models()
            runner.executor.reset()
            mm.soft_empty_cache()
            records.append({"index": index, "token": "X", "after": before})
        else:
            runs_before = len(recorder.runs)
            result = runner.run(copy.deepcopy(prompts[token]))
            run = recorder.runs[-1] if len(recorder.runs) > runs_before else {}
            records.append({"index": index, "token": token, "after": before, **run,
                            "image": image_digest(result, output_dir)})
        before = token
        bench.log(f"#{index} {token}: " + json.dumps({k: v for k, v in records[-1].items() if k != "index"}))
    return records


if __name__ == "__main__":
    sys.exit(main())
