"""What the calibration of ``--runtime torch`` adds for the run's work its replay leaves out, and the garbage
collector around torch's steps (validator.torch_runtime, validator.torch_timing, validator.calibrate); fast
tests, numbers by hand or from torch's own lowering passes."""
import pytest

pytest.importorskip("torch")

from simulator.ir import Action  # noqa: E402
from simulator.schedules import SCHEDULES  # noqa: E402
from validator.calibrate import replay_round  # noqa: E402
from validator.gather import WAITED_S  # noqa: E402
from validator.runtime import OpMark  # noqa: E402
from validator.timing import CpuClock  # noqa: E402
from validator.torch_runtime import collected_between_steps, remote_inputs  # noqa: E402
from validator.torch_timing import wait_lead  # noqa: E402

from test_validate_torch_runtime import LIVE, lowered  # noqa: E402


@pytest.mark.parametrize("p", [2, 4])
@pytest.mark.parametrize("name", LIVE)
def test_torch_waits_for_a_receive_in_exactly_the_ops_the_calibration_adds_a_wait_to(name, p):
    """The calibration adds the cost of torch's wait for a receive to the ops ``remote_inputs`` names:
    one per RECV_F / RECV_B that torch's own lowering posts on the rank, for the op of the same stage
    and micro-batch. Hand count for p = 2 with 8 micro-batches: 1F1B waits in 8 ops per rank (rank 0's
    backwards, rank 1's forwards); interleaved (stages 0, 2 | 1, 3) in 24, three crossing inputs of 8
    each (rank 0: 2F, 0B, 2B; rank 1: 1F, 3F, 1B); ZB-V (stages 0, 3 | 1, 2) in 16, as its hand-offs
    from stage 1 to 2 and back and the loss's turn at stage 3 need no receive (rank 0: 3F, 0I; rank 1:
    1F, 2I)."""
    schedule = SCHEDULES[name].build(p, 8, 2 if name != "1f1b" else None)
    for rank, actions in lowered(schedule).items():
        receives = sorted((a.stage_index, a.microbatch_index, a.computation_type.value == "RECV_F")
                          for a in actions if a.computation_type.value in ("RECV_F", "RECV_B"))
        waiting = sorted((a.stage, a.microbatch, a.kind == "F")
                         for a, inputs in remote_inputs(schedule, rank).items() for _ in inputs)
        assert waiting == receives
        if p == 2:
            assert len(waiting) == {"1f1b": 8, "interleaved": 24, "zb-v": 16}[name]


def test_a_wait_counts_in_its_op_only_when_its_data_was_there():
    """``wait_lead``: the mean of the calibration's waits that returned within WAITED_S (50 us); one that
    took 17 ms waited for data in flight, which the run counts as waiting, not in the op."""
    assert WAITED_S == 50e-6
    assert wait_lead([2e-6, 4e-6, 3e-6, 17e-3]) == pytest.approx(3e-6)
    assert wait_lead([50e-6, 10e-6]) == pytest.approx(30e-6)
    assert wait_lead([17e-3]) == 0.0 and wait_lead([]) == 0.0


class _Runner:
    def __init__(self):
        self.losses = []

    def clear(self):
        pass


class _Replayer:
    """A replay's marks on a CPU clock (seconds by hand) and, if given, what the replay left out per op."""

    def __init__(self, waits=None):
        if waits is not None:
            self.replay_waits = waits

    def replay(self):
        return [OpMark(Action.parse("1F0"), 1.0, 3.0), OpMark(Action.parse("1B0"), 3.0, 7.0),
                OpMark(Action.parse("1F1"), 7.0, 9.5)]


def test_calibration_adds_the_replays_left_out_waits_to_the_ops_that_wait():
    """torch's replay says 1F0 and 1F1 wait for a receive in the run (0.25 s each, by hand): their samples
    are 2.25 and 2.75; 1B0 keeps its 4. An executor without ``replay_waits`` (pipeplan's) gets its
    spans as they are."""
    left_out = {Action.parse("1F0"): 0.25, Action.parse("1F1"): 0.25}
    torch_round = replay_round(_Replayer(left_out), {1: _Runner()}, CpuClock())
    assert torch_round[1]["F"] == [2.25, 2.75] and torch_round[1]["B"] == [4.0]
    plain = replay_round(_Replayer(), {1: _Runner()}, CpuClock())
    assert plain[1]["F"] == [2.0, 2.5] and plain[1]["B"] == [4.0]


class _Cycle:
    pass


def test_no_garbage_collection_inside_a_step_and_its_garbage_collected_after():
    """As torchtitan runs torch's runtime: the collector is off inside (``gc.isenabled``), a reference cycle
    made there outlives the block's allocations and is gone once it ends (a weak reference to it dies);
    a caller that had the collector off keeps it off, its cycle uncollected."""
    import gc
    import weakref

    def cycle():
        node = _Cycle()
        node.self = node
        return weakref.ref(node)

    assert gc.isenabled()
    with collected_between_steps():
        assert not gc.isenabled()
        ref = cycle()
        kept = [[] for _ in range(5000)]  # far past generation 0's threshold (700): collections if enabled
        assert ref() is not None and len(kept) == 5000
    assert gc.isenabled() and ref() is None
    gc.disable()
    try:
        with collected_between_steps():
            ref = cycle()
        assert not gc.isenabled() and ref() is not None
    finally:
        gc.enable()
        gc.collect()
