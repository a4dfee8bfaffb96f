"""The shipped workflows/: every UI file and its ``.api.json`` twin agree, name only nodes and inputs the real
ComfyUI (with this pack) has, are what scripts/make_workflows.py builds, and the demo one runs."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

import nodes

PACK_DIR = Path(__file__).resolve().parents[1]
WORKFLOWS = PACK_DIR / "workflows"
API_FILES = sorted((WORKFLOWS / "api").glob("*.api.json"))
UI_ONLY = {"Note", "MarkdownNote"}
MUTED = 2  # the frontend's "never" mode (Ctrl+M)
WIDGET_TYPES = {"INT", "FLOAT", "STRING", "BOOLEAN", "COMBO"}


def _generator():
    sys.path.insert(0, str(PACK_DIR / "scripts"))
    try:
        import make_workflows
    finally:
        sys.path.remove(str(PACK_DIR / "scripts"))
    return make_workflows


def with_muted(api_file: Path) -> dict:
    """The prompt the UI file queues once its muted groups are switched on (built by the generator)."""
    gen = _generator()
    name = api_file.name[: -len(".api.json")]
    workflow = next(w() for w in gen.WORKFLOWS if w().name == name)
    return gen.api_format(workflow, include_muted=True)


def ui_twin(api_file: Path) -> Path:
    return WORKFLOWS / (api_file.name[: -len(".api.json")] + ".json")


def load(path: Path) -> dict:
    return json.loads(path.read_text())


def inputs_of(class_type: str) -> list[tuple[str, object, dict, bool]]:
    """(name, type, options, required) of a node's inputs in definition order, from the class ComfyUI runs."""
    types = nodes.NODE_CLASS_MAPPINGS[class_type].INPUT_TYPES()
    out = []
    for section in ("required", "optional"):
        for name, spec in types.get(section, {}).items():
            out.append((name, spec[0], spec[1] if len(spec) > 1 and isinstance(spec[1], dict) else {},
                        section == "required"))
    return out


def is_widget(input_type, options) -> bool:
    return (isinstance(input_type, list) or input_type in WIDGET_TYPES) and not options.get("forceInput")


def output_types(class_type: str) -> list[str]:
    return list(nodes.NODE_CLASS_MAPPINGS[class_type].RETURN_TYPES)


def test_every_workflow_has_both_formats():
    assert [p.name for p in API_FILES] == [f"fastlane-{name}.api.json" for name in (
        "demo-compare", "flux-balanced", "flux-baseline", "flux-compare", "flux-fastest", "qwen-image-compare",
        "qwen-image-fastest", "sdxl-balanced", "sdxl-baseline", "sdxl-compare", "sdxl-fastest", "wan22-compare",
        "wan22-fastest", "z-image-compare", "z-image-fastest")]
    for api_file in API_FILES:
        assert ui_twin(api_file).exists()
    ui_files = set(WORKFLOWS.glob("*.json"))
    assert ui_files == {ui_twin(p) for p in API_FILES}
    # the templates browser's thumbnail beside each (scripts/make_thumbnails.py), and nothing else in the folder
    assert set(WORKFLOWS.glob("*.jpg")) == {p.with_suffix(".jpg") for p in ui_files}
    assert {p.name for p in WORKFLOWS.iterdir()} == {p.name for p in ui_files} | {f"{p.stem}.jpg" for p in ui_files} | {"api"}


@pytest.mark.parametrize("api_file", API_FILES, ids=lambda p: p.name)
def test_api_file_names_real_nodes_inputs_and_types(api_file):
    prompt = load(api_file)
    for node in prompt.values():
        class_type = node["class_type"]
        assert class_type in nodes.NODE_CLASS_MAPPINGS, f"{api_file.name}: unknown node type {class_type}"
        spec = {name: (t, o, req) for name, t, o, req in inputs_of(class_type)}
        assert set(node["inputs"]) <= set(spec), (class_type, set(node["inputs"]) - set(spec))
        assert {n for n, (_, _, req) in spec.items() if req} <= set(node["inputs"]), class_type
        for name, value in node["inputs"].items():
            input_type, options, _ = spec[name]
            if isinstance(value, list):  # a link: [source id, output slot]
                source = prompt[value[0]]["class_type"]
                produced = output_types(source)[value[1]]
                assert input_type in (produced, "*"), f"{class_type}.{name} ({input_type}) <- {source} ({produced})"
            elif name in MODEL_FILE_INPUTS:  # the user's model files: listed from their models/ folders
                assert value.endswith(".safetensors"), (class_type, name, value)
            elif isinstance(input_type, list) or input_type == "COMBO":
                choices = input_type if isinstance(input_type, list) else options["options"]
                assert value in choices, (class_type, name, value)
            else:
                assert input_type in WIDGET_TYPES, (class_type, name)
                if "min" in options:
                    assert options["min"] <= value <= options["max"], (class_type, name, value)


MODEL_FILE_INPUTS = {"unet_name", "clip_name", "clip_name1", "clip_name2", "vae_name", "ckpt_name"}
STANDARD = sorted(p for p in API_FILES if "-demo-" not in p.name)


@pytest.mark.parametrize("api_file", STANDARD, ids=lambda p: p.name)
def test_standard_loader_workflows_without_their_files_fail_comfyuis_validation(graph, api_file):
    """Here no FLUX/SDXL files exist: ComfyUI's own validation names each missing file, and nothing runs."""
    prompt = load(api_file)
    valid, error, _, node_errors = graph.validate(prompt)
    assert not valid and error["type"] == "prompt_outputs_failed_validation"
    missing = {(e["extra_info"]["input_name"], e["extra_info"]["received_value"])
               for node in node_errors.values() for e in node["errors"] if e["type"] == "value_not_in_list"}
    wanted = {(name, value) for node in prompt.values() for name, value in node["inputs"].items()
              if name in MODEL_FILE_INPUTS}
    assert missing == wanted and wanted


def _num(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool)


def _vec2(x) -> bool:
    return isinstance(x, list) and len(x) == 2 and all(map(_num, x))


def _node_id(x) -> bool:
    return isinstance(x, (int, str)) and not isinstance(x, bool)


def _data_type(x) -> bool:
    return isinstance(x, str) or _num(x) or isinstance(x, list) and all(isinstance(t, str) for t in x)


@pytest.mark.parametrize("api_file", API_FILES, ids=lambda p: p.name)
def test_ui_file_passes_the_frontend_workflow_schema(api_file):
    """The frontend (1.32, shipped with ComfyUI 0.3.75) checks a dropped workflow with its zod schema
    ``zComfyWorkflow`` (version 0.4 graphs); these are its required fields and types."""
    ui = load(ui_twin(api_file))
    assert _node_id(ui["last_node_id"]) and _num(ui["last_link_id"]) and _num(ui["version"])
    assert isinstance(ui.get("config", {}), (dict, type(None))) and isinstance(ui.get("extra", {}), (dict, type(None)))
    ds = (ui.get("extra") or {}).get("ds")
    assert ds is None or _num(ds["scale"]) and _vec2(ds["offset"])
    for link in ui["links"]:
        assert isinstance(link, list) and len(link) == 6
        assert _num(link[0]) and _node_id(link[1]) and isinstance(link[2], int) and _node_id(link[3])
        assert isinstance(link[4], int) and _data_type(link[5])
    for group in ui.get("groups", []):
        assert isinstance(group["title"], str) and len(group["bounding"]) == 4 and all(map(_num, group["bounding"]))
    for node in ui["nodes"]:
        assert _node_id(node["id"]) and isinstance(node["type"], str)
        assert _vec2(node["pos"]) and _vec2(node["size"]) and isinstance(node["flags"], dict)
        assert _num(node["order"]) and _num(node["mode"]) and isinstance(node["properties"], dict)
        assert isinstance(node.get("widgets_values", []), (list, dict))
        for socket in node.get("inputs", []):
            assert isinstance(socket["name"], str) and _data_type(socket["type"])
            assert socket.get("link") is None or _num(socket["link"])
        for out in node.get("outputs", []):
            assert isinstance(out["name"], str) and _data_type(out["type"])
            assert out.get("links") is None or all(map(_num, out["links"]))
            assert isinstance(out.get("slot_index", 0), int)


@pytest.mark.parametrize("api_file", API_FILES, ids=lambda p: p.name)
def test_ui_file_and_api_twin_agree(api_file):
    api, ui = load(api_file), load(ui_twin(api_file))
    full = {**api, **with_muted(api_file)}  # the muted nodes' widget values: what the generator gives them
    assert ui["version"] == 0.4
    ui_nodes = {n["id"]: n for n in ui["nodes"]}
    assert len(ui_nodes) == len(ui["nodes"]) and ui["last_node_id"] == max(ui_nodes)
    assert ui["last_link_id"] == max(link[0] for link in ui["links"]) and len(ui["links"]) == ui["last_link_id"]
    # muted nodes (mode 2: a branch the user switches on) stay out of the prompt the frontend queues
    executable = {i: n for i, n in ui_nodes.items() if n["type"] not in UI_ONLY and n["mode"] != MUTED}
    muted = {i for i, n in ui_nodes.items() if n["mode"] == MUTED}
    assert {n["mode"] for n in ui_nodes.values()} <= {0, MUTED}
    # same nodes, same types
    assert {str(i): n["type"] for i, n in executable.items()} == {i: n["class_type"] for i, n in api.items()}

    links = {link[0]: link for link in ui["links"]}
    api_links = {(i, name): tuple(v) for i, n in api.items() for name, v in n["inputs"].items() if isinstance(v, list)}
    ui_links = {}
    for link_id, src, src_slot, dst, dst_slot, link_type in ui["links"]:
        socket = ui_nodes[dst]["inputs"][dst_slot]
        assert socket["link"] == link_id
        assert link_id in ui_nodes[src]["outputs"][src_slot]["links"]
        assert ui_nodes[src]["outputs"][src_slot]["type"] == link_type == output_types(ui_nodes[src]["type"])[src_slot]
        assert src not in muted or dst in muted, "a running node must not take its input from a muted one"
        if dst not in muted:
            ui_links[(str(dst), socket["name"])] = (str(src), src_slot)
    assert ui_links == api_links  # same links

    for node_id, node in {i: n for i, n in ui_nodes.items() if n["type"] not in UI_ONLY}.items():
        spec = inputs_of(node["type"])
        # every output's links point back at links that name it
        for slot, out in enumerate(node["outputs"]):
            assert out["type"] == output_types(node["type"])[slot]
            assert all(links[i][1:3] == [node_id, slot] for i in out["links"])
        # sockets: the node's non-widget inputs, in definition order
        sockets = [(name, t) for name, t, o, _ in spec if not is_widget(t, o)]
        assert [(s["name"], s["type"]) for s in node["inputs"]] == sockets, node["type"]
        # widgets_values: the API twin's widget values in input order (+ the seed's "control after generate")
        expected = []
        for name, input_type, options, _ in spec:
            if is_widget(input_type, options):
                expected.append(full[str(node_id)]["inputs"][name])
                if input_type == "INT" and options.get("control_after_generate", name in ("seed", "noise_seed")):
                    expected.append("fixed")
        assert node["widgets_values"] == expected, node["type"]
        assert len(node["pos"]) == 2 and len(node["size"]) == 2


def test_workflows_are_what_the_generator_builds():
    sys.path.insert(0, str(PACK_DIR / "scripts"))
    try:
        import make_workflows
    finally:
        sys.path.remove(str(PACK_DIR / "scripts"))
    built = make_workflows.build_all()
    assert sorted(built) == sorted([*API_FILES, *map(ui_twin, API_FILES)])
    for path, text in built.items():
        assert path.read_text() == text, f"{path.name} is stale: run scripts/make_workflows.py"


def test_demo_workflow_runs_in_comfyui(graph, tmp_path, monkeypatch):
    import folder_paths

    monkeypatch.setattr(folder_paths, "output_directory", str(tmp_path))
    prompt = load(WORKFLOWS / "api" / "fastlane-demo-compare.api.json")
    result = graph.run(prompt)
    by_type = {}
    for node_id, node in prompt.items():
        by_type.setdefault(node["class_type"], []).append(node_id)

    size = prompt[by_type["EmptySD3LatentImage"][0]]["inputs"]["width"]
    decoded = [result["outputs"][i][0] for i in by_type["FastlaneDemoDecode"]]
    assert [tuple(img.shape) for img in decoded] == [(1, size, size, 3)] * 2
    assert 0.0 <= float(min(img.min() for img in decoded)) and float(max(img.max() for img in decoded)) <= 1.0
    saved = [tmp_path / e["subfolder"] / e["filename"] for i in by_type["SaveImage"] for e in result["ui"][i]["images"]]
    assert len(saved) == 3 and all(p.is_file() for p in saved)

    report_id = by_type["FastlaneBenchmarkReport"][0]
    text, plot, data = result["outputs"][report_id]
    report = json.loads(data)
    cache = prompt[prompt[prompt[report_id]["inputs"]["model"][0]]["inputs"]["model"][0]]
    steps = prompt[by_type["KSampler"][0]]["inputs"]["steps"]
    computed = report["model"]["computed_steps"]
    assert computed[0] == 0 and len(computed) < steps  # the cached branch skipped steps
    if cache["class_type"] == "FastlaneTaylorSeer":
        interval, warmup = cache["inputs"]["interval"], cache["inputs"]["warmup_steps"]
        assert set(range(warmup)) <= set(computed) and len(computed) <= warmup + -(-steps // interval)
    if cache["class_type"] == "FastlaneTargetSpeedCache":
        assert len(computed) == round(cache["inputs"]["compute_fraction"] * steps)  # exactly the asked fraction
    assert report["reference"]["computed_steps"] is None  # the baseline computes every step
    assert len(report["runs"]["model"]["calls"]) == steps
    assert report["fidelity"]["psnr_db"] > 15, report["fidelity"]  # close to the baseline image
    assert result["ui"][report_id]["text"] == [text]
    assert list(result["ui"][by_type["PreviewAny"][0]]["text"]) == [text]
    assert plot.shape[0] == 1 and plot.shape[-1] == 3


def _upstream(prompt: dict, node_id: str, name: str = "model") -> list[str]:
    """The class types along a node's ``name`` input back to its source (a MODEL chain back to the loader)."""
    chain = []
    while name in prompt[node_id]["inputs"] and isinstance(prompt[node_id]["inputs"][name], list):
        node_id = prompt[node_id]["inputs"][name][0]
        chain.append(prompt[node_id]["class_type"])
    return chain


@pytest.mark.parametrize("name", ["wan22-fastest", "wan22-compare"])
def test_wan22_experts_each_run_their_own_fastlane_chain_on_their_own_stage(name):
    prompt = load(WORKFLOWS / "api" / f"fastlane-{name}.api.json")
    stages = {i: n for i, n in prompt.items() if n["class_type"] == "KSamplerAdvanced"}
    fast = {i: n for i, n in stages.items() if "FastlaneCompile" in _upstream(prompt, i)}
    assert len(fast) == 2 and len(stages) == (4 if name.endswith("compare") else 2)
    high, low = sorted(fast.values(), key=lambda n: n["inputs"]["start_at_step"])
    steps = (high["inputs"]["start_at_step"], high["inputs"]["end_at_step"], low["inputs"]["start_at_step"])
    assert steps == (0, 10, 10)
    assert high["inputs"]["return_with_leftover_noise"] == "enable" and low["inputs"]["add_noise"] == "disable"
    caches = set()
    for stage, expert in ((high, "high"), (low, "low")):
        chain, node_id = [], stage["inputs"]["model"][0]
        while True:
            chain.append(node_id)
            if "model" not in prompt[node_id]["inputs"]:
                break
            node_id = prompt[node_id]["inputs"]["model"][0]
        types = [prompt[i]["class_type"] for i in chain]
        assert types[-5:] == ["FastlaneCompile", "FastlaneTargetSpeedCache", "FastlaneQuantize", "ModelSamplingSD3",
                              "UNETLoader"], types
        caches.add(chain[types.index("FastlaneTargetSpeedCache")])
        assert prompt[chain[-1]]["inputs"]["unet_name"] == f"wan2.2_t2v_{expert}_noise_14B_fp8_scaled.safetensors"
    assert len(caches) == 2  # each expert its own cache


COMPARES = [p for p in API_FILES if p.name.endswith("-compare.api.json") and "demo" not in p.name
            and "wan22" not in p.name]


@pytest.mark.parametrize("api_file", COMPARES, ids=lambda p: p.name)
def test_compare_workflows_carry_comfyuis_own_fast_path_muted(graph, api_file):
    """The native reference branch (issue 20): muted in the UI file, absent from the API twin, and once switched on
    a graph ComfyUI validates (only the model files are missing here), measured against the same baseline."""
    api, full = load(api_file), with_muted(api_file)
    native = {i: n for i, n in full.items() if i not in api}
    types = sorted(n["class_type"] for n in native.values())
    assert "TorchCompileModel" in types and "KSampler" in types and "FastlaneBenchmarkReport" in types
    loaders = [n for n in native.values() if n["class_type"] == "UNETLoader"]
    if "sdxl" not in api_file.name:
        assert [n["inputs"]["weight_dtype"] for n in loaders] == ["fp8_e4m3fn_fast"]
    report = next(n for n in native.values() if n["class_type"] == "FastlaneBenchmarkReport")
    baseline_bench = report["inputs"]["reference_model"][0]
    assert api[baseline_bench]["inputs"]["label"] == "baseline"
    valid, error, _, node_errors = graph.validate(full)
    assert not valid and error["type"] == "prompt_outputs_failed_validation"
    kinds = {e["type"] for node in node_errors.values() for e in node["errors"]}
    assert kinds == {"value_not_in_list"}, node_errors  # nothing wrong but the missing model files
