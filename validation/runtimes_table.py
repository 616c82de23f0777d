"""Both runtimes on the same plans: pipeplan's own executor and torch.distributed.pipelining's, back to back.

    python validation/runtimes_table.py                       # 1f1b, interleaved, zb-v (and more) on CPU + gloo
    python validation/runtimes_table.py plans/tiny-zb-v-p2.json --out-dir /tmp/reports

For each plan, each runtime runs until an undisturbed run (``validator.quiet``) or ``--attempts``
runs; the two runtimes alternate, so both see the machine of the same minute (the VM's speed drifts
from one minute to the next). Prints a Markdown table: measured bubble and iteration time, and the
calibrated prediction with its errors (points, per cent). A disturbed row is marked.
"""
from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from pipeplan.validation import ValidateOptions, run_validation, write_report  # noqa: E402
from pipeplan.validation.options import LAUNCHER, RUNTIMES  # noqa: E402

DEFAULT_PLANS = ("tiny-gpipe-p2", "tiny-1f1b-p2", "tiny-interleaved-p2", "tiny-zb-h1-p2", "tiny-zb-v-p2")


def undisturbed(plan: Path, options: ValidateOptions, tries: int) -> dict:
    """The first undisturbed report of ``plan``, or the last one after ``tries`` runs."""
    for _ in range(tries):
        report = run_validation(str(plan), options)
        if not report["run"]["disturbed"]:
            break
    return report


def row(schedule: str, report: dict) -> str:
    measured, predicted, err = report["measured"], report["predicted"], report["errors"]["predicted"]
    run = report["run"]
    kept = f"{sum(1 for it in measured['iterations'] if not it.get('disturbance'))}/{run['iterations_tried']}"
    return (f"| {schedule} | {run.get('runtime', 'pipeplan')} | {100 * measured['bubble_fraction']:.1f} % | "
            f"{1e3 * measured['iteration_time']:.1f} ms | {100 * predicted['bubble_fraction']:.1f} % "
            f"({err['bubble_points']:+.1f} pt) | {1e3 * predicted['iteration_time']:.1f} ms "
            f"({err['iteration_time_pct']:+.1f} %) | {kept}{' (disturbed)' if run['disturbed'] else ''} |")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("plans", nargs="*", help=f"plan files (default: validation/plans/{{{','.join(DEFAULT_PLANS)}}}.json)")
    ValidateOptions.add_arguments(p, LAUNCHER)
    p.add_argument("--attempts", type=int, default=3, help="runs per runtime to find an undisturbed one (default 3)")
    p.add_argument("--out-dir", help="also write each report there as <plan>-<runtime>.json")
    args = p.parse_args()
    if args.runtime != "pipeplan":
        p.error("--runtime: this script runs both runtimes on every plan; leave it out")
    if args.out_dir and not Path(args.out_dir).is_dir():
        p.error(f"--out-dir: {args.out_dir!r} is not a folder")
    plans = [Path(x) for x in args.plans] or [HERE / "plans" / f"{name}.json" for name in DEFAULT_PLANS]
    base = ValidateOptions.from_args(args)
    print("| schedule | runtime | measured bubble | measured iteration | calibrated bubble (error) "
          "| calibrated iteration (error) | undisturbed / tried |")
    print("|---|---|---|---|---|---|---|")
    for plan in plans:
        for runtime in RUNTIMES:
            report = undisturbed(plan, dataclasses.replace(base, runtime=runtime), args.attempts)
            if args.out_dir:
                write_report(report, Path(args.out_dir) / f"{plan.stem}-{runtime}.json")
            print(row(report["plan"]["schedule"], report), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
