"""The planner with a pinned tensor-parallel degree: one tensor rank's costs and memory, Megatron placement."""
import pytest

import pipeplan
from pipeplan import SpecError


def test_llama3_70b_with_tp8_plans_a_plan_that_fits_and_simulates_as_reported():
    result = pipeplan.optimize("llama3-70b", "dgx-h100", global_batch=8, nodes=4, tp=8, sequence_parallel=True,
                               schedules=["1f1b"], time_limit=0.5)
    plan = result.plan
    assert (plan.tp, plan.pp, plan.dp, plan.sequence_parallel) == (8, 4, 1, True)  # pp = 32 GPUs / tp 8
    assert plan.gpus() == [0, 8, 16, 24]  # one pipeline rank per node, tensor group inside it
    again = pipeplan.simulate(plan=plan)
    assert again.iteration_time == result.iteration_time
    assert max(again.sim.peak_memory) <= 0.95 * 80e9  # fits with the default 5 % headroom


@pytest.mark.parametrize("kwargs, message", [
    (dict(tp=3), "tp: a tensor-parallel group must stay inside one node of 8 GPUs"),
    (dict(tp=1, sequence_parallel=True), "sequence_parallel: needs tensor parallelism"),
    (dict(tp=8, pp=8), "pp: tp x pp x dp = 64 GPUs but dgx-h100 has 32"),
])
def test_bad_tensor_parallel_requests_are_one_line_errors(kwargs, message):
    with pytest.raises(SpecError, match=message):
        pipeplan.optimize("llama3-70b", "dgx-h100", global_batch=8, nodes=4, **kwargs)
