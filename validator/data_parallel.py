"""The end of a training iteration on one rank: each stage's gradient reduction, then its optimizer step.

The simulator ends every training iteration with them (``pipeplan.dataparallel``): per stage a
``REDUCE_GRAD`` on the device's communication stream (dp > 1) and an ``OPTIMIZER`` on its compute
stream that waits for it. The validator runs and times the same ops:

* ``REDUCE_GRAD(s)``: the stage's gradients, flattened into one buffer, all-reduced (summed) over its
  data-parallel group. A thread of the rank stands for the communication stream: it runs the
  reductions one after another in the order they were handed to it, each from when the thread
  starts it to when the all-reduce returns. With the plan's ``overlap_grad_reduce`` a stage is
  handed over right after its last backward (B, or W with a split backward) and overlaps the
  device's remaining backwards (Megatron's ``--overlap-grad-reduce``, each model chunk its own
  buffer); without it every reduction is handed over after the device's last backward, the stage
  whose backward came last first (``pipeplan.dataparallel.reduction_order``, the simulator's order).
  Each stage is one bucket: the preflight refuses a plan the simulator would split into buckets.
* ``OPTIMIZER(s)``: the stage's SGD update on the compute thread, after the device's last compute op
  and the stage's reduction, stages in reduction order. Every plan times it, dp = 1 included.

The summed gradients are the global batch's mean because each data rank's loss is divided by
dp x micro-batches (``compute.StageRunner``). The distributed optimizer (reduce-scatter, sharded step,
parameter all-gather) is not run here; the preflight refuses it.
"""
from __future__ import annotations

import queue
import threading

import torch
import torch.distributed as dist

from pipeplan.dataparallel import reduction_order
from simulator.ir import Action, Schedule
from simulator.kinds import BACKWARD_WEIGHT, FULL_BACKWARD, OPTIMIZER, REDUCE_GRAD

from .compute import StageRunner


def flat_gradients(runner: StageRunner) -> tuple[list[torch.Tensor], torch.Tensor]:
    """The stage's gradients (a zero tensor for a parameter without one) and one flat copy of them all."""
    grads = []
    for p in runner.module.parameters():
        if p.grad is None:
            p.grad = torch.zeros_like(p)
        grads.append(p.grad)
    return grads, torch.cat([g.reshape(-1) for g in grads])


def unflatten_into(grads: list[torch.Tensor], flat: torch.Tensor) -> None:
    offset = 0
    for g in grads:
        g.copy_(flat[offset:offset + g.numel()].view_as(g))
        offset += g.numel()


def reduce_stage(runner: StageRunner, group) -> None:
    """The stage's gradients summed over ``group``: flattened, all-reduced as one buffer, copied back."""
    grads, flat = flat_gradients(runner)
    dist.all_reduce(flat, group=group)
    unflatten_into(grads, flat)


def gradient_elements(runner: StageRunner) -> int:
    """Elements one reduction of the stage carries: every parameter's."""
    return sum(p.numel() for p in runner.module.parameters())


class CommunicationStream:
    """A thread that runs handed-over reductions one at a time, in order, and marks their start and end."""

    def __init__(self, group, clock, timeout: float) -> None:
        self.group, self.clock, self.timeout = group, clock, timeout
        self.jobs: queue.Queue = queue.Queue()
        self.thread = threading.Thread(target=self._loop, name="pipeplan-grad-reduce", daemon=True)
        self.thread.start()

    def submit(self, stage: int, runner: StageRunner) -> dict:
        job = {"stage": stage, "runner": runner, "done": threading.Event(), "error": None}
        self.jobs.put(job)
        return job

    def _loop(self) -> None:
        while True:
            job = self.jobs.get()
            try:
                job["start"] = self.clock.mark()
                reduce_stage(job["runner"], self.group)
                job["end"] = self.clock.mark()
            except BaseException as err:  # handed to the compute thread, which raises it
                job["error"] = err
            job["done"].set()


class TrainingStep:
    """One rank's reductions and optimizer steps (see the module docstring), for the executor to call:
    ``after(index)`` once its action ``index`` has run, ``finish()`` after its last op."""

    def __init__(self, schedule: Schedule, device: int, runners: dict[int, StageRunner], clock,
                 data_group=None, data_ranks: int = 1, overlap: bool = True, timeout: float = 60.0) -> None:
        self.runners, self.clock, self.timeout = runners, clock, timeout
        self.order = reduction_order(schedule, device, overlap)
        actions = schedule.device_actions[device]
        last = {}
        for i, action in enumerate(actions):
            if action.kind in (FULL_BACKWARD, BACKWARD_WEIGHT):
                last[action.stage] = i
        self.handover: dict[int, list[int]] = {}
        if data_ranks > 1 and last:
            if overlap:
                for stage, i in last.items():
                    self.handover.setdefault(i, []).append(stage)
            else:
                self.handover[max(last.values())] = list(self.order)
        self.stream = CommunicationStream(data_group, clock, timeout) if self.handover else None
        self.jobs: dict[int, dict] = {}

    def after(self, index: int) -> None:
        for stage in self.handover.get(index, ()):
            self.jobs[stage] = self.stream.submit(stage, self.runners[stage])

    def finish(self, apply: bool = True) -> list[tuple[Action, object, object]]:
        """Wait for each reduction and step its stage; the (action, start, end) marks of both kinds.
        ``apply`` False (calibration) steps with a learning rate of 0 and reduces nothing."""
        marks = []
        for stage in self.order:
            job = self.jobs.pop(stage, None)
            if job is not None:
                if not job["done"].wait(self.timeout):
                    from .runtime import PeerFailure

                    raise PeerFailure(None, f"timed out after {self.timeout:g} s reducing stage {stage}'s gradients")
                if job["error"] is not None:
                    from .runtime import PeerFailure

                    raise PeerFailure(None, f"reducing stage {stage}'s gradients: {job['error']}")
                marks.append((Action(stage, REDUCE_GRAD, None), job["start"], job["end"]))
            start = self.clock.mark()
            self.runners[stage].step(apply)
            marks.append((Action(stage, OPTIMIZER, None), start, self.clock.mark()))
        return marks
