"""The per-device speed factor: estimated from calibration rounds, drawn in the bands, reported as a median.

* calibration: rounds drawn with known common, per-device and per-op 1-sigmas give back the per-device
  one within the sampling error of a standard deviation over R rounds (relative 1 / sqrt(2 (R - 1)));
  with every stage on one device the estimate is the one without a device map, field for field;
* sampling: two devices each running one op of t seconds in parallel, each with its own normal factor
  1 + s·Z: the iteration is max(X, Y) of two independent N(t, (s·t)^2), whose mean is t + s·t / sqrt(pi);
* the report: with no spread the samples' median is the mean-time simulation, exactly.
"""
import math

import numpy as np
import pytest

from pipeplan.bands import CalibrationSpread, estimate_spread

MEANS = {(0, "F"): 2e-3, (0, "B"): 4e-3, (1, "F"): 3e-3, (1, "B"): 5e-3}


def drawn_rounds(rounds, common, device, independent, seed=0):
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(rounds):
        speed = 1 + common * rng.standard_normal()
        own = 1 + device * rng.standard_normal(2)  # stage s runs on device s
        out.append({s: {k: list(MEANS[(s, k)] * speed * own[s] * (1 + independent * rng.standard_normal(8)))
                        for k in "FB"} for s in (0, 1)})
    return out


def test_the_calibration_recovers_the_drawn_device_scatter_within_its_sampling_error():
    rounds, common, device, independent = 1000, 0.04, 0.06, 0.12
    est = estimate_spread(drawn_rounds(rounds, common, device, independent), stage_devices={0: 0, 1: 1})
    standard_error = device / math.sqrt(2 * (rounds - 1))
    assert abs(est.device - device) < 3 * standard_error
    # Each device's factor in a round is estimated from its 16 ops, which it takes 1/16 of their variance from.
    assert est.independent == pytest.approx(independent * math.sqrt(1 - 1 / 16), rel=0.05)
    # The round's factor without the devices' share: the common draw and the ops' noise averaged over
    # 32 ops (what the estimate without a device map carries too, see test_bands.py).
    assert est.common == pytest.approx(math.hypot(common, independent / math.sqrt(32)), rel=0.15)


def test_without_a_device_scatter_the_estimate_is_near_zero():
    rounds = 1000
    est = estimate_spread(drawn_rounds(rounds, 0.04, 0.0, 0.12, seed=1), stage_devices=[0, 1])
    # A 1-sigma of 0 estimated: its square is the devices' observed variance (only the ops' noise here,
    # 0.12^2 x sum n·m^2 / (sum n·m)^2 = 0.12^2 x 0.07 for either device) less that noise, and the observed
    # variance is known to a relative sqrt(2 / (R - 1)): the square stays within 3 of those.
    noise = 0.12 ** 2 * 0.07
    assert est.device ** 2 < 3 * noise * math.sqrt(2 / (rounds - 1))


def test_with_every_stage_on_one_device_the_old_fields_are_unchanged():
    drawn = drawn_rounds(50, 0.05, 0.08, 0.1, seed=2)
    assert estimate_spread(drawn, stage_devices={0: 0, 1: 0}) == estimate_spread(drawn)
    assert estimate_spread(drawn).device == 0.0


def test_a_profile_spread_written_before_the_device_field_loads_with_zero():
    old = {"rounds": 10, "common": 0.0985, "independent": 0.148, "samples": 80, "link": 0.33, "link_samples": 20}
    assert CalibrationSpread.from_dict(old).device == 0.0
    new = CalibrationSpread.from_dict({**old, "device": 0.07})
    assert new.device == 0.07 and CalibrationSpread.from_dict(new.to_dict()) == new
