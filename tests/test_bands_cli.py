"""Bands as users meet them: simulate's and optimize's lines and JSON, validate's report, the refusals, and
the recorded CPU runs of validation/records (measured + calibration) against today's bands."""
import json
import subprocess
import sys
from pathlib import Path

import pytest

import pipeplan
from pipeplan.bands import plan_band
from pipeplan.cli.validate import band_lines, format_report
from pipeplan.validation import repredict_bands

REPO = Path(__file__).resolve().parents[1]
VALIDATION = REPO / "validation"
# the validation reports among the records (which also keep probed cluster specs)
RECORDS = [p for p in sorted((VALIDATION / "records").glob("*.json"))
           if json.loads(p.read_text()).get("kind") == "pipeplan.validation"]
PLAN = VALIDATION / "plans" / "tiny-zb-h1-p2.json"


def cli(*args: str, code: int = 0, **env: str) -> subprocess.CompletedProcess:
    out = subprocess.run([sys.executable, "-m", "pipeplan", *args], capture_output=True, text=True, cwd=REPO,
                         timeout=600, env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin", **env})
    assert out.returncode == code, (out.stdout, out.stderr)
    if code == 2:
        assert "Traceback" not in out.stderr and len(out.stderr.strip().splitlines()) == 1, out.stderr
    return out


def test_simulate_prints_the_band_and_its_json_is_the_apis():
    text = cli("simulate", str(PLAN), "--band-samples", "40", "--band-seed", "3").stdout
    line = next(l for l in text.splitlines() if l.startswith("90 % band: iteration "))
    assert "(40 samples, seed 3; default a-priori spread (no probe in the cluster spec))" in line
    data = json.loads(cli("simulate", str(PLAN), "--band-samples", "40", "--band-seed", "3", "--json").stdout)
    want = plan_band(pipeplan.simulate(plan=pipeplan.Plan.load(str(PLAN)), base_dir=PLAN.parent), samples=40, seed=3)
    assert data["band"] == json.loads(json.dumps(want.to_dict()))
    assert "band" not in cli("simulate", str(PLAN), "--no-band").stdout


def test_a_profile_bands_with_the_calibrated_spread():
    record = VALIDATION / "records" / "cpu-gloo-tiny-zb-h1-p2.json"
    data = json.loads(cli("simulate", str(PLAN), "--profile", str(record), "--band-samples", "40", "--json").stdout)
    assert data["band"]["spread"]["source"].startswith("default calibrated spread (the profile has none)")
    assert set(data["band"]["spread"]) >= {"compute", "link"}


@pytest.mark.parametrize("args, words", [
    (["--band-samples", "5"], "argument --band-samples: must be 20 .. 100,000 samples (got '5')"),
    (["--band-seed", "-1"], "argument --band-seed: must be a whole number"),
])
def test_bad_band_flags_are_refused_in_one_line(args, words):
    assert words in cli("simulate", str(PLAN), *args, code=2).stderr


def test_band_samples_the_limit_cannot_take_are_refused_before_the_simulation():
    err = cli("simulate", "--model", "llama3-8b", "--pp", "8", "-m", "4096", "--band-samples", "1000", code=2).stderr
    assert "--band-samples: 1,000 samples x 65,536 ops is 65,536,000 op re-timings, over the limit of 2,000,000" in err
    assert "PIPEPLAN_MAX_BAND_OPS=N" in err


def test_a_plan_too_large_for_the_default_band_says_the_band_is_left_out():
    out = cli("simulate", str(PLAN), PIPEPLAN_MAX_BAND_OPS="100").stdout
    assert "band left out: 20 samples x 48 ops is over the band limit of 100" in out


def test_a_bad_probe_in_a_cluster_file_is_refused_in_one_line(tmp_path):
    cluster = json.loads((VALIDATION / "cpu.json").read_text())
    cluster["probe"] = [0.1]
    (tmp_path / "c.json").write_text(json.dumps(cluster))
    err = cli("simulate", "--model", "tiny", "--cluster", str(tmp_path / "c.json"), "--pp", "2", code=2).stderr
    assert "cluster.probe: must be a mapping (got list)" in err


def test_optimize_reports_its_ties_with_the_class_that_makes_them():
    data = json.loads(cli("optimize", "--model", "tiny", "--cluster", str(VALIDATION / "cpu.json"), "--pp", "2",
                          "--global-batch", "32", "--band-samples", "40", "--json").stdout)
    bands = data["bands"]
    assert bands["chosen"]["samples"] == 40 and bands["comparisons"]
    for c in bands["comparisons"]:
        assert c["ratio"]["point"] >= 1.0  # the chosen plan is the fastest that fits
        assert c["tie"] == (c["ratio"]["low"] <= 1.0)
        if c["tie"]:
            assert c["reason"].startswith(("the gemm spread", "the memory spread", "the overhead spread",
                                           "the link spread", "no class alone"))
        else:
            assert c["reason"] == "slower in at least 95 % of the samples"


def test_a_validation_report_prints_where_the_measurement_fell():
    record = json.loads((VALIDATION / "records" / "cpu-gloo-tiny-1f1b-p2.json").read_text())
    record["bands"] = repredict_bands(record, VALIDATION / record["run"]["base_dir"], samples=40)
    text = format_report(record)
    assert "90 % band" in text.splitlines()[1]
    calibrated = next(l for l in text.splitlines() if l.startswith("measured vs the calibrated 90 % band:"))
    inside = record["bands"]["predicted"]["inside"]["iteration_time"]
    assert f"iteration {'inside' if inside['median'] else 'OUTSIDE'} ({inside['iterations']} of 10" in calibrated


def test_a_plan_without_a_pipeline_leaves_its_bubble_unjudged():
    # p = 1, t = 2 (validation/plans/tiny-tp2-sp.json): every sample's bubble is 0, whatever the op times, so
    # the band is [0, 0]; a run's idle time between ops (its host's gaps, 0.04 % in the README's run) would
    # be "OUTSIDE" every time. The report marks the bubble unjudged and the text says so; a pipeline's
    # bubble band (tiny zb-h1, p = 2) has width and is judged.
    from pipeplan.validation.report import bands_section
    tp_plan = VALIDATION / "plans" / "tiny-tp2-sp.json"
    for path, judged in ((tp_plan, False), (PLAN, True)):
        result = pipeplan.simulate(plan=pipeplan.Plan.load(str(path)), base_dir=path.parent)
        time = result.iteration_time
        runs = [{"iteration_time": time * f, "bubble_fraction": 0.0004} for f in (0.99, 1.0, 1.01)]
        bands = bands_section(result, result, None, {"iteration_time": time, "bubble_fraction": 0.0004,
                                                     "iterations": runs}, samples=40)
        for key in ("predicted", "apriori"):
            bubble = bands[key]["bubble_fraction"]
            assert (bubble["low"] == bubble["high"] == 0.0) is not judged
            assert bands[key]["inside"]["bubble_fraction"].get("judged", True) is judged
            assert "judged" not in bands[key]["inside"]["iteration_time"]
        if not judged:
            lines = band_lines({"bands": bands})
            assert len(lines) == 2 and all("bubble not judged (the band has no width: no sample moved" in line for line in lines)
            assert all("iteration inside (3 of 3 iterations inside)" in line for line in lines)


def test_the_recorded_runs_fall_inside_their_bands():
    # Issue 15: the measured value inside the 90 % band in at least 8 of 10 cases. Every record, both
    # predictions, iteration time and bubble each: at least 80 % of the records.
    inside = {(k, q): 0 for k in ("predicted", "apriori") for q in ("iteration_time", "bubble_fraction")}
    for path in RECORDS:
        record = json.loads(path.read_text())
        bands = repredict_bands(record, VALIDATION / record["run"]["base_dir"])
        for (k, q) in inside:
            inside[(k, q)] += bands[k]["inside"][q]["median"]
    assert all(n >= 0.8 * len(RECORDS) for n in inside.values()), inside


def test_optimize_compares_only_what_the_band_limit_allows_and_says_so(monkeypatch):
    from pipeplan.bands.ties import optimize_bands
    from pipeplan.limits import plan_ops
    from pipeplan.planner.optimize import optimize

    result = optimize("tiny", str(VALIDATION / "cpu.json"), 32, pp=2)
    full = optimize_bands(result, samples=40)
    assert len(full.comparisons) == 4 and full.note is None
    monkeypatch.setenv("PIPEPLAN_MAX_BAND_OPS", str(40 * plan_ops(result.plan)))  # the chosen plan's band alone
    alone = optimize_bands(result, samples=40)
    assert alone.chosen.to_dict() == full.chosen.to_dict() and alone.comparisons == ()
    assert alone.note.startswith("4 of the 4 closest plans not compared: over the band limit of ")


def test_a_report_with_a_scatter_median_also_prints_the_mean_time_simulation():
    record = json.loads((VALIDATION / "records" / "cpu-gloo-tiny-1f1b-p2.json").read_text())
    text = format_report(record)
    assert "at mean op times" not in text  # a record from before the median keeps its table
    measured = record["measured"]
    record["predicted"]["point"] = {"iteration_time": 1.1 * measured["iteration_time"],
                                    "bubble_fraction": measured["bubble_fraction"] + 0.02}
    (row,) = [line for line in format_report(record).splitlines() if "at mean op times" in line]
    assert "+2.00 pt" in row and "+10.0 %" in row  # 2 points and 10 % over the measurement, as set above
