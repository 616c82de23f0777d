"""A plan that recomputes stage 0, run for real (2 ranks, gloo, CPU, a few seconds per run).

Recomputation changes when the forward runs, not the math: with the same seed the losses of every
iteration match the plan without it, which also shows that the recomputed stage's gradients and
updates are the real ones. Its cost (one more forward in each of stage 0's backwards) shows in the
measured time and, calibrated, in the prediction, held to the targets of test_validate_live.
"""
from pathlib import Path

import pytest

pytest.importorskip("torch")

from pipeplan.validation import ValidateOptions, run_validation  # noqa: E402

from test_validate_live import ATTEMPTS, OPTIONS, attempts, idle, plain_and_recomputed, summary, within  # noqa: E402

PLANS = Path(__file__).resolve().parents[1] / "validation" / "plans"


@pytest.fixture(scope="module")
def runs():
    """(without, with recomputation) reports of the same plan, run back to back (made once per session: the
    plain run is also test_validate_live's first 1F1B attempt)."""
    return plain_and_recomputed()


def test_recomputation_runs_with_the_losses_of_the_plain_run(runs):
    plain, recomputed = runs
    assert recomputed["plan"]["recompute"] == ["full", "none"]
    stages = recomputed["profile"]["stages"]
    assert [s["recompute"] for s in stages] == [True, False]
    assert [s["recompute"] for s in plain["profile"]["stages"]] == [False, False]
    ops = recomputed["measured"]["timeline"]["ops"]
    assert len(ops) == 2 * 8 * 2 + 2  # 1F1B: F and B of 8 micro-batches on both devices, and each's step
    (losses,), (reference,) = recomputed["losses"], plain["losses"]
    for report, values in ((recomputed, losses), (plain, reference)):
        assert len(values) == (OPTIONS.warmup + report["run"]["iterations_tried"]) * 8
    # A busy machine makes a run try more iterations; the iterations both ran must agree.
    both = min(len(losses), len(reference))
    assert losses[:both] == pytest.approx(reference[:both], rel=1e-5, abs=1e-6)
    # Every iteration runs the same 8 micro-batches, so the updates show as a falling loss.
    per_iteration = [sum(losses[k:k + 8]) for k in range(0, len(losses), 8)]
    assert all(b < a for a, b in zip(per_iteration, per_iteration[1:])), per_iteration


def test_recomputation_costs_time_and_the_calibrated_prediction_holds(runs):
    plain, recomputed = runs
    if not idle(plain):
        # The time comparison needs both runs undisturbed; retrying under load only makes the test slow.
        pytest.skip(f"this machine was disturbed: plain 1F1B tried {plain['run']['iterations_tried']} iterations: "
                    f"{plain['run'].get('left_out', '')}")
    reports, stopped = attempts(PLANS / "tiny-1f1b-recompute-p2.json", [recomputed])
    quiet = [r for r in reports if idle(r)]
    if not quiet:
        pytest.skip(f"this machine was disturbed in every attempt{'; ' + stopped if stopped else ''}: "
                    f"(errors, iterations tried, why left out) {summary(reports)}")
    assert any(within(r) for r in quiet), f"calibrated errors (errors, iterations tried, why left out): {summary(reports)}"
    # Stage 0 runs its forward twice per micro-batch: some 15 % more iteration time on this model.
    # The VM's speed drifts by more than that from one minute to the next (a CI run measured the
    # plain plan at 140 ms against its usual 73 ms), so each recomputing run is compared with a plain
    # run measured just before it, the pair retried like the runs above.
    pairs = [(plain, recomputed)]

    def slower(pair):
        without, with_recompute = pair
        return idle(without) and idle(with_recompute) and (
            with_recompute["measured"]["iteration_time"] > without["measured"]["iteration_time"])

    while not any(map(slower, pairs)) and len(pairs) < ATTEMPTS:
        pairs.append((run_validation(str(PLANS / "tiny-1f1b-p2.json"), OPTIONS),
                      run_validation(str(PLANS / "tiny-1f1b-recompute-p2.json"), OPTIONS)))
    times = [(a["measured"]["iteration_time"], b["measured"]["iteration_time"], idle(a) and idle(b))
             for a, b in pairs]
    assert any(map(slower, pairs)), f"(plain, recompute, both undisturbed) seconds: {times}"
