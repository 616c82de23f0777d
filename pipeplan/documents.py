"""Checks of the saved documents ``gantt`` and ``compare`` read back: timelines and validation reports.

A saved file may be damaged or hand-edited; everything a chart or a table reads is checked first,
so a bad value is a one-line error naming its field (``input.timeline.ops[3] device``) instead of a
traceback, or a chart drawn with NaN times or rows for devices that do not exist.
"""
from __future__ import annotations

import math
from typing import Any

from simulator.ir import Action, ScheduleError
from simulator.timeline import Timeline

from .errors import SpecError

RESAVE = "re-save the file with pipeplan"
# The largest time a saved timeline holds, in either sign: the ops limit (2e6) times the longest synthetic
# op (1e9) is 2e15; past 1e18 a chart's axis arithmetic overflows (1e308 draws nothing but warnings).
MAX_TIME = 1e18


def shown(value: Any) -> str:
    """``repr(value)``, cut to one short line: an error message quotes it, whatever its size."""
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def finite_number(field: str, value: Any) -> float:
    number = None
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        try:
            number = float(value)
        except OverflowError:  # an integer past the float range
            pass
    if number is None or not math.isfinite(number):
        raise SpecError(f"{field}: must be a finite number (got {shown(value)}); {RESAVE}")
    return number


def whole_number(field: str, value: Any, least: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < least:
        raise SpecError(f"{field}: must be a whole number >= {least} (got {shown(value)}); {RESAVE}")
    return value


def text(field: str, value: Any) -> str:
    if not isinstance(value, str):
        raise SpecError(f"{field}: must be text (got {shown(value)}); {RESAVE}")
    return value


def mapping(field: str, value: Any) -> dict:
    if not isinstance(value, dict):
        raise SpecError(f"{field}: must be a mapping (got {type(value).__name__}); {RESAVE}")
    return value


def listing(field: str, value: Any) -> list:
    if not isinstance(value, list):
        raise SpecError(f"{field}: must be a list (got {type(value).__name__}); {RESAVE}")
    return value


def _index(field: str, value: Any, count: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < count:
        raise SpecError(f"{field}: must be a device index 0..{count - 1} (got {shown(value)}); {RESAVE}")
    return value


def _action(field: str, value: Any) -> None:
    try:
        Action.parse(text(field, value))
    except ScheduleError as err:
        raise SpecError(f"{field}: {err}") from None


def _time(field: str, value: Any) -> float:
    number = finite_number(field, value)
    if abs(number) > MAX_TIME:
        raise SpecError(f"{field}: must be within -{MAX_TIME:g} .. {MAX_TIME:g} (got {shown(value)}); {RESAVE}")
    return number


def _interval(field: str, start: Any, end: Any) -> None:
    if _time(f"{field} start", start) > _time(f"{field} end", end):
        raise SpecError(f"{field}: ends ({end!r}) before it starts ({start!r}); {RESAVE}")


def _rows(field: str, value: Any, layout: tuple[str, ...]) -> list:
    for k, row in enumerate(listing(field, value)):
        if not isinstance(row, list) or len(row) != len(layout):
            raise SpecError(f"{field}[{k}]: must be [{', '.join(layout)}] (got {shown(row)}); {RESAVE}")
    return value


def checked_timeline(data: Any, field: str) -> Timeline:
    """A timeline from its saved form (``Timeline.to_dict``), every field checked first: at least one
    device and at most the GPU limit (``limits``), at least one op, device indices below ``num_devices``,
    actions in torch's text form, times within ``MAX_TIME`` with start <= end, finite byte counts >= 0."""
    from .limits import check

    data = mapping(field, data)
    count = whole_number(f"{field}.num_devices", data.get("num_devices"))
    check("gpus", count, f"{field}.num_devices")
    mapping(f"{field}.meta", data.get("meta", {}))
    if data.get("ops") == []:
        raise SpecError(f"{field}.ops: holds no op, so there is nothing to draw or compare; {RESAVE}")
    for k, (device, action, start, end) in enumerate(_rows(f"{field}.ops", data.get("ops"),
                                                            ("device", "action", "start", "end"))):
        where = f"{field}.ops[{k}]"
        _index(f"{where} device", device, count)
        _action(f"{where} action", action)
        _interval(where, start, end)
    layout = ("src", "dst", "action", "consumer", "start", "end", "bytes")
    for k, (src, dst, action, consumer, start, end, nbytes) in enumerate(
            _rows(f"{field}.transfers", data.get("transfers", []), layout)):
        where = f"{field}.transfers[{k}]"
        _index(f"{where} src", src, count)
        _index(f"{where} dst", dst, count)
        _action(f"{where} action", action)
        _action(f"{where} consumer", consumer)
        _interval(where, start, end)
        if finite_number(f"{where} bytes", nbytes) < 0:
            raise SpecError(f"{where} bytes: must be >= 0 (got {shown(nbytes)}); {RESAVE}")
    return Timeline.from_dict(data)


def check_report(report: dict[str, Any]) -> None:
    """The fields of a validation report that ``pipeplan compare`` prints and draws: the plan's and
    the run's header fields, bubble, iteration and busy time of each section, the errors, and every
    timeline the report keeps."""
    plan = mapping("report.plan", report.get("plan"))
    model = plan.get("model")
    if isinstance(model, dict):
        text("report.plan.model.name", model.get("name"))
    else:
        text("report.plan.model", model)
    text("report.plan.schedule", plan.get("schedule"))
    for key in ("pp", "num_microbatches", "microbatch_size"):
        whole_number(f"report.plan.{key}", plan.get(key))
    for k, n in enumerate(listing("report.plan.layers_per_stage", plan.get("layers_per_stage"))):
        whole_number(f"report.plan.layers_per_stage[{k}]", n, least=0)
    for k, r in enumerate(listing("report.plan.recompute", plan.get("recompute") or [])):
        text(f"report.plan.recompute[{k}]", r)
    run = mapping("report.run", report.get("run"))
    for key in ("backend", "device", "dtype"):
        text(f"report.run.{key}", run.get(key))
    for key in ("world_size", "threads_per_rank", "iterations"):
        whole_number(f"report.run.{key}", run.get(key))
    whole_number("report.run.warmup", run.get("warmup"), least=0)
    whole_number("report.run.iterations_tried", run.get("iterations_tried", run["iterations"]))
    if not isinstance(run.get("disturbed", False), bool):
        raise SpecError(f"report.run.disturbed: must be true or false (got {shown(run['disturbed'])}); {RESAVE}")
    if run.get("left_out") is not None:
        text("report.run.left_out", run["left_out"])
    for key in ("measured", "predicted", "apriori"):
        section = mapping(f"report.{key}", report.get(key))
        for number in ("bubble_fraction", "iteration_time"):
            finite_number(f"report.{key}.{number}", section.get(number))
        for d, busy in enumerate(listing(f"report.{key}.busy_time", section.get("busy_time"))):
            finite_number(f"report.{key}.busy_time[{d}]", busy)
        if key == "measured" or "timeline" in section:  # a run always keeps its measured timeline
            checked_timeline(section.get("timeline"), f"report.{key}.timeline")
    errors = mapping("report.errors", report.get("errors"))
    for key in ("predicted", "apriori"):
        error = mapping(f"report.errors.{key}", errors.get(key))
        for number in ("bubble_points", "iteration_time_pct"):
            finite_number(f"report.errors.{key}.{number}", error.get(number))
