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

A ``ShapeTable`` is the measured rate itself on a grid of shapes, for kernels no smooth form follows:

    seconds(work, dims) = call_s + work / rate(dims)

with log(rate) interpolated linearly in log(dims) between grid points (bilinear for two dimensions)
and held at the edge value outside the grid. The CPU's attention core needs it: torch's flash kernel
ran its backward at head size 8 three to four times slower per element than at 16 (its vector loop
is 16 wide), which no form monotone in the head size can follow.

``pipeplan probe`` measures both (``pipeplan.probe.fit``, ``pipeplan.probe.spec``):

* GEMM (curve): dims (m, n, k) of an (m x k) @ (k x n) product, work 2·m·n·k per matrix of a batch;
  one call per batched kernel;
* attention core (table): dims (s, d), sequence length and head size, work 4·s²·d per (sequence,
  head) pair, the dense count of QK^T and AV that ``pipeplan.model`` uses (a causal kernel does about
  half of it; the measured rate absorbs that); forward and backward apart.
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


@dataclass(frozen=True)
class ShapeTable:
    """A kernel's measured rate (FLOP/s) on a grid of shapes: ``seconds = call_s + work / rate(dims)``,
    log-rate interpolated linearly in log-dims, held at the edges (module docstring).

    ``axes`` are the grid's values per dimension, ascending; ``rates`` the rate at every grid point,
    the last axis varying fastest; ``call_s`` what one call costs at no size."""

    axes: tuple[tuple[float, ...], ...]
    rates: tuple[float, ...]
    call_s: float = 0.0

    def __post_init__(self) -> None:
        axes = tuple(tuple(float(v) for v in axis) for axis in self.axes)  # JSON lists: keep it hashable
        object.__setattr__(self, "axes", axes)
        object.__setattr__(self, "rates", tuple(self.rates))
        for axis in axes:
            if not axis or any(v <= 0 or not math.isfinite(v) for v in axis) or list(axis) != sorted(set(axis)):
                raise SpecError("axes: each axis must list distinct positive numbers in ascending order")
        if len(self.rates) != math.prod(len(a) for a in axes):
            raise SpecError(f"rates: needs one rate per grid point ({' x '.join(str(len(a)) for a in axes)} = "
                            f"{math.prod(len(a) for a in axes)}), got {len(self.rates)}")
        for rate in self.rates:
            positive_number("rates", rate)
        positive_number("call_s", self.call_s, allow_zero=True)

    def rate(self, dims: tuple[float, ...]) -> float:
        """The interpolated rate at ``dims`` (as many as ``axes``)."""
        corners = [(0, 1.0)]  # (flat index, weight) of the grid points that enclose dims
        for axis, value in zip(self.axes, dims):
            x = math.log(min(max(value, axis[0]), axis[-1]))
            hi = next((i for i, v in enumerate(axis) if math.log(v) >= x), len(axis) - 1)
            lo = max(hi - 1, 0)
            span = math.log(axis[hi]) - math.log(axis[lo])
            frac = (x - math.log(axis[lo])) / span if span > 0 else 0.0
            corners = [(index * len(axis) + i, weight * w) for index, weight in corners
                       for i, w in ((lo, 1.0 - frac), (hi, frac)) if w > 0]
        return math.exp(sum(w * math.log(self.rates[i]) for i, w in corners))

    def seconds(self, work: float, dims: tuple[float, ...]) -> float:
        return self.call_s + work / self.rate(dims) if work > 0 else 0.0

    def to_dict(self) -> dict[str, Any]:
        return {"axes": [list(a) for a in self.axes], "rates": list(self.rates), "call_s": self.call_s}

    @staticmethod
    def from_dict(where: str, data: Any, dims: tuple[str, ...]) -> "ShapeTable":
        """A table from its mapping; errors name ``where`` and the field."""
        if isinstance(data, ShapeTable):
            table = data
        else:
            if not isinstance(data, dict):
                raise SpecError(f"{where}: must be a mapping with axes, rates and call_s (got {type(data).__name__})")
            unknown = sorted(set(data) - {"axes", "rates", "call_s"})
            if unknown:
                raise SpecError(f"{where}.{unknown[0]}: unknown field; known fields are axes, rates, call_s")
            for required in ("axes", "rates"):
                if not isinstance(data.get(required), (list, tuple)):
                    raise SpecError(f"{where}.{required}: required, a list")
            if not all(isinstance(a, (list, tuple)) for a in data["axes"]):
                raise SpecError(f"{where}.axes: must be a list of {len(dims)} lists, one per dimension "
                                f"({', '.join(dims)})")
            try:
                table = ShapeTable(tuple(tuple(a) for a in data["axes"]), tuple(data["rates"]), data.get("call_s", 0.0))
            except (SpecError, TypeError, ValueError) as err:
                raise SpecError(f"{where}.{err}") from None
        if len(table.axes) != len(dims):
            raise SpecError(f"{where}.axes: needs {len(dims)} axes, one per dimension ({', '.join(dims)}); "
                            f"got {len(table.axes)}")
        return table


LAYER_KINDS = ("embedding", "block", "head")
PASSES = ("forward", "input_grad", "weight_grad")


@dataclass(frozen=True)
class LayerOverheads:
    """What one layer pass costs beyond its GEMMs and attention core, per layer kind and pass (F, I, W).

    ``embedding``, ``block``, ``head``: the fixed seconds of a pass (launching its kernels, the
    framework's dispatch and autograd bookkeeping); a transformer block runs some twenty kernels a
    pass, an embedding one (its W has nothing to run: the gradient of a lookup comes with the
    backward), a head a handful. ``per_byte``, where given, is in the same order (embedding, block,
    head) the seconds each pass's memory-bound kernels take per byte they move (``pipeplan.model``'s
    bf16 count times ``element_bytes`` / 2): it replaces ``kernel_bandwidth`` for layers, since on a
    CPU a norm or an activation inside a layer costs what no kernel timed alone shows, a head's
    cross-entropy moves its bytes faster than a block's norms and activation do, and an eager
    backward spends about what its forward spends where the model counts twice the bytes.
    ``pipeplan probe`` measures both in whole layers (``pipeplan.probe.layer``). Where a spec has
    none, ``GPUSpec.op_overhead_s`` is charged for every layer and pass alike.

    ``no_grad``, where given, is per kind (embedding, block, head) the fixed seconds and the seconds
    per byte of a forward run without recording its graph, as a fully recomputing stage runs its F
    (``validator.compute``: under ``torch.no_grad()``, each activation freed as the next is made):
    no autograd nodes to build, no tensors saved, memory reused while it is still in the cache."""

    embedding: tuple[float, float, float]
    block: tuple[float, float, float]
    head: tuple[float, float, float]
    per_byte: tuple[tuple[float, float, float], ...] | None = None
    no_grad: tuple[tuple[float, float], ...] | None = None

    def __post_init__(self) -> None:
        for kind in LAYER_KINDS:
            values = getattr(self, kind)
            if not isinstance(values, (list, tuple)) or len(values) != len(PASSES):
                raise SpecError(f"{kind}: needs {len(PASSES)} seconds ({', '.join(PASSES)}); got {values!r}")
            for value in values:
                positive_number(kind, value, allow_zero=True)
            object.__setattr__(self, kind, tuple(float(v) for v in values))
        if self.per_byte is not None:
            per_byte = self.per_byte
            if isinstance(per_byte, dict):
                unknown = sorted(set(per_byte) - set(LAYER_KINDS))
                if unknown:
                    raise SpecError(f"per_byte.{unknown[0]}: unknown layer kind; known kinds are {', '.join(LAYER_KINDS)}")
                missing = [k for k in LAYER_KINDS if k not in per_byte]
                if missing:
                    raise SpecError(f"per_byte.{missing[0]}: required field is missing")
                per_byte = tuple(per_byte[k] for k in LAYER_KINDS)
            if not isinstance(per_byte, (list, tuple)) or len(per_byte) != len(LAYER_KINDS):
                raise SpecError(f"per_byte: a mapping of {', '.join(LAYER_KINDS)} to [F, I, W] seconds per byte")
            rows = []
            for kind, values in zip(LAYER_KINDS, per_byte):
                if not isinstance(values, (list, tuple)) or len(values) != len(PASSES):
                    raise SpecError(f"per_byte.{kind}: needs {len(PASSES)} seconds per byte ({', '.join(PASSES)}); "
                                    f"got {values!r}")
                for value in values:
                    positive_number(f"per_byte.{kind}", value, allow_zero=True)
                rows.append(tuple(float(v) for v in values))
            object.__setattr__(self, "per_byte", tuple(rows))
        if self.no_grad is not None:
            object.__setattr__(self, "no_grad", _per_kind_pairs("no_grad", self.no_grad))

    def of(self, kind: str) -> tuple[float, float, float]:
        return getattr(self, kind)

    def no_grad_of(self, kind: str) -> tuple[float, float] | None:
        """(fixed seconds, seconds per byte) of ``kind``'s forward without a graph, or None (not measured)."""
        return None if self.no_grad is None else self.no_grad[LAYER_KINDS.index(kind)]

    def memory_of(self, kind: str) -> tuple[float, float, float] | None:
        """Seconds per byte of ``kind``'s memory-bound kernels in F, I and W, or None (not measured)."""
        return None if self.per_byte is None else self.per_byte[LAYER_KINDS.index(kind)]

    def to_dict(self) -> dict[str, Any]:
        data: dict[str, Any] = {kind: list(getattr(self, kind)) for kind in LAYER_KINDS}
        if self.per_byte is not None:
            data["per_byte"] = {kind: list(values) for kind, values in zip(LAYER_KINDS, self.per_byte)}
        if self.no_grad is not None:
            data["no_grad"] = {kind: list(values) for kind, values in zip(LAYER_KINDS, self.no_grad)}
        return data

    @staticmethod
    def from_dict(where: str, data: Any) -> "LayerOverheads":
        if isinstance(data, LayerOverheads):
            return data
        if not isinstance(data, dict):
            raise SpecError(f"{where}: must be a mapping of {', '.join(LAYER_KINDS)} to [F, I, W] seconds")
        unknown = sorted(set(data) - set(LAYER_KINDS) - {"per_byte", "no_grad"})
        if unknown:
            raise SpecError(f"{where}.{unknown[0]}: unknown layer kind; known kinds are {', '.join(LAYER_KINDS)} "
                            "(and per_byte, no_grad)")
        missing = [k for k in LAYER_KINDS if k not in data]
        if missing:
            raise SpecError(f"{where}.{missing[0]}: required field is missing")
        try:
            return LayerOverheads(**{k: data[k] for k in LAYER_KINDS}, per_byte=data.get("per_byte"),
                                  no_grad=data.get("no_grad"))
        except SpecError as err:
            raise SpecError(f"{where}.{err}") from None


def _per_kind_pairs(field: str, value: Any) -> tuple[tuple[float, float], ...]:
    """A mapping of each layer kind (or a sequence in ``LAYER_KINDS`` order) to [fixed seconds, seconds per byte]."""
    if isinstance(value, dict):
        unknown = sorted(set(value) - set(LAYER_KINDS))
        if unknown:
            raise SpecError(f"{field}.{unknown[0]}: unknown layer kind; known kinds are {', '.join(LAYER_KINDS)}")
        missing = [k for k in LAYER_KINDS if k not in value]
        if missing:
            raise SpecError(f"{field}.{missing[0]}: required field is missing")
        value = tuple(value[k] for k in LAYER_KINDS)
    if not isinstance(value, (list, tuple)) or len(value) != len(LAYER_KINDS):
        raise SpecError(f"{field}: a mapping of {', '.join(LAYER_KINDS)} to [fixed seconds, seconds per byte]")
    rows = []
    for kind, pair in zip(LAYER_KINDS, value):
        if not isinstance(pair, (list, tuple)) or len(pair) != 2:
            raise SpecError(f"{field}.{kind}: needs [fixed seconds, seconds per byte]; got {pair!r}")
        for number in pair:
            positive_number(f"{field}.{kind}", number, allow_zero=True)
        rows.append((float(pair[0]), float(pair[1])))
    return tuple(rows)
