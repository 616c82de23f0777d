"""``pipeplan validate``: run a plan for real and compare the measurement with the predictions.

* ``options``      — ``ValidateOptions``: the flags of ``pipeplan validate`` and ``python -m validator``;
* ``launch``       — ``run_validation``: start torchrun (``python -m validator``), watch it, end it;
* ``preflight``    — what is refused before anything starts (plan, ``--out``, CUDA, memory: ``footprint``);
* ``processes``    — the run's processes: finding, killing, parent-death signals;
* ``stopping``     — SIGTERM, SIGHUP and SIGINT end the run as ``Stopped``;
* ``failure``      — which process failed first and why, in one line;
* ``measurements`` — ``Measurements``: what the ranks measured (timelines and a profile);
* ``report``       — ``build_report``: the measured, calibrated and a-priori numbers and their errors;
* ``serving``      — a serving plan's refusals, memory estimate and report (tokens/s, TTFT, TPOT).

Nothing here imports torch; the ranks do (package ``validator``).
"""
from .launch import ValidationFailed, run_validation, validator_command
from .measurements import Measurements
from .options import ValidateOptions
from .processes import process_alive
from .report import (REPORT_KIND, REPORT_VERSION, build_report, errors, load_report, measured_section, predictions,
                     repredict, repredict_bands, write_report)
from .stopping import Stopped

__all__ = [
    "ValidateOptions", "ValidationFailed", "Stopped", "run_validation", "validator_command", "process_alive",
    "Measurements",
    "REPORT_KIND", "REPORT_VERSION", "build_report", "errors", "load_report", "measured_section", "predictions",
    "repredict", "repredict_bands", "write_report",
]
