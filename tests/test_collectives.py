"""The alpha-beta ring formulas against hand counts."""
import pytest

from pipeplan.collectives import ALL_GATHER, ALL_REDUCE, REDUCE_SCATTER, bus_bytes, ring_seconds


def test_ring_all_reduce_by_hand():
    # 8 ranks, 1 GB each, 50 GB/s, 5 us: 2·7/8·1e9/50e9 + 2·7·5e-6 = 0.035 + 0.00007 s.
    assert ring_seconds(ALL_REDUCE, 8, 1e9, 50e9, 5e-6) == pytest.approx(0.035 + 70e-6, rel=1e-12)
    # Reduce-scatter and all-gather each move half of that and take half the steps.
    assert ring_seconds(REDUCE_SCATTER, 8, 1e9, 50e9, 5e-6) == pytest.approx(0.0175 + 35e-6, rel=1e-12)
    assert ring_seconds(ALL_GATHER, 8, 1e9, 50e9, 5e-6) == pytest.approx(0.0175 + 35e-6, rel=1e-12)


def test_bus_bytes_follow_nccl_tests_factors_and_one_rank_does_nothing():
    assert bus_bytes(ALL_REDUCE, 4, 100.0) == 150.0      # 2(n-1)/n
    assert bus_bytes(REDUCE_SCATTER, 4, 100.0) == 75.0   # (n-1)/n
    assert ring_seconds(ALL_REDUCE, 1, 1e9, 1.0, 1.0) == 0.0
