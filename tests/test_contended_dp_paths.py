"""Contended data-parallel runs: the default path (the exact pass, then the max-min event loop from the
first contended instant, on the pass's state) against the event loop from time 0 and the plain oracle.

The workloads are the speed benchmark's (benchmarks/bench_simulator.py ``dp_workload``) at a size the
oracle can replay: a 1F1B pipeline whose stages end with a gradient all-reduce over a ring that crosses
one NIC port pair per 8 pipeline ranks, so the reductions contend on those ports (and, with gradient
buckets, with the pipeline's own transfers on the GPU ports).
"""
import math
from dataclasses import replace

import pytest

from engine_oracle import oracle_times  # tests/ is on sys.path
from simulator import Action, Bucket, Collective, Link, Network, StageCost, Workload, build_schedule, simulate
from simulator.compile import compile_workload
from simulator.engine import event_loop_cut
from simulator.ir import make_schedule
from simulator.passes import uncontended_times

NIC_BANDWIDTH = 50e9


def dp_workload(p: int, m: int, dp: int, grad_bytes: float, buckets: tuple = (), blocking: bool = False) -> Workload:
    """1F1B over p GPUs behind one NVSwitch (450 GB/s ports, 64 MB messages), each device ending with
    OPTIMIZER and REDUCE_GRAD; the reduction a ring all-reduce over dp ranks through its node's NIC."""
    schedule = build_schedule("1f1b", p, m, 1)
    rows = [list(acts) + [Action(d, "OPTIMIZER", None), Action(d, "REDUCE_GRAD", None)]
            for d, acts in enumerate(schedule.device_actions)]
    schedule = make_schedule(rows, schedule.stage_to_device, m, "1f1b+dp")
    links = tuple(tuple(Link(3e-6, 450e9, (f"gpu{a}:out", f"gpu{b}:in")) for b in range(p)) for a in range(p))
    ports = {f"gpu{d}:{k}": 450e9 for d in range(p) for k in ("out", "in")}
    stages = []
    for s in range(p):
        nic = (f"node{s // 8}.nic0:out", f"node{s // 8}.nic0:in")
        ports.update({port: NIC_BANDWIDTH for port in nic})
        path = Link(2 * (dp - 1) * 5e-6, NIC_BANDWIDTH, (f"gpu{s}:out", f"gpu{s}:in") + nic)
        collective = Collective("REDUCE_GRAD", 2 * (dp - 1) / dp * grad_bytes, path, buckets=buckets)
        stages.append(StageCost(1e-3, 1e-3, 1e-3, send_forward_bytes=64e6, send_backward_bytes=64e6,
                                activation_bytes=1.0, weight_grad_bytes=0.5, collectives=(collective,),
                                optimizer=1e-3))
    return Workload(schedule, tuple(stages), Network(links, ports), blocking_sends=blocking)


CASES = {
    "8 ranks, dp=8, 1 GB": dp_workload(8, 16, 8, 1e9),
    "16 ranks on 2 NICs, dp=4, 5 GB": dp_workload(16, 24, 4, 5e9),
    "8 ranks, dp=2, 3 buckets": dp_workload(8, 16, 2, 2e9, (Bucket(0.25, 0.0), Bucket(0.25, 0.5), Bucket(0.5, 1.0))),
    "8 ranks, dp=8, blocking sends": dp_workload(8, 12, 8, 1e9, blocking=True),
}


def _ops(result) -> dict:
    """{(action text, n-th op of that action): (start, end)}: a bucketed action is one op per bucket."""
    seen: dict = {}
    out = {}
    for op in result.timeline.ops:
        i = seen[str(op.action)] = seen.get(str(op.action), -1) + 1
        out[str(op.action), i] = (op.start, op.end)
    return out


@pytest.mark.parametrize("name", list(CASES))
def test_the_reductions_contend_after_the_pass_started_the_run(name):
    # Not vacuous: the exact pass hands over to the event loop part-way through the run, and the
    # reductions then take longer than any of them alone on its ring.
    w = CASES[name]
    compiled = compile_workload(w)
    start, end = uncontended_times(compiled)
    cut = event_loop_cut(compiled, start, end)
    assert cut is not None and 0 < cut < float(end.max())
    result = simulate(w)
    alone = {s: cost.collectives[0].seconds(w.network.port_capacity) for s, cost in enumerate(w.stages)}
    if not w.stages[0].collectives[0].buckets:
        slowed = [op.end - op.start - alone[op.action.stage] for op in result.timeline.ops
                  if op.action.kind == "REDUCE_GRAD"]
        assert max(slowed) > 1e-3 * min(alone.values())


@pytest.mark.parametrize("name", list(CASES))
def test_the_default_path_and_the_event_loop_from_zero_give_the_same_timeline(name):
    w = CASES[name]
    default, forced = simulate(w), simulate(w, force_event_loop=True)
    a, b = _ops(default), _ops(forced)
    assert a.keys() == b.keys()
    for key in a:  # the loop from the cut re-creates flows mid-way: equal to rounding
        for x, y in zip(a[key], b[key]):
            assert math.isclose(x, y, rel_tol=1e-12, abs_tol=1e-15), (key, a[key], b[key])
    transfers = [sorted((t.src, t.dst, str(t.action), str(t.consumer)) for t in r.timeline.transfers)
                 for r in (default, forced)]
    assert transfers[0] == transfers[1]
    assert default.peak_memory == forced.peak_memory
    assert math.isclose(default.iteration_time, forced.iteration_time, rel_tol=1e-12)


@pytest.mark.parametrize("name", list(CASES))
def test_the_default_path_matches_the_plain_oracle(name):
    w = CASES[name]
    times, _ = oracle_times(w)
    want = {}
    for op, span in times.items():  # an action, or (action, bucket index)
        want[(str(op), 0) if isinstance(op, Action) else (str(op[0]), op[1])] = span
    got = _ops(simulate(w))
    assert got.keys() == want.keys()
    for key, (start, end) in got.items():
        assert math.isclose(start, want[key][0], rel_tol=1e-9, abs_tol=1e-9), (key, (start, end), want[key])
        assert math.isclose(end, want[key][1], rel_tol=1e-9, abs_tol=1e-9), (key, (start, end), want[key])


def test_a_bucketed_reduction_starts_before_the_backward_that_fills_it_ends():
    # Bucket 0 is ready at the start of the last weight-gradient producer (ready 0): it starts while that
    # op still runs, which only the early deliveries of the event loop (and the pass's negative lead) give.
    result = simulate(CASES["8 ranks, dp=2, 3 buckets"])
    ops = result.timeline.ops
    for d in range(8):
        last_b = max((op for op in ops if op.device == d and op.action.kind == "B"), key=lambda op: op.end)
        first_bucket = min((op for op in ops if op.device == d and op.action.kind == "REDUCE_GRAD"),
                           key=lambda op: op.start)
        assert first_bucket.start < last_b.end


def test_the_cases_differ_from_their_uncontended_timing():
    # With the NIC ports unbounded each reduction runs at its ring's own rate and the run ends earlier:
    # the sharing is what the default path's event loop prices.
    w = CASES["8 ranks, dp=8, 1 GB"]
    free = replace(w, network=Network(w.network.links, {**w.network.port_capacity,
                                                       "node0.nic0:out": math.inf, "node0.nic0:in": math.inf}))
    assert simulate(free).iteration_time < simulate(w).iteration_time
