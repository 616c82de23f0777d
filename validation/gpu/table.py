"""Records and a Markdown table from the reports of a GPU validation run (``validation/gpu/run.sh``).

    python validation/gpu/table.py --tag h200 --records validation/records MODE=REPORT.json ...

Each ``MODE=REPORT.json`` is a full ``pipeplan validate --out`` report and the way it ran (``gloo``: several
ranks on one GPU through gloo with host staging; ``mps``: the same under NVIDIA MPS; ``nccl``: one rank
per GPU). Each becomes a record ``<records>/<tag>-<mode>-<plan>.json`` (``validation/record.py``'s form:
the report without predicted timelines, plus the tolerance ``tests/test_validation_records.py``
holds it to), and all of them one table, ``<records>/<tag>-table.md``: measured, calibrated and
a-priori bubble and iteration time, their errors, and whether the measurement fell inside each 90 %
band. Disturbed runs are recorded too, marked as such (a GPU machine is lent for minutes: there is
no waiting for a quiet one).
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parents[1]))
sys.path.insert(0, str(HERE.parent))

from pipeplan.validation import write_report  # noqa: E402
from record import slim, tolerance  # noqa: E402  (validation/record.py)

MODES = {"gloo": "gloo, ranks sharing one GPU (host staging)", "mps": "gloo + MPS, ranks sharing one GPU",
         "nccl": "NCCL, one rank per GPU"}


def _band(report: dict, key: str, name: str) -> str:
    bands = report.get("bands") or {}
    if key not in bands:
        return "-"
    inside = bands[key]["inside"][name]
    if not inside.get("judged", True):
        return "n/a"
    return f"{'in' if inside['median'] else 'OUT'} ({inside['iterations']}/{inside['of']})"


def row(mode: str, report: dict) -> str:
    plan, run, m = report["plan"], report["run"], report["measured"]
    model = plan["model"]["name"] if isinstance(plan["model"], dict) else plan["model"]
    what = f"{model} x{run['scale']:g} {plan['schedule']} p={plan['pp']} m={plan['num_microbatches']}"
    cells = [MODES.get(mode, mode), what, f"{100 * m['bubble_fraction']:.1f} %", f"{1e3 * m['iteration_time']:.2f} ms"]
    for key in ("predicted", "apriori"):
        p, e = report[key], report["errors"][key]
        cells += [f"{100 * p['bubble_fraction']:.1f} % ({e['bubble_points']:+.1f} pt)",
                  f"{1e3 * p['iteration_time']:.2f} ms ({e['iteration_time_pct']:+.1f} %)",
                  f"{_band(report, key, 'iteration_time')} / {_band(report, key, 'bubble_fraction')}"]
    quiet = sum(1 for it in m.get("iterations", []) if it.get("disturbance", None) is None)
    cells.append(f"{quiet}/{run['iterations_tried']}" + (" (disturbed)" if run["disturbed"] else ""))
    return "| " + " | ".join(cells) + " |"


HEADER = ("| how | plan | measured bubble | measured iteration | calibrated bubble (error) | calibrated iteration "
          "(error) | measured in calibrated band: time / bubble (iterations in) | a-priori bubble (error) | a-priori "
          "iteration (error) | measured in a-priori band: time / bubble (iterations in) | undisturbed / tried |\n"
          "|---|---|---|---|---|---|---|---|---|---|---|")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("reports", nargs="+", metavar="MODE=REPORT.json")
    p.add_argument("--tag", required=True, help="record name prefix, e.g. the GPU's name")
    p.add_argument("--records", type=Path, default=HERE.parent / "records", help="where records and table go")
    args = p.parse_args(argv)
    rows, devices = [], set()
    for item in args.reports:
        mode, sep, path = item.partition("=")
        if not sep or mode not in MODES:
            p.error(f"{item!r}: give MODE=REPORT.json with MODE one of {', '.join(MODES)}")
        report = json.loads(Path(path).read_text())
        record = {**slim(report), "tolerance": tolerance(report)}
        stem = Path(report["run"]["plan_file"]).stem
        target = args.records / f"{args.tag}-{mode}-{stem}.json"
        write_report(record, target)
        rows.append(row(mode, report))
        devices.add(report["run"]["device"])
        print(f"wrote {target}")
    table = args.records / f"{args.tag}-table.md"
    table.write_text(f"GPU validation on {', '.join(sorted(devices))} (validation/gpu/run.sh)\n\n{HEADER}\n"
                     + "\n".join(rows) + "\n")
    print(f"wrote {table}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
