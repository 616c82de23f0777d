"""The engine against hand counts and the link model's closed forms."""
import math

import pytest

from simulator import Action, Link, Network, StageCost, Workload, build_schedule, simulate, uniform_workload
from simulator.flows import Flows


def test_hand_counted_1f1b_p2_m2_with_comm():
    # F=1, full backward = b + w = 2, every transfer 0.5. Worked out by hand:
    # dev0: F0 [0,1]  F1 [1,2]  B0 [5,7]  B1 [8,10]
    # dev1: F0 [1.5,2.5]  B0 [2.5,4.5]  F1 [4.5,5.5]  B1 [5.5,7.5]
    result = simulate(uniform_workload(build_schedule("1f1b", 2, 2), 1.0, 1.0, 1.0, comm=0.5))
    got = {(o.device, str(o.action)): (o.start, o.end) for o in result.timeline.ops}
    assert got == {
        (0, "0F0"): (0, 1), (0, "0F1"): (1, 2), (0, "0B0"): (5, 7), (0, "0B1"): (8, 10),
        (1, "1F0"): (1.5, 2.5), (1, "1B0"): (2.5, 4.5), (1, "1F1"): (4.5, 5.5), (1, "1B1"): (5.5, 7.5),
    }
    assert result.iteration_time == 10
    assert result.bubble_fraction == pytest.approx(1 - 12 / 20)
    transfers = sorted((t.src, t.dst, str(t.action), t.start, t.end) for t in result.timeline.transfers)
    assert transfers == [
        (0, 1, "0F0", 1, 1.5), (0, 1, "0F1", 2, 2.5), (1, 0, "1B0", 4.5, 5.0), (1, 0, "1B1", 7.5, 8.0),
    ]


def _two_device_gpipe(m, nbytes, latency, bandwidth, ports=("out0", "in1")):
    schedule = build_schedule("gpipe", 2, m)
    stage = StageCost(0.0, 0.0, 0.0, send_forward_bytes=nbytes, send_backward_bytes=nbytes)
    link = Link(latency, bandwidth, ports)
    network = Network(((link, link), (link, link)), {p: bandwidth for p in ports})
    return simulate(Workload(schedule, (stage, stage), network))


def test_one_transfer_takes_latency_plus_size_over_bandwidth():
    alpha, x, beta = 5e-6, 64e6, 50e9
    result = _two_device_gpipe(1, x, alpha, beta)
    forward = [t for t in result.timeline.transfers if t.src == 0]
    assert forward[0].end - forward[0].start == pytest.approx(alpha + x / beta, rel=1e-12)


def test_two_overlapping_transfers_on_one_port_take_twice_as_long():
    # Zero-time forwards: both micro-batches leave device 0 at t=0 through the same port.
    alpha, x, beta = 5e-6, 64e6, 50e9
    result = _two_device_gpipe(2, x, alpha, beta)
    forward = sorted(t.end for t in result.timeline.transfers if t.src == 0)
    assert forward == pytest.approx([alpha + 2 * x / beta] * 2, rel=1e-12)


def test_transfer_that_joins_late_shares_only_while_overlapping():
    # Forwards take 1 ms, so A leaves device 0 at 1 ms and B at 2 ms; each alone takes X/beta = 2 ms.
    # A: 1 ms alone (half its bytes), then the other half at half rate (2 ms) -> ends at 4 ms.
    # B: half its bytes by 4 ms, the rest alone in 1 ms -> ends at 5 ms.
    x, beta = 100e6, 50e9
    schedule = build_schedule("gpipe", 2, 2)
    link = Link(0.0, beta, ("out0", "in1"))
    network = Network(((link, link), (link, link)), {"out0": beta, "in1": beta})
    costs = (
        StageCost(1e-3, 0.0, 0.0, send_forward_bytes=x, send_backward_bytes=x),
        StageCost(0.0, 0.0, 0.0, send_backward_bytes=x),
    )
    result = simulate(Workload(schedule, costs, network))
    ends = sorted(t.end for t in result.timeline.transfers if t.src == 0)
    assert ends == pytest.approx([4e-3, 5e-3], rel=1e-9)


def test_max_min_fair_rates_by_hand():
    # Ports: P cap 10, Q cap 4. Flow a uses P and Q, flow b uses P only, flow c uses Q only.
    # Q is the bottleneck: a and c get 2 each; b takes what P has left: 8.
    flows = Flows({"P": 10.0, "Q": 4.0})
    flows.add(1, 100.0, math.inf, ("P", "Q"), 0.0)
    flows.add(2, 100.0, math.inf, ("P",), 0.0)
    flows.add(3, 100.0, math.inf, ("Q",), 0.0)
    flows.rebalance(flows.component([1]), 0.0)
    assert (flows.rate[1], flows.rate[2], flows.rate[3]) == pytest.approx((2.0, 8.0, 2.0))


def test_memory_returns_to_static_and_peak_counts_activations():
    schedule = build_schedule("1f1b", 4, 8)
    stage = StageCost(1.0, 1.0, 1.0, activation_bytes=10.0)
    network = Network(tuple(tuple(Link(0.0) for _ in range(4)) for _ in range(4)))
    result = simulate(Workload(schedule, (stage,) * 4, network, static_bytes=(100.0,) * 4, capacity_bytes=(130.0,) * 4))
    for times, levels in result.memory:
        assert levels[-1] == pytest.approx(100.0)
        assert min(levels) >= 100.0
    # 1F1B: device r holds min(p - r, m) micro-batches of 10 bytes.
    assert result.peak_memory == pytest.approx([140.0, 130.0, 120.0, 110.0])
    assert result.out_of_memory == [True, False, False, False]


def test_split_backward_frees_in_two_parts():
    schedule = build_schedule("zb-h1", 1, 1)
    stage = StageCost(1.0, 1.0, 1.0, activation_bytes=10.0, weight_grad_bytes=4.0)
    network = Network(((Link(0.0),),))
    result = simulate(Workload(schedule, (stage,), network))
    times, levels = result.memory[0]
    # F allocates 10 at t=0, I frees 6 at t=2, W frees 4 at t=3.
    assert list(zip(times, levels)) == [(0.0, 0.0), (0.0, 10.0), (2.0, 4.0), (3.0, 0.0)]
