"""Megatron's rank order and the plan's 3D fields."""
import json
from pathlib import Path

import pytest

from pipeplan import Plan, SpecError, simulate
from pipeplan.parallel import Layout, default_placement

ROOT = Path(__file__).resolve().parents[1]


def test_megatron_docstring_example():
    # initialize_model_parallel's docstring: 16 GPUs, tp=2, pp=4 (so dp=2).
    layout = Layout(tp=2, pp=4, dp=2)
    assert [layout.tensor_group(p, d) for p in range(4) for d in range(2)] == [
        [0, 1], [2, 3], [4, 5], [6, 7], [8, 9], [10, 11], [12, 13], [14, 15]]
    assert [layout.data_group(p, t) for p in range(4) for t in range(2)] == [
        [0, 2], [1, 3], [4, 6], [5, 7], [8, 10], [9, 11], [12, 14], [13, 15]]
    assert [layout.pipeline_gpus(d, t) for d in range(2) for t in range(2)] == [
        [0, 4, 8, 12], [1, 5, 9, 13], [2, 6, 10, 14], [3, 7, 11, 15]]
    assert default_placement(4, 2, 2) == [0, 4, 8, 12]
    assert default_placement(8, 2) == [0, 2, 4, 6, 8, 10, 12, 14]  # tp = 1: as before


def test_ranks_of_a_gpu_read_megatrons_example_backwards():
    # The same example: GPU 13 is in tensor group [12, 13] (tensor rank 1), data group [13, 15] (data rank 0)
    # and pipeline group [1, 5, 9, 13] (pipeline rank 3), which is replica (d, t) = (0, 1), the second.
    layout = Layout(tp=2, pp=4, dp=2)
    assert layout.ranks(13) == (1, 0, 3) and layout.ranks(6) == (0, 1, 1)
    assert layout.replica(0, 1) == 1 and layout.replicas()[1] == [1, 5, 9, 13]
    assert [layout.gpu(*layout.ranks(g)) for g in range(16)] == list(range(16))


def test_tensor_groups_stay_inside_a_node():
    Layout(tp=8, pp=2, dp=1).check_fits(16, 8)
    with pytest.raises(SpecError, match="tp: a tensor-parallel group must stay inside one node of 8 GPUs"):
        Layout(tp=3, pp=1, dp=1).check_fits(16, 8)
    with pytest.raises(SpecError, match="= 32 GPUs but the cluster has 16"):
        Layout(tp=8, pp=2, dp=2).check_fits(16, 8)


def test_version_1_plans_load_as_tp_1_and_round_trip_as_version_2():
    data = {**json.loads((ROOT / "validation/plans/tiny-1f1b-p2.json").read_text()), "format_version": 1}
    plan = Plan.from_dict(data)
    assert (plan.tp, plan.sequence_parallel, plan.format_version) == (1, False, 2)
    back = json.loads(plan.to_json())
    assert back["format_version"] == 2 and back["tp"] == 1
    with pytest.raises(SpecError, match="plan.format_version: this pipeplan reads version 2"):
        Plan.from_dict({**data, "format_version": 3})


def test_sequence_parallelism_needs_tensor_parallelism():
    data = json.loads((ROOT / "validation/plans/tiny-1f1b-p2.json").read_text())
    with pytest.raises(SpecError, match="plan.sequence_parallel: needs tensor parallelism"):
        Plan.from_dict({**data, "sequence_parallel": True})


def test_a_layout_larger_than_the_cluster_is_refused_before_simulating():
    plan = Plan(model="llama3-8b", cluster="dgx-h100", schedule="1f1b", pp=2, num_microbatches=4,
                microbatch_size=1, layers_per_stage=(17, 17), dp=5)  # GPUs 0 and 5 exist, 10 are needed
    with pytest.raises(SpecError, match="tp x pp x dp = 1 x 2 x 5 = 10 GPUs but the cluster has 8"):
        simulate(plan=plan)
