"""The 3D layouts a planner search can choose: tp x pp x dp = the GPUs, and what each layout can never beat.

A ``Layout`` fixes the tensor-parallel degree tp (a divisor of a node's GPUs and of the model's heads),
the pipeline devices pp (at most the pipeline layers) and the data-parallel replicas dp (dividing the
global batch), with sequence parallelism and the distributed optimizer on or off. ``enumerate_layouts``
lists every layout the pins allow, so that tp·pp·dp equals the GPUs the user gives.

Two switches are not searched when left open where pipeplan's cost model makes them dominant:
sequence parallelism (with tp > 1) stores less (the norms' and dropout's activations split over the
tensor ranks) and, forward, moves the same bytes as tensor parallelism's all-reduces (a reduce-scatter
and an all-gather instead of each all-reduce) while splitting the norms and dropout's work; backward it
all-gathers the QKV and FC1 inputs once more (Megatron keeps only their shards). It is on where the
model's layers, priced one micro-batch of one sequence, run no slower with it (on NVLink the split
memory-bound work outweighs the extra all-gathers about twice), and both ways are searched where they run
slower (a slow tensor-parallel link); the distributed optimizer (with dp > 1) moves the
same ring bytes (a reduce-scatter of the gradients and an all-gather of bf16 weights instead of the
all-reduce), shards the Adam step and its state, and stores less; it is slower by at most its
parameter all-gather, which follows the step exposed where the gradient reduction it replaces would
have hidden behind the backward in buckets (tests/test_layouts.py holds both on examples; llama3-70b
at tp 8, pp 4, dp 2: +0.7 %). A pinned value is kept as given.

Per layout, two numbers nobody's split can beat, both from ``pipeplan.costs`` priced one layer at a
time without recomputation (the way ``lowering`` sums a stage):

* ``memory_floor``: the static bytes (weights, gradients, optimizer state) on the fullest device are at
  least max(the heaviest layer's, all layers' / pp); a layout whose floor is above the usable memory
  cannot fit whatever the split, schedule or recomputation;
* ``time_floor``: the busiest device computes at least 1/pp of a replica's F + I + W for all its
  micro-batches, at the cheapest micro-batch size, plus its share of the optimizer step (on the
  compute stream): a lower bound on the simulated iteration time (``bounds`` argues the same way
  per device), so a layout whose floor is not below the best simulated plan can be skipped safely.
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

from ..cluster import ClusterSpec
from ..costs import layer_work, price, static_bytes
from ..dataparallel import optimizer_seconds
from ..errors import SpecError
from ..model import ModelSpec
from .candidates import divisors


@dataclass(frozen=True)
class Layout:
    """One 3D layout: ``tp`` x ``pp`` x ``dp`` GPUs, in Megatron-LM's rank order (``pipeplan.parallel``)."""

    tp: int
    pp: int
    dp: int
    sequence_parallel: bool = False
    distributed_optimizer: bool = False

    @property
    def num_gpus(self) -> int:
        return self.tp * self.pp * self.dp

    @property
    def label(self) -> str:
        flags = (" sp" if self.sequence_parallel else "") + (" dist-opt" if self.distributed_optimizer else "")
        return f"tp={self.tp} pp={self.pp} dp={self.dp}{flags}"


@dataclass(frozen=True)
class LayoutPins:
    """What the user fixed (None: searched). ``gpus``: exactly how many GPUs the layout uses."""

    gpus: int
    tp: int | None = None
    pp: int | None = None
    dp: int | None = None
    sequence_parallel: bool | None = None
    distributed_optimizer: bool | None = None


def _tp_allowed(model: ModelSpec, tp: int) -> bool:
    try:
        model.check_tp(tp)
    except SpecError:
        return False
    return True


def sequence_parallel_choices(model: ModelSpec, cluster: ClusterSpec, tp: int, seq_len: int) -> tuple[bool, ...]:
    """Sequence parallelism left open at ``tp``: (True,) where the model's layers (one sequence, no
    recomputation) run no slower with it, else (False, True) (see the module docstring)."""
    if tp == 1:
        return (False,)
    layers = range(model.num_pipeline_layers)
    with_sp, without = (sum(_layer_price(model, cluster, i, 1, seq_len, tp, sp)[0] for i in layers)
                        for sp in (True, False))
    return (True,) if with_sp <= without else (False, True)


def enumerate_layouts(model: ModelSpec, cluster: ClusterSpec, global_batch: int, pins: LayoutPins,
                      seq_len: int | None = None) -> list[Layout]:
    """Every layout the pins allow, smallest tp then pp first (sequence parallelism off before on where
    both are searched). Raises SpecError (one line, naming the pinned flag and what would work) when the
    pins leave none. ``seq_len``: the plans' sequence length (None: the model's)."""
    gpus, per_node, layers = pins.gpus, cluster.gpus_per_node, model.num_pipeline_layers
    tps = [t for t in divisors(per_node) if gpus % t == 0 and _tp_allowed(model, t)]
    if pins.tp is not None:
        if pins.tp not in tps:
            raise SpecError(f"--tp: {pins.tp} is not a tensor-parallel degree here; choose one of "
                            f"{', '.join(map(str, tps))} (dividing a node's {per_node} GPUs, the {gpus} GPUs and "
                            f"{model.name}'s {model.heads} heads)")
        tps = [pins.tp]
    out = []
    for tp in tps:
        sps = ((pins.sequence_parallel,) if pins.sequence_parallel is not None
               else sequence_parallel_choices(model, cluster, tp, seq_len or model.seq_len))
        for pp in divisors(gpus // tp):
            dp = gpus // (tp * pp)
            if pp > layers or global_batch % dp:
                continue
            if (pins.pp is not None and pp != pins.pp) or (pins.dp is not None and dp != pins.dp):
                continue
            do = pins.distributed_optimizer if pins.distributed_optimizer is not None else dp > 1
            out += [Layout(tp, pp, dp, sp, do) for sp in sps if not (sp and tp == 1)]
    if not out:
        raise SpecError(_no_layout(model, global_batch, pins, tps))
    return out


def _no_layout(model: ModelSpec, global_batch: int, pins: LayoutPins, tps: list[int]) -> str:
    """Which pin rules every layout out, and what would work."""
    gpus = pins.gpus
    if pins.sequence_parallel and tps == [1]:
        return "--sequence-parallel: needs tp > 1; pin --tp or drop it"
    if pins.pp is not None:
        ok = sorted({p for t in tps for p in divisors(gpus // t) if p <= model.num_pipeline_layers
                     and (pins.dp is None or t * p * pins.dp == gpus)})
        if pins.pp not in ok:
            tp_text = f"tp = {tps[0]}" if len(tps) == 1 else f"tp in {', '.join(map(str, tps))}"
            return (f"--pp: tp x pp x dp must equal the {gpus} GPUs (pp at most {model.num_pipeline_layers} layers); "
                    f"with {tp_text}" + (f" and dp = {pins.dp}" if pins.dp is not None else "")
                    + (f" choose pp from {', '.join(map(str, ok))}" if ok else " no pp does; change --gpus or --dp"))
    if pins.dp is not None and global_batch % pins.dp:
        return f"--dp: {pins.dp} does not divide the global batch of {global_batch}; choose a divisor of it"
    if pins.dp is not None:
        return (f"--dp: {pins.dp} leaves no tp x pp for {gpus} GPUs (tp in {', '.join(map(str, tps))}, pp at "
                f"most {model.num_pipeline_layers}); choose a dp dividing {gpus} / tp")
    dps = sorted({gpus // (t * p) for t in tps for p in divisors(gpus // t) if p <= model.num_pipeline_layers
                  and (pins.pp is None or p == pins.pp)})
    pinned = " ".join(f"--{k} {v}" for k, v in (("tp", pins.tp), ("pp", pins.pp)) if v is not None)
    return (f"global_batch: {global_batch} is divisible by none of the data-parallel degrees "
            + (f"that {pinned} leave{'s' if ' --' not in pinned else ''} " if pinned else "")
            + f"on {gpus} GPUs ({', '.join(map(str, dps))}); choose a global batch divisible by one of them"
            + (", or other pins" if pinned else ", or fewer --gpus"))


@lru_cache(maxsize=4096)
def _layer_price(model: ModelSpec, cluster: ClusterSpec, index: int, b: int, seq_len: int, tp: int,
                 sp: bool) -> tuple[float, float]:
    """(F + I + W seconds, parameters) of one layer for one micro-batch of b, on one tensor rank."""
    work = layer_work(model, index, b, seq_len, False, tp, sp)
    cost = price(work, cluster.gpu, cluster.intra if tp > 1 else None)
    return cost.forward + cost.backward_input + cost.backward_weight, work.params


def memory_floor(model: ModelSpec, layout: Layout, seq_len: int) -> float:
    """Bytes of weights, gradients and optimizer state the fullest device holds at least."""
    per_layer = [static_bytes(layer_work(model, i, 1, seq_len, False, layout.tp, layout.sequence_parallel).params,
                              layout.dp, layout.distributed_optimizer) for i in range(model.num_pipeline_layers)]
    return max(max(per_layer), sum(per_layer) / layout.pp)


def time_floor(model: ModelSpec, cluster: ClusterSpec, layout: Layout, global_batch: int, seq_len: int,
               microbatch_sizes: tuple[int, ...] | None = None) -> float:
    """Seconds no plan of this layout simulates faster than (see the module docstring)."""
    batch = global_batch // layout.dp
    sizes = [b for b in divisors(batch) if microbatch_sizes is None or b in microbatch_sizes] or [1]
    layers = range(model.num_pipeline_layers)
    best = min((batch // b) * sum(_layer_price(model, cluster, i, b, seq_len, layout.tp,
                                               layout.sequence_parallel)[0] for i in layers) for b in sizes)
    params = sum(_layer_price(model, cluster, i, 1, seq_len, layout.tp, layout.sequence_parallel)[1] for i in layers)
    step = optimizer_seconds(params / layout.pp, layout.dp, layout.distributed_optimizer, cluster.gpu, model.kernels)
    return (best / layout.pp + step) * (1 - 1e-9)
