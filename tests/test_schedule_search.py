"""CP-SAT schedule search against an exhaustive search of orders, and against every built-in schedule.

The exhaustive search here shares nothing with the CP-SAT model but the simulator: it enumerates every
device's op order (each op after its own stage's earlier kinds, the activation count never above the
limit), tries every combination in the simulator (deadlocks raise) and keeps the fastest. It takes each
(stage, kind)'s micro-batches in order, the symmetry the model also uses; two cases check that rule
itself against the enumeration without it.
"""
import json
import random
import subprocess
import sys
from itertools import product
from pathlib import Path

import pytest

from pipeplan.schedule_search import OPTIMAL, placement_stages, search
from simulator import SCHEDULES, Action, ScheduleError, StageTimes, from_csv, simulate, times_workload
from simulator.ir import make_schedule

REPO = Path(__file__).resolve().parents[1]


def device_orders(stages_on, m, split, limit, in_order=True):
    """Every order of one device's ops: F before I before W (F before B) of one micro-batch and stage,
    the count of activations (F start to W/B end) never above ``limit``. On a device holding two stages
    a < b, F(b, j) after F(a, j) and the backward of a after that of b: any other order deadlocks
    through the chain of stages between them, so the simulator would refuse it anyway."""
    kinds = ("F", "I", "W") if split else ("F", "B")
    backward = kinds[1]
    ops = [Action(s, k, j) for s in stages_on for k in kinds for j in range(m)]
    orders = []

    def ready(a, placed):
        i = kinds.index(a.kind)
        if a in placed or (i and Action(a.stage, kinds[i - 1], a.microbatch) not in placed):
            return False
        if in_order and a.microbatch and Action(a.stage, a.kind, a.microbatch - 1) not in placed:
            return False
        for s in stages_on:
            if a.kind == "F" and s < a.stage and Action(s, "F", a.microbatch) not in placed:
                return False
            if a.kind == backward and s > a.stage and Action(s, backward, a.microbatch) not in placed:
                return False
        return True

    def extend(order, placed, live):
        if len(order) == len(ops):
            orders.append(tuple(order))
            return
        for a in ops:
            if ready(a, placed):
                count = live + (a.kind == "F") - (a.kind == kinds[-1])
                if count <= limit:
                    placed.add(a)
                    order.append(a)
                    extend(order, placed, count)
                    order.pop()
                    placed.discard(a)

    extend([], set(), 0)
    return orders


def exhaustive(p, m, v, stages, costs, limit, split, in_order=True):
    """The fastest simulated iteration over every combination of device orders (and how many ran)."""
    per_device = [device_orders([s for s in range(len(stages)) if stages[s] == d], m, split, limit, in_order)
                  for d in range(p)]
    best, runs = float("inf"), 0
    for combo in product(*per_device):
        try:
            result = simulate(times_workload(make_schedule(combo, stages, m, "exhaustive", v), costs))
        except ScheduleError:
            continue  # a deadlock
        runs += 1
        assert max(result.peak_activations) <= limit  # counted per device as memory.py counts
        best = min(best, result.iteration_time)
    return best, runs


def random_costs(rng, stages):
    """Integer F, I, W in 1..4 per stage; a transfer time in 0..2 per device pair (one link each)."""
    pair = {}
    comm = []
    for s in range(len(stages) - 1):
        a, b = sorted((stages[s], stages[s + 1]))
        comm.append(float(pair.setdefault((a, b), rng.randint(0, 2))) if a != b else 0.0)
    n = len(stages)
    return StageTimes(tuple(float(rng.randint(1, 4)) for _ in range(n)), tuple(float(rng.randint(1, 4)) for _ in range(n)),
                      tuple(float(rng.randint(1, 4)) for _ in range(n)), tuple(comm))


# (split backward, p, m, v, memory limit): 24 seeded instances, each small enough to enumerate.
SHAPES = [
    (True, 2, 2, 1, 2), (True, 2, 3, 1, 2), (True, 2, 3, 1, 3), (True, 3, 2, 1, 2), (True, 3, 2, 1, 1),
    (True, 4, 2, 1, 2), (True, 2, 1, 2, 2), (True, 3, 1, 2, 2), (True, 2, 2, 2, 2),
    (False, 3, 4, 1, 2), (False, 2, 4, 1, 3), (False, 3, 3, 1, 3), (False, 4, 3, 1, 2), (False, 2, 4, 1, 4),
    (False, 2, 2, 2, 2), (False, 2, 2, 2, 3),
]
CASES = [(seed, *shape) for seed, shape in enumerate(SHAPES)] + [
    (100 + seed, *shape) for seed, shape in enumerate([SHAPES[i] for i in (1, 3, 5, 9, 10, 12, 14, 15)])]


def _builtin_times(p, m, v, stages, costs, limit, split):
    """Every training schedule of the registry of the same placement and op kinds that fits the limit, simulated."""
    times = {}
    for name, entry in SCHEDULES.items():
        if entry.forward_only or not entry.accepts(p, m, v):
            continue
        schedule = entry.build(p, m, v, costs if entry.cost_aware else None)
        if list(schedule.stage_to_device) != stages or schedule.overlaps() or (not split and entry.split_backward):
            continue
        result = simulate(times_workload(schedule, costs))
        if max(result.peak_activations) <= limit:
            times[name] = result.iteration_time
    return times


@pytest.mark.parametrize("seed,split,p,m,v,limit", CASES)
def test_search_equals_the_exhaustive_optimum_and_no_builtin_beats_it(seed, split, p, m, v, limit):
    rng = random.Random(seed)
    _, stages = placement_stages(p, v)
    costs = random_costs(rng, stages)
    best, runs = exhaustive(p, m, v, stages, costs, limit, split)
    assert runs > 0
    # CP-SAT alone (no built-in hint or fallback) proves the exhaustive optimum, and the simulator agrees.
    alone = search(p, m, v, costs, limit, split_backward=split, time_limit=20, use_builtins=False)
    assert alone.status == OPTIMAL and alone.source == "cp-sat"
    assert alone.iteration_time == alone.objective == alone.lower_bound == best
    assert max(alone.peak_activations) <= limit
    found = search(p, m, v, costs, limit, split_backward=split, time_limit=20)
    assert found.status == OPTIMAL and found.iteration_time == best
    builtins = _builtin_times(p, m, v, stages, costs, limit, split)
    assert builtins == found.baselines
    assert all(found.iteration_time <= t for t in builtins.values())


@pytest.mark.parametrize("seed", [7, 8])
def test_taking_micro_batches_in_order_loses_nothing(seed):
    """The symmetry rule both searches use, against every order of p = 2, m = 2 (400 combinations)."""
    rng = random.Random(seed)
    _, stages = placement_stages(2, 1)
    costs = random_costs(rng, stages)
    for limit in (1, 2):
        assert exhaustive(2, 2, 1, stages, costs, limit, True, in_order=False)[0] == \
            exhaustive(2, 2, 1, stages, costs, limit, True)[0]


def test_uniform_costs_reach_the_known_optima():
    # F = I = W = 1 per stage. p = 4, m = 8 under 1F1B's memory (4 micro-batches): ZB-H1's bubble
    # (p - 1)(F + B - W) = 3 on 3m = 24 of work is the optimum, 27. p = 3, m = 6 on the V with 2p chunk
    # activations: 6m = 36 of work per device plus only the fill, (p - 1) x F = 2: 38, proven.
    linear = search(4, 8, 1, None, 4)
    assert (linear.status, linear.iteration_time, linear.baselines["zb-h1"]) == (OPTIMAL, 27.0, 27.0)
    v = search(3, 6, 2, None, 6, time_limit=30)
    assert (v.status, v.iteration_time) == (OPTIMAL, 38.0)
    # ZB-V (the paper's V heuristic) fits 2p whole activations here and reaches the proven optimum too.
    assert v.baselines == {"v-half": 41.0, "v-min": 42.0, "zb-v": 38.0}


def test_a_limit_nothing_fits_is_a_one_line_error():
    with pytest.raises(ScheduleError, match="no order .* keeps at most 1 activations"):
        search(2, 2, 2, None, 1)


def pipeplan(*args, cwd=REPO):
    return subprocess.run([sys.executable, "-m", "pipeplan", *args], capture_output=True, text=True, cwd=cwd,
                          timeout=120)


def test_cli_search_prints_status_and_writes_a_csv_the_simulator_replays(tmp_path):
    target = tmp_path / "searched.csv"
    out = pipeplan("schedule", "search", "-p", "3", "-m", "4", "--memory-limit", "2", "--b", "2",
                   "--comm", "0.5", "--csv", str(target), "--json")
    assert out.returncode == 0, out.stderr
    data = json.loads(out.stdout)
    assert data["search"]["status"] == "OPTIMAL" and data["iteration_time"] == data["search"]["objective"]
    assert max(data["peak_activations"]) <= 2
    assert all(data["iteration_time"] <= t for t in data["search"]["baselines"].values())
    schedule = from_csv(target.read_text())
    replay = simulate(times_workload(schedule, StageTimes.uniform(3, 1, 2, 1, 0.5)))
    assert replay.iteration_time == data["iteration_time"]
    text = pipeplan("schedule", "search", "-p", "2", "-m", "4", "--full-backward")
    assert text.returncode == 0 and "CP-SAT OPTIMAL" in text.stdout and "1f1b" in text.stdout


@pytest.mark.parametrize("args,message", [
    (["schedule", "1f1b", "-p", "2", "-m", "2", "--memory-limit", "3"], "--memory-limit: a search option"),
    (["schedule", "search", "-p", "2", "-m", "2", "--overlap", "2"], "--overlap"),
    (["schedule", "search", "-p", "2", "-m", "2", "--chunks", "3", "--placement", "v"], "placement"),
    (["schedule", "search", "-p", "2", "-m", "2", "--w", "0"], "above 0"),
])
def test_cli_search_refuses_bad_input_in_one_line(args, message):
    out = pipeplan(*args)
    assert out.returncode == 2 and "Traceback" not in out.stderr
    assert len(out.stderr.strip().splitlines()) == 1 and message in out.stderr


def test_a_searched_csv_is_a_plan_the_validator_accepts(tmp_path):
    """A custom-schedule plan naming the searched CSV resolves to the same order, and the validator's
    checks (F, B, I, W only; a transfer per dependency between ranks) take it."""
    from pipeplan.plan import Plan
    from pipeplan.specs import resolve
    from simulator.kinds import COMPUTE_KINDS

    from simulator.ir import to_csv

    found = search(2, 8, 2, None, 4)  # the plan's p, m and chunks

    (tmp_path / "searched.csv").write_text(to_csv(found.schedule))
    plan = json.loads((REPO / "validation/plans/tiny-zb-v-p2.json").read_text())
    plan.update(schedule="custom", schedule_csv="searched.csv", cluster=str(REPO / "validation/cpu.json"))
    (tmp_path / "plan.json").write_text(json.dumps(plan))
    loaded = Plan.load(str(tmp_path / "plan.json"))
    schedule = resolve(loaded.model, loaded.cluster, loaded, tmp_path).schedule
    assert schedule.device_actions == found.schedule.device_actions
    assert schedule.stage_to_device == found.schedule.stage_to_device
    assert schedule.kinds_present <= set(COMPUTE_KINDS)
    pytest.importorskip("torch")
    from validator.runtime import plan_transfers

    transfers = plan_transfers(schedule)
    # The V crosses devices at every hop but its bottom: 2 boundaries x 2 directions x m.
    assert sum(len(t) for t in transfers.values()) == 2 * 2 * 8
