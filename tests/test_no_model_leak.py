"""No model outlives the prompts that use it (issue 21): a long-running server executes prompt after prompt with a
LoRA at changing strengths, Fastlane Quantize (a new quantized copy whenever the LoRA upstream changes), every
cacher and Fastlane Compile, and keeps only what ComfyUI's node-output cache holds for the last prompt. A
reference kept by the pack (a holder, a wrapper, a compiled region's guards, a quantizer's bookkeeping) would keep a
whole diffusion model alive per prompt: on the GPU soak that is gigabytes of host memory per prompt.

Counted with the garbage collector after each prompt, through ComfyUI's own PromptExecutor (its classic cache, as a
server runs it) on the demo models; the soak's host-memory line (``benchmarks/soak.py``) sees the same from outside.
"""
from __future__ import annotations

import gc
import random
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import soak  # noqa: E402

CACHER_NODES = {soak.cacher_node(c, ["1", 0], random.Random(0))["class_type"] for c in soak.CACHERS if c != "none"}
MODEL_NODES = {"FastlaneDemoModelLoader", "LoraLoaderModelOnly", "FastlaneQuantize", "FastlaneCompile", *CACHER_NODES}


@pytest.fixture(scope="module")
def demo_loras(tmp_path_factory):
    import folder_paths

    lora_dir = tmp_path_factory.mktemp("loras")
    soak.write_demo_loras(lora_dir)
    before = folder_paths.folder_names_and_paths["loras"]
    folder_paths.add_model_folder_path("loras", str(lora_dir))
    yield
    folder_paths.folder_names_and_paths["loras"] = before
    folder_paths.filename_list_cache.pop("loras", None)


def live_models() -> tuple[int, int]:
    """(ModelPatchers, BaseModels) alive now."""
    import comfy.model_base
    import comfy.model_patcher

    gc.collect()
    objects = gc.get_objects()
    return (sum(isinstance(o, comfy.model_patcher.ModelPatcher) for o in objects),
            sum(isinstance(o, comfy.model_base.BaseModel) for o in objects))


@pytest.mark.usefixtures("fresh_dynamo", "demo_loras")
def test_only_the_last_prompts_models_stay_alive(graph):
    rng = random.Random(3)
    seen = set()
    for i in range(24):
        family = ("flux", "sdxl")[i % 2]
        quantize = rng.choice((None, "int8_weight_only", "int8_dynamic"))
        spec = {"family": family, "subject": soak.SUBJECTS[family][0], "size": 96, "batch": 1, "sampler": "euler",
                "cacher": rng.choice(soak.CACHERS), "seed": 1, "steps": 3, "lora": rng.choice((None, 1.0, 0.8, 0.5)),
                "quantize": quantize, "compile": quantize is None and rng.random() < 0.5}
        prompt = soak.build_prompt(spec, rng)
        graph.run(prompt)
        seen.add((spec["lora"] is not None, bool(quantize), spec["compile"]))
        patchers, models = live_models()
        chain = sum(node["class_type"] in MODEL_NODES for node in prompt.values())
        # the loader's model, and Quantize's copy where the prompt quantized; every node's MODEL a patcher
        assert models == 1 + bool(quantize), (i, spec, models)
        assert patchers <= chain, (i, spec, patchers, chain)
    assert {(True, True, False), (False, False, True), (True, False, False)} <= seen  # the mix covered the chain
