"""pipeplan.bands against closed forms: what a band must be when the spread is known.

* no spread: every sample is the point prediction, so the band is that number exactly;
* one device running n equal ops of t seconds, each with independent normal noise of relative sigma s:
  the iteration is a sum of n independent normals, n·t +- 1.645·sqrt(n)·s·t for 90 %;
* a common factor exp(s·Z) alone on every op and transfer: the iteration is T·exp(s·Z), whose 90 %
  interval is T·exp(-+1.645·s);
* paired sampling: a plan against itself is exactly 1.000x in every sample, and under a common factor
  alone two plans' ratio is their point ratio in every sample, though their own bands overlap widely.
"""
import json
import math
from pathlib import Path

import numpy as np
import pytest

import pipeplan
from pipeplan.bands import (NO_SPREAD, ClassSpread, Spread, compare, estimate_spread, plan_band, sample_plan)
from pipeplan.bands.spread import OP_CLASSES, calibrated_spread, probe_spread
from pipeplan.bands.terms import layer_parts, op_terms
from pipeplan.dataparallel import DataParallelOptions
from pipeplan.cluster import load_cluster
from pipeplan.costs import layer_work, price
from pipeplan.errors import SpecError
from pipeplan.model import load_model
from pipeplan.profile import Profile, StageProfile

REPO = Path(__file__).resolve().parents[1]
CPU = str(REPO / "validation" / "cpu.json")
Z90 = 1.6448536269514722  # the standard normal's 95th percentile


def tiny_plan(**changes):
    plan = pipeplan.Plan(model="tiny", cluster=CPU, schedule="1f1b", pp=2, num_microbatches=8, microbatch_size=4,
                         layers_per_stage=(5, 5))
    return plan.with_(**changes) if changes else plan


def chain_profile(t: float) -> Profile:
    """One stage of the tiny model whose F and B each take ``t`` seconds."""
    return Profile(device="test", backend="gloo", model="tiny", microbatch_size=4, seq_len=64,
                   layers_per_stage=(10,), stages=(StageProfile(t, t, t / 2, t / 2),))


@pytest.mark.parametrize("result", [
    lambda: pipeplan.simulate(plan=tiny_plan()),
    lambda: pipeplan.simulate(plan=tiny_plan(schedule="zb-v", chunks=2, layers_per_stage=(3, 2, 2, 3))),
    lambda: pipeplan.simulate("llama3-8b", "dgx-h100", tp=2, dp=2, gpus=16, microbatches=8),
    lambda: pipeplan.simulate(plan=tiny_plan(pp=1, layers_per_stage=(10,)), profile=chain_profile(1e-3)),
], ids=["1f1b", "zb-v", "3d-with-collectives", "measured-profile"])
def test_with_no_spread_the_band_is_the_point_prediction(result):
    r = result()
    band = plan_band(r, spread=NO_SPREAD, samples=20)
    assert band.iteration_time.low == band.iteration_time.high == r.iteration_time
    assert band.bubble_fraction.low == band.bubble_fraction.high == r.bubble_fraction


def test_a_chain_of_independent_ops_matches_the_closed_form_sum_of_normals():
    t, sigma, m = 1e-3, 0.1, 8
    n = 2 * m  # F and B of every micro-batch, one after another on the one device
    result = pipeplan.simulate(plan=tiny_plan(pp=1, layers_per_stage=(10,)), profile=chain_profile(t),
                               dp_options=DataParallelOptions(optimizer_step=False))  # the chain: F and B only
    assert result.iteration_time == pytest.approx(n * t)
    spread = Spread("test", compute=ClassSpread(independent=sigma))
    samples = 4000
    drawn = sample_plan(result, spread, samples, seed=1, profile=chain_profile(t))
    sd = math.sqrt(n) * sigma * t
    assert np.std(drawn.iteration_time) == pytest.approx(sd, rel=0.05)
    band = plan_band(result, spread=spread, samples=samples, seed=1, profile=chain_profile(t))
    # The 5 % and 95 % quantiles of 4,000 normal draws sit within 0.033 sd of the true ones (1 standard error).
    assert band.iteration_time.low == pytest.approx(n * t - Z90 * sd, abs=0.12 * sd)
    assert band.iteration_time.high == pytest.approx(n * t + Z90 * sd, abs=0.12 * sd)


def test_a_common_factor_alone_gives_the_log_normal_interval():
    sigma = 0.2
    result = pipeplan.simulate(plan=tiny_plan())
    spread = Spread("test", **{c: ClassSpread(common=sigma) for c in OP_CLASSES})
    band = plan_band(result, spread=spread, samples=4000, seed=2)
    t = result.iteration_time
    # In units of Z: the 5 % and 95 % quantiles of 4,000 normal draws sit within 0.033 of -+1.645 (1 s.e.).
    assert math.log(band.iteration_time.low / t) / sigma == pytest.approx(-Z90, abs=0.12)
    assert math.log(band.iteration_time.high / t) / sigma == pytest.approx(Z90, abs=0.12)
    # Every op and transfer slowed alike: the bubble does not move.
    assert band.bubble_fraction.high - band.bubble_fraction.low < 1e-9


def test_the_same_seed_gives_the_same_band_and_another_seed_another():
    result = pipeplan.simulate(plan=tiny_plan(schedule="zb-h1"))
    one, again = plan_band(result, samples=50, seed=7), plan_band(result, samples=50, seed=7)
    assert one.to_dict() == again.to_dict()
    assert plan_band(result, samples=50, seed=8).to_dict() != one.to_dict()


def test_a_plan_against_itself_is_exactly_one():
    result = pipeplan.simulate(plan=tiny_plan())
    spread = probe_spread({"gemm": {"spread": 0.1, "residual": 0.2}})
    chosen = sample_plan(result, spread, 50, seed=3)
    same = compare(result, chosen, "itself", pipeplan.simulate(plan=tiny_plan()), spread, 50, seed=3)
    assert same.ratio.low == same.ratio.high == 1.0 and same.tie


def test_a_common_factor_cancels_between_two_plans_whose_own_bands_overlap():
    spread = Spread("test", **{c: ClassSpread(common=0.3) for c in OP_CLASSES})
    chosen = pipeplan.simulate(plan=tiny_plan(schedule="zb-h1"))
    other = pipeplan.simulate(plan=tiny_plan())
    drawn = sample_plan(chosen, spread, 100, seed=4)
    c = compare(chosen, drawn, "1f1b", other, spread, 100, seed=4)
    point = other.iteration_time / chosen.iteration_time
    assert point > 1
    assert c.ratio.low == pytest.approx(point, rel=1e-12) and c.ratio.high == pytest.approx(point, rel=1e-12)
    assert not c.tie
    own = plan_band(chosen, spread=spread, samples=100, seed=4)
    assert own.iteration_time.high > c.band.iteration_time.low  # the two bands overlap, yet no tie


def test_the_calibration_spread_recovers_the_drawn_round_and_op_scatter():
    rng = np.random.default_rng(0)
    common, independent, rounds = 0.05, 0.10, 400
    means = {(0, "F"): 2e-3, (0, "B"): 4e-3, (1, "F"): 3e-3, (1, "B"): 5e-3}
    drawn = []
    for _ in range(rounds):
        speed = 1 + common * rng.standard_normal()
        drawn.append({s: {k: list(means[(s, k)] * speed * (1 + independent * rng.standard_normal(8)))
                          for k in "FB"} for s in (0, 1)})
    links = [{(0, 1): list(1e-4 * (1 + 0.3 * rng.standard_normal(2)))} for _ in range(rounds)]
    est = estimate_spread(drawn, links)
    assert est.rounds == rounds and est.samples == 8 * rounds and est.link_samples == 2 * rounds
    # The round factor is estimated from 32 noisy ops per round: its sd picks up independent / sqrt(32).
    assert est.common == pytest.approx(math.hypot(common, independent / math.sqrt(32)), rel=0.1)
    assert est.independent == pytest.approx(independent, rel=0.05)
    assert est.link == pytest.approx(0.3, rel=0.1)


def test_a_calibrated_spread_adds_the_models_own_error_and_the_standard_error():
    from pipeplan.bands import CalibrationSpread
    from pipeplan.bands.spread import CALIBRATED_MODEL

    s = calibrated_spread(CalibrationSpread(rounds=10, common=0.04, independent=0.2, samples=100, link=0.5,
                                            link_samples=25))
    assert s.compute.common == pytest.approx(math.hypot(0.04, CALIBRATED_MODEL))
    assert s.compute.systematic == pytest.approx(0.2 / 10) and s.compute.independent == 0.2
    assert s.link.systematic == pytest.approx(0.5 / 5)


# Every cluster the repository prices with: the presets and every cluster file under validation/ (a
# probed spec among them, whose measured kernel figures price() may read in ways of its own).
CLUSTERS = ["dgx-h100", "pcie-l40s"] + sorted(
    str(p) for p in (REPO / "validation").rglob("*.json")
    if "plans" not in p.parts and "records" not in p.parts and "gpu" in json.loads(p.read_text())
    or p.name == "cluster.json")


@pytest.mark.parametrize("cluster_name", CLUSTERS, ids=lambda c: Path(c).name)
@pytest.mark.parametrize("model, tp, sp, recompute", [
    ("tiny", 1, False, "none"), ("gpt2-xl", 1, False, "full"), ("llama3-8b", 2, True, "selective"),
    ("llama3-8b", 4, False, "full"),
])
def test_layer_parts_add_up_to_the_cost_models_op_times(cluster_name, model, tp, sp, recompute):
    spec = load_model(model)
    cluster = load_cluster(cluster_name)
    if tp > cluster.gpus_per_node:
        pytest.skip(f"{cluster.name} has {cluster.gpus_per_node} GPUs per node")
    for i in range(spec.num_pipeline_layers):
        work = layer_work(spec, i, 2, 1024, recompute, tp, sp)
        cost = price(work, cluster.gpu, cluster.intra)
        parts = layer_parts(work, cluster.gpu, cluster.intra)
        for op, want in (("F", cost.forward), ("I", cost.backward_input), ("W", cost.backward_weight)):
            assert sum(s for _, _, s in parts[op]) == pytest.approx(want, rel=1e-12)


def test_every_ops_shares_sum_to_one():
    result = pipeplan.simulate("llama3-8b", "dgx-h100", tp=2, dp=2, gpus=16, microbatches=8, recompute="full")
    terms = op_terms(result.resolved, len(result.workload.stages), measured=False)
    for parts in terms.values():
        assert sum(share for _, _, share in parts) == pytest.approx(1.0)


def _point(samples, fitted):
    return {"shape": [1.0], "samples": samples, "fitted": fitted}


# pipeplan probe's record: per quantity its points (samples, fitted seconds) and, derived from them and
# stored beside them, the call-to-call spread (the median over points of std / mean) and each point's fit
# residual (median / fitted - 1). Samples 0.9, 1.0, 1.1: relative std 0.1 exactly.
PROBE_RECORD = {"disturbed": False, "quantities": {
    "gemm": {"spread": 0.1, "fit_residuals": [0.0, 0.25, -0.2],
             "points": [_point([0.9, 1.0, 1.1], 1.0), _point([0.9, 1.0, 1.1], 0.8), _point([0.9, 1.0, 1.1], 1.25)]},
    "attention_forward": {"spread": 0.1, "fit_residuals": [1.0], "points": [_point([1.8, 2.0, 2.2], 1.0)]},
    "link": {"spread": 0.1, "fit_residuals": [-0.5], "points": [_point([0.9, 1.0, 1.1], 2.0)]}}}


def test_a_probe_record_pools_its_quantities_into_classes():
    spread = probe_spread(PROBE_RECORD)
    g, link = spread.gemm, spread.link
    # gemm pools gemm and the attention core: spreads 0.1 and 0.1; residuals 0, 0.25, -0.2, 1.0: median |r| 0.225
    assert (g.common, g.systematic, g.independent) == (0.05, pytest.approx(1.4826 * 0.225), pytest.approx(0.1))
    assert (link.systematic, link.independent) == (pytest.approx(1.4826 * 0.5), pytest.approx(0.1))
    assert spread.memory == spread.overhead  # not probed: the default a-priori spread
    assert spread.source == "probe (gemm, link probed)"


def test_a_cluster_spec_with_a_probe_record_bands_with_its_spread():
    from pipeplan.bands import apriori_spread

    cluster = load_cluster({"base": "dgx-h100", "probe": PROBE_RECORD})
    got, want = apriori_spread(cluster), probe_spread(PROBE_RECORD)
    for c in OP_CLASSES:  # a probe record may derive its figures from the points again, to the last bit
        assert vars(got.of(c)) == pytest.approx(vars(want.of(c)), rel=1e-12), c
    assert cluster == load_cluster("dgx-h100")  # what the probe says is no part of the cluster's identity


def test_a_probe_by_hand_sets_its_classes_and_bad_figures_are_refused_naming_the_field():
    spread = probe_spread({"common": 0.02, "gemm": {"spread": 0.03, "residual": 0.04}, "link": {"spread": 0.1}})
    assert spread.gemm == ClassSpread(0.02, 0.04, 0.03) and spread.link == ClassSpread(0.02, 0.0, 0.1)
    for probe, field in (({"gemm": {"spread": -0.1}}, "cluster.probe.gemm.spread"),
                         ({"common": float("nan")}, "cluster.probe.common"),
                         ({"memory": 0.1}, "cluster.probe.memory"), ([0.1], "cluster.probe"),
                         ({"quantities": {"gemm": {"fit_residuals": [float("inf")]}}},
                          "cluster.probe.quantities.gemm.fit_residuals")):
        with pytest.raises(SpecError, match=f"^{field}: "):
            probe_spread(probe)
