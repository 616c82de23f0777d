"""One rank's whole run: set up, calibrate, execute the schedule, gather to rank 0, report."""
from __future__ import annotations

import os
import platform
import socket
import statistics
import time
import zlib
from datetime import timedelta
from pathlib import Path

import torch
import torch.distributed as dist

from pipeplan.errors import SpecError
from pipeplan.specs import resolve
from pipeplan.plan import Plan
from pipeplan.profile import LinkProfile, Profile, StageProfile
from pipeplan.scaling import scale_plan
from simulator.timeline import OpRecord, Timeline, TransferRecord

from .calibrate import (barrier, in_flight, layer_timings, link_round, link_timings, replay_round, stage_round,
                        stage_timings)
from .compute import StageRunner
from .runtime import Fault, RankExecutor, make_channels, plan_transfers, talking_to
from .timing import clock_offsets, foreign_cores, host_busy_seconds, make_clock, own_cpu_seconds

SEED = 1234
# An iteration counts as undisturbed when other processes kept at most this many cores busy.
QUIET_CORES = 0.3
# A receive that returned this long after the receiver's previous op ended was waited for.
WAITED_S = 50e-6


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"CPU {cpu} ({os.cpu_count()} cores)"


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


def run_rank(args, rank: int) -> None:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    local_world = int(os.environ.get("LOCAL_WORLD_SIZE", str(world)))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    plan, base = load_scaled_plan(args.plan, args.scale)
    resolved = resolve(plan.model, plan.cluster, plan, base)
    schedule, model = resolved.schedule, resolved.model
    if world != plan.pp:
        raise SpecError(
            f"plan.pp: the plan has {plan.pp} pipeline devices but torchrun started {world} ranks; "
            f"start nodes x procs-per-node = {plan.pp}"
        )
    # Before any thread starts (torch's, gloo's), so they all inherit the rank's cores.
    pin_to_own_cores(local_rank, local_world)
    threads = args.threads or max(1, (os.cpu_count() or 1) // local_world)
    torch.set_num_threads(threads)
    if args.device == "cuda":
        if not torch.cuda.is_available():
            raise SpecError("--device cuda: torch sees no CUDA device here")
        if args.backend == "nccl" and local_world > torch.cuda.device_count():
            raise SpecError(
                f"--backend nccl: {local_world} ranks on this node but {torch.cuda.device_count()} GPU(s); NCCL "
                "refuses two ranks on one GPU, use --backend gloo (it stages boundary tensors through host memory)"
            )
        device = torch.device("cuda", local_rank % torch.cuda.device_count())
        torch.cuda.set_device(device)
        dtype = torch.bfloat16
    else:
        if args.backend == "nccl":
            raise SpecError("--backend nccl needs --device cuda")
        device = torch.device("cpu")
        dtype = torch.float32
    timeout = args.timeout
    # Binding NCCL to the rank's GPU up front lets barriers and collectives know their device.
    bound = {"device_id": device} if args.backend == "nccl" else {}
    dist.init_process_group(args.backend, timeout=timedelta(seconds=timeout), **bound)
    _run(args, rank, world, plan, base, schedule, model, device, dtype, threads, timeout)


def _run(args, rank, world, plan, base, schedule, model, device, dtype, threads, timeout) -> None:
    batch, seq = plan.microbatch_size, plan.seq_len or model.seq_len
    shape = (batch, seq, model.hidden)
    channels = make_channels(schedule, rank, shape, dtype, device, args.backend, timeout)
    runners = {
        s: StageRunner(model, s, plan.stage_layers(s), batch, seq, plan.num_microbatches, device, dtype, SEED,
                       recompute=plan.recompute_of(s))
        for s in schedule.stages_of(rank)
    }
    clock = make_clock(device)
    scalar_device = device if args.backend == "nccl" else torch.device("cpu")
    with talking_to(None, "aligning clocks"):
        offsets = clock_offsets(rank, world, scalar_device, timeout)

    elem_bytes = torch.empty((), dtype=dtype).element_size()
    numel = batch * seq * model.hidden
    all_channels = sorted(plan_transfers(schedule))
    executor = RankExecutor(schedule, rank, runners, channels, clock, Fault.from_env())
    kept: list[tuple[float, dict, dict, dict]] = []  # (foreign cores, stage round, link round, iteration)
    host_key = float(zlib.crc32(socket.gethostname().encode()))
    depth = {s: in_flight(schedule, s) for s in runners}
    stage_round(runners, clock, reps=2, depth=depth)  # first-touch allocations and lazy initialisation
    run = 0
    # Keep going until ``iterations`` timed iterations ran on an otherwise idle machine, or three
    # times that many were tried: on a shared host another job's burst would otherwise be measured
    # as if it were the schedule's cost.
    while run < args.warmup + 3 * args.iterations:
        wall0, busy0, own0 = time.perf_counter(), host_busy_seconds(), own_cpu_seconds()
        barrier(timeout)
        stages_now = replay_round(executor, runners, clock)
        barrier(timeout)
        links_now = link_round(all_channels, channels, rank, numel, device, reps=2 * args.calibration_reps,
                               timeout=timeout, offsets=offsets)
        barrier(timeout)
        marks, arrivals = executor.run_iteration()
        times = clock.resolve([m for op in marks for m in (op.start, op.end)] + [a.mark for a in arrivals])
        window = [host_key, host_busy_seconds() - busy0, own_cpu_seconds() - own0, time.perf_counter() - wall0]
        gathered_load = [torch.zeros(4, dtype=torch.float64, device=scalar_device) for _ in range(world)]
        with talking_to(None, "exchanging load figures"):
            dist.all_gather(gathered_load, torch.tensor(window, dtype=torch.float64, device=scalar_device))
        rows = [t.cpu().tolist() for t in gathered_load]
        foreign = foreign_cores([r[:3] for r in rows], max(r[3] for r in rows))
        run += 1
        if run <= args.warmup:
            continue
        shift = offsets[rank]
        ops = [[str(op.action), times[2 * k] - shift, times[2 * k + 1] - shift] for k, op in enumerate(marks)]
        base_k = 2 * len(marks)
        seen = [[str(a.producer), str(a.consumer), a.src, times[base_k + k] - shift] for k, a in enumerate(arrivals)]
        kept.append((foreign, stages_now, links_now, {"ops": ops, "arrivals": seen, "foreign_cores": foreign}))
        if sum(1 for k in kept if k[0] <= QUIET_CORES) >= args.iterations:
            break
    quiet = [k for k in kept if k[0] <= QUIET_CORES]
    # All ranks take the same decision: the load figures were all-gathered.
    chosen = quiet[: args.iterations] if len(quiet) >= args.iterations else sorted(kept, key=lambda k: k[0])[: args.iterations]
    chosen_ids = {id(k) for k in chosen}
    chosen = [k for k in kept if id(k) in chosen_ids]  # back in run order
    stage_rounds = [k[1] for k in chosen]
    link_rounds = [k[2] for k in chosen]
    iterations = [k[3] for k in chosen]
    disturbed = len(quiet) < args.iterations
    barrier(timeout)
    isolated = stage_round(runners, clock, reps=3, depth=depth)
    stage_costs = stage_timings(stage_rounds, fallback=isolated)
    barrier(timeout)
    layer_costs = layer_timings(model, plan, schedule, rank, batch, seq, device, dtype, clock, reps=5)
    barrier(timeout)
    links = link_timings(link_rounds, numel, elem_bytes)
    losses = [float(loss) for r in runners.values() for loss in r.losses]

    payload = {
        "rank": rank,
        "stages": {s: t.to_dict() for s, t in stage_costs.items()},
        "links": [link.to_dict() for link in links],
        "layers": {kind: t.to_dict() for kind, t in layer_costs.items()},
        "iterations": iterations,
        "losses": losses,
        "tried": len(kept),
        "disturbed": disturbed,
    }
    gathered = [None] * world if rank == 0 else None
    with talking_to(None if rank == 0 else 0, "gathering timings to rank 0"):
        dist.gather_object(payload, gathered, dst=0)
    if rank != 0:
        return
    run = assemble(args, plan, base, schedule, model, gathered, device, dtype, threads, elem_bytes * numel, offsets)
    from pipeplan.validation import build_report, write_report

    report = build_report(run)
    if args.out:
        write_report(report, args.out)


def assemble(args, plan, base, schedule, model, gathered, device, dtype, threads, boundary_bytes, offsets) -> dict:
    """Rank 0: the per-rank payloads as measured timelines (simulator format) plus the profile."""
    stages = {}
    for payload in gathered:
        stages.update({int(s): t for s, t in payload["stages"].items()})
    num_stages = schedule.num_stages
    layers: dict[str, list[dict]] = {}
    for payload in gathered:
        for kind, t in payload["layers"].items():
            layers.setdefault(kind, []).append(t)
    # A kind timed on several ranks (blocks, usually) takes the median of their medians.
    layer_profiles = {
        kind: StageProfile(**{f: statistics.median(t[f] for t in ts) for f in ts[0]}) for kind, ts in layers.items()
    }
    profile = Profile(
        device=device_name(device), backend=args.backend, model=model.name, microbatch_size=plan.microbatch_size,
        seq_len=plan.seq_len or model.seq_len, layers_per_stage=tuple(plan.layers_per_stage),
        stages=tuple(
            StageProfile(**stages[s], send_forward_bytes=boundary_bytes if s < num_stages - 1 else 0.0,
                         send_backward_bytes=boundary_bytes if s > 0 else 0.0, recompute=plan.recompute_of(s))
            for s in range(num_stages)
        ),
        links=tuple(LinkProfile(l["src"], l["dst"], l["latency"], l["bandwidth"], l["send_overhead"])
                    for payload in gathered for l in payload["links"]),
        dtype=str(dtype).replace("torch.", ""),
        layers=layer_profiles,
        boundary_bytes=float(boundary_bytes),
    )
    timelines = []
    for it in range(len(gathered[0]["iterations"])):
        ops, ends = [], {}
        for payload in gathered:
            for action, start, end in payload["iterations"][it]["ops"]:
                ops.append((payload["rank"], action, start, end))
                ends[action] = end
        origin = min(o[2] for o in ops)
        records = [OpRecord(d, _action(a), s - origin, e - origin) for d, a, s, e in ops]
        transfers = []
        for payload in gathered:
            own_ends = sorted(end for _, _, end in payload["iterations"][it]["ops"])
            for producer, consumer, src, seen in payload["iterations"][it]["arrivals"]:
                # The receiver sees a tensor only when it asks for it. Its arrival time is known only
                # if the receiver was already waiting (it asked well before the tensor came); a tensor
                # that was there before the receiver finished its previous op has no known arrival
                # time and gets no transfer record rather than an invented one.
                before = [e for e in own_ends if e <= seen]
                if before and seen - before[-1] < WAITED_S:
                    continue
                start = ends[producer] - origin
                transfers.append(TransferRecord(src, payload["rank"], _action(producer), _action(consumer),
                                                start, max(start, seen - origin), float(boundary_bytes)))
        records.sort(key=lambda r: (r.device, r.start))
        meta = {"schedule": schedule.name, "devices": schedule.num_devices, "microbatches": schedule.num_microbatches,
                "chunks": schedule.chunks, "source": "measured", "iteration": it,
                "foreign_cores": gathered[0]["iterations"][it]["foreign_cores"]}
        timelines.append(Timeline(schedule.num_devices, records, transfers, meta).to_dict())
    return {
        "plan": plan.to_dict(),
        "plan_file": str(Path(args.plan).resolve()),
        "base_dir": str(base),
        "scale": args.scale,
        "backend": args.backend,
        "device": profile.device,
        "dtype": profile.dtype,
        "threads_per_rank": threads,
        "world_size": len(gathered),
        "iterations": len(timelines),
        "iterations_tried": gathered[0]["tried"],
        "disturbed": gathered[0]["disturbed"],
        "warmup": args.warmup,
        "calibration_reps": args.calibration_reps,
        "clock_offsets": offsets,
        "profile": profile.to_dict(),
        "measured_iterations": timelines,
        "losses": [payload["losses"] for payload in gathered if payload["losses"]],
    }


def _action(text: str):
    from simulator.ir import Action

    return Action.parse(text)
