"""The pipeplan command line, run as a real subprocess."""
import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def pipeplan(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "pipeplan", *args], capture_output=True, text=True,
                          cwd=cwd or REPO, env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"})


def test_schedule_1f1b_json_prints_three_nineteenths():
    out = pipeplan("schedule", "1f1b", "--devices", "4", "--microbatches", "16", "--json")
    assert out.returncode == 0, out.stderr
    data = json.loads(out.stdout)
    assert data["bubble_fraction"] == pytest.approx(3 / 19, abs=1e-12)
    assert str(data["bubble_fraction"]).startswith("0.15789")
    assert data["peak_activations"] == [4, 3, 2, 1]


def test_schedule_iterations_report_the_steady_state():
    # ZB-H2 at F = B = W = 1, p = 4, m = 16: one iteration 3m + p - 1 = 51, its longest device span 3m = 48;
    # back to back without a synchronising step each further iteration takes 48, with one 51.
    data = json.loads(pipeplan("schedule", "zb-h2", "-p", "4", "-m", "16", "--iterations", "3", "--json").stdout)
    assert data["iteration_time"] == 51 and data["device_span"] == [48] * 4 and data["span_bubble_fraction"] == 0
    assert data["steady_state"]["iteration_ends"] == [51, 99, 147]
    assert data["steady_state"]["steady_iteration_time"] == 48
    out = pipeplan("schedule", "zb-h2", "-p", "4", "-m", "16", "--iterations", "3", "--synchronise")
    assert out.returncode == 0, out.stderr
    assert "steady state 51 per iteration, bubble 5.88 %" in out.stdout
    bad = pipeplan("schedule", "zb-h2", "-p", "4", "-m", "16", "--synchronise")
    assert bad.returncode != 0 and "--iterations 2 or more" in bad.stderr


def test_simulate_iterations_from_python_and_the_command_line():
    import pipeplan as api

    result = api.simulate("tiny", "dgx-h100", schedule="zb-h2", pp=2, microbatches=8, iterations=3)
    assert result.steady.iterations == 3 and result.steady_iteration_time <= result.iteration_time
    # Back to back the local optimizer steps are free (simulator.iterations); they only follow the
    # compute ops, so the first iteration ends where the isolated one's last F, B, I or W ends.
    compute_end = max(o.end for o in result.timeline.ops if o.action.kind != "OPTIMIZER")
    assert result.steady.ends[0] == pytest.approx(compute_end, rel=1e-12)
    assert compute_end < result.iteration_time
    out = pipeplan("simulate", "--model", "tiny", "--schedule", "zb-h2", "--pp", "2", "-m", "8", "--iterations", "2",
                   "--json")
    assert json.loads(out.stdout)["steady_state"]["iterations"] == 2


def test_schedule_gpipe_one_microbatch_is_three_quarters_idle():
    data = json.loads(pipeplan("schedule", "gpipe", "--devices", "4", "--microbatches", "1", "--json").stdout)
    assert data["bubble_fraction"] == 0.75


def test_schedule_csv_is_written_and_reads_back(tmp_path):
    target = tmp_path / "zbv.csv"
    out = pipeplan("schedule", "zb-v", "-p", "4", "-m", "8", "--csv", str(target))
    assert out.returncode == 0, out.stderr
    rows = target.read_text().strip().split("\n")
    assert len(rows) == 4 and all(len(r.split(",")) == 2 * 8 * 3 for r in rows)
    # The same file runs as a custom schedule on a preset model.
    sim = pipeplan("simulate", "--model", "llama3-8b", "--schedule-csv", str(target), "--json")
    assert sim.returncode == 0, sim.stderr
    data = json.loads(sim.stdout)
    assert data["plan"]["schedule"] == "custom" and len(data["plan"]["layers_per_stage"]) == 8


@pytest.mark.parametrize("args,field", [
    (["schedule", "1f1b", "--devices", "0", "--microbatches", "4"], "devices"),
    (["schedule", "interleaved", "-p", "3", "-m", "7"], "microbatches"),
    (["schedule", "zb-v", "-p", "4", "-m", "8", "--chunks", "3"], "chunks"),
    (["schedule", "1f1b", "-p", "4", "-m", "x"], "--microbatches"),
    (["schedule", "1f1b", "-p", "4", "-m", "4", "--f", "-1"], "f:"),
    (["simulate", "--model", "gpt5"], "model"),
    (["simulate", "missing.json"], "plan"),
])
def test_bad_input_is_one_line_exit_2_no_traceback(args, field):
    out = pipeplan(*args)
    assert out.returncode == 2
    assert "Traceback" not in out.stderr
    assert len(out.stderr.strip().splitlines()) == 1
    assert field in out.stderr


def test_bad_csv_leaves_no_output_file(tmp_path):
    target = tmp_path / "never.csv"
    out = pipeplan("schedule", "interleaved", "-p", "3", "-m", "7", "--csv", str(target))
    assert out.returncode == 2 and not target.exists()


def test_broken_custom_schedule_names_the_action(tmp_path):
    bad = tmp_path / "bad.csv"
    bad.write_text("0F0,0B0\n1B0,1F0\n")
    out = pipeplan("simulate", "--model", "tiny", "--cluster", "pcie-l40s", "--schedule-csv", str(bad))
    assert out.returncode == 2
    assert "device 1: action 1B0" in out.stderr


def test_simulate_plan_file(tmp_path):
    plan = {
        "model": "llama3-8b", "cluster": "dgx-h100", "schedule": "1f1b", "pp": 8, "num_microbatches": 16,
        "microbatch_size": 1, "layers_per_stage": [5, 4, 4, 4, 4, 4, 4, 5],
    }
    path = tmp_path / "plan.json"
    path.write_text(json.dumps(plan))
    out = pipeplan("simulate", str(path), "--json")
    assert out.returncode == 0, out.stderr
    data = json.loads(out.stdout)
    assert data["fits"] and len(data["peak_memory"]) == 8 and 0 < data["bubble_fraction"] < 1
    human = pipeplan("simulate", str(path))
    assert "bubble" in human.stdout and "tokens/s" in human.stdout


def test_plan_names_model_file_beside_it(tmp_path):
    (tmp_path / "mini.yaml").write_text(
        "name: mini\nnum_layers: 6\nhidden: 512\nheads: 8\nffn_hidden: 2048\nvocab: 32000\nseq_len: 1024\n")
    plan = {"model": "mini.yaml", "cluster": "dgx-a100", "schedule": "zb-h1", "pp": 4, "num_microbatches": 8,
            "microbatch_size": 2, "layers_per_stage": [2, 2, 2, 2]}
    (tmp_path / "plan.json").write_text(json.dumps(plan))
    out = pipeplan("simulate", "plan.json", "--json", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["model"] == "mini"


def test_presets_are_listed():
    models = pipeplan("models").stdout
    assert all(name in models for name in ("gpt3-175b", "llama3-8b", "llama3-70b", "llama3-405b", "gpt2-xl", "tiny"))
    clusters = pipeplan("clusters").stdout
    assert all(name in clusters for name in ("dgx-h100", "dgx-a100", "pcie-l40s"))


@pytest.mark.parametrize("content", [
    bytes(range(128, 256)),  # binary, not UTF-8
    b'{"kind": "pipeplan.simulation", "timeline": {"ops": [1]}}',  # right kind, damaged timeline
    b"[1, 2, 3]",  # JSON, but not a mapping
])
def test_gantt_rejects_bad_input_in_one_line(tmp_path, content):
    bad = tmp_path / "bad.json"
    bad.write_bytes(content)
    target = tmp_path / "never.png"
    out = pipeplan("gantt", str(bad), "-o", str(target))
    assert out.returncode == 2 and "Traceback" not in out.stderr
    assert len(out.stderr.strip().splitlines()) == 1 and "input" in out.stderr
    assert not target.exists()


def test_outputs_get_ordinary_permissions(tmp_path):
    import os

    target = tmp_path / "s.csv"
    old = os.umask(0o022)  # the child inherits it; a temp file + rename must not leave 0600 behind
    try:
        out = pipeplan("schedule", "1f1b", "-p", "2", "-m", "2", "--csv", str(target))
    finally:
        os.umask(old)
    assert out.returncode == 0
    assert target.stat().st_mode & 0o777 == 0o644


@pytest.mark.parametrize("field,value", [
    ("model", 5), ("cluster", ["dgx-h100"]), ("schedule", ["1f1b"]), ("placement", [0, "a"]),
    ("placement", [0, 0.5]), ("distributed_optimizer", "no"), ("schedule_csv", 5), ("notes", 5),
])
def test_plan_field_of_the_wrong_type_is_one_line_exit_2(tmp_path, field, value):
    plan = {"model": "tiny", "cluster": "dgx-h100", "schedule": "1f1b", "pp": 2, "num_microbatches": 8,
            "microbatch_size": 4, "layers_per_stage": [5, 5], field: value}
    path = tmp_path / "plan.json"
    path.write_text(json.dumps(plan))
    out = pipeplan("simulate", str(path))
    assert out.returncode == 2, out.stdout + out.stderr
    assert "Traceback" not in out.stderr and len(out.stderr.strip().splitlines()) == 1
    assert f"plan.{field}" in out.stderr


def test_yaml_specs_read_exponent_numbers_as_numbers(tmp_path):
    """PyYAML follows YAML 1.1, where 989e12 and 1.0e9 are text (an exponent needs a dot and a sign);
    spec files are written the way the JSON presets are, so they must read as floats."""
    from pipeplan.cluster import load_cluster

    path = tmp_path / "c.yaml"
    path.write_text("name: c\ngpu: {name: g, peak_flops: 989e12, memory_bytes: 80.0e9, op_overhead_s: 2E-5}\n"
                    "gpus_per_node: 8\nintra: {bandwidth: 450e9, latency: 3e-6}\n"
                    "inter: {bandwidth: 5.0e+10, latency: .5e-5}\nnics_per_node: 8\n")
    cluster = load_cluster(str(path))
    assert (cluster.gpu.peak_flops, cluster.gpu.memory_bytes, cluster.gpu.op_overhead_s) == (989e12, 80e9, 2e-5)
    assert (cluster.intra.bandwidth, cluster.intra.latency, cluster.inter.bandwidth, cluster.inter.latency) == (
        450e9, 3e-6, 5e10, 5e-6)
    out = pipeplan("simulate", "--model", "tiny", "--cluster", str(path), "--json")
    assert out.returncode == 0, out.stderr


def test_version_is_the_packages_version():
    # The version the packaging metadata holds (pyproject reads it from pipeplan.__version__); an installed
    # distribution answers through importlib.metadata, a bare checkout through the source.
    import re

    from importlib import metadata

    out = pipeplan("--version")
    assert out.returncode == 0, out.stderr
    try:
        expected = metadata.version("pipeplan")
    except metadata.PackageNotFoundError:
        expected = re.search(r'__version__ = "([^"]+)"', (REPO / "pipeplan" / "__init__.py").read_text()).group(1)
    assert out.stdout.strip() == f"pipeplan {expected}"
