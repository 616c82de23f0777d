"""What ``pipeplan validate --runtime torch`` can run: the one place that says which plans and options
torch.distributed.pipelining's schedule runtime (``validator.torch_runtime``) refuses, and why.

Checked by the launcher before any process starts and again by each rank. Nothing here imports torch.
"""
from __future__ import annotations

from simulator.ir import COMPOSITE_KINDS, Schedule


def torch_runtime_refusal(schedule: Schedule, recompute: bool = False) -> str | None:
    """One line saying why torch's runtime cannot run ``schedule`` here, or None if it can.

    * Overlapped F&B pairs (DualPipeV's ``OVERLAP_F_B``): torch's runtime runs the pair's forward and
      backward one after the other unless a custom function is registered for the action, and on
      CPU nothing overlaps them; the validator does not time the halves of such a pair.
    * Recomputation: ``PipelineStage`` runs its module's forward with the graph kept; the plan's
      recomputation lives in pipeplan's own runtime (``StageRunner``).
    """
    composite = sorted(schedule.kinds_present & set(COMPOSITE_KINDS))
    if composite:
        return (f"plan.schedule: --runtime torch cannot validate {schedule.name}: its {', '.join(composite)} "
                "actions would run their forward and backward one after the other in torch's runtime (no overlap "
                "on CPU) and the validator does not time the halves of a pair; validate the plan without them")
    if recompute:
        return ("plan.recompute: --runtime torch runs each stage through torch's PipelineStage, which keeps the "
                "forward's graph (no recomputation); validate recomputing plans with --runtime pipeplan")
    return None
