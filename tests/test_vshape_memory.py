"""V-Half and V-Min against "Pipeline Parallelism with Controllable Memory" (Qi et al., NeurIPS'24,
arXiv 2405.15362), its table: activation memory (p+2)//2 and (p+4)//3 micro-batches against 1F1B's p,
bubble rate about p/2m and 2p/3m against 1F1B's p/m at F = B = W."""
import pytest

from simulator import check_schedule, simulate, uniform_workload
from simulator.kinds import COMPUTE_KINDS
from simulator.memory import live_count_profiles
from simulator.vshape_memory import v_half, v_min

PAPER_MEMORY = {v_min: lambda p: (p + 4) // 3, v_half: lambda p: (p + 2) // 2}
PAPER_RATE = {v_min: lambda p, m: 2 * p / (3 * m), v_half: lambda p, m: p / (2 * m)}


def run(schedule):
    # F = B = W = 1 per device's work, 1/2 per chunk: one micro-batch of 1F1B's activations = 2 chunks.
    return simulate(uniform_workload(schedule, 0.5, 0.5, 0.5))


def paper_bubble_rate(result, m: int) -> float:
    """The paper's rate: 1 − (F+B+W)·m / the longest device span (first op's start to last op's end)."""
    spans = []
    for d in range(result.timeline.num_devices):
        ops = [o for o in result.timeline.ops if o.device == d]
        spans.append(max(o.end for o in ops) - min(o.start for o in ops))
    return 1 - 3 * m / max(spans)


@pytest.mark.parametrize("generator", [v_min, v_half], ids=["v-min", "v-half"])
@pytest.mark.parametrize("p", [2, 3, 4, 5, 6, 7, 8])
def test_peak_activations_are_the_paper_s(generator, p):
    for m in (2 * p, 4 * p + 1):
        schedule = generator(p, m)
        check_schedule(schedule)
        assert schedule.kinds_present <= set(COMPUTE_KINDS)  # F/I/W only: the validator runs it
        result = run(schedule)
        assert max(result.peak_activations) == 2 * PAPER_MEMORY[generator](p), (p, m)
        # The count vectors the planner reads give the same peak.
        assert max(sum(full + held for full, held in vec) for prof in live_count_profiles(schedule) for vec in prof) \
            == 2 * PAPER_MEMORY[generator](p)


@pytest.mark.parametrize("p", [4, 6, 8])
def test_bubble_rates_stay_under_the_paper_s_and_keep_its_order(p):
    for m in (2 * p, 4 * p, 8 * p):
        rates = {g: paper_bubble_rate(run(g(p, m)), m) for g in (v_min, v_half)}
        for g, rate in rates.items():
            assert 0 < rate <= PAPER_RATE[g](p, m)
        assert rates[v_half] < rates[v_min] < (p - 1) / m  # 1F1B's rate at F = B = W: 3(p-1) of 3m


@pytest.mark.parametrize("generator", [v_min, v_half], ids=["v-min", "v-half"])
def test_the_building_block_repeats_so_the_bubble_does_not_grow_with_m(generator):
    p = 6
    idle = {m: run(generator(p, m)).iteration_time - 3 * m for m in (2 * p, 3 * p, 5 * p, 10 * p)}
    assert len(set(idle.values())) == 1, idle
