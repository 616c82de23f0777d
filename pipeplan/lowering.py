"""Lowering: loaded specs (model, cluster, plan, schedule) -> the simulator's Workload.

Pure: nothing here reads a file. ``pipeplan.specs`` loads what a plan names and builds a
``Resolved``; ``pipeplan.lower`` does both. Costs come from ``pipeplan.costs``, the network from
the cluster's topology (``pipeplan.topology``).
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

from simulator.ir import Schedule
from simulator.schedules import build_schedule, lookup
from simulator.stage_times import StageTimes
from simulator.workload import Network, StageCost, Workload

from .cluster import ClusterSpec
from .costs import Work, measured_stage_cost, price, rerun_share, stage_work, static_bytes
from .dataparallel import DataParallelOptions, add_training_step
from .errors import SpecError
from .model import ModelSpec
from .p2p import scatter_gather
from .plan import Plan
from .profile import Profile


@dataclass(frozen=True)
class Resolved:
    """A plan with its model, cluster and schedule, checked against each other on construction."""

    model: ModelSpec
    cluster: ClusterSpec
    plan: Plan
    schedule: Schedule

    def __post_init__(self) -> None:
        model, cluster, plan, schedule = self.model, self.cluster, self.plan, self.schedule
        if schedule.forward_only:
            raise SpecError(f"plan.schedule: {plan.schedule} is forward-only (no backward to train with); simulate it "
                            "as serving: pipeplan simulate --inference, or pipeplan.simulate_serving")
        if schedule.num_devices != plan.pp:
            raise SpecError(f"plan.pp: the schedule runs on {schedule.num_devices} devices but pp is {plan.pp}")
        if schedule.num_stages != plan.num_stages:
            raise SpecError(
                f"plan.layers_per_stage: the schedule has {schedule.num_stages} stages "
                f"(pp x chunks), the plan cuts {plan.num_stages}"
            )
        if schedule.num_microbatches != plan.num_microbatches:
            raise SpecError(
                f"plan.num_microbatches: the schedule has {schedule.num_microbatches}, the plan says {plan.num_microbatches}"
            )
        total = model.num_pipeline_layers
        if sum(plan.layers_per_stage) != total:
            raise SpecError(
                f"plan.layers_per_stage: sums to {sum(plan.layers_per_stage)} but {model.name} has {total} pipeline "
                f"layers (embedding + {model.num_layers} blocks + head)"
            )
        gpus = plan.gpus()
        if max(gpus) >= cluster.num_gpus or min(gpus) < 0 or len(set(gpus)) != len(gpus):
            raise SpecError(
                f"plan.placement: GPUs {gpus} do not fit {cluster.name} with {cluster.nodes} node(s) of "
                f"{cluster.gpus_per_node}; raise --nodes or lower pp/dp"
            )
        plan.layout.check_fits(cluster.num_gpus, cluster.gpus_per_node, f"plan ({cluster.name}, {cluster.nodes} node(s))")

    @property
    def seq_len(self) -> int:
        return self.plan.seq_len or self.model.seq_len


@lru_cache(maxsize=64)
def generated_schedule(name: str, p: int, m: int, v: int, costs: StageTimes | None = None) -> Schedule:
    """Generators are pure and schedules immutable, so the planner's many plans per candidate share one.

    ``costs`` order a cost-aware schedule (zb-v, zb-1p, zb-2p; see ``plan_costs``); the others ignore them.
    """
    entry = lookup(name)
    return build_schedule(name, p, m, v, costs if entry is not None and entry.cost_aware else None)


def plan_costs(model: ModelSpec, cluster: ClusterSpec, plan: Plan) -> StageTimes:
    """The stage times a cost-aware schedule of ``plan`` is ordered by: the analytic cost model's F, I, W
    per stage (tensor-parallel collectives and recomputation included, as ``build_workload`` prices them),
    each hop's boundary transfer alone on its link, and W's share of the activations.

    From the plan, model and cluster only (never a measured profile), so a plan file regenerates the
    same order wherever it is loaded.
    """
    seq_len = plan.seq_len or model.seq_len
    stages = [price(stage_work(model, plan.stage_layers(k), plan.microbatch_size, seq_len, plan.recompute_mode(k),
                               plan.tp, plan.sequence_parallel), cluster.gpu, cluster.intra)
              for k in range(plan.num_stages)]
    device_of = generated_schedule(plan.schedule, plan.pp, plan.num_microbatches, plan.chunks).stage_to_device
    stages, network = pipeline_messages(plan, cluster, tuple(stages), cluster.network(plan.gpus()))
    comm = tuple(network.transfer_seconds(device_of[k], device_of[k + 1], stages[k].send_forward_bytes)
                 for k in range(plan.num_stages - 1))
    held = max((c.weight_grad_bytes / c.activation_bytes for c in stages if c.activation_bytes > 0), default=0.5)
    return StageTimes(tuple(c.forward for c in stages), tuple(c.backward_input for c in stages),
                      tuple(c.backward_weight for c in stages), comm, min(1.0, held))


def pipeline_messages(plan: Plan, cluster: ClusterSpec, stages: tuple[StageCost, ...],
                      network: Network) -> tuple[tuple[StageCost, ...], Network]:
    """The stages' pipeline messages and the links they take: as given, or scattered over the tensor
    ranks and gathered over NVLink with ``plan.scatter_gather_p2p`` (``pipeplan.p2p``)."""
    if not plan.scatter_gather_p2p:
        return stages, network
    return scatter_gather(stages, network, plan.tp, cluster.intra)


def stage_works(r: Resolved) -> list[Work]:
    """Every stage's work for one micro-batch, in stage order (the sums of its layers' ``layer_work``)."""
    plan = r.plan
    return [stage_work(r.model, plan.stage_layers(k), plan.microbatch_size, r.seq_len, plan.recompute_mode(k),
                       plan.tp, plan.sequence_parallel)
            for k in range(plan.num_stages)]


def _rerun_share(r: Resolved, stage: int) -> float:
    """The share of ``stage``'s forward that full recomputation runs again (its blocks'), by the cost model."""
    plan = r.plan
    work = stage_work(r.model, plan.stage_layers(stage), plan.microbatch_size, r.seq_len, "full", plan.tp,
                      plan.sequence_parallel)
    return rerun_share(work, r.cluster.gpu, r.cluster.intra)


def static_per_device(r: Resolved, works: list[Work]) -> tuple[float, ...]:
    """Weights, gradients and optimizer state on each pipeline device: the sum over the stages it holds."""
    plan = r.plan
    static = [0.0] * plan.pp
    for k, work in enumerate(works):
        static[r.schedule.stage_to_device[k]] += static_bytes(work.params, plan.dp, plan.distributed_optimizer)
    return tuple(static)


def build_workload(r: Resolved, profile: Profile | None = None,
                   dp_options: DataParallelOptions = DataParallelOptions()) -> Workload:
    """The simulator workload of ``r``: stage costs, static memory, capacity, network, schedule.

    With a ``profile`` (see ``pipeplan.profile``) op times, boundary bytes and the measured links
    replace the analytic cost model. The schedule is a copy with each stage's optimizer step added
    and, with dp > 1, its gradient reduction (and parameter all-gather), priced over its
    data-parallel group (``pipeplan.dataparallel``).
    """
    plan, s = r.plan, r.seq_len
    works = stage_works(r)
    stages = tuple(price(w, r.cluster.gpu, r.cluster.intra) for w in works)  # TP groups stay on a node's NVLink
    network = r.cluster.network(plan.gpus())
    if profile is not None:
        profile.check_plan(r.model.name, plan.layers_per_stage, plan.microbatch_size, s)
        kinds = [[r.model.layer_kind(i) for i in plan.stage_layers(k)] for k in range(plan.num_stages)]
        stages = tuple(measured_stage_cost(c, m, plan.recompute_of(k), _rerun_share(r, k))
                       for k, (c, m) in enumerate(zip(stages, profile.stage_profiles(kinds))))
        network = profile.network(network)
    stages, network = pipeline_messages(plan, r.cluster, stages, network)
    # Parameters per GPU: a work already counts one tensor rank's share (costs.layer_work).
    params = [w.params for w in works]
    schedule, stages, network = add_training_step(r, params, stages, network, dp_options)
    if profile is not None:  # measured optimizer steps and gradient reductions, where the profile has them
        stages = profile.with_measured_step(stages, plan.layers_per_stage)
    return Workload(
        schedule=schedule,
        stages=stages,
        network=network,
        static_bytes=static_per_device(r, works),
        capacity_bytes=tuple(r.cluster.gpu.memory_bytes for _ in range(plan.pp)),
        blocking_sends=plan.blocking_p2p,
    )
