"""3D flags of ``pipeplan simulate`` and the API: derivations, one-line errors, the new output lines and keys."""
import json
import re
from pathlib import Path

import pytest

import pipeplan
from pipeplan import SpecError, derive_sizing

from inprocess import run_pipeplan  # tests/ is on sys.path

REPO = Path(__file__).resolve().parents[1]


def pipeplan_cli(*args, cwd=None):
    """``pipeplan ARGS`` run in this process as its subprocess runs (``inprocess``; ``test_cli`` runs the real one)."""
    return run_pipeplan(*args, cwd=cwd or REPO)


@pytest.mark.parametrize("given, expected", [
    (dict(gpus=16, tp=2, dp=2), (2, 4, 2, 2)),     # pp = 16 / (2 x 2); 16 GPUs fill 2 nodes of 8
    (dict(gpus=32, tp=2, pp=4), (2, 4, 4, 4)),     # dp = 32 / (2 x 4)
    (dict(nodes=2), (1, 16, 1, 2)),                # pp = every GPU of 2 nodes
    (dict(tp=2, dp=2), (2, 2, 2, 1)),              # pp = the cluster's 8 GPUs / 4
    (dict(nodes=2, pp=4), (1, 4, 1, 2)),           # --nodes is the cluster's size: dp stays 1, GPUs may idle
    (dict(gpus=4), (1, 4, 1, 1)),                  # part of one node
])
def test_missing_sizes_are_derived(given, expected):
    s = derive_sizing(8, 1, **given)
    assert (s.tp, s.pp, s.dp, s.nodes) == expected
    assert s.num_gpus == s.tp * s.pp * s.dp


@pytest.mark.parametrize("flags, names", [
    (["--gpus", "16", "--nodes", "3"], ["--gpus 16", "--nodes 3"]),
    (["--gpus", "16", "--tp", "2", "--pp", "4", "--dp", "4"], ["--gpus 16", "--tp x --pp x --dp"]),
    (["--gpus", "12", "--tp", "8"], ["--gpus 12", "--tp x --dp"]),
    (["--gpus", "12", "--tp", "2", "--pp", "4"], ["--gpus 12", "--tp x --pp"]),
    (["--nodes", "1", "--pp", "4", "--dp", "4"], ["--nodes 1", "--tp x --pp x --dp"]),
    (["--tp", "3"], ["--tp", "divides 8"]),
    (["--sequence-parallel"], ["--sequence-parallel", "--tp"]),
])
def test_contradictions_are_one_line_errors_naming_both_flags(flags, names):
    out = pipeplan_cli("simulate", "--model", "tiny", *flags)
    assert out.returncode == 2 and out.stdout == ""
    assert out.stderr.count("\n") == 1 and out.stderr.startswith("pipeplan simulate: error: ")
    for name in names:
        assert name in out.stderr


def test_layout_flags_with_a_plan_file_are_refused(tmp_path):
    plan = pipeplan.make_plan("tiny", pp=2)
    path = tmp_path / "plan.json"
    path.write_text(plan.to_json())
    out = pipeplan_cli("simulate", str(path), "--tp", "2")
    assert out.returncode == 2 and out.stderr.count("\n") == 1 and "--tp" in out.stderr


def test_text_output_keeps_its_lines_and_adds_the_3d_ones():
    out = pipeplan_cli("simulate", "--model", "tiny", "--gpus", "8", "--tp", "2", "--pp", "2",
                       "--sequence-parallel", "--distributed-optimizer", "-m", "4")
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert re.fullmatch(r"tiny on dgx-h100: 1f1b p=2 v=1 m=4 b=1 seq=64", lines[0])
    assert re.fullmatch(r"iteration \S+ \S+  bubble \S+ %  [\d,]+ tokens/s  MFU \S+ %", lines[1])
    assert lines[2] == ("layout tp=2 pp=2 dp=2: 8 GPUs of 1 node(s) x 8; sequence parallel, "
                        "distributed optimizer")
    assert lines[3].startswith("per GPU: model ") and "hardware" in lines[3]
    assert lines[4].startswith("communication per device (mean): PP ") and " exposed) inside the ops" in lines[4]
    assert lines[5].split() == ["device", "stages", "layers", "busy", "bubble", "peak", "memory", "/", "capacity",
                                "fits"]
    assert lines[9].split() == ["device", "PP", "comm", "DP", "comm", "weights", "grads", "optimizer",
                                 "activations", "buffers"]


def test_json_keys_agree_with_each_other():
    out = pipeplan_cli("simulate", "--model", "tiny", "--gpus", "4", "--pp", "2", "-b", "2", "-m", "4", "--json")
    assert out.returncode == 0, out.stderr
    d = json.loads(out.stdout)
    assert (d["tp"], d["pp"], d["dp"], d["num_gpus"], d["nodes"]) == (1, 2, 2, 4, 1)
    t = d["iteration_time"]
    assert d["tokens_per_second"] == pytest.approx(2 * 4 * 64 * 2 / t)
    assert d["model_tflops_per_gpu"] == pytest.approx(d["model_flops"] / (t * 4) / 1e12)
    assert d["hardware_flops"] == d["model_flops"]  # no recomputation
    assert d["mfu"] == pytest.approx(d["model_tflops_per_gpu"] * 1e12 / 989e12)
    for parts, peak in zip(d["memory_breakdown"], d["peak_memory"]):
        assert set(parts) == {"weights", "grads", "optimizer", "activations", "buffers", "total"}
        assert parts["total"] == pytest.approx(peak)
    comm = d["communication"]
    assert set(comm) == {"pp", "dp", "other", "tp", "tp_note"} and comm["tp"] is None
    for t_pp in comm["pp"]:
        assert t_pp["total"] > 0 and t_pp["exposed"] + t_pp["overlapped"] == pytest.approx(t_pp["total"])


def test_api_takes_the_same_layout_keywords():
    result = pipeplan.simulate("tiny", gpus=8, tp=2, pp=2, sequence_parallel=True, microbatches=4)
    assert (result.plan.tp, result.plan.pp, result.plan.dp, result.num_gpus) == (2, 2, 2, 8)
    assert result.plan.sequence_parallel and not result.plan.distributed_optimizer
    with pytest.raises(SpecError, match="--gpus 8 and --nodes 2"):
        pipeplan.simulate("tiny", gpus=8, nodes=2)
    with pytest.raises(TypeError, match="tp"):
        pipeplan.simulate(plan=result.plan, tp=2)


def test_selective_recomputation_from_the_command_line(tmp_path):
    # Standard attention stores the s²-sized scores; selective recomputation drops them and re-runs
    # the attention core, so it is slower than none and lighter (Korthikanti et al. 2022).
    model = {"name": "gpt-std", "num_layers": 4, "hidden": 1024, "heads": 16, "ffn_hidden": 4096, "vocab": 32000,
             "seq_len": 2048, "attention": "standard"}
    (tmp_path / "gpt-std.json").write_text(json.dumps(model))
    runs = {}
    for mode in ("none", "selective"):
        out = pipeplan_cli("simulate", "--model", str(tmp_path / "gpt-std.json"), "--pp", "2", "-m", "4",
                           "--recompute", mode, "--json")
        assert out.returncode == 0, out.stderr
        runs[mode] = json.loads(out.stdout)
    assert runs["selective"]["iteration_time"] > runs["none"]["iteration_time"]
    assert max(runs["selective"]["peak_memory"]) < max(runs["none"]["peak_memory"])
