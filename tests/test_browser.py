"""The pack in ComfyUI's real frontend, in headless Chromium against a real server: the templates browser lists
the shipped workflows, each loads with the pack's nodes and their widgets and no missing-node warning, and queueing
the demo comparison from the page shows the benchmark report on the canvas.

Needs Debian's ``chromium`` and the ``playwright`` package (scripts/setup.sh installs both where it can). Without
them these tests are skipped, unless ``FASTLANE_REQUIRE_BROWSER=1`` (CI sets it), which turns that into a failure.
Set ``FASTLANE_SCREENSHOT_DIR`` to keep the screenshot of the finished demo run (the README's picture).
"""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
from comfy_browser import PACK_NAME, chromium, chromium_path, comfy_page
from server_fixtures import comfy_server  # noqa: F401  (the session's one server)

pytestmark = [pytest.mark.server, pytest.mark.browser]

WORKFLOWS = Path(__file__).resolve().parents[1] / "workflows"
UI_WORKFLOWS = sorted(p.stem for p in WORKFLOWS.glob("*.json"))


def _missing_browser() -> str | None:
    try:
        import playwright  # noqa: F401
    except ImportError:
        return "the playwright package is not installed (pip install playwright)"
    if chromium_path() is None:
        return "Debian's chromium is not installed (apt-get install chromium)"
    return None


_why_not = _missing_browser()
if _why_not:
    if os.environ.get("FASTLANE_REQUIRE_BROWSER") == "1":
        raise RuntimeError(f"FASTLANE_REQUIRE_BROWSER=1 but {_why_not}")
    pytest.skip(_why_not, allow_module_level=True)


@pytest.fixture(scope="module")
def browser():
    with chromium() as b:
        yield b


@pytest.fixture
def ui(browser, comfy_server):  # noqa: F811
    with comfy_page(browser, comfy_server.url) as page:
        yield page


def nodes_by_type(ui, class_type: str) -> list[dict]:
    return [n for n in ui.nodes() if n["type"] == class_type]


def test_templates_browser_lists_the_pack_workflows(ui):
    ui.open_templates(PACK_NAME)
    assert ui.template_names() == UI_WORKFLOWS  # the UI files only: the API twins live in workflows/api/
    # each card fetched its workflow's thumbnail (workflows/<name>.jpg) instead of showing the blank placeholder
    assert ui.template_thumbnails() == {f"{name}.jpg": (200, "image/jpeg") for name in UI_WORKFLOWS}


def test_each_template_loads_with_our_nodes_and_widgets(ui):
    for name in UI_WORKFLOWS:
        ui.open_templates(PACK_NAME)
        ui.load_template(name)
        assert not [t for t in ui.dialog_texts() if "missing" in t.lower()], name
        shown = {n["id"]: n for n in ui.nodes()}
        saved = {n["id"]: n for n in json.loads((WORKFLOWS / f"{name}.json").read_text())["nodes"]}
        assert shown.keys() == saved.keys(), name
        if "baseline" not in name:  # the baselines are the plain graphs the others are measured against
            assert any(n["type"].startswith("Fastlane") for n in shown.values()), name
        for node_id, node in saved.items():
            on_canvas = shown[node_id]
            assert on_canvas["type"] == node["type"] and on_canvas["registered"], (name, node["type"])
            values = [w["value"] for w in on_canvas["widgets"]][: len(node.get("widgets_values", []))]
            assert values == node.get("widgets_values", []), (name, node["type"])


def test_a_missing_node_is_reported_by_the_page(ui):
    # The control for the test above: a workflow naming a node nobody has gets the frontend's warning.
    workflow = json.loads((WORKFLOWS / "fastlane-demo-compare.json").read_text())
    next(n for n in workflow["nodes"] if n["type"] == "FastlaneTargetSpeedCache")["type"] = "FastlaneNoSuchNode"
    ui.close_dialogs()
    ui.load_graph(workflow)
    warnings = [t for t in ui.dialog_texts() if "missing" in t.lower()]
    assert warnings and "FastlaneNoSuchNode" in warnings[0]


def test_queueing_the_demo_comparison_shows_the_report(ui, tmp_path):
    ui.open_templates(PACK_NAME)
    ui.load_template("fastlane-demo-compare")
    for sampler in nodes_by_type(ui, "KSampler"):
        ui.set_widget(sampler["id"], "seed", 20261124)  # a seed of this test's own: the server computes it afresh
    report_id = nodes_by_type(ui, "PreviewAny")[0]["id"]
    assert "speed-up" not in ui.node_text(report_id)

    ui.run_and_wait(lambda: "speed-up" in ui.node_text(report_id))
    report = ui.node_text(report_id)
    assert "Fastlane benchmark — fastlane on cpu" in report
    assert "fidelity vs reference: PSNR" in report and "computed" in report
    html = ui.node_html(report_id)
    if html:  # frontends that render Preview Any as Markdown (1.32): summary bullets, the step table as a block
        assert "<li>" in html and "<pre" in html
    else:  # older ones show the text as is (a textarea, 1.27)
        assert "\n- speed-up" in report and "\n```\nstep" in report
    save_ids = [n["id"] for n in nodes_by_type(ui, "SaveImage")]
    ui.page.wait_for_function("(ids) => ids.every(id => (app.nodeOutputs?.[String(id)]?.images || []).length)",
                              arg=save_ids, timeout=30_000)
    for node_id in save_ids:
        image = ui.node_images(node_id)[0]
        assert image["type"] == "output" and image["filename"].endswith(".png")
    ui.close_banners()
    ui.frame_nodes([n["id"] for n in nodes_by_type(ui, "KSampler")] + [report_id] + save_ids, scale=0.85)
    # The canvas fetches an image through /view when it draws its node: the framed plot and both samples.
    expected = {"demo_plot", "demo_fastlane", "demo_baseline"}
    for _ in range(40):
        fetched = {name for name in expected if any(name in url for url, _, _ in ui.viewed)}
        if fetched == expected:
            break
        ui.page.wait_for_timeout(250)
    assert fetched == expected, ui.viewed
    assert all(status == 200 and kind == "image/png" for _, status, kind in ui.viewed)
    shot = tmp_path / "fastlane-demo-compare-ran.png"
    ui.page.screenshot(path=str(shot))
    assert shot.stat().st_size > 10_000
    if os.environ.get("FASTLANE_SCREENSHOT_DIR"):
        target = Path(os.environ["FASTLANE_SCREENSHOT_DIR"])
        target.mkdir(parents=True, exist_ok=True)
        shutil.copy(shot, target / shot.name)
