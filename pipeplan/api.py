"""The Python API: lower and simulate a plan on a model and a cluster."""
from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

from simulator.engine import SimResult, simulate as simulate_workload
from simulator.iterations import IterationsResult, simulate_iterations
from simulator.workload import Workload

from .breakdown import CommunicationBreakdown, MemoryParts, communication_breakdown, memory_breakdown
from .cluster import ClusterSpec
from .dataparallel import DataParallelOptions
from .limits import check_plan_size
from .lowering import Resolved, build_workload, stage_works
from .metrics import IterationFlops, flops_per_gpu, iteration_flops, tokens_per_second
from .model import ModelSpec
from .plan import Plan
from .profile import Profile, load_profile
from .specs import resolve


@dataclass(frozen=True)
class PlanResult:
    """A simulated plan: the engine's result plus the figures that need the model and cluster.

    Throughput (``pipeplan.metrics``): ``tokens_per_second``, ``model_flops`` and ``hardware_flops``
    per iteration, ``model_tflops_per_gpu``, ``hardware_tflops_per_gpu``, ``mfu``, over ``num_gpus`` =
    tp x pp x dp. Breakdowns (``pipeplan.breakdown``): ``communication`` (PP, DP, TP time per device,
    exposed and overlapped) and ``memory_breakdown`` (each device's peak split into weights, grads,
    optimizer, activations and buffers).
    """

    sim: SimResult
    workload: Workload
    resolved: Resolved
    # K iterations back to back (``simulate(..., iterations=K)``); None for one isolated iteration.
    steady: IterationsResult | None = None

    @property
    def steady_iteration_time(self) -> float:
        """One iteration's time in steady state, T_K − T_{K−1} (the isolated iteration's without ``iterations``)."""
        return self.steady.steady_iteration_time if self.steady is not None else self.iteration_time

    @property
    def steady_bubble_fraction(self) -> float:
        return self.steady.steady_bubble_fraction if self.steady is not None else self.bubble_fraction

    @property
    def plan(self) -> Plan:
        return self.resolved.plan

    @property
    def iteration_time(self) -> float:
        return self.sim.iteration_time

    @property
    def bubble_fraction(self) -> float:
        return self.sim.bubble_fraction

    @property
    def peak_memory(self) -> list[float]:
        return self.sim.peak_memory

    @property
    def timeline(self):
        return self.sim.timeline

    @property
    def fits(self) -> bool:
        return not any(self.sim.out_of_memory)

    @property
    def tokens_per_second(self) -> float:
        return tokens_per_second(self.resolved, self.iteration_time)

    @property
    def num_gpus(self) -> int:
        return self.plan.num_gpus

    @cached_property
    def flops(self) -> IterationFlops:
        return iteration_flops(self.resolved)

    @property
    def model_flops(self) -> float:
        """Model FLOPs of one iteration, all replicas (no recomputation)."""
        return self.flops.model

    @property
    def hardware_flops(self) -> float:
        """Model FLOPs plus recomputed forwards (Megatron eq. 3's count)."""
        return self.flops.hardware

    @property
    def model_tflops_per_gpu(self) -> float:
        return flops_per_gpu(self.model_flops, self.iteration_time, self.num_gpus) / 1e12

    @property
    def hardware_tflops_per_gpu(self) -> float:
        return flops_per_gpu(self.hardware_flops, self.iteration_time, self.num_gpus) / 1e12

    @property
    def mfu(self) -> float:
        """Model FLOPs / (iteration time x tp·pp·dp GPUs x peak)."""
        return self.model_tflops_per_gpu * 1e12 / self.resolved.cluster.gpu.peak_flops

    @cached_property
    def communication(self) -> CommunicationBreakdown:
        if self.plan.tp == 1:
            return communication_breakdown(self.timeline)
        # Tensor groups stay on a node's NVLink, the link lowering priced their collectives on.
        return communication_breakdown(self.timeline, (stage_works(self.resolved), self.resolved.cluster.intra))

    @cached_property
    def memory_breakdown(self) -> tuple[MemoryParts, ...]:
        return memory_breakdown(self.timeline, self.workload, self.plan.dp, self.plan.distributed_optimizer)

    def summary(self) -> dict:
        plan = self.plan
        data = self.sim.summary()
        data.update(
            model=self.resolved.model.name,
            cluster=self.resolved.cluster.name,
            schedule=plan.schedule,
            tokens_per_second=self.tokens_per_second,
            mfu=self.mfu,
            fits=self.fits,
            layers_per_stage=list(plan.layers_per_stage),
            tp=plan.tp, pp=plan.pp, dp=plan.dp, num_gpus=self.num_gpus, nodes=self.resolved.cluster.nodes,
            sequence_parallel=plan.sequence_parallel, distributed_optimizer=plan.distributed_optimizer,
            model_flops=self.model_flops, hardware_flops=self.hardware_flops,
            model_tflops_per_gpu=self.model_tflops_per_gpu, hardware_tflops_per_gpu=self.hardware_tflops_per_gpu,
            communication=self.communication.to_dict(),
            memory_breakdown=[parts.to_dict() for parts in self.memory_breakdown],
        )
        if self.steady is not None:
            data["steady_state"] = self.steady.summary()
        return data


def lower(model: ModelSpec | str | dict, cluster: ClusterSpec | str | dict, plan: Plan,
          base_dir: str | Path = ".", profile: Profile | str | dict | None = None,
          dp_options: DataParallelOptions = DataParallelOptions()) -> tuple[Workload, Resolved]:
    """Load what ``plan`` names (spec files beside ``base_dir`` first) and lower it to a simulator workload.

    With a ``profile`` (object, mapping or file, see ``pipeplan.profile``) op times, boundary bytes
    and the measured links replace the analytic cost model. ``dp_options`` say how gradients are
    reduced and whether the optimizer step is simulated (``pipeplan.dataparallel``).
    """
    resolved = resolve(model, cluster, plan, base_dir)
    return build_workload(resolved, load_profile(profile), dp_options), resolved


def simulate(model: ModelSpec | str | dict | None = None, cluster: ClusterSpec | str | dict | None = None,
             plan: Plan | None = None, base_dir: str | Path = ".", profile=None, iterations: int = 1,
             synchronise: bool = False, dp_options: DataParallelOptions = DataParallelOptions(),
             **layout) -> PlanResult:
    """Simulate ``plan``. Model and cluster default to the ones the plan names (preset, file or inline).

    Without a plan, ``model`` (and ``cluster``, default dgx-h100) with the keywords of
    ``pipeplan.make_plan`` describe one: ``tp``, ``pp``, ``dp``, ``gpus``, ``nodes``, ``schedule``,
    ``microbatches``, ``sequence_parallel``, ``distributed_optimizer`` ..., the missing sizes derived
    (``pipeplan.sizing``); e.g. ``simulate("llama3-8b", tp=2, dp=2, gpus=16)``.
    ``profile``: a measured Profile (object, dict or file path) to use instead of analytic costs.
    ``iterations`` K > 1 also simulates K iterations back to back (``result.steady``, and
    ``steady_iteration_time`` = T_K − T_{K−1}), with a synchronising optimizer step between them
    when ``synchronise`` (see ``simulator.iterations``); every other figure is one isolated iteration's.
    ``dp_options``: gradient buckets, the ring or tree algorithm and the optimizer step (``pipeplan.dataparallel``).
    """
    if plan is None:
        if model is None:
            raise TypeError("simulate() needs a plan, or a model and layout keywords (see pipeplan.make_plan)")
        from .sizing import make_plan

        plan = make_plan(model, cluster if cluster is not None else "dgx-h100", **layout)
        model, cluster = None, None
    elif layout:
        raise TypeError(f"simulate(): {', '.join(sorted(layout))} describe a plan; give them or a plan, not both")
    if isinstance(iterations, int) and iterations > 1:
        check_plan_size(plan, iterations)  # one iteration is sized where the plan is resolved
    workload, resolved = lower(model if model is not None else plan.model,
                               cluster if cluster is not None else plan.cluster, plan, base_dir, profile=profile,
                               dp_options=dp_options)
    if iterations < 1:
        raise ValueError(f"iterations: give at least 1 (got {iterations})")
    if iterations == 1 and not synchronise:
        return PlanResult(simulate_workload(workload), workload, resolved)
    steady = simulate_iterations(workload, iterations, synchronise)
    sim = steady.result if synchronise else simulate_workload(workload)
    return PlanResult(sim, workload, resolved, steady)
