"""Size limits and value ranges: the work a command is asked for, estimated before any of it starts.

Every entry point (``pipeplan schedule``, ``schedule search``, ``simulate``, ``optimize``,
``validate``, plan and CSV loading) sizes its job from its inputs alone, with the functions below,
and refuses a job past a limit in one line that gives the estimate, the limit and how to raise it.

Limits (``LIMITS``) are work sizes; each is raised by an environment variable, e.g.
``PIPEPLAN_MAX_OPS=20000000 pipeplan schedule 1f1b -p 512 -m 16384`` (the one mechanism: it reaches
the CLI, the Python API and the planner's worker processes alike). The defaults keep a job under
about 2 GB of memory; the figures behind them (``benchmarks/bench_limits.py``, 2-core VM) are in
the README's "Size limits" table.

Value ranges (``RANGES``) are not raisable: inside them no product, sum or ratio the cost model
and the simulator form can overflow or underflow a float, so no result is ever inf or NaN.
The bounds sit orders of magnitude beyond real hardware and models (an H100 has 989e12 FLOP/s,
NVLink 450e9 B/s; Llama 3 405B has hidden 16384, vocabulary 128256).
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass

from .errors import SpecError


@dataclass(frozen=True)
class Limit:
    """One work limit: ``default`` of ``unit``, raised by the environment variable ``env``."""

    name: str
    default: int
    env: str
    unit: str
    bounds: str


LIMITS: dict[str, Limit] = {lim.name: lim for lim in (
    # ~0.8 KB of memory and 3-8 us per compute op with its transfer (1f1b p=512 m=1953, 1,999,872 ops:
    # 1.6 GB, 6.5 s on an idle core), so the default keeps one simulation under about 2 GB.
    Limit("ops", 2_000_000, "PIPEPLAN_MAX_OPS", "ops",
          "ops in one simulation: devices x chunks x micro-batches x op kinds (F, B or F, I, W) x iterations; "
          "for the planner, its largest candidate"),
    # CP-SAT's model grows faster than the simulator's: p=16 m=256 (12,288 ops) took 21-29 s, 0.2-0.5 GB.
    Limit("search_ops", 20_000, "PIPEPLAN_MAX_SEARCH_OPS", "ops",
          "ops of `pipeplan schedule search` (CP-SAT holds one interval per op)"),
    # The cluster graph: 16,384 GPUs take about 1 s and 45 MB (routes are computed per pair used).
    Limit("gpus", 131_072, "PIPEPLAN_MAX_GPUS", "GPUs", "GPUs of a cluster (nodes x gpus_per_node)"),
    # Linear in the layers since each lookup is O(1): 20,000 blocks simulate in 1.5 s.
    Limit("layers", 50_000, "PIPEPLAN_MAX_LAYERS", "layers", "transformer blocks of a model (num_layers)"),
    Limit("input_bytes", 64 * 2**20, "PIPEPLAN_MAX_INPUT_BYTES", "bytes",
          "size of an input file (schedule CSV, plan, model, cluster, profile)"),
    # Charts, traces and saved timelines cost more per op than the simulation: at 524,288 ops a trace
    # took 23 s and 2.0 GB (a 306 MB file), a timeline 13 s and 1.5 GB (120 MB), a Gantt chart 8.5 s and
    # 0.8 GB. At the default a saved timeline stays under the input limit, so it can be drawn again.
    Limit("output_ops", 250_000, "PIPEPLAN_MAX_OUTPUT_OPS", "ops",
          "ops drawn or written by --gantt, --memory-plot, --trace and --timeline"),
    # A band re-times the plan once per sample (``pipeplan.bands``): 6 us per op and sample on this 2-core
    # VM at a load of 2 (llama3-8b pp=8 m=32), 14 us where the drawn times make transfers share a port and
    # the max-min event loop runs (m=256), 2-3x that at a load of 6 (``benchmarks/bench_bands.py``); the
    # default keeps a band, or optimize's ties, to 12-28 s at a load of 2.
    Limit("band_ops", 2_000_000, "PIPEPLAN_MAX_BAND_OPS", "op re-timings",
          "ops x samples of an uncertainty band (x the plans and spreads compared in optimize's ties)"),
    # ``optimize --inference`` may simulate every candidate (its bounds usually spare most): the sum of their
    # runs' ops bounds its time, at 3-8 us per op about a minute or two at the default.
    Limit("serving_ops", 20_000_000, "PIPEPLAN_MAX_SERVING_OPS", "ops",
          "ops of all the candidates of `optimize --inference` together (passes x stages of each run)"),
)}


def limit(name: str) -> int:
    """The limit ``name`` in force: its environment variable when set, else its default."""
    lim = LIMITS[name]
    text = os.environ.get(lim.env)
    if text is None or not text.strip():
        return lim.default
    try:
        value = int(text.strip().replace("_", ""))
    except ValueError:
        value = 0
    if value < 1:
        raise SpecError(f"{lim.env}: must be a whole number >= 1 (got {text!r}); unset it for the default "
                        f"{lim.default:,}")
    return value


def check(name: str, estimate: int, what: str, fix: str = "", note: str = "") -> None:
    """Refuse ``estimate`` past limit ``name`` in one line: ``what`` is N units ``note``, the limit, the ways out."""
    allowed = limit(name)
    if estimate > allowed:
        lim = LIMITS[name]
        also = f"{fix}, or " if fix else ""
        raise SpecError(f"{what} is {estimate:,} {lim.unit}{note}, over the limit of {allowed:,}; "
                        f"{also}raise the limit with {lim.env}=N (README: Size limits)")


# --- estimates ---------------------------------------------------------------------------------

def schedule_ops(devices: int, microbatches: int, chunks: int = 1, kinds: int = 3, iterations: int = 1) -> int:
    """Compute ops of a schedule: every stage (devices x chunks) runs ``kinds`` ops per micro-batch.

    Exact for the generated schedules; the transfers between devices are about as many again, and
    both are in the limit's per-op figure. Python integers: no overflow whatever the inputs.
    """
    return devices * chunks * microbatches * kinds * iterations


def op_kinds(schedule_name: str) -> int:
    """Ops per stage and micro-batch of a registry schedule: 3 with the split backward (F, I, W), 1 forward-only
    (F), else 2."""
    from simulator.schedules import lookup

    entry = lookup(schedule_name)
    if entry is not None and entry.forward_only:
        return 1
    return 3 if entry is None or entry.split_backward else 2


def check_schedule_size(name: str, devices: int, microbatches: int, chunks: int, iterations: int = 1,
                        what: str = "schedule", fix: str = "lower -p, -m or --iterations") -> None:
    """Refuse a schedule (with ``iterations`` back to back) too large to simulate."""
    ops = schedule_ops(devices, microbatches, chunks, op_kinds(name), iterations)
    reps = f" x {iterations:,} iterations" if iterations > 1 else ""
    check("ops", ops, f"{what}: {name} at p={devices:,}, m={microbatches:,}, v={chunks}{reps}", fix,
          f" (about {_gigabytes(ops)} to simulate)")


def check_search_size(devices: int, microbatches: int, chunks: int, split_backward: bool) -> None:
    """Refuse a schedule search whose CP-SAT model would be too large."""
    ops = schedule_ops(devices, microbatches, chunks, 3 if split_backward else 2)
    check("search_ops", ops, f"schedule search: p={devices:,}, m={microbatches:,}, v={chunks}",
          "lower -p or -m")


def check_csv_schedule(num_devices: int, num_stages: int, num_microbatches: int, cells: int) -> None:
    """Refuse a custom CSV schedule whose complete form (every stage, every micro-batch) would be too large.

    A complete schedule runs at least F and B of every (stage, micro-batch); the CSV's own action
    count is already bounded while it is read (``simulator.ir.from_csv``'s ``max_actions``).
    """
    needed = schedule_ops(1, num_microbatches, num_stages, kinds=2)
    check("ops", max(needed, cells), f"schedule CSV: {num_stages:,} stages x {num_microbatches:,} micro-batches on "
          f"{num_devices:,} devices", "check the stage and micro-batch numbers in its cells",
          " (numbered from 0, each stage runs F and B of every micro-batch)")


def plan_ops(plan, iterations: int = 1) -> int:
    """Compute ops of a plan's schedule run ``iterations`` times (a custom one: F and B per stage and micro-batch)."""
    if plan.schedule == "custom":
        return schedule_ops(1, plan.num_microbatches, plan.num_stages, 2, iterations)
    return schedule_ops(plan.pp, plan.num_microbatches, plan.chunks, op_kinds(plan.schedule), iterations)


def check_plan_size(plan, iterations: int = 1) -> None:
    """Refuse a plan (a ``pipeplan.plan.Plan``) too large to simulate, before its schedule is built.

    A custom schedule's own size is checked when its CSV is read; here only its repetitions.
    """
    check("gpus", plan.num_gpus, f"plan: tp x pp x dp = {plan.tp:,} x {plan.pp:,} x {plan.dp:,}",
          "lower tp, pp or dp")
    # Every stage holds a layer, so a plan cannot have more stages than a model may have layers.
    check("layers", plan.num_stages - 2, f"plan.layers_per_stage: {plan.num_stages:,} stages (minus the embedding "
          "and head)", "give one entry per stage")
    if plan.schedule != "custom":
        check_schedule_size(plan.schedule, plan.pp, plan.num_microbatches, plan.chunks, iterations, what="plan",
                            fix="lower pp or the micro-batches (-m), or --iterations")
    elif iterations > 1:
        check("ops", plan_ops(plan, iterations), f"plan: its custom schedule's {plan.num_stages:,} stages x "
              f"{plan.num_microbatches:,} micro-batches x {iterations:,} iterations", "lower --iterations")


def check_output_size(ops: int, flags: list[str]) -> None:
    """Refuse charts, traces and timelines of more than the output limit's ops (``flags``: those asked for)."""
    if flags:
        check("output_ops", ops, f"{flags[0]}: the simulation to draw or write", f"drop {' and '.join(flags)}")


def check_cluster_size(nodes: int, gpus_per_node: int, what: str = "cluster") -> None:
    check("gpus", nodes * gpus_per_node, f"{what}: {nodes:,} node(s) x {gpus_per_node:,} GPUs per node",
          "lower --nodes")


def check_model(model) -> None:
    """Refuse a ``ModelSpec`` past the layer limit or outside the value ranges (names the field)."""
    check("layers", model.num_layers, f"model.num_layers of {model.name}", "use fewer layers")
    for field in ("hidden", "heads", "ffn_hidden", "vocab", "seq_len", "kv_heads"):
        value = getattr(model, field, None)
        if value is not None:
            in_range(f"model.{field}", value, field)


def check_planner_size(model, global_batch: int, gpus: int, gpus_per_node: int, microbatch_sizes,
                       max_chunks: int = 4, tp: int | None = None, pp: int | None = None,
                       dp: int | None = None) -> None:
    """Refuse a planner search whose largest candidate would be too large to simulate.

    Over the layouts tp x pp x dp = ``gpus`` the pins allow (tp dividing a node, pp at most the model's
    pipeline layers, dp dividing the global batch), the largest simulation is the one with the fewest
    replicas and the smallest micro-batch size b (1 unless sizes are given): m = global batch /
    (dp x b) micro-batches over pp x chunks stages (at most one per layer), F, I and W each.
    """
    b = min(microbatch_sizes) if microbatch_sizes else 1
    layers = model.num_pipeline_layers
    worst = None
    for t in ([tp] if tp is not None else _divisors(gpus_per_node)):
        if gpus % t:
            continue
        for p in ([pp] if pp is not None else _divisors(gpus // t)):
            d = gpus // (t * p) if dp is None else dp
            if t * p * d != gpus or p > layers or global_batch % d:
                continue
            m = max(1, global_batch // (d * b))
            ops = schedule_ops(1, m, min(layers, p * max_chunks), kinds=3)
            if worst is None or ops > worst[0]:
                worst = (ops, t, p, d, m)
    if worst is None:
        return  # no layout fits the pins: the planner says so itself, before any work
    ops, t, p, d, m = worst
    check("ops", ops, f"optimize: global batch {global_batch:,} on tp={t} pp={p} dp={d} is m = {m:,} micro-batches "
          f"of b = {b} over up to {min(layers, p * max_chunks):,} stages, which", "give larger --microbatch-sizes, "
          "a smaller --global-batch or a larger --dp", f" (about {_gigabytes(ops)} to simulate)")


def _divisors(n: int) -> list[int]:
    small = [k for k in range(1, math.isqrt(n) + 1) if n % k == 0]
    return small + [n // k for k in reversed(small) if k * k != n]


def check_input_file(path, what: str) -> None:
    """Refuse an input file larger than the limit, before reading it."""
    try:
        size = os.stat(path).st_size
    except OSError:
        return  # the reader reports a missing or unreadable file itself
    check("input_bytes", size, f"{what}: {str(path)!r}", "give a smaller file")


# Memory per compute op with its transfer, measured (1,622 MB at 1,999,872 ops, see LIMITS["ops"]); only to
# say how big a refused job is.
BYTES_PER_OP = 810


def _gigabytes(ops: int) -> str:
    gb = ops * BYTES_PER_OP / 1e9
    return f"{gb:,.1f} GB" if gb < 1e6 else f"{gb:.1e} GB"


# --- value ranges ------------------------------------------------------------------------------

@dataclass(frozen=True)
class Range:
    """Allowed values: ``low`` <= x <= ``high``, and 0 where ``zero`` (a time or latency may be none)."""

    low: float
    high: float
    unit: str
    zero: bool = False

    def text(self) -> str:
        ends = (f"{self.low:,} .. {self.high:,}" if isinstance(self.low, int) and isinstance(self.high, int)
                else f"{self.low:g} .. {self.high:g}")
        return f"{'0 or ' if self.zero else ''}{ends}" + (f" {self.unit}" if self.unit else "")


RANGES: dict[str, Range] = {
    # ``pipeplan schedule``'s synthetic times (any unit): 1e9 x 1e9 ops stays far below float's 1.8e308,
    # and 1e-9 against 1e9 keeps 18 decimal orders, more than a float resolves, but no underflow.
    "time": Range(1e-9, 1e9, "", zero=True),
    "latency": Range(1e-12, 100.0, "s", zero=True),
    "bandwidth": Range(1e3, 1e16, "B/s"),
    "flops": Range(1e6, 1e20, "FLOP/s"),
    "memory_bytes": Range(1e3, 1e18, "B"),
    "bytes": Range(1e-3, 1e18, "B", zero=True),  # measured bytes (a profile's boundary tensors)
    "fraction": Range(1e-3, 1.0, ""),
    "oversubscription": Range(1.0, 1e6, ""),
    "per_node": Range(1, 4096, ""),  # GPUs or NICs per node
    "gpu_units": Range(1, 2**20, ""),  # SMs, tile sizes
    "half_length": Range(1e-6, 2**24, "", zero=True),  # a kernel curve's half-performance size, a table's grid
    # Model shapes: with all at their maximum a layer's FLOPs (24 b s h^2 + 4 b s^2 h) stay below 1e40.
    "hidden": Range(1, 2**20, ""),
    "heads": Range(1, 2**20, ""),
    "kv_heads": Range(1, 2**20, ""),
    "ffn_hidden": Range(1, 2**22, ""),
    "vocab": Range(1, 2**24, ""),
    "seq_len": Range(1, 2**24, "tokens"),
    "microbatch_size": Range(1, 2**20, "sequences"),
    "global_batch": Range(1, 2**40, "sequences"),
    # Processes or threads one command starts (optimize --jobs, schedule search --workers, validate
    # --threads): past this the machine, not the job, is what runs out (a fork bomb, int overflows in C).
    "workers": Range(1, 256, "processes or threads"),
    # A relative 1-sigma of op or link times (``pipeplan.bands``): 2 is a factor of e^2 either way at one
    # sigma as a common factor, far beyond any cost model worth a band.
    "spread": Range(1e-6, 2.0, "", zero=True),
    # Samples of a band: a 90 % interval needs some in each 5 % tail; past 100,000 the quantiles no longer move.
    "band_samples": Range(20, 100_000, "samples"),
}
# The longest time budget a flag takes (a week): past it a run is stuck, not slow, and the solvers' and
# the launcher's clocks (millisecond counts in C) stay far from overflowing.
MAX_SECONDS = 7 * 24 * 3600.0


def in_range(field: str, value: float, kind: str) -> float:
    """``value`` when it lies in ``RANGES[kind]``; else a one-line SpecError naming ``field`` and the range."""
    r = RANGES[kind]
    ok = isinstance(value, (int, float)) and not isinstance(value, bool)
    ok = ok and not (isinstance(value, float) and math.isnan(value))  # a huge int compares exactly, never NaN
    if ok and not (r.zero and value == 0):
        ok = r.low <= value <= r.high
    if not ok:
        shown = repr(value)
        if len(shown) > 40:  # a number of hundreds of digits, say
            shown = f"{shown[:20]}... ({len(shown)} characters)"
        raise SpecError(f"{field}: must be {r.text()} (got {shown})")
    return value


def check_cluster_values(cluster) -> None:
    """Refuse a ``ClusterSpec`` whose numbers are outside ``RANGES`` or whose graph is past the GPU limit."""
    gpu = cluster.gpu
    in_range("cluster.gpu.peak_flops", gpu.peak_flops, "flops")
    in_range("cluster.gpu.memory_bytes", gpu.memory_bytes, "memory_bytes")
    in_range("cluster.gpu.hbm_bandwidth", gpu.hbm_bandwidth, "bandwidth")
    in_range("cluster.gpu.op_overhead_s", gpu.op_overhead_s, "latency")
    in_range("cluster.gpu.max_fraction", gpu.max_fraction, "fraction")
    for f in ("sms", "tile_m", "tile_n"):
        in_range(f"cluster.gpu.{f}", getattr(gpu, f), "gpu_units")
    if gpu.kernel_bandwidth is not None:
        in_range("cluster.gpu.kernel_bandwidth", gpu.kernel_bandwidth, "bandwidth")
    if gpu.layer_overheads is not None:
        for kind in ("embedding", "block", "head"):
            for value in gpu.layer_overheads.of(kind):
                in_range(f"cluster.gpu.layer_overheads.{kind}", value, "latency")
    if gpu.gemm_curve is not None:
        in_range("cluster.gpu.gemm_curve.rate", gpu.gemm_curve.rate, "flops")
        in_range("cluster.gpu.gemm_curve.call_s", gpu.gemm_curve.call_s, "latency")
        for half in gpu.gemm_curve.halves:
            in_range("cluster.gpu.gemm_curve.halves", half, "half_length")
    for f in ("attention_forward", "attention_backward"):
        table = getattr(gpu, f)
        for rate in table.rates if table is not None else ():
            in_range(f"cluster.gpu.{f}.rates", rate, "flops")
        for axis in table.axes if table is not None else ():
            for value in axis:
                in_range(f"cluster.gpu.{f}.axes", value, "half_length")
    for section, link in (("intra", cluster.intra), ("inter", cluster.inter)):
        in_range(f"cluster.{section}.bandwidth", link.bandwidth, "bandwidth")
        in_range(f"cluster.{section}.latency", link.latency, "latency")
    in_range("cluster.gpus_per_node", cluster.gpus_per_node, "per_node")
    in_range("cluster.nics_per_node", cluster.nics_per_node, "per_node")
    in_range("cluster.oversubscription", cluster.oversubscription, "oversubscription")
    check_cluster_size(cluster.nodes, cluster.gpus_per_node, f"cluster.nodes: {cluster.name}")
