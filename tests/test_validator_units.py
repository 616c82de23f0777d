"""The validator's parts without launching ranks: split backward, transfers, profile, scaling, CLI errors."""
import json
import subprocess
import sys
from pathlib import Path

import pytest

from pipeplan import simulate
from pipeplan.errors import SpecError
from pipeplan import lower
from pipeplan.cluster import load_cluster
from pipeplan.costs import rerun_share, stage_work
from pipeplan.model import MODEL_PRESETS, load_model
from pipeplan.plan import Plan
from pipeplan.profile import LinkProfile, Profile, StageProfile
from pipeplan.scaling import scale_model, scale_plan
from simulator.schedules import build_schedule

from inprocess import run_pipeplan  # tests/ is on sys.path

REPO = Path(__file__).resolve().parents[1]
PLANS = REPO / "validation" / "plans"


def test_input_then_weight_gradient_equals_full_backward():
    """I followed by W must give exactly B's gradients (same math, different order)."""
    torch = pytest.importorskip("torch")
    from validator.compute import StageRunner

    torch.set_num_threads(1)
    model = MODEL_PRESETS["tiny"]
    x = torch.randn(2, 16, model.hidden)
    g = torch.randn(2, 16, model.hidden)
    grads = []
    for split in (False, True):
        runner = StageRunner(model, 1, range(2, 5), 2, 16, 4, torch.device("cpu"), torch.float64, seed=3)
        runner.forward(0, x.clone().double())
        dx = runner.backward(0, g.double(), split=split)
        if split:
            # I deferred these weights' gradients: their slots in the stage's gradient buffer are still zero.
            assert not any(p.grad.any() for n, p in runner.module.named_parameters() if n.endswith(("q.weight", "down.weight")))
            runner.weight(0)
        grads.append((dx, {n: p.grad.clone() for n, p in runner.module.named_parameters()}))
    (dx_b, g_b), (dx_i, g_i) = grads
    assert torch.allclose(dx_b, dx_i)
    assert g_b.keys() == g_i.keys() and len(g_b) > 10
    for name in g_b:
        assert torch.allclose(g_b[name], g_i[name], rtol=1e-10, atol=1e-12), name


@pytest.mark.parametrize("stage,layers", [(0, range(0, 3)), (1, range(2, 5)), (2, range(8, 10))])
@pytest.mark.parametrize("split", [False, True])
def test_recomputation_gives_the_same_gradients(stage, layers, split, monkeypatch):
    """Full recomputation (each block's forward without a graph in F, again inside B or I) changes
    what is kept and when it is computed, never the math: input and weight gradients equal the
    stored-graph run's, for the first (embedding), a middle and the last (head + loss) stage, B and
    I + W alike. B or I re-runs the blocks' matmuls and nothing else (hand count: tiny's blocks have
    6 matmuls, q k v o up down; the LM head's is not re-run, as in Megatron-LM)."""
    torch = pytest.importorskip("torch")
    from validator import modules
    from validator.compute import StageRunner

    torch.set_num_threads(1)
    calls = []
    plain_forward = modules.SplitLinear.forward
    monkeypatch.setattr(modules.SplitLinear, "forward", lambda self, x: calls.append(self) or plain_forward(self, x))
    model = MODEL_PRESETS["tiny"]
    runners = [StageRunner(model, stage, layers, 2, 16, 4, torch.device("cpu"), torch.float64, seed=3,
                           recompute=recompute) for recompute in (False, True)]
    first, last = runners[0].first, runners[0].last
    blocks = sum(model.layer_kind(i) == "block" for i in layers)
    x = None if first else torch.randn(2, 16, model.hidden, dtype=torch.float64)
    g = None if last else torch.randn(2, 16, model.hidden, dtype=torch.float64)
    results = []
    for runner in runners:
        calls.clear()
        outs = [runner.forward(mb, None if first else x.clone()) for mb in range(2)]
        assert len(calls) == 2 * (6 * blocks + int(last))
        calls.clear()
        dxs = [runner.backward(mb, g, split=split) for mb in range(2)]
        assert len(calls) == (2 * 6 * blocks if runner.recompute else 0)
        assert not any(isinstance(c, modules.SplitLinear) and c is getattr(layer, "lm_head", None)
                       for c in calls for layer in runner.module.layers)
        if split:
            for mb in range(2):
                runner.weight(mb)
        grads = {n: p.grad.clone() for n, p in runner.module.named_parameters()}
        results.append((outs, dxs, grads, [float(loss) for loss in runner.losses]))
    (outs_a, dx_a, g_a, loss_a), (outs_b, dx_b, g_b, loss_b) = results
    for a, b in zip(outs_a, outs_b):
        assert (a is None) == (b is None) and (a is None or torch.allclose(a, b))
    for a, b in zip(dx_a, dx_b):
        assert (a is None) == first and (a is None or torch.allclose(a, b, rtol=1e-10, atol=1e-12))
    assert g_a.keys() == g_b.keys() and len(g_a) > 3
    for name in g_a:
        assert torch.allclose(g_a[name], g_b[name], rtol=1e-10, atol=1e-12), name
    assert loss_a == pytest.approx(loss_b, rel=1e-12) and len(loss_a) == (2 if last else 0)
    assert not runners[1].inputs and not runners[1].outputs  # B / I took what F kept


def test_transfers_follow_the_dependency_rules_in_sender_order():
    pytest.importorskip("torch")
    from validator.runtime import plan_transfers

    channels = plan_transfers(build_schedule("1f1b", 2, 4))
    assert sorted(channels) == [(0, 1), (1, 0)]
    assert [str(t.producer) for t in channels[(0, 1)]] == ["0F0", "0F1", "0F2", "0F3"]
    assert [str(t.consumer) for t in channels[(1, 0)]] == ["0B0", "0B1", "0B2", "0B3"]
    assert [t.tag for t in channels[(1, 0)]] == [0, 1, 2, 3]
    # ZB-V keeps stages p-1 and p on the last device: that hand-off is local, not a transfer.
    zbv = plan_transfers(build_schedule("zb-v", 2, 4))
    assert all(t.producer.stage != 1 or t.consumer.stage != 2 for ts in zbv.values() for t in ts)


def _profile(plan: Plan, forward=1e-3, link_latency=1e-4) -> Profile:
    stages = tuple(StageProfile(forward, 2 * forward, 1.5 * forward, 0.5 * forward, 4096.0 if s == 0 else 0.0,
                                4096.0 if s == 1 else 0.0) for s in range(plan.num_stages))
    return Profile("test cpu", "gloo", "tiny", plan.microbatch_size, 64, plan.layers_per_stage, stages,
                   (LinkProfile(0, 1, link_latency, 1e9), LinkProfile(1, 0, link_latency, 1e9)))


def _step(plan: Plan, stage: int) -> float:
    """The stage's optimizer step, which a profile does not measure: Adam's 30 bytes per parameter
    over the HBM bandwidth of validation/cpu.json (20 GB/s)."""
    model = MODEL_PRESETS[plan.model]
    return stage_work(model, plan.stage_layers(stage), plan.microbatch_size, model.seq_len, False).params * 30 / 20e9


def test_profile_replaces_the_cost_model_with_closed_form_times():
    """GPipe, p=2, m=8, t_F=1 ms, t_B=2 ms, transfer c: iteration = (m + p - 1)(t_F + t_B) + 2c
    (device 1 starts c late, device 0's last backward waits c for its gradient), then device 0's
    optimizer step."""
    plan = Plan.load(str(PLANS / "tiny-gpipe-p2.json"))
    profile = _profile(plan)
    result = simulate(plan=plan, base_dir=PLANS, profile=profile)
    c = 1e-4 + 4096 / 1e9
    assert result.iteration_time == pytest.approx(9 * 3e-3 + 2 * c + _step(plan, 0), rel=1e-9)
    again = Profile.from_dict(json.loads(json.dumps(profile.to_dict())))
    assert again == profile
    assert simulate(plan=plan, base_dir=PLANS, profile=again.to_dict()).iteration_time == result.iteration_time


def test_profile_for_another_cut_is_refused_naming_the_field():
    plan = Plan.load(str(PLANS / "tiny-1f1b-p2.json"))
    with pytest.raises(SpecError, match="profile.layers_per_stage"):
        simulate(plan=plan.with_(layers_per_stage=(4, 6)), base_dir=PLANS, profile=_profile(plan))
    with pytest.raises(SpecError, match="profile.microbatch_size"):
        simulate(plan=plan.with_(microbatch_size=2), base_dir=PLANS, profile=_profile(plan))


def test_a_profile_measured_with_recomputation_is_not_charged_the_forward_twice():
    """A stage measured recomputing holds the extra forward of its blocks already; one measured
    without gets it added; the same profile priced without recomputation has it taken off. Stage 0
    holds the embedding, which is not re-run: the blocks' share of its forward is the cost model's."""
    plan = Plan.load(str(PLANS / "tiny-1f1b-recompute-p2.json"))
    plain = _profile(plan)
    forward = plain.stages[0].forward
    measured = Profile.from_dict({**plain.to_dict(), "stages": [
        {**vars(plain.stages[0]), "backward": 3 * forward, "backward_input": 2.5 * forward, "recompute": True},
        vars(plain.stages[1])]})
    assert measured.stages[0].recompute and not measured.stages[1].recompute
    assert Profile.from_dict(json.loads(json.dumps(measured.to_dict()))) == measured
    with pytest.raises(SpecError, match="profile.stages.recompute"):
        StageProfile(1.0, 2.0, 1.5, 0.5, recompute="yes")
    without = plan.with_(recompute=("none", "none"))
    model, cluster = load_model(plan.model), load_cluster(str(PLANS / plan.cluster))
    work = stage_work(model, plan.stage_layers(0), plan.microbatch_size, plan.seq_len or model.seq_len, "full")
    share = rerun_share(work, cluster.gpu, cluster.intra)
    assert 0.5 < share < 1  # the blocks' forward, not the embedding's
    for profile, offset in ((measured, 1.0), (plain, share)):
        workload, _ = lower(plan.model, plan.cluster, plan, PLANS, profile)
        assert workload.stages[0].full_backward == pytest.approx((2 + offset) * forward)
        assert workload.stages[0].backward_input == pytest.approx((1.5 + offset) * forward)
        assert workload.stages[1].full_backward == pytest.approx(2 * forward)
        workload, _ = lower(plan.model, plan.cluster, without, PLANS, profile)
        assert workload.stages[0].full_backward == pytest.approx((2 + offset - share) * forward)
        assert workload.stages[0].backward_input == pytest.approx((1.5 + offset - share) * forward)


def test_scale_keeps_cuts_and_schedule_and_shrinks_shapes():
    model = MODEL_PRESETS["llama3-8b"]
    plan = Plan("llama3-8b", "dgx-h100", "1f1b", 4, 8, 2, (9, 8, 8, 9))
    small = scale_plan(plan, model, 0.125)
    scaled = scale_model(model, 0.125)
    assert small.layers_per_stage == plan.layers_per_stage and small.schedule == "1f1b"
    assert scaled.hidden == 512 and scaled.hidden % scaled.heads == 0 and scaled.num_layers == 32
    assert small.seq_len == 1024 and small.microbatch_size == 1
    assert simulate(plan=small).iteration_time < simulate(plan=plan).iteration_time


def _pipeplan(*args, cwd=REPO):
    """``pipeplan ARGS`` run in this process as its subprocess runs (``inprocess``; test_validate_live runs the
    real ``validate`` and ``compare``)."""
    return run_pipeplan(*args, cwd=cwd, timeout=60)


@pytest.mark.parametrize("args,field", [
    (["validate", "missing.json"], "plan"),
    (["validate", str(PLANS / "tiny-1f1b-p2.json"), "--scale", "2"], "--scale"),
    (["validate", str(PLANS / "tiny-1f1b-p2.json"), "--backend", "nccl"], "--backend"),
    (["validate", str(PLANS / "tiny-1f1b-p2.json"), "--gantt", "x.bmp"], "output"),
    (["compare", str(PLANS / "tiny-1f1b-p2.json")], "report"),
    (["simulate", str(PLANS / "tiny-1f1b-p2.json"), "--profile", str(PLANS / "tiny-gpipe-p2.json")], "profile"),
])
def test_bad_validate_input_is_one_line_exit_2(args, field):
    out = _pipeplan(*args)
    assert out.returncode == 2, out.stderr
    assert "Traceback" not in out.stderr and len(out.stderr.strip().splitlines()) == 1
    assert field in out.stderr


def test_simulate_accepts_a_profile_file(tmp_path):
    plan = Plan.load(str(PLANS / "tiny-gpipe-p2.json"))
    path = tmp_path / "profile.json"
    _profile(plan).save(str(path))
    out = _pipeplan("simulate", str(PLANS / "tiny-gpipe-p2.json"), "--profile", str(path), "--json")
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["iteration_time"] == pytest.approx(9 * 3e-3 + 2 * (1e-4 + 4096 / 1e9)
                                                                     + _step(plan, 0))


def test_single_layer_timings_price_another_cut():
    """With per-layer timings a profile prices any cut: stage time = sum of its layers' times."""
    plan = Plan.load(str(PLANS / "tiny-gpipe-p2.json"))
    one = lambda t: StageProfile(t, 2 * t, 1.5 * t, 0.5 * t)  # noqa: E731
    profile = Profile("test cpu", "gloo", "tiny", 4, 64, (5, 5), _profile(plan).stages,
                      layers={"embedding": one(0.0), "block": one(1e-3), "head": one(2e-3)}, boundary_bytes=0.0)
    other = plan.with_(layers_per_stage=(3, 7))  # embedding + 2 blocks | 6 blocks + head
    result = simulate(plan=other, base_dir=PLANS, profile=Profile.from_dict(profile.to_dict()))
    t_f, t_b = (2e-3, 8e-3), (4e-3, 16e-3)  # per stage: forward, full backward
    # GPipe, p=2, m=8, the second stage the slower one: device 1 starts after one stage-0 forward
    # and never waits again; the two exposed transfers keep the cluster file's 50 us latency, as
    # this profile measured no links. Device 0 ends last, with its optimizer step.
    expected = t_f[0] + 8 * (t_f[1] + t_b[1]) + t_b[0] + 2 * 50e-6 + _step(other, 0)
    assert result.iteration_time == pytest.approx(expected, rel=1e-9)


@pytest.mark.parametrize("option,value", [("--threads", "0"), ("--threads", "-3")])
def test_bad_thread_count_is_refused_before_any_rank_starts(option, value):
    out = _pipeplan("validate", str(PLANS / "tiny-1f1b-p2.json"), option, value, "--timeout", "20")
    assert out.returncode == 2, out.stderr
    assert "Traceback" not in out.stderr and len(out.stderr.strip().splitlines()) == 1
    assert "--threads" in out.stderr and "failed" not in out.stderr


def test_plan_whose_cluster_file_is_missing_is_refused_before_any_rank_starts(tmp_path):
    plan = json.loads((PLANS / "tiny-1f1b-p2.json").read_text())
    plan["cluster"] = "no-such-cluster.json"
    path = tmp_path / "plan.json"
    path.write_text(json.dumps(plan))
    out = _pipeplan("validate", str(path), "--timeout", "20")
    assert out.returncode == 2, out.stderr
    assert "Traceback" not in out.stderr and len(out.stderr.strip().splitlines()) == 1
    assert "cluster" in out.stderr and "no-such-cluster.json" in out.stderr and "failed" not in out.stderr


@pytest.mark.parametrize("field,value", [
    ("links", [{"src": 0, "dst": 1, "latency": "abc", "bandwidth": 1e9}]),
    ("links", [{"src": "a", "dst": 1, "latency": 1e-4, "bandwidth": 1e9}]),
    ("microbatch_size", "x"),
    ("microbatch_size", -4),
    ("layers", [1, 2]),
    ("stages", 5),
])
def test_profile_field_of_the_wrong_type_is_one_line_exit_2(tmp_path, field, value):
    profile = json.loads((REPO / "validation/records/cpu-gloo-tiny-1f1b-p2.json").read_text())["profile"]
    profile[field] = value
    path = tmp_path / "profile.json"
    path.write_text(json.dumps(profile))
    out = _pipeplan("simulate", str(PLANS / "tiny-1f1b-p2.json"), "--profile", str(path))
    assert out.returncode == 2, out.stderr
    assert "Traceback" not in out.stderr and len(out.stderr.strip().splitlines()) == 1
    assert f"profile.{field}" in out.stderr


@pytest.mark.parametrize("damage", ["drop run", "measured 5", "drop errors"])
def test_compare_on_a_damaged_report_is_one_line_exit_2(tmp_path, damage):
    report = json.loads((REPO / "validation/records/cpu-gloo-tiny-1f1b-p2.json").read_text())
    if damage == "measured 5":
        report["measured"] = 5
    else:
        report.pop(damage.split()[1])
    path = tmp_path / "report.json"
    path.write_text(json.dumps(report))
    out = _pipeplan("compare", str(path))
    assert out.returncode == 2, out.stderr
    assert "Traceback" not in out.stderr and len(out.stderr.strip().splitlines()) == 1
    assert "report" in out.stderr


def test_launcher_gives_up_on_a_process_it_cannot_see_that_holds_its_output(tmp_path, monkeypatch):
    """A rank still starting (no pid note yet, its own session) when the timeout fires keeps the output
    pipe open after torchrun is killed; the launcher must not wait on that pipe without a limit."""
    pytest.importorskip("torch")  # the launcher refuses to start anything without it
    import os
    import signal
    import time

    from pipeplan.validation import ValidateOptions, ValidationFailed, launch

    orphan = tmp_path / "orphan.pid"
    fake = ["bash", "-c", f"setsid sleep 30 & echo $! > {orphan}; exec sleep 60"]
    monkeypatch.setattr(launch, "validator_command", lambda *args: fake)
    monkeypatch.setattr(launch, "PIPE_GRACE_S", 2.0)
    started = time.monotonic()
    try:
        with pytest.raises(ValidationFailed, match="timed out"):
            launch.run_validation(str(PLANS / "tiny-1f1b-p2.json"), ValidateOptions(timeout=1.0))
        assert time.monotonic() - started < 10
    finally:
        if orphan.exists():
            try:
                os.kill(int(orphan.read_text()), signal.SIGKILL)
            except (ProcessLookupError, ValueError):
                pass


def test_a_rank_arms_its_parent_death_signal_before_importing_torch():
    """Importing torch takes seconds; a rank must ask to die with torchrun (and note its pid) first, or a
    launcher that kills torchrun in that window leaves the rank behind."""
    code = "import sys, validator.__main__; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO,
                         env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"}, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "False"


def test_each_local_rank_gets_its_own_cores():
    pytest.importorskip("torch")
    from validator.run import own_cores

    assert own_cores([3, 1, 0, 2], 0, 2) == [0, 1] and own_cores([3, 1, 0, 2], 1, 2) == [2, 3]
    assert own_cores([0, 1, 2], 1, 2) == [1]  # a core left over stays unused by the ranks
    assert own_cores([0, 1], 1, 3) is None  # fewer cores than ranks: no pinning


def test_options_reach_the_ranks_through_their_argv():
    from dataclasses import replace

    from pipeplan.validation import ValidateOptions

    options = ValidateOptions(iterations=4, warmup=0, timeout=45.0, scale=0.5, calibration_reps=2, threads=3)
    back = ValidateOptions.from_argv(options.to_argv())
    # A rank keeps no whole-run budget: the launcher's one-wait limit arrives as its --timeout.
    assert back.wait_timeout == options.wait_timeout == 15.0
    assert back == replace(options, timeout=back.timeout, wait=15.0)
    assert ValidateOptions.from_argv(back.to_argv()) == back
    assert ValidateOptions.from_argv([]) == ValidateOptions()


@pytest.mark.parametrize("role,timeout,wait", [("launcher", 90.0, 30.0), ("rank", 300.0, 90.0)])
def test_timeout_is_the_whole_run_for_the_launcher_and_one_wait_for_a_rank(role, timeout, wait):
    import argparse

    from pipeplan.validation import ValidateOptions

    parser = argparse.ArgumentParser()
    ValidateOptions.add_arguments(parser, role)
    options = ValidateOptions.from_args(parser.parse_args(["--timeout", "90"]))
    assert (options.timeout, options.wait_timeout) == (timeout, wait)


def test_the_launcher_asks_rank_0_for_measurements_in_its_run_folder(tmp_path):
    from pipeplan.validation import ValidateOptions, validator_command

    options = ValidateOptions(iterations=2, threads=1)
    cmd = validator_command("plan.json", 2, 29500, options, str(tmp_path))
    rank_argv = cmd[cmd.index("validator") + 1:]
    assert rank_argv[0] == "plan.json" and rank_argv[1:1 + len(options.to_argv())] == options.to_argv()
    assert rank_argv[rank_argv.index("--measurements") + 1] == str(tmp_path / "measurements.json")
    assert "--out" not in rank_argv  # the report is built by the launcher, not by a rank


def test_a_record_reads_back_as_measurements_and_rebuilds_its_report(tmp_path):
    from pipeplan.validation import Measurements, build_report

    path = REPO / "validation/records/cpu-gloo-tiny-1f1b-p2.json"
    record = json.loads(path.read_text())
    measurements = Measurements.from_dict(record)
    data = json.loads(json.dumps(measurements.to_dict()))
    for key in ("run", "profile", "measured_iterations", "losses"):
        assert data[key] == record[key], key
    # The record's plan is format version 1; it reads back as the same plan in version 2 (tp = 1).
    assert data["plan"] == {**record["plan"], "format_version": 2, "tp": 1, "sequence_parallel": False,
                            "blocking_p2p": False, "scatter_gather_p2p": False, "overlap_grad_reduce": True}
    measurements.save(tmp_path / "m.json")
    assert Measurements.load(tmp_path / "m.json") == Measurements.from_dict(data)
    with pytest.raises(SpecError, match="measurements"):
        Measurements.load(path)  # a report is not a measurement file
    moved = Measurements.from_dict({**data, "run": {**data["run"], "base_dir": str(REPO / "validation" / "plans")}})
    report = json.loads(json.dumps(build_report(moved)))
    assert set(report) == (set(record) | {"bands"}) - {"tolerance"}  # the record predates bands
    assert report["measured"] == record["measured"]
    assert set(report["errors"]) == {"predicted", "apriori"} and "timeline" in report["predicted"]


def test_a_bad_rank_option_is_a_usage_error_before_any_torch_import():
    out = subprocess.run([sys.executable, "-m", "validator", "plan.json", "--iterations", "0"], capture_output=True,
                         text=True, cwd=REPO, env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"}, timeout=60)
    assert out.returncode == 2 and "--iterations: must be at least 1" in out.stderr
    assert "Traceback" not in out.stderr


def _round(foreign=0.0, steal=0.0, run_wait=(0.0005, 0.0005), run_ops=(0.070, 0.072), calib_wait=(0.0, 0.0),
           calib_ops=(0.068, 0.070)):
    from validator.quiet import Round

    return Round(foreign, steal, tuple(run_wait), (0.08, 0.08), tuple(run_ops), tuple(calib_wait), (0.08, 0.08),
                 tuple(calib_ops))


def test_an_iteration_is_disturbed_by_cores_taken_waits_steal_or_a_speed_change():
    from validator.quiet import judge, summary

    rounds = [_round() for _ in range(4)] + [
        _round(foreign=0.5),                      # the coarse CPU-time counter
        _round(foreign=0.1, run_wait=(0.004, 0)),  # under 0.3 cores, yet rank 0 waited 4 ms of 80 for its core
        _round(calib_wait=(0, 0.003)),            # the same in the calibration replay before the run
        _round(steal=0.01),                       # the hypervisor took a tick
        _round(run_ops=(0.070, 0.080)),           # rank 1's ops 11 % slower than the run's median: hidden
    ]
    reasons = judge(rounds)
    assert reasons[:4] == [None] * 4
    assert [r.split(":")[0] for r in reasons[4:]] == ["cores", "waited", "waited", "speed", "speed"]
    assert "rank 0 waited 4.0 ms" in reasons[5] and "rank 1" in reasons[6] and "calibration" in reasons[6]
    assert "rank 1's ops took +11.1 %" in reasons[8]
    assert summary(reasons).startswith("5 of 9 iterations disturbed: 2 x ")
    assert summary([None, None]) == ""
    # The speed test needs a median of undisturbed rounds to compare with.
    assert judge([_round(run_ops=(0.07, 0.07)), _round(run_ops=(0.09, 0.07))]) == [None, None]


def test_a_run_is_disturbed_with_too_few_passing_rounds_or_more_failing_than_passing():
    from validator.quiet import too_disturbed

    assert too_disturbed(["x"] * 7 + [None] * 5, needed=5)  # the CI run: 5 passed, but 7 of 12 failed
    assert not too_disturbed(["x"] * 5 + [None] * 5, needed=5)  # as many failed as passed
    assert too_disturbed(["x"] * 1 + [None] * 4, needed=5)  # too few passed
    assert not too_disturbed([None] * 5, needed=5)
