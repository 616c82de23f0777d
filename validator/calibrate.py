"""Calibration: what each stage's ops and each used link cost on this machine, measured alone.

* Stages: every rank times F, B, I and W of its own stages on synthetic boundary tensors, all ranks
  at once, so each op sees the same neighbours competing for cores and memory as in the real run.
  A stage that recomputes is timed as it runs: its B and I include the forward they re-run (the
  profile marks the stage, see ``pipeplan.profile``).
* The end of the iteration: the replay times each stage's optimizer step too (with a learning rate
  of 0, so the weights stay). With data parallelism it also reduces each stage's gradients over its
  data-parallel group as the run does (handed to the communication thread after the stage's last
  backward, every data rank having replayed its own ops): that is the reduction's cost at the
  stage's gradient size, and ``reduction_round`` adds its latency (a one-element all-reduce, every
  member starting together) and times the distributed optimizer's parameter all-gather. Timed alone after a
  barrier instead, the reduction missed what it costs in the run: the replicas' compute drifts apart
  by milliseconds within an iteration and the reduction waits for the slowest (on the CPU VM dp = 2
  reduced in 3.4 ms alone, 4-10 ms in the run), which a simulator of one replica cannot show.
* Links: for every channel a -> b of the schedule, one-way transfers in the same backend and through
  the same groups as the run, the receiver waiting and the sender computing on (see
  ``_one_way_times``), at one element (latency) and at the real boundary-tensor size; bandwidth is
  the size difference over the time difference.

Calibration runs in rounds, one before every iteration of the real run. An op's cost is the mean
over all rounds after warm-up: an iteration is a sum of many ops, so its typical time is the sum of
their means, and op times are skewed to the right (the median missed 1.5-4.5 % of iteration time on
the CPU VM). A link's cost stays the median of its few samples, whose mean one late delivery would
swing. On a shared machine the load changes over seconds; interleaving makes
calibration and run sample the same conditions, instead of calibrating in a quiet (or busy) moment
and running in another.
"""
from __future__ import annotations

import statistics
import time
from datetime import timedelta

import torch
import torch.distributed as dist

from pipeplan.profile import CollectiveProfile, LinkProfile, StageProfile
from simulator.ir import BACKWARD_INPUT, FORWARD, FULL_BACKWARD, Schedule
from simulator.kinds import GATHER_PARAMS, OPTIMIZER, REDUCE_GRAD

from . import devices
from .compute import StageRunner
from .runtime import Channel, _wait, talking_to


def _timed(clock, fn) -> tuple[object, object, object]:
    start = clock.mark()
    result = fn()
    return start, clock.mark(), result


def in_flight(schedule: Schedule, stage: int, cap: int = 4) -> int:
    """The most micro-batches whose forward ran on ``stage`` and whose backward has not (at most ``cap``)."""
    live = peak = 0
    for action in schedule.device_actions[schedule.stage_to_device[stage]]:
        if action.stage == stage and action.kind == FORWARD:
            live += 1
            peak = max(peak, live)
        elif action.stage == stage and action.kind in (FULL_BACKWARD, BACKWARD_INPUT):
            live -= 1
    return max(1, min(cap, peak))


def stage_round(runners: dict[int, StageRunner], clock, reps: int,
                depth: dict[int, int]) -> dict[int, dict[str, list[float]]]:
    """``reps`` x ``depth`` timings of F, B, I and W of each stage in ``runners`` (this rank's stages).

    A rep runs ``depth[s]`` forwards before their backwards (and their I's before their W's), the
    most the schedule keeps in flight on that stage: a backward then reads activations written
    several ops earlier, from the cache level it reads them from in the real run, not hot from the
    forward just before it.
    """
    samples: dict[int, dict[str, list[float]]] = {s: {k: [] for k in "FBIW"} for s in runners}
    losses_before = {s: len(r.losses) for s, r in runners.items()}
    for _ in range(reps):
        clock.begin_iteration()
        marks = []
        for stage, runner in runners.items():
            shape = runner.boundary_shape()
            mbs = range(depth[stage])

            def inp():
                return None if runner.first else torch.randn(shape, dtype=runner.dtype, device=runner.device)

            grad = None if runner.last else torch.randn(shape, dtype=runner.dtype, device=runner.device)
            for split in (False, True):
                inputs = [inp() for _ in mbs]
                for mb in mbs:
                    marks.append((stage, "F", *_timed(clock, lambda: runner.forward(mb, inputs[mb]))[:2]))
                for mb in mbs:
                    kind = "I" if split else "B"
                    marks.append((stage, kind, *_timed(clock, lambda: runner.backward(mb, grad, split=split))[:2]))
                if split:
                    for mb in mbs:
                        marks.append((stage, "W", *_timed(clock, lambda: runner.weight(mb))[:2]))
        times = clock.resolve([m for _, _, s, e in marks for m in (s, e)])
        for k, (stage, kind, _, _) in enumerate(marks):
            samples[stage][kind].append(times[2 * k + 1] - times[2 * k])
    for stage, runner in runners.items():
        runner.clear()  # calibration must not leave gradients for the real run's update
        del runner.losses[losses_before[stage]:]
    return samples


def replay_round(executor, runners: dict[int, StageRunner], clock) -> dict[int, dict[str, list[float]]]:
    """Every op of this rank's action list timed by ``RankExecutor.replay``: in the schedule's order,
    with its real sends, nothing waited for. Ops timed back to back in isolation instead under-state
    the ops whose activations the schedule leaves in slower memory, and the CPU that communication
    takes on a machine without spare cores. An executor whose replay leaves out work the run does
    for some ops (torch's: its waits for their receives) says what it costs each in ``replay_waits``
    (seconds per action), added to their samples. With data parallelism the samples hold each stage's
    gradient reduction (``REDUCE_GRAD``) too, timed as the run times it (see the module docstring)."""
    samples: dict[int, dict[str, list[float]]] = {s: {k: [] for k in (*"FBIW", OPTIMIZER, REDUCE_GRAD)}
                                                  for s in runners}
    losses_before = {s: len(r.losses) for s, r in runners.items()}
    marks = executor.replay()
    extra = getattr(executor, "replay_waits", {})
    times = clock.resolve([m for op in marks for m in (op.start, op.end)])
    for k, op in enumerate(marks):
        samples[op.action.stage][op.action.kind].append(times[2 * k + 1] - times[2 * k] + extra.get(op.action, 0.0))
    for stage, runner in runners.items():
        runner.clear()  # calibration must not leave gradients for the real run's update
        del runner.losses[losses_before[stage]:]
    return samples


def stage_timings(samples: list[dict[int, dict[str, list[float]]]],
                  fallback: dict[int, dict[str, list[float]]] | None = None) -> dict[int, StageProfile]:
    """Means over all rounds' samples (see the module docstring); a kind the rounds never ran (I and W
    under 1F1B, B under Zero Bubble) takes its mean from ``fallback``, so a profile always prices all
    four."""
    merged: dict[int, dict[str, list[float]]] = {}
    for round_samples in samples:
        for stage, kinds in round_samples.items():
            for kind, values in kinds.items():
                merged.setdefault(stage, {}).setdefault(kind, []).extend(values)
    for stage, kinds in (fallback or {}).items():
        for kind, values in kinds.items():
            if not merged.setdefault(stage, {}).get(kind):
                merged[stage][kind] = list(values)
    return {s: StageProfile(*(statistics.fmean(merged[s][k]) for k in "FBIW"),
                            optimizer=statistics.fmean(merged[s][OPTIMIZER]) if merged[s].get(OPTIMIZER) else None)
            for s in merged}


def reduction_round(runners: dict[int, StageRunner], group, reps: int, timeout: float,
                    distributed: bool = False, rank: int = 0, ranks: int = 1) -> dict[tuple[int, str], tuple[list, list]]:
    """Each of this rank's stages' data-parallel collectives over ``group``, ``reps`` times as a one-element
    all-reduce (the latency of ``REDUCE_GRAD`` and, with the ``distributed`` optimizer, ``GATHER_PARAMS``)
    and the parameter all-gather as the run does it (``data_parallel.gather_stage``, the unchanged
    parameters here), every member starting together (a barrier of the group before each):
    {(stage, kind): (small, big)} seconds on this rank, ``big`` empty for the gradient reduction, which
    the replay times where the run has it (``replay_round``). Every data group of the run does this at the
    same time, as their collectives overlap in the run."""
    from .data_parallel import _padded, gather_stage

    def current_shard(runner):
        flat = _padded(torch.cat([p.detach().reshape(-1) for p in runner.module.parameters()]), ranks)
        return flat.chunk(ranks)[rank].clone()

    measured = {}
    for stage, runner in sorted(runners.items()):
        one = torch.zeros(1, dtype=runner.dtype, device=runner.device)
        kinds = {REDUCE_GRAD: None}  # the reduction itself: timed in the replay
        if distributed:
            shard = current_shard(runner)  # every rank's parameters are the same: gathering changes nothing
            kinds[GATHER_PARAMS] = lambda: gather_stage(runner, shard, group, ranks)
        for kind, work in kinds.items():
            lists = [[], []]
            for which, reduce in enumerate((lambda: dist.all_reduce(one, group=group), work)):
                if reduce is None:
                    continue
                for _ in range(reps):
                    with talking_to(None, "timing a data-parallel collective"):
                        dist.barrier(group=group)
                        start = time.perf_counter()
                        reduce()
                        _sync(runner.device)
                        lists[which].append(time.perf_counter() - start)
            measured[(stage, kind)] = tuple(lists)
    return measured


def reduction_timings(samples: list[dict[tuple[int, str], tuple[list, list]]], runners: dict[int, StageRunner],
                      replayed: list[dict[int, dict[str, list[float]]]]) -> list[CollectiveProfile]:
    """Per stage and kind, the collective's latency (median at one element) and bandwidth (the stage's
    gradient bytes over the extra time), as ``link_timings`` makes a link's. The extra time is over the
    mean of the ``replayed`` rounds' gradient reductions (``replay_round``: as the run does them; a mean,
    as for the ops, since the reduction is one more term of the iteration's sum), and over the median of
    ``reduction_round``'s for the parameter all-gather."""
    from .data_parallel import gradient_elements

    out = []
    for stage, kind in sorted({key for s in samples for key in s}):
        small = [t for s in samples for t in s[(stage, kind)][0]]
        if kind == REDUCE_GRAD:
            big = statistics.fmean(t for r in replayed for t in r[stage][kind])
        else:
            big = statistics.median(t for s in samples for t in s[(stage, kind)][1])
        runner = runners[stage]
        elem = torch.empty((), dtype=runner.dtype).element_size()
        nbytes = gradient_elements(runner) * elem
        latency = statistics.median(small)
        extra = big - latency
        # A big collective no slower than a one-element one: its bytes cost nothing measurable (1 ns).
        out.append(CollectiveProfile(stage, kind, float(nbytes), latency, (nbytes - elem) / max(extra, 1e-9)))
    return out


def _burst(seconds: float) -> None:
    """Keep this thread computing for ``seconds``, as a stage does right after sending its output."""
    a = torch.ones(128, 128)
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        a = a @ a * 1e-3


def _one_way_times(channel: Channel, back: Channel | None, rank: int, numel: int, reps: int,
                   device: torch.device, offsets: list[float]) -> tuple[list[float], list[float]]:
    """One-way seconds of a ``numel``-element tensor a -> b, measured the way the pipeline uses it.

    The receiver has posted its receive and waits (a consumer waiting for its input); the sender
    sends and goes straight on computing (a producer starting its next op). That second part
    matters: a backend whose transfers need a CPU thread of their own (gloo) delivers later when the
    sender's cores are busy, and an idle ping-pong would not show it. Arrival minus the moment the
    send call returned, on the aligned clock (``offsets``), and separately how long the call took
    (the runtime counts it in the sending op). Returns the sender's lists (one-way, issue).
    """
    # b: the receiving pipeline device (``rank`` is it or the sender); ra, rb: the two global ranks
    # (clock offsets, dist calls).
    b = channel.dst
    ra, rb = channel.src_rank, channel.dst_rank
    back_group = back.group if back is not None else channel.group
    staged = channel.staged
    tensor = torch.zeros(numel, dtype=channel.dtype, device=device)
    buffer = torch.empty(numel, dtype=channel.dtype, device=torch.device("cpu") if staged else device)
    stamp = torch.zeros(1, dtype=torch.float64)
    stamp = stamp.to(device) if channel.buffer_device.type == "cuda" else stamp
    times, issues = [], []
    for _ in range(reps):
        if rank == b:
            work = dist.irecv(buffer, ra, group=channel.group)
            _wait(dist.isend(stamp, ra, group=back_group), channel.timeout, ra, f"link calibration with rank {ra}")
            _wait(work, channel.timeout, ra, f"link calibration from rank {ra}")
            arrived = devices.to_device(buffer, device) if staged else buffer
            _sync(device)
            stamp.fill_(time.perf_counter() - offsets[rb])
            del arrived
            _wait(dist.isend(stamp, ra, group=back_group), channel.timeout, ra, f"link calibration with rank {ra}")
        else:
            _wait(dist.irecv(stamp, rb, group=back_group), channel.timeout, rb, f"link calibration with rank {rb}")
            _sync(device)
            issued = time.perf_counter()
            payload = devices.to_host(tensor) if staged else tensor
            work = dist.isend(payload, rb, group=channel.group)
            t0 = time.perf_counter()
            issues.append(t0 - issued)
            t0 -= offsets[ra]
            _burst(BURST_SECONDS)
            _wait(work, channel.timeout, rb, f"link calibration to rank {rb}")
            _wait(dist.irecv(stamp, rb, group=back_group), channel.timeout, rb, f"link calibration with rank {rb}")
            _sync(device)
            times.append(float(stamp.item()) - t0)
    return times, issues


# Longer than any delivery we expect to see, shorter than a stage's op on the tiny model.
BURST_SECONDS = 0.003


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def link_round(all_channels: list[tuple[int, int]], channels: dict[tuple[int, int], Channel], rank: int,
               numel: int, device: torch.device, reps: int, timeout: float,
               offsets: list[float]) -> dict[tuple[int, int], tuple[list, list]]:
    """Time every channel in turn, one element and ``numel`` elements, ``reps`` times each.

    All ranks walk the same channel list; a barrier separates pairs so no two measurements overlap.
    Returns the one-way times of the channels this rank sends on: {(src, dst): (small, big)}.
    ``rank`` is this rank's pipeline device (every replica times its own channels at the same time).
    """
    measured = {}
    for src, dst in all_channels:
        if rank in (src, dst):
            channel = channels[(src, dst)]
            back = channels.get((dst, src))
            with talking_to(channel.dst_rank if rank == src else channel.src_rank, "link calibration"):
                small, _ = _one_way_times(channel, back, rank, 1, reps, device, offsets)
                big, issue = _one_way_times(channel, back, rank, numel, reps, device, offsets)
            if rank == src:
                measured[(src, dst)] = (small, big, issue)
        barrier(timeout)
    return measured


def link_timings(samples: list[dict[tuple[int, int], tuple[list, list, list]]], numel: int,
                 elem_bytes: int) -> list[LinkProfile]:
    """One-way latency (median at one element) and bandwidth (size over the extra median time)."""
    merged: dict[tuple[int, int], tuple[list, list, list]] = {}
    for round_samples in samples:
        for key, lists in round_samples.items():
            m = merged.setdefault(key, ([], [], []))
            for into, values in zip(m, lists):
                into.extend(values)
    links = []
    for (src, dst), (small, big, issue) in sorted(merged.items()):
        # Clocks of different hosts are aligned only to within a round trip's asymmetry; never below 0.
        latency = max(0.0, statistics.median(small))
        one_way = max(latency, statistics.median(big))
        nbytes = numel * elem_bytes
        slope = (one_way - latency) / (nbytes - elem_bytes) if nbytes > elem_bytes else 0.0
        links.append(LinkProfile(src, dst, latency, 1.0 / slope if slope > 0 else float("inf"),
                                 statistics.median(issue)))
    return links


def barrier(timeout: float) -> None:
    """A barrier that gives up after ``timeout`` seconds (gloo's monitored barrier names the missing rank)."""
    with talking_to(None, "barrier"):
        if dist.get_backend() == "gloo":
            dist.monitored_barrier(timeout=timedelta(seconds=timeout))
        else:
            dist.barrier()


def layer_timings(model, plan, schedule: Schedule, rank: int, batch: int, seq: int, device: torch.device,
                  dtype: torch.dtype, clock, reps: int, tensor=None) -> dict[str, StageProfile]:
    """F, B, I, W of one layer of each kind this rank holds (embedding, block, head), timed alone.

    With these a profile prices any other cut of the same model and shapes (see pipeplan.profile).
    They are timed without recomputation, whatever the plan says; pricing adds the forward where a
    plan recomputes. With tensor parallelism (``tensor``) every rank of the group times the same layers
    together, each its share.
    """
    first_of_kind: dict[str, int] = {}
    for stage in schedule.stages_of(rank):
        for layer in plan.stage_layers(stage):
            first_of_kind.setdefault(model.layer_kind(layer), layer)
    timings = {}
    for kind, layer in first_of_kind.items():
        runner = StageRunner(model, 1000 + layer, range(layer, layer + 1), batch, seq, plan.num_microbatches,
                             device, dtype, seed=0, **({"tensor": tensor} if tensor is not None else {}))
        stage_round({0: runner}, clock, reps=2, depth={0: 1})  # warm-up
        samples = stage_round({0: runner}, clock, reps=reps, depth={0: 1})
        timings[kind] = stage_timings([samples])[0]
    return timings
