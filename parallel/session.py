"""Rank 0's side of one Fastlane Multi-GPU MODEL: the workers' lifetime and every sharded call.

``ParallelSession`` is what the node's object patch calls in place of the model's ``forward_orig``. Per call it
checks the graph can be split (no ControlNet, mask or block patches), starts the workers on first use (or again
after ``release``/a failure), announces the call, broadcasts its inputs and runs rank 0's share. What only a load
can change is checked once per load or sampling run (``mark_reloaded``: the node's ON_LOAD / ON_PRE_RUN callbacks),
not at every step: that rank 0's model is fully loaded (no lowvram), and whether the weights changed (a LoRA/patch:
keyed on the patcher's weight-patch uuid plus each tensor's storage and version), which re-sends them.

Failures: a worker that died or hung makes the call raise ``ParallelError`` naming the rank, its exit code and its
own traceback, within the collective timeout at worst; the session then stops every worker, and the next call
starts fresh ones. Shutdown: ``release`` (the node calls it when ComfyUI detaches the model), and a
``weakref.finalize`` when the session is garbage-collected or the interpreter exits.
"""
from __future__ import annotations

import logging
import threading
import time
import weakref
from typing import Any

import torch

from . import flux, transfer, wan
from .attention import MODES
from .launcher import LaunchSpec, Workers

log = logging.getLogger("fastlane")
SPLIT_SAFE_FLAG = "fastlane_split_safe"  # on a patch that a sharded call may leave to rank 0 alone
FAMILIES = {"flux": flux, "wan": wan}  # how each model family's forward_orig is sharded
# Fastlane wrappers whose work does not reach the workers' copies (see docs/MULTIGPU.md).
REFUSED_WRAPPERS = {"fastlane_compile": "Fastlane Compile", "fastlane_cuda_graph": "Fastlane CUDA Graph",
                    "fastlane_quantize": "Fastlane Quantize"}


def supported_cache_granularities(family: str) -> tuple[str, ...]:
    """Fastlane cacher granularities a sharded call reproduces: the decision is always rank 0's, made once."""
    return ("output", "blocks", "last_block") if family == "flux" else ("output",)


def granularity_refusal(family: str, granularity: str) -> str | None:
    """Why a cacher at ``granularity`` cannot run sharded on ``family``, or None."""
    if granularity in supported_cache_granularities(family):
        return None
    return (f"Fastlane Multi-GPU runs {family} with cachers at granularity "
            f"{' / '.join(supported_cache_granularities(family))}; this MODEL's cacher uses '{granularity}'")


def wrapper_refusal(wrappers: dict) -> str | None:
    """Why a MODEL with these wrappers (``{wrapper type: {key: [...]}}``) cannot run sharded, or None."""
    for keyed in wrappers.values():
        for key, name in REFUSED_WRAPPERS.items():
            if keyed.get(key):
                return (f"Fastlane Multi-GPU does not run {name} on the worker ranks; remove {name} from this "
                        "MODEL's chain (see docs/MULTIGPU.md)")
    return None


class ParallelError(RuntimeError):
    """A sequence-parallel call failed because of a worker (died, hung, raised) or cannot be split."""


def _close(workers: Workers | None) -> None:
    if workers is not None:
        workers.close()


class ParallelSession:
    """The workers and the sharded ``forward_orig`` for one MODEL (its clones share it)."""

    def __init__(self, spec: LaunchSpec, mode: str, build: dict) -> None:
        if mode not in MODES:
            raise ValueError(f"attention mode must be one of {MODES}, not '{mode}'")
        self.spec, self.mode, self.build = spec, mode, build
        self.workers: Workers | None = None
        self._finalizer: Any = None
        self._sent_key: Any = None
        self._reloaded = True  # rank 0's model was (re)loaded since the last weights check
        self._lock = threading.Lock()
        self.calls = 0  # sharded calls run (rank 0's count; tests and logs read it)
        self.weight_sends = 0

    # ---- lifetime -------------------------------------------------------------------------------------------
    @property
    def worker_pids(self) -> list[int]:
        return self.workers.pids if self.workers is not None else []

    def _start(self) -> Workers:
        if self.workers is None:
            start = time.perf_counter()
            self.workers = Workers(self.spec)
            self._finalizer = weakref.finalize(self, _close, self.workers)
            self._sent_key = None
            log.info("Fastlane Multi-GPU: %d workers started in %.1f s (pids %s, %s on %s)", self.spec.world - 1,
                     time.perf_counter() - start, self.workers.pids, self.spec.backend, ", ".join(self.spec.devices))
        return self.workers

    def release(self, graceful: bool = True) -> None:
        """Stop the workers now (the next call starts new ones)."""
        workers, self.workers = self.workers, None
        if self._finalizer is not None:
            self._finalizer.detach()
            self._finalizer = None
        if workers is not None:
            workers.close(graceful=graceful)

    def _failure(self, error: BaseException) -> ParallelError:
        workers = self.workers
        dead = workers.wait_for_death(2.0) if workers is not None else []
        if dead:
            text = f"Fastlane Multi-GPU: {workers.describe(dead)} during a model call"
        else:
            text = (f"Fastlane Multi-GPU: a collective between the {self.spec.world} ranks failed or timed out "
                    f"(timeout {self.spec.timeout_s:.0f} s): {error}")
        self.release(graceful=False)
        return ParallelError(text + ". The workers were stopped; queue the prompt again to start new ones.")

    # ---- checks ---------------------------------------------------------------------------------------------
    def check_splittable(self, family: str, model: torch.nn.Module, options: dict, control: Any = None,
                         attn_mask: Any = None, extra: dict | None = None) -> None:
        """Raise a clear error for what a sharded call cannot reproduce on the workers."""
        if control is not None:
            raise ParallelError("Fastlane Multi-GPU cannot split a call with a ControlNet (it adds to every block's "
                                "full token sequence); remove the ControlNet or the Multi-GPU node")
        if attn_mask is not None:
            raise ParallelError("Fastlane Multi-GPU cannot split a call with an attention mask")
        unknown = sorted(k for k, v in (extra or {}).items() if v is not None)
        if unknown:
            raise ParallelError(f"Fastlane Multi-GPU cannot split a call with {unknown} yet (reference latents, "
                                "audio or other extra inputs)")
        granularity = getattr(options.get("fastlane_cache"), "granularity", "output")
        refusal = granularity_refusal(family, granularity)
        if refusal:
            raise ParallelError(refusal)
        # a patch marked split-safe only removes work whatever tokens a rank holds (the cache's RoPE gate)
        patches = {k: kept for k, v in options.get("patches", {}).items()
                   if (kept := [p for p in v if not getattr(p, SPLIT_SAFE_FLAG, False)])}
        # a block cache's own block patches are replaced, per call, by flux.py's sharded version of them
        replaced = options.get("patches_replace", {}).get("dit", {}) if granularity == "output" else {}
        if patches or replaced:
            raise ParallelError(f"Fastlane Multi-GPU cannot split a call with model patches ({sorted(patches)}"
                                f"{', dit block replacements' if replaced else ''}): they would run on rank 0's "
                                "tokens only")
        refusal = wrapper_refusal(options.get("wrappers", {}))
        if refusal:
            raise ParallelError(refusal)

    def mark_reloaded(self) -> None:
        """ComfyUI (re)loaded rank 0's model or starts a sampling run: check the load and the weights at the next
        call."""
        self._reloaded = True

    @staticmethod
    def _check_fully_loaded(model: torch.nn.Module) -> None:
        for module in model.modules():
            if getattr(module, "weight_function", None) or getattr(module, "bias_function", None):
                raise ParallelError("Fastlane Multi-GPU needs rank 0's model fully loaded (ComfyUI loaded it in "
                                    "lowvram mode, so patched weights exist only on the fly); free VRAM or use "
                                    "--highvram")

    # ---- one call -------------------------------------------------------------------------------------------
    def _weights_key(self, model: torch.nn.Module, patches_uuid: Any) -> tuple:
        """What identifies the weights the workers hold: ComfyUI's weight-patch uuid (a LoRA / patch change), and
        each tensor's storage and, where torch tracks it, in-place version (inference tensors, as ComfyUI loads
        them under inference_mode, have none)."""
        state = model.state_dict(keep_vars=True)
        return patches_uuid, tuple((name, t.data_ptr(), -1 if t.is_inference() else t._version, t.dtype)
                                   for name, t in state.items())

    def _send_weights(self, workers: Workers, comm, model: torch.nn.Module, key: tuple) -> None:
        start = time.perf_counter()
        state = model.state_dict()
        names, tensors = list(state), list(state.values())
        workers.post({"op": "weights", "build": self.build, "names": names,
                      "manifest": transfer.manifest_of(tensors)})
        transfer.send(comm, tensors)
        self._sent_key = key
        self.weight_sends += 1
        size = sum(t.numel() * t.element_size() for t in tensors)
        log.info("Fastlane Multi-GPU: weights sent to the workers (%.1f MB, %.2f s)", size / 2**20,
                 time.perf_counter() - start)

    def forward(self, family: str, model: torch.nn.Module, base_model: Any, inputs: list, options: dict
                ) -> torch.Tensor:
        """One ``forward_orig`` call of ``family`` ("flux", "wan") on ``spec.world`` ranks: ``inputs`` are its
        tensors (None allowed), the same list the family's ``run`` takes; returns rank 0's (full) output."""
        if self._reloaded:
            self._check_fully_loaded(model)
        with self._lock:
            try:
                workers = self._start()
                if workers.dead():
                    raise ParallelError("dead worker")
                from .comm import Comm

                comm = Comm(workers.group, 0, self.spec.world, self._comm_device(), on_error=self._failure)
                if self._reloaded or self._sent_key is None:  # new workers hold no weights yet
                    key = self._weights_key(model, getattr(base_model, "current_weight_patches_uuid", None))
                    if key != self._sent_key:
                        self._send_weights(workers, comm, model, key)
                    self._reloaded = False
                cache = FAMILIES[family].cache_info(options)
                workers.post({"op": "call", "family": family, "mode": self.mode, "cache": cache,
                              "manifest": transfer.manifest_of(inputs)})
                transfer.send(comm, inputs)
                out = FAMILIES[family].run(model, comm, self.mode, inputs, options, cache)
                self.calls += 1
                return out.to(inputs[0].device)
            except ParallelError as e:
                if self.workers is not None:  # not yet turned into a clear message by _failure
                    raise self._failure(e) from e
                raise
            except BaseException:
                self.release(graceful=False)  # a worker may be waiting inside a collective: don't leave it there
                raise

    def _comm_device(self) -> torch.device:
        return torch.device(self.spec.devices[0]) if self.spec.backend == "nccl" else torch.device("cpu")


class ShardedForward:
    """The object patch for FLUX's ``diffusion_model.forward_orig``: its call signature, run by the session."""

    family = "flux"

    def __init__(self, session: ParallelSession, model: torch.nn.Module, base_model: Any) -> None:
        self.session, self.model, self.base_model = session, model, base_model

    def __call__(self, img, img_ids, txt, txt_ids, timesteps, y, guidance=None, control=None,
                 transformer_options={}, attn_mask=None):  # noqa: B006 (ComfyUI's signature)
        options = {} if transformer_options is None else transformer_options
        self.session.check_splittable("flux", self.model, options, control=control, attn_mask=attn_mask)
        return self.session.forward("flux", self.model, self.base_model,
                                    [img, img_ids, txt, txt_ids, timesteps, y, guidance], options)


class WanShardedForward(ShardedForward):
    """The object patch for Wan's ``diffusion_model.forward_orig``."""

    family = "wan"

    def __call__(self, x, t, context, clip_fea=None, freqs=None, transformer_options={}, **kwargs):  # noqa: B006
        options = {} if transformer_options is None else transformer_options
        self.session.check_splittable("wan", self.model, options, control=kwargs.pop("control", None), extra=kwargs)
        return self.session.forward("wan", self.model, self.base_model, [x, t, context, clip_fea, freqs], options)
