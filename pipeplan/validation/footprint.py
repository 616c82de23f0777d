"""How much memory a validation run takes, estimated before any rank starts.

On its compute device a rank holds, per stage it runs (``schedule.stages_of(rank)``):

* weights and their gradients: 2 x parameters x element size (plain SGD keeps no optimizer state;
  float32 on the CPU, bfloat16 on a GPU, as ``validator.run`` chooses);
* the activations its schedule keeps alive at its worst moment: ``simulator.memory.live_count_profiles``
  gives, at every instant the level can peak, how many micro-batches hold a forward's activations
  (``full``) and how many only what the deferred W needs (``held``); a layer's bytes are the cost
  model's (``ModelSpec.layer_cost``: Korthikanti et al. 2022, counted in bf16) scaled to the run's
  element size, only the stage input with full recomputation;
* the backward's working set: one more micro-batch of the stage's largest layer's activations;
* one more layer of each kind it holds, with gradients: ``validator.calibrate.layer_timings`` times
  them alone while the stages are still alive.

In host memory, besides: the modules are built there in float32 before they move (``StageRunner``),
each weight drawn and then scaled into a new tensor, and the allocator keeps the freed draws: 2 x
parameters x 4 bytes more than the weights, with a GPU both the weights and the draws. And
``RANK_BASE_BYTES`` per rank (the interpreter, torch, gloo).

Measured on this 2-core VM (torch 2.13 CPU, gloo, peak resident set per rank): a tiny-model rank
(a few MB of tensors) 348-357 MB against an estimate of 410-413 MB; a 41 M-parameter stage (8 layers, hidden 768, vocabulary 16384,
1F1B p=2, m=4, b=2, s=128) 1163-1164 MB against an estimate of 1214-1240 MB. In one process, that
stage's modules alone grew the resident set by 336 MB for 164 MB of weights.
"""
from __future__ import annotations

from dataclasses import dataclass

from simulator.ir import Schedule
from simulator.memory import live_count_profiles

from ..model import BYTES_BF16, LayerCost, ModelSpec
from ..plan import Plan

RANK_BASE_BYTES = 400e6
FLOAT32_BYTES = 4
BF16_BYTES = 2


@dataclass(frozen=True)
class StageBytes:
    """One stage at ``element_bytes`` per value: ``params`` (count), ``full`` and ``held`` bytes per
    micro-batch in flight (see the module docstring), ``workspace`` (the backward's extra)."""

    params: float
    full: float
    held: float
    workspace: float


@dataclass(frozen=True)
class RankBytes:
    """One rank's estimate, ``RANK_BASE_BYTES`` not included: ``device`` bytes on its compute device
    and ``host`` bytes of host memory (the same memory on a CPU: there ``host`` includes ``device``)."""

    device: float
    host: float


def _costs(model: ModelSpec, plan: Plan, layers: range) -> list[LayerCost]:
    seq = plan.seq_len or model.seq_len
    kinds = model.layer_kinds  # a new list per access: read once
    by_kind: dict[str, LayerCost] = {}
    for index in layers:  # layer costs depend on the kind only: one per kind
        if kinds[index] not in by_kind:
            by_kind[kinds[index]] = model.layer_cost(index, plan.microbatch_size, seq)
    return [by_kind[kinds[i]] for i in layers]


def stage_bytes(model: ModelSpec, plan: Plan, stage: int, element_bytes: int) -> StageBytes:
    """The memory of ``stage`` of ``plan`` run with ``element_bytes``-byte tensors."""
    layers = _costs(model, plan, plan.stage_layers(stage))
    per_element = element_bytes / BYTES_BF16
    recompute = plan.recompute_of(stage)
    kept = [(c.recompute_bytes if recompute else c.activation_bytes) * per_element for c in layers]
    return StageBytes(params=sum(c.params for c in layers), full=sum(kept),
                      held=sum(c.weight_grad_bytes for c in layers) * per_element,
                      workspace=max((c.activation_bytes * per_element for c in layers), default=0.0))


def _one_layer_per_kind(model: ModelSpec, plan: Plan, stages: list[int]) -> float:
    """Parameters of the single layers ``layer_timings`` builds: the first of each kind the rank holds."""
    kinds = model.layer_kinds  # a new list per access: read once
    first: dict[str, int] = {}
    for stage in stages:
        for index in plan.stage_layers(stage):
            first.setdefault(kinds[index], index)
    return sum(model.layer_cost(i, plan.microbatch_size, plan.seq_len or model.seq_len).params for i in first.values())


def rank_bytes(model: ModelSpec, plan: Plan, schedule: Schedule, on_gpu: bool) -> list[RankBytes]:
    """Per rank (pipeline device), the estimated peak memory of its stages, computing on a GPU in
    bfloat16 or on the CPU in float32."""
    element_bytes = BF16_BYTES if on_gpu else FLOAT32_BYTES
    found = []
    for device, profile in enumerate(live_count_profiles(schedule)):
        stages = schedule.stages_of(device)
        parts = [stage_bytes(model, plan, s, element_bytes) for s in stages]
        live = max(sum(f * b.full + h * b.held for (f, h), b in zip(vector, parts)) for vector in profile)
        params = sum(b.params for b in parts) + _one_layer_per_kind(model, plan, stages)
        on_device = 2 * element_bytes * params + live + max(b.workspace for b in parts)
        draws = FLOAT32_BYTES * params  # kept by the allocator after the build
        host = draws + (FLOAT32_BYTES * params if on_gpu else on_device)
        found.append(RankBytes(device=on_device, host=host))
    return found
