"""Where a sampling run's GPU time goes: one run under torch.profiler, kernels grouped into categories.

Used by run.py (``--profile ROWS``). Categories come from kernel names (cuBLAS/cuDNN/flash/Triton naming), so they
are a reading aid, not an exact accounting; the top-kernels list shows the names behind them.
"""
from __future__ import annotations

import re
import time
from collections import defaultdict
from typing import Any, Callable

CATEGORIES = [  # first match wins
    ("attention", re.compile(r"flash|fmha|sdpa|attention|attn", re.I)),
    ("gemm", re.compile(r"gemm|nvjet|xmma|cutlass|cublas|sm90_|sm80_|scaled_mm|matmul|_mm_", re.I)),
    ("triton (inductor-fused)", re.compile(r"^triton_", re.I)),
    ("copy / cast / cat", re.compile(r"copy|cast|convert|cat_|CatArray|to_copy", re.I)),
    ("norm / softmax / reduce", re.compile(r"norm|softmax|reduce|welford", re.I)),
    ("elementwise", re.compile(r"elementwise|vectorized|unrolled|pointwise", re.I)),
]


SYNC = re.compile(r"Synchronize|_local_scalar_dense|cudaMemcpy(?!Async)|item$")


def category(name: str) -> str:
    return next((label for label, pattern in CATEGORIES if pattern.search(name)), "other")


def profile_run(run: Callable[[], Any], sync: Callable[[], None], steps: int, top: int = 15) -> dict[str, Any]:
    """Profile one call of ``run`` (a whole sampling run) and summarise kernel time per step."""
    from torch.autograd import DeviceType
    from torch.profiler import ProfilerActivity, profile

    sync()
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        t = time.perf_counter()
        run()
        sync()
        wall_ms = (time.perf_counter() - t) * 1000.0
    kernels: dict[str, list[float]] = defaultdict(lambda: [0.0, 0])
    for event in prof.events():
        if event.device_type == DeviceType.CUDA:
            k = kernels[event.name]
            k[0] += event.device_time / 1000.0  # us -> ms
            k[1] += 1
    syncs: dict[str, int] = defaultdict(int)  # host calls that wait for the GPU: the CPU can't run ahead past them
    for event in prof.events():
        if event.device_type != DeviceType.CUDA and SYNC.search(event.name):
            syncs[event.name] += 1
    total = sum(ms for ms, _ in kernels.values())
    by_cat: dict[str, float] = defaultdict(float)
    for name, (ms, _) in kernels.items():
        by_cat[category(name)] += ms
    per_step = lambda ms: round(ms / steps, 3)  # noqa: E731
    return {
        "wall_ms_per_step_profiled": per_step(wall_ms),
        "kernel_ms_per_step": per_step(total),
        "gpu_busy": round(total / wall_ms, 3) if wall_ms else None,
        "kernel_launches_per_step": round(sum(n for _, n in kernels.values()) / steps, 1),
        "host_syncs_per_step": {n: round(c / steps, 2) for n, c in sorted(syncs.items(), key=lambda kv: -kv[1])},
        "categories_ms_per_step": {c: per_step(ms) for c, ms in sorted(by_cat.items(), key=lambda kv: -kv[1])},
        "top_kernels": [{"name": name[:160], "category": category(name), "ms_per_step": per_step(ms),
                         "calls_per_step": round(n / steps, 1)}
                        for name, (ms, n) in sorted(kernels.items(), key=lambda kv: -kv[1][0])[:top]],
    }


def text(name: str, p: dict[str, Any]) -> str:
    lines = [f"profile {name}: {p['kernel_ms_per_step']} ms of kernels per step in "
             f"{p['wall_ms_per_step_profiled']} ms wall (GPU busy {p['gpu_busy']}), "
             f"{p['kernel_launches_per_step']} launches/step"]
    lines += [f"  {c:26s} {ms:9.2f} ms/step" for c, ms in p["categories_ms_per_step"].items()]
    lines += [f"  host syncs per step: {p['host_syncs_per_step'] or 'none seen'}"]
    lines += ["  top kernels:"]
    lines += [f"    {k['ms_per_step']:8.2f} ms/step  x{k['calls_per_step']:<6} [{k['category']}] {k['name']}"
              for k in p["top_kernels"]]
    return "\n".join(lines)
