"""optimize, given only the model, the GPUs, the cluster and the global batch of a Megatron SC'21 Table 1
row, finds a plan that simulates at least as fast as the published configuration
(``benchmarks/planner_vs_published.py`` prints every row; here three of the smaller ones, with short limits)."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

from planner_vs_published import optimized, published_time  # noqa: E402
from published_runs import SEQ, TABLE_1, model_of  # noqa: E402

from pipeplan.cluster import load_cluster  # noqa: E402
from pipeplan.planner.screen import screen_estimate  # noqa: E402
from pipeplan.planner.layouts import Layout, time_floor  # noqa: E402
from pipeplan.planner.request import OptimizeRequest  # noqa: E402

ROWS = {run.name: run for run in TABLE_1}


@pytest.mark.parametrize("name", ["1.7B", "3.6B", "18.4B"])
def test_optimize_is_not_slower_than_the_published_configuration(name):
    run = ROWS[name]
    result, _ = optimized(run, time_limit=5.0, layouts=1, solver_time_limit=0.3)
    plan = result.plan
    assert plan.tp * plan.pp * plan.dp == run.gpus
    assert not plan.sequence_parallel and not plan.distributed_optimizer and plan.blocking_p2p
    assert result.result.fits
    assert result.iteration_time <= published_time(run)


def test_the_screen_reaches_the_published_layout_before_a_half_empty_pipeline():
    """1008B on 3072 GPUs: tp=2 pp=128 dp=12 has the lowest time floor but 256 micro-batches for a
    128-deep pipeline (a 50 % fill in the screen's 1F1B); the published tp=8 pp=64 dp=6 is screened first."""
    run = ROWS["1008B"]
    model = model_of(run)
    cluster = load_cluster("dgx-a100").with_nodes(run.gpus // 8)
    base = OptimizeRequest.create(model, cluster, run.batch, pp=64, dp=6, tp=8, seq_len=SEQ)
    deep, published = Layout(2, 128, 12), Layout(8, 64, 6)
    floors = {lay: time_floor(model, cluster, lay, run.batch, SEQ) for lay in (deep, published)}
    assert floors[deep] < floors[published]
    assert screen_estimate(floors[published], published, base) < screen_estimate(floors[deep], deep, base)
