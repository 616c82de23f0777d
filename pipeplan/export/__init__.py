"""Plans exported to where people train: one module per target, one registry (``EXPORTERS``).

megatron.py    Megatron-LM arguments: parallel sizes, ``--pipeline-model-parallel-layout``, batch, recomputation
torchtitan.py  torchtitan ``--parallelism.*`` / ``--training.*`` options, and a schedule CSV where torch
               has no class for the plan's order
torch_csv.py   torch.distributed.pipelining's schedule CSV, compute-only or with its communication (compute_comms)
common.py      what they share: options, the answer, stage contents and placement, shell quoting

An exporter is a pure function ``(Resolved, ExportOptions) -> Export``. A target may limit what it runs
(``ExportTarget.refusal``, ``uniform_recompute``); ``pipeplan optimize --target NAME`` searches only that.
"""
from __future__ import annotations

from dataclasses import dataclass
from types import MappingProxyType
from typing import Callable, Mapping

from ..errors import SpecError
from ..lowering import Resolved
from ..plan import Plan
from . import megatron
from .common import CSV_FORMATS, Export, ExportOptions
from .torch_csv import export_torch_csv
from .torchtitan import export_torchtitan


@dataclass(frozen=True)
class ExportTarget:
    """One export target. ``schedules``: the pipeplan schedules it runs (None: every one); ``refusal(schedule,
    pp, m, v)``: why it cannot run that schedule there, or None; ``uniform_recompute``: it takes one
    recomputation setting for every stage."""

    name: str
    summary: str
    export: Callable[[Resolved, ExportOptions], Export]
    schedules: tuple[str, ...] | None = None
    refusal: Callable[[str, int, int, int], str | None] | None = None
    uniform_recompute: bool = False

    def runs(self, schedule: str, pp: int, m: int, v: int) -> bool:
        return self.refusal is None or self.refusal(schedule, pp, m, v) is None


EXPORTERS: Mapping[str, ExportTarget] = MappingProxyType({t.name: t for t in (
    ExportTarget("megatron", "Megatron-LM arguments (1F1B and interleaved plans, one recomputation setting)",
                 megatron.export_megatron, megatron.SCHEDULES, megatron.refusal, uniform_recompute=True),
    ExportTarget("torchtitan", "torchtitan --parallelism.* / --training.* options (+ schedule CSV), one "
                 "recomputation policy", export_torchtitan, uniform_recompute=True),
    ExportTarget("torch-csv", "torch.distributed.pipelining schedule CSV (compute_only or compute_comms)",
                 export_torch_csv),
)})


def export_target(name: str, field: str = "--to") -> ExportTarget:
    """The registry's target ``name``; SpecError naming ``field`` and the choices otherwise."""
    target = EXPORTERS.get(name)
    if target is None:
        raise SpecError(f"{field}: unknown export target {name!r}; choose one of {', '.join(EXPORTERS)}")
    return target


def export_plan(plan: Resolved | Plan, target: str, options: ExportOptions = ExportOptions()) -> Export:
    """``plan`` (a ``Plan``, whose model and cluster are loaded here, or a ``Resolved`` one) exported to
    ``target``; SpecError (one line) when the target cannot run or express it."""
    exporter = export_target(target)
    if isinstance(plan, Plan):
        from ..specs import resolve

        plan = resolve(plan.model, plan.cluster, plan)
    return exporter.export(plan, options)


__all__ = ["CSV_FORMATS", "EXPORTERS", "Export", "ExportOptions", "ExportTarget", "export_plan", "export_target"]
