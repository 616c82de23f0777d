"""A simulated timeline builds its records when first read; it must behave as the plain Timeline it stands for."""
import copy
import json
import pickle

from simulator import Timeline, build_schedule, simulate, uniform_workload
from simulator.records import SimulatedTimeline


def _result():
    # 1F1B on 3 devices, 4 micro-batches: 3 x 4 x 2 = 24 ops; 2 boundaries x 4 micro-batches x 2
    # directions = 16 transfers (hand count).
    return simulate(uniform_workload(build_schedule("1f1b", 3, 4), 1.0, 1.0, 1.0, comm=0.5))


def test_the_records_count_what_the_schedule_holds():
    timeline = _result().timeline
    assert isinstance(timeline, SimulatedTimeline)
    assert len(timeline.ops) == 24 and len(timeline.transfers) == 16


def test_it_equals_its_json_round_trip_both_ways():
    timeline = _result().timeline
    again = Timeline.from_dict(json.loads(json.dumps(timeline.to_dict())))
    assert type(again) is Timeline
    assert again == timeline and timeline == again
    again.ops = again.ops[1:]
    assert again != timeline and timeline != again


def test_pickled_and_copied_it_is_a_plain_timeline_with_the_same_records():
    timeline = _result().timeline
    for other in (pickle.loads(pickle.dumps(timeline)), copy.deepcopy(timeline), copy.copy(timeline)):
        assert type(other) is Timeline
        assert other.ops == timeline.ops and other.transfers == timeline.transfers and other.meta == timeline.meta


def test_records_and_meta_can_be_replaced_as_on_a_timeline():
    result = _result()
    result.timeline.meta["label"] = "x"
    result.timeline.ops = result.timeline.ops[:2]
    result.timeline.transfers = []
    assert result.timeline.meta["label"] == "x"
    assert len(result.timeline.ops) == 2 and result.timeline.transfers == []
    assert result.summary()["num_ops"] == 2
