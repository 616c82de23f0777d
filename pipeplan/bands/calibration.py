"""How much a calibration's op and link timings scatter: what a calibrated prediction's band is built on.

The validator calibrates in rounds, one before every timed iteration (``validator.calibrate``): each
round replays every rank's action list and times each op, and times every used link one way. From
those samples, per key (a stage's F, B, I or W; a link at the boundary size):

* ``common``: the relative 1-sigma of a round's speed. A round's speed factor is its time-weighted
  mean ratio to the keys' overall means, sum_k n_rk·mean_rk / sum_k n_rk·mean_k, over every op
  of every rank in it: a slow moment of the machine slows all of them at once. With ``device``
  known, the devices' share of its variance (device^2 · sum_d w_d^2) is taken out.
* ``device``: the relative 1-sigma of one device's speed in one round once the round's common factor
  is taken out (each device has cores of its own, and a machine slows one at a time: the other ranks
  then wait for it). Per round and device, its factor is its own time-weighted ratio over the
  round's; see ``device_spread`` for the closed form that takes out what the ops' own noise and the
  common factor's division leave in its variance. Needs the stage -> device map; 0 without it, with
  one device, or in a profile written before it existed.
* ``independent``: the relative 1-sigma of one op timing around its key's mean scaled by its
  round's factor (and its device's, when the map is given), pooled over keys: what is left once the
  round's speed is taken out.
* ``samples``: the fewest timings behind one key's mean, so ``independent / sqrt(samples)`` bounds
  the standard error of any mean the profile prices an op type with.
* ``link``, ``link_samples``: the same pooled relative 1-sigma and count for the link timings at
  the boundary-tensor size (each link around its own mean).

``estimate_spread`` is a pure function of the samples, so it is tested on drawn numbers.
"""
from __future__ import annotations

import math
import statistics
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

from ..errors import SpecError, positive_number
from ..limits import in_range

# One round's samples: {stage: {"F"|"B"|"I"|"W": [seconds, ...]}} (what validator.calibrate returns).
StageRound = Mapping[Any, Mapping[str, Sequence[float]]]


@dataclass(frozen=True)
class CalibrationSpread:
    """The scatter of one calibration (see the module docstring); relative 1-sigmas, counts >= 1."""

    rounds: int
    common: float
    independent: float
    samples: int
    link: float = 0.0
    link_samples: int = 1
    device: float = 0.0

    def __post_init__(self) -> None:
        for name in ("common", "independent", "link", "device"):
            in_range(f"profile.spread.{name}", positive_number(f"profile.spread.{name}", getattr(self, name),
                                                               allow_zero=True), "spread")
        for name in ("rounds", "samples", "link_samples"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise SpecError(f"profile.spread.{name}: must be a whole number >= 1 (got {value!r})")

    def to_dict(self) -> dict[str, Any]:
        return dict(vars(self))

    @staticmethod
    def from_dict(data: Any) -> "CalibrationSpread":
        if not isinstance(data, dict):
            raise SpecError(f"profile.spread: must be a mapping (got {data!r})")
        known = CalibrationSpread.__dataclass_fields__
        unknown = sorted(set(data) - set(known))
        if unknown:
            raise SpecError(f"profile.spread.{unknown[0]}: unknown field; known fields are {', '.join(known)}")
        for key in ("rounds", "common", "independent", "samples"):
            if key not in data:
                raise SpecError(f"profile.spread.{key}: required field is missing")
        counts = {k: int(v) if isinstance(v, float) and v.is_integer() else v
                  for k, v in data.items() if k in ("rounds", "samples", "link_samples")}
        return CalibrationSpread(**{**data, **counts})


def _relative_residuals(values: Sequence[float], centre: float) -> list[float]:
    return [v / centre - 1.0 for v in values] if centre > 0 else []


def _spread(residuals: list[float], fitted: int = 0) -> float:
    """The relative 1-sigma behind ``residuals``: their sum of squares over the degrees of freedom left once
    the ``fitted`` centres they were taken from (estimated from the same timings) are paid for (a sum of N
    squared residuals around p fitted parameters has expectation (N - p)·sigma^2); an RMS when ``fitted`` is 0."""
    if not residuals:
        return 0.0
    return math.sqrt(sum(r * r for r in residuals) / max(1, len(residuals) - fitted))


def device_weights(expected: Sequence[Sequence[float]]) -> list[float]:
    """Each device's mean share of a round's expected op time (``expected[r][d]``, see ``device_spread``)."""
    totals = [sum(row) for row in expected]
    return [statistics.fmean(row[d] / total for row, total in zip(expected, totals)) for d in range(len(expected[0]))]


def device_spread(timed: Sequence[Sequence[float]], expected: Sequence[Sequence[float]],
                  noise: Sequence[float]) -> float:
    """The relative 1-sigma of a device's speed factor in one round, once the round's common factor is out.

    ``timed[r][d]``: device d's summed op time in round r; ``expected[r][d]``: the same ops priced at their
    keys' means; ``noise[d]``: the variance the ops' own scatter leaves in device d's ratio timed / expected
    (independent^2 x sum n·m^2 / (sum n·m)^2 over its ops of a round). To first order, with g_rd =
    timed / expected = 1 + δ_rd, the round's common factor c_r = sum_d w_d·g_rd (w_d: device d's share of
    the expected time) and f_rd = g_rd / c_r, f_rd - 1 = δ_rd - sum_d' w_d'·δ_rd', so with Var δ_d =
    device^2 + noise_d:

        sum_d Var f_d = device^2 · (D - 2 + D·sum_d w_d^2) + sum_d [(1 - 2·w_d)·noise_d + w_d^2·D·noise_d]

    solved for device^2 with each Var f_d the sample variance over rounds. 0 with fewer than two rounds or
    devices (a single device's factor is the common factor), and when the noise explains all of it."""
    rounds, devices = len(timed), len(timed[0]) if timed else 0
    if rounds < 2 or devices < 2:
        return 0.0
    w = device_weights(expected)
    f = []
    for r in range(rounds):
        g = [timed[r][d] / expected[r][d] for d in range(devices)]
        c = sum(w_d * g_d for w_d, g_d in zip(w, g))
        f.append([g_d / c for g_d in g])
    observed = sum(statistics.variance([f[r][d] for r in range(rounds)]) for d in range(devices))
    gain = devices - 2 + devices * sum(x * x for x in w)
    left = sum(((1 - 2 * w[d]) + devices * w[d] ** 2) * noise[d] for d in range(devices))
    return math.sqrt(max(0.0, observed - left) / gain) if gain > 0 else 0.0


def estimate_spread(stage_rounds: Sequence[StageRound],
                    link_rounds: Sequence[Mapping[Any, Sequence[float]]] = (),
                    stage_devices: Sequence[int] | Mapping[Any, int] | None = None) -> CalibrationSpread:
    """The spread of ``stage_rounds`` (one mapping per round) and of ``link_rounds`` (per round, per
    link, its boundary-size one-way timings); ``stage_devices``: stage -> the device that runs it
    (``Schedule.stage_to_device``), for ``device``. SpecError when no op was timed at all."""
    per_key: dict[tuple, list[list[float]]] = {}
    for r, round_samples in enumerate(stage_rounds):
        for stage, kinds in round_samples.items():
            for kind, values in kinds.items():
                rows = per_key.setdefault((stage, kind), [[] for _ in stage_rounds])
                rows[r].extend(float(v) for v in values)
    means = {key: statistics.fmean([v for row in rows for v in row]) for key, rows in per_key.items()
             if any(rows)}
    if not means:
        raise SpecError("profile.spread: the calibration timed no op")
    factors = []
    for r in range(len(stage_rounds)):
        timed = sum(sum(rows[r]) for key, rows in per_key.items() if key in means)
        expected = sum(len(rows[r]) * means[key] for key, rows in per_key.items() if key in means)
        factors.append(timed / expected if expected > 0 else 1.0)
    common = statistics.stdev(factors) if len(factors) >= 2 else 0.0
    device_of = (lambda key: 0) if stage_devices is None else (lambda key: stage_devices[key[0]])
    used = sorted({device_of(key) for key in means})
    # Per round and device: its summed op time, the same at the keys' means, and sum n·m^2 (for the noise).
    sums = {(r, d): [0.0, 0.0, 0.0] for r in range(len(stage_rounds)) for d in used}
    for key, rows in per_key.items():
        if key in means:
            for r, row in enumerate(rows):
                cell = sums[(r, device_of(key))]
                cell[0] += sum(row)
                cell[1] += len(row) * means[key]
                cell[2] += len(row) * means[key] ** 2
    own = {rd: (t / e if e > 0 else 1.0) / factors[rd[0]] for rd, (t, e, _) in sums.items()}
    residuals, centred = [], set()
    for key, rows in per_key.items():
        if key in means and sum(len(row) for row in rows) >= 2:
            centred.add(key)
            for r, row in enumerate(rows):
                scale = factors[r] * (own[(r, device_of(key))] if stage_devices is not None else 1.0)
                residuals += _relative_residuals(row, means[key] * scale)
    # Centres fitted to these same timings: each key's mean, and a factor per round (per round and device
    # with a device map), less the one overall scale per device that the means and the factors share.
    scales = len(stage_rounds) * len(used) - len(used) if stage_devices is not None else len(stage_rounds) - 1
    independent = _spread(residuals, len(centred) + scales)
    full = [r for r in range(len(stage_rounds)) if all(sums[(r, d)][1] > 0 for d in used)]
    device = 0.0
    if stage_devices is not None and len(full) >= 2 and len(used) >= 2:
        expected_rd = [[sums[(r, d)][1] for d in used] for r in full]
        device = device_spread([[sums[(r, d)][0] for d in used] for r in full], expected_rd,
                               [independent ** 2 * statistics.fmean(sums[(r, d)][2] / sums[(r, d)][1] ** 2 for r in full)
                                for d in used])
        # The round's factor averages the devices' own: take their share out, so it is not drawn twice.
        common = math.sqrt(max(0.0, common ** 2 - device ** 2 * sum(w * w for w in device_weights(expected_rd))))
    samples = min(sum(len(row) for row in rows) for key, rows in per_key.items() if key in means)
    link_residuals, link_counts = [], []
    merged: dict[Any, list[float]] = {}
    for round_links in link_rounds:
        for key, values in round_links.items():
            merged.setdefault(key, []).extend(float(v) for v in values)
    for values in merged.values():
        if len(values) >= 2:
            link_residuals += _relative_residuals(values, statistics.fmean(values))
            link_counts.append(len(values))
    return CalibrationSpread(rounds=max(1, len(stage_rounds)), common=min(common, 2.0),
                             independent=min(independent, 2.0), samples=max(1, samples),
                             link=min(_spread(link_residuals, len(link_counts)), 2.0), link_samples=min(link_counts, default=1),
                             device=min(device, 2.0))
