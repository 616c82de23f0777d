"""From the ranks' timings to a cluster spec: every fitted GPU field, the links, and the probe record.

Per benchmark (``pipeplan.probe.kernels``, ``layer``, ``links``), the samples of a point are pooled
over the ranks and its median is what the fit sees:

* ``gemm`` → ``gemm_curve`` (a ``ShapeCurve`` over m, n, k) or, where it fits better, the tile-and-wave
  model's ``max_fraction`` (on a GPU, with its SM count and 256 x 128 tiles; on a CPU the tile-and-wave
  model is one rate for every shape and the curve wins);
* ``attention_forward``/``attention_backward`` → the attention tables over (s, d); a point's "fitted"
  time in the record is what the table gives with that point left out (its neighbours along s);
* ``elementwise_forward``/``_backward`` → ``kernel_bandwidth``: the memory-bound kernels timed
  alone, the model's bytes (times ``element_bytes`` / 2) over seconds, one affine fit over both
  passes (on a CPU a layer's own kernels are priced by ``layer_overheads.per_byte`` instead);
* ``copy`` → ``hbm_bandwidth`` (DRAM on a CPU), from copies past every cache;
* ``layer`` → ``layer_overheads``: whole layers at ``LAYER_SHAPES`` in a stage's steady state, less
  what their GEMMs and attention cores took inside them (``inside``, the profiler's self times: on a
  CPU; where a result lacks them, and on a GPU, less their price). On a CPU, per layer kind and pass, that
  remainder against the bytes its memory-bound kernels move (``overhead_fit``): the cost per byte
  is the median of the slopes from the vanishing shape to the four others, the fixed cost the median
  of what is left after it (neither below 0); the shapes span 5 kB to 3 MB moved a block forward.
  A pass whose kernels the model counts no bytes for (a block's or a head's W) keeps the median
  remainder as its fixed cost; an embedding's W, which runs nothing (its tables' gradients come in I),
  0. The forward without its graph (pass ``NO_GRAD``) is fitted as F is, into ``no_grad``. On a
  GPU, whose layers at those shapes are all fixed cost, the fixed cost is what is left after the
  fitted kernels (the elementwise rate included). ``op_overhead_s`` is the block's mean over its
  passes (what a reader of the one figure gets);
* ``link`` → ``intra`` (and ``inter``: one host has no inter-node link, so it gets the same figures):
  latency and bandwidth of one-way times by message size, the lower quartile of each size's trips.
"""
from __future__ import annotations

import statistics
from dataclasses import replace
from typing import Any

from ..cluster import ClusterSpec, GPUSpec, LinkSpec
from ..costs import layer_work, price
from ..kernel_curves import LayerOverheads
from .fit import fit_affine, fit_curve, fit_table, fit_tile_waves
from .layer import IN_FLIGHT, KINDS, LAYER_SHAPES, NO_GRAD, PASSES
from .record import ProbePoint, ProbeQuantity, ProbeRecord
from .worker import THREADS

# Dense bf16 peaks from the vendor datasheets (shared REFERENCE; H200 has the H100 SXM's SMs and clocks).
DATASHEET_PEAKS = (("H200", 989e12), ("H100", 989e12), ("A100", 312e12), ("L40S", 362e12))
GPU_TILE = (256, 128)
DIMS = {"gemm": ("m", "n", "k", "layout"), "attention_forward": ("heads_x_batch", "s", "d"),
        "attention_backward": ("heads_x_batch", "s", "d"),
        "elementwise_forward": ("tokens", "hidden", "gated", "vocab"),
        "elementwise_backward": ("tokens", "hidden", "gated", "vocab"), "layer": ("shape", "kind", "pass"),
        "copy": ("bytes",), "link": ("bytes",)}


def _medians(result: dict) -> list[float]:
    return [statistics.median(s) for s in result["samples"]]


def _lower_quartiles(result: dict) -> list[float]:
    """Per point the 25th percentile of its samples: a round trip is only ever lengthened by the
    other rank waiting for its core, and the validator keeps only iterations nobody waited in (on
    this VM, with other jobs running, the median 4-byte trip was 1.8 ms, the lower quartile 0.1 ms)."""
    return [statistics.quantiles(s, n=4, method="inclusive")[0] if len(s) > 1 else s[0] for s in result["samples"]]


def _quantity(result: dict, name: str, fitted: list[float]) -> ProbeQuantity:
    points = tuple(ProbePoint(tuple(float(x) for x in shape), tuple(samples), float(f))
                   for shape, samples, f in zip(result["shapes"], result["samples"], fitted))
    return ProbeQuantity("s", DIMS[name], points, result.get("disturbed"))


def _gemm(result: dict, cuda: bool, sms: int) -> tuple[dict[str, Any], float]:
    """GPU fields for the GEMM model that fits best, and the curve's rate or the tile model's."""
    t = _medians(result)
    dims = [tuple(d) for d in result["dims"]]
    curve, curve_rms = fit_curve(dims, result["sizes"], t)
    tile = GPU_TILE if cuda else (1, 1)
    tile_rate, tile_rms = fit_tile_waves(dims, t, sms if cuda else 1, *tile)
    if curve_rms <= tile_rms:
        return {"gemm_curve": curve, "sms": sms if cuda else 1, "tile_m": tile[0], "tile_n": tile[1]}, curve.rate
    return {"sms": sms if cuda else 1, "tile_m": tile[0], "tile_n": tile[1]}, tile_rate


def build_spec(ranks: list[dict], options: dict, machine: dict, seconds: float) -> ClusterSpec:
    """The cluster spec of this machine from the ranks' results (``pipeplan.probe.worker``).

    ``machine``: what the launcher knows of the host (``cpu_name``, ``peak_flops`` bound or None,
    ``memory_bytes``, ``devices`` per node)."""
    cuda = options["device"] == "cuda"
    merged = _merge([r["results"] for r in ranks])
    head = ranks[0]
    element_bytes = 2 if cuda else 4
    gemm_fields, rate = _gemm(merged["gemm"], cuda, head.get("sms") or 1)
    peak = _peak(head.get("cuda_name"), machine.get("peak_flops"), rate, cuda)
    attention, left_out = {}, {}
    for name in ("attention_forward", "attention_backward"):
        attention[name], left_out[name] = _attention(merged[name])
    ew = {k: merged[f"elementwise_{k}"] for k in ("forward", "backward")}
    ew_bytes = [b * element_bytes / 2 for k in ("forward", "backward") for b in ew[k]["sizes"]]
    ew_fit = fit_affine(ew_bytes, [t for k in ("forward", "backward") for t in _medians(ew[k])])
    copy_fit = fit_affine(merged["copy"]["sizes"], _medians(merged["copy"]))
    device_name = head.get("cuda_name") or f"{machine['cpu_name']}, 1 core, float32"
    gpu = GPUSpec(name=device_name, peak_flops=peak, memory_bytes=machine["memory_bytes"],  # overheads: below
                  max_fraction=min(1.0, max(1e-3, rate / peak)), hbm_bandwidth=copy_fit.rate, op_overhead_s=0.0,
                  element_bytes=element_bytes, kernel_bandwidth=ew_fit.rate, **gemm_fields, **attention)
    overheads, layer_fitted = _layer_fit(merged["layer"], gpu, fit_rates=not cuda)
    gpu = GPUSpec(**{**{f: getattr(gpu, f) for f in gpu.__dataclass_fields__},
                     "op_overhead_s": statistics.fmean(overheads.block), "layer_overheads": overheads})
    link_fit = fit_affine(merged["link"]["sizes"], _lower_quartiles(merged["link"]))
    link = {"bandwidth": link_fit.rate, "latency": link_fit.intercept}

    fitted = {
        "gemm": [gpu.gemm_seconds(*d) for d in merged["gemm"]["dims"]],
        **{f"elementwise_{k}": [ew_fit.intercept + b * element_bytes / 2 / ew_fit.rate for b in ew[k]["sizes"]]
           for k in ("forward", "backward")},
        "copy": [copy_fit.intercept + b / copy_fit.rate for b in merged["copy"]["sizes"]],
        "layer": layer_fitted,
        "link": [link_fit.intercept + b / link_fit.rate for b in merged["link"]["sizes"]],
    }
    fitted.update(left_out)  # a table holds every grid point; its error is between them
    quantities = tuple((name, _quantity(merged[name], name, fitted[name])) for name in DIMS)
    notes = tuple(f"{name}: {q.disturbed}" for name, q in quantities if q.disturbed)
    record = ProbeRecord(device=device_name, backend=options["backend"], dtype="bfloat16" if cuda else "float32",
                         threads=THREADS, ranks=len(ranks), seconds=seconds, torch=head["torch"],
                         disturbed=bool(notes), notes=notes, quantities=quantities)
    return ClusterSpec(name=f"probed-{options['device']}-{options['backend']}", gpu=gpu,
                       gpus_per_node=machine["devices"], intra=LinkSpec("intra", **link),
                       inter=LinkSpec("inter", **link), nics_per_node=1, probe=record)


def _attention(result: dict):
    """The rate table over the grid points and, from the point with no dims, the cost of a call; the
    fitted seconds per point (left out of the table for grid points, the call time for the call)."""
    t = _medians(result)
    grid = [i for i, d in enumerate(result["dims"]) if d]
    calls = [t[i] for i, d in enumerate(result["dims"]) if not d]
    table, left_out = fit_table([tuple(result["dims"][i]) for i in grid], [result["sizes"][i] for i in grid],
                                [t[i] for i in grid], min(calls) if calls else 0.0)
    fitted = dict(zip(grid, left_out))
    return table, [fitted.get(i, table.call_s) for i in range(len(t))]


def _merge(per_rank: list[dict]) -> dict[str, dict]:
    """Per benchmark, the ranks' samples of each point pooled; a disturbance any rank saw is kept."""
    merged: dict[str, dict] = {}
    for results in per_rank:
        for name, res in results.items():
            if name not in merged:
                merged[name] = {**res, "samples": [list(s) for s in res["samples"]]}
                if "inside" in res:
                    merged[name]["inside"] = [list(s) for s in res["inside"]]
                continue
            for into, more in zip(merged[name]["samples"], res["samples"]):
                into.extend(more)
            for into, more in zip(merged[name].get("inside", ()), res.get("inside", ())):
                into.extend(more)
            merged[name]["disturbed"] = merged[name]["disturbed"] or res["disturbed"]
    return merged


def _peak(cuda_name: str | None, cpu_bound: float | None, best_rate: float, cuda: bool) -> float:
    """A GPU's datasheet peak when its name is known, a CPU core's bound from its flags, else the
    fitted rate itself (max_fraction 1)."""
    if cuda:
        for key, peak in DATASHEET_PEAKS:
            if cuda_name and key in cuda_name:
                return peak
        return best_rate
    return max(cpu_bound, best_rate) if cpu_bound else best_rate


def overhead_fit(moved: list[float], left: list[float]) -> tuple[float, float]:
    """(fixed seconds, seconds per byte), both >= 0, from what is left of each layer pass after its
    priced kernels (``left``) against the bytes it moves (``moved``): the cost per byte is the median
    of the slopes from the shape that moves least (the vanishing one, nearly all fixed cost) to each
    other shape, the fixed cost the median of what is left after it. What is left is a small
    difference of large numbers where GEMMs dominate a layer (the GEMM curve misses single shapes by
    up to a third), so one shape the curve misprices must not set the line: with four other shapes,
    however far off it is, it moves either median only within the range the other shapes' values span.
    Where no shape moves more bytes than another, the median of what is left."""
    smallest = min(range(len(moved)), key=lambda i: moved[i])
    slopes = [(r - left[smallest]) / (b - moved[smallest]) for b, r in zip(moved, left) if b > moved[smallest]]
    per_byte = max(0.0, statistics.median(slopes)) if slopes else 0.0
    return max(0.0, statistics.median(r - b * per_byte for b, r in zip(moved, left))), per_byte


def _layer_fit(result: dict, gpu: GPUSpec, fit_rates: bool) -> tuple[LayerOverheads, list[float]]:
    """(per layer kind and pass the fixed cost and, on a CPU, the cost per byte of the memory-bound
    kernels; the fitted seconds per point, as sampled: ``IN_FLIGHT`` passes) from the layers' timings
    (module docstring)."""
    bare = replace(gpu, layer_overheads=None, op_overhead_s=0.0, **({"kernel_bandwidth": 1e30} if fit_rates else {}))
    points = []  # (kind index, pass index, seconds of one pass, priced kernels, bytes moved, kernels as they ran)
    ran = [sum(statistics.median(part) for part in zip(*s)) / IN_FLIGHT if s else None
           for s in result.get("inside") or [[] for _ in result["shapes"]]]
    for shape, t, inside in zip(result["shapes"], _medians(result), ran):
        j, k, p = (int(x) for x in shape)
        spec, batch = LAYER_SHAPES[j]
        work = layer_work(spec, spec.layer_kinds.index(KINDS[k]), batch, spec.seq_len, False)
        cost = price(work, bare)
        priced = (cost.forward, cost.backward_input, cost.backward_weight, cost.forward)[p]
        moved = (work.forward_memory_bytes, work.input_grad_memory_bytes, work.weight_grad_memory_bytes,
                 work.forward_memory_bytes)[p]  # a forward without its graph moves what a forward moves
        points.append((k, p, t / IN_FLIGHT, priced, moved * gpu.element_bytes / 2 if fit_rates else 0.0,
                       priced if inside is None else inside))
    fixed = {kind: [0.0] * (len(PASSES) + 1) for kind in KINDS}
    per_byte = {kind: [0.0] * (len(PASSES) + 1) for kind in KINDS}
    for k, kind in enumerate(KINDS):
        for p in range(len(PASSES) + 1):
            mine = [pt for pt in points if pt[0] == k and pt[1] == p]
            if not mine:
                continue  # an embedding's W runs nothing
            fixed[kind][p], per_byte[kind][p] = overhead_fit([pt[4] for pt in mine], [pt[2] - pt[5] for pt in mine])
    no_grad = fit_rates and any(pt[1] == NO_GRAD for pt in points)
    overheads = LayerOverheads(**{kind: tuple(fixed[kind][:len(PASSES)]) for kind in KINDS},
                               per_byte=tuple(tuple(per_byte[kind][:len(PASSES)]) for kind in KINDS) if fit_rates else None,
                               no_grad=tuple((fixed[kind][NO_GRAD], per_byte[kind][NO_GRAD]) for kind in KINDS)
                               if no_grad else None)
    fitted = [IN_FLIGHT * (pt[3] + fixed[KINDS[pt[0]]][pt[1]] + pt[4] * per_byte[KINDS[pt[0]]][pt[1]])
              for pt in points]
    return overheads, fitted
