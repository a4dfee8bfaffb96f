"""GPU probe: FlashInfer's Hopper FA3 single-prefill kernels (built by build_fa3.py) against torch's SDPA kernels at
FLUX and SDXL attention shapes, for speed and error. torch 2.11 ships no FA3-class kernel; this measures whether one
would pay. Needs a Hopper GPU, torch (CUDA 13 build) and tvm_ffi; no nvcc, no flashinfer.

Carry folder ($FA3_CARRY, default ./.devcarry/fa3), filled by ``build_fa3.py --out .devcarry/fa3``:
  fa3_single_prefill_{bf16,fp16,fp8}_d{128,64}.so  (tvm-ffi modules, sm_90a SASS, non-causal only)
  apache_tvm_ffi-*-cp312-*.whl                       (runtime for loading the modules)
  probe_fa3.py, fa3_sm90.py                          (this probe and its loader / runtime helper)

Device command (carry: [".devcarry"]), as run on the H200 (torch 2.11, Python 3.12):

    pip install -q --no-index --no-deps --target /tmp/site ./.devcarry/fa3/apache_tvm_ffi-*.whl; \
    PYTHONPATH=/tmp/site FA3_CARRY=./.devcarry/fa3 OUT=$OUT python3 ./.devcarry/fa3/probe_fa3.py

``python3 benchmarks/probes/fa3/probe_fa3.py`` works the same (the .so files are found through FA3_CARRY). Without the pip
step the wheel in the carry folder is unzipped to /tmp/fa3_tvm_ffi_site. Knobs: FA3_ITERS (30), FA3_WARMUP (10),
FA3_SDXL=0 to skip the d64 shapes.

Shapes: FLUX 1024² (B=1, H=24, L=4608, D=128), SDXL 1024² levels (B=2, H=10, L=4096, D=64; B=2, H=20, L=1024, D=64).
Rows, each timed with CUDA events (warm-up, median): SDPA default / cuDNN / flash / efficient; FA3 bf16 with batch
folded into heads (q/k/v as strided NHD views of BHLD); the fa3_sm90 helper (one launch per batch element); SDPA fp16
vs FA3 fp16; FA3 bf16 on contiguous NHD q/k/v (layout cross-check); FA3 fp8 e4m3 with per-tensor and per-head
scales (quantization outside the timed region, its eager-torch cost timed separately); the helper's fp8 path.
Error vs SDPA math in fp32 on the first 512 queries (all keys, all heads): rel_l2 and max|err| / max|ref|.
Every variant fails soft: its error is printed and recorded, the others still run. Table on stdout, JSON in
$OUT/fa3_probe.json when OUT is set.
"""
from __future__ import annotations

import functools
import json
import math
import os
import statistics
import sys
import time
import traceback
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

CARRY = os.path.abspath(os.environ.get("FA3_CARRY", "./.devcarry/fa3"))
os.environ["FA3_CARRY"] = CARRY  # fa3_sm90 loads the .so files from here
import fa3_sm90  # next to this script: benchmarks/probes/fa3/ or the carry folder

WARMUP = int(os.environ.get("FA3_WARMUP", "10"))
ITERS = int(os.environ.get("FA3_ITERS", "30"))
VARIANTS = ("bf16_d128", "fp8_d128", "bf16_d64", "fp8_d64", "fp16_d128", "fp16_d64")
SHAPES = [("flux_1024px", 1, 24, 4608, 128)]
if os.environ.get("FA3_SDXL", "1") == "1":
    SHAPES += [("sdxl_1024px_lvl1", 2, 10, 4096, 64), ("sdxl_1024px_lvl2", 2, 20, 1024, 64)]
FP8_MAX = 448.0
LAYOUT_NHD = fa3_sm90.LAYOUT_NHD
RESULTS: dict = {"carry": CARRY, "env": {}, "rows": [], "errors": {}, "notes": []}
_LOADED: set[str] = set()
_TMP: dict[str, torch.Tensor] = {}


def log(*a: object) -> None:
    print(*a, flush=True)


def err(key: str, e: BaseException) -> None:
    """Print and record an exception under `key` (call from inside the except block)."""
    tb = traceback.format_exc()
    log(f"!! {key}: {type(e).__name__}: {e}\n{tb}")
    RESULTS["errors"][key] = f"{type(e).__name__}: {e}\n{tb[-3000:]}"


def load(name: str) -> Callable[..., object]:
    """The `run` function of fa3_single_prefill_<name>.so in the carry folder; logs the first load's time."""
    t = time.time()
    run = fa3_sm90.load(name)
    if name not in _LOADED:
        _LOADED.add(name)
        log(f"loaded fa3_single_prefill_{name}.so in {time.time() - t:.2f}s")
    return run


def _tmp(dev: str) -> torch.Tensor:
    if dev not in _TMP:  # unused by the sm90 path, but part of the signature
        _TMP[dev] = torch.empty(32 * 1024 * 1024, dtype=torch.uint8, device=dev)
    return _TMP[dev]


def fa3_bf16(run: Callable[..., object], q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, o: torch.Tensor,
             sm_scale: float) -> torch.Tensor:
    """q: (B,H,L,D) bf16 (or fp16 with the fp16 module), k/v: (B,H,Lk,D), contiguous. Batch is folded into heads
    (non-causal, no GQA), so one launch serves B>1. o: (L, B*H, D) out."""
    B, H, L, D = q.shape
    # NHD strided views, no copy: the sm90 binding takes kv_len/num_kv_heads from k.size(0)/size(1) whatever the layout
    qv = q.reshape(B * H, L, D).transpose(0, 1)
    kv_ = k.reshape(B * H, k.shape[2], D).transpose(0, 1)
    vv = v.reshape(B * H, v.shape[2], D).transpose(0, 1)
    # run(q, k, v, tmp, o, maybe_lse, mask_mode, layout, window_left, maybe_scale_v, logits_soft_cap, sm_scale,
    #     scale_v_scalar)
    run(qv, kv_, vv, _tmp(q.device.type), o, None, 0, LAYOUT_NHD, -1, None, 0.0, sm_scale, 1.0)
    return o


def fa3_fp8(run: Callable[..., object], q8: torch.Tensor, k8: torch.Tensor, v8: torch.Tensor, sq: torch.Tensor,
            sk: torch.Tensor, sv: torch.Tensor, o: torch.Tensor, sm_scale: float) -> torch.Tensor:
    """q8/k8/v8: (B,H,L,D) float8_e4m3fn; sq/sk/sv: float32 per-(folded)head dequant scales
    of shape (B*H,) (x ~= x8 * s). o: (L, B*H, D) bf16."""
    B, H, L, D = q8.shape
    # e4m3 data as uint8 views: the binding only reads data_ptr/strides, and this avoids depending on float8 DLPack
    # export support in the target's torch
    u8 = torch.uint8
    qv = q8.view(u8).reshape(B * H, L, D).transpose(0, 1)
    kv_ = k8.view(u8).reshape(B * H, k8.shape[2], D).transpose(0, 1)
    vv = v8.view(u8).reshape(B * H, v8.shape[2], D).transpose(0, 1)
    # run(q, k, v, tmp, o, maybe_lse, mask_mode, layout, window_left, maybe_scale_q, maybe_scale_k,
    #     maybe_scale_v, sm_scale, scale_q_scalar, scale_k_scalar, scale_v_scalar)
    run(qv, kv_, vv, _tmp(q8.device.type), o, None, 0, LAYOUT_NHD, -1, sq, sk, sv, sm_scale, 1.0, 1.0, 1.0)
    return o


def quant_per_tensor(x: torch.Tensor, nheads_folded: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-tensor e4m3 quantization; returns (x8, scale expanded to (B*H,) fp32). No host sync."""
    amax = x.abs().amax().float().clamp_min(1e-12)
    scale = amax / FP8_MAX
    x8 = (x.float() / scale).to(torch.float8_e4m3fn)  # fp32 divide for accuracy
    return x8, scale.reshape(1).expand(nheads_folded).contiguous()


def quant_per_head(x: torch.Tensor, nheads_folded: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-(batch, head) e4m3 quantization; returns (x8, scale (B*H,) fp32)."""
    amax = x.abs().amax(dim=(2, 3)).float().clamp_min(1e-12)  # (B,H)
    scale = amax / FP8_MAX
    x8 = (x.float() / scale[:, :, None, None]).to(torch.float8_e4m3fn)
    return x8, scale.reshape(nheads_folded).contiguous()


def time_fn(fn: Callable[[], object], warmup: int = WARMUP, iters: int = ITERS) -> tuple[float, float]:
    """(median, min) ms of `fn` over `iters` calls, each between two CUDA events."""
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    ts = []
    for _ in range(iters):
        a = torch.cuda.Event(enable_timing=True)
        b = torch.cuda.Event(enable_timing=True)
        a.record()
        fn()
        b.record()
        b.synchronize()
        ts.append(a.elapsed_time(b))
    return statistics.median(ts), min(ts)


def errs(out: torch.Tensor, ref: torch.Tensor) -> dict:
    """Error of `out` against the fp32 reference."""
    out = out.float()
    ref = ref.float()
    d = (out - ref).abs()
    return {
        "max_abs_err": d.max().item(),
        "max_err_over_max_ref": (d.max() / ref.abs().max().clamp_min(1e-12)).item(),
        "rel_l2": (torch.linalg.vector_norm(out - ref) / torch.linalg.vector_norm(ref).clamp_min(1e-12)).item(),
        "nan": bool(torch.isnan(out).any().item()),
    }


def run_shape(tag: str, B: int, H: int, L: int, D: int) -> None:
    """All rows for one attention shape; each row fails soft."""
    dev = "cuda"
    g = torch.Generator(device=dev).manual_seed(0)
    # activations shaped like post-norm/RoPE FLUX q/k/v: roughly unit variance
    q = torch.randn(B, H, L, D, device=dev, dtype=torch.bfloat16, generator=g)
    k = torch.randn(B, H, L, D, device=dev, dtype=torch.bfloat16, generator=g)
    v = torch.randn(B, H, L, D, device=dev, dtype=torch.bfloat16, generator=g)
    sm_scale = 1.0 / math.sqrt(D)
    flops = 4.0 * B * H * L * L * D
    # reference: SDPA math in fp32 on a slice of queries (all keys), all heads
    nq = min(L, 512)
    ref = None
    try:
        with sdpa_kernel(SDPBackend.MATH):
            ref = F.scaled_dot_product_attention(q[:, :, :nq].float(), k.float(), v.float())  # (B,H,nq,D)
    except Exception as e:  # noqa: BLE001
        err(f"{tag}/reference", e)

    def row(name: str, ms: float, msmin: float, out_bhld_slice: torch.Tensor | None = None) -> None:
        r = {"shape": tag, "B": B, "H": H, "L": L, "D": D, "variant": name, "ms_median": round(ms, 4),
             "ms_min": round(msmin, 4), "tflops": round(flops / (ms * 1e-3) / 1e12, 1) if ms > 0 else None}
        if out_bhld_slice is not None and ref is not None:
            r.update({k2: (round(v2, 6) if isinstance(v2, float) else v2)
                      for k2, v2 in errs(out_bhld_slice, ref).items()})
        RESULTS["rows"].append(r)
        log("  {:<34s} {:>8.3f} ms  {:>6.1f} TFLOP/s  {}".format(
            name, ms, r["tflops"] or 0, "" if "rel_l2" not in r else
            f"rel_l2={r['rel_l2']:.2e} maxerr/maxref={r['max_err_over_max_ref']:.2e}"))

    log(f"\n=== {tag}: B={B} H={H} L={L} D={D}  ({flops / 1e12:.2f} TFLOP per call) ===")
    # --- SDPA variants
    sdpa_variants = [("sdpa_default", None), ("sdpa_cudnn", SDPBackend.CUDNN_ATTENTION),
                     ("sdpa_flash", SDPBackend.FLASH_ATTENTION), ("sdpa_efficient", SDPBackend.EFFICIENT_ATTENTION)]
    for name, be in sdpa_variants:
        try:
            def fn(be: SDPBackend | None = be) -> torch.Tensor:
                if be is None:
                    return F.scaled_dot_product_attention(q, k, v)
                with sdpa_kernel(be):
                    return F.scaled_dot_product_attention(q, k, v)
            out = fn()
            ms, msmin = time_fn(fn)
            row(name, ms, msmin, out_bhld_slice=out[:, :, :nq])
        except Exception as e:  # noqa: BLE001
            err(f"{tag}/{name}", e)

    o = torch.empty(L, B * H, D, device=dev, dtype=torch.bfloat16)

    def o_as_bhld_slice() -> torch.Tensor:
        return o.transpose(0, 1).reshape(B, H, L, D)[:, :, :nq]

    # --- FA3 bf16
    try:
        run = load(f"bf16_d{D}")
        fa3_bf16(run, q, k, v, o, sm_scale)
        torch.cuda.synchronize()
        ms, msmin = time_fn(lambda: fa3_bf16(run, q, k, v, o, sm_scale))
        row("fa3_bf16", ms, msmin, out_bhld_slice=o_as_bhld_slice())
    except Exception as e:  # noqa: BLE001
        err(f"{tag}/fa3_bf16", e)
    # the runtime helper (what a node pack would import): per-batch launches, (B,L,H,D) out
    try:
        oh = fa3_sm90.attention_bhld(q, k, v)
        torch.cuda.synchronize()
        ms, msmin = time_fn(lambda: fa3_sm90.attention_bhld(q, k, v, out=oh))
        row("fa3_sm90.attention_bhld (helper)", ms, msmin, out_bhld_slice=oh.transpose(1, 2)[:, :, :nq])
    except Exception as e:  # noqa: BLE001
        err(f"{tag}/helper_bf16", e)
    # fp16 (SDXL checkpoints usually run in fp16): SDPA default vs FA3 fp16 module
    try:
        qh, kh, vh = q.half(), k.half(), v.half()
        outh = F.scaled_dot_product_attention(qh, kh, vh)
        ms, msmin = time_fn(lambda: F.scaled_dot_product_attention(qh, kh, vh))
        row("sdpa_default (fp16)", ms, msmin, out_bhld_slice=outh[:, :, :nq])
        runh = load(f"fp16_d{D}")
        oh16 = torch.empty(L, B * H, D, device=dev, dtype=torch.float16)
        fa3_bf16(runh, qh, kh, vh, oh16, sm_scale)  # same call signature as bf16
        torch.cuda.synchronize()
        ms, msmin = time_fn(lambda: fa3_bf16(runh, qh, kh, vh, oh16, sm_scale))
        row("fa3_fp16", ms, msmin, out_bhld_slice=oh16.transpose(0, 1).reshape(B, H, L, D)[:, :, :nq])
    except Exception as e:  # noqa: BLE001
        err(f"{tag}/fp16", e)
    # layout cross-check: contiguous NHD q/k/v (what flashinfer's own tests use)
    try:
        run = load(f"bf16_d{D}")
        qn = q.reshape(B * H, L, D).transpose(0, 1).contiguous()
        kn = k.reshape(B * H, L, D).transpose(0, 1).contiguous()
        vn = v.reshape(B * H, L, D).transpose(0, 1).contiguous()
        o.zero_()

        def f_nhd() -> None:
            run(qn, kn, vn, _tmp(dev), o, None, 0, LAYOUT_NHD, -1, None, 0.0, sm_scale, 1.0)
        f_nhd()
        torch.cuda.synchronize()
        ms, msmin = time_fn(f_nhd)
        row("fa3_bf16 (contiguous NHD q/k/v)", ms, msmin, out_bhld_slice=o_as_bhld_slice())
    except Exception as e:  # noqa: BLE001
        err(f"{tag}/fa3_bf16_nhd", e)

    # --- FA3 fp8 (quantization outside the timed region, then its cost separately)
    for qname, qfn in (("per_tensor", quant_per_tensor), ("per_head", quant_per_head)):
        try:
            run8 = load(f"fp8_d{D}")
            q8, sq = qfn(q, B * H)
            k8, sk = qfn(k, B * H)
            v8, sv = qfn(v, B * H)
            o.zero_()
            fa3_fp8(run8, q8, k8, v8, sq, sk, sv, o, sm_scale)
            torch.cuda.synchronize()
            ms, msmin = time_fn(functools.partial(fa3_fp8, run8, q8, k8, v8, sq, sk, sv, o, sm_scale))
            row(f"fa3_fp8_e4m3 ({qname} scales)", ms, msmin, out_bhld_slice=o_as_bhld_slice())

            def quant3(qfn: Callable = qfn) -> None:
                qfn(q, B * H)
                qfn(k, B * H)
                qfn(v, B * H)
            qms, qmsmin = time_fn(quant3)
            r = {"shape": tag, "B": B, "H": H, "L": L, "D": D, "variant": f"quantize_qkv_{qname} (torch eager)",
                 "ms_median": round(qms, 4), "ms_min": round(qmsmin, 4), "tflops": None}
            RESULTS["rows"].append(r)
            log("  {:<34s} {:>8.3f} ms  (fp8 total = {:.3f} ms)".format(r["variant"], qms, qms + ms))
        except Exception as e:  # noqa: BLE001
            err(f"{tag}/fa3_fp8_{qname}", e)
    try:
        q8, sq = fa3_sm90.quantize_e4m3(q, per_head=True)
        k8, sk = fa3_sm90.quantize_e4m3(k, per_head=True)
        v8, sv = fa3_sm90.quantize_e4m3(v, per_head=True)
        oh = fa3_sm90.attention_fp8_bhld(q8, k8, v8, sq, sk, sv)
        torch.cuda.synchronize()
        ms, msmin = time_fn(lambda: fa3_sm90.attention_fp8_bhld(q8, k8, v8, sq, sk, sv, out=oh))
        row("fa3_sm90.attention_fp8_bhld (helper)", ms, msmin, out_bhld_slice=oh.transpose(1, 2)[:, :, :nq])
    except Exception as e:  # noqa: BLE001
        err(f"{tag}/helper_fp8", e)


def main() -> None:
    env = RESULTS["env"]
    env["torch"] = torch.__version__
    env["torch_cuda"] = torch.version.cuda
    env["python"] = sys.version.split()[0]
    try:
        env["device"] = torch.cuda.get_device_name(0)
        env["capability"] = list(torch.cuda.get_device_capability(0))
    except Exception as e:  # noqa: BLE001
        err("cuda_init", e)
    env["torch_has_dlpack_c_exchange_api"] = fa3_sm90.torch_has_dlpack_c_api()
    try:
        tvm_ffi = fa3_sm90.import_tvm_ffi()
        env["tvm_ffi"] = getattr(tvm_ffi, "__version__", "?")
        env["tvm_ffi_file"] = tvm_ffi.__file__
        if fa3_sm90.tvm_ffi_wheel:
            RESULTS["notes"].append(f"tvm_ffi imported from unzipped {fa3_sm90.tvm_ffi_wheel}")
    except Exception as e:  # noqa: BLE001
        err("import_tvm_ffi", e)
    log(json.dumps(env, indent=1))
    try:
        env["cudart"] = fa3_sm90.ensure_cudart()
    except Exception as e:  # noqa: BLE001
        err("cudart", e)
    for n in VARIANTS:  # load all up front: a module that does not load is reported on its own
        try:
            load(n)
            env.setdefault("loaded", []).append(n)
        except Exception as e:  # noqa: BLE001
            err(f"load_{n}", e)
    for tag, B, H, L, D in SHAPES:
        try:
            run_shape(tag, B, H, L, D)
        except Exception as e:  # noqa: BLE001
            err(f"{tag}/shape", e)
        torch.cuda.empty_cache()  # the shape's tensors were freed when run_shape returned

    log("\n{:<18s} {:<40s} {:>9s} {:>8s} {:>10s} {:>12s}".format(
        "shape", "variant", "ms(med)", "TFLOP/s", "rel_l2", "maxerr/maxref"))
    for r in RESULTS["rows"]:
        log("{:<18s} {:<40s} {:>9.3f} {:>8s} {:>10s} {:>12s}".format(
            r["shape"], r["variant"], r["ms_median"], "" if r["tflops"] is None else f"{r['tflops']:.1f}",
            f"{r['rel_l2']:.2e}" if "rel_l2" in r else "",
            f"{r['max_err_over_max_ref']:.2e}" if "max_err_over_max_ref" in r else ""))
    if RESULTS["errors"]:
        log(f"\n{len(RESULTS['errors'])} variant(s) failed: {', '.join(RESULTS['errors'])}")
    out_dir = os.environ.get("OUT")
    if out_dir:
        os.makedirs(out_dir, exist_ok=True)
        with open(os.path.join(out_dir, "fa3_probe.json"), "w") as f:
            json.dump(RESULTS, f, indent=1)
        log(f"wrote {os.path.join(out_dir, 'fa3_probe.json')}")


if __name__ == "__main__":
    main()
