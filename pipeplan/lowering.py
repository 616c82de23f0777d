"""The one place where the domain meets the engine: (model, cluster, plan) -> simulator Workload."""
from __future__ import annotations

from dataclasses import dataclass, replace
from functools import lru_cache
from pathlib import Path

from simulator.checker import check_schedule
from simulator.ir import Schedule, from_csv
from simulator.schedules import build_schedule
from simulator.workload import StageCost, Workload

from .cluster import ClusterSpec, load_cluster
from .errors import SpecError
from .model import ModelSpec, load_model
from .plan import Plan
from .profile import Profile, StageProfile, load_profile

BYTES_PER_PARAM_WEIGHTS_GRADS = 2 + 4  # bf16 weights + fp32 gradients (Megatron mixed precision)
BYTES_PER_PARAM_OPTIMIZER = 12  # fp32 master weights, Adam m and v


def bytes_per_param(dp: int, distributed_optimizer: bool) -> float:
    """18 bytes per parameter; a distributed optimizer shards the 12 optimizer bytes over dp."""
    return BYTES_PER_PARAM_WEIGHTS_GRADS + BYTES_PER_PARAM_OPTIMIZER / (dp if distributed_optimizer else 1)


@dataclass(frozen=True)
class Resolved:
    """A plan with its model, cluster and schedule loaded and checked against each other."""

    model: ModelSpec
    cluster: ClusterSpec
    plan: Plan
    schedule: Schedule

    @property
    def seq_len(self) -> int:
        return self.plan.seq_len or self.model.seq_len


def plan_schedule(plan: Plan, base_dir: str | Path = ".") -> Schedule:
    if plan.schedule == "custom":
        path = Path(base_dir) / plan.schedule_csv if not Path(plan.schedule_csv).is_absolute() else Path(plan.schedule_csv)
        if not path.is_file():
            raise SpecError(f"plan.schedule_csv: file {str(path)!r} does not exist")
        schedule = from_csv(path.read_text(), name="custom")
        check_schedule(schedule)
        return schedule
    return generated_schedule(plan.schedule, plan.pp, plan.num_microbatches, plan.chunks)


@lru_cache(maxsize=64)
def generated_schedule(name: str, p: int, m: int, v: int) -> Schedule:
    """Generators are pure and schedules immutable, so the planner's many plans per candidate share one."""
    return build_schedule(name, p, m, v)


def _beside(spec: object, base_dir: str | Path) -> object:
    if isinstance(spec, str) and not Path(spec).is_absolute() and (Path(base_dir) / spec).is_file():
        return str(Path(base_dir) / spec)
    return spec


def resolve(model: ModelSpec | str | dict, cluster: ClusterSpec | str | dict, plan: Plan,
            base_dir: str | Path = ".") -> Resolved:
    """Load the specs a plan names and check that model, cluster, plan and schedule agree.

    Spec files named by a relative path are looked up next to the plan file (``base_dir``) first.
    """
    model = load_model(_beside(model, base_dir))
    cluster = load_cluster(_beside(cluster, base_dir), plan.nodes)
    schedule = plan_schedule(plan, base_dir)
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
    return Resolved(model, cluster, plan, schedule)


def stage_cost(model: ModelSpec, cluster: ClusterSpec, plan: Plan, stage: int, seq_len: int) -> StageCost:
    """Seconds and bytes of one stage for one micro-batch (see ``ModelSpec`` for the per-layer formulas).

    Time = FLOPs / (peak x achieved fraction at b·s tokens) + a per-layer overhead. Full
    recomputation stores only each layer's input and runs the forward again before the input
    gradient (I, or B when the backward is not split).
    """
    b = plan.microbatch_size
    gpu = cluster.gpu
    rate = gpu.peak_flops * gpu.achieved_fraction(b * seq_len)
    layers = [model.layer_cost(i, b, seq_len) for i in plan.stage_layers(stage)]
    overhead = gpu.op_overhead_s * len(layers)
    forward = sum(c.forward_flops for c in layers) / rate + overhead
    backward_input = sum(c.input_grad_flops for c in layers) / rate + overhead
    backward_weight = sum(c.weight_grad_flops for c in layers) / rate + overhead
    recompute = plan.recompute_of(stage)
    if recompute:
        backward_input += forward
    activation = sum(c.recompute_bytes if recompute else c.activation_bytes for c in layers)
    weight_grad = min(activation, sum(c.weight_grad_bytes for c in layers))
    previous_boundary = (
        model.layer_cost(plan.stage_layers(stage).start - 1, b, seq_len).boundary_bytes if stage > 0 else 0.0
    )
    return StageCost(
        forward=forward,
        backward_input=backward_input,
        backward_weight=backward_weight,
        send_forward_bytes=layers[-1].boundary_bytes,
        send_backward_bytes=previous_boundary,
        activation_bytes=activation,
        weight_grad_bytes=weight_grad,
    )


def stage_params(model: ModelSpec, plan: Plan, stage: int, seq_len: int) -> float:
    return sum(model.layer_cost(i, 1, seq_len).params for i in plan.stage_layers(stage))


def measured_stage_cost(analytic: StageCost, measured: StageProfile, recompute: bool = False) -> StageCost:
    """A stage with measured op times and boundary bytes; memory stays the model's.

    With recomputation the backward pays one more forward, as in ``stage_cost``. A stage measured
    with it (``measured.recompute``, see ``pipeplan.profile``) already holds that forward in B and I;
    one measured without (every single-layer timing) gets the measured forward added. A stage
    measured with it but priced without has the forward taken off, so profiles stay reusable.
    """
    extra = measured.forward * (int(recompute) - int(measured.recompute))
    return replace(
        analytic, forward=measured.forward, backward=measured.backward + extra,
        backward_input=measured.backward_input + extra, backward_weight=measured.backward_weight,
        send_forward_bytes=measured.send_forward_bytes, send_backward_bytes=measured.send_backward_bytes,
    )


def lower(model: ModelSpec | str | dict, cluster: ClusterSpec | str | dict, plan: Plan,
          base_dir: str | Path = ".", profile: Profile | str | dict | None = None) -> tuple[Workload, Resolved]:
    """Build the simulator workload for ``plan``: stage costs, static memory, capacity, network, schedule.

    With a ``profile`` (see ``pipeplan.profile``) op times, boundary bytes and the measured links
    replace the analytic cost model.
    """
    r = resolve(model, cluster, plan, base_dir)
    s = r.seq_len
    stages = tuple(stage_cost(r.model, r.cluster, plan, k, s) for k in range(plan.num_stages))
    network = r.cluster.network(plan.gpus())
    profile = load_profile(profile)
    if profile is not None:
        profile.check_plan(r.model.name, plan.layers_per_stage, plan.microbatch_size, s)
        kinds = [[r.model.layer_kinds[i] for i in plan.stage_layers(k)] for k in range(plan.num_stages)]
        stages = tuple(measured_stage_cost(c, m, plan.recompute_of(k))
                       for k, (c, m) in enumerate(zip(stages, profile.stage_profiles(kinds))))
        network = profile.network(network)
    per_param = bytes_per_param(plan.dp, plan.distributed_optimizer)
    static = [0.0] * plan.pp
    for k in range(plan.num_stages):
        static[r.schedule.stage_to_device[k]] += stage_params(r.model, plan, k, s) * per_param
    workload = Workload(
        schedule=r.schedule,
        stages=stages,
        network=network,
        static_bytes=tuple(static),
        capacity_bytes=tuple(r.cluster.gpu.memory_bytes for _ in range(plan.pp)),
    )
    return workload, r
