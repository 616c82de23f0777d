"""One rank's stages run by torch.distributed.pipelining's own schedule runtime (``--runtime torch``).

The plan's schedule, as torch's compute-only CSV (``simulator.ir.to_csv``), is loaded into
``_PipelineScheduleRuntime`` with ``_load_csv(..., format="compute_only")``: the CSV-driven runtime
torchtitan uses for ``pipeline_parallel_schedule_csv``. torch lowers it itself (its passes add
UNSHARD/RESHARD, REDUCE_GRAD and the SEND_F/RECV_F/SEND_B/RECV_B actions) and each ``step``
executes the lowered list with the rank's ``PipelineStage`` objects: receives are posted where
torch's lowering put them, sends are ``isend`` on the default group, a stage next to one on the same
rank (ZB-V's turn) takes its input by a local hand-off. Nothing of pipeplan's own executor
(``validator.runtime``) runs here.

The stages are the very modules pipeplan's runtime runs (``StageRunner.module``, built by
``validator.modules``), with static shapes (no metadata inference) and three adapters:

* the last ``StageModule`` computes its loss itself from ``targets`` (passed as a keyword to every
  stage of that rank; the others ignore it), so torch's ``loss_fn`` is the module's output, and
  ``scale_grads`` is off because the module already divides by the micro-batch count;
* I and W: the stage gets a ``dw_builder`` (torch's hook for a module that splits its own weight
  gradients). Its backward runs with the stage's ``WeightGradStore`` deferring, as pipeplan's I
  does, and the builder hands the deferred weight-gradient matmuls to torch as the W runner. Without
  it torch splits the backward by autograd-graph surgery, which re-runs each ``SplitLinear``'s whole
  backward in W (and defers stage 0's entire backward to W); with it I and W do the same work in
  both runtimes and a comparison of the two isolates the runtime;
* a recomputing stage (``plan.recompute`` "full") runs each transformer block under torch's
  non-reentrant activation checkpointing, as torchtitan's ``apply_ac`` does (``StageModule``'s
  ``checkpoint``): a block keeps its input only and re-runs inside B or I; the embedding and the head
  are not checkpointed. (Reentrant checkpointing, pipeplan's runtime's, cannot serve torch's I, which
  takes input gradients with ``autograd.grad``.)

Both runtimes compute the same losses, micro-batch by micro-batch (tests/test_validate_torch_runtime.py).
torch's runtime also runs DualPipeV's overlapped pairs, ``(F;B)OVERLAP_F_B``: one action whose
parts run one after the other (nothing overlaps them without a custom function for the action),
which the simulator prices as F + B of the two stages when no overlap cost is given.

Timing (``validator.torch_timing``): each action's span from torch's ``record_function`` label, a
compute op from its action's start, or from where torch's wait for its input returned if that wait
waited for data, to the start of the next compute action: all the CPU work torch does for the op
(its Python, a wait on input already there, its SEND and the receives torch posts before the next op).
Python's garbage collector is paused during a step and collects between steps, as torchtitan runs
it (``collected_between_steps``); the calibration's replay likewise.

Calibration (``replay``): the same stage calls as torch's runtime makes for each action of the
lowered list, in that order, with the real sends and receives, but no receive waited for: each F
reads the receive buffer the last iteration left and each backward the last gradient (the replay's
receives land in scratch tensors and are waited for at the end), so every op is timed alone in the
schedule's order and cache state, with the traffic the run has around it. The one thing of the run
it does not do, torch's wait on an op's receive, it times at the end, on receives that have arrived
by then: each op that waits in the run gets their mean (``replay_waits``, 1-4 us on the 2-core VM).
"""
from __future__ import annotations

import gc
import os
import tempfile
import time
from contextlib import contextmanager
from functools import partial
from typing import Callable

import torch
import torch.distributed as dist
from torch.distributed.pipelining import PipelineStage
from torch.distributed.pipelining.schedules import _batch_p2p, _ComputationType, _PipelineScheduleRuntime

from simulator.deps import schedule_dependencies
from simulator.ir import BACKWARD_INPUT, BACKWARD_WEIGHT, FORWARD, FULL_BACKWARD, Action, Schedule, to_csv

from .comm_threads import shorten_comm_slices
from .compute import StageRunner
from .modules import NON_REENTRANT, WeightGradStore, apply_weight_grads, microbatch_tokens
from .runtime import ArrivalMark, Fault, OpMark, _wait
from .gather import WAITED_S
from .torch_timing import PROFILER_PREFIX, StepHooks, ops_from_spans, wait_lead

_RECEIVES = (_ComputationType.RECV_F, _ComputationType.RECV_B)


def loss_is_output(output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """torch's ``loss_fn``: the last ``StageModule`` already returned its loss (it was given the targets)."""
    return output


def deferred_weight_grads(store: WeightGradStore) -> Callable[[], Callable[[], None]]:
    """A ``dw_builder`` for torch's ``PipelineStage``: called right after a backward that deferred its
    weight gradients into ``store``, it takes them and returns the W runner that applies them."""
    def build() -> Callable[[], None]:
        work, store.collecting = store.collecting, []
        return partial(apply_weight_grads, work)
    return build


@contextmanager
def collected_between_steps():
    """Python's cyclic garbage collector off while the block runs, then a young collection (generations
    0 and 1): how torchtitan runs torch's pipelining runtime (``torchtitan.tools.utils.GarbageCollection``,
    "used to avoid stragglers in garbage collection"; it collects every ``gc_freq`` steps). A
    collection inside a step lands on one rank at a random moment and the other waits for it (one
    took 5-13 ms on the loaded 2-core VM), which no calibration predicts."""
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()
            gc.collect(1)


def remote_inputs(schedule: Schedule, rank: int) -> dict[Action, list[tuple[Action, int]]]:
    """Per compute action of ``rank``: the ops on other ranks whose output it takes, with their rank.
    torch's runtime waits for a receive in exactly the actions that have one (its lowering posts one
    RECV_F or RECV_B per such input; a stage next to one on the same rank takes its input by hand-off)."""
    deps = schedule_dependencies(schedule)
    device_of = schedule.stage_to_device
    return {a: [(d.producer, device_of[d.producer.stage]) for d in deps[a]
                if d.direction != "local" and device_of[d.producer.stage] != rank]
            for a in schedule.simulated_actions(rank)}


def _static_shapes(runner: StageRunner, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """(input, output) examples on the meta device: token ids or a boundary tensor in, a boundary
    tensor or the scalar loss out. With both given torch skips its metadata inference."""
    batch, seq, hidden = runner.boundary_shape()
    boundary = torch.empty((batch, seq, hidden), dtype=runner.dtype, device="meta", requires_grad=True)
    tokens = torch.empty((batch, seq), dtype=torch.long, device="meta")
    loss = torch.empty((), dtype=torch.float32, device="meta", requires_grad=True)
    return (tokens if runner.first else boundary), (loss if runner.last else boundary)


class TorchExecutor:
    """Runs one rank's stages with ``_PipelineScheduleRuntime``; same interface as ``RankExecutor``
    (``run_iteration`` returns the ops' and arrivals' marks, ``replay`` the calibration's ops)."""

    def __init__(self, schedule: Schedule, rank: int, runners: dict[int, StageRunner], clock, timeout: float,
                 fault: Fault | None = None) -> None:
        self.schedule, self.rank, self.runners, self.clock = schedule, rank, runners, clock
        self.fault = fault if fault is not None and fault.rank == rank else None
        self.ops_run = 0
        self.replaying = False
        self.starts: dict[Action, object] = {}
        self.ready: dict[Action, object] = {}  # where an op's wait for input returned, if it waited
        # What the last calibration round adds to each op that waits for a receive in the run (``replay``).
        self.replay_waits: dict[Action, float] = {}
        self.scratch: dict[tuple, torch.Tensor] = {}  # calibration's receive buffers
        self.timeout = timeout
        self.timer = StepHooks(clock, timeout, self._waited_for)
        any_runner = next(iter(runners.values()))
        device = any_runner.device
        self.stages: dict[int, PipelineStage] = {}
        for s in sorted(runners):
            example_in, example_out = _static_shapes(runners[s], device)
            module = runners[s].module
            if runners[s].recompute:
                module.checkpoint = NON_REENTRANT  # torchtitan's per-block checkpointing (module docstring)
            stage = PipelineStage(module, s, schedule.num_stages, device, input_args=example_in,
                                  output_args=example_out, dw_builder=deferred_weight_grads(runners[s].module.store))
            self._instrument(stage, runners[s].module.store)
            self.stages[s] = stage
        self.runtime = _PipelineScheduleRuntime(list(self.stages.values()), schedule.num_microbatches,
                                                loss_fn=loss_is_output, scale_grads=False)
        self._load(schedule)
        self.args, self.kwargs, self.target = self._inputs(any_runner)
        self.arg_mbs, self.kwarg_mbs = self.runtime._split_inputs(self.args, self.kwargs)
        self.target_mbs = (list(torch.tensor_split(self.target, schedule.num_microbatches))
                           if self.target is not None else None)
        for stage in self.stages.values():
            stage.has_backward = True
        # Buffers and P2P warm-up now, so the first calibration replay finds them (step() would do it).
        self.runtime._initialize_stages(self.arg_mbs[0], self.kwarg_mbs[0],
                                        self.target_mbs[0] if self.target_mbs else None)
        self._fill_receive_buffers()
        # Every process group exists by now, and with it every gloo thread (validator.comm_threads).
        self.comm_threads = shorten_comm_slices()
        deps = schedule_dependencies(schedule)
        device_of = schedule.stage_to_device
        self.remote_inputs = remote_inputs(schedule, rank)
        self.receivers = sorted({device_of[c.stage] for c, ds in deps.items() for d in ds
                                 if device_of[d.producer.stage] == rank != device_of[c.stage]})

    # ------------------------------------------------------------------------------------ set-up

    def _load(self, schedule: Schedule) -> None:
        handle, path = tempfile.mkstemp(prefix=f"pipeplan-torch-schedule-{self.rank}-", suffix=".csv")
        try:
            with os.fdopen(handle, "w") as out:
                out.write(to_csv(schedule))
            self.runtime._load_csv(path, format="compute_only")
        finally:
            os.unlink(path)

    def _inputs(self, runner: StageRunner) -> tuple[tuple, dict, torch.Tensor | None]:
        """``step``'s arguments on this rank: the whole batch's tokens where stage 0 lives, its targets
        (also the last module's ``targets`` keyword) where the last stage lives. Micro-batch m is
        ``microbatch_tokens(m)``, as in pipeplan's runtime."""
        first, last = 0 in self.stages, self.schedule.num_stages - 1 in self.stages
        if not (first or last):
            return (), {}, None
        pairs = [microbatch_tokens(runner.model, runner.batch, runner.seq, mb, runner.seed, runner.device)
                 for mb in range(self.schedule.num_microbatches)]
        tokens = torch.cat([p[0] for p in pairs])
        targets = torch.cat([p[1] for p in pairs])
        return ((tokens,) if first else ()), ({"targets": targets} if last else {}), (targets if last else None)

    def _fill_receive_buffers(self) -> None:
        # torch allocates them empty; calibration may read one before any real receive has filled it.
        for stage in self.stages.values():
            for infos in list(stage.args_recv_info.values()) + list(stage.grad_recv_info.values()):
                for info in infos:
                    if not info.is_root_arg and info.buffer is not None:
                        with torch.no_grad():
                            info.buffer.normal_()

    def _instrument(self, stage: PipelineStage, store: WeightGradStore) -> None:
        """Mark when each compute method starts; run backwards with the weight gradients deferred."""
        forward, backward, weight = stage.forward_one_chunk, stage.backward_one_chunk, stage.backward_weight_one_chunk
        index = stage.stage_index

        def timed_forward(mb, *args, **kwargs):
            self._started(Action(index, FORWARD, mb))
            return forward(mb, *args, **kwargs)

        def timed_backward(mb, loss=None, full_backward=True, last_backward=False):
            self._started(Action(index, FULL_BACKWARD if full_backward else BACKWARD_INPUT, mb))
            store.defer, store.collecting = True, []
            try:
                return backward(mb, loss=loss, full_backward=full_backward, last_backward=last_backward)
            finally:
                store.defer = False

        def timed_weight(mb, last_backward=False):
            self._started(Action(index, BACKWARD_WEIGHT, mb))
            return weight(mb, last_backward=last_backward)

        stage.forward_one_chunk, stage.backward_one_chunk = timed_forward, timed_backward
        stage.backward_weight_one_chunk = timed_weight

    def _waited_for(self, span: str | None) -> tuple[int | None, str]:
        """(rank, what) a wait inside torch's action ``span`` waits for; outside any action torch
        waits for its sends at the end of the step."""
        action = Action.parse(span[len(PROFILER_PREFIX):]) if span else None
        for part in getattr(action, "parts", (action,)):
            if self.remote_inputs.get(part):
                producer, src = self.remote_inputs[part][0]
                what = "activations" if part.kind == FORWARD else "input gradient"
                return src, f"the {what} of {producer} for {part} from rank {src}"
        peer = self.receivers[0] if len(self.receivers) == 1 else None
        return peer, f"rank {peer if peer is not None else 'k'} to take this rank's sends"

    def _started(self, action: Action) -> None:
        if not self.replaying:
            if self.fault is not None and self.ops_run == self.fault.op:
                self.fault.trigger(action)
            self.ops_run += 1
            waits = self.timer.arrivals.get(self.timer.current, ())
            if waits and waits[-1][1] > WAITED_S:  # torch's wait for this op's input waited for data
                self.ready[action] = waits[-1][0]
        self.starts[action] = self.clock.mark()

    # ------------------------------------------------------------------------------------ running

    def _begin(self) -> None:
        self.clock.begin_iteration()
        self.timer.clear()
        self.starts.clear()
        self.ready.clear()

    def run_iteration(self) -> tuple[list[OpMark], list[ArrivalMark]]:
        """One ``step`` of torch's runtime, then the SGD update; the ops' marks and the arrivals the
        ranks waited for (``_arrivals``)."""
        self._begin()
        losses: list[torch.Tensor] = []
        with collected_between_steps(), self.timer.installed():
            self.runtime.step(*self.args, target=self.target, losses=losses, return_outputs=False, **self.kwargs)
        marks = ops_from_spans(self.timer.spans, self.starts, ready=self.ready)
        arrivals = self._arrivals()
        last = self.schedule.num_stages - 1
        if last in self.runners:
            self.runners[last].losses.extend(loss.detach() for loss in losses)
        for runner in self.runners.values():
            runner.step()
        return marks, arrivals

    def _arrivals(self) -> list[ArrivalMark]:
        """For each op whose input came from another rank and was waited for, when the wait returned:
        torch waits for an action's receives inside the action, before its compute method starts."""
        arrivals = []
        for name, waits in self.timer.arrivals.items():
            action = Action.parse(name[len(PROFILER_PREFIX):])
            remote = [(producer, part, src) for part in getattr(action, "parts", (action,))
                      for producer, src in self.remote_inputs.get(part, ())]
            arrivals += [ArrivalMark(producer, part, src, mark)
                         for (producer, part, src), (mark, seconds) in zip(remote, waits) if seconds > WAITED_S]
        return arrivals

    def replay(self) -> list[OpMark]:
        """Calibration: torch's stage calls for every action of the lowered list, in order, with the
        real sends and receives, none waited for until the end. Then each receive's wait is timed
        (nearly all have arrived by then): ``replay_waits`` gives every op that waits for a receive
        in the run what such a wait costs when its data is there (``wait_lead``)."""
        self._begin()
        self.replaying = True
        sends, receives, losses = [], [], {}
        with collected_between_steps():
            return self._replay(sends, receives, losses)

    def _replay(self, sends: list, receives: list, losses: dict) -> list[OpMark]:
        try:
            for stage in self.stages.values():
                stage.clear_runtime_states()
            for action in self.runtime.pipeline_order_with_comms[self.rank]:
                with self.timer(f"{PROFILER_PREFIX}{action}"):
                    if action.computation_type in _RECEIVES:
                        receives += self._post_scratch_receive(action)
                    else:
                        self._replay_action(action, sends, losses)
            arrived = []
            for work, src in receives:
                before = time.perf_counter()
                _wait(work, self.timeout, src, f"calibration traffic from rank {src}")
                arrived.append(time.perf_counter() - before)
            self.timer.wait(sends)
            lead = wait_lead(arrived)
            self.replay_waits = {a: lead for a, inputs in self.remote_inputs.items() if inputs}
        finally:
            self.replaying = False
        for stage in self.stages.values():
            stage.clear_runtime_states()
        return ops_from_spans(self.timer.spans, self.starts, split_pairs=True)

    def _post_scratch_receive(self, action) -> list[tuple[object, int]]:
        """Post ``action``'s receive where torch's runtime posts it, into a scratch tensor: the data
        arrives while the replay computes, as in the run, without writing a buffer an op is reading."""
        stage, mb = self.stages[action.stage_index], action.microbatch_index
        forward = action.computation_type == _ComputationType.RECV_F
        src = self.schedule.stage_to_device[action.stage_index + (-1 if forward else 1)]
        posted = []
        for k, op in enumerate(stage.get_fwd_recv_ops(mb) if forward else stage.get_bwd_recv_ops(mb)):
            key = (action.stage_index, forward, mb, k)
            if key not in self.scratch:
                self.scratch[key] = torch.empty_like(op.tensor, requires_grad=False)
            posted += [(work, src) for work in _batch_p2p([dist.P2POp(dist.irecv, self.scratch[key], op.peer,
                                                                      op.group)])]
        return posted

    def _replay_action(self, action, sends: list, losses: dict) -> None:
        """What ``_PipelineScheduleRuntime._step_microbatches`` does for ``action``, less the waits."""
        kind, mb = action.computation_type, action.microbatch_index
        if kind == _ComputationType.OVERLAP_F_B:  # torch's runtime runs the parts one after the other
            for part in action.sub_actions:
                self._replay_action(part, sends, losses)
            return
        stage = self.stages[action.stage_index]
        if kind == _ComputationType.SEND_F:
            sends.extend(_batch_p2p(stage.get_fwd_send_ops(mb)))
        elif kind == _ComputationType.SEND_B:
            sends.extend(_batch_p2p(stage.get_bwd_send_ops(mb)))
        elif kind == _ComputationType.FORWARD:
            output = stage.forward_one_chunk(mb, self.arg_mbs[mb], self.kwarg_mbs[mb], save_forward_output=False)
            if stage.is_last:
                losses[mb] = loss_is_output(output, self.target_mbs[mb])
            if action.stage_index + 1 in self.stages:
                self.stages[action.stage_index + 1].set_local_fwd_input(output, mb)
        elif kind in (_ComputationType.FULL_BACKWARD, _ComputationType.BACKWARD_INPUT):
            stage.backward_one_chunk(mb, loss=losses.pop(mb, None),
                                     full_backward=kind == _ComputationType.FULL_BACKWARD, last_backward=False)
            if action.stage_index - 1 in self.stages:
                self.stages[action.stage_index - 1].set_local_bwd_input(stage.get_local_bwd_output(mb), mb)
        elif kind == _ComputationType.BACKWARD_WEIGHT:
            stage.backward_weight_one_chunk(mb)
        elif kind == _ComputationType.REDUCE_GRAD:
            stage.perform_reduce_grad(1)
        # UNSHARD / RESHARD act on FSDP modules only: nothing to do for these stages.
