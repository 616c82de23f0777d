"""Gantt charts of a timeline: one row per device, a box per op coloured by kind, idle time white.

Compute ops fill the top of a device's row; below it a thin lane of pipeline transfers and a
band for the device's communication stream, split into one lane per category present (DP:
gathers and gradient reductions, ``pipeplan.breakdown.COMM_CATEGORY``; the legend names each
kind "DP: ..."). Tensor-parallel collectives are inside the compute ops, so they have no lane.

Boxes are drawn as one PolyCollection (not one artist per op), so tens of thousands of ops render
in seconds; micro-batch numbers appear inside boxes only where they fit. In a recurrent (decode)
timeline (``meta["recurrence"]`` = R streams) a box shows its stream, micro-batch mod R, so a
stream's passes are seen cycling; ``passes`` (micro-batch -> a ``style.PASS_COLORS`` name, e.g.
prefill or decode) colours each pass by what it is.
"""
from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np

from simulator.kinds import KINDS, is_compute
from simulator.timeline import Timeline, bubble_fraction, iteration_time

from ..breakdown import CATEGORIES, COMM_CATEGORY
from .render import figure_format, pyplot, save_figure
from .style import KIND_COLORS, KIND_LABELS, PASS_COLORS, TRANSFER_COLORS, hex_to_rgb, shade, time_scale

MAX_LABELS = 4000


RASTERIZE_ABOVE = 3000  # boxes; beyond this, per-box outlines and text would be invisible anyway


def chunk_index(timeline: Timeline) -> dict[int, tuple[int, int]]:
    """stage -> (chunk index on its device, chunks on that device), read off the timeline itself."""
    stages_on: dict[int, set[int]] = {}
    for op in timeline.ops:
        stages_on.setdefault(op.device, set()).add(op.action.stage)
    index = {}
    for stages in stages_on.values():
        ordered = sorted(stages)
        for k, s in enumerate(ordered):
            index[s] = (k, len(ordered))
    return index


def describe(timeline: Timeline) -> str:
    """Title text: schedule, p, m, v, bubble and iteration time."""
    meta = timeline.meta
    _, unit = time_scale(iteration_time(timeline), meta.get("time_unit"))
    total = iteration_time(timeline)
    if meta.get("time_unit") == "unit":
        total_text = f"{total:g}"
    else:
        scale, _ = time_scale(total, None)
        total_text = f"{total * scale:.3g} {'s' if scale == 1 else 'ms' if scale == 1e3 else 'us'}"
    parts = [str(meta.get("label") or meta.get("schedule", "schedule"))]
    parts.append(f"p={timeline.num_devices}")
    if meta.get("recurrence"):
        parts.append(f"m={meta['recurrence']} streams")
    elif "microbatches" in meta:
        parts.append(f"m={meta['microbatches']}")
    if meta.get("chunks", 1) != 1:
        parts.append(f"v={meta['chunks']}")
    parts.append(f"bubble {100 * bubble_fraction(timeline):.1f} %")
    parts.append(f"iteration {total_text}")
    return "   ".join(parts)


def has_visible_transfers(timeline: Timeline) -> bool:
    return any(t.end > t.start for t in timeline.transfers)


def draw_gantt(ax, timeline: Timeline, *, title: str | None = None, show_transfers: bool = True,
               xmax: float | None = None, legend: bool = True, legend_from: Sequence[Timeline] = (),
               window: tuple[float, float] | None = None, passes: Mapping[int, str] | None = None) -> None:
    """Draw ``timeline`` into ``ax`` (device 0 on top); the legend covers ``legend_from`` too.

    ``window`` (start, end) in timeline time zooms in, e.g. to see transfers between long ops.
    ``passes`` colours forward ops by the kind of pass their micro-batch is (see the module docstring).
    """
    from matplotlib.collections import PolyCollection
    from matplotlib.patches import Patch

    p = timeline.num_devices
    span = xmax if xmax is not None else iteration_time(timeline)
    origin = min((o.start for o in timeline.ops), default=0.0)
    scale, xlabel = time_scale(span, timeline.meta.get("time_unit"))
    transfers = show_transfers and has_visible_transfers(timeline)
    comm_ops = [o for o in timeline.ops if not is_compute(o.action.kind)]
    # Bands of a device's row: compute on top, then transfers, then the communication stream.
    top, bottom = (0.06, 0.70) if transfers or comm_ops else (0.08, 0.92)
    lane_top, lane_bottom = 0.76, 0.92
    comm_top, comm_bottom = lane_top, lane_bottom
    if transfers and comm_ops:
        bottom, lane_top, lane_bottom, comm_top = 0.58, 0.62, 0.74, 0.78

    chunks = chunk_index(timeline)
    ops = [o for o in timeline.ops if is_compute(o.action.kind)] if comm_ops else timeline.ops
    starts = np.fromiter(((o.start - origin) * scale for o in ops), float, len(ops))
    ends = np.fromiter(((o.end - origin) * scale for o in ops), float, len(ops))
    rows = np.fromiter((o.device for o in ops), float, len(ops))
    colors = [shade(o.action.kind, *chunks[o.action.stage]) for o in ops]
    if passes:
        colors = [hex_to_rgb(PASS_COLORS[passes[o.action.microbatch]]) if o.action.microbatch in passes else c
                  for o, c in zip(ops, colors)]
    verts = np.stack(
        [np.stack([starts, rows + top], 1), np.stack([starts, rows + bottom], 1),
         np.stack([ends, rows + bottom], 1), np.stack([ends, rows + top], 1)], 1)
    thin = len(ops) > RASTERIZE_ABOVE
    boxes = PolyCollection(verts, facecolors=colors, edgecolors="none" if thin else "white",
                           linewidths=0 if thin else 0.6)
    # A vector file with one path per box grows to tens of MB and opens slowly; past a few thousand
    # boxes SVG/PDF embed them as one image while axes and text stay vector.
    boxes.set_rasterized(thin)
    ax.add_collection(boxes)

    if transfers:
        t_start = np.fromiter(((t.start - origin) * scale for t in timeline.transfers), float)
        t_end = np.fromiter(((t.end - origin) * scale for t in timeline.transfers), float)
        t_rows = np.fromiter((t.src for t in timeline.transfers), float)
        t_verts = np.stack(
            [np.stack([t_start, t_rows + lane_top], 1), np.stack([t_start, t_rows + lane_bottom], 1),
             np.stack([t_end, t_rows + lane_bottom], 1), np.stack([t_end, t_rows + lane_top], 1)], 1)
        t_colors = [TRANSFER_COLORS["fwd" if t.action.kind == "F" else "bwd"] for t in timeline.transfers]
        lanes = PolyCollection(t_verts, facecolors=t_colors, edgecolors="none", alpha=0.8)
        lanes.set_rasterized(len(t_verts) > RASTERIZE_ABOVE)
        ax.add_collection(lanes)
    if comm_ops:
        # One sub-lane per communication category present, so DP (and later TP) ops never hide each other.
        present = sorted({COMM_CATEGORY.get(o.action.kind, "other") for o in comm_ops}, key=CATEGORIES.index)
        height = (comm_bottom - comm_top) / len(present)
        c_verts = []
        for o in comm_ops:
            y0 = o.device + comm_top + height * present.index(COMM_CATEGORY.get(o.action.kind, "other"))
            x0, x1 = (o.start - origin) * scale, (o.end - origin) * scale
            c_verts.append([(x0, y0), (x0, y0 + height), (x1, y0 + height), (x1, y0)])
        ax.add_collection(PolyCollection(c_verts, facecolors=[KIND_COLORS[o.action.kind] for o in comm_ops],
                                         edgecolors="white", linewidths=0.4))

    if window is not None:
        ax.set_xlim((window[0] - origin) * scale, (window[1] - origin) * scale)
        width = (window[1] - window[0]) * scale
    else:
        ax.set_xlim(0, span * scale)
        width = span * scale
    ax.set_ylim(p, 0)
    ax.set_yticks(np.arange(p) + (top + bottom) / 2)
    step = max(1, p // 32)
    ax.set_yticks(np.arange(0, p, step) + (top + bottom) / 2)
    ax.set_yticklabels([f"dev {d}" for d in range(0, p, step)], fontsize=8 if p <= 16 else 6)
    ax.set_xlabel(xlabel)
    ax.grid(axis="x", color="#dddddd", linewidth=0.5)
    ax.set_axisbelow(True)
    for spine in ("top", "right"):
        ax.spines[spine].set_visible(False)
    ax.set_title(title if title is not None else describe(timeline), fontsize=10, loc="left")

    _label_boxes(ax, ops, starts, ends, rows, top, bottom, width, colors, timeline.meta.get("recurrence"))

    if legend:
        every = [timeline, *legend_from]
        present = {o.action.kind for t in every for o in t.ops}
        kinds = [k for k in KINDS if k in present and not (passes and k == "F")]
        handles = [Patch(color=PASS_COLORS[name], label=name) for name in PASS_COLORS
                   if passes and name in set(passes.values())]
        handles += [Patch(color=KIND_COLORS[k], label=KIND_LABELS[k]) for k in kinds]
        if any(max((c for _, c in chunk_index(t).values()), default=1) > 1 for t in every):
            handles.append(Patch(color=shade("F", 1, 2), label="lighter: later chunk"))
        if show_transfers and any(has_visible_transfers(t) for t in every):
            sent = {t.action.kind == "F" for tl in every for t in tl.transfers}
            if True in sent:
                handles.append(Patch(color=TRANSFER_COLORS["fwd"], label="send activations"))
            if False in sent:
                handles.append(Patch(color=TRANSFER_COLORS["bwd"], label="send gradients"))
        ax.legend(handles=handles, loc="upper left", bbox_to_anchor=(1.0, 1.0), fontsize=7, frameon=False)


def _label_boxes(ax, ops, starts, ends, rows, top, bottom, width_data, colors, streams: int | None = None) -> None:
    """Write the micro-batch number (its stream's, with ``streams``) inside boxes wide enough to hold it."""
    if width_data <= 0:
        return
    lo, hi = ax.get_xlim()
    visible = [(op, x0, x1, y) for op, x0, x1, y in zip(ops, starts, ends, rows) if x1 > lo and x0 < hi]
    if len(visible) > MAX_LABELS:
        return
    fig = ax.figure
    axes_px = ax.get_position().width * fig.get_figwidth() * fig.dpi
    px_per_unit = axes_px / width_data
    row_px = ax.get_position().height * fig.get_figheight() * fig.dpi / max(1, ax.get_ylim()[0])
    fontsize = min(8.0, 0.45 * row_px * (bottom - top))
    if fontsize < 4:
        return
    color_of = {id(op): c for op, c in zip(ops, colors)}
    for op, x0, x1, y in visible:
        text = str(op.action.microbatch % streams if streams else op.action.microbatch)
        x0, x1 = max(x0, lo), min(x1, hi)
        if (x1 - x0) * px_per_unit >= 0.75 * fontsize * len(text) + 2:
            r, g, b = color_of[id(op)]
            light = 0.299 * r + 0.587 * g + 0.114 * b > 0.6
            ax.text((x0 + x1) / 2, y + (top + bottom) / 2, text, ha="center", va="center",
                    fontsize=fontsize, color="#222222" if light else "white")


def _figure_height(p: int, panels: int = 1) -> float:
    return min(18.0, panels * (0.9 + 0.32 * min(p, 40)))


def gantt(timeline: Timeline, path: str, *, show_transfers: bool = True, title: str | None = None,
          passes: Mapping[int, str] | None = None) -> None:
    """One timeline to PNG/SVG/PDF (format from the extension); ``passes`` as in ``draw_gantt``."""
    figure_format(path)
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(13, _figure_height(timeline.num_devices)))
    draw_gantt(ax, timeline, title=title, show_transfers=show_transfers, passes=passes)
    save_figure(fig, path)


def gantt_panels(timelines: Sequence[Timeline], path: str, *, titles: Sequence[str | None] | None = None,
                 show_transfers: bool = True) -> None:
    """Several timelines stacked on one shared time axis (same scale, so they compare at a glance)."""
    figure_format(path)
    plt = pyplot()
    xmax = max(iteration_time(t) for t in timelines)
    p = max(t.num_devices for t in timelines)
    fig, axes = plt.subplots(len(timelines), 1, figsize=(13, _figure_height(p, len(timelines))), sharex=True,
                             squeeze=False)
    for k, (ax, timeline) in enumerate(zip(axes[:, 0], timelines)):
        draw_gantt(ax, timeline, title=None if titles is None else titles[k], show_transfers=show_transfers,
                   xmax=xmax, legend=k == 0, legend_from=timelines)
        if k < len(timelines) - 1:
            ax.set_xlabel("")
    fig.tight_layout()
    save_figure(fig, path)


def side_by_side(left: Timeline, right: Timeline, path: str, labels: tuple[str, str] = ("predicted", "measured"),
                 *, show_transfers: bool = True) -> None:
    """Two timelines (predicted | measured, or plan A | plan B) on a shared time axis, each titled."""
    titles = [f"{label}: {describe(t)}" for label, t in zip(labels, (left, right))]
    gantt_panels([left, right], path, titles=titles, show_transfers=show_transfers)
