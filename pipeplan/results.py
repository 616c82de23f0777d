"""Saved simulation results: a timeline plus what the charts need, as one JSON document.

``pipeplan simulate --timeline FILE`` writes it; ``pipeplan gantt FILE`` draws it later without
re-simulating. Validator reports (keys ``measured`` / ``predicted`` with a ``timeline`` each) load
through the same function.
"""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from simulator.engine import SimResult
from simulator.timeline import Timeline

from .errors import SpecError
from .fileio import load_mapping, write_json_atomic
from .limits import check_input_file

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
    try:
        if data.get("kind") == DOCUMENT_KIND:
            return [("simulated", Timeline.from_dict(data["timeline"]))]
        if "measured" in data and "predicted" in data:
            found = []
            for key in ("predicted", "measured"):
                section = data[key]
                if isinstance(section, dict) and "timeline" in section:
                    found.append((key, Timeline.from_dict(section["timeline"])))
            if len(found) == 2:
                return found
    except (KeyError, TypeError, ValueError, IndexError) as err:
        raise SpecError(f"input: {path!r} has a damaged timeline ({type(err).__name__}: {err}); "
                        "re-save it with pipeplan simulate --timeline") from None
    raise SpecError(
        f"input: {path!r} is neither a plan, a saved simulation (pipeplan simulate --timeline) nor a "
        "validation report with measured and predicted timelines"
    )


def is_plan_document(path: str) -> bool:
    if not Path(path).is_file():
        raise SpecError(f"input: file {path!r} does not exist")
    check_input_file(path, "input")
    try:
        data = json.loads(Path(path).read_text())
    except ValueError:
        return False
    return isinstance(data, dict) and "layers_per_stage" in data
