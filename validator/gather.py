"""Rank 0: the ranks' payloads as one ``Measurements`` (measured timelines and a calibration profile).

Each rank sends rank 0 a payload (``validator.run``): its stages' and single layers' op costs
(``StageProfile``), the links it sends on (``LinkProfile``), the raw calibration timings of every kept
round (whose scatter becomes the profile's ``spread``), and per kept iteration its ops' start and end
and the arrivals it saw, on rank 0's clock. Nothing here simulates; the report is built from the
result elsewhere (``pipeplan.validation.report``).

With tensor or data parallelism only replica (0, 0)'s ranks (``validator.placement``) make the profile
and the timelines, each as its pipeline device, as the simulator times that replica; the other
replicas' losses (data ranks' own micro-batches) and load figures count as well.
"""
from __future__ import annotations

import dataclasses
import os
import platform
import statistics
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from pipeplan.bands.calibration import estimate_spread
from pipeplan.model import ModelSpec
from pipeplan.plan import Plan
from pipeplan.profile import Profile, StageProfile
from pipeplan.validation.measurements import Measurements
from pipeplan.validation.options import ValidateOptions
from simulator.ir import Action, Schedule
from simulator.kinds import is_compute
from simulator.timeline import OpRecord, Timeline, TransferRecord

# A receive that returned this long after the receiver's previous op ended was waited for.
WAITED_S = 50e-6
OP_COSTS = ("forward", "backward", "backward_input", "backward_weight")


@dataclass(frozen=True)
class RankContext:
    """What every rank set up before measuring: the plan as run (scaled) and where it runs."""

    plan_path: str
    plan: Plan
    base: Path
    schedule: Schedule
    model: ModelSpec
    device: torch.device
    dtype: torch.dtype
    threads: int
    options: ValidateOptions
    serving: Any = None  # a serving plan's ``ServingResolved`` (which pass each micro-batch is); None: training


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


def _profile(context: RankContext, gathered: list[dict], boundary_bytes: float) -> Profile:
    plan, schedule, model = context.plan, context.schedule, context.model
    stages: dict[int, StageProfile] = {}
    layers: dict[str, list[StageProfile]] = {}
    for payload in gathered:
        stages.update(payload["stages"])
        for kind, cost in payload["layers"].items():
            layers.setdefault(kind, []).append(cost)
    # A kind timed on several ranks (blocks, usually) takes the median of the ranks' means.
    layer_profiles = {
        kind: StageProfile(**{f: statistics.median(getattr(c, f) for c in costs) for f in OP_COSTS})
        for kind, costs in layers.items()
    }
    last = schedule.num_stages - 1
    rounds = range(min(len(payload.get("stage_rounds", ())) for payload in gathered))
    spread = estimate_spread(
        # Compute ops only: the replay's gradient reductions (``calibrate.replay_round``) wait on other replicas.
        [{s: {k: v for k, v in kinds.items() if is_compute(k)} for payload in gathered
          for s, kinds in payload["stage_rounds"][r].items()} for r in rounds],
        [{key: values for payload in gathered for key, values in payload["link_rounds"][r].items()} for r in rounds],
        stage_devices=schedule.stage_to_device,
    ) if rounds else None
    return Profile(
        device=device_name(context.device), backend=context.options.backend, model=model.name,
        microbatch_size=plan.microbatch_size, seq_len=plan.seq_len or model.seq_len,
        layers_per_stage=tuple(plan.layers_per_stage),
        stages=tuple(
            dataclasses.replace(stages[s], send_forward_bytes=boundary_bytes if s < last else 0.0,
                                send_backward_bytes=boundary_bytes if s > 0 else 0.0, recompute=plan.recompute_of(s))
            for s in range(schedule.num_stages)
        ),
        links=tuple(link for payload in gathered for link in payload["links"]),
        collectives=tuple(c for payload in gathered for c in payload.get("collectives", ())),
        dtype=str(context.dtype).replace("torch.", ""),
        layers=layer_profiles,
        boundary_bytes=float(boundary_bytes),
        spread=spread,
    )


def _timeline(schedule: Schedule, gathered: list[dict], it: int, boundary_bytes: float) -> Timeline:
    """Iteration ``it`` of every rank as one timeline, times from its first op."""
    ops, ends = [], {}
    for payload in gathered:
        for action, start, end in payload["iterations"][it]["ops"]:
            ops.append((payload.get("device", payload["rank"]), action, start, end))
            ends[action] = end
    origin = min(o[2] for o in ops)
    records = [OpRecord(d, Action.parse(a), s - origin, e - origin) for d, a, s, e in ops]
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
            transfers.append(TransferRecord(src, payload.get("device", payload["rank"]), Action.parse(producer),
                                            Action.parse(consumer),
                                            start, max(start, seen - origin), float(boundary_bytes)))
    records.sort(key=lambda r: (r.device, r.start))
    meta = {"schedule": schedule.name, "devices": schedule.num_devices, "microbatches": schedule.num_microbatches,
            "chunks": schedule.chunks, "source": "measured", "iteration": it,
            **{k: v for k, v in gathered[0]["iterations"][it].items() if k not in ("ops", "arrivals")}}
    return Timeline(schedule.num_devices, records, transfers, meta)


def assemble(context: RankContext, gathered: list[dict], boundary_bytes: float, offsets: list[float]) -> Measurements:
    """Rank 0: the per-rank payloads (in rank order) as the run's measurements."""
    options = context.options
    everyone = gathered
    gathered = sorted((p for p in everyone if p.get("replica", 0) == 0), key=lambda p: p.get("device", p["rank"]))
    return Measurements(
        plan=context.plan,
        profile=_profile(context, gathered, boundary_bytes),
        iterations=tuple(_timeline(context.schedule, gathered, it, boundary_bytes)
                         for it in range(len(gathered[0]["iterations"]))),
        # Tensor rank 0 of every data rank: the others compute the same losses.
        losses=tuple(tuple(payload["losses"]) for payload in everyone
                     if payload["losses"] and payload.get("tensor_rank", 0) == 0),
        plan_file=str(Path(context.plan_path).resolve()),
        base_dir=str(context.base),
        scale=options.scale,
        backend=options.backend,
        threads_per_rank=context.threads,
        world_size=len(everyone),
        iterations_tried=gathered[0]["tried"],
        disturbed=gathered[0]["disturbed"],
        left_out=gathered[0]["left_out"],
        warmup=options.warmup,
        calibration_reps=options.calibration_reps,
        clock_offsets=tuple(offsets),
        runtime=options.runtime,
        pass_costs=_pass_costs(gathered),
        generated=tuple(tuple(tokens) for _, tokens in sorted(
            (r, t) for payload in gathered for r, t in payload.get("generated", {}).items())),
        deterministic=all(payload.get("consistent", True) for payload in gathered),
    )


def _pass_costs(gathered: list[dict]) -> tuple[tuple[float, ...], ...]:
    """A serving run's mean replayed time of every F, per stage, indexed by micro-batch (empty for training)."""
    merged: dict[int, dict[int, float]] = {}
    for payload in gathered:
        merged.update(payload.get("pass_costs", {}))
    if not merged:
        return ()
    size = 1 + max(m for costs in merged.values() for m in costs)
    return tuple(tuple(merged[s].get(m, 0.0) for m in range(size)) for s in sorted(merged))
