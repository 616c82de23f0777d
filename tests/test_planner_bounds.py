"""The planner's lower bounds on the simulated time hold with data parallelism and under memory limits.

Each bound (``bounds.plan_bound`` per plan, ``bounds.candidate_bound`` and the linear relaxation
``relaxation.relaxed_bound`` per candidate) is checked against the simulator on random plans of small
models laid out tp x pp x dp over several DGX H100 nodes, so that the data-parallel rings cross the
network and their tail is not negligible; the memory limit is drawn so that recomputation matters.
"""
from __future__ import annotations

import math
import random

import pytest

import pipeplan
from pipeplan.api import simulate
from pipeplan.cluster import CLUSTER_PRESETS
from pipeplan.planner.bounds import candidate_bound, plan_bound
from pipeplan.planner.problem import Candidate, build_problem
from pipeplan.planner.relaxation import relaxed_bound
from pipeplan.plan import default_placement
from simulator.schedules import SCHEDULES, build_schedule

VARIANTS = [(entry.name, v) for entry in SCHEDULES.values() for v in entry.planner_chunks if entry.default_note is None]
HEADROOM = 0.05


def instance(seed: int):
    """A random 10-layer model on 4 nodes (tp = 2: the data group of a pipeline rank spans nodes)."""
    rng = random.Random(seed)
    pp, dp, tp = rng.choice([(2, 8, 2), (4, 4, 2), (2, 16, 1)])
    model = dict(name=f"dp{seed}", num_layers=8, hidden=256 * rng.choice([1, 2]), heads=4,
                 ffn_hidden=rng.choice([512, 1024, 2048]), vocab=rng.choice([2048, 32000]),
                 seq_len=rng.choice([256, 512]), attention=rng.choice(["standard", "flash"]))
    cluster = dict(CLUSTER_PRESETS["dgx-h100"].to_dict(), nodes=4)
    distributed = rng.random() < 0.5
    return rng, model, cluster, tp, pp, dp, distributed


def random_plan(rng, model, cluster, tp, pp, dp, distributed, name, v, m, b):
    S, L = pp * v, model["num_layers"] + 2
    cuts = sorted(rng.sample(range(1, L), S - 1))
    edges = (0, *cuts, L)
    split = tuple(edges[i + 1] - edges[i] for i in range(S))
    modes = ("none", "selective", "full") if model["attention"] == "standard" else ("none", "full")
    rc = tuple(rng.choice(modes) for _ in range(S))
    return pipeplan.Plan(model=model, cluster=cluster, schedule=name, pp=pp, chunks=v, num_microbatches=m,
                         microbatch_size=b, layers_per_stage=split, recompute=rc, tp=tp, dp=dp,
                         sequence_parallel=tp > 1, distributed_optimizer=distributed)


@pytest.mark.parametrize("seed", range(4))
def test_bounds_never_exceed_the_simulated_time_with_data_parallelism(seed):
    rng, model, cluster, tp, pp, dp, distributed = instance(seed)
    spec = pipeplan.load_model(model)
    checked = tails = 0
    for name, v in VARIANTS:
        m, b = rng.choice([(2, 1), (4, 1), (8, 2)])
        if pp * v > 10 or not SCHEDULES[name].accepts(pp, m, v):
            continue
        plans = [random_plan(rng, model, cluster, tp, pp, dp, distributed, name, v, m, b) for _ in range(5)]
        results = [simulate(model, cluster, plan) for plan in plans]
        # Memory between the smallest and the largest peak of these plans: some fit, some do not.
        peaks = sorted(max(r.peak_memory) for r in results)
        cl_limited = dict(cluster, gpu=dict(cluster["gpu"], memory_bytes=peaks[len(peaks) // 2] / (1 - HEADROOM)))
        spec_cluster = pipeplan.load_cluster(cl_limited)
        problem = build_problem(spec, spec_cluster, Candidate(name, v, b, m), build_schedule(name, pp, m, v),
                                spec.seq_len, default_placement(pp, dp, tp), dp, distributed, HEADROOM, tp=tp,
                                sequence_parallel=tp > 1)
        assert problem.dp_tail is not None
        relaxed = relaxed_bound(problem)
        for plan, result in zip(plans, results):
            t = result.iteration_time
            assert plan_bound(problem, plan.layers_per_stage, plan.recompute) <= t, (name, plan.layers_per_stage)
            assert candidate_bound(problem) <= t
            if max(result.peak_memory) <= peaks[len(peaks) // 2]:  # fits the limited GPUs
                assert relaxed <= t, (name, plan.layers_per_stage, plan.recompute, relaxed, t)
                assert math.isfinite(relaxed)
            checked += 1
            # The tail is what the bound adds after the last op: the simulated end of the compute work
            # is before the iteration's end by at least the bound's data-parallel part.
            tails += any(o.action.kind == "REDUCE_GRAD" for o in result.timeline.ops)
    assert checked >= 20 and tails == checked


@pytest.mark.parametrize("distributed", [False, True])
def test_the_analytic_tail_is_the_simulated_data_parallel_tail_of_1f1b(distributed):
    """1F1B ends on device 0's last backward of stage 0; after it the simulator runs that stage's gradient
    reduction, Adam step and (distributed optimizer) parameter gather over a data group that spans nodes.
    The analytic objective's tail (``PartitionProblem.exposed_tail``) is that time, read off the timeline."""
    model = dict(name="tail", num_layers=6, hidden=1024, heads=8, ffn_hidden=4096, vocab=32000, seq_len=512)
    cluster = dict(CLUSTER_PRESETS["dgx-h100"].to_dict(), nodes=4)
    tp, pp, dp, m = 2, 2, 8, 4
    spec, cl = pipeplan.load_model(model), pipeplan.load_cluster(cluster)
    layers = (4, 4)
    problem = build_problem(spec, cl, Candidate("1f1b", 1, 1, m), build_schedule("1f1b", pp, m), spec.seq_len,
                            default_placement(pp, dp, tp), dp, distributed, tp=tp, sequence_parallel=True)
    plan = pipeplan.Plan(model=model, cluster=cluster, schedule="1f1b", pp=pp, num_microbatches=m, microbatch_size=1,
                         layers_per_stage=layers, tp=tp, dp=dp, sequence_parallel=True,
                         distributed_optimizer=distributed)
    ops = simulate(model, cluster, plan).timeline.ops
    last = max(o.end for o in ops if o.device == 0 and o.action.kind == "B")
    simulated_tail = max(o.end for o in ops) - last
    analytic_tail = problem.exposed_tail(layers) * problem.time_unit
    assert simulated_tail > 1e-4  # the rings cross the network: not negligible
    assert analytic_tail == pytest.approx(simulated_tail, rel=1e-3)
