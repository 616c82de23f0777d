"""The validation report, built from a run's measurements in the process that asks for it.

Three numbers for each of bubble fraction, iteration time and per-device busy time:

* measured  — the median over the run's timed iterations;
* predicted — the simulator fed the run's own calibration (per-stage op times, link timings):
  what pipeplan claims once it knows the machine. Its bubble and iteration time are the medians of
  the calibrated simulation re-timed under the calibration's own measured scatter (``pipeplan.bands``:
  round speed, per-device speed, per-op noise): the quantity the measured median estimates, which
  the simulation at mean op times understates (an iteration is a maximum over dependency paths, and
  the mean of a maximum exceeds the maximum of the means). ``predicted.point`` keeps that mean-time
  simulation's two figures (its busy times and timeline are the section's own), ``predicted.median_of``
  how many samples made the median; with no samples (a plan too large for them) the section is the point;
* apriori   — the simulator with the analytic cost model and the cluster spec, no measurement.

Errors: bubble in percentage points (predicted - measured), iteration time in per cent of measured.

Bands (``bands``): for each prediction the 90 % interval of one iteration's time and bubble under the
spread of what priced it (``pipeplan.bands``: the calibration's scatter for the calibrated one, the
cluster spec's probe or the default a-priori spread for the other), and whether the measured median,
and how many of the measured iterations, fell inside.
"""
from __future__ import annotations

import os
import statistics
from dataclasses import replace
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from simulator.kinds import OPTIMIZER, is_compute
from simulator.timeline import Timeline, bubble_fraction, busy_time, iteration_time

from ..api import PlanResult, simulate
from ..bands import LEVEL, affordable_samples, device_spread, device_weights, plan_band, sample_plan
from ..bands.band import band_from_samples
from ..bands.sampling import Samples
from ..bands.spread import spread_for
from ..dataparallel import DataParallelOptions
from ..documents import check_report
from ..errors import SpecError
from ..fileio import load_mapping, write_json_atomic
from ..plan import Plan
from ..profile import Profile, load_profile
from .measurements import Measurements

REPORT_KIND = "pipeplan.validation"
REPORT_VERSION = 1


def _section(timeline: Timeline, **extra: Any) -> dict[str, Any]:
    total = iteration_time(timeline)
    busy = busy_time(timeline)
    return {
        "bubble_fraction": bubble_fraction(timeline),
        "iteration_time": total,
        "busy_time": busy,
        "device_bubble_fraction": [1 - b / total if total > 0 else 0.0 for b in busy],
        **extra,
        "timeline": timeline.to_dict(),
    }


def measured_section(timelines: Sequence[Timeline]) -> dict[str, Any]:
    """Medians over the timed iterations; the timeline shown is the iteration closest to the median time."""
    times = [iteration_time(t) for t in timelines]
    bubbles = [bubble_fraction(t) for t in timelines]
    median_time = statistics.median(times)
    shown = min(range(len(timelines)), key=lambda k: abs(times[k] - median_time))
    section = _section(timelines[shown], shown_iteration=shown)
    p = timelines[0].num_devices
    section.update(
        bubble_fraction=statistics.median(bubbles),
        iteration_time=median_time,
        busy_time=[statistics.median(busy_time(t)[d] for t in timelines) for d in range(p)],
        iterations=[{"iteration_time": t, "bubble_fraction": b, "foreign_cores": tl.meta.get("foreign_cores"),
                     **{k: tl.meta[k] for k in ("run_wait", "calib_wait", "run_others", "calib_others", "disturbance")
                        if k in tl.meta}}
                    for t, b, tl in zip(times, bubbles, timelines)],
    )
    section["device_bubble_fraction"] = [1 - b / median_time for b in section["busy_time"]]
    return section


def errors(prediction: dict[str, Any], measured: dict[str, Any]) -> dict[str, float]:
    return {
        "bubble_points": 100 * (prediction["bubble_fraction"] - measured["bubble_fraction"]),
        "iteration_time_pct": 100 * (prediction["iteration_time"] - measured["iteration_time"]) / measured["iteration_time"],
    }


def timed_step(timelines: Sequence[Timeline]) -> bool:
    """Whether a measured run timed its optimizer steps (OPTIMIZER ops in its timelines): the pipeplan runtime
    does; torch's runtime and runs recorded before it did end with the last backward."""
    return any(op.action.kind == OPTIMIZER for op in timelines[0].ops) if timelines else True


def predict(plan: Plan, base_dir: str | Path, profile: Profile, step: bool = True) -> tuple[PlanResult, PlanResult]:
    """The (calibrated, a-priori) simulations of ``plan``, with the current simulator.

    ``step``: whether the measured iteration ends with the optimizer steps (``timed_step``); when it ends
    with the last backward the predictions leave the step out too.
    """
    options = DataParallelOptions(optimizer_step=step)
    calibrated = simulate(plan=plan, base_dir=base_dir, profile=profile, dp_options=options)
    apriori = simulate(plan=plan, base_dir=base_dir, dp_options=options)
    for result, label in ((calibrated, "predicted (calibrated)"), (apriori, "a priori")):
        result.timeline.meta["source"] = label
    return calibrated, apriori


def predictions(plan: Plan, base_dir: str | Path, profile: Profile | dict[str, Any],
                step: bool = True) -> tuple[dict, dict]:
    """(calibrated, a-priori) prediction sections for ``plan``, with the current simulator (the calibrated
    one the mean-time simulation: ``median_section`` turns it into the prediction a report carries)."""
    calibrated, apriori = predict(plan, base_dir, load_profile(profile), step)
    return _section(calibrated.timeline), _section(apriori.timeline)


def calibrated_samples(calibrated: PlanResult, profile: Profile, samples: int | None = None,
                       seed: int = 0) -> Samples | None:
    """The calibrated simulation re-timed ``samples`` times under its profile's spread (None:
    ``DEFAULT_SAMPLES``, fewer for a large plan, and None past the band-ops limit)."""
    samples = samples if samples is not None else affordable_samples(calibrated.plan, runs=2)
    if samples is None:
        return None
    return sample_plan(calibrated, spread_for(calibrated.resolved.cluster, profile), samples, seed, profile)


def median_section(point: dict[str, Any], drawn: Samples | None, seed: int = 0) -> dict[str, Any]:
    """``point`` (a mean-time simulation's section) with its bubble and iteration time replaced by the
    medians of ``drawn``, and the point's kept under ``point``; ``point`` itself when nothing was drawn."""
    if drawn is None:
        return point
    median_time = float(np.median(drawn.iteration_time))
    # The point's busy times over the median iteration, as the measured section's own (``_section``) are.
    return {**point, "iteration_time": median_time, "bubble_fraction": float(np.median(drawn.bubble_fraction)),
            "device_bubble_fraction": [1 - b / median_time for b in point["busy_time"]],
            "point": {"iteration_time": point["iteration_time"], "bubble_fraction": point["bubble_fraction"]},
            "median_of": {"samples": len(drawn.iteration_time), "seed": seed}}


def bands_section(calibrated: PlanResult, apriori: PlanResult, profile: Profile, measured: dict[str, Any],
                  samples: int | None = None, seed: int = 0, drawn: Samples | None = None) -> dict[str, Any]:
    """Per prediction its band (``pipeplan.bands.plan_band``) and where the measurement fell; ``samples``
    None: ``DEFAULT_SAMPLES``, fewer for a plan too large for them, none (``{"note": why}``) past the limit.
    ``drawn``: the calibrated prediction's samples when already drawn (``calibrated_samples``)."""
    samples = len(drawn.iteration_time) if drawn is not None else (
        samples if samples is not None else affordable_samples(calibrated.plan, runs=2))
    if samples is None:
        return {"note": f"left out: the plan is too large for {LEVEL:.0%} bands within PIPEPLAN_MAX_BAND_OPS"}
    out = {}
    for key, result, priced_by in (("predicted", calibrated, profile), ("apriori", apriori, None)):
        if key == "predicted" and drawn is not None:
            band = band_from_samples(result, drawn, spread_for(result.resolved.cluster, profile), seed)
        else:
            band = plan_band(result, samples=samples, seed=seed, profile=priced_by)
        runs = measured.get("iterations") or []
        inside = {}
        for name, bounds in (("iteration_time", band.iteration_time), ("bubble_fraction", band.bubble_fraction)):
            inside[name] = {"median": bounds.contains(measured[name]),
                            "iterations": sum(bounds.contains(run[name]) for run in runs), "of": len(runs)}
        if band.bubble_fraction.low == band.bubble_fraction.high:
            # No sample moved the bubble (a plan without a pipeline, nothing exposed): the measured idle
            # time is the host's gaps between ops, which no prediction holds, so the band cannot judge it.
            inside["bubble_fraction"]["judged"] = False
        out[key] = {**band.to_dict(), "inside": inside}
    return out


def build_report(measurements: Measurements, band_samples: int | None = None, band_seed: int = 0) -> dict[str, Any]:
    """The report of a finished run: measured, both predictions, their errors and bands, and the measurements
    (a serving plan's: ``serving.build_serving_report``, without bands)."""
    if measurements.plan.serving is not None:
        from .serving import build_serving_report

        return build_serving_report(measurements, REPORT_KIND, REPORT_VERSION)
    measured = measured_section(measurements.iterations)
    calibrated, apriori_result = predict(measurements.plan, measurements.base_dir, measurements.profile,
                                         timed_step(measurements.iterations))
    drawn = calibrated_samples(calibrated, measurements.profile, band_samples, band_seed)
    point, apriori = _section(calibrated.timeline), _section(apriori_result.timeline)
    predicted = median_section(point, drawn, band_seed)
    bands = bands_section(calibrated, apriori_result, measurements.profile, measured, band_samples, band_seed, drawn)
    raw = measurements.to_dict()
    return {
        "kind": REPORT_KIND,
        "version": REPORT_VERSION,
        "plan": raw["plan"],
        "run": raw["run"],
        "measured": measured,
        "predicted": predicted,
        "apriori": apriori,
        "errors": {"predicted": errors(predicted, measured), "apriori": errors(apriori, measured)},
        "bands": bands,
        "profile": raw["profile"],
        "measured_iterations": raw["measured_iterations"],
        "losses": raw["losses"],
    }


def profile_with_round_device_spread(report: dict[str, Any], run: Measurements, calibrated: PlanResult) -> Profile:
    """``run.profile``, its spread given a ``device`` term from the run's own rounds when the stored
    profile predates the field: each timed iteration's calibration round recorded every rank's summed op
    time (``calib_ops``), which is a device's round time; ``device_spread`` on those, with each device's
    noise from the profile's ``independent`` over its ops in the calibrated simulation, and the devices'
    share taken out of ``common`` (as ``estimate_spread`` does). Unchanged where the report has the
    field, no spread, or no per-rank round times for every pipeline device."""
    spread = run.profile.spread
    stored = (report.get("profile") or {}).get("spread") or {}
    devices = calibrated.timeline.num_devices
    rounds = [t.meta.get("calib_ops") for t in run.iterations]
    if spread is None or "device" in stored or len(rounds) < 2 or \
            any(not isinstance(r, list) or len(r) != devices for r in rounds):
        return run.profile
    mean = [statistics.fmean(r[d] for r in rounds) for d in range(devices)]
    durations = [[op.end - op.start for op in calibrated.timeline.ops
                  if op.device == d and is_compute(op.action.kind)] for d in range(devices)]
    noise = [spread.independent ** 2 * sum(t * t for t in ts) / sum(ts) ** 2 if ts and sum(ts) > 0 else 0.0
             for ts in durations]
    expected = [mean for _ in rounds]
    device = min(2.0, device_spread(rounds, expected, noise))
    common = (max(0.0, spread.common ** 2 - device ** 2 * sum(w * w for w in device_weights(expected)))) ** 0.5
    return replace(run.profile, spread=replace(spread, device=device, common=common))


def repredict(report: dict[str, Any], base_dir: str | Path | None = None, samples: int | None = None,
              seed: int = 0) -> dict[str, dict[str, float]]:
    """Errors of today's simulator against a stored run (its calibration and measurement): ``predicted``
    the samples' median (as ``build_report``; a run stored before profiles had a device term takes one
    from its own rounds, ``profile_with_round_device_spread``), ``point`` the mean-time simulation, ``apriori``.

    ``base_dir``: where the plan's relative cluster/model files are (default: the run's plan folder).
    """
    run = Measurements.from_dict(report)
    if run.plan.serving is not None:
        from .serving import measured_serving_section, serving_errors, serving_predictions

        predicted, apriori, results = serving_predictions(run, base_dir or run.base_dir)
        measured = measured_serving_section(results)
        return {"predicted": serving_errors(predicted, measured), "apriori": serving_errors(apriori, measured)}
    measured = measured_section(run.iterations)
    calibrated, apriori_result = predict(run.plan, base_dir or run.base_dir, run.profile, timed_step(run.iterations))
    profile = profile_with_round_device_spread(report, run, calibrated)
    point, apriori = _section(calibrated.timeline), _section(apriori_result.timeline)
    predicted = median_section(point, calibrated_samples(calibrated, profile, samples, seed), seed)
    return {"predicted": errors(predicted, measured), "apriori": errors(apriori, measured),
            "point": errors(point, measured)}


def repredict_bands(report: dict[str, Any], base_dir: str | Path | None = None, samples: int | None = None,
                    seed: int = 0) -> dict[str, Any]:
    """``bands_section`` of a stored run (its calibration and measurement) with today's simulator."""
    run = Measurements.from_dict(report)
    calibrated, apriori = predict(run.plan, base_dir or run.base_dir, run.profile, timed_step(run.iterations))
    profile = profile_with_round_device_spread(report, run, calibrated)
    return bands_section(calibrated, apriori, profile, measured_section(run.iterations), samples, seed)


def write_report(report: dict[str, Any], path: str | os.PathLike) -> None:
    write_json_atomic(path, report)


def load_report(path: str) -> dict[str, Any]:
    """A validation report from ``path``, every field ``pipeplan compare`` reads checked (``check_report``)."""
    data = load_mapping(path, "report")
    if data.get("kind") != REPORT_KIND or not all(k in data for k in ("measured", "predicted", "apriori")):
        raise SpecError(f"report: {path!r} is not a validation report (written by `pipeplan validate --out`)")
    check_report(data)
    return data
