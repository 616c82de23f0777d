"""The dependency rules of pipeline training, written once as a table (``RULES``).

The checker, the engine and the validator all ask this module what an action waits for.

* ``F(s, m)`` needs ``F(s-1, m)``: the activations of the previous stage. In a recurrent schedule
  (``Schedule.recurrence`` R > 0) ``F(0, m)`` with m >= R also needs ``F(S-1, m-R)``: pass m of a
  stream re-enters the first stage with what the last stage made of the stream's previous pass
  (e.g. the token a decode step sampled), a "fwd" transfer of the last stage's ``send_forward_bytes``.
* ``B(s, m)`` and ``I(s, m)`` need ``F(s, m)`` (their own stored activations) and the input
  gradient of stage ``s+1`` for micro-batch ``m``, produced by ``B(s+1, m)`` or ``I(s+1, m)``.
  The last stage computes the loss itself, so it needs only its forward.
* ``W(s, m)`` needs ``I(s, m)``: the output gradient that I computed and kept.
* ``F``, ``B`` and ``I`` of stage ``s`` need ``UNSHARD(s)`` when the schedule gathers the
  stage's parameters (W needs activations and gradients only).
* ``REDUCE_GRAD(s)`` needs every weight-gradient producer of stage ``s`` (``B`` or ``W``).
* ``RESHARD(s)`` needs every compute op of stage ``s``.
* ``OPTIMIZER(s)`` needs every weight-gradient producer of stage ``s`` and, when scheduled, its
  ``REDUCE_GRAD(s)`` (the step updates with reduced gradients).
* ``GATHER_PARAMS(s)`` needs ``OPTIMIZER(s)`` (it gathers the updated shards).

* ``OVERLAP_F_B`` (a composite of an F and a B on one device, ``kinds.COMPOSITE_TABLE``) waits for
  what its F and its B wait for: ``schedule_dependencies`` gives its first part (which runs the
  pair) its other part's producers too.

``producers_of`` answers per action (checker, validator); the engine's numpy columns come from
the same table through ``binding_rules`` (one binding producer per rule, see there).
"""
from __future__ import annotations

from typing import Iterable, NamedTuple

from .ir import Action, Schedule, ScheduleError
from .kinds import (
    BACKWARD_INPUT,
    BACKWARD_WEIGHT,
    FORWARD,
    FULL_BACKWARD,
    GATHER_PARAMS,
    KINDS,
    OPTIMIZER,
    REDUCE_GRAD,
    RESHARD,
    UNSHARD,
)

SAME, EVERY, STAGE, PREVIOUS_PASS = "same", "every", "stage", "previous_pass"


class Rule(NamedTuple):
    """The consumer at stage s waits for the scheduled actions of ``kinds`` at stage s + ``stage_offset``.

    ``microbatch``: SAME (the consumer's own micro-batch), EVERY (all micro-batches), STAGE
    (a per-stage action without micro-batch) or PREVIOUS_PASS (micro-batch m − R of a recurrent
    schedule; the rule applies only where s + ``stage_offset`` falls below the first stage and
    wraps to the last, and m >= R). ``direction`` names the boundary tensor that moves
    when producer and consumer sit on different devices: "fwd" (activations of the producer's
    stage), "bwd" (its input gradient) or "local" (nothing: same stage, same device).
    A rule whose producer stage is out of range does not apply (the first stage has no forward
    producer, the last no gradient producer). A ``required`` rule that applies must find at
    least one scheduled producer; an optional one applies only when the schedule has one.
    All kinds of one rule run on one stream, so their latest-scheduled one binds.
    """

    kinds: tuple[str, ...]
    stage_offset: int
    microbatch: str
    direction: str
    required: bool = True


_NEEDS_PARAMETERS = Rule((UNSHARD,), 0, STAGE, "local", required=False)

RULES: dict[str, tuple[Rule, ...]] = {
    FORWARD: (Rule((FORWARD,), -1, SAME, "fwd"), _NEEDS_PARAMETERS, Rule((FORWARD,), -1, PREVIOUS_PASS, "fwd")),
    FULL_BACKWARD: (Rule((FORWARD,), 0, SAME, "local"), Rule((FULL_BACKWARD, BACKWARD_INPUT), +1, SAME, "bwd"),
                    _NEEDS_PARAMETERS),
    BACKWARD_INPUT: (Rule((FORWARD,), 0, SAME, "local"), Rule((FULL_BACKWARD, BACKWARD_INPUT), +1, SAME, "bwd"),
                     _NEEDS_PARAMETERS),
    BACKWARD_WEIGHT: (Rule((BACKWARD_INPUT,), 0, SAME, "local"),),
    UNSHARD: (),
    RESHARD: (Rule((FORWARD, FULL_BACKWARD, BACKWARD_INPUT, BACKWARD_WEIGHT), 0, EVERY, "local"),),
    REDUCE_GRAD: (Rule((FULL_BACKWARD, BACKWARD_WEIGHT), 0, EVERY, "local"),),
    OPTIMIZER: (Rule((FULL_BACKWARD, BACKWARD_WEIGHT), 0, EVERY, "local"),
                Rule((REDUCE_GRAD,), 0, STAGE, "local", required=False)),
    GATHER_PARAMS: (Rule((OPTIMIZER,), 0, STAGE, "local"),),
}
assert set(RULES) == set(KINDS), "every kind in kinds.KIND_TABLE needs its dependency rules"
assert all(len({KINDS[k].stream for k in rule.kinds}) == 1 for rules in RULES.values() for rule in rules)

# Which kinds hand a tensor to the neighbouring stage: the forward sends activations to s+1,
# the input-gradient producers (B or I) send gradients to s-1.
SENDS_FORWARD = frozenset({FORWARD})
SENDS_BACKWARD = frozenset({FULL_BACKWARD, BACKWARD_INPUT})


class Dependency(NamedTuple):
    """``consumer`` waits for ``producer``; ``direction`` says which boundary tensor moves (see ``Rule``)."""

    producer: Action
    direction: str


class ActionIndex:
    """Which actions a schedule (or any action collection) has, for answering rule lookups."""

    def __init__(self, actions: Iterable[Action], num_stages: int, num_microbatches: int, recurrence: int = 0):
        self.present = set(actions)
        self.num_stages = num_stages
        self.num_microbatches = num_microbatches
        self.recurrence = recurrence

    @staticmethod
    def of(schedule: Schedule) -> "ActionIndex":
        actions = (a for d in range(schedule.num_devices) for a in schedule.simulated_actions(d))
        return ActionIndex(actions, schedule.num_stages, schedule.num_microbatches, schedule.recurrence)


def applies(rule: Rule, stage: int, num_stages: int, microbatch: int | None = None, recurrence: int = 0) -> bool:
    if rule.microbatch == PREVIOUS_PASS:
        return recurrence > 0 and stage + rule.stage_offset < 0 and microbatch is not None and microbatch >= recurrence
    return 0 <= stage + rule.stage_offset < num_stages


def rule_candidates(rule: Rule, stage: int, microbatch: int | None, num_microbatches: int,
                    recurrence: int = 0, num_stages: int = 0) -> list[Action]:
    """Every action the rule names for a consumer at (stage, microbatch), scheduled or not."""
    s = stage + rule.stage_offset
    if rule.microbatch == PREVIOUS_PASS:
        return [Action(s + num_stages, kind, microbatch - recurrence) for kind in rule.kinds]
    if rule.microbatch == STAGE:
        return [Action(s, kind, None) for kind in rule.kinds]
    if rule.microbatch == SAME:
        return [Action(s, kind, microbatch) for kind in rule.kinds]
    return [Action(s, kind, mb) for mb in range(num_microbatches) for kind in rule.kinds]


def producers_by_rule(action: Action, index: ActionIndex) -> list[list[Action]]:
    """Per rule of ``action``'s kind (in ``RULES`` order), the scheduled actions it waits for.

    A rule that does not apply gives an empty list; a required rule with no scheduled producer
    gives its first candidate, so the checker can name what is missing.
    """
    rules = RULES.get(action.kind)
    if rules is None:
        raise ScheduleError(f"unknown action kind {action.kind!r} in {action}")
    found_per_rule = []
    for rule in rules:
        found: list[Action] = []
        if applies(rule, action.stage, index.num_stages, action.microbatch, index.recurrence):
            candidates = rule_candidates(rule, action.stage, action.microbatch, index.num_microbatches,
                                         index.recurrence, index.num_stages)
            found = [c for c in candidates if c in index.present]
            if not found and rule.required:
                found = candidates[:1]
        found_per_rule.append(found)
    return found_per_rule


def producers_of(action: Action, index: ActionIndex) -> list[Dependency]:
    """The actions ``action`` must wait for (see the module docstring), in rule order."""
    return [Dependency(producer, rule.direction)
            for rule, found in zip(RULES[action.kind], producers_by_rule(action, index)) for producer in found]


def schedule_dependencies(schedule: Schedule) -> dict[Action, list[Dependency]]:
    """Every simulated action of ``schedule`` mapped to its dependencies; an overlapped pair's first
    part also waits for its other part's producers (the pair starts when all its inputs are there)."""
    index = ActionIndex.of(schedule)
    deps = {a: producers_of(a, index) for d in range(schedule.num_devices) for a in schedule.simulated_actions(d)}
    for pair in schedule.overlaps():
        first, *rest = pair.parts
        for part in rest:
            deps[first] = deps[first] + [dep for dep in deps[part] if dep.producer not in pair.parts]
    return deps
