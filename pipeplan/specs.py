"""Loading what a plan names: model and cluster specs (files beside the plan first) and its schedule.

The only file I/O on the way from a plan to a workload; ``pipeplan.lowering`` takes what this
returns.
"""
from __future__ import annotations

import csv
from pathlib import Path

from simulator.checker import check_schedule
from simulator.ir import Schedule, ScheduleError, ScheduleTooLarge, from_csv
from simulator.schedules import lookup

from .cluster import ClusterSpec, load_cluster
from .errors import SpecError
from .fileio import read_text
from .limits import check, check_csv_schedule, check_input_file, check_model, check_plan_size, limit
from .lowering import Resolved, generated_schedule, plan_costs
from .model import ModelSpec, load_model
from .plan import Plan


def beside(spec: object, base_dir: str | Path) -> object:
    """A relative spec file (or Hugging Face model folder) name as the one next to the plan
    (``base_dir``) when there is one there."""
    if isinstance(spec, str) and not Path(spec).is_absolute():
        there = Path(base_dir) / spec
        if there.is_file() or (there / "config.json").is_file():
            return str(there)
    return spec


def read_schedule_csv(path: str | Path, field: str) -> Schedule:
    """A schedule in torch's CSV format from the file ``path`` (given by ``field``), sized against the
    limits (``pipeplan.limits``) while it is read and before anything is built from it, then checked
    (complete, each stream's order, no deadlock); a missing, binary, unparsable, too large or unrunnable
    file is a one-line error naming ``field``."""
    path = Path(path)
    if not path.is_file():
        what = "is a folder" if path.is_dir() else "is not a regular file" if path.exists() else "does not exist"
        raise SpecError(f"{field}: {str(path)!r} {what}; give a schedule CSV file")
    check_input_file(path, field)
    text = read_text(path, field, "a schedule CSV (one row of actions per device, e.g. 0F0,0B0)")
    try:
        schedule = from_csv(text, name="custom", max_actions=limit("ops"))
    except ScheduleTooLarge as err:
        check("ops", err.actions, f"{field}: {str(path)!r}, read as far as its first action past the limit,",
              "give a smaller schedule")
        raise  # unreachable: check raises for any count past the limit
    except csv.Error as err:  # a NUL byte, a cell past the csv module's field size limit
        raise SpecError(f"{field}: cannot parse {str(path)!r} as CSV: {err}") from None
    except ScheduleError as err:
        raise SpecError(f"{field}: {str(path)!r}: {err}") from None
    check_csv_schedule(schedule.num_devices, schedule.num_stages, schedule.num_microbatches, schedule.num_actions())
    try:
        check_schedule(schedule)
    except ScheduleError as err:
        raise SpecError(f"{field}: {str(path)!r}: {err}") from None
    return schedule


def plan_schedule(plan: Plan, base_dir: str | Path = ".", model: ModelSpec | None = None,
                  cluster: ClusterSpec | None = None) -> Schedule:
    """The plan's schedule: generated from its name, or read from its custom CSV (relative to ``base_dir``).

    A cost-aware schedule (zb-v, zb-1p, zb-2p) is ordered by the plan's stage costs on ``model`` and
    ``cluster`` (``lowering.plan_costs``); without them, by unit times.
    """
    if plan.schedule == "custom":
        path = Path(base_dir) / plan.schedule_csv if not Path(plan.schedule_csv).is_absolute() else Path(plan.schedule_csv)
        return read_schedule_csv(path, "plan.schedule_csv")
    entry = lookup(plan.schedule)
    costs = None
    if entry is not None and entry.cost_aware and model is not None and cluster is not None:
        costs = plan_costs(model, cluster, plan)
    return generated_schedule(plan.schedule, plan.pp, plan.num_microbatches, plan.chunks, costs)


def resolve(model: ModelSpec | str | dict, cluster: ClusterSpec | str | dict, plan: Plan,
            base_dir: str | Path = ".") -> Resolved:
    """Load the specs a plan names and check that model, cluster, plan and schedule agree.

    Spec files named by a relative path are looked up next to the plan file (``base_dir``) first.
    Sizes are checked against the limits before the schedule is built.
    """
    model = load_model(beside(model, base_dir))
    check_model(model)
    check_plan_size(plan)
    cluster = load_cluster(beside(cluster, base_dir), plan.nodes)
    return Resolved(model, cluster, plan, plan_schedule(plan, base_dir, model, cluster))
