"""Fitting the probe's timings: kernel-time curves, bandwidths, link latency and bandwidth.

Pure numpy; every fit minimises the squared *relative* error, sum over points of (fitted / measured − 1)²,
so a 5 us kernel counts as much as a 50 ms one (a layer's small GEMMs matter as much as its big ones).

* ``fit_curve``: ``ShapeCurve`` (``call_s + work / rate · Π (1 + halves[i] / dims[i])``). For fixed
  halves the form is linear in (call_s, 1 / rate), solved exactly; the halves are searched on a
  logarithmic grid (0 and 1/4 .. 4096), all dimensions at once, then refined one dimension at a time.
* ``fit_tile_waves``: the GPU tile-and-wave model's one free number, ``max_fraction``, for a given SM
  count and tile (``GPUSpec.gemm_seconds`` without its roofline).
* ``fit_affine``: seconds = intercept + size / rate (a memory-bound kernel's bytes, a link's message).
* ``fit_table``: a ``ShapeTable`` holding each grid point's measured rate; what it would give for a
  point from the points beside it (left out itself) is its honest error between grid points.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np

from ..kernel_curves import ShapeCurve, ShapeTable

HALF_GRID = np.concatenate(([0.0], np.geomspace(0.25, 4096.0, 29)))


@dataclass(frozen=True)
class Affine:
    """``intercept + size / rate``; ``rms`` is the fit's relative root-mean-square error."""

    intercept: float
    rate: float
    rms: float


def _solve(x: np.ndarray, t: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per row r of ``x`` (shape R x N), the (c, a) >= 0 minimising Σ_j ((c + a·x[r, j]) / t_j − 1)², and the
    sum itself. Closed-form normal equations in the scaled variables u_j = 1 / t_j, v_j = x_j / t_j."""
    u = 1.0 / t
    v = x * u
    suu, suv, svv = np.sum(u * u), np.sum(v * u, axis=-1), np.sum(v * v, axis=-1)
    su, sv = np.sum(u), np.sum(v, axis=-1)
    det = suu * svv - suv * suv
    with np.errstate(divide="ignore", invalid="ignore"):
        c = (svv * su - suv * sv) / det
        a = (suu * sv - suv * su) / det
        a_only = sv / svv  # c = 0
    bad = ~(det > 0) | (c < 0) | (a <= 0)
    c = np.where(bad, 0.0, c)
    a = np.where(bad, a_only, a)
    sse = np.sum((c[..., None] * u + a[..., None] * v - 1.0) ** 2, axis=-1)
    return c, a, sse


def _stretch(halves: np.ndarray, dims: np.ndarray) -> np.ndarray:
    """Π_i (1 + halves[..., i] / dims[:, i]) for every candidate row of ``halves`` (R x D) → R x N."""
    return np.prod(1.0 + halves[:, None, :] / np.maximum(dims[None, :, :], 1.0), axis=-1)


def fit_curve(dims: Sequence[Sequence[float]], work: Sequence[float],
              seconds: Sequence[float]) -> tuple[ShapeCurve, float]:
    """The ``ShapeCurve`` that fits kernels of ``dims`` doing ``work`` FLOPs in ``seconds``, and its
    relative RMS error. Needs at least 3 points with positive times."""
    d = np.asarray(dims, dtype=float)
    w = np.asarray(work, dtype=float)
    t = np.asarray(seconds, dtype=float)
    if d.ndim != 2 or len(d) != len(w) or len(w) != len(t) or len(t) < 3 or not np.all(t > 0):
        raise ValueError("fit_curve needs at least 3 points, each with dims, work and a positive time")
    ndim = d.shape[1]
    grid = np.stack(np.meshgrid(*([HALF_GRID] * ndim), indexing="ij"), axis=-1).reshape(-1, ndim)
    best_sse, best = math.inf, None
    for chunk in np.array_split(grid, max(1, len(grid) // 4096)):
        c, a, sse = _solve(w * _stretch(chunk, d), t)
        k = int(np.argmin(sse))
        if sse[k] < best_sse:
            best_sse, best = float(sse[k]), (chunk[k].copy(), float(c[k]), float(a[k]))
    halves, c, a = best
    # Refine each half on a finer grid around the coarse optimum, a few sweeps.
    for _ in range(3):
        for i in range(ndim):
            centre = halves[i]
            lo, hi = (0.0, 0.5) if centre == 0 else (centre / 1.5, centre * 1.5)
            cand = np.repeat(halves[None, :], 33, axis=0)
            cand[:, i] = np.linspace(lo, hi, 33)
            cc, aa, sse = _solve(w * _stretch(cand, d), t)
            k = int(np.argmin(sse))
            if sse[k] <= best_sse:
                best_sse, halves, c, a = float(sse[k]), cand[k].copy(), float(cc[k]), float(aa[k])
    curve = ShapeCurve(rate=1.0 / a, halves=tuple(float(h) for h in halves), call_s=c)
    return curve, math.sqrt(best_sse / len(t))


def tile_wave_seconds(m: float, n: float, k: float, sms: int, tile_m: int, tile_n: int, rate: float) -> float:
    """``GPUSpec.gemm_seconds``'s compute term with ``rate`` = peak x max_fraction."""
    tm, tn = min(tile_m, m), min(tile_n, n)
    waves = math.ceil(math.ceil(m / tm) * math.ceil(n / tn) / sms)
    return waves * 2.0 * tm * tn * k * sms / rate


def fit_tile_waves(shapes: Sequence[Sequence[float]], seconds: Sequence[float], sms: int, tile_m: int,
                   tile_n: int) -> tuple[float, float]:
    """(rate, relative RMS): the ``peak x max_fraction`` that best fits the tile-and-wave model."""
    unit = np.array([tile_wave_seconds(m, n, k, sms, tile_m, tile_n, 1.0) for m, n, k in shapes])
    t = np.asarray(seconds, dtype=float)
    # t ≈ unit / rate: least relative squares in a = 1 / rate gives a = Σ(unit/t) / Σ(unit/t)².
    r = unit / t
    a = float(np.sum(r) / np.sum(r * r))
    rms = float(np.sqrt(np.mean((a * r - 1.0) ** 2)))
    return 1.0 / a, rms


def fit_affine(sizes: Sequence[float], seconds: Sequence[float]) -> Affine:
    """``seconds ≈ intercept + size / rate`` with intercept >= 0 (at least 2 points)."""
    x = np.asarray(sizes, dtype=float)[None, :]
    t = np.asarray(seconds, dtype=float)
    if x.shape[1] != len(t) or len(t) < 2 or not np.all(t > 0) or not np.any(x > 0):
        raise ValueError("fit_affine needs at least 2 points with positive times and a positive size")
    c, a, sse = _solve(x, t)
    return Affine(float(c[0]), 1.0 / float(a[0]), math.sqrt(float(sse[0]) / len(t)))


def fit_table(dims: Sequence[Sequence[float]], work: Sequence[float], seconds: Sequence[float],
              call_s: float = 0.0) -> tuple[ShapeTable, list[float]]:
    """The table of rates work / (seconds − call_s) over the grid the points span (each grid point
    measured once), and per point the seconds the table gives for it when that point is left out:
    interpolated from its two neighbours along the first axis (log-rate against log-size), or its own
    time at either end. ``call_s`` is what a call of no size took; it stays below every point's time."""
    points = [tuple(float(x) for x in d) for d in dims]
    ndim = len(points[0]) if points else 0
    axes = tuple(tuple(sorted({p[i] for p in points})) for i in range(ndim))
    call_s = min([call_s, *(0.5 * t for t in seconds)])  # a noisy call time never eats a kernel's whole time
    rate_at = {p: w / (t - call_s) for p, w, t in zip(points, work, seconds)}
    grid = [()]
    for axis in axes:
        grid = [g + (v,) for g in grid for v in axis]
    missing = [g for g in grid if g not in rate_at]
    if missing or len(rate_at) != len(points):
        raise ValueError(f"fit_table needs one point at every grid point (missing {missing[:1]})")
    table = ShapeTable(axes, tuple(rate_at[g] for g in grid), call_s)
    left_out = []
    first = axes[0]
    for p, w, t in zip(points, work, seconds):
        i = first.index(p[0])
        if 0 < i < len(first) - 1:
            below, above = (first[i - 1],) + p[1:], (first[i + 1],) + p[1:]
            frac = math.log(p[0] / first[i - 1]) / math.log(first[i + 1] / first[i - 1])
            rate = math.exp((1 - frac) * math.log(rate_at[below]) + frac * math.log(rate_at[above]))
            left_out.append(call_s + w / rate)
        else:
            left_out.append(t)
    return table, left_out
