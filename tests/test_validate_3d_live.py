"""Real tensor- and data-parallel runs on the CPU (gloo): the calibrated prediction must match the
measurement within the live tests' tolerances, and the measured timeline must hold the simulator's
end-of-iteration ops. Each run starts torchrun and its ranks (tens of seconds on the 2-core VM).

Skipped, with the validator's own figures, when the machine was disturbed in every attempt, as
``test_validate_live`` does: a tensor-parallel op waits on its peer dozens of times, so another
job's load shows up in it many times over.
"""
import json
import os

import pytest

pytest.importorskip("torch")

from test_validate_live import ATTEMPTS, BUBBLE_POINTS, PLANS, TIME_PCT, attempts, idle, summary, within  # noqa: E402

from pipeplan.plan import Plan  # noqa: E402
from pipeplan.validation import ValidateOptions  # noqa: E402
from simulator.ir import Action  # noqa: E402

OPTIONS = ValidateOptions(iterations=5, warmup=2, timeout=300)
assert (BUBBLE_POINTS, TIME_PCT, ATTEMPTS) == (3.0, 10.0, 3)  # the tolerances this test claims


_RUNS: dict = {}


def _runs(name):
    """The attempts at ``name`` (made once per session: each takes tens of seconds)."""
    if name not in _RUNS:
        _RUNS[name] = attempts(PLANS / name, options=OPTIONS)
    return _RUNS[name]


def _quiet_reports(name):
    reports, stopped = _runs(name)
    for report in reports:
        check_ops(report)
    quiet = [r for r in reports if idle(r)]
    if not quiet:
        pytest.skip(f"{name}: this machine was disturbed in every attempt{'; ' + stopped if stopped else ''}: "
                    f"(errors, iterations tried, why left out) {summary(reports)}")
    return quiet, reports


def check_ops(report):
    """The measured iteration has the plan's compute ops and the simulator's end-of-iteration ops."""
    plan = report["plan"]
    devices, m = plan["pp"], plan["num_microbatches"]
    assert report["run"]["world_size"] == plan.get("tp", 1) * plan["pp"] * plan.get("dp", 1)
    kinds = [Action.parse(op[1]).kind for op in report["measured"]["timeline"]["ops"]]
    assert kinds.count("OPTIMIZER") == devices
    assert kinds.count("REDUCE_GRAD") == (devices if plan.get("dp", 1) > 1 else 0)
    assert kinds.count("F") == kinds.count("B") == m * devices


@pytest.mark.parametrize("name", ["tiny-tp2.json", "tiny-tp2-sp.json", "tiny-dp2.json", "tiny-tp2-pp2.json"])
def test_tensor_and_data_parallel_runs_match_their_calibration(name):
    ranks = Plan.load(str(PLANS / name)).num_gpus
    if len(os.sched_getaffinity(0)) < ranks:
        # More ranks than cores: each rank's thread waits for a core every op, which the validator judges
        # a disturbed iteration, and an idle rank's core speeds up the others (on the 2-core VM tp = 2
        # pp = 2 measured -10.9 points of bubble against its calibration).
        pytest.skip(f"{name}: {ranks} ranks need {ranks} cores; this host allows {len(os.sched_getaffinity(0))}")
    quiet, reports = _quiet_reports(name)
    assert any(within(r) for r in quiet), f"{name}: calibrated errors: {summary(reports)}"


def test_data_parallel_run_prices_its_measured_reduction():
    reports, _ = _runs("tiny-dp2.json")
    report = reports[-1]
    (reduction,) = report["profile"]["collectives"]
    # The stage's gradients as the validator holds them: every parameter of the tiny model's 10 layers, fp32.
    assert reduction["nbytes"] == 4 * sum(_tiny_parameters())
    ops = {op[1]: op for op in report["predicted"]["timeline"]["ops"]}
    predicted = ops["0REDUCE_GRAD"][3] - ops["0REDUCE_GRAD"][2]
    assert predicted == pytest.approx(reduction["latency"] + reduction["nbytes"] / reduction["bandwidth"])


def _tiny_parameters():
    """The tiny model's parameters by hand: vocab 512, hidden 64, FFN 256, 8 blocks without biases, LayerNorms
    with weight and bias, no learned positions."""
    h, ffn, vocab = 64, 256, 512
    block = 4 * h * h + 2 * h * ffn + 2 * 2 * h
    head = 2 * h + h * vocab
    embedding = vocab * h
    return [embedding, 8 * block, head]


@pytest.mark.parametrize("sequence_parallel", [False, True])
def test_tensor_parallel_pipeline_computes_the_recorded_tp1_losses(tmp_path, sequence_parallel):
    """tp = 2 pp = 2 (4 ranks), without and with sequence parallelism (each tensor rank then sends its
    half of the sequence down the pipeline), against the committed tp = 1 run of the same cut, seed
    and data (``validation/records/cpu-gloo-tiny-1f1b-p2.json``): every iteration's losses agree to
    float tolerance, whatever the timings, so this runs on any host."""
    from pipeplan.validation import run_validation

    plan = json.loads((PLANS / "tiny-tp2-pp2.json").read_text())
    plan.update(cluster=str((PLANS.parent / "cpu.json").resolve()), sequence_parallel=sequence_parallel)
    (tmp_path / "plan.json").write_text(json.dumps(plan))
    report = run_validation(str(tmp_path / "plan.json"), ValidateOptions(iterations=2, warmup=1, timeout=300))
    assert report["plan"].get("sequence_parallel", False) == sequence_parallel
    # The measured pipeline message: b·s·h fp32 elements, halved when each tensor rank sends its half.
    assert report["profile"]["boundary_bytes"] == 4 * 4 * 64 * 64 / (2 if sequence_parallel else 1)
    check_ops(report)
    record = json.loads((PLANS.parent / "records" / "cpu-gloo-tiny-1f1b-p2.json").read_text())
    (losses,), (recorded,) = report["losses"], record["losses"]
    assert len(losses) >= 3 * 8  # 1 warm-up and at least 2 timed iterations of 8 micro-batches
    assert losses == pytest.approx(recorded[:len(losses)], rel=1e-4)
