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
                   help="megatron: export a per-stage recomputation list that differs by stage as the nearest "
                        "setting that recomputes at least as much (default: refuse it)")
    p.set_defaults(handler=run)


def input_files(plan_path: str, plan) -> list[Path]:
    """The files an export reads: the plan, and the model, cluster and schedule CSV files it names."""
    from ..specs import beside

    base = Path(plan_path).parent
    named = [beside(ref, base) for ref in (plan.model, plan.cluster, plan.schedule_csv) if isinstance(ref, str)]
    return [Path(plan_path)] + [Path(p) for p in named if Path(p).is_file()]


def check_output_file(flag: str, path: str, inputs: list[Path] = ()) -> None:
    """A file may be written at ``path``: its folder exists and it is not a folder, a special file
    (device, pipe) or one of ``inputs``. Raises SpecError naming ``flag``."""
    target = Path(path)
    if target.is_dir():
        raise SpecError(f"{flag}: {path!r} is a folder; name a file")
    if target.exists() and not target.is_file():
        raise SpecError(f"{flag}: {path!r} is not a regular file (a device or pipe); name a file")
    if not target.resolve().parent.is_dir():
        raise SpecError(f"{flag}: folder of {path!r} does not exist")
    for given in inputs:
        if target.exists() and given.exists() and target.resolve() == given.resolve():
            raise SpecError(f"{flag}: {path!r} is an input ({given}); name another file")


def default_schedule_csv(out: str) -> str:
    """Where a torchtitan export keeps its schedule CSV beside the options file ``out``: <name>.schedule.csv."""
    target = Path(out)
    return str(target.with_name(target.stem + ".schedule.csv"))


def check_export_outputs(to: str, out: str | None, schedule_csv: str | None, inputs: list[Path]) -> str | None:
    """Check the export's output files before any work; return the schedule CSV path to use (torchtitan)."""
    if out:
        check_output_file("--out", out, inputs)
    if to != "torchtitan":
        return None
    csv_path = schedule_csv or (default_schedule_csv(out) if out else None)
    if csv_path:
        check_output_file("--schedule-csv", csv_path, inputs)
        if out and Path(csv_path).resolve() == Path(out).resolve():
            raise SpecError(f"--schedule-csv: {csv_path!r} is also the options file; name another file")
    return csv_path


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
                                ("--recompute-superset", args.recompute_superset, "megatron")):
        if value and args.to != target:
            raise SpecError(f"{flag}: only for --to {target}; drop it")
    plan = Plan.load(args.plan)
    csv_path = check_export_outputs(args.to, args.out, args.schedule_csv, input_files(args.plan, plan))
    options = ExportOptions(recompute_superset=args.recompute_superset, csv_format=args.csv_format or "compute_only",
                            schedule_csv=csv_path)
    resolved = resolve(plan.model, plan.cluster, plan, Path(args.plan).parent)
    for path in write_export(export_plan(resolved, args.to, options), args.out, csv_path):
        print(f"wrote {path}")
    return 0
