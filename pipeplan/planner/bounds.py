"""Lower bounds on the *simulated* iteration time, so that pruning by them never loses the simulator's optimum.

The argument (``simulator.engine``): every device runs its compute ops one at a time in its list
order, each lasting its stage's cost (the sum of the stage's per-layer costs, as ``lowering``
prices it), and an op starts only after its dependencies have ended (transfers take ≥ 0 s).
The iteration time is the last end minus the first start, and the first op (F of stage 0, which
waits for nothing) starts at 0. So for every device d

    T ≥ head_d + busy_d + tail_d

where busy_d is the sum of d's op durations (m micro-batches of its stages' F + I + W, recomputation
included), head_d the dependency chain before d's first op (F of every stage before it, for one
micro-batch) and tail_d the chain that must still run after d's last op (for a B or I of stage k:
the backward of every stage below k; for a W: nothing). Also T ≥ the chain of one micro-batch
through every forward and backward. With dp > 1 the data-parallel actions follow d's last op
(``dp_tail``): T ≥ head_d + busy_d + that tail, an alternative to the chain after it (both hold, so
the larger counts).

The problem's integers are rounded per layer to the nearest unit, so each summed term may be
0.5 unit short of the float cost: the bounds subtract 0.5 unit per term summed (and a 1e-9
relative margin for float addition). Assumption, not proven here: a measured profile prices every
cut but the measured one as sums of single layers and B as I + W; there the bound is a heuristic.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np

from .problem import FULL, PartitionProblem, mode_of

MARGIN = 1.0 - 1e-9


def _backward_after(problem: PartitionProblem, kind: str) -> bool:
    """Whether a last op of this kind leaves a backward chain to run below it."""
    return kind in ("B", "I")


def plan_bound(problem: PartitionProblem, layers_per_stage: Sequence[int], recompute: Sequence[bool | str]) -> float:
    """Seconds no simulation of this split and recomputation can beat (see the module docstring)."""
    values = problem.stage_values(layers_per_stage, recompute)
    m = problem.num_microbatches
    full = [mode_of(r) == FULL for r in recompute]
    # Per stage: one micro-batch's F, its backward as the chain sees it (B = I + W, or I), and term counts.
    fwd = [v[0] for v in values]
    back = [v[1] + (v[2] if not problem.split_backward else 0) for v in values]
    n = list(layers_per_stage)
    back_terms = [n[k] * (2 if full[k] else 1) + (0 if problem.split_backward else n[k]) for k in range(len(n))]
    best = (sum(fwd) + sum(back)) - 0.5 * (sum(n) + sum(back_terms))  # one micro-batch's chain
    stage_params = _stage_params(problem, n)
    for d in range(problem.pp):
        stages = problem.stages_of(d)
        busy = m * sum(values[k][0] + values[k][1] + values[k][2] for k in stages)
        terms = m * sum(n[k] * (3 + (1 if full[k] else 0)) for k in stages)
        after, after_terms = 0.0, 0.0  # what must still run after d's last op, on other devices
        if problem.first_stage:
            first = problem.first_stage[d]
            busy += sum(fwd[:first])
            terms += sum(n[:first])
            last, kind = problem.last_action[d]
            if _backward_after(problem, kind):
                after, after_terms = sum(back[:last]), sum(back_terms[:last])
            elif kind == "F":
                after, after_terms = sum(fwd[last + 1:]) + sum(back), sum(n[last + 1:]) + sum(back_terms)
        own = busy - 0.5 * terms
        best = max(best, own + after - 0.5 * after_terms, own + _dp_after(problem, d, stage_params))
    return max(0.0, best) * problem.time_unit * MARGIN


def _stage_params(problem: PartitionProblem, layers_per_stage: Sequence[int]) -> list[float]:
    """Each stage's parameters on one GPU (empty without a data-parallel tail to price)."""
    if problem.dp_tail is None:
        return []
    out, start = [], 0
    for n in layers_per_stage:
        out.append(sum(problem.params[start:start + n]))
        start += n
    return out


def _dp_after(problem: PartitionProblem, device: int, stage_params: list[float]) -> float:
    """Time units the data-parallel tail runs at least after ``device``'s last compute op (``dp_tail``):
    when that op is a backward of stage k*, its reduction, step and gather; in any case every step."""
    if problem.dp_tail is None:
        return 0.0
    stages = problem.stages_of(device)
    held = sum(stage_params[k] for k in stages)
    _, kind = problem.last_action[device] if problem.last_action else (None, "")
    if kind in ("B", "W"):
        # Whichever of its stages the last op is a backward of (a cost-aware order may end on another than
        # the generated order the problem read): the least of them.
        seconds = min(problem.dp_tail.after_last(device, stage_params[k], held) for k in stages)
    else:
        seconds = problem.dp_tail.optimizer * held
    return seconds / problem.time_unit


def candidate_bound(problem: PartitionProblem) -> float:
    """Seconds no split and recomputation of this candidate can beat in simulation.

    Recomputation only lengthens I, so every term is taken without it. The chain of one micro-batch
    and the average device's busy time hold for any schedule; with one stage per device (v = 1) the
    minimum over all splits of max_d (head_d + busy_d + tail_d) is found exactly by a minimax
    dynamic programme over the cut points.
    """
    L, S, m = problem.num_layers, problem.num_stages, problem.num_microbatches
    F = np.concatenate(([0], np.cumsum(problem.forward, dtype=np.int64)))
    I_ = np.concatenate(([0], np.cumsum(problem.backward_input, dtype=np.int64)))
    W = np.concatenate(([0], np.cumsum(problem.backward_weight, dtype=np.int64)))
    B = I_ if problem.split_backward else I_ + W
    terms_per_layer = 2 if problem.split_backward else 3
    chain = F[L] + B[L] - 0.5 * terms_per_layer * L
    busy = m * (F[L] + I_[L] + W[L]) / problem.pp - 0.5 * 3 * m * L
    if problem.dp_tail is not None:  # every device's optimizer steps follow its last op: their average too
        busy += problem.dp_tail.optimizer * sum(problem.params) / problem.pp / problem.time_unit
    best = max(chain, busy)
    if problem.chunks == 1 and problem.first_stage and S <= L:
        best = max(best, _single_chunk_minimax(problem, F, I_, W, B))
    return max(0.0, float(best)) * problem.time_unit * MARGIN


def _single_chunk_minimax(problem: PartitionProblem, F, I_, W, B) -> float:
    """min over cuts of max_d (head_d + busy_d + tail_d) when device d holds stage d alone.

    ``reach[j]`` after stage k: the least max over stages 0..k of a split whose stage k ends at layer j.
    Each device's value is counted with a slack of 0.5 unit per term, as ``plan_bound`` does.
    """
    L, S, m = problem.num_layers, problem.num_stages, problem.num_microbatches
    idx = np.arange(L + 1)
    i, j = idx[:, None], idx[None, :]
    work = (F[j] - F[i]) + (I_[j] - I_[i]) + (W[j] - W[i])
    valid = j > i
    tail = problem.dp_tail
    P = np.concatenate(([0.0], np.cumsum(problem.params, dtype=np.float64))) if tail is not None else None
    reach = np.full(L + 1, np.inf)
    reach[0] = -np.inf
    for k in range(S):
        d = problem.stage_to_device[k]
        value = m * work - 0.5 * 3 * m * (j - i)
        if problem.first_stage[d] == k:
            value = value + F[i] - 0.5 * i
        last, kind = problem.last_action[d]
        after = np.zeros_like(value, dtype=np.float64)
        if last == k and kind in ("B", "I"):
            after = B[i] - 0.5 * (1 if problem.split_backward else 2) * i + 0.0 * j
        if tail is not None:  # the device's one stage: its reduction, step and gather follow its last op
            params = P[j] - P[i]
            seconds = (tail.collectives(d, 0.0) + params * (tail.reduce[d][1] + tail.gather[d][1] + tail.optimizer)
                       if kind in ("B", "W") else tail.optimizer * params)
            after = np.maximum(after, seconds / problem.time_unit)
        value = value + after
        value = np.where(valid, np.maximum(value, reach[:, None]), np.inf)
        reach = value.min(axis=0)
    return float(reach[L])
