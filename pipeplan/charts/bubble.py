"""Bubble fraction against the number of micro-batches: simulated points over the closed forms."""
from __future__ import annotations

from typing import Callable, Sequence

from simulator.engine import simulate
from simulator.ir import ScheduleError
from simulator.schedules import build_schedule
from simulator.workload import uniform_workload

from .render import figure_format, pyplot, save_figure
from .style import KIND_COLORS


def closed_forms(p: int, v: int = 2) -> dict[str, tuple[str, Callable[[int], float]]]:
    """Bubble fractions with F = B = W = 1 per device's worth of work (shared REFERENCE.md).

    Chunked schedules split a device's work over v chunks, so their stages take 1/v each.
    GPipe/1F1B (p-1)/(m+p-1); interleaved (p-1)/(v·m+p-1); ZB-H1 bubble time (p-1)(F+B-W);
    ZB-H2 and ZB-V reach the fill bound: the last device starts after (p-1) forwards.
    """
    return {
        "gpipe": ("(p-1)/(m+p-1)", lambda m: (p - 1) / (m + p - 1)),
        "1f1b": ("(p-1)/(m+p-1)", lambda m: (p - 1) / (m + p - 1)),
        "interleaved": ("(p-1)/(vm+p-1)", lambda m: (p - 1) / (v * m + p - 1)),
        "zb-h1": ("(p-1)(F+B-W) / total", lambda m: (p - 1) / (3 * m + p - 1)),
        "zb-h2": ("fill (p-1)F / total", lambda m: (p - 1) / (3 * m + p - 1)),
        "zb-v": ("fill (p-1)F/v / total", lambda m: (p - 1) / 2 / (3 * m + (p - 1) / 2)),
    }


SERIES_STYLE = {
    "gpipe": ("#7f7f7f", "o"), "1f1b": (KIND_COLORS["B"], "s"), "interleaved": ("#8c564b", "D"),
    "zb-h1": (KIND_COLORS["I"], "^"), "zb-h2": (KIND_COLORS["W"], "v"), "zb-v": (KIND_COLORS["F"], "P"),
}


def simulated_bubbles(name: str, p: int, ms: Sequence[int], v: int) -> list[tuple[int, float]]:
    chunks = v if name in ("interleaved", "zb-v") else 1
    points = []
    for m in ms:
        try:
            schedule = build_schedule(name, p, m, chunks)
        except ScheduleError:
            continue  # e.g. interleaved with an m its rounds rule does not allow
        t = 1.0 / chunks
        points.append((m, simulate(uniform_workload(schedule, t, t, t)).bubble_fraction))
    return points


def bubble_vs_microbatches(path: str, p: int = 4, ms: Sequence[int] = (1, 2, 4, 8, 16, 32, 64, 128),
                           v: int = 2, schedules: Sequence[str] | None = None) -> None:
    figure_format(path)
    plt = pyplot()
    forms = closed_forms(p, v)
    names = list(schedules or forms)
    fig, ax = plt.subplots(figsize=(8, 5))
    grid = [m / 4 for m in range(4, 4 * max(ms) + 1)]
    for name in names:
        color, marker = SERIES_STYLE[name]
        label, formula = forms[name]
        ax.plot(grid, [formula(m) for m in grid], color=color, linewidth=1, alpha=0.7,
                linestyle=":" if name in ("gpipe", "zb-h2") else "-")
        points = simulated_bubbles(name, p, ms, v)
        ax.plot([m for m, _ in points], [b for _, b in points], linestyle="none", marker=marker, color=color,
                markersize=6 if name not in ("gpipe", "zb-h2") else 9, markerfacecolor="none" if name in ("gpipe", "zb-h2") else color,
                label=f"{name} (line: {label})")
    ax.set_xscale("log", base=2)
    ax.set_xlabel("micro-batches m")
    ax.set_ylabel("bubble fraction")
    ax.set_ylim(0, 1)
    ax.set_title(f"Simulated bubble (markers) and closed forms (lines), p={p}, F=B=W, chunked schedules v={v}\n"
                 "the closed forms assume m >= p; below it the schedules cannot reach them", fontsize=9, loc="left")
    ax.grid(color="#e5e5e5", linewidth=0.5)
    ax.legend(fontsize=8, frameon=False)
    for spine in ("top", "right"):
        ax.spines[spine].set_visible(False)
    save_figure(fig, path)
