"""The dependency rules of pipeline training, written once.

The checker, the engine and the validator all ask these functions what an action waits for.

* ``F(s, m)`` needs ``F(s-1, m)``: the activations of the previous stage.
* ``B(s, m)`` and ``I(s, m)`` need ``F(s, m)`` (their own stored activations) and the input
  gradient of stage ``s+1`` for micro-batch ``m``, produced by ``B(s+1, m)`` or ``I(s+1, m)``.
  The last stage computes the loss itself, so it needs only its forward.
* ``W(s, m)`` needs ``I(s, m)``: the output gradient that I computed and kept.
"""
from __future__ import annotations

from typing import Iterable, NamedTuple

from .ir import (
    BACKWARD_INPUT,
    BACKWARD_WEIGHT,
    FORWARD,
    FULL_BACKWARD,
    Action,
    Schedule,
    ScheduleError,
)

# Which kinds hand a tensor to the neighbouring stage: the forward sends activations to s+1,
# the input-gradient producers (B or I) send gradients to s-1.
SENDS_FORWARD = frozenset({FORWARD})
SENDS_BACKWARD = frozenset({FULL_BACKWARD, BACKWARD_INPUT})


class Dependency(NamedTuple):
    """``consumer`` waits for ``producer``; ``direction`` says which boundary tensor moves.

    direction is "fwd" (activations of stage producer.stage), "bwd" (input gradient of
    stage producer.stage) or "local" (same stage, nothing crosses a device boundary).
    """

    producer: Action
    direction: str


def backward_kind_map(actions: Iterable[Action]) -> dict[tuple[int, int], str]:
    """(stage, microbatch) -> the kind that produces its input gradient (B or I)."""
    kinds: dict[tuple[int, int], str] = {}
    for action in actions:
        if action.kind in SENDS_BACKWARD:
            kinds[(action.stage, action.microbatch)] = action.kind
    return kinds


def producer_keys(
    stage: int, kind: str, mb: int, num_stages: int, grad_kind: dict[tuple[int, int], str]
) -> list[tuple[tuple[int, str, int], str]]:
    """The rules themselves, on plain tuples: [((stage, kind, microbatch), direction), ...].

    Plain tuples hash and compare like ``Action``s, so the engine looks them up in an
    Action-keyed table without building objects in its set-up loop.
    """
    if kind == FORWARD:
        return [((stage - 1, FORWARD, mb), "fwd")] if stage > 0 else []
    if kind in SENDS_BACKWARD:
        if stage < num_stages - 1:
            upstream_kind = grad_kind.get((stage + 1, mb), FULL_BACKWARD)
            return [((stage, FORWARD, mb), "local"), ((stage + 1, upstream_kind, mb), "bwd")]
        return [((stage, FORWARD, mb), "local")]
    if kind == BACKWARD_WEIGHT:
        return [((stage, BACKWARD_INPUT, mb), "local")]
    raise ScheduleError(f"unknown action kind {kind!r} in {stage}{kind}{mb}")


def dependencies_of(
    action: Action, num_stages: int, grad_kind: dict[tuple[int, int], str]
) -> list[Dependency]:
    """The actions ``action`` must wait for (see the module docstring for the rules)."""
    return [
        Dependency(Action(*key), direction)
        for key, direction in producer_keys(action.stage, action.kind, action.microbatch, num_stages, grad_kind)
    ]


def schedule_dependencies(schedule: Schedule) -> dict[Action, list[Dependency]]:
    """Every action of ``schedule`` mapped to its dependencies."""
    all_actions = [a for acts in schedule.device_actions for a in acts]
    grad_kind = backward_kind_map(all_actions)
    return {a: dependencies_of(a, schedule.num_stages, grad_kind) for a in all_actions}
