"""Fastlane QKV Fusion: SDXL-style attention with separate q/k/v projections, on a single ComfyUI CrossAttention and
inside a small real SDXL UNet sampled in ComfyUI's loop (CPU)."""
import nodes
import pytest
import torch
from torch._dynamo.utils import counters

from tiny_models import sample, sdxl_conditioning, tiny_flux, tiny_sdxl

NODE = nodes.NODE_CLASS_MAPPINGS
KEY = "diffusion_model.output_blocks.5.1.transformer_blocks.0.attn2.to_v.weight"  # in a fused k/v pair
DIFF = {}


def fused(model):
    out = NODE["FastlaneQKVFusion"].execute(model=model)
    return out.result[0], out.result[1]


def rel_err(a, b):
    return float((a - b).detach().norm() / b.detach().norm())


def run(model, steps=4, tokens=8):
    return sample(model, steps=steps, cfg=2.0, latent=torch.zeros(1, 4, 8, 8),
                  positive=sdxl_conditioning(1, tokens=tokens), negative=sdxl_conditioning(2, tokens=tokens))


class CallCounter:
    """Counts real forward calls of the k projections (fused attention never calls them)."""

    def __init__(self, modules):
        self.calls = 0
        self.handles = [m.register_forward_pre_hook(self._hook) for m in modules]

    def _hook(self, module, args):
        self.calls += 1

    def close(self):
        for h in self.handles:
            h.remove()


TO_K = {}


@pytest.fixture(scope="module")
def unet():
    import comfy.ldm.modules.attention as attention

    model = tiny_sdxl()
    DIFF["v"] = 3.0 * torch.randn(model.get_model_object(KEY).shape, generator=torch.Generator().manual_seed(5))
    TO_K[id(model)] = [m.to_k for m in model.model.diffusion_model.modules() if type(m) is attention.CrossAttention]
    return model


def to_k_modules(unet):
    return TO_K[id(unet)]  # the original projections (shared by the fused twins)


@pytest.mark.parametrize("context_dim", [None, 48], ids=["self-attention", "cross-attention"])
def test_one_attention_fused_equals_separate(context_dim):
    import comfy.ldm.modules.attention as attention
    import comfy.ops

    from fastlane.compilers.qkv_fusion import fused_twin

    torch.manual_seed(0)
    attn = attention.CrossAttention(64, context_dim=context_dim, heads=4, dim_head=16,
                                    operations=comfy.ops.disable_weight_init)
    with torch.no_grad():
        for p in attn.parameters():
            p.normal_(0, 0.1)
    twin = fused_twin(attn)
    assert twin.refresh()
    assert twin.fused_kind == ("qkv" if context_dim is None else "kv")
    x = torch.randn(2, 37, 64)
    context = None if context_dim is None else torch.randn(2, 11, context_dim)
    expected = attn(x, context=context)
    counter = CallCounter([attn.to_k])
    try:
        got = twin(x, context=context)
    finally:
        counter.close()
    assert counter.calls == 0  # really one fused matmul
    assert rel_err(got, expected) < 1e-3
    assert twin.to_q is attn.to_q and twin.to_out is attn.to_out  # shared children: LoRA keys still resolve


def test_sdxl_fused_sampling_matches_and_skips_separate_matmuls(unet):
    reference = run(unet)
    model, report = fused(unet)
    counter = CallCounter(to_k_modules(unet))
    try:
        out = run(model)
    finally:
        counter.close()
    assert counter.calls == 0
    assert rel_err(out, reference) < 1e-3
    assert "11 self-attentions fused" in report and "11 cross-attentions" in report


def test_the_received_model_is_unchanged(unet):
    before = run(unet)
    model, _ = fused(unet)
    run(model)
    assert unet.object_patches == {} and not unet.callbacks
    counter = CallCounter(to_k_modules(unet))
    try:
        assert torch.equal(run(unet), before)
        assert counter.calls > 0  # the received MODEL runs its own, unfused attention
    finally:
        counter.close()


@pytest.mark.parametrize("lora_first", [True, False], ids=["lora-then-fusion", "fusion-then-lora"])
def test_lora_before_or_after_fusion_takes_effect(unet, lora_first):
    bump = {KEY: ("diff", (DIFF["v"],))}

    def with_lora(m):
        m = m.clone()
        m.add_patches(bump, 1.0)
        return m

    reference = run(with_lora(unet))
    plain = run(unet)
    assert rel_err(reference, plain) > 1e-3  # the patch matters
    model = fused(with_lora(unet))[0] if lora_first else with_lora(fused(unet)[0])
    assert rel_err(run(model), reference) < 1e-5
    assert rel_err(run(fused(unet)[0]), plain) < 1e-5  # and is gone again without it


def test_fusion_with_regional_compile_and_a_later_lora(unet):
    torch._dynamo.reset()
    counters.clear()
    reference = run(unet)
    model = NODE["FastlaneCompile"].execute(model=fused(unet)[0], scope="regional", backend="eager",
                                            mode="default", dynamic="auto", fullgraph=True).result[0]
    assert rel_err(run(model), reference) < 1e-3
    assert not counters["graph_break"]
    counters.clear()
    bumped = model.clone()
    bumped.add_patches({KEY: ("diff", (DIFF["v"],))}, 1.0)
    eager_bumped = unet.clone()
    eager_bumped.add_patches({KEY: ("diff", (DIFF["v"],))}, 1.0)
    expected = run(eager_bumped)
    assert rel_err(expected, reference) > 1e-3
    counters.clear()
    assert rel_err(run(bumped), expected) < 1e-4
    assert counters["stats"]["unique_graphs"] == 0  # the rebuilt fused weight is a graph input like any weight
    torch._dynamo.reset()


def test_lowvram_attention_runs_unfused(unet):
    """Modules ComfyUI partially unloads (cast on the fly) are not fused: no stale or extra copy."""
    from comfy.patcher_extension import CallbacksMP

    reference = run(unet)
    partial = unet.clone()
    size = sum(p.numel() * p.element_size() for p in unet.model.diffusion_model.parameters())
    partial.add_callback_with_key(CallbacksMP.ON_PRE_RUN, "test_lowvram",
                                  lambda patcher, *a: patcher.partially_unload(patcher.offload_device, size))
    model, _ = fused(partial)
    counter = CallCounter(to_k_modules(unet))
    try:
        out = run(model)
    finally:
        counter.close()
        import comfy.model_management as mm

        mm.unload_all_models()
    assert counter.calls > 0
    assert rel_err(out, reference) < 1e-3
    assert all(t.fused_weight is None for t in model.object_patches.values())


def test_flux_passes_through_with_a_clear_note():
    flux = tiny_flux()
    model, report = fused(flux)
    assert "already computes q, k and v with one matmul" in report
    assert model is not flux and model.object_patches == {}


def test_fusion_then_quantize_undoes_the_fusion_and_the_other_order_is_refused(unet):
    reference = run(unet)
    out = NODE["FastlaneQuantize"].execute(model=fused(unet)[0], scheme="int8_weight_only", filter="none")
    q, report = out.result
    assert "Fastlane QKV Fusion upstream is undone here" in report
    assert not any(hasattr(v, "fused_kind") for v in q.object_patches.values())
    assert not any(hasattr(m, "fused_kind") for m in q.model.diffusion_model.modules())
    assert rel_err(run(q), reference) < 0.05  # quantized projections, unfused
    quantized_first = NODE["FastlaneQuantize"].execute(model=unet, scheme="int8_weight_only", filter="none").result[0]
    with pytest.raises(ValueError, match="went through Fastlane Quantize, and quantized projections cannot be fused"):
        fused(quantized_first)
    assert torch.equal(run(unet), reference)  # the received torch model is intact
