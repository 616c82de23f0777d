"""The action kinds, in one table: text, stream, duration, memory and live-activation effects.

Compute kinds (one per micro-batch of a stage, on the device's compute stream):

* ``F`` forward: allocates the stage's activations when it starts.
* ``B`` full backward: frees them when it ends.
* ``I`` input-gradient backward: frees all but ``weight_grad_bytes`` when it ends.
* ``W`` weight-gradient backward: frees those when it ends.

Communication kinds (one per stage per iteration, on the device's communication stream, which
overlaps compute; their text has no micro-batch, as in torch.distributed.pipelining):

* ``UNSHARD`` gathers the stage's parameters (e.g. the distributed optimizer's all-gather) and
  holds ``gathered_bytes`` from its start.
* ``RESHARD`` frees the gathered parameters when it ends; it moves no bytes.
* ``REDUCE_GRAD`` reduces the stage's weight gradients over its data-parallel group (all-reduce,
  or reduce-scatter with a distributed optimizer).

A communication kind's time and the ports it occupies come from the stage's ``Collective`` of
that kind (``StageCost.collectives``); a stage without one runs it in no time.
torch's ``SEND_F``/``RECV_F``/``SEND_B``/``RECV_B`` parse (``KIND_TEXTS``) but are not
simulated as actions: the engine derives every point-to-point transfer from the dependency rules.
The memory replay (``memory.py``), the checker and the engine read this table and nothing else.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

FORWARD = "F"
FULL_BACKWARD = "B"
BACKWARD_INPUT = "I"
BACKWARD_WEIGHT = "W"
UNSHARD = "UNSHARD"
RESHARD = "RESHARD"
REDUCE_GRAD = "REDUCE_GRAD"
SEND_F, RECV_F, SEND_B, RECV_B = "SEND_F", "RECV_F", "SEND_B", "RECV_B"

COMPUTE = "compute"
COMM = "comm"
START, END = "start", "end"


@dataclass(frozen=True)
class KindRule:
    """What one kind of action does.

    ``code`` numbers the kind in the engine's columns (compute kinds first, 0..3).
    ``memory_delta(stage_cost)`` is the change in bytes it makes at ``memory_at`` (its start
    or its end); ``live_delta`` the change in micro-batch activations alive, counted per
    stage-chunk (F +1 at its start, B and W -1 at their end).
    ``duration(stage_cost)`` is its time for compute kinds; communication kinds are priced from
    the stage's collective and the network (``Collective.seconds``).
    """

    name: str
    code: int
    stream: str
    per_microbatch: bool
    memory_at: str
    memory_delta: Callable
    live_delta: int = 0
    duration: Callable | None = None


def _nothing(cost) -> float:
    return 0.0


# Each delta keeps the arithmetic the replay has always used (e.g. -(a - w) for I), so integer
# byte counts stay integers and float results are bit-for-bit stable.
KIND_TABLE: tuple[KindRule, ...] = (
    KindRule(FORWARD, 0, COMPUTE, True, START, lambda c: c.activation_bytes, +1, lambda c: c.forward),
    KindRule(FULL_BACKWARD, 1, COMPUTE, True, END, lambda c: -c.activation_bytes, -1, lambda c: c.full_backward),
    KindRule(BACKWARD_INPUT, 2, COMPUTE, True, END, lambda c: -(c.activation_bytes - c.weight_grad_bytes), 0,
             lambda c: c.backward_input),
    KindRule(BACKWARD_WEIGHT, 3, COMPUTE, True, END, lambda c: -c.weight_grad_bytes, -1, lambda c: c.backward_weight),
    KindRule(UNSHARD, 4, COMM, False, START, lambda c: c.gathered_bytes),
    KindRule(RESHARD, 5, COMM, False, END, lambda c: -c.gathered_bytes),
    KindRule(REDUCE_GRAD, 6, COMM, False, END, _nothing),
)
KINDS: dict[str, KindRule] = {rule.name: rule for rule in KIND_TABLE}
BY_CODE: tuple[KindRule, ...] = tuple(sorted(KIND_TABLE, key=lambda r: r.code))
COMPUTE_KINDS: tuple[str, ...] = tuple(r.name for r in BY_CODE if r.stream == COMPUTE)
COMM_KINDS: tuple[str, ...] = tuple(r.name for r in BY_CODE if r.stream == COMM)
NUM_COMPUTE = len(COMPUTE_KINDS)

# torch's point-to-point actions: parsed and written back, not simulated (see the module docstring).
P2P_KINDS: tuple[str, ...] = (SEND_F, RECV_F, SEND_B, RECV_B)
KIND_TEXTS: tuple[str, ...] = tuple(KINDS) + P2P_KINDS


def is_compute(kind: str) -> bool:
    """True for F, B, I, W: the ops that keep a device busy (the bubble is their idle time)."""
    rule = KINDS.get(kind)
    return rule is not None and rule.stream == COMPUTE
