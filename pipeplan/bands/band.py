"""Bands: a 90 % interval around each prediction, and which of two plans' predictions can be told apart.

``plan_band(result)`` samples a simulated plan under the spread of what priced it (``spread.spread_for``:
the calibration's, the probe's, or a documented default) and returns the interval holding the middle
``level`` of the samples' iteration times, bubbles and throughputs: where one iteration of that plan
lands, given how uncertain its op and link times are.

``compare(chosen, other)`` samples both with common random numbers (``sampling``): the same machine
speed and op-type errors in each sample, so what the two share cancels and the ratio of their times
carries only what differs. ``other`` is a tie when the ratio's interval reaches 1 (it was as fast
as the chosen plan in at least 5 % of the samples); the reason names the op class whose spread alone
does that (or, when no class does alone, the one that widens the ratio most). Comparing the two
plans' own intervals instead would call nearly every pair a tie under an a-priori spread (a 30 %
common factor widens both bands alike but cannot reorder plans that scale alike).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from ..limits import RANGES, check, in_range, limit, plan_ops
from .sampling import Samples, sample_plan
from .spread import Spread, spread_for
from .terms import op_terms

LEVEL = 0.90
DEFAULT_SAMPLES = 200


@dataclass(frozen=True)
class Band:
    """A prediction ``point`` and the interval [``low``, ``high``] around it."""

    point: float
    low: float
    high: float

    def contains(self, value: float) -> bool:
        return self.low <= value <= self.high

    def to_dict(self) -> dict[str, float]:
        return {"point": self.point, "low": self.low, "high": self.high}


def interval(values: np.ndarray, point: float, level: float = LEVEL) -> Band:
    """The central ``level`` of ``values`` around ``point``: the sample at or below quantile (1 - level) / 2
    and the one at or above (1 + level) / 2. Samples themselves, not interpolations between them, so
    equal samples give exactly their value and the interval never claims less than it saw."""
    low = np.quantile(values, (1 - level) / 2, method="lower")
    high = np.quantile(values, (1 + level) / 2, method="higher")
    return Band(float(point), float(low), float(high))


@dataclass(frozen=True)
class PlanBand:
    """The bands of one simulated plan, how many samples and which seed made them, and the spread used."""

    iteration_time: Band
    bubble_fraction: Band
    tokens_per_second: Band
    samples: int
    seed: int
    level: float
    spread: Spread

    def to_dict(self) -> dict:
        return {"level": self.level, "samples": self.samples, "seed": self.seed,
                "iteration_time": self.iteration_time.to_dict(), "bubble_fraction": self.bubble_fraction.to_dict(),
                "tokens_per_second": self.tokens_per_second.to_dict(), "spread": self.spread.to_dict()}


def check_band_size(plan, samples: int, runs: int = 1, what: str = "band") -> None:
    """Refuse a band of ``samples`` re-timings (x ``runs`` plans or spreads) past the band-ops limit."""
    in_range("band samples", samples, "band_samples")
    check("band_ops", plan_ops(plan) * samples * runs,
          f"{what}: {samples:,} samples x {plan_ops(plan):,} ops" + (f" x {runs} runs" if runs > 1 else ""),
          "lower --band-samples")


def affordable_samples(plan, runs: int = 1) -> int | None:
    """``DEFAULT_SAMPLES``, or as many as the band-ops limit allows ``runs`` bands of ``plan``; None below
    the fewest a 90 % interval needs (``RANGES["band_samples"]``)."""
    samples = min(DEFAULT_SAMPLES, limit("band_ops") // (max(1, plan_ops(plan)) * runs))
    return samples if samples >= RANGES["band_samples"].low else None


def band_from_samples(result, drawn: Samples, spread: Spread, seed: int, level: float = LEVEL) -> PlanBand:
    time = interval(drawn.iteration_time, result.iteration_time, level)
    tokens = result.tokens_per_second * result.iteration_time  # per iteration
    throughput = Band(result.tokens_per_second, tokens / time.high if time.high > 0 else math.inf,
                      tokens / time.low if time.low > 0 else math.inf)
    return PlanBand(time, interval(drawn.bubble_fraction, result.bubble_fraction, level), throughput,
                    len(drawn.iteration_time), seed, level, spread)


def plan_band(result, spread: Spread | None = None, samples: int = DEFAULT_SAMPLES, seed: int = 0,
              profile=None, level: float = LEVEL) -> PlanBand:
    """The bands of ``result`` (a ``PlanResult``); ``profile``: the measured profile that priced it, if
    any; ``spread`` defaults to ``spread_for`` its cluster and profile. Sized against the limit first."""
    spread = spread if spread is not None else spread_for(result.resolved.cluster, profile)
    check_band_size(result.plan, samples)
    return band_from_samples(result, sample_plan(result, spread, samples, seed, profile), spread, seed, level)


@dataclass(frozen=True)
class Comparison:
    """``other`` against the chosen plan: its band, the paired ratio of its time to the chosen one's,
    whether that makes it a tie, and why."""

    name: str
    band: PlanBand
    ratio: Band
    tie: bool
    reason: str

    def to_dict(self) -> dict:
        return {"name": self.name, "band": self.band.to_dict(), "ratio": self.ratio.to_dict(), "tie": self.tie,
                "reason": self.reason}


def present_classes(result, spread: Spread, profile=None) -> list[str]:
    """The op classes with a spread that ``result``'s ops or transfers are made of."""
    terms = op_terms(result.resolved, len(result.workload.stages), measured=profile is not None)
    found = {cls for parts in terms.values() for cls, _, _ in parts}
    if result.plan.pp > 1:
        found.add("link")
    return [c for c in spread.classes() if c in found]


def _ratio(chosen: Samples, other: Samples, point: float, level: float) -> Band:
    return interval(other.iteration_time / chosen.iteration_time, point, level)


def compare(chosen, chosen_samples: Samples, name: str, other, spread: Spread, samples: int, seed: int,
            profile=None, level: float = LEVEL) -> Comparison:
    """``other`` (a ``PlanResult``) against ``chosen`` sampled as ``chosen_samples`` with ``spread``,
    ``samples`` and ``seed`` (see the module docstring); a tie's reason is left to ``explain``."""
    drawn = sample_plan(other, spread, samples, seed, profile)
    ratio = _ratio(chosen_samples, drawn, other.iteration_time / chosen.iteration_time, level)
    band = band_from_samples(other, drawn, spread, seed, level)
    if ratio.low > 1.0:
        return Comparison(name, band, ratio, False, f"slower in at least {100 * (1 + level) / 2:.0f} % of the samples")
    return Comparison(name, band, ratio, True, "within the spread")


def explain(comparison: Comparison, chosen, other, spread: Spread, samples: int, seed: int, profile=None,
            level: float = LEVEL, chosen_alone: dict[str, Samples] | None = None) -> Comparison:
    """``comparison`` (a tie) with its reason: the op class whose spread alone makes the ratio's interval
    reach 1 (the one reaching lowest), else the class that widens it most alone. Samples both plans once
    per class with a spread (``classes_to_explain``); ``chosen_alone`` keeps the chosen plan's per class
    across calls."""
    chosen_alone = {} if chosen_alone is None else chosen_alone
    alone = {}
    for cls in classes_to_explain(chosen, other, spread, profile):
        only = spread.only(cls)
        if cls not in chosen_alone:
            chosen_alone[cls] = sample_plan(chosen, only, samples, seed, profile)
        alone[cls] = _ratio(chosen_alone[cls], sample_plan(other, only, samples, seed, profile),
                            comparison.ratio.point, level)
    reaching = [c for c, r in alone.items() if r.low <= 1.0]
    if reaching:
        cls = min(reaching, key=lambda c: alone[c].low)
        why = f"the {cls} spread alone ({spread.of(cls).text()}) puts it at {_x(alone[cls])}"
    elif alone:
        cls = max(alone, key=lambda c: alone[c].high / alone[c].low)
        why = f"no class alone; the {cls} spread ({spread.of(cls).text()}) widens it most ({_x(alone[cls])} alone)"
    else:
        why = "no class has a spread"
    return Comparison(comparison.name, comparison.band, comparison.ratio, comparison.tie, why)


def classes_to_explain(chosen, other, spread: Spread, profile=None) -> list[str]:
    """The classes with a spread that either plan is made of, in ``OP_CLASSES`` order."""
    found = set(present_classes(chosen, spread, profile)) | set(present_classes(other, spread, profile))
    return [c for c in spread.classes() if c in found]


def _x(band: Band) -> str:
    return f"{band.low:.3f}-{band.high:.3f}x"
