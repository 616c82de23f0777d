"""Saved simulation results: a timeline plus what the charts need, as one JSON document.

``pipeplan simulate --timeline FILE`` writes it; ``pipeplan gantt FILE`` draws it later without
re-simulating. Validator reports (keys ``measured`` / ``predicted`` with a ``timeline`` each) load
through the same function.
"""
from __future__ import annotations

import math
from typing import Any

from simulator.engine import SimResult
from simulator.timeline import Timeline

from .documents import checked_timeline
from .errors import SpecError
from .fileio import load_mapping, write_json_atomic

DOCUMENT_KIND = "pipeplan.simulation"
DOCUMENT_VERSION = 1


def _finite_or_none(x: float) -> float | None:
    return x if math.isfinite(x) else None


def simulation_document(result: SimResult, extra: dict[str, Any] | None = None) -> dict[str, Any]:
    return {
        "kind": DOCUMENT_KIND,
        "version": DOCUMENT_VERSION,
        "summary": {k: v for k, v in result.summary().items()},
        "memory": [[list(times), list(levels)] for times, levels in result.memory],
        "capacity": [_finite_or_none(c) for c in result.capacity],
        "timeline": result.timeline.to_dict(),
        **(extra or {}),
    }


def save_simulation(result: SimResult, path: str, extra: dict[str, Any] | None = None) -> None:
    write_json_atomic(path, simulation_document(result, extra))


def load_timelines(path: str) -> list[tuple[str, Timeline]]:
    """The timelines a saved document holds: one for a simulation, (predicted, measured) for a report."""
    data = load_mapping(path, "input")
    if data.get("kind") == DOCUMENT_KIND:
        return [("simulated", checked_timeline(data.get("timeline"), "input.timeline"))]
    if "measured" in data and "predicted" in data:
        found = [(key, checked_timeline(data[key]["timeline"], f"input.{key}.timeline"))
                 for key in ("predicted", "measured") if isinstance(data[key], dict) and "timeline" in data[key]]
        if len(found) == 2:
            return found
    raise SpecError(
        f"input: {path!r} is neither a plan, a saved simulation (pipeplan simulate --timeline) nor a "
        "validation report with measured and predicted timelines"
    )


def is_plan_document(path: str) -> bool:
    """True for a plan file (it has ``layers_per_stage``); a missing, too large, binary or unparsable file
    is a one-line error (``load_mapping`` checks the size first)."""
    return "layers_per_stage" in load_mapping(path, "input")
