"""A workload flattened to numpy columns: op ids, lanes, durations, binding producers, edge costs.

Each device has two lanes, its compute stream and its communication stream (``kinds``), each
running its actions in list order. Op ids run lane-major: device 0's compute lane, then its
communication lane, then device 1's, and so on, so a lane is a contiguous range of ids and a
device too (torch's SEND/RECV actions dropped); without communication actions this is simply the
device-major list order. Producers come from ``deps.RULES``: per consumer and
rule, the binding producer is the latest-scheduled of the rule's candidates (they share one
lane, so it ends last). A producer on the consumer's own lane has ended once the lane reaches the
consumer, if it comes earlier (else the lane waits on itself: a deadlock); a producer on another
lane is a *wait*: on another device it arrives after the edge's transfer, on the same device (the
other stream) when it ends.

Transfer costs are worked out once per distinct (src, dst, direction, producer cost) edge with
``Network.transfer_seconds``, the one definition of a transfer alone on a link. An op's cost is
its row of ``Workload.cost_table`` (``cost``): its stage's, or its micro-batch's pass class's. Op times
come from ``op_times``; a bucketed collective's action becomes one op per bucket (``bucketing``).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from functools import cached_property
from itertools import chain

import numpy as np

from .deps import EVERY, PREVIOUS_PASS, RULES, SAME, STAGE
from .ir import ScheduleError
from .kinds import BY_CODE, COMM, COMPUTE_KINDS, KINDS, NUM_COMPUTE, P2P_KINDS
from .bucketing import bucket_copies, bucket_leads
from .op_times import op_durations, time_overlaps
from .workload import Workload

NUM_KINDS = len(BY_CODE)
MAX_RULES = max(len(rules) for rules in RULES.values())


@dataclass
class Compiled:
    """Columns of one workload (see the module docstring); plain lists where the hot loops read them."""

    actions: list
    device: np.ndarray           # per op
    stage: np.ndarray
    cost: np.ndarray             # per op: its row of Workload.cost_table
    code: np.ndarray             # kinds.KindRule.code
    lane: np.ndarray             # 2 * device + (1 on the communication stream)
    bounds: list[int]            # device d owns op ids bounds[d]:bounds[d + 1]
    lane_bounds: list[int]       # lane k owns op ids lane_bounds[k]:lane_bounds[k + 1]
    duration: list[float]
    producers: np.ndarray        # (ops, MAX_RULES): binding producer per rule of the op's kind, -1 none
    remote: np.ndarray           # the producer on another device (-1: none); at most one per op
    edge: np.ndarray             # per op: index into the edge tables when remote >= 0
    edge_delay: list[float]      # the transfer alone on its link
    edge_spec: list[tuple]       # (src, dst, nbytes, latency, bandwidth, ports) for the event loop
    waits: dict[int, list[tuple[int, float]]] | None  # ops waiting on their own device's other stream:
                                 # every (producer, delay) on another lane; other ops wait on ``remote`` only;
                                 # a bucket's delay on its compute-stream producer is minus its lead
    collective: dict[int, tuple]  # comm op -> (nbytes, latency, bandwidth, ports, weights or None) when it
                                 # moves bytes
    compute_stream: np.ndarray   # per op: True on the compute stream (busy time)
    hold: list[float] | None     # blocking sends: per op, how long its sends keep its lane after it ends
    deadlock: bool               # a same-lane producer comes after its consumer
    complete: bool               # the columns' share of check_complete passes
    # compute op -> [(bucket op, lead)]: the bucket may start ``lead`` seconds before the op ends
    early: dict[int, list[tuple[int, float]]] = field(default_factory=dict)  # see simulator.bucketing

    @property
    def num_lanes(self) -> int:
        return len(self.lane_bounds) - 1

    @cached_property
    def edge_wait(self) -> np.ndarray:
        """Per edge, what a consumer waits for it, then a trailing 0.0 (``edge`` -1: no remote producer).

        A non-positive (or NaN) delay adds nothing; + 0.0 is exact on ends >= 0.
        """
        return np.array([d if d > 0 else 0.0 for d in self.edge_delay] + [0.0], dtype=np.float64)

    @cached_property
    def edge_phase(self) -> np.ndarray:
        """Per edge, its bandwidth phase alone: the transfer's time less its latency."""
        return np.array([d - spec[3] for d, spec in zip(self.edge_delay, self.edge_spec)], dtype=np.float64)

    @cached_property
    def edge_flow(self) -> np.ndarray:
        """Per edge, whether its transfer is a flow (moves bytes at a finite rate) or latency alone.

        ``_edges`` writes a latency-only edge with no ports and an unbounded rate, so that is the test
        the event loop makes too.
        """
        return np.array([bool(spec[5]) or not math.isinf(spec[4]) for spec in self.edge_spec], dtype=bool)


_CODE_OF = {name: rule.code for name, rule in KINDS.items()}
_ON_COMPUTE_STREAM = np.array([r.stream != COMM for r in BY_CODE])


def _kind_codes(kinds: tuple) -> np.ndarray:
    try:
        return np.fromiter(map(_CODE_OF.__getitem__, kinds), np.int64, len(kinds))
    except (KeyError, TypeError):
        raise ScheduleError("schedule: an action has an unknown kind; kinds are " + ", ".join(KINDS)) from None


def _integers(values, what: str, n: int) -> np.ndarray:
    try:
        return np.fromiter(values, np.int64, n)
    except (TypeError, ValueError, OverflowError):
        raise ScheduleError(f"schedule: every action's {what} must be a whole number") from None


def _microbatches(mb_t: tuple, code: np.ndarray):
    """The micro-batch column with -1 for None (the per-stage kinds'); those sit where the codes
    say, so only they are looked at unless a None is left elsewhere (a malformed action)."""
    if None not in mb_t:
        return mb_t
    mb = list(mb_t)
    for o in np.nonzero(code >= NUM_COMPUTE)[0].tolist():
        if mb[o] is None:
            mb[o] = -1
    return [-1 if k is None else k for k in mb] if None in mb else mb


def _binding_producers(stage, code, mb, num_stages, num_mb, ids, later_part=None, forward_only: bool = False,
                       recurrence: int = 0) -> tuple[np.ndarray, bool]:
    """(producers per rule, whether the action set is complete), from ``deps.RULES``.

    Complete: no action twice, every required rule finds its producer, every (stage, micro-batch)
    with an F, exactly one of B and I, a W exactly where there is an I (``checker.check_complete``'s
    set algebra), and a RESHARD only with an UNSHARD. Forward-only (``checker.check_forward_only``):
    F alone, every stage running the same micro-batches, all of 0..m-1 (or of 0..R-1, the streams'
    first passes, when recurrent). ``later_part`` marks the buckets after the first of a bucketed
    action (one action, several ops): a consumer of the action binds its last.
    """
    n = len(ids)
    compute = code < NUM_COMPUTE
    table = np.full((num_stages, NUM_COMPUTE, num_mb), -1, dtype=np.int64)
    per_stage = np.full((num_stages, NUM_KINDS), -1, dtype=np.int64)
    # Flat indices into the tables (one index array instead of three: numpy's fancy indexing
    # with several arrays costs several times more).
    flat = table.reshape(-1)
    stage_row = stage * (NUM_COMPUTE * num_mb)
    if bool(compute.all()):  # the common case: no masks to apply
        key = stage_row + code * num_mb + mb
        flat[key] = ids
        unique = bool(np.array_equal(flat[key], ids))
    else:
        first = ~compute if later_part is None else ~compute & ~later_part
        key = (stage_row + code * num_mb + mb)[compute]
        flat[key] = ids[compute]
        flat_per_stage = per_stage.reshape(-1)
        stage_key = (stage * NUM_KINDS + code)[first]
        flat_per_stage[stage_key] = ids[first]
        unique = bool(np.array_equal(flat[key], ids[compute])) and bool(
            np.array_equal(flat_per_stage[stage_key], ids[first]))
        if later_part is not None:
            np.maximum.at(per_stage, (stage[later_part], code[later_part]), ids[later_part])
    codes_present = set(np.nonzero(np.bincount(code, minlength=NUM_KINDS))[0].tolist())
    last_of = None  # per (stage, compute kind): its latest-scheduled op (ids grow along a lane); when needed
    producers = np.full((n, MAX_RULES), -1, dtype=np.int64)
    found_all = True
    for rule_kind in BY_CODE:
        consumers = np.nonzero(code == rule_kind.code)[0]
        if len(consumers) == 0:
            continue
        for j, rule in enumerate(RULES[rule_kind.name]):
            target = stage[consumers] + rule.stage_offset
            if rule.microbatch == PREVIOUS_PASS:
                applies = (target < 0) & (mb[consumers] >= recurrence) if recurrence else np.zeros(len(target), bool)
                target = target + num_stages
            else:
                applies = (target >= 0) & (target < num_stages)
            if bool(applies.all()):
                cons = consumers
            else:
                cons, target = consumers[applies], target[applies]
            best = np.full(len(cons), -1, dtype=np.int64)
            row = None  # the flat index of (target stage, kind 0, the micro-batch the rule names)
            for kind in rule.kinds:
                k = KINDS[kind].code
                if k not in codes_present:
                    continue
                if rule.microbatch in (SAME, PREVIOUS_PASS):
                    if row is None:
                        wanted = mb[cons] if rule.microbatch == SAME else mb[cons] - recurrence
                        row = target * (NUM_COMPUTE * num_mb) + wanted
                    np.maximum(best, flat[row + k * num_mb], out=best)
                elif rule.microbatch == EVERY:
                    last_of = table.max(axis=2) if last_of is None else last_of
                    best = np.maximum(best, last_of[target, k])
                elif rule.microbatch == STAGE:
                    best = np.maximum(best, per_stage[target, k])
            producers[:, j][cons] = best  # one index array on a column view
            if rule.required and bool(np.any(best < 0)):
                found_all = False
    present = table >= 0
    if forward_only or recurrence:
        forwards = present[:, 0, :]
        entered = forwards[0].copy()
        entered[:recurrence or num_mb] = True
        complete = (unique and found_all and forward_only and codes_present == {KINDS["F"].code}
                    and bool((forwards == entered).all()))
        return producers, complete
    complete = (
        unique and found_all and bool(present[:, 0, :].all())
        and bool((present[:, 1, :] != present[:, 2, :]).all())
        and bool((present[:, 2, :] == present[:, 3, :]).all())
        and bool(np.all((per_stage[:, KINDS["RESHARD"].code] < 0) | (per_stage[:, KINDS["UNSHARD"].code] >= 0)))
    )
    return producers, complete


def _unique(key: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``np.unique(key, return_inverse=True)`` of non-negative integers: by a presence table when the
    keys are few enough for one (linear, no sort), else by numpy's sort."""
    if len(key) == 0 or int(key.max()) > 8 * len(key) + 1024:
        return np.unique(key, return_inverse=True)
    present = np.zeros(int(key.max()) + 1, dtype=bool)
    present[key] = True
    uniq = np.nonzero(present)[0]
    rank = np.empty(len(present), dtype=np.int64)  # read only where a key is
    rank[uniq] = np.arange(len(uniq), dtype=np.int64)
    return uniq, rank[key]


def _edges(workload: Workload, device, cost, remote, direction_bwd):
    """Edge index per op with a remote producer, and each distinct edge's delay and spec."""
    p = workload.schedule.num_devices
    costs = workload.cost_table()
    num_costs = len(costs)
    has = remote >= 0
    src, dst = device[remote[has]], device[has]
    prod_cost = cost[remote[has]]
    key = ((src * p + dst) * 2 + direction_bwd[has]) * num_costs + prod_cost
    uniq, inverse = _unique(key)
    network = workload.network
    delays: list[float] = []
    specs: list[tuple] = []
    for k in uniq.tolist():
        rest, s = divmod(k, num_costs)
        rest, bwd = divmod(rest, 2)
        a, b = divmod(rest, p)
        nbytes = costs[s].send_backward_bytes if bwd else costs[s].send_forward_bytes
        link = network.link(a, b)
        delays.append(network.transfer_seconds(a, b, nbytes))
        if nbytes <= 0 or math.isinf(link.rate(network.port_capacity)):
            specs.append((a, b, 0.0 if nbytes <= 0 else nbytes, link.latency, math.inf, ()))
        else:
            specs.append((a, b, nbytes, link.latency, link.bandwidth, link.ports))
    edge = np.full(len(device), -1, dtype=np.int64)
    edge[has] = inverse.reshape(-1)
    return edge, delays, specs


def compile_workload(workload: Workload) -> Compiled:
    """The columns of ``workload``; raises ScheduleError for actions the columns cannot hold.

    ``complete`` and ``deadlock`` only flag problems; ``simulate`` asks the checker to name them.
    """
    schedule = workload.schedule
    p, num_stages = schedule.num_devices, schedule.num_stages
    has_comm = not schedule.kinds_present.issubset(COMPUTE_KINDS)
    per_device = schedule.device_actions if not has_comm else [schedule.simulated_actions(d) for d in range(p)]
    actions = list(chain.from_iterable(per_device))
    n = len(actions)
    if n == 0 or num_stages == 0:
        raise ScheduleError("schedule holds no actions: give every device its list, e.g. '0F0,0B0'")
    # One flat list sliced three ways: half the time of zip(*actions) on 131,072 actions.
    fields = list(chain.from_iterable(actions))
    if len(fields) != 3 * n:
        raise ScheduleError("schedule: every action is (stage, kind, micro-batch), e.g. Action(0, 'F', 0)")
    stage_t, kind_t, mb_t = fields[0::3], fields[1::3], fields[2::3]
    code = _kind_codes(kind_t)
    counts = [len(acts) for acts in per_device]
    bucket_of: dict[int, tuple] = {}
    stage = _integers(stage_t, "stage", n)
    mb = _integers(_microbatches(mb_t, code), "micro-batch", n)
    if has_comm:
        # Lane-major: each device's compute actions, then its communication actions, each in list order.
        device = np.repeat(np.arange(p, dtype=np.int64), counts)
        lane_key = 2 * device + ~_ON_COMPUTE_STREAM[code]
        if bool(np.any(lane_key[1:] < lane_key[:-1])):  # some device lists a communication op before a compute op
            order = np.argsort(lane_key, kind="stable")
            actions = list(map(actions.__getitem__, order.tolist()))
            code, stage, mb = code[order], stage[order], mb[order]
        expanded = bucket_copies(workload, actions, code)
        if expanded is not None:
            copies, bucket_of = expanded
            actions = list(map(actions.__getitem__, copies.tolist()))
            code, stage, mb = code[copies], stage[copies], mb[copies]
            counts = np.bincount(device[copies], minlength=p).tolist()
            n = len(actions)
    bounds = [0]
    for c in counts:
        bounds.append(bounds[-1] + c)
    device = np.repeat(np.arange(p, dtype=np.int64), counts)
    compute = code < NUM_COMPUTE
    mb_ok = (bool(np.all(mb[compute] >= 0)) and bool(np.all(mb[~compute] == -1))) if has_comm else mb.min() >= 0
    shape_ok = (stage.min() >= 0 and stage.max() < num_stages and mb_ok
                and np.array_equal(np.asarray(schedule.stage_to_device, dtype=np.int64)[stage], device))
    if not shape_ok:
        return _incomplete(actions, device, bounds)
    num_mb = int(mb.max()) + 1 if bool(compute.any()) else 0
    ids = np.arange(n, dtype=np.int64)
    if schedule.recurrence and not 0 < schedule.recurrence <= num_mb:
        return _incomplete(actions, device, bounds)  # the checker names the streams that never start
    later_part = None
    if bucket_of:
        later_part = np.zeros(n, dtype=bool)
        later_part[[o for o, (_, i) in bucket_of.items() if i > 0]] = True
    producers, complete = _binding_producers(stage, code, mb, num_stages, max(num_mb, 1), ids, later_part,
                                             schedule.forward_only, schedule.recurrence)
    complete = complete and num_mb == schedule.num_microbatches
    lane = 2 * device + ~_ON_COMPUTE_STREAM[code] if has_comm else 2 * device
    cost = stage
    if workload.pass_class:  # one class per micro-batch (Workload checks the count)
        cls = np.asarray(workload.pass_class, dtype=np.int64)
        cost = np.where(compute, num_stages * (1 + cls[np.where(compute, mb, 0)]) + stage, stage)
    duration, collective = op_durations(workload, stage, cost, code, has_comm, bucket_of)
    if schedule.overlaps():
        time_overlaps(workload, actions, duration)

    # Classify each binding producer: same lane (must come earlier), another device (remote,
    # through an edge; at most one per op), or the same device's other stream (a wait, no transfer).
    remote = np.full(n, -1, dtype=np.int64)
    direction_bwd = np.zeros(n, dtype=np.int64)
    deadlock = False
    cross_stream = []
    for j in range(MAX_RULES):
        column = producers[:, j]
        has = column >= 0
        if not bool(has.any()):
            continue
        safe = np.where(has, column, 0)
        same_lane = has & (lane[safe] == lane)
        deadlock = deadlock or bool(np.any(same_lane & (column > ids)))
        remote_here = has & (device[safe] != device)
        remote = np.where(remote_here, column, remote)
        bwd_kinds = [r.code for r in BY_CODE if len(RULES[r.name]) > j and RULES[r.name][j].direction == "bwd"]
        if bwd_kinds:
            is_bwd = np.zeros(NUM_KINDS, dtype=bool)
            is_bwd[bwd_kinds] = True
            direction_bwd[remote_here & is_bwd[code]] = 1
        cross_stream.append(has & ~same_lane & ~remote_here)
    edge, edge_delay, edge_spec = _edges(workload, device, cost, remote, direction_bwd)
    waits = None
    crossing = np.zeros(n, dtype=bool)
    for mask in cross_stream:
        crossing |= mask
    if bool(crossing.any()):
        delays = np.asarray(edge_delay + [0.0], dtype=np.float64)[edge]
        waits = {}
        for o in np.nonzero(crossing)[0].tolist():
            row = []
            for prod in producers[o].tolist():
                if prod >= 0 and prod == remote[o]:
                    d = float(delays[o])
                    row.append((prod, d if d > 0 else 0.0))  # a non-positive (or NaN) delay adds nothing
                elif prod >= 0 and lane[prod] != lane[o]:
                    row.append((prod, 0.0))
            waits[o] = row
    early = bucket_leads(bucket_of, waits, lane, _ON_COMPUTE_STREAM[code], duration)
    lane_bounds = np.searchsorted(lane, np.arange(2 * p + 1)).tolist()
    compute_stream = _ON_COMPUTE_STREAM[code]
    compiled = Compiled(actions, device, stage, cost, code, lane, bounds, lane_bounds, duration, producers, remote, edge,
                        edge_delay, edge_spec, waits, collective, compute_stream, None, deadlock, complete, early)
    if workload.blocking_sends:
        compiled.hold = _send_hold(compiled)
    return compiled


def _send_hold(c: Compiled) -> list[float]:
    """Per op, its slowest send alone on its link: how long a blocking send keeps the sender's lane."""
    hold = np.zeros(len(c.actions), dtype=np.float64)
    has = c.remote >= 0
    if bool(has.any()):
        np.maximum.at(hold, c.remote[has], c.edge_wait[c.edge[has]])
    return hold.tolist()


def _incomplete(actions, device, bounds) -> Compiled:
    """Columns that say only 'not well formed': the checker names the fault."""
    empty = np.zeros(0, dtype=np.int64)
    return Compiled(actions, device, empty, empty, empty, empty, bounds, [0], [], np.zeros((0, MAX_RULES), np.int64),
                    empty, empty, [], [], None, {}, np.zeros(0, dtype=bool), None, False, False)


assert not set(P2P_KINDS) & set(KINDS), "SEND/RECV are dropped before compiling, never simulated"
