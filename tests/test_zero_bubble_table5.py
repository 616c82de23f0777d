"""Zero Bubble (Qi et al., ICLR'24) Table 5, every cell, and the hand-crafted ZB-H2's parallelogram.

Table 5's bubble rate is (cost − m(T_F+T_B+T_W)) / cost, cost the longest device's span; its op
times are the paper's Table 9 measurements (ms). T_comm is a fixed transfer time on every boundary
hop, both directions (``uniform_workload``'s ``comm``). B is the input-gradient pass (our I).
"""
import pytest

from simulator import build_schedule, simulate, uniform_workload
from simulator.iterations import repeat_schedule, simulate_iterations
from zero_bubble_data import SETUPS  # tests/ is on sys.path

# model, p, m, T_F, T_B, T_W, T_comm -> 1F1B, ZB-H1, ZB-H2 bubble rate (Table 5 with Table 9's times)
TABLE5 = [row[:10] for row in SETUPS]


def _rate(cost: float, m: int, f: float, b: float, w: float) -> float:
    return (cost - m * (f + b + w)) / cost


@pytest.mark.parametrize("model,p,m,f,b,w,comm,one_f_one_b,zb_h1,zb_h2", TABLE5)
def test_zero_bubble_table5(model, p, m, f, b, w, comm, one_f_one_b, zb_h1, zb_h2):
    for name, paper in (("1f1b", one_f_one_b), ("zb-h1", zb_h1), ("zb-h2", zb_h2)):
        # 1F1B takes the full backward B + W in one op (uniform_workload: B = I + W).
        result = simulate(uniform_workload(build_schedule(name, p, m), f, b, w, comm))
        assert _rate(max(result.device_span), m, f, b, w) == pytest.approx(paper, abs=1e-4), (model, m, name)
        assert result.span_bubble_fraction == pytest.approx(paper, abs=1e-4), (model, m, name)


@pytest.mark.parametrize("model,p,m,f,b,w,comm,one_f_one_b,zb_h1,zb_h2", TABLE5[::3])
def test_table5_bubble_is_the_steady_state_of_back_to_back_iterations(model, p, m, f, b, w, comm,
                                                                      one_f_one_b, zb_h1, zb_h2):
    # Without a synchronising step, iteration k+1 starts on each device once it is done with
    # iteration k; T_K - T_(K-1) is then the paper's cost.
    for name, paper in (("1f1b", one_f_one_b), ("zb-h1", zb_h1), ("zb-h2", zb_h2)):
        steady = simulate_iterations(uniform_workload(build_schedule(name, p, m), f, b, w, comm), 3)
        assert _rate(steady.steady_iteration_time, m, f, b, w) == pytest.approx(paper, abs=1e-4), (model, m, name)
        assert steady.steady_bubble_fraction == pytest.approx(paper, abs=1e-4)


@pytest.mark.parametrize("p,m", [(2, 4), (3, 6), (4, 8), (4, 16), (5, 13), (8, 24)])
def test_zb_h2_is_the_papers_parallelogram(p, m):
    # Qi et al. Figure 3 with F = B = W = 1: device r works without a gap from r to r + 3m, so one
    # iteration ends after the fill p - 1 and every device's span is its 3m of work.
    result = simulate(uniform_workload(build_schedule("zb-h2", p, m)))
    starts = [min(o.start for o in result.timeline.ops if o.device == d) for d in range(p)]
    assert starts == [float(r) for r in range(p)]
    assert result.device_span == [3.0 * m] * p
    assert result.iteration_time == p - 1 + 3 * m
    assert result.span_bubble_fraction == 0.0
    # 2(p-1-r)+1 warm-up forwards plus up to 2r deferred weight passes: 2p-1 micro-batches on every device.
    assert result.peak_activations == [2 * p - 1] * p


def test_zb_h2_defers_2r_weight_passes_on_device_r():
    schedule = build_schedule("zb-h2", 4, 12)
    for r, actions in enumerate(schedule.device_actions):
        last_i = max(k for k, a in enumerate(actions) if a.kind == "I")
        assert [a.kind for a in actions[last_i + 1:]] == ["W"] * (2 * r + 1)  # W of the last I, then 2r deferred
        assert [a.kind for a in actions[:2 * (4 - 1 - r) + 1]] == ["F"] * (2 * (4 - 1 - r) + 1)


@pytest.mark.parametrize("f,b,w,comm", [(1, 1, 0.5, 0), (1.5, 1, 1, 0.2), (1, 2, 1, 0), (1, 2, 1.5, 0.3),
                                         (2, 1, 1.5, 0), (1, 1, 1.5, 0.7)])
def test_zb_h2_longest_span_closed_form(f, b, w, comm):
    # Device 0's span: the work plus, per hop, what W cannot fill, F + B - 2W (Qi et al. Table 2), or
    # its wait for the first input gradient when B > F; each hop's transfers there and back add 2c.
    p, m = 6, 24
    result = simulate(uniform_workload(build_schedule("zb-h2", p, m), f, b, w, comm))
    expected = m * (f + b + w) + (p - 1) * max(f + b - 2 * w + 2 * comm, b - f + 2 * comm, 0)
    assert max(result.device_span) == pytest.approx(expected, rel=1e-12)


def test_steady_state_with_and_without_a_synchronising_step():
    p, m, k = 4, 16, 4
    workload = uniform_workload(build_schedule("zb-h2", p, m))
    overlapped = simulate_iterations(workload, k)
    # The next iteration's fill hides under the previous one's tail: after the first, 3m each.
    assert overlapped.ends == [3 * m + p - 1 + 3 * m * j for j in range(k)]
    assert overlapped.steady_iteration_time == 3 * m and overlapped.steady_bubble_fraction == 0.0
    synchronised = simulate_iterations(workload, k, synchronise=True)
    assert synchronised.ends == [(3 * m + p - 1) * (j + 1) for j in range(k)]
    assert synchronised.steady_bubble_fraction == pytest.approx((p - 1) / (3 * m + p - 1))


def test_repeat_schedule_offsets_microbatches_and_keeps_device_order():
    base = build_schedule("1f1b", 3, 4)
    twice = repeat_schedule(base, 2)
    assert twice.num_microbatches == 8 and twice.stage_to_device == base.stage_to_device
    for acts, again in zip(base.device_actions, twice.device_actions):
        assert again[:len(acts)] == acts
        assert [(a.stage, a.kind, a.microbatch - 4) for a in again[len(acts):]] == [tuple(a) for a in acts]


def test_repeat_schedule_leaves_local_steps_out_and_refuses_reductions():
    from simulator.ir import Action, ScheduleError, make_schedule

    step = make_schedule([[Action(0, "F", 0), Action(0, "B", 0), Action(0, "OPTIMIZER", None)]], [0], 1, "one")
    assert [str(a) for a in repeat_schedule(step, 2).device_actions[0]] == ["0F0", "0B0", "0F1", "0B1"]
    reduce = make_schedule([[Action(0, "F", 0), Action(0, "B", 0), Action(0, "REDUCE_GRAD", None),
                             Action(0, "OPTIMIZER", None)]], [0], 1, "one")
    with pytest.raises(ScheduleError, match="REDUCE_GRAD"):
        repeat_schedule(reduce, 2)
