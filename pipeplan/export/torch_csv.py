"""A plan's schedule as torch.distributed.pipelining's CSV: one row per pipeline rank, one action per cell.

``compute_only`` (what ``_PipelineScheduleRuntime._load_csv`` lowers itself, what torchtitan and
``pipeplan simulate --schedule-csv`` read) holds the compute ops alone: F, B, I, W and DualPipeV's
overlapped pairs. ``compute_comms`` is that order through torch's lowering passes ``_add_reduce_grad``
and ``_add_send_recv`` (``simulator.torch_comms``): each stage's ``REDUCE_GRAD`` after its last
backward, and a send after every op whose output crosses to another rank with the receive in the
receiver's row (torch's runtime loads it with ``format="compute_comms"`` and runs it as written).
"""
from __future__ import annotations

from simulator.ir import Schedule, make_schedule, to_csv
from simulator.kinds import COMPOSITE_KINDS, COMPUTE_KINDS
from simulator.torch_comms import with_torch_comms

from ..lowering import Resolved
from .common import Export, ExportOptions


def compute_only(schedule: Schedule) -> Schedule:
    """``schedule`` without its per-stage communication actions (a custom CSV may list them): torch's
    compute-only format refuses them, and its lowering adds its own."""
    keep = frozenset(COMPUTE_KINDS) | frozenset(COMPOSITE_KINDS)
    rows = [[a for a in actions if a.kind in keep] for actions in schedule.device_actions]
    return make_schedule(rows, schedule.stage_to_device, schedule.num_microbatches, schedule.name, schedule.chunks)


def export_torch_csv(resolved: Resolved, options: ExportOptions) -> Export:
    """The plan's schedule (the order pipeplan simulates, cost-aware ones ordered by the plan's costs) as
    torch's CSV in ``options.csv_format``."""
    schedule = compute_only(resolved.schedule)
    plan = resolved.plan
    ranks = ",".join(map(str, schedule.stage_to_device))
    notes = [f"one row per pipeline rank; stages 0..{schedule.num_stages - 1} on ranks {ranks}; torch loads it "
             f"with _load_csv(path, format=\"{options.csv_format}\")"]
    if schedule.num_actions() != resolved.schedule.num_actions():
        notes.append("the plan's CSV lists communication actions; torch's own lowering places them, so they are "
                     "left out" + (" and placed again" if options.csv_format == "compute_comms" else ""))
    if options.csv_format == "compute_comms":
        schedule = with_torch_comms(schedule)
    if plan.tp > 1 or plan.dp > 1:
        notes.append(f"the CSV orders one pipeline replica's ranks; every tensor and data-parallel rank of "
                     f"tp={plan.tp} x dp={plan.dp} runs the same rows")
    return Export("torch-csv", to_csv(schedule), notes=tuple(notes))
