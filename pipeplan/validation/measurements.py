"""What a validation run measured: the plan as run, its calibration profile and its timed iterations.

Rank 0 of ``python -m validator`` assembles one (``validator.gather``) and saves it; the report
(``pipeplan.validation.report``) is built from it in another step, so no simulation runs inside the
distributed part. The JSON form holds the same ``plan``, ``run``, ``profile``, ``measured_iterations``
and ``losses`` keys as a report, so ``Measurements.from_dict`` also reads a report or a record back.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

from simulator.timeline import Timeline

from ..errors import SpecError
from ..fileio import load_mapping, write_json_atomic
from ..plan import Plan
from ..profile import Profile

MEASUREMENTS_KIND = "pipeplan.measurements"
MEASUREMENTS_VERSION = 1

# The report's "run" section, in its order; ``device``, ``dtype`` and ``iterations`` are derived.
RUN_KEYS = ("plan_file", "base_dir", "runtime", "scale", "backend", "device", "dtype", "threads_per_rank",
            "world_size", "iterations", "iterations_tried", "disturbed", "left_out", "warmup", "calibration_reps",
            "clock_offsets")
# Written only when they differ from these defaults (records made before they existed lack them).
OPTIONAL_RUN_KEYS = {"left_out": "", "runtime": "pipeplan"}


@dataclass(frozen=True)
class Measurements:
    """One finished run.

    ``plan``: the plan as it ran (scaled by ``scale``). ``iterations``: the measured timelines of the
    kept iterations, in run order (simulator format, times from each iteration's first op).
    ``iterations_tried``: how many timed iterations ran; ``disturbed``: fewer than ``len(iterations)``
    of them were undisturbed, so some kept ones were not; ``left_out``: why iterations were found
    disturbed (``validator.quiet``; empty when none was). ``losses``: per rank that
    computes the loss, every micro-batch's loss in run order (warm-up included).
    ``clock_offsets``: per rank, how far its clock ran ahead of rank 0's (seconds). ``runtime``: who
    executed the schedule (``ValidateOptions.runtime``: "pipeplan" or "torch").
    """

    plan: Plan
    profile: Profile
    iterations: tuple[Timeline, ...]
    losses: tuple[tuple[float, ...], ...]
    plan_file: str
    base_dir: str
    scale: float
    backend: str
    threads_per_rank: int
    world_size: int
    iterations_tried: int
    disturbed: bool
    left_out: str
    warmup: int
    calibration_reps: int
    clock_offsets: tuple[float, ...]
    runtime: str = "pipeplan"
    # A serving plan's run: per stage, each micro-batch's F time as the calibration replay measured it (its
    # mean over the kept rounds; a hole in the micro-batch ids holds 0), and each request's generated tokens
    # (the last run's; ``deterministic``: every run generated the same). Empty for a training run.
    pass_costs: tuple[tuple[float, ...], ...] = ()
    generated: tuple[tuple[int, ...], ...] = ()
    deterministic: bool = True

    def run_section(self) -> dict[str, Any]:
        """The report's ``run`` section: how the run was made."""
        derived = {"device": self.profile.device, "dtype": self.profile.dtype, "iterations": len(self.iterations)}
        return {k: derived[k] if k in derived else _plain(getattr(self, k)) for k in RUN_KEYS
                if k not in OPTIONAL_RUN_KEYS or getattr(self, k) != OPTIONAL_RUN_KEYS[k]}

    def to_dict(self) -> dict[str, Any]:
        return {
            "kind": MEASUREMENTS_KIND,
            "version": MEASUREMENTS_VERSION,
            "plan": self.plan.to_dict(),
            "run": self.run_section(),
            "profile": self.profile.to_dict(),
            "measured_iterations": [t.to_dict() for t in self.iterations],
            "losses": [list(l) for l in self.losses],
            **({"serving_run": {"pass_costs": [list(c) for c in self.pass_costs],
                                "generated": [list(t) for t in self.generated],
                                "deterministic": self.deterministic}} if self.pass_costs else {}),
        }

    @staticmethod
    def from_dict(data: dict[str, Any]) -> "Measurements":
        """Read ``to_dict``'s form, or the same keys of a validation report."""
        for key in ("plan", "run", "profile", "measured_iterations"):
            if key not in data:
                raise SpecError(f"measurements.{key}: required field is missing")
        run = data["run"]
        if not isinstance(run, dict):
            raise SpecError(f"measurements.run: must be a mapping (got {run!r})")
        missing = [k for k in RUN_KEYS if k not in run and k not in OPTIONAL_RUN_KEYS]
        if missing:
            raise SpecError(f"measurements.run.{missing[0]}: required field is missing")
        iterations = tuple(Timeline.from_dict(t) for t in data["measured_iterations"])
        if not iterations:
            raise SpecError("measurements.measured_iterations: no iteration was measured")
        return Measurements(
            plan=Plan.from_dict(data["plan"]), profile=Profile.from_dict(data["profile"]), iterations=iterations,
            losses=tuple(tuple(float(x) for x in l) for l in data.get("losses", [])),
            plan_file=str(run["plan_file"]), base_dir=str(run["base_dir"]), scale=float(run["scale"]),
            backend=str(run["backend"]), threads_per_rank=int(run["threads_per_rank"]),
            world_size=int(run["world_size"]), iterations_tried=int(run["iterations_tried"]),
            disturbed=bool(run["disturbed"]), left_out=str(run.get("left_out", OPTIONAL_RUN_KEYS["left_out"])),
            warmup=int(run["warmup"]),
            calibration_reps=int(run["calibration_reps"]),
            clock_offsets=tuple(float(x) for x in run["clock_offsets"]),
            runtime=str(run.get("runtime", OPTIONAL_RUN_KEYS["runtime"])),
            **_serving_run(data.get("serving_run")),
        )

    def save(self, path: str | os.PathLike) -> None:
        write_json_atomic(path, self.to_dict())

    @staticmethod
    def load(path: str | os.PathLike) -> "Measurements":
        data = load_mapping(path, "measurements")
        if data.get("kind") != MEASUREMENTS_KIND:
            raise SpecError(f"measurements: {str(path)!r} is not a validator measurement "
                            "(written by `python -m validator --measurements`)")
        if data.get("version") != MEASUREMENTS_VERSION:
            raise SpecError(f"measurements.version: this pipeplan reads version {MEASUREMENTS_VERSION}, "
                            f"got {data.get('version')}")
        return Measurements.from_dict(data)


def _serving_run(data: Any) -> dict[str, Any]:
    """The serving fields of ``Measurements`` from their saved form (none for a training run)."""
    if data is None:
        return {}
    if not isinstance(data, dict) or not isinstance(data.get("pass_costs"), list):
        raise SpecError("measurements.serving_run: must be a mapping with pass_costs, generated and deterministic")
    try:
        return {"pass_costs": tuple(tuple(float(x) for x in c) for c in data["pass_costs"]),
                "generated": tuple(tuple(int(x) for x in t) for t in data.get("generated", [])),
                "deterministic": bool(data.get("deterministic", True))}
    except (TypeError, ValueError) as err:
        raise SpecError(f"measurements.serving_run: {err}") from None


def _plain(value: Any) -> Any:
    return list(value) if isinstance(value, tuple) else value
