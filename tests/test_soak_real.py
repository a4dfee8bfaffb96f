"""The soak's ``--real`` mode (benchmarks/soak_real.py, benchmarks/oom_check.py; issue 21) on the CPU, without the
22 GB model files: the prompts it builds from the shipped FLUX/SDXL workflows pass ComfyUI's own validation except
for the model files this box lacks (as tests/test_workflows.py checks the shipped files themselves), each malformed
variant fails with an error of its own, the server log parser and the recompile check classify compiles by graph and
shape, the summary reports repeats within a tolerance, oom_check.py says it needs CUDA (and its plumbing runs on a
tiny FLUX), and the GPU server's launcher (stand-ins, no frontend) starts a real ComfyUI that answers the soak's
requests. The GPU run itself: benchmarks/device_soak.sh."""
from __future__ import annotations

import random
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

PACK_DIR = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(PACK_DIR / "benchmarks"))
import soak  # noqa: E402
import soak_real  # noqa: E402

MODEL_FILE_INPUTS = {"unet_name", "clip_name1", "clip_name2", "vae_name", "ckpt_name", "lora_name"}
PROMPTS = 40


def model_file_errors_only(node_errors: dict) -> bool:
    errors = [e for node in node_errors.values() for e in node["errors"]]
    return bool(errors) and all(e["type"] == "value_not_in_list"
                                and e["extra_info"]["input_name"] in MODEL_FILE_INPUTS for e in errors)


@pytest.fixture(scope="module")
def mix_and_specs():
    mix = soak_real.RealMix()
    rng = random.Random(21)
    specs = [mix.random_spec(rng, long=i % 10 == 9) for i in range(PROMPTS)]
    return mix, specs, rng


def test_real_prompts_pass_comfyuis_validation_but_for_the_missing_model_files(graph, mix_and_specs):
    mix, specs, rng = mix_and_specs
    for spec in specs:
        prompt = mix.build(spec, rng)
        valid, error, _, node_errors = graph.validate(prompt)
        assert not valid and error["type"] == "prompt_outputs_failed_validation", (spec, error)
        assert model_file_errors_only(node_errors), (mix.describe(spec), node_errors)
        classes = Counter(n["class_type"] for n in prompt.values())
        assert classes["KSampler"] == 1 and classes["SaveImage"] == 1
        assert ("FastlaneCompile" in classes) == spec["compile"]
        assert ("LoraLoaderModelOnly" in classes) == (spec["lora"] is not None)
        assert ("FastlaneQuantize" in classes) == (spec["workflow"] == "flux-fastest")
        latent = next(n for n in prompt.values() if n["class_type"].startswith("Empty"))["inputs"]
        assert latent["width"] == spec["size"] and latent["batch_size"] == spec["batch"]
        assert spec["size"] <= mix.max_size
        if spec["compile"]:  # compiled prompts only at the shapes they may compile
            assert (spec["size"], spec["batch"]) in mix.compile_shapes
    # the mix covers what it claims to
    assert {s["workflow"] for s in specs} == set(soak_real.WORKFLOW_NAMES)
    assert {s["compile"] for s in specs} == {True, False}
    assert {s["size"] for s in specs} == set(soak_real.SIZES) and {s["batch"] for s in specs} == {1, 2}
    assert len({s["cacher"] for s in specs}) >= 5 and len({s["sampler"] for s in specs}) >= 3
    assert {s["lora"] is None for s in specs} == {True, False}
    low, high = mix.steps_range
    assert all(low <= s["steps"] <= high for i, s in enumerate(specs) if i % 10 != 9)


def test_family_weights_set_each_familys_share_of_prompts():
    assert soak_real.parse_families("flux,sdxl") == (("flux", "sdxl"), None)
    families, weights = soak_real.parse_families("flux:1,sdxl:3")
    assert families == ("flux", "sdxl") and weights == {"flux": 1.0, "sdxl": 3.0}
    for bad in ("flux:0,sdxl", "wan,sdxl"):
        with pytest.raises(ValueError, match="family"):
            soak_real.parse_families(bad)
    rng = random.Random(3)
    weighted = soak_real.RealMix(families=families, family_weights=weights)
    share = sum(weighted.random_spec(rng)["family"] == "flux" for _ in range(2000)) / 2000
    assert 0.21 < share < 0.29  # a quarter
    plain = soak_real.RealMix()
    share = sum(plain.random_spec(rng)["family"] == "flux" for _ in range(2000)) / 2000
    flux_workflows = sum(w.startswith("flux") for w in plain.workflows) / len(plain.workflows)
    assert abs(share - flux_workflows) < 0.04  # unweighted: every workflow alike


def test_mix_options_bound_sizes_steps_and_compiled_shapes():
    mix = soak_real.RealMix(max_size=512, steps_range=(3, 4), compile_shapes=soak_real.parse_shapes("512x1,768x2"),
                            families=("sdxl",))
    rng = random.Random(0)
    specs = [mix.random_spec(rng) for _ in range(60)]
    assert {s["family"] for s in specs} == {"sdxl"} and {s["size"] for s in specs} == {512}
    assert {s["steps"] for s in specs} <= {3, 4}
    assert mix.compile_shapes == [(512, 1)]


def test_malformed_real_prompts_each_fail_with_their_own_error(graph, mix_and_specs):
    mix, specs, rng = mix_and_specs
    for i, kind in enumerate(mix.bad_kinds):
        spec = specs[i]
        bad = mix.malform(mix.build(spec, rng), kind)
        valid, error, _, node_errors = graph.validate(bad)
        assert not valid, kind
        if kind == "unknown_node":
            assert error["type"] == "invalid_prompt"
            continue
        errors = [e for node in node_errors.values() for e in node["errors"]]
        if kind == "missing_model_file":  # on a server with the files, the only error
            assert "no-such-model.safetensors" in {e["extra_info"].get("received_value") for e in errors}
        else:  # an error besides the missing model files, on the input the kind breaks
            assert not model_file_errors_only(node_errors), (kind, node_errors)
            own = [e for e in errors if e["extra_info"].get("input_name") not in MODEL_FILE_INPUTS]
            assert own, (kind, errors)
            if kind == "lora_strength_out_of_range":
                assert {e["type"] for e in own} == {"value_bigger_than_max"}


LOG = """got prompt
INFO: Fastlane compile [regional/inductor/dynamic=auto]: compiled 2 graph(s) in 23.4 s during 1 of 12 calls (cold start or a new shape); regional (57 blocks) x12; run took 25.3 s
Fastlane CUDA graph: recorded 2 graph(s) in 0.15 s (GPU memory torch reserves: -2486 MiB across the recordings), 10 of 12 calls replayed; run took 44.0 s
WARNING: Fastlane compile: the GPU ran out of memory in a compiled call (CUDA out of memory. Tried ...)
Prompt executed in 30.1 seconds
"""


def test_log_parser_and_the_recompile_check():
    parsed = soak_real.parse_log(LOG)
    assert parsed["graphs_compiled"] == 2 and parsed["compile_s"] == 23.4 and parsed["compile_calls"] == 12
    assert parsed["cuda_graphs_recorded"] == 2 and len(parsed["oom_lines"]) == 1
    assert parsed["compile_labels"] == ["regional/inductor/dynamic=auto"]
    warm = soak_real.parse_log("Fastlane compile [regional/inductor/dynamic=auto]: no compilation in 12 calls; x")
    assert warm["compile_runs"] == 1 and warm["graphs_compiled"] == 0
    mix = soak_real.RealMix()
    base = {"family": "flux", "quantize": False, "size": 512, "batch": 1}
    records = [
        {"index": 0, "spec": base, "log": parsed},  # cold start: expected
        {"index": 1, "spec": {**base, "quantize": True}, "log": parsed},  # fp8 graphs: another key, expected
        {"index": 2, "spec": {**base, "batch": 2}, "log": parsed},  # a new shape: expected
        {"index": 3, "spec": base, "log": warm},  # warm: nothing
        {"index": 4, "spec": base, "log": parsed},  # same key and shape again: unexpected
        {"index": 5, "spec": None, "log": parsed},  # a malformed prompt: not counted
        # interrupted after its first block kind compiled: the next prompt compiles the rest, as a first compile
        {"index": 6, "spec": {**base, "size": 768}, "log": parsed, "outcome": "interrupted"},
        {"index": 7, "spec": {**base, "size": 768}, "log": parsed, "outcome": "ok"},
        {"index": 8, "spec": {**base, "size": 768}, "log": parsed, "outcome": "ok"},  # and then again: unexpected
    ]
    result = soak_real.recompiles(records, mix)
    assert [u["index"] for u in result["unexpected"]] == [4, 8]
    assert result["graphs_per_key_shape"]["flux+compile/regional/inductor/dynamic=auto @ 512x512x1"] == 4
    assert result["compile_s"] == 23.4 * 8


def test_the_soak_counts_the_packs_host_memory_trims_from_the_server_log(caplog, monkeypatch):
    """The lines host_memory.py logs (the first one carries how to turn the trim off) are what the log parser reads:
    the GPU soak says how often the trim ran, what it gave back and what it cost."""
    import logging

    from fastlane import host_memory

    monkeypatch.setattr(host_memory, "_said", False)
    with caplog.at_level(logging.INFO):
        host_memory._log({"rss_before_mb": 9000.0, "rss_after_mb": 7500.0, "seconds": 0.012})
        host_memory._log({"rss_before_mb": 8000.0, "rss_after_mb": 7900.0, "seconds": 0.003})
    parsed = soak_real.parse_log("\n".join(r.getMessage() for r in caplog.records))
    assert (parsed["trims"], parsed["trim_mb"], parsed["trim_ms"]) == (2, 1600, 15)
    records = [{"index": i, "kind": "run", "outcome": "ok", "rss_mb": 1000.0, "vram_mb": 1.0,
                "log": parsed if i == 3 else soak_real.parse_log("")} for i in range(6)]
    s = soak.summarize(records, soak.SoakConfig(prompts=6, warmup=2, max_rss_slope_mb=1000), True, 1.0,
                       soak_real.RealMix())
    assert s["host_memory_trims"] == {"trims": 2, "mb_returned": 1600, "ms": 15, "max_ms": 15}
    assert "host memory trims (host_memory.py): 2, 1600 MB returned in 15 ms" in soak.format_summary(s)


def test_summary_tells_bit_identical_repeats_from_ones_within_a_tolerance(tmp_path):
    records = [{"index": i, "kind": "run", "outcome": "ok", "rss_mb": 1000.0 + i, "vram_mb": 20000.0,
                "torch_allocated_mb": 18000.0} for i in range(12)]
    records[10].update(kind="repeat", repeat_of=1, hash="a", first_hash="a", hash_match=True, sampler_recomputed=True)
    records[11].update(kind="repeat", repeat_of=2, hash="b", first_hash="c", hash_match=False, sampler_recomputed=True,
                       pixel_diff={"max": 1, "mean": 0.01})
    floors = {"start": {"torch_allocated_mb": 0.0}, "warm": {"torch_allocated_mb": 50.0},
              "end": {"torch_allocated_mb": 60.0}}
    for tolerance, failing in ((0, True), (1, False)):
        config = soak.SoakConfig(prompts=12, warmup=2, repeat_tolerance=tolerance, vram_floors=True,
                                 warm_floor=True, max_rss_slope_mb=1000)
        s = soak.summarize(records, config, True, 10.0, soak_real.RealMix(), floors)
        assert s["repeats_bit_identical"] == 1 and len(s["repeats_differing"]) == 1
        assert bool(s["hash_mismatches"]) == failing and bool(s["failures"]) == failing, s["failures"]
        assert s["vram_floor_growth_mb"] == 10.0 and s["vram_slope_mb_per_100"] == 0.0
        text = soak.format_summary(s)
        assert "bit-identical 1" in text and "floors" in text and "#11 vs #2" in text


def test_a_differing_repeat_gets_a_follow_up_whose_pixels_name_the_cause():
    """The follow-up of a differing repeat says which of three causes it was, and the summary carries it; a repeat
    never follows the prompt ComfyUI executed last (a rejected malformed prompt does not count: it runs nothing)."""
    assert soak.follow_up_verdict("first", "second", "first") == "first"
    assert soak.follow_up_verdict("first", "second", "second") == "repeat"
    assert soak.follow_up_verdict("first", "second", "third") == "neither"
    executed = [{"kind": "run", "key": "a"}, {"kind": "repeat", "key": "b"}, {"kind": "bad", "key": "c"}]
    assert soak.last_executed_key(executed) == "b" and soak.last_executed_key([]) is None

    records = [{"index": i, "kind": "run", "outcome": "ok", "rss_mb": 1000.0, "vram_mb": 20000.0} for i in range(14)]
    records[11].update(kind="repeat", repeat_of=2, hash="b", first_hash="c", hash_match=False, sampler_recomputed=True,
                       pixel_diff={"max": 9, "mean": 0.6})
    records[13].update(kind="repeat", repeat_of=2, follow_up_of=11, differing_hash="b", follow_up="repeat", hash="b",
                       first_hash="c", hash_match=False, sampler_recomputed=True, pixel_diff={"max": 9, "mean": 0.6})
    s = soak.summarize(records, soak.SoakConfig(prompts=14, warmup=2, max_rss_slope_mb=1000), True, 1.0,
                       soak_real.RealMix())
    assert s["follow_ups"] == [{"index": 13, "follow_up_of": 11, "gives": "repeat"}]
    assert s["repeats_differing"][0]["follow_up"] == {"index": 13, "gives": "repeat"}
    assert [m["index"] for m in s["hash_mismatches"]] == [11, 13]
    assert "#11 vs #2: {'max': 9, 'mean': 0.6} (follow-up #13: the differing repeat's pixels again)" in \
        soak.format_summary(s)


def test_repeats_are_split_by_whether_a_model_switch_preceded_them():
    """s14-2 and s17-1 on the H100: SDXL repeats differed exactly where the first run or the repeat came straight
    after a FLUX prompt. The summary counts repeats with and without a switch before them (a rejected malformed
    prompt in between runs nothing and does not count as a switch) and marks each differing one."""
    families = ["sdxl", "flux", "sdxl", "sdxl", "sdxl", "flux", "bad", "sdxl", "sdxl", "sdxl"]
    records = [{"index": i, "kind": "bad" if f == "bad" else "run", "outcome": "rejected" if f == "bad" else "ok",
                "rss_mb": 1000.0, "vram_mb": 20000.0, **({} if f == "bad" else {"spec": {"family": f}})}
               for i, f in enumerate(families)]
    assert [soak.after_model_switch(records, i) for i in range(10)] == \
        [False, True, True, False, False, True, False, True, False, False]
    records[4].update(kind="repeat", repeat_of=2, hash="b", first_hash="a", hash_match=False,
                      pixel_diff={"max": 7, "mean": 0.7})  # its first run (#2) followed FLUX
    records[8].update(kind="repeat", repeat_of=3, hash="c", first_hash="c", hash_match=True)
    records[9].update(kind="repeat", repeat_of=7, hash="d", first_hash="d", hash_match=True)  # #7 followed #5 (FLUX)
    s = soak.summarize(records, soak.SoakConfig(prompts=10, warmup=2, max_rss_slope_mb=1000), True, 1.0,
                       soak_real.RealMix())
    assert s["repeats_by_model_switch"] == {"after_model_switch": {"checked": 2, "differing": 1},
                                            "same_family_before": {"checked": 1, "differing": 0}}
    assert s["repeats_differing"][0]["after_model_switch"] is True
    text = soak.format_summary(s)
    assert "#4 vs #2: {'max': 7, 'mean': 0.7}, after a model switch" in text
    assert "followed another model family: 1 of 2, elsewhere 0 of 1" in text


def test_host_memory_goal_is_the_steepest_family_line_of_memory_no_file_backs():
    """s14-2's pattern: RSS after an SDXL prompt and after a FLUX prompt sit on two levels (which model files were
    read last), so one line through all prompts says little. Each family gets its own line; the goal takes the
    steepest line of anonymous memory (RSS less file-backed pages), so mapped files coming and going do not count
    and a leak in one family's prompts does."""
    records = []
    for i in range(40):
        family = "flux" if i % 3 == 0 else "sdxl"
        rss = (30000.0 if family == "flux" else 9000.0) + (i % 5) * 400.0  # file pages: level by family, noise
        anon = 2000.0 + (50.0 * i if family == "sdxl" else 0.0)  # sdxl's prompts leak 50 MB each
        records.append({"index": i, "kind": "run", "outcome": "ok", "rss_mb": rss, "anon_mb": anon,
                        "spec": {"family": family}})
    s = soak.summarize(records, soak.SoakConfig(prompts=40, warmup=5, max_rss_slope_mb=200), True, 1.0,
                       soak_real.RealMix())
    assert s["memory_slopes_by_family"]["flux"]["anon"] == 0.0
    assert s["memory_slopes_by_family"]["sdxl"]["anon"] == 5000.0
    assert s["memory_goal_basis"] == "anon, sdxl prompts" and s["memory_goal_slope_mb_per_100"] == 5000.0
    assert any("host memory slope 5000.0" in f for f in s["failures"]), s["failures"]
    for r in records:  # no leak: anonymous memory flat, file-backed RSS as noisy as before
        r["anon_mb"] = 2000.0
    s = soak.summarize(records, soak.SoakConfig(prompts=40, warmup=5, max_rss_slope_mb=200), True, 1.0,
                       soak_real.RealMix())
    assert s["memory_goal_slope_mb_per_100"] == 0.0 and not s["failures"], s["failures"]
    assert "sdxl prompts (" in soak.format_summary(s)


def test_a_server_that_dies_is_reported_with_its_exit_code_and_the_end_of_its_log(tmp_path):
    """A crashed server (here: a process that kills itself with SIGSEGV after a faulthandler-style line) is gone at
    once, whatever HTTP says; the soak's record and summary carry its exit code and log tail, so a GPU run that
    loses its server says why in the files it sends back."""
    import signal
    import time
    from types import SimpleNamespace

    log_path = tmp_path / "comfyui.log"
    with open(log_path, "wb") as log:
        process = subprocess.Popen([sys.executable, "-c", "import os, signal; print('Fatal Python error: "
                                    "Segmentation fault', flush=True); os.kill(os.getpid(), signal.SIGSEGV)"],
                                   stdout=log, stderr=subprocess.STDOUT)
        process.wait(30)
    api = soak.Api("http://127.0.0.1:9", server=SimpleNamespace(process=process, log_path=log_path))
    started = time.monotonic()
    assert not api.alive() and time.monotonic() - started < 1.0  # no HTTP retries for an ended process
    death = api.death()
    assert death["exit_code"] == -signal.SIGSEGV and "Segmentation fault" in death["log_tail"][-1]
    records = [{"index": 0, "kind": "run", "outcome": "ok", "rss_mb": 1.0},
               {"index": 1, "kind": "run", "outcome": "lost", "error": "gone", "death": death}]
    s = soak.summarize(records, soak.SoakConfig(prompts=2, warmup=0), False, 1.0, soak_real.RealMix())
    assert s["server_death"]["exit_code"] == -signal.SIGSEGV
    assert any("server died (exit code -11" in f for f in s["failures"]), s["failures"]
    assert "Segmentation fault" in soak.format_summary(s)


def test_oom_check_says_it_needs_cuda_and_exits_0():
    done = subprocess.run([sys.executable, str(PACK_DIR / "benchmarks" / "oom_check.py")], capture_output=True,
                          text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "needs CUDA" in done.stdout


@pytest.mark.usefixtures("fresh_dynamo")
def test_oom_checks_plumbing_runs_on_a_tiny_flux_on_the_cpu(tmp_path, capsys):
    """--cpu-smoke: every case and the table on a tiny FLUX, no limits (so nothing runs out: "not triggered"), the
    received MODEL sampling identically after each case."""
    import argparse
    import json

    import oom_check

    args = argparse.Namespace(size=64, steps=2, out=tmp_path, cpu_smoke=True)
    assert oom_check.run_checks(args, cpu=True) == 0
    result = json.loads((tmp_path / "oom_check.json").read_text())
    assert [c["case"][:3] for c in result["cases"]] == ["(a)", "(b)", "(c)"] and result["broken"] == []
    for case in result["cases"]:
        assert case["outcome"].startswith("not triggered") and case["after_lifting"].startswith("works")
        assert case["received_model_after"] == "identical"
    assert "| case | limit GiB |" in capsys.readouterr().out


@pytest.mark.usefixtures("fresh_dynamo")
def test_oom_checks_classify_each_kind_of_outcome(tmp_path, monkeypatch, capsys):
    """The same plumbing with OOMs injected while a limit is set (as tests/test_faults.py injects them): Quantize's
    FastlaneOutOfMemory, a compiled call's OOM run eagerly with a warning, a recording's OOM run unrecorded; the
    MODELs work once the limit is lifted."""
    import argparse
    import json

    import oom_check
    import torch
    from fastlane.quantizers import patching

    oom = "CUDA out of memory. Tried to allocate 2.00 GiB"
    shim = oom_check.CpuShim
    build = patching._build

    def build_or_oom(*a, **k):
        if shim.limited:
            raise torch.OutOfMemoryError(oom)
        return build(*a, **k)

    def compile_or_oom(fn, **kwargs):
        def call(*a, **k):
            if shim.limited:
                raise torch.OutOfMemoryError(oom)
            return fn(*a, **k)
        return call

    record = oom_check._replay_by_recomputing

    def record_or_oom(fn, pool=None):
        if shim.limited:
            raise torch.OutOfMemoryError(oom)
        return record(fn, pool)

    monkeypatch.setattr(patching, "_build", build_or_oom)
    monkeypatch.setattr(torch, "compile", compile_or_oom)
    monkeypatch.setattr(oom_check, "_replay_by_recomputing", record_or_oom)
    args = argparse.Namespace(size=64, steps=3, out=tmp_path, cpu_smoke=True)
    assert oom_check.run_checks(args, cpu=True) == 0
    cases = json.loads((tmp_path / "oom_check.json").read_text())["cases"]
    assert cases[0]["outcome"] == "FastlaneOutOfMemory" and cases[0]["clear"], cases[0]
    assert cases[0]["received_under_limit"] == "identical"
    assert cases[1]["outcome"] == "compiled call OOM -> ran eagerly with a warning" and cases[1]["factor"] == 1.5
    assert cases[2]["outcome"].startswith("recording OOM -> graphs dropped") and cases[2]["graphs_left"] == 0
    assert all(c["after_lifting"].startswith("works") and c["received_model_after"] == "identical" for c in cases)
    assert "ran out of memory" in capsys.readouterr().out


def test_model_files_are_written_once_with_a_lora_per_family(tmp_path, monkeypatch):
    """write_models with run_workflows' writers replaced by tiny stand-ins (the real ones write 38 GB on a GPU):
    each family's files, its random LoRA under its own name (workflow_lora.py's generic keys), a marker that makes
    the next run keep them."""
    import run_workflows
    import torch
    from safetensors import safe_open
    from safetensors.torch import save_file

    keys = {"flux": "double_blocks.0.img_attn.qkv.weight",
            "sdxl": "model.diffusion_model.input_blocks.1.1.transformer_blocks.0.attn1.to_q.weight"}
    calls = []

    def writer(family):
        def write(models_dir, device):
            calls.append(family)
            path = models_dir / run_workflows.MODEL_FILES[family]
            save_file({keys[family]: torch.zeros(24, 8, dtype=torch.bfloat16)}, str(path))
            return {path.name: 0.0}
        return write

    import copy

    import folder_paths

    # write_model_files registers tmp_path's folders with ComfyUI: undone after the test (other tests validate
    # the shipped workflows expecting no model files)
    monkeypatch.setattr(folder_paths, "folder_names_and_paths", copy.deepcopy(folder_paths.folder_names_and_paths))
    monkeypatch.setattr(folder_paths, "filename_list_cache", {})
    monkeypatch.setattr(run_workflows, "WRITERS", {f: writer(f) for f in ("flux", "sdxl")})
    written = soak_real.write_models(tmp_path, ["flux", "sdxl"], cpu=True)
    assert calls == ["flux", "sdxl"] and set(written) == {"flux", "sdxl"}
    for family in ("flux", "sdxl"):
        lora = tmp_path / "loras" / soak_real.lora_name(family)
        with safe_open(str(lora), framework="pt") as f:
            assert any(k.endswith(".lora_up.weight") for k in f.keys())
        assert (tmp_path / f".written-{family}").exists()
    assert not (tmp_path / "loras" / "fastlane-random-lora.safetensors").exists()
    assert soak_real.write_models(tmp_path, ["flux", "sdxl"]) == {"flux": "kept from an earlier run",
                                                                  "sdxl": "kept from an earlier run"}
    assert calls == ["flux", "sdxl"]


@pytest.mark.server
def test_the_gpu_servers_launcher_starts_comfyui_and_answers_the_soaks_requests(tmp_path):
    """``soak_real.RealServer`` (here with --cpu: the launcher, the stand-ins, the empty frontend root and the
    models folder link are what the GPU run uses): a real prompt comes back 400 naming only the missing model files,
    /system_stats, /free and the log are read as the soak reads them."""
    server = soak_real.RealServer(tmp_path / "base", tmp_path / "models", cpu=True)
    assert "serve" in server.command() and "--cpu" in server.command()
    assert "--cpu" not in soak_real.RealServer(tmp_path / "b2", tmp_path / "models").command()
    with server:
        api = soak.Api(server.url, server.process.pid, server)
        mix = soak_real.RealMix(families=("sdxl",))
        prompt = mix.build(mix.random_spec(random.Random(1)), random.Random(1))
        r = api.post("/prompt", {"prompt": prompt})
        assert r.status_code == 400 and model_file_errors_only(r.json()["node_errors"]), r.text
        assert api.vram() == {}  # a CPU server: no CUDA device
        floor = api.floor(settle=0.5)
        assert floor["rss_mb"] > 0
        assert api.alive()
        log = server.log()
    assert "soak_real serve" in log and "--front-end-root" in log
    assert (tmp_path / "base" / "models").resolve() == (tmp_path / "models").resolve()
