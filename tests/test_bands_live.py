"""One real 2-rank gloo run: its profile keeps the calibration's scatter, and its report's bands say where
the measurement fell, consistently with the report's own numbers. Counts come from the run's shape:
1F1B with m = 8 times F and B of each stage 8 times per calibration round and its optimizer step once, one
round per timed iteration, and each link 2 x --calibration-reps times per round at the boundary size."""
import json
from pathlib import Path

import pytest

pytest.importorskip("torch")

from pipeplan.validation import ValidateOptions, run_validation  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
PLAN = REPO / "validation" / "plans" / "tiny-1f1b-p2.json"


def test_a_real_run_keeps_its_calibration_spread_and_reports_where_it_fell_in_the_bands(tmp_path):
    options = ValidateOptions(iterations=6, warmup=2, timeout=120)
    report = run_validation(str(PLAN), options, str(tmp_path / "report.json"))
    assert json.loads((tmp_path / "report.json").read_text())["bands"] == json.loads(json.dumps(report["bands"]))
    spread = report["profile"]["spread"]
    rounds = report["run"]["iterations"]
    assert spread["rounds"] == rounds == 6
    # The fewest timings behind one op type: each stage's optimizer step, timed once a round (F and B:
    # 8 micro-batches a round).
    assert spread["samples"] == rounds
    assert spread["link_samples"] == 2 * options.calibration_reps * rounds
    assert 0 < spread["independent"] < 2 and 0 <= spread["common"] < 2
    measured = report["measured"]
    for key in ("predicted", "apriori"):
        band = report["bands"][key]
        assert band["samples"] == 200
        for name in ("iteration_time", "bubble_fraction"):
            low, high = band[name]["low"], band[name]["high"]
            inside = band["inside"][name]
            assert inside["median"] == (low <= measured[name] <= high)
            assert inside["iterations"] == sum(low <= it[name] <= high for it in measured["iterations"])
            assert inside["of"] == rounds
    assert report["bands"]["predicted"]["spread"]["source"].startswith("calibration: 6 rounds, 6 timings")
