"""Where a validation report's bubble error comes from: the calibrated simulation re-timed step by step
with what the run measured, until it is the measurement.

    python validation/idle_breakdown.py /tmp/rt1/*.json     # reports written by validate --out or runtimes_table.py

Each column is the median over the report's timed iterations of one re-timing of the calibrated
simulation (same schedule, dependencies and calibrated links), each adding one thing to the last:

* ``calibrated``: the prediction itself (per-stage mean op times of the calibration);
* ``+ mean op times``: every op of a rank scaled by the run's median busy time over the prediction's
  (ops that run longer or shorter in the run than in the calibration, on average);
* ``+ rank speeds``: the same, with each iteration's own busy time per rank (one rank slowed for a
  whole iteration: the other waits for it);
* ``+ op times``: every op with its own measured time in that iteration (per-op scatter);
* ``+ gaps``: each op's measured time plus the idle time before it on its rank that was not a wait for
  input (runtime overhead between ops left out of both the op and the calibration), counted as idle;
* ``measured``: what is left is messages arriving later than the calibrated link after their producer.

A column's step from the one before is that thing's share of the error, in the order above.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from pipeplan.validation.measurements import Measurements  # noqa: E402
from pipeplan.validation.report import predict, timed_step  # noqa: E402
from simulator.compile import compile_workload  # noqa: E402
from simulator.perturb import makespan_and_busy, rescaled  # noqa: E402
from simulator.timeline import Timeline, bubble_fraction, busy_time, iteration_time  # noqa: E402

COLUMNS = ("calibrated", "+ mean op times", "+ rank speeds", "+ op times", "+ gaps", "measured")


def gaps_before(timeline: Timeline) -> dict[str, float]:
    """Per op (its name): the idle time on its rank between the previous op's end and its start that
    was not a wait for its input (the part before the input's recorded arrival)."""
    arrival = {str(t.consumer): t.end for t in timeline.transfers}
    gaps = {}
    for device in range(timeline.num_devices):
        ops = sorted((o for o in timeline.ops if o.device == device), key=lambda o: o.start)
        for before, op in zip(ops, ops[1:]):
            gap = op.start - before.end
            waited = max(0.0, min(gap, arrival[str(op.action)] - before.end)) if str(op.action) in arrival else 0.0
            gaps[str(op.action)] = gap - waited
    return gaps


def breakdown(report: dict, base_dir: str | Path | None = None) -> dict[str, tuple[float, float]]:
    """{column: (median bubble fraction, median iteration seconds)} for ``report`` (see the module docstring);
    ``base_dir``: where the plan's relative cluster/model files are (default: the run's plan folder)."""
    run = Measurements.from_dict(report)
    calibrated, _ = predict(run.plan, base_dir or run.base_dir, run.profile, timed_step(run.iterations))
    compiled = compile_workload(calibrated.workload)
    capacity = calibrated.workload.network.port_capacity
    names = [str(a) for a in compiled.actions]
    device = [int(d) for d in compiled.device]
    duration = np.asarray(compiled.duration, dtype=np.float64)
    devices = len(compiled.bounds) - 1
    ones = np.ones(len(names))

    def timed(factor, busy=None) -> tuple[float, float]:
        total, simulated_busy = makespan_and_busy(rescaled(compiled, factor, ones), capacity)
        return 1.0 - sum(simulated_busy if busy is None else busy) / (devices * total), total

    def per_rank(busy: list[float]) -> np.ndarray:
        return np.array([busy[device[o]] / predicted_busy[device[o]] for o in range(len(names))])

    def own(times: dict[str, float]) -> np.ndarray:
        return np.array([times.get(n, d) / d if d > 0 else 1.0 for n, d in zip(names, duration)])

    predicted_busy = makespan_and_busy(compiled, capacity)[1]
    iterations = run.iterations
    median_busy = [statistics.median(busy_time(t)[d] for t in iterations) for d in range(devices)]
    rows = []
    for timeline in iterations:
        measured_time = {str(o.action): o.end - o.start for o in timeline.ops}
        gaps = gaps_before(timeline)
        with_gaps = {n: t + gaps.get(n, 0.0) for n, t in measured_time.items()}
        busy = busy_time(timeline)
        rows.append((timed(per_rank(busy)), timed(own(measured_time)), timed(own(with_gaps), busy),
                     (bubble_fraction(timeline), iteration_time(timeline))))
    out = {COLUMNS[0]: timed(ones), COLUMNS[1]: timed(per_rank(median_busy))}
    for k, column in enumerate(COLUMNS[2:]):
        out[column] = tuple(statistics.median(r[k][j] for r in rows) for j in (0, 1))
    return out


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("reports", nargs="+", help="validation reports (JSON)")
    args = p.parse_args()
    print("| report | " + " | ".join(COLUMNS) + " |")
    print("|---|" + "---|" * len(COLUMNS))
    for path in args.reports:
        try:
            report = json.loads(Path(path).read_text())
        except (OSError, ValueError) as err:
            p.error(f"reports: cannot read {path!r} as a validation report ({err})")
        cells = breakdown(report)
        print(f"| {Path(path).stem} | " + " | ".join(f"{100 * b:.1f} % / {1e3 * t:.1f} ms" for b, t in cells.values())
              + " |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
