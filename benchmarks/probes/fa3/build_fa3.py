"""Build FlashInfer 0.7.4's Hopper FA3 single-prefill attention kernels (sm_90a) as tvm-ffi modules for probe_fa3.py.

What: flashinfer-python 0.7.4's FA3-derived ``backend="fa3"`` single-prefill module (warp-specialized TMA + WGMMA,
``attention/hopper/prefill_sm90.cuh``; fp8: ``attention/hopper/quantization/prefill_sm90.cuh``), sources generated
by flashinfer's own JIT generator (``gen_single_prefill_module("fa3", ...)``) with FLASHINFER_CUDA_ARCH_LIST=9.0a (no
GPU needed), compiled with the local nvcc 13.0 for sm_90a only, non-causal mask only, into tvm-ffi modules: nothing
links libtorch / libc10, so the torch version on the device does not matter.
Why: torch 2.11 ships no FA3-class (Hopper) attention kernel, and PyPI carries flashinfer only as sources (it JIT-
compiles on first use, which needs nvcc on the device). Used only by the probe; the pack does not ship any of it.

Variants (q/k/v -> o): bf16_d128, fp8_d128, bf16_d64, fp8_d64, fp16_d128, fp16_d64 (fp8 = float8_e4m3fn in,
bf16 out; d128 is FLUX's head size, d64 SDXL's).

Usage (repo root):
    python3 benchmarks/probes/fa3/build_fa3.py                     # all 6 into .devcarry/fa3 (+ wheel + scripts)
    python3 benchmarks/probes/fa3/build_fa3.py bf16_d128 fp8_d128  # some variants
    python3 benchmarks/probes/fa3/build_fa3.py --dry-run           # generate + patch sources and ninja files, no nvcc
    python3 benchmarks/probes/fa3/build_fa3.py --python PY --flashinfer-wheel WHL   # reuse an interpreter / a wheel
then on the device: see probe_fa3.py's docstring.

Steps: (1) a venv in --workdir (pip: torch==2.14.1, taken from the local disk, and what flashinfer's generator
imports; apache-tvm-ffi 0.1.15.post2 for its headers), unless --python names an interpreter that has them;
(2) ``pip download --no-deps flashinfer-python==0.7.4``, unzipped into --workdir/src (used from sys.path, not
installed); (3) per variant, in that interpreter: generate the sources into --workdir/ws, patch the generated
``single_prefill_sm90_config.inc`` so its dispatcher only instantiates MaskMode::kNone (other modes raise a
ValueError), drop the ``kernel_mask_{1,2,3}`` objects and ``-lcuda`` from build.ninja (no libcuda stub here; CUTLASS
reaches the driver through cudaGetDriverEntryPoint; libcudart stays dynamic: libcudart.so.13 comes from torch's
nvidia wheel on the device, static cudart would need GLIBC 2.34), run ninja and copy the .so to --out as
``fa3_single_prefill_<variant>.so``; (4) download the cp312 apache-tvm-ffi wheel into --out and copy probe_fa3.py
and fa3_sm90.py there. CUDA 13.0 here lacks curand_kernel.h (included by CUTLASS' tools/util headers): its curand
headers are linked from the interpreter's nvidia/cu13/include (torch's cu13 wheel) into --workdir/extra_inc, passed
as ``-isystem`` through FLASHINFER_EXTRA_CUDAFLAGS.
Flags are flashinfer's own (-O3 -use_fast_math -gencode=arch=compute_90a,code=sm_90a ...).

Build time here (2 cores, nvcc 13.0; one big CUTLASS translation unit dominates): 111-211 s per variant, all 6
about 12 min. Re-runs reuse the objects in --workdir/ws. Times go to --workdir/build_times.json.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import time
import zipfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[2]
FLASHINFER = "flashinfer-python==0.7.4"
TVM_FFI = "apache-tvm-ffi==0.1.15.post2"
# torch is only imported by flashinfer's generator (dtype tables); nothing links it. The rest is what
# `import flashinfer` pulls in, plus ninja.
VENV_PACKAGES = ["torch==2.14.1", "jinja2", "ninja", "numpy", "packaging", TVM_FFI, "requests", "tqdm", "click",
                 "einops", "tabulate", "nvidia-ml-py", "cuda-python"]
# name -> (dtype_q, dtype_kv, dtype_o, head_dim), as torch dtype names
VARIANTS = {
    "bf16_d128": ("bfloat16", "bfloat16", "bfloat16", 128),
    "fp8_d128": ("float8_e4m3fn", "float8_e4m3fn", "bfloat16", 128),
    "bf16_d64": ("bfloat16", "bfloat16", "bfloat16", 64),
    "fp8_d64": ("float8_e4m3fn", "float8_e4m3fn", "bfloat16", 64),
    "fp16_d128": ("float16", "float16", "float16", 128),
    "fp16_d64": ("float16", "float16", "float16", 64),
}
CARRIED_SCRIPTS = ("probe_fa3.py", "fa3_sm90.py")
NONE_ONLY_DISPATCH = (
    "#define DISPATCH_context(DTypeQ, DTypeKV, DTypeO, IdType, MASK_MODE, HEAD_DIM_QK, HEAD_DIM_VO, "
    "USE_SLIDING_WINDOW, USE_LOGITS_SOFT_CAP, AttentionVariant, Params, ...) \\\n"
    "  if (mask_mode == MaskMode::kNone) { constexpr MaskMode MASK_MODE = MaskMode::kNone; "
    "using AttentionVariant = %s; __VA_ARGS__(); } \\\n"
    "  else { TVM_FFI_THROW(ValueError) << \"fa3 prebuilt module: only mask_mode 0 (non-causal) was built\"; }\n")
DISPATCH_RE = re.compile(r"#define DISPATCH_context\(.*?\n  DISPATCH_MASK_MODE\(mask_mode, MASK_MODE, "
                         r"\{ using AttentionVariant = (.*?); __VA_ARGS__\(\); \}\)\n", re.DOTALL)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("variants", nargs="*", metavar="VARIANT",
                   help=f"variants to build (default: all): {' '.join(VARIANTS)}")
    p.add_argument("--workdir", type=Path, default=REPO / ".fa3build",
                   help="venv, flashinfer sources, JIT workspace, build times (default: %(default)s)")
    p.add_argument("--out", type=Path, default=REPO / ".devcarry" / "fa3",
                   help="carry folder: .so files, the cp312 tvm-ffi wheel, the probe scripts (default: %(default)s)")
    p.add_argument("--cuda-home", default=os.environ.get("CUDA_HOME", "/usr/local/cuda-13.0"),
                   help="CUDA toolkit with nvcc 13 (default: $CUDA_HOME or %(default)s)")
    p.add_argument("--jobs", type=int, default=int(os.environ.get("MAX_JOBS", "2")), help="ninja -j (default: 2)")
    p.add_argument("--python", help="interpreter with torch + flashinfer's generator deps (default: a venv in workdir)")
    p.add_argument("--flashinfer-wheel", type=Path, help=f"a local {FLASHINFER} wheel instead of `pip download`")
    p.add_argument("--dry-run", action="store_true",
                   help="generate and patch the sources and ninja files only: no nvcc, nothing copied to --out")
    p.add_argument("--stage", choices=["all", "generate"], default="all", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    unknown = [v for v in args.variants if v not in VARIANTS]
    if unknown:
        p.error(f"unknown variant(s) {' '.join(unknown)}; choose from {' '.join(VARIANTS)}")
    args.variants = args.variants or list(VARIANTS)
    args.workdir = args.workdir.resolve()
    args.out = args.out.resolve()
    return args


def sh(cmd: list[str]) -> None:
    print("+", " ".join(cmd), flush=True)
    subprocess.run(cmd, check=True)


def ensure_venv(workdir: Path) -> str:
    """The build venv's python, created and filled on first use."""
    venv = workdir / "venv"
    py = venv / "bin" / "python"
    ready = venv / ".fa3-ready"
    if not ready.exists():
        sh([sys.executable, "-m", "venv", str(venv)])
        sh([str(py), "-m", "pip", "install", *VENV_PACKAGES])
        ready.write_text(" ".join(VENV_PACKAGES) + "\n")
    return str(py)


def ensure_flashinfer(workdir: Path, wheel: Path | None) -> Path:
    """flashinfer 0.7.4's wheel (sources + CUTLASS/CuTe headers) unzipped into workdir/src."""
    src = workdir / "src"
    if (src / "flashinfer" / "jit").is_dir():
        return src
    if wheel is None:
        dl = workdir / "dl"
        sh([sys.executable, "-m", "pip", "download", "--no-deps", "-d", str(dl), FLASHINFER])
        wheel = next(dl.glob("flashinfer_python-0.7.4-*.whl"))
    print(f"unzipping {wheel} -> {src}", flush=True)
    with zipfile.ZipFile(wheel) as z:
        z.extractall(src)
    return src


def curand_include(cuda_home: str, workdir: Path) -> Path | None:
    """A folder with curand*.h links when the toolkit lacks curand_kernel.h (CUDA 13.0 here), else None."""
    if Path(cuda_home, "include", "curand_kernel.h").exists():
        return None
    for p in sys.path:
        inc = Path(p or ".", "nvidia", "cu13", "include")
        if (inc / "curand_kernel.h").exists():
            break
    else:
        raise FileNotFoundError(f"curand_kernel.h: neither in {cuda_home}/include nor in nvidia/cu13/include "
                                f"of {sys.executable} (torch's cu13 wheel brings it)")
    extra = workdir / "extra_inc"
    extra.mkdir(parents=True, exist_ok=True)
    for h in inc.glob("curand*.h"):
        link = extra / h.name
        if link.is_symlink() or link.exists():
            link.unlink()
        link.symlink_to(h.resolve())
    return extra


def patch_config(cfg: Path) -> None:
    """Make the generated dispatcher instantiate MaskMode::kNone only; other mask modes throw a ValueError."""
    txt = cfg.read_text()
    m = DISPATCH_RE.search(txt)
    if m:
        txt = txt[:m.start()] + NONE_ONLY_DISPATCH % m.group(1) + txt[m.end():]
        cfg.write_text(txt)
    if "only mask_mode 0" not in txt:
        raise RuntimeError(f"DISPATCH_context not found in {cfg}: flashinfer's template changed?")


def patch_ninja(nf: Path) -> None:
    """Drop the mask 1..3 translation units and -lcuda from a generated build.ninja."""
    lines = nf.read_text().split("\n")
    lines = [ln for ln in lines if not re.match(r"build \S+_kernel_mask_[123]\.cuda\.o: ", ln)]
    lines = [re.sub(r" \S+_kernel_mask_[123]\.cuda\.o", "", ln) if ln.startswith("build ") and ".so: link" in ln
             else ln for ln in lines]
    txt = re.sub(r" \$\n\s+-lcuda\n", "\n", "\n".join(lines))
    if re.search(r"_kernel_mask_[123]\.cuda\.o|-lcuda\b", txt):
        raise RuntimeError(f"could not patch {nf}: flashinfer's ninja template changed?")
    nf.write_text(txt)


def generate_and_build(args: argparse.Namespace) -> None:
    """Runs in the interpreter that has torch + flashinfer's deps (second stage)."""
    os.environ["FLASHINFER_CUDA_ARCH_LIST"] = "9.0a"
    os.environ["FLASHINFER_WORKSPACE_BASE"] = str(args.workdir / "ws")
    os.environ["CUDA_HOME"] = args.cuda_home
    os.environ["PATH"] = f"{args.cuda_home}/bin:{os.environ['PATH']}"
    extra = curand_include(args.cuda_home, args.workdir)
    if extra is not None:
        os.environ["FLASHINFER_EXTRA_CUDAFLAGS"] = f"-isystem {extra}"
    sys.path.insert(0, str(args.workdir / "src"))
    import flashinfer.jit.attention.modules as fm
    import torch

    ninja = shutil.which("ninja", path=f"{Path(sys.executable).parent}:{os.environ['PATH']}") or "ninja"
    times_path = args.workdir / "build_times.json"
    times = json.loads(times_path.read_text()) if times_path.exists() else {}
    if not args.dry_run:
        args.out.mkdir(parents=True, exist_ok=True)
    for name in args.variants:
        tq, tkv, to, d = VARIANTS[name]
        dq, dkv, do = getattr(torch, tq), getattr(torch, tkv), getattr(torch, to)
        spec_args = ("fa3", dq, dkv, do, d, d, 0, False, False, False)  # no RoPE, no sliding window, no soft cap
        gen_dir = fm.jit_env.FLASHINFER_GEN_SRC_DIR / fm.get_single_prefill_uri(*spec_args)
        # keep the mtimes of unchanged generated files, so regenerating does not force a rebuild
        old = {f: (f.read_bytes(), f.stat().st_mtime_ns) for f in gen_dir.glob("*")} if gen_dir.exists() else {}
        spec = fm.gen_single_prefill_module(*spec_args)
        spec.write_ninja()
        patch_config(gen_dir / "single_prefill_sm90_config.inc")
        for f, (data, mt) in old.items():
            if f.exists() and f.read_bytes() == data:
                os.utime(f, ns=(mt, mt))
        patch_ninja(spec.ninja_path)
        if args.dry_run:
            print(f"[{name}] generated + patched: {gen_dir}\n[{name}] ninja file: {spec.ninja_path}", flush=True)
            continue
        t0 = time.time()
        r = subprocess.run([ninja, "-v", "-j", str(args.jobs), "-C", str(spec.ninja_path.parent),
                            "-f", str(spec.ninja_path)], check=False)
        dt = time.time() - t0
        print(f"[{name}] ninja rc={r.returncode} in {dt:.0f}s", flush=True)
        times[name] = {"rc": r.returncode, "seconds": round(dt)}
        times_path.write_text(json.dumps(times, indent=1) + "\n")
        if r.returncode != 0:
            raise SystemExit(f"[{name}] build failed")
        dst = args.out / f"fa3_single_prefill_{name}.so"
        shutil.copy(spec.ninja_path.parent / f"{spec.name}.so", dst)
        print(f"[{name}] -> {dst} {dst.stat().st_size / 2**20:.2f} MiB", flush=True)


def finish_carry(out: Path) -> None:
    """The cp312 tvm-ffi wheel (the device's Python) and the probe scripts next to the .so files."""
    sh([sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "--python-version", "3.12",
        "--platform", "manylinux_2_28_x86_64", "-d", str(out), TVM_FFI])
    for s in CARRIED_SCRIPTS:
        shutil.copy(HERE / s, out / s)
    print(f"carry folder ready: {out}", flush=True)


def main() -> None:
    args = parse_args()
    if args.stage == "generate":
        generate_and_build(args)
        return
    args.workdir.mkdir(parents=True, exist_ok=True)
    py = args.python or ensure_venv(args.workdir)
    ensure_flashinfer(args.workdir, args.flashinfer_wheel)
    cmd = [py, str(Path(__file__).resolve()), "--stage", "generate", "--workdir", str(args.workdir),
           "--out", str(args.out), "--cuda-home", args.cuda_home, "--jobs", str(args.jobs), *args.variants]
    sh(cmd + (["--dry-run"] if args.dry_run else []))
    if not args.dry_run:
        finish_carry(args.out)


if __name__ == "__main__":
    main()
