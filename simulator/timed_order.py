"""Timing a fixed F/I/W order with per-stage costs, and its activation peak (the cost-aware generators' yardsticks).

``order_spans`` runs a given per-device order as soon as possible with the given F, I, W and hop
times (an op starts when its device is free and its inputs have arrived, a hop's ``comm`` later:
the engine's rule for an uncontended transfer) and returns every device's span, first op to last;
``peak_activations`` counts forward activations the way ``zb_rounds`` and ``vshape`` do (F adds 1,
I frees all but ``held_fraction``, W the rest). ``zb_auto`` uses them to weigh the handcrafted
ZB-H1 and ZB-H2 orders against the heuristic's.
"""
from __future__ import annotations

from typing import Sequence

from .ir import BACKWARD_INPUT, FORWARD, Action
from .stage_times import StageTimes


def order_spans(device_actions: Sequence[Sequence[Action]], stage_to_device: Sequence[int], m: int,
                times: StageTimes) -> tuple[float, ...] | None:
    """Per device, the span (first op's start to last op's end) of a fixed F/I/W order run as soon as
    possible with ``times``; None when the order cannot run (it waits on itself)."""
    S = len(stage_to_device)
    hop = [0.0 if stage_to_device[s] == stage_to_device[s + 1] else times.comm[s] for s in range(S - 1)]
    end: dict[Action, float] = {}
    free = [0.0] * len(device_actions)
    first: list[float | None] = [None] * len(device_actions)
    position = [0] * len(device_actions)
    progressed = True
    while progressed:
        progressed = False
        for d, actions in enumerate(device_actions):
            while position[d] < len(actions):
                s, kind, k = action = actions[position[d]]
                if kind == FORWARD:
                    deps = [] if s == 0 else [(Action(s - 1, FORWARD, k), hop[s - 1])]
                    duration = times.forward[s]
                elif kind == BACKWARD_INPUT:
                    deps = [(Action(s, FORWARD, k), 0.0)]
                    if s < S - 1:
                        deps.append((Action(s + 1, BACKWARD_INPUT, k), hop[s]))
                    duration = times.backward_input[s]
                else:
                    deps = [(Action(s, BACKWARD_INPUT, k), 0.0)]
                    duration = times.backward_weight[s]
                if any(dep not in end for dep, _ in deps):
                    break
                start = max([free[d]] + [end[dep] + lag for dep, lag in deps])
                if first[d] is None:
                    first[d] = start
                end[action] = free[d] = start + duration
                position[d] += 1
                progressed = True
    if any(position[d] < len(a) for d, a in enumerate(device_actions)):
        return None
    return tuple(free[d] - (first[d] or 0.0) for d in range(len(device_actions)))


def peak_activations(device_actions: Sequence[Sequence[Action]], held_fraction: float) -> float:
    """The most forward activations any device holds, W's held share counted (``timed_order``'s measure)."""
    peak = 0.0
    for actions in device_actions:
        level = 0.0
        for action in actions:
            level += 1 if action.kind == FORWARD else -(1 - held_fraction) if action.kind == BACKWARD_INPUT \
                else -held_fraction
            peak = max(peak, level)
    return peak
