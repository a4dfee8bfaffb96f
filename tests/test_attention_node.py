"""Fastlane Attention Kernel: the SDPA priority it sets reaches ComfyUI's attention calls, eager and compiled."""
import comfy.ops
import nodes
import pytest
import torch
from torch._dynamo.utils import counters
from torch.nn.attention import SDPBackend

from tiny_models import sample, sdxl_conditioning, tiny_flux, tiny_sdxl

NODE = nodes.NODE_CLASS_MAPPINGS


def with_attention(model, backend):
    return NODE["FastlaneAttention"].execute(model=model, backend=backend).result[0]


@pytest.fixture(scope="module")
def flux():
    return tiny_flux()


@pytest.fixture
def seen_priority(monkeypatch):
    """What SDPA's backend priority was at each of ComfyUI's attention calls (it calls comfy.ops' SDPA function)."""
    seen = []
    inner = comfy.ops.scaled_dot_product_attention

    def spy(q, k, v, *args, **kwargs):
        seen.append(int(torch._C._get_sdp_priority_order()[0]))
        return inner(q, k, v, *args, **kwargs)

    monkeypatch.setattr(comfy.ops, "scaled_dot_product_attention", spy)
    return seen


@pytest.mark.parametrize("backend, first", [("cudnn", SDPBackend.CUDNN_ATTENTION), ("math", SDPBackend.MATH),
                                            ("efficient", SDPBackend.EFFICIENT_ATTENTION)])
def test_the_chosen_kernel_is_first_during_every_attention_call(flux, seen_priority, backend, first):
    default_first = int(torch._C._get_sdp_priority_order()[0])
    reference = sample(flux, steps=3)
    assert seen_priority == []  # ComfyUI's CPU default is its sub-quadratic attention, not SDPA
    out = sample(with_attention(flux, backend), steps=3)
    assert len(seen_priority) == 3 * (2 + 2)  # 3 steps x (2 double + 2 single blocks) of the tiny FLUX
    assert set(seen_priority) == {int(first)}
    assert int(torch._C._get_sdp_priority_order()[0]) == default_first  # restored after the call
    assert torch.allclose(out, reference, atol=1e-4, rtol=1e-4)  # another kernel, the same attention


def test_the_received_model_keeps_its_attention(flux, seen_priority):
    before = sample(flux, steps=3)
    with_attention(flux, "math")
    assert torch.equal(sample(flux, steps=3), before) and seen_priority == []


def test_auto_resolves_to_flash_off_hopper():
    from fastlane.compilers import attention

    assert attention.resolve("auto", torch.device("cpu")) == "flash"
    with pytest.raises(ValueError, match="attention backend must be one of"):
        attention.resolve("xformers", torch.device("cpu"))


def test_sage_on_a_cpu_model_is_a_clear_error_and_patches_nothing(flux):
    options = repr(flux.model_options)
    with pytest.raises(ValueError, match="SageAttention runs on NVIDIA GPUs"):
        with_attention(flux, "sage")
    assert repr(flux.model_options) == options


def test_sage_runs_every_attention_call_of_this_model_only(flux, monkeypatch):
    # SageAttention's kernels need an NVIDIA GPU: stand in for the kernel (delegating to SDPA) and skip the GPU check.
    import comfy.ldm.modules.attention as comfy_attention

    from fastlane.compilers import attention

    calls = []

    def sage_kernel(q, k, v, heads, *args, **kwargs):
        calls.append(q.shape)
        return comfy_attention.attention_pytorch(q, k, v, heads, *args, **kwargs)

    monkeypatch.setattr(comfy_attention, "attention_sage", sage_kernel, raising=False)
    monkeypatch.setattr(attention, "_check_sage", lambda device: None)
    reference = sample(flux, steps=3)
    out = sample(with_attention(flux, "sage"), steps=3)
    assert len(calls) == 3 * (2 + 2)
    assert torch.allclose(out, reference, atol=1e-4, rtol=1e-4)
    calls.clear()
    sample(flux, steps=3)
    assert calls == []  # the received MODEL keeps ComfyUI's attention


def test_compiled_blocks_trace_the_kernel_choice_without_breaks(flux):
    torch._dynamo.reset()
    counters.clear()
    model = NODE["FastlaneCompile"].execute(model=with_attention(flux, "math"), scope="regional", backend="eager",
                                            mode="default", dynamic="auto", fullgraph=True).result[0]
    sample(model, steps=3)
    assert counters["stats"]["unique_graphs"] == 2 and not counters["graph_break"]
    torch._dynamo.reset()


def test_sdxl_unet():
    unet = tiny_sdxl()
    kw = dict(steps=3, cfg=2.0, latent=torch.zeros(1, 4, 8, 8), positive=sdxl_conditioning(1),
              negative=sdxl_conditioning(2))
    reference = sample(unet, **kw)
    assert torch.allclose(sample(with_attention(unet, "math"), **kw), reference, atol=1e-4, rtol=1e-4)
