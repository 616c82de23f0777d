"""A memory-aware lower bound on a candidate's simulated iteration time: a linear relaxation of ``bounds``.

``bounds.plan_bound`` holds for every split and recomputation: T ≥ the chain of one micro-batch, and for
every device d, T ≥ head_d + busy_d + (the chain after d's last op, or d's data-parallel tail). Every
term is a sum over layers of a per-layer value that depends on the layer's stage and recomputation mode
only, so it is linear in how many layers of each kind sit in each stage under each mode. The same holds
for a device's memory level under each count vector of the schedule (``exhaustive.surely_over``'s form:
one unit off per rounded term, so no plan the simulator fits is cut off).

The relaxation: x[g, k, μ] ≥ 0 layers of kind g (layers with identical costs, memory and parameters) in
stage k under mode μ, summing to the kind's count, every stage holding at least one layer; minimise T
subject to those rows (of a device's count vectors only the strongest, ``_strongest``, and of its
data-parallel tail, where it holds several stages, only the collectives' latency: dropping rows keeps a
relaxation). Every real plan that may fit is a point of it (contiguity and whole layers
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
               problem.held_sel[i] if sel else 0, problem.params[i] if problem.params else 0.0,
               problem.recomputed[i])
        groups.setdefault(key, []).append(i)
    return [(members[0], len(members)) for members in groups.values()]


def _layer_values(problem: PartitionProblem, i: int, mode: str) -> dict[str, float]:
    """Layer i's share of every row under ``mode``, slack included (``bounds``: 0.5 unit per rounded time
    term; ``surely_over``: one unit per memory term)."""
    f, w = problem.forward[i], problem.backward_weight[i]
    if mode == SELECTIVE:
        ib, act, held = problem.backward_input_sel[i], problem.activation_sel[i], problem.held_sel[i]
    elif mode == FULL:
        ib, act, held = problem.backward_input[i] + problem.recomputed[i], problem.activation_rc[i], problem.held_rc[i]
    else:
        ib, act, held = problem.backward_input[i], problem.activation[i], problem.held[i]
    full = 1 if mode == FULL else 0
    back = ib + (0 if problem.split_backward else w)
    back_terms = 1 + full + (0 if problem.split_backward else 1)
    m = problem.num_microbatches
    return {"busy": m * (f + ib + w) - 0.5 * m * (3 + full), "fwd": f - 0.5, "back": back - 0.5 * back_terms,
            "act": act - 1, "held": held - 1, "static": problem.static[i] - 1,
            "params": problem.params[i] if problem.params else 0.0}


def _strongest(vectors) -> list:
    """Of a device's count vectors, the one with the most activations held and, per stage, the one holding the
    most of that stage's (full, then held): a relaxation may drop rows, and these bind in practice (an
    interleaved device at p = 16 has up to 60 vectors)."""
    keep = {max(vectors, key=lambda v: (sum(f + h for f, h in v), v))}
    for k in range(len(vectors[0]) if vectors else 0):
        keep.add(max(vectors, key=lambda v: (v[k], v)))
    return sorted(keep, reverse=True)


class _Relaxation:
    """The LP's variables and the rows every relaxation shares: each kind's count, every stage non-empty."""

    def __init__(self, problem: PartitionProblem):
        from ortools.linear_solver import pywraplp

        self.pywraplp, self.problem = pywraplp, problem
        self.solver = pywraplp.Solver.CreateSolver("GLOP")
        self.inf = self.solver.infinity()
        kinds = _kinds(problem)
        modes = problem.modes  # with uniform_recompute too: a relaxation may mix modes
        self.values = {(g, mu): _layer_values(problem, first, mu) for g, (first, _) in enumerate(kinds)
                       for mu in modes}
        self.stages = range(problem.num_stages)
        self.by_stage = [[(g, mu, self.solver.NumVar(0.0, count, "")) for g, (_, count) in enumerate(kinds)
                          for mu in modes] for _ in self.stages]
        for g, (_, count) in enumerate(kinds):
            constraint = self.solver.Constraint(count, count)
            for row in self.by_stage:
                for kind, _, var in row:
                    if kind == g:
                        constraint.SetCoefficient(var, 1.0)
        for k in self.stages:
            self.row(1.0, self.inf, {}, lambda k, v: 1.0, stages=(k,))

    def row(self, lower: float, upper: float, own: dict, coefficient, stages=None) -> None:
        """lower ≤ Σ own[var]·var + Σ x · coefficient(stage, values) ≤ upper, x over ``stages`` (None: all)."""
        constraint = self.solver.Constraint(lower, upper)
        for var, c in own.items():
            constraint.SetCoefficient(var, c)
        for k in self.stages if stages is None else stages:
            for g, mu, var in self.by_stage[k]:
                c = coefficient(k, self.values[g, mu])
                if c:
                    constraint.SetCoefficient(var, c)

    def memory(self, limit: float) -> None:
        """Every device's level under each of its count vectors at most ``limit`` units."""
        problem = self.problem
        for d in range(problem.pp):
            ordered = problem.stages_of(d)
            for vector in _strongest(problem.profiles[d]) if problem.profiles else ():
                counts = dict(zip(ordered, vector))
                self.row(-self.inf, limit, {}, lambda k, v, counts=counts: v["static"] + counts[k][0] * v["act"]
                         + counts[k][1] * v["held"], stages=ordered)

    def minimum(self, objective: dict) -> float | None:
        """The least Σ coefficient · var (None: infeasible; 0 when the solver gives no answer)."""
        goal = self.solver.Objective()
        for var, c in objective.items():
            goal.SetCoefficient(var, c)
        goal.SetMinimization()
        status = self.solver.Solve()
        if status == self.pywraplp.Solver.INFEASIBLE:
            return None
        if status != self.pywraplp.Solver.OPTIMAL:
            return 0.0
        return max(0.0, goal.Value())


def relaxed_bound(problem: PartitionProblem) -> float:
    """Seconds no split and recomputation of ``problem`` that may fit simulates faster than (module
    docstring); inf when none may fit; 0 when the solver gives no answer (no bound)."""
    S, p = problem.num_stages, problem.pp
    if S > problem.num_layers:
        return math.inf
    lp = _Relaxation(problem)
    T = lp.solver.NumVar(0.0, lp.inf, "T")
    lp.row(0.0, lp.inf, {T: 1.0}, lambda k, v: -(v["fwd"] + v["back"]))  # one micro-batch's chain
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

        lp.row(0.0, lp.inf, {T: 1.0}, lambda k, v: -(own(k, v) + after(k, v)))
        if tail is not None:
            step = tail.optimizer / unit
            lp.row(0.0, lp.inf, {T: 1.0}, lambda k, v: -(own(k, v) + (step * v["params"] if k in stages else 0.0)))
            if kind in ("B", "W"):
                # The last op's stage: the one stage of a device that holds one; with several, a cost-aware
                # order may end on another, so only the collectives' latency is sure.
                rate = (tail.reduce[d][1] + tail.gather[d][1] + tail.optimizer) / unit if len(stages) == 1 else 0.0
                lp.row(tail.collectives(d, 0.0) / unit, lp.inf, {T: 1.0},
                       lambda k, v: -(own(k, v) + (rate * v["params"] if k == last else 0.0)))
    lp.memory((problem.capacity + 1) * (1 + TOLERANCE) + 1)
    value = lp.minimum({T: 1.0})
    return math.inf if value is None else value * unit * (1 - TOLERANCE)
