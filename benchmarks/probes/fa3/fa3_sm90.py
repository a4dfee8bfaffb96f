"""Runtime helper for the prebuilt FlashInfer-FA3 (Hopper sm90a) single-prefill modules made by build_fa3.py.

Loads the tvm-ffi modules ``fa3_single_prefill_<variant>.so`` from ``$FA3_CARRY`` (default: this file's folder) and
calls them on torch tensors. Needs no nvcc and no flashinfer at run time, only torch (CUDA 13 build) and tvm_ffi
(apache-tvm-ffi 0.1.15.post2; if ``import tvm_ffi`` fails, the cp3XY wheel in the same folder is unzipped to
/tmp/fa3_tvm_ffi_site). Used by probe_fa3.py; the pack does not ship it.

Built variants (non-causal only, no RoPE / soft-cap / sliding window, head_dim_qk == head_dim_vo):
  bf16_d128, bf16_d64, fp16_d128, fp16_d64  : q/k/v/o in bf16 (resp. fp16)
  fp8_d128,  fp8_d64                        : q/k/v float8_e4m3fn + fp32 dequant scales, o in bf16

API (tensors in ComfyUI's (B, H, L, D) layout; Lq and Lk may differ; no GQA):
  attention_bhld(q, k, v, sm_scale=None) -> (B, Lq, H, D) contiguous  (.reshape(B, Lq, H*D) for comfy)
  attention_blhd(q, k, v, sm_scale=None) -> same, for q/k/v given as (B, L, H, D)
  attention_fp8_bhld(q8, k8, v8, sq, sk, sv, sm_scale=None) -> (B, Lq, H, D) bf16
  quantize_e4m3(x, per_head=True) -> (x8, scale (B*H,) fp32)

The modules' ``run`` takes q/k/v as NHD (L, H, D) views (any strides, unit last stride) with layout 0: the sm90
binding reads kv_len / num_kv_heads from k.size(0) / k.size(1) whatever its ``layout`` argument says (HND gave
group_size 0 and a SIGFPE on the first H200 run).
"""
from __future__ import annotations

import ctypes
import glob
import math
import os
import sys
import zipfile
from collections.abc import Callable
from types import ModuleType

import torch

TVM_FFI_SITE = "/tmp/fa3_tvm_ffi_site"
LAYOUT_NHD = 0
_MODS: dict[str, Callable[..., object]] = {}
_TMP: dict[torch.device, torch.Tensor] = {}
_DT = {torch.bfloat16: "bf16", torch.float16: "fp16"}
_tvm_ffi: ModuleType | None = None
tvm_ffi_wheel: str | None = None  # the wheel tvm_ffi was unzipped from, if it was not importable as installed


def so_dir() -> str:
    """Folder holding the .so files (and the tvm-ffi wheel): $FA3_CARRY, else this file's folder."""
    return os.path.abspath(os.environ.get("FA3_CARRY") or os.path.dirname(os.path.abspath(__file__)))


def torch_has_dlpack_c_api() -> bool:
    """Whether torch exposes the DLPack C exchange API that tvm_ffi uses for its fast tensor hand-over."""
    return hasattr(torch.Tensor, "__dlpack_c_exchange_api__") or hasattr(torch.Tensor, "__c_dlpack_exchange_api__")


def import_tvm_ffi() -> ModuleType:
    """Import tvm_ffi, from the normal path or from the carried wheel (unzipped once)."""
    global _tvm_ffi, tvm_ffi_wheel
    if _tvm_ffi is not None:
        return _tvm_ffi
    if not torch_has_dlpack_c_api():
        # tvm_ffi would otherwise try to JIT a small torch extension (needs a host compiler);
        # without it tvm_ffi falls back to torch.utils.dlpack
        os.environ.setdefault("TVM_FFI_DISABLE_TORCH_C_DLPACK", "1")
    try:
        import tvm_ffi
    except ImportError:
        cp = f"cp{sys.version_info.major}{sys.version_info.minor}"
        whls = sorted(glob.glob(os.path.join(so_dir(), f"apache_tvm_ffi-*{cp}*.whl")))
        if not whls:
            raise
        if not os.path.isdir(os.path.join(TVM_FFI_SITE, "tvm_ffi")):
            with zipfile.ZipFile(whls[-1]) as z:
                z.extractall(TVM_FFI_SITE)
        sys.path.insert(0, TVM_FFI_SITE)
        import tvm_ffi
        tvm_ffi_wheel = os.path.basename(whls[-1])
    _tvm_ffi = tvm_ffi
    return tvm_ffi


def ensure_cudart() -> str:
    """The modules link libcudart.so.13 dynamically; torch's cu13 wheels normally have it loaded already.
    If not, load it globally from torch's nvidia wheel folders. Returns where it came from."""
    try:
        ctypes.CDLL("libcudart.so.13", mode=ctypes.RTLD_GLOBAL)
        return "libcudart.so.13 (loader path / already loaded)"
    except OSError:
        pass
    root = os.path.dirname(os.path.dirname(torch.__file__))
    for pat in ("nvidia/cu13/lib/libcudart.so.13*", "nvidia/cuda_runtime/lib/libcudart.so.13*"):
        for cand in sorted(glob.glob(os.path.join(root, pat))):
            ctypes.CDLL(cand, mode=ctypes.RTLD_GLOBAL)
            return cand
    raise OSError("libcudart.so.13 not found")


def load(name: str) -> Callable[..., object]:
    """name like 'bf16_d128'; returns the module's `run` function (cached)."""
    if name not in _MODS:
        tvm_ffi = import_tvm_ffi()
        try:
            ensure_cudart()
        except OSError:
            pass  # load_module below then names the missing library
        mod = tvm_ffi.load_module(os.path.join(so_dir(), f"fa3_single_prefill_{name}.so"))
        _MODS[name] = mod.run if hasattr(mod, "run") else mod["run"]
    return _MODS[name]


def available(dtype: torch.dtype = torch.bfloat16, head_dim: int = 128) -> bool:
    """Whether the variant for dtype/head_dim loads on this machine (a Hopper GPU is required)."""
    try:
        if not torch.cuda.is_available() or torch.cuda.get_device_capability()[0] != 9:
            return False
        load(("fp8" if dtype == torch.float8_e4m3fn else _DT[dtype]) + f"_d{head_dim}")
        return True
    except Exception:  # noqa: BLE001
        return False


def _tmp(dev: torch.device) -> torch.Tensor:
    if dev not in _TMP:  # required by the signature, unused by the sm90 kernels
        _TMP[dev] = torch.empty(16, dtype=torch.uint8, device=dev)
    return _TMP[dev]


def _scale(sm_scale: float | None, d: int) -> float:
    return float(sm_scale if sm_scale is not None else 1.0 / math.sqrt(d))


def attention_bhld(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, sm_scale: float | None = None,
                   out: torch.Tensor | None = None) -> torch.Tensor:
    """q: (B,H,Lq,D), k/v: (B,H,Lk,D), any strides with unit last-dim stride (e.g. transposed views).
    Returns out (B,Lq,H,D) contiguous. One kernel launch per batch element."""
    B, H, Lq, D = q.shape
    run = load(f"{_DT[q.dtype]}_d{D}")
    o = out if out is not None else torch.empty(B, Lq, H, D, device=q.device, dtype=q.dtype)
    sc = _scale(sm_scale, D)
    for b in range(B):
        # q/k/v as NHD (L,H,D) strided views, no copy
        run(q[b].transpose(0, 1), k[b].transpose(0, 1), v[b].transpose(0, 1), _tmp(q.device), o[b], None, 0,
            LAYOUT_NHD, -1, None, 0.0, sc, 1.0)
    return o


def attention_blhd(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, sm_scale: float | None = None,
                   out: torch.Tensor | None = None) -> torch.Tensor:
    """ComfyUI's un-reshaped layout: q/k/v (B,L,H,D) (i.e. (B,L,H*D).view(B,L,H,D)). Returns (B,Lq,H,D)."""
    B, Lq, H, D = q.shape
    run = load(f"{_DT[q.dtype]}_d{D}")
    o = out if out is not None else torch.empty(B, Lq, H, D, device=q.device, dtype=q.dtype)
    sc = _scale(sm_scale, D)
    for b in range(B):
        run(q[b], k[b], v[b], _tmp(q.device), o[b], None, 0, LAYOUT_NHD, -1, None, 0.0, sc, 1.0)
    return o


def quantize_e4m3(x: torch.Tensor, per_head: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """x: (B,H,L,D) -> (x8 float8_e4m3fn (B,H,L,D), dequant scale fp32 (B*H,)), x ~= x8 * scale."""
    B, H = x.shape[:2]
    if per_head:
        s = x.abs().amax(dim=(2, 3)).float().clamp_min(1e-12) / 448.0
        x8 = (x.float() / s[:, :, None, None]).to(torch.float8_e4m3fn)
        return x8, s.reshape(B * H).contiguous()
    s = x.abs().amax().float().clamp_min(1e-12) / 448.0
    return (x.float() / s).to(torch.float8_e4m3fn), s.reshape(1).expand(B * H).contiguous()


def attention_fp8_bhld(q8: torch.Tensor, k8: torch.Tensor, v8: torch.Tensor, sq: torch.Tensor, sk: torch.Tensor,
                       sv: torch.Tensor, sm_scale: float | None = None,
                       out: torch.Tensor | None = None) -> torch.Tensor:
    """q8/k8/v8: (B,H,L,D) float8_e4m3fn; sq/sk/sv: fp32 dequant scales (B*H,) (per head) from
    quantize_e4m3. Returns (B,Lq,H,D) bf16."""
    B, H, Lq, D = q8.shape
    run = load(f"fp8_d{D}")
    o = out if out is not None else torch.empty(B, Lq, H, D, device=q8.device, dtype=torch.bfloat16)
    sc = _scale(sm_scale, D)
    u8 = torch.uint8
    for b in range(B):
        hs = slice(b * H, (b + 1) * H)
        # e4m3 data passed as uint8 views (the binding reads only data_ptr/strides; avoids fp8 DLPack export)
        run(q8[b].view(u8).transpose(0, 1), k8[b].view(u8).transpose(0, 1), v8[b].view(u8).transpose(0, 1),
            _tmp(q8.device), o[b], None, 0, LAYOUT_NHD, -1, sq[hs], sk[hs], sv[hs], sc, 1.0, 1.0, 1.0)
    return o
