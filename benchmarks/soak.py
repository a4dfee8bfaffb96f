"""Soak runner (issue 21): a long-running ComfyUI server with the Fastlane pack must never need a restart.

A script, not a timed unit test (``tests/test_soak.py`` runs a short version of it in CI). It starts a private
headless ComfyUI (``tests/comfy_server.py``: ``main.py --cpu`` on 127.0.0.1, private base directory, only this pack
among the custom nodes) or attaches to a running one (``--url``, ``--pid``), and drives it only through its HTTP API
(``POST /prompt``, ``GET /history/<id>``, ``GET /queue``, ``POST /interrupt``, ``GET /system_stats``) with N prompts
built from the pack's CPU-runnable demo graphs: a seeded random mix of model family (flux, flux-proxy, sdxl),
resolution (96/128/160), batch (1/2), sampler (euler, heun, dpmpp_2m), step cacher (none, FORA, TaylorSeer, Target
Speed with a varying compute fraction, Spectrum Cache, Adaptive, ComfyUI's own EasyCache). Every ``--interrupt-every``
-th prompt gets ``POST /interrupt`` shortly after it starts; every ``--bad-every``-th prompt is malformed (unknown
node, compute_fraction 0, a missing input, ...) and must be answered with HTTP 400 (+ node_errors where a node is to
blame); every ``--repeat-every``-th prompt repeats an earlier completed prompt verbatim, whose saved image must be
bit-identical (decoded pixels) to the first run's.

After each prompt it records the server's RSS (psutil on the server PID) and, where CUDA exists, the VRAM in use from
/system_stats, and writes one JSON line to ``OUT/prompts.jsonl``; at the end ``OUT/summary.json`` and a printed
summary. Exit status 1 when a goal fails: the server died, a malformed prompt was not rejected, a valid prompt failed,
a repeated prompt's output differed from its first run, or the RSS slope after warm-up (least-squares line over
prompts) exceeds ``--max-rss-slope-mb`` per 100 prompts.

    .venv/bin/python benchmarks/soak.py --prompts 500 --out out/soak
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

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from comfy_server import ComfyServer  # noqa: E402  (tests/comfy_server.py: the server the tests start)

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
    """The demo graph (loader -> [cacher] -> KSampler -> decode -> SaveImage) for one ``spec``."""
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
    cacher = cacher_node(spec["cacher"], model_ref, rng)
    if cacher is not None:
        graph["5"] = cacher
        model_ref = ["5", 0]
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

    def post(self, path: str, body: dict | None = None, timeout: float = 30) -> requests.Response:
        return requests.post(f"{self.url}{path}", json=body if body is not None else {}, timeout=timeout)

    def get(self, path: str, timeout: float = 30) -> requests.Response:
        return requests.get(f"{self.url}{path}", timeout=timeout)

    def alive(self) -> bool:
        if self.server is not None and self.server.process is not None and self.server.process.poll() is not None:
            return False
        try:
            return self.get("/system_stats", timeout=10).ok
        except requests.RequestException:
            return False

    def rss_mb(self) -> float | None:
        if self.pid is None:
            return None
        import psutil
        try:
            return psutil.Process(self.pid).memory_info().rss / 2**20
        except psutil.Error:
            return None

    def vram_mb(self) -> float | None:
        """VRAM in use on the first CUDA device per /system_stats (None on a CPU-only server)."""
        try:
            devices = self.get("/system_stats", timeout=10).json().get("devices", [])
        except (requests.RequestException, ValueError):
            return None
        for d in devices:
            if d.get("type") == "cuda":
                return (d.get("vram_total", 0) - d.get("vram_free", 0)) / 2**20
        return None

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


def output_hash(api: Api, entry: dict) -> str | None:
    images = entry.get("outputs", {}).get(SAVE_NODE, {}).get("images", [])
    if not images:
        return None
    digest = hashlib.sha256()
    for img in images:
        if api.server is not None:
            digest.update(image_hash(api.server.file_path(img)).encode())
        else:  # attached: read it through /view
            from PIL import Image
            params = {"filename": img["filename"], "subfolder": img.get("subfolder", ""),
                      "type": img.get("type", "output")}
            r = requests.get(f"{api.url}/view", params=params, timeout=30)
            r.raise_for_status()
            with Image.open(io.BytesIO(r.content)) as im:
                digest.update(hashlib.sha256(f"{im.mode}{im.size}".encode() + im.tobytes()).hexdigest().encode())
    return digest.hexdigest()


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


def run_soak(api: Api, config: SoakConfig, log=print) -> SoakResult:
    rng = random.Random(config.seed)
    result = SoakResult()
    firsts: dict[str, dict] = {}  # canonical prompt json -> {"hash", "index", "prompt"} of its first completed run
    out_file = None
    if config.out is not None:
        config.out.mkdir(parents=True, exist_ok=True)
        out_file = open(config.out / "prompts.jsonl", "w")
    bad_count = 0
    alive = True
    started = time.monotonic()
    object_info = api.get("/object_info", timeout=120).json()
    try:
        for index, kind in enumerate(plan(config)):
            # an interrupted prompt runs long enough for the interrupt to land while it samples
            spec = random_spec(rng, config.steps * (4 if kind == "interrupt" else 1))
            prompt = fill_defaults(build_prompt(spec, rng), object_info)
            record: dict[str, Any] = {"index": index, "kind": kind}
            if kind == "repeat":
                # an earlier completed prompt, verbatim, but not the last one (that would be served from the cache)
                last = result.records[-1].get("key") if result.records else None
                candidates = [k for k in firsts if k != last]
                if candidates:
                    key = rng.choice(candidates)
                    prompt = copy.deepcopy(firsts[key]["prompt"])
                    record["repeat_of"] = firsts[key]["index"]
                else:
                    kind = record["kind"] = "run"
            if kind == "bad":
                bad_kind = BAD_KINDS[bad_count % len(BAD_KINDS)]
                bad_count += 1
                prompt = malform(prompt, bad_kind)
                record["bad_kind"] = bad_kind
            else:
                record["spec"] = spec if "repeat_of" not in record else None
            key = json.dumps(prompt, sort_keys=True)
            record["key"] = key
            t0 = time.monotonic()
            try:
                r = api.post("/prompt", {"prompt": prompt, "client_id": "fastlane-soak"})
            except requests.RequestException as e:
                record.update(outcome="http_error", error=str(e))
                alive = api.alive()
                _finish(api, record, result, out_file, t0, log, config)
                if not alive:
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
                _finish(api, record, result, out_file, t0, log, config)
                continue
            if r.status_code != 200:
                record.update(outcome="rejected_valid", error=json.dumps(body)[:2000])
                _finish(api, record, result, out_file, t0, log, config)
                continue
            prompt_id = body["prompt_id"]
            record["prompt_id"] = prompt_id
            if kind == "interrupt":
                deadline = time.monotonic() + 10
                while time.monotonic() < deadline and not api.running(prompt_id):
                    if api.get(f"/history/{prompt_id}").json().get(prompt_id):
                        break  # already done
                    time.sleep(0.02)
                time.sleep(rng.uniform(0.02, 0.15))
                api.post("/interrupt", {"prompt_id": prompt_id})
            try:
                entry = api.wait(prompt_id, config.prompt_timeout)
            except (RuntimeError, TimeoutError, requests.RequestException) as e:
                record.update(outcome="lost", error=str(e))
                alive = api.alive()
                _finish(api, record, result, out_file, t0, log, config)
                if not alive:
                    break
                continue
            status = entry.get("status", {})
            events = [m[0] for m in status.get("messages", [])]
            if "execution_interrupted" in events:
                record["outcome"] = "interrupted"
            elif status.get("status_str") == "success":
                record["outcome"] = "ok"
                cached = next((m[1].get("nodes", []) for m in status["messages"] if m[0] == "execution_cached"), [])
                record["sampler_recomputed"] = "7" not in cached  # a repeat must sample again, not hit the cache
                h = output_hash(api, entry)
                record["hash"] = h
                first = firsts.get(key)
                if first is None:
                    firsts[key] = {"hash": h, "index": index, "prompt": prompt}
                else:
                    record["first_hash"] = first["hash"]
                    record["hash_match"] = h == first["hash"]
            else:
                record["outcome"] = "failed"
                errors = [m[1] for m in status.get("messages", []) if m[0] == "execution_error"]
                record["error"] = json.dumps(errors)[:2000]
            _finish(api, record, result, out_file, t0, log, config)
    finally:
        if out_file is not None:
            out_file.close()
    alive = api.alive()
    result.summary = summarize(result.records, config, alive, time.monotonic() - started)
    if config.out is not None:
        (config.out / "summary.json").write_text(json.dumps(result.summary, indent=1))
    return result


def _finish(api: Api, record: dict, result: SoakResult, out_file, t0: float, log, config: SoakConfig) -> None:
    record["seconds"] = round(time.monotonic() - t0, 3)
    if config.clear_history:  # ComfyUI keeps up to 10000 prompts in its history: tells its share of RSS growth apart
        try:
            api.post("/history", {"clear": True})
        except requests.RequestException:
            pass
    record["rss_mb"] = api.rss_mb()
    record["vram_mb"] = api.vram_mb()
    result.records.append(record)
    if out_file is not None:
        out_file.write(json.dumps({k: v for k, v in record.items() if k != "key"}) + "\n")
        out_file.flush()
    spec = record.get("spec") or {}
    desc = (f"{spec.get('family')} {spec.get('size')}x{spec.get('batch')} {spec.get('sampler')} {spec.get('cacher')}"
            if spec else record.get("bad_kind") or f"repeat of #{record.get('repeat_of')}")
    rss = f"{record['rss_mb']:.0f} MB" if record["rss_mb"] is not None else "-"
    match = "" if "hash_match" not in record else (" hash=" + ("same" if record["hash_match"] else "DIFFERENT"))
    log(f"[{record['index']:4d}] {record['kind']:9s} {record.get('outcome'):12s} {record['seconds']:6.2f}s "
        f"rss {rss:>8s}  {desc}{match}")


def summarize(records: list[dict], config: SoakConfig, alive: bool, seconds: float) -> dict:
    count = lambda outcome: sum(r.get("outcome") == outcome for r in records)  # noqa: E731
    warm = config.warmup_prompts()
    pts = [(r["index"], r["rss_mb"]) for r in records if r["index"] >= warm and r.get("rss_mb") is not None]
    slope = linear_slope([p[0] for p in pts], [p[1] for p in pts])
    rss = [r["rss_mb"] for r in records if r.get("rss_mb") is not None]
    vram = [r["vram_mb"] for r in records if r.get("vram_mb") is not None]
    mismatches = [{"index": r["index"], "repeat_of": r.get("repeat_of"), "hash": r["hash"],
                   "first_hash": r["first_hash"]} for r in records if r.get("hash_match") is False]
    not_rejected = [r["index"] for r in records if r.get("outcome") == "not_rejected"]
    failed = [{"index": r["index"], "outcome": r.get("outcome"), "error": r.get("error", "")[:500]}
              for r in records if r.get("outcome") in ("failed", "rejected_valid", "lost", "http_error")]
    summary = {
        "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "config": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(config).items()},
        "seconds": round(seconds, 1),
        "prompts": len(records),
        "ok": count("ok"),
        "interrupted": count("interrupted"),
        "interrupt_sent": sum(r["kind"] == "interrupt" for r in records),
        "rejected": count("rejected"),
        "bad_sent": sum(r["kind"] == "bad" for r in records),
        "failed": failed,
        "server_alive": alive,
        "hash_checks": sum("hash_match" in r for r in records),
        "hash_checks_resampled": sum("hash_match" in r and r.get("sampler_recomputed", False) for r in records),
        "hash_mismatches": mismatches,
        "rss_mb_first": rss[0] if rss else None,
        "rss_mb_last": rss[-1] if rss else None,
        "rss_mb_max": max(rss) if rss else None,
        "rss_warmup_prompts": warm,
        "rss_slope_mb_per_100": round(slope * 100, 2) if slope is not None else None,
        "vram_mb_first": vram[0] if vram else None,
        "vram_mb_last": vram[-1] if vram else None,
    }
    failures = []
    if not alive:
        failures.append("server died")
    if len(records) < config.prompts:
        failures.append(f"only {len(records)} of {config.prompts} prompts were sent")
    if not_rejected:
        failures.append(f"malformed prompts not rejected with HTTP 400: {not_rejected}")
    if failed:
        failures.append(f"valid prompts that failed: {[f['index'] for f in failed]}")
    if mismatches:
        failures.append(f"repeated prompts whose output differs from the first run: {[m['index'] for m in mismatches]}")
    if slope is not None and slope * 100 > config.max_rss_slope_mb:
        failures.append(f"RSS slope {slope * 100:.1f} MB/100 prompts > {config.max_rss_slope_mb}")
    summary["failures"] = failures
    return summary


def format_summary(s: dict) -> str:
    fmt = lambda v: "-" if v is None else f"{v:.0f}"  # noqa: E731
    lines = [
        (f"prompts {s['prompts']} in {s['seconds']:.0f}s: ok {s['ok']}, interrupted {s['interrupted']} "
         f"(of {s['interrupt_sent']} interrupts sent), rejected {s['rejected']} (of {s['bad_sent']} malformed), "
         f"failed {len(s['failed'])}"),
        f"server alive: {s['server_alive']}",
        (f"RSS MB first {fmt(s['rss_mb_first'])}, last {fmt(s['rss_mb_last'])}, max {fmt(s['rss_mb_max'])}, "
         f"slope {s['rss_slope_mb_per_100']} MB/100 prompts after {s['rss_warmup_prompts']} warm-up prompts"),
        f"VRAM MB first {fmt(s['vram_mb_first'])}, last {fmt(s['vram_mb_last'])}",
        (f"deterministic repeats checked {s['hash_checks']} ({s['hash_checks_resampled']} sampled again), "
         f"mismatching {len(s['hash_mismatches'])}"),
        "GOALS MET" if not s["failures"] else "GOALS FAILED: " + "; ".join(s["failures"]),
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--prompts", type=int, default=500)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--steps", type=int, default=20, help="sampling steps of every prompt")
    p.add_argument("--out", type=Path, default=None, help="directory for prompts.jsonl and summary.json")
    p.add_argument("--max-rss-slope-mb", type=float, default=25.0,
                   help="largest allowed RSS growth, MB per 100 prompts after warm-up (linear fit)")
    p.add_argument("--warmup", type=int, default=None, help="prompts left out of the RSS fit (max(10, N/5))")
    p.add_argument("--interrupt-every", type=int, default=10)
    p.add_argument("--bad-every", type=int, default=9)
    p.add_argument("--repeat-every", type=int, default=6)
    p.add_argument("--clear-history", action="store_true",
                   help="POST /history {clear} after each prompt (ComfyUI's history is kept in memory)")
    p.add_argument("--url", default=None, help="attach to this server (http://127.0.0.1:PORT) instead of starting one")
    p.add_argument("--pid", type=int, default=None, help="with --url: the server's PID for RSS (else looked up)")
    p.add_argument("--keep", action="store_true", help="keep the private server's base directory")
    args = p.parse_args(argv)
    config = SoakConfig(prompts=args.prompts, seed=args.seed, steps=args.steps, interrupt_every=args.interrupt_every,
                        bad_every=args.bad_every, repeat_every=args.repeat_every, warmup=args.warmup,
                        max_rss_slope_mb=args.max_rss_slope_mb, out=args.out,
                        clear_history=args.clear_history)
    if args.url:
        url = args.url.rstrip("/")
        if not url.startswith(("http://127.0.0.1", "http://localhost")):
            p.error("--url must be a loopback address")
        pid = args.pid or find_pid(int(url.rsplit(":", 1)[1]))
        if pid is None:
            print("warning: no server PID (--pid): RSS is not recorded", file=sys.stderr)
        result = run_soak(Api(url, pid), config)
    else:
        base = Path(tempfile.mkdtemp(prefix="fastlane-soak-"))
        server = ComfyServer(base)
        try:
            server.start()
            print(f"ComfyUI on {server.url} (pid {server.process.pid}, log {server.log_path})")
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
