"""A memory-aware lower bound on a candidate's simulated iteration time: a linear relaxation of ``bounds``.

``bounds.plan_bound`` holds for every split and recomputation: T ≥ the chain of one micro-batch, and for
every device d, T ≥ head_d + busy_d + (the chain after d's last op, or d's data-parallel tail). Every
term is a sum over layers of a per-layer value that depends on the layer's stage and recomputation mode
only, so it is linear in how many layers of each kind sit in each stage under each mode. The same holds
for a device's memory level under each count vector of the schedule (``exhaustive.surely_over``'s form:
one unit off per rounded term, so no plan the simulator fits is cut off).

The relaxation: x[g, k, μ] ≥ 0 layers of kind g (layers with identical costs, memory and parameters) in
stage k under mode μ, summing to the kind's count, every stage holding at least one layer; minimise T
subject to those rows. Every real plan that may fit is a point of it (contiguity and whole layers
dropped), so its optimum is a lower bound on every such plan's ``plan_bound``, hence on its simulated
time, and an infeasible relaxation means no plan of the candidate fits. Unlike ``candidate_bound`` it
sees that memory forces recomputation (each recomputed layer adds its forward to a device's busy time):
at llama3-70b, tp = 4, pp = 8, b = 2 it is 53.1 s for ZB-V where ``candidate_bound`` says 50.7 s.

Solved by GLOP (OR-Tools' simplex); the optimum is taken 1e-6 relatively low and the memory limit
1e-6 relatively high, for the solver's tolerances.
"""
from __future__ import annotations

import math

from .problem import FULL, SELECTIVE, PartitionProblem

TOLERANCE = 1e-6


def _kinds(problem: PartitionProblem) -> list[tuple[int, int]]:
    """(first layer, count) of each group of identical layers, in layer order."""
    sel = bool(problem.backward_input_sel)
    groups: dict[tuple, list[int]] = {}
    for i in range(problem.num_layers):
        key = (problem.forward[i], problem.backward_input[i], problem.backward_weight[i], problem.activation[i],
               problem.held[i], problem.activation_rc[i], problem.held_rc[i], problem.static[i],
               problem.backward_input_sel[i] if sel else 0, problem.activation_sel[i] if sel else 0,
               problem.held_sel[i] if sel else 0, problem.params[i] if problem.params else 0.0)
        groups.setdefault(key, []).append(i)
    return [(members[0], len(members)) for members in groups.values()]


def _layer_values(problem: PartitionProblem, i: int, mode: str) -> dict[str, float]:
    """Layer i's share of every row under ``mode``, slack included (``bounds``: 0.5 unit per rounded term)."""
    f, w = problem.forward[i], problem.backward_weight[i]
    if mode == SELECTIVE:
        ib, act, held = problem.backward_input_sel[i], problem.activation_sel[i], problem.held_sel[i]
    elif mode == FULL:
        ib, act, held = problem.backward_input[i] + f, problem.activation_rc[i], problem.held_rc[i]
    else:
        ib, act, held = problem.backward_input[i], problem.activation[i], problem.held[i]
    full = 1 if mode == FULL else 0
    back = ib + (0 if problem.split_backward else w)
    back_terms = 1 + full + (0 if problem.split_backward else 1)
    m = problem.num_microbatches
    return {"busy": m * (f + ib + w) - 0.5 * m * (3 + full), "fwd": f - 0.5, "back": back - 0.5 * back_terms,
            "act": act - 1, "held": held - 1, "static": problem.static[i] - 1,
            "params": problem.params[i] if problem.params else 0.0}


def relaxed_bound(problem: PartitionProblem) -> float:
    """Seconds no split and recomputation of ``problem`` that may fit simulates faster than (module
    docstring); inf when none may fit; 0 when the solver gives no answer (no bound)."""
    from ortools.linear_solver import pywraplp

    S, p = problem.num_stages, problem.pp
    if S > problem.num_layers:
        return math.inf
    solver = pywraplp.Solver.CreateSolver("GLOP")
    kinds = _kinds(problem)
    modes = problem.modes  # with uniform_recompute too: a relaxation may mix modes
    values = {(g, mu): _layer_values(problem, first, mu) for g, (first, _) in enumerate(kinds) for mu in modes}
    x = {(g, k, mu): solver.NumVar(0.0, count, "") for g, (_, count) in enumerate(kinds)
         for k in range(S) for mu in modes}
    T = solver.NumVar(0.0, solver.infinity(), "T")
    for g, (_, count) in enumerate(kinds):
        row = solver.Constraint(count, count)
        for k in range(S):
            for mu in modes:
                row.SetCoefficient(x[g, k, mu], 1.0)
    for k in range(S):
        row = solver.Constraint(1.0, solver.infinity())
        for g in range(len(kinds)):
            for mu in modes:
                row.SetCoefficient(x[g, k, mu], 1.0)

    def at_least(lower: float, coefficient) -> None:
        """T ≥ lower + Σ x · coefficient(g, k, values)."""
        row = solver.Constraint(lower, solver.infinity())
        row.SetCoefficient(T, 1.0)
        for (g, k, mu), var in x.items():
            c = coefficient(k, values[g, mu])
            if c:
                row.SetCoefficient(var, -c)

    at_least(0.0, lambda k, v: v["fwd"] + v["back"])  # one micro-batch's chain
    tail, unit = problem.dp_tail, problem.time_unit
    for d in range(p):
        stages = set(problem.stages_of(d))
        first = problem.first_stage[d] if problem.first_stage else 0
        last, kind = problem.last_action[d] if problem.last_action else (0, "")

        def own(k: int, v: dict) -> float:
            return (v["busy"] if k in stages else 0.0) + (v["fwd"] if k < first else 0.0)

        def after(k: int, v: dict) -> float:
            if kind in ("B", "I"):
                return v["back"] if k < last else 0.0
            if kind == "F":
                return v["back"] + (v["fwd"] if k > last else 0.0)
            return 0.0

        at_least(0.0, lambda k, v: own(k, v) + after(k, v))
        if tail is not None:
            step = tail.optimizer / unit
            at_least(0.0, lambda k, v: own(k, v) + (step * v["params"] if k in stages else 0.0))
            if kind in ("B", "W"):
                rate = (tail.reduce[d][1] + tail.gather[d][1] + tail.optimizer) / unit
                at_least(tail.collectives(d, 0.0) / unit, lambda k, v: own(k, v) + (rate * v["params"] if k == last else 0.0))
        limit = (problem.capacity + 1) * (1 + TOLERANCE) + 1
        ordered = problem.stages_of(d)
        for vector in problem.profiles[d] if problem.profiles else ():
            counts = dict(zip(ordered, vector))
            row = solver.Constraint(-solver.infinity(), limit)
            for (g, k, mu), var in x.items():
                if k in counts:
                    nf, nh = counts[k]
                    v = values[g, mu]
                    c = v["static"] + nf * v["act"] + nh * v["held"]
                    if c:
                        row.SetCoefficient(var, c)
    solver.Minimize(T)
    status = solver.Solve()
    if status == pywraplp.Solver.INFEASIBLE:
        return math.inf
    if status != pywraplp.Solver.OPTIMAL:
        return 0.0
    return max(0.0, T.solution_value()) * unit * (1 - TOLERANCE)
