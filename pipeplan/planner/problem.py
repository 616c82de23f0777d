"""One candidate's partition problem in integers: per-layer costs and memory, the schedule's memory profiles.

A candidate fixes the schedule, chunks v, micro-batch size b and count m; what is left is where to
cut the layers into p·v stages and which stages recompute. Costs are ``pipeplan.costs`` priced one
layer at a time, the layers lowering sums per stage, so the planner and the simulator add up the
same numbers (stage costs are sums of per-layer costs plus a per-layer overhead). Times are
integers in ``time_unit`` seconds (rounded), bytes integers in ``memory_unit`` bytes (rounded up,
capacity rounded down), so a plan that fits here fits in the simulator.

Analytic iteration time (the objective), with S = p·v stages and device d holding stages D(d):

    T = m · max_d Σ_{k∈D(d)} (F_k + I_k + W_k)  +  fill  +  comm  +  tail

fill = (p−1)/p · Σ_k φ_k with one stage per device (Σ_k t_k + (m−1)·max_k t_k for 1F1B), and
(p−1) · max_k φ_k with chunks, where a lopsided chunk stretches every hop of the warm-up. φ is the
per-stage time the schedule cannot hide, φ = a·F + b·I + c·W with the weights of the schedule's
registry entry (``simulator.schedules``), chosen so that uniform stages give the closed forms.
Full recomputation adds F to I; selective recomputation adds the re-run attention core
(``backward_input_sel``) and stores ``activation_sel``; it is offered only where it stores less than
none (attention="standard"), as with FlashAttention it equals none. ``comm``
is the warm-up's forward and backward boundary transfers, Σ (forward + backward hop) / v, each hop
``Network.transfer_seconds`` on the network the simulator uses (the profile's links where it
measured them). ``tail`` (dp > 1) is the data-parallel work exposed after the pipeline's last op, on the
device of stage 0 whose last backward (of stage k*) ends the pipeline: R(k*) + opt(k*) + G(k*), stage
k*'s gradient reduction, Adam step and parameter gather priced as lowering prices them (``dp_tail``; the
simulated-time bounds also take the device's other steps, which CP-SAT's search is slower with).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, replace
from functools import cached_property, lru_cache
from typing import Sequence

from simulator.ir import Schedule
from simulator.memory import live_count_profiles
from simulator.schedules import SCHEDULES

from ..cluster import ClusterSpec
from ..costs import layer_work, measured_stage_cost, price, static_bytes
from ..model import RECOMPUTED_KINDS, ModelSpec
from ..profile import Profile
from .dp_tail import DataParallelTail, dp_tail

# Integer resolution: the largest total is mapped to about this many units, which keeps the
# rounding error near 1e-6 relative while CP-SAT's coefficients stay small.
TIME_RESOLUTION = 1 << 20
MEMORY_RESOLUTION = 1 << 22
NONE, SELECTIVE, FULL = "none", "selective", "full"


def mode_of(flag: bool | str) -> str:
    """A stage's recomputation as a ``plan.RECOMPUTE_CHOICES`` string (True/False: full/none)."""
    if isinstance(flag, str):
        return flag
    return FULL if flag else NONE


@dataclass(frozen=True)
class Candidate:
    """The small discrete choices the outer loop enumerates."""

    schedule: str
    chunks: int
    microbatch_size: int
    num_microbatches: int

    @property
    def label(self) -> str:
        v = f" v={self.chunks}" if self.chunks > 1 else ""
        return f"{self.schedule}{v} b={self.microbatch_size} m={self.num_microbatches}"


@dataclass(frozen=True)
class ScheduleShape:
    """What a partition problem reads from a schedule's action lists: where each stage lives, every device's
    count vectors (``live_count_profiles``), its first stage and last action, and whether backward is split
    into I and W. Small, so it is kept where the action lists are not (``request``'s cache)."""

    num_devices: int
    stage_to_device: tuple[int, ...]
    profiles: tuple[tuple[tuple[tuple[int, int], ...], ...], ...]
    first_stage: tuple[int, ...]
    last_action: tuple[tuple[int, str], ...]
    split_backward: bool

    @classmethod
    def of(cls, schedule: Schedule) -> "ScheduleShape":
        return cls(schedule.num_devices, tuple(schedule.stage_to_device), tuple(live_count_profiles(schedule)),
                   tuple(actions[0].stage for actions in schedule.device_actions),
                   tuple((actions[-1].stage, actions[-1].kind) for actions in schedule.device_actions),
                   any(a.kind == "I" for actions in schedule.device_actions for a in actions))


@dataclass(frozen=True)
class TailUnits:
    """``PartitionProblem.exposed_tail``'s integers: per layer its optimizer step, reduction and gather
    (bytes' share) on the device of stage 0, and the two collectives' latencies, in time units."""

    optimizer: tuple[int, ...]
    reduce: tuple[int, ...]
    gather: tuple[int, ...]
    reduce_latency: int
    gather_latency: int


@dataclass(frozen=True)
class PartitionProblem:
    """Integer data of one candidate; the CP-SAT model and any brute force read only this.

    Per layer i: ``forward[i]``, ``backward_input[i]``, ``backward_weight[i]`` (time units);
    ``activation[i]`` / ``held[i]`` (memory units stored by F / kept after I for W) without
    recomputation and ``activation_rc[i]`` / ``held_rc[i]`` with it; ``static[i]`` weights,
    gradients and optimizer state. ``profiles[d]`` are device d's count vectors
    ((full, held) per stage it holds, see ``live_count_profiles``), ``capacity`` the per-device
    limit. Recomputing stage k fully adds ``recomputed`` of its layers to its I: ``rerun[i]``, the
    forward of the layers full recomputation checkpoints (the blocks, ``model.RECOMPUTED_KINDS``; 0 for
    the embedding and the head), or every layer's ``forward`` when ``rerun`` is empty. ``backward_input_sel``,
    ``activation_sel`` and ``held_sel`` are I and the stored bytes under selective recomputation
    (empty: selective is not offered, it would store what none stores). ``first_stage[d]`` is the
    stage of device d's first action and ``last_action[d]`` (stage, kind) its last; ``bounds`` reads them.
    ``uniform_recompute``: every stage takes the same recomputation mode (a framework with one setting for
    all stages, e.g. Megatron-LM); CP-SAT, the polish and the exhaustive search keep to it.
    ``params[i]`` is layer i's parameters on one GPU and ``dp_tail`` the data-parallel actions' prices
    (None at dp = 1); ``tail_units`` turns them into the objective's integers.
    """

    pp: int
    chunks: int
    num_microbatches: int
    stage_to_device: tuple[int, ...]
    forward: tuple[int, ...]
    backward_input: tuple[int, ...]
    backward_weight: tuple[int, ...]
    activation: tuple[int, ...]
    held: tuple[int, ...]
    activation_rc: tuple[int, ...]
    held_rc: tuple[int, ...]
    static: tuple[int, ...]
    profiles: tuple[tuple[tuple[tuple[int, int], ...], ...], ...]
    capacity: int
    fill_weights: tuple[int, int, int] = (1, 1, 1)
    comm: int = 0
    allow_recompute: bool = True
    time_unit: float = 1.0
    memory_unit: float = 1.0
    backward_input_sel: tuple[int, ...] = ()
    activation_sel: tuple[int, ...] = ()
    held_sel: tuple[int, ...] = ()
    first_stage: tuple[int, ...] = ()
    last_action: tuple[tuple[int, str], ...] = ()
    split_backward: bool = True
    uniform_recompute: bool = False
    params: tuple[float, ...] = ()
    dp_tail: DataParallelTail | None = None
    rerun: tuple[int, ...] = ()

    @property
    def recomputed(self) -> tuple[int, ...]:
        """Per layer, the time units full recomputation runs again before its I (class docstring)."""
        return self.rerun or self.forward

    @property
    def modes(self) -> tuple[str, ...]:
        """The recomputation choices worth trying per stage (selective only where it saves memory)."""
        if not self.allow_recompute:
            return (NONE,)
        return (NONE, SELECTIVE, FULL) if self.backward_input_sel else (NONE, FULL)

    @property
    def num_layers(self) -> int:
        return len(self.forward)

    @property
    def num_stages(self) -> int:
        return len(self.stage_to_device)

    def stages_of(self, device: int) -> list[int]:
        return [k for k, d in enumerate(self.stage_to_device) if d == device]

    def stage_values(self, layers_per_stage: Sequence[int], recompute: Sequence[bool | str]) -> list[tuple]:
        """Per stage (F, I, W, stored, held) in problem units; I includes what recomputation re-runs."""
        out, start = [], 0
        for n, flag in zip(layers_per_stage, recompute):
            layers = range(start, start + n)
            start += n
            mode = mode_of(flag)
            f = sum(self.forward[i] for i in layers)
            w = sum(self.backward_weight[i] for i in layers)
            if mode == SELECTIVE and self.backward_input_sel:
                i_, act, held = self.backward_input_sel, self.activation_sel, self.held_sel
            elif mode == FULL:
                i_, act, held = self.backward_input, self.activation_rc, self.held_rc
            else:
                i_, act, held = self.backward_input, self.activation, self.held
            extra = sum(self.recomputed[i] for i in layers) if mode == FULL else 0
            out.append((f, sum(i_[i] for i in layers) + extra, w, sum(act[i] for i in layers),
                        sum(held[i] for i in layers)))
        return out

    def device_levels(self, layers_per_stage: Sequence[int], recompute: Sequence[bool | str]) -> list[int]:
        """Per device, its peak memory level in memory units (static + the worst count vector)."""
        values = self.stage_values(layers_per_stage, recompute)
        starts = [0]
        for n in layers_per_stage:
            starts.append(starts[-1] + n)
        levels = []
        for d in range(self.pp):
            stages = self.stages_of(d)
            static = sum(self.static[i] for k in stages for i in range(starts[k], starts[k + 1]))
            levels.append(static + max(sum(nf * values[k][3] + nh * values[k][4] for k, (nf, nh) in zip(stages, vec))
                                       for vec in self.profiles[d]))
        return levels

    def objective(self, layers_per_stage: tuple[int, ...], recompute: Sequence[bool | str]) -> int | None:
        """The scaled objective p·v·T/time_unit of one partition, or None if some device overflows.

        The direct evaluation of what ``cpsat.solve`` minimises: tests compare the two, and the
        planner uses it to score baselines in the same units. ``recompute`` per stage: a flag
        (full or none) or a mode.
        """
        if any(level > self.capacity for level in self.device_levels(layers_per_stage, recompute)):
            return None
        a, b, c = self.fill_weights
        values = self.stage_values(layers_per_stage, recompute)
        work = [f + i_ + w for f, i_, w, _, _ in values]
        fills = [a * f + b * i_ + c * w for f, i_, w, _, _ in values]
        slowest = max(sum(work[k] for k in self.stages_of(d)) for d in range(self.pp))
        fill_term = (self.pp - 1) * (self.scale * max(fills) if self.chunks > 1 else sum(fills))
        return (self.scale * self.num_microbatches * slowest + fill_term + self.scale * self.comm
                + self.scale * self.exposed_tail(layers_per_stage))

    @property
    def tail_stage(self) -> int | None:
        """k*: the stage whose gradients the pipeline's last device (that of stage 0) reduces last, when its
        last op is a backward of it (None: no such stage, and the objective adds no tail)."""
        stage, kind = self.last_action[self.stage_to_device[0]] if self.last_action else (0, "B")
        return stage if kind in ("B", "W") else None

    @cached_property
    def tail_units(self) -> TailUnits | None:
        """The tail's integers (time units) on the device of stage 0; None without data parallelism."""
        if self.dp_tail is None or not self.params:
            return None
        d0 = self.stage_to_device[0]
        (r0, r1), (g0, g1) = self.dp_tail.reduce[d0], self.dp_tail.gather[d0]

        def per_layer(rate: float) -> tuple[int, ...]:
            return tuple(int(round(x * rate / self.time_unit)) for x in self.params)

        return TailUnits(per_layer(self.dp_tail.optimizer), per_layer(r1), per_layer(g1),
                         int(round(r0 / self.time_unit)), int(round(g0 / self.time_unit)))

    def exposed_tail(self, layers_per_stage: Sequence[int]) -> int:
        """The data-parallel tail the objective adds (module docstring), in time units; 0 at dp = 1."""
        units, k = self.tail_units, self.tail_stage
        if units is None or k is None:
            return 0
        start = sum(layers_per_stage[:k])
        own = range(start, start + layers_per_stage[k])
        return (units.reduce_latency + units.gather_latency
                + sum(units.reduce[i] + units.optimizer[i] + units.gather[i] for i in own))

    @property
    def scale(self) -> int:
        """p·v: the objective is p·v·T so that every coefficient is an integer."""
        return self.pp * self.chunks

    def seconds(self, objective: float) -> float:
        return objective / self.scale * self.time_unit


def layer_costs(model: ModelSpec, cluster: ClusterSpec, microbatch_size: int, seq_len: int, recompute: bool | str,
                profile: Profile | None = None, tp: int = 1, sequence_parallel: bool = False):
    """Per-layer StageCost of one tensor rank: ``costs.price`` of each layer's ``layer_work`` (what
    ``lower`` sums per stage).

    With a ``profile`` the op times are its single-layer measurements (as ``lower`` prices a stage
    from a profile: the sum of its layers), memory stays the model's.
    """
    costs = _priced_layers(model, cluster.gpu, cluster.intra, microbatch_size, seq_len, recompute, tp,
                           sequence_parallel)
    if profile is None:
        return list(costs)
    kinds = model.layer_kinds
    measured = profile.stage_profiles([[kind] for kind in kinds])
    return [replace(measured_stage_cost(c, m, recompute, float(kind in RECOMPUTED_KINDS)),
                    send_forward_bytes=profile.boundary_bytes, send_backward_bytes=profile.boundary_bytes)
            for c, m, kind in zip(costs, measured, kinds)]


@lru_cache(maxsize=256)  # every candidate of a layout with the same b prices the same layers
def _priced_layers(model: ModelSpec, gpu, intra, microbatch_size: int, seq_len: int, recompute: bool | str, tp: int,
                   sequence_parallel: bool) -> tuple:
    return tuple(price(layer_work(model, i, microbatch_size, seq_len, recompute, tp, sequence_parallel), gpu, intra)
                 for i in range(model.num_pipeline_layers))


def build_problem(model: ModelSpec, cluster: ClusterSpec, candidate: Candidate, schedule: Schedule | ScheduleShape,
                  seq_len: int,
                  gpus: list[int], dp: int = 1, distributed_optimizer: bool = False, headroom: float = 0.0,
                  allow_recompute: bool = True, profile: Profile | None = None, tp: int = 1,
                  sequence_parallel: bool = False, uniform_recompute: bool = False) -> PartitionProblem:
    """The integer partition problem of ``candidate`` (``schedule`` is its generated action lists, or their
    ``ScheduleShape``) on one tensor rank of ``tp``.

    Selective recomputation is offered when some layer stores less with it than without (standard
    attention's scores) and no profile prices the ops (a profile times layers without it)."""
    shape = schedule if isinstance(schedule, ScheduleShape) else ScheduleShape.of(schedule)
    b = candidate.microbatch_size
    plain = layer_costs(model, cluster, b, seq_len, recompute=False, profile=profile, tp=tp,
                        sequence_parallel=sequence_parallel)
    rc = layer_costs(model, cluster, b, seq_len, recompute=True, profile=profile, tp=tp,
                     sequence_parallel=sequence_parallel)
    total = sum(c.forward + c.backward_input + c.backward_weight for c in rc)
    time_unit = total / TIME_RESOLUTION
    capacity_bytes = cluster.gpu.memory_bytes * (1.0 - headroom)
    memory_unit = capacity_bytes / MEMORY_RESOLUTION

    def t(x: float) -> int:
        return int(round(x / time_unit))

    def mem(x: float) -> int:
        return int(math.ceil(x / memory_unit - 1e-9))

    sel = None
    if profile is None:
        sel = layer_costs(model, cluster, b, seq_len, recompute="selective", tp=tp,
                          sequence_parallel=sequence_parallel)
        if not any(s.activation_bytes < p.activation_bytes for s, p in zip(sel, plain)):
            sel = None  # FlashAttention: selective stores and runs what none does, so it is dominated

    params = [layer_work(model, i, b, seq_len, False, tp, sequence_parallel).params
              for i in range(model.num_pipeline_layers)]
    boundary = plain[0].send_forward_bytes  # every layer but the head sends b·s·h bf16 values
    stage_to_device = shape.stage_to_device
    # The links the simulator will use: the cluster's, or the profile's where it measured them (they
    # may differ by direction, so the backward hop is priced on its own link).
    network = cluster.network(gpus)
    if profile is not None:
        network = profile.network(network)
    hops = sum(network.transfer_seconds(stage_to_device[k], stage_to_device[k + 1], boundary)
               + network.transfer_seconds(stage_to_device[k + 1], stage_to_device[k], boundary)
               for k in range(len(stage_to_device) - 1))
    return PartitionProblem(
        pp=shape.num_devices,
        chunks=candidate.chunks,
        num_microbatches=candidate.num_microbatches,
        stage_to_device=tuple(stage_to_device),
        forward=tuple(t(c.forward) for c in plain),
        backward_input=tuple(t(c.backward_input) for c in plain),
        backward_weight=tuple(t(c.backward_weight) for c in plain),
        activation=tuple(mem(c.activation_bytes) for c in plain),
        held=tuple(mem(c.weight_grad_bytes) for c in plain),
        # lowering keeps after I each layer's weight-grad bytes, at most what it stored (costs.layer_work):
        # the per-layer priced weight_grad_bytes, summed as lowering sums them.
        activation_rc=tuple(mem(c.activation_bytes) for c in rc),
        held_rc=tuple(mem(c.weight_grad_bytes) for c in rc),
        static=tuple(mem(static_bytes(p, dp, distributed_optimizer)) for p in params),
        profiles=shape.profiles,
        capacity=int(math.floor(capacity_bytes / memory_unit)),
        fill_weights=SCHEDULES[candidate.schedule].fill_weights,
        comm=t(hops / candidate.chunks),
        allow_recompute=allow_recompute,
        time_unit=time_unit,
        memory_unit=memory_unit,
        backward_input_sel=() if sel is None else tuple(t(c.backward_input) for c in sel),
        activation_sel=() if sel is None else tuple(mem(c.activation_bytes) for c in sel),
        held_sel=() if sel is None else tuple(mem(c.weight_grad_bytes) for c in sel),
        first_stage=shape.first_stage,
        last_action=shape.last_action,
        split_backward=shape.split_backward,
        uniform_recompute=uniform_recompute,
        params=tuple(params),
        dp_tail=dp_tail(cluster, tp, shape.num_devices, dp, distributed_optimizer, network.port_capacity,
                        model.kernels),
        rerun=tuple(t(c.forward) if kind in RECOMPUTED_KINDS else 0 for c, kind in zip(plain, model.layer_kinds)),
    )
