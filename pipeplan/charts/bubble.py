"""Bubble fraction against the number of micro-batches: simulated points over the closed forms."""
from __future__ import annotations

from functools import partial
from typing import Callable, Sequence

from simulator.engine import simulate
from simulator.ir import ScheduleError
from simulator.schedules import DEFAULT_SCHEDULES, SCHEDULES, ScheduleEntry, build_schedule
from simulator.workload import uniform_workload

from .render import figure_format, pyplot, save_figure


def figure_chunks(entry: ScheduleEntry, v: int) -> int:
    """The chart's chunk count ``v`` for chunked schedules, 1 for the others."""
    return v if entry.default_chunks > 1 else 1


def closed_forms(p: int, v: int = 2) -> dict[str, tuple[str, Callable[[float], float]]]:
    """Each schedule's closed-form bubble fraction against m (its registry entry's ``bubble``).

    F = B = W = 1 per device's worth of work, so chunked schedules' stages take 1/v each.
    Schedules without a closed form are left out.
    """
    return {
        name: (entry.bubble.formula, partial(entry.bubble.fraction, p, v=figure_chunks(entry, v)))
        for name, entry in SCHEDULES.items() if entry.bubble is not None
    }


def simulated_bubbles(name: str, p: int, ms: Sequence[int], v: int) -> list[tuple[int, float]]:
    chunks = figure_chunks(SCHEDULES[name], v)
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
    names = list(schedules or DEFAULT_SCHEDULES)
    fig, ax = plt.subplots(figsize=(8, 5))
    grid = [m / 4 for m in range(4, 4 * max(ms) + 1)]
    for name in names:
        style = SCHEDULES[name].style
        label = name
        if name in forms:
            formula_text, formula = forms[name]
            ax.plot(grid, [formula(m) for m in grid], color=style.color, linewidth=1, alpha=0.7,
                    linestyle=":" if style.coincides else "-")
            label = f"{name} (line: {formula_text})"
        points = simulated_bubbles(name, p, ms, v)
        ax.plot([m for m, _ in points], [b for _, b in points], linestyle="none", marker=style.marker,
                color=style.color, markersize=9 if style.coincides else 6,
                markerfacecolor="none" if style.coincides else style.color, label=label)
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
