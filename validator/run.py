"""One rank's whole run: set up, calibrate, execute the schedule, gather the measurements to rank 0."""
from __future__ import annotations

import math
import os
import socket
import time
import zlib
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import torch
import torch.distributed as dist

from pipeplan.errors import SpecError
from pipeplan.specs import resolve
from pipeplan.plan import Plan
from pipeplan.scaling import scale_plan
from pipeplan.validation.measurements import Measurements
from pipeplan.validation.options import ValidateOptions

from simulator.kinds import is_compute

from .calibrate import (barrier, in_flight, layer_timings, link_round, link_timings, reduction_round,
                        reduction_timings, replay_round, stage_round, stage_timings)
from .compute import StageRunner, boundary_shape
from .data_parallel import TrainingStep
from .placement import Groups, RankPlace, make_groups
from .devices import compute_device
from .gather import RankContext, assemble
from .runtime import Fault, RankExecutor, make_channels, plan_transfers, talking_to
from .quiet import FIELDS, Round, judge, summary, too_disturbed
from .timing import (clock_offsets, foreign_cores, host_busy_seconds, make_clock, other_threads_cpu_seconds,
                     own_cpu_seconds, run_delay_seconds, steal_seconds)

SEED = 1234


def own_cores(cpus: list[int], local_rank: int, local_world: int) -> list[int] | None:
    """This rank's share of the host's allowed ``cpus``: equal consecutive slices, or None with fewer
    cpus than ranks."""
    per = len(cpus) // local_world
    return sorted(cpus)[local_rank * per:(local_rank + 1) * per] if per >= 1 else None


def pin_to_own_cores(local_rank: int, local_world: int) -> list[int] | None:
    """Keep this rank's threads on cores of its own, as each pipeline device has its own hardware.

    Unpinned, on the 2-core VM between one transfer in 20 and one in 2 (varying from minute to
    minute) reached a waiting rank 1-5 ms late, in the run and in link calibration alike, while the
    sender went on computing; never while it slept. Our reading: the socket wake-up puts the waiting
    rank's threads on the sender's busy core, where they wait for its op to be preempted (lowering
    the compute threads' priority made it far worse). Pinned, one in 20-40 is late and the link
    medians stay at 20-40 us; ZB-V, whose critical path crosses devices every micro-batch, moved
    from -3.6 to about -1 point of bubble error.
    """
    try:
        mine = own_cores(list(os.sched_getaffinity(0)), local_rank, local_world)
        if mine:
            os.sched_setaffinity(0, mine)
        return mine
    except (AttributeError, OSError):  # no affinity API (not Linux) or not allowed: run unpinned
        return None


def load_scaled_plan(path: str, scale: float) -> tuple[Plan, Path]:
    plan = Plan.load(path)
    base = Path(path).resolve().parent
    if scale != 1:
        model = resolve(plan.model, plan.cluster, plan, base).model
        plan = scale_plan(plan, model, scale)
    return plan, base


def run_rank(plan_path: str, options: ValidateOptions, rank: int) -> Measurements | None:
    """Run this rank's part of ``plan_path``; rank 0 returns the run's measurements, the others None."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    local_world = int(os.environ.get("LOCAL_WORLD_SIZE", str(world)))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    plan, base = load_scaled_plan(plan_path, options.scale)
    serving = None
    if plan.serving is not None:  # forward-only passes with a KV cache (validator.serving_run)
        from pipeplan.inference.api import resolve_serving

        serving = resolve_serving(plan, base)
        schedule, model = serving.schedule, serving.model
    else:
        resolved = resolve(plan.model, plan.cluster, plan, base)
        schedule, model = resolved.schedule, resolved.model
    if world != plan.num_gpus:
        raise SpecError(
            f"plan.pp: the plan has tp x pp x dp = {plan.num_gpus} devices but torchrun started {world} ranks; "
            f"start nodes x procs-per-node = {plan.num_gpus}"
        )
    # Before any thread starts (torch's, gloo's), so they all inherit the rank's cores.
    pin_to_own_cores(local_rank, local_world)
    threads = options.threads or max(1, (os.cpu_count() or 1) // local_world)
    torch.set_num_threads(threads)
    device, dtype = compute_device(options.device, options.backend, local_rank, local_world)
    timeout = options.wait_timeout
    if options.runtime == "torch":  # its import (torch._dynamo with it) takes seconds: before the ranks meet
        from . import torch_runtime  # noqa: F401
    # Binding NCCL to the rank's GPU up front lets barriers and collectives know their device.
    bound = {"device_id": device} if options.backend == "nccl" else {}
    dist.init_process_group(options.backend, timeout=timedelta(seconds=timeout), **bound)
    context = RankContext(plan_path, plan, base, schedule, model, device, dtype, threads, options, serving)
    place = RankPlace(plan.layout, rank)
    groups = make_groups(place, options.backend, timeout, plan.sequence_parallel)
    return _measure(context, place, groups, world, timeout)


@dataclass(frozen=True)
class Rounds:
    """The kept rounds of a run (each: this rank's calibration replay samples, its link and data-parallel
    collective timings as a pair, and the run iteration), how many were tried, whether too few were
    undisturbed and why rounds were left out."""

    stage_rounds: list
    link_rounds: list
    iterations: list
    tried: int
    disturbed: bool
    reasons: list


def timed_rounds(executor, runners: dict, channels: dict, clock, offsets: list[float], place: RankPlace,
                 groups: Groups, world: int, numel: int, device: torch.device, options: ValidateOptions,
                 timeout: float, distributed: bool = False) -> Rounds:
    """Calibration replay, link timing (and with dp > 1 gradient all-reduce timing) and one run iteration per
    round, until ``options.iterations`` rounds ran on an undisturbed machine (see ``validator.quiet``) or
    three times that many were tried. A kept round's link timings are ``(links, reductions)``."""
    rank = place.rank
    scalar_device = device if options.backend == "nccl" else torch.device("cpu")
    all_channels = sorted(plan_transfers(executor.schedule))
    kept: list[tuple[dict, dict, dict]] = []  # (stage round, link round, iteration)
    rounds: list[Round] = []
    host_key = float(zlib.crc32(socket.gethostname().encode()))
    run = 0
    reasons: list[str | None] = []
    # Keep going until ``iterations`` timed iterations ran on an undisturbed machine (see
    # ``validator.quiet``), or three times that many were tried: on a shared host another job's burst
    # would otherwise be measured as if it were the schedule's cost.
    while run < options.warmup + 3 * options.iterations:
        wall0, busy0, own0, steal0 = time.perf_counter(), host_busy_seconds(), own_cpu_seconds(), steal_seconds()
        barrier(timeout)
        c0, cw0, co0 = time.perf_counter(), run_delay_seconds(), other_threads_cpu_seconds()
        stages_now = replay_round(executor, runners, clock)
        c1, cw1, co1 = time.perf_counter(), run_delay_seconds(), other_threads_cpu_seconds()
        barrier(timeout)
        links_now = link_round(all_channels, channels, place.pp_rank, numel, device,
                               reps=2 * options.calibration_reps, timeout=timeout, offsets=offsets)
        barrier(timeout)
        reductions_now = {}
        if groups.data is not None:
            reductions_now = reduction_round(runners, groups.data, reps=2 * options.calibration_reps, timeout=timeout,
                                             distributed=distributed, rank=place.dp_rank, ranks=place.layout.dp)
            barrier(timeout)
        r0, rw0, ro0 = time.perf_counter(), run_delay_seconds(), other_threads_cpu_seconds()
        marks, arrivals = executor.run_iteration()
        r1, rw1, ro1 = time.perf_counter(), run_delay_seconds(), other_threads_cpu_seconds()
        times = clock.resolve([m for op in marks for m in (op.start, op.end)] + [a.mark for a in arrivals])
        # Compute ops only: a reduction runs beside them on the communication thread.
        run_ops = sum(times[2 * k + 1] - times[2 * k] for k, op in enumerate(marks) if is_compute(op.action.kind))
        calib_ops = sum(sum(v) for kinds in stages_now.values() for kind, v in kinds.items() if is_compute(kind))
        figures = {"host": host_key, "busy": host_busy_seconds() - busy0, "own": own_cpu_seconds() - own0,
                   "wall": time.perf_counter() - wall0, "steal": steal_seconds() - steal0,
                   "run_wall": r1 - r0, "run_wait": rw1 - rw0, "run_ops": run_ops,
                   "calib_wall": c1 - c0, "calib_wait": cw1 - cw0, "calib_ops": calib_ops,
                   "run_others": ro1 - ro0, "calib_others": co1 - co0}
        window = [figures[name] for name in FIELDS]
        gathered_load = [torch.zeros(len(FIELDS), dtype=torch.float64, device=scalar_device) for _ in range(world)]
        with talking_to(None, "exchanging load figures"):
            dist.all_gather(gathered_load, torch.tensor(window, dtype=torch.float64, device=scalar_device))
        rows = [t.cpu().tolist() for t in gathered_load]
        foreign = foreign_cores([r[:3] for r in rows], max(r[3] for r in rows))
        run += 1
        if run <= options.warmup:
            continue
        shift = offsets[rank]
        ops = [[str(op.action), times[2 * k] - shift, times[2 * k + 1] - shift] for k, op in enumerate(marks)]
        base_k = 2 * len(marks)
        seen = [[str(a.producer), str(a.consumer), a.src, times[base_k + k] - shift] for k, a in enumerate(arrivals)]
        rounds.append(Round.from_rows(rows, foreign))
        kept.append((stages_now, (links_now, reductions_now), {"ops": ops, "arrivals": seen, **rounds[-1].to_dict()}))
        # All ranks take the same decisions: the figures were all-gathered.
        reasons = judge(rounds)
        if reasons.count(None) >= options.iterations:
            break
    quiet = [k for k, why in zip(kept, reasons) if why is None]
    disturbed = too_disturbed(reasons, options.iterations)
    if disturbed:  # the least disturbed by the coarse counter, back in run order
        order = sorted(range(len(kept)), key=lambda i: (reasons[i] is not None, rounds[i].foreign_cores))
        chosen = [kept[i] for i in sorted(order[: options.iterations])]
    else:
        chosen = quiet[: options.iterations]
    for k, why in zip(kept, reasons):
        k[2]["disturbance"] = why
    return Rounds([k[0] for k in chosen], [k[1] for k in chosen], [k[2] for k in chosen], len(kept), disturbed,
                  reasons)


def gather_payload(context: RankContext, payload: dict, rank: int, world: int, boundary_bytes: float,
                   offsets: list[float]) -> Measurements | None:
    """Send this rank's payload to rank 0; rank 0 returns the run's measurements, the others None."""
    gathered = [None] * world if rank == 0 else None
    with talking_to(None if rank == 0 else 0, "gathering timings to rank 0"):
        dist.gather_object(payload, gathered, dst=0)
    if rank != 0:
        return None
    return assemble(context, gathered, boundary_bytes, offsets)


def _measure(context: RankContext, place: RankPlace, groups: Groups, world: int, timeout: float) -> Measurements | None:
    rank, device_rank = place.rank, place.pp_rank
    if context.serving is not None:
        from .serving_run import measure_serving

        return measure_serving(context, rank, world, timeout)
    plan, schedule, model, device, dtype = context.plan, context.schedule, context.model, context.device, context.dtype
    options = context.options
    batch, seq = plan.microbatch_size, plan.seq_len or model.seq_len
    shape = boundary_shape(batch, seq, model.hidden, groups.tensor)
    channels = make_channels(schedule, device_rank, shape, dtype, device, options.backend, timeout,
                             replicas=place.replicas(), replica=place.replica)
    if plan.tp > 1 or plan.dp > 1:
        # A tensor-parallel op waits on gloo's threads dozens of times; let them run as soon as they wake
        # (validator.comm_threads: on the loaded 2-core VM a tp = 2 forward took 45 ms with, 70 ms without).
        from .comm_threads import shorten_comm_slices

        shorten_comm_slices()
    runners = {
        s: StageRunner(model, s, plan.stage_layers(s), batch, seq, plan.num_microbatches, device, dtype, SEED,
                       recompute=plan.recompute_of(s), tensor=groups.tensor, data_ranks=plan.dp,
                       data_rank=place.dp_rank)
        for s in schedule.stages_of(device_rank)
    }
    clock = make_clock(device)
    scalar_device = device if options.backend == "nccl" else torch.device("cpu")
    with talking_to(None, "aligning clocks"):
        offsets = clock_offsets(rank, world, scalar_device, timeout)

    elem_bytes = torch.empty((), dtype=dtype).element_size()
    numel = math.prod(shape)
    if options.runtime == "torch":
        from .torch_runtime import TorchExecutor

        executor = TorchExecutor(schedule, rank, runners, clock, timeout, Fault.from_env())
    else:
        step = TrainingStep(schedule, device_rank, runners, clock, groups.data, plan.dp, plan.overlap_grad_reduce,
                            timeout, distributed=plan.distributed_optimizer, data_rank=place.dp_rank)
        executor = RankExecutor(schedule, device_rank, runners, channels, clock, Fault.from_env(), step)
    depth = {s: in_flight(schedule, s) for s in runners}
    stage_round(runners, clock, reps=2, depth=depth)  # first-touch allocations and lazy initialisation
    kept = timed_rounds(executor, runners, channels, clock, offsets, place, groups, world, numel, device, options,
                        timeout, plan.distributed_optimizer)
    barrier(timeout)
    isolated = stage_round(runners, clock, reps=3, depth=depth)
    stage_costs = stage_timings(kept.stage_rounds, fallback=isolated)
    barrier(timeout)
    layer_costs = layer_timings(model, plan, schedule, device_rank, batch, seq, device, dtype, clock, reps=5,
                                tensor=groups.tensor)
    barrier(timeout)
    links = link_timings([r[0] for r in kept.link_rounds], numel, elem_bytes)
    reductions = (reduction_timings([r[1] for r in kept.link_rounds], runners, kept.stage_rounds)
                  if groups.data is not None else [])
    losses = [float(loss) for r in runners.values() for loss in r.losses]

    payload = {
        "rank": rank,
        "device": device_rank,
        "replica": place.replica,
        "tensor_rank": place.tp_rank,
        "collectives": reductions,
        "stages": stage_costs,
        "links": links,
        "layers": layer_costs,
        "iterations": kept.iterations,
        "losses": losses,
        # Every kept round's raw timings, for the calibration's spread (pipeplan.bands.calibration):
        # per round {stage: {kind: [s, ...]}} and {(src, dst): [boundary-size one-way s, ...]}.
        "stage_rounds": kept.stage_rounds,
        "link_rounds": [{key: lists[1] for key, lists in r[0].items()} for r in kept.link_rounds],
        "tried": kept.tried,
        "disturbed": kept.disturbed,
        "left_out": summary(kept.reasons),
    }
    return gather_payload(context, payload, rank, world, elem_bytes * numel, offsets)
