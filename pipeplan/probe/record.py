"""What ``pipeplan probe`` measured, kept in the cluster spec it writes (``ClusterSpec.probe``).

The cost model reads only the fitted GPU fields; this record is the evidence behind them and what an
error band needs: per measured quantity, every timed sample of every point, how much repeats of one
point spread, and how far the fitted spec is from each point. In a cluster file:

    "probe": {"device": ..., "backend": "gloo", "dtype": "float32", "threads": 1, "ranks": 2,
              "seconds": 31.4, "torch": "2.13.0", "disturbed": false, "notes": [...],
              "quantities": {"gemm": {"unit": "s", "dims": ["m", "n", "k", "layout"],
                                      "spread": 0.021, "fit_residuals": [...], "disturbed": null,
                                      "points": [{"shape": [256, 64, 64, 0], "samples": [...],
                                                  "fitted": 5.1e-05}, ...]}, ...}}

* ``samples``: seconds of each timed call (or one-way message) of that point, from every rank and
  every kept round;
* ``spread``: the median over points of the samples' relative standard deviation (std / mean) —
  how much one kernel's time varies from call to call on this machine;
* ``fit_residuals``: per point, median(samples) / fitted − 1 — how far the fitted form is from it (an
  attention table holds every grid point, so there a point's fitted time is what its neighbours along
  the sequence length give with it left out: the table's error between grid points);
* ``disturbed``: why a quantity's rounds stayed disturbed after reruns (None: quiet).

A prediction's relative uncertainty from one kernel kind is about sqrt(spread² + rms(fit_residuals)²).
Quantities (``pipeplan.probe.spec.DIMS`` names their shapes): gemm, attention_forward,
attention_backward, elementwise_forward, elementwise_backward, layer, copy, link.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from ..errors import SpecError


def _numbers(where: str, values: Any, allow_negative: bool = False) -> tuple[float, ...]:
    if not isinstance(values, (list, tuple)):
        raise SpecError(f"{where}: must be a list of numbers (got {type(values).__name__})")
    out = []
    for v in values:
        ok = isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
        if not ok or (v < 0 and not allow_negative):
            raise SpecError(f"{where}: must hold finite numbers{'' if allow_negative else ' >= 0'} (got {v!r})")
        out.append(float(v))
    return tuple(out)


def _mapping(where: str, data: Any, known: tuple[str, ...]) -> dict:
    if not isinstance(data, dict):
        raise SpecError(f"{where}: must be a mapping (got {type(data).__name__})")
    unknown = sorted(set(data) - set(known))
    if unknown:
        raise SpecError(f"{where}.{unknown[0]}: unknown field; known fields are {', '.join(known)}")
    return data


@dataclass(frozen=True)
class ProbePoint:
    """One measured point: its shape (as the quantity's ``dims`` name them), the timed samples, and
    what the fitted spec gives for it (seconds)."""

    shape: tuple[float, ...]
    samples: tuple[float, ...]
    fitted: float

    @property
    def median(self) -> float:
        s = sorted(self.samples)
        n = len(s)
        return (s[n // 2] + s[(n - 1) // 2]) / 2 if n else 0.0

    def to_dict(self) -> dict[str, Any]:
        return {"shape": list(self.shape), "samples": list(self.samples), "fitted": self.fitted}

    @staticmethod
    def from_dict(where: str, data: Any) -> "ProbePoint":
        data = _mapping(where, data, ("shape", "samples", "fitted"))
        fitted = _numbers(f"{where}.fitted", [data.get("fitted", 0.0)])[0]
        return ProbePoint(_numbers(f"{where}.shape", data.get("shape", [])),
                          _numbers(f"{where}.samples", data.get("samples", [])), fitted)


def relative_std(samples: tuple[float, ...]) -> float:
    """std / mean of ``samples`` (0 for fewer than two or a zero mean)."""
    n = len(samples)
    mean = sum(samples) / n if n else 0.0
    if n < 2 or mean == 0:
        return 0.0
    return math.sqrt(sum((x - mean) ** 2 for x in samples) / (n - 1)) / abs(mean)


@dataclass(frozen=True)
class ProbeQuantity:
    """One measured quantity (see the module docstring for ``spread`` and ``fit_residuals``)."""

    unit: str
    dims: tuple[str, ...]
    points: tuple[ProbePoint, ...]
    disturbed: str | None = None

    @property
    def spread(self) -> float:
        spreads = sorted(relative_std(p.samples) for p in self.points)
        return spreads[len(spreads) // 2] if spreads else 0.0

    @property
    def fit_residuals(self) -> tuple[float, ...]:
        return tuple(p.median / p.fitted - 1 if p.fitted > 0 else 0.0 for p in self.points)

    def to_dict(self) -> dict[str, Any]:
        return {"unit": self.unit, "dims": list(self.dims), "spread": self.spread,
                "fit_residuals": list(self.fit_residuals), "disturbed": self.disturbed,
                "points": [p.to_dict() for p in self.points]}

    @staticmethod
    def from_dict(where: str, data: Any) -> "ProbeQuantity":
        data = _mapping(where, data, ("unit", "dims", "spread", "fit_residuals", "disturbed", "points"))
        dims = data.get("dims", [])
        if not isinstance(dims, list) or not all(isinstance(d, str) for d in dims):
            raise SpecError(f"{where}.dims: must be a list of dimension names")
        points = data.get("points", [])
        if not isinstance(points, list):
            raise SpecError(f"{where}.points: must be a list of points")
        disturbed = data.get("disturbed")
        if disturbed is not None and not isinstance(disturbed, str):
            raise SpecError(f"{where}.disturbed: must be a text or null")
        # spread and fit_residuals are derived from the points; stored for readers without pipeplan.
        return ProbeQuantity(str(data.get("unit", "s")), tuple(dims),
                             tuple(ProbePoint.from_dict(f"{where}.points[{i}]", p) for i, p in enumerate(points)),
                             disturbed)


@dataclass(frozen=True)
class ProbeRecord:
    """Where and how a probe ran, whether the machine was disturbed, and its quantities by name."""

    device: str
    backend: str
    dtype: str
    threads: int
    ranks: int
    seconds: float
    torch: str
    disturbed: bool
    notes: tuple[str, ...]
    quantities: tuple[tuple[str, ProbeQuantity], ...]

    def quantity(self, name: str) -> ProbeQuantity:
        for key, q in self.quantities:
            if key == name:
                return q
        raise KeyError(name)

    def to_dict(self) -> dict[str, Any]:
        return {"device": self.device, "backend": self.backend, "dtype": self.dtype, "threads": self.threads,
                "ranks": self.ranks, "seconds": self.seconds, "torch": self.torch, "disturbed": self.disturbed,
                "notes": list(self.notes), "quantities": {k: q.to_dict() for k, q in self.quantities}}

    @staticmethod
    def from_dict(data: Any, where: str = "cluster.probe") -> "ProbeRecord":
        if isinstance(data, ProbeRecord):
            return data
        known = ("device", "backend", "dtype", "threads", "ranks", "seconds", "torch", "disturbed", "notes",
                 "quantities")
        data = _mapping(where, data, known)
        quantities = _mapping(f"{where}.quantities", data.get("quantities", {}), tuple(data.get("quantities", {})))
        notes = data.get("notes", [])
        if not isinstance(notes, list) or not all(isinstance(n, str) for n in notes):
            raise SpecError(f"{where}.notes: must be a list of texts")
        for field in ("threads", "ranks"):
            value = data.get(field, 1)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise SpecError(f"{where}.{field}: must be a positive integer (got {value!r})")
        if not isinstance(data.get("disturbed", False), bool):
            raise SpecError(f"{where}.disturbed: must be true or false")
        return ProbeRecord(
            device=str(data.get("device", "")), backend=str(data.get("backend", "")), dtype=str(data.get("dtype", "")),
            threads=data.get("threads", 1), ranks=data.get("ranks", 1),
            seconds=_numbers(f"{where}.seconds", [data.get("seconds", 0.0)])[0], torch=str(data.get("torch", "")),
            disturbed=data.get("disturbed", False), notes=tuple(notes),
            quantities=tuple((str(k), ProbeQuantity.from_dict(f"{where}.quantities.{k}", q))
                             for k, q in quantities.items()))
