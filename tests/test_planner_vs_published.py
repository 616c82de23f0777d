"""optimize, given only the model, the GPUs, the cluster and the global batch of a Megatron SC'21 Table 1
row, finds a plan that simulates at least as fast as the published configuration
(``benchmarks/planner_vs_published.py`` prints every row, without a time limit; here the three smallest
ones whole, and of the largest the screen of the published layout), and the search's simulation savings
that keep the large rows affordable without a time limit change no answer."""
from __future__ import annotations

import json
import sys
from collections import Counter
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

from planner_vs_published import MEGATRON_2021, optimized, published_time  # noqa: E402
from published_runs import SEQ, TABLE_1, model_of  # noqa: E402

import pipeplan  # noqa: E402
from pipeplan.cluster import CLUSTER_PRESETS, load_cluster  # noqa: E402
from pipeplan.planner import starts  # noqa: E402
from pipeplan.planner.baselines import PARAMETERS, UNIFORM, megatron_uniform  # noqa: E402
from pipeplan.planner.layout_search import layout_request  # noqa: E402
from pipeplan.planner.layouts import Layout, time_floor  # noqa: E402
from pipeplan.planner.problem import Candidate  # noqa: E402
from pipeplan.planner.refine import fits_within  # noqa: E402
from pipeplan.planner.request import OptimizeRequest  # noqa: E402
from pipeplan.planner.screen import quick_plans, screen_estimate, screen_plan  # noqa: E402

ROWS = {run.name: run for run in TABLE_1}


@pytest.fixture
def simulated(monkeypatch):
    """Every plan file the planner's ``judge`` hands to the simulator, counted."""
    counts: Counter = Counter()
    real = starts.simulate

    def counting(model, cluster, plan, profile=None):
        counts[plan.to_json()] += 1
        return real(model, cluster, plan, profile=profile)

    monkeypatch.setattr(starts, "simulate", counting)
    return counts


@pytest.mark.parametrize("name", ["1.7B", "3.6B", "7.5B"])
def test_optimize_is_not_slower_than_the_published_configuration(name):
    run = ROWS[name]
    result, _, _ = optimized(run, time_limit=None, layouts=1, solver_time_limit=0.3)
    plan = result.plan
    assert plan.tp * plan.pp * plan.dp == run.gpus
    assert not plan.sequence_parallel and not plan.distributed_optimizer and plan.blocking_p2p
    assert result.result.fits and not result.timed_out
    assert result.iteration_time <= published_time(run)


def test_the_screen_reaches_the_published_layout_before_a_half_empty_pipeline():
    """1008B on 3072 GPUs: tp=2 pp=128 dp=12 has the lowest time floor but 256 micro-batches for a
    128-deep pipeline (a 50 % fill in the screen's 1F1B); the published tp=8 pp=64 dp=6 is screened first."""
    run = ROWS["1008B"]
    model = model_of(run)
    cluster = load_cluster("dgx-a100").with_nodes(run.gpus // 8)
    base = OptimizeRequest.create(model, cluster, run.batch, pp=64, dp=6, tp=8, seq_len=SEQ)
    deep, published = Layout(2, 128, 12), Layout(8, 64, 6)
    floors = {lay: time_floor(model, cluster, lay, run.batch, SEQ) for lay in (deep, published)}
    assert floors[deep] < floors[published]
    assert screen_estimate(floors[published], published, base) < screen_estimate(floors[deep], deep, base)


def test_the_screen_of_the_published_1008b_layout_already_beats_the_published_plan():
    """1008B, tp=8 pp=64 dp=6 with Megatron 2021's switches: the screen's quick plans (Megatron's uniform
    split under 1F1B and ZB-V, b = 1, the least recomputation that fits) hold a fitting plan faster than the
    published one (1F1B, full recomputation everywhere), so once the screen reaches this layout the answer
    beats the published configuration whatever else the search does (``search_layouts`` answers with the
    fastest fitting plan it simulated)."""
    run = ROWS["1008B"]
    cluster = load_cluster("dgx-a100").with_nodes(run.gpus // 8)
    request = layout_request(OptimizeRequest.create(model_of(run).to_dict(), cluster, run.batch, pp=64, dp=6, tp=8,
                                                    seq_len=SEQ, blocking_p2p=True),
                             Layout(8, 64, 6, MEGATRON_2021["sequence_parallel"],
                                    MEGATRON_2021["distributed_optimizer"]))
    quicks = quick_plans(request)
    assert [(q.candidate.schedule, q.candidate.microbatch_size, q.candidate.num_microbatches) for q in quicks] == [
        ("1f1b", 1, 512), ("zb-v", 1, 512)]  # 3072 / 6 sequences per replica
    scored = screen_plan(request, quicks)
    assert fits_within(scored, request.headroom)
    assert scored.plan.layers_per_stage == megatron_uniform(model_of(run), len(scored.plan.layers_per_stage))
    assert scored.iteration_time < published_time(run)


def test_usual_splits_asked_for_again_are_not_simulated_again_and_the_answer_is_the_same(simulated, monkeypatch):
    """A 40-block tiny model at pp = 8 (too many splits for the exhaustive search): the seeds (the usual splits
    of each schedule's best proposal, least recomputation that fits) and the baselines (the usual splits of the
    winner's candidate) ask for the same plan where nothing needs recomputing. The search that keeps the usual
    splits' simulations runs one simulation fewer per such plan than one that keeps none, and answers alike."""
    model = pipeplan.load_model("tiny").to_dict() | {"name": "tiny-40", "num_layers": 40}

    def search():
        simulated.clear()
        result = pipeplan.optimize(model, "dgx-h100", global_batch=8, pp=8, schedules=["1f1b"], solver_time_limit=0.5)
        return result, sum(simulated.values())

    kept, kept_runs = search()
    monkeypatch.setattr(starts, "REUSED", frozenset())
    again, all_runs = search()
    seeds = {s.plan.to_json() for s in kept.contenders if s.name in (UNIFORM, PARAMETERS)}
    baselines = {s.plan.to_json() for s in kept.baselines if s.name in (UNIFORM, PARAMETERS)}
    assert seeds & baselines  # asked for twice
    assert all_runs - kept_runs >= len(seeds & baselines)
    assert kept.plan == again.plan and kept.iteration_time == again.iteration_time


def test_a_baseline_surely_over_memory_without_recomputation_is_simulated_only_with_it(simulated):
    """tiny at pp = 2, m = 8 on GPUs whose usable memory is the uniform split's peak under full
    recomputation: without recomputation the split does not fit (the simulator says so), so the baselines
    simulate it recomputing everywhere only, and fit."""
    cluster = CLUSTER_PRESETS["dgx-h100"].to_dict()
    layers = megatron_uniform(pipeplan.load_model("tiny"), 2)

    def uniform(recompute, on):
        plan = pipeplan.Plan(model="tiny", cluster=on, schedule="1f1b", pp=2, num_microbatches=8, microbatch_size=1,
                             layers_per_stage=layers, recompute=(recompute,) * 2)
        return pipeplan.simulate(plan=plan)

    lean = max(uniform("full", cluster).peak_memory)
    cluster["gpu"]["memory_bytes"] = lean / 0.95 * (1 + 1e-9)  # the usable memory at a 5 % headroom
    assert max(uniform("none", cluster).peak_memory) > lean
    simulated.clear()
    request = OptimizeRequest.create("tiny", cluster, 8, pp=2, schedules=["1f1b"])
    out = starts.score_baselines(request, Candidate("1f1b", 1, 1, 8))
    uniform_baseline = next(s for s in out if s.name == UNIFORM)
    assert uniform_baseline.plan.layers_per_stage == layers and uniform_baseline.plan.recompute == ("full", "full")
    assert fits_within(uniform_baseline, 0.05)
    assert all("none" not in json.loads(plan)["recompute"] for plan in simulated)
