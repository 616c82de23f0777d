"""The schedule IR against torch's own action format, and the checker's error messages."""
import pytest
from hypothesis import given, settings, strategies as st

from simulator import Action, ScheduleError, build_schedule, check_schedule, from_csv, to_csv
from simulator.ir import make_schedule

SCHEDULE_ARGS = [("gpipe", 4, 8, 1), ("1f1b", 4, 8, 1), ("interleaved", 4, 8, 2), ("zb-h1", 4, 8, 1),
                 ("zb-h2", 4, 8, 1), ("zb-v", 4, 8, 2)]


@pytest.mark.parametrize("name,p,m,v", SCHEDULE_ARGS)
def test_csv_export_is_parsed_by_torch_to_the_same_actions(name, p, m, v):
    torch_schedules = pytest.importorskip("torch.distributed.pipelining.schedules")
    schedule = build_schedule(name, p, m, v)
    rows = [line.split(",") for line in to_csv(schedule).strip().split("\n")]
    assert len(rows) == p
    for device, row in enumerate(rows):
        for cell, ours in zip(row, schedule.device_actions[device]):
            theirs = torch_schedules._Action.from_str(cell)
            assert (theirs.stage_index, theirs.computation_type.value, theirs.microbatch_index) == tuple(ours)


@pytest.mark.parametrize("name,p,m,v", SCHEDULE_ARGS)
def test_csv_round_trip(name, p, m, v):
    schedule = build_schedule(name, p, m, v)
    back = from_csv(to_csv(schedule))
    assert back.device_actions == schedule.device_actions
    assert back.stage_to_device == schedule.stage_to_device
    assert back.num_microbatches == m


def test_csv_skips_idle_cells_like_torch():
    schedule = from_csv("0F0,,0B0\n,1F0,1B0\n")
    assert schedule.device_actions == ((Action(0, "F", 0), Action(0, "B", 0)), (Action(1, "F", 0), Action(1, "B", 0)))
    check_schedule(schedule)


def test_action_text_form():
    assert str(Action(2, "F", 0)) == "2F0"
    assert Action.parse("1I3") == Action(1, "I", 3)
    with pytest.raises(ScheduleError, match="'2X0'"):
        Action.parse("2X0")


def test_broken_csv_names_the_offending_action():
    # Device 1 runs its backward before its forward.
    with pytest.raises(ScheduleError, match=r"device 1: action 1B0 .* runs before 1F0"):
        check_schedule(from_csv("0F0,0B0\n1B0,1F0\n"))


def test_deadlock_names_each_waiting_device():
    # Device 0 waits for 1B0 before it sends 0F1, which device 1 needs before it runs 1B0: a cycle.
    csv_text = "0F0,0B0,0F1,0B1\n1F1,1F0,1B0,1B1\n"
    with pytest.raises(ScheduleError, match=r"deadlock: device 0 waits at 0B0 for 1B0; device 1 waits at 1F1 for 0F1"):
        check_schedule(from_csv(csv_text))


def test_missing_backward_is_named():
    with pytest.raises(ScheduleError, match=r"device 1: missing backward 1B0"):
        check_schedule(from_csv("0F0,0B0\n1F0\n"))


def test_i_without_w_is_named():
    with pytest.raises(ScheduleError, match=r"device 0: missing backward 0W0"):
        check_schedule(from_csv("0F0,0I0\n"))


def test_duplicate_action_is_named():
    with pytest.raises(ScheduleError, match=r"0F0 appears 2 times"):
        check_schedule(from_csv("0F0,0F0,0B0\n"))


def test_stage_on_two_rows_is_rejected():
    with pytest.raises(ScheduleError, match="stage 0 already runs on device 0"):
        from_csv("0F0,0B0\n0F1,0B1\n")


@settings(max_examples=60, deadline=None)
@given(st.lists(st.sampled_from(["0F0", "0B0", "1F0", "1B0", "0F1", "0B1", "1F1", "1B1"]), min_size=0, max_size=8))
def test_shuffled_device_rows_either_pass_or_fail_with_a_named_action(cells):
    # Whatever order a user writes, the checker either accepts or names a device and an action.
    row0 = [c for c in cells if c.startswith("0")]
    row1 = [c for c in cells if c.startswith("1")]
    text = ",".join(row0) + "\n" + ",".join(row1) + "\n"
    try:
        schedule = from_csv(text)
        check_schedule(schedule)
    except ScheduleError as err:
        assert "device" in str(err) or "stage" in str(err) or "no actions" in str(err)
