"""Plans exported to Megatron-LM, torchtitan and torch's schedule CSV, checked against hand counts, a real
shell's parsing and exit codes; ``optimize --target megatron`` keeps to what Megatron runs. The round trips
through the frameworks' own parsers are in ``test_export_interop.py``."""
import itertools
import json
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest

from pipeplan import Plan
from pipeplan.errors import SpecError
from pipeplan.export import ExportOptions, export_plan
from pipeplan.planner.cpsat import OPTIMAL, solve
from pipeplan.planner.exhaustive import plans_of, splits

REPO = Path(__file__).resolve().parents[1]
CPU = str(REPO / "validation" / "cpu.json")


def pipeplan(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "pipeplan", *args], capture_output=True, text=True,
                          cwd=cwd or REPO, env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"})


def tiny_plan(schedule="1f1b", pp=2, layers=(5, 5), chunks=1, m=8, b=4, **fields) -> Plan:
    """A plan of the tiny model (8 blocks: 10 pipeline layers with the embedding and the head) on the CPU spec
    (two "GPUs" per node, as many nodes as pp needs)."""
    return Plan(model="tiny", cluster=CPU, schedule=schedule, pp=pp, chunks=chunks, num_microbatches=m,
                microbatch_size=b, layers_per_stage=tuple(layers), nodes=(pp + 1) // 2, **fields)


def exported(plan: Plan, target: str, **options):
    return export_plan(plan, target, ExportOptions(**options))


def shell_words(text: str) -> list[str]:
    """The argument list bash makes of an export (eval, as the README shows)."""
    out = subprocess.run(["bash", "-c", 'eval "set -- $1"; printf "%s\\n" "$@"', "bash", text],
                         capture_output=True, text=True, check=True)
    return out.stdout.splitlines()


def flag(words: list[str], name: str) -> str:
    return words[words.index(name) + 1]


def unrolled(layout: str) -> list[str]:
    """A Megatron layout's stages, repeats unrolled as REFERENCE.md states Megatron's rule: ``(X)*n`` and ``x*n``."""
    import re

    for pattern in (r"\(([^)]+)\)\*(\d+)", r"(.)\*(\d+)"):
        layout = re.sub(pattern, lambda match: match.group(1) * int(match.group(2)), layout)
    return layout.split("|")


def contents(layers) -> list[str]:
    """Hand rule: stage k holds its layers, the first of stage 0 being E and the last of the last stage L."""
    last = len(layers) - 1
    return [("E" if k == 0 else "") + "t" * (n - (k == 0) - (k == last)) + ("L" if k == last else "")
            for k, n in enumerate(layers)]


# Megatron ----------------------------------------------------------------------------------------------------


def test_megatron_layout_is_the_hand_count():
    # llama3-8b: E + 32 blocks + L. The README's 6 4 4 4 4 4 4 4 split: E and five blocks, four blocks six
    # times, three blocks and L.
    llama = Plan(model="llama3-8b", cluster="dgx-h100", schedule="1f1b", pp=8, num_microbatches=64,
                 microbatch_size=1, layers_per_stage=(6, 4, 4, 4, 4, 4, 4, 4))
    words = shell_words(exported(llama, "megatron").text)
    assert flag(words, "--pipeline-model-parallel-layout") == "Ettttt|(tttt|)*6tttL"
    assert flag(words, "--num-layers") == "32" and flag(words, "--global-batch-size") == "64"
    # Two equal stages are not worth a repeat; four stages of tiny (2, 3, 3, 2 layers).
    uneven = tiny_plan(pp=4, layers=(2, 3, 3, 2))
    assert flag(shell_words(exported(uneven, "megatron").text), "--pipeline-model-parallel-layout") == "Et|ttt|ttt|tL"


def test_megatron_arguments_for_an_interleaved_plan_as_bash_reads_them():
    plan = tiny_plan("interleaved", layers=(3, 2, 2, 3), chunks=2)  # stages 0, 2 on rank 0 and 1, 3 on rank 1
    assert shell_words(exported(plan, "megatron").text) == [
        "--tensor-model-parallel-size", "1", "--pipeline-model-parallel-size", "2",
        "--pipeline-model-parallel-layout", "Ett|tt|tt|ttL", "--num-layers", "8", "--seq-length", "64",
        "--micro-batch-size", "4", "--global-batch-size", "32", "--overlap-p2p-communication"]
    # m = 6 at p = 4: one round of 6 micro-batches (6 // max(1, 6 // 4)), Megatron's group size 6.
    six = tiny_plan("interleaved", pp=4, layers=(2, 1, 1, 1, 1, 1, 1, 2), chunks=2, m=6)
    words = shell_words(exported(six, "megatron").text)
    assert flag(words, "--microbatch-group-size-per-virtual-pipeline-stage") == "6"
    # 3D: tp 2 with sequence parallelism, dp 2 with the distributed optimizer; global batch 1 x 16 x 2.
    three_d = Plan(model="llama3-8b", cluster="dgx-h100", schedule="1f1b", pp=2, tp=2, dp=2, sequence_parallel=True,
                   distributed_optimizer=True, num_microbatches=16, microbatch_size=1, layers_per_stage=(17, 17))
    words = shell_words(exported(three_d, "megatron").text)
    assert flag(words, "--tensor-model-parallel-size") == "2" and flag(words, "--global-batch-size") == "32"
    assert {"--sequence-parallel", "--use-distributed-optimizer"} <= set(words)
    assert flag(words, "--pipeline-model-parallel-layout") == "E" + "t" * 16 + "|" + "t" * 16 + "L"


def test_megatron_recomputation_one_setting_or_refused_or_a_superset():
    layers = (2, 3, 3, 2)  # blocks per stage: 1, 3, 3, 1
    full = exported(tiny_plan(pp=4, layers=layers, recompute=("full",) * 4), "megatron").text
    assert shell_words(full)[-6:] == ["--recompute-granularity", "full", "--recompute-method", "uniform",
                                      "--recompute-num-layers", "1"]
    selective = exported(tiny_plan(pp=4, layers=layers, recompute=("selective",) * 4), "megatron").text
    assert shell_words(selective)[-2:] == ["--recompute-granularity", "selective"]
    mixed = tiny_plan(pp=4, layers=layers, recompute=("full", "none", "none", "none"))
    with pytest.raises(SpecError, match="one recomputation setting for every stage.*none x3, full x1"):
        exported(mixed, "megatron")
    # The superset: the first N = 1 layers (stage 0's one block) of every stage recompute fully.
    superset = exported(mixed, "megatron", recompute_superset=True)
    assert shell_words(superset.text)[-6:] == ["--recompute-granularity", "full", "--recompute-method", "block",
                                               "--recompute-num-layers", "1"]
    assert any("stages 1,2,3" in note for note in superset.notes)
    # A stage holding the embedding alone recomputes nothing in Megatron: its mode does not matter.
    alone = tiny_plan(pp=2, layers=(1, 9), recompute=("none", "full"))
    assert "--recompute-method" in shell_words(exported(alone, "megatron").text)


def test_torchtitan_recomputation_one_policy_last_or_refused_or_a_superset():
    layers = (2, 3, 3, 2)  # blocks per stage: 1, 3, 3, 1
    for mode in ("none", "selective", "full"):  # always written: torchtitan's llama3 configs default to selective
        text = exported(tiny_plan(pp=4, layers=layers, recompute=(mode,) * 4), "torchtitan").text
        assert shell_words(text)[-1] == f"activation_checkpoint:{mode}"
    assert shell_words(exported(tiny_plan(pp=4, layers=layers), "torchtitan").text)[-1] == "activation_checkpoint:none"
    mixed = tiny_plan(pp=4, layers=layers, recompute=("selective", "none", "full", "none"))
    with pytest.raises(SpecError, match="one activation-checkpoint policy.*none x2, selective x1, full x1"):
        exported(mixed, "torchtitan")
    superset = exported(mixed, "torchtitan", recompute_superset=True)
    assert shell_words(superset.text)[-1] == "activation_checkpoint:full"
    assert any("stages 0,1,3" in note for note in superset.notes)
    # A stage holding the embedding alone has no block to checkpoint: its mode does not matter.
    alone = tiny_plan(pp=2, layers=(1, 9), recompute=("none", "full"))
    assert shell_words(exported(alone, "torchtitan").text)[-1] == "activation_checkpoint:full"


def test_megatron_refuses_in_one_line_what_it_cannot_run(tmp_path):
    two = dict(layers=(3, 2, 2, 3), chunks=2)
    cases = {"zb-h1": dict(), "zb-v": two, "dualpipe-v": two, "gpipe": dict()}
    for schedule, fields in cases.items():
        path = tmp_path / f"{schedule}.json"
        path.write_text(tiny_plan(schedule, **fields).to_json())
        out = pipeplan("export", str(path), "--to", "megatron")
        assert out.returncode == 2 and out.stdout == ""
        assert out.stderr.count("\n") == 1 and "Traceback" not in out.stderr
        assert f"runs 1f1b and interleaved (its 1F1B and interleaved 1F1B schedules), not {schedule}" in out.stderr
    few = tiny_plan("interleaved", pp=4, layers=(2, 1, 1, 1, 1, 1, 1, 2), chunks=2, m=2)
    with pytest.raises(SpecError, match="needs at least pp = 4 micro-batches"):
        exported(few, "megatron")


# torchtitan --------------------------------------------------------------------------------------------------


def test_torchtitan_options_are_the_hand_count():
    plan = tiny_plan("interleaved", layers=(3, 2, 2, 3), chunks=2)
    result = exported(plan, "torchtitan")
    assert result.schedule_csv is None  # torch's Interleaved1F1B runs this very order
    assert shell_words(result.text) == [
        "--parallelism.pipeline_parallel_degree", "2", "--parallelism.pipeline_parallel_schedule", "Interleaved1F1B",
        "--parallelism.module_fqns_per_model_part", "tok_embeddings,layers.0,layers.1", "layers.2,layers.3",
        "layers.4,layers.5", "layers.6,layers.7,norm,lm_head",
        "--parallelism.pipeline_parallel_microbatch_size", "4",
        "--parallelism.data_parallel_shard_degree", "1", "--parallelism.data_parallel_replicate_degree", "1",
        "--training.local_batch_size", "32", "--training.global_batch_size", "32", "--training.seq_len", "64",
        "--training.disable_cuda_graphs", "activation_checkpoint:none"]


def test_torchtitan_writes_the_csv_of_an_order_torch_has_no_class_for(tmp_path):
    path = tmp_path / "zbh1.json"
    path.write_text(tiny_plan("zb-h1").to_json())
    out = pipeplan("export", str(path), "--to", "torchtitan")
    assert out.returncode == 2 and "--schedule-csv: torch has no schedule class for zb-h1" in out.stderr
    out = pipeplan("export", str(path), "--to", "torchtitan", "--out", str(tmp_path / "titan.args"))
    assert out.returncode == 0, out.stderr
    words = shell_words((tmp_path / "titan.args").read_text())
    csv_path = tmp_path / "titan.schedule.csv"
    assert flag(words, "--parallelism.pipeline_parallel_schedule_csv") == str(csv_path)
    assert flag(words, "--parallelism.pipeline_parallel_schedule") == "PipelineScheduleMulti"  # placement only
    rows = [row.split(",") for row in csv_path.read_text().splitlines()]
    assert [len(row) for row in rows] == [24, 24]  # 8 F, 8 I, 8 W per rank
    assert [{cell[0] for cell in row} for row in rows] == [{"0"}, {"1"}]
    assert out.stdout.splitlines() == [f"wrote {tmp_path / 'titan.args'}", f"wrote {csv_path}"]


# torch's CSV -------------------------------------------------------------------------------------------------


def test_torch_csv_compute_only_and_compute_comms_hand_traced():
    # 1F1B, p = 2, m = 2: rank 0 warms up with one forward (p - r - 1), then F, B, then B.
    assert exported(tiny_plan(m=2), "torch-csv").text == "0F0,0F1,0B0,0B1\n1F0,1B0,1F1,1B1\n"
    # m = 1 with torch's lowering: 0F0 sends, rank 1 receives and runs F then B, sends the gradient back;
    # each stage's REDUCE_GRAD after its last backward.
    assert exported(tiny_plan(m=1), "torch-csv", csv_format="compute_comms").text == (
        "0F0,0SEND_F0,0RECV_B0,0B0,0REDUCE_GRAD\n1RECV_F0,1F0,1B0,1SEND_B0,1REDUCE_GRAD\n")


# The command line: outputs never replace an input, a folder or a special file ----------------------------------


def test_export_outputs_are_checked_before_any_work(tmp_path):
    plan_path = tmp_path / "plan.json"
    plan_path.write_text(tiny_plan().to_json())
    before = plan_path.read_bytes()
    for args, message in ((("--out", str(tmp_path)), "is a folder"),
                          (("--out", str(plan_path)), "is the input PLAN.json"),
                          (("--out", str(tmp_path / "no" / "x")), "does not exist"),
                          (("--schedule-csv", str(tmp_path / "x.csv")), "--schedule-csv: only for --to torchtitan")):
        out = pipeplan("export", str(plan_path), "--to", "megatron", *args)
        assert out.returncode == 2 and message in out.stderr and out.stderr.count("\n") == 1, (args, out.stderr)
    assert plan_path.read_bytes() == before
    out = pipeplan("export", str(plan_path), "--to", "torch-csv", "--out", str(tmp_path / "plan.csv"))
    assert out.returncode == 0 and (tmp_path / "plan.csv").read_text() == (  # 1F1B, p = 2, m = 8 by hand
        "0F0,0F1,0B0,0F2,0B1,0F3,0B2,0F4,0B3,0F5,0B4,0F6,0B5,0F7,0B6,0B7\n"
        "1F0,1B0,1F1,1B1,1F2,1B2,1F3,1B3,1F4,1B4,1F5,1B5,1F6,1B6,1F7,1B7\n")


# optimize --target megatron ----------------------------------------------------------------------------------


def test_uniform_recompute_problems_reach_the_best_uniform_plan():
    """CP-SAT with one recomputation flag for all stages against every split x (all none, all full)."""
    from test_planner_exactness import random_problem  # tests/ is on sys.path

    checked = 0
    for seed in range(40):
        problem = replace(random_problem(seed), uniform_recompute=True)
        S = problem.num_stages
        values = [problem.objective(split, (flag,) * S) for split in splits(problem.num_layers, S)
                  for flag in ((False, True) if problem.allow_recompute else (False,))]
        best = min((v for v in values if v is not None), default=None)
        solution = solve(problem, time_limit=20)
        if best is None:
            assert not solution.found
            continue
        assert solution.status == OPTIMAL and solution.objective == best
        assert len(set(solution.recompute)) == 1
        assert all(len(set(modes)) == 1 for split in itertools.islice(splits(problem.num_layers, S), 20)
                   for modes in plans_of(problem, split))
        checked += 1
    assert checked >= 20


def test_optimize_target_megatron_recomputes_every_stage_alike_and_exports():
    import pipeplan as api

    # llama3-8b on four 48 GB L40S, 1F1B at b = 1: memory binds. Free, the planner recomputes three of four
    # stages (Megatron cannot say that); for Megatron it recomputes all four.
    args = dict(gpus=4, global_batch=32, pp=4, dp=1, tp=1, microbatch_sizes=[1], schedules=["1f1b"],
                solver_time_limit=0.5)
    free = api.optimize("llama3-8b", "pcie-l40s", **args)
    assert len(set(free.plan.recompute)) > 1
    with pytest.raises(SpecError, match="one recomputation setting"):
        export_plan(free.result.resolved, "megatron")
    megatron = api.optimize("llama3-8b", "pcie-l40s", target="megatron", **args)
    assert megatron.plan.recompute == ("full",) * 4 and megatron.iteration_time >= free.iteration_time
    words = shell_words(export_plan(megatron.result.resolved, "megatron").text)
    assert words[-6:] == ["--recompute-granularity", "full", "--recompute-method", "uniform",
                          "--recompute-num-layers", "1"]
    with pytest.raises(SpecError, match="--target megatron runs 1f1b and interleaved, not zb-v"):
        api.optimize("tiny", CPU, global_batch=8, pp=2, schedules=["zb-v"], target="megatron")


def test_optimize_export_writes_megatron_arguments(tmp_path):
    out = pipeplan("optimize", "--model", "tiny", "--cluster", CPU, "--pp", "2", "--global-batch", "16",
                   "--out", str(tmp_path / "plan.json"), "--export", "megatron",
                   "--export-out", str(tmp_path / "m.args"), "--json")
    assert out.returncode == 0, out.stderr
    plan = json.loads((tmp_path / "plan.json").read_text())
    assert plan["schedule"] in ("1f1b", "interleaved") and len(set(plan["recompute"])) == 1
    words = shell_words((tmp_path / "m.args").read_text())
    assert flag(words, "--pipeline-model-parallel-size") == "2"
    assert unrolled(flag(words, "--pipeline-model-parallel-layout")) == contents(plan["layers_per_stage"])
    bad = pipeplan("optimize", "--model", "tiny", "--cluster", CPU, "--pp", "2", "--global-batch", "16",
                   "--export-out", str(tmp_path / "x.args"))
    assert bad.returncode == 2 and "--export-out" in bad.stderr and not (tmp_path / "x.args").exists()
