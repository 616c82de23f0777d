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
* ``GATHER_PARAMS`` all-gathers the stage's updated parameter shards over its data-parallel group
  after its optimizer step (Megatron's distributed optimizer, ``--overlap-param-gather`` off); the
  gathered weights land in the bf16 buffer that is already static memory, so it holds nothing.
  torch.distributed.pipelining has no action for this (its ``UNSHARD`` gathers before use and gates
  the stage's compute, which a gather after the step cannot), hence a name of our own.

One per-stage kind runs on the compute stream:

* ``OPTIMIZER`` the stage's optimizer step: a memory-bound pass over its parameters, gradients and
  optimizer state, timed by ``StageCost.optimizer``; it waits for the stage's reduced gradients.
  torch has no action for it either (the step is outside the pipeline schedule there).

Per-micro-batch kinds are exactly F, B, I, W (codes 0..3, ``COMPUTE_KINDS``); every other kind is
per stage, without micro-batch. A communication kind's time and the ports it occupies come from the stage's ``Collective`` of
that kind (``StageCost.collectives``); a stage without one runs it in no time.
One composite kind pairs two compute ops on one device (``COMPOSITE_TABLE``):

* ``OVERLAP_F_B`` an overlapped forward and full backward of two micro-batches (DualPipe, DeepSeek-V3;
  torch writes it ``(0F3;7B1)OVERLAP_F_B``). The IR keeps it as one ``ir.Overlap``;
  ``Schedule.simulated_actions`` hands the engine its two parts, its F then its B, and the engine
  gives the F part the pair's whole time (``overlap_seconds``: the forward stage's
  ``StageCost.overlap`` when set, else F + B of the two) and the B part none. So the pair allocates
  the forward's activations at its start and sends them, frees the backward's and sends its input
  gradient at its end. Its dependencies are both parts' (``deps.schedule_dependencies``): the
  checker treats the pair as one op that starts when both inputs are there; the engine lets the B
  part's input arrive as late as the F part's end (exact whenever it is there at the start, as in
  DualPipeV's order with uniform stages, which the tests check).

In a forward-only schedule (``Schedule.forward_only``: inference, torch's ``PipelineSchedule.eval()``,
DeepSpeed's ``InferenceSchedule``) no backward reads what a forward stored, so ``F`` follows its
forward-only rule (``FORWARD_ONLY_F``, picked by ``rules_for``): it allocates its stage's
``activation_bytes`` and ``kept_bytes`` when it starts, and releases the activations when the
next stage has its input (``DELIVERED``: its last outgoing transfer has arrived; its end when it
sends nothing); ``kept_bytes`` (state later passes of its micro-batch stream read) stay until a
pass frees them with its ``freed_kept_bytes``, at its own delivery.

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
GATHER_PARAMS = "GATHER_PARAMS"
OPTIMIZER = "OPTIMIZER"
SEND_F, RECV_F, SEND_B, RECV_B = "SEND_F", "RECV_F", "SEND_B", "RECV_B"
OVERLAP_F_B = "OVERLAP_F_B"

COMPUTE = "compute"
COMM = "comm"
START, END = "start", "end"
# When an op's outgoing transfers have all arrived (its end when it sends nothing): its output is no longer needed.
DELIVERED = "delivered"


@dataclass(frozen=True)
class Release:
    """A second memory event of a kind, at ``at`` (``DELIVERED``): ``memory_delta(stage_cost)`` bytes and
    ``live_delta`` micro-batch activations."""

    at: str
    memory_delta: Callable
    live_delta: int


@dataclass(frozen=True)
class KindRule:
    """What one kind of action does.

    ``code`` numbers the kind in the engine's columns (compute kinds first, 0..3).
    ``memory_delta(stage_cost)`` is the change in bytes it makes at ``memory_at`` (its start
    or its end); ``live_delta`` the change in micro-batch activations alive, counted per
    stage-chunk (F +1 at its start, B and W -1 at their end).
    ``duration(stage_cost)`` is its time for compute kinds; communication kinds are priced from
    the stage's collective and the network (``Collective.seconds``).
    ``release``: a second memory event, when the kind lets go of what it allocated without a later
    kind doing it (a forward-only F, see the module docstring); None: no such event.
    """

    name: str
    code: int
    stream: str
    per_microbatch: bool
    memory_at: str
    memory_delta: Callable
    live_delta: int = 0
    duration: Callable | None = None
    release: Release | None = None


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
    KindRule(GATHER_PARAMS, 7, COMM, False, END, _nothing),
    KindRule(OPTIMIZER, 8, COMPUTE, False, END, _nothing, 0, lambda c: c.optimizer),
)
KINDS: dict[str, KindRule] = {rule.name: rule for rule in KIND_TABLE}
BY_CODE: tuple[KindRule, ...] = tuple(sorted(KIND_TABLE, key=lambda r: r.code))
# The per-micro-batch compute ops (F, B, I, W), codes 0..NUM_COMPUTE-1: the engine's columns, the
# validator and the IR's parser treat these as "compute"; OPTIMIZER is a per-stage kind on the compute stream.
COMPUTE_KINDS: tuple[str, ...] = tuple(r.name for r in BY_CODE if r.per_microbatch)
STAGE_KINDS: tuple[str, ...] = tuple(r.name for r in BY_CODE if not r.per_microbatch)
COMM_KINDS: tuple[str, ...] = tuple(r.name for r in BY_CODE if r.stream == COMM)
NUM_COMPUTE = len(COMPUTE_KINDS)
assert all(r.code < NUM_COMPUTE for r in BY_CODE if r.per_microbatch), "per-micro-batch kinds come first"
assert all(r.stream == COMPUTE for r in BY_CODE if r.per_microbatch)

# F of a forward-only schedule: the activations live from its start until the next stage has them.
FORWARD_ONLY_F = KindRule(FORWARD, 0, COMPUTE, True, START, lambda c: c.activation_bytes + c.kept_bytes, +1,
                          lambda c: c.forward,
                          Release(DELIVERED, lambda c: -(c.activation_bytes + c.freed_kept_bytes), -1))
_FORWARD_ONLY_BY_CODE: tuple[KindRule, ...] = tuple(FORWARD_ONLY_F if r.name == FORWARD else r for r in BY_CODE)


def rules_for(forward_only: bool) -> tuple[KindRule, ...]:
    """The kind rules by code for a schedule that is forward-only or not (see the module docstring)."""
    return _FORWARD_ONLY_BY_CODE if forward_only else BY_CODE


# torch's point-to-point actions: parsed and written back, not simulated (see the module docstring).
P2P_KINDS: tuple[str, ...] = (SEND_F, RECV_F, SEND_B, RECV_B)
KIND_TEXTS: tuple[str, ...] = tuple(KINDS) + P2P_KINDS


@dataclass(frozen=True)
class CompositeRule:
    """A kind made of ``parts`` (one action of each kind, in this order, on one device), timed as one op.

    ``duration(first_part_cost, last_part_cost)`` is the pair's time; the engine gives it to the
    first part and zero to the others (see the module docstring).
    """

    name: str
    parts: tuple[str, ...]
    duration: Callable


def overlap_seconds(forward_cost, backward_cost) -> float:
    """An overlapped F&B's time: the forward stage's own ``overlap`` input, else F + B of the two stages."""
    if forward_cost.overlap is not None:
        return forward_cost.overlap
    return forward_cost.forward + backward_cost.full_backward


COMPOSITE_TABLE: tuple[CompositeRule, ...] = (
    CompositeRule(OVERLAP_F_B, (FORWARD, FULL_BACKWARD), overlap_seconds),
)
COMPOSITES: dict[str, CompositeRule] = {rule.name: rule for rule in COMPOSITE_TABLE}
COMPOSITE_KINDS: tuple[str, ...] = tuple(COMPOSITES)


def is_compute(kind: str) -> bool:
    """True for the compute-stream kinds (F, B, I, W, OPTIMIZER): the ops that keep a device busy."""
    rule = KINDS.get(kind)
    return rule is not None and rule.stream == COMPUTE
