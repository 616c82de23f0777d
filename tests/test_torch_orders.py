"""torch's looped schedules (LoopedBFS, InterleavedZeroBubble, DualPipeV): pipeplan's generators
against the per-rank action lists torch 2.13 generates itself (skipped without torch)."""
import types

import pytest

from simulator import check_schedule, simulate, uniform_workload
from simulator.dualpipe import dualpipe_v
from simulator.ir import from_csv, to_csv
from simulator.torch_orders import interleaved_zb, looped_bfs

schedules = pytest.importorskip("torch.distributed.pipelining.schedules")


def torch_order(cls, p: int, m: int, stages_of_rank0: list[int], num_stages: int) -> dict[int, list[str]]:
    """torch's ``pipeline_order`` (idle steps dropped), built from stand-in stages: the orders need
    only the stage count, group size and rank, no process group."""
    stages = [types.SimpleNamespace(num_stages=num_stages, group_size=p, group_rank=0, stage_index=s,
                                    is_first=s == 0, is_last=s == num_stages - 1, submod=None)
              for s in stages_of_rank0]
    order = cls(stages, m).pipeline_order
    return {rank: [str(a) for a in actions if a is not None] for rank, actions in order.items()}


def matching_ranks(ours, theirs) -> tuple[int, int]:
    """(ranks whose lists are equal, actions compared)."""
    same = sum(theirs[r] == [str(a) for a in ours.device_actions[r]] for r in range(ours.num_devices))
    return same, sum(len(theirs[r]) for r in theirs)


@pytest.mark.parametrize("cls_name, generator", [("ScheduleLoopedBFS", looped_bfs),
                                                 ("ScheduleInterleavedZeroBubble", interleaved_zb)])
def test_looped_orders_are_torch_s(cls_name, generator):
    cls = getattr(schedules, cls_name)
    compared = 0
    for p in range(1, 6):
        for v in range(1, 4):
            for m in sorted({1, p, p + 1, 2 * p, 3 * p, 4 * p + 2}):
                try:
                    theirs = torch_order(cls, p, m, [c * p for c in range(v)], p * v)
                except ValueError:  # torch's rounds rule; ours refuses the same (m, p)
                    with pytest.raises(ValueError):
                        generator(p, m, v)
                    continue
                ours = generator(p, m, v)
                check_schedule(ours)
                assert matching_ranks(ours, theirs)[0] == p, (p, v, m)
                compared += 1
    assert compared >= 70


def test_dualpipe_v_is_torch_s_with_its_overlapped_pairs():
    ranks = actions = 0
    for p in range(1, 7):
        for m in range(2 * p, 2 * p + 7):
            theirs = torch_order(schedules.ScheduleDualPipeV, p, m, [0, 2 * p - 1], 2 * p)
            ours = dualpipe_v(p, m)
            same, n = matching_ranks(ours, theirs)
            assert same == p, (p, m)
            ranks, actions = ranks + same, actions + n
    assert ranks == 147 and actions > 4000
    # p = 4, m = 8, rank 1 as torch prints it: warm-up, I/W pairs, then overlapped F&B's.
    assert [str(a) for a in dualpipe_v(4, 8).device_actions[1][12:16]] == [
        "6W1", "6F3", "(1F6;6B2)OVERLAP_F_B", "(6F4;1B0)OVERLAP_F_B"]


def test_overlapped_pairs_survive_torch_s_csv_and_the_simulator_reads_them():
    schedule = dualpipe_v(3, 8)
    again = from_csv(to_csv(schedule), "dualpipe-v")
    assert again.device_actions == schedule.device_actions and again.stage_to_device == schedule.stage_to_device
    assert simulate(uniform_workload(again)).iteration_time == simulate(uniform_workload(schedule)).iteration_time


def test_looped_bfs_keeps_every_chunk_activation_on_device_0_and_interleaved_zb_1f1b_s_bytes():
    # Hand counts: BFS runs all v·m forwards before any backward; ZB1P's warm-up keeps v·p chunk activations.
    for p, m, v in ((4, 8, 2), (3, 9, 3), (2, 6, 4)):
        t = 1.0 / v
        assert simulate(uniform_workload(looped_bfs(p, m, v), t, t, t)).peak_activations[0] == v * m
        assert max(simulate(uniform_workload(interleaved_zb(p, m, v), t, t, t)).peak_activations) == v * p
