"""The planner end to end: plans fit in the simulator, beat the baselines, and the CLI speaks JSON and one-line errors."""
import json
import subprocess
import sys
from pathlib import Path

import pytest

import pipeplan
from pipeplan import Plan, SpecError
from pipeplan.cluster import CLUSTER_PRESETS
from pipeplan.planner.baselines import BRUTE_FORCE, PARAMETERS, UNIFORM, linear_partition, megatron_uniform

from shared_searches import llama3_8b_on_one_dgx_h100  # tests/ is on sys.path

REPO = Path(__file__).resolve().parents[1]


def pipeplan_cli(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "pipeplan", *args], capture_output=True, text=True,
                          cwd=cwd or REPO, env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"})


def assert_fits_with_headroom(result, headroom):
    """The simulator's own replay, not the planner's constraint, says every device stays under the limit."""
    assert result.result.fits
    cap = result.result.sim.capacity
    assert all(peak <= c * (1 - headroom) + 1 for peak, c in zip(result.result.peak_memory, cap))


@pytest.fixture(scope="module")
def llama8b_1f1b():
    return pipeplan.optimize("llama3-8b", "dgx-h100", global_batch=64, pp=8, schedules=["1f1b"], solver_time_limit=5)


def test_llama3_8b_beats_the_uniform_split_by_five_percent(llama8b_1f1b):
    # The Megatron default, simulated here directly: 4 blocks per stage, embedding first, head last.
    uniform = pipeplan.simulate(plan=Plan(model="llama3-8b", cluster="dgx-h100", schedule="1f1b", pp=8,
                                          num_microbatches=64, microbatch_size=1,
                                          layers_per_stage=(5, 4, 4, 4, 4, 4, 4, 5)))
    assert uniform.fits
    assert llama8b_1f1b.iteration_time <= uniform.iteration_time / 1.05
    assert llama8b_1f1b.speedup_vs_uniform == pytest.approx(uniform.iteration_time / llama8b_1f1b.iteration_time)
    assert_fits_with_headroom(llama8b_1f1b, 0.05)


def test_never_worse_than_any_baseline(llama8b_1f1b):
    names = {b.name for b in llama8b_1f1b.baselines}
    assert {UNIFORM, PARAMETERS} <= names
    for b in llama8b_1f1b.baselines:
        assert llama8b_1f1b.iteration_time <= b.iteration_time + 1e-12


def test_the_returned_plan_resimulates_to_the_reported_figures(llama8b_1f1b):
    again = pipeplan.simulate(plan=Plan.from_dict(json.loads(llama8b_1f1b.plan.to_json())))
    assert again.iteration_time == pytest.approx(llama8b_1f1b.iteration_time, rel=1e-12)
    assert sum(llama8b_1f1b.plan.layers_per_stage) == 34


def test_memory_bound_plans_recompute_and_still_fit():
    # 40 GB GPUs: the uniform split of llama3-8b needs recomputation to fit under 1F1B and ZB-H2.
    small = CLUSTER_PRESETS["dgx-h100"].to_dict()
    small["gpu"]["memory_bytes"] = 40e9
    result = pipeplan.optimize("llama3-8b", small, global_batch=32, pp=8, schedules=["1f1b", "zb-h2"],
                               microbatch_sizes=[1], solver_time_limit=3)
    assert_fits_with_headroom(result, 0.05)
    assert "full" in result.plan.recompute
    for b in result.baselines:
        assert result.iteration_time <= b.iteration_time + 1e-12
        if b.name == UNIFORM:
            assert set(b.plan.recompute) == {"full"}  # the uniform split only fits by recomputing everywhere


def test_small_model_matches_or_beats_the_brute_force_optimum_and_is_deterministic():
    first = pipeplan.optimize("tiny", "dgx-h100", global_batch=8, pp=4, schedules=["1f1b", "zb-h1"], solver_time_limit=2)
    second = pipeplan.optimize("tiny", "dgx-h100", global_batch=8, pp=4, schedules=["1f1b", "zb-h1"], solver_time_limit=2)
    assert first.plan == second.plan
    brute = first.baseline(BRUTE_FORCE)
    assert brute is not None
    assert first.iteration_time <= brute.iteration_time + 1e-12


def test_baseline_splits_by_hand():
    llama = pipeplan.load_model("llama3-8b")
    assert megatron_uniform(llama, 8) == (5, 4, 4, 4, 4, 4, 4, 5)
    assert linear_partition([5, 1, 1, 1, 1, 5], 3) == (1, 4, 1)
    assert linear_partition([1, 2, 3, 4, 5, 6, 7, 8, 9], 3) == (5, 2, 2)  # 15 | 13 | 17: the textbook split


def test_infeasible_says_what_would_fit():
    with pytest.raises(SpecError, match=r"needs .* GB per GPU.*--pp \d+"):
        pipeplan.optimize("llama3-70b", "dgx-h100", global_batch=16, pp=8, schedules=["1f1b"], solver_time_limit=1)


def test_cli_json_has_the_documented_keys(tmp_path):
    out = tmp_path / "plan.json"
    run = pipeplan_cli("optimize", "--model", "llama3-8b", "--cluster", "dgx-h100", "--pp", "8", "--global-batch", "64",
                       "--schedules", "1f1b", "--solver-time-limit", "2", "--out", str(out), "--json")
    assert run.returncode == 0, run.stderr
    data = json.loads(run.stdout)
    for key in ("plan", "iteration_time", "bubble_fraction", "solver_status", "baselines", "speedup_vs_uniform"):
        assert key in data
    assert data["solver_status"] in ("OPTIMAL", "FEASIBLE")
    assert all("iteration_time" in b for b in data["baselines"].values())
    assert data["speedup_vs_uniform"] >= 1.05
    assert run.stderr == ""  # no progress bar with --json
    sim = pipeplan_cli("simulate", str(out), "--json")
    assert sim.returncode == 0, sim.stderr
    assert json.loads(sim.stdout)["iteration_time"] == pytest.approx(data["iteration_time"], rel=1e-12)


@pytest.mark.parametrize("args,needle", [
    (["--model", "nope", "--global-batch", "8"], "model"),
    (["--model", "tiny", "--global-batch", "8", "--schedules", "1f2b"], "--schedules"),
    (["--model", "tiny", "--global-batch", "8", "--pp", "64"], "pp"),
    (["--model", "tiny", "--global-batch", "8", "--headroom", "1.5"], "headroom"),
    (["--model", "tiny", "--global-batch", "8", "--pp", "2", "--time-limit", "nan"], "--time-limit"),  # as the flag is parsed
    (["--model", "tiny", "--global-batch", "8", "--pp", "2", "--microbatch-sizes", "3"], "microbatch_sizes"),
    (["--model", "tiny", "--global-batch", "8", "--pp", "2", "--microbatch-sizes", "0"], "--microbatch-sizes"),  # refused as the flag is parsed
    (["--model", "tiny", "--global-batch", "8", "--dp", "16"], "dp"),
])
def test_cli_bad_input_is_one_line_and_exit_2(args, needle):
    run = pipeplan_cli("optimize", *args)
    assert run.returncode == 2
    assert len(run.stderr.strip().splitlines()) == 1 and needle in run.stderr


def test_cli_infeasible_exits_2_with_one_line(tmp_path):
    small = CLUSTER_PRESETS["dgx-h100"].to_dict()
    small["gpu"]["memory_bytes"] = 2e6
    path = tmp_path / "small.json"
    path.write_text(json.dumps(small))
    run = pipeplan_cli("optimize", "--model", "tiny", "--cluster", str(path), "--pp", "4", "--gpus", "4", "--global-batch", "4",
                       "--schedules", "1f1b", "--solver-time-limit", "1")
    assert run.returncode == 2
    assert len(run.stderr.strip().splitlines()) == 1 and "no plan fits" in run.stderr


def test_parallel_workers_give_the_same_plan():
    kwargs = dict(global_batch=8, pp=4, schedules=["1f1b", "zb-h1"], solver_time_limit=2)
    one = pipeplan.optimize("tiny", "dgx-h100", **kwargs)
    two = pipeplan.optimize("tiny", "dgx-h100", parallel=2, **kwargs)
    assert one.plan == two.plan and one.iteration_time == two.iteration_time


def test_a_cluster_object_keeps_its_node_count_in_the_plan_file():
    cluster = pipeplan.load_cluster("dgx-h100", 2)
    result = pipeplan.optimize("tiny", cluster, global_batch=4, pp=4, dp=4, schedules=["1f1b"], solver_time_limit=1)
    again = pipeplan.simulate(plan=Plan.from_dict(json.loads(result.plan.to_json())))
    assert again.iteration_time == pytest.approx(result.iteration_time, rel=1e-12)


def test_compact_layer_text():
    from pipeplan.cli.optimize import compact_layers

    assert compact_layers((9, 8, 8, 8, 8, 6, 7, 7)) == "9 8x4 6 7 7"


def test_parallel_workers_prune_and_rescore_exactly_as_one_process():
    """Worker processes may solve a candidate ahead of time, but the search keeps only what one process
    would: with rescore=1, tiny at pp=2 solves the candidate of lowest bound and prunes every other."""
    kwargs = dict(global_batch=8, pp=2, solver_time_limit=1, rescore=1)
    one = pipeplan.optimize("tiny", "dgx-h100", **kwargs)
    four = pipeplan.optimize("tiny", "dgx-h100", parallel=4, **kwargs)
    fate = lambda r: [(c.candidate, c.status, c.predicted, c.simulated) for c in r.candidates]  # noqa: E731
    assert fate(one) == fate(four)
    assert one.plan == four.plan and one.iteration_time == four.iteration_time


def test_a_plan_written_with_a_spec_file_runs_from_any_folder(tmp_path):
    """--cluster validation/cpu.json is relative to where optimize ran; the plan file must still find it
    when simulated from elsewhere (plans look their relative spec paths up beside themselves)."""
    out = tmp_path / "plans" / "plan.json"
    out.parent.mkdir()
    run = pipeplan_cli("optimize", "--model", "tiny", "--cluster", "validation/cpu.json", "--pp", "2",
                       "--global-batch", "8", "--schedules", "1f1b", "--solver-time-limit", "1", "--out", str(out), "--json")
    assert run.returncode == 0, run.stderr
    expected = json.loads(run.stdout)["iteration_time"]
    sim = pipeplan_cli("simulate", str(out), "--json", cwd=tmp_path)
    assert sim.returncode == 0, sim.stderr
    assert json.loads(sim.stdout)["iteration_time"] == pytest.approx(expected, rel=1e-12)


def test_baselines_obey_the_same_headroom_as_the_chosen_plan(tmp_path):
    # A cluster whose memory the uniform split (no recompute) fits with 2 % to spare, under a 10 % headroom:
    # the uniform baseline must fall back to recomputation rather than break the rule the chosen plan keeps.
    cluster = json.loads((Path(__file__).resolve().parents[1] / "validation" / "cpu.json").read_text())
    plain = Plan(model="tiny", cluster=cluster, schedule="1f1b", pp=2, num_microbatches=8, microbatch_size=1,
                 layers_per_stage=megatron_uniform(pipeplan.load_model("tiny"), 2))
    peak = max(pipeplan.simulate(plan=plain).peak_memory)
    cluster["gpu"]["memory_bytes"] = peak / 0.98
    result = pipeplan.optimize("tiny", cluster, global_batch=8, pp=2, schedules=["1f1b"], microbatch_sizes=[1],
                               headroom=0.10, solver_time_limit=1.0)
    uniform = result.baseline(UNIFORM)
    assert uniform.plan.recompute == ("full", "full")
    for scored in (result.chosen, *result.baselines):
        assert max(scored.result.peak_memory) <= 0.90 * cluster["gpu"]["memory_bytes"]


def test_a_plateau_of_the_analytic_objective_does_not_hide_the_simulators_best():
    """llama3-8b, pp = 8, global batch 64, interleaved v = 4, b = 1: 244 of the 361 splits that fit without
    recomputation share CP-SAT's analytic optimum and simulate from 7.31 s to 9.05 s. CP-SAT's point
    simulated 8.72 s, was never polished, and single-cut moves could not cross the plateau: the default
    search returned zb-v at 7.375 s and ``--schedules interleaved`` 7.547 s. The witness, simulated here
    directly: the embedding with one block first, one more block on stage 26."""
    layers = (2,) + (1,) * 25 + (2,) + (1,) * 5
    witness = pipeplan.simulate("llama3-8b", "dgx-h100", Plan(
        model="llama3-8b", cluster="dgx-h100", schedule="interleaved", pp=8, chunks=4, num_microbatches=64,
        microbatch_size=1, layers_per_stage=layers))
    # 7.3190 s of pipeline, then device 0's optimizer steps (30 B/param over HBM: the embedding and four blocks, 12.5 ms).
    # (7.3095 s of pipeline before the embedding's I carried its table's dense gradient: 4.40 GB a micro-batch,
    # 1.31 ms at 3.35 TB/s.)
    assert witness.fits and witness.iteration_time == pytest.approx(7.3315, abs=5e-4)
    for schedules in (("interleaved",), None):
        result = llama3_8b_on_one_dgx_h100(schedules)  # global batch 64, pp = 8, 1 s per solve (test_layouts' too)
        assert_fits_with_headroom(result, 0.05)
        # The default search ends on a ZB-V point of the same plateau 0.013 % above the witness (7.32297 s,
        # since the LM head stopped being recomputed): allowed, as in test_layouts.
        slack = 1e-9 if schedules else 2e-4
        assert result.iteration_time <= witness.iteration_time * (1 + slack), (schedules, result.plan.schedule)


def test_interleaved_also_tries_the_chunk_counts_that_divide_the_blocks():
    """The registry's interleaved entry accepts any v >= 2 and plans v = 2 and 4; v = 3 (the published 76.1B
    and 529.6B plans) and 5 split a 60-block model evenly over pp = 4 (12 and 20 stages of 5 and 3 blocks):
    both are candidates, v = 6 (24 stages of 2.5 blocks) is not, nor any v for zb-v (only v = 2)."""
    model = dict(name="sixty", num_layers=60, hidden=256, heads=4, ffn_hidden=1024, vocab=2048, seq_len=256)
    result = pipeplan.optimize(model, "dgx-h100", global_batch=16, pp=4, gpus=4,
                               schedules=["interleaved", "zb-v"], solver_time_limit=0.2)
    tried = {(c.candidate.schedule, c.candidate.chunks) for c in result.candidates}
    assert tried == {("interleaved", 2), ("interleaved", 3), ("interleaved", 4), ("interleaved", 5), ("zb-v", 2)}
