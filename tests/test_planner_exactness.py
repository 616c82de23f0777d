"""CP-SAT against brute force on random small partition problems (the same objective, written again here).

The brute force enumerates every split of the layers into p·v contiguous non-empty stages and every
recompute choice; the objective and memory rule are restated from the planner's docstring
(T·p·v = p·v·m·max device work + fill + p·v·comm; memory = static + Σ count·bytes per count vector).
"""
import functools
import itertools
import random

import pytest

from pipeplan.planner.cpsat import INFEASIBLE, OPTIMAL, solve
from pipeplan.planner.problem import PartitionProblem
from simulator import SCHEDULES, build_schedule
from simulator.engine import simulate
from simulator.memory import live_count_profiles
from simulator.workload import StageCost, Workload, uniform_network


def compositions(n, parts):
    for cuts in itertools.combinations(range(1, n), parts - 1):
        bounds = (0,) + cuts + (n,)
        yield tuple(bounds[i + 1] - bounds[i] for i in range(parts))


@functools.cache  # each seed's instance is solved by two tests; a problem is a frozen (hashable) dataclass
def brute_force(pr):
    """Minimum objective over all splits and recompute choices, or None if nothing fits."""
    best = None
    S, p, v, m = len(pr.stage_to_device), pr.pp, pr.chunks, pr.num_microbatches
    a, b, c = pr.fill_weights
    for split in compositions(len(pr.forward), S):
        ranges, start = [], 0
        for n in split:
            ranges.append(list(range(start, start + n)))
            start += n
        for rc in itertools.product([False, True] if pr.allow_recompute else [False], repeat=S):
            work, fill, act, held = [], [], [], []
            for k, layers in enumerate(ranges):
                f = sum(pr.forward[i] for i in layers)
                i_ = sum(pr.backward_input[i] for i in layers) + (f if rc[k] else 0)
                w = sum(pr.backward_weight[i] for i in layers)
                work.append(f + i_ + w)
                fill.append(a * f + b * i_ + c * w)
                act.append(sum((pr.activation_rc if rc[k] else pr.activation)[i] for i in layers))
                held.append(sum((pr.held_rc if rc[k] else pr.held)[i] for i in layers))
            fits = True
            for d in range(p):
                mine = [k for k in range(S) if pr.stage_to_device[k] == d]
                static = sum(pr.static[i] for k in mine for i in ranges[k])
                for vec in pr.profiles[d]:
                    if static + sum(nf * act[k] + nh * held[k] for k, (nf, nh) in zip(mine, vec)) > pr.capacity:
                        fits = False
            if not fits:
                continue
            slowest = max(sum(work[k] for k in range(S) if pr.stage_to_device[k] == d) for d in range(p))
            fill_term = (p - 1) * (p * v * max(fill) if v > 1 else sum(fill))
            value = p * v * m * slowest + fill_term + p * v * pr.comm
            best = value if best is None else min(best, value)
    return best


SEEDS = 60


def random_problem(seed):
    rng = random.Random(seed)
    name, v = rng.choice([("gpipe", 1), ("1f1b", 1), ("zb-h1", 1), ("zb-h2", 1), ("interleaved", 2), ("zb-v", 2)])
    p = rng.choice([2, 3, 4]) if v == 1 else 2
    m = rng.choice([1, 2, 3, 4, 6]) if name != "interleaved" else rng.choice([2, 4])
    L = rng.randint(p * v, 12 if v == 1 or p * v <= 4 else 8)
    schedule = build_schedule(name, p, m, v)
    forward = [rng.randint(1, 50) for _ in range(L)]
    act = [rng.randint(1, 40) for _ in range(L)]
    act_rc = [rng.randint(0, a) for a in act]
    static = [rng.randint(0, 60) for _ in range(L)]
    profiles = live_count_profiles(schedule)
    # Capacity from infeasible (half the largest layer's static bytes) to loose (a device holding twice
    # its share of everything at the schedule's largest in-flight count): about a third infeasible.
    most = max(n for dev in profiles for vec in dev for n, _ in vec)
    capacity = rng.randint(max(static) // 2, 2 * (sum(static) + most * sum(act)) // p + 1)
    return PartitionProblem(
        pp=p, chunks=v, num_microbatches=m, stage_to_device=schedule.stage_to_device,
        forward=tuple(forward), backward_input=tuple(rng.randint(1, 60) for _ in range(L)),
        backward_weight=tuple(rng.randint(1, 40) for _ in range(L)),
        activation=tuple(act), held=tuple(rng.randint(0, a) for a in act),
        activation_rc=tuple(act_rc), held_rc=tuple(act_rc), static=tuple(static),
        profiles=tuple(profiles), capacity=capacity, fill_weights=SCHEDULES[name].fill_weights,
        comm=rng.randint(0, 20), allow_recompute=rng.random() < 0.8,
    )


@pytest.mark.parametrize("seed", range(SEEDS))
def test_cpsat_reaches_the_brute_force_minimum(seed):
    pr = random_problem(seed)
    expected = brute_force(pr)
    solution = solve(pr, time_limit=20)
    if expected is None:
        assert solution.status == INFEASIBLE
    else:
        assert solution.status == OPTIMAL
        assert solution.objective == expected
        # The split it returns really has that value.
        assert pr.objective(solution.layers_per_stage, solution.recompute) == expected


def test_the_random_instances_cover_infeasible_binding_and_loose_memory():
    import dataclasses

    kinds = set()
    for seed in range(SEEDS):
        pr = random_problem(seed)
        best = brute_force(pr)
        if best is None:
            kinds.add("infeasible")
        else:
            loose = brute_force(dataclasses.replace(pr, capacity=10 ** 12))
            kinds.add("binding" if loose != best else "loose")
    assert kinds == {"infeasible", "binding", "loose"}


@pytest.mark.parametrize("name,p,m,v", [("1f1b", 4, 8, 1), ("gpipe", 3, 5, 1), ("zb-h1", 4, 8, 1),
                                        ("zb-h2", 4, 8, 1), ("interleaved", 2, 4, 2), ("zb-v", 3, 6, 2)])
def test_count_profiles_give_the_simulators_peak_memory(name, p, m, v):
    """The linear memory rule the planner uses equals the simulator's replayed peak, for random bytes."""
    rng = random.Random(hash((name, p, m, v)) & 0xFFFF)
    schedule = build_schedule(name, p, m, v)
    stages = []
    for _ in range(schedule.num_stages):
        act = rng.uniform(1, 10)
        stages.append(StageCost(rng.uniform(0.5, 2), rng.uniform(0.5, 2), rng.uniform(0.5, 2),
                                activation_bytes=act, weight_grad_bytes=rng.uniform(0, act)))
    static = [rng.uniform(0, 5) for _ in range(p)]
    result = simulate(Workload(schedule, tuple(stages), uniform_network(p, latency=0.1), tuple(static), tuple([1e9] * p)))
    for d, vectors in enumerate(live_count_profiles(schedule)):
        mine = schedule.stages_of(d)
        predicted = static[d] + max(
            sum(nf * stages[k].activation_bytes + nh * stages[k].weight_grad_bytes for k, (nf, nh) in zip(mine, vec))
            for vec in vectors
        )
        assert predicted == pytest.approx(result.peak_memory[d], rel=1e-9)


def test_problem_costs_agree_with_the_lowering_and_memory_bounds_the_simulator():
    """The integer data the solver sees, summed over a split, is the lowering's stage cost (to rounding),
    and its memory rule never under-counts what the simulator replays."""
    import pipeplan
    from pipeplan import lower
    from pipeplan.planner.problem import Candidate, build_problem

    model, cluster = pipeplan.load_model("llama3-8b"), pipeplan.load_cluster("dgx-h100")
    layers, recompute = (6, 3, 4, 5, 4, 4, 5, 3), (True, False, True, False, False, False, False, False)
    for name, v in (("1f1b", 1), ("zb-h2", 1), ("interleaved", 2)):
        split = layers if v == 1 else (3, 2, 2, 2, 2, 1, 2, 2, 2, 2, 2, 3, 2, 2, 2, 3)
        rc = recompute if v == 1 else recompute + recompute
        schedule = build_schedule(name, 8, 16, v)
        problem = build_problem(model, cluster, Candidate(name, v, 1, 16), schedule, 8192, list(range(8)))
        plan = pipeplan.Plan(model="llama3-8b", cluster="dgx-h100", schedule=name, pp=8, chunks=v, num_microbatches=16,
                             microbatch_size=1, layers_per_stage=split,
                             recompute=tuple("full" if r else "none" for r in rc))
        workload, _ = lower(model, cluster, plan)
        start = 0
        for k, n in enumerate(split):
            idx = range(start, start + n)
            start += n
            forward = sum(problem.forward[i] for i in idx) * problem.time_unit
            rerun = sum(problem.recomputed[i] for i in idx) * problem.time_unit  # the blocks' forward only
            assert rerun == sum(problem.forward[i] for i in idx if model.layer_kind(i) == "block") * problem.time_unit
            backward = (sum(problem.backward_input[i] for i in idx) * problem.time_unit + (rerun if rc[k] else 0))
            assert forward == pytest.approx(workload.stages[k].forward, rel=1e-4)
            assert backward == pytest.approx(workload.stages[k].backward_input, rel=1e-4)
        result = simulate(workload)
        bounds, start = [], 0
        for n in split:
            bounds.append(range(start, start + n))
            start += n
        for d in range(8):
            mine = schedule.stages_of(d)
            act = [sum((problem.activation_rc if rc[k] else problem.activation)[i] for i in bounds[k]) for k in mine]
            held = [sum((problem.held_rc if rc[k] else problem.held)[i] for i in bounds[k]) for k in mine]
            static = sum(problem.static[i] for k in mine for i in bounds[k])
            level = static + max(sum(nf * a + nh * h for (nf, nh), a, h in zip(vec, act, held))
                                 for vec in problem.profiles[d])
            predicted = level * problem.memory_unit
            assert predicted >= result.peak_memory[d]
            assert predicted <= result.peak_memory[d] * 1.001


def test_cpsat_leaves_a_stage_without_blocks_unrecomputed():
    """Full recomputation checkpoints blocks only: on a stage holding the embedding or the head alone it
    re-runs and saves nothing, and CP-SAT may set it at no cost. The plan says none there (what a framework
    asked to checkpoint such a stage would do anyway); a 6-block model cut one layer a stage under
    interleaved v = 4 at pp = 2 puts the embedding and the head on stages of their own."""
    import pipeplan
    from test_export import CPU  # tests/ is on sys.path

    six = dict(pipeplan.load_model("tiny").to_dict(), name="tiny-6", num_layers=6)
    plan = pipeplan.optimize(six, CPU, global_batch=16, pp=2, schedules=["interleaved"]).plan
    spec = pipeplan.load_model(six)
    blockless = [k for k in range(plan.num_stages)
                 if not any(spec.layer_kind(i) == "block" for i in plan.stage_layers(k))]
    assert blockless, plan.layers_per_stage  # the case this test is about
    assert all(plan.recompute_mode(k) == "none" for k in blockless), plan.recompute
