"""How uncertain each class of op time is: the input of every band, and where it comes from.

Op classes: ``gemm`` (matrix multiplications), ``memory`` (memory-bound kernels and the optimizer
step), ``overhead`` (per-layer launch and synchronisation), ``link`` (transfers between devices,
collectives, the tensor-parallel collectives inside an op) and ``compute`` (a whole op timed by a
calibration, which cannot tell its GEMMs from the rest). Per class, four relative 1-sigmas
(``ClassSpread``), one per level of the sampling model (``pipeplan.bands.sampling``):

* ``common``: one factor per sample shared by every op of the class and, through one draw, by every
  class (a slow machine, or a cost model off by a constant, slows every op at once);
* ``systematic``: one factor per sample and op type (a layer kind's F, I or W; a measured stage's
  op; a link), the same for every micro-batch: how far one priced op type may sit from its truth;
* ``independent``: each op instance on its own (run-to-run noise of one op);
* ``device``: one factor per sample and device, on every op of that device: one rank slowed for a
  whole iteration (its cores taken by something else) while the others wait for it. The mean of a
  maximum over dependency paths exceeds the maximum of the means, so this raises an iteration's
  typical time and idle time, not only its spread. Measured by a calibration only (0 elsewhere).

Where a spread comes from, in order:

1. a calibrated prediction (a measured profile): the profile's ``spread`` (``CalibrationSpread``,
   written by the validator from its calibration rounds): compute ``common`` = the rounds' speed
   spread combined with ``CALIBRATED_MODEL`` (the calibrated model's own error), ``independent`` =
   the op timings' spread, ``systematic`` = its standard error over ``samples``, ``device`` = the
   rounds' per-device speed spread; links alike, without a device factor.
   A profile without one (recorded before it existed) gets ``DEFAULT_CALIBRATED``.
2. an a-priori prediction from a cluster spec with a ``probe`` section (``pipeplan probe`` writes it),
   in either of two forms. The probe's record: ``probe.quantities.<name>`` with ``spread`` (one
   kernel's relative 1-sigma from call to call) and ``fit_residuals`` (per point probed, measured /
   fitted - 1); each class pools its quantities (``PROBE_QUANTITIES``): ``independent`` = the RMS of
   their spreads, ``systematic`` = 1.4826 x the median absolute residual (a 1-sigma that a few
   outlying small shapes do not set). Or, written by hand, per class
   ``probe.<class>.spread`` and ``probe.<class>.residual`` (the same two figures). ``probe.common``
   (machine drift between probe and run) defaults to ``DEFAULT_PROBE_COMMON``; a class the probe
   leaves out keeps ``DEFAULT_APRIORI``'s.
3. otherwise ``DEFAULT_APRIORI``: a nominal or datasheet cluster spec.

The defaults' figures and their sources are next to them.
"""
from __future__ import annotations

import math
import statistics
from dataclasses import dataclass, fields, replace
from typing import Any

from ..errors import SpecError
from ..limits import in_range
from .calibration import CalibrationSpread

OP_CLASSES = ("gemm", "memory", "overhead", "link", "compute")
PROBE_CLASSES = ("gemm", "memory", "overhead", "link")
# The probe's quantities (``pipeplan probe``'s record) behind each class: the attention core is GEMMs
# in the cost model's parts (``terms.layer_parts``), copies are memory-bound.
PROBE_QUANTITIES = {"gemm": ("gemm", "attention_forward", "attention_backward"),
                    "memory": ("elementwise_forward", "elementwise_backward", "copy"),
                    "overhead": ("layer",), "link": ("link",)}
LEVELS = ("common", "systematic", "independent", "device")


@dataclass(frozen=True)
class ClassSpread:
    """Relative 1-sigmas of one op class at the four levels (see the module docstring)."""

    common: float = 0.0
    systematic: float = 0.0
    independent: float = 0.0
    device: float = 0.0

    def __post_init__(self) -> None:
        for level in LEVELS:
            in_range(f"spread.{level}", getattr(self, level), "spread")

    @property
    def zero(self) -> bool:
        return not any(getattr(self, level) for level in LEVELS)

    def text(self) -> str:
        parts = [f"{level} {100 * getattr(self, level):.3g} %" for level in LEVELS if getattr(self, level)]
        return ", ".join(parts) or "none"


@dataclass(frozen=True)
class Spread:
    """One ``ClassSpread`` per op class, and ``source``: where they come from, as a report says it."""

    source: str
    gemm: ClassSpread = ClassSpread()
    memory: ClassSpread = ClassSpread()
    overhead: ClassSpread = ClassSpread()
    link: ClassSpread = ClassSpread()
    compute: ClassSpread = ClassSpread()

    def of(self, op_class: str) -> ClassSpread:
        return getattr(self, op_class)

    def only(self, op_class: str) -> "Spread":
        """This spread with every other class's set to none (to ask what one class alone does)."""
        return Spread(f"{op_class} only", **{op_class: self.of(op_class)})

    @property
    def zero(self) -> bool:
        return all(self.of(c).zero for c in OP_CLASSES)

    def classes(self) -> list[str]:
        return [c for c in OP_CLASSES if not self.of(c).zero]

    def to_dict(self) -> dict[str, Any]:
        return {"source": self.source, **{c: {k: v for k, v in vars(self.of(c)).items() if v or k != "device"}
                                          for c in OP_CLASSES if not self.of(c).zero}}


NO_SPREAD = Spread("none")

# The a-priori model with nominal or datasheet figures, from the six runs of validation/records (tiny
# model, cpu.json) and issue 15's five plans. common 0.30: the log-RMS of the a-priori iteration-time
# errors over those 11 plans (issue 15: +21, +46, +29, +121, +25 %; the records, re-predicted by today's
# model (``pipeplan.validation.repredict``): +10, +8, -8, -6, -9, -19 %). systematic 0.35: the log-sd of measured / a-priori time over the op types that carry the time
# (block and head F, I and W, the records' single-layer timings against costs.price): 0.33 to 0.42 in
# each record. independent 0.10: one op's scatter around its mean on a busy CPU (the records' run op
# times: 7 to 19 %, median 12 %). Links are known worse: cpu.json's 50 us latency against the 28 us
# the same VM calibrated (a log ratio of 0.58), and gloo's late deliveries scatter one transfer widely.
_APRIORI_COMPUTE = ClassSpread(common=0.30, systematic=0.35, independent=0.10)
DEFAULT_APRIORI = Spread(
    "default a-priori spread (no probe in the cluster spec)",
    gemm=_APRIORI_COMPUTE, memory=_APRIORI_COMPUTE, overhead=_APRIORI_COMPUTE,
    link=ClassSpread(common=0.30, systematic=0.50, independent=0.20), compute=_APRIORI_COMPUTE,
)
# A probed spec's machine may run slower or faster on the day of the run: the same plan measured 74-88 ms
# per iteration on different occasions on the 2-core VM (README, Validating), about +-5 % at one sigma.
DEFAULT_PROBE_COMMON = 0.05
# The calibrated model's own error, beyond the calibration's scatter: 3 %, the 1-sigma of its iteration
# time errors on this VM's quiet runs (README, Validating: -6.4 to +2.6 % over 23 runs, mostly about -3 %:
# the per-op dispatch costs it does not model).
CALIBRATED_MODEL = 0.03
# A profile recorded before profiles carried their spread: the scatter of the six records' own run op
# times taken as rounds (``estimate_spread`` on their measured iterations: round speed 2.3-7.4 %, median
# 4 %; one op 7-19 %, median 12 %; 80 timings per op type) and, for links, one-way gloo timings on this VM
# (a late delivery in 20-40 by 1-5 ms on 30 us: 50 % at one sigma, 20 timings per link).
DEFAULT_CALIBRATED = CalibrationSpread(rounds=10, common=0.04, independent=0.12, samples=80, link=0.5,
                                       link_samples=20)


def calibrated_spread(spread: CalibrationSpread | None) -> Spread:
    """The spread of a prediction priced from a measured profile whose calibration scattered by ``spread``
    (None: ``DEFAULT_CALIBRATED``). Parts the profile does not price (an optimizer step, a data-parallel
    collective) keep the a-priori spread of their class."""
    source = "calibration" if spread is not None else "default calibrated spread (the profile has none)"
    s = spread or DEFAULT_CALIBRATED
    common = math.hypot(s.common, CALIBRATED_MODEL)
    return replace(
        DEFAULT_APRIORI, source=f"{source}: {s.rounds} rounds, {s.samples} timings per op type",
        compute=ClassSpread(common, s.independent / math.sqrt(s.samples), s.independent, s.device),
        link=ClassSpread(common, s.link / math.sqrt(s.link_samples), s.link),
    )


def _probe_mapping(probe: Any) -> Any:
    """The probe section as a mapping (a probe record object gives its ``to_dict()``)."""
    return probe.to_dict() if hasattr(probe, "to_dict") else probe


def _rms(values: list[float]) -> float:
    return math.sqrt(sum(v * v for v in values) / len(values)) if values else 0.0


def _robust_sigma(residuals: list[float]) -> float:
    """1.4826 x the median absolute residual: a normal's 1-sigma, unmoved by the few tiny shapes whose
    residuals run to several hundred per cent (a probe's smallest GEMMs on a busy machine)."""
    return 1.4826 * statistics.median(abs(r) for r in residuals) if residuals else 0.0


def _finite(field: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise SpecError(f"{field}: must be a finite number (got {value!r})")
    return float(value)


def check_probe(probe: Any) -> None:
    """Refuse a cluster spec's ``probe`` section whose spread figures a band reads are not numbers in range:
    ``probe.common``, ``probe.quantities.<name>.spread`` and ``.fit_residuals``, ``probe.<class>.spread`` and
    ``.residual``. The probe's other fields (samples, points, notes) are the probe's own business."""
    probe = _probe_mapping(probe)
    if probe is None:
        return
    if not isinstance(probe, dict):
        raise SpecError(f"cluster.probe: must be a mapping (got {type(probe).__name__})")
    if "common" in probe:
        in_range("cluster.probe.common", probe["common"], "spread")
    quantities = probe.get("quantities", {})
    if not isinstance(quantities, dict):
        raise SpecError(f"cluster.probe.quantities: must be a mapping (got {type(quantities).__name__})")
    for name, quantity in quantities.items():
        where = f"cluster.probe.quantities.{name}"
        if not isinstance(quantity, dict):
            raise SpecError(f"{where}: must be a mapping (got {quantity!r})")
        if "spread" in quantity:
            in_range(f"{where}.spread", _finite(f"{where}.spread", quantity["spread"]), "spread")
        residuals = quantity.get("fit_residuals", [])
        if not isinstance(residuals, list):
            raise SpecError(f"{where}.fit_residuals: must be a list of numbers")
        for r in residuals:
            _finite(f"{where}.fit_residuals", r)
    for op_class in PROBE_CLASSES:
        section = probe.get(op_class)
        if section is None:
            continue
        if not isinstance(section, dict):
            raise SpecError(f"cluster.probe.{op_class}: must be a mapping (got {section!r})")
        for key in ("spread", "residual"):
            if key in section:
                in_range(f"cluster.probe.{op_class}.{key}", section[key], "spread")


def probe_spread(probe: Any) -> Spread:
    """The a-priori spread of a probed cluster spec (see the module docstring, 2.)."""
    check_probe(probe)
    probe = _probe_mapping(probe)
    common = float(probe.get("common", DEFAULT_PROBE_COMMON))
    quantities = probe.get("quantities", {})
    classes = {}
    for op_class in PROBE_CLASSES:
        found = [quantities[q] for q in PROBE_QUANTITIES[op_class] if q in quantities]
        section = probe.get(op_class)
        if found:
            spread = _rms([float(q.get("spread", 0.0)) for q in found])
            residual = _robust_sigma([float(r) for q in found for r in q.get("fit_residuals", [])])
        elif isinstance(section, dict) and ("spread" in section or "residual" in section):
            spread, residual = float(section.get("spread", 0.0)), float(section.get("residual", 0.0))
        else:
            continue
        classes[op_class] = ClassSpread(common, min(residual, 2.0), min(spread, 2.0))
    probed = ", ".join(classes) or "no class"
    disturbed = "; the probe ran on a disturbed machine" if probe.get("disturbed") is True else ""
    return replace(DEFAULT_APRIORI, source=f"probe ({probed} probed{disturbed})", **classes)


def apriori_spread(cluster) -> Spread:
    """The spread of an a-priori prediction on ``cluster`` (a ``ClusterSpec``): its probe's, else the default."""
    probe = getattr(cluster, "probe", None)
    return probe_spread(probe) if probe else DEFAULT_APRIORI


def spread_for(cluster, profile=None) -> Spread:
    """The spread of a prediction on ``cluster``, priced from ``profile`` (a ``Profile``) when given."""
    if profile is not None:
        return calibrated_spread(getattr(profile, "spread", None))
    return apriori_spread(cluster)


def scaled_spread(spread: Spread, factor: float) -> Spread:
    """Every 1-sigma times ``factor`` (e.g. 0 for none); for tests and what-ifs."""
    return Spread(spread.source, **{c: ClassSpread(*(min(2.0, getattr(spread.of(c), level) * factor)
                                                      for level in LEVELS)) for c in OP_CLASSES})


__all__ = ["OP_CLASSES", "ClassSpread", "Spread", "NO_SPREAD", "DEFAULT_APRIORI", "DEFAULT_CALIBRATED",
           "CALIBRATED_MODEL", "DEFAULT_PROBE_COMMON", "calibrated_spread", "probe_spread", "apriori_spread",
           "spread_for", "check_probe", "scaled_spread"]
assert [f.name for f in fields(Spread)][1:] == list(OP_CLASSES)
