"""The whole-configuration search: layouts counted by hand, floors that the simulator never beats,
the dominance of sequence parallelism and the distributed optimizer, and the search's guarantees."""
import json
import random
import subprocess
import sys
from pathlib import Path

import pytest

import pipeplan
from pipeplan import SpecError
from pipeplan.planner.layouts import Layout, LayoutPins, enumerate_layouts, memory_floor, time_floor
from pipeplan.planner.refine import fits_within
from pipeplan.plan import Plan, even_split
from simulator.schedules import DEFAULT_SCHEDULES, SCHEDULES

from shared_searches import llama3_8b_on_one_dgx_h100  # tests/ is on sys.path

REPO = Path(__file__).resolve().parents[1]


def test_layouts_of_16_gpus_for_llama3_8b_by_hand():
    # tp divides a node's 8 GPUs and the 32 heads / 8 KV heads: 1, 2, 4, 8. pp divides 16 / tp (the 34
    # pipeline layers allow all of them); dp = 16 / (tp pp) must divide the batch of 8, so dp = 16 is out.
    model, cluster = pipeplan.load_model("llama3-8b"), pipeplan.load_cluster("dgx-h100", 2)
    found = enumerate_layouts(model, cluster, 8, LayoutPins(16))
    by_hand = {(1, 2, 8), (1, 4, 4), (1, 8, 2), (1, 16, 1), (2, 1, 8), (2, 2, 4), (2, 4, 2), (2, 8, 1),
               (4, 1, 4), (4, 2, 2), (4, 4, 1), (8, 1, 2), (8, 2, 1)}
    assert {(lay.tp, lay.pp, lay.dp) for lay in found} == by_hand
    # Left open, sequence parallelism is on wherever tp > 1 and the distributed optimizer wherever dp > 1.
    assert all(lay.sequence_parallel == (lay.tp > 1) and lay.distributed_optimizer == (lay.dp > 1) for lay in found)
    pinned = enumerate_layouts(model, cluster, 8, LayoutPins(16, tp=2, sequence_parallel=False))
    assert {(lay.tp, lay.pp, lay.dp, lay.sequence_parallel) for lay in pinned} == {
        (2, 1, 8, False), (2, 2, 4, False), (2, 4, 2, False), (2, 8, 1, False)}


def test_where_sequence_parallelism_runs_slower_both_ways_are_searched():
    """On PCIe L40S boxes (25 GB/s between GPUs, 864 GB/s of GDDR6) the backward's extra all-gathers of the
    QKV and FC1 inputs cost more than splitting the norms and dropout saves: the simulator, judging a whole
    plan, finds sequence parallelism slower there (and lighter), so a search left open tries it off and on;
    on DGX H100 NVLink it is faster and alone."""
    model = pipeplan.load_model("llama3-8b")

    def run(cluster, sp):
        plan = Plan(model="llama3-8b", cluster=cluster, schedule="1f1b", pp=2, num_microbatches=4, microbatch_size=1,
                    layers_per_stage=even_split(model.num_pipeline_layers, 2), recompute=("full",) * 2, tp=4, dp=1,
                    sequence_parallel=sp, seq_len=2048)
        result = pipeplan.simulate(plan=plan)
        return result.iteration_time, max(result.peak_memory)

    (slow_on, light_on), (slow_off, heavy_off) = run("pcie-l40s", True), run("pcie-l40s", False)
    assert slow_on > slow_off and light_on < heavy_off
    assert run("dgx-h100", True)[0] < run("dgx-h100", False)[0]
    pcie = enumerate_layouts(model, pipeplan.load_cluster("pcie-l40s"), 8, LayoutPins(8), seq_len=2048)
    assert {(lay.tp, lay.sequence_parallel) for lay in pcie} == {(1, False), (2, False), (2, True), (4, False),
                                                                 (4, True), (8, False), (8, True)}


def _random_plan(rng, model, layout, batch):
    while True:
        name = rng.choice(DEFAULT_SCHEDULES)
        v = rng.choice(SCHEDULES[name].planner_chunks)
        b = rng.choice([d for d in (1, 2, 4) if (batch // layout.dp) % d == 0])
        m = batch // layout.dp // b
        if layout.pp * v <= model.num_pipeline_layers and SCHEDULES[name].accepts(layout.pp, m, v):
            break
    stages = layout.pp * v
    layers = list(even_split(model.num_pipeline_layers, stages))
    for _ in range(3):  # a few random single-layer moves away from the even split
        k = rng.randrange(stages - 1) if stages > 1 else 0
        if stages > 1 and layers[k + 1] > 1:
            layers[k] += 1
            layers[k + 1] -= 1
    return Plan(model=model.name, cluster="dgx-h100", nodes=2, schedule=name, pp=layout.pp, chunks=v,
                num_microbatches=m, microbatch_size=b, layers_per_stage=tuple(layers),
                recompute=tuple(rng.choice(("none", "full")) for _ in range(stages)), tp=layout.tp, dp=layout.dp,
                sequence_parallel=layout.sequence_parallel, distributed_optimizer=layout.distributed_optimizer)


@pytest.mark.parametrize("name", ["tiny", "llama3-8b"])
def test_no_simulated_plan_beats_its_layouts_floors(name):
    """The time floor is below every simulated iteration of the layout and the memory floor below the
    fullest device's peak, on random plans of every layout (random schedule, b, split, recomputation)."""
    rng = random.Random(7)
    model, cluster = pipeplan.load_model(name), pipeplan.load_cluster("dgx-h100", 2)
    batch = 16
    checked = 0
    layouts = enumerate_layouts(model, cluster, batch, LayoutPins(16))
    for layout in layouts:
        floor = time_floor(model, cluster, layout, batch, model.seq_len)
        static = memory_floor(model, layout, model.seq_len)
        for _ in range(2):
            result = pipeplan.simulate(plan=_random_plan(rng, model, layout, batch))
            assert floor <= result.iteration_time, (layout, result.plan.schedule)
            assert static <= max(result.peak_memory), layout
            checked += 1
    assert len(layouts) >= 11 and checked == 2 * len(layouts)


@pytest.mark.parametrize("model, tp, pp, dp", [("llama3-70b", 8, 4, 2), ("llama3-8b", 2, 4, 1), ("gpt2-xl", 1, 4, 2)])
def test_sequence_parallelism_and_the_distributed_optimizer_never_cost_time_or_memory(model, tp, pp, dp):
    """Why the search turns them on when left open: the same plan with either switched on peaks no
    higher, and simulates no slower, except that the distributed optimizer's parameter all-gather after
    the step is exposed while the gradient reduction it replaces hides behind the backward (Megatron's
    buckets, stage 0): it costs at most that gather (the switches exist only where tp > 1 and dp > 1)."""
    spec = pipeplan.load_model(model)
    results = {}
    for sp in ((False, True) if tp > 1 else (False,)):
        for do in ((False, True) if dp > 1 else (False,)):
            plan = Plan(model=model, cluster="dgx-h100", nodes=8, schedule="1f1b", pp=pp, num_microbatches=8, microbatch_size=1,
                        layers_per_stage=even_split(spec.num_pipeline_layers, pp), recompute=("full",) * pp, tp=tp,
                        dp=dp, sequence_parallel=sp, distributed_optimizer=do)
            r = pipeplan.simulate(plan=plan)
            gather = max((o.end - o.start for o in r.timeline.ops if o.action.kind == "GATHER_PARAMS"), default=0.0)
            results[sp, do] = (r.iteration_time, max(r.peak_memory), gather)
    for (sp, do), (time, peak, _) in results.items():
        for (sp2, do2), (time2, peak2, gather2) in results.items():
            if sp2 >= sp and do2 >= do:  # more switched on
                assert time2 <= (time + (gather2 if do2 > do else 0.0)) * (1 + 1e-12) and peak2 <= peak * (1 + 1e-12)


def _without_timing(data):
    timing = {"search_time", "solver_time", "solve_time"}
    out = {k: v for k, v in data.items() if k not in timing}
    out["candidates"] = [{k: v for k, v in c.items() if k not in timing} for c in data["candidates"]]
    out["layouts"] = [{k: v for k, v in c.items() if k not in timing} for c in data["layouts"]]
    return out


def test_the_whole_search_is_deterministic_and_never_slower_than_anything_it_simulated():
    kwargs = dict(global_batch=16, gpus=8, schedules=["1f1b", "zb-h1", "interleaved"], solver_time_limit=0.5)
    first = pipeplan.optimize("tiny", "dgx-h100", **kwargs)
    second = pipeplan.optimize("tiny", "dgx-h100", **kwargs)
    assert _without_timing(first.to_dict()) == _without_timing(second.to_dict())
    assert len(first.layouts) > 1 and not first.timed_out
    simulated = [t for r in first.layouts for t in (r.simulated, r.screened if r.screen_fits else None)
                 if t is not None]
    assert first.iteration_time <= min(simulated)
    assert {r.status for r in first.layouts} <= {"SEARCHED", "SCREENED", "PRUNED", "MEMORY FLOOR", "NO FIT"}
    chosen = first.plan
    assert chosen.tp * chosen.pp * chosen.dp == 8
    # The plan simulates, alone, to the reported time.
    assert pipeplan.simulate(plan=chosen).iteration_time == first.iteration_time
    # Pinning the chosen layout and schedule gives a plan no faster than the whole search's answer.
    pinned = pipeplan.optimize("tiny", "dgx-h100", tp=chosen.tp, pp=chosen.pp, dp=chosen.dp,
                               **{k: v for k, v in kwargs.items() if k != "gpus"}, gpus=8)
    assert first.iteration_time <= pinned.iteration_time


def test_a_time_limit_returns_the_best_plan_found_and_says_so():
    result = pipeplan.optimize("llama3-8b", "dgx-h100", global_batch=64, time_limit=0.01, solver_time_limit=0.5)
    assert result.timed_out and fits_within(result.chosen, 0.05)
    assert any(r.status == "TIME LIMIT" for r in result.layouts) or result.layouts == ()


def test_the_given_configuration_is_a_baseline_the_answer_never_loses_to():
    result = pipeplan.optimize("tiny", "dgx-h100", global_batch=16, gpus=8, schedules=["1f1b"],
                               solver_time_limit=0.5, compare_config="tp=2,pp=2,dp=2,b=1")
    given = result.baseline("given config")
    assert given is not None and (given.plan.tp, given.plan.pp, given.plan.dp) == (2, 2, 2)
    assert given.plan.layers_per_stage == (5, 5)  # Megatron's uniform split of 10 pipeline layers
    assert result.iteration_time <= given.iteration_time


@pytest.mark.parametrize("text, message", [
    ("tp=2,pp=2", "--compare-config: give dp, b"),
    ("tp=2,pp=2,dp=2,b=x", "--compare-config: tp, pp, dp, b and v are whole numbers"),
    ("tp=2,pp=2,dp=2,b=1,rc=some", "--compare-config: rc=some is not one of"),
    ("tp=2,pp=4,dp=2,b=1", "--compare-config: tp x pp x dp = 16 but the search uses 8 GPUs"),
])
def test_a_bad_given_configuration_is_one_line(text, message):
    with pytest.raises(SpecError, match=message):
        pipeplan.optimize("tiny", "dgx-h100", global_batch=16, gpus=8, compare_config=text)


def _cli(*args):
    return subprocess.run([sys.executable, "-m", "pipeplan", "optimize", *args], capture_output=True, text=True,
                          cwd=REPO, env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"}, timeout=300)


@pytest.mark.parametrize("args, message", [
    (["--model", "llama3-8b", "--gpus", "12", "--tp", "8"], "--tp: 8 is not a tensor-parallel degree here"),
    (["--model", "llama3-8b", "--tp", "16"], "--tp: 16 is not a tensor-parallel degree here; choose one of 1, 2, 4, 8"),
    (["--model", "gpt2-xl", "--tp", "2"], "gpt2-xl's 25 heads"),
    (["--model", "llama3-8b", "--nodes", "1", "--gpus", "12"], "gpus: 12 GPUs need 2 node"),
    (["--model", "llama3-70b", "--pp", "1", "--nodes", "4"], "unpin the layout"),
    (["--model", "llama3-8b", "--gpus", "16", "--tp", "1", "--pp", "1"],
     "divisible by none of the data-parallel degrees that --tp 1 --pp 1 leave on 16 GPUs (16)"),
])
def test_bad_layouts_are_one_line_errors_with_exit_2(args, message):
    run = _cli(*args, "--global-batch", "8")
    assert run.returncode == 2, run.stdout
    assert message in run.stderr and len(run.stderr.strip().splitlines()) == 1


def test_cli_searches_the_layouts_and_prints_them():
    run = _cli("--model", "tiny", "--gpus", "4", "--global-batch", "8", "--schedules", "1f1b",
               "--solver-time-limit", "0.5", "--json")
    assert run.returncode == 0, run.stderr
    data = json.loads(run.stdout)
    layouts = {(r["tp"], r["pp"], r["dp"]) for r in data["layouts"]}
    assert layouts == {(1, 1, 4), (1, 2, 2), (1, 4, 1), (2, 1, 2), (2, 2, 1), (4, 1, 1)}
    plan = data["plan"]
    assert plan["tp"] * plan["pp"] * plan["dp"] == 4 and data["timed_out"] is False


def test_llama3_8b_default_search_is_at_least_as_fast_as_every_single_schedule_search():
    """The issue's case: pp = 8 on one DGX H100, global batch 64. The default search (every default
    schedule) must not lose to any search restricted to one schedule, as it once did by pruning on the
    analytic objective."""
    default = llama3_8b_on_one_dgx_h100(None)  # global batch 64, 1 s per solve; test_planner checks two of these too
    singles, unfit = {}, []
    for name in DEFAULT_SCHEDULES:
        try:
            singles[name] = llama3_8b_on_one_dgx_h100((name,)).iteration_time
        except SpecError:
            unfit.append(name)
    # GPipe runs all 64 forwards first, and the LM head is not recomputed (Megatron, torchtitan): its stage
    # keeps 64 micro-batches x 8192 tokens x (2·4096 + 2·4096 + 2·128256) bytes = 143 GB of head activations.
    assert unfit == ["gpipe"]
    # Since the LM head stopped being recomputed the default search ends on a ZB-V point of the plateau
    # test_planner's witness lies on, 0.013 % above the interleaved search's (7.32297 vs 7.32202 s): the
    # polish is a heuristic, and this is how far it is allowed to miss.
    assert default.iteration_time <= min(singles.values()) * (1 + 2e-4), (default.plan.schedule, singles)
