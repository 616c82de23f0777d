"""``pipeplan validate --runtime torch``: the plan's schedule executed by torch.distributed.pipelining's
own CSV-driven runtime (``validator.torch_runtime``).

Fast tests check the translation against torch's own lowering passes and the timing rule; the live
tests run 2-rank gloo jobs on the CPU (a few seconds each, more for the first import of torch's
pipelining package) and hold the calibrated prediction to the same targets, with the same
"disturbed machine" skip, as the pipeplan runtime's live tests (their helpers, imported).
"""
import csv
import dataclasses
import io
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytest.importorskip("torch")

import torch  # noqa: E402
from torch.distributed.pipelining.schedules import (  # noqa: E402
    _Action, _add_reduce_grad, _add_send_recv, _add_unshard_reshard, _validate_schedule)

from pipeplan.errors import SpecError  # noqa: E402
from pipeplan.model import ModelSpec  # noqa: E402
from pipeplan.validation import Measurements, ValidateOptions, ValidationFailed, process_alive, run_validation  # noqa: E402
from simulator.ir import Action, to_csv  # noqa: E402
from simulator.schedules import SCHEDULES  # noqa: E402
from validator.modules import StageModule  # noqa: E402
from validator.runtime import FAULT_ENV  # noqa: E402
from validator.torch_runtime import deferred_weight_grads  # noqa: E402
from validator.torch_timing import ops_from_spans  # noqa: E402

from test_validate_live import OPTIONS, attempts, idle, summary, within  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
PLANS = REPO / "validation" / "plans"
TORCH = dataclasses.replace(OPTIONS, runtime="torch")
LIVE = ("1f1b", "interleaved", "zb-v")


def lowered(schedule):
    """torch's own passes on the schedule's compute-only CSV, as ``_PipelineScheduleRuntime._load_csv`` runs them."""
    rows = list(csv.reader(io.StringIO(to_csv(schedule))))
    actions = {rank: [_Action.from_str(cell) for cell in row] for rank, row in enumerate(rows)}
    owner = _validate_schedule(actions, schedule.num_devices, schedule.num_stages, schedule.num_microbatches)
    lowered = {rank: _add_reduce_grad(_add_unshard_reshard(a), schedule.num_microbatches) for rank, a in actions.items()}
    return _add_send_recv(lowered, lambda stage: owner[stage], schedule.num_stages)


# ------------------------------------------------------------------------------------------ fast


@pytest.mark.parametrize("p", [2, 4])
@pytest.mark.parametrize("name", LIVE)
def test_torch_lowering_issues_each_ops_send_before_the_next_op(name, p):
    """The timing rule counts an op's SEND in the op; that needs torch's lowering to put the SEND after
    the op whose output crosses ranks and before the rank's next compute action, on every rank."""
    schedule = SCHEDULES[name].build(p, 8, 2 if name != "1f1b" else None)
    device_of = schedule.stage_to_device
    for rank, actions in lowered(schedule).items():
        texts = [str(a) for a in actions]
        compute = [k for k, a in enumerate(actions) if a.computation_type.value in ("F", "B", "I", "W")]
        crossing = [a for a in actions if a.computation_type.value in ("F", "B", "I")
                    and (a.stage_index + (1 if a.computation_type.value == "F" else -1)) in range(schedule.num_stages)
                    and device_of[a.stage_index + (1 if a.computation_type.value == "F" else -1)] != rank]
        assert crossing, f"{name} p={p} rank {rank} sends nothing"
        for a in crossing:
            send = f"{a.stage_index}SEND_{'F' if a.computation_type.value == 'F' else 'B'}{a.microbatch_index}"
            at = texts.index(str(a))
            following = next((k for k in compute if k > at), len(texts))
            assert send in texts[at + 1:following]


def test_an_op_runs_from_its_action_start_or_its_input_to_the_next_compute_action():
    """Spans as torch's runtime records them on rank 1 of a 3-stage 1F1B (numbers by hand). 1F0's wait for
    its input returned at 5 after waiting for data (``ready``): the op starts there, not at its span's
    start (1); its SEND (10-12) and the receive torch posts next (12-13) are in it, and so is the loop's
    step to the next action (13-14). 1B0 waited for nothing: it starts with its action (14), its
    wait on arrived data and torch's Python before the method (14-16) included. The REDUCE_GRAD after
    the last op is in that op."""
    spans = [("PP:1UNSHARD", 0, 1), ("PP:1F0", 1, 10), ("PP:1SEND_F0", 10, 12), ("PP:1RECV_F1", 12, 13),
             ("PP:1B0", 14, 30), ("PP:1RECV_B1", 30, 31), ("PP:1W0", 31, 37), ("PP:1REDUCE_GRAD", 37, 38)]
    starts = {"1F0": 5.5, "1B0": 16, "1W0": 31.5}
    ops = ops_from_spans(spans, {Action.parse(op): t for op, t in starts.items()}, ready={Action.parse("1F0"): 5})
    assert [(str(op.action), op.start, op.end) for op in ops] == [("1F0", 5, 14), ("1B0", 14, 31), ("1W0", 31, 38)]


def test_an_overlapped_pair_is_timed_as_the_simulator_prices_it():
    """DualPipeV's pair is one torch action; its parts run one after the other, then its SENDs.
    In a run the F part holds the pair's time and the B part none (the simulator's convention); in
    calibration each part keeps its own time, split where the B part's method starts. Numbers by hand."""
    spans = [("PP:(0F3;3B1)OVERLAP_F_B", 2, 20), ("PP:0SEND_F3", 20, 21), ("PP:3RECV_F2", 21, 22), ("PP:0F4", 22, 30)]
    starts = {Action.parse("0F3"): 3, Action.parse("3B1"): 9, Action.parse("0F4"): 23}
    run = [(str(op.action), op.start, op.end) for op in ops_from_spans(spans, starts)]
    assert run == [("0F3", 2, 22), ("3B1", 22, 22), ("0F4", 22, 30)]
    calibration = [(str(op.action), op.start, op.end) for op in ops_from_spans(spans, starts, split_pairs=True)]
    assert calibration == [("0F3", 2, 9), ("3B1", 9, 22), ("0F4", 22, 30)]


def test_torch_lowers_every_schedule_pipeplan_generates():
    """Why ``--runtime torch`` refuses no training schedule: torch's own validation and lowering passes accept
    the compute-only CSV of every registered schedule, DualPipeV's overlapped pairs included. A forward-only
    one it refuses: ``_validate_schedule`` wants one backward per micro-batch (torch's forward-only path is
    ``eval()`` of its built-in schedules), so serving runs cannot go through torch's CSV runtime."""
    accepted = set()
    for name, entry in SCHEDULES.items():
        for p, v in ((2, 1), (2, 2), (4, 1), (4, 2)):
            if entry.accepts(p, 8, v):
                if entry.forward_only:
                    with pytest.raises(AssertionError, match="expected 8 total backwards"):
                        lowered(entry.build(p, 8, v))
                    continue
                lowered(entry.build(p, 8, v))  # raises if torch rejects it
                accepted.add(name)
    assert accepted == {name for name, entry in SCHEDULES.items() if not entry.forward_only}


def test_the_dw_builder_hands_torch_the_modules_deferred_weight_gradients():
    """I with the store deferring, then the builder's runner, leaves the gradients of one plain
    backward (the modules' weight-gradient split, ``validator.modules``)."""
    model = ModelSpec.from_dict({"name": "t", "num_layers": 2, "hidden": 32, "heads": 4, "ffn_hidden": 64,
                                 "vocab": 50, "seq_len": 8})
    torch.manual_seed(0)
    module = StageModule(model, range(1, 3))
    x = torch.randn(2, 8, 32)
    module(x).square().sum().backward()
    reference = {n: p.grad.clone() for n, p in module.named_parameters()}
    module.zero_grad(set_to_none=True)
    store = module.store
    store.defer, store.collecting = True, []
    module(x).square().sum().backward()
    store.defer = False
    runner = deferred_weight_grads(store)()
    assert store.collecting == [] and all(p.grad is None for n, p in module.named_parameters() if "norm" not in n)
    runner()
    for name, p in module.named_parameters():
        assert torch.allclose(p.grad, reference[name], rtol=1e-5, atol=1e-6), name


def test_runtime_option_round_trips_and_bad_combinations_are_one_line():
    assert ValidateOptions.from_argv(TORCH.to_argv()).runtime == "torch"
    with pytest.raises(SpecError, match=r"^--runtime torch: .*gloo moves CPU tensors only"):
        ValidateOptions(runtime="torch", device="cuda")
    with pytest.raises(SpecError, match=r"^--runtime: choose pipeplan or torch"):
        ValidateOptions(runtime="megatron")


def test_reports_say_which_runtime_ran_and_older_records_read_as_pipeplan():
    record = json.loads((REPO / "validation" / "records" / "cpu-gloo-tiny-1f1b-p2.json").read_text())
    assert "runtime" not in record["run"]
    old = Measurements.from_dict(record)
    assert old.runtime == "pipeplan" and "runtime" not in old.to_dict()["run"]
    torch_run = dataclasses.replace(old, runtime="torch")
    assert torch_run.to_dict()["run"]["runtime"] == "torch"
    assert Measurements.from_dict(torch_run.to_dict()).runtime == "torch"


def _cli(*args, cwd=REPO):
    return subprocess.run([sys.executable, "-m", "pipeplan", *args], capture_output=True, text=True, cwd=cwd,
                          env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"}, timeout=120)


DUALPIPE_V = PLANS / "torch" / "tiny-dualpipe-v-p2.json"  # only torch's runtime runs it


@pytest.mark.parametrize("case", ["cuda-gloo", "pipeplan-dualpipe-v"])
def test_cli_refuses_in_one_line_what_a_runtime_cannot_run(case, tmp_path):
    if case == "cuda-gloo":
        args = [str(PLANS / "tiny-1f1b-p2.json"), "--runtime", "torch", "--device", "cuda"]
        expected = "--runtime torch: torch's runtime sends the stages' CUDA tensors"
    else:
        args = [str(DUALPIPE_V)]
        expected = "plan.schedule_csv: the validator runs F, B, I and W actions only; remove the OVERLAP_F_B"
    out = _cli("validate", *args, "--out", str(tmp_path / "report.json"))
    assert out.returncode == 2, out
    assert out.stderr.startswith(f"pipeplan validate: error: {expected}") and out.stderr.count("\n") == 1
    if case != "cuda-gloo":
        assert out.stderr.rstrip().endswith("or validate with --runtime torch")
    assert out.stdout == "" and not (tmp_path / "report.json").exists()


# ------------------------------------------------------------------------------------------ live


@pytest.fixture(scope="module")
def torch_reports():
    """Every report the live tests made, per schedule (the loss test reuses them)."""
    return {}


@pytest.mark.parametrize("schedule", LIVE)
def test_torch_runtime_matches_the_calibrated_prediction(schedule, torch_reports):
    reports, stopped = attempts(PLANS / f"tiny-{schedule}-p2.json", options=TORCH)
    torch_reports[schedule] = reports
    assert all(r["run"]["runtime"] == "torch" for r in reports)
    quiet = [r for r in reports if idle(r)]
    if not quiet:
        pytest.skip(f"{schedule}: this machine was disturbed in every attempt{'; ' + stopped if stopped else ''}: "
                    f"(errors, iterations tried, why left out) {summary(reports)}")
    assert any(within(r) for r in quiet), (
        f"{schedule} on torch's runtime: calibrated errors (errors, iterations tried, why left out): {summary(reports)}")


def test_torch_runtime_trains_exactly_like_pipeplans(torch_reports):
    """ZB-V through torch's runtime (V-shape hand-off on rank 1, I and W split by the dw_builder) gives
    pipeplan's runtime's losses, micro-batch by micro-batch, iteration after iteration (same seed and
    weights, SGD after every iteration), and its report times every op of the schedule."""
    report = (torch_reports.get("zb-v") or [run_validation(str(PLANS / "tiny-zb-v-p2.json"), TORCH)])[0]
    reference = run_validation(str(PLANS / "tiny-zb-v-p2.json"),
                               dataclasses.replace(OPTIONS, iterations=2, warmup=1))
    (losses,), (expected,) = report["losses"], reference["losses"]
    both = min(len(losses), len(expected))
    assert both >= 3 * 8
    assert losses[:both] == pytest.approx(expected[:both], rel=1e-6, abs=1e-7)
    ops = report["measured"]["timeline"]["ops"]
    assert len(ops) == 2 * 2 * 8 * 3  # 2 devices x 2 stages x 8 micro-batches x (F, I, W)
    assert sorted(op[1] for op in ops if op[0] == 1)[:2] == ["1F0", "1F1"]
    assert all(end > start for _, _, start, end in ops)


def test_a_hung_rank_ends_a_torch_run_cleanly(monkeypatch, tmp_path):
    """Rank 1 hangs at its 6th op: torch's runtime waits without a limit, the validator's does not, so
    the run ends naming rank 1, with no report and no process left behind."""
    monkeypatch.setenv(FAULT_ENV, "1:5:hang")
    options = dataclasses.replace(TORCH, iterations=2, warmup=1, timeout=90.0, wait=8.0)
    out = tmp_path / "report.json"
    start = time.monotonic()
    with pytest.raises(ValidationFailed) as failure:
        run_validation(str(PLANS / "tiny-1f1b-p2.json"), options, out=str(out))
    message = str(failure.value)
    assert message.startswith("rank 1 failed: stopped responding (rank 0: "), message
    assert time.monotonic() - start < options.timeout
    assert not out.exists()
    assert len(failure.value.pids) == 3 and not any(process_alive(pid) for pid in failure.value.pids)


@pytest.mark.parametrize("plan,like", [("dualpipe-v", "zb-v"), ("1f1b-recompute", "1f1b")])
def test_torch_runtime_runs_what_pipeplans_cannot_or_does_by_hand_with_the_same_losses(plan, like, torch_reports):
    """DualPipeV (overlapped pairs, which pipeplan's runtime refuses) trains like ZB-V on the same
    cuts and placement, and a plan whose stage 0 recomputes (torch's activation checkpointing) like
    the plan without: same losses, micro-batch by micro-batch."""
    path = DUALPIPE_V if plan == "dualpipe-v" else PLANS / f"tiny-{plan}-p2.json"
    report = run_validation(str(path), dataclasses.replace(TORCH, iterations=2, warmup=1))
    reference = (torch_reports.get(like) or [run_validation(str(PLANS / f"tiny-{like}-p2.json"), TORCH)])[0]
    (losses,), (expected,) = report["losses"], reference["losses"]
    both = min(len(losses), len(expected))
    assert both >= 3 * 8
    assert losses[:both] == pytest.approx(expected[:both], rel=1e-6, abs=1e-7)
    ops = report["measured"]["timeline"]["ops"]
    if plan == "dualpipe-v":  # each pair's B part is recorded in no time at the end of its F part
        pairs = [str(a) for a in SCHEDULES["dualpipe-v"].build(2, 8, 2).overlaps()]
        assert pairs
        ends = {op[1]: op[3] for op in ops}
        for pair in pairs:
            forward, backward = pair[1:pair.index(")")].split(";")
            start, end = next((op[2], op[3]) for op in ops if op[1] == backward)
            assert start == end == ends[forward]
    else:
        assert [s["recompute"] for s in report["profile"]["stages"]] == [True, False]


def test_waits_behind_the_ranks_own_threads_are_not_a_disturbance():
    """torch's runtime keeps a rank's gloo threads busier on its core (3-10 % of a phase on this VM,
    pipeplan's 1-2 %): the compute thread's wait counts only beyond what those threads ran there."""
    from validator.quiet import Round, judge

    def round_(run_wait, run_others):
        return Round(0.0, 0.0, run_wait, (0.08, 0.08), (0.07, 0.07), (0.001, 0.001), (0.08, 0.08), (0.07, 0.07),
                     run_others, (0.001, 0.001))

    reasons = judge([round_((0.006, 0.001), (0.0055, 0.001)), round_((0.006, 0.001), (0.001, 0.001))])
    assert reasons[0] is None  # 6 ms waited, 5.5 of them behind its own threads: 0.5 ms of 80
    assert reasons[1] == "waited: rank 0 waited 6.0 ms for a core in a 80 ms run, its own threads ran 1.0 ms"


def test_gloo_threads_get_a_short_slice_and_the_compute_thread_keeps_its_own():
    """The kernel reports back the slice set on a thread named like gloo's, and the calling thread's
    is unchanged (validator.comm_threads; Linux 6.12+ on x86_64)."""
    import ctypes
    import threading

    from validator.comm_threads import shorten_comm_slices, thread_slice

    libc = ctypes.CDLL(None, use_errno=True)

    def slice_of(tid):
        runtime = thread_slice(tid)
        assert runtime is not None
        return runtime

    ready, stop, tids = threading.Event(), threading.Event(), []

    def gloo_like():
        libc.prctl(15, b"gloo_tcp_loop")  # PR_SET_NAME
        tids.append(threading.get_native_id())
        ready.set()
        stop.wait()

    worker = threading.Thread(target=gloo_like)
    worker.start()
    ready.wait()
    try:
        main_before = slice_of(threading.get_native_id())
        if shorten_comm_slices(123_000) == 0:
            pytest.skip(f"this kernel ({os.uname().release}) or platform has no per-thread slice for ordinary threads")
        assert slice_of(tids[0]) == 123_000
        assert slice_of(threading.get_native_id()) == main_before != 123_000
    finally:
        stop.set()
        worker.join()
