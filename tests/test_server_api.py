"""The pack in a real ComfyUI server process, driven the way the frontend and API users drive it: /object_info,
POST /prompt, progress over /ws, /history, /view, and ComfyUI's own validation errors."""
from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
from comfy_server import PromptRejected
from server_fixtures import comfy_server  # noqa: F401  (the session's one server)

pytestmark = pytest.mark.server

WORKFLOWS = Path(__file__).resolve().parents[1] / "workflows"
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
#: Every node of the pack; any further node the pack registers must meet the same bar.
PACK_NODES = {
    "FastlaneFORA", "FastlaneTaylorSeer", "FastlaneAdaptiveCache", "FastlaneTargetSpeedCache",
    "FastlaneBenchmark", "FastlaneBenchmarkReport",
    "FastlaneDemoModelLoader", "FastlaneDemoPrompt", "FastlaneDemoDecode", "FastlaneDemoEncode",
}


def demo_prompt(seed: int = 1234) -> dict:
    """The shipped demo workflow, with a seed of this module's own: its samplers compute here once and are then
    served from the server's cache in the later tests, whatever other modules ran before."""
    prompt = json.loads((WORKFLOWS / "api" / "fastlane-demo-compare.api.json").read_text())
    for node in prompt.values():
        if node["class_type"] == "KSampler":
            node["inputs"]["seed"] = seed
    return prompt


def node_of(prompt: dict, class_type: str) -> tuple[str, dict]:
    matches = [(i, n) for i, n in prompt.items() if n["class_type"] == class_type]
    assert matches, f"no {class_type} in the prompt"
    return matches[0]


def test_object_info_describes_every_fastlane_node(comfy_server):
    info = comfy_server.object_info()
    pack = {name: d for name, d in info.items() if d["python_module"] == "custom_nodes.comfyui-fastlane"}
    assert PACK_NODES <= set(pack), f"missing from /object_info: {sorted(PACK_NODES - set(pack))}"
    for name, d in pack.items():
        assert d["category"].startswith("fastlane/"), (name, d["category"])
        assert d["display_name"].startswith("Fastlane "), (name, d["display_name"])
        assert len(d["description"]) > 20, name
        for section in ("required", "optional"):
            for input_name, spec in d["input"].get(section, {}).items():
                assert len(spec) > 1 and spec[1].get("tooltip"), f"{name}.{input_name} has no tooltip"
    assert pack["FastlaneBenchmarkReport"]["output_node"] is True
    assert pack["FastlaneBenchmarkReport"]["output_name"] == ["report", "plot", "json"]
    assert set(pack["FastlaneBenchmarkReport"]["input"]["optional"]) == {"reference_model", "reference_image"}
    fora = pack["FastlaneFORA"]["input"]["required"]
    assert fora["interval"][1]["min"] == 1 and {"blocks", "output"} <= set(fora["granularity"][1]["options"])
    # the per-node endpoint the frontend also uses
    assert comfy_server.object_info("FastlaneFORA")["FastlaneFORA"] == info["FastlaneFORA"]


def test_demo_graph_runs_over_http_with_websocket_progress(comfy_server):
    prompt = demo_prompt(seed=4321)  # a seed no other test uses: the samplers must really run here
    samplers = {i for i, n in prompt.items() if n["class_type"] == "KSampler"}
    run = comfy_server.run(prompt, timeout=300)
    assert run.succeeded, run.error() or run.status
    events = [event for event, _ in run.messages]
    assert events.index("execution_start") < events.index("execution_success") < len(events) - 1
    assert events[-1] == "executing"  # node None: the end of this prompt

    # the sampler reported its steps over the websocket, for both branches
    steps = {prompt[i]["inputs"]["steps"] for i in samplers}.pop()
    progress = [d for d in run.events("progress") if d["node"] in samplers]
    assert {d["node"] for d in progress} == samplers
    assert all(d["max"] == steps for d in progress) and max(d["value"] for d in progress) == steps
    executed = {d["node"] for d in run.events("executed")}
    assert {i for i, n in prompt.items() if n["class_type"] in ("SaveImage", "PreviewAny")} <= executed

    # both sampled images and the plot are PNGs on disk, and /view serves the same bytes
    size = node_of(prompt, "EmptySD3LatentImage")[1]["inputs"]["width"]
    saves = {n["inputs"]["filename_prefix"]: i for i, n in prompt.items() if n["class_type"] == "SaveImage"}
    assert len(saves) == 3
    for prefix, node_id in saves.items():
        (path,) = run.images(node_id)
        assert path.is_file() and path.read_bytes()[:8] == PNG_MAGIC
        assert path.relative_to(comfy_server.output_dir).as_posix().startswith(prefix)
        entry = run.ui(node_id)["images"][0]
        assert comfy_server.view(entry) == path.read_bytes()
    from PIL import Image

    fast = Image.open(run.images(saves["fastlane/demo_fastlane"])[0])
    base = Image.open(run.images(saves["fastlane/demo_baseline"])[0])
    assert fast.size == base.size == (size, size)
    assert fast.tobytes() != base.tobytes()  # the cache really changed the computation

    # the report: ui text on the report node itself and shown by the PreviewAny node
    report_id, _ = node_of(prompt, "FastlaneBenchmarkReport")
    (text,) = run.ui(report_id)["text"]
    assert "speed-up" in text and "baseline" in text and "fastlane" in text and "PSNR" in text
    show_id, _ = node_of(prompt, "PreviewAny")
    assert run.ui(show_id)["text"] == [text]
    # ...and the websocket carried it to the client as the node finished (what the frontend displays)
    (executed_report,) = [d for d in run.events("executed") if d["node"] == report_id]
    assert executed_report["output"] == {"text": [text]}


def test_unknown_node_type_is_rejected(comfy_server):
    prompt = demo_prompt()
    prompt["99"] = {"class_type": "FastlaneNoSuchNode", "inputs": {}}
    with pytest.raises(PromptRejected) as rejected:
        comfy_server.queue(prompt)
    e = rejected.value
    assert e.status == 400
    assert e.error["type"] == "invalid_prompt"
    assert e.error["message"] == "Cannot execute because node FastlaneNoSuchNode does not exist."
    assert e.error["details"] == "Node ID '#99'"
    assert e.node_errors == {}


def upstream(prompt: dict, node_id: str) -> dict:
    """The sub-graph ``node_id`` depends on (itself included)."""
    keep, todo = set(), [node_id]
    while todo:
        current = todo.pop()
        if current not in keep:
            keep.add(current)
            todo += [v[0] for v in prompt[current]["inputs"].values() if isinstance(v, list)]
    return {i: n for i, n in prompt.items() if i in keep}


def test_out_of_range_compute_fraction_is_rejected_by_comfyui_validation(comfy_server):
    prompt = demo_prompt()
    cache_id, cache = next((i, n) for i, n in prompt.items() if "compute_fraction" in n["inputs"])
    cache["inputs"]["compute_fraction"] = 0.0
    saves = {n["inputs"]["filename_prefix"]: i for i, n in prompt.items() if n["class_type"] == "SaveImage"}
    cached_branch = upstream(prompt, saves["fastlane/demo_fastlane"])
    assert cache_id in cached_branch

    # every output depends on the bad node: HTTP 400, nothing queued
    with pytest.raises(PromptRejected) as rejected:
        comfy_server.queue(cached_branch)
    e = rejected.value
    assert e.status == 400
    assert e.error == {"type": "prompt_outputs_failed_validation", "message": "Prompt outputs failed validation",
                       "details": "", "extra_info": {}}
    assert list(e.node_errors) == [cache_id]
    assert e.node_errors[cache_id]["class_type"] == cache["class_type"]
    assert e.node_errors[cache_id]["dependent_outputs"] == [saves["fastlane/demo_fastlane"]]
    (error,) = e.node_errors[cache_id]["errors"]
    assert error["type"] == "value_smaller_than_min"
    assert error["message"] == "Value 0.0 smaller than min of 0.05"
    assert error["details"] == "compute_fraction"
    assert error["extra_info"]["input_name"] == "compute_fraction" and error["extra_info"]["received_value"] == 0
    assert e.messages() == [f"{cache['class_type']} compute_fraction: Value 0.0 smaller than min of 0.05: "
                            "compute_fraction"]

    # in the whole demo graph the baseline branch is still valid: ComfyUI queues it (HTTP 200), drops the outputs
    # fed by the bad node and names them in node_errors
    run = comfy_server.run(prompt)
    assert run.node_errors[cache_id]["errors"] == [error]
    assert sorted(run.node_errors[cache_id]["dependent_outputs"]) == sorted(
        i for i, n in prompt.items() if cache_id in upstream(prompt, i) and i != cache_id
        and n["class_type"] in ("SaveImage", "PreviewAny", "FastlaneBenchmarkReport"))
    assert run.succeeded
    assert run.history["outputs"].keys() == {saves["fastlane/demo_baseline"]}


def test_missing_model_file_is_rejected_by_comfyui_validation(comfy_server):
    prompt = demo_prompt()
    loader_id, _ = node_of(prompt, "FastlaneDemoModelLoader")
    prompt[loader_id] = {"class_type": "UNETLoader",
                         "inputs": {"unet_name": "flux1-dev.safetensors", "weight_dtype": "default"}}
    with pytest.raises(PromptRejected) as rejected:
        comfy_server.queue(prompt)
    e = rejected.value
    assert e.status == 400 and e.error["type"] == "prompt_outputs_failed_validation"
    assert list(e.node_errors) == [loader_id]
    (error,) = e.node_errors[loader_id]["errors"]
    assert error["type"] == "value_not_in_list"
    assert error["message"] == "Value not in list"
    # the private server has no models/diffusion_models files at all
    assert error["details"] == "unet_name: 'flux1-dev.safetensors' not in []"
    assert e.messages() == ["UNETLoader unet_name: Value not in list: unet_name: 'flux1-dev.safetensors' not in []"]


def test_an_error_while_running_comes_back_over_the_websocket(comfy_server):
    # a report wired to a MODEL without a Fastlane Benchmark: valid graph, the report node raises when it runs
    prompt = demo_prompt()
    report_id, report = node_of(prompt, "FastlaneBenchmarkReport")
    bench_id = report["inputs"]["model"][0]
    report["inputs"]["model"] = copy.deepcopy(prompt[bench_id]["inputs"]["model"])
    run = comfy_server.run(prompt, timeout=300)
    assert not run.succeeded and run.status["status_str"] == "error"
    error = run.error()
    assert error["node_id"] == report_id and error["node_type"] == "FastlaneBenchmarkReport"
    assert error["exception_type"] == "ValueError"
    assert "has no Fastlane Benchmark" in error["exception_message"]
