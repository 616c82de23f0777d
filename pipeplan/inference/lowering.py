"""Lowering a serving plan: (model, cluster, plan, request mix) -> a forward-only simulator ``Workload``.

Pure: nothing here reads a file (``pipeplan.inference.api`` loads what a plan names). Each pass of
the run (``passes.plan_passes``) is priced per stage by ``costs.stage_pass_cost``; passes of equal
shape share one cost class (``Workload.pass_class``/``pass_stages``). A batch's last pass frees the
cache the batch wrote on each stage (``StageCost.freed_kept_bytes``). Static memory is the weights.
"""
from __future__ import annotations

from dataclasses import dataclass, replace

from simulator.ir import Schedule
from simulator.schedules import lookup
from simulator.workload import StageCost, Workload

from ..cluster import ClusterSpec
from ..errors import SpecError
from ..model import ModelSpec
from ..plan import Plan
from .costs import kv_bytes_per_token_per_layer, stage_blocks, stage_pass_cost, weight_bytes
from .passes import ServingPasses
from .requests import ServingSpec


@dataclass(frozen=True)
class ServingResolved:
    """A serving plan with its model, cluster, request mix, passes and schedule, checked against each other."""

    model: ModelSpec
    cluster: ClusterSpec
    plan: Plan
    serving: ServingSpec
    passes: ServingPasses
    schedule: Schedule

    def __post_init__(self) -> None:
        model, cluster, plan, schedule = self.model, self.cluster, self.plan, self.schedule
        if not schedule.forward_only:
            raise SpecError(f"plan.schedule: {plan.schedule} trains (it has a backward); serve with inference, "
                            "continuous-decode or a CSV of F actions only")
        if schedule.num_devices != plan.pp or schedule.num_stages != plan.num_stages:
            raise SpecError(f"plan.pp: the schedule runs {schedule.num_stages} stages on {schedule.num_devices} "
                            f"devices, the plan cuts {plan.num_stages} stages for pp = {plan.pp}")
        if schedule.num_microbatches != self.passes.num_microbatches:
            raise SpecError(f"plan.num_microbatches: the schedule runs {schedule.num_microbatches} micro-batches, "
                            f"the request batches make {self.passes.num_microbatches} passes")
        if sum(plan.layers_per_stage) != model.num_pipeline_layers:
            raise SpecError(f"plan.layers_per_stage: sums to {sum(plan.layers_per_stage)} but {model.name} has "
                            f"{model.num_pipeline_layers} pipeline layers (embedding + {model.num_layers} blocks + head)")
        gpus = plan.gpus()
        if max(gpus) >= cluster.num_gpus or min(gpus) < 0 or len(set(gpus)) != len(gpus):
            raise SpecError(f"plan.placement: GPUs {gpus} do not fit {cluster.name} with {cluster.nodes} node(s) of "
                            f"{cluster.gpus_per_node}; raise --nodes or lower pp/dp")
        plan.layout.check_fits(cluster.num_gpus, cluster.gpus_per_node, f"plan ({cluster.name}, {cluster.nodes} node(s))")


def serving_schedule(plan: Plan, passes: ServingPasses) -> Schedule | None:
    """The generated schedule of a serving plan (None for a custom CSV, which the caller reads).

    ``inference`` runs one pass per micro-batch, so every request must be a prefill alone (output 1 token)
    in one round; ``continuous-decode`` cycles the slots through all their passes.
    """
    entry = lookup(plan.schedule)
    if entry is None:
        return None
    if not entry.forward_only:
        raise SpecError(f"plan.schedule: {plan.schedule} trains (it has a backward); serve with "
                        "inference or continuous-decode")
    if entry.recurrent:
        return entry.build(plan.pp, plan.num_microbatches, plan.chunks, passes=passes.passes_per_stream)
    check_one_pass(plan.schedule, passes)
    return entry.build(plan.pp, plan.num_microbatches, plan.chunks)


def check_one_pass(name: str, passes: ServingPasses) -> None:
    """A schedule without recurrence runs each micro-batch once: one batch per slot, one pass per batch."""
    if any(n != 1 for n in passes.passes_per_stream):
        longest = max(r.output_len for r in passes.requests)
        raise SpecError(f"plan.schedule: {name} runs each micro-batch once (a prefill, the first token); generating "
                        f"{longest} tokens per request or serving more than one batch per micro-batch needs "
                        "--schedule continuous-decode")


def build_serving_workload(r: ServingResolved) -> Workload:
    """The forward-only workload of ``r`` (see the module docstring)."""
    plan, model, cluster = r.plan, r.model, r.cluster
    layers = [plan.stage_layers(k) for k in range(plan.num_stages)]
    kv_per_token = [stage_blocks(model, lay) * kv_bytes_per_token_per_layer(model, plan.tp) for lay in layers]
    written = {}  # tokens each batch writes to its cache
    for p in r.passes.passes:
        written[p.batch] = written.get(p.batch, 0) + p.shape.num_tokens
    classes: dict[tuple, int] = {}
    costs: list[tuple[StageCost, ...]] = []
    shapes: dict = {}
    pass_class = [0] * r.passes.num_microbatches
    for p in r.passes.passes:
        freed = written[p.batch] if p.last else 0
        key = (p.shape, freed)
        if key not in classes:
            if p.shape not in shapes:
                shapes[p.shape] = tuple(stage_pass_cost(model, cluster.gpu, cluster.intra, plan.tp, lay, p.shape)
                                        for lay in layers)
            classes[key] = len(costs)
            costs.append(tuple(replace(c, freed_kept_bytes=freed * kv) if freed else c
                               for c, kv in zip(shapes[p.shape], kv_per_token)))
        pass_class[p.microbatch] = classes[key]
    static = [0.0] * plan.pp
    for k, lay in enumerate(layers):
        static[r.schedule.stage_to_device[k]] += weight_bytes(model, lay, plan.tp)
    return Workload(
        schedule=r.schedule,
        stages=costs[0],
        network=cluster.network(plan.gpus()),
        static_bytes=tuple(static),
        capacity_bytes=tuple(cluster.gpu.memory_bytes for _ in range(plan.pp)),
        blocking_sends=plan.blocking_p2p,
        pass_class=tuple(pass_class),
        pass_stages=tuple(costs),
    )
