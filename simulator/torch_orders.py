"""torch.distributed.pipelining's looped schedules as pure generators: LoopedBFS and InterleavedZeroBubble.

Both place stage s on device s mod p (v chunks per device, like interleaved 1F1B) and follow the
orders torch 2.13's ``ScheduleLoopedBFS`` and ``ScheduleInterleavedZeroBubble`` generate, without
torch's idle (``None``) steps: those only pad a unit-time dry run, the order is what runs.

* LoopedBFS (Lamy-Poirier, "Breadth-First Pipeline Parallelism", arXiv 2211.05953): a device runs
  every forward of its first chunk, then of its next chunk, and so on; then the full backwards,
  chunks in reverse and micro-batches in reverse within a chunk. Like GPipe per chunk, so device 0
  keeps all v·m chunk activations alive; the fill is that of v·p stages in a loop,
  (p−1)/(v·m+p−1) of the iteration with uniform stages and m ≥ p.
* InterleavedZeroBubble (Qi et al., ICLR'24, the ZB1P schedule applied to interleaved stages):
  interleaved 1F1B's order with the backward split into I and W, a warm-up of
  ``(v−1)·g + (p−1−r)`` forwards on device r (g micro-batches per round, one hop per device rather
  than interleaved's two), then one F and one I per step, with W lagging the I's by r steps on
  device r, the lagging W's at the end.
"""
from __future__ import annotations

from .checker import check_schedule
from .generators import check_rounds
from .ir import BACKWARD_INPUT, BACKWARD_WEIGHT, FORWARD, FULL_BACKWARD, Action, Schedule, ScheduleError, make_schedule


def _require_positive(name: str, p: int, m: int) -> None:
    if p < 1:
        raise ScheduleError(f"devices: {name} needs at least 1 device (got {p})")
    if m < 1:
        raise ScheduleError(f"microbatches: {name} needs at least 1 micro-batch (got {m})")


def looped_bfs_rule(p: int, m: int, v: int) -> None:
    """Accept p, m >= 1 and v >= 1 chunks per device (v = 1 is GPipe's order)."""
    _require_positive("looped-bfs", p, m)
    if v < 1:
        raise ScheduleError(f"chunks: looped-bfs needs at least 1 chunk per device (got {v})")


def interleaved_zb_rule(p: int, m: int, v: int) -> None:
    """Accept p, m >= 1, v >= 1 and m divisible by its rounds max(1, m // p) (torch's own check)."""
    _require_positive("interleaved-zb", p, m)
    if v < 1:
        raise ScheduleError(f"chunks: interleaved-zb needs at least 1 chunk per device (got {v})")
    check_rounds("interleaved-zb", p, m)


def looped_bfs(p: int, m: int, v: int = 2) -> Schedule:
    """torch's ``ScheduleLoopedBFS``: per device, all forwards chunk by chunk, then all backwards in reverse.

    Device r holds stages r, r+p, ..., r+(v−1)p. Forwards: chunk 0's micro-batches 0..m−1, then
    chunk 1's, ...; backwards: the last chunk first, micro-batches m−1..0 within each chunk.
    """
    looped_bfs_rule(p, m, v)
    device_actions = []
    for r in range(p):
        stages = [c * p + r for c in range(v)]
        acts = [Action(s, FORWARD, k) for s in stages for k in range(m)]
        acts += [Action(s, FULL_BACKWARD, k) for s in reversed(stages) for k in reversed(range(m))]
        device_actions.append(acts)
    return make_schedule(device_actions, [s % p for s in range(p * v)], m, "looped-bfs", v)


def interleaved_zb(p: int, m: int, v: int = 2) -> Schedule:
    """torch's ``ScheduleInterleavedZeroBubble`` (ZB1P over interleaved stages).

    Forward k of device r (k = 0..v·m−1) runs chunk (k // g) mod v, backward k chunk
    v−1 − (k // g) mod v, with g = m // max(1, m // p) micro-batches per round; each chunk counts
    its own micro-batches up from 0. Device r warms up with w_r = min((v−1)·g + p−1−r, v·m)
    forwards, then per step runs the next forward (while any remain) and the next I; from step r on
    it follows each I with the oldest pending W, and runs the r W's still pending at the end.
    """
    interleaved_zb_rule(p, m, v)
    g = m // max(1, m // p)
    total = v * m

    def stage_of_forward(r: int, k: int) -> int:
        return ((k // g) % v) * p + r

    def stage_of_backward(r: int, k: int) -> int:
        return (v - 1 - (k // g) % v) * p + r

    device_actions = []
    for r in range(p):
        warmup = min((v - 1) * g + p - 1 - r, total)
        next_mb: dict[tuple[int, str], int] = {}
        backward_stages: list[int] = []
        acts: list[Action] = []

        def emit(stage: int, kind: str) -> None:
            k = next_mb.get((stage, kind), 0)
            next_mb[(stage, kind)] = k + 1
            acts.append(Action(stage, kind, k))

        for k in range(warmup):
            emit(stage_of_forward(r, k), FORWARD)
        for j in range(total):
            if warmup + j < total:
                emit(stage_of_forward(r, warmup + j), FORWARD)
            backward_stages.append(stage_of_backward(r, j))
            emit(backward_stages[-1], BACKWARD_INPUT)
            if j >= r:
                emit(backward_stages[j - r], BACKWARD_WEIGHT)
        for j in range(max(total - r, 0), total):
            emit(backward_stages[j], BACKWARD_WEIGHT)
        device_actions.append(acts)
    schedule = make_schedule(device_actions, [s % p for s in range(p * v)], m, "interleaved-zb", v)
    check_schedule(schedule)
    return schedule
