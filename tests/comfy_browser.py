"""ComfyUI's real frontend in headless Chromium, driven by Playwright the way a user drives it: open the templates
browser, pick one of the pack's workflows, press Run, read what the nodes show.

Chromium is Debian's (``/usr/bin/chromium``, or ``$FASTLANE_CHROMIUM``): Playwright is pointed at it with
``executable_path`` and never downloads a browser of its own. The flags keep Chromium off the network (this
machine's network is closed; without them it retries Google's hosts at every start).

    with browser_page(server.url) as ui:
        ui.open_templates("comfyui-fastlane")
        ui.template_names()                   # what the templates browser lists
        ui.load_template("fastlane-demo-compare")
        ui.run_and_wait(lambda: "speed-up" in ui.node_text(16))   # press Run, wait for the report
"""
from __future__ import annotations

import contextlib
import os
import shutil
import time
from collections.abc import Callable, Iterator
from typing import Any

CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync"]
PACK_NAME = "comfyui-fastlane"


def chromium_path() -> str | None:
    """Debian's Chromium, or ``$FASTLANE_CHROMIUM``; None when neither is there."""
    path = os.environ.get("FASTLANE_CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")
    return path if path and os.path.exists(path) else None


class ComfyPage:
    """One browser tab on the ComfyUI frontend (a fresh profile, so first-visit dialogs may show)."""

    def __init__(self, page: Any, url: str) -> None:
        self.page = page
        self.url = url
        #: (url, status, content type) of every response the page got from the server's API
        self.responses: list[tuple[str, int, str]] = []
        page.on("response", lambda r: self.responses.append((r.url, r.status, r.headers.get("content-type", "")))
                if "/api/" in r.url else None)

    @property
    def viewed(self) -> list[tuple[str, int, str]]:
        """The images the page fetched through /view (what the canvas shows of a run's outputs)."""
        return [r for r in self.responses if "/view?" in r[0]]

    def open(self) -> None:
        self.page.goto(self.url + "/", wait_until="networkidle")
        self.page.wait_for_function("() => window.app && window.app.graph && window.LiteGraph", timeout=60_000)
        # Let the frontend finish its start-up (settings, node definitions, the first-visit templates dialog).
        self.page.wait_for_function(
            "() => Object.keys(LiteGraph.registered_node_types).length > 100", timeout=60_000)
        self.page.wait_for_timeout(1500)

    # -- templates browser -----------------------------------------------------------------------------------
    def open_templates(self, category: str = PACK_NAME) -> None:
        """Open the templates browser (the sidebar's Templates button, unless it opened itself on this first
        visit) and pick ``category`` under EXTENSIONS."""
        if not self.page.get_by_text("All Templates").first.is_visible():
            self.page.get_by_text("Templates", exact=True).first.click()
        self.page.get_by_text("All Templates").first.wait_for(timeout=30_000)
        self.page.get_by_text(category, exact=True).first.click()
        self.page.locator(".p-dialog h3[title]").first.wait_for(timeout=30_000)

    def template_names(self) -> list[str]:
        """The card titles the templates browser shows for the open category (the workflow file names)."""
        titles = self.page.locator(".p-dialog h3[title]")
        return sorted(titles.nth(i).get_attribute("title") for i in range(titles.count()))

    def template_thumbnails(self, category: str = PACK_NAME) -> dict[str, tuple[int, str]]:
        """Thumbnail file name -> (HTTP status, content type) of each card image the templates browser fetched for
        ``category``, after scrolling through the whole grid (cards load their image when they come into view)."""
        grid = self.page.locator(".p-dialog h3[title]")
        for i in range(grid.count()):
            grid.nth(i).scroll_into_view_if_needed()
        self.page.wait_for_timeout(1000)
        prefix = f"/workflow_templates/{category}/"
        return {url.split(prefix, 1)[1]: (status, kind) for url, status, kind in self.responses
                if prefix in url and not url.endswith(".json")}

    def load_template(self, name: str) -> None:
        """Click a template's card; returns once its graph is the open workflow."""
        self.page.locator(f'.p-dialog h3[title="{name}"]').first.click()
        self.page.wait_for_function("(name) => document.title.includes(name)", arg=name, timeout=30_000)
        self.page.wait_for_timeout(1500)

    def load_graph(self, workflow: dict) -> None:
        """Load a UI-format workflow as dropping its file on the canvas does."""
        self.page.evaluate("(wf) => app.loadGraphData(wf)", workflow)
        self.page.wait_for_timeout(1500)

    # -- what the canvas shows -------------------------------------------------------------------------------
    def nodes(self) -> list[dict]:
        """Each node on the canvas: id, type, title, whether the frontend knows its type, its widgets' values."""
        return self.page.evaluate("""() => app.graph._nodes.map(n => ({
            id: n.id, type: n.type, title: n.title,
            registered: !!LiteGraph.registered_node_types[n.type],
            widgets: (n.widgets || []).map(w => ({name: w.name, value: w.value})),
        }))""")

    def dialog_texts(self) -> list[str]:
        """The text of every open dialog (the missing-nodes warning is one)."""
        dialogs = self.page.locator(".p-dialog")
        return [dialogs.nth(i).inner_text() for i in range(dialogs.count())]

    def close_dialogs(self) -> None:
        for _ in range(3):
            if not self.page.locator(".p-dialog").count():
                return
            self.page.keyboard.press("Escape")
            self.page.wait_for_timeout(300)

    def set_widget(self, node_id: int, name: str, value: Any) -> None:
        self.page.evaluate("([id, name, value]) => { app.graph.getNodeById(id).widgets"
                           ".find(w => w.name === name).value = value }", [node_id, name, value])

    def node_text(self, node_id: int) -> str:
        """What a text-showing node (PreviewAny) displays."""
        return self.page.evaluate("(id) => (app.graph.getNodeById(id).widgets || [])"
                                  ".map(w => String(w.value ?? '')).join('\\n')", node_id)

    def node_html(self, node_id: int) -> str:
        """The HTML a node's DOM widgets render (Preview Any renders its text as Markdown)."""
        return self.page.evaluate("(id) => (app.graph.getNodeById(id).widgets || [])"
                                  ".map(w => w.element?.innerHTML ?? '').join('')", node_id)

    def node_images(self, node_id: int) -> list[dict]:
        """The images a node got from the run it last executed (SaveImage, PreviewImage): filename, subfolder, type."""
        return self.page.evaluate("(id) => app.nodeOutputs?.[String(id)]?.images || []", node_id)

    # -- running ----------------------------------------------------------------------------------------------
    def run_and_wait(self, done: Callable[[], bool], timeout_s: float = 300.0) -> float:
        """Press Run and wait until ``done()``; returns the seconds it took."""
        start = time.monotonic()
        self.page.get_by_role("button", name="Run").first.click()
        while not done():
            if time.monotonic() - start > timeout_s:
                raise TimeoutError(f"the run did not finish in {timeout_s:.0f}s")
            self.page.wait_for_timeout(500)
        return time.monotonic() - start

    def close_banners(self) -> None:
        """Close the frontend's announcement banner and the minimap (for a screenshot of the canvas alone)."""
        self.page.evaluate("""() => {
            const text = [...document.querySelectorAll('span')].find(s => s.textContent.startsWith('Introducing'));
            const banner = text?.closest('div.relative');
            banner?.querySelector(':scope > button')?.click();
        }""")
        self.page.evaluate("() => app.extensionManager.setting.set('Comfy.Minimap.Visible', false)")
        self.page.wait_for_timeout(500)

    def frame_nodes(self, node_ids: list[int], scale: float | None = None,
                    box: tuple[int, int, int, int] | None = None) -> None:
        """Scroll and zoom the canvas onto these nodes: at ``scale`` from the top-left of the canvas area, or (no
        scale) fitted and centred into ``box`` = (x, y, width, height) in page pixels."""
        self.page.evaluate("""([ids, scale, box]) => {
            const nodes = ids.map(id => app.graph.getNodeById(id));
            const title = LiteGraph.NODE_TITLE_HEIGHT;
            const x0 = Math.min(...nodes.map(n => n.pos[0])), y0 = Math.min(...nodes.map(n => n.pos[1] - title));
            const x1 = Math.max(...nodes.map(n => n.pos[0] + n.size[0]));
            const y1 = Math.max(...nodes.map(n => n.pos[1] + n.size[1]));
            const ds = app.canvas.ds;
            if (scale) {
                ds.scale = scale;
                ds.offset = [80 / scale - x0, 110 / scale - y0];  // clear of the sidebar and the tab bar
            } else {
                const [bx, by, bw, bh] = box;
                ds.scale = Math.min(bw / (x1 - x0), bh / (y1 - y0)) * 0.94;
                ds.offset = [(bx + bw / 2) / ds.scale - (x0 + x1) / 2, (by + bh / 2) / ds.scale - (y0 + y1) / 2];
            }
            app.canvas.setDirty(true, true);
        }""", [node_ids, scale, list(box) if box else None])
        self.page.wait_for_timeout(800)


@contextlib.contextmanager
def chromium() -> Iterator[Any]:
    """Debian's headless Chromium under Playwright (a ``playwright.sync_api.Browser``); closed afterwards."""
    from playwright.sync_api import sync_playwright

    executable = chromium_path()
    if executable is None:
        raise RuntimeError("No Chromium: install Debian's chromium (apt-get install chromium) or set FASTLANE_CHROMIUM")
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=executable, args=CHROMIUM_FLAGS)
        try:
            yield browser
        finally:
            browser.close()


@contextlib.contextmanager
def comfy_page(browser: Any, url: str, width: int = 1600, height: int = 1000) -> Iterator[ComfyPage]:
    """A new tab (fresh profile) on ComfyUI at ``url``, started up; closed afterwards."""
    context = browser.new_context(viewport={"width": width, "height": height})
    try:
        ui = ComfyPage(context.new_page(), url)
        ui.open()
        yield ui
    finally:
        context.close()


@contextlib.contextmanager
def browser_page(url: str, width: int = 1600, height: int = 1000) -> Iterator[ComfyPage]:
    """Both of the above at once, for scripts."""
    with chromium() as browser, comfy_page(browser, url, width, height) as ui:
        yield ui
