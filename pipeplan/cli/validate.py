"""``pipeplan validate`` (run a plan for real, compare with the predictions) and ``pipeplan compare``."""
from __future__ import annotations

import argparse
import sys
from typing import Any

from ..validation.options import LAUNCHER, ValidateOptions
from .output import fmt_pct, fmt_time, table


def register(sub: argparse._SubParsersAction) -> None:
    v = sub.add_parser(
        "validate",
        help="run a plan for real with torch.distributed and compare with the prediction",
        description="Start one process per pipeline device through torchrun, calibrate each stage's ops and "
        "each link, run the schedule, and print measured vs calibrated vs a-priori bubble and iteration time. "
        "Needs torch (pip install 'pipeplan[validate]').",
    )
    v.add_argument("plan", metavar="PLAN.json")
    ValidateOptions.add_arguments(v, LAUNCHER)
    v.add_argument("--out", metavar="FILE", help="report JSON (written atomically, only on success)")
    v.add_argument("--profile-out", metavar="FILE", help="also save the calibration as a profile for --profile")
    v.add_argument("--gantt", metavar="FILE", help="side-by-side Gantt: predicted | measured (.png, .svg, .pdf)")
    v.add_argument("--json", action="store_true", help="print the errors and the three summaries as JSON")
    v.set_defaults(handler=run_validate)

    c = sub.add_parser("compare", help="print the table of a validation report again",
                       description="Reprint measured vs predicted vs a-priori from REPORT.json.")
    c.add_argument("report", metavar="REPORT.json")
    c.add_argument("--gantt", metavar="FILE", help="side-by-side Gantt: predicted | measured")
    c.set_defaults(handler=run_compare)


def _row(label: str, section: dict[str, Any], error: dict[str, float] | None,
         band: dict[str, Any] | None = None) -> list[str]:
    busy = " / ".join(fmt_time(b) for b in section["busy_time"])
    if error is None:
        return [label, fmt_pct(section["bubble_fraction"]), "", "", fmt_time(section["iteration_time"]), "", "", busy]
    return [
        label, fmt_pct(section["bubble_fraction"]), f"{error['bubble_points']:+.2f} pt",
        _band_text(band, "bubble_fraction", fmt_pct), fmt_time(section["iteration_time"]),
        f"{error['iteration_time_pct']:+.1f} %", _band_text(band, "iteration_time", fmt_time), busy,
    ]


def _point_row(report: dict[str, Any]) -> list[list[str]]:
    """The calibrated simulation at mean op times (what ``simulate --profile`` prints), when the calibrated
    prediction above it is the median over the calibration's scatter; reports without one print nothing."""
    point = report["predicted"].get("point")
    if point is None:
        return []
    from ..validation.report import errors

    error = errors(point, report["measured"])
    return [[" at mean op times", fmt_pct(point["bubble_fraction"]), f"{error['bubble_points']:+.2f} pt", "",
             fmt_time(point["iteration_time"]), f"{error['iteration_time_pct']:+.1f} %", "", ""]]


def _band_text(band: dict[str, Any] | None, key: str, fmt) -> str:
    """``low .. high`` and whether the measured median fell inside (``*``: it did not)."""
    if not band or key not in band:
        return ""
    inside = band.get("inside", {}).get(key, {})
    missed = not inside.get("median", True) and inside.get("judged", True)
    return f"{fmt(band[key]['low'])} .. {fmt(band[key]['high'])}" + (" *" if missed else "")


def band_lines(report: dict[str, Any]) -> list[str]:
    """Where the measurement fell in each prediction's band, and what the bands rest on."""
    bands = report.get("bands")
    if not bands:
        return []
    if "note" in bands:
        return [f"bands {bands['note']}"]
    lines = []
    for key, label in (("predicted", "calibrated"), ("apriori", "a-priori")):
        band = bands[key]
        said = []
        for name, what in (("iteration_time", "iteration"), ("bubble_fraction", "bubble")):
            inside = band["inside"][name]
            if not inside.get("judged", True):
                said.append(f"{what} not judged (the band has no width: no sample moved the predicted bubble, "
                            f"as in a plan without a pipeline, and what idles between its ops is the host's)")
                continue
            said.append(f"{what} {'inside' if inside['median'] else 'OUTSIDE'} ({inside['iterations']} of "
                        f"{inside['of']} iterations inside)")
        lines.append(f"measured vs the {label} {100 * band['level']:.0f} % band: {', '.join(said)}; "
                     f"{band['samples']} samples, {band['spread']['source']}")
    return lines


def _pct_text(value: float | None) -> str:
    return "" if value is None else f"{value:+.1f} %"


def _serving_row(label: str, section: dict[str, Any], error: dict[str, Any] | None) -> list[str]:
    figures = section["serving"]
    err = error or {}
    tpot = figures["tpot"]["mean"]
    return [label, f"{figures['tokens_per_second']:,.0f}", _pct_text(err.get("tokens_per_second_pct")),
            fmt_time(figures["ttft"]["p50"]), _pct_text(err.get("ttft_p50_pct")),
            "-" if tpot is None else fmt_time(tpot), _pct_text(err.get("tpot_mean_pct")),
            fmt_time(section["iteration_time"]), _pct_text(err.get("iteration_time_pct")),
            fmt_pct(section["bubble_fraction"])]


def serving_table(report: dict[str, Any]) -> str:
    """A serving run's measured, calibrated and a-priori output tokens/s, TTFT, TPOT and run time."""
    rows = [_serving_row("measured", report["measured"], None)]
    for key, label in (("predicted", "predicted (calibrated)"), ("apriori", "a priori (cluster spec)")):
        rows.append(_serving_row(label, report[key], report["errors"][key]))
    return table(["", "tokens/s", "error", "TTFT p50", "error", "TPOT mean", "error", "run", "error", "bubble"], rows)


def format_report(report: dict[str, Any]) -> str:
    plan, run = report["plan"], report["run"]
    model = plan["model"]["name"] if isinstance(plan["model"], dict) else plan["model"]
    # Plans (and older reports) without recomputation keep the header they always had.
    recompute = plan.get("recompute") or []
    recomputed = f" recompute [{', '.join(recompute)}]" if any(r != "none" for r in recompute) else ""
    # A tensor- or data-parallel plan names its tp and dp; the timelines and busy times are replica (0, 0)'s.
    parallel = "".join(f" {k}={plan[k]}" for k in ("tp", "dp") if plan.get(k, 1) > 1)
    lines = [
        f"{model} {plan['schedule']}{parallel} p={plan['pp']} m={plan['num_microbatches']} b={plan['microbatch_size']} "
        f"layers {plan['layers_per_stage']}{recomputed}: {run['world_size']} ranks"
        f"{' on torch.distributed.pipelining' if run.get('runtime') == 'torch' else ''}, {run['backend']} on {run['device']}, "
        f"{run['dtype']}, {run['threads_per_rank']} thread(s)/rank, median of {run['iterations']} iterations "
        f"after {run['warmup']} warm-up",
        serving_table(report) if "serving" in report["measured"] else table(
            ["", "bubble", "error", "90 % band", "iteration", "error", "90 % band", "busy per device"],
            [
                _row("measured", report["measured"], None),
                _row("predicted (calibrated)", report["predicted"], report["errors"]["predicted"],
                     (report.get("bands") or {}).get("predicted")),
                *_point_row(report),
                _row("a priori (cluster spec)", report["apriori"], report["errors"]["apriori"],
                     (report.get("bands") or {}).get("apriori")),
            ],
        ),
        *band_lines(report),
    ]
    if "serving" in report["measured"]:
        mix = plan["serving"]["mix"][0]
        served = report.get("serving_run", {})
        lines.insert(1, f"serving {plan['serving'].get('requests') or 'one per slot'} request(s) of {mix['prompt_len']} "
                        f"prompt + {mix['output_len']} output tokens; one run = the whole mix served once"
                        + ("" if served.get("deterministic", True) else "; WARNING: runs generated different tokens"))
    if run.get("disturbed"):
        lines.append(
            f"warning: other processes kept this machine busy during the run (fewer than {run['iterations']} of "
            f"{run['iterations_tried']} iterations ran undisturbed, or fewer than half); the measurement includes "
            "their interference"
        )
        if run.get("left_out"):
            lines.append(f"  {run['left_out']}")
    elif run.get("iterations_tried", run["iterations"]) > run["iterations"]:
        lines.append(f"note: {run['iterations_tried'] - run['iterations']} iteration(s) disturbed by other processes "
                     "were left out (calibration rounds beside them too)"
                     + (f": {run['left_out']}" if run.get("left_out") else ""))
    return "\n".join(lines)


def _gantt(report: dict[str, Any], path: str) -> None:
    from simulator.timeline import Timeline

    from ..charts.gantt import side_by_side

    side_by_side(Timeline.from_dict(report["predicted"]["timeline"]), Timeline.from_dict(report["measured"]["timeline"]),
                 path, ("predicted (calibrated)", "measured"))


def run_validate(args: argparse.Namespace) -> int:
    from pathlib import Path

    from ..charts.render import figure_format
    from ..errors import SpecError
    from ..plan import Plan
    from ..validation import Stopped, ValidationFailed, run_validation
    from .paths import check_paths, plan_reads

    options = ValidateOptions.from_args(args)
    if args.gantt:
        figure_format(args.gantt)
    if args.profile_out and Plan.load(args.plan).serving is not None:
        raise SpecError("--profile-out: a serving run's calibration prices each pass on its own, which a profile "
                        "cannot hold; the report (--out) keeps it")
    for flag in ("out", "profile_out", "gantt"):
        path = getattr(args, flag)
        if path and not Path(path).resolve().parent.is_dir():
            raise SpecError(f"--{flag.replace('_', '-')}: folder of {path!r} does not exist")
    plan = Plan.load(args.plan)  # a bad plan is a one-line error before any process starts
    check_paths([("PLAN.json", args.plan), *plan_reads(plan, Path(args.plan).parent)],
                [("--out", args.out), ("--profile-out", args.profile_out), ("--gantt", args.gantt)],
                read_back=("--out",))
    try:
        report = run_validation(args.plan, options, args.out)
    except ValidationFailed as err:
        print(f"pipeplan validate: {err}", file=sys.stderr)
        return 1
    except Stopped as stop:  # every process of the run is gone and its run folder removed
        print(f"pipeplan validate: {stop}; no process it started is left, no report written", file=sys.stderr)
        return stop.exit_code
    if args.profile_out:
        from ..profile import Profile

        Profile.from_dict(report["profile"]).save(args.profile_out)
    if args.gantt:
        _gantt(report, args.gantt)
    if args.json:
        from .output import print_json

        print_json({k: {x: v for x, v in report[k].items() if x != "timeline"} for k in ("measured", "predicted", "apriori")}
                   | {"errors": report["errors"], "bands": report.get("bands"), "run": report["run"]})
    else:
        print(format_report(report))
        for path in (args.out, args.profile_out, args.gantt):
            if path:
                print(f"wrote {path}")
    return 0


def run_compare(args: argparse.Namespace) -> int:
    from ..errors import SpecError
    from ..validation import load_report
    from .paths import check_paths

    check_paths([("REPORT.json", args.report)], [("--gantt", args.gantt)])
    report = load_report(args.report)
    if args.gantt:
        from ..charts.render import figure_format

        figure_format(args.gantt)
        if "timeline" not in report["predicted"]:
            raise SpecError("--gantt: this report keeps no predicted timeline (a validation/records file); "
                            "run pipeplan validate --gantt to draw one")
    try:
        text = format_report(report)
    except (KeyError, TypeError, ValueError, AttributeError) as err:
        raise SpecError(f"report: {args.report!r} is damaged ({type(err).__name__}: {err}); "
                        "re-create it with `pipeplan validate --out`") from None
    print(text)
    if args.gantt:
        _gantt(report, args.gantt)
        print(f"wrote {args.gantt}")
    return 0
