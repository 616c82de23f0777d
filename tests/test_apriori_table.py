"""The a-priori table's plans are what issue 15 asks for (never recorded, two presets at --scale, three
schedules or more, uneven cuts, recomputation) and each can run here; its rows summarise the repeats
as medians and spans of the reports' own numbers."""
import json
import sys

import pytest

from pipeplan.validation.footprint import RANK_BASE_BYTES, rank_bytes
from pipeplan.validation.preflight import check_plan

from reliability import REPO  # tests/ is on sys.path

sys.path.insert(0, str(REPO / "validation"))
import apriori_table  # noqa: E402

PLANS = [(apriori_table.PLANS / name, scale) for name, scale in apriori_table.DEFAULT_PLANS]


def test_the_plans_are_the_issues_mix_and_none_was_ever_recorded():
    recorded = [json.loads(p.read_text())["plan"] for p in (REPO / "validation" / "records").glob("*.json")]
    plans = [(json.loads(path.read_text()), scale) for path, scale in PLANS]
    assert len(plans) >= 6
    for plan, _ in plans:
        same = [r for r in recorded if r["schedule"] == plan["schedule"]
                and r["num_microbatches"] == plan["num_microbatches"]
                and r["microbatch_size"] == plan["microbatch_size"]
                and list(r["layers_per_stage"]) == plan["layers_per_stage"]]
        assert not same, plan
    assert len({p["model"] for p, scale in plans if scale < 1}) >= 2  # two presets at --scale
    assert len({p["schedule"] for p, _ in plans}) >= 3
    assert any(len(set(p["layers_per_stage"])) > 1 for p, _ in plans)  # uneven cuts
    assert any("full" in p.get("recompute", []) for p, _ in plans)


@pytest.mark.parametrize("path, scale", PLANS, ids=[p.stem for p, _ in PLANS])
def test_each_plan_passes_the_validators_checks_and_fits_in_a_few_gigabytes(path, scale):
    checked = check_plan(str(path), scale)
    need = sum(RANK_BASE_BYTES + r.host for r in rank_bytes(checked.model, checked.plan, checked.schedule, False))
    assert need < 4e9


def _report(measured_time, bubble, apriori_err, disturbed=False):
    return {"measured": {"iteration_time": measured_time, "bubble_fraction": bubble,
                         "iterations": [{"disturbance": "x"} if disturbed else {}] * 10},
            "predicted": {"iteration_time": measured_time * 0.97, "bubble_fraction": bubble + 0.01},
            "apriori": {"iteration_time": 0.1, "bubble_fraction": 0.2},
            "errors": {"apriori": {"iteration_time_pct": apriori_err, "bubble_points": 1.0},
                       "predicted": {"iteration_time_pct": -3.0, "bubble_points": 1.0}},
            "run": {"disturbed": disturbed, "iterations": 10, "iterations_tried": 10 if not disturbed else 30}}


def test_a_row_gives_medians_and_spans_of_the_repeats():
    reports = [_report(0.100, 0.20, -2.0), _report(0.104, 0.22, -5.0), _report(0.098, 0.21, 1.5, disturbed=True)]
    cells = [c.strip() for c in apriori_table.row("plan-x", 0.05, reports).strip("|").split("|")]
    assert cells[:4] == ["plan-x", "0.05", "21.0 %", "100.0 ms"]
    assert cells[4] == "20.0 % (+1.0 pt)" and cells[5] == "100.0 ms (-2.0 %)"  # the a priori, the median error
    assert cells[7] == "97.0 ms (-3.0 %)"
    assert cells[8] == "98.0 .. 104.0 ms; a priori -5.0 .. +1.5 %, +1.0 .. +1.0 pt"
    assert cells[9] == "20/50 (1 of 3 runs disturbed)"
