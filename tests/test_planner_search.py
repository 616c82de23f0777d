"""The planner's request and search steps: one checked request, steps that compose to ``optimize``."""
import dataclasses

import pytest

import pipeplan
from pipeplan import SpecError
from pipeplan.planner.problem import Candidate
from pipeplan.planner.request import MAX_JOBS, OptimizeRequest
from pipeplan.planner.search import (assemble, bounded_candidates, exhaustive, polish, rescore, score_baselines, search,
                                     solve_and_prune)

TINY = dict(global_batch=8, pp=2, schedules=["1f1b", "zb-h1"], time_limit=1.0)


def without_timing(data: dict) -> dict:
    timing = {"search_time", "solver_time", "solve_time"}
    data = {k: v for k, v in data.items() if k not in timing}
    data["candidates"] = [{k: v for k, v in c.items() if k not in timing} for c in data["candidates"]]
    return data


def test_request_resolves_defaults():
    request = OptimizeRequest.create("tiny", "dgx-h100", global_batch=16, dp=2)
    assert request.model == pipeplan.load_model("tiny") and request.cluster == pipeplan.load_cluster("dgx-h100")
    assert request.pp == 4  # all 8 GPUs / dp
    assert request.replica_batch == 8
    assert request.sequence_length == request.model.seq_len and request.seq_len is None
    assert sorted(request.variants) == sorted([("1f1b", 1), ("zb-h1", 1), ("zb-h2", 1), ("zb-v", 2), ("interleaved", 2),
                                               ("interleaved", 4), ("gpipe", 1)]) and request.microbatch_sizes is None
    assert request.gpus == [0, 2, 4, 6]
    assert (request.model_ref, request.cluster_ref, request.plan_nodes) == ("tiny", "dgx-h100", None)
    assert request.jobs == 1
    assert OptimizeRequest.create("tiny", "dgx-h100", global_batch=8, jobs=100).jobs == MAX_JOBS


def test_request_is_frozen():
    request = OptimizeRequest.create("tiny", "dgx-h100", global_batch=8)
    with pytest.raises(dataclasses.FrozenInstanceError):
        request.pp = 4


def test_request_names_schedule_variants_and_plans():
    request = OptimizeRequest.create("tiny", "dgx-h100", global_batch=8, pp=2, schedules=["interleaved", "1F1B"],
                                     microbatch_sizes=[2, 4], seq_len=32)
    assert request.variants == (("interleaved", 2), ("interleaved", 4), ("1f1b", 1))
    assert request.microbatch_sizes == (2, 4)
    plan = request.plan_for(Candidate("1f1b", 1, 2, 4), (6, 4), (True, False))
    assert (plan.schedule, plan.pp, plan.chunks, plan.microbatch_size, plan.num_microbatches) == ("1f1b", 2, 1, 2, 4)
    assert plan.layers_per_stage == (6, 4) and plan.recompute == ("full", "none") and plan.seq_len == 32


@pytest.mark.parametrize("kwargs,start", [
    (dict(dp=0), "dp: must be a positive integer"),
    (dict(global_batch=0), "global_batch: must be a positive integer"),
    (dict(seq_len=0), "seq_len: must be a positive integer"),
    (dict(headroom=1.0), "headroom: must be in [0, 1)"),
    (dict(time_limit=float("nan")), "time_limit: must be in (0, 604800] seconds"),
    (dict(time_limit=float("inf")), "time_limit: must be in (0, 604800] seconds"),
    (dict(rescore=0), "rescore: must be a positive integer"),
    (dict(dp=16), "dp: 16 replicas need at least 16 GPUs"),
    (dict(pp=0), "pp: must be a positive integer"),
    (dict(pp=4, dp=4), "pp: pp x dp = 16 GPUs"),
    (dict(pp=2, dp=3), "global_batch: 8 is not divisible by dp = 3"),
    (dict(pp=16, nodes=2), "pp: 16 pipeline devices need at least 16 layers"),
    (dict(pp=2, microbatch_sizes=[3]), "microbatch_sizes: none of [3] divides"),
    (dict(pp=2, microbatch_sizes=[0]), "microbatch_sizes: must be a positive integer"),
    (dict(pp=2, schedules=["1f2b"]), "--schedules: unknown '1f2b'"),
    # Several bad arguments: the first in the order above is reported.
    (dict(pp=0, headroom=2.0, time_limit=-1), "headroom: must be in [0, 1)"),
])
def test_request_errors_are_one_line_and_name_the_argument(kwargs, start):
    args = dict(global_batch=8)
    args.update(kwargs)
    with pytest.raises(SpecError) as error:
        OptimizeRequest.create("tiny", "dgx-h100", **args)
    assert str(error.value).startswith(start) and "\n" not in str(error.value)


def test_no_schedule_that_runs_is_a_one_line_error():
    request = OptimizeRequest.create("tiny", "dgx-h100", global_batch=8, pp=8, schedules=["interleaved"])
    with pytest.raises(SpecError, match="schedules: no schedule of interleaved.* runs with pp = 8"):
        bounded_candidates(request)


def test_the_steps_compose_to_optimize():
    request = OptimizeRequest.create("tiny", "dgx-h100", **TINY)
    bounded = bounded_candidates(request)
    assert [b.bound for b in bounded] == sorted(b.bound for b in bounded)
    solved = solve_and_prune(request, bounded)
    assert [r.candidate for r in solved.records] == [b.candidate for b in bounded]
    rescored = rescore(request, solved)
    times = [s.scored.iteration_time for s in rescored.fitting]
    assert times == sorted(times)
    # Every start is a simulated proposal, or a usual split (uniform, parameters) of a proposal's candidate.
    proposals = [s.proposal for s in rescored.simulated]
    for f in rescored.fitting:
        assert any(f is s for s in rescored.simulated) or (
            f.scored.name in ("megatron-uniform", "deepspeed-parameters") and any(f.proposal is p for p in proposals)
            and f.scored.plan.num_microbatches == f.candidate.num_microbatches)
    best = exhaustive(request, bounded, polish(request, rescored))
    assert best.scored.iteration_time <= best.start.scored.iteration_time
    plan = best.scored.plan
    baselines = score_baselines(request, Candidate(plan.schedule, plan.chunks, plan.microbatch_size,
                                                   plan.num_microbatches))
    by_hand = assemble(request, solved, rescored, best, baselines, search_time=0.0, bounded=bounded)
    # optimize() on the same layout (2 of the cluster's GPUs, so tp = dp = 1) and CP-SAT budget.
    direct = pipeplan.optimize("tiny", "dgx-h100", global_batch=8, pp=2, gpus=2, schedules=["1f1b", "zb-h1"],
                               solver_time_limit=1.0)
    assert without_timing(by_hand.to_dict()) == without_timing(direct.to_dict())
    assert without_timing(search(request).to_dict()) == without_timing(by_hand.to_dict())


def test_pruned_candidates_could_not_beat_the_rescored_best():
    request = OptimizeRequest.create("tiny", "dgx-h100", global_batch=8, pp=2, time_limit=1.0, rescore=1)
    solved = solve_and_prune(request, bounded_candidates(request))
    # "PRUNED": the bound valid for the simulator is no better than the fastest fitting simulation;
    # "PRUNED (analytic)": the analytic bound is no better than the best prediction (rescore=1), only
    # once two candidates of its schedule variant were solved and simulated.
    fastest = min(p.scored.iteration_time for p in solved.proposals)
    best = min(p.predicted for p in solved.proposals)
    pruned = [r for r in solved.records if r.status.startswith("PRUNED")]
    assert pruned
    for r in pruned:
        if r.status == "PRUNED":
            assert r.simulated_bound >= fastest
        else:
            assert r.status == "PRUNED (analytic)" and r.lower_bound >= best
            family = [s for s in solved.records if (s.candidate.schedule, s.candidate.chunks)
                      == (r.candidate.schedule, r.candidate.chunks) and s.predicted is not None]
            assert len(family) >= 2
    assert len(solved.proposals) == len([r for r in solved.records if r.predicted is not None])


def test_without_a_pipeline_no_chunked_schedule_is_a_candidate():
    """pp = 1: interleaved and zb-v would only reorder one device's own layers; the candidates are the
    unchunked schedules alone (at pp = 2 the same call offers v = 2 too)."""
    from pipeplan.planner.candidates import enumerate_candidates, schedule_variants
    variants = schedule_variants(["1f1b", "interleaved", "zb-v"])
    one = enumerate_candidates(12, 1, 8, variants, blocks=10)
    assert one and {c.chunks for c in one} == {1} and {c.schedule for c in one} == {"1f1b"}
    two = enumerate_candidates(12, 2, 8, variants, blocks=10)
    assert {c.chunks for c in two} >= {1, 2}
