"""ZB-1p and ZB-2p (Qi et al., "Zero Bubble Pipeline Parallelism", ICLR'24, section 3): automatic schedules.

One stage per device, the order placed by ``timed_order`` from the given (or unit) F, I, W and hop
times under the paper's activation limit of p (ZB-1p, 1F1B's memory) or 2p (ZB-2p) micro-batches
per device, W's held share counted. As the paper's search does, it tries its heuristic's choices
and keeps the order whose longest device span (first op to last op) is shortest; the handcrafted
ZB-H1 and ZB-H2 orders are candidates too where they fit the limit (the paper's Table 5 has ZB-1p
equal to ZB-H1 in every setting). The paper refines its order with an ILP; its Table 5 numbers are
the heuristic's (tests/test_zero_bubble_paper.py puts ours next to them).
"""
from __future__ import annotations

from .generators import one_stage_rule, zb_h1, zb_h2
from .ir import Schedule, make_schedule
from .stage_times import StageTimes, stage_times_for
from .timed_order import Policy, best_timed_order, order_spans, peak_activations

ONE_STAGE_POLICIES = tuple(Policy(fill, alternate=alternate) for alternate in (True, False) for fill in (1.0, 0.5, 0.0))


def _automatic(name: str, p: int, m: int, limit: int, costs: StageTimes | None) -> Schedule:
    times = stage_times_for(costs, p)
    best = best_timed_order(range(p), m, times, limit, ONE_STAGE_POLICIES)
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
