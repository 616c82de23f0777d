"""A serving plan run for real (2 gloo ranks on the CPU, prefill and decode passes with a KV cache): the calibrated
prediction's throughput within 10 % of the measured one on an undisturbed machine, and the report it writes."""
import json
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("torch")

from pipeplan.plan import Plan  # noqa: E402
from pipeplan.validation import ValidateOptions, run_validation  # noqa: E402
from test_validate_live import QUIET_CORES, busy_cores, idle  # noqa: E402
from test_validate_serving import PLAN, serve_in_one_process  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
OPTIONS = ValidateOptions(iterations=8, warmup=2, timeout=120)
THROUGHPUT_PCT = 10.0  # the target for the calibrated prediction
ATTEMPTS = 3


def within(report) -> bool:
    return abs(report["errors"]["predicted"]["tokens_per_second_pct"]) <= THROUGHPUT_PCT


def summary(reports):
    return [({k: round(v, 2) for k, v in r["errors"]["predicted"].items() if v is not None},
             r["run"]["iterations_tried"], r["run"].get("left_out", "")) for r in reports]


@pytest.fixture(scope="module")
def cli_run(tmp_path_factory):
    folder = tmp_path_factory.mktemp("serve")
    done = subprocess.run([sys.executable, "-m", "pipeplan", "validate", str(PLAN), "--iterations",
                           str(OPTIONS.iterations), "--warmup", str(OPTIONS.warmup), "--out", str(folder / "report.json"),
                           "--gantt", str(folder / "gantt.png")], capture_output=True, text=True, cwd=REPO,
                          env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"}, timeout=300)
    return done, folder


def test_the_calibrated_throughput_is_within_10_percent_of_a_real_serving_run(cli_run):
    done, folder = cli_run
    assert done.returncode == 0, done.stderr
    reports = [json.loads((folder / "report.json").read_text())]
    stopped = ""
    while not any(idle(r) and within(r) for r in reports) and len(reports) < ATTEMPTS:
        if not idle(reports[-1]) and (load := busy_cores()) > QUIET_CORES:
            stopped = f"; other processes used {load:.2f} cores before a retry"
            break
        reports.append(run_validation(str(PLAN), OPTIONS))
    quiet = [r for r in reports if idle(r)]
    if not quiet:
        pytest.skip(f"this machine was disturbed in every attempt{stopped}: (calibrated errors, iterations tried, "
                    f"why left out) {summary(reports)}")
    assert any(within(r) for r in quiet), f"calibrated errors: {summary(reports)}"


def test_the_serving_report_prints_writes_and_generates_the_reference_tokens(cli_run):
    done, folder = cli_run
    assert done.returncode == 0, done.stderr
    for label in ("tokens/s", "TTFT p50", "TPOT mean", "measured", "predicted (calibrated)", "a priori"):
        assert label in done.stdout
    report = json.loads((folder / "report.json").read_text())
    for key in ("measured", "predicted", "apriori"):
        figures = report[key]["serving"]
        assert figures["tokens_per_second"] > 0 and figures["ttft"]["p50"] <= figures["latency"]["p99"]
    ops = report["measured"]["timeline"]["ops"]
    assert len(ops) == 2 * 32  # 2 batches of 16 passes (a prefill, 15 decode steps) on both devices
    assert sorted(op[1] for op in ops if op[0] == 1)[:3] == ["1F0", "1F1", "1F10"]
    # The tokens the two ranks generated are the ones one process generates with the same weights (itself
    # checked against the training forward without a cache), and every run generated the same.
    _, runners = serve_in_one_process(Plan.load(PLAN))
    reference = runners[-1].runs[0]
    assert report["serving_run"]["generated"] == [reference[r] for r in range(16)]
    assert report["serving_run"]["deterministic"]
    assert (folder / "gantt.png").stat().st_size > 10_000
    again = subprocess.run([sys.executable, "-m", "pipeplan", "compare", str(folder / "report.json")],
                           capture_output=True, text=True, cwd=REPO)
    assert again.returncode == 0 and "TPOT mean" in again.stdout
