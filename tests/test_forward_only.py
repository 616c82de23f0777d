"""Forward-only and recurrent schedules in the IR, the checker and the engine, against closed forms and hand counts."""
import pytest

from simulator import ScheduleError, StageCost, Workload, build_schedule, check_schedule, from_csv, simulate
from simulator.memory import memory_curves, peak_live_microbatches
from simulator.workload import Link, Network, UniformLinks, uniform_network, uniform_workload


def decode(p, m, passes):
    return build_schedule("continuous-decode", p, m, passes=passes)


def unit_run(schedule, comm=0.0):
    return simulate(uniform_workload(schedule, 1.0, 0.0, 0.0, comm=comm))


def test_a_csv_of_forwards_alone_loads_as_forward_only_and_simulates():
    schedule = from_csv("0F0,0F1,0F2\n1F0,1F1,1F2\n")
    assert schedule.forward_only and schedule.recurrence == 0
    check_schedule(schedule)  # before: "missing backward 0B0"
    result = unit_run(schedule, comm=0.5)
    # Fill-drain with a transfer of 0.5 per hop: (m + p - 1)·F + (p - 1)·c = 4 + 0.5.
    assert result.iteration_time == pytest.approx(4.5)
    assert [str(op.action) for op in result.timeline.ops] == ["0F0", "0F1", "0F2", "1F0", "1F1", "1F2"]


def test_a_training_csv_missing_some_backwards_still_names_the_missing_one():
    with pytest.raises(ScheduleError, match="missing backward 0B1"):
        check_schedule(from_csv("0F0,0F1,0B0\n1F0,1F1,1B0,1B1\n"))


def test_a_forward_only_schedule_runs_forwards_only():
    from dataclasses import replace
    schedule = replace(build_schedule("1f1b", 2, 2), forward_only=True)
    with pytest.raises(ScheduleError, match="action 0B0 in a forward-only schedule"):
        check_schedule(schedule)
    with pytest.raises(ScheduleError, match="action 0B0 in a forward-only schedule"):
        simulate(uniform_workload(schedule))


def test_memory_of_a_forward_only_forward_is_freed_when_the_next_stage_has_its_input():
    # Two stages, F = 1, a hop of 0.5, one unit of activations per F, by hand:
    # device 0: F0 [0, 1], F1 [1, 2]; delivered at 1.5 and 2.5. Device 1 (the last stage sends nothing):
    # F0 [1.5, 2.5], F1 [2.5, 3.5], each freed at its end.
    result = unit_run(from_csv("0F0,0F1\n1F0,1F1\n"), comm=0.5)
    assert result.memory[0] == ([0.0, 0.0, 1.0, 1.5, 2.5], [0.0, 1.0, 2.0, 1.0, 0.0])
    assert result.memory[1] == ([0.0, 1.5, 2.5, 2.5, 3.5], [0.0, 1.0, 0.0, 1.0, 0.0])
    assert result.peak_activations == [2, 1]
    assert peak_live_microbatches(result.timeline, forward_only=True) == [2, 1]
    # The timeline replay says the same as the engine's columns.
    workload = uniform_workload(from_csv("0F0,0F1\n1F0,1F1\n"), 1.0, 0.0, 0.0, comm=0.5)
    assert memory_curves(result.timeline, workload, [0.0, 0.0]) == result.memory


def test_gpipe_forwards_with_no_backward_time_still_hold_activations_but_inference_frees_them():
    # The issue's `--b 0 --w 0`: a training schedule keeps every forward's activations for its backward.
    gpipe = simulate(uniform_workload(build_schedule("gpipe", 4, 8), 1.0, 0.0, 0.0))
    inference = unit_run(build_schedule("inference", 4, 8))
    assert gpipe.peak_memory[0] == 8.0
    assert inference.peak_memory == [1.0, 1.0, 1.0, 1.0]  # freed as the next stage takes it, with no transfer time


def test_kept_bytes_stay_to_the_end_of_the_run():
    # Two streams of three passes on two stages; each F keeps 10 bytes and holds 1 byte of activations until delivered.
    schedule = decode(2, 2, 3)
    cost = StageCost(1.0, 0.0, 0.0, activation_bytes=1.0, kept_bytes=10.0)
    result = simulate(Workload(schedule, (cost, cost), uniform_network(2), (100.0, 100.0)))
    # Six passes per stage: 100 + 6·10 at the end, and one pass's activations on top at the peak.
    assert [levels[-1] for _, levels in result.memory] == [160.0, 160.0]
    assert result.peak_memory == [161.0, 161.0]


@pytest.mark.parametrize("p", [2, 3, 4, 8])
@pytest.mark.parametrize("extra", [0, 1, 3])
def test_continuous_decode_with_at_least_p_streams_has_no_bubble_in_steady_state(p, extra):
    m, passes = p + extra, 6
    result = unit_run(decode(p, m, passes))
    # Closed form: (mT + p - 1)·F, only the fill and drain idle; every device busy from its first op to its last.
    assert result.iteration_time == pytest.approx(m * passes + p - 1)
    assert result.device_span == pytest.approx(result.busy_time)
    assert result.busy_time == pytest.approx([m * passes] * p)


@pytest.mark.parametrize("p", [2, 4, 8])
def test_k_streams_below_p_give_k_over_p_of_the_full_pipeline_s_throughput(p):
    def pass_cycle(m, comm):  # the time one more pass per stream adds: the steady-state cycle
        return unit_run(decode(p, m, 5), comm).iteration_time - unit_run(decode(p, m, 4), comm).iteration_time

    for comm in (0.0, 0.25):
        full = p / pass_cycle(p, comm)  # tokens per second with the pipeline full
        for k in range(1, p):
            # Each of k streams needs a whole round trip: p·F plus p hops (the last one back to stage 0).
            assert pass_cycle(k, comm) == pytest.approx(p * (1 + comm))
            assert (k / pass_cycle(k, comm)) / full == pytest.approx(k / p)


def test_per_micro_batch_cost_classes_time_prefill_and_decode_passes_by_hand():
    # p = 2 stages, m = 2 streams, 3 passes: pass 0 (ids 0, 1) takes 5 per stage, passes 1-2 (ids 2-5) take 1.
    schedule = decode(2, 2, 3)
    prefill, step = StageCost(5.0, 0.0, 0.0, send_forward_bytes=100.0), StageCost(1.0, 0.0, 0.0, send_forward_bytes=1.0)
    network = Network(UniformLinks(2, Link(0.0, 1000.0)))
    workload = Workload(schedule, (prefill, prefill), network, pass_class=(0, 0, 1, 1, 1, 1),
                        pass_stages=((prefill, prefill), (step, step)))
    result = simulate(workload)
    ends = {str(op.action): op.end for op in result.timeline.ops}
    # By hand (transfers 0.1 for a prefill pass's 100 bytes, 0.001 for a decode pass's 1 byte at 1000 B/s):
    # d0: 0F0 [0, 5], 0F1 [5, 10]; d1: 1F0 [5.1, 10.1], 1F1 [10.1, 15.1]; 0F2 waits for 1F0 + 0.1 -> [10.2, 11.2];
    # 1F2 waits for d1 -> [15.1, 16.1]; 0F3 waits for 1F1 + 0.1 -> [15.2, 16.2]; 1F3 [16.2 + 0.001, 17.201];
    # 0F4's input is there at 16.101, device 0 frees at 16.2 -> [16.2, 17.2]; 0F5 waits for 1F3 + 0.001 ->
    # [17.202, 18.202]; 1F4 waits for 0F4 + 0.001 -> [17.201, 18.201]; 1F5 for 0F5 -> [18.203, 19.203].
    expected = {"0F0": 5, "0F1": 10, "1F0": 10.1, "1F1": 15.1, "0F2": 11.2, "1F2": 16.1, "0F3": 16.2,
                "1F3": 17.201, "0F4": 17.2, "0F5": 18.202, "1F4": 18.201, "1F5": 19.203}
    assert ends == pytest.approx(expected)
    assert {(str(t.action), t.nbytes) for t in result.timeline.transfers if t.action.stage == 1} == {
        ("1F0", 100.0), ("1F1", 100.0), ("1F2", 1.0), ("1F3", 1.0)}  # the re-entry transfers, last stage -> first


def test_streams_may_stop_early_and_every_stream_must_start():
    schedule = decode(2, 3, (3, 1, 2))
    check_schedule(schedule)
    assert [str(a) for a in schedule.device_actions[0]] == ["0F0", "0F1", "0F2", "0F3", "0F5", "0F6"]
    assert schedule.num_microbatches == 7 and schedule.recurrence == 3
    # Stream 1 never starts: its pass 0 (id 1) is missing.
    with pytest.raises(ScheduleError, match="missing forward 0F1"):
        check_schedule(from_csv("0F0,0F2\n1F0,1F2\n", recurrence=2))
    # Stream 0's pass 2 (id 4) without its pass 1 (id 2): the re-entry rule names it.
    with pytest.raises(ScheduleError, match="0F4 depends on 1F2, which no device runs"):
        check_schedule(from_csv("0F0,0F1,0F4\n1F0,1F1,1F4\n", recurrence=2))


def test_a_pass_ordered_before_its_previous_pass_deadlocks():
    # Device 0 runs pass 1 of stream 0 (id 2) before pass 0 of stream 0 went round.
    with pytest.raises(ScheduleError, match="0F2"):
        check_schedule(from_csv("0F2,0F0,0F1,0F3\n1F0,1F1,1F2,1F3\n", recurrence=2))


def test_recurrence_and_passes_are_refused_where_they_do_not_apply():
    with pytest.raises(ScheduleError, match="recurrence 2 cycles forward passes"):
        from_csv("0F0,0B0\n1F0,1B0\n", recurrence=2)
    with pytest.raises(ScheduleError, match="passes: gpipe runs each micro-batch once"):
        build_schedule("gpipe", 2, 2, passes=3)
    with pytest.raises(ScheduleError, match="passes: every stream runs at least one pass"):
        decode(2, 2, (1, 0))
    with pytest.raises(ScheduleError, match="pass_class: need one cost class per micro-batch"):
        cost = StageCost(1.0, 0.0, 0.0)
        Workload(decode(2, 2, 2), (cost, cost), uniform_network(2), pass_class=(0,), pass_stages=((cost, cost),))
