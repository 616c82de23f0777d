"""What each simulated op's time is made of: shares by op class and by the op type whose error it carries.

A band stretches each part of an op by its class's and its type's factors (``pipeplan.bands.sampling``),
so it needs, per stage and action kind, the op's parts: ``(op class, group, share)``, shares summing
to 1. The group names what one systematic error is shared by:

* analytic costs (``pipeplan.costs.price``): per layer kind (embedding, block, head ...) and op (F, I,
  W), the layer's GEMMs (``gemm``), memory-bound kernels (``memory``), tensor-parallel collectives
  (``link``, one group for all) and per-layer overhead (``overhead``); every stage holding a block
  shares the block's errors. A full backward B is I's parts and W's; a recomputing stage's I holds
  its blocks' forward parts (the same op run again), a selectively recomputing one the attention core's.
* measured costs (a profile): one ``compute`` part per stage and op, its own group (each was timed
  on its own).
* per-stage kinds: the optimizer step is ``memory`` (a pass over the state at HBM bandwidth), a
  data-parallel collective ``link``, each kind its own group.

``layer_parts`` mirrors ``costs.price`` term by term (tests hold their sums equal).
"""
from __future__ import annotations

from collections import defaultdict

from simulator.kinds import BY_CODE, COMM, FORWARD, FULL_BACKWARD, BACKWARD_INPUT, BACKWARD_WEIGHT, KINDS, OPTIMIZER

from ..cluster import GPUSpec, LinkSpec
from ..costs import (Work, _attention_seconds, _memory_seconds, _no_grad_terms, _overheads,  # price()'s own terms
                     forward_parts, layer_work, selective_rerun_seconds, tp_seconds)

Part = tuple[str, tuple, float]  # (op class, group, seconds or share)
OpTerms = dict[tuple[int, int], tuple[Part, ...]]  # (stage, kind code) -> parts, shares summing to 1

_CODE = {name: rule.code for name, rule in KINDS.items()}


def _gemms(gpu: GPUSpec, gemms, shape) -> float:
    return sum(count * gpu.gemm_seconds(*shape(m, n, k), batch) for (m, n, k, batch), count in gemms)


def layer_parts(work: Work, gpu: GPUSpec, tp_link: LinkSpec | None) -> dict[str, list[tuple[str, str, float]]]:
    """Per op F, I, W of ``work``: its seconds as (class, op type whose error it carries, seconds),
    summing to ``costs.price(work, gpu, tp_link)``'s F, I and W."""
    def fwd(m, n, k): return m, n, k
    def dx(m, n, k): return m, k, n
    def dw(m, n, k): return k, n, m
    standard = work.score_memory_bytes > 0
    overhead_f, overhead_i, overhead_w = _overheads(work, gpu)
    core = _attention_seconds(gpu, work.attention_gemms, backward=False, standard=standard)
    tp_fwd = tp_seconds(work.tp_forward, work.tp, tp_link)
    tp_bwd = tp_seconds(work.tp_backward, work.tp, tp_link)
    memory_f, memory_i, memory_w = _memory_seconds(work, gpu)
    forward = [("gemm", "F", _gemms(gpu, work.gemms, fwd) + core), ("memory", "F", memory_f),
               ("link", "F", tp_fwd), ("overhead", "F", overhead_f)]
    backward_input = [
        ("gemm", "I", _gemms(gpu, work.gemms, dx)
         + _attention_seconds(gpu, work.attention_gemms, backward=True, standard=standard)),
        ("memory", "I", memory_i), ("link", "I", tp_bwd), ("overhead", "I", overhead_i)]
    backward_weight = [("gemm", "W", _gemms(gpu, work.gemms, dw)), ("memory", "W", memory_w),
                       ("overhead", "W", overhead_w)]
    if work.rerun is not None:  # full recomputation re-runs the checkpointed blocks' forward
        compute, memory, link, overhead = forward_parts(work.rerun, gpu, tp_link)
        backward_input += [("gemm", "F", compute), ("memory", "F", memory), ("link", "F", link),
                           ("overhead", "F", overhead)]  # the re-run records the graph
        no_grad = _no_grad_terms(work.rerun, gpu)
        if no_grad is not None:  # their F itself does not (``costs.price``)
            forward = [forward[0], ("memory", "F", memory_f - memory + no_grad[0]), forward[2],
                       ("overhead", "F", overhead_f - overhead + no_grad[1])]
    elif work.recompute == "selective" and work.score_memory_bytes > 0:
        backward_input += [("gemm", "F", core), ("memory", "F", selective_rerun_seconds(work, gpu) - core)]
    return {"F": forward, "I": backward_input, "W": backward_weight}


def _normalised(parts: dict[tuple[str, tuple], float]) -> tuple[Part, ...]:
    total = sum(parts.values())
    if total <= 0:
        return ()
    return tuple((cls, group, seconds / total) for (cls, group), seconds in sorted(parts.items()) if seconds > 0)


def _analytic_stage(resolved, stage: int) -> dict[str, tuple[Part, ...]]:
    """Per op kind of ``stage``: its analytic parts, summed over its layers."""
    plan, model, cluster = resolved.plan, resolved.model, resolved.cluster
    sums: dict[str, dict[tuple[str, tuple], float]] = {k: defaultdict(float) for k in "FIW"}
    for i in plan.stage_layers(stage):
        work = layer_work(model, i, plan.microbatch_size, resolved.seq_len, plan.recompute_mode(stage), plan.tp,
                          plan.sequence_parallel)
        kind = model.layer_kind(i)
        for op, parts in layer_parts(work, cluster.gpu, cluster.intra).items():
            for cls, of_op, seconds in parts:
                group = ("tp",) if cls == "link" else (kind, of_op)
                sums[op][(cls, group)] += seconds
    backward = defaultdict(float)
    for op in "IW":
        for key, seconds in sums[op].items():
            backward[key] += seconds
    return {FORWARD: _normalised(sums["F"]), BACKWARD_INPUT: _normalised(sums["I"]),
            BACKWARD_WEIGHT: _normalised(sums["W"]), FULL_BACKWARD: _normalised(backward)}


def op_terms(resolved, num_stages: int, measured: bool) -> OpTerms:
    """Every (stage, kind code) a workload of ``resolved`` can hold, with its parts (shares).

    ``measured``: the per-micro-batch ops were priced from a profile (one ``compute`` part each).
    """
    terms: OpTerms = {}
    for stage in range(num_stages):
        if measured:
            compute = {k: (("compute", ("measured", stage, k), 1.0),) for k in (FORWARD, FULL_BACKWARD,
                                                                                 BACKWARD_INPUT, BACKWARD_WEIGHT)}
        else:
            compute = _analytic_stage(resolved, stage)
        for kind, parts in compute.items():
            terms[(stage, _CODE[kind])] = parts
        for rule in BY_CODE:
            if rule.name == OPTIMIZER:
                terms[(stage, rule.code)] = (("memory", ("optimizer",), 1.0),)
            elif rule.stream == COMM:
                terms[(stage, rule.code)] = (("link", ("collective", rule.name), 1.0),)
    return terms
