"""The end of a training iteration on one rank: each stage's gradient reduction, then its optimizer step.

The simulator ends every training iteration with them (``pipeplan.dataparallel``): per stage a
``REDUCE_GRAD`` on the device's communication stream (dp > 1) and an ``OPTIMIZER`` on its compute
stream that waits for it. The validator runs and times the same ops:

* ``REDUCE_GRAD(s)``: the stage's gradients, which live in one flat buffer (``compute.StageRunner``),
  all-reduced (summed) in place over its data-parallel group. A thread of the rank stands for the
  communication stream: it runs the reductions one after another in the order they were handed to it,
  each from when the thread starts it to when the all-reduce returns. With the plan's ``overlap_grad_reduce`` a stage is
  handed over right after its last backward (B, or W with a split backward) and overlaps the
  device's remaining backwards (Megatron's ``--overlap-grad-reduce``, each model chunk its own
  buffer); without it every reduction is handed over after the device's last backward, the stage
  whose backward came last first (``pipeplan.dataparallel.reduction_order``, the simulator's order).
  Each stage is one bucket: the preflight refuses a plan the simulator would split into buckets.
* ``OPTIMIZER(s)``: the stage's SGD update on the compute thread, after the device's last compute op
  and the stage's reduction, stages in reduction order. Every plan times it, dp = 1 included.

With the distributed optimizer (Megatron's ``--use-distributed-optimizer``, ZeRO stage 1) the
reduction is a reduce-scatter: data rank r gets the summed gradients of its 1/dp slice of the stage's
flat parameters (padded to a multiple of dp), its ``OPTIMIZER`` updates that slice only, and a
``GATHER_PARAMS(s)`` on the communication thread then all-gathers the updated slices into every rank's
parameters (``--overlap-param-gather`` off, as the simulator has it).

The summed gradients are the global batch's mean because each data rank's loss is divided by
dp x micro-batches (``compute.StageRunner``).
"""
from __future__ import annotations

import queue
import threading

import torch
import torch.distributed as dist

from pipeplan.dataparallel import reduction_order
from simulator.ir import Action, Schedule
from simulator.kinds import BACKWARD_WEIGHT, FULL_BACKWARD, GATHER_PARAMS, OPTIMIZER, REDUCE_GRAD

from .compute import StageRunner
from .tensor_parallel import all_gather_dim0, reduce_scatter_dim0


def reduce_stage(runner: StageRunner, group) -> None:
    """The stage's gradients summed over ``group``: its flat gradient buffer all-reduced in place."""
    dist.all_reduce(runner.flat_grads, group=group)


def _padded(flat: torch.Tensor, ranks: int) -> torch.Tensor:
    extra = -flat.numel() % ranks
    return torch.cat([flat, flat.new_zeros(extra)]) if extra else flat


def scatter_stage(runner: StageRunner, group, ranks: int) -> torch.Tensor:
    """The distributed optimizer's reduction: this data rank's slice of the stage's summed flat gradients
    (its buffer is padded to a multiple of ``ranks``)."""
    flat = runner.grad_buffer
    shard = flat.new_empty(flat.numel() // ranks)
    reduce_scatter_dim0(shard, flat, group=group)
    return shard


def sharded_update(runner: StageRunner, grad_shard: torch.Tensor, rank: int, ranks: int, apply: bool) -> torch.Tensor:
    """SGD on this data rank's slice of the stage's flat parameters (learning rate 0 unless ``apply``);
    the updated slice. Gradients are cleared, as ``StageRunner.step`` clears them."""
    lr = runner.optimizer.param_groups[0]["lr"] if apply else 0.0
    flat = _padded(torch.cat([p.detach().reshape(-1) for p in runner.module.parameters()]), ranks)
    size = flat.numel() // ranks
    shard = flat[rank * size:(rank + 1) * size] - lr * grad_shard
    runner.zero_grads()
    return shard


def gather_stage(runner: StageRunner, shard: torch.Tensor, group, ranks: int) -> None:
    """Every data rank's updated slice all-gathered into the stage's parameters."""
    full = shard.new_empty(shard.numel() * ranks)
    all_gather_dim0(full, shard, group=group)
    offset = 0
    with torch.no_grad():
        for p in runner.module.parameters():
            p.copy_(full[offset:offset + p.numel()].view_as(p))
            offset += p.numel()


def gradient_elements(runner: StageRunner) -> int:
    """Elements one reduction of the stage carries: every parameter's."""
    return sum(p.numel() for p in runner.module.parameters())


class CommunicationStream:
    """A thread that runs handed-over work one piece at a time, in order, and marks its start and end."""

    def __init__(self, clock) -> None:
        self.clock = clock
        self.jobs: queue.Queue = queue.Queue()
        self.thread = threading.Thread(target=self._loop, name="pipeplan-grad-reduce", daemon=True)
        self.thread.start()

    def submit(self, work) -> dict:
        job = {"work": work, "done": threading.Event(), "error": None, "result": None}
        self.jobs.put(job)
        return job

    def _loop(self) -> None:
        while True:
            job = self.jobs.get()
            try:
                job["start"] = self.clock.mark()
                job["result"] = job["work"]()
                job["end"] = self.clock.mark()
            except BaseException as err:  # handed to the compute thread, which raises it
                job["error"] = err
            job["done"].set()


class TrainingStep:
    """One rank's reductions, optimizer steps and (distributed optimizer) parameter gathers, see the module
    docstring, for the executor to call: ``after(index)`` once its action ``index`` has run, ``finish()``
    after its last op."""

    def __init__(self, schedule: Schedule, device: int, runners: dict[int, StageRunner], clock,
                 data_group=None, data_ranks: int = 1, overlap: bool = True, timeout: float = 60.0,
                 distributed: bool = False, data_rank: int = 0) -> None:
        self.runners, self.clock, self.timeout = runners, clock, timeout
        self.group, self.ranks, self.rank = data_group, data_ranks, data_rank
        self.distributed = distributed and data_ranks > 1
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
        self.stream = CommunicationStream(clock) if self.handover else None
        self.jobs: dict[int, dict] = {}

    def after(self, index: int) -> None:
        for stage in self.handover.get(index, ()):
            runner = self.runners[stage]
            if self.distributed:
                work = (lambda r=runner: scatter_stage(r, self.group, self.ranks))
            else:
                work = (lambda r=runner: reduce_stage(r, self.group))
            self.jobs[stage] = self.stream.submit(work)

    def _wait(self, job: dict, what: str) -> None:
        from .runtime import PeerFailure

        if not job["done"].wait(self.timeout):
            raise PeerFailure(None, f"timed out after {self.timeout:g} s {what}")
        if job["error"] is not None:
            raise PeerFailure(None, f"{what}: {job['error']}")

    def finish(self, apply: bool = True) -> list[tuple[Action, object, object]]:
        """Wait for each reduction, step its stage (and gather its parameters); the (action, start, end) marks
        of every kind. ``apply`` False (the calibration replay) steps with a learning rate of 0 and gathers no
        parameters; its reductions are real, on the replay's own gradients."""
        marks, gathers = [], []
        for stage in self.order:
            runner = self.runners[stage]
            job = self.jobs.pop(stage, None)
            if job is not None:
                self._wait(job, f"reducing stage {stage}'s gradients")
                marks.append((Action(stage, REDUCE_GRAD, None), job["start"], job["end"]))
            start = self.clock.mark()
            if self.distributed:
                grad = job["result"] if job is not None else runner.grad_buffer.chunk(self.ranks)[self.rank]
                shard = sharded_update(runner, grad, self.rank, self.ranks, apply)
            else:
                runner.step(apply)
            marks.append((Action(stage, OPTIMIZER, None), start, self.clock.mark()))
            if self.distributed and apply:
                gathers.append((stage, self.stream.submit(lambda r=runner, s=shard: gather_stage(r, s, self.group,
                                                                                                  self.ranks))))
        for stage, job in gathers:
            self._wait(job, f"gathering stage {stage}'s parameters")
            marks.append((Action(stage, GATHER_PARAMS, None), job["start"], job["end"]))
        return marks
