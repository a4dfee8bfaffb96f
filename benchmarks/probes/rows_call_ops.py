# Extra benchmark rows (run.py --extra-rows benchmarks/probes/rows_call_ops.py): how many torch ops each call of the
# diffusion model dispatches, computed and skipped (issues 18 and 20). On a GPU an op outside a compiled region costs
# its launch plus Python (~10-30 us), whatever its size: a skipped FLUX call at 1024^2 costs ~3.4 ms (s17-3) with no
# block running, so the count says what that time is made of. Each row logs "ops per call: [...]" after each sampling
# run, and, once, the ops of the FLUX input side (RoPE table, timestep MLP, final layer) measured alone.
#
#   FASTLANE_OPS_REAL_DEPTH=1 .venv/bin/python benchmarks/run.py --family flux --tiny \
#       --extra-rows benchmarks/probes/rows_call_ops.py --rows ops_eager,ops_target0.3,ops_target0.3_output \
#       --steps 28 --res 64 --repeats 1 --out /tmp/call_ops
#
# FASTLANE_OPS_REAL_DEPTH=1 gives the tiny FLUX FLUX.1-dev's 19 double + 38 single blocks (widths stay tiny): op
# counts depend on the depth, not on the widths, so the CPU counts what the real model dispatches per call.
# Exec'd by run.py (before the model is built) with `row`, `node`, `CTX`, `RowSkipped` in scope.
import collections
import os

if os.environ.get("FASTLANE_OPS_REAL_DEPTH") == "1":
    import models as _models

    _models.FLUX_TINY_UNET_CONFIG.update(depth=_models.FLUX_DEV_UNET_CONFIG["depth"],
                                         depth_single_blocks=_models.FLUX_DEV_UNET_CONFIG["depth_single_blocks"])


def _counter():
    from torch.utils._python_dispatch import TorchDispatchMode

    class OpCounter(TorchDispatchMode):
        """Counts every aten op dispatched inside it (views included: they launch nothing, but cost Python)."""

        def __init__(self):
            super().__init__()
            self.ops = collections.Counter()

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            self.ops[str(func)] += 1
            return func(*args, **(kwargs or {}))

    return OpCounter()


def _input_side_ops(dm) -> dict:
    """Ops of the FLUX modules every call runs outside the blocks, each called alone at 1024^2's token counts."""
    import torch
    from comfy.ldm.flux.layers import timestep_embedding

    dtype = next(dm.parameters()).dtype
    device = next(dm.parameters()).device
    ids = torch.zeros(1, 512 + 4096, 3, device=device)
    hidden = dm.params.hidden_size
    parts = {"pe_embedder (RoPE table)": lambda: dm.pe_embedder(ids),
             "time_in (timestep MLP)": lambda: dm.time_in(timestep_embedding(torch.tensor([0.5], device=device),
                                                                             256).to(dtype)),
             "final_layer": lambda: dm.final_layer(torch.zeros(1, 16, hidden, device=device, dtype=dtype),
                                                   torch.zeros(1, hidden, device=device, dtype=dtype))}
    counts = {}
    for name, fn in parts.items():
        counter = _counter()
        with torch.inference_mode(), counter:
            fn()
        counts[name] = sum(counter.ops.values())
    return counts


def _counting(model):
    import comfy.patcher_extension

    per_call: list[int] = []
    state = {"input_side": False}

    def apply_model(executor, *args, **kwargs):
        counter = _counter()
        with counter:
            out = executor(*args, **kwargs)
        per_call.append(sum(counter.ops.values()))
        return out

    def outer_sample(executor, *args, **kwargs):
        per_call.clear()
        out = executor(*args, **kwargs)
        print(f"ops per call: {per_call}", flush=True)
        if not state["input_side"]:
            state["input_side"] = True
            dm = executor.class_obj.model_patcher.model.diffusion_model
            print(f"ops of the input side, each alone: {_input_side_ops(dm)}", flush=True)
        return out

    model = model.clone()
    model.add_wrapper_with_key(comfy.patcher_extension.WrappersMP.APPLY_MODEL, "bench_call_ops", apply_model)
    model.add_wrapper_with_key(comfy.patcher_extension.WrappersMP.OUTER_SAMPLE, "bench_call_ops", outer_sample)
    return model


row("ops_eager", families=("flux",), note="ops per call: the model as loaded")(_counting)
row("ops_target0.3", families=("flux",), step_cache=True, note="ops per call: Target Speed 0.3 (auto granularity)")(
    lambda m: _counting(node("FastlaneTargetSpeedCache", m, compute_fraction=0.3)))
row("ops_target0.3_output", families=("flux",), step_cache=True,
    note="ops per call: Target Speed 0.3 on the whole output")(
    lambda m: _counting(node("FastlaneTargetSpeedCache", m, compute_fraction=0.3, granularity="output")))
