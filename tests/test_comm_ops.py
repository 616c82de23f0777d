"""Communication actions (UNSHARD, RESHARD, REDUCE_GRAD) against hand counts, the oracle and torch's parser.

The workloads are 1F1B at p = 2, m = 2 with F = 1, B = 2 (I = W = 1), forward sends of no bytes,
backward sends of 2 bytes over 2 B/s links, each device's link leaving through port nic<device>.
Without communication actions, worked out by hand:
  dev1: F0 [1,2]  B0 [2,4]  F1 [4,5]  B1 [5,7]      (the gradient of B0 reaches dev0 at 5)
  dev0: F0 [0,1]  F1 [1,2]  B0 [5,7]  B1 [8,10]     (alone, the B1 gradient travels [7,8])
"""
import math

import pytest

from engine_oracle import oracle_times  # tests/ is on sys.path
from simulator import Action, Collective, Link, Network, ScheduleError, StageCost, Workload, simulate
from simulator import check_schedule, from_csv, to_csv
from simulator.ir import make_schedule


def _schedule(extra_first=((), ()), extra_last=((), ())):
    dev0 = [Action(0, "F", 0), Action(0, "F", 1), Action(0, "B", 0), Action(0, "B", 1)]
    dev1 = [Action(1, "F", 0), Action(1, "B", 0), Action(1, "F", 1), Action(1, "B", 1)]
    rows = [list(extra_first[d]) + acts + list(extra_last[d]) for d, acts in enumerate((dev0, dev1))]
    return make_schedule(rows, [0, 1], 2, "1f1b")


def _workload(schedule, collective_ports=("dp0", "dp1"), gathered=0.0):
    stages = []
    for s in range(2):
        path = Link(0.5, 2.0, (collective_ports[s],))
        stages.append(StageCost(1.0, 1.0, 1.0, send_forward_bytes=0.0, send_backward_bytes=2.0,
                                activation_bytes=3.0, weight_grad_bytes=1.0, gathered_bytes=gathered,
                                collectives=(Collective("REDUCE_GRAD", 4.0, path), Collective("UNSHARD", 2.0, path))))
    links = tuple(tuple(Link(0.0, 2.0, (f"nic{a}",)) for b in range(2)) for a in range(2))
    capacity = {"nic0": 2.0, "nic1": 2.0, "dp0": 2.0, "dp1": 2.0}
    return Workload(schedule, tuple(stages), Network(links, capacity))


def _times(result):
    return {str(o.action): (o.start, o.end) for o in result.timeline.ops}


def test_gradient_reduction_overlaps_nothing_and_ends_the_iteration():
    # REDUCE_GRAD(s) waits for the stage's last backward and then takes 0.5 + 4 / 2 = 2.5 alone.
    w = _workload(_schedule(extra_last=([Action(0, "REDUCE_GRAD", None)], [Action(1, "REDUCE_GRAD", None)])))
    for force in (False, True):
        result = simulate(w, force_event_loop=force)
        times = _times(result)
        assert times["0B1"] == (8.0, 10.0)
        assert times["1REDUCE_GRAD"] == (7.0, 9.5)
        assert times["0REDUCE_GRAD"] == (10.0, 12.5)
        assert result.iteration_time == 12.5
        assert result.busy_time == [6.0, 6.0]  # communication is not busy time
        assert result.bubble_fraction == pytest.approx(1 - 12 / 25)


def test_a_collective_shares_its_port_with_a_transfer_max_min_fairly():
    # REDUCE_GRAD(1) and the B1 gradient both leave through nic1 at t = 7: 1 B/s each until the
    # 2-byte gradient is through at 9; the collective's last 2 bytes then take 1 s, plus 0.5.
    w = _workload(_schedule(extra_last=([Action(0, "REDUCE_GRAD", None)], [Action(1, "REDUCE_GRAD", None)])),
                  collective_ports=("nic0", "nic1"))
    result = simulate(w)
    times = _times(result)
    assert times["1REDUCE_GRAD"] == (7.0, 10.5)
    assert times["0B1"] == (9.0, 11.0)
    assert times["0REDUCE_GRAD"] == (11.0, 13.5)
    gradient = next(t for t in result.timeline.transfers if str(t.action) == "1B1")
    assert (gradient.start, gradient.end) == (7.0, 9.0)
    assert result.iteration_time == 13.5


def test_unshard_gates_the_stage_and_holds_the_gathered_parameters_until_reshard():
    # UNSHARD takes 0.5 + 2 / 2 = 1.5 before the first forward; RESHARD frees the 10 bytes at its end.
    first = ([Action(0, "UNSHARD", None)], [Action(1, "UNSHARD", None)])
    last = ([Action(0, "RESHARD", None)], [Action(1, "RESHARD", None)])
    result = simulate(_workload(_schedule(first, last), gathered=10.0))
    times = _times(result)
    assert times["0UNSHARD"] == (0.0, 1.5)
    assert times["0F0"] == (1.5, 2.5)
    assert times["1F0"] == (2.5, 3.5)
    assert times["0RESHARD"] == (11.5, 11.5)
    times0, levels0 = result.memory[0]
    assert levels0[1] == 10.0 and times0[1] == 0.0  # allocated when UNSHARD starts
    assert levels0[-1] == 0.0 and times0[-1] == 11.5  # freed when RESHARD ends
    assert result.peak_memory[0] == 10.0 + 2 * 3.0  # two micro-batches in flight on device 0


def test_the_engine_agrees_with_the_oracle_with_communication_ops():
    first = ([Action(0, "UNSHARD", None)], [Action(1, "UNSHARD", None)])
    last = ([Action(0, "REDUCE_GRAD", None), Action(0, "RESHARD", None)],
            [Action(1, "REDUCE_GRAD", None), Action(1, "RESHARD", None)])
    for ports in (("dp0", "dp1"), ("nic0", "nic1"), ("nic1", "nic1")):
        w = _workload(_schedule(first, last), collective_ports=ports, gathered=4.0)
        times, _ = oracle_times(w)
        for force in (False, True):
            for op in simulate(w, force_event_loop=force).timeline.ops:
                assert math.isclose(op.start, times[op.action][0], abs_tol=1e-12), (ports, op)
                assert math.isclose(op.end, times[op.action][1], abs_tol=1e-12), (ports, op)


def test_a_communication_action_listed_early_waits_on_its_own_stream():
    # REDUCE_GRAD first in device 1's list: its stream waits for the backwards, compute runs on.
    early = _schedule(extra_first=([], [Action(1, "REDUCE_GRAD", None)]))
    check_schedule(early)
    assert _times(simulate(_workload(early)))["1REDUCE_GRAD"] == (7.0, 9.5)


def test_the_checker_names_bad_communication_actions():
    with pytest.raises(ScheduleError, match="frees parameters that no 0UNSHARD gathered"):
        check_schedule(_schedule(extra_last=([Action(0, "RESHARD", None)], [])))
    with pytest.raises(ScheduleError, match="1REDUCE_GRAD appears twice"):
        check_schedule(_schedule(extra_last=([], [Action(1, "REDUCE_GRAD", None)] * 2)))
    with pytest.raises(ScheduleError, match="belongs to stage 1"):
        check_schedule(_schedule(extra_last=([Action(1, "REDUCE_GRAD", None)], [])))


def test_action_text_is_torchs_for_every_kind():
    torch_schedules = pytest.importorskip("torch.distributed.pipelining.schedules")
    for text in ("2F0", "1I3", "0W1", "3B2", "2REDUCE_GRAD", "0UNSHARD", "1RESHARD", "0SEND_F3", "1RECV_B0"):
        ours = Action.parse(text)
        theirs = torch_schedules._Action.from_str(text)
        assert str(ours) == repr(theirs) == text
        assert (ours.stage, ours.kind, ours.microbatch) == (
            theirs.stage_index, theirs.computation_type.value, theirs.microbatch_index)
    for bad in ("2REDUCE_GRAD0", "2F", "F0", "2X0"):
        with pytest.raises(ScheduleError, match="is not of the form"):
            Action.parse(bad)


def test_compute_comms_csv_round_trips_and_simulates_like_compute_only():
    # torch's compute_comms format lists sends and receives; they round-trip, and the engine
    # derives the same transfers from the rules without them.
    text = ("0UNSHARD,0F0,0SEND_F0,0F1,0SEND_F1,0RECV_B0,0B0,0RECV_B1,0B1,0REDUCE_GRAD\n"
            "1UNSHARD,1RECV_F0,1F0,1B0,1SEND_B0,1RECV_F1,1F1,1B1,1SEND_B1,1REDUCE_GRAD\n")
    schedule = from_csv(text)
    assert to_csv(schedule) == text
    plain = from_csv(text.replace("0SEND_F0,", "").replace("0SEND_F1,", "").replace("0RECV_B0,", "")
                     .replace("0RECV_B1,", "").replace("1RECV_F0,", "").replace("1SEND_B0,", "")
                     .replace("1RECV_F1,", "").replace("1SEND_B1,", ""))
    with_p2p, without = simulate(_workload(schedule)), simulate(_workload(plain))
    assert _times(with_p2p) == _times(without)
    assert len(with_p2p.timeline.transfers) == 4


def test_charts_put_communication_ops_on_their_own_lane(tmp_path):
    from pipeplan.charts.gantt import gantt
    from pipeplan.charts.trace import perfetto_trace

    first = ([Action(0, "UNSHARD", None)], [Action(1, "UNSHARD", None)])
    last = ([Action(0, "REDUCE_GRAD", None)], [Action(1, "REDUCE_GRAD", None)])
    result = simulate(_workload(_schedule(first, last), collective_ports=("nic0", "nic1")))
    events = [e for e in perfetto_trace(result.timeline)["traceEvents"] if e["ph"] == "X" and "cat" in e]
    compute_threads = {e["tid"] for e in events if e["cat"] in ("F", "B")}
    comm_threads = {e["tid"] for e in events if e["cat"] in ("UNSHARD", "REDUCE_GRAD")}
    assert len([e for e in events if e["cat"] in ("UNSHARD", "REDUCE_GRAD")]) == 4
    assert compute_threads.isdisjoint(comm_threads)
    gantt(result.timeline, str(tmp_path / "comm.png"))
    assert (tmp_path / "comm.png").stat().st_size > 1000


def test_validate_refuses_communication_actions_in_one_line(tmp_path):
    import json
    import subprocess
    import sys
    from pathlib import Path

    from simulator import build_schedule

    root = Path(__file__).resolve().parents[1]
    rows = to_csv(build_schedule("1f1b", 2, 8)).splitlines()
    (tmp_path / "sched.csv").write_text(rows[0] + ",0REDUCE_GRAD\n" + rows[1] + "\n")
    plan = json.loads((root / "validation/plans/tiny-1f1b-p2.json").read_text())
    plan.update(schedule="custom", schedule_csv="sched.csv", cluster=str(root / "validation/cpu.json"))
    (tmp_path / "plan.json").write_text(json.dumps(plan))
    out = subprocess.run([sys.executable, "-m", "pipeplan", "validate", str(tmp_path / "plan.json")],
                         capture_output=True, text=True, cwd=root, timeout=120)
    assert out.returncode == 2
    assert out.stderr.count("\n") == 1 and "REDUCE_GRAD" in out.stderr and "validator runs F, B, I and W" in out.stderr


def test_blocking_sends_keep_the_sender_until_delivery():
    # Without communication actions, 1F1B p=2 m=2 with blocking sends, by hand (sends of 0 bytes
    # take the 0 latency; gradients take 2 bytes / 2 B/s = 1):
    #   dev0: F0 [0,1] F1 [1,2] B0 [5,7] B1 [9,11]   (B0's and B1's sends go to no one: stage 0)
    #   dev1: F0 [1,2] B0 [2,4] (send [4,5] holds dev1) F1 [5,6] B1 [6,8] (send [8,9])
    from dataclasses import replace

    w = replace(_workload(_schedule()), blocking_sends=True)
    for force in (False, True):
        times = _times(simulate(w, force_event_loop=force))
        assert times["1F1"] == (5.0, 6.0) and times["1B1"] == (6.0, 8.0)
        assert times["0B0"] == (5.0, 7.0) and times["0B1"] == (9.0, 11.0)
    oracle, _ = oracle_times(w)
    assert {str(a): t for a, t in oracle.items()} == _times(simulate(w))


def test_validate_refuses_a_data_parallel_plan_its_cluster_cannot_place_in_one_line(tmp_path):
    """dp = 2 on the 2-GPU CPU cluster asks for 4 ranks: refused before anything starts, naming the placement."""
    import json
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    plan = json.loads((root / "validation/plans/tiny-1f1b-p2.json").read_text())
    plan.update(cluster=str(root / "validation/cpu.json"), dp=2)
    (tmp_path / "plan.json").write_text(json.dumps(plan))
    out = subprocess.run([sys.executable, "-m", "pipeplan", "validate", str(tmp_path / "plan.json")],
                         capture_output=True, text=True, cwd=root, timeout=120)
    assert out.returncode == 2 and out.stderr.count("\n") == 1, out.stderr
    assert "plan.placement" in out.stderr and "lower pp/dp" in out.stderr
