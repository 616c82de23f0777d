"""The chart and trace flags shared by ``schedule`` and ``simulate``, and writing what they ask for."""
from __future__ import annotations

import argparse
from pathlib import Path

from simulator.engine import SimResult

from ..errors import SpecError


def add_output_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--gantt", metavar="FILE", help="Gantt chart (.png, .svg or .pdf)")
    p.add_argument("--memory-plot", metavar="FILE", help="memory over time per device (.png, .svg or .pdf)")
    p.add_argument("--trace", metavar="FILE", help="Perfetto / Chrome trace (.json)")
    p.add_argument("--timeline", metavar="FILE", help="save the simulation (.json) to draw later with pipeplan gantt")


def check_output_arguments(args: argparse.Namespace) -> None:
    """Reject an output's wrong extension before any work, so a typo never costs a simulation or a half
    output; where it may be written is ``paths.check_paths``'s job, with ``chart_writes``."""
    from ..charts.render import figure_format

    for flag in ("gantt", "memory_plot"):
        path = getattr(args, flag, None)
        if path:
            figure_format(path, f"--{flag.replace('_', '-')}")
    for flag in ("trace", "timeline"):
        path = getattr(args, flag, None)
        if path and Path(path).suffix.lower() != ".json":
            raise SpecError(f"--{flag}: {path!r} needs a .json extension")


def chart_writes(args: argparse.Namespace) -> list[tuple[str, str | None]]:
    """The (flag, path) of each chart and trace output, for ``paths.check_paths``."""
    return [(f"--{flag.replace('_', '-')}", getattr(args, flag, None))
            for flag in ("gantt", "memory_plot", "trace", "timeline")]


def write_outputs(args: argparse.Namespace, result: SimResult, title: str | None = None,
                  passes: dict[int, str] | None = None) -> list[str]:
    """Write every requested output; return the paths written. ``passes`` colours a serving run's Gantt boxes
    by pass (``charts.gantt.draw_gantt``)."""
    written = []
    unit = result.timeline.meta.get("time_unit")
    if args.gantt:
        from ..charts.gantt import gantt

        gantt(result.timeline, args.gantt, title=title, passes=passes)
        written.append(args.gantt)
    if args.memory_plot:
        from ..charts.gantt import describe
        from ..charts.memory import memory_plot

        memory_plot(result.memory, result.capacity, args.memory_plot, title=f"memory: {describe(result.timeline)}",
                    unit=unit)
        written.append(args.memory_plot)
    if args.trace:
        from ..charts.trace import write_trace

        write_trace(result.timeline, args.trace, time_to_us=1e3 if unit == "unit" else 1e6)
        written.append(args.trace)
    if args.timeline:
        from ..results import save_simulation

        save_simulation(result, args.timeline)
        written.append(args.timeline)
    return written
