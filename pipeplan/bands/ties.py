"""``optimize``'s bands: the chosen plan's, and which of the other plans it found it cannot be told apart from.

The others are the plans the search simulated that fit (``OptimizeResult.contenders``: each candidate's
proposal, other layouts' answers) and the baselines that fit, each plan once, the ``shown`` fastest.
Each is compared with the chosen plan by ``band.compare`` (paired sampling), and a tie is explained by
``band.explain`` (the op class whose spread makes it one). The work is budgeted against the band-ops
limit: the chosen plan's band first, then each comparison with, should it be a tie, its explanation
(both plans again per op class with a spread, an eighth of the samples, the chosen plan's kept for the
next), as far as the limit allows; a comparison that does not fit is left out, saying so.
"""
from __future__ import annotations

import time
from dataclasses import dataclass

from ..limits import RANGES, limit, plan_ops
from .band import Comparison, PlanBand, band_from_samples, classes_to_explain, compare, explain
from .sampling import sample_plan
from .spread import Spread, spread_for

SHOWN = 4


@dataclass(frozen=True)
class OptimizeBands:
    """The chosen plan's band, its comparisons with the closest others, and what was left out (or None)."""

    chosen: PlanBand
    comparisons: tuple[Comparison, ...]
    note: str | None = None

    @property
    def ties(self) -> tuple[Comparison, ...]:
        return tuple(c for c in self.comparisons if c.tie)

    def to_dict(self) -> dict:
        return {"chosen": self.chosen.to_dict(), "comparisons": [c.to_dict() for c in self.comparisons],
                "note": self.note}


def others(result) -> list:
    """The fitting plans other than the chosen one, each once (fastest first): contenders and baselines."""
    from ..planner.refine import fits_within

    seen = {result.plan}
    found = []
    for scored in sorted((*result.contenders, *result.baselines), key=lambda s: s.iteration_time):
        if scored.plan in seen or not fits_within(scored, result.headroom):
            continue
        seen.add(scored.plan)
        found.append(scored)
    return found


def explain_samples(samples: int) -> int:
    """Samples per class when a tie is explained: an eighth of the band's (at least 20), since the reason
    asks only which class's interval reaches 1, not where its ends are to the per cent."""
    return max(int(RANGES["band_samples"].low), samples // 8)


def label(scored, chosen_plan) -> str:
    """A plan as a comparison names it: what it changes from the chosen plan, and who made it."""
    plan = scored.plan
    parts = []
    if (plan.tp, plan.pp, plan.dp) != (chosen_plan.tp, chosen_plan.pp, chosen_plan.dp):
        parts.append(f"tp={plan.tp} pp={plan.pp} dp={plan.dp}")
    parts.append(f"{plan.schedule} v={plan.chunks} b={plan.microbatch_size} m={plan.num_microbatches}")
    if plan.layers_per_stage != chosen_plan.layers_per_stage or plan.recompute != chosen_plan.recompute:
        parts.append("other cuts" if plan.layers_per_stage != chosen_plan.layers_per_stage else "other recompute")
    return " ".join(parts) + f" ({scored.name})"


def optimize_bands(result, samples: int, seed: int = 0, profile=None, spread: Spread | None = None,
                   shown: int = SHOWN, deadline: float | None = None) -> OptimizeBands:
    """The chosen plan's band and its comparisons with the ``shown`` closest other plans (see above);
    past ``deadline`` (``time.perf_counter()`` seconds) no further comparison or explanation starts."""
    chosen = result.result
    spread = spread if spread is not None else spread_for(chosen.resolved.cluster, profile)
    budget = limit("band_ops") - plan_ops(chosen.plan) * samples
    drawn = sample_plan(chosen, spread, samples, seed, profile)
    band = band_from_samples(chosen, drawn, spread, seed)
    few = explain_samples(samples)
    chosen_alone: dict = {}
    comparisons, skipped = [], 0
    candidates = others(result)
    late = False
    for scored in candidates[:shown]:
        # A comparison starts only with its explanation's worst case in the budget too, so a tie has its reason.
        classes = classes_to_explain(chosen, scored.result, spread, profile)
        cost = samples * plan_ops(scored.plan)
        reason_cost = few * (len(classes) * plan_ops(scored.plan)
                             + sum(c not in chosen_alone for c in classes) * plan_ops(chosen.plan))
        late = late or (deadline is not None and time.perf_counter() > deadline)
        if cost + reason_cost > budget or late:
            skipped += 1
            continue
        budget -= cost
        found = compare(chosen, drawn, label(scored, chosen.plan), scored.result, spread, samples, seed, profile)
        if found.tie:
            budget -= reason_cost
            found = explain(found, chosen, scored.result, spread, few, seed, profile, chosen_alone=chosen_alone)
        comparisons.append(found)
    note = None
    if skipped:
        why = (f"over the band limit of {limit('band_ops'):,} op re-timings (lower --band-samples or raise "
               "PIPEPLAN_MAX_BAND_OPS)")
        note = (f"{skipped} of the {min(shown, len(candidates))} closest plans not compared: "
                + ("past --time-limit, or " + why if late else why))
    return OptimizeBands(band, tuple(comparisons), note)
