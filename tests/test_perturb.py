"""simulator.perturb: a compiled workload re-timed with per-op and per-transfer factors.

Two facts from outside the code: factors of 1 change nothing (the engine's own result, bit for bit,
contention and blocking sends included), and stretching every op, latency and byte count by k is a
change of time unit, so the makespan and every busy time scale by exactly k (max-min sharing at
unchanged port capacities moves k times the bytes in k times the time).
"""
import numpy as np
import pytest
from hypothesis import given, settings

from simulator.checker import check_schedule
from simulator.compile import compile_workload
from simulator.engine import simulate
from simulator.generators import one_f_one_b
from simulator.ir import ScheduleError
from simulator.perturb import makespan_and_busy, rescaled
from simulator.workload import uniform_workload
from test_engine_properties import with_communication


def _times(workload, op, transfer):
    c = compile_workload(workload)
    n = len(c.actions)
    return makespan_and_busy(rescaled(c, np.full(n, op), np.full(n, transfer)), workload.network.port_capacity)


def _runs(workload) -> bool:
    try:
        check_schedule(workload.schedule)
    except ScheduleError:
        return False
    return True


@settings(max_examples=40, deadline=None)
@given(with_communication())
def test_factors_of_one_give_the_engines_result_exactly(workload):
    if not _runs(workload):
        return
    sim = simulate(workload)
    total, busy = _times(workload, 1.0, 1.0)
    assert total == sim.iteration_time
    assert busy == sim.busy_time


@settings(max_examples=40, deadline=None)
@given(with_communication())
def test_stretching_everything_by_k_is_a_change_of_time_unit(workload):
    if not _runs(workload):
        return
    base, busy = _times(workload, 1.0, 1.0)
    for k in (0.5, 3.0):
        total, scaled_busy = _times(workload, k, k)
        assert total == pytest.approx(k * base, rel=1e-9, abs=1e-12)
        assert scaled_busy == pytest.approx([k * b for b in busy], rel=1e-9, abs=1e-12)


def test_a_chain_of_ops_on_one_device_sums_its_stretched_ops():
    # 1F1B on one device: F0 B0 F1 B1 ... run back to back, so the makespan is the sum of the ops.
    workload = uniform_workload(one_f_one_b(1, 4), forward=1.0, backward_input=1.0, backward_weight=1.0)
    c = compile_workload(workload)
    factors = np.array([1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0])  # F costs 1, B costs 2 (I + W)
    durations = np.asarray(c.duration)
    total, busy = makespan_and_busy(rescaled(c, factors, np.ones(8)), {})
    assert total == pytest.approx(float((durations * factors).sum()))
    assert busy == [pytest.approx(total)]


def test_a_transfer_factor_stretches_the_hop_on_the_critical_path():
    # p = 2, m = 1: F0 on device 0, F1 on device 1 after a 0.5 s transfer, then B1, the 0.5 s transfer
    # back and B0: 1 + 0.5 + 1 + 2 + 2 + 0.5 + 2 ... the two transfers are the only waits.
    workload = uniform_workload(one_f_one_b(2, 1), comm=0.5)
    c = compile_workload(workload)
    base, _ = makespan_and_busy(rescaled(c, np.ones(len(c.actions)), np.ones(len(c.actions))), {})
    stretched, _ = makespan_and_busy(rescaled(c, np.ones(len(c.actions)), np.full(len(c.actions), 3.0)), {})
    assert stretched - base == pytest.approx(2 * (3.0 - 1.0) * 0.5)


def test_factors_must_be_finite_and_non_negative():
    c = compile_workload(uniform_workload(one_f_one_b(2, 2)))
    n = len(c.actions)
    for bad in (np.full(n, -1.0), np.full(n, np.nan), np.ones(n + 1)):
        with pytest.raises(ValueError):
            rescaled(c, bad, np.ones(n))
