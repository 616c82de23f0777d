"""``pipeplan export``: a plan file as Megatron-LM arguments, torchtitan options or torch's schedule CSV.

Also the output checks and writing that ``optimize --export`` shares.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ..errors import SpecError


def register(sub: argparse._SubParsersAction) -> None:
    from ..export import CSV_FORMATS, EXPORTERS

    p = sub.add_parser(
        "export",
        help="write a plan as Megatron-LM arguments, torchtitan options or torch's schedule CSV",
        description="Export a plan file to the framework that runs it: "
        + "; ".join(f"{t.name}: {t.summary}" for t in EXPORTERS.values())
        + ". Notes (what the output cannot say) go to stderr.",
    )
    p.add_argument("plan", metavar="PLAN.json", help="a plan file (pipeplan optimize --out writes one)")
    p.add_argument("--to", required=True, choices=list(EXPORTERS), help="the export target")
    p.add_argument("--out", metavar="FILE", default=None, help="write here instead of stdout")
    p.add_argument("--schedule-csv", metavar="FILE", default=None,
                   help="torchtitan: where the plan's order goes when torch has no schedule class for it (the options "
                        "name this path; default beside --out as <name>.schedule.csv)")
    p.add_argument("--csv-format", choices=list(CSV_FORMATS), default=None,
                   help="torch-csv: compute_only (default) or compute_comms (with REDUCE_GRAD, sends and receives)")
    p.add_argument("--recompute-superset", action="store_true",
                   help="megatron, torchtitan: export a per-stage recomputation list that differs by stage as the "
                        "nearest setting that recomputes at least as much (default: refuse it)")
    p.set_defaults(handler=run)


def check_export_outputs(to: str, out: str | None, schedule_csv: str | None, reads, other_writes=(),
                         out_flag: str = "--out") -> str | None:
    """Check the export's output files against ``reads`` and ``other_writes`` before any work
    (``paths.check_paths``); return the schedule CSV path to use (torchtitan)."""
    from .paths import check_paths

    csv_path = None
    if to == "torchtitan":
        csv_path = schedule_csv or (default_schedule_csv(out) if out else None)
    check_paths(reads, [*other_writes, (out_flag, out), ("--schedule-csv", csv_path)])
    return csv_path


def default_schedule_csv(out: str) -> str:
    """Where a torchtitan export keeps its schedule CSV beside the options file ``out``: <name>.schedule.csv."""
    target = Path(out)
    return str(target.with_name(target.stem + ".schedule.csv"))


def write_export(export, out: str | None, csv_path: str | None) -> list[str]:
    """Write an ``Export``: its text to ``out`` (or stdout), its schedule CSV to ``csv_path``, its notes to
    stderr (with the CSV's path when the text went to stdout); return the files written."""
    from ..fileio import write_atomic

    written = []
    if out:
        write_atomic(out, export.text)
        written.append(out)
    if export.schedule_csv is not None:
        write_atomic(csv_path, export.schedule_csv)
        written.append(csv_path)
    if not out:
        sys.stdout.write(export.text)
    for note in export.notes:
        print(f"note: {note}", file=sys.stderr)
    if not out and written:
        print(f"note: wrote {written[0]}", file=sys.stderr)
    return written if out else []


def run(args: argparse.Namespace) -> int:
    from ..export import ExportOptions, export_plan
    from ..plan import Plan
    from ..specs import resolve

    for flag, value, target in (("--schedule-csv", args.schedule_csv, "torchtitan"),
                                ("--csv-format", args.csv_format, "torch-csv"),
                                ("--recompute-superset", args.recompute_superset, ("megatron", "torchtitan"))):
        targets = (target,) if isinstance(target, str) else target
        if value and args.to not in targets:
            raise SpecError(f"{flag}: only for --to {' or '.join(targets)}; drop it")
    plan = Plan.load(args.plan)
    from .paths import plan_reads

    csv_path = check_export_outputs(args.to, args.out, args.schedule_csv,
                                    [("PLAN.json", args.plan), *plan_reads(plan, Path(args.plan).parent)])
    options = ExportOptions(recompute_superset=args.recompute_superset, csv_format=args.csv_format or "compute_only",
                            schedule_csv=csv_path)
    resolved = resolve(plan.model, plan.cluster, plan, Path(args.plan).parent)
    for path in write_export(export_plan(resolved, args.to, options), args.out, csv_path):
        print(f"wrote {path}")
    return 0
