"""One rank's run of a serving plan: its stages with KV caches, the schedule's forward passes, timed as training is.

An iteration is the whole request mix served once: every pass of every request batch, in the action
order of the schedule (``continuous-decode``: each slot's next pass re-enters the first stage when the
last stage has sent back its tokens). Each F runs the pass ``ServingResolved.passes`` names for its
micro-batch (``ServingRunner``). The transfers carry hidden states between stages, of the pass's own
shape, and the next tokens from the last stage to the first (``ServingChannel``).

Calibration is the training one (``validator.run.timed_rounds``): before every iteration each rank
replays its action list with synthetic inputs, its real sends and nothing waited for, timing every op
alone; the links are timed one way at one element and at the largest boundary tensor (a prefill's).
What the report needs per op is its own mean over the kept rounds (``pass_costs``: every pass has its
own shape, a decode step's cache grows by one token per pass), plus the tokens the run generated.
"""
from __future__ import annotations

import statistics

import torch

from simulator.deps import schedule_dependencies

from .calibrate import barrier, link_timings
from .gather import RankContext
from .quiet import summary
from .runtime import Channel, Fault, RankExecutor, Transfer, make_channels, talking_to
from .serving_compute import ServingRunner
from .timing import clock_offsets, make_clock

SEED = 1234
TOKEN_DTYPE = torch.long


class ServingChannel(Channel):
    """A channel whose receive buffers take each transfer's own shape and type (``buffer_of``)."""

    buffer_of = None  # Transfer -> (shape, dtype), set by ``serving_channels``

    def _post(self, t: Transfer) -> None:
        import torch.distributed as dist

        shape, dtype = self.buffer_of(t)
        buffer = torch.empty(shape, dtype=dtype, device=self.buffer_device)
        with talking_to(self.src, f"posting the receive of {t.describe()}"):
            self.posted[t.tag] = (dist.irecv(buffer, self.src, group=self.group, tag=t.tag), buffer)


class ServingExecutor(RankExecutor):
    """The training executor with a serving stage's synthetic inputs for the calibration replay."""

    def _synthetic(self, action):
        return self.runners[action.stage].synthetic_input(action.microbatch)


def boundary(context: RankContext, producer_stage: int, microbatch: int) -> tuple[tuple[int, ...], torch.dtype]:
    """What F(``producer_stage``, ``microbatch``) sends: hidden states, or from the last stage the next tokens."""
    shape = context.serving.passes.by_microbatch[microbatch].shape
    if producer_stage == context.schedule.num_stages - 1:
        return (shape.requests,), TOKEN_DTYPE
    return (shape.requests, shape.tokens[0], context.model.hidden), context.dtype


def serving_channels(context: RankContext, rank: int, timeout: float) -> dict:
    channels = make_channels(context.schedule, rank, (1,), context.dtype, context.device, context.options.backend,
                             timeout, channel_type=ServingChannel)
    for channel in channels.values():
        channel.buffer_of = lambda t: boundary(context, t.producer.stage, t.producer.microbatch)
    return channels


def largest_boundary(context: RankContext) -> int:
    """Elements of the largest tensor a stage sends on (a prefill's hidden states): the links' timing size."""
    return max(s.requests * s.tokens[0] for s in (p.shape for p in context.serving.passes.passes)) * context.model.hidden


def pass_costs(stage_rounds: list[dict], context: RankContext, rank: int) -> dict[int, dict[int, float]]:
    """Per stage of this rank, per micro-batch: the mean over the kept rounds of its F's replayed time."""
    order = {s: [a.microbatch for a in context.schedule.device_actions[rank] if a.stage == s]
             for s in context.schedule.stages_of(rank)}
    out = {}
    for stage, microbatches in order.items():
        columns = zip(*(r[stage]["F"] for r in stage_rounds))
        out[stage] = {m: statistics.fmean(samples) for m, samples in zip(microbatches, columns)}
    return out


def check_consumers(context: RankContext) -> None:
    """Every transfer a serving schedule makes is a forward pass's output (no gradients flow back)."""
    for consumer, deps in schedule_dependencies(context.schedule).items():
        if any(d.direction == "bwd" for d in deps):
            raise ValueError(f"{consumer} waits for a gradient: a serving schedule runs forward passes only")


def measure_serving(context: RankContext, rank: int, world: int, timeout: float):
    """This rank's part of a serving run; rank 0 returns the measurements, the others None."""
    from pipeplan.profile import StageProfile

    from pipeplan.parallel import Layout

    from .placement import Groups, RankPlace
    from .run import gather_payload, timed_rounds
    from .tensor_parallel import SINGLE

    check_consumers(context)
    plan, schedule, device, dtype = context.plan, context.schedule, context.device, context.dtype
    channels = serving_channels(context, rank, timeout)
    runners = {s: ServingRunner(context.model, s, plan.stage_layers(s), context.serving.passes, device, dtype, SEED)
               for s in schedule.stages_of(rank)}
    clock = make_clock(device)
    scalar_device = device if context.options.backend == "nccl" else torch.device("cpu")
    with talking_to(None, "aligning clocks"):
        offsets = clock_offsets(rank, world, scalar_device, timeout)
    executor = ServingExecutor(schedule, rank, runners, channels, clock, Fault.from_env())
    numel = largest_boundary(context)
    # One pipeline replica (tp = dp = 1, see the preflight): the pipeline device is the rank.
    place, groups = RankPlace(Layout(pp=plan.pp), rank), Groups(SINGLE, None)
    kept = timed_rounds(executor, runners, channels, clock, offsets, place, groups, world, numel, device,
                        context.options, timeout)
    barrier(timeout)
    elem_bytes = torch.empty((), dtype=dtype).element_size()
    costs = pass_costs(kept.stage_rounds, context, rank)
    generated = {r: tokens for runner in runners.values() if runner.last for r, tokens in runner.runs[-1].items()}
    consistent = all(run == runner.runs[0] for runner in runners.values() if runner.last for run in runner.runs)
    payload = {
        "rank": rank,
        # A stage's mean pass, a summary for the profile; the report prices every pass from ``pass_costs``.
        "stages": {s: StageProfile(statistics.fmean(c.values()), 0.0, 0.0, 0.0) for s, c in costs.items()},
        "links": link_timings([links for links, _ in kept.link_rounds], numel, elem_bytes),
        "layers": {},
        "iterations": kept.iterations,
        "losses": [],
        "tried": kept.tried,
        "disturbed": kept.disturbed,
        "left_out": summary(kept.reasons),
        "pass_costs": costs,
        "generated": generated,
        "consistent": consistent,
    }
    return gather_payload(context, payload, rank, world, elem_bytes * numel, offsets)
