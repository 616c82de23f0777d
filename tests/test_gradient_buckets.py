"""Gradient buckets reduced while the last backward still runs (Megatron's --overlap-grad-reduce), by hand."""
import math

import pytest

from pipeplan import SpecError, lower
from pipeplan.breakdown import communication_breakdown
from pipeplan.buckets import gradient_buckets, megatron_bucket_params
from pipeplan.costs import layer_work
from pipeplan.dataparallel import DataParallelOptions
from plans import llama_plan  # tests/ is on sys.path
from simulator import Bucket, Collective, Link, Network, StageCost, Workload, simulate
from simulator.ir import Action, make_schedule


def _one_stage(bandwidth, buckets):
    """One device: F = 1 s, B = 4 s (1 to 5), a 4 GB reduction at ``bandwidth`` with 1 ms latency in
    ``buckets``, then a 0.5 s optimizer step."""
    rows = [[Action(0, "F", 0), Action(0, "B", 0), Action(0, "REDUCE_GRAD", None), Action(0, "OPTIMIZER", None)]]
    reduce = Collective("REDUCE_GRAD", 4e9, Link(1e-3, bandwidth, ("nic",)), buckets=buckets)
    stage = StageCost(1.0, 2.0, 2.0, collectives=(reduce,), optimizer=0.5)
    return Workload(make_schedule(rows, [0], 1, "hand"), (stage,), Network(((Link(0.0),),), {"nic": bandwidth}))


BUCKETS = (Bucket(0.25, 0.25), Bucket(0.25, 0.5), Bucket(0.5, 1.0))


@pytest.mark.parametrize("force", [False, True])
def test_buckets_start_as_the_backward_fills_them(force):
    # 10 GB/s: 1 GB buckets take 0.101 s, the last 2 GB 0.201 s. Ready at 1 + 0.25·4 = 2, 1 + 0.5·4 = 3
    # and the backward's end, 5; the step follows the last: 5.201 to 5.701. Exposed: the last bucket only.
    result = simulate(_one_stage(10e9, BUCKETS), force_event_loop=force)
    spans = [(o.start, o.end) for o in result.timeline.ops if o.action.kind == "REDUCE_GRAD"]
    assert spans == [(2.0, pytest.approx(2.101)), (3.0, pytest.approx(3.101)), (5.0, pytest.approx(5.201))]
    assert result.iteration_time == pytest.approx(5.701, rel=1e-12)
    dp = communication_breakdown(result.timeline).dp[0]
    assert dp.exposed == pytest.approx(0.201, rel=1e-9) and dp.overlapped == pytest.approx(0.202, rel=1e-9)
    # One bucket: 0.401 s, all after the backward.
    whole = simulate(_one_stage(10e9, ()), force_event_loop=force)
    assert whole.iteration_time == pytest.approx(5.0 + 0.401 + 0.5, rel=1e-12)


@pytest.mark.parametrize("force", [False, True])
def test_slow_buckets_queue_behind_each_other(force):
    # 1 GB/s: 1.001, 1.001 and 2.001 s. Bucket 1 is ready at 3 but bucket 0 holds the stream to 3.001;
    # bucket 2 is ready at 5, after bucket 1's 4.002: 5 to 7.001.
    result = simulate(_one_stage(1e9, BUCKETS), force_event_loop=force)
    spans = [(o.start, o.end) for o in result.timeline.ops if o.action.kind == "REDUCE_GRAD"]
    assert spans == [(2.0, pytest.approx(3.001)), (pytest.approx(3.001), pytest.approx(4.002)),
                     (5.0, pytest.approx(7.001))]


def test_bucket_boundaries_follow_the_backward_order_by_hand():
    # Four layers of 10 parameters, 1 s each in the op; buckets of 15 in backward order (layer 3 first):
    # 15 = layer 3 + half of layer 2, complete at 1.5 s of 4; 30 = layers 3, 2, 1, at 3 s; the rest at 4.
    buckets = gradient_buckets([10, 10, 10, 10], [1.0, 1.0, 1.0, 1.0], 15)
    assert buckets == (Bucket(15 / 40, 1.5 / 4), Bucket(15 / 40, 3 / 4), Bucket(10 / 40, 1.0))
    # The embedding (layer 0: 100 parameters, 0.1 s) comes last in the backward: 11 buckets of 10, the
    # first the block's (at 1 s of 1.1), then the embedding's at 1.01, 1.02, ... s, the last at the end.
    buckets = gradient_buckets([100, 10], [0.1, 1.0], 10)
    assert [b.share for b in buckets] == [pytest.approx(1 / 11)] * 11
    assert [b.ready for b in buckets] == [pytest.approx((1.0 + 0.01 * k) / 1.1, rel=1e-12) for k in range(10)] + [1.0]
    assert gradient_buckets([10, 10], [1.0, 1.0], 0) == () == gradient_buckets([10, 10], [1.0, 1.0], 20)
    assert megatron_bucket_params(8) == 40_000_000 and megatron_bucket_params(64) == 64_000_000


def test_megatron_buckets_stage_zero_only_and_ddp_every_stage():
    plan = llama_plan(dp=2, nodes=2)  # llama3-8b, 8 stages of 5, 4, ..., 4 pipeline layers
    workload, r = lower("llama3-8b", "dgx-h100", plan)
    counts = [len(s.collective("REDUCE_GRAD").buckets) for s in workload.stages]
    params0 = sum(layer_work(r.model, i, 1, r.seq_len, False).params for i in plan.stage_layers(0))
    assert counts == [math.ceil(params0 / 40e6)] + [0] * 7
    # Every stage, one block per bucket: stage 3 (4 equal blocks) is cut at 1/4, 1/2, 3/4 of its backward.
    block = layer_work(r.model, 1, 1, r.seq_len, False).params
    options = DataParallelOptions(bucket_params=int(block), bucketed_stages="every")
    from pipeplan import simulate
    result = simulate(plan=plan, dp_options=options)
    ops = [o for o in result.timeline.ops if o.device == 3]
    last = max((o for o in ops if o.action.kind == "B"), key=lambda o: o.end)
    starts = [o.start for o in ops if o.action.kind == "REDUCE_GRAD"]
    span = last.end - last.start
    assert starts == [pytest.approx(last.start + k / 4 * span, rel=1e-12) for k in (1, 2, 3)] + [last.end]


@pytest.mark.parametrize("field,value", [("bucket_params", -1), ("bucket_params", 1.5), ("bucketed_stages", "all")])
def test_bad_bucket_options_are_one_line(field, value):
    with pytest.raises(SpecError, match=field) as err:
        DataParallelOptions(**{field: value})
    assert "\n" not in str(err.value)
