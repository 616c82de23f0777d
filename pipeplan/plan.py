"""A pipeline plan: where to cut, which schedule, how to micro-batch, what to recompute, where to place.

JSON round trip with a format version; validation names the bad field and how to fix it.
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, replace
from functools import cached_property
from typing import Any

from simulator.schedules import SCHEDULES

from .errors import SpecError, positive_int
from .fileio import load_mapping
from .inference.requests import ServingSpec
from .limits import check_plan_size, in_range
from .parallel import Layout, check_sequence_parallel, default_placement

# Version 2 added tensor parallelism (tp, sequence_parallel); a version-1 plan is the same plan at
# tp = 1 without sequence parallelism, and loads as that.
PLAN_FORMAT_VERSION = 2
# Activation recomputation per stage (Korthikanti et al. 2022): none, selective (the attention core
# only), or full (everything but the layer input); see ``pipeplan.costs``.
RECOMPUTE_CHOICES = ("none", "selective", "full")


def even_split(num_layers: int, num_stages: int) -> tuple[int, ...]:
    """Layers per stage as equal as possible, the remainder spread over the first stages."""
    if num_stages > num_layers:
        raise SpecError(
            f"stages: {num_stages} stages need at least {num_stages} layers, the model has {num_layers}; "
            "use fewer pipeline devices or chunks"
        )
    base, extra = divmod(num_layers, num_stages)
    return tuple(base + (1 if s < extra else 0) for s in range(num_stages))


@dataclass(frozen=True)
class Plan:
    """Everything needed to simulate or run one 3D-parallel configuration.

    ``tp`` x ``pp`` x ``dp`` GPUs in Megatron's rank order (``parallel.Layout``). The simulator times
    one pipeline replica (data rank 0, tensor rank 0); the others run the same schedule at the same
    time. ``layers_per_stage[s]`` counts pipeline layers (embedding, blocks, head) in stage s; stages
    are numbered along the model, and stage s runs on the device the schedule maps it to.
    ``placement[d]`` is the GPU index (node-major) that pipeline device d of that replica runs on;
    by default ``default_placement``. ``sequence_parallel`` splits the non-tensor-parallel regions
    of a block over the tensor group as well (Korthikanti et al. 2022). ``blocking_p2p``: each
    pipeline send holds the sending device until it is delivered, as Megatron-LM's point-to-point
    exchanges do without ``--overlap-p2p-communication`` (batch_isend_irecv, then wait); by default
    sends overlap compute, as in torch.distributed.pipelining. ``scatter_gather_p2p``: each tensor
    rank sends 1/tp of a pipeline message and the receivers all-gather it over NVLink, as Megatron-LM
    of 2021 did by default (``pipeplan.p2p``; tp > 1 without sequence parallelism).
    ``overlap_grad_reduce`` (dp > 1): each stage-chunk's gradients are reduced as its last backward
    ends, its buckets while that backward still runs (Megatron-LM's ``--overlap-grad-reduce``); false:
    all after the device's last backward, one bucket per stage-chunk (``pipeplan.dataparallel``).
    ``serving``: the request mix of a serving (inference) plan, whose schedule is forward-only
    (``pipeplan.inference``); there ``microbatch_size`` is the requests per micro-batch and
    ``num_microbatches`` the micro-batches in flight. None: a training plan.
    """

    model: str | dict
    cluster: str | dict
    schedule: str
    pp: int
    num_microbatches: int
    microbatch_size: int
    layers_per_stage: tuple[int, ...]
    chunks: int = 1
    recompute: tuple[str, ...] = ()
    seq_len: int | None = None
    nodes: int | None = None
    dp: int = 1
    tp: int = 1
    sequence_parallel: bool = False
    distributed_optimizer: bool = False
    blocking_p2p: bool = False
    scatter_gather_p2p: bool = False
    overlap_grad_reduce: bool = True
    placement: tuple[int, ...] = ()
    schedule_csv: str | None = None
    serving: ServingSpec | None = None
    format_version: int = PLAN_FORMAT_VERSION
    notes: dict = field(default_factory=dict, compare=False)

    def __post_init__(self) -> None:
        for name in ("model", "cluster"):
            if not isinstance(getattr(self, name), (str, dict)):
                raise SpecError(f"plan.{name}: must be a preset name, a file path or a mapping "
                                f"(got {getattr(self, name)!r})")
        if not isinstance(self.schedule, str):
            raise SpecError(f"plan.schedule: must be a schedule name (got {self.schedule!r}); choose one of "
                            f"{', '.join(SCHEDULES)} or custom")
        if self.schedule_csv is not None and not isinstance(self.schedule_csv, str):
            raise SpecError(f"plan.schedule_csv: must be the path of a CSV file (got {self.schedule_csv!r})")
        for flag in ("distributed_optimizer", "sequence_parallel", "blocking_p2p", "scatter_gather_p2p",
                     "overlap_grad_reduce"):
            if not isinstance(getattr(self, flag), bool):
                raise SpecError(f"plan.{flag}: must be true or false (got {getattr(self, flag)!r})")
        if not isinstance(self.notes, dict):
            raise SpecError(f"plan.notes: must be a mapping (got {self.notes!r})")
        if any(isinstance(g, bool) or not isinstance(g, int) for g in self.placement):
            raise SpecError(f"plan.placement: must be a list of GPU indices (integers), got {list(self.placement)!r}")
        positive_int("plan.pp", self.pp)
        positive_int("plan.num_microbatches", self.num_microbatches)
        positive_int("plan.microbatch_size", self.microbatch_size)
        positive_int("plan.chunks", self.chunks)
        positive_int("plan.dp", self.dp)
        positive_int("plan.tp", self.tp)
        check_sequence_parallel(self.sequence_parallel, self.tp, "plan.sequence_parallel")
        if self.scatter_gather_p2p and (self.tp == 1 or self.sequence_parallel):
            raise SpecError("plan.scatter_gather_p2p: scatters a pipeline message over the tensor ranks, so it needs "
                            "tp > 1 and no sequence parallelism (which splits the message already); set it to false")
        if self.seq_len is not None:
            positive_int("plan.seq_len", self.seq_len)
            in_range("plan.seq_len", self.seq_len, "seq_len")
        in_range("plan.microbatch_size", self.microbatch_size, "microbatch_size")
        if self.format_version != PLAN_FORMAT_VERSION:
            raise SpecError(
                f"plan.format_version: this pipeplan reads version {PLAN_FORMAT_VERSION}, the file says "
                f"{self.format_version}; re-create the plan with `pipeplan optimize`"
            )
        if self.schedule != "custom" and self.schedule not in SCHEDULES:
            raise SpecError(f"plan.schedule: unknown {self.schedule!r}; choose one of {', '.join(SCHEDULES)} or custom")
        if self.schedule == "custom" and not self.schedule_csv:
            raise SpecError("plan.schedule_csv: a custom schedule needs the path of its torch-format CSV")
        if any(n < 1 for n in self.layers_per_stage):
            raise SpecError("plan.layers_per_stage: every stage needs at least one layer")
        if self.recompute and len(self.recompute) != len(self.layers_per_stage):
            raise SpecError(
                f"plan.recompute: give one value per stage ({len(self.layers_per_stage)}), got {len(self.recompute)}"
            )
        bad = [r for r in self.recompute if r not in RECOMPUTE_CHOICES]
        if bad:
            raise SpecError(f"plan.recompute: {bad[0]!r} is not one of {', '.join(RECOMPUTE_CHOICES)}")
        if self.placement and len(self.placement) != self.pp:
            raise SpecError(f"plan.placement: give one GPU index per pipeline device ({self.pp})")
        if self.serving is not None:
            self._check_serving()

    def _check_serving(self) -> None:
        """A serving plan runs a forward-only schedule: nothing of training's backward applies."""
        if not isinstance(self.serving, ServingSpec):
            raise SpecError(f"plan.serving: must be a request mix (got {self.serving!r})")
        entry = SCHEDULES.get(self.schedule)
        if entry is not None and not entry.forward_only:
            forward_only = ", ".join(n for n, e in SCHEDULES.items() if e.forward_only)
            raise SpecError(f"plan.schedule: {self.schedule} trains (it has a backward); a serving plan runs "
                            f"{forward_only} or a custom CSV of F actions")
        for flag in ("sequence_parallel", "distributed_optimizer"):
            if getattr(self, flag):
                raise SpecError(f"plan.{flag}: a serving plan has no {flag.replace('_', ' ')}; set it false")
        if any(r != "none" for r in self.recompute):
            raise SpecError("plan.recompute: a serving plan keeps nothing for a backward, so nothing to recompute; "
                            "use none")
    @property
    def num_stages(self) -> int:
        return len(self.layers_per_stage)

    @property
    def cut_points(self) -> tuple[int, ...]:
        """Index of the first layer of every stage after the first."""
        cuts, total = [], 0
        for n in self.layers_per_stage[:-1]:
            total += n
            cuts.append(total)
        return tuple(cuts)

    @cached_property
    def _stage_starts(self) -> tuple[int, ...]:
        """Index of the first layer of every stage (computed once: plans are frozen)."""
        return (0,) + self.cut_points

    def stage_layers(self, stage: int) -> range:
        """The layers of ``stage``, in O(1) per call (a plan may have as many stages as layers)."""
        start = self._stage_starts[stage]
        return range(start, start + self.layers_per_stage[stage])

    def recompute_of(self, stage: int) -> bool:
        """Whether ``stage`` recomputes fully (what the validator runs)."""
        return bool(self.recompute) and self.recompute[stage] == "full"

    def recompute_mode(self, stage: int) -> str:
        """``stage``'s recomputation: one of ``RECOMPUTE_CHOICES``."""
        return self.recompute[stage] if self.recompute else "none"

    @property
    def layout(self) -> Layout:
        return Layout(self.tp, self.pp, self.dp)

    @property
    def num_gpus(self) -> int:
        return self.tp * self.pp * self.dp

    def gpus(self) -> list[int]:
        return list(self.placement) if self.placement else default_placement(self.pp, self.dp, self.tp)

    def with_(self, **changes: Any) -> "Plan":
        return replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["layers_per_stage"] = list(self.layers_per_stage)
        data["recompute"] = list(self.recompute) or ["none"] * self.num_stages
        data["placement"] = self.gpus()
        data["cut_points"] = list(self.cut_points)
        if self.serving is None:
            del data["serving"]  # training plans read as they did before serving plans existed
        return data

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2) + "\n"

    @staticmethod
    def from_dict(data: dict[str, Any]) -> "Plan":
        data = dict(data)
        data.pop("cut_points", None)  # derived; layers_per_stage is the source of truth
        if data.get("format_version") == 1:
            data["format_version"] = PLAN_FORMAT_VERSION  # the same plan at tp = 1 (see PLAN_FORMAT_VERSION)
        known = set(Plan.__dataclass_fields__)
        unknown = sorted(set(data) - known)
        if unknown:
            raise SpecError(f"plan.{unknown[0]}: unknown field; known fields are {', '.join(sorted(known))}")
        for required in ("model", "cluster", "schedule", "pp", "num_microbatches", "microbatch_size", "layers_per_stage"):
            if required not in data:
                raise SpecError(f"plan.{required}: required field is missing")
        if data.get("serving") is not None:
            data["serving"] = ServingSpec.from_dict(data["serving"])
        for key in ("layers_per_stage", "recompute", "placement"):
            if key in data:
                if not isinstance(data[key], (list, tuple)):
                    raise SpecError(f"plan.{key}: must be a list")
                data[key] = tuple(data[key])
        if "layers_per_stage" in data and not all(isinstance(n, int) and not isinstance(n, bool) for n in data["layers_per_stage"]):
            raise SpecError("plan.layers_per_stage: must be a list of integers")
        return Plan(**data)

    @staticmethod
    def load(path: str) -> "Plan":
        """The plan in a JSON/YAML file, refused in one line when it is too large to simulate (``limits``)."""
        plan = Plan.from_dict(load_mapping(path, "plan"))
        check_plan_size(plan)
        return plan
