"""ZB-1p and ZB-2p (Qi et al., "Zero Bubble Pipeline Parallelism", ICLR'24, section 3): automatic schedules.

One stage per device, the order built by the paper's heuristic (``zb_rounds``: warm-up F's up to the
memory limit, then rounds of one F and one B per stage with W's filling the gaps, B's kept moving
back to device 0, the left W's last; the best of its eight switch settings) from the given (or
unit) F, I, W and hop times, under the paper's activation limit of p (ZB-1p, 1F1B's memory) or 2p
(ZB-2p) micro-batches per device, W's held share counted. On the paper's profiled times it gives
exactly the paper's Table 5 bubble rates for both (tests/test_zero_bubble_paper.py). The
handcrafted ZB-H1 and ZB-H2 orders are candidates too where they fit the limit and their longest
device span is shorter (on other costs). The paper refines its order with an ILP; its Table 5
numbers are the heuristic's.
"""
from __future__ import annotations

from .generators import one_stage_rule, zb_h1, zb_h2
from .ir import Schedule, make_schedule
from .stage_times import StageTimes, stage_times_for
from .timed_order import order_spans, peak_activations
from .zb_rounds import best_round_order


def _automatic(name: str, p: int, m: int, limit: int, costs: StageTimes | None) -> Schedule:
    times = stage_times_for(costs, p)
    best = best_round_order(m, times, limit)
    actions, span = best.device_actions, best.longest_span
    for handcrafted in (zb_h1(p, m), zb_h2(p, m)):
        if peak_activations(handcrafted.device_actions, times.held_fraction) > limit + 1e-9:
            continue
        spans = order_spans(handcrafted.device_actions, range(p), m, times)
        if spans is not None and max(spans) < span - 1e-9:
            actions, span = handcrafted.device_actions, max(spans)
    return make_schedule(actions, range(p), m, name)


def zb_1p(p: int, m: int, v: int = 1, costs: StageTimes | None = None) -> Schedule:
    """ZB-1p: at most p micro-batches of activations per device (1F1B's peak); ordered from ``costs``."""
    one_stage_rule("zb-1p", p, m, v)
    return _automatic("zb-1p", p, m, p, costs)


def zb_2p(p: int, m: int, v: int = 1, costs: StageTimes | None = None) -> Schedule:
    """ZB-2p: at most 2p micro-batches of activations per device; ordered from ``costs``."""
    one_stage_rule("zb-2p", p, m, v)
    return _automatic("zb-2p", p, m, 2 * p, costs)
