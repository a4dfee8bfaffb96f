"""The Benchmark Report's latency plot as a ComfyUI IMAGE: milliseconds per model call at each sampling step, one
line per run, computed and cached calls told apart by marker and colour, the speed-up and PSNR in the title.

Drawn with matplotlib when it is installed (requirements-dev.txt; the readable one); otherwise with PIL, which
ComfyUI always has, so the node works in any install. matplotlib is driven through its object API on the Agg
canvas (no pyplot global state), which is safe in ComfyUI's worker thread.
"""
from __future__ import annotations

import numpy as np
import torch
from PIL import Image, ImageDraw

X_LABEL = "sampling step"
Y_LABEL = "ms per model call"
RUN_COLOURS = ("#1f77b4", "#7f7f7f", "#2ca02c", "#9467bd")  # the measured run blue, the reference grey
CACHED_COLOUR = "#ff7f0e"  # a call answered from the cache (forecast or reused), whichever run made it


def _split(steps: dict[int, float], done: list[int] | None) -> tuple[list[tuple[int, float]], list[tuple[int, float]]]:
    """(computed, cached) points of one run; a run without a cacher computes every call."""
    points = sorted(steps.items())
    if done is None:
        return points, []
    wanted = set(done)
    return [p for p in points if p[0] in wanted], [p for p in points if p[0] not in wanted]


def _legend_labels(name: str, computed: list, cached: list, has_cacher: bool) -> tuple[str, str]:
    if not has_cacher:
        return f"{name}: every call computed ({len(computed)})", ""
    return f"{name}: computed ({len(computed)})", f"{name}: from cache ({len(cached)})"


def plot(series: dict[str, dict[int, float]], computed: dict[str, list[int] | None], width: int = 800,
         height: int = 400, title: str = "") -> torch.Tensor:
    """(1, height, width, 3) float IMAGE of ``series`` (run name -> step -> ms per model call); ``computed`` names
    each run's computed steps (None: no cacher, every call computed)."""
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return _plot_pil(series, computed, width, height, title)
    return _plot_matplotlib(series, computed, width, height, title)


def _plot_matplotlib(series: dict[str, dict[int, float]], computed: dict[str, list[int] | None], width: int,
                     height: int, title: str) -> torch.Tensor:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    dpi = 100
    fig = Figure(figsize=(width / dpi, height / dpi), dpi=dpi)
    canvas = FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    for i, (name, steps) in enumerate(series.items()):
        colour = RUN_COLOURS[i % len(RUN_COLOURS)]
        done = computed.get(name)
        comp, cached = _split(steps, done)
        comp_label, cached_label = _legend_labels(name, comp, cached, done is not None)
        points = sorted(steps.items())
        ax.plot([s for s, _ in points], [v for _, v in points], color=colour, linewidth=1.2, alpha=0.6)
        if comp:
            ax.plot(*zip(*comp), linestyle="none", marker="o", markersize=6, color=colour, label=comp_label)
        if cached:
            ax.plot(*zip(*cached), linestyle="none", marker="v", markersize=6, markerfacecolor="white",
                    markeredgecolor=CACHED_COLOUR, markeredgewidth=1.5, label=cached_label)
    ax.set_xlabel(X_LABEL)
    ax.set_ylabel(Y_LABEL)
    ax.set_ylim(bottom=0)
    ax.grid(True, alpha=0.3)
    ax.xaxis.get_major_locator().set_params(integer=True)
    if series:
        ax.legend(loc="best", fontsize=8, framealpha=0.9)
    ax.set_title(title, fontsize=10)
    fig.tight_layout()
    canvas.draw()
    rgba = np.asarray(canvas.buffer_rgba(), dtype=np.float32)[..., :3] / 255.0
    return torch.from_numpy(rgba.copy())[None]


def _plot_pil(series: dict[str, dict[int, float]], computed: dict[str, list[int] | None], width: int, height: int,
              title: str) -> torch.Tensor:
    """The fallback without matplotlib: the same content, drawn with PIL's default font."""
    img = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(img)
    left, right, top, bottom = 64, width - 16, 40, height - 40
    all_ms = [v for s in series.values() for v in s.values()] or [1.0]
    all_steps = [k for s in series.values() for k in s] or [0]
    y_max = max(all_ms) * 1.1 or 1.0
    x_max = max(max(all_steps), 1)
    draw.rectangle([left, top, right, bottom], outline="black")
    for frac in (0.0, 0.5, 1.0):
        y = bottom - frac * (bottom - top)
        draw.text((8, y - 6), f"{y_max * frac:.1f}", fill="black")
    draw.text((8, 6), title, fill="black")
    draw.text((8, top - 14), Y_LABEL, fill="black")
    draw.text((left, bottom + 8), "0", fill="black")
    draw.text(((left + right) // 2 - 30, bottom + 20), X_LABEL, fill="black")
    draw.text((right - 20, bottom + 8), str(x_max), fill="black")
    row = 0
    for i, (name, steps) in enumerate(series.items()):
        colour = RUN_COLOURS[i % len(RUN_COLOURS)]
        done = computed.get(name)
        pts = [(left + s / x_max * (right - left), bottom - v / y_max * (bottom - top)) for s, v in sorted(steps.items())]
        if len(pts) > 1:
            draw.line(pts, fill=colour, width=2)
        for (x, y), s in zip(pts, sorted(steps)):
            if done is not None and s not in done:
                draw.polygon([(x - 4, y - 3), (x + 4, y - 3), (x, y + 4)], outline=CACHED_COLOUR, fill="white")
            else:
                draw.ellipse([x - 3, y - 3, x + 3, y + 3], outline=colour, fill=colour)
        comp, cached = _split(steps, done)
        for label, fill in zip(_legend_labels(name, comp, cached, done is not None), (colour, CACHED_COLOUR)):
            if label:
                draw.text((right - 220, top + 6 + 14 * row), label, fill=fill)
                row += 1
    return torch.from_numpy(np.asarray(img, dtype=np.float32) / 255.0)[None]
