"""Silently wrong results: what used to exit 0 with a wrong answer now exits 2 in one line, or is right.

Trailing blank lines of a schedule CSV are not devices; a plan flag next to a plan file is refused;
zero or negative counts are refused (0 never means "the default"); numbers outside the documented
ranges are refused so no output holds inf or NaN (the JSON is parsed strictly); a plan that runs
out of memory says so on its report's first line and, with ``--fail-on-oom``, exits 3.
"""
import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from pipeplan.cli import main
from pipeplan.cli.simulate import EXIT_OUT_OF_MEMORY, PLAN_FLAGS

from reliability import REPO, refused_in_one_line as refused, run_here  # tests/ is on sys.path


def run(*args, cwd, env=None):
    return run_here(cwd, *args, env=env)


def strict_json(text: str):
    """Parse JSON that must hold no NaN or Infinity (Python's json would accept both)."""
    def reject(token):
        raise AssertionError(f"non-finite number {token} in the output")

    return json.loads(text, parse_constant=reject)


def _plan_file(tmp_path):
    import pipeplan

    path = tmp_path / "plan.json"
    path.write_text(pipeplan.make_plan("tiny", pp=2, microbatches=4).to_json())
    return path


# --- schedule CSVs ---------------------------------------------------------------------------------

CSV = "0F0,0F1,0B0,0B1\n"  # one device, one stage, two micro-batches


@pytest.mark.parametrize("tail", ["\n", "\n\n\n", ",,,\n\n", "\r\n\r\n"])
def test_trailing_blank_lines_of_a_csv_are_not_devices(tmp_path, tail):
    (tmp_path / "plain.csv").write_text(CSV)
    (tmp_path / "tail.csv").write_text(CSV + tail)
    plain = strict_json(run("simulate", "--model", "tiny", "--schedule-csv", "plain.csv", "--json", cwd=tmp_path).stdout)
    tailed = strict_json(run("simulate", "--model", "tiny", "--schedule-csv", "tail.csv", "--json", cwd=tmp_path).stdout)
    assert tailed["pp"] == plain["pp"] == 1 and len(tailed["busy_time"]) == 1
    assert tailed["iteration_time"] == plain["iteration_time"] and tailed["bubble_fraction"] == 0.0


def test_an_empty_row_between_devices_is_refused(tmp_path):
    (tmp_path / "gap.csv").write_text("0F0,0B0\n\n1F0,1B0\n")
    refused(run("simulate", "--model", "tiny", "--schedule-csv", "gap.csv", cwd=tmp_path), "row 2", "holds no action")


# --- flags next to a plan file -------------------------------------------------------------------

FLAG_VALUES = {"--model": "tiny", "--cluster": "dgx-a100", "--nodes": "2", "--gpus": "2", "--schedule": "zb-h1",
               "--pp": "2", "--tp": "2", "--dp": "2", "--chunks": "2", "--microbatches": "8", "--microbatch-size": "2",
               "--seq-len": "32", "--recompute": "full"}


@pytest.mark.parametrize("flag", PLAN_FLAGS)
def test_every_plan_flag_next_to_a_plan_file_is_refused(tmp_path, flag):
    path = _plan_file(tmp_path)
    args = [flag] + ([FLAG_VALUES[flag]] if flag in FLAG_VALUES else [])
    refused(run("simulate", path.name, *args, cwd=tmp_path), f"{flag}:", "give either a plan file or flags")


def test_short_flags_next_to_a_plan_file_are_named_by_their_long_form(tmp_path):
    path = _plan_file(tmp_path)
    refused(run("simulate", path.name, "-m", "8", cwd=tmp_path), "--microbatches:")
    refused(run("simulate", path.name, "-b", "2", cwd=tmp_path), "--microbatch-size:")


def test_the_plan_file_alone_still_runs(tmp_path):
    path = _plan_file(tmp_path)
    data = strict_json(run("simulate", path.name, "--json", cwd=tmp_path).stdout)
    assert data["pp"] == 2 and data["plan"]["num_microbatches"] == 4 and data["schedule"] == "1f1b"


# --- zero and negative counts ----------------------------------------------------------------------

ZERO_COUNTS = [
    (["schedule", "1f1b", "-m", "4"], "--devices/-p", "-p"),
    (["schedule", "1f1b", "-p", "4"], "--microbatches/-m", "-m"),
    (["schedule", "interleaved", "-p", "4", "-m", "8"], "--chunks/-v", "--chunks"),
    (["schedule", "1f1b", "-p", "4", "-m", "8"], "--iterations", "--iterations"),
    (["schedule", "search", "-p", "2", "-m", "2"], "--memory-limit", "--memory-limit"),
    (["schedule", "search", "-p", "2", "-m", "2"], "--workers", "--workers"),
    (["simulate", "--model", "tiny"], "--pp", "--pp"),
    (["simulate", "--model", "tiny"], "--microbatches/-m", "-m"),
    (["simulate", "--model", "tiny", "--schedule", "interleaved"], "--chunks", "--chunks"),
    (["simulate", "--model", "tiny"], "--nodes", "--nodes"),
    (["simulate", "--model", "tiny"], "--gpus", "--gpus"),
    (["simulate", "--model", "tiny"], "--tp", "--tp"),
    (["simulate", "--model", "tiny"], "--dp", "--dp"),
    (["simulate", "--model", "tiny"], "--microbatch-size/-b", "-b"),
    (["simulate", "--model", "tiny"], "--seq-len", "--seq-len"),
    (["simulate", "--model", "tiny"], "--iterations", "--iterations"),
    (["optimize", "--model", "tiny", "--global-batch", "8"], "--pp", "--pp"),
    (["optimize", "--model", "tiny", "--global-batch", "8"], "--dp", "--dp"),
    (["optimize", "--model", "tiny", "--global-batch", "8"], "--tp", "--tp"),
    (["optimize", "--model", "tiny", "--global-batch", "8"], "--nodes", "--nodes"),
    (["optimize", "--model", "tiny", "--global-batch", "8"], "--gpus", "--gpus"),
    (["optimize", "--model", "tiny", "--global-batch", "8"], "--jobs", "--jobs"),
    (["optimize", "--model", "tiny", "--global-batch", "8"], "--layouts", "--layouts"),
    (["optimize", "--model", "tiny", "--global-batch", "8"], "--seq-len", "--seq-len"),
    (["optimize", "--model", "tiny", "--global-batch", "8"], "--microbatch-sizes", "--microbatch-sizes"),
    (["optimize", "--model", "tiny"], "--global-batch", "--global-batch"),
]


@pytest.mark.parametrize("value", ["0", "-3"])
@pytest.mark.parametrize("base, named, flag", ZERO_COUNTS, ids=[" ".join(c[0][:2]) + " " + c[2] for c in ZERO_COUNTS])
def test_a_count_of_zero_or_less_is_refused_naming_the_flag(tmp_path, base, named, flag, value):
    refused(run(*base, flag, value, cwd=tmp_path), f"argument {named}", f"'{value}'")


def test_make_plan_refuses_zero_rather_than_defaulting():
    import pipeplan

    for field in ("chunks", "microbatches", "pp"):
        with pytest.raises(pipeplan.SpecError, match=f"--{field}"):
            pipeplan.make_plan("tiny", **{field: 0})


# --- extreme numbers: refused, or finite results -------------------------------------------------

@pytest.mark.parametrize("flag, value", [("--f", "1e308"), ("--b", "1e-300"), ("--w", "inf"), ("--comm", "nan"),
                                         ("--overlap", "1e308"), ("--f", "-1")])
def test_synthetic_times_outside_their_range_are_refused(tmp_path, flag, value):
    name = "dualpipe-v" if flag == "--overlap" else "1f1b"
    refused(run("schedule", name, "-p", "4", "-m", "8", flag, value, cwd=tmp_path), f"argument {flag}", "1e-09 .. 1e+09")


@pytest.mark.parametrize("argv", [
    ["schedule", "search", "-p", "2", "-m", "2", "--time-limit", "inf"],
    ["schedule", "search", "-p", "2", "-m", "2", "--time-limit", "1e308"],
    ["optimize", "--model", "tiny", "--global-batch", "4", "--time-limit", "inf"],
    ["optimize", "--model", "tiny", "--global-batch", "4", "--solver-time-limit", "inf"],
    ["optimize", "--model", "tiny", "--global-batch", "4", "--time-limit", "604801"],
], ids=["search-inf", "search-1e308", "optimize-inf", "solver-inf", "optimize-week-and-a-second"])
def test_a_time_limit_past_a_week_or_infinite_is_refused(tmp_path, argv):
    flag = argv[-2]
    refused(run(*argv, cwd=tmp_path), f"argument {flag}", "(0, 604800]")


def test_the_planner_api_refuses_an_infinite_time_limit():
    from pipeplan.errors import SpecError
    from pipeplan.planner.optimize import optimize

    with pytest.raises(SpecError, match=r"time_limit: must be in \(0, 604800\]"):
        optimize("tiny", "dgx-h100", global_batch=4, time_limit=float("inf"))


def _timeline_file(tmp_path, edit) -> Path:
    from test_reliability_tracebacks import damaged_timeline  # tests/ is on sys.path

    path = tmp_path / "t.json"
    path.write_bytes(damaged_timeline(edit))
    return path


@pytest.mark.parametrize("value", [1e308, -1e19])
def test_a_saved_time_past_1e18_is_refused_not_drawn(tmp_path, value):
    # 1e308 passed the finite check and drew a chart with matplotlib's overflow warnings, exit 0
    path = _timeline_file(tmp_path, lambda t: t["ops"][3].__setitem__(3 if value > 0 else 2, value))
    refused(run("gantt", path.name, "-o", "g.png", cwd=tmp_path), "input.timeline.ops[3]", "-1e+18 .. 1e+18")


def test_a_saved_time_of_1e18_still_draws(tmp_path):
    path = _timeline_file(tmp_path, lambda t: t["ops"][3].__setitem__(3, 1e18))
    before = path.read_bytes()
    out = subprocess.run([sys.executable, "-m", "pipeplan", "gantt", path.name, "-o", "g.png"], capture_output=True,
                         text=True, cwd=tmp_path, timeout=60, env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"})
    assert out.returncode == 0 and out.stderr == "", out.stderr
    assert (tmp_path / "g.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and path.read_bytes() == before


def test_a_saved_timeline_without_ops_is_refused(tmp_path):
    path = _timeline_file(tmp_path, lambda t: t.update(ops=[], transfers=[]))
    refused(run("gantt", path.name, "-o", "g.png", cwd=tmp_path), "input.timeline.ops", "holds no op")


def test_synthetic_times_at_the_ends_of_their_range_give_finite_results(tmp_path):
    # F at the top, I at the bottom, W zero, the hop at the top: every figure finite, the iteration
    # no shorter than the m forwards device 0 runs back to back (8 x 1e9)
    out = run("schedule", "zb-h1", "-p", "4", "-m", "8", "--f", "1e9", "--b", "1e-9", "--w", "0", "--comm", "1e9",
              "--json", cwd=tmp_path)
    data = strict_json(out.stdout)
    assert out.returncode == 0 and data["iteration_time"] >= 8e9 and 0 <= data["bubble_fraction"] < 1


def _cluster(tmp_path, **overrides):
    spec = {"base": "dgx-h100", **overrides}
    (tmp_path / "c.json").write_text(json.dumps(spec))
    return "c.json"


@pytest.mark.parametrize("overrides, field", [
    ({"gpu": {"peak_flops": 1e-300}}, "cluster.gpu.peak_flops"),
    ({"gpu": {"memory_bytes": 1e308}}, "cluster.gpu.memory_bytes"),
    ({"gpu": {"hbm_bandwidth": 1e308}}, "cluster.gpu.hbm_bandwidth"),
    ({"gpu": {"max_fraction": 1e-300}}, "cluster.gpu.max_fraction"),
    ({"gpu": {"op_overhead_s": 1e300}}, "cluster.gpu.op_overhead_s"),
    ({"inter": {"bandwidth": 1e308}}, "cluster.inter.bandwidth"),
    ({"intra": {"latency": 1e-300}}, "cluster.intra.latency"),
    ({"gpus_per_node": 10**9}, "cluster.gpus_per_node"),
])
def test_cluster_fields_outside_their_range_are_refused(tmp_path, overrides, field):
    refused(run("simulate", "--model", "tiny", "--cluster", _cluster(tmp_path, **overrides), cwd=tmp_path), field)


@pytest.mark.parametrize("field, value", [("hidden", 2**40), ("vocab", 10**12), ("seq_len", 10**12),
                                          ("ffn_hidden", 2**40)])
def test_model_fields_outside_their_range_are_refused(tmp_path, field, value):
    spec = {"name": "big", "num_layers": 2, "hidden": 64, "heads": 4, "ffn_hidden": 256, "vocab": 512, "seq_len": 64,
            field: value}
    (tmp_path / "m.json").write_text(json.dumps(spec))
    refused(run("simulate", "--model", "m.json", "--pp", "2", cwd=tmp_path), f"model.{field}")


def test_a_plan_sequence_length_outside_its_range_is_refused(tmp_path):
    path = _plan_file(tmp_path)
    plan = json.loads(path.read_text())
    path.write_text(json.dumps({**plan, "seq_len": 10**12}))
    refused(run("simulate", path.name, cwd=tmp_path), "plan.seq_len")


def test_the_corners_of_the_ranges_give_finite_results(tmp_path):
    # the largest model shapes on the slowest GPU and links the ranges allow: every figure finite
    spec = {"name": "corner", "num_layers": 1, "hidden": 2**20, "heads": 2**10, "ffn_hidden": 2**22, "vocab": 2**24,
            "seq_len": 2**24}
    (tmp_path / "m.json").write_text(json.dumps(spec))
    slow = {"gpu": {"peak_flops": 1e6, "hbm_bandwidth": 1e3, "memory_bytes": 1e3, "max_fraction": 1e-3},
            "intra": {"bandwidth": 1e3, "latency": 100.0}, "inter": {"bandwidth": 1e3, "latency": 100.0}}
    out = run("simulate", "--model", "m.json", "--cluster", _cluster(tmp_path, **slow), "--pp", "2", "-m", "2",
              "--json", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    data = strict_json(out.stdout)
    assert data["fits"] is False and 0 < data["iteration_time"] < 1e300 and data["mfu"] > 0


# --- out of memory ---------------------------------------------------------------------------------

OOM = ["simulate", "--model", "llama3-70b", "--pp", "2", "-m", "4"]  # 80 blocks on two 80 GB GPUs


def test_an_out_of_memory_plan_says_so_on_its_first_line(tmp_path):
    data = strict_json(run(*OOM, "--json", cwd=tmp_path).stdout)
    over = [d for d, oom in enumerate(data["out_of_memory"]) if oom]
    assert over == [0, 1] and data["fits"] is False
    out = run(*OOM, cwd=tmp_path)
    assert out.returncode == 0 and out.stderr == ""
    first = out.stdout.splitlines()[0]
    from pipeplan.cli.output import fmt_bytes

    excess = [fmt_bytes(data["peak_memory"][d] - data["capacity"][d]) for d in over]
    assert first.startswith("OUT OF MEMORY on 2 of 2 devices: ")
    assert f"device 0 by {excess[0]}" in first and f"device 1 by {excess[1]}" in first and "of 80.00 GB" in first


def test_fail_on_oom_exits_3_and_says_so_on_stderr(tmp_path):
    assert EXIT_OUT_OF_MEMORY == 3
    out = run(*OOM, "--fail-on-oom", cwd=tmp_path)
    assert out.returncode == 3 and out.stdout.startswith("OUT OF MEMORY on 2 of 2 devices")
    assert len(out.stderr.splitlines()) == 1 and "OUT OF MEMORY" in out.stderr and "Traceback" not in out.stderr
    as_json = run(*OOM, "--fail-on-oom", "--json", cwd=tmp_path)
    assert as_json.returncode == 3 and strict_json(as_json.stdout)["fits"] is False
    assert as_json.stderr.startswith("pipeplan simulate: OUT OF MEMORY on 2 of 2 devices")


def test_a_plan_that_fits_exits_0_with_fail_on_oom(tmp_path):
    out = run("simulate", "--model", "tiny", "--pp", "2", "-m", "4", "--fail-on-oom", cwd=tmp_path)
    assert out.returncode == 0 and out.stderr == "" and out.stdout.startswith("tiny on dgx-h100: 1f1b p=2")


# --- property: random CSVs give a valid result or one line -----------------------------------------

cell = st.one_of(
    st.builds(lambda s, k, m: f"{s}{k}{m}", st.integers(0, 3), st.sampled_from("FBIW"), st.integers(0, 3)),
    st.builds(lambda s, k, m: f"{s}{k}{m}", st.integers(0, 10**12), st.sampled_from("FBIWX"), st.integers(0, 10**12)),
    st.sampled_from(["", " ", "0REDUCE_GRAD", "(0F0;1B0)OVERLAP_F_B", "F", "0F", "1e3F0", '"0F0', "\x00"]),
)


@st.composite
def csv_text(draw):
    """A generated schedule's CSV, then maybe damaged: blank lines, an empty row, one cell replaced, or noise."""
    from simulator import build_schedule, to_csv

    name = draw(st.sampled_from(["gpipe", "1f1b", "zb-h1"]))
    rows = to_csv(build_schedule(name, draw(st.integers(1, 3)), draw(st.integers(1, 4)))).splitlines()
    damage = draw(st.sampled_from(["none", "trailing", "empty row", "cell", "noise"]))
    if damage == "trailing":
        rows += [""] * draw(st.integers(1, 3))
    elif damage == "empty row":
        rows.insert(draw(st.integers(0, len(rows))), "")
    elif damage == "cell":
        r = draw(st.integers(0, len(rows) - 1))
        cells = rows[r].split(",")
        cells[draw(st.integers(0, len(cells) - 1))] = draw(cell)
        rows[r] = ",".join(cells)
    elif damage == "noise":
        return draw(st.text(max_size=40))
    return "\n".join(rows) + "\n"


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(text=csv_text())
def test_random_csvs_give_a_result_or_one_line(tmp_path, capsys, text):
    path = tmp_path / "s.csv"
    path.write_text(text)
    code = main(["simulate", "--model", "tiny", "--schedule-csv", str(path), "--json"])
    out, err = capsys.readouterr()
    event(f"exit {code}")
    assert code in (0, 2)
    if code == 0:
        data = strict_json(out)
        assert err == "" and data["pp"] >= 1 and math.isfinite(data["iteration_time"])
    else:
        assert out == "" and len(err.splitlines()) == 1 and err.startswith("pipeplan simulate: error: ")


# --- property: random plans and clusters with extreme numbers give a finite result or one line -------

EXTREME = [0, -1, 10**20, 1e20, 2.5, 1e308, -1e308, 1e-300, float("nan"), float("inf"), "4", None, True]
SOUND = {"pp": [1, 2, 4], "num_microbatches": [1, 2, 5, 8], "chunks": [1, 2], "microbatch_size": [1, 2],
         "seq_len": [None, 16, 64], "peak_flops": [1e6, 989e12, 1e20], "memory_bytes": [1e3, 80e9, 1e18],
         "bandwidth": [1e3, 50e9, 1e16], "latency": [0.0, 1e-12, 5e-6, 100.0]}
CLUSTER_SECTION = {"peak_flops": "gpu", "memory_bytes": "gpu", "bandwidth": "inter", "latency": "intra"}


@st.composite
def plan_and_cluster(draw):
    """Sound values in every field (the ranges' ends included), then none, one or two fields made extreme."""
    values = {field: draw(st.sampled_from(choices)) for field, choices in SOUND.items()}
    for field in draw(st.one_of(st.just([]), st.lists(st.sampled_from(list(SOUND)), min_size=1, max_size=2))):
        values[field] = draw(st.sampled_from(EXTREME))
    return values


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(values=plan_and_cluster())
def test_random_plans_and_clusters_give_a_finite_result_or_one_line(tmp_path, capsys, values):
    cluster = {"base": "dgx-h100", "gpu": {}, "inter": {}, "intra": {}}
    for field, section in CLUSTER_SECTION.items():
        cluster[section][field] = values[field]
    (tmp_path / "c.json").write_text(json.dumps(cluster))
    pp, chunks = values["pp"], values["chunks"]
    stages = pp * chunks if all(type(x) is int and 0 < x < 10 for x in (pp, chunks)) else 2
    layers = [10 // stages + (1 if k < 10 % stages else 0) for k in range(stages)] if stages <= 10 else [5, 5]
    plan = {"model": "tiny", "cluster": "c.json", "schedule": "interleaved" if chunks != 1 else "1f1b",
            "layers_per_stage": layers, **{f: values[f] for f in ("pp", "num_microbatches", "chunks",
                                                                    "microbatch_size", "seq_len")}}
    (tmp_path / "plan.json").write_text(json.dumps(plan))
    code = main(["simulate", str(tmp_path / "plan.json"), "--json"])
    out, err = capsys.readouterr()
    event(f"exit {code}")
    assert code in (0, 2)
    if code == 0:
        data = strict_json(out)
        assert math.isfinite(data["iteration_time"]) and data["iteration_time"] > 0
    else:
        assert out == "" and len(err.splitlines()) == 1 and err.startswith("pipeplan simulate: error: ")
