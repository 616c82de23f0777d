"""Timing torch.distributed.pipelining's schedule runtime from the outside (``validator.torch_runtime``).

torch's ``_PipelineScheduleRuntime`` runs every action of a step inside
``record_function("PP:<action>")``, a profiler label, and waits for its receives and sends with the
module-level ``_wait_batch_p2p``. ``StepHooks`` binds both names in torch's schedule module while the
validator runs a step: the first records each action's span on the rank's clock, the second gives
every wait a time limit. ``ops_from_spans`` turns the spans and the compute methods' start marks
into the ops' (start, end), the same way pipeplan's runtime times its own.
"""
from __future__ import annotations

import time
from contextlib import contextmanager
from typing import Callable

import torch.distributed.pipelining.schedules as torch_schedules

from simulator.ir import COMPUTE_KINDS, Action

from .gather import WAITED_S
from .runtime import OpMark, _wait

PROFILER_PREFIX = "PP:"  # torch's ``_get_profiler_function_name``: "PP:<action>"


class StepHooks:
    """What the validator binds in torch's schedule module while it runs a step (``installed()``):

    * ``record_function``: torch runs every action inside ``record_function("PP:<action>")`` (a
      profiler label); bound to this object it records each action's (name, start, end) on ``clock``;
    * ``_wait_batch_p2p``: torch's wait for an action's receives (and, at the end of the step, for its
      sends) waits without a limit; bound to ``wait`` it gives up after ``timeout`` seconds with a
      ``PeerFailure`` naming the rank the action waited for (``peer_of``), as pipeplan's runtime does,
      and notes in ``arrivals`` when a wait inside an action returned, if it waited at all.
    """

    def __init__(self, clock, timeout: float, peer_of: Callable[[str | None], tuple[int | None, str]]) -> None:
        self.clock, self.timeout, self.peer_of = clock, timeout, peer_of
        self.spans: list[tuple[str, object, object]] = []
        self.current: str | None = None
        # per action span, in order: (the wait's end on ``clock``, whether it waited for data)
        self.arrivals: dict[str, list[tuple[object, bool]]] = {}

    def clear(self) -> None:
        self.spans.clear()
        self.arrivals.clear()

    @contextmanager
    def __call__(self, name: str):
        start = self.clock.mark()
        self.current = name
        try:
            yield
        finally:
            self.current = None
            self.spans.append((name, start, self.clock.mark()))

    def wait(self, works: list) -> None:
        peer, what = self.peer_of(self.current)
        before = time.perf_counter()
        for work in works:
            _wait(work, self.timeout, peer, what)
        if self.current is not None:
            waited = time.perf_counter() - before >= WAITED_S
            self.arrivals.setdefault(self.current, []).append((self.clock.mark(), waited))

    @contextmanager
    def installed(self):
        originals = torch_schedules.record_function, torch_schedules._wait_batch_p2p
        torch_schedules.record_function, torch_schedules._wait_batch_p2p = self, self.wait
        try:
            yield
        finally:
            torch_schedules.record_function, torch_schedules._wait_batch_p2p = originals


def ops_from_spans(spans: list[tuple[str, object, object]], starts: dict[Action, object],
                   split_pairs: bool = False) -> list[OpMark]:
    """The compute ops of one step, from torch's action spans and the compute methods' start marks.

    An op runs from its stage method's start to the start of the next compute action, that is,
    through the actions torch runs right after it: the SEND of its output (issued right after the op)
    and the receives, REDUCE_GRAD and (UN)SHARD that its lowering puts before the next op. Those are
    CPU work the device does before it can start anything else (posting a receive took 60-160 us,
    issuing a send 150-200 us, on this VM), as pipeplan's runtime counts a send in the op that issues
    it; the wait for the next op's input is not in it. An overlapped pair (DualPipeV's
    ``(F;B)OVERLAP_F_B``, one span: torch's runtime runs its parts one after the other) is recorded
    as the simulator records it, the F part over the pair's whole time and the B part in none; with
    ``split_pairs`` (calibration, which prices each part) the F part ends where the B part starts.
    """
    parsed = [Action.parse(name[len(PROFILER_PREFIX):]) for name, _, _ in spans]
    compute = [all(part.kind in COMPUTE_KINDS for part in getattr(a, "parts", (a,))) for a in parsed]
    marks = []
    for k, action in enumerate(parsed):
        if not compute[k]:
            continue
        end = spans[k][2]
        for j in range(k + 1, len(spans)):
            if compute[j]:
                break
            end = spans[j][2]
        parts = getattr(action, "parts", (action,))
        if len(parts) == 1:
            marks.append(OpMark(action, starts[action], end))
        else:
            forward, backward = parts
            middle = starts[backward] if split_pairs else end
            marks += [OpMark(forward, starts[forward], middle), OpMark(backward, middle, end)]
    return marks
