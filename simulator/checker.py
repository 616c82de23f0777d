"""Checks that a schedule is complete, ordered and free of cross-device wait cycles.

Uses the one set of dependency rules in ``deps``; errors name the device, the action and the
missing dependency.
"""
from __future__ import annotations

from collections import Counter

from .deps import schedule_dependencies
from .ir import Action, Schedule, ScheduleError
from .kinds import BACKWARD_INPUT, BACKWARD_WEIGHT, FORWARD, FULL_BACKWARD, KINDS, RESHARD, UNSHARD


def check_forward_only(schedule: Schedule) -> None:
    """A forward-only schedule runs F actions alone, each (stage, micro-batch) once; every micro-batch
    that enters the first stage passes every stage. Without recurrence every micro-batch 0..m-1 runs;
    with R streams each stream runs at least its first pass, and a later pass only after its previous
    one (the dependency rules check that part, naming the missing pass)."""
    if schedule.recurrence and not schedule.forward_only:
        raise ScheduleError(f"recurrence {schedule.recurrence}: only a forward-only schedule cycles micro-batches "
                            "through the pipeline again")
    if isinstance(schedule.recurrence, bool) or not isinstance(schedule.recurrence, int) or schedule.recurrence < 0:
        raise ScheduleError(f"recurrence: must be a whole number >= 0 (got {schedule.recurrence!r})")
    num_stages, num_mb = schedule.num_stages, schedule.num_microbatches
    seen: dict[int, set[int]] = {s: set() for s in range(num_stages)}
    for device in range(schedule.num_devices):
        for action in schedule.simulated_actions(device):
            stage, kind, mb = action
            if kind != FORWARD:
                raise ScheduleError(f"device {device}: action {action} in a forward-only schedule; it runs F actions "
                                    "only (drop the backward and communication actions, or train with a full schedule)")
            if not 0 <= stage < num_stages:
                raise ScheduleError(
                    f"device {device}: action {action} names stage {stage}, but stages are 0..{num_stages - 1}")
            if not (isinstance(mb, int) and 0 <= mb < num_mb):
                raise ScheduleError(
                    f"device {device}: action {action} names micro-batch {mb}, but micro-batches are 0..{num_mb - 1}")
            if schedule.stage_to_device[stage] != device:
                raise ScheduleError(f"device {device}: action {action} belongs to stage {stage}, which lives on device "
                                    f"{schedule.stage_to_device[stage]}")
            if mb in seen[stage]:
                raise ScheduleError(f"device {device}: action {action} appears twice; each op runs exactly once")
            seen[stage].add(mb)
    required = range(schedule.recurrence) if schedule.recurrence else range(num_mb)
    entered = seen[0] | set(required)
    for stage in range(num_stages):
        missing = min(entered - seen[stage], default=None)
        if missing is not None:
            raise ScheduleError(f"device {schedule.stage_to_device[stage]}: missing forward "
                                f"{Action(stage, FORWARD, missing)}")


def check_complete(schedule: Schedule) -> None:
    """Every (stage, micro-batch) has one F and either one B or one I and one W, on its own device;
    a stage has each communication kind at most once, and RESHARD only after an UNSHARD.
    A forward-only schedule is complete as ``check_forward_only`` says.

    Set algebra first (fast on schedules of 10^5 ops); the per-pair search that names the culprit
    runs only when the sets say something is wrong.
    """
    if schedule.forward_only or schedule.recurrence:
        check_forward_only(schedule)
        return
    num_stages, num_mb = schedule.num_stages, schedule.num_microbatches
    owner_of = schedule.stage_to_device
    pairs: dict[str, set[tuple[int, int]]] = {k: set() for k in KINDS}
    total = 0
    for device in range(schedule.num_devices):
        actions = schedule.simulated_actions(device)
        for action in actions:
            stage, kind, mb = action
            if kind not in KINDS:
                raise ScheduleError(f"device {device}: action {action} has unknown kind {kind!r}; "
                                    f"kinds are {', '.join(KINDS)}")
            if not 0 <= stage < num_stages:
                raise ScheduleError(
                    f"device {device}: action {action} names stage {stage}, but stages are 0..{num_stages - 1}"
                )
            if not KINDS[kind].per_microbatch:
                if (stage, mb) in pairs[kind]:
                    raise ScheduleError(f"device {device}: action {action} appears twice; a stage gathers, "
                                        "reshards, reduces and steps its parameters at most once per iteration")
            elif not (isinstance(mb, int) and 0 <= mb < num_mb):
                raise ScheduleError(
                    f"device {device}: action {action} names micro-batch {mb}, but micro-batches are 0..{num_mb - 1}"
                )
            if owner_of[stage] != device:
                raise ScheduleError(
                    f"device {device}: action {action} belongs to stage {stage}, which lives on device {owner_of[stage]}"
                )
            pairs[kind].add((stage, mb))
        total += len(actions)
    orphans = sorted(pairs[RESHARD] - pairs[UNSHARD])
    if orphans:
        stage = orphans[0][0]
        raise ScheduleError(f"device {owner_of[stage]}: action {Action(stage, RESHARD, None)} frees parameters "
                            f"that no {Action(stage, UNSHARD, None)} gathered")
    f, b, i, w = (pairs[k] for k in (FORWARD, FULL_BACKWARD, BACKWARD_INPUT, BACKWARD_WEIGHT))
    expected = num_stages * num_mb
    total -= sum(len(pairs[k]) for k in KINDS if not KINDS[k].per_microbatch)
    if len(f) + len(b) + len(i) + len(w) == total and len(f) == expected and len(b) + len(i) == expected \
            and not (b & i) and i == w:
        return
    _name_incompleteness(schedule)


def _name_incompleteness(schedule: Schedule) -> None:
    counts: Counter[Action] = Counter(a for d in range(schedule.num_devices) for a in schedule.simulated_actions(d))
    duplicated = [a for a, n in counts.items() if n > 1]
    if duplicated:
        a = duplicated[0]
        raise ScheduleError(
            f"device {schedule.stage_to_device[a.stage]}: action {a} appears {counts[a]} times; "
            "each op runs exactly once"
        )
    for stage in range(schedule.num_stages):
        device = schedule.stage_to_device[stage]
        for mb in range(schedule.num_microbatches):
            def has(kind: str) -> bool:
                return counts[Action(stage, kind, mb)] > 0

            if not has(FORWARD):
                raise ScheduleError(f"device {device}: missing forward {Action(stage, FORWARD, mb)}")
            full, inp, weight = has(FULL_BACKWARD), has(BACKWARD_INPUT), has(BACKWARD_WEIGHT)
            if full and (inp or weight):
                raise ScheduleError(
                    f"device {device}: stage {stage} micro-batch {mb} has both a full backward "
                    f"{Action(stage, FULL_BACKWARD, mb)} and split I/W ops; use one or the other"
                )
            if not full and not (inp and weight):
                lacking = Action(stage, BACKWARD_WEIGHT if inp else BACKWARD_INPUT, mb)
                if not inp and not weight:
                    lacking = Action(stage, FULL_BACKWARD, mb)
                raise ScheduleError(f"device {device}: missing backward {lacking}")
    raise ScheduleError("schedule is incomplete")  # unreachable when the set algebra above is right


def check_order_and_deadlock(schedule: Schedule) -> None:
    """Run the action lists with unit-free dependency tracking; raise on a wait cycle.

    Each device runs two streams (compute and communication, ``kinds``), each its own actions
    in list order. A stream blocks on its next action until every dependency has run. If all
    streams block, the schedule deadlocks; an op that waits for a later op of its own stream is
    reported as an ordering error, since that stream can never reach it.
    """
    deps = schedule_dependencies(schedule)
    lanes: list[tuple[int, list[Action]]] = []
    for device in range(schedule.num_devices):
        actions = schedule.simulated_actions(device)
        for stream in dict.fromkeys(KINDS[a.kind].stream for a in actions):
            lanes.append((device, [a for a in actions if KINDS[a.kind].stream == stream]))
    position = {a: (k, i) for k, (_, acts) in enumerate(lanes) for i, a in enumerate(acts)}
    for k, (device, actions) in enumerate(lanes):
        for index, action in enumerate(actions):
            for dep in deps[action]:
                where = position.get(dep.producer)
                if where is None:
                    raise ScheduleError(
                        f"device {device}: action {action} depends on {dep.producer}, which no device runs"
                    )
                if where[0] == k and where[1] > index:
                    raise ScheduleError(
                        f"device {device}: action {action} (position {index}) runs before "
                        f"{dep.producer} (position {where[1]}) that it depends on"
                    )

    done: set[Action] = set()
    pointer = [0] * len(lanes)
    waiting_on: dict[Action, list[int]] = {}
    ready = list(range(len(lanes)))
    while ready:
        k = ready.pop()
        actions = lanes[k][1]
        while pointer[k] < len(actions):
            action = actions[pointer[k]]
            missing = next((d.producer for d in deps[action] if d.producer not in done), None)
            if missing is not None:
                waiting_on.setdefault(missing, []).append(k)
                break
            done.add(action)
            pointer[k] += 1
            ready.extend(waiting_on.pop(action, ()))
    stuck = [k for k in range(len(lanes)) if pointer[k] < len(lanes[k][1])]
    if stuck:
        parts = []
        for k in stuck:
            device, actions = lanes[k]
            action = actions[pointer[k]]
            missing = next(d.producer for d in deps[action] if d.producer not in done)
            parts.append(f"device {device} waits at {action} for {missing}")
        raise ScheduleError("deadlock: " + "; ".join(parts))


def check_schedule(schedule: Schedule) -> None:
    """Raise ScheduleError naming the first problem; return None when the schedule can run."""
    if schedule.num_microbatches < 1:
        raise ScheduleError("num_microbatches must be at least 1")
    check_complete(schedule)
    check_order_and_deadlock(schedule)
