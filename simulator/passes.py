"""The exact pass in dependency order, for workloads whose transfers never share a port at once.

Without contention every op's start is max(its lane free, every wait arrived) with a fixed delay
per edge, so one pass over the lanes in dependency order gives the exact times.
``first_contention`` then checks the bandwidth phases (transfers and collectives) for overlap on any port; only when
some overlap does the engine run the event loop (``flows.event_loop``), and only from the first
instant they do, on the state the pass reached by then.
"""
from __future__ import annotations

from array import array
from itertools import chain, repeat

import numpy as np

from .compile import Compiled
from .timeline import TransferRecord

_MINUS_ONE = (-1.0,)


def _wait_columns(c: Compiled) -> tuple[np.ndarray, np.ndarray, np.ndarray, dict[int, list[tuple[int, float]]]]:
    """Per op its one wait (producer, delay), -2 where it has several (listed in the dict), -1 none:
    the producers, the delays as objects (for the pass's lists) and as floats (for ``_starts``).

    A delay is what the consumer waits after its producer ends: a transfer's time, 0, or minus a
    bucket's lead (``Compiled.early``). The objects are one float per edge, shared by the ops that
    wait on it."""
    delay_arr = c.edge_wait[c.edge]  # edge -1 (no remote producer) picks the trailing 0.0
    delay_obj = np.array(c.edge_wait.tolist(), dtype=object)[c.edge]
    if not c.waits:
        return c.remote, delay_obj, delay_arr, {}
    wait_arr = c.remote.copy()
    several: dict[int, list[tuple[int, float]]] = {}
    for o, waits in c.waits.items():
        if len(waits) == 1:
            wait_arr[o], delay_obj[o] = waits[0]
        else:
            wait_arr[o] = -2 if waits else -1
            delay_obj[o] = 0.0
            if waits:
                several[o] = waits
    listed = list(c.waits)
    delay_arr[listed] = delay_obj[listed].astype(np.float64)  # delay_arr is a fresh array (picked by index)
    return wait_arr, delay_obj, delay_arr, several


def _send_hold_waits(c: Compiled, wait: np.ndarray, delay: np.ndarray, several: dict
                     ) -> tuple[np.ndarray, np.ndarray, dict[int, list[tuple[int, float]]]]:
    """The waits with blocking sends (``Compiled.hold``) written as one more wait per op: on its
    lane's previous op, delayed by that op's hold. The lane is then free at that op's end, and
    max(end, end + hold, arrivals) = max(end + hold, arrivals) exactly, as a hold added to the
    lane's time would give; the previous op has always ended, so the wait never parks the lane."""
    wait, delay, several = wait.copy(), delay.copy(), dict(several)
    hold = c.hold
    after_hold = np.zeros(len(hold), dtype=bool)
    after_hold[1:] = np.asarray(hold[:-1], dtype=np.float64) > 0
    after_hold[[a for a in c.lane_bounds[:-1] if a < len(hold)]] = False  # a lane's first op follows none
    for o in np.nonzero(after_hold)[0].tolist():
        r = int(wait[o])
        waits = [(r, delay[o])] if r >= 0 else list(several.get(o, ()))
        waits.append((o - 1, hold[o - 1]))
        wait[o], delay[o], several[o] = -2, 0.0, waits
    return wait, delay, several


def uncontended_times(c: Compiled) -> tuple[np.ndarray, np.ndarray] | None:
    """Start and end of every op, each transfer alone on its link; None on a wait cycle.

    Lane k holds the op ids lane_bounds[k]..lane_bounds[k+1]-1 in order, read through one iterator
    of (op, wait, delay, duration) per lane (blocking sends: ``_send_hold_waits``). A lane runs
    until its next op waits for a producer not yet ended, and parks itself on that producer with
    the op it read (a producer has
    at most one waiting lane, except an op both a remote stage and its own device's communication
    stream wait for); the producer's end puts the lane back on the stack, and a parked op with one
    wait then runs at once (its producer has just ended). Half the ops of a 1F1B pass park their
    lane, so resuming costs no more than running an op. The loop keeps only ends; starts follow
    afterwards from the same comparisons in numpy.
    """
    if c.deadlock:
        return None
    n = len(c.actions)
    end = array("d", _MINUS_ONE) * n  # C doubles: no float object kept per op, and numpy reads it in place
    wait_arr, delay_obj, delay_arr, several = _wait_columns(c)
    run_wait, run_delay, run_several = (wait_arr, delay_obj, several) if c.hold is None else _send_hold_waits(
        c, wait_arr, delay_obj, several)
    duration = c.duration
    waiter = [-1] * n
    more_waiters: dict[int, list[int]] = {}
    bounds = c.lane_bounds
    lanes = c.num_lanes
    reads = [zip(range(a, b), run_wait[a:b].tolist(), run_delay[a:b].tolist(), duration[a:b])
             for a, b in zip(bounds, bounds[1:])]
    parked: list[tuple | None] = [None] * lanes
    free = [0.0] * lanes
    stack = [k for k in range(lanes) if bounds[k + 1] > bounds[k]]
    open_lanes = len(stack)
    while stack:
        k = stack.pop()
        t = free[k]
        ops = reads[k]
        item = parked[k]
        if item is not None:
            o, r, dl, du = item
            if r >= 0:  # its one producer has just ended
                e = end[r] + dl
                if e > t:
                    t = e
                t += du
                end[o] = t
                w = waiter[o]
                if w >= 0:
                    stack.append(w)
                    if more_waiters:
                        stack.extend(more_waiters.pop(o, ()))
            else:  # several waits: read them all again
                ops = chain((item,), ops)
        for item in ops:
            o, r, dl, du = item
            if r >= 0:
                e = end[r]
                if e < 0:
                    break
                e += dl
                if e > t:
                    t = e
            elif r == -2:
                ready = t
                for r, dl in run_several[o]:
                    e = end[r]
                    if e < 0:
                        break
                    e += dl
                    if e > ready:
                        ready = e
                else:
                    r = -2
                if r != -2:
                    break
                t = ready
            t += du
            end[o] = t
            w = waiter[o]
            if w >= 0:
                stack.append(w)
                if more_waiters:
                    stack.extend(more_waiters.pop(o, ()))
        else:
            parked[k] = None
            free[k] = t
            open_lanes -= 1
            continue
        # The lane waits at op o (read as ``item``) for producer r.
        if waiter[r] < 0:
            waiter[r] = k
        else:
            more_waiters.setdefault(r, []).append(k)
        parked[k] = item
        free[k] = t
    if open_lanes:
        return None
    return _starts(c, end, wait_arr, delay_arr, several)


def _starts(c: Compiled, end: array, wait_arr: np.ndarray, delay_arr: np.ndarray, several) -> tuple:
    """Start = the lane's free time (previous op's end, 0.0 first), raised to the latest arrival."""
    n = len(end)
    end_arr = np.frombuffer(end, dtype=np.float64)
    free_at = np.empty(n, dtype=np.float64)
    free_at[1:] = end_arr[:-1] if c.hold is None else end_arr[:-1] + np.asarray(c.hold[:-1], dtype=np.float64)
    firsts = np.asarray(c.lane_bounds[:-1], dtype=np.int64)[np.diff(c.lane_bounds) > 0]
    free_at[firsts] = 0.0
    has = wait_arr >= 0
    arrival = end_arr[np.where(has, wait_arr, 0)] + delay_arr
    start_arr = np.where(has & (arrival > free_at), arrival, free_at)
    for o, waits in several.items():
        t = free_at[o]
        for prod, dl in waits:
            e = end_arr[prod] + dl
            if e > t:
                t = e
        start_arr[o] = t
    return start_arr, end_arr


def port_uses(c: Compiled, start: np.ndarray, end: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(bandwidth-phase start, its length, port id) per transfer or collective and port it crosses."""
    port_ids: dict[str, int] = {}
    t0: list[float] = []
    length: list[float] = []
    port: list[int] = []
    consumers = np.nonzero(c.remote >= 0)[0]
    edges = c.edge[consumers]
    edge_ports = [[port_ids.setdefault(name, len(port_ids)) for name in spec[5]] for spec in c.edge_spec]
    if any(edge_ports):
        # Per edge its port ids padded with -1 to the widest: row-major picks give the phases in
        # consumer order, each consumer's ports in route order.
        width = max(len(ports) for ports in edge_ports)
        table = np.full((len(edge_ports), width), -1, dtype=np.int64)
        for e, ports in enumerate(edge_ports):
            table[e, :len(ports)] = ports
        picked = table[edges]
        producers = c.remote[consumers]
        if width == 1 or bool((table >= 0).all()):
            port_arr = picked.reshape(-1)
            t0_arr = np.repeat(end[producers], width)
            length_arr = np.repeat(c.edge_phase[edges], width)
        else:
            uses = picked >= 0
            counts = uses.sum(axis=1)
            port_arr = picked[uses]
            t0_arr = np.repeat(end[producers], counts)
            length_arr = np.repeat(c.edge_phase[edges], counts)
    else:
        port_arr = np.zeros(0, dtype=np.int64)
        t0_arr = length_arr = np.zeros(0)
    for o, (nbytes, latency, bandwidth, ports, weights) in c.collective.items():
        for name in ports:
            t0.append(start[o])
            length.append(c.duration[o] - latency)
            port.append(port_ids.setdefault(name, len(port_ids)))
    return (np.concatenate((t0_arr, t0)), np.concatenate((length_arr, length)),
            np.concatenate((port_arr, np.asarray(port, dtype=np.int64))))


def first_contention(c: Compiled, start: np.ndarray, end: np.ndarray) -> float | None:
    """The earliest instant two bandwidth phases overlap on a port (None: they never do).

    Phases sort by (port, start); offsetting each port's times by port x span keeps ports apart,
    so one running maximum of end times finds every phase that starts before an earlier one on its
    port has ended. Before the returned instant every transfer and collective had its ports to
    itself, so the exact pass's times hold up to it.
    """
    t0, length, port = port_uses(c, start, end)
    if len(port) < 2:
        return None
    # In place where an array is not needed again: 258,000 phases at p = 64, m = 1024, 2 MB an array.
    t1 = np.add(t0, length, out=length)
    t0_min = float(t0.min())
    span = float(t1.max() - t0_min) + 1.0
    offset = port.astype(np.float64)
    offset *= 2.0 * span
    offset -= t0_min
    # Sorting by (offset, t0 + offset) is sorting by t0 + offset alone: a port's shifted times lie
    # below the next port's (2 x span apart), and ties keep index order in both stable sorts.
    shifted = t0 + offset
    shifted_end = np.add(t1, offset, out=offset)
    order = np.argsort(shifted, kind="stable")
    shifted_start, latest_end = shifted[order], shifted_end[order]
    np.maximum.accumulate(latest_end, out=latest_end)
    overlapping = shifted_start[1:] < latest_end[:-1]
    if not bool(overlapping.any()):
        return None
    return float(t0[order[1:][overlapping]].min())


RECORD_CHUNK = 1 << 14  # records are built this many at a time, so the columns' temporary lists stay small


def transfer_records(c: Compiled, end: np.ndarray, consumers: np.ndarray | None = None) -> list[TransferRecord]:
    """One record per remote edge in consumer order (of ``consumers`` only, when given), each
    transfer alone on its link."""
    if consumers is None:
        consumers = np.nonzero(c.remote >= 0)[0]
    delay = np.asarray(c.edge_delay, dtype=np.float64)
    # nbytes stays the spec's own Python object (an int stays an int), picked per edge.
    nbytes = [spec[2] for spec in c.edge_spec]
    get = c.actions.__getitem__
    records: list[TransferRecord] = []
    for lo in range(0, len(consumers), RECORD_CHUNK):
        part = consumers[lo:lo + RECORD_CHUNK]
        producers = c.remote[part]
        edges = c.edge[part]
        t0 = end[producers]
        t1 = t0 + delay[edges]
        records.extend(map(
            tuple.__new__, repeat(TransferRecord),
            zip(c.device[producers].tolist(), c.device[part].tolist(), map(get, producers.tolist()),
                map(get, part.tolist()), t0.tolist(), t1.tolist(), map(nbytes.__getitem__, edges.tolist())),
        ))
    return records
