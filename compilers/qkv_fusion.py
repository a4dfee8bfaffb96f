"""QKV fusion for attention with separate q/k/v projections (SDXL/SD1.x ``CrossAttention``): self-attention computes
q, k and v with one matmul on a concatenated [Wq; Wk; Wv], cross-attention k and v with one matmul on [Wk; Wv].

Mechanism: each ``CrossAttention`` gets an object-patched twin (``FusedCrossAttention``, same class family, same
attributes) whose children *are* the original ``to_q``/``to_k``/``to_v``/``to_out`` modules, so LoRA keys, ComfyUI's
weight patching and attention-replace patches (which call ``attn.to_q`` directly) keep working. The fused weight is
a copy, rebuilt from the current (patched) weights each time ComfyUI loads this MODEL (ON_LOAD) and dropped when it
unloads it (ON_DETACH); a weight change between runs is caught at ON_PRE_RUN. Memory: the copy adds the fused
projections' size in VRAM while loaded (SDXL fp16: ~0.6 GB for the self-attention qkv plus ~0.3 GB for the
cross-attention kv). Projections that ComfyUI casts or patches on the fly (lowvram, fp8 storage) run unfused.
"""
from __future__ import annotations

import copy
import logging
from collections import OrderedDict

import torch

KEY = "fastlane_qkv_fusion"
log = logging.getLogger("fastlane")


def _cast_on_the_fly(linear: torch.nn.Module) -> bool:
    return bool(getattr(linear, "comfy_cast_weights", False) or getattr(linear, "weight_function", None)
                or getattr(linear, "bias_function", None) or hasattr(linear, "prev_comfy_cast_weights"))


def _signature(linears) -> tuple:
    return tuple((id(m.weight), m.weight._version, m.weight.device, m.weight.dtype) for m in linears)


def make_fused_class(base: type) -> type:
    import comfy.ldm.modules.attention as attention

    class FusedCrossAttention(base):
        """``CrossAttention`` whose q/k/v (self-attention) or k/v (cross-attention) run as one matmul."""

        fused_kind = ""  # "qkv" or "kv"

        def fused_sources(self) -> list[torch.nn.Module]:
            return [self.to_q, self.to_k, self.to_v] if self.fused_kind == "qkv" else [self.to_k, self.to_v]

        def refresh(self) -> bool:
            """(Re)build the fused weight from the current weights; False (and none kept) if they can't be fused."""
            sources = self.fused_sources()
            signature = _signature(sources)
            if self.fused_weight is not None and signature == self._fused_signature:
                return True
            self.drop()
            if any(_cast_on_the_fly(m) or type(m.weight) not in (torch.Tensor, torch.nn.Parameter) for m in sources) \
                    or len({(m.weight.device, m.weight.dtype) for m in sources}) != 1:
                return False  # cast on the fly, quantized (a tensor subclass), or mixed devices: run unfused
            with torch.no_grad():
                self.fused_weight = torch.cat([m.weight for m in sources], 0)
                biases = [m.bias for m in sources]
                if any(b is not None for b in biases):
                    self.fused_bias = torch.cat([b if b is not None else torch.zeros(m.weight.shape[0], device=m.weight.device, dtype=m.weight.dtype)
                                                 for b, m in zip(biases, sources)])
            self._fused_signature = signature
            return True

        def drop(self) -> None:
            self.fused_weight = None
            self.fused_bias = None
            self._fused_signature = None

        def forward(self, x, context=None, value=None, mask=None, transformer_options={}):
            w = self.fused_weight
            if w is None or value is not None or (self.fused_kind == "qkv") != (context is None) \
                    or w.device != x.device or w.dtype != x.dtype:
                return base.forward(self, x, context=context, value=value, mask=mask,
                                    transformer_options=transformer_options)
            if self.fused_kind == "qkv":
                q, k, v = torch.nn.functional.linear(x, w, self.fused_bias).chunk(3, dim=-1)
            else:
                q = self.to_q(x)
                k, v = torch.nn.functional.linear(context, w, self.fused_bias).chunk(2, dim=-1)
            if mask is None:
                out = attention.optimized_attention(q, k, v, self.heads, attn_precision=self.attn_precision,
                                                    transformer_options=transformer_options)
            else:
                out = attention.optimized_attention_masked(q, k, v, self.heads, mask,
                                                           attn_precision=self.attn_precision,
                                                           transformer_options=transformer_options)
            return self.to_out(out)

    FusedCrossAttention.__name__ = FusedCrossAttention.__qualname__ = f"Fused{base.__name__}"
    return FusedCrossAttention


_CLASSES: dict[type, type] = {}


def fused_twin(module: torch.nn.Module) -> torch.nn.Module:
    """A twin of ``module`` sharing its children and attributes, as a FusedCrossAttention; no weight copied yet."""
    cls = _CLASSES.get(type(module))
    if cls is None:
        cls = _CLASSES[type(module)] = make_fused_class(type(module))
    twin = copy.copy(module)
    twin._modules = OrderedDict(module._modules)
    twin._parameters = OrderedDict(module._parameters)
    twin._buffers = OrderedDict(module._buffers)
    twin.__class__ = cls
    same_input = module.to_q.in_features == module.to_k.in_features == module.to_v.in_features
    twin.fused_kind = "qkv" if same_input else "kv"
    twin.drop()
    return twin


def attention_modules(model) -> list[tuple[str, torch.nn.Module]]:
    """(name, module) of every attention with separate Linear q/k/v projections, as ``model`` sees them: another
    clone's object patches may be swapped into the shared torch model right now, so each is resolved through
    ``get_model_object`` (ComfyUI keeps the originals in the shared backup)."""
    import comfy.ldm.modules.attention as attention

    found = []
    for name, live in model.get_model_object("diffusion_model").named_modules():
        if not isinstance(live, attention.CrossAttention):
            continue
        module = model.get_model_object(f"diffusion_model.{name}")
        if hasattr(module, "fused_kind"):
            raise ValueError("this MODEL already went through Fastlane QKV Fusion")
        if all(isinstance(getattr(module, n, None), torch.nn.Linear) for n in ("to_q", "to_k", "to_v")):
            found.append((name, module))
    return found


def already_fused(diffusion_model: torch.nn.Module) -> str | None:
    """Why this model needs no fusion (FLUX computes q, k, v with one Linear already), or None."""
    import comfy.ldm.flux.model as flux

    if isinstance(diffusion_model, flux.Flux):
        return ("FLUX in ComfyUI already computes q, k and v with one matmul (img_attn.qkv, txt_attn.qkv, and the "
                "single blocks' linear1, which also holds the MLP input): there is nothing to fuse")
    return None


def _quantized(model) -> bool:
    """Whether ``model`` went through Fastlane Quantize: each module it quantized names its scheme in a
    ``fastlane_scheme`` attribute. (Read here rather than imported: ``quantizers/`` builds on this module, which
    undoes its own fusion for it with ``unfuse``.)"""
    return any(hasattr(m, "fastlane_scheme") for m in model.model.diffusion_model.modules())


def unfuse(model) -> int:
    """Remove Fastlane QKV Fusion from ``model`` (a clone the caller owns): its fused attentions and callbacks.
    Returns how many attentions were fused."""
    from comfy.patcher_extension import CallbacksMP

    twins = [k for k, v in model.object_patches.items() if hasattr(v, "fused_kind")]
    if not twins:
        return 0
    for k in twins:
        model.object_patches.pop(k)
    for call in (CallbacksMP.ON_LOAD, CallbacksMP.ON_PRE_RUN, CallbacksMP.ON_DETACH):
        model.remove_callbacks_with_key(call, KEY)
    return len(twins)


def fuse(model):
    """A clone of ``model`` with every q/k/v attention fused; returns (clone, report text)."""
    from comfy.patcher_extension import CallbacksMP

    dm = model.get_model_object("diffusion_model")
    reason = already_fused(dm)
    patched = model.clone()
    if reason is not None:
        return patched, f"Fastlane QKV Fusion: {reason}; the MODEL passes through unchanged."
    if _quantized(model):
        raise ValueError("this MODEL went through Fastlane Quantize, and quantized projections cannot be fused: use "
                         "Fastlane QKV Fusion on a 16-bit MODEL (a Quantize after it undoes the fusion)")
    found = attention_modules(model)
    nested = sorted(k for k in model.object_patches for name, _ in found if k.startswith(f"diffusion_model.{name}."))
    if nested:
        # ComfyUI restores object patches in the order it applied them; replacing an attention whose projections
        # are already replaced (by another patch node) would put the inner replacement into the shared model.
        raise ValueError(f"this MODEL already has replaced attention projections ({nested[0]}, ...: another patch "
                         "node). Put Fastlane QKV Fusion before them in the chain.")
    if not found:
        raise ValueError(f"{type(dm).__name__} has no attention with separate to_q/to_k/to_v projections to fuse")
    twins = []
    fused_bytes = 0
    counts = {"qkv": 0, "kv": 0}
    for name, module in found:
        twin = fused_twin(module)
        patched.add_object_patch(f"diffusion_model.{name}", twin)
        twins.append(twin)
        counts[twin.fused_kind] += 1
        fused_bytes += sum(m.weight.numel() * m.weight.element_size() for m in twin.fused_sources())

    def on_load(patcher, *args, **kwargs):
        fused = sum(t.refresh() for t in twins)
        if fused < len(twins):
            log.info("Fastlane QKV fusion: %d of %d attentions are cast or patched on the fly (lowvram/fp8 storage) "
                     "and run unfused", len(twins) - fused, len(twins))

    def on_pre_run(patcher, *args, **kwargs):
        if patcher.hook_patches:
            for t in twins:  # ComfyUI hooks change weights in place per step: the fused copy would go stale
                t.drop()
            log.info("Fastlane QKV fusion: this MODEL has scheduled weight hooks; attention runs unfused")
        else:
            on_load(patcher)

    def on_detach(patcher, *args, **kwargs):
        for t in twins:
            t.drop()

    patched.add_callback_with_key(CallbacksMP.ON_LOAD, KEY, on_load)
    patched.add_callback_with_key(CallbacksMP.ON_PRE_RUN, KEY, on_pre_run)
    patched.add_callback_with_key(CallbacksMP.ON_DETACH, KEY, on_detach)
    text = (f"Fastlane QKV Fusion: {counts['qkv']} self-attentions fused to one q/k/v matmul, {counts['kv']} "
            f"cross-attentions to one k/v matmul; the fused weights ({fused_bytes / 2**20:.1f} MB) are built on the "
            "device when ComfyUI loads this MODEL and freed when it unloads it.")
    log.info(text)
    return patched, text
