"""A compute-only schedule lowered to torch's ``compute_comms`` form: gradient reductions, sends and receives.

torch.distributed.pipelining's ``_PipelineScheduleRuntime`` runs a compute-only CSV by lowering it
(``_prepare_schedule_with_comms``, torch 2.13 ``schedules.py``): ``_add_unshard_reshard`` (FSDP
parameter gathers), ``_add_reduce_grad`` (each stage's ``REDUCE_GRAD`` right after its m-th B or W:
the data-parallel reduction, and the gradient scaling) and ``_add_send_recv`` (a ``SEND_F``/``SEND_B``
after every op whose output crosses to another device, the matching ``RECV`` appended to the
receiver's list when the sender issues it, ranks visited in order until every compute op has been
placed). ``with_torch_comms`` applies the last two, as the same rules: pipeplan plans gather no
parameters before use (Megatron's DDP or distributed optimizer), so the FSDP pass is left out; its
UNSHARD/RESHARD actions would each take a turn in ``_add_send_recv``'s round-robin, so torch's own
lowering of the same CSV places some receives elsewhere (no less valid).
"""
from __future__ import annotations

from .ir import Action, Schedule, ScheduleError, make_schedule
from .kinds import (
    BACKWARD_INPUT,
    BACKWARD_WEIGHT,
    FORWARD,
    FULL_BACKWARD,
    RECV_B,
    RECV_F,
    REDUCE_GRAD,
    SEND_B,
    SEND_F,
)


def _parts(action) -> tuple[Action, ...]:
    return tuple(getattr(action, "parts", None) or (action,))


def with_reduce_grad(actions: tuple, num_microbatches: int) -> list:
    """One device's list with ``sREDUCE_GRAD`` right after stage s's last gradient op (torch's ``_add_reduce_grad``:
    the ``num_microbatches``-th B or W of the stage, parts of an overlapped pair counted)."""
    out, seen = [], {}
    for action in actions:
        out.append(action)
        for part in _parts(action):
            if part.kind in (FULL_BACKWARD, BACKWARD_WEIGHT):
                seen[part.stage] = seen.get(part.stage, 0) + 1
                if seen[part.stage] == num_microbatches:
                    out.append(Action(part.stage, REDUCE_GRAD, None))
    return out


def with_send_recv(rows: list[list], stage_to_device: tuple[int, ...]) -> list[list]:
    """Every device's list with torch's sends and receives (``_add_send_recv``, module docstring).

    A forward's output goes to the next stage and an input-gradient (I or B) to the previous one
    whenever that stage lives on another device; a device's next op waits (is not placed) until the
    receive it needs is in its list or its producer ran on the same device. Raises ScheduleError
    when no device can place its next op (a schedule that cannot run).
    """
    num_stages = len(stage_to_device)
    pending = {d: list(row) for d, row in enumerate(rows) if row}
    out: list[list] = [[] for _ in rows]
    done: list[set] = [set() for _ in rows]

    def crosses(a: Action) -> bool:
        if a.kind == FORWARD:
            return a.stage != num_stages - 1 and stage_to_device[a.stage + 1] != stage_to_device[a.stage]
        if a.kind in (BACKWARD_INPUT, FULL_BACKWARD):
            return a.stage != 0 and stage_to_device[a.stage - 1] != stage_to_device[a.stage]
        return False

    def ready(a: Action, have: set) -> bool:
        if a.kind == FORWARD and a.stage != 0:
            return Action(a.stage, RECV_F, a.microbatch) in have or Action(a.stage - 1, FORWARD, a.microbatch) in have
        if a.kind in (BACKWARD_INPUT, FULL_BACKWARD) and a.stage != num_stages - 1:
            return (Action(a.stage, RECV_B, a.microbatch) in have
                    or Action(a.stage + 1, BACKWARD_INPUT, a.microbatch) in have
                    or Action(a.stage + 1, FULL_BACKWARD, a.microbatch) in have)
        return True

    while pending:
        progress = False
        for device in sorted(pending):
            action = pending[device][0]
            parts = _parts(action)
            if not all(ready(p, done[device]) for p in parts):
                continue
            out[device].append(action)
            for part in parts:
                done[device].add(part)
                if crosses(part):
                    forward = part.kind == FORWARD
                    send = Action(part.stage, SEND_F if forward else SEND_B, part.microbatch)
                    peer = part.stage + 1 if forward else part.stage - 1
                    recv = Action(peer, RECV_F if forward else RECV_B, part.microbatch)
                    out[device].append(send)
                    done[device].add(send)
                    out[stage_to_device[peer]].append(recv)
                    done[stage_to_device[peer]].add(recv)
            pending[device].pop(0)
            if not pending[device]:
                del pending[device]
            progress = True
        if not progress:
            stuck = ", ".join(f"device {d} at {pending[d][0]}" for d in sorted(pending))
            raise ScheduleError(f"schedule cannot place its sends and receives: waiting forever ({stuck})")
    return out


def with_torch_comms(schedule: Schedule) -> Schedule:
    """``schedule`` (compute-only) with each stage's REDUCE_GRAD and torch's sends and receives, as
    torch's runtime lowers a compute-only CSV (module docstring)."""
    rows = [with_reduce_grad(actions, schedule.num_microbatches) for actions in schedule.device_actions]
    rows = with_send_recv(rows, schedule.stage_to_device)
    return make_schedule(rows, schedule.stage_to_device, schedule.num_microbatches, schedule.name, schedule.chunks)
