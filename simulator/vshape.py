"""ZB-V (Qi et al., "Zero Bubble Pipeline Parallelism", ICLR'24, section 6), built from the stage costs.

2p stages in a V: device d holds stages d and 2p-1-d, so a micro-batch's forward and backward both
start and end on device 0. The order is placed by ``timed_order`` with the given (or unit) F, I, W
and hop times under ZB-V's activation limit, 1F1B's: 2p stage activations per device (p whole
micro-batches, W's held share counted), which reproduces the paper's phases (2p-1 warm-up F's,
then F-I-W groups per chunk, then the remaining I's with W's filling the gaps). Like the paper's
search, it tries its heuristic's choices both ways and keeps the order whose longest device span
(first op to last op) is shortest.
"""
from __future__ import annotations

from .generators import zb_v_rule
from .ir import Schedule, make_schedule
from .stage_times import StageTimes, stage_times_for
from .timed_order import Policy, best_timed_order

V_POLICIES = tuple(Policy(fill, late, alternate) for alternate in (True, False) for late in (True, False)
                   for fill in (1.0, 0.5, 0.0))


def v_stage_to_device(p: int) -> list[int]:
    """Stage s on device s for the first chunk, on device 2p-1-s for the second."""
    return list(range(p)) + list(reversed(range(p)))


def zb_v(p: int, m: int, v: int = 2, costs: StageTimes | None = None) -> Schedule:
    """ZB-V: two chunks per device in a V, ordered by timing the per-chunk ``costs`` (unit times by default).

    Bubble -> only the fill when t_F = t_B = t_W; peak activations as 1F1B (2p chunk activations).
    """
    zb_v_rule(p, m, v)
    stage_to_device = v_stage_to_device(p)
    times = stage_times_for(costs, 2 * p)
    best = best_timed_order(stage_to_device, m, times, 2 * p, V_POLICIES)
    return make_schedule(best.device_actions, stage_to_device, m, "zb-v", 2)
