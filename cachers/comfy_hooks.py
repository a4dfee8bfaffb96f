"""Attaching a StepCache to a ComfyUI ModelPatcher: the wrappers every model family shares.

- OUTER_SAMPLE: each sampling run starts from a fresh StepCache (EasyCache's pattern), so a second queue run,
  another KSampler on the same MODEL, or a refiner stage never sees the previous run's features.
- SAMPLER_SAMPLE: follow the sampler's steps where they tell each call's sigma (``sigma_source.py``: no GPU sync).
- DIFFUSION_MODEL: per call, find the step from the sigmas, let the policy decide, and either run the model
  (adapters capture features through their own patches) or serve the call from the cache. An adapter with a
  ``run_call(cache, call, executor, args, kwargs)`` method runs the call itself (SDXL's DeepCache runs only the
  shallow UNet blocks on cached calls); without one the executor runs and the adapter's patches do the work.
"""
from __future__ import annotations

import logging
from typing import Any

import torch

import comfy.model_patcher
import comfy.patcher_extension
from comfy.patcher_extension import WrappersMP

from .. import host_memory
from . import sigma_source
from ..compilers import conds
from ..compilers.call_wrappers import transformer_options_of
from .session import BLEND_SUFFIX, Call, StepCache

HOLDER_KEY = "fastlane_cache"
RECORDER_KEY = "fastlane_recorder"  # set by the benchmark node; told which calls were computed
WRAPPER_KEY = "fastlane_cache"
log = logging.getLogger("fastlane")


def current_call(transformer_options: dict) -> Call | None:
    return transformer_options.get("fastlane_call")


def _batch_key(x, transformer_options: dict) -> tuple:
    ids = tuple(str(u) for u in transformer_options.get("uuids", ())) or tuple(transformer_options.get("cond_or_uncond", ()))
    return ids, tuple(x.shape), x.dtype, str(x.device)


def make_diffusion_model_wrapper(adapter):
    def diffusion_model_wrapper(executor, *args, **kwargs):
        options = transformer_options_of(args, kwargs)
        cache: StepCache = options[HOLDER_KEY]
        x = args[0]
        adapter.check_call(cache, args, kwargs)
        call = cache.begin_call(x, options["sigmas"], options["sample_sigmas"], _batch_key(x, options),
                                adapter.features(cache.granularity) + cache.features)
        recorder = options.get(RECORDER_KEY)
        if recorder is not None:
            recorder.mark_call(computed=call.compute, label=cache.label)
        if not call.compute and cache.granularity == "output":
            out = call.forecast("out")
        else:
            options["fastlane_call"] = call
            run_call = getattr(adapter, "run_call", None)  # adapters that serve cached calls with part of the model
            try:
                out = executor(*args, **kwargs) if run_call is None else run_call(cache, call, executor, args, kwargs)
            finally:
                options.pop("fastlane_call", None)
            if call.compute and cache.features:
                call.store("out", out)
            elif cache.blend_output:
                out = torch.lerp(out, call.forecast("out").to(out.dtype), cache.blend_weight)
        cache.end_call(call, x, out)
        return out

    return diffusion_model_wrapper


def granularity_options(adapter) -> tuple[str, ...]:
    """The granularities a cache on this adapter's models may take: its own, and ``blocks+output`` where it has
    ``blocks``."""
    own = adapter.granularities
    return tuple(option for g in own for option in ((g, g + BLEND_SUFFIX) if g == "blocks" else (g,)))


def outer_sample_wrapper(executor, *args, **kwargs):
    guider = executor.class_obj
    original_options = guider.model_options
    guider.model_options = comfy.model_patcher.create_model_options_clone(original_options)
    options = guider.model_options["transformer_options"]
    cache: StepCache = options[HOLDER_KEY].fresh(_time_fn(guider.model_patcher))
    options[HOLDER_KEY] = cache
    try:
        return executor(*args, **kwargs)
    finally:
        summary = cache.summary()
        if summary["steps"]:
            log.info("Fastlane %s (%s): computed %d of %d steps %s, %d calls from cache, cache %.1f MB (%s)",
                     summary["label"], summary["policy"], len(summary["computed_steps"]), summary["steps"],
                     summary["computed_steps"], summary["forecast_calls"], summary["cache_bytes"] / 2**20,
                     summary["forecast"])
        guider.model_options = original_options


def sampler_sample_wrapper(executor, *args, **kwargs):
    """SAMPLER_SAMPLE: for a sampler whose calls' sigmas its progress tells (``sigma_source.predictable``), follow
    its steps through ComfyUI's callback, so that the cache reads no sigma back from the GPU; at the run's end check
    every prediction (one sync) and turn prediction off for this cacher if one was wrong."""
    # ComfyUI calls KSAMPLER.sample(model_wrap, sigmas, extra_args, callback, noise, ...) positionally
    extra_args = args[2] if len(args) > 3 else {}
    cache: StepCache | None = extra_args.get("model_options", {}).get("transformer_options", {}).get(HOLDER_KEY)
    if cache is None or not cache.predict_sigmas or not sigma_source.predictable(executor.class_obj):
        return executor(*args, **kwargs)
    source = cache.sigma_source = sigma_source.SigmaSource()
    callback = args[3]

    def tracking(step, *rest):
        source.step_done(step)
        return None if callback is None else callback(step, *rest)

    try:
        out = executor(*args[:3], tracking, *args[4:], **kwargs)
    finally:
        cache.sigma_source = None
    wrong = source.wrong_predictions()
    if wrong:
        log.warning("Fastlane %s: %d of %d calls were not at the sigma the sampler's progress predicted; this cacher "
                    "reads each call's sigma from now on (a GPU sync per call), and this run's steps may have been "
                    "planned on wrong step numbers", cache.label, wrong, source.predicted_calls)
        (cache.template or cache).predict_sigmas = False
    return out


def _time_fn(patcher):
    """sigma -> the model's own timestep (FLUX: sigma itself; SD: the 0..999 index), for the "time" coordinate."""
    model_sampling = patcher.get_model_object("model_sampling")
    return lambda sigma: float(model_sampling.timestep(torch.tensor([float(sigma)])).flatten()[0])


def attach(model: comfy.model_patcher.ModelPatcher, cache: StepCache, adapter: Any) -> comfy.model_patcher.ModelPatcher:
    """Return a clone of ``model`` with ``cache`` attached; ``model`` itself is left untouched."""
    if cache.granularity not in adapter.granularities or (cache.blend_output and cache.granularity != "blocks"):
        raise ValueError(f"{adapter.family} supports granularity {granularity_options(adapter)}, not '{cache.option}'")
    patched = model.clone()
    if HOLDER_KEY in patched.model_options.get("transformer_options", {}):
        raise ValueError("this MODEL already has a Fastlane cacher; use one cacher node per model chain")
    patched.model_options["transformer_options"][HOLDER_KEY] = cache
    patched.add_wrapper_with_key(WrappersMP.OUTER_SAMPLE, WRAPPER_KEY, outer_sample_wrapper)
    patched.add_wrapper_with_key(WrappersMP.SAMPLER_SAMPLE, WRAPPER_KEY, sampler_sample_wrapper)
    patched.add_wrapper_with_key(WrappersMP.DIFFUSION_MODEL, WRAPPER_KEY, make_diffusion_model_wrapper(adapter))
    adapter.install(patched, cache)
    host_memory.attach(patched)
    conds.attach(patched)  # a cached step is mostly host work: no stream sync from conditioning copies
    return patched
