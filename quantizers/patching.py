"""Fastlane Quantize: a MODEL whose selected Linears are quantized copies, as a model of its own.

ComfyUI's clones share one torch model, so quantizing it in place would change every branch of the graph. Instead,
each selected Linear gets a quantized *copy* (weights + LoRA patches already on the MODEL baked in first, as ComfyUI
itself would at load time), and the copies go into a copy of the torch model that ComfyUI manages apart from the
received one (``model_copy``): the received MODEL is unchanged, and a graph that runs both (a compare workflow) keeps
both loaded when VRAM holds them instead of moving weights at every switch.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Callable

import torch

from .. import host_memory
from ..compilers import qkv_fusion
from ..faults import FREE_VRAM, OOM_ERRORS, FastlaneOutOfMemory, first_line, free_memory
from . import filters, model_copy, schemes
from .fp8_scaled import Fp8RowwiseLinear, Fp8Weights
from .fp8_tensorwise import Fp8TensorwiseLinear, recalibrate_each_run
from .fp8_weight_only import Fp8WeightOnlyLinear

KEY = "fastlane_quantize"
log = logging.getLogger("fastlane")


class QuantizedLinear(torch.nn.Linear):
    """A Linear holding torchao-quantized weights. ComfyUI's lowvram casting cannot copy torchao tensors, so this is
    a plain torch module (never cast by ComfyUI); if ComfyUI leaves it offloaded, it moves its weights per call."""

    fastlane_scheme = ""  # set to the scheme's name; QKV fusion recognises a quantized MODEL by this attribute

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weight, bias = self.weight, self.bias
        if weight.device != x.device:
            weight = weight.to(x.device, non_blocking=True)
            bias = bias.to(x.device, non_blocking=True) if bias is not None else None
        return torch.nn.functional.linear(x, weight, bias)

    def _apply(self, fn, recurse: bool = True):
        # Swap the parameters instead of assigning ``.data``: torch's default path asks the tensor subclass for
        # ``aten._has_compatible_shallow_copy_type``, which torchao 0.17's AffineQuantizedTensor does not implement.
        for name, t in list(self._parameters.items()):
            if t is not None:
                self._parameters[name] = torch.nn.Parameter(fn(t), requires_grad=False)
        return self


def tensor_bytes(t: torch.Tensor | None) -> int:
    """Storage of a tensor, looking inside tensor subclasses (torchao keeps int8/fp8 data plus scales)."""
    if t is None:
        return 0
    if hasattr(t, "__tensor_flatten__") and type(t) not in (torch.Tensor, torch.nn.Parameter):
        names, _ = t.__tensor_flatten__()
        return sum(tensor_bytes(getattr(t, n)) for n in names)
    return t.numel() * t.element_size()


@dataclass
class Report:
    scheme: str
    selection: filters.Selection
    linear_bytes_before: int
    linear_bytes_after: int
    model_bytes_before: int
    baked_patch_keys: int
    copied_bytes: int = 0
    notes: tuple[str, ...] = ()

    def text(self) -> str:
        mb = 2 ** 20
        total_after = self.model_bytes_before - self.linear_bytes_before + self.linear_bytes_after
        notes = "".join(f" {n}" for n in self.notes)
        return (f"Fastlane Quantize {self.scheme}: {self.selection.summary()}. Quantized Linear weights "
                f"{self.linear_bytes_before / mb:.1f} MB -> {self.linear_bytes_after / mb:.1f} MB; model "
                f"weights {self.model_bytes_before / mb:.1f} MB -> {total_after / mb:.1f} MB while this MODEL is "
                f"loaded. {self.baked_patch_keys} LoRA/weight patches baked in before quantizing. This MODEL is a "
                f"model of its own (the quantized Linears and a {self.copied_bytes / mb:.1f} MB copy of the other "
                f"weights): ComfyUI keeps it and the received MODEL loaded together when VRAM holds both, and "
                f"offloads the idle one when it does not.{notes}")


def _original(model, key: str, live: torch.Tensor) -> torch.Tensor:
    """The unpatched weight: if another clone's patches are applied to the shared torch model right now, ComfyUI
    keeps the original in the (shared) backup."""
    backup = model.backup.get(key)
    return backup.weight if backup is not None else live


def _patched(model, key: str, weight: torch.Tensor, dtype: torch.dtype, device: torch.device,
             convert: Callable | None = None) -> torch.Tensor:
    """The weight the model computes with, LoRA patches included, in ``dtype``. ``convert``: the module's
    ``convert_weight`` where ComfyUI stores the weight scaled (its scaled-fp8 Linears of ``*_fp8_scaled`` checkpoints:
    fp8 weight x ``scale_weight``), applied first as ComfyUI's own patching does."""
    import comfy.float
    import comfy.lora
    import comfy.model_patcher

    w = weight.to(device=device, dtype=torch.float32, copy=True)
    if convert is not None:
        w = convert(w, inplace=True)
    patches = model.patches.get(key)
    if not patches:
        return w.to(dtype)
    w = comfy.lora.calculate_weight(patches, w, key)
    return comfy.float.stochastic_rounding(w, dtype, seed=comfy.model_patcher.string_to_seed(key))


def _compute_dtype(model) -> torch.dtype:
    base = model.model
    dtype = getattr(base, "manual_cast_dtype", None) or base.get_dtype()
    return dtype if dtype in (torch.float32, torch.float16, torch.bfloat16) else torch.bfloat16


def quantized_paths(model) -> set[str]:
    """``diffusion_model.<name>`` of each quantized Linear in ``model``'s torch model."""
    dm = model.model.diffusion_model
    return {f"diffusion_model.{name}" for name, m in dm.named_modules() if isinstance(m, (QuantizedLinear, Fp8Weights))}


def quantize(model, scheme_name: str, preset: str = filters.DEFAULT_PRESET, regex: str = "", few_rows: str = "auto"):
    """A MODEL of its own whose selected Linears are quantized copies of ``model``'s; returns (MODEL, Report)."""
    scheme = schemes.get(scheme_name, model.load_device)
    if quantized_paths(model):
        raise ValueError("this MODEL already went through Fastlane Quantize; quantize the original MODEL once")
    dm = model.get_model_object("diffusion_model")
    backup = model.object_patches_backup  # shared by clones: the originals of object patches applied right now
    selection = filters.select(dm, preset, regex, fp8=scheme.fp8, few_rows=few_rows,
                               original=lambda name, m: backup.get(f"diffusion_model.{name}", m))
    if selection.weights_only and not schemes.fp8_storage_supported(model.load_device):
        raise ValueError(f"few_row_linears 'fp8 weights' needs an NVIDIA GPU with compute capability 8.9+ (Ada, "
                         f"Hopper, Blackwell) or the CPU; this model runs on {model.load_device}. Keep "
                         "few_row_linears at '16-bit' or 'auto' there.")
    if not selection.quantized:
        raise ValueError(f"no Linear left to quantize ({selection.summary()}); loosen the filter")
    dtype = _compute_dtype(model)
    work_device = model.load_device
    source = model.clone()
    notes = _drop_qkv_fusion(source)
    linear_before = linear_after = baked = 0
    targets = set(selection.targets)
    copies = {}
    progress = _progress_bar(len(selection.quantized))
    name, failure = "", None
    try:
        for name in selection.quantized:
            path = f"diffusion_model.{name}"
            original = model.get_model_object(path)
            tensors = {}
            for param in ("weight", "bias"):
                live = getattr(original, param)
                if live is None:
                    continue
                key = f"{path}.{param}"
                weight = _original(model, key, live)
                linear_before += tensor_bytes(weight)
                baked += key in model.patches
                tensors[param] = _patched(model, key, weight, dtype, work_device,
                                          getattr(original, f"convert_{param}", None))
                source.patches.pop(key, None)  # baked into the copy: ComfyUI must not apply it again
            if name in targets:
                q = _build(scheme, original, tensors["weight"], tensors.get("bias"))
            else:
                q = Fp8WeightOnlyLinear(tensors["weight"], tensors.get("bias"))
            q.to(model.offload_device)
            linear_after += sum(tensor_bytes(t) for t in q.state_dict().values())
            copies[path] = q
            progress.update(1)
        quantized, copied = model_copy.own_model(source, copies)
    except OOM_ERRORS as e:  # raised below, once the traceback (whose frames hold the new tensors) is gone
        failure = _out_of_memory(scheme.name, name, len(copies), len(selection.quantized), work_device, e)
    if failure is not None:
        copies = tensors = source = q = None  # noqa: F841  (the half-built copy: dropped before freeing)
        free_memory()
        raise failure
    quantized.add_wrapper_with_key(_outer_sample(), KEY, _refuse_later_patches(set(selection.quantized)))
    if scheme.tensorwise == "calibrated":  # each sampling run measures its own activation scales
        quantized.add_wrapper_with_key(_outer_sample(), KEY, recalibrate_each_run())
    quantized.add_callback_with_key(_on_pre_run(), KEY, _note_offloaded_copies(sorted(selection.quantized)))
    host_memory.attach(quantized)
    report = Report(scheme.name, selection, linear_before, linear_after, model.model_size(), baked, copied, notes)
    log.info(report.text())
    return quantized, report


def _out_of_memory(scheme: str, name: str, done: int, total: int, device, error: BaseException) -> FastlaneOutOfMemory:
    """Quantize raises on an OOM (no fallback: there is no quantized MODEL to hand on, and a 16-bit one in its place
    would hide that the graph does not run as built). The half-built copy is dropped before, and the received MODEL
    was never changed (the copies go into a model of their own), so the same MODEL samples as before."""
    where = (f"while quantizing {name} (Linear {done + 1} of {total})" if done < total
             else f"while copying the other weights after the {total} quantized Linears")
    return FastlaneOutOfMemory(
        f"Fastlane Quantize ran out of memory {where} with scheme {scheme} on {device}. The received MODEL is "
        f"unchanged and nothing of the half-built copy is kept. Try: {FREE_VRAM} and run again; or a smaller "
        f"scheme (int8_weight_only, an fp8 scheme) or a filter that keeps more Linears in 16-bit; or few_row_linears "
        f"'16-bit' (fewer Linears converted); or bypass Fastlane Quantize. ({first_line(error)})")



def _progress_bar(total: int):
    """ComfyUI's progress bar for the node running now, one tick per Linear quantized: quantizing FLUX takes a while
    (hundreds of Linears baked and quantized one by one), and the bar shows it advancing."""
    import comfy.utils

    return comfy.utils.ProgressBar(total)


def _drop_qkv_fusion(model) -> tuple[str, ...]:
    """Undo Fastlane QKV Fusion upstream: its fused attentions hold the received MODEL's projections, and quantized
    projections are not fused anyway."""
    undone = qkv_fusion.unfuse(model)
    if not undone:
        return ()
    return (f"Fastlane QKV Fusion upstream is undone here ({undone} attentions): quantized projections cannot "
            "be fused; put QKV Fusion on a 16-bit MODEL only.",)


def _build(scheme: schemes.Scheme, original: torch.nn.Linear, weight: torch.Tensor,
           bias: torch.Tensor | None) -> torch.nn.Module:
    if scheme.tensorwise:
        return Fp8TensorwiseLinear(weight, bias, mode=scheme.tensorwise, margin=scheme.margin,
                                   fast_accum=scheme.fast_accum)
    if not scheme.uses_torchao:
        return Fp8RowwiseLinear(weight, bias, fast_accum=scheme.fast_accum)
    from torchao.quantization import quantize_

    q = QuantizedLinear(original.in_features, original.out_features, bias=bias is not None, device="meta")
    q.weight = torch.nn.Parameter(weight, requires_grad=False)
    if bias is not None:
        q.bias = torch.nn.Parameter(bias, requires_grad=False)
    quantize_(q, scheme.config())
    q.fastlane_scheme = scheme.name
    return q


def _outer_sample():
    from comfy.patcher_extension import WrappersMP

    return WrappersMP.OUTER_SAMPLE


def _on_pre_run():
    from comfy.patcher_extension import CallbacksMP

    return CallbacksMP.ON_PRE_RUN


def _note_offloaded_copies(quantized: list[str]):
    """After ComfyUI loaded the MODEL for a run: say so if quantized copies stayed off the GPU (a partial, lowvram
    load), since each call then copies their weights over."""
    def on_pre_run(patcher, *args, **kwargs):
        device = torch.device(patcher.load_device)
        places = [patcher.get_model_object(f"diffusion_model.{name}").weight.device for name in quantized]
        away = [place for place in places if place != device]
        if away:
            log.warning("Fastlane Quantize: %d of %d quantized Linears stay on %s while this MODEL runs on %s "
                        "(ComfyUI loaded it partially: lowvram); their weights are copied over at every call, "
                        "which is slow. Free VRAM (fewer models loaded, smaller batch) for a full load.",
                        len(away), len(places), away[0], device)

    return on_pre_run


def _refuse_later_patches(quantized: set[str]):
    def outer_sample_wrapper(executor, *args, **kwargs):
        patcher = executor.class_obj.model_patcher
        late = sorted(k for k in patcher.patches
                      if k.startswith("diffusion_model.") and k[len("diffusion_model."):].rsplit(".", 1)[0] in quantized)
        if late:
            raise ValueError(f"a LoRA (or other weight patch) was applied after Fastlane Quantize to {len(late)} "
                             f"quantized weights (e.g. {late[0]}); quantized weights cannot take patches. Put the "
                             "LoRA loader before Fastlane Quantize: its LoRA is then baked in before quantizing.")
        return executor(*args, **kwargs)

    return outer_sample_wrapper
