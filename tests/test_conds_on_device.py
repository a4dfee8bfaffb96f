"""Conditioning moved to the model's device once per run (compilers/conds.py), on ComfyUI's real processed conds."""
import nodes
import torch
from comfy.patcher_extension import WrappersMP

from fastlane.compilers import conds
from tiny_models import sample, tiny_flux

NODE = nodes.NODE_CLASS_MAPPINGS


def test_the_run_conditioning_moves_to_the_device_keeping_its_dtype(monkeypatch):
    model = NODE["FastlaneFORA"].execute(model=tiny_flux(), interval=2, granularity="blocks", start=0.0,
                                         end=1.0).result[0]
    assert model.get_wrappers(WrappersMP.SAMPLER_SAMPLE, conds.KEY)  # the cache nodes install it
    seen = {}

    def spy(executor, guider, *args, **kwargs):
        seen["conds"] = guider.conds
        return executor(guider, *args, **kwargs)

    model.add_wrapper_with_key(WrappersMP.SAMPLER_SAMPLE, "test_spy", spy)
    sample(model, steps=2)
    processed = seen["conds"]
    before = {(kind, i, name): (c.cond.dtype, c.cond.shape) for kind, lst in processed.items()
              for i, cond in enumerate(lst) for name, c in cond["model_conds"].items()
              if isinstance(getattr(c, "cond", None), torch.Tensor)}
    assert {name for _, _, name in before} >= {"c_crossattn", "y", "guidance"}  # what ComfyUI copies per call
    assert conds.move_conds(processed, torch.device("meta")) == len(before)
    for (kind, i, name), (dtype, shape) in before.items():
        moved = processed[kind][i]["model_conds"][name].cond
        assert moved.device.type == "meta" and moved.dtype == dtype and moved.shape == shape
    assert conds.move_conds(processed, torch.device("meta")) == 0  # once per run: nothing left to move


def test_on_the_cpu_it_changes_nothing():
    flux = tiny_flux()
    compiled = NODE["FastlaneCompile"].execute(model=flux, scope="regional", backend="eager", mode="default",
                                               dynamic="auto", fullgraph=False).result[0]
    assert compiled.get_wrappers(WrappersMP.SAMPLER_SAMPLE, conds.KEY)
    assert not flux.get_wrappers(WrappersMP.SAMPLER_SAMPLE, conds.KEY)  # the received MODEL stays as it was
    torch._dynamo.reset()
