"""The a-priori table's plans are what issue 15 asks for (never recorded, two presets at --scale, three
schedules or more, uneven cuts, recomputation) and each can run here; its rows summarise the repeats
as medians and spans of the reports' own numbers."""
import json
import subprocess
import sys

import pytest

from pipeplan.validation.footprint import RANK_BASE_BYTES, rank_bytes
from pipeplan.validation.preflight import check_plan
from pipeplan.validation.report import REPORT_KIND

from reliability import REPO  # tests/ is on sys.path

sys.path.insert(0, str(REPO / "validation"))
import apriori_table  # noqa: E402

PLANS = [(apriori_table.PLANS / name, scale) for name, scale in apriori_table.DEFAULT_PLANS]


def test_the_plans_are_the_issues_mix_and_none_was_ever_recorded():
    saved = [json.loads(p.read_text()) for p in (REPO / "validation" / "records").glob("*.json")]
    recorded = [r["plan"] for r in saved if r.get("kind") == REPORT_KIND]  # the records also keep probed specs
    assert len(recorded) >= 6
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


def _report(measured_time, bubble, apriori_err, disturbed=False, inside=(True, True, True, True)):
    def band(time_in, bubble_in):
        return {"inside": {"iteration_time": {"median": time_in}, "bubble_fraction": {"median": bubble_in}}}

    return {"measured": {"iteration_time": measured_time, "bubble_fraction": bubble,
                         "iterations": [{"disturbance": "x"} if disturbed else {}] * 10},
            "predicted": {"iteration_time": measured_time * 0.97, "bubble_fraction": bubble + 0.01},
            "apriori": {"iteration_time": 0.1, "bubble_fraction": 0.2},
            "errors": {"apriori": {"iteration_time_pct": apriori_err, "bubble_points": 1.0},
                       "predicted": {"iteration_time_pct": -3.0, "bubble_points": 1.0}},
            "bands": {"apriori": band(*inside[:2]), "predicted": band(*inside[2:])},
            "run": {"disturbed": disturbed, "iterations": 10, "iterations_tried": 10 if not disturbed else 30}}


def test_a_row_gives_medians_spans_and_band_coverage_of_the_repeats():
    reports = [_report(0.100, 0.20, -2.0), _report(0.104, 0.22, -5.0, inside=(False, True, True, False)),
               _report(0.098, 0.21, 1.5, disturbed=True)]
    cells = [c.strip() for c in apriori_table.row("plan-x", 0.05, reports).strip("|").split("|")]
    assert cells[:4] == ["plan-x", "0.05", "21.0 %", "100.0 ms"]
    assert cells[4] == "20.0 % (+1.0 pt)" and cells[5] == "100.0 ms (-2.0 %)"  # the a priori, the median error
    assert cells[7] == "97.0 ms (-3.0 %)"
    assert cells[8] == "98.0 .. 104.0 ms; a priori -5.0 .. +1.5 %, +1.0 .. +1.0 pt"
    assert cells[9] == "a priori 2/3, 3/3; calibrated 3/3, 2/3"
    assert cells[10] == "20/50 (1 of 3 runs disturbed)"


def test_the_summary_counts_plans_within_the_limits_and_band_cases():
    rows = {"a": [_report(0.1, 0.2, -2.0), _report(0.1, 0.2, -12.0), _report(0.1, 0.2, 3.0)],  # median -2 %: in
            "b": [_report(0.1, 0.2, 11.0, inside=(False, False, True, True))] * 2}  # +11 %: out
    line = apriori_table.summary(rows)
    assert "2 plans: a priori within 10 % and 3 pt in 1, calibrated within 5 % and 2 pt in 2" in line
    # 5 reports x 2 quantities; plan b's two reports miss both a priori
    assert "in 6 of 10 cases a priori, 10 of 10 calibrated" in line


def test_a_table_is_made_again_from_saved_reports(tmp_path):
    for k in range(2):
        (tmp_path / f"tiny-gpipe-m4-b8-{k}.json").write_text(json.dumps(_report(0.1, 0.2, -1.0)))
    out = subprocess.run([sys.executable, str(REPO / "validation" / "apriori_table.py"), "--reports", str(tmp_path)],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    rows = [line for line in out.stdout.splitlines() if line.startswith("| tiny")]
    assert len(rows) == 1 and rows[0].startswith("| tiny-gpipe-m4-b8 | 1 | 20.0 % | 100.0 ms |")
    assert "1 plans: a priori within 10 % and 3 pt in 1" in out.stdout


def test_the_per_op_check_prices_each_stage_as_the_cost_model_does(tmp_path):
    """``apriori_ops.py`` on the repository's probed spec: one row per stage of the plan, each cell
    measured / a priori, the a priori being ``price(stage_work(...))`` of that stage (recomputation as
    the plan says); a bad ``--rounds`` is refused before anything runs."""
    from pipeplan.cluster import load_cluster
    from pipeplan.costs import price, stage_work
    from pipeplan.validation.preflight import check_plan

    cluster = REPO / "validation" / "probed-cpu.json"
    script = REPO / "validation" / "apriori_ops.py"
    out = subprocess.run([sys.executable, str(script), "--cluster", str(cluster), "--only", "interleaved",
                          "--rounds", "1"], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    rows = [line for line in out.stdout.splitlines() if line.startswith("| tiny-interleaved-recompute |")]
    checked = check_plan(str(apriori_table.PLANS / "tiny-interleaved-recompute.json"), 1.0)
    model, plan = checked.model, checked.plan
    assert len(rows) == len(plan.layers_per_stage) == 4
    gpu = load_cluster(str(cluster)).gpu
    for stage, line in enumerate(rows):
        cells = [c.strip() for c in line.strip("|").split("|")]
        assert cells[1] == str(stage)
        recompute = plan.recompute_of(stage)
        assert cells[2] == f"{len(plan.stage_layers(stage))}{' (recompute)' if recompute else ''}"
        cost = price(stage_work(model, plan.stage_layers(stage), plan.microbatch_size, model.seq_len, recompute), gpu)
        for cell, want in zip(cells[3:6], (cost.forward, cost.backward_input, cost.backward_weight)):
            measured, priced = (float(x) for x in cell.split(" (")[0].split(" / "))
            assert measured > 0 and priced == pytest.approx(1e3 * want, abs=0.006)
    bad = subprocess.run([sys.executable, str(script), "--cluster", str(cluster), "--rounds", "0"],
                         capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and "--rounds" in bad.stderr.strip().splitlines()[-1]
