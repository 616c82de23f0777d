"""DualPipeV (DeepSeek-AI, DualPipe repository; the V form of DeepSeek-V3's DualPipe) as a pure generator.

p devices hold 2p stages in a V: device d holds stage d (chunk 0) and stage 2p−1−d (chunk 1), so
the loss is on device 0, as in ZB-V. The steady state pairs a forward of one chunk with a full
backward of the other as one overlapped action (``kinds.OVERLAP_F_B``), whose computation hides
the other's communication (its time is its own cost input, ``StageCost.overlap``).

The DualPipe README (table "Pipeline Bubbles and Memory Usage Comparison", PP = pipeline stages,
F/B/W per chunk, B a full backward, F&B an overlapped pair): DualPipeV runs PP stages on PP/2
devices with bubble (PP/2−1)(F&B + B − 3W), parameters 2× and activations PP+1 per device. Its 2×
is two *different* chunks per device (one copy of the model over PP/2 devices); DualPipe's 2× on
PP devices is the same chunk kept twice, once per direction, which this V form does not do.

The order is the one torch 2.13's ``ScheduleDualPipeV`` and DualPipe's ``DualPipeV`` follow, in
eight steps per device r (counts in actions):

1. 2(p−1−r) forwards of chunk 0;
2. r+1 times: a chunk-0 forward, a chunk-1 forward;
3. p−1−r times: chunk 1's I, the oldest pending W, a chunk-1 forward;
4. m−2p+r+1 times: overlapped (chunk-0 F, chunk-1 B), then overlapped (chunk-1 F, chunk-0 B);
   the last device runs its first pair as a plain F then B (no overlap, a shorter bubble);
5. p−1−r times: a chunk-1 B, then overlapped (chunk-1 F, chunk-0 B);
6. r+1 times: a chunk-1 backward, a chunk-0 backward, switching from full B to I (W deferred)
   halfway: on odd r before the chunk-1 backward of step (r+1)//2, on even r after it;
7. p−1−r times: the oldest pending W, then a chunk-0 backward (I once switched, else B);
8. r+1 times: the oldest pending W (each I queues its W; a full B needs none).

Micro-batches count up per chunk and kind. It needs m ≥ 2p (torch: "at least as many microbatches as stages").
"""
from __future__ import annotations

from .checker import check_schedule
from .ir import BACKWARD_INPUT, BACKWARD_WEIGHT, FORWARD, FULL_BACKWARD, Action, Schedule, ScheduleError, \
    make_schedule, overlap


def dualpipe_v_rule(p: int, m: int, v: int) -> None:
    """Accept p >= 1, v = 2 and m >= 2p (every device's steady state needs one pair per stage)."""
    if p < 1:
        raise ScheduleError(f"devices: dualpipe-v needs at least 1 device (got {p})")
    if v != 2:
        raise ScheduleError(f"chunks: dualpipe-v holds exactly 2 chunks per device; use --chunks 2 (got {v})")
    if m < 2 * p:
        raise ScheduleError(f"microbatches: dualpipe-v needs at least as many micro-batches as stages, "
                            f"m >= 2p = {2 * p} (got {m})")


class _Device:
    """One device's action list under construction: per (stage, kind) micro-batch counters, pending W's."""

    def __init__(self) -> None:
        self.actions: list = []
        self.next_mb: dict[tuple[int, str], int] = {}
        self.pending_w: list[Action] = []

    def take(self, stage: int, kind: str) -> Action:
        # A backward's micro-batch counts B's and I's together: both consume the stage's next gradient.
        key = (stage, BACKWARD_INPUT if kind == FULL_BACKWARD else kind)
        k = self.next_mb.get(key, 0)
        self.next_mb[key] = k + 1
        action = Action(stage, kind, k)
        if kind == BACKWARD_INPUT:
            self.pending_w.append(Action(stage, BACKWARD_WEIGHT, k))
        return action

    def run(self, stage: int, kind: str) -> None:
        self.actions.append(self.take(stage, kind))

    def pair(self, forward_stage: int, backward_stage: int) -> None:
        self.actions.append(overlap(self.take(forward_stage, FORWARD), self.take(backward_stage, FULL_BACKWARD)))

    def weight(self) -> None:
        if self.pending_w:
            self.actions.append(self.pending_w.pop(0))


def dualpipe_v(p: int, m: int, v: int = 2) -> Schedule:
    """DualPipeV's order (see the module docstring) with overlapped F&B pairs."""
    dualpipe_v_rule(p, m, v)
    device_actions = []
    for r in range(p):
        dev = _Device()
        c0, c1 = r, 2 * p - 1 - r
        for _ in range(2 * (p - 1 - r)):
            dev.run(c0, FORWARD)
        for _ in range(r + 1):
            dev.run(c0, FORWARD)
            dev.run(c1, FORWARD)
        for _ in range(p - 1 - r):
            dev.run(c1, BACKWARD_INPUT)
            dev.weight()
            dev.run(c1, FORWARD)
        for i in range(m - 2 * p + r + 1):
            if i == 0 and r == p - 1:
                dev.run(c0, FORWARD)
                dev.run(c1, FULL_BACKWARD)
            else:
                dev.pair(c0, c1)
            dev.pair(c1, c0)
        for _ in range(p - 1 - r):
            dev.run(c1, FULL_BACKWARD)
            dev.pair(c1, c0)
        split = False
        for i in range(r + 1):
            if i == (r + 1) // 2 and r % 2 == 1:
                split = True
            dev.run(c1, BACKWARD_INPUT if split else FULL_BACKWARD)
            if i == (r + 1) // 2 and r % 2 == 0:
                split = True
            dev.run(c0, BACKWARD_INPUT if split else FULL_BACKWARD)
        for _ in range(p - 1 - r):
            dev.weight()
            dev.run(c0, BACKWARD_INPUT if split else FULL_BACKWARD)
        for _ in range(r + 1):
            dev.weight()
        device_actions.append(dev.actions)
    schedule = make_schedule(device_actions, list(range(p)) + list(reversed(range(p))), m, "dualpipe-v", 2)
    check_schedule(schedule)
    return schedule
