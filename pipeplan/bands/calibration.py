"""How much a calibration's op and link timings scatter: what a calibrated prediction's band is built on.

The validator calibrates in rounds, one before every timed iteration (``validator.calibrate``): each
round replays every rank's action list and times each op, and times every used link one way. From
those samples, per key (a stage's F, B, I or W; a link at the boundary size):

* ``common``: the relative 1-sigma of a round's speed. A round's speed factor is its time-weighted
  mean ratio to the keys' overall means, sum_k n_rk·mean_rk / sum_k n_rk·mean_k, over every op
  of every rank in it: a slow moment of the machine slows all of them at once.
* ``independent``: the relative 1-sigma of one op timing around its key's mean scaled by its
  round's factor, pooled over keys: what is left once the round's speed is taken out.
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

    def __post_init__(self) -> None:
        for name in ("common", "independent", "link"):
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


def _spread(residuals: list[float]) -> float:
    """Root mean square of relative residuals (each key's own mean subtracted, so no ddof is owed to
    one grand mean; a key with a single timing contributes nothing)."""
    return math.sqrt(sum(r * r for r in residuals) / len(residuals)) if residuals else 0.0


def estimate_spread(stage_rounds: Sequence[StageRound],
                    link_rounds: Sequence[Mapping[Any, Sequence[float]]] = ()) -> CalibrationSpread:
    """The spread of ``stage_rounds`` (one mapping per round) and of ``link_rounds`` (per round, per
    link, its boundary-size one-way timings). SpecError when no op was timed at all."""
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
    residuals = []
    for key, rows in per_key.items():
        if key in means and sum(len(row) for row in rows) >= 2:
            for r, row in enumerate(rows):
                residuals += _relative_residuals(row, means[key] * factors[r])
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
                             independent=min(_spread(residuals), 2.0), samples=max(1, samples),
                             link=min(_spread(link_residuals), 2.0), link_samples=min(link_counts, default=1))
