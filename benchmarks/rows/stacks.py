"""Fastlane compile / quantize / attention / QKV fusion / CUDA graph rows, alone and stacked with the caches."""
from __future__ import annotations

from .comfy_node import node
from .registry import row


# Fastlane compile / quantize / QKV fusion (nodes/compile_nodes.py, quantize_nodes.py, fusion_nodes.py). The compile
# rows log "Fastlane compile [...]: compiled N graph(s) in S s" (the cold start) per run; quantize rows log the weight
# memory before/after. fp8 rows need sm89+ (H100: yes) and raise a clear error elsewhere.
def _compiled(model, **widgets):
    return node("FastlaneCompile", model, **widgets)


def _reading_sigmas(model):
    """The model's step cache made to read each call's sigma back from the GPU (no prediction from the sampler)."""
    model.model_options["transformer_options"]["fastlane_cache"].predict_sigmas = False
    return model


def _attention(model, backend):
    return node("FastlaneAttention", model, backend=backend)


def quantized(model, scheme, few_rows="16-bit", preset="none"):
    """Fastlane Quantize with filter ``preset``. The rows measured before the ``entry+exit`` default keep ``none``
    (every Linear but the few-row ones), so their names still mean what their figures measured."""
    return node("FastlaneQuantize", model, scheme=scheme, few_row_linears=few_rows, filter=preset)


def _entry_exit_tier(model, scheme: str, fraction: float):
    """The fast tier as the node defaults build it now: Quantize (few-row fp8 weights, the model's entry and exit
    projections 16-bit), Target Speed (order 2, granularity auto), Compile regional."""
    return _compiled(node("FastlaneTargetSpeedCache", quantized(model, scheme, "auto", "entry+exit"),
                          compute_fraction=fraction, order=2))


for _name, _families, _heavy, _make, _note in [
    ("compile_regional", ("flux", "sdxl"), True, lambda m: _compiled(m),
     "Fastlane Compile, regional (each block kind compiled once), inductor default, dynamic auto"),
    ("compile_whole", ("flux", "sdxl"), True, lambda m: _compiled(m, scope="whole"),
     "Fastlane Compile, whole diffusion model in one graph, inductor default, dynamic auto"),
    ("compile_regional_autotune", ("flux", "sdxl"), True,
     lambda m: _compiled(m, mode="max-autotune-no-cudagraphs"),
     "Fastlane Compile, regional, inductor max-autotune-no-cudagraphs (long cold start)"),
    ("compile_regional+fora2", ("flux", "sdxl"), True, lambda m: _compiled(node("FastlaneFORA", m, interval=2)),
     "FORA interval 2 (granularity auto: FLUX blocks, SDXL deep) then Fastlane Compile regional"),
    ("fora2+compile_regional", ("flux", "sdxl"), True, lambda m: node("FastlaneFORA", _compiled(m), interval=2),
     "Fastlane Compile regional then FORA interval 2 (the other node order)"),
    ("compile_regional+target0.4", ("flux", "sdxl"), True,
     lambda m: _compiled(node("FastlaneTargetSpeedCache", m, compute_fraction=0.4, order=2)),
     "target-speed cache 0.4 then Fastlane Compile regional"),
    ("int8wo", ("flux", "sdxl"), False, lambda m: quantized(m, "int8_weight_only"),
     "Fastlane Quantize int8 weight-only (torchao), eager"),
    ("int8wo+compile_regional", ("flux", "sdxl"), True, lambda m: _compiled(quantized(m, "int8_weight_only")),
     "int8 weight-only then Fastlane Compile regional"),
    ("int8dyn+compile_regional", ("flux", "sdxl"), True, lambda m: _compiled(quantized(m, "int8_dynamic")),
     "int8 dynamic activations + int8 weights, then Fastlane Compile regional (few-row Linears stay 16-bit)"),
    ("fp8_rowwise", ("flux", "sdxl"), False, lambda m: quantized(m, "fp8_dynamic_rowwise"),
     "Fastlane Quantize fp8 dynamic per-row (torchao), eager"),
    ("fp8_rowwise+compile_regional", ("flux", "sdxl"), True,
     lambda m: _compiled(quantized(m, "fp8_dynamic_rowwise")),
     "fp8 dynamic per-row then Fastlane Compile regional"),
    ("fp8_rowwise+compile_regional+fora2", ("flux",), True,
     lambda m: _compiled(node("FastlaneFORA", quantized(m, "fp8_dynamic_rowwise"), interval=2)),
     "fp8 per-row, FORA interval 2, Fastlane Compile regional: everything stacked"),
    ("compile_regional+deepcache", ("sdxl",), True, lambda m: _compiled(node("FastlaneDeepCache", m)),
     "DeepCache defaults then Fastlane Compile regional"),
    ("compile_regional+qkv+deepcache", ("sdxl",), True,
     lambda m: _compiled(node("FastlaneDeepCache", node("FastlaneQKVFusion", m))),
     "QKV fusion, DeepCache defaults, Fastlane Compile regional: the SDXL stack"),
    ("fp8+compile_regional+target0.3", ("flux",), True,
     lambda m: _compiled(node("FastlaneTargetSpeedCache", quantized(m, "fp8_dynamic_rowwise"), compute_fraction=0.3)),
     "fp8 per-row, target-speed 0.3, Fastlane Compile regional: the FLUX fast tier"),
    # fp8 through torch._scaled_mm (Fastlane's own module, no tensor subclass) and the attention kernel choice
    ("attn_cudnn", ("flux", "sdxl"), False, lambda m: _attention(m, "cudnn"),
     "Fastlane Attention Kernel: cuDNN SDPA first, eager"),
    ("attn_cudnn+compile_regional", ("flux", "sdxl"), True, lambda m: _compiled(_attention(m, "cudnn")),
     "cuDNN attention then Fastlane Compile regional: the lossless stack"),
    ("attn_cudnn+compile_regional_autotune", ("flux", "sdxl"), True,
     lambda m: _compiled(_attention(m, "cudnn"), mode="max-autotune-no-cudagraphs"),
     "cuDNN attention, Fastlane Compile regional max-autotune-no-cudagraphs"),
    ("fp8sm", ("flux", "sdxl"), False, lambda m: quantized(m, "fp8_scaled_mm"),
     "Fastlane Quantize fp8_scaled_mm (torch._scaled_mm, per-row/per-token), eager"),
    ("fp8sm+compile_regional", ("flux", "sdxl"), True, lambda m: _compiled(quantized(m, "fp8_scaled_mm")),
     "fp8_scaled_mm then Fastlane Compile regional"),
    ("fp8sm_fewfp8", ("flux",), False, lambda m: quantized(m, "fp8_scaled_mm", "fp8 weights"),
     "fp8_scaled_mm with the few-row Linears' weights in fp8 too (their inputs stay 16-bit), eager"),
    ("fp8sm_fewfp8+compile_regional", ("flux",), True,
     lambda m: _compiled(quantized(m, "fp8_scaled_mm", "fp8 weights")),
     "fp8_scaled_mm with the few-row Linears' weights in fp8 too, then Fastlane Compile regional"),
    ("fp8sm+attn_cudnn+compile_regional", ("flux", "sdxl"), True,
     lambda m: _compiled(_attention(quantized(m, "fp8_scaled_mm"), "cudnn")),
     "fp8_scaled_mm, cuDNN attention, Fastlane Compile regional"),
    ("fp8sm_exact+compile_regional", ("flux", "sdxl"), True,
     lambda m: _compiled(quantized(m, "fp8_scaled_mm_exact")),
     "fp8_scaled_mm_exact (fp32 accumulation) then Fastlane Compile regional"),
    ("fast_target0.3", ("flux",), True,
     lambda m: _compiled(node("FastlaneTargetSpeedCache", quantized(m, "fp8_scaled_mm"), compute_fraction=0.3,
                              order=2)),
     "fp8_scaled_mm, target-speed 0.3, Fastlane Compile regional: the FLUX fast tier"),
    ("fast_target0.3_fewfp8", ("flux",), True,
     lambda m: _compiled(node("FastlaneTargetSpeedCache", quantized(m, "fp8_scaled_mm", "auto"),
                              compute_fraction=0.3, order=2)),
     "the FLUX fast tier as the fastest workflow ships it: few_row_linears auto (fp8 weights with fp8_scaled_mm)"),
    ("fast_target0.3_output", ("flux",), True,
     lambda m: _compiled(node("FastlaneTargetSpeedCache", quantized(m, "fp8_scaled_mm"), compute_fraction=0.3,
                              order=2, granularity="output")),
     "fp8_scaled_mm, target-speed 0.3 on the model output, Fastlane Compile regional"),
    ("fast_target0.4", ("flux",), True,
     lambda m: _compiled(node("FastlaneTargetSpeedCache", quantized(m, "fp8_scaled_mm"), compute_fraction=0.4,
                              order=2)),
     "fp8_scaled_mm, target-speed 0.4, Fastlane Compile regional"),
    ("compile_whole_ro", ("flux", "sdxl"), True, lambda m: _compiled(m, scope="whole", mode="reduce-overhead"),
     "Fastlane Compile whole, mode reduce-overhead: one graph, replayed as CUDA graphs (no per-kernel launches)"),
    ("compile_regional_ro", ("flux", "sdxl"), True, lambda m: _compiled(m, mode="reduce-overhead"),
     "Fastlane Compile regional, mode reduce-overhead (CUDA graphs per block)"),
    ("fp8sm+compile_regional_ro", ("flux", "sdxl"), True,
     lambda m: _compiled(quantized(m, "fp8_scaled_mm"), mode="reduce-overhead"),
     "fp8_scaled_mm then Fastlane Compile regional reduce-overhead (CUDA graphs)"),
    ("fast_target0.3_ro", ("flux",), True,
     lambda m: _compiled(node("FastlaneTargetSpeedCache", quantized(m, "fp8_scaled_mm"), compute_fraction=0.3,
                              order=2), mode="reduce-overhead"),
     "fp8_scaled_mm, target-speed 0.3, Fastlane Compile regional reduce-overhead"),
    ("fp8sm+deepcache+compile_regional", ("sdxl",), True,
     lambda m: _compiled(node("FastlaneDeepCache", quantized(m, "fp8_scaled_mm"))),
     "fp8_scaled_mm, DeepCache defaults, Fastlane Compile regional"),
    ("sdxl_fast", ("sdxl",), True,
     lambda m: _compiled(node("FastlaneDeepCache", _attention(node("FastlaneQKVFusion", m), "cudnn"))),
     "QKV fusion, cuDNN attention, DeepCache defaults, Fastlane Compile regional"),
    ("qkv_fused", ("sdxl",), False, lambda m: node("FastlaneQKVFusion", m),
     "Fastlane QKV Fusion (self-attn q/k/v, cross-attn k/v as one matmul), eager"),
    ("qkv_fused+compile_regional", ("sdxl",), True, lambda m: _compiled(node("FastlaneQKVFusion", m)),
     "Fastlane QKV Fusion then Fastlane Compile regional"),
    ("qkv_fused+compile_whole_ro", ("sdxl",), True,
     lambda m: _compiled(node("FastlaneQKVFusion", m), scope="whole", mode="reduce-overhead"),
     "Fastlane QKV Fusion then Fastlane Compile whole, reduce-overhead (CUDA graphs)"),
    ("deepcache+compile_whole_ro", ("sdxl",), True,
     lambda m: _compiled(node("FastlaneDeepCache", m), scope="whole", mode="reduce-overhead"),
     "DeepCache defaults then Fastlane Compile whole, reduce-overhead: computed and cached steps as two CUDA graphs"),
    ("deepcache_i3+compile_whole_ro", ("sdxl",), True,
     lambda m: _compiled(node("FastlaneDeepCache", m, interval=3), scope="whole", mode="reduce-overhead"),
     "DeepCache interval 3 then Fastlane Compile whole, reduce-overhead"),
    ("cudagraph", ("flux", "sdxl"), False, lambda m: node("FastlaneCudaGraph", m),
     "Fastlane CUDA Graph alone: the eager kernels, one graph replayed per call (bit-identical to eager)"),
    ("compile_regional+cudagraph", ("flux", "sdxl"), True, lambda m: node("FastlaneCudaGraph", _compiled(m)),
     "Fastlane Compile regional, then Fastlane CUDA Graph around the whole call"),
    ("deepcache+cudagraph", ("sdxl",), False, lambda m: node("FastlaneCudaGraph", node("FastlaneDeepCache", m)),
     "DeepCache defaults, then Fastlane CUDA Graph (full and shallow passes replayed)"),
    ("deepcache+compile_regional+cudagraph", ("sdxl",), True,
     lambda m: node("FastlaneCudaGraph", _compiled(node("FastlaneDeepCache", m))),
     "DeepCache defaults, Fastlane Compile regional, Fastlane CUDA Graph"),
    ("deepcache_i3+compile_regional+cudagraph", ("sdxl",), True,
     lambda m: node("FastlaneCudaGraph", _compiled(node("FastlaneDeepCache", m, interval=3))),
     "DeepCache interval 3, Fastlane Compile regional, Fastlane CUDA Graph"),
    ("fp8sm_fewfp8+compile_regional+cudagraph", ("flux",), True,
     lambda m: node("FastlaneCudaGraph", _compiled(quantized(m, "fp8_scaled_mm", "auto"))),
     "fp8_scaled_mm (few-row weights fp8), Fastlane Compile regional, Fastlane CUDA Graph: the fp8 tier, one graph"),
    ("fast_target0.3_output_fewfp8", ("flux",), True,
     lambda m: _compiled(node("FastlaneTargetSpeedCache", quantized(m, "fp8_scaled_mm", "auto"),
                              compute_fraction=0.3, order=2, granularity="output")),
     "fp8_scaled_mm (few-row weights fp8), target-speed 0.3 on the model output, Fastlane Compile regional"),
    ("fast_spectrum0.3_fewfp8", ("flux",), True,
     lambda m: _compiled(node("FastlaneSpectrumCache", quantized(m, "fp8_scaled_mm", "auto"), compute_fraction=0.3)),
     "fp8_scaled_mm (few-row weights fp8), Spectrum 0.3 (blocks), Fastlane Compile regional"),
    ("fast_spectrum0.2_fewfp8", ("flux",), True,
     lambda m: _compiled(node("FastlaneSpectrumCache", quantized(m, "fp8_scaled_mm", "auto"), compute_fraction=0.2)),
     "fp8_scaled_mm (few-row weights fp8), Spectrum 0.2 (blocks), Fastlane Compile regional"),
    ("fast_target0.2_fewfp8", ("flux",), True,
     lambda m: _compiled(node("FastlaneTargetSpeedCache", quantized(m, "fp8_scaled_mm", "auto"),
                              compute_fraction=0.2, order=2)),
     "fp8_scaled_mm (few-row weights fp8), target-speed 0.2 order 2 (blocks), Fastlane Compile regional"),
    ("fast_target0.3_output_fewfp8+cudagraph", ("flux",), True,
     lambda m: node("FastlaneCudaGraph", _compiled(node("FastlaneTargetSpeedCache",
                                                         quantized(m, "fp8_scaled_mm", "auto"),
                                                         compute_fraction=0.3, order=2, granularity="output"))),
     "the row above, then Fastlane CUDA Graph (computed steps replayed; the output cache decides outside the graph)"),
    # fp8 tensor-wise (issue 20): _scaled_mm's tensor-wise mode (native fp8_e4m3fn_fast's kernel) with real
    # per-tensor scales; against native_fp8+compile (core.py) and fp8sm_fewfp8+compile_regional
    ("fp8tw+compile_regional", ("flux",), True, lambda m: _compiled(quantized(m, "fp8_tensorwise", "auto")),
     ("fp8_tensorwise (per-tensor weight scale, activation scale calibrated on each run's first call; few-row "
      "weights fp8), Fastlane Compile regional")),
    ("fp8tw_dyn+compile_regional", ("flux",), True,
     lambda m: _compiled(quantized(m, "fp8_tensorwise_dynamic", "auto")),
     ("fp8_tensorwise_dynamic (per-tensor activation abs-max at every call; few-row weights fp8), Fastlane Compile "
      "regional")),
    ("fast_target0.3_fp8tw", ("flux",), True,
     lambda m: _compiled(node("FastlaneTargetSpeedCache", quantized(m, "fp8_tensorwise", "auto"),
                              compute_fraction=0.3, order=2)),
     ("fp8_tensorwise (few-row weights fp8), target-speed 0.3 order 2 (blocks), Fastlane Compile regional: the "
      "fast tier on the tensor-wise kernel")),
    ("fast_target0.3_fewfp8_readsigma", ("flux",), True,
     lambda m: _reading_sigmas(_compiled(node("FastlaneTargetSpeedCache", quantized(m, "fp8_scaled_mm", "auto"),
                                              compute_fraction=0.3, order=2))),
     ("fast_target0.3_fewfp8 with the cache reading every call's sigma back from the GPU (a sync per call), as "
      "before cachers/sigma_source.py: the A/B of that change in one process")),
    # the model's entry and exit projections kept 16-bit (the Quantize node's default filter since 2026-12-08):
    # per-step cost (against fp8sm_fewfp8+compile_regional) and the fast tier at 0.3 and at 0.2 computed, where
    # the CPU proxies put its fidelity above the 0.3 tier's with every Linear fp8 (issue 18's 0.75 s)
    ("fp8sm_ee+compile_regional", ("flux", "flux2"), True,
     lambda m: _compiled(quantized(m, "fp8_scaled_mm", "auto", "entry+exit")),
     "fp8_scaled_mm (few-row weights fp8; img_in, txt_in, final_layer 16-bit), Fastlane Compile regional"),
    ("fast_target0.3_ee", ("flux",), True, lambda m: _entry_exit_tier(m, "fp8_scaled_mm", 0.3),
     "fp8_scaled_mm (entry/exit 16-bit), target-speed 0.3 order 2 (auto: blocks+output), Compile regional"),
    ("fast_target0.2_ee", ("flux", "flux2"), True, lambda m: _entry_exit_tier(m, "fp8_scaled_mm", 0.2),
     "fp8_scaled_mm (entry/exit 16-bit), target-speed 0.2 order 2 (auto: blocks+output), Compile regional"),
    ("fast_target0.2_fp8tw_ee", ("flux",), True, lambda m: _entry_exit_tier(m, "fp8_tensorwise", 0.2),
     "fp8_tensorwise (entry/exit 16-bit), target-speed 0.2 order 2 (auto: blocks+output), Compile regional"),
    ("attn_sage", ("flux", "sdxl"), False, lambda m: _attention(m, "sage"),
     "Fastlane Attention Kernel: SageAttention (INT8 Q.K, Triton), eager"),
    ("fp8sm+attn_sage+compile_regional", ("flux", "sdxl"), True,
     lambda m: _compiled(_attention(quantized(m, "fp8_scaled_mm"), "sage")),
     "fp8_scaled_mm, SageAttention, Fastlane Compile regional"),
    ("attn_sage+compile_regional", ("flux", "sdxl"), True, lambda m: _compiled(_attention(m, "sage")),
     "SageAttention then Fastlane Compile regional"),
]:
    row(_name, families=_families, note=_note, heavy=_heavy)(_make)
