"""The Python API: lower and simulate a plan on a model and a cluster."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from simulator.engine import SimResult, simulate as simulate_workload
from simulator.workload import Workload

from .cluster import ClusterSpec
from .lowering import Resolved, build_workload
from .metrics import mfu, tokens_per_second
from .model import ModelSpec
from .plan import Plan
from .profile import Profile, load_profile
from .specs import resolve


@dataclass
class PlanResult:
    """A simulated plan: the engine's result plus the figures that need the model and cluster."""

    sim: SimResult
    workload: Workload
    resolved: Resolved

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
    def mfu(self) -> float:
        return mfu(self.resolved, self.iteration_time)

    def summary(self) -> dict:
        data = self.sim.summary()
        data.update(
            model=self.resolved.model.name,
            cluster=self.resolved.cluster.name,
            schedule=self.plan.schedule,
            tokens_per_second=self.tokens_per_second,
            mfu=self.mfu,
            fits=self.fits,
            layers_per_stage=list(self.plan.layers_per_stage),
        )
        return data


def lower(model: ModelSpec | str | dict, cluster: ClusterSpec | str | dict, plan: Plan,
          base_dir: str | Path = ".", profile: Profile | str | dict | None = None) -> tuple[Workload, Resolved]:
    """Load what ``plan`` names (spec files beside ``base_dir`` first) and lower it to a simulator workload.

    With a ``profile`` (object, mapping or file, see ``pipeplan.profile``) op times, boundary bytes
    and the measured links replace the analytic cost model.
    """
    resolved = resolve(model, cluster, plan, base_dir)
    return build_workload(resolved, load_profile(profile)), resolved


def simulate(model: ModelSpec | str | dict | None = None, cluster: ClusterSpec | str | dict | None = None,
             plan: Plan | None = None, base_dir: str | Path = ".", profile=None) -> PlanResult:
    """Simulate ``plan``. Model and cluster default to the ones the plan names (preset, file or inline).

    ``profile``: a measured Profile (object, dict or file path) to use instead of analytic costs.
    """
    if plan is None:
        raise TypeError("simulate() needs a plan")
    workload, resolved = lower(model if model is not None else plan.model,
                               cluster if cluster is not None else plan.cluster, plan, base_dir, profile=profile)
    return PlanResult(simulate_workload(workload), workload, resolved)
