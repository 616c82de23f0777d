"""Back-to-back training iterations: a schedule repeated K times, and its steady-state iteration time.

One iteration simulated alone pays the pipeline's fill and drain. Trained for real, iteration k+1
starts on each device as soon as that device is done with iteration k, unless a synchronising
optimizer step stands between them:

* **without synchronisation** (Zero Bubble's optimizer post-validation, Qi et al., ICLR'24 §4: each
  stage steps its optimizer right after its own last weight gradient and validates afterwards),
  device 0 starts the next iteration's forwards while the last devices still drain the previous
  one. ``repeat_schedule`` writes K iterations as one schedule: copy k's micro-batches are numbered
  k·m .. k·m + m-1 and each device runs copy k's list after copy k-1's, so a stage's forwards of
  iteration k+1 come after its own weight passes of iteration k (its local step, here free: a
  schedule's ``OPTIMIZER`` actions are left out) and nothing else waits. In steady state an iteration takes the schedule's longest device span (the
  paper's "cost") when the devices' spans interlock, longer when they do not.
* **with synchronisation** (a global gradient-norm / inf-NaN all-reduce before the step, as in
  Megatron), iteration k+1 starts when every op of iteration k has ended. Nothing crosses that
  barrier, so each iteration is the isolated one again: T_K = K·T_1, exactly; the barrier's own
  latency (an all-reduce of a few scalars) is not modelled.

The steady-state time is T_K − T_{K−1}, read off the K-iteration run as the gap between the ends
of its last two iterations.
"""
from __future__ import annotations

from dataclasses import dataclass, replace

from .engine import SimResult, simulate
from .ir import Action, Schedule, ScheduleError, make_schedule
from .kinds import COMPUTE_KINDS, OPTIMIZER
from .workload import Workload


def repeat_schedule(schedule: Schedule, iterations: int) -> Schedule:
    """``schedule`` run ``iterations`` times back to back, without a synchronising step between them.

    Iteration k's actions are the schedule's with micro-batch ids offset by k·m; every device runs
    its iterations one after another. Only per-micro-batch actions (F, B, I, W) repeat: the IR holds a
    per-stage action once per stage. The local optimizer steps (``OPTIMIZER``) are left out, free as
    the module docstring says; a schedule with other per-stage actions (REDUCE_GRAD, ...) is refused, and
    so is a recurrent one (its micro-batch ids are passes of streams; run more passes instead).
    """
    if iterations < 1:
        raise ScheduleError(f"iterations must be at least 1 (got {iterations})")
    per_stage = sorted(schedule.kinds_present - set(COMPUTE_KINDS) - {OPTIMIZER})
    if per_stage:
        raise ScheduleError(
            f"iterations: only schedules of F, B, I and W repeat back to back; this one has "
            f"{', '.join(per_stage)}, which the schedule IR holds once per stage (e.g. a data-parallel "
            f"plan's gradient reduction and optimizer step); simulate it with a synchronising step instead"
        )
    if schedule.recurrence:
        raise ScheduleError("iterations: a recurrent schedule's micro-batches are passes of its streams, which do "
                            "not repeat as iterations; give its streams more passes instead")
    m = schedule.num_microbatches
    device_actions = [
        [Action(a.stage, a.kind, a.microbatch + k * m) for k in range(iterations) for a in acts
         if a.kind != OPTIMIZER]
        for acts in schedule.device_actions
    ]
    return make_schedule(device_actions, schedule.stage_to_device, m * iterations, schedule.name, schedule.chunks,
                         schedule.forward_only)


@dataclass
class IterationsResult:
    """K iterations simulated back to back.

    ``result`` is the simulation of all K iterations without synchronisation, of one iteration
    with it (the others repeat it exactly). ``ends[k]`` is when iteration k+1 ends, counted from
    the first op's start: T_1, ..., T_K.
    """

    result: SimResult
    iterations: int
    synchronised: bool
    ends: list[float]

    @property
    def steady_iteration_time(self) -> float:
        """T_K − T_{K−1}: one iteration's time in steady state (T_1 when K = 1)."""
        return self.ends[-1] - self.ends[-2] if len(self.ends) > 1 else self.ends[0]

    @property
    def steady_bubble_fraction(self) -> float:
        """Idle share of the devices over one steady-state iteration: 1 − busy per iteration / (p × time)."""
        busy = self.result.busy_time
        per_iteration = sum(busy) / (1 if self.synchronised else self.iterations)
        time = self.steady_iteration_time
        return 1.0 - per_iteration / (len(busy) * time) if time > 0 else 0.0

    def summary(self) -> dict:
        return {
            "iterations": self.iterations,
            "synchronised": self.synchronised,
            "iteration_ends": self.ends,
            "steady_iteration_time": self.steady_iteration_time,
            "steady_bubble_fraction": self.steady_bubble_fraction,
        }


def iteration_ends(result: SimResult, num_microbatches: int, iterations: int) -> list[float]:
    """Per iteration of a ``repeat_schedule`` run, when its last op ends, from the run's first start."""
    ops = result.timeline.ops
    origin = min(op.start for op in ops)
    ends = [origin] * iterations
    for op in ops:
        k = op.action.microbatch // num_microbatches
        if op.end > ends[k]:
            ends[k] = op.end
    return [end - origin for end in ends]


def simulate_iterations(workload: Workload, iterations: int, synchronise: bool = False) -> IterationsResult:
    """Simulate ``iterations`` back-to-back iterations of ``workload`` (see the module docstring)."""
    if iterations < 1:
        raise ScheduleError(f"iterations must be at least 1 (got {iterations})")
    if synchronise:
        result = simulate(workload)
        return IterationsResult(result, iterations, True, [(k + 1) * result.iteration_time for k in range(iterations)])
    schedule = workload.schedule
    result = simulate(replace(workload, schedule=repeat_schedule(schedule, iterations)))
    return IterationsResult(result, iterations, False, iteration_ends(result, schedule.num_microbatches, iterations))
