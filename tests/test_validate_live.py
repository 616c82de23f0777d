"""Real 2-rank gloo runs on the CPU: the calibrated prediction must match the measurement, and a
failing rank must end the run cleanly. Each run starts torchrun and two ranks (a few seconds)."""
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytest.importorskip("torch")

from pipeplan import simulate  # noqa: E402
from pipeplan.dataparallel import DataParallelOptions  # noqa: E402
from pipeplan.plan import Plan  # noqa: E402
from pipeplan.validation import ValidateOptions, ValidationFailed, process_alive, run_validation  # noqa: E402
from validator.runtime import FAULT_ENV  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
PLANS = REPO / "validation" / "plans"
OPTIONS = ValidateOptions(iterations=8, warmup=2, timeout=90)
# The targets for the calibrated prediction: 3 points of bubble, 10 % of iteration time. The
# recorded quiet runs came out within 1.5 points and 4.7 % (README "Validating"). The claim is about
# an undisturbed machine, and the validator judges each iteration (``validator.quiet``): other
# processes' CPU time, how long each rank's compute thread waited for its core (nanosecond
# scheduler counters, in the run and in its calibration), steal time, and each rank's op times
# against the run's median. An attempt counts when it found ``iterations`` undisturbed ones.
#
# Why the waits: CI failed with zb-h1 at -4.8/-4.4/-3.9 points and interleaved at -3.7/-3.2/-5.5
# with every iteration counted as undisturbed by the CPU-time test alone, which allowed other
# processes 0.3 cores over a ~200 ms window counted in 10 ms ticks (60 ms of someone else's CPU per
# iteration). A delay that lands on one rank makes the other wait for it; the calibration, whose ops
# wait for nothing, cannot show that, so under load the measured bubble grows (-4 to -15 points on
# this VM, iteration time within a few %) - the CI signature. Up to ATTEMPTS runs are made while the
# machine is quiet; when it is demonstrably busy (every attempt disturbed, or other processes
# already using QUIET_CORES before a retry) the test is skipped with the detectors' figures.
BUBBLE_POINTS = 3.0
TIME_PCT = 10.0
ATTEMPTS = 3
QUIET_CORES = 0.3


def busy_cores(seconds: float = 0.5) -> float:
    """Cores this host kept busy over the next ``seconds`` (all processes; this one only sleeps)."""
    def sample():
        with open("/proc/stat") as handle:
            f = [int(x) for x in handle.readline().split()[1:9]]
        return f[0] + f[1] + f[2] + f[5] + f[6] + f[7]
    try:
        before = sample()
        time.sleep(seconds)
        return (sample() - before) / os.sysconf("SC_CLK_TCK") / seconds
    except (OSError, ValueError):
        return 0.0


def idle(report):
    """The run found enough undisturbed iterations (``validator.quiet``)."""
    return not report["run"]["disturbed"]


def within(report):
    err = report["errors"]["predicted"]
    return abs(err["bubble_points"]) <= BUBBLE_POINTS and abs(err["iteration_time_pct"]) <= TIME_PCT


def attempts(plan, reports=(), options=OPTIONS):
    """``reports`` plus runs of ``plan`` (with ``options``) until one is undisturbed and within the
    targets, ATTEMPTS in all; no retry once the machine is seen busy. Returns (reports, why the
    retries stopped or "")."""
    reports = list(reports)
    stopped = ""
    while not any(idle(r) and within(r) for r in reports) and len(reports) < ATTEMPTS:
        if reports and not idle(reports[-1]):
            load = busy_cores()
            if load > QUIET_CORES:
                stopped = f"other processes used {load:.2f} cores before a retry"
                break
        reports.append(run_validation(str(plan), options))
    return reports, stopped


_PAIR: list = []


def plain_and_recomputed():
    """tiny-1f1b-p2 then tiny-1f1b-recompute-p2, run back to back with OPTIONS once per session: the plain run is
    1F1B's first attempt here and, with the recomputing run just after it, test_validate_recompute_live's pair."""
    if not _PAIR:
        _PAIR.extend(run_validation(str(PLANS / name), OPTIONS)
                     for name in ("tiny-1f1b-p2.json", "tiny-1f1b-recompute-p2.json"))
    return tuple(_PAIR)


def summary(reports):
    return [(r["errors"]["predicted"], r["run"]["iterations_tried"], r["run"].get("left_out", "")) for r in reports]


def _cli(*args):
    return subprocess.run([sys.executable, "-m", "pipeplan", *args], capture_output=True, text=True, cwd=REPO,
                          env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"}, timeout=120)


@pytest.fixture(scope="module")
def cli_run(tmp_path_factory):
    """zb-h1 through the command line, writing the report and the side-by-side Gantt."""
    folder = tmp_path_factory.mktemp("validate")
    out = _cli("validate", str(PLANS / "tiny-zb-h1-p2.json"), "--iterations", str(OPTIONS.iterations),
               "--warmup", str(OPTIONS.warmup), "--out", str(folder / "report.json"),
               "--gantt", str(folder / "gantt.png"), "--profile-out", str(folder / "profile.json"))
    return out, folder


@pytest.mark.parametrize("schedule", ["gpipe", "1f1b", "interleaved", "zb-h1", "zb-v"])
def test_calibrated_prediction_matches_a_real_run(schedule, cli_run):
    reports = []
    if schedule == "zb-h1":
        out, folder = cli_run
        assert out.returncode == 0, out.stderr
        reports.append(json.loads((folder / "report.json").read_text()))
    if schedule == "1f1b":
        reports.append(plain_and_recomputed()[0])
    reports, stopped = attempts(PLANS / f"tiny-{schedule}-p2.json", reports)
    quiet = [r for r in reports if idle(r)]
    if not quiet:
        pytest.skip(f"{schedule}: this machine was disturbed in every attempt{'; ' + stopped if stopped else ''}: "
                    f"(errors, iterations tried, why left out) {summary(reports)}")
    assert any(within(r) for r in quiet), (
        f"{schedule}: calibrated errors (errors, iterations tried, why left out): {summary(reports)}")


def test_validate_prints_the_table_and_writes_report_gantt_and_profile(cli_run):
    out, folder = cli_run
    assert out.returncode == 0, out.stderr
    for label in ("measured", "predicted (calibrated)", "a priori"):
        assert label in out.stdout
    report = json.loads((folder / "report.json").read_text())
    for key in ("measured", "predicted", "apriori"):
        section = report[key]
        assert 0 <= section["bubble_fraction"] < 1 and section["iteration_time"] > 0
        assert len(section["busy_time"]) == 2 and "timeline" in section
    assert set(report["errors"]) == {"predicted", "apriori"}
    ops = report["measured"]["timeline"]["ops"]
    assert sorted(op[1] for op in ops if op[0] == 1)[:3] == ["1F0", "1F1", "1F2"]
    assert len(ops) == 2 * 8 * 3 + 2  # zb-h1: F, I and W of 8 micro-batches on both devices, and each's step
    assert [op[1] for op in ops if op[1].endswith("OPTIMIZER")] == ["0OPTIMIZER", "1OPTIMIZER"]
    assert (folder / "gantt.png").stat().st_size > 10_000
    again = _cli("compare", str(folder / "report.json"))
    assert again.returncode == 0 and "predicted (calibrated)" in again.stdout
    sim = _cli("simulate", str(PLANS / "tiny-zb-h1-p2.json"), "--profile", str(folder / "profile.json"), "--json")
    assert sim.returncode == 0, sim.stderr
    # The measured iteration ends with the optimizer steps, and so do the report's prediction and simulate's,
    # each stage's step at its measured time.
    plan = Plan.load(str(PLANS / "tiny-zb-h1-p2.json"))
    without = simulate(plan=plan, base_dir=PLANS, profile=str(folder / "profile.json"),
                       dp_options=DataParallelOptions(optimizer_step=False))
    # simulate prints the mean-time simulation, which the report keeps as its point (its prediction is the
    # median over the calibration's scatter, at least the point's time)
    point = report["predicted"]["point"]["iteration_time"]
    assert json.loads(sim.stdout)["iteration_time"] == pytest.approx(point)
    assert without.iteration_time < point <= report["predicted"]["iteration_time"] * 1.05
    assert all(stage["optimizer"] > 0 for stage in report["profile"]["stages"])


@pytest.mark.parametrize("mode", ["kill", "raise", "hang"])
def test_a_failing_rank_ends_the_run_cleanly(mode, monkeypatch, tmp_path):
    """Rank 1 dies / raises / hangs at its 6th op: the run ends within the timeout, names rank 1,
    leaves no report and no process behind."""
    monkeypatch.setenv(FAULT_ENV, f"1:5:{mode}")
    # 45 s: the ranks' start (torch's import, gloo's rendezvous) takes 10-20 s on a loaded 2-core machine
    # and counts against the run's timeout; a hang is reported after one wait, timeout / 3 = 15 s.
    timeout = 45.0
    out = tmp_path / "report.json"
    start = time.monotonic()
    with pytest.raises(ValidationFailed) as failure:
        run_validation(str(PLANS / "tiny-1f1b-p2.json"), ValidateOptions(iterations=2, warmup=1, timeout=timeout),
                       out=str(out))
    elapsed = time.monotonic() - start
    message = str(failure.value)
    assert message.startswith("rank 1 failed: "), message
    expected = {"kill": "killed by SIGKILL", "raise": "injected fault at op 5", "hang": "stopped responding"}[mode]
    assert expected in message
    assert elapsed < timeout, f"took {elapsed:.1f} s"
    assert not out.exists()
    assert len(failure.value.pids) == 3 and not any(process_alive(pid) for pid in failure.value.pids)
