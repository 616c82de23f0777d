"""Timing torch.distributed.pipelining's schedule runtime from the outside (``validator.torch_runtime``).

torch's ``_PipelineScheduleRuntime`` runs every action of a step inside
``record_function("PP:<action>")``, a profiler label, and waits for its receives and sends with the
module-level ``_wait_batch_p2p``. ``StepHooks`` binds both names in torch's schedule module while the
validator runs a step: the first records each action's span on the rank's clock, the second gives
every wait a time limit and records how long it took. ``ops_from_spans`` turns the spans into the
ops' (start, end): an op holds all the CPU work torch does for it, its wait for input excepted.

A wait that returns within ``WAITED_S`` found its data there: it is work the rank does for the op,
not waiting (``wait_lead``: what such a wait costs, from the calibration's timings of its own).
"""
from __future__ import annotations

import statistics
import time
from contextlib import contextmanager
from typing import Callable, Sequence

import torch.distributed.pipelining.schedules as torch_schedules

from simulator.ir import COMPUTE_KINDS, Action

from .gather import WAITED_S
from .runtime import OpMark, _wait

PROFILER_PREFIX = "PP:"  # torch's ``_get_profiler_function_name``: "PP:<action>"


def wait_lead(waits: Sequence[float]) -> float:
    """What torch's wait for an op's input adds to the op when the data is already there (seconds): the
    mean of the calibration's timed waits (``waits``) that took at most ``WAITED_S``; a longer one
    waited for data in flight, which the run does not count in the op either. 0 when none qualifies."""
    arrived = [t for t in waits if t <= WAITED_S]
    return statistics.fmean(arrived) if arrived else 0.0


class StepHooks:
    """What the validator binds in torch's schedule module while it runs a step (``installed()``):

    * ``record_function``: torch runs every action inside ``record_function("PP:<action>")`` (a
      profiler label); bound to this object it records each action's (name, start, end) on ``clock``;
    * ``_wait_batch_p2p``: torch's wait for an action's receives (and, at the end of the step, for its
      sends) waits without a limit; bound to ``wait`` it gives up after ``timeout`` seconds with a
      ``PeerFailure`` naming the rank the action waited for (``peer_of``, asked once per action name),
      as pipeplan's runtime does, and notes in ``arrivals`` when a wait inside an action returned and
      how many seconds it took.
    """

    def __init__(self, clock, timeout: float, peer_of: Callable[[str | None], tuple[int | None, str]]) -> None:
        self.clock, self.timeout, self.peer_of = clock, timeout, peer_of
        self.spans: list[tuple[str, object, object]] = []
        self.current: str | None = None
        # per action span, in order: (the wait's end on ``clock``, its seconds)
        self.arrivals: dict[str, list[tuple[object, float]]] = {}
        self.peers: dict[str | None, tuple[int | None, str]] = {}

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
        if self.current not in self.peers:  # the same few names every step: work out each once
            self.peers[self.current] = self.peer_of(self.current)
        peer, what = self.peers[self.current]
        before = time.perf_counter()
        for work in works:
            _wait(work, self.timeout, peer, what)
        if self.current is not None:
            seconds = time.perf_counter() - before
            self.arrivals.setdefault(self.current, []).append((self.clock.mark(), seconds))

    @contextmanager
    def installed(self):
        originals = torch_schedules.record_function, torch_schedules._wait_batch_p2p
        torch_schedules.record_function, torch_schedules._wait_batch_p2p = self, self.wait
        try:
            yield
        finally:
            torch_schedules.record_function, torch_schedules._wait_batch_p2p = originals


def ops_from_spans(spans: list[tuple[str, object, object]], starts: dict[Action, object],
                   split_pairs: bool = False, ready: dict[Action, object] | None = None) -> list[OpMark]:
    """The compute ops of one step, from torch's action spans and the compute methods' start marks.

    An op runs from its action's start, or from where its wait for input returned when that wait
    waited for data (``ready``: the op's mark there), to the start of the next compute action. So it
    holds all the CPU work torch does for it: its Python before the compute method (15-20 us here), a
    wait on input that had already arrived, the SEND of its output and the receives,
    REDUCE_GRAD and (UN)SHARD that torch's lowering puts before the next op (issuing a send took
    150-200 us on this VM, posting a receive 60-160 us), as pipeplan's runtime counts a send in the op
    that issues it. An overlapped pair (DualPipeV's ``(F;B)OVERLAP_F_B``, one span: torch's runtime
    runs its parts one after the other) is recorded as the simulator records it, the F part over the
    pair's whole time and the B part in none; with ``split_pairs`` (calibration, which prices each
    part) the F part ends where the B part's compute method starts.
    """
    ready = ready or {}
    parsed = [Action.parse(name[len(PROFILER_PREFIX):]) for name, _, _ in spans]
    compute = [all(part.kind in COMPUTE_KINDS for part in getattr(a, "parts", (a,))) for a in parsed]
    marks = []
    for k, action in enumerate(parsed):
        if not compute[k]:
            continue
        end = spans[k][2]
        for j in range(k + 1, len(spans)):
            if compute[j]:
                end = spans[j][1]
                break
            end = spans[j][2]
        parts = getattr(action, "parts", (action,))
        begin = ready.get(parts[0], spans[k][1])
        if len(parts) == 1:
            marks.append(OpMark(action, begin, end))
        else:
            forward, backward = parts
            middle = starts[backward] if split_pairs else end
            marks += [OpMark(forward, begin, middle), OpMark(backward, middle, end)]
    return marks
