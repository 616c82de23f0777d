"""``optimize --inference``: the serving plan that serves B requests best on the GPUs given.

The candidates are ``candidates.enumerate_candidates``' (tp, pp, dp, cut, requests per micro-batch b,
micro-batches in flight k). Each is judged by the simulator (``simulate_serving``'s steps: resolve,
lower, simulate), and must fit memory (every device's simulated peak, weights + KV cache +
activations, within ``1 − headroom`` of its capacity) and meet the targets (``ServingTarget``: p99
end-to-end latency, p99 time to first token, p99 time per output token). The objective is the most
output tokens per second over all replicas (ties: lower p99 latency), or the lowest p99 end-to-end
latency (ties: more tokens per second); a remaining tie goes to the candidate listed first
(``ServingCandidate.key``: fewer GPUs, smaller tp, pp, dp, the even cut, smaller b and k).

Every layout's best plan is found (the answer's table shows one row per layout) by branch and bound:
its candidates in order of their optimistic figures (``bounds.candidate_bounds``, valid for the
simulator), each simulated unless its bounds already break a target or the memory, or cannot beat the
layout's best so far; once one cannot, none after it can. The answer is the best layout's best,
exactly the plan simulating every candidate would choose (``tests/test_inference_planner.py``).

``optimize_serving`` is the keyword API (re-exported by ``pipeplan``); ``pipeplan optimize --inference``
calls it.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

from simulator.engine import simulate as simulate_workload

from ..cluster import ClusterSpec
from ..errors import SpecError
from ..model import ModelSpec
from ..plan import Plan
from .api import DEFAULT_SCHEDULE, resolve_serving
from .bounds import CandidateBounds, candidate_bounds
from .candidates import Layout, ServingCandidate
from .lowering import build_serving_workload
from .metrics import ServingResult
from .requests import ServingSpec, request_order

THROUGHPUT, LATENCY = "throughput", "latency"
OBJECTIVES = (THROUGHPUT, LATENCY)

# What became of a candidate.
SIMULATED, OVER_SLO, OUT_OF_MEMORY = "simulated", "misses target", "out of memory"
BOUND_SLO, BOUND_MEMORY, BOUND_WORSE = "misses target (bound)", "out of memory (bound)", "cannot win (bound)"


@dataclass(frozen=True)
class ServingTarget:
    """What the plan must meet (seconds, p99 over the requests; None: no target) and what it optimises."""

    objective: str = THROUGHPUT
    latency_slo: float | None = None
    ttft_slo: float | None = None
    tpot_slo: float | None = None

    def __post_init__(self) -> None:
        if self.objective not in OBJECTIVES:
            raise SpecError(f"--objective: {self.objective!r}; choose throughput or latency")
        if self.objective == LATENCY and self.latency_slo is not None:
            raise SpecError("--latency-slo: --objective latency already minimises the end-to-end latency; give "
                            "--latency-slo with --objective throughput, or drop it")
        if self.latency_slo is not None and (self.ttft_slo is not None or self.tpot_slo is not None):
            raise SpecError("--latency-slo: give either an end-to-end target (--latency-slo) or per-token ones "
                            "(--ttft-slo, --tpot-slo), not both")

    def misses(self, latency: float, ttft: float, tpot: float) -> list[str]:
        """The targets p99 figures ``latency``, ``ttft``, ``tpot`` (seconds) miss, as text."""
        out = []
        for name, value, slo in (("latency", latency, self.latency_slo), ("TTFT", ttft, self.ttft_slo),
                                 ("TPOT", tpot, self.tpot_slo)):
            if slo is not None and value > slo:
                out.append(f"p99 {name} {value * 1e3:,.4g} ms > {slo * 1e3:,.4g} ms")
        return out


@dataclass(frozen=True)
class ServingQuestion:
    """The search's inputs: the model and cluster (as given, for the plan file, and loaded), the GPUs,
    the request mix, the B requests, the target and the memory headroom."""

    model: str | dict
    cluster: str | dict
    model_spec: ModelSpec
    cluster_spec: ClusterSpec
    nodes: int | None
    gpus: int
    serving: ServingSpec  # the mix; ``requests`` unset
    batch: int
    target: ServingTarget
    headroom: float = 0.05


@dataclass(frozen=True)
class Judged:
    """A candidate, its plan, its bounds, what became of it and, when simulated, its result."""

    candidate: ServingCandidate
    plan: Plan
    bounds: CandidateBounds
    status: str
    result: ServingResult | None = None
    missed: tuple[str, ...] = ()

    @property
    def feasible(self) -> bool:
        return self.status == SIMULATED


def candidate_plan(q: ServingQuestion, c: ServingCandidate) -> Plan:
    lay = c.layout
    return Plan(model=q.model, cluster=q.cluster, nodes=q.nodes, schedule=DEFAULT_SCHEDULE, pp=lay.pp, tp=lay.tp,
                dp=lay.dp, num_microbatches=c.in_flight, microbatch_size=c.microbatch_size,
                layers_per_stage=c.layers_per_stage, serving=ServingSpec(q.serving.mix, lay.requests))


def figures(result: ServingResult) -> tuple[float, float, float, float]:
    """(tokens/s, p99 latency, p99 TTFT, p99 TPOT) of a simulated run; a run of one-token requests has no TPOT (0)."""
    tpot = result.tpot.p99
    return result.tokens_per_second, result.latency.p99, result.ttft.p99, 0.0 if math.isnan(tpot) else tpot


def score(objective: str, tokens: float, latency: float) -> tuple[float, float]:
    """Smaller is better: the objective first, the other figure breaking ties."""
    return (-tokens, latency) if objective == THROUGHPUT else (latency, -tokens)


def fits(result: ServingResult, headroom: float) -> bool:
    return all(peak <= (1 - headroom) * cap for peak, cap in zip(result.peak_memory, result.sim.capacity))


def bounds_of(q: ServingQuestion, c: ServingCandidate) -> CandidateBounds:
    lay = c.layout
    return candidate_bounds(q.model_spec, q.cluster_spec, lay.tp, q.serving, lay.requests, c.microbatch_size,
                            c.in_flight, c.layers_per_stage)


def simulate_candidate(q: ServingQuestion, plan: Plan) -> ServingResult:
    """``simulate_serving``'s steps on the loaded model and cluster."""
    resolved = resolve_serving(plan, model=q.model_spec, cluster=q.cluster_spec)
    workload = build_serving_workload(resolved)
    return ServingResult(simulate_workload(workload), workload, resolved)


def judge_layout(q: ServingQuestion, candidates: list[ServingCandidate],
                 progress: Callable[[], None] | None = None) -> list[Judged]:
    """Every candidate of one layout, judged by branch and bound (see the module docstring)."""
    queue, judged = [], []
    capacity = (1 - q.headroom) * q.cluster_spec.gpu.memory_bytes
    for c in candidates:
        plan, bounds = candidate_plan(q, c), bounds_of(q, c)
        tokens = output_tokens(q.serving, c.layout.requests) * c.layout.dp / bounds.makespan
        missed = q.target.misses(bounds.latency_p99, bounds.ttft_p99, bounds.tpot_p99)
        if max(bounds.peak_memory) > capacity:
            judged.append(Judged(c, plan, bounds, BOUND_MEMORY))
        elif missed:
            judged.append(Judged(c, plan, bounds, BOUND_SLO, missed=tuple(missed)))
        else:
            queue.append((score(q.target.objective, tokens, bounds.latency_p99), c.key, c, plan, bounds))
    queue.sort(key=lambda item: item[:2])
    best = None
    for k, (optimistic, _, c, plan, bounds) in enumerate(queue):
        if best is not None and optimistic[0] > best[0]:  # no later one can win either: all are sorted
            judged.extend(Judged(c2, p2, b2, BOUND_WORSE) for _, _, c2, p2, b2 in queue[k:])
            break
        result = simulate_candidate(q, plan)
        if progress:
            progress()
        tokens, latency, ttft, tpot = figures(result)
        missed = q.target.misses(latency, ttft, tpot)
        if not fits(result, q.headroom):
            judged.append(Judged(c, plan, bounds, OUT_OF_MEMORY, result))
        elif missed:
            judged.append(Judged(c, plan, bounds, OVER_SLO, result, tuple(missed)))
        else:
            judged.append(Judged(c, plan, bounds, SIMULATED, result))
            value = score(q.target.objective, tokens, latency)
            if best is None or (*value, c.key) < best:
                best = (*value, c.key)
    return judged


def output_tokens(serving: ServingSpec, requests: int) -> int:
    """Tokens a replica serving ``requests`` of the mix generates (each request's output length)."""
    return sum(r.output_len for r in request_order(serving.mix, requests))


def rank_key(j: Judged, objective: str) -> tuple:
    """The order of simulated, feasible candidates: best first (see the module docstring)."""
    tokens, latency, _, _ = figures(j.result)
    return (*score(objective, tokens, latency), j.candidate.key)


@dataclass(frozen=True)
class LayoutBest:
    """One layout's candidates as judged, and its best feasible one (None: none is)."""

    layout: Layout
    judged: tuple[Judged, ...]
    objective: str

    @property
    def best(self) -> Judged | None:
        feasible = [j for j in self.judged if j.feasible]
        return min(feasible, key=lambda j: rank_key(j, self.objective)) if feasible else None

    def count(self, *statuses: str) -> int:
        return sum(j.status in statuses for j in self.judged)


@dataclass(frozen=True)
class ServingAnswer:
    """The search's outcome: every layout's judged candidates, best layout first."""

    question: ServingQuestion
    layouts: tuple[LayoutBest, ...]
    left_out: tuple[str, ...]  # candidates over the ops limit, never built

    @property
    def ranked(self) -> list[LayoutBest]:
        """Layouts with a feasible plan, best first, then the others in listing order."""
        objective = self.question.target.objective
        ok = sorted((lb for lb in self.layouts if lb.best is not None), key=lambda lb: rank_key(lb.best, objective))
        return ok + [lb for lb in self.layouts if lb.best is None]

    @property
    def chosen(self) -> Judged | None:
        return self.ranked[0].best if self.layouts else None

    @property
    def judged(self) -> list[Judged]:
        return [j for lb in self.layouts for j in lb.judged]

    @property
    def simulated(self) -> int:
        return sum(j.result is not None for j in self.judged)


def search(q: ServingQuestion, candidates: list[ServingCandidate], left_out: list[str] = (),
           progress: Callable[[], None] | None = None) -> ServingAnswer:
    """Judge every layout's candidates (``judge_layout``); the answer's ``chosen`` is the best plan or None."""
    by_layout: dict[Layout, list[ServingCandidate]] = {}
    for c in candidates:
        by_layout.setdefault(c.layout, []).append(c)
    found = tuple(LayoutBest(lay, tuple(judge_layout(q, cs, progress)), q.target.objective)
                  for lay, cs in by_layout.items())
    return ServingAnswer(q, found, tuple(left_out))


def check_positions(model: ModelSpec, serving: ServingSpec) -> None:
    """Refuse a request class longer than the model's positions (``model.seq_len``)."""
    for c in serving.mix:
        if c.prompt_len + c.output_len > model.seq_len:
            flags = "--mix" if len(serving.mix) > 1 else "--prompt-len + --output-len"
            raise SpecError(f"{flags}: {c.prompt_len:,} + {c.output_len:,} = {c.prompt_len + c.output_len:,} tokens "
                            f"exceed {model.name}'s {model.seq_len:,} positions (model.seq_len); shorten the prompt "
                            "or the output")


def optimize_serving(model: ModelSpec | str | dict, cluster: ClusterSpec | str | dict = "dgx-h100", *, batch: int,
                     prompt_len: int | None = None, output_len: int | None = None, mix=None, gpus: int | None = None,
                     nodes: int | None = None, tp: int | None = None, pp: int | None = None, dp: int | None = None,
                     microbatch_sizes=None, objective: str = THROUGHPUT, latency_slo: float | None = None,
                     ttft_slo: float | None = None, tpot_slo: float | None = None, headroom: float = 0.05,
                     progress: Callable[[], None] | None = None) -> ServingAnswer:
    """The serving plan for ``batch`` requests of ``prompt_len`` x ``output_len`` tokens (or a ``mix`` of
    ``RequestClass``es, or its text "512x128:3,2048x256") on ``gpus`` GPUs (default: every GPU of
    ``nodes``, else of one node); see the module docstring. ``answer.chosen`` is None when no candidate
    fits and meets the targets; every step before the search refuses bad input with a one-line ``SpecError``.
    """
    from ..errors import positive_int
    from ..limits import in_range
    from ..planner.optimize import _gpus_and_cluster
    from .candidates import enumerate_candidates, layouts
    from .requests import parse_mix

    target = ServingTarget(objective, latency_slo, ttft_slo, tpot_slo)
    in_range("--batch", positive_int("--batch", batch), "global_batch")
    if mix is not None:
        if prompt_len is not None or output_len is not None:
            raise SpecError("--mix: give either --mix or --prompt-len/--output-len, not both")
        serving = ServingSpec(parse_mix(mix) if isinstance(mix, str) else tuple(mix))
    elif prompt_len is None or output_len is None:
        missing = "--prompt-len" if prompt_len is None else "--output-len"
        raise SpecError(f"{missing}: give the prompt and output lengths, e.g. --prompt-len 1024 --output-len 256 "
                        "(or a request mix, --mix 512x128:3,2048x256)")
    else:
        serving = ServingSpec.uniform(prompt_len, output_len)
    spec, cluster_spec, gpus, grown = _gpus_and_cluster(model, cluster, nodes, gpus)
    check_positions(spec, serving)
    q = ServingQuestion(model, cluster, spec, cluster_spec, cluster_spec.nodes if nodes is not None or grown else None,
                        gpus, serving, batch, target, headroom)
    found = layouts(spec, gpus, cluster_spec.gpus_per_node, batch, tp, pp, dp)
    candidates, left_out = enumerate_candidates(spec, cluster_spec, serving, found,
                                                tuple(microbatch_sizes) if microbatch_sizes else None)
    return search(q, candidates, left_out, progress)
