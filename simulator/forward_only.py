"""Forward-only schedules: pipelines that serve, with no backward (``Schedule.forward_only``).

* ``inference``: fill-drain of m micro-batches, one forward pass each, every device running them in
  order: torch's ``PipelineSchedule.eval()`` (its schedules without a loss run only their forwards)
  and DeepSpeed's ``InferenceSchedule``. Uniform stages of time F, no communication: the run takes
  (m + p − 1)·F, bubble (p − 1)/(m + p − 1).
* ``continuous_decode``: m micro-batch streams cycle through the pipeline (``Schedule.recurrence`` = m),
  stream r running ``passes[r]`` passes (e.g. a prefill, then one decode step per generated token);
  pass t of stream r is micro-batch t·m + r, and its first stage waits for the last stage of pass
  t − 1 (``deps``), so a stream re-enters stage 0 as soon as its last stage finishes. Every device
  runs the micro-batches in id order (pass-major). Uniform stages of time F, no communication, every
  stream T passes: with m >= p streams device 0 never waits after the fill, the run takes
  (mT + p − 1)·F and the steady state has no bubble; with k = m < p streams each pass cycle takes p·F
  for k passes, (T − 1)·p·F + (k + p − 1)·F in all: throughput k/p of the full pipeline's.
"""
from __future__ import annotations

from typing import Sequence

from .ir import FORWARD, Action, Schedule, ScheduleError, make_schedule


def forward_only_rule(name: str, p: int, m: int, v: int) -> None:
    """Accept p, m >= 1 and v = 1: one stage per device."""
    if p < 1:
        raise ScheduleError(f"devices must be at least 1 (got {p})")
    if m < 1:
        raise ScheduleError(f"microbatches must be at least 1 (got {m})")
    if v != 1:
        raise ScheduleError(f"chunks: {name} holds one stage per device; use --chunks 1 (got {v})")


def inference(p: int, m: int, v: int = 1) -> Schedule:
    """Forward-only fill-drain: device d runs F(d, 0), ..., F(d, m−1) (see the module docstring)."""
    forward_only_rule("inference", p, m, v)
    device_actions = [[Action(d, FORWARD, k) for k in range(m)] for d in range(p)]
    return make_schedule(device_actions, range(p), m, "inference", forward_only=True)


def stream_passes(m: int, passes: int | Sequence[int]) -> tuple[int, ...]:
    """The pass count of each of the m streams: one count for all, or one per stream, each >= 1."""
    counts = (passes,) * m if isinstance(passes, int) else tuple(passes)
    if len(counts) != m:
        raise ScheduleError(f"passes: give one count per stream ({m}), got {len(counts)}")
    if any(isinstance(t, bool) or not isinstance(t, int) or t < 1 for t in counts):
        raise ScheduleError(f"passes: every stream runs at least one pass (got {list(counts)[:8]})")
    return counts


def continuous_decode(p: int, m: int, v: int = 1, passes: int | Sequence[int] = 1) -> Schedule:
    """m recurrent streams of ``passes`` forward passes each, micro-batch ids pass-major (see the module docstring)."""
    forward_only_rule("continuous-decode", p, m, v)
    counts = stream_passes(m, passes)
    order = [t * m + r for t in range(max(counts)) for r in range(m) if t < counts[r]]
    device_actions = [[Action(d, FORWARD, k) for k in order] for d in range(p)]
    return make_schedule(device_actions, range(p), max(order) + 1, "continuous-decode", forward_only=True,
                         recurrence=m)
