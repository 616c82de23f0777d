"""The planner with a pinned tensor-parallel degree: one tensor rank's costs and memory, Megatron placement."""
import pytest

import pipeplan
from pipeplan import SpecError


def test_llama3_70b_with_tp8_plans_a_plan_that_fits_and_simulates_as_reported():
    result = pipeplan.optimize("llama3-70b", "dgx-h100", global_batch=8, nodes=4, tp=8, dp=1, sequence_parallel=True,
                               schedules=["1f1b"], solver_time_limit=0.5)
    plan = result.plan
    assert (plan.tp, plan.pp, plan.dp, plan.sequence_parallel) == (8, 4, 1, True)  # pp = 32 GPUs / tp 8
    assert plan.gpus() == [0, 8, 16, 24]  # one pipeline rank per node, tensor group inside it
    again = pipeplan.simulate(plan=plan)
    assert again.iteration_time == result.iteration_time
    assert max(again.sim.peak_memory) <= 0.95 * 80e9  # fits with the default 5 % headroom


@pytest.mark.parametrize("kwargs, message", [
    (dict(tp=3), "--tp: 3 is not a tensor-parallel degree here; choose one of 1, 2, 4, 8"),
    (dict(tp=1, sequence_parallel=True), "--sequence-parallel: needs tp > 1"),
    (dict(tp=8, pp=8), "--pp: tp x pp x dp must equal the 32 GPUs .* with tp = 8 choose pp from 1, 2, 4"),
    (dict(gpus=12, tp=8), "--tp: 8 is not a tensor-parallel degree here; choose one of 1, 2, 4 "),
    (dict(tp=1, pp=1), "global_batch: 8 is divisible by none of the data-parallel degrees that --tp 1 --pp 1 leave "
                       r"on 32 GPUs \(32\)"),
    (dict(pp=1), "no layout of 32 GPUs fits llama3-70b: .* unpin the layout: tp=1 pp=32 dp=1 could fit"),
])
def test_bad_tensor_parallel_requests_are_one_line_errors(kwargs, message):
    with pytest.raises(SpecError, match=message):
        pipeplan.optimize("llama3-70b", "dgx-h100", global_batch=8, nodes=4, **kwargs)
