"""validation/idle_breakdown.py: the bubble error of a report split by re-timing the calibrated simulation
with what the run measured (tests on a hand-built timeline and on a recorded run)."""
import json
import statistics
import sys

import pytest

pytest.importorskip("numpy")

from simulator.ir import Action  # noqa: E402
from simulator.timeline import OpRecord, Timeline, TransferRecord  # noqa: E402

from reliability import REPO  # noqa: E402  (tests/ is on sys.path)

sys.path.insert(0, str(REPO / "validation"))
import idle_breakdown  # noqa: E402


def test_the_gap_before_an_op_is_what_is_left_of_its_idle_time_after_its_wait_for_input():
    """Rank 1: 1F0 [0, 1]; 1F1's input arrives at 1.2 and 1F1 starts at 1.5: 0.2 waited, 0.3 of gap. 1B0
    starts 0.1 after 1F1 ends with no input to wait for: 0.1 of gap. Numbers by hand."""
    a = Action.parse
    timeline = Timeline(2, [OpRecord(1, a("1F0"), 0.0, 1.0), OpRecord(1, a("1F1"), 1.5, 2.0),
                            OpRecord(1, a("1B0"), 2.1, 3.0), OpRecord(0, a("0F1"), 0.0, 1.1)],
                        [TransferRecord(0, 1, a("0F1"), a("1F1"), 1.1, 1.2, 64.0)])
    gaps = idle_breakdown.gaps_before(timeline)
    assert gaps == pytest.approx({"1F1": 0.3, "1B0": 0.1})


def test_a_recorded_run_ends_at_its_measurement_and_starts_at_its_prediction():
    """The recorded ZB-V run (validation/records): the last column is the median of the record's own measured
    iterations' bubbles and times as the report stored them; the first is the record re-predicted, as the
    records test re-predicts it; every column is a bubble fraction and a positive time."""
    record = json.loads((REPO / "validation" / "records" / "cpu-gloo-tiny-zb-v-p2.json").read_text())
    base = REPO / "validation" / record["run"]["base_dir"]
    cells = idle_breakdown.breakdown(record, base)
    assert list(cells) == list(idle_breakdown.COLUMNS)
    runs = record["measured"]["iterations"]
    assert cells["measured"][0] == pytest.approx(statistics.median(r["bubble_fraction"] for r in runs), abs=1e-9)
    assert cells["measured"][1] == pytest.approx(record["measured"]["iteration_time"], rel=1e-9)
    from pipeplan.validation import repredict
    error = repredict(record, base)["point"]  # the mean-time simulation (the prediction is the samples' median)
    assert 100 * (cells["calibrated"][0] - record["measured"]["bubble_fraction"]) == pytest.approx(error["bubble_points"])
    assert all(0 <= b < 1 and t > 0 for b, t in cells.values())
