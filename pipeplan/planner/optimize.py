"""The outer loop: enumerate candidates, prune by bounds, CP-SAT per candidate, the simulator judges.

1. every (schedule, v, b) the generators accept, with m = per-replica batch / b;
2. in order of their lower bound, CP-SAT finds each candidate's best split and recomputation under the
   analytic objective; a candidate whose bound cannot beat the ``rescore``-th best found is skipped;
3. the simulator re-scores the best ``rescore`` proposals and the best of every schedule variant, and
   polishes the two fastest by moving single cuts while that simulates faster (``refine``);
4. the baselines run under the winner's schedule, b and m through the same simulator; whichever
   simulates fastest and fits (headroom included) is returned, so the answer is never slower than a
   baseline.
"""
from __future__ import annotations

import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Callable

from ..api import simulate
from ..cluster import CLUSTER_PRESETS, ClusterSpec, load_cluster
from ..errors import SpecError, positive_int
from ..model import MODEL_PRESETS, ModelSpec, load_model
from ..plan import Plan, default_placement
from ..profile import Profile, load_profile
from .baselines import BRUTE_FORCE, PARAMETERS, UNIFORM, all_splits, deepspeed_parameters, megatron_uniform
from .candidates import enumerate_candidates, lower_bound, schedule_variants
from .cpsat import Solution, solve
from .problem import Candidate, build_problem
from .refine import fits_within, refine
from .result import CandidateRecord, OptimizeResult, Scored

Progress = Callable[[int, int, str], None]
MAX_PARALLEL = 8
POLISHED = 2  # proposals the simulator polishes; the runner-up schedule often overtakes after polish


def _spec_ref(given, spec):
    """What the plan file should name: the user's preset name or spec file (made absolute), a preset's name, or the spec inline."""
    if isinstance(given, str):
        # A spec file is named by its absolute path: a relative one would be looked up beside the plan
        # file (then in the folder the plan is used from), not where optimize ran.
        presets = MODEL_PRESETS if isinstance(spec, ModelSpec) else CLUSTER_PRESETS
        return given if given in presets else str(Path(given).resolve())
    if isinstance(spec, ModelSpec):
        return spec.name if MODEL_PRESETS.get(spec.name) == spec else spec.to_dict()
    preset = CLUSTER_PRESETS.get(spec.name)
    return spec.name if preset is not None and preset.with_nodes(spec.nodes) == spec else spec.to_dict()


def optimize(model: ModelSpec | str | dict, cluster: ClusterSpec | str | dict, global_batch: int,
             pp: int | None = None, dp: int = 1, nodes: int | None = None, seq_len: int | None = None,
             schedules: list[str] | None = None, microbatch_sizes: list[int] | None = None,
             time_limit: float = 5.0, headroom: float = 0.05, distributed_optimizer: bool = False,
             rescore: int = 3, parallel: int | None = None, progress: Progress | None = None,
             profile: Profile | str | dict | None = None) -> OptimizeResult:
    """Find the fastest plan that fits: cut points, recomputation per stage, schedule, b, m and v.

    ``time_limit`` is each candidate's CP-SAT budget (deterministic seconds); ``headroom`` the share
    of GPU memory kept free; ``parallel`` > 1 solves that many candidates at once in worker processes
    (at most 8; worth it on an idle machine with that many cores). Raises SpecError (one line) when
    nothing fits, saying how much memory per GPU or how many pipeline devices would be needed.

    ``profile``: measured op times and links (``pipeplan validate`` writes one) instead of the analytic
    cost model, for the planner's objective and the simulator that judges. A profile is measured at one
    micro-batch size and sequence length, so those are fixed to its values; memory stays the model's.
    """
    started = time.perf_counter()
    spec = load_model(model)
    cl = load_cluster(cluster, nodes)
    positive_int("dp", dp)
    positive_int("global_batch", global_batch)
    if seq_len is not None:
        positive_int("seq_len", seq_len)
    if not 0 <= headroom < 1:
        raise SpecError(f"headroom: must be in [0, 1) (got {headroom}); 0.05 keeps 5 % of each GPU free")
    if not time_limit > 0:  # NaN too: it would make every solve give up at once
        raise SpecError(f"time_limit: must be > 0 seconds (got {time_limit})")
    if pp is None and dp > cl.num_gpus:
        raise SpecError(f"dp: {dp} replicas need at least {dp} GPUs but {cl.name} has {cl.num_gpus} with "
                        f"{cl.nodes} node(s); raise --nodes or lower --dp")
    pp = pp if pp is not None else cl.num_gpus // dp
    positive_int("pp", pp)
    if pp * dp > cl.num_gpus:
        raise SpecError(f"pp: pp x dp = {pp * dp} GPUs but {cl.name} has {cl.num_gpus} with {cl.nodes} node(s); "
                        f"raise --nodes or lower --pp/--dp")
    if global_batch % dp:
        raise SpecError(f"global_batch: {global_batch} is not divisible by dp = {dp}")
    L = spec.num_pipeline_layers
    if pp > L:
        raise SpecError(f"pp: {pp} pipeline devices need at least {pp} layers; {spec.name} has {L}; lower --pp")
    batch = global_batch // dp
    if microbatch_sizes is not None:
        for b in microbatch_sizes:
            positive_int("microbatch_sizes", b)
        if not any(batch % b == 0 for b in microbatch_sizes):
            raise SpecError(f"microbatch_sizes: none of {list(microbatch_sizes)} divides the per-replica batch of "
                            f"{batch} (global batch / dp); choose sizes that divide it")
    prof = load_profile(profile)
    if prof is not None:
        seq_len, microbatch_sizes = _profile_shapes(prof, spec, seq_len, microbatch_sizes)
    s = seq_len or spec.seq_len
    gpus = default_placement(pp, dp)
    variants = schedule_variants(schedules)
    found = enumerate_candidates(L, pp, batch, variants, microbatch_sizes)
    if not found:
        raise SpecError(f"schedules: no schedule of {', '.join(n for n, _ in variants)} runs with pp = {pp} and a "
                        f"per-replica batch of {batch}; try other --schedules or a larger --global-batch")
    model_ref, cluster_ref = _spec_ref(model, spec), _spec_ref(cluster, cl)
    # A ClusterSpec given as an object and written as its preset's name must keep its node count.
    plan_nodes = nodes if nodes is not None else (
        cl.nodes if not isinstance(cluster, str) and isinstance(cluster_ref, str) else None)

    def make_plan(candidate: Candidate, layers: tuple[int, ...], recompute: tuple[bool, ...]) -> Plan:
        return Plan(model=model_ref, cluster=cluster_ref, nodes=plan_nodes, schedule=candidate.schedule, pp=pp,
                    chunks=candidate.chunks, num_microbatches=candidate.num_microbatches,
                    microbatch_size=candidate.microbatch_size, layers_per_stage=tuple(layers),
                    recompute=tuple("full" if r else "none" for r in recompute), seq_len=seq_len, dp=dp,
                    distributed_optimizer=distributed_optimizer)

    def judge(name: str, plan: Plan) -> Scored:
        return Scored(name, plan, simulate(spec, cl, plan, profile=prof))

    problems = []
    for candidate, schedule in found:
        problem = build_problem(spec, cl, candidate, schedule, s, gpus, dp, distributed_optimizer, headroom,
                                profile=prof)
        problems.append((problem.seconds(lower_bound(problem)), candidate.label, candidate, problem))
    problems.sort(key=lambda t: (t[0], t[1]))

    records: dict[Candidate, CandidateRecord] = {}
    solved: list[tuple[float, Candidate, Solution]] = []
    total = len(problems) + 1
    parallel = max(1, min(parallel or 1, MAX_PARALLEL))
    pool = ProcessPoolExecutor(parallel) if parallel > 1 else None
    try:
        def pruned(bound: int) -> bool:
            best_found = sorted(t for t, _, _ in solved)
            return len(best_found) >= rescore and bound >= best_found[rescore - 1]

        # Batches of ``parallel`` candidates in bound order. Workers solve a batch ahead of time, then the
        # results are taken in order and one that a single process would have pruned (by a result earlier
        # in the same batch) is dropped; each solve is deterministic, so the search and the answer do not
        # depend on how many processes ran it.
        for first in range(0, len(problems), parallel):
            if progress:
                progress(first, total, problems[first][2].label)
            jobs = []
            for bound, _, candidate, problem in problems[first:first + parallel]:
                if pruned(bound):
                    records[candidate] = CandidateRecord(candidate, bound)
                    continue
                hint = megatron_uniform(spec, problem.num_stages)
                hint_recompute = next((rc for rc in ((False,) * len(hint), (True,) * len(hint))
                                       if problem.objective(hint, rc) is not None), None)
                args = (problem, time_limit, 1, hint, hint_recompute)
                jobs.append((bound, candidate, problem, pool.submit(solve, *args) if pool else solve(*args)))
            for bound, candidate, problem, job in jobs:
                if pruned(bound):
                    if pool:
                        job.cancel()
                    records[candidate] = CandidateRecord(candidate, bound)
                    continue
                solution = job.result() if pool else job
                predicted = problem.seconds(solution.objective) if solution.found else None
                records[candidate] = CandidateRecord(candidate, bound, solution.status, predicted, solution.gap,
                                                     solution.wall_time)
                if solution.found:
                    solved.append((predicted, candidate, solution))
    finally:
        if pool:
            pool.shutdown(cancel_futures=True)  # on an error or Ctrl-C, queued solves do not run
    if progress:
        progress(total - 1, total, "simulating the best proposals")

    # Re-score: the best few overall and the best of every schedule variant.
    solved.sort(key=lambda t: (t[0], t[1].label))
    chosen_set, seen_variants = [], set()
    for i, (predicted, candidate, solution) in enumerate(solved):
        variant = (candidate.schedule, candidate.chunks)
        if i < rescore or variant not in seen_variants:
            chosen_set.append((predicted, candidate, solution))
        seen_variants.add(variant)
    fitting: list[tuple[Scored, Candidate, Solution, float]] = []
    for predicted, candidate, solution in chosen_set:
        scored = judge("cp-sat", make_plan(candidate, solution.layers_per_stage, solution.recompute))
        records[candidate] = _with_simulated(records[candidate], scored.iteration_time)
        if fits_within(scored, headroom):
            fitting.append((scored, candidate, solution, predicted))
    if not fitting:
        from .infeasible import explain_infeasible

        raise SpecError(explain_infeasible(spec, cl, pp, dp, batch, s, headroom, distributed_optimizer, gpus))

    # Polish the POLISHED fastest proposals with the simulator and keep the fastest result.
    fitting.sort(key=lambda t: (t[0].iteration_time, t[1].label))
    best = None
    for proposal, candidate, solution, predicted in fitting[:POLISHED]:
        problem = next(pr for _, _, c, pr in problems if c == candidate)
        polished = refine(proposal, judge, headroom, lambda plan, pr=problem: pr.objective(
            plan.layers_per_stage, tuple(r == "full" for r in plan.recompute)) is not None)
        if best is None or polished.iteration_time < best[0].iteration_time:
            best = (polished, candidate, solution, predicted, proposal)
    scored, candidate, solution, predicted, proposal = best
    baselines = _baselines(spec, candidate, pp, s, make_plan, judge, headroom)
    chosen, source = scored, "cp-sat"
    for b in baselines:  # a baseline wins only within the same memory limit, headroom included
        if fits_within(b, headroom) and b.iteration_time < chosen.iteration_time:
            chosen, source = b, b.name
    if progress:
        progress(total, total, "done")
    ordered = tuple(records[c] for _, _, c, _ in problems)
    return OptimizeResult(chosen, source, candidate, solution, predicted, tuple(baselines), ordered,
                          time.perf_counter() - started, headroom, proposal)


def _profile_shapes(prof: Profile, spec: ModelSpec, seq_len: int | None,
                    microbatch_sizes: list[int] | None) -> tuple[int, list[int]]:
    """The sequence length and micro-batch sizes a profile can price; errors name the field that clashes."""
    if prof.model != spec.name:
        raise SpecError(f"profile.model: measured for {prof.model!r} but the model is {spec.name!r}; "
                        "calibrate this model with `pipeplan validate`")
    if not prof.layers:
        raise SpecError("profile.layers: this profile has no single-layer timings, so other cuts cannot be "
                        "priced; re-calibrate with `pipeplan validate`")
    if seq_len is not None and seq_len != prof.seq_len:
        raise SpecError(f"seq_len: the profile was measured at {prof.seq_len}; drop --seq-len or calibrate at {seq_len}")
    if microbatch_sizes and list(microbatch_sizes) != [prof.microbatch_size]:
        raise SpecError(f"microbatch_sizes: the profile was measured at micro-batch size {prof.microbatch_size}; "
                        "drop --microbatch-sizes or calibrate at the size you want")
    return prof.seq_len, [prof.microbatch_size]


def _with_simulated(record: CandidateRecord, simulated: float) -> CandidateRecord:
    from dataclasses import replace

    return replace(record, simulated=simulated)


def _baselines(spec: ModelSpec, candidate: Candidate, pp: int, seq_len: int, make_plan, judge,
               headroom: float) -> list[Scored]:
    """Uniform and parameter-balanced splits (recomputing everywhere when they do not fit otherwise),
    and for small models the best of every split by simulation. "Fit" is the chosen plan's rule,
    headroom included, so a speed-up is never measured against a baseline that breaks it."""
    S = candidate.chunks * pp
    out = []
    for name, layers in ((UNIFORM, megatron_uniform(spec, S)), (PARAMETERS, deepspeed_parameters(spec, S, seq_len))):
        scored = judge(name, make_plan(candidate, layers, (False,) * S))
        if not fits_within(scored, headroom):
            scored = judge(name, make_plan(candidate, layers, (True,) * S))
        out.append(scored)
    splits = all_splits(spec.num_pipeline_layers, S)
    if splits:
        best = None
        for recompute in ((False,) * S, (True,) * S):
            for layers in splits:
                scored = judge(BRUTE_FORCE, make_plan(candidate, layers, recompute))
                if fits_within(scored, headroom) and (best is None or scored.iteration_time < best.iteration_time):
                    best = scored
            if best is not None:
                break
        if best is not None:
            out.append(best)
    return out
