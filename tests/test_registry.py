"""Every schedule registry entry agrees with what its generator builds and the simulator measures."""
import dataclasses

import pytest

from pipeplan.planner.candidates import enumerate_candidates, schedule_variants
from simulator import SCHEDULES, ScheduleError, build_schedule, check_schedule, simulate, uniform_workload

ENTRIES = list(SCHEDULES.values())
IDS = list(SCHEDULES)


def chunk_counts(entry):
    """The chunk counts an entry claims to run: its default and the planner's."""
    return sorted({entry.default_chunks, *entry.planner_chunks})


def uniform_run(entry, p, m, v):
    """F = I = W = 1 per device's work, so each of its v stages takes 1/v; no communication."""
    t = 1.0 / v
    return simulate(uniform_workload(entry.build(p, m, v), t, t, t))


def test_names_are_keys_and_what_the_generators_call_their_schedules():
    for name, entry in SCHEDULES.items():
        assert entry.name == name == name.lower().replace("_", "-")
        assert entry.display_name
        assert build_schedule(name.upper().replace("-", "_"), 2, 4).name == name


def test_registry_and_entries_are_read_only():
    with pytest.raises(TypeError):
        SCHEDULES["mine"] = ENTRIES[0]  # type: ignore[index]
    with pytest.raises(dataclasses.FrozenInstanceError):
        ENTRIES[0].default_chunks = 3  # type: ignore[misc]


@pytest.mark.parametrize("entry", ENTRIES, ids=IDS)
def test_accepted_combinations_generate_and_rejected_ones_raise_the_rule_s_error(entry):
    for p in range(0, 6):
        for m in range(0, 11):
            for v in range(0, 5):
                if entry.accepts(p, m, v):
                    schedule = entry.build(p, m, v)
                    check_schedule(schedule)
                    assert (schedule.num_devices, schedule.num_microbatches, schedule.chunks) == (p, m, v)
                else:
                    with pytest.raises(ScheduleError) as rule_error:
                        entry.check(p, m, v)
                    with pytest.raises(ScheduleError) as build_error:
                        entry.build(p, m, v)
                    assert str(build_error.value) == str(rule_error.value)


@pytest.mark.parametrize("entry", ENTRIES, ids=IDS)
def test_default_and_planner_chunks_are_accepted(entry):
    assert entry.planner_chunks
    for v in chunk_counts(entry):
        assert entry.accepts(4, 8, v)
    assert entry.build(4, 8).chunks == entry.default_chunks


WITH_BUBBLE = [e for e in ENTRIES if e.bubble is not None]


@pytest.mark.parametrize("entry", WITH_BUBBLE, ids=[e.name for e in WITH_BUBBLE])
@pytest.mark.parametrize("p", [2, 3, 4, 5, 8])
def test_closed_form_bubble_is_the_simulated_bubble(entry, p):
    # Exact forms hold for m >= 2p; a bound (ZB-V's fill) is never beaten and is reached at p = 2, 3, 4, 8.
    for v in chunk_counts(entry):
        for m in (2 * p, 2 * p + 1, 3 * p, 4 * p):
            if entry.accepts(p, m, v):
                simulated = uniform_run(entry, p, m, v).bubble_fraction
                closed = entry.bubble.fraction(p, m, v)
                if entry.bubble.exact or p in (2, 3, 4, 8):
                    assert simulated == pytest.approx(closed, abs=1e-9), (p, m, v)
                else:
                    assert simulated >= closed - 1e-9, (p, m, v)


@pytest.mark.parametrize("entry", ENTRIES, ids=IDS)
@pytest.mark.parametrize("p", [2, 4, 8])
def test_fill_weights_give_the_idle_time_of_uniform_stages(entry, p):
    # Each device works 3m; the rest of the iteration is the fill the planner prices as (p-1)·φ,
    # φ = a·F + b·I + c·W with F = I = W = 1/v per stage; the closed form says the same.
    if entry.fill_weights is None:
        # Out of the planner, saying why: no closed form, or a forward-only schedule (no training fill to price).
        assert (entry.bubble is None or entry.forward_only) and entry.default_note
        return
    a, b, c = entry.fill_weights
    for v in chunk_counts(entry):
        m = 4 * p
        phi = (a + b + c) / v
        assert uniform_run(entry, p, m, v).iteration_time - 3 * m == pytest.approx((p - 1) * phi, abs=1e-9)
        if entry.bubble is not None:
            fraction = entry.bubble.fraction(p, m, v)
            assert 3 * m * fraction / (1 - fraction) == pytest.approx((p - 1) * phi, abs=1e-9)


def test_series_styles_tell_the_schedules_apart():
    styles = [(e.style.color, e.style.marker) for e in ENTRIES]
    assert len(set(styles)) == len(styles)


def test_torch_names_are_torch_schedule_classes():
    schedules = pytest.importorskip("torch.distributed.pipelining.schedules")
    for entry in ENTRIES:
        if entry.torch_name is None:
            continue
        cls = schedules.get_schedule_class(entry.torch_name)
        assert cls.__name__ == "Schedule" + entry.torch_name
        # torch's single-stage schedules hold one stage per rank, like our one-chunk ones.
        assert issubclass(cls, schedules.PipelineScheduleSingle) == (entry.default_chunks == 1)


def test_planner_variants_are_the_entries_planner_chunks():
    assert schedule_variants(None) == [(e.name, v) for e in ENTRIES for v in e.planner_chunks
                                       if e.default_note is None]
    assert schedule_variants(["ZB_V", "zb-v"]) == [("zb-v", 2)]
    assert schedule_variants(["looped-bfs"]) == [("looped-bfs", 2), ("looped-bfs", 4)]  # named: planned


def test_the_default_set_is_the_six_documented_schedules_and_the_rest_say_why_not():
    # zb-1p and zb-2p are ordered per simulated split, too slow for the default search (their note says so).
    from simulator.schedules import DEFAULT_SCHEDULES
    assert DEFAULT_SCHEDULES == ("gpipe", "1f1b", "interleaved", "zb-h1", "zb-h2", "zb-v")
    for entry in ENTRIES:
        assert (entry.name in DEFAULT_SCHEDULES) == (entry.default_note is None)
    from pipeplan.errors import SpecError
    with pytest.raises(SpecError, match="cannot price v-min: no closed-form fill"):
        schedule_variants(["v-min"])


def test_planner_proposes_exactly_what_the_rules_accept():
    pp, batch = 3, 14  # m = 7 and 14 break interleaved's rounds rule, the others run everything
    found = enumerate_candidates(64, pp, batch, schedule_variants(None))
    proposed = {(c.schedule, c.chunks, c.num_microbatches) for c in found}
    expected = {(name, v, batch // b) for name, v in schedule_variants(None)
                for b in range(1, batch + 1) if batch % b == 0 and SCHEDULES[name].accepts(pp, batch // b, v)}
    assert proposed == expected
    assert ("1f1b", 1, 7) in proposed and ("interleaved", 2, 7) not in proposed
