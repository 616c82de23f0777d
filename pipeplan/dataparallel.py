"""The end of a training iteration in the simulator: gradient reduction, optimizer step, parameter all-gather.

Every lowered plan trains, so lowering adds per stage on its device an ``OPTIMIZER`` step; with
dp > 1 also the data-parallel collectives (Megatron-LM's DDP and distributed optimizer, Narayanan
et al. SC'21; Megatron-LM ``distributed/param_and_grad_buffer.py``):

* ``REDUCE_GRAD(s)`` on the communication stream, after the stage's last backward: an all-reduce of
  its gradients over its data-parallel group (``Layout.data_group``), or a reduce-scatter with the
  distributed optimizer. Gradients are reduced in fp32 (``GRAD_BYTES``): Megatron accumulates and
  reduces the ``main_grad`` buffer in fp32 for bf16 training (``accumulate_allreduce_grads_in_fp32``),
  the 4 gradient bytes of the 18 per parameter in shared REFERENCE; a model with Megatron-LM's fp16
  code of 2021-22 (``ModelSpec.kernels``) reduces fp16 ones (``megatron_kernels.FP16_GRAD_BYTES``). With ``--overlap-grad-reduce``
  each stage-chunk (Megatron's per-model-chunk buffers) reduces when its last backward ends and
  overlaps the device's remaining backwards, and a bucketed stage's buckets start still earlier,
  each as soon as the last backward has filled it (``pipeplan.buckets``: Megatron's default cuts
  stage 0 only, into max(40 M, 1 M x dp) parameters). A plan with ``overlap_grad_reduce`` false
  starts every reduction after the device's last backward, unbucketed (Megatron-LM before 2023:
  ``allreduce_gradients`` after the whole forward-backward).
* ``OPTIMIZER(s)`` on the compute stream after the stage's last backward (and its reduction, with
  dp > 1): Adam on the stage's (shard of) parameters, memory-bound, priced as the bytes it reads and
  writes (``OPTIMIZER_BYTES`` per parameter; Megatron-LM's fp16 step of 2021-22 its five passes,
  ``megatron_kernels.FP16_STEP_BYTES``) at the rate memory-bound kernels stream from HBM
  (``GPUSpec.kernel_bandwidth``, at most ``hbm_bandwidth``). At dp = 1 it is the only action added.
* ``GATHER_PARAMS(s)`` with the distributed optimizer: the all-gather of the updated bf16 parameters
  (``PARAM_BYTES``) over the same group after the step (``--overlap-param-gather`` off).

Collectives are priced by ``collectives.group_collective`` over the group's ring; the rings of the
other tensor ranks of the same pipeline rank run at the same time on the same ports and are
counted with ``collectives.port_sharing`` (the simulated replica is tensor rank 0, data rank 0).
The iteration ends when the last device finishes its last step or gather.
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from functools import lru_cache

from simulator.ir import Action, Schedule, make_schedule
from simulator.kinds import BACKWARD_WEIGHT, FULL_BACKWARD, GATHER_PARAMS, OPTIMIZER, REDUCE_GRAD
from simulator.workload import Bucket, Collective, Network, StageCost

from .buckets import EVERY, FIRST, bucketed, gradient_buckets, last_weight_kind, megatron_bucket_params
from .cluster import ClusterSpec
from .collectives import ALL_GATHER, ALL_REDUCE, REDUCE_SCATTER, RING, TREE, group_collective, port_sharing
from .cluster import GPUSpec
from .costs import GRAD_BYTES, OPTIMIZER_STATE_BYTES, WEIGHT_BYTES, layer_work, price
from .errors import SpecError
from .megatron_kernels import FP16_GRAD_BYTES, FP16_STEP_BYTES, FUSED
from .parallel import Layout

PARAM_BYTES = WEIGHT_BYTES  # bf16 model weights, what the distributed optimizer all-gathers
# Adam step per parameter: reads the fp32 gradient (4) and fp32 master weight, m and v (12), writes
# master, m and v (12) and the bf16 model weight (2).
OPTIMIZER_BYTES = GRAD_BYTES + 2 * OPTIMIZER_STATE_BYTES + WEIGHT_BYTES


@dataclass(frozen=True)
class DataParallelOptions:
    """How a plan's gradients are reduced and stepped, beyond the plan's own ``overlap_grad_reduce``.

    ``bucket_params``: parameters per gradient bucket (``--ddp-bucket-size``); None:
    Megatron's default max(40 M, 1 M x dp); 0: one bucket per stage-chunk. ``bucketed_stages``:
    "first" (Megatron: stage 0 only) or "every" (PyTorch DDP). ``algorithm``: ring or tree (all-reduce
    only). ``optimizer_step``: False leaves the OPTIMIZER actions out, to compare with a run that
    times none (the validator's measured iteration ends with its last backward)."""

    algorithm: str = RING
    optimizer_step: bool = True
    bucket_params: int | None = None
    bucketed_stages: str = FIRST

    def __post_init__(self) -> None:
        for flag in ("optimizer_step",):
            if not isinstance(getattr(self, flag), bool):
                raise SpecError(f"{flag}: must be true or false (got {getattr(self, flag)!r})")
        if self.algorithm not in (RING, TREE):
            raise SpecError(f"algorithm: unknown {self.algorithm!r}; choose ring or tree")
        size = self.bucket_params
        if size is not None and (isinstance(size, bool) or not isinstance(size, int) or size < 0):
            raise SpecError(f"bucket_params: a whole number of parameters >= 0, 0 for one bucket per stage "
                            f"(got {size!r})")
        if self.bucketed_stages not in (FIRST, EVERY):
            raise SpecError(f"bucketed_stages: {self.bucketed_stages!r}; choose first (Megatron) or every (DDP)")


def reduction_order(schedule: Schedule, device: int, overlap: bool) -> list[int]:
    """The device's stages in the order their gradients are reduced.

    With overlap, by when each stage's last backward comes in the device's list; without, the
    stage whose backward comes last goes first, so every reduction queued behind it on the
    communication stream starts after the device's last backward.
    """
    last: dict[int, int] = {}
    for i, action in enumerate(schedule.simulated_actions(device)):
        if action.kind in (FULL_BACKWARD, BACKWARD_WEIGHT):
            last[action.stage] = i
    order = sorted(last, key=last.__getitem__)
    return order if overlap else order[-1:] + order[:-1]


def with_step_actions(schedule: Schedule, dp: int, distributed_optimizer: bool, overlap: bool = True,
                      step: bool = True) -> Schedule:
    """A copy of ``schedule`` with each stage's OPTIMIZER appended (unless not ``step``), after its
    REDUCE_GRAD when dp > 1 (and followed by its GATHER_PARAMS with the distributed optimizer).

    The generated schedule stays as it is (generators are pure and cached); kinds the schedule
    already lists for a stage (a custom CSV's REDUCE_GRAD) are not added twice.
    """
    # Each stream runs its own actions in list order; the compute stream's (OPTIMIZER) are listed before the
    # communication stream's, the order the engine's columns keep them in (``simulator.compile``).
    kinds = ([OPTIMIZER] if step else []) + ([REDUCE_GRAD] if dp > 1 else [])
    kinds += [GATHER_PARAMS] if dp > 1 and distributed_optimizer and step else []
    rows = []
    for device in range(schedule.num_devices):
        acts = list(schedule.device_actions[device])
        present = {(a.stage, a.kind) for a in acts if a.microbatch is None}
        order = reduction_order(schedule, device, overlap)
        for kind in kinds:
            acts += [Action(s, kind, None) for s in order if (s, kind) not in present]
        rows.append(acts)
    return make_schedule(rows, schedule.stage_to_device, schedule.num_microbatches, schedule.name, schedule.chunks)


def optimizer_bytes(kernels: str = FUSED) -> float:
    """Bytes per parameter the optimizer step moves: fused Adam over fp32 state, or Megatron-LM's fp16
    step of 2021-22 for a model with its ``kernels``."""
    return OPTIMIZER_BYTES if kernels == FUSED else FP16_STEP_BYTES


def reduced_grad_bytes(kernels: str = FUSED) -> float:
    """Bytes per parameter of the gradient the data-parallel group reduces: fp32, or fp16 in Megatron-LM's
    fp16 runs of 2021-22 (``kernels``)."""
    return GRAD_BYTES if kernels == FUSED else FP16_GRAD_BYTES


def optimizer_seconds(params: float, dp: int, distributed_optimizer: bool, gpu: GPUSpec,
                      kernels: str = FUSED) -> float:
    """The optimizer step over ``params`` parameters (a 1/dp shard with the distributed optimizer):
    ``optimizer_bytes`` each, streamed at the memory-bound kernels' rate, never above ``hbm_bandwidth``
    (a CPU's ``kernel_bandwidth`` is its rate from cache, which a pass over all the state does not see)."""
    rate = min(gpu.hbm_bandwidth, gpu.kernel_bandwidth or gpu.hbm_bandwidth)
    return params / (dp if distributed_optimizer else 1) * optimizer_bytes(kernels) / rate


def stage_collectives(cluster: ClusterSpec, layout: Layout, device: int, params: float, distributed: bool,
                      algorithm: str, grad_bytes: float = GRAD_BYTES
                      ) -> tuple[tuple[Collective, ...], tuple[tuple[str, float], ...]]:
    """A stage's data-parallel collectives (its gradient reduction of ``grad_bytes`` per parameter, then
    the parameter gather with the distributed optimizer) over pipeline rank ``device``'s data group, and
    the capacity of every port they cross: the group's rings priced once per unit of bytes
    (``_unit_collectives``, cached) and scaled, since a ring's bytes are linear in the bytes reduced and
    nothing else depends on them."""
    units, ports = _unit_collectives(cluster, layout, device, distributed, algorithm)
    sizes = (grad_bytes, PARAM_BYTES)
    return tuple(replace(unit, nbytes=unit.nbytes * params * size) for unit, size in zip(units, sizes)), ports


@lru_cache(maxsize=1024)
def _unit_collectives(cluster: ClusterSpec, layout: Layout, device: int, distributed: bool,
                      algorithm: str) -> tuple[tuple[Collective, ...], tuple[tuple[str, float], ...]]:
    """``stage_collectives`` for one byte per parameter: pricing a 2048-replica ring walks thousands of
    ports, and a planner search simulates hundreds of splits over the same groups."""
    group = layout.data_group(device)
    shared = port_sharing(cluster, [layout.data_group(device, t) for t in range(layout.tp)])
    grad_kind = REDUCE_SCATTER if distributed else ALL_REDUCE
    out = [group_collective(cluster, group, grad_kind, 1.0, shared, algorithm=algorithm)]
    if distributed:
        out.append(group_collective(cluster, group, ALL_GATHER, 1.0, shared))
    ports = {port: cluster.capacity(port) for c in out for port in c.path.ports}
    return tuple(out), tuple(ports.items())


def stage_buckets(r, stage: int, options: DataParallelOptions) -> tuple[Bucket, ...]:
    """Stage ``stage``'s gradient buckets (``pipeplan.buckets``), () when it is one bucket: from each
    layer's parameters on one GPU and its analytic time in the stage's last weight-gradient op."""
    size = megatron_bucket_params(r.plan.dp) if options.bucket_params is None else options.bucket_params
    if not size or not bucketed(stage, options.bucketed_stages):
        return ()
    schedule, plan, model = r.schedule, r.plan, r.model
    kind = last_weight_kind(schedule.simulated_actions(schedule.stage_to_device[stage]), stage)
    if kind is None:
        return ()
    works = [layer_work(model, i, plan.microbatch_size, r.seq_len, plan.recompute_mode(stage), plan.tp,
                        plan.sequence_parallel) for i in plan.stage_layers(stage)]
    costs = [price(w, r.cluster.gpu, r.cluster.intra) for w in works]
    seconds = [c.backward_weight if kind == BACKWARD_WEIGHT else c.full_backward for c in costs]
    return gradient_buckets([w.params for w in works], seconds, size)


def add_training_step(r, params: list[float], stages: tuple[StageCost, ...], network: Network,
                      options: DataParallelOptions = DataParallelOptions()
                      ) -> tuple[Schedule, tuple[StageCost, ...], Network]:
    """``r`` (a ``lowering.Resolved``) with its optimizer steps and, when dp > 1, its data-parallel
    collectives: the schedule, the stage costs and the network's ports.

    ``params[k]`` is stage k's parameter count on one GPU. Ports the collectives cross join the
    network's capacity table (a port the pipeline links already have keeps its capacity there).
    """
    plan, cluster, layout = r.plan, r.cluster, r.plan.layout
    distributed = plan.distributed_optimizer
    if options.algorithm == TREE and distributed and plan.dp > 1:
        raise SpecError("algorithm: NCCL's tree runs all-reduce only; the distributed optimizer reduce-scatters")
    capacity: dict[str, float] = {}
    new_stages = []
    for k, cost in enumerate(stages):
        step = optimizer_seconds(params[k], plan.dp, distributed, cluster.gpu, r.model.kernels)
        if plan.dp == 1:
            new_stages.append(replace(cost, optimizer=step))
            continue
        device = r.schedule.stage_to_device[k]
        collectives, ports = stage_collectives(cluster, layout, device, params[k], distributed, options.algorithm,
                                               reduced_grad_bytes(r.model.kernels))
        buckets = stage_buckets(r, k, options) if plan.overlap_grad_reduce else ()
        if buckets:
            collectives = (replace(collectives[0], buckets=buckets),) + collectives[1:]
        capacity.update(ports)
        kept = tuple(c for c in cost.collectives if c.kind not in (REDUCE_GRAD, GATHER_PARAMS))
        new_stages.append(replace(cost, collectives=kept + collectives, optimizer=step))
    schedule = with_step_actions(r.schedule, plan.dp, distributed, plan.overlap_grad_reduce, options.optimizer_step)
    merged = Network(network.links, {**capacity, **network.port_capacity})
    return schedule, tuple(new_stages), merged
