#!/usr/bin/env python3
"""What one Fastlane Multi-GPU model call spends in communication (issue 22): the collectives of ``parallel/`` at
the real shapes, on 2 and 4 ranks, timed alone.

Each world size starts its own ranks (one process per GPU, multiprocessing spawn), joined exactly as the node joins
them (``parallel.launcher.make_group``: a raw ProcessGroupNCCL / ProcessGroupGloo on a TCPStore, NCCL blocking wait),
and times, with the node's own functions (``parallel.attention`` / ``parallel.comm``):

- ``a2a_qkv_raw``      one ``alltoall_base`` of the stacked q, k, v (3, B, H, L/N, D): the collective alone;
- ``ulysses_in``       ``attention._ulysses``: that all-to-all plus the local reshuffle, as one attention call does;
- ``ulysses_out``      ``attention._ulysses_back``: the attention output's all-to-all back to token shares;
- ``kv_gather``        ``Comm.all_gather_seq`` of the stacked K, V (attention ``kv_gather``);
- ``output_gather``    the all-gather of the model output after the last layer (FLUX: img after the final layer;
  Wan: the hidden states after the last block);
- ``inputs_broadcast`` rank 0's broadcast of one call's inputs (latent tokens + text context);
- ``feature_gather`` / ``forecast_broadcast`` (FLUX): a blocks cache's computed step (all-gather of the residual)
  and cached step (broadcast of the forecast).

Per op: ``--warmup`` untimed runs, then ``--iters`` timed ones (CUDA events on GPUs, perf_counter on CPU), each after
a barrier so that every rank starts together; reported: the median over runs (slowest rank, and rank 0), and
bandwidth as nccl-tests' *bus bandwidth* (bytes each rank exchanges with the others / time: (N-1)/N of the buffer for
all-to-all and all-gather). Then a per-model-call estimate: layers x (ulysses_in + ulysses_out) + output_gather +
inputs_broadcast (Ulysses), or layers x kv_gather + ... (K/V gather). ``ulysses`` round trips are checked exact.

    python3 benchmarks/probes/probe_multigpu_comm.py --shape flux --worlds 2,4 --out $OUT/multigpu/probe   # GPUs
    python3 benchmarks/probes/probe_multigpu_comm.py --shape tiny --worlds 2 --backend gloo                  # CPU smoke

Shapes: ``flux`` FLUX.1-dev 1024² (24 heads x 4608 tokens x 128, bf16, batch 1 at cfg 1, 57 attention layers),
``wan`` Wan 2.2 14B 1280x720x81 (40 heads x 75600 tokens x 128, fp16, batch 2 at cfg > 1, 40 self-attention layers),
``tiny`` (4 heads x 64 tokens x 16, fp32; gloo smoke). NVLink multicast stays off (NCCL_NVLS_ENABLE=0, see
the device notes).
"""
from __future__ import annotations

import argparse
import datetime
import importlib.util
import json
import multiprocessing as mp
import os
import statistics
import sys
import time
from pathlib import Path

PACK_DIR = Path(__file__).resolve().parents[2]
PARALLEL_DIR = PACK_DIR / "parallel"
# Never NVLink multicast on the lent hosts (it can take the shared GPUs out of service): set before NCCL loads.
SAFE_ENV = {"NCCL_NVLS_ENABLE": "0", "TORCH_SYMM_MEM_DISABLE_MULTICAST": "1", "NVSHMEM_DISABLE_NVLS": "1"}
os.environ.update(SAFE_ENV)

# batch, heads, tokens (all of one attention's sequence), head dim, dtype, attention layers per model call,
# image tokens and channels of the output gather, input bytes per call, hidden size (block-cache feature)
SHAPES: dict[str, dict] = {
    "flux": {"batch": 1, "heads": 24, "tokens": 4096 + 512, "head_dim": 128, "dtype": "bf16", "layers": 19 + 38,
             "out_tokens": 4096, "out_channels": 64, "input_bytes": (4096 * 64 + 512 * 4096) * 2 + 4608 * 3 * 4,
             "hidden": 3072, "what": "FLUX.1-dev 1024x1024, cfg 1 (batch 1), 19 double + 38 single blocks"},
    "wan": {"batch": 2, "heads": 40, "tokens": 21 * 45 * 80, "head_dim": 128, "dtype": "fp16", "layers": 40,
            "out_tokens": 21 * 45 * 80, "out_channels": 5120,
            "input_bytes": (2 * 16 * 21 * 90 * 160 + 2 * 512 * 4096) * 2, "hidden": None,
            "what": "Wan 2.2 14B expert 1280x720x81 (21x45x80 tokens), cfg > 1 (batch 2), 40 blocks' self-attention"},
    "tiny": {"batch": 1, "heads": 4, "tokens": 64 + 6, "head_dim": 16, "dtype": "fp32", "layers": 3,
             "out_tokens": 64, "out_channels": 8, "input_bytes": 4096, "hidden": 64, "what": "tiny (CPU smoke)"},
}


def load_parallel():
    """``parallel/`` as the package ``fastlane_parallel`` (as the node's workers load it: torch only, no ComfyUI)."""
    if "fastlane_parallel" in sys.modules:
        return sys.modules["fastlane_parallel"]
    spec = importlib.util.spec_from_file_location("fastlane_parallel", PARALLEL_DIR / "__init__.py",
                                                  submodule_search_locations=[str(PARALLEL_DIR)])
    pkg = importlib.util.module_from_spec(spec)
    sys.modules["fastlane_parallel"] = pkg
    spec.loader.exec_module(pkg)
    return pkg


def _dtype(name: str):
    import torch

    return {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}[name]


def rank_main(rank: int, world: int, port: int, backend: str, shape: dict, iters: int, warmup: int,
              timeout_s: float) -> None:
    """One rank: join the group as the node does, time every op, leave the medians in the store."""
    import torch
    import torch.distributed as dist

    load_parallel()
    from fastlane_parallel import attention, launcher
    from fastlane_parallel.comm import Comm
    from fastlane_parallel.flux import split_sizes

    torch.set_num_threads(1)
    store = dist.TCPStore("127.0.0.1", port, world + 1, False, timeout=datetime.timedelta(seconds=timeout_s))
    try:
        device = torch.device(f"cuda:{rank}" if backend == "nccl" else "cpu")
        group = launcher.make_group(backend, store, rank, world, timeout_s, str(device))
        comm = Comm(group, rank, world, device)
        cuda = device.type == "cuda"
        dt = _dtype(shape["dtype"])
        b, h, total, d = shape["batch"], shape["heads"], shape["tokens"], shape["head_dim"]
        lengths = split_sizes(total, world)
        mine = lengths[rank]
        gen = torch.Generator(device=device).manual_seed(rank)
        qkv = torch.randn((3, b, h, mine, d), generator=gen, device=device, dtype=torch.float32).to(dt)
        out_full = torch.randn((b, h // world, total, d), generator=gen, device=device, dtype=torch.float32).to(dt)
        kv = qkv[1:].contiguous()
        out_lengths = split_sizes(shape["out_tokens"], world)
        img = torch.randn((b, out_lengths[rank], shape["out_channels"]), device=device, dtype=dt)
        inputs = torch.zeros(shape["input_bytes"], dtype=torch.uint8, device=device)
        flat = qkv.reshape(-1)
        sizes = [3 * b * h * mine * d // world] * world if h % world == 0 else None
        ops = {}
        if sizes is not None:
            ops["a2a_qkv_raw"] = (lambda: comm.all_to_all_flat(flat, sizes, [3 * b * (h // world) * o * d
                                                                            for o in lengths]),
                                  qkv.numel() * qkv.element_size() * (world - 1) / world)
            ops["ulysses_in"] = (lambda: attention._ulysses(comm, qkv, lengths),
                                 qkv.numel() * qkv.element_size() * (world - 1) / world)
            ops["ulysses_out"] = (lambda: attention._ulysses_back(comm, out_full, lengths),
                                  out_full.numel() * out_full.element_size() * (world - 1) / world)
        ops["kv_gather"] = (lambda: comm.all_gather_seq(kv, lengths, dim=3),
                            kv[:, :, :, :1].numel() * max(lengths) * kv.element_size() * (world - 1))
        ops["output_gather"] = (lambda: comm.all_gather_seq(img, out_lengths, dim=1),
                                img[:, :1].numel() * max(out_lengths) * img.element_size() * (world - 1))
        ops["inputs_broadcast"] = (lambda: comm.broadcast_(inputs, 0), inputs.numel())
        if shape.get("hidden"):
            feature = torch.randn((b, mine, shape["hidden"]), device=device, dtype=torch.float32).to(dt)
            whole = torch.empty((b, total, shape["hidden"]), device=device, dtype=dt)
            ops["feature_gather"] = (lambda: comm.all_gather_seq(feature, lengths, dim=1),
                                     feature[:, :1].numel() * max(lengths) * feature.element_size() * (world - 1))
            ops["forecast_broadcast"] = (lambda: comm.broadcast_(whole, 0), whole.numel() * whole.element_size())
        barrier = torch.zeros(1, device=device)

        def sync() -> None:
            comm._wait(group.allreduce([barrier]))
            if cuda:
                torch.cuda.synchronize(device)

        result: dict = {"rank": rank, "device": str(device), "ops": {}}
        if sizes is not None:  # the node's Ulysses round trip gives every rank back exactly its own q
            full = attention._ulysses(comm, qkv, lengths)
            back = attention._ulysses_back(comm, full[0], lengths)
            result["round_trip_exact"] = bool(torch.equal(back, qkv[0]))
        for name, (fn, nbytes) in ops.items():
            for _ in range(warmup):
                fn()
            times = []
            for _ in range(iters):
                sync()
                if cuda:
                    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                    start.record()
                    fn()
                    end.record()
                    end.synchronize()
                    times.append(start.elapsed_time(end))
                else:
                    t = time.perf_counter()
                    fn()
                    times.append((time.perf_counter() - t) * 1000.0)
            result["ops"][name] = {"median_ms": statistics.median(times), "min_ms": min(times),
                                   "max_ms": max(times), "bytes_exchanged": nbytes}
        if cuda:
            result["nccl_version"] = ".".join(map(str, torch.cuda.nccl.version()))
            result["device_name"] = torch.cuda.get_device_name(device)
        store.set(f"result/{rank}", json.dumps(result))
    except BaseException as e:  # noqa: BLE001  reported by the parent
        import traceback

        store.set(f"result/{rank}", json.dumps({"rank": rank, "error": f"{type(e).__name__}: {e}",
                                                "traceback": traceback.format_exc()}))
        raise


def run_world(world: int, backend: str, shape: dict, iters: int, warmup: int, timeout_s: float) -> dict:
    import torch.distributed as dist

    store = dist.TCPStore("127.0.0.1", 0, world + 1, True, timeout=datetime.timedelta(seconds=timeout_s),
                          wait_for_workers=False)
    ctx = mp.get_context("spawn")
    procs = [ctx.Process(target=rank_main, args=(r, world, store.port, backend, shape, iters, warmup, timeout_s))
             for r in range(world)]
    t0 = time.perf_counter()
    for p in procs:
        p.start()
    deadline = time.monotonic() + timeout_s
    for p in procs:
        p.join(max(1.0, deadline - time.monotonic()))
    hung = [p.pid for p in procs if p.is_alive()]
    for p in procs:
        if p.is_alive():
            p.kill()
            p.join(5)
    results = []
    for r in range(world):
        try:
            results.append(json.loads(store.get(f"result/{r}")) if store.check([f"result/{r}"]) else
                           {"rank": r, "error": "no result"})
        except Exception as e:  # noqa: BLE001
            results.append({"rank": r, "error": f"{type(e).__name__}: {e}"})
    summary: dict = {"world": world, "backend": backend, "wall_s": round(time.perf_counter() - t0, 2),
                     "exit_codes": [p.exitcode for p in procs], "hung_pids": hung, "ranks": results}
    errors = [r for r in results if "error" in r]
    if errors:
        summary["error"] = "; ".join(f"rank {r['rank']}: {r['error']}" for r in errors)
        return summary
    ops = {}
    for name in results[0]["ops"]:
        per_rank = [r["ops"][name]["median_ms"] for r in results]
        slowest = max(per_rank)
        nbytes = results[0]["ops"][name]["bytes_exchanged"]
        ops[name] = {"median_ms": round(slowest, 4), "rank0_median_ms": round(per_rank[0], 4),
                     "MB_exchanged_per_rank": float(f"{nbytes / 1e6:.4g}"),
                     "bus_GBps": float(f"{nbytes / (slowest / 1000.0) / 1e9:.4g}") if slowest > 0 else None}
    summary["ops"] = ops
    checked = [r["round_trip_exact"] for r in results if "round_trip_exact" in r]
    summary["round_trip_exact"] = all(checked) if checked else None  # None: heads not divisible, no Ulysses
    summary["nccl_version"] = results[0].get("nccl_version")
    summary["device_name"] = results[0].get("device_name")
    layers = shape["layers"]
    per_call = {}
    extra = ops["output_gather"]["median_ms"] + ops["inputs_broadcast"]["median_ms"]
    if "ulysses_in" in ops:
        per_call["ulysses"] = round(layers * (ops["ulysses_in"]["median_ms"] + ops["ulysses_out"]["median_ms"])
                                    + extra, 3)
    per_call["kv_gather"] = round(layers * ops["kv_gather"]["median_ms"] + extra, 3)
    summary["per_model_call_ms"] = per_call
    return summary


def markdown(report: dict) -> str:
    shape = report["shape"]
    lines = [f"# Fastlane Multi-GPU communication probe: {report['shape_name']} — {shape['what']}", "",
             f"- q/k/v per attention: batch {shape['batch']} x {shape['heads']} heads x {shape['tokens']} tokens x "
             f"{shape['head_dim']} ({shape['dtype']}), {shape['layers']} attention layers per model call",
             f"- {report['iters']} timed runs per op after {report['warmup']} warm-up runs, each after a barrier; "
             f"median of the slowest rank (CUDA events on GPUs); bus GB/s = bytes each rank exchanges / time",
             f"- TORCH_NCCL_BLOCKING_WAIT={report.get('blocking_wait')} (1: as the node; each collective waits on "
             f"the host) · date (UTC) {report['date_utc']}, torch {report['torch']}, host {report['host']}", ""]
    for w in report["worlds"]:
        head = f"## {w['world']} ranks, {w['backend']}"
        if w.get("device_name"):
            head += f" on {w['device_name']} (NCCL {w.get('nccl_version')})"
        lines += [head, ""]
        if w.get("error") or w.get("skipped"):
            lines += [f"**{w.get('skipped') or 'ERROR: ' + w['error']}**", ""]
            continue
        lines += ["| op | ms (median, slowest rank) | rank 0 ms | MB exchanged per rank | bus GB/s |",
                  "|---|---:|---:|---:|---:|"]
        for name, o in w["ops"].items():
            bus = o["bus_GBps"] if o["bus_GBps"] is not None else "–"
            lines.append(f"| {name} | {o['median_ms']:.3f} | {o['rank0_median_ms']:.3f} | "
                         f"{o['MB_exchanged_per_rank']:.4g} | {bus} |")
        per_call = ", ".join(f"{k} {v:.2f} ms" for k, v in w["per_model_call_ms"].items())
        lines += ["", f"Communication per model call (estimate: layers x per-attention ops + output gather + inputs "
                      f"broadcast): {per_call}. Ulysses round trip exact: {w['round_trip_exact']}.", ""]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--shape", choices=list(SHAPES), default="flux")
    p.add_argument("--worlds", default="2,4", help="comma-separated rank counts (default 2,4)")
    p.add_argument("--backend", choices=["auto", "nccl", "gloo"], default="auto",
                   help="auto: nccl when enough GPUs are visible, else gloo on CPU processes")
    p.add_argument("--iters", type=int, default=20, help="timed runs per op (median; default 20)")
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--dtype", choices=["bf16", "fp16", "fp32"], default=None, help="default: the shape's")
    p.add_argument("--timeout", type=float, default=60.0, help="seconds per world size (and per collective)")
    p.add_argument("--blocking-wait", choices=["0", "1"], default="1",
                   help="TORCH_NCCL_BLOCKING_WAIT for the ranks: 1 as the node sets it (each collective waits on the "
                        "host, so the time includes that wait), 0 (the stream waits: the events time the GPU side)")
    p.add_argument("--out", default=None, help="folder for probe_multigpu_comm.json / .md")
    a = p.parse_args(argv)
    os.environ["TORCH_NCCL_BLOCKING_WAIT"] = a.blocking_wait  # inherited by the spawned ranks
    import platform

    import torch

    shape = dict(SHAPES[a.shape])
    if a.dtype:
        shape["dtype"] = a.dtype
    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    report = {"shape_name": a.shape, "shape": shape, "iters": a.iters, "warmup": a.warmup, "torch": torch.__version__,
              "blocking_wait": a.blocking_wait,
              "host": platform.node(), "gpus_visible": count, "worlds": [],
              "env": {k: os.environ.get(k) for k in SAFE_ENV},
              "date_utc": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")}
    print(f"probe_multigpu_comm: shape {a.shape} ({shape['what']}), {count} GPUs visible, worlds {a.worlds}",
          flush=True)
    out = Path(a.out) if a.out else None

    def write() -> None:  # after every world size: a stage cut short keeps what it measured
        if out is not None:
            out.mkdir(parents=True, exist_ok=True)
            (out / "probe_multigpu_comm.json").write_text(json.dumps(report, indent=1))
            (out / "probe_multigpu_comm.md").write_text(markdown(report))

    for world in [int(w) for w in a.worlds.split(",") if w.strip()]:
        backend = a.backend
        if backend == "auto":
            backend = "nccl" if count >= world else "gloo"
        if backend == "nccl" and count < world:
            report["worlds"].append({"world": world, "backend": backend,
                                     "skipped": f"skipped: needs {world} GPUs, {count} visible"})
            print(f"  {world} ranks: skipped ({count} GPUs visible)", flush=True)
            continue
        if backend == "gloo" and shape["dtype"] == "bf16" and a.shape != "tiny":
            print("  note: gloo on CPU at a real shape: slow, and not what the GPUs would do", flush=True)
        print(f"  {world} ranks, {backend}: starting", flush=True)
        summary = run_world(world, backend, shape, a.iters, a.warmup, a.timeout)
        report["worlds"].append(summary)
        if summary.get("error"):
            print(f"  {world} ranks: ERROR {summary['error']}", flush=True)
            for r in summary["ranks"]:
                if r.get("traceback"):
                    print(r["traceback"], flush=True)
        else:
            print(f"  {world} ranks, {backend}: done in {summary['wall_s']} s; per model call "
                  f"{summary['per_model_call_ms']} ms", flush=True)
        write()
    print(markdown(report), flush=True)
    write()
    if out is not None:
        print(f"wrote {out / 'probe_multigpu_comm.json'}, {out / 'probe_multigpu_comm.md'}", flush=True)
    failed = [w for w in report["worlds"] if w.get("error") or w.get("round_trip_exact") is False]
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
