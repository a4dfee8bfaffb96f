"""torch.compile for a ComfyUI diffusion model, installed for the duration of each model call only.

Mechanism: an APPLY_MODEL wrapper, for the length of one call, gives the repeated blocks (``regional``) or the
diffusion model (``whole``) an instance attribute that routes ``forward`` / ``_forward`` to a compiled function of
the block's class, and removes it afterwards. Nothing is copied and the module tree is never changed, so:

- the received MODEL and every other branch sharing the torch model run eagerly as before;
- ComfyUI's weight patching (LoRA), its backups and lowvram casting see the modules they expect, and the compiled
  code reads the weights that are current at each call (parameters are graph inputs, not constants);
- module hooks, block patches (``patches_replace``) and DIFFUSION_MODEL wrappers (Fastlane cachers) keep running
  eagerly around the compiled blocks: a cacher's per-step decisions never enter a graph.
"""
from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass, field
from typing import Any, Callable

import torch

from ..faults import FREE_VRAM, first_line, is_oom, run_without
from . import allocator, families, regions
from .call_wrappers import COMPILE_FN_KEY, COMPILE_KEY, CUDA_GRAPH_KEY, RunNotes, install_call_wrappers, wrapper_owner
from .progress import FirstCompileProgress

KEY = COMPILE_KEY
MODES = ("default", "max-autotune-no-cudagraphs", "max-autotune", "reduce-overhead")
BACKENDS = ("inductor", "aot_eager", "eager")
DYNAMIC = ("auto", "true", "false")
SCOPES = ("regional", "whole")
RECOMPILE_LIMIT = 64  # per code object; a block class gets one graph per distinct static input shape
log = logging.getLogger("fastlane")


@dataclass(frozen=True)
class CompileSpec:
    scope: str = "regional"
    backend: str = "inductor"
    mode: str = "default"
    dynamic: str = "auto"
    fullgraph: bool = False

    def validate(self) -> None:
        for value, allowed, what in ((self.scope, SCOPES, "scope"), (self.backend, BACKENDS, "backend"),
                                     (self.mode, MODES, "mode"), (self.dynamic, DYNAMIC, "dynamic")):
            if value not in allowed:
                raise ValueError(f"compile {what} must be one of {allowed}, not '{value}'")
        if self.mode != "default" and self.backend != "inductor":
            raise ValueError(f"mode '{self.mode}' is an inductor setting: use backend 'inductor', or mode 'default' "
                             f"with backend '{self.backend}'")

    @property
    def marks_text(self) -> bool:
        return self.dynamic == "auto"

    def torch_kwargs(self) -> dict[str, Any]:
        kwargs: dict[str, Any] = {"backend": self.backend, "fullgraph": self.fullgraph,
                                  "dynamic": self.dynamic == "true"}
        if self.mode != "default":
            kwargs["mode"] = self.mode
        return kwargs

    def label(self) -> str:
        mode = "" if self.mode == "default" else f"/{self.mode}"
        return f"{self.scope}/{self.backend}{mode}/dynamic={self.dynamic}"


@dataclass
class RunStats(RunNotes):
    calls: int = 0
    compiled_calls: int = 0
    graphs: int = 0
    compile_s: float = 0.0
    paths: dict[str, int] = field(default_factory=dict)  # "regional (57 blocks)", "whole", ... -> calls
    eager_blocks: int = 0


def _compile_seconds() -> float:
    from torch._dynamo.utils import compilation_time_metrics

    return float(sum(compilation_time_metrics.get("_compile.compile_inner", ())))


def _graph_count() -> int:
    from torch._dynamo.utils import counters

    return int(counters["stats"]["unique_graphs"])


def raise_recompile_limit(limit: int = RECOMPILE_LIMIT) -> None:
    config = torch._dynamo.config
    for name in ("recompile_limit", "cache_size_limit"):  # renamed in torch 2.6; both exist for a while
        if hasattr(config, name) and getattr(config, name) < limit:
            setattr(config, name, limit)


def set_cache_dir(path: str) -> str:
    """Point inductor's on-disk caches (FX graph, AOTAutograd, Triton kernels) at ``path`` so that a restarted
    ComfyUI finds them. Process-wide, as torch reads it from the environment."""
    path = os.path.abspath(os.path.expanduser(path))
    os.makedirs(path, exist_ok=True)
    os.environ["TORCHINDUCTOR_CACHE_DIR"] = path
    os.environ.setdefault("TORCHINDUCTOR_FX_GRAPH_CACHE", "1")
    os.environ.setdefault("TORCHINDUCTOR_AUTOGRAD_CACHE", "1")
    return path


def _sdpa_attention(func, *args, **kwargs):
    import comfy.ldm.modules.attention as attention

    return attention.attention_pytorch(*args, **kwargs)


def _graph_breaking_attention() -> str | None:
    """ComfyUI's sub-quadratic and split attentions (its CPU/low-memory defaults) read the free memory from the OS at
    every call: a graph break in every block. Compiled calls use PyTorch SDPA instead."""
    import comfy.ldm.modules.attention as attention

    current = attention.optimized_attention
    for name in ("attention_sub_quad", "attention_split"):
        if current is getattr(attention, name, None):
            return name
    return None


def _transformer_options(args: tuple, kwargs: dict) -> dict:
    options = kwargs.get("transformer_options")
    if options is None:  # BaseModel._apply_model(x, t, c_concat, c_crossattn, control, transformer_options, ...)
        options = args[5] if len(args) > 5 and isinstance(args[5], dict) else {}
    return options


class Compiler:
    """One per compile node output; lives in the wrappers' closures, so a MODEL's clones share it (and its compiled
    functions) without copying."""

    def __init__(self, spec: CompileSpec, family: regions.Family | None) -> None:
        spec.validate()
        self.spec = spec
        self.family = family
        self._compiled: dict[Any, Callable] = {}
        self._regions: dict[int, list[torch.nn.Module]] = {}
        self._eligible: dict[tuple, list[torch.nn.Module]] = {}
        self._prepared: set[int] = set()
        self._requested: set[tuple[type, str]] = set()  # the compiled functions the current call runs
        self.progress = FirstCompileProgress()
        self.run: RunStats | None = None
        self.runs: list[RunStats] = []
        self._eager_after_oom = False  # the rest of this sampling run runs uncompiled (an OOM compiling or running)

    # ---- compiled functions -----------------------------------------------------------------------------------

    def _compiled_fn(self, cls: type, attr: str) -> Callable:
        fn = self._compiled.get((cls, attr))
        if fn is None:
            fn = self._compiled[(cls, attr)] = torch.compile(getattr(cls, attr), **self.spec.torch_kwargs())
        self._requested.add((cls, attr))
        return self.progress.first_call((cls, attr), fn)

    def _region_forward(self, module: torch.nn.Module) -> Callable:
        kind = self.family.kind_of(module)
        compiled = self._compiled_fn(kind.cls, "forward")
        marks = self.spec.marks_text

        def forward(*args, **kwargs):
            if kind.options is not None and "transformer_options" in kwargs:
                kwargs["transformer_options"] = kind.options(kwargs["transformer_options"])
            if kind.layout is not None:
                args, kwargs = kind.layout(args, kwargs)
            if marks:
                for tensor, dim in kind.text_dims(args, kwargs):
                    torch._dynamo.maybe_mark_dynamic(tensor, dim)
            return compiled(module, *args, **kwargs)

        return forward

    def _whole_forward(self, dm: torch.nn.Module) -> tuple[str, Callable]:
        attr = "_forward" if hasattr(type(dm), "_forward") else "forward"
        compiled = self._compiled_fn(type(dm), attr)
        marks = self.spec.marks_text

        def forward(*args, **kwargs):
            if marks:
                for tensor, dim in regions.whole_text_dims(args, kwargs):
                    torch._dynamo.maybe_mark_dynamic(tensor, dim)
                options = kwargs.get("transformer_options") or next((a for a in reversed(args) if isinstance(a, dict)), {})
                sigmas = options.get("sample_sigmas")
                if isinstance(sigmas, torch.Tensor):  # dynamo guards on it; the step count must not recompile
                    torch._dynamo.maybe_mark_dynamic(sigmas, 0)
            return compiled(dm, *args, **kwargs)

        return attr, forward

    # ---- which modules run compiled in this call ----------------------------------------------------------------

    def _prepare_params(self, dm: torch.nn.Module) -> None:
        # ComfyUI's weight patching installs patched weights with requires_grad=False; the loaded ones have True.
        # Dynamo guards on the flag, so without this the first LoRA after compiling would recompile every graph.
        if id(dm) not in self._prepared:
            for p in dm.parameters():
                if p.requires_grad:
                    p.requires_grad_(False)
            self._prepared.add(id(dm))

    def _eligible_regions(self, base, dm: torch.nn.Module) -> list[torch.nn.Module]:
        all_regions = self._regions.get(id(dm))
        if all_regions is None:
            all_regions = self._regions[id(dm)] = self.family.regions(dm)
        if not getattr(base, "model_lowvram", False):
            return all_regions
        key = (id(dm), getattr(base, "lowvram_patch_counter", 0), getattr(base, "model_loaded_weight_memory", 0))
        eligible = self._eligible.get(key)
        if eligible is None:
            device = getattr(base, "device", None)
            eligible = self._eligible[key] = [r for r in all_regions if _fully_loaded(r, device)]
        return eligible

    @staticmethod
    def _free(modules: list[torch.nn.Module]) -> list[torch.nn.Module]:
        # a module some other code already gave an instance ``forward`` keeps it (and runs uncompiled)
        return [m for m in modules if "forward" not in m.__dict__]

    def _install(self, base, options: dict) -> tuple[Callable[[], None], str, int]:
        dm = base.diffusion_model
        run = self.run
        lowvram = bool(getattr(base, "model_lowvram", False))
        whole = self.spec.scope == "whole"
        if whole and self.family is not None:
            if self.family.block_patched(options):
                whole = False
                if run:
                    run.note("scope 'whole': this MODEL has block patches (a Fastlane block cache or another "
                             "patch node) that decide per step which blocks run; compiled per block instead")
            elif lowvram:
                whole = False
                if run:
                    run.note("scope 'whole': the model is partially loaded (lowvram); compiled per block instead")
        if whole or self.family is None:
            attr, forward = self._whole_forward(dm)
            setattr(dm, attr, forward)  # an instance attribute: shadows the class's method for this call only
            return (lambda: delattr(dm, attr)), "whole", 0
        all_count = len(self._regions.get(id(dm)) or self.family.regions(dm))
        eligible = self._free(self._eligible_regions(base, dm))
        for module in eligible:
            module.forward = self._region_forward(module)

        def remove() -> None:
            for module in eligible:
                module.__dict__.pop("forward", None)

        eager = all_count - len(eligible)
        if eager and run:
            run.note(f"{eager} of {all_count} blocks run uncompiled: partially loaded (lowvram: weights cast or "
                     "patched on the fly; free VRAM or load fewer models to compile them all), or their forward is "
                     "already replaced by another node")
        return remove, f"regional ({len(eligible)} blocks)", eager

    # ---- ComfyUI wrappers -----------------------------------------------------------------------------------------

    def apply_model_wrapper(self, executor, *args, **kwargs):
        if self._eager_after_oom:
            return executor(*args, **kwargs)
        failure = self._compiled_call(executor, args, kwargs)
        if not isinstance(failure, _OomFailure):
            return failure
        return self._run_uncompiled_after_oom(executor, args, kwargs, failure.text)

    def _run_uncompiled_after_oom(self, executor, args: tuple, kwargs: dict, what: str):
        """An OOM compiling or in a compiled call falls back to the uncompiled call (a warning, the run's note)
        instead of failing the prompt: a sampler may be minutes into its run, compiling (inductor's compile workers,
        autotuning, a new graph's first run) needs memory the eager model does not, and the eager call is what the
        MODEL computes anyway. The rest of this sampling run stays uncompiled (no new attempt at every step); the
        next run compiles again. If the uncompiled call runs out too, the model does not fit at this size: that is
        raised as a FastlaneOutOfMemory saying so."""
        self._eager_after_oom = True
        message = (f"the GPU ran out of memory compiling or running the compiled model ({what}): this sampling run "
                   f"continues uncompiled, the next run compiles again. To compile: a smaller resolution or batch, "
                   f"{FREE_VRAM}, mode 'default' instead of an autotuning mode; or bypass Fastlane Compile")
        if self.run:
            self.run.note(message)
        log.warning("Fastlane Compile: %s", message)
        return run_without("Fastlane Compile", f"compiling the model ({what})", "uncompiled", executor, *args,
                           **kwargs)

    def _compiled_call(self, executor, args: tuple, kwargs: dict):
        """The compiled call's result, or an _OomFailure if it ran out of memory (compiled functions removed)."""
        base = executor.class_obj
        options = _transformer_options(args, kwargs)
        self._prepare_params(base.diffusion_model)
        override = None
        if "optimized_attention_override" not in options:
            override = _graph_breaking_attention()
            if override is not None:
                options["optimized_attention_override"] = _sdpa_attention
                if self.run:
                    self.run.note(f"ComfyUI's {override} reads free memory at every call (a graph break per "
                                  "block): compiled calls use PyTorch SDPA attention")
        if self.spec.mode == "reduce-overhead":
            torch.compiler.cudagraph_mark_step_begin()
        self._requested = set()
        remove, path, eager = self._install(base, options)
        self.progress.expect(self._requested)
        if path == "whole":  # a step cache that runs part of the model itself (SDXL DeepCache) compiles that too
            options[COMPILE_FN_KEY] = self._compiled_fn
        graphs, seconds = _graph_count(), _compile_seconds()
        try:
            return executor(*args, **kwargs)
        except Exception as e:
            if not is_oom(e):
                raise
            return _OomFailure(first_line(e))  # only text: the traceback's frames hold the failed call's memory
        finally:
            remove()
            options.pop(COMPILE_FN_KEY, None)
            if override is not None:
                options.pop("optimized_attention_override", None)
            self._account(path, eager, _graph_count() - graphs, _compile_seconds() - seconds)

    def _account(self, path: str, eager: int, graphs: int, seconds: float) -> None:
        run = self.run
        if run is None:
            return
        run.calls += 1
        run.paths[path] = run.paths.get(path, 0) + 1
        run.eager_blocks = max(run.eager_blocks, eager)
        if graphs > 0:
            run.compiled_calls += 1
            run.graphs += graphs
            run.compile_s += seconds

    def outer_sample_wrapper(self, executor, *args, **kwargs):
        self.run = RunStats()
        self._eager_after_oom = False
        started = time.perf_counter()
        try:
            return executor(*args, **kwargs)
        finally:
            run, self.run = self.run, None
            self.runs.append(run)
            self.runs = self.runs[-16:]
            self._log(run, time.perf_counter() - started)

    def _log(self, run: RunStats, wall_s: float) -> None:
        paths = ", ".join(f"{p} x{n}" for p, n in run.paths.items()) or "no model calls"
        if run.graphs:
            what = (f"compiled {run.graphs} graph(s) in {run.compile_s:.1f} s during {run.compiled_calls} of "
                    f"{run.calls} calls (cold start or a new shape)")
        else:
            what = f"no compilation in {run.calls} calls"
        log.info("Fastlane compile [%s]: %s; %s; run took %.1f s", self.spec.label(), what, paths, wall_s)
        for note in run.notes:
            log.info("Fastlane compile: %s", note)

    def report(self) -> dict[str, Any]:
        last = self.runs[-1] if self.runs else None
        return {"spec": self.spec.label(), "family": self.family.name if self.family else None,
                "runs": len(self.runs),
                "last_run": None if last is None else {
                    "calls": last.calls, "graphs": last.graphs, "compile_s": round(last.compile_s, 3),
                    "compiled_calls": last.compiled_calls, "paths": dict(last.paths),
                    "eager_blocks": last.eager_blocks, "notes": list(last.notes)}}


@dataclass(frozen=True)
class _OomFailure:
    text: str



def _fully_loaded(region: torch.nn.Module, device) -> bool:
    """A block is compiled only if ComfyUI loaded it whole: no weight cast or patched on the fly (lowvram)."""
    for m in region.modules():
        if hasattr(m, "prev_comfy_cast_weights") or getattr(m, "weight_function", None) \
                or getattr(m, "bias_function", None):
            return False
    if device is not None:
        device = torch.device(device)
        return all(p.device == device for p in region.parameters(recurse=True))
    return True


def attach(model, spec: CompileSpec):
    """A clone of ``model`` whose diffusion model runs compiled; ``model`` itself is left untouched."""
    from comfy.patcher_extension import WrappersMP

    spec.validate()
    dm = model.get_model_object("diffusion_model")
    family = families.family_of(dm)
    if spec.scope == "regional" and family is None:
        raise ValueError(f"Fastlane Compile 'regional' knows the blocks of "
                         f"{', '.join(f.name for f in families.families())}; this MODEL is {type(dm).__name__}, "
                         "whose blocks it does not know: use scope 'whole' (compiles any model)")
    if wrapper_owner(model, CUDA_GRAPH_KEY) is not None:  # Fastlane CUDA Graph upstream
        check_stacks_with_cuda_graph(spec)
    raise_recompile_limit()
    compiler = Compiler(spec, family)
    patched = model.clone()
    if patched.get_wrappers(WrappersMP.APPLY_MODEL, "torch.compile"):  # ComfyUI's TorchCompileModel upstream
        patched.remove_wrappers_with_key(WrappersMP.APPLY_MODEL, "torch.compile")
        patched.model_options.pop("torch_compile_kwargs", None)
        log.info("Fastlane Compile replaces the TorchCompileModel compile of the MODEL it received")
    install_call_wrappers(patched, KEY, compiler)
    return patched, compiler


def check_stacks_with_cuda_graph(spec: CompileSpec) -> None:
    """Fastlane Compile settings that already record graphs, or compile the whole model, do not stack with Fastlane
    CUDA Graph (either order): ValueError saying which to use."""
    if spec.mode in allocator.GRAPH_MODES:
        raise ValueError(f"Fastlane Compile's mode '{spec.mode}' records CUDA graphs itself: use one of the two "
                         "(mode 'default' with this node, or that mode without it)")
    if spec.scope == "whole":
        raise ValueError("Fastlane Compile with scope 'whole' and this node: use Compile's mode 'reduce-overhead' "
                         "for a whole-model graph, or scope 'regional' with this node")


def compiler_of(model) -> Compiler | None:
    """The Compiler attached to a MODEL by the compile node (for reports and the benchmark), or None."""
    return wrapper_owner(model, KEY, Compiler)

