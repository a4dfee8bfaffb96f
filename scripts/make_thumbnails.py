#!/usr/bin/env python
"""Render the thumbnail ComfyUI's templates browser shows for each shipped workflow: ``workflows/<name>.jpg``.

The frontend looks for ``<name>.jpg`` beside a custom node pack's template and shows a blank gradient without one.
Each thumbnail is a picture of the graph itself, drawn by ComfyUI's real frontend (headless Debian Chromium via
Playwright, as in tests/test_browser.py) against a private server with the pack: the part that makes the workflow
what it is (the Fastlane nodes and the samplers; the loaders for a baseline) fitted into a square.

    python scripts/make_thumbnails.py                             # (re)write workflows/*.jpg
    python scripts/make_thumbnails.py fastlane-wan22-fastest ...  # only these
"""
from __future__ import annotations

import sys
import tempfile
from pathlib import Path

PACK_DIR = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(PACK_DIR / "tests"))

from comfy_browser import PACK_NAME, browser_page  # noqa: E402
from comfy_server import ComfyServer  # noqa: E402

BOX = (420, 130, 720, 720)  # page pixels of the 1600x1000 view: a square (the browser's cards are 1:1)


def featured(nodes: list[dict]) -> list[int]:
    """The ids to frame: Fastlane nodes and samplers, or every non-note node of a graph without Fastlane nodes."""
    samplers = ("KSampler", "KSamplerAdvanced")
    ids = [n["id"] for n in nodes if n["type"].startswith("Fastlane") or n["type"] in samplers]
    if not any(n["type"].startswith("Fastlane") for n in nodes):
        ids = [n["id"] for n in nodes if n["type"] not in ("MarkdownNote", "Note")]
    return ids


def main(argv: list[str] | None = None) -> int:
    names = sorted(p.stem for p in (PACK_DIR / "workflows").glob("*.json"))
    wanted = sys.argv[1:] if argv is None else argv
    unknown = sorted(set(wanted) - set(names))
    if unknown:
        print(f"no such workflow: {', '.join(unknown)}")
        return 2
    names = [n for n in names if not wanted or n in wanted]
    with tempfile.TemporaryDirectory(prefix="fastlane-thumbs-") as tmp, ComfyServer(tmp) as server, \
            browser_page(server.url) as ui:
        settings = {"LiteGraph.Canvas.MinFontSizeForLOD": 1,  # node text at any zoom, not boxes
                    "Comfy.Graph.CanvasInfo": False, "Comfy.Graph.CanvasMenu": False}  # no overlays
        for key, value in settings.items():
            ui.page.evaluate("([k, v]) => app.extensionManager.setting.set(k, v)", [key, value])
        for name in names:
            ui.open_templates(PACK_NAME)
            ui.load_template(name)
            ui.close_banners()
            ui.frame_nodes(featured(ui.nodes()), box=BOX)
            target = PACK_DIR / "workflows" / f"{name}.jpg"
            x, y, w, h = BOX
            ui.page.screenshot(path=str(target), type="jpeg", quality=82, clip={"x": x, "y": y, "width": w, "height": h})
            print(f"wrote {target.relative_to(PACK_DIR)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
