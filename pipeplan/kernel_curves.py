"""Measured kernel times by shape: how long a GEMM or an attention core of given dimensions takes.

A ``ShapeCurve`` is Hockney's half-performance model (R. W. Hockney and C. R. Jesshope, "Parallel
Computers 2", 1988: a vector operation of length n runs at r_inf · n / (n + n_half)) taken once per
dimension of the kernel:

    seconds(work, dims) = call_s + work / rate · Π_i (1 + halves[i] / dims[i])

``rate`` is what an unboundedly large kernel reaches (FLOP/s), ``halves[i]`` the size of dimension i at
which that dimension alone halves it, ``call_s`` what one call costs at no size (dispatch, packing set-up).
A CPU's BLAS loses efficiency smoothly as a dimension shrinks below its register and cache blocks,
which this form follows and the GPU's tile-and-wave model (``GPUSpec.gemm_seconds``) does not: a CPU
core is one "SM" with 1 x 1 tiles there, i.e. the same share of peak at every shape.

``pipeplan probe`` fits the curves from timed kernels (``pipeplan.probe.fit``):

* GEMM: dims (m, n, k) of an (m x k) @ (k x n) product, work 2·m·n·k per matrix of a batch; one call
  per batched kernel;
* attention core: dims (s, d), sequence length and head size, work 4·s²·d per (sequence, head) pair,
  the dense count of QK^T and AV that ``pipeplan.model`` uses (a causal kernel does about half of it;
  the fitted rate absorbs that); one call per core, forward and backward fitted apart.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from .errors import SpecError, positive_number

# Dimensions of each curve kind, as ``seconds`` takes them and a cluster file names them.
GEMM_DIMS = ("m", "n", "k")
ATTENTION_DIMS = ("s", "d")


@dataclass(frozen=True)
class ShapeCurve:
    """A kernel's seconds by shape: ``call_s + work / rate · Π (1 + halves[i] / dims[i])`` (module docstring)."""

    rate: float
    halves: tuple[float, ...]
    call_s: float = 0.0

    def __post_init__(self) -> None:
        positive_number("rate", self.rate)
        if not isinstance(self.halves, tuple):  # a JSON list: keep the curve hashable
            object.__setattr__(self, "halves", tuple(self.halves))
        for half in self.halves:
            positive_number("halves", half, allow_zero=True)
        positive_number("call_s", self.call_s, allow_zero=True)

    def seconds(self, work: float, dims: tuple[float, ...]) -> float:
        """One call doing ``work`` FLOPs over dimensions ``dims`` (as many as ``halves``)."""
        if work <= 0:
            return 0.0
        stretch = math.prod(1.0 + h / max(d, 1.0) for h, d in zip(self.halves, dims))
        return self.call_s + work / self.rate * stretch

    def to_dict(self) -> dict[str, Any]:
        return {"rate": self.rate, "halves": list(self.halves), "call_s": self.call_s}

    @staticmethod
    def from_dict(where: str, data: Any, dims: tuple[str, ...]) -> "ShapeCurve":
        """A curve from its mapping; errors name ``where`` and the field."""
        if isinstance(data, ShapeCurve):
            curve = data
        else:
            if not isinstance(data, dict):
                raise SpecError(f"{where}: must be a mapping with rate, halves and call_s (got {type(data).__name__})")
            unknown = sorted(set(data) - {"rate", "halves", "call_s"})
            if unknown:
                raise SpecError(f"{where}.{unknown[0]}: unknown field; known fields are rate, halves, call_s")
            for required in ("rate", "halves"):
                if required not in data:
                    raise SpecError(f"{where}.{required}: required field is missing")
            halves = data["halves"]
            if not isinstance(halves, (list, tuple)):
                raise SpecError(f"{where}.halves: must be a list of {len(dims)} numbers, one per dimension "
                                f"({', '.join(dims)})")
            try:
                curve = ShapeCurve(data["rate"], tuple(halves), data.get("call_s", 0.0))
            except SpecError as err:
                raise SpecError(f"{where}.{err}") from None
        if len(curve.halves) != len(dims):
            raise SpecError(f"{where}.halves: needs {len(dims)} numbers, one per dimension ({', '.join(dims)}); "
                            f"got {len(curve.halves)}")
        return curve
