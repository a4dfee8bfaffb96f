"""A Triton kernel for ``x @ (q * s).T + b`` when ``x`` has at most 16 rows and ``q`` holds e4m3 weight codes.

Such a product is bound by reading the weights, so fp8 codes (one byte each) should make it up to twice as fast as
the 16-bit product, not slower. Neither cuBLAS (its fp8 GEMM wants both operands in fp8 and 16+ rows) nor inductor's
fused multiply-sum (measured ~2x slower than cuBLAS's 16-bit product, run s4-4) gets there; this kernel streams the
codes once, widens them in registers and accumulates in fp32.

Registered as the operator ``fastlane::fp8_rows_linear`` through ``torch.library.triton_op``, so that
torch.compile (regional or whole, CUDA graphs included) runs it without a graph break; eager calls launch the same
kernel directly.
``available()`` says whether this torch/Triton can run it at all; the caller also checks device and dtype.
"""
from __future__ import annotations

import inspect
import os

import torch

MAX_ROWS = 16  # padded to one 16-row tile of the tensor-core product; more rows go to the regular GEMM

try:
    import triton
    import triton.language as tl
    from torch.library import triton_op, wrap_triton
except ImportError:  # no Triton (CPU-only wheels, some Windows installs): callers fall back
    triton = None


def available() -> bool:
    """True when Triton and ``torch.library.triton_op`` are importable."""
    return triton is not None


# Triton's CPU interpreter (the tests' way to check this kernel without a GPU) cannot autotune: one fixed tile
INTERPRETED = os.environ.get("TRITON_INTERPRET") == "1"
_INTERPRETER_TILE = {"BLOCK_N": 32, "BLOCK_K": 128}
# Tiles the autotuner tries, (BLOCK_N, BLOCK_K, warps, stages). One row: narrow tiles over long K stretches won on
# an H200 (3.3 TB/s at 3072 -> 9216, runs s5-2, s5-4); several rows: tl.dot needs 16+ columns.
ONE_ROW_TILES = [(4, 1024, 2, 1), (8, 512, 2, 2), (8, 1024, 4, 1), (16, 256, 2, 2), (16, 512, 4, 4)]
SEVERAL_ROW_TILES = [(16, 256, 4, 4), (32, 256, 4, 4), (64, 128, 4, 4), (32, 512, 4, 3)]

if triton is not None:
    @triton.jit
    def _fp8_rows_tile(x_ptr, w_ptr, scale_ptr, bias_ptr, y_ptr, M, N, K, stride_xm, stride_wn, stride_ym,
                       HAS_BIAS: tl.constexpr, M_PAD: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
        offs_n = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
        offs_m = tl.arange(0, M_PAD)
        acc = tl.zeros((M_PAD, BLOCK_N), dtype=tl.float32)
        for k0 in range(0, K, BLOCK_K):
            offs_k = k0 + tl.arange(0, BLOCK_K)
            w = tl.load(w_ptr + offs_n[:, None] * stride_wn + offs_k[None, :],
                        mask=(offs_n[:, None] < N) & (offs_k[None, :] < K), other=0.0)
            x = tl.load(x_ptr + offs_m[:, None] * stride_xm + offs_k[None, :],
                        mask=(offs_m[:, None] < M) & (offs_k[None, :] < K), other=0.0)
            if M_PAD == 1:
                acc += tl.sum(x.to(tl.float32) * w.to(tl.float32), axis=1)[None, :]
            else:  # e4m3 codes are exact in bf16 and fp16: the tensor-core product loses nothing
                acc += tl.dot(x, tl.trans(w.to(x.dtype)))
        acc *= tl.load(scale_ptr + offs_n, mask=offs_n < N, other=0.0)[None, :]
        if HAS_BIAS:
            acc += tl.load(bias_ptr + offs_n, mask=offs_n < N, other=0.0).to(tl.float32)[None, :]
        tl.store(y_ptr + offs_m[:, None] * stride_ym + offs_n[None, :], acc.to(y_ptr.dtype.element_ty),
                 mask=(offs_m[:, None] < M) & (offs_n[None, :] < N))

    def _tiles_for_the_row_count(configs, named_args, **kwargs):
        wanted = ONE_ROW_TILES if named_args.get("M_PAD", kwargs.get("M_PAD")) == 1 else SEVERAL_ROW_TILES
        return [c for c in configs if (c.kwargs["BLOCK_N"], c.kwargs["BLOCK_K"], c.num_warps, c.num_stages) in wanted]

    _autotune_options = {"cache_results": True} if "cache_results" in inspect.signature(triton.autotune).parameters \
        else {}  # Triton >= 3.3 keeps the winners on disk: a ComfyUI restart skips the few seconds of tuning
    _fp8_rows_autotuned = triton.autotune(
        configs=[triton.Config({"BLOCK_N": n, "BLOCK_K": k}, num_warps=w, num_stages=s)
                 for n, k, w, s in dict.fromkeys(ONE_ROW_TILES + SEVERAL_ROW_TILES)],
        key=["N", "K", "M_PAD"],
        prune_configs_by={"early_config_prune": _tiles_for_the_row_count},
        **_autotune_options,
    )(_fp8_rows_tile)

    def _launch(x: torch.Tensor, weight: torch.Tensor, scale: torch.Tensor, bias: torch.Tensor | None,
                wrap=lambda kernel: kernel) -> torch.Tensor:
        m, k = x.shape
        n = weight.shape[0]
        y = torch.empty((m, n), device=x.device, dtype=x.dtype)
        grid = lambda meta: (triton.cdiv(n, meta["BLOCK_N"]),)  # noqa: E731
        kernel, tile = (_fp8_rows_tile, _INTERPRETER_TILE) if INTERPRETED else (_fp8_rows_autotuned, {})
        wrap(kernel)[grid](
            x, weight, scale, scale if bias is None else bias, y, m, n, k, x.stride(0), weight.stride(0),
            y.stride(0), HAS_BIAS=bias is not None, M_PAD=1 if m == 1 else MAX_ROWS, **tile)
        return y

    @triton_op("fastlane::fp8_rows_linear", mutates_args={})
    def _fp8_rows_linear_op(x: torch.Tensor, weight: torch.Tensor, scale: torch.Tensor,
                            bias: torch.Tensor | None) -> torch.Tensor:
        return _launch(x, weight, scale, bias, wrap=wrap_triton)


def fp8_rows_linear(x: torch.Tensor, weight: torch.Tensor, scale: torch.Tensor,
                    bias: torch.Tensor | None) -> torch.Tensor:
    """``x`` [M <= 16, K] (bf16/fp16, rows contiguous), ``weight`` [N, K] e4m3, ``scale`` [N] fp32, ``bias`` [N]
    or None -> [M, N] in ``x``'s dtype. Under torch.compile through the registered operator; eager calls launch the
    kernel directly, skipping the dispatcher's per-call cost (eager calls of these small products are bound by it)."""
    if torch.compiler.is_compiling():
        return _fp8_rows_linear_op(x, weight, scale, bias)
    return _launch(x, weight, scale, bias)
