"""Recorded real runs, re-predicted with today's simulator: drift away from reality fails CI.

Each validation/records/*.json holds a real run (its calibration profile and measured iterations)
and the tolerance stored when it was recorded (validation/record.py). No torch needed.
"""
import json
from pathlib import Path

import pytest

from pipeplan.validation import repredict

VALIDATION = Path(__file__).resolve().parents[1] / "validation"
RECORDS = sorted((VALIDATION / "records").glob("*.json"))


def test_there_are_records_for_the_three_cpu_schedules():
    names = {p.name for p in RECORDS}
    for schedule in ("gpipe", "1f1b", "zb-h1"):
        assert f"cpu-gloo-tiny-{schedule}-p2.json" in names


@pytest.mark.parametrize("path", RECORDS, ids=[p.stem for p in RECORDS])
def test_current_simulator_still_predicts_the_recorded_run(path):
    record = json.loads(path.read_text())
    errors = repredict(record, VALIDATION / record["run"]["base_dir"])
    tolerance = record["tolerance"]
    calibrated = errors["predicted"]
    assert abs(calibrated["bubble_points"]) <= tolerance["bubble_points"], calibrated
    assert abs(calibrated["iteration_time_pct"]) <= tolerance["iteration_time_pct"], calibrated
