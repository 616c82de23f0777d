"""Uncertainty bands on predictions: op-time spread propagated through the simulator by sampling.

``spread``: how uncertain each op class is, and where that comes from (calibration, probe, default);
``calibration``: the spread of a calibration's timings (the validator writes it into the profile);
``terms``: what each simulated op is made of, by class; ``sampling``: the Monte Carlo;
``band``: intervals, and whether two plans can be told apart; ``ties``: optimize's chosen plan against
the others it found.

Names load on first use: ``pipeplan.profile`` reads ``calibration`` while ``costs``, which ``terms``
reads, is still loading ``profile``.
"""
from importlib import import_module

_WHERE = {
    "band": ("Band", "PlanBand", "Comparison", "plan_band", "compare", "check_band_size", "affordable_samples",
             "DEFAULT_SAMPLES", "LEVEL"),
    "calibration": ("CalibrationSpread", "estimate_spread", "device_spread", "device_weights"),
    "sampling": ("Samples", "sample_plan"),
    "ties": ("OptimizeBands", "optimize_bands"),
    "spread": ("Spread", "ClassSpread", "OP_CLASSES", "NO_SPREAD", "DEFAULT_APRIORI", "DEFAULT_CALIBRATED",
               "apriori_spread", "calibrated_spread", "probe_spread", "spread_for"),
}
_MODULE_OF = {name: module for module, names in _WHERE.items() for name in names}
__all__ = sorted(_MODULE_OF)


def __getattr__(name: str):
    if name not in _MODULE_OF:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(import_module(f".{_MODULE_OF[name]}", __name__), name)
    globals()[name] = value
    return value
