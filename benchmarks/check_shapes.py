"""GPU check, not a benchmark: a compiled stack keeps giving the right picture when the resolution or the batch
changes inside one ComfyUI process, which is where CUDA graphs are most fragile (new graphs recorded, old ones
replayed, outputs living in a shared memory pool).

    python benchmarks/check_shapes.py --family sdxl --stack deepcache+compile_whole_ro \
        --cases 1024x1024x1,768x768x1,1024x1024x2,1024x1024x1

For each case (in order, one process) it samples the stack and the same stack without Fastlane Compile and Fastlane
CUDA Graph from the same noise, and prints: new graphs compiled, seconds of that first run and of a second one
(warm), whether the output is finite, and the largest difference between the two latents relative to the plain
one's range (which must be 0 for the stacks that only record CUDA graphs over eager code: ``cudagraph``,
``deepcache+cudagraph``).
``--dynamic`` sets Fastlane Compile's input of that name (auto: image size and batch static, a new static graph per
size; true: every size dynamic from the first compile). Random weights, like benchmarks/run.py.
"""
from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path

BENCH_DIR = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH_DIR))

import run as bench  # noqa: E402  (benchmarks/run.py: ComfyUI import, pack loading, the node() helper)

def _compile(model, args, **settings):
    settings = {**settings, "dynamic": args.dynamic, **({"mode": args.mode} if args.mode else {})}
    return bench.node("FastlaneCompile", model, **settings)


def _graph(model):
    return bench.node("FastlaneCudaGraph", model)


def _deepcache(model):
    return bench.node("FastlaneDeepCache", model)


STACKS = {  # name -> (the stack without the nodes under test, the nodes under test on top, bit-identical to it?)
    "deepcache+compile_whole_ro": (_deepcache, lambda m, a: _compile(m, a, scope="whole", mode="reduce-overhead"),
                                   False),
    "compile_whole_ro": (lambda m: m, lambda m, a: _compile(m, a, scope="whole", mode="reduce-overhead"), False),
    "cudagraph": (lambda m: m, lambda m, a: _graph(m), True),
    "deepcache+cudagraph": (_deepcache, lambda m, a: _graph(m), True),
    "compile_regional+cudagraph": (lambda m: m, lambda m, a: _graph(_compile(m, a, scope="regional")), False),
    "deepcache+compile_regional+cudagraph": (_deepcache, lambda m, a: _graph(_compile(m, a, scope="regional")),
                                             False),
}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--family", default="sdxl", choices=["sdxl", "flux"])
    p.add_argument("--stack", default="deepcache+compile_whole_ro", choices=sorted(STACKS))
    p.add_argument("--cases", default="1024x1024x1,768x768x1,1024x1024x2,1024x1024x1", help="WxHxBATCH,...")
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--tiny", action="store_true", help="small configs of the same classes (a CPU smoke run)")
    p.add_argument("--mode", help="override the stack's compile mode (e.g. 'default' on a CPU)")
    p.add_argument("--dynamic", default="auto", choices=["auto", "true", "false"], help="Fastlane Compile's dynamic")
    args = p.parse_args(argv)

    import torch

    logging.getLogger().setLevel(logging.INFO)
    bench.import_comfyui(use_cpu=not torch.cuda.is_available())
    print("pack:", bench.load_pack(bench.CacheLogCatcher()), flush=True)
    bench.hide_stubs()
    import comfy.model_management as mm
    import comfy.sample
    import models

    device = mm.get_torch_device()
    dtype = torch.float16 if args.family == "sdxl" else torch.bfloat16
    built = models.build_model(args.family, tiny=args.tiny, device=device,
                               dtype=dtype if device.type == "cuda" else torch.float32)
    cfg, scheduler = (7.0, "normal") if args.family == "sdxl" else (1.0, "simple")
    plain_of, top_of, exact = STACKS[args.stack]
    plain = plain_of(built.patcher)
    compiled = top_of(plain, args)
    print(f"stack {args.stack}, dynamic {args.dynamic}, mode override {args.mode}; must be bit-identical: {exact}",
          flush=True)

    from torch._dynamo.utils import counters

    failures = 0
    for case in args.cases.split(","):
        width, height, batch = (int(v) for v in case.split("x"))
        positive, negative = (models.sdxl_conditioning(built.spec, width, height, batch=batch)
                              if args.family == "sdxl" else models.flux_conditioning(built.spec, batch=batch))
        latent = models.empty_latent(built.spec, width, height, batch=batch)
        noise = comfy.sample.prepare_noise(latent, 0)

        def sample(model):
            return comfy.sample.sample(model, noise, args.steps, cfg, "euler", scheduler, positive, negative, latent,
                                       disable_pbar=True, seed=0)

        def timed_sample(model):
            start = time.perf_counter()
            out = sample(model)
            if device.type == "cuda":
                torch.cuda.synchronize()
            return out, time.perf_counter() - start

        with torch.inference_mode():
            reference = sample(plain)
            counters.clear()
            out, seconds = timed_sample(compiled)
            _, warm = timed_sample(compiled)
        graphs = int(counters["stats"]["unique_graphs"])
        finite = bool(torch.isfinite(out).all())
        rel = float((out.float() - reference.float()).abs().max() / reference.float().abs().max())
        ok = finite and (rel == 0.0 if exact else rel < 0.05)
        failures += not ok
        print(f"{case:>14s}: {'ok  ' if ok else 'FAIL'} new graphs {graphs}, {seconds:7.2f} s, warm {warm:6.3f} s, "
              f"finite {finite}, max |compiled - uncompiled| / max |uncompiled| = {rel:.4f}", flush=True)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
