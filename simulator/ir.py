"""The schedule IR shared by the simulator, the planner and the validator.

An action is ``(stage, kind, microbatch)``; its text form is exactly
torch.distributed.pipelining's ``_Action`` repr: ``2F0``, ``1I3``, ``0W1``, ``3B2``, and for the
per-stage communication kinds, which have no micro-batch, ``2REDUCE_GRAD``, ``0UNSHARD``.
A schedule is, per device, the ordered list of its actions plus the stage -> device map.
What each kind does is in ``kinds.py``.

A *forward-only* schedule (``Schedule.forward_only``) runs F actions only: no backward, as
torch's ``PipelineSchedule.eval()`` and DeepSpeed's ``InferenceSchedule``; a CSV of F actions alone
loads as one. A *recurrent* one (``Schedule.recurrence`` R > 0) cycles R micro-batch streams through
the pipeline: micro-batch m is pass ``m // R`` of stream ``m % R``, and the first stage of pass t+1
waits for the last stage of pass t of the same stream (``deps``). A stream may stop before the
others, so the micro-batch ids of a recurrent schedule may have holes past the first pass.
"""
from __future__ import annotations

import csv
import io
import re
from collections import Counter
from dataclasses import dataclass
from functools import cached_property
from itertools import chain
from operator import itemgetter
from typing import Iterable, NamedTuple, Sequence

from .kinds import (  # noqa: F401  (the kind names are part of the IR's vocabulary)
    BACKWARD_INPUT,
    BACKWARD_WEIGHT,
    COMPOSITE_KINDS,
    COMPUTE_KINDS,
    FORWARD,
    FULL_BACKWARD,
    KIND_TEXTS,
    KINDS,
    OVERLAP_F_B,
    P2P_KINDS,
    REDUCE_GRAD,
    RESHARD,
    STAGE_KINDS,
    UNSHARD,
)

# torch's action regex, anchored; longer names first so ``2F0`` and ``2SEND_F0`` both parse.
_ACTION_RE = re.compile(
    r"^\s*(\d+)(" + "|".join(sorted(KIND_TEXTS, key=len, reverse=True)) + r")(\d*)\s*$"
)
_PER_MICROBATCH = frozenset(COMPUTE_KINDS) | frozenset(P2P_KINDS)
_COMPOSITE_RE = re.compile(r"^\s*\(([^()]*)\)\s*(" + "|".join(COMPOSITE_KINDS) + r")\s*$")


class ScheduleError(ValueError):
    """A schedule is malformed, incomplete or cannot run (deadlock)."""


class Action(NamedTuple):
    """One op of one stage: a compute op of one micro-batch, or a per-stage communication op.

    ``microbatch`` is None for the per-stage kinds (UNSHARD, RESHARD, REDUCE_GRAD, GATHER_PARAMS, OPTIMIZER).
    A NamedTuple rather than a dataclass: schedules hold hundreds of thousands of them
    and they are dictionary keys in the checker and the engine.
    """

    stage: int
    kind: str
    microbatch: int

    def __str__(self) -> str:
        if self.microbatch is None:
            return f"{self.stage}{self.kind}"
        return f"{self.stage}{self.kind}{self.microbatch}"

    @staticmethod
    def parse(text: str) -> "Action | Overlap":
        """Parse torch's text form (``2F0``, ``1REDUCE_GRAD``, ``(0F3;7B1)OVERLAP_F_B``); raise ScheduleError naming the bad text."""
        composite = _COMPOSITE_RE.match(text)
        if composite:
            parts = tuple(Action.parse(part) for part in composite.group(1).split(";"))
            if [a.kind for a in parts] != [FORWARD, FULL_BACKWARD]:
                raise ScheduleError(f"action {text!r}: an {OVERLAP_F_B} pairs one forward and one full backward, "
                                    "e.g. (0F3;7B1)OVERLAP_F_B")
            return Overlap(parts[0].stage, OVERLAP_F_B, None, parts)
        match = _ACTION_RE.match(text)
        kind = match.group(2) if match else None
        if not match or (kind in _PER_MICROBATCH) != bool(match.group(3)):
            raise ScheduleError(
                f"action {text!r} is not of the form <stage><F|B|I|W><microbatch>, e.g. 2F0 or 1I3, "
                f"or <stage><{'|'.join(STAGE_KINDS)}>"
            )
        return Action(int(match.group(1)), kind, int(match.group(3)) if match.group(3) else None)


class Overlap(NamedTuple):
    """An overlapped forward and full backward of two micro-batches on one device (``kinds.OVERLAP_F_B``).

    ``parts`` are the forward and the backward action; ``stage`` is the forward's (the device that
    holds it holds both), ``microbatch`` None. Text as torch writes it: ``(0F3;7B1)OVERLAP_F_B``.
    """

    stage: int
    kind: str
    microbatch: None
    parts: tuple[Action, Action]

    def __str__(self) -> str:
        return f"({';'.join(map(str, self.parts))}){self.kind}"


def overlap(forward: Action, backward: Action) -> Overlap:
    """The overlapped pair of ``forward`` (an F) and ``backward`` (a B)."""
    return Overlap(forward.stage, OVERLAP_F_B, None, (forward, backward))


@dataclass(frozen=True)
class Schedule:
    """Per-device ordered action lists plus the stage -> device map.

    ``device_actions[d]`` is the order device ``d`` runs its ops in; ``stage_to_device[s]``
    is the device that holds stage ``s``. ``name`` is informational only. ``forward_only`` and
    ``recurrence`` are described in the module docstring (0: no micro-batch re-enters the pipeline).
    ``num_microbatches`` is one more than the highest micro-batch id.
    """

    device_actions: tuple[tuple[Action, ...], ...]
    stage_to_device: tuple[int, ...]
    num_microbatches: int
    name: str = "custom"
    chunks: int = 1
    forward_only: bool = False
    recurrence: int = 0

    @property
    def num_devices(self) -> int:
        return len(self.device_actions)

    @property
    def num_stages(self) -> int:
        return len(self.stage_to_device)

    @cached_property
    def _stages_by_device(self) -> dict[int, tuple[int, ...]]:
        """Each device's stages in order, built once: per-device lookups must not rescan every stage
        (a loop over p devices would be p^2 = 268 M steps at p = 16,384)."""
        found: dict[int, list[int]] = {}
        for s, d in enumerate(self.stage_to_device):
            found.setdefault(d, []).append(s)
        return {d: tuple(stages) for d, stages in found.items()}

    def stages_of(self, device: int) -> list[int]:
        return list(self._stages_by_device.get(device, ()))

    def stream_of(self, microbatch: int) -> int:
        """The stream a micro-batch belongs to (itself when the schedule is not recurrent)."""
        return microbatch % self.recurrence if self.recurrence else microbatch

    def pass_of(self, microbatch: int) -> int:
        """The pass of its stream a micro-batch is (0 when the schedule is not recurrent)."""
        return microbatch // self.recurrence if self.recurrence else 0

    def num_actions(self) -> int:
        return sum(len(a) for a in self.device_actions)

    def backward_split(self) -> bool:
        """True when any action is an I/W pair rather than a full B."""
        return any(a.kind == BACKWARD_WEIGHT for acts in self.device_actions for a in acts)

    @cached_property
    def kinds_present(self) -> frozenset[str]:
        """Every action kind the schedule uses (computed once; schedules are immutable)."""
        return frozenset(map(itemgetter(1), chain.from_iterable(self.device_actions)))

    def simulated_actions(self, device: int) -> tuple[Action, ...]:
        """Device ``device``'s actions without torch's SEND/RECV ones (transfers follow from the rules),
        each overlapped pair as its parts in order (see ``kinds.OVERLAP_F_B``)."""
        actions = self.device_actions[device]
        if self.kinds_present.isdisjoint(P2P_KINDS) and self.kinds_present.isdisjoint(COMPOSITE_KINDS):
            return actions
        out: list[Action] = []
        for a in actions:
            if a.kind in COMPOSITE_KINDS:
                out.extend(a.parts)
            elif a.kind not in P2P_KINDS:
                out.append(a)
        return tuple(out)

    def overlaps(self) -> list[Overlap]:
        """Every overlapped pair of the schedule, device by device in list order."""
        if self.kinds_present.isdisjoint(COMPOSITE_KINDS):
            return []
        return [a for acts in self.device_actions for a in acts if a.kind in COMPOSITE_KINDS]

    def to_rows(self) -> list[list[str]]:
        return [[str(a) for a in acts] for acts in self.device_actions]


def make_schedule(
    device_actions: Sequence[Iterable[Action]],
    stage_to_device: Sequence[int],
    num_microbatches: int,
    name: str,
    chunks: int = 1,
    forward_only: bool = False,
    recurrence: int = 0,
) -> Schedule:
    return Schedule(
        device_actions=tuple(tuple(acts) for acts in device_actions),
        stage_to_device=tuple(stage_to_device),
        num_microbatches=num_microbatches,
        name=name,
        chunks=chunks,
        forward_only=forward_only,
        recurrence=recurrence,
    )


def to_csv(schedule: Schedule) -> str:
    """torch's compute-only CSV: one row per device (rank), one action per cell."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    for row in schedule.to_rows():
        writer.writerow(row)
    return buffer.getvalue()


class ScheduleTooLarge(ScheduleError):
    """A CSV holds more actions than its reader allows (``from_csv``'s ``max_actions``)."""

    def __init__(self, actions: int, limit: int):
        super().__init__(f"schedule CSV: more than {limit:,} actions")
        self.actions, self.limit = actions, limit


# The kinds a forward-only CSV may hold: F and torch's point-to-point actions of forwards.
FORWARD_ONLY_TEXTS = frozenset({FORWARD, "SEND_F", "RECV_F"})


def from_csv(text: str, name: str = "custom", max_actions: int | None = None, recurrence: int = 0) -> Schedule:
    """Parse torch's CSV, compute-only or compute_comms (empty cells are idle steps and are skipped).

    One row per device. Rows without any action at the end (blank lines a file ends with) are not
    devices; one between devices is refused, since a device that runs nothing is most likely a
    stray line. Communication actions (``0UNSHARD``, ``1REDUCE_GRAD``, ``2SEND_F0``) are kept in
    order, so ``to_csv`` writes the same cells back.
    The stage -> device map is inferred the way torch's ``_load_csv`` does: a stage belongs to
    the row whose actions name it; a stage named on two rows is an error.
    ``max_actions``: stop reading past that many actions (``ScheduleTooLarge``), so a caller's
    size limit bounds the work and memory of parsing too. Work is linear in the cells, whatever
    stage and micro-batch numbers they name.
    A CSV without any backward (F actions only, with or without SEND_F/RECV_F) is forward-only;
    ``recurrence`` R > 0 reads it as R recurrent streams (see the module docstring).
    """
    device_actions: list[list[Action]] = []
    owner: dict[int, int] = {}
    count = 0
    try:
        rows = csv.reader(io.StringIO(text))
        for device, row in enumerate(rows):
            actions = []
            for column, cell in enumerate(row):
                if not cell.strip():
                    continue
                try:
                    action = Action.parse(cell)
                except ScheduleError as err:
                    raise ScheduleError(f"row {device + 1}, column {column + 1}: {err}") from None
                for part in getattr(action, "parts", (action,)):
                    previous = owner.setdefault(part.stage, device)
                    if previous != device:
                        raise ScheduleError(
                            f"action {action} on device {device}: stage {part.stage} already runs on "
                            f"device {previous}; a stage must live on exactly one device (row)"
                        )
                actions.append(action)
                count += 1
                if max_actions is not None and count > max_actions:
                    raise ScheduleTooLarge(count, max_actions)
            device_actions.append(actions)
    except csv.Error as err:
        raise ScheduleError(f"schedule CSV: cannot read it as CSV ({err}); write one row per device, "
                            "e.g. '0F0,0B0'") from None
    while device_actions and not device_actions[-1]:
        device_actions.pop()
    if not owner:
        raise ScheduleError("schedule CSV holds no actions: write one row per device, e.g. '0F0,0B0'")
    idle = next((d for d, acts in enumerate(device_actions) if not acts), None)
    if idle is not None:
        raise ScheduleError(f"schedule CSV: row {idle + 1} holds no action, but rows after it do; every row is a "
                            "device, so delete the empty row or give that device its actions")
    num_stages = max(owner) + 1
    if len(owner) != num_stages:
        missing = next(s for s, t in enumerate(sorted(owner)) if s != t)
        raise ScheduleError(
            f"stage {missing} has no actions on any device; stages must be numbered 0..{num_stages - 1}"
        )
    num_microbatches = 1 + max((p.microbatch for acts in device_actions for a in acts
                                for p in getattr(a, "parts", (a,)) if p.microbatch is not None), default=-1)
    stage_to_device = [owner[s] for s in range(num_stages)]
    chunks = max(Counter(stage_to_device).values())
    forward_only = all(a.kind in FORWARD_ONLY_TEXTS for acts in device_actions for a in acts)
    if recurrence and not forward_only:
        raise ScheduleError(f"schedule CSV: recurrence {recurrence} cycles forward passes; the CSV has backward or "
                            "communication actions, so give it F actions only")
    return make_schedule(device_actions, stage_to_device, num_microbatches, name, chunks, forward_only, recurrence)
