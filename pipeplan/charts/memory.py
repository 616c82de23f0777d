"""Memory over time: bytes in use per device against time, with the capacity line and the peak marked."""
from __future__ import annotations

import math
from typing import Sequence

from .render import figure_format, pyplot, save_figure
from .style import CAPACITY_COLOR, time_scale

Curves = Sequence[tuple[Sequence[float], Sequence[float]]]


def _byte_scale(peak: float, unit: str | None) -> tuple[float, str]:
    if unit == "unit":
        return 1.0, "activations (1 = one micro-batch, one stage)"
    for label, scale in (("GB", 1e9), ("MB", 1e6), ("KB", 1e3)):
        if peak >= scale:
            return 1 / scale, f"memory ({label})"
    return 1.0, "memory (bytes)"


def draw_memory(ax, curves: Curves, capacity: Sequence[float] | None, *, title: str = "", unit: str | None = None,
                ymax: float | None = None) -> None:
    import matplotlib as mpl

    span = max((times[-1] for times, _ in curves), default=1.0) or 1.0
    tscale, xlabel = time_scale(span, unit)
    peak_all = max((max(levels) for _, levels in curves), default=1.0)
    bscale, ylabel = _byte_scale(peak_all, unit)
    cmap = mpl.colormaps["viridis"]
    p = len(curves)
    for d, (times, levels) in enumerate(curves):
        color = cmap(d / max(1, p - 1) * 0.9)
        ax.step([t * tscale for t in times], [v * bscale for v in levels], where="post", color=color,
                linewidth=1.2, label=f"dev {d}" if p <= 8 else None)
        k = max(range(len(levels)), key=levels.__getitem__)
        ax.plot(times[k] * tscale, levels[k] * bscale, marker="v", color=color, markersize=6)
    finite = [c for c in (capacity or []) if c is not None and math.isfinite(c)]
    if finite:
        cap = min(finite)
        ax.axhline(cap * bscale, color=CAPACITY_COLOR, linestyle="--", linewidth=1)
        ax.text(0, cap * bscale, " capacity", va="bottom", fontsize=8, color=CAPACITY_COLOR)
    top = max(ymax if ymax is not None else peak_all, max(finite, default=0.0)) * bscale
    ax.set_ylim(0, top * 1.08)
    ax.annotate(f"peak {peak_all * bscale:.3g}", xy=(0.99, 0.97), xycoords="axes fraction", ha="right", va="top",
                fontsize=8)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=10, loc="left")
    ax.grid(color="#e5e5e5", linewidth=0.5)
    for spine in ("top", "right"):
        ax.spines[spine].set_visible(False)
    if p <= 8:
        ax.legend(fontsize=7, frameon=False, loc="upper left", bbox_to_anchor=(1.0, 1.0))


def memory_plot(curves: Curves, capacity: Sequence[float] | None, path: str, *, title: str = "",
                unit: str | None = None) -> None:
    figure_format(path)
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(11, 4))
    draw_memory(ax, curves, capacity, title=title, unit=unit)
    save_figure(fig, path)


def memory_panels(panels: Sequence[tuple[str, Curves, Sequence[float] | None]], path: str,
                  unit: str | None = None) -> None:
    """Several memory plots side by side on one y scale (e.g. GPipe vs 1F1B vs ZB-H2)."""
    figure_format(path)
    plt = pyplot()
    ymax = max(max(levels) for _, curves, _ in panels for _, levels in curves)
    fig, axes = plt.subplots(1, len(panels), figsize=(5 * len(panels), 3.8), sharey=True, squeeze=False)
    for ax, (title, curves, capacity) in zip(axes[0], panels):
        draw_memory(ax, curves, capacity, title=title, unit=unit, ymax=ymax)
    fig.tight_layout()
    save_figure(fig, path)
