"""Uncertainty bands on predictions: op-time spread propagated through the simulator by sampling.

``spread``: how uncertain each op class is, and where that comes from (calibration, probe, default);
``calibration``: the spread of a calibration's timings (the validator writes it into the profile);
``terms``: what each simulated op is made of, by class; ``sampling``: the Monte Carlo;
``band``: intervals, and whether two plans can be told apart.
"""
from .band import DEFAULT_SAMPLES, LEVEL, Band, Comparison, PlanBand, check_band_size, compare, plan_band
from .calibration import CalibrationSpread, estimate_spread
from .sampling import Samples, sample_plan
from .spread import (DEFAULT_APRIORI, DEFAULT_CALIBRATED, NO_SPREAD, OP_CLASSES, ClassSpread, Spread, apriori_spread,
                     calibrated_spread, probe_spread, spread_for)

__all__ = ["Band", "PlanBand", "Comparison", "plan_band", "compare", "check_band_size", "DEFAULT_SAMPLES", "LEVEL",
           "CalibrationSpread", "estimate_spread", "Samples", "sample_plan", "Spread", "ClassSpread", "OP_CLASSES",
           "NO_SPREAD", "DEFAULT_APRIORI", "DEFAULT_CALIBRATED", "apriori_spread", "calibrated_spread",
           "probe_spread", "spread_for"]
