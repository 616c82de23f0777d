"""A search that runs out of time says so; it never reports "no plan fits" for want of time."""
import subprocess
import sys
import time
from pathlib import Path

import pytest

import pipeplan
from pipeplan.errors import OutOfTime
from pipeplan.planner.baselines import megatron_uniform
from pipeplan.planner.infeasible import explain_infeasible, fits_at

REPO = Path(__file__).resolve().parents[1]


def test_the_uniform_split_fits_so_nothing_may_claim_otherwise():
    # The witness the tests below lean on: llama3-8b on 8 H100s, 1F1B, b = 1, Megatron's uniform split,
    # simulated: it fits with room to spare, so "no plan fits" would be false.
    plan = pipeplan.Plan(model="llama3-8b", cluster="dgx-h100", schedule="1f1b", pp=8, num_microbatches=64,
                         microbatch_size=1, layers_per_stage=megatron_uniform(pipeplan.load_model("llama3-8b"), 8))
    result = pipeplan.simulate("llama3-8b", "dgx-h100", plan)
    assert result.fits and max(result.peak_memory) < 0.95 * 80e9  # 61.7 GB on the first device


def test_solves_without_time_are_reported_as_out_of_time_not_as_no_fit():
    # 1e-9 s per CP-SAT solve: no candidate gets a solution. Before, this said "no plan fits llama3-8b ...
    # the leanest split needs 32.3 GB per GPU, i.e. GPUs of at least 34.0 GB" on 80 GB GPUs.
    with pytest.raises(OutOfTime) as err:
        pipeplan.optimize("llama3-8b", "dgx-h100", global_batch=64, pp=8, schedules=["1f1b"], microbatch_sizes=[1],
                          solver_time_limit=1e-9)
    message = str(err.value)
    assert "no plan fits" not in message and "in the time given" in message and "--solver-time-limit" in message
    assert "1 of 1 candidates" in message  # 1F1B, b = 1, m = 64: one candidate


def test_a_whole_search_out_of_time_answers_with_the_first_fitting_screen_and_says_so():
    result = pipeplan.optimize("llama3-8b", "dgx-h100", global_batch=64, gpus=8, tp=1, schedules=["1f1b"],
                               microbatch_sizes=[1], solver_time_limit=1e-9, time_limit=0.01)
    assert result.timed_out and result.source == "screen" and result.chosen.result.fits
    assert {r.status for r in result.layouts} == {"TIME LIMIT"}  # no layout was searched in full
    assert "NO FIT" not in {r.status for r in result.layouts}


def test_the_cli_says_out_of_time_in_one_line_with_exit_2():
    out = subprocess.run([sys.executable, "-m", "pipeplan", "optimize", "--model", "llama3-8b", "--pp", "8",
                          "--global-batch", "64", "--schedules", "1f1b", "--microbatch-sizes", "1",
                          "--solver-time-limit", "1e-9"], capture_output=True, text=True, cwd=REPO, timeout=300)
    assert out.returncode == 2 and out.stderr.count("\n") == 1 and "Traceback" not in out.stderr
    assert "no plan that fits was found in the time given" in out.stderr


def test_what_would_fit_stops_at_the_deadline_and_says_it_does_not_know():
    # llama3-70b does not fit on 8 x 80 GB at 1F1B (a 16-bit weight + 16-byte Adam state alone is
    # 70.6e9 x 18 / 8 = 159 GB per GPU); with the deadline already past, no solve starts and the advice
    # says the time ran out instead of guessing a pipeline depth.
    model, cluster = pipeplan.load_model("llama3-70b"), pipeplan.load_cluster("dgx-h100")
    began = time.perf_counter()
    assert fits_at(model, cluster, 16, 1, 16, 8192, False, 0.05, deadline=began - 1) is None
    text = explain_infeasible(model, cluster, 8, 1, 16, 8192, 0.05, False, list(range(8)), deadline=began - 1)
    assert time.perf_counter() - began < 1.0
    assert text.startswith("no plan fits llama3-70b on pp = 8 GPUs") and "time limit ran out" in text
    assert "--pp" not in text


def _clock_run_by_simulations(monkeypatch):
    """The planner's clock, advanced by each simulation (1 s per 1,000 actions) and by nothing else, so the test
    does not depend on the machine's speed; every simulation is recorded as (start, end on that clock, fits
    with the 5 % headroom)."""
    from pipeplan.planner import clock, starts

    now, simulations = [0.0], []
    real = starts.simulate

    def simulate(*args, **kwargs):
        started = now[0]
        result = real(*args, **kwargs)
        now[0] += result.resolved.schedule.num_actions() / 1000
        simulations.append((started, now[0], max(result.peak_memory) <= 0.95 * min(result.sim.capacity)))
        return result

    monkeypatch.setattr(clock, "now", lambda: now[0])
    monkeypatch.setattr(starts, "simulate", simulate)
    return simulations


SEARCHES = {"whole": dict(gpus=8), "pinned": dict(pp=8)}  # all layouts of 8 GPUs; one layout (pp = 8)


@pytest.fixture(scope="module")
def unlimited():
    """How long each search takes on that clock without a limit."""
    total = {}
    with pytest.MonkeyPatch.context() as monkeypatch:
        for name, pins in SEARCHES.items():
            simulations = _clock_run_by_simulations(monkeypatch)
            pipeplan.optimize("llama3-8b", "dgx-h100", global_batch=64, solver_time_limit=0.5, **pins)
            total[name] = simulations[-1][1]
    return total


@pytest.mark.parametrize("search", SEARCHES)
@pytest.mark.parametrize("share", [0.3, 0.8])
def test_past_a_fitting_plan_no_simulation_runs_past_the_deadline(monkeypatch, unlimited, search, share):
    """The whole search (its layouts) and a pinned layout's search (pp = 8), cut at 30 % and 80 % of what they
    take without a limit: once a fitting plan was simulated, every simulation started is one that ends by the
    deadline at the pace simulations have shown so far (here exact: the clock runs by the simulations' sizes),
    so none ends more than its data-parallel ops (not in the estimate, under 1 s here) past it; before a
    fitting plan exists the search goes on (it never answers "no plan fits" for want of time)."""
    limit = share * unlimited[search]
    simulations = _clock_run_by_simulations(monkeypatch)
    result = pipeplan.optimize("llama3-8b", "dgx-h100", global_batch=64, solver_time_limit=0.5, time_limit=limit,
                               **SEARCHES[search])
    assert result.timed_out and max(result.result.peak_memory) <= 0.95 * 80e9
    for i, (started, ended, _) in enumerate(simulations):
        if any(fits for _, _, fits in simulations[:i]):
            assert ended <= limit + 1.0, f"simulation {i}: {started:.1f}-{ended:.1f} s past the {limit:.1f} s limit"
    assert simulations[-1][1] <= limit + 1.0 < unlimited[search]
