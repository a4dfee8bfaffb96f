"""Worker processes and the process group that joins them to ComfyUI's process (rank 0).

Workers are plain ``subprocess`` children running ``worker.py`` (not multiprocessing's spawn, which would re-import
ComfyUI's ``main.py`` as ``__mp_main__`` in every child). Rendezvous is a ``TCPStore`` that rank 0 hosts on a free
localhost port; the same store carries the small per-call messages ("weights", "call", "stop"), so an idle worker
waits on the store, not inside a collective that would time out. Workers exit when rank 0 says stop, when rank 0's
process or store goes away, or on their own error, which they leave in the store for rank 0 to report.
"""
from __future__ import annotations

import datetime
import json
import os
import pickle
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

PARALLEL_DIR = Path(__file__).resolve().parent
# The worker imports this folder as a package of its own name: ComfyUI's ``nodes`` and the pack's ``nodes`` collide.
BOOT = ("import importlib.util, sys; "
        "spec = importlib.util.spec_from_file_location('fastlane_parallel', sys.argv[1] + '/__init__.py', "
        "submodule_search_locations=[sys.argv[1]]); pkg = importlib.util.module_from_spec(spec); "
        "sys.modules['fastlane_parallel'] = pkg; spec.loader.exec_module(pkg); "
        "import fastlane_parallel.worker as w; w.main(sys.argv[2])")


@dataclass(frozen=True)
class LaunchSpec:
    world: int
    backend: str  # "gloo" or "nccl"
    devices: tuple[str, ...]  # one per rank; rank 0's is ComfyUI's device
    timeout_s: float
    threads: int = 1


def timedelta(seconds: float) -> datetime.timedelta:
    return datetime.timedelta(seconds=seconds)


def make_group(backend: str, store: Any, rank: int, world: int, timeout_s: float, device: str) -> Any:
    """A raw ProcessGroupGloo / ProcessGroupNCCL on ``store`` (no global default group is created)."""
    if backend == "gloo":
        return dist.ProcessGroupGloo(store, rank, world, timedelta(timeout_s))
    if backend == "nccl":
        torch.cuda.set_device(torch.device(device))  # NCCL binds each rank to the current device on first use
        # Blocking wait: a timed-out collective raises in the waiting thread (rank 0: ComfyUI's prompt fails)
        # instead of NCCL's watchdog tearing the whole process down. Not yet run on GPUs (docs/MULTIGPU.md).
        os.environ.setdefault("TORCH_NCCL_BLOCKING_WAIT", "1")
        return dist.ProcessGroupNCCL(store, rank, world, timedelta(timeout_s))
    raise ValueError(f"backend must be gloo or nccl, not '{backend}'")


def comfy_root() -> str:
    import comfy.model_management  # ``comfy`` is a namespace package: no __file__ of its own

    return str(Path(comfy.model_management.__file__).resolve().parent.parent)


class Workers:
    """Rank 0's handle on the N-1 worker processes, the store and the process group."""

    def __init__(self, spec: LaunchSpec) -> None:
        self.spec = spec
        self.store = dist.TCPStore("127.0.0.1", 0, spec.world, True, timeout=timedelta(spec.timeout_s),
                                   wait_for_workers=False)
        self.op_count = 0
        self.procs: list[subprocess.Popen] = []
        try:
            for rank in range(1, spec.world):
                config = {"rank": rank, "world": spec.world, "port": self.store.port, "backend": spec.backend,
                              "device": spec.devices[rank], "timeout_s": spec.timeout_s, "threads": spec.threads,
                              "parent_pid": os.getpid(), "comfy_root": comfy_root()}
                # An idle worker waits on the store in short timed waits; c10d would log each expiry as a warning.
                env = {**os.environ, "TORCH_CPP_LOG_LEVEL": "ERROR"}
                self.procs.append(subprocess.Popen([sys.executable, "-c", BOOT, str(PARALLEL_DIR), json.dumps(config)],
                                                   env=env))
            self._wait_ready()
            self.group = make_group(spec.backend, self.store, 0, spec.world, spec.timeout_s, spec.devices[0])
        except BaseException:
            self.close(graceful=False)
            raise

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + self.spec.timeout_s
        for rank in range(1, self.spec.world):
            while True:
                dead = self.dead()
                if dead:
                    raise RuntimeError(f"Fastlane Multi-GPU: {self.describe(dead)} while starting")
                if self.store.check([f"ready/{rank}"]):
                    break
                if time.monotonic() > deadline:
                    raise TimeoutError(f"Fastlane Multi-GPU: worker rank {rank} did not start within "
                                       f"{self.spec.timeout_s:.0f} s")
                time.sleep(0.02)

    @property
    def pids(self) -> list[int]:
        return [p.pid for p in self.procs]

    def wait_for_death(self, seconds: float) -> list[tuple[int, int, int]]:
        """After a failed collective: give a crashing worker a moment to exit (and leave its error)."""
        deadline = time.monotonic() + seconds
        while not self.dead() and time.monotonic() < deadline:
            time.sleep(0.05)
        return self.dead()

    def dead(self) -> list[tuple[int, int, int]]:
        """(rank, pid, exit code) of every worker that has exited."""
        return [(r, p.pid, p.returncode) for r, p in enumerate(self.procs, 1) if p.poll() is not None]

    def worker_error(self, rank: int) -> str | None:
        """The traceback a worker left in the store before exiting, if it could."""
        try:
            if self.store.check([f"error/{rank}"]):
                return self.store.get(f"error/{rank}").decode(errors="replace")
        except Exception:  # noqa: BLE001, S110  best effort: the message is built without it
            pass
        return None

    def describe(self, dead: list[tuple[int, int, int]]) -> str:
        parts = []
        for rank, pid, code in dead:
            how = f"was killed by signal {-code}" if code < 0 else f"exited with code {code}"
            error = self.worker_error(rank)
            parts.append(f"worker rank {rank} (pid {pid}) {how}" + (f"; its error:\n{error}" if error else ""))
        return "; ".join(parts)

    def post(self, op: dict) -> None:
        """One message to every worker (they read op/1, op/2, ... in order)."""
        self.op_count += 1
        self.store.set(f"op/{self.op_count}", pickle.dumps(op))
        if self.op_count > 2:
            self.store.delete_key(f"op/{self.op_count - 2}")  # read by all: its collectives completed

    def close(self, graceful: bool = True, wait_s: float = 10.0) -> None:
        """Stop the workers: ask them (``graceful``), then wait, then kill what is left. Idempotent. After a
        failure (not ``graceful``) an NCCL group is aborted, so no kernel keeps waiting on a dead peer."""
        group = getattr(self, "group", None)
        if not graceful and self.spec.backend == "nccl" and hasattr(group, "abort"):
            try:
                group.abort()
            except Exception:  # noqa: BLE001, S110  best effort: the process group is being dropped anyway
                pass
        if graceful and self.procs and not self.dead():
            try:
                self.post({"op": "stop"})
            except Exception:  # noqa: BLE001, S110  store already gone: the workers exit on their own, or are killed
                pass
        deadline = time.monotonic() + (wait_s if graceful else 0.0)
        for p in self.procs:
            try:
                p.wait(timeout=max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                pass
            if p.poll() is None:
                p.kill()
                p.wait(timeout=wait_s)
        self.procs = []
