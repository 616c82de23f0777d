"""How much memory a validation run takes, estimated before any rank starts.

A rank holds, per stage it runs (``schedule.stages_of(rank)``):

* weights and their gradients: 2 x parameters x element size (plain SGD keeps no optimizer state;
  float32 on the CPU, bfloat16 on a GPU, as ``validator.run`` chooses);
* the activations its schedule keeps alive at its worst moment: ``simulator.memory.live_count_profiles``
  gives, at every instant the level can peak, how many micro-batches hold a forward's activations
  (``full``) and how many only what the deferred W needs (``held``); a layer's bytes are the cost
  model's (``ModelSpec.layer_cost``: Korthikanti et al. 2022, counted in bf16) scaled to the run's
  element size, only the stage input with full recomputation;
* the backward's working set: one more micro-batch of the stage's largest layer's activations;

plus ``RANK_BASE_BYTES`` of its own (the interpreter, torch, gloo): a rank of the tiny model, whose
weights and activations are a few MB, peaked at 348-357 MB resident (torch 2.13 CPU, this 2-core VM).
"""
from __future__ import annotations

from dataclasses import dataclass

from simulator.ir import Schedule
from simulator.memory import live_count_profiles

from ..model import BYTES_BF16, LayerCost, ModelSpec
from ..plan import Plan

RANK_BASE_BYTES = 400e6
FLOAT32_BYTES = 4


@dataclass(frozen=True)
class StageBytes:
    """One stage's memory: ``static`` (weights + gradients), ``full`` and ``held`` per micro-batch in
    flight (see the module docstring) and ``workspace`` (the backward's extra)."""

    static: float
    full: float
    held: float
    workspace: float


def stage_bytes(model: ModelSpec, plan: Plan, stage: int, element_bytes: int) -> StageBytes:
    """The memory of ``stage`` of ``plan`` run with ``element_bytes``-byte tensors."""
    seq = plan.seq_len or model.seq_len
    kinds = model.layer_kinds
    by_kind: dict[str, LayerCost] = {}
    for index in plan.stage_layers(stage):  # layer costs depend on the kind only: one per kind
        if kinds[index] not in by_kind:
            by_kind[kinds[index]] = model.layer_cost(index, plan.microbatch_size, seq)
    layers = [by_kind[kinds[i]] for i in plan.stage_layers(stage)]
    per_element = element_bytes / BYTES_BF16
    recompute = plan.recompute_of(stage)
    kept = [(c.recompute_bytes if recompute else c.activation_bytes) * per_element for c in layers]
    held = sum(c.weight_grad_bytes for c in layers) * per_element
    largest = max((c.activation_bytes * per_element for c in layers), default=0.0)
    return StageBytes(static=2 * element_bytes * sum(c.params for c in layers), full=sum(kept), held=held,
                      workspace=largest)


def rank_bytes(model: ModelSpec, plan: Plan, schedule: Schedule, element_bytes: int) -> list[float]:
    """Per rank (pipeline device), the estimated peak bytes of its stages, ``RANK_BASE_BYTES`` not included."""
    totals = []
    for device, profile in enumerate(live_count_profiles(schedule)):
        stages = [stage_bytes(model, plan, s, element_bytes) for s in schedule.stages_of(device)]
        live = max(sum(f * b.full + h * b.held for (f, h), b in zip(vector, stages)) for vector in profile)
        totals.append(sum(b.static for b in stages) + live + max(b.workspace for b in stages))
    return totals
