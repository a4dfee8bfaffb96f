"""A worker rank's main loop (started by ``launcher.Workers``; run as ``fastlane_parallel.worker``).

It builds the diffusion model from rank 0's config on the meta device, takes its weights from rank 0's broadcast
(``load_state_dict(assign=True)``: no random init, no disk), then runs its share of every call rank 0 announces.
"""
from __future__ import annotations

import importlib
import json
import os
import pickle
import sys
import traceback

import torch


def _wait_op(store, n: int, parent_pid: int, launcher) -> dict | None:
    """The n-th message from rank 0; None once rank 0's process is gone (no collective is waiting meanwhile)."""
    while True:
        if os.getppid() != parent_pid:
            return None
        try:
            store.wait([f"op/{n}"], launcher.timedelta(2.0))
            return pickle.loads(store.get(f"op/{n}"))
        except Exception as e:  # noqa: BLE001  a short wait's timeout, or the store (rank 0) gone
            if "timeout" not in str(e).lower() and "timed out" not in str(e).lower():
                return None


def build_model(build: dict) -> torch.nn.Module:
    """The diffusion model class from rank 0's config, parameters on the meta device (weights come next)."""
    import comfy.ops

    cls = getattr(importlib.import_module(build["module"]), build["name"])
    operations = build.get("custom_operations") or comfy.ops.pick_operations(
        build["unet_config"].get("dtype"), build["manual_cast_dtype"], fp8_optimizations=build.get("fp8", False),
        scaled_fp8=build.get("scaled_fp8"))
    return cls(**build["unet_config"], device="meta", operations=operations).eval()


def load_weights(comm, op: dict, model: torch.nn.Module | None, build: dict | None, device: torch.device):
    from . import transfer
    from .session import FAMILIES

    if model is None or op["build"] != build:
        model = build_model(op["build"])
        FAMILIES[op["build"]["family"]].prepare_worker(model)
    tensors = transfer.receive(comm, op["manifest"], device)
    state = dict(zip(op["names"], tensors))
    model.load_state_dict(state, strict=True, assign=True)
    left = [n for n, t in [*model.named_parameters(), *model.named_buffers()] if t.is_meta]
    if left:
        raise RuntimeError(f"rank 0 sent no value for {left[:5]}")
    return model, op["build"]


def run_call(comm, op: dict, model: torch.nn.Module, device: torch.device) -> None:
    from . import transfer
    from .session import FAMILIES

    inputs = transfer.receive(comm, op["manifest"], device)
    with torch.inference_mode():
        FAMILIES[op["family"]].run(model, comm, op["mode"], inputs, {}, op.get("cache"))


def main(config_json: str) -> None:
    config = json.loads(config_json)
    sys.path.insert(0, config["comfy_root"])
    from comfy.cli_args import args

    args.cpu = config["device"] == "cpu"  # before comfy.model_management is imported: it picks its device then
    from . import launcher
    from .comm import Comm

    torch.set_num_threads(config["threads"])
    rank, world = config["rank"], config["world"]
    store = torch.distributed.TCPStore("127.0.0.1", config["port"], world, False,
                                       timeout=launcher.timedelta(config["timeout_s"]))
    try:
        device = torch.device(config["device"])
        store.set(f"ready/{rank}", "1")
        group = launcher.make_group(config["backend"], store, rank, world, config["timeout_s"], config["device"])
        comm = Comm(group, rank, world, device if config["backend"] == "nccl" else torch.device("cpu"))
        model, build, n = None, None, 0
        while True:
            n += 1
            op = _wait_op(store, n, config["parent_pid"], launcher)
            if op is None or op["op"] == "stop":
                break
            if op["op"] == "weights":
                model, build = load_weights(comm, op, model, build, device)
            elif op["op"] == "call":
                run_call(comm, op, model, device)
    except BaseException:  # noqa: BLE001  any failure: leave it for rank 0, then exit non-zero
        text = traceback.format_exc()
        try:
            store.set(f"error/{rank}", text)
        except Exception:  # noqa: BLE001, S110  rank 0 gone too: stderr still has it
            pass
        print(f"Fastlane Multi-GPU worker rank {rank}:\n{text}", file=sys.stderr, flush=True)
        sys.exit(1)
