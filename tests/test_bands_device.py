"""The per-device speed factor: estimated from calibration rounds, drawn in the bands, reported as a median.

* calibration: rounds drawn with known common, per-device and per-op 1-sigmas give back the per-device
  one within the sampling error of a standard deviation over R rounds (relative 1 / sqrt(2 (R - 1)));
  with every stage on one device the estimate is the one without a device map, field for field;
* sampling: two devices each running one op of t seconds in parallel, each with its own normal factor
  1 + s·Z: the iteration is max(X, Y) of two independent N(t, (s·t)^2), whose mean is t + s·t / sqrt(pi);
* the report: with no spread the samples' median is the mean-time simulation, exactly.
"""
import math
from pathlib import Path

import numpy as np
import pytest

from pipeplan.bands import CalibrationSpread, estimate_spread

CPU = str(Path(__file__).resolve().parents[1] / "validation" / "cpu.json")
MEANS = {(0, "F"): 2e-3, (0, "B"): 4e-3, (1, "F"): 3e-3, (1, "B"): 5e-3}


def drawn_rounds(rounds, common, device, independent, seed=0):
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(rounds):
        speed = 1 + common * rng.standard_normal()
        own = 1 + device * rng.standard_normal(2)  # stage s runs on device s
        out.append({s: {k: list(MEANS[(s, k)] * speed * own[s] * (1 + independent * rng.standard_normal(8)))
                        for k in "FB"} for s in (0, 1)})
    return out


def test_the_calibration_recovers_the_drawn_device_scatter_within_its_sampling_error():
    rounds, common, device, independent = 1000, 0.04, 0.06, 0.12
    est = estimate_spread(drawn_rounds(rounds, common, device, independent), stage_devices={0: 0, 1: 1})
    standard_error = device / math.sqrt(2 * (rounds - 1))
    assert abs(est.device - device) < 3 * standard_error
    # Each device's factor in a round is fitted to its 16 ops (1/16 of their variance): the estimate pays for
    # those fitted factors (and the keys' means) in its degrees of freedom, so it is the drawn sigma.
    assert est.independent == pytest.approx(independent, rel=0.02)
    # The round's factor without the devices' share: the common draw and the ops' noise averaged over
    # 32 ops (what the estimate without a device map carries too, see test_bands.py).
    assert est.common == pytest.approx(math.hypot(common, independent / math.sqrt(32)), rel=0.15)


def test_without_a_device_scatter_the_estimate_is_near_zero():
    rounds = 1000
    est = estimate_spread(drawn_rounds(rounds, 0.04, 0.0, 0.12, seed=1), stage_devices=[0, 1])
    # A 1-sigma of 0 estimated: its square is the devices' observed variance (only the ops' noise here,
    # 0.12^2 x sum n·m^2 / (sum n·m)^2 = 0.12^2 x 0.07 for either device) less that noise, and the observed
    # variance is known to a relative sqrt(2 / (R - 1)): the square stays within 3 of those.
    noise = 0.12 ** 2 * 0.07
    assert est.device ** 2 < 3 * noise * math.sqrt(2 / (rounds - 1))


def test_with_every_stage_on_one_device_the_old_fields_are_unchanged():
    drawn = drawn_rounds(50, 0.05, 0.08, 0.1, seed=2)
    assert estimate_spread(drawn, stage_devices={0: 0, 1: 0}) == estimate_spread(drawn)
    assert estimate_spread(drawn).device == 0.0


def test_a_profile_spread_written_before_the_device_field_loads_with_zero():
    old = {"rounds": 10, "common": 0.0985, "independent": 0.148, "samples": 80, "link": 0.33, "link_samples": 20}
    assert CalibrationSpread.from_dict(old).device == 0.0
    new = CalibrationSpread.from_dict({**old, "device": 0.07})
    assert new.device == 0.07 and CalibrationSpread.from_dict(new.to_dict()) == new


def two_parallel_ops(t: float):
    """Zero Bubble H1 on two devices with one micro-batch, F and I taking 1 ns and W ``t``: each device's W
    starts after a few tens of microseconds of transfers and ends the iteration, so one iteration is
    max(start_0 + W_0, start_1 + W_1) with W_0, W_1 independent under a device factor alone."""
    import pipeplan
    from pipeplan.dataparallel import DataParallelOptions
    from pipeplan.profile import Profile, StageProfile

    eps = 1e-9
    profile = Profile(device="test", backend="gloo", model="tiny", microbatch_size=4, seq_len=64,
                      layers_per_stage=(5, 5), stages=(StageProfile(eps, eps, eps, t), StageProfile(eps, eps, eps, t)))
    plan = pipeplan.Plan(model="tiny", cluster=CPU, schedule="zb-h1", pp=2, num_microbatches=1, microbatch_size=4,
                         layers_per_stage=(5, 5))
    return pipeplan.simulate(plan=plan, profile=profile, dp_options=DataParallelOptions(optimizer_step=False)), profile


def test_a_device_factor_per_device_gives_the_closed_form_mean_of_a_maximum():
    from pipeplan.bands import ClassSpread, Spread, sample_plan

    t, s, n = 1.0, 0.1, 2000
    result, profile = two_parallel_ops(t)
    ws = [op for op in result.timeline.ops if op.action.kind == "W"]
    assert len(ws) == 2 and all(op.end - op.start == pytest.approx(t, rel=1e-12) for op in ws)
    lag = abs(ws[0].start - ws[1].start)  # the W's start this far apart
    assert lag < 1e-3
    drawn = sample_plan(result, Spread("device only", compute=ClassSpread(device=s)), n, seed=0, profile=profile)
    times = drawn.iteration_time
    # max(t·exp(s·Z0), t·exp(s·Z1)) = t·exp(s·M), M the larger of two standard normals, whose density is
    # 2·phi(z)·Phi(z): E[exp(s·M)] = 2·exp(s^2/2)·Phi(s/sqrt(2)) (about 1 + s/sqrt(pi), the normals' form).
    expected = (result.iteration_time - t) + t * 2 * math.exp(s * s / 2) * 0.5 * math.erfc(-s / 2)
    standard_error = times.std(ddof=1) / math.sqrt(n)
    assert abs(times.mean() - expected) < 3 * standard_error + lag
    assert times.mean() - result.iteration_time > 10 * standard_error  # above the median-time simulation


def test_the_device_draws_are_one_per_device_and_sample():
    from pipeplan.bands import ClassSpread, Spread, sample_plan

    result, profile = two_parallel_ops(1.0)
    alone = sample_plan(result, Spread("device only", compute=ClassSpread(device=0.1)), 500, seed=3, profile=profile)
    again = sample_plan(result, Spread("device only", compute=ClassSpread(device=0.1)), 500, seed=3, profile=profile)
    assert np.array_equal(alone.iteration_time, again.iteration_time)
    # Were both W's drawn one factor, the iteration would be the point times a log-normal with median 1;
    # two draws give exp(s·M), whose median is exp(0.1 x 0.545) (M's median: Phi(m)^2 = 1/2).
    assert np.median(alone.iteration_time) > result.iteration_time * 1.02


def test_with_no_spread_the_reported_median_is_the_point_prediction_exactly():
    import pipeplan
    from pipeplan.bands import NO_SPREAD, sample_plan
    from pipeplan.validation.report import median_section

    plan = pipeplan.Plan(model="tiny", cluster=CPU, schedule="zb-v", pp=2, num_microbatches=8, microbatch_size=4,
                         chunks=2, layers_per_stage=(3, 2, 2, 3))
    result = pipeplan.simulate(plan=plan)
    point = {"iteration_time": result.iteration_time, "bubble_fraction": result.bubble_fraction, "busy_time": [1.0]}
    section = median_section(point, sample_plan(result, NO_SPREAD, 21))
    assert section["iteration_time"] == result.iteration_time and section["bubble_fraction"] == result.bubble_fraction
    assert section["point"] == {"iteration_time": result.iteration_time, "bubble_fraction": result.bubble_fraction}
    assert section["median_of"]["samples"] == 21 and section["busy_time"] == [1.0]
    assert section["device_bubble_fraction"] == [1 - 1.0 / result.iteration_time]  # busy 1 s over the median
    assert median_section(point, None) is point  # nothing drawn: the point is the prediction


RECORD = Path(__file__).resolve().parents[1] / "validation" / "records" / "cpu-gloo-tiny-1f1b-p2.json"


def _with_rounds(record, spread, calib_ops):
    import copy

    out = copy.deepcopy(record)
    out["profile"]["spread"] = spread
    for it, ops in zip(out["measured_iterations"], calib_ops):
        it["meta"]["calib_ops"] = ops
    return out


def test_an_old_report_takes_its_device_term_from_its_rounds_per_rank_op_times():
    import json

    from pipeplan.validation import Measurements
    from pipeplan.validation.report import predict, profile_with_round_device_spread, timed_step

    record = json.loads(RECORD.read_text())
    rounds = len(record["measured_iterations"])
    e, stored = 0.05, {"rounds": rounds, "common": 0.08, "independent": 0.0, "samples": 80}
    # Rank 0 5 % slow and rank 1 5 % fast, then the other way round: the round's own factor stays 1 and
    # each rank's factor is 1 +- e. With two equal ranks a device 1-sigma s leaves s^2 / 2 in each
    # rank's factor, so s = e·sqrt(2) (times sqrt(R / (R - 1)): the sample variance's ddof).
    calib_ops = [[0.1 * (1 + e), 0.1 * (1 - e)] if r % 2 else [0.1 * (1 - e), 0.1 * (1 + e)] for r in range(rounds)]
    report = _with_rounds(record, stored, calib_ops)
    run = Measurements.from_dict(report)
    calibrated, _ = predict(run.plan, RECORD.parents[1] / record["run"]["base_dir"], run.profile,
                            timed_step(run.iterations))
    spread = profile_with_round_device_spread(report, run, calibrated).spread
    device = e * math.sqrt(2 * rounds / (rounds - 1))
    assert spread.device == pytest.approx(device, rel=1e-9)
    # The round's factor held the devices' share, device^2 x (1/2^2 + 1/2^2): taken out.
    assert spread.common == pytest.approx(math.sqrt(0.08 ** 2 - device ** 2 / 2), rel=1e-9)
    # A profile written with the field keeps it, 0 included.
    kept = _with_rounds(record, {**stored, "device": 0.0}, calib_ops)
    assert profile_with_round_device_spread(kept, Measurements.from_dict(kept), calibrated).spread.device == 0.0


def test_a_report_states_the_median_as_its_prediction_keeps_the_point_and_compare_reads_it(tmp_path):
    import json
    import subprocess
    import sys

    from pipeplan.validation import Measurements, build_report, load_report, write_report
    from pipeplan.validation.report import calibrated_samples, predict, timed_step

    record = json.loads(RECORD.read_text())
    run = Measurements.from_dict({**record, "run": {**record["run"], "base_dir": str(RECORD.parents[1] / "plans")}})
    report = json.loads(json.dumps(build_report(run)))
    calibrated, _ = predict(run.plan, run.base_dir, run.profile, timed_step(run.iterations))
    drawn = calibrated_samples(calibrated, run.profile)
    predicted = report["predicted"]
    assert predicted["point"] == {"iteration_time": calibrated.iteration_time,
                                  "bubble_fraction": calibrated.bubble_fraction}
    assert predicted["iteration_time"] == float(np.median(drawn.iteration_time))
    assert predicted["median_of"] == {"samples": 200, "seed": 0}
    measured = report["measured"]["iteration_time"]
    assert report["errors"]["predicted"]["iteration_time_pct"] == pytest.approx(
        100 * (float(np.median(drawn.iteration_time)) - measured) / measured, rel=1e-12)
    write_report(report, tmp_path / "r.json")
    load_report(str(tmp_path / "r.json"))
    out = subprocess.run([sys.executable, "-m", "pipeplan", "compare", str(tmp_path / "r.json")], capture_output=True,
                         text=True, cwd=RECORD.parents[2], timeout=120)
    assert out.returncode == 0, out.stderr
    assert f"{1e3 * predicted['iteration_time']:.2f} ms" in out.stdout
