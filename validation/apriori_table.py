"""A-priori predictions from a probed cluster spec against measurement, on plans the probe never saw.

    python validation/apriori_table.py                         # probe, then validate the plans below 3 times each
    python validation/apriori_table.py --cluster validation/probed-cpu.json   # an existing probed spec
    python validation/apriori_table.py --out-dir /tmp/reports --repeats 3
    python validation/apriori_table.py --reports /tmp/reports   # the table again from saved reports, no runs

Without ``--cluster`` it first runs ``pipeplan probe`` (CPU, gloo) and writes the spec to ``--probe-out``
(default validation/probed-cpu.json, the spec the plans in validation/plans/apriori/ name). Each plan
(two model presets at ``--scale``, five schedules, uneven cuts, recomputation) is then validated
``--repeats`` times with that spec as its cluster: the report's ``apriori`` section is the a-priori
prediction (analytic cost model + probed spec, nothing from the run), ``predicted`` the calibrated one.
The fitted spec never sees a validation run. Prints a Markdown table: the median over the repeats of
the measured values and of the errors, the spread over the repeats (lowest to highest), and in how
many repeats each prediction's 90 % band held the measured iteration time and bubble; then a
summary line of all of it. ``--quiet-load L`` waits before each run, at most ``--quiet-wait`` seconds,
until the machine's one-minute load average is below L (other users' jobs disturb a run more than
anything else here).
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from pipeplan.cluster import load_cluster  # noqa: E402
from pipeplan.fileio import write_json_atomic  # noqa: E402
from pipeplan.validation import ValidateOptions, run_validation, write_report  # noqa: E402
from pipeplan.validation.options import LAUNCHER  # noqa: E402

PLANS = HERE / "plans" / "apriori"
# (plan file, --scale): never recorded in validation/records/, none of their shapes among the probe's.
DEFAULT_PLANS = (
    ("tiny-zb-h2-p2.json", 1.0),
    ("tiny-1f1b-uneven-m16-b2.json", 1.0),
    ("tiny-gpipe-m4-b8.json", 1.0),
    ("tiny-interleaved-recompute.json", 1.0),
    ("gpt2-xl-zb-h1-uneven.json", 0.05),
    ("llama3-8b-1f1b-recompute.json", 0.02),
)


def _plan_on(plan: Path, cluster: Path, folder: Path) -> Path:
    """A copy of ``plan`` in ``folder`` whose cluster is ``cluster`` (an absolute path)."""
    data = json.loads(plan.read_text())
    data["cluster"] = str(cluster.resolve())
    copy = folder / plan.name
    copy.write_text(json.dumps(data))
    return copy


def _span(values: list[float], fmt: str) -> str:
    return f"{fmt.format(min(values))} .. {fmt.format(max(values))}"


def _with_error(value: str, error: float, unit: str) -> str:
    return f"{value} ({error:+.1f} {unit})"


def row(name: str, scale: float, reports: list[dict]) -> str:
    """One Markdown row from the repeats of one plan: medians over the repeats, and their spread."""
    med = statistics.median

    def each(section: str, key: str) -> list[float]:
        return [r[section][key] for r in reports]

    def errs(kind: str, key: str) -> list[float]:
        return [r["errors"][kind][key] for r in reports]

    times = each("measured", "iteration_time")
    apriori = reports[0]["apriori"]  # the same for every repeat: nothing of the run goes into it
    kept = sum(1 for r in reports for it in r["measured"]["iterations"] if not it.get("disturbance"))
    tried = sum(r["run"]["iterations_tried"] for r in reports)
    disturbed = sum(1 for r in reports if r["run"]["disturbed"])
    cells = [
        name, f"{scale:g}",
        f"{100 * med(each('measured', 'bubble_fraction')):.1f} %", f"{1e3 * med(times):.1f} ms",
        _with_error(f"{100 * apriori['bubble_fraction']:.1f} %", med(errs("apriori", "bubble_points")), "pt"),
        _with_error(f"{1e3 * apriori['iteration_time']:.1f} ms", med(errs("apriori", "iteration_time_pct")), "%"),
        _with_error(f"{100 * med(each('predicted', 'bubble_fraction')):.1f} %",
                    med(errs("predicted", "bubble_points")), "pt"),
        _with_error(f"{1e3 * med(each('predicted', 'iteration_time')):.1f} ms",
                    med(errs("predicted", "iteration_time_pct")), "%"),
        f"{_span([1e3 * t for t in times], '{:.1f}')} ms; a priori "
        f"{_span(errs('apriori', 'iteration_time_pct'), '{:+.1f}')} %, {_span(errs('apriori', 'bubble_points'), '{:+.1f}')} pt",
        f"{_held(reports, 'apriori')}; {_held(reports, 'predicted')}",
        f"{kept}/{tried}" + (f" ({disturbed} of {len(reports)} runs disturbed)" if disturbed else ""),
    ]
    return "| " + " | ".join(cells) + " |"


def band_counts(reports: list[dict], kind: str) -> tuple[int, int]:
    """(cases whose measured median fell inside ``kind``'s 90 % band, cases): iteration time and bubble
    of every report that has a band, less the bubbles a band without width leaves unjudged."""
    inside = [r["bands"][kind]["inside"][q]["median"] for r in reports if kind in r.get("bands", {})
              for q in ("iteration_time", "bubble_fraction") if r["bands"][kind]["inside"][q].get("judged", True)]
    return sum(inside), len(inside)


def _held(reports: list[dict], kind: str) -> str:
    held = [[r["bands"][kind]["inside"][q]["median"] for r in reports if kind in r.get("bands", {})
             and r["bands"][kind]["inside"][q].get("judged", True)] for q in ("iteration_time", "bubble_fraction")]
    label = "a priori" if kind == "apriori" else "calibrated"
    if not held[0]:
        return f"{label}: no band"
    return f"{label} {sum(held[0])}/{len(held[0])}, {sum(held[1])}/{len(held[1])}"


def summary(rows: dict[str, list[dict]]) -> str:
    """One line over every plan: how many medians are within the issue's limits, and the bands' coverage."""
    med = statistics.median

    def within(kind: str, pct: float, pt: float) -> int:
        return sum(1 for reports in rows.values()
                   if abs(med(r["errors"][kind]["iteration_time_pct"] for r in reports)) <= pct
                   and abs(med(r["errors"][kind]["bubble_points"] for r in reports)) <= pt)

    every = [r for reports in rows.values() for r in reports]
    a_in, a_of = band_counts(every, "apriori")
    c_in, c_of = band_counts(every, "predicted")
    return (f"{len(rows)} plans: a priori within 10 % and 3 pt in {within('apriori', 10, 3)}, calibrated within "
            f"5 % and 2 pt in {within('predicted', 5, 2)} (medians over the repeats); the 90 % band held the "
            f"measured iteration time or bubble in {a_in} of {a_of} cases a priori, {c_in} of {c_of} calibrated")


HEADER = ("| plan | --scale | measured bubble | measured iteration | a-priori bubble (error) "
          "| a-priori iteration (error) | calibrated bubble (error) | calibrated iteration (error) "
          "| spread over the repeats (measured iteration; a-priori errors) "
          "| 90 % band held it (iteration, bubble) | undisturbed / tried iterations |\n"
          "|---|---|---|---|---|---|---|---|---|---|---|")


def _wait_quiet(load: float | None, longest: float) -> None:
    """Wait, at most ``longest`` seconds, until the one-minute load average is below ``load``."""
    deadline = time.monotonic() + longest
    while load is not None and time.monotonic() < deadline:
        with open("/proc/loadavg") as handle:
            if float(handle.read().split()[0]) < load:
                return
        time.sleep(5)


def _saved(folder: Path, name: str) -> list[dict]:
    """The reports an earlier ``--out-dir`` run saved for plan ``name``, in repeat order."""
    stem = Path(name).stem
    found = sorted(folder.glob(f"{stem}-*.json"), key=lambda f: int(f.stem.rsplit("-", 1)[1]))
    return [json.loads(f.read_text()) for f in found]


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--cluster", help="a probed cluster spec (default: probe now and write --probe-out)")
    p.add_argument("--probe-out", default=str(HERE / "probed-cpu.json"), help="where a new probe's spec goes")
    p.add_argument("--repeats", type=int, default=3, help="validations per plan (default 3)")
    p.add_argument("--out-dir", help="also write each report there as <plan>-<k>.json")
    p.add_argument("--reports", help="make the table from the reports an earlier --out-dir saved in this folder; run nothing")
    p.add_argument("--only", action="append", help="run only the plans whose file name contains this (repeatable)")
    p.add_argument("--quiet-load", type=float, help="before each run, wait for a one-minute load average below this")
    p.add_argument("--quiet-wait", type=float, default=120.0, help="the longest such wait, seconds (default 120)")
    ValidateOptions.add_arguments(p, LAUNCHER)
    args = p.parse_args()
    for flag, folder in (("--out-dir", args.out_dir), ("--reports", args.reports)):
        if folder and not Path(folder).is_dir():
            p.error(f"{flag}: {folder!r} is not a folder")
    if args.scale != 1:
        p.error("--scale: each plan runs at its own scale (the table's second column); leave it out")
    if args.repeats < 1:
        p.error("--repeats: at least 1")
    plans = [(name, scale) for name, scale in DEFAULT_PLANS if not args.only or any(key in name for key in args.only)]
    rows: dict[str, list[dict]] = {}
    if args.reports:
        print(HEADER)
        for name, scale in plans:
            rows[name] = _saved(Path(args.reports), name)
            if rows[name]:
                print(row(Path(name).stem, scale, rows[name]))
        print("\n" + summary({k: v for k, v in rows.items() if v}))
        return 0
    if args.cluster:
        cluster = Path(args.cluster)
        load_cluster(str(cluster))  # a bad file is refused before any run
    else:
        from pipeplan.probe.run import ProbeOptions, check, probe

        options = ProbeOptions()
        check(options)
        _wait_quiet(args.quiet_load, args.quiet_wait)
        spec = probe(options)
        write_json_atomic(args.probe_out, spec.to_dict(), "--probe-out")
        cluster = Path(args.probe_out)
        disturbed = f" (disturbed: {'; '.join(spec.probe.notes)})" if spec.probe.disturbed else ""
        print(f"probed in {spec.probe.seconds:.1f} s{disturbed}; wrote {cluster}", flush=True)
    base = ValidateOptions.from_args(args)
    print(HEADER, flush=True)
    with tempfile.TemporaryDirectory(prefix="apriori-plans-") as folder:
        for name, scale in plans:
            plan = _plan_on(PLANS / name, cluster, Path(folder))
            rows[name] = []
            for k in range(args.repeats):
                _wait_quiet(args.quiet_load, args.quiet_wait)
                report = run_validation(str(plan), dataclasses.replace(base, scale=scale))
                rows[name].append(report)
                if args.out_dir:
                    write_report(report, Path(args.out_dir) / f"{Path(name).stem}-{k}.json")
            print(row(Path(name).stem, scale, rows[name]), flush=True)
    print("\n" + summary(rows), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
