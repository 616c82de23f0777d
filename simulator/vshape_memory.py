"""V-Half and V-Min (Qi et al., "Pipeline Parallelism with Controllable Memory", NeurIPS'24, arXiv 2405.15362).

Both use ZB-V's V placement (device d holds stages d and 2p−1−d, the loss on device 0) and the
paper's construction from a *building block*: per device, the unit-time slots of one
micro-batch's four passes F (chunk 0 forward), f (chunk 1 forward), B (chunk 1 input gradient),
b (chunk 0 input gradient). The block repeats every 6 slots (each device does six unit passes per
micro-batch: F, f, B, b and two W's). Its lifespan fixes the activation memory: the paper's
table gives (p+4)//3 micro-batches for V-Min and (p+2)//2 for V-Half against 1F1B's p (one
micro-batch = a full 1F1B stage's activations = two V chunks), and bubble rates of about
2p/3m and p/2m at F = B = W.

Block offsets for device i (slots), from the paper's Figure 4 blocks as its code writes them:

* V-Min:  F i, f 2p−1−i, B 2p+e+i, b 4p+e−1−i with e = 2 when 3 divides p, else 0;
* V-Half: F 2i, f 3p−2−i, B 3p+e+2i−1, b 6p+e−2−i with e = 3 when p is even, else 0.

Then, as in the paper (§4, "squeezing and reordering"): W's fill the free slots after the B/b that
produced them; every pass outside the steady state moves to the earliest free slot after its
inputs that keeps the device's memory under the block's peak (once with the W's placed, once
without); finally the W's are placed again, chunk 1's first. The order of each device's slots is
the schedule; the simulator times it with real costs.
"""
from __future__ import annotations

from .ir import BACKWARD_INPUT, BACKWARD_WEIGHT, FORWARD, Action, Schedule, ScheduleError, make_schedule

# Pass types in slot tables: F, f, B, b, then W (one queue) or W, w (chunk 1's, chunk 0's).
F0, F1, B1, B0, W_ANY = 0, 1, 2, 3, 4
_MEMORY = (1, 1, 0, 0, -1)  # chunk activations each pass holds: F and f allocate, W frees


def v_shape_rule(name: str, p: int, m: int, v: int) -> None:
    """Accept p, m >= 1 and v = 2 (the V gives each device two chunks)."""
    if p < 1:
        raise ScheduleError(f"devices: {name} needs at least 1 device (got {p})")
    if m < 1:
        raise ScheduleError(f"microbatches: {name} needs at least 1 micro-batch (got {m})")
    if v != 2:
        raise ScheduleError(f"chunks: {name} holds exactly 2 chunks per device; use --chunks 2 (got {v})")


def block_offsets(p: int, variant: str) -> list[tuple[int, int, int, int]]:
    """Per device, the slots of F, f, B, b of micro-batch 0 in the paper's building block."""
    if variant == "v-min":
        e = 2 if p % 3 == 0 else 0
        return [(i, 2 * p - 1 - i, 2 * p + e + i, 4 * p + e - 1 - i) for i in range(p)]
    e = 3 if p % 2 == 0 else 0
    return [(2 * i, 3 * p - 2 - i, 3 * p + e + 2 * i - 1, 6 * p + e - 2 - i) for i in range(p)]


def _place_w(slots: list[list[int]], split: bool) -> list[list[int]]:
    """The four pass lists plus W slots: each free slot takes a pending W (chunk 1's first when split)."""
    taken = {t: kind for kind in range(4) for t in slots[kind]}
    end = max(max(s) for s in slots[:4])
    queues = [[], []] if split else [[]]
    pending = [0, 0]
    for t in range(end + 2 + 2 * len(slots[0])):
        kind = taken.get(t)
        if kind is not None:
            if kind in (B1, B0):
                pending[kind - B1 if split else 0] += 1
        elif t > end and not any(pending):
            break
        else:
            for q in range(len(queues)):
                if pending[q]:
                    queues[q].append(t)
                    pending[q] -= 1
                    break
    return [list(s) for s in slots[:4]] + queues


def peak_memory(slots: list[list[int]]) -> int:
    """A device's most chunk activations alive: +1 at F and f, −1 at each W; without W slots a free slot frees one."""
    events = sorted((t, kind) for kind, ts in enumerate(slots) for t in ts)
    has_w = len(slots) > 4
    level = peak = pending = 0
    last = -1
    for t, kind in events:
        if not has_w:
            free = min(pending, t - last - 1)  # idle slots in between run pending W's
            level -= free
            pending -= free
        level += _MEMORY[min(kind, W_ANY)]
        if kind in (B1, B0):
            pending += 1
        peak = max(peak, level)
        last = t
    return peak


def _squeeze(slots_per_device: list[list[list[int]]], with_w: bool, p: int, m: int) -> list[list[list[int]]]:
    """Move each pass outside the steady state to its earliest free slot after its inputs, memory permitting.

    Passes are visited in (slot, device, type) order. The steady state runs from device 0's first b
    to the last micro-batch's first F and stays as the block lays it out (so does the warm-up when
    W's are not placed). Inputs: F and B wait for the previous device, f and b for the next, f after
    F and b after B of the same micro-batch on the device, W after its backward; each type keeps
    micro-batch order.
    """
    tables = [_place_w(s, split=False) if with_w else [list(x) for x in s] for s in slots_per_device]
    types = len(tables[0])
    cap = max(peak_memory(t) for t in tables)
    occupied = [set(t for kind in tab for t in kind) for tab in tables]
    order = sorted((tables[d][k][j], d, k, j) for d in range(p) for k in range(types) for j in range(len(tables[d][k])))
    phase = 0
    for _, d, k, j in order:
        now = tables[d][k][j]
        if k == B0 and d == 0 and phase == 0:
            phase = 1
        if phase == 1:
            if k == F0 and j == m - 1:
                phase = 2
            continue
        if phase == 0 and not with_w:
            continue
        ready = -1
        if k in (F0, B1) and d > 0:
            ready = tables[d - 1][k][j]
        if k in (F1, B0) and d + 1 < p:
            ready = max(ready, tables[d + 1][k][j])
        if k in (F1, B1, B0):
            ready = max(ready, tables[d][k - 1][j])
        if k == W_ANY:
            ready = max(ready, sorted(tables[d][B1] + tables[d][B0])[j])
        if j > 0:
            ready = max(ready, tables[d][k][j - 1])
        occupied[d].discard(now)
        for t in range(ready + 1, now):
            if t not in occupied[d]:
                tables[d][k][j] = t
                if peak_memory(tables[d]) <= cap:
                    break
        else:
            tables[d][k][j] = now
        occupied[d].add(tables[d][k][j])
    return tables


def _v_shape(name: str, p: int, m: int, v: int) -> Schedule:
    v_shape_rule(name, p, m, v)
    blocks = [[[start + 6 * j for j in range(m)] for start in offsets] for offsets in block_offsets(p, name)]
    first = _squeeze(blocks, True, p, m)
    second = _squeeze([t[:4] for t in first], False, p, m)
    device_actions = []
    for d in range(p):
        table = _place_w(second[d][:4], split=True)
        chunk0, chunk1 = d, 2 * p - 1 - d
        stage_of = (chunk0, chunk1, chunk1, chunk0, chunk1, chunk0)
        kind_of = (FORWARD, FORWARD, BACKWARD_INPUT, BACKWARD_INPUT, BACKWARD_WEIGHT, BACKWARD_WEIGHT)
        ops = sorted((t, k, j) for k, ts in enumerate(table) for j, t in enumerate(ts))
        device_actions.append([Action(stage_of[k], kind_of[k], j) for _, k, j in ops])
    stage_to_device = list(range(p)) + list(reversed(range(p)))
    return make_schedule(device_actions, stage_to_device, m, name, 2)


def v_min(p: int, m: int, v: int = 2) -> Schedule:
    """V-Min: about 1/3 of 1F1B's activation memory ((p+4)//3 micro-batches), bubble about 2p/3m at F = B = W."""
    return _v_shape("v-min", p, m, v)


def v_half(p: int, m: int, v: int = 2) -> Schedule:
    """V-Half: half of 1F1B's activation memory ((p+2)//2 micro-batches), bubble about p/2m at F = B = W."""
    return _v_shape("v-half", p, m, v)
