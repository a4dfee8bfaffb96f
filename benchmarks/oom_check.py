"""GPU out-of-memory checks (issue 21): Fastlane Quantize, Compile and CUDA Graph running out of memory on the real
FLUX.1-dev architecture (random weights, built in memory by ``models.py``: no files), in one process.

The GPU is made small with ``torch.cuda.set_per_process_memory_fraction`` (torch's allocator then raises a real
``torch.OutOfMemoryError`` past the limit), each case is run, then the limit is lifted and the same MODELs sample
again (what "the server keeps working" means inside one process):

(a) Quantize: limit = the weights in use + 3 GiB (fp8_scaled_mm needs ~11 GiB for its copy): expected
    ``FastlaneOutOfMemory`` with the message (what ran out, what to try, "the received MODEL is unchanged"); the
    received MODEL, still under the limit, samples bit-identically to before; lifted: the quantized MODEL samples.
(b) Compile: regional/inductor compiled once at ``--size`` with no limit, then sampled under limits stepping down
    from 1.5x to 0.2x the eager run's peak activation memory: a compiled call that runs out either continues eagerly
    with a warning or, when the eager call does not fit either, raises ``FastlaneOutOfMemory`` ("does not fit");
    lifted: the same compiled MODEL samples again.
(c) CUDA Graph: a fresh recorder per limit, stepping down from 2.0x: recording (the second call of a signature) that
    runs out drops the graphs and runs unrecorded with a warning, or raises ``FastlaneOutOfMemory``; lifted: it
    samples (and records) again.

After every case, with the limit lifted, the received MODEL must sample bit-identically to the first sample (same
eager kernels, same seed). A table of what happened; ``--out DIR`` gets ``oom_check.json``. Exit 1 when a case
leaves a MODEL broken (an error after lifting the limit, or the received MODEL's sample changed) or Quantize's OOM
comes without Fastlane's message. A case whose OOM could not be provoked is reported "not triggered" (exit 0).

Needs CUDA: elsewhere it says so and exits 0 (the CPU tests cover the same paths with injected OOMs:
tests/test_faults.py).

    python3 benchmarks/oom_check.py --out $OUT/oom          # ~60-90 s on an H100 (FLUX build, one compile)
"""
from __future__ import annotations

import argparse
import json
import logging
import sys
import time
import traceback
from pathlib import Path
from typing import Any

BENCH_DIR = Path(__file__).resolve().parent
PACK_DIR = BENCH_DIR.parent
sys.path.insert(0, str(PACK_DIR / "tests"))
from tiny_models import replay_by_recomputing as _replay_by_recomputing  # noqa: E402  (the CPU smoke's recorder)

GiB = 2**30


class Lines(logging.Handler):
    def __init__(self) -> None:
        super().__init__(level=logging.INFO)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(f"{record.levelname}: {record.getMessage()}")


def say(text: str) -> None:
    print(f"[oom_check {time.strftime('%H:%M:%S')}] {text}", flush=True)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--size", type=int, default=1024, help="image size of the compile and CUDA graph cases")
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--out", type=Path, default=None)
    p.add_argument("--cpu-smoke", action="store_true",
                   help="without CUDA: run every case's plumbing on a tiny FLUX on the CPU, no limits (no OOM: each "
                        "case 'not triggered'); a check of this script, not of the faults")
    args = p.parse_args(argv)
    import torch

    if args.cpu_smoke and not torch.cuda.is_available():
        return run_checks(args, cpu=True)
    if not torch.cuda.is_available():
        say("needs CUDA (a GPU): nothing checked on this machine (tests/test_faults.py covers the same paths on the "
            "CPU with injected OOMs)")
        if args.out:
            args.out.mkdir(parents=True, exist_ok=True)
            (args.out / "oom_check.json").write_text(json.dumps({"skipped": "needs CUDA"}))
        return 0
    return run_checks(args)


class CpuShim:
    """The torch.cuda calls of this script, as no-ops on the CPU (--cpu-smoke)."""

    @staticmethod
    def memory_allocated(device=None) -> int:
        return 0

    max_memory_allocated = memory_allocated

    @staticmethod
    def reset_peak_memory_stats(device=None) -> None:
        pass

    synchronize = empty_cache = reset_peak_memory_stats

    limited = False  # under a limit now (tests inject their OOMs only then)

    @classmethod
    def set_per_process_memory_fraction(cls, fraction, device=None) -> None:
        cls.limited = fraction < 1.0

    @staticmethod
    def get_device_name(device=None) -> str:
        return "CPU (smoke: no limits)"

    @staticmethod
    def get_device_properties(device=None):
        return type("Props", (), {"total_memory": 64 * GiB})()


def run_checks(args, cpu: bool = False) -> int:
    import torch

    sys.path[:0] = [str(BENCH_DIR), str(PACK_DIR / "tests")]
    import run as bench

    bench.stub_missing_modules()
    import comfy_host

    comfy_host.load(cpu=cpu)
    bench.hide_stubs()
    import comfy.model_management
    import comfy.sample
    import models
    from fastlane.compilers import cuda_graphs, engine
    from fastlane.faults import OOM_ERRORS, FastlaneOutOfMemory

    import nodes

    lines = Lines()
    logging.getLogger("fastlane").addHandler(lines)
    logging.getLogger("fastlane").setLevel(logging.INFO)
    node = nodes.NODE_CLASS_MAPPINGS
    cuda = CpuShim() if cpu else torch.cuda
    # ComfyUI's device carries an index, which torch's per-process memory fraction needs ("cuda" alone raises)
    device = comfy.model_management.get_torch_device()
    total = cuda.get_device_properties(device).total_memory
    started = time.perf_counter()
    scheme = "int8_weight_only" if cpu else "fp8_scaled_mm"
    backend = "eager" if cpu else "inductor"
    if cpu:
        args.size = min(args.size, 64)
    built = models.build_model("flux", tiny=cpu, device=device, dtype=torch.float32 if cpu else torch.bfloat16)
    base = built.patcher
    positive, negative = models.flux_conditioning(built.spec)
    say(f"FLUX.1-dev architecture built in {built.build_s:.1f} s: {built.info['weights_gib']} GiB of weights on "
        f"{cuda.get_device_name(device)} ({total / GiB:.1f} GiB)")

    def sample(model, size: int, steps: int = args.steps):
        latent = models.empty_latent(built.spec, size, size)
        noise = comfy.sample.prepare_noise(latent, 0)
        out = comfy.sample.sample(model, noise, steps, 1.0, "euler", "simple", positive, negative, latent,
                                  denoise=1.0, seed=0, disable_pbar=True)
        cuda.synchronize()
        return out

    def limit(extra_bytes: float) -> float:
        """Allow torch what is allocated now + ``extra_bytes``; returns the limit in GiB."""
        collect()
        allowed = cuda.memory_allocated(device) + extra_bytes
        cuda.set_per_process_memory_fraction(min(1.0, allowed / total), device)
        return allowed / GiB

    def unlimit() -> None:
        cuda.set_per_process_memory_fraction(1.0, device)
        collect()

    def collect() -> None:
        """Drop what an earlier case left (its MODELs once deleted, ComfyUI's records of them), then torch's cache."""
        import gc

        import comfy.model_management as mm

        gc.collect()
        if hasattr(mm, "cleanup_models_gc"):
            mm.cleanup_models_gc()
        cuda.empty_cache()

    small = 32 if cpu else 512
    reference = sample(base, small)
    cuda.empty_cache()
    cuda.reset_peak_memory_stats(device)
    before = cuda.memory_allocated(device)
    sample(base, args.size)
    eager_peak = cuda.max_memory_allocated(device) - before
    say(f"eager {args.size}^2 sample: peak activations {eager_peak / GiB:.2f} GiB above the weights")
    rows: list[dict] = []

    def received_still_samples(row: dict) -> None:
        unlimit()
        try:
            row["received_model_after"] = "identical" if torch.equal(sample(base, small), reference) else "CHANGED"
        except Exception as e:  # noqa: BLE001
            row["received_model_after"] = f"ERROR {type(e).__name__}: {str(e)[:200]}"
        row["allocated_gib_after"] = round(cuda.memory_allocated(device) / GiB, 2)

    def squeeze(row: dict, factors: tuple[float, ...], prepare, ran_out, outcomes: dict[str, str],
                plain_is_unclear: bool) -> Any:
        """Sample the MODEL ``prepare()`` gives (per limit) under limits of ``factor`` x the eager peak, stepping down
        until one bites, and record in ``row`` how: ``ran_out(model)`` -> extra fields when the call noted an OOM it
        fell back from (``outcomes["fallback"]``), else None; FastlaneOutOfMemory (``outcomes["both"]``); a plain
        torch OOM (``outcomes["plain"]``); another error. Returns the last MODEL."""
        row["outcome"] = "not triggered"
        model = None
        for factor in factors:
            model = prepare()
            lines.lines.clear()
            limit_gib = round(limit(factor * eager_peak), 2)
            try:
                sample(model, args.size)
                extra = ran_out(model)
                if extra is not None:
                    row.update(outcome=outcomes["fallback"], factor=factor, limit_gib=limit_gib, **extra)
                    break
            except FastlaneOutOfMemory as e:
                row.update(outcome=outcomes["both"], factor=factor, limit_gib=limit_gib, message=str(e)[:400])
                break
            except OOM_ERRORS as e:
                row.update(outcome=outcomes["plain"], factor=factor, limit_gib=limit_gib, message=str(e)[:300],
                           **({"clear": False} if plain_is_unclear else {}))
                break
            except Exception as e:  # noqa: BLE001
                row.update(outcome=f"other error {type(e).__name__}", factor=factor, message=str(e)[:300],
                           clear=False)
                break
        row["warnings"] = [ln[:300] for ln in lines.lines if ln.startswith("WARNING")][:3]
        unlimit()
        return model

    def oom_note(notes: list[str]) -> dict | None:
        note = next((n for n in notes if "ran out of memory" in n), None)
        return None if note is None else {"message": note[:400]}

    # (a) Fastlane Quantize --------------------------------------------------------------------------------------
    row = {"case": f"(a) Quantize {scheme}"}
    lines.lines.clear()
    row["limit_gib"] = round(limit(3 * GiB), 2)
    try:
        quantized = node["FastlaneQuantize"].execute(model=base, scheme=scheme, filter="none", regex="",
                                                     few_row_linears="auto").result[0]
        row["outcome"] = "not triggered (quantized within the limit)"
        del quantized
    except FastlaneOutOfMemory as e:
        text = str(e)
        clear = all(part in text for part in ("Fastlane Quantize", "ran out of memory", "unchanged"))
        row["outcome"] = "FastlaneOutOfMemory" + ("" if clear else " (message lacks what to try)")
        row["message"] = text[:400]
        row["clear"] = clear
    except OOM_ERRORS as e:
        row.update(outcome="plain torch OOM (no Fastlane message)", message=str(e)[:300], clear=False)
    except Exception as e:  # noqa: BLE001
        row.update(outcome=f"other error {type(e).__name__}", message=str(e)[:300], clear=False)
    try:  # still under the limit: the received MODEL samples as before
        row["received_under_limit"] = "identical" if torch.equal(sample(base, small), reference) else "CHANGED"
    except Exception as e:  # noqa: BLE001
        row["received_under_limit"] = f"ERROR {type(e).__name__}: {str(e)[:200]}"
    unlimit()
    try:
        quantized = node["FastlaneQuantize"].execute(model=base, scheme=scheme, filter="none", regex="",
                                                     few_row_linears="auto").result[0]
        out = sample(quantized, small)
        row["after_lifting"] = "works" if torch.isfinite(out).all() else "NON-FINITE"
        del quantized, out
    except Exception as e:  # noqa: BLE001
        row["after_lifting"] = f"ERROR {type(e).__name__}: {str(e)[:200]}"
    received_still_samples(row)
    rows.append(row)
    say(f"{row}")

    # (b) Fastlane Compile ---------------------------------------------------------------------------------------
    row = {"case": f"(b) Compile regional/{backend}, {args.size}^2"}
    compiled = node["FastlaneCompile"].execute(model=base, scope="regional", backend=backend, mode="default",
                                               dynamic="auto", fullgraph=False).result[0]
    t0 = time.perf_counter()
    sample(compiled, args.size)  # compiles here, without a limit
    row["compile_s"] = round(time.perf_counter() - t0, 1)
    squeeze(row, (1.5, 1.2, 1.0, 0.8, 0.6, 0.4, 0.2), lambda compiled=compiled: compiled,
            lambda m: oom_note((engine.compiler_of(m).report()["last_run"] or {}).get("notes", [])),
            {"fallback": "compiled call OOM -> ran eagerly with a warning",
             "both": "FastlaneOutOfMemory (compiled and eager call both ran out)",
             "plain": "plain torch OOM (no Fastlane message)"}, plain_is_unclear=True)
    try:
        out = sample(compiled, args.size)
        run = engine.compiler_of(compiled).report()["last_run"] or {}
        row["after_lifting"] = ("works" if torch.isfinite(out).all() else "NON-FINITE") + \
            f" ({run.get('calls')} calls: {run.get('paths')})"
        del out
    except Exception as e:  # noqa: BLE001
        row["after_lifting"] = f"ERROR {type(e).__name__}: {str(e)[:200]}"
    del compiled
    received_still_samples(row)
    rows.append(row)
    say(f"{row}")

    # (c) Fastlane CUDA Graph ------------------------------------------------------------------------------------
    row = {"case": f"(c) CUDA Graph (eager FLUX), {args.size}^2"}

    def graphs_dropped(m) -> dict | None:
        report = cuda_graphs.recorder_of(m).report()
        note = oom_note((report["last_run"] or {}).get("notes", []))
        return None if note is None else {**note, "graphs_left": report["graphs"]}

    graphed = squeeze(row, (2.0, 1.7, 1.5, 1.3, 1.15, 1.0, 0.9, 0.8),
                      lambda: (cuda_graphs.attach(base, record=_replay_by_recomputing)[0] if cpu
                                        else node["FastlaneCudaGraph"].execute(model=base).result[0]),  # fresh
                      graphs_dropped,
                      {"fallback": "recording OOM -> graphs dropped, ran unrecorded with a warning",
                       "both": "FastlaneOutOfMemory (recording and the plain call both ran out)",
                       "plain": "plain torch OOM (the unrecorded first call of the size ran out)"},
                      plain_is_unclear=False)
    try:
        out = sample(graphed, args.size)
        out = sample(graphed, args.size)
        report = cuda_graphs.recorder_of(graphed).report()
        row["after_lifting"] = ("works" if torch.isfinite(out).all() else "NON-FINITE") + \
            f" ({(report['last_run'] or {}).get('replays', 0)} replays, {report['graphs']} graphs)"
        del out
    except Exception as e:  # noqa: BLE001
        row["after_lifting"] = f"ERROR {type(e).__name__}: {str(e)[:200]}"
    del graphed
    received_still_samples(row)
    rows.append(row)
    say(f"{row}")

    broken = [r["case"] for r in rows if not str(r.get("after_lifting", "")).startswith("works")
              or r.get("received_model_after") != "identical"
              or r.get("received_under_limit", "identical") != "identical"
              or r.get("clear") is False and r["case"].startswith("(a)")]
    print(table(rows), flush=True)
    summary = {"device": cuda.get_device_name(device), "torch": torch.__version__,
               "weights_gib": built.info["weights_gib"], "eager_peak_gib": round(eager_peak / GiB, 3),
               "size": args.size, "steps": args.steps, "seconds": round(time.perf_counter() - started, 1),
               "cases": rows, "broken": broken}
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "oom_check.json").write_text(json.dumps(summary, indent=1))
    say(f"done in {summary['seconds']} s: " + ("every MODEL still works" if not broken else f"BROKEN: {broken}"))
    logging.getLogger("fastlane").removeHandler(lines)
    return 1 if broken else 0


def table(rows: list[dict]) -> str:
    out = ["| case | limit GiB | what happened | after lifting the limit | received MODEL after |",
           "|---|---:|---|---|---|"]
    for r in rows:
        out.append(f"| {r['case']} | {r.get('limit_gib', '–')} | {r['outcome']} | {r.get('after_lifting')} | "
                   f"{r.get('received_model_after')} |")
    for r in rows:
        if r.get("message"):
            out.append(f"\n{r['case']}: {r['message']}")
    return "\n".join(out)


if __name__ == "__main__":
    try:
        sys.exit(main())
    except SystemExit:
        raise
    except BaseException:  # noqa: BLE001  (a crash is a broken case: say where)
        traceback.print_exc()
        sys.exit(1)
