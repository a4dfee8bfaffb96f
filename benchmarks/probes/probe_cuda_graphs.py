"""GPU probe: can SDXL get whole-model CUDA-graph speed without compiling the whole UNet (~2 minutes per image
size, runs s6-4/s3-5)? One CUDA graph recorded by hand around the UNet call, over eager or regionally compiled
blocks.

    python benchmarks/probes/probe_cuda_graphs.py [--out DIR] [--sizes 1024,768]

Eager SDXL in ComfyUI is bound by the CPU launching ~1,800 kernels per step, so regional compile alone does not
pay (0.83-0.98x, runs 3/4); inductor's CUDA graphs (``reduce-overhead``) pay only over the whole model, whose
compile is the long one. A graph recorded around the whole call replays every kernel with one launch, whatever
produced them. Routes, each on ComfyUI's real SDXL ``UNetModel`` (random weights, fp16, CFG batch 2), timed per
call as the median of 3 groups of 10 back-to-back calls ended by a synchronisation (wall time: the host's launch
cost counts):

- ``eager``: ComfyUI as shipped;
- ``eager + graph``: the same call recorded once in a CUDA graph, replayed (inputs copied in, output cloned out);
- ``regional``: the pack's regions (``BasicTransformerBlock``, ``ResBlock``) under torch.compile, inductor default;
- ``regional + graph``: those compiled blocks recorded in one graph around the whole call;
- ``whole`` / ``whole + graph``: inductor over the whole ``_forward`` (what ``scope=whole`` compiles), and the
  same recorded in one graph (what ``reduce-overhead`` gets through inductor's own CUDA graphs);
- ``whole cudagraphs backend``: torch.compile(backend="cudagraphs") over the call (dynamo's graph recorded by
  torch, no inductor); skipped by default (run 1 of 2026-12-02: slower than eager).

Each route reports its first-call seconds (compilation and recording) and the largest difference from the eager
output relative to its range; the graph routes must give their own un-graphed route's output exactly.
Writes probe_cuda_graphs.json.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Callable

BENCH_DIR = Path(__file__).resolve().parents[1]  # benchmarks/: run.py, models.py
sys.path.insert(0, str(BENCH_DIR))

import run as bench  # noqa: E402


def sync() -> None:
    import torch

    if torch.cuda.is_available():
        torch.cuda.synchronize()


def per_call_ms(fn: Callable[[], object], calls: int = 10, groups: int = 3) -> float:
    fn()
    sync()
    times = []
    for _ in range(groups):
        t0 = time.perf_counter()
        for _ in range(calls):
            fn()
        sync()
        times.append((time.perf_counter() - t0) * 1000 / calls)
    return statistics.median(times)


class Recorded:
    """One CUDA graph of ``fn(*inputs)``: replay copies new inputs into the recorded ones and clones the output."""

    def __init__(self, fn: Callable, inputs: list, pool=None) -> None:
        import torch

        self.inputs = [t.clone() for t in inputs]
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):  # warm-up off the capture: cuBLAS/cuDNN workspaces, lazy inits
            fn(*self.inputs)
        torch.cuda.current_stream().wait_stream(side)
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph, pool=pool):
            self.output = fn(*self.inputs)

    def __call__(self, *inputs):
        for static, new in zip(self.inputs, inputs):
            static.copy_(new)
        self.graph.replay()
        return self.output.clone()


def rel_diff(a, b) -> float:
    ref = b.float()
    return float((a.float() - ref).abs().max() / (ref.max() - ref.min()).clamp(min=1e-12))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default=".")
    p.add_argument("--sizes", default="1024,768,896", help="square image sizes, in order (the first one is timed; "
                   "the whole-model routes run it alone)")
    p.add_argument("--tiny", action="store_true", help="tiny SDXL config (a smoke run)")
    p.add_argument("--skip", default="whole cudagraphs backend",
                   help="routes to leave out, comma-separated (e.g. 'whole cudagraphs backend')")
    args = p.parse_args(argv)

    import torch

    dev = "cuda" if torch.cuda.is_available() else "cpu"  # the CPU only checks the probe itself (--tiny)
    bench.import_comfyui(use_cpu=dev == "cpu")
    bench.hide_stubs()
    import comfy.ldm.modules.attention as attention
    import comfy.ldm.modules.diffusionmodules.openaimodel as unet
    import models

    torch._dynamo.config.cache_size_limit = 64
    built = models.build_model("sdxl", tiny=args.tiny, device=dev,
                               dtype=torch.float16 if dev == "cuda" else torch.float32)
    dm = built.diffusion_model
    spec = built.spec
    results: dict = {"device": torch.cuda.get_device_name() if dev == "cuda" else "cpu", "torch": torch.__version__,
                     "routes": {}}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)

    def save() -> None:
        (out / "probe_cuda_graphs.json").write_text(json.dumps(results, indent=2))

    def inputs_for(size: int) -> list:
        g = torch.Generator(device=dev).manual_seed(0)
        dtype = built.spec.dtype if dev == "cuda" else torch.float32
        x = torch.randn(2, 4, size // 8, size // 8, device=dev, dtype=dtype, generator=g)
        t = torch.tensor([500.0, 500.0], device=dev)
        ctx = torch.randn(2, spec.context_tokens, spec.context_dim, device=dev, dtype=dtype, generator=g)
        y = torch.randn(2, spec.unet_config["adm_in_channels"], device=dev, dtype=dtype, generator=g)
        return [x, t, ctx, y]

    def call(x, t, ctx, y):
        return dm(x, t, context=ctx, y=y, transformer_options={})

    compiled = {cls: torch.compile(cls.forward) for cls in (attention.BasicTransformerBlock, unet.ResBlock)}
    blocks = [m for m in dm.modules() if type(m) in compiled]

    def regional_forward(module):
        fn = compiled[type(module)]

        def forward(*a, **k):
            if "transformer_options" in k:  # as the pack does: the block's position must not be guarded on
                k["transformer_options"] = {}
            return fn(module, *a, **k)

        return forward

    def set_regional(on: bool) -> None:
        for m in blocks:
            if on:
                m.forward = regional_forward(m)
            else:
                m.__dict__.pop("forward", None)

    whole = torch.compile(type(dm)._forward)

    def set_whole(on: bool) -> None:
        if on:
            dm._forward = lambda *a, **k: whole(dm, *a, **k)
        else:
            dm.__dict__.pop("_forward", None)

    whole_cg = torch.compile(call, backend="cudagraphs")
    routes: dict[str, tuple[Callable[[], None], Callable]] = {
        "eager": (lambda: set_regional(False), call),
        "eager + graph": (lambda: set_regional(False), "graph"),
        "regional": (lambda: set_regional(True), call),
        "regional + graph": (lambda: set_regional(True), "graph"),
        "whole": (lambda: set_whole(True), call),
        "whole + graph": (lambda: set_whole(True), "graph"),
        "whole cudagraphs backend": (lambda: set_regional(False), whole_cg),
    }
    skip = {s.strip() for s in args.skip.split(",") if s.strip()}
    if dev == "cpu":
        skip |= {"eager + graph", "regional + graph", "whole cudagraphs backend"}
    pool = torch.cuda.graph_pool_handle() if dev == "cuda" else None
    reference: dict[int, torch.Tensor] = {}
    plain_out: dict[tuple[str, int], torch.Tensor] = {}
    with torch.inference_mode():
        for name, (setup, fn) in routes.items():
            if name in skip:
                continue
            setup()
            entry = results["routes"][name] = {}
            try:
                sizes = [int(s) for s in args.sizes.split(",")]
                if name.startswith("whole"):  # ~2 min per whole-model compile: the first size only
                    sizes = sizes[:1]
                for i, size in enumerate(sizes):
                    inputs = inputs_for(size)
                    sync()
                    t0 = time.perf_counter()
                    if fn == "graph":
                        recorded = Recorded(call, inputs, pool=pool)
                        runner = recorded
                    else:
                        runner = fn
                    first = runner(*inputs)
                    sync()
                    first_s = time.perf_counter() - t0
                    if name == "eager":
                        reference[size] = first
                    plain_name = name.replace(" + graph", "")
                    if fn != "graph":
                        plain_out[(name, size)] = first
                    row = {"first_call_s": round(first_s, 2),
                           "diff_vs_eager": rel_diff(first, reference[size]) if size in reference else None}
                    if fn == "graph" and (plain_name, size) in plain_out:
                        row["identical_to_" + plain_name] = bool(torch.equal(first, plain_out[(plain_name, size)]))
                    if i == 0:
                        row["ms_per_call"] = round(per_call_ms(lambda: runner(*inputs)), 2)
                    entry[str(size)] = row
                    print(f"[{time.strftime('%H:%M:%S')}] {name} {size}²: {row}", flush=True)
                    save()
            except Exception as e:  # noqa: BLE001  (a probe: report and go on to the next route)
                entry["error"] = f"{type(e).__name__}: {str(e)[:400]}"
                print(f"[{time.strftime('%H:%M:%S')}] {name}: {entry['error']}", flush=True)
                save()
            set_regional(False)
            set_whole(False)
    eager = results["routes"].get("eager", {}).get(args.sizes.split(",")[0], {}).get("ms_per_call")
    for name, entry in results["routes"].items():
        row = entry.get(args.sizes.split(",")[0], {})
        if eager and row.get("ms_per_call"):
            row["vs_eager"] = round(eager / row["ms_per_call"], 2)
    save()
    print(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
