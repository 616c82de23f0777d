"""The cost model lowering and the planner share: what a layer costs on a GPU, and how layers add up.

``layer_work(model, i, b, s, recompute, tp, sequence_parallel)`` is layer i for one micro-batch of
b sequences of s tokens on one tensor-parallel rank: FLOPs by op, the GEMM shapes and memory-bound
bytes behind them, bytes by lifetime, parameters, the tensor-parallel collectives, and the tensors
it receives and sends (see ``ModelSpec`` for the per-layer formulas). Works of consecutive layers
add (``+``) into a stage's. ``price(work, gpu, tp_link)`` turns a work into the simulator's
``StageCost``:

    time of an op = Σ its GEMMs' ``gpu.gemm_seconds(m, n, k)``  (efficiency by GEMM shape)
                  + its attention cores (``gpu.attention_gemm_seconds``: GEMMs, or a measured curve)
                  + its memory-bound bytes / kernel bandwidth (``gpu.memory_kernel_seconds``), or
                    at each layer kind's measured cost per byte (``layer_overheads.per_byte``)
                  + its tensor-parallel collectives, ring_seconds over t ranks on ``tp_link``
                  + a per-layer overhead (per layer kind and pass when measured)

The collectives sit on the op's critical path (Megatron runs them synchronously between the
GEMMs, Shoeybi et al. 2019), so their time adds to F and to I. F's GEMMs are (m, n, k); I runs
each weight GEMM's dX, (m, k, n), and both backward GEMMs of the attention core, (m, k, n) and
(k, n, m); W runs each weight GEMM's dW, (k, n, m).

Recomputation (Korthikanti et al. 2022): ``"full"`` checkpoints the transformer blocks, as Megatron-LM
and torchtitan do (``model.RECOMPUTED_KINDS``): each block stores only its input and runs its forward
(collectives included) again before the input gradient (I, or B when the backward is not split);
the embedding and the final norm + LM head + loss keep their activations and are not re-run
(``Work.rerun`` is what is). The blocks' F then records no graph, priced at the measured no-graph
fixed cost and cost per byte where the spec has them (``layer_overheads.no_grad``, a probed CPU),
else as their forward.
``"selective"`` drops the stored attention scores and re-runs the attention core (QK^T, softmax,
dropout, AV) before I; with FlashAttention there is nothing to drop and nothing
extra to run. After I each layer keeps what W still needs, at most what it stored. The planner prices
each layer on its own (``price(layer_work(...))``), lowering prices each stage's sum, so the two
agree up to rounding.

Static memory (weights, gradients, optimizer state) is ``static_bytes(params, dp, distributed)``;
``params`` are one tensor-parallel rank's (stage parameters / t, the replicated norms whole).
"""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, replace
from functools import lru_cache, reduce
from operator import add

from simulator.workload import StageCost

from .cluster import GPUSpec, LinkSpec
from .collectives import ring_seconds
from .errors import SpecError
from .model import RECOMPUTED_KINDS, Gemm, ModelSpec, TPCollective
from .profile import StageProfile

# Per parameter, Megatron mixed precision (shared REFERENCE): bf16 weights, fp32 gradients (main_grad),
# and Adam's fp32 master weights, m and v.
WEIGHT_BYTES = 2
GRAD_BYTES = 4
OPTIMIZER_STATE_BYTES = 12
BYTES_PER_PARAM_WEIGHTS_GRADS = WEIGHT_BYTES + GRAD_BYTES
BYTES_PER_PARAM_OPTIMIZER = OPTIMIZER_STATE_BYTES
RECOMPUTE_MODES = ("none", "selective", "full")


def bytes_per_param(dp: int, distributed_optimizer: bool) -> float:
    """18 bytes per parameter; a distributed optimizer shards the 12 optimizer bytes over dp."""
    return BYTES_PER_PARAM_WEIGHTS_GRADS + BYTES_PER_PARAM_OPTIMIZER / (dp if distributed_optimizer else 1)


def static_bytes(params: float, dp: int, distributed_optimizer: bool) -> float:
    """Weights, gradients and optimizer state of ``params`` parameters on one GPU."""
    return params * bytes_per_param(dp, distributed_optimizer)


def static_parts(params: float, dp: int, distributed_optimizer: bool) -> tuple[float, float, float]:
    """(weights, gradients, optimizer state) bytes of ``params`` parameters on one GPU."""
    return params * WEIGHT_BYTES, params * GRAD_BYTES, params * OPTIMIZER_STATE_BYTES / (
        dp if distributed_optimizer else 1)


def _merge(a: tuple, b: tuple) -> tuple:
    """Two multisets of (item, count) pairs as one, sorted, so that equal stages give equal works."""
    counts = Counter(dict(a))
    counts.update(dict(b))
    return tuple(sorted(counts.items()))


def _counted(items: tuple) -> tuple:
    return tuple(sorted(Counter(items).items()))


@dataclass(frozen=True)
class Work:
    """One micro-batch through one layer or a run of consecutive layers on one tensor rank, before it meets a GPU.

    ``activation_bytes`` are what F stores (per ``recompute``); ``weight_grad_bytes`` what W needs
    after I, each layer's at most what it stored (a checkpointed block keeps its input, a head its
    LM head input), summed over the layers. ``received_bytes`` is the tensor the first layer gets from the
    layer before it (0 for the embedding), ``sent_bytes`` the one the last layer passes on; their
    gradients travel back the same size. ``gemms``, ``attention_gemms``, ``tp_forward`` and
    ``tp_backward`` are multisets, ((item, count), ...); the other sums are plain numbers.
    ``rerun`` is what full recomputation runs again before I: the work of the checkpointed layers
    (recompute "none", their forward recording its graph), None when there are none.
    """

    layers: int
    recompute: str
    forward_flops: float
    input_grad_flops: float
    weight_grad_flops: float
    activation_bytes: float
    weight_grad_bytes: float
    params: float
    received_bytes: float
    sent_bytes: float
    tp: int = 1
    gemms: tuple[tuple[Gemm, int], ...] = ()
    attention_gemms: tuple[tuple[Gemm, int], ...] = ()
    forward_memory_bytes: float = 0.0
    input_grad_memory_bytes: float = 0.0
    weight_grad_memory_bytes: float = 0.0
    score_memory_bytes: float = 0.0
    score_backward_memory_bytes: float = 0.0
    tp_forward: tuple[tuple[TPCollective, int], ...] = ()
    tp_backward: tuple[tuple[TPCollective, int], ...] = ()
    kinds: tuple[tuple[str, int], ...] = ()  # layers by kind (embedding, block, head), for per-kind overheads
    # per layer kind its one layer's memory-bound bytes in F, I and W, for measured per-kind costs per byte
    memory_by_kind: tuple[tuple[tuple[str, float, float, float], int], ...] = ()
    rerun: "Work | None" = None

    def __add__(self, later: "Work") -> "Work":
        """This run of layers followed by ``later`` (the layers right after it)."""
        if later.recompute != self.recompute:
            raise ValueError("a stage recomputes all of its layers the same way")
        if later.tp != self.tp:
            raise ValueError("a stage runs on one tensor-parallel group")
        summed = {f: getattr(self, f) + getattr(later, f) for f in _SUMMED}
        merged = {f: _merge(getattr(self, f), getattr(later, f)) for f in _MERGED}
        rerun = (self.rerun if later.rerun is None else later.rerun if self.rerun is None
                 else self.rerun + later.rerun)
        return replace(self, **summed, **merged, sent_bytes=later.sent_bytes, rerun=rerun)


_SUMMED = ("layers", "forward_flops", "input_grad_flops", "weight_grad_flops", "activation_bytes",
           "weight_grad_bytes", "params", "forward_memory_bytes", "input_grad_memory_bytes",
           "weight_grad_memory_bytes", "score_memory_bytes", "score_backward_memory_bytes")
_MERGED = ("gemms", "attention_gemms", "tp_forward", "tp_backward", "kinds", "memory_by_kind")


def recompute_mode(recompute: bool | str) -> str:
    """``True``/``False`` (full or none, as the planner asks) or one of ``RECOMPUTE_MODES``."""
    if isinstance(recompute, bool):
        return "full" if recompute else "none"
    if recompute not in RECOMPUTE_MODES:
        raise SpecError(f"plan.recompute: {recompute!r} is not one of {', '.join(RECOMPUTE_MODES)}")
    return recompute


@lru_cache(maxsize=1 << 16)  # pure in frozen inputs; planner searches price the same layers thousands of times
def layer_work(model: ModelSpec, index: int, microbatch_size: int, seq_len: int, recompute: bool | str,
               tp: int = 1, sequence_parallel: bool = False) -> Work:
    """Layer ``index`` of ``model`` for one micro-batch of ``microbatch_size`` sequences of ``seq_len``,
    on one of ``tp`` tensor-parallel ranks."""
    mode = recompute_mode(recompute)
    c = model.layer_cost(index, microbatch_size, seq_len, tp, sequence_parallel)
    received = (model.layer_cost(index - 1, microbatch_size, seq_len, tp, sequence_parallel).boundary_bytes
                if index > 0 else 0.0)
    stored = {"none": c.activation_bytes, "selective": c.selective_bytes, "full": c.recompute_bytes}[mode]
    work = Work(
        layers=1,
        recompute=mode,
        forward_flops=c.forward_flops,
        input_grad_flops=c.input_grad_flops,
        weight_grad_flops=c.weight_grad_flops,
        activation_bytes=stored,
        weight_grad_bytes=min(stored, c.weight_grad_bytes),  # each layer keeps for W at most what it stored
        params=c.params,
        received_bytes=received,
        sent_bytes=c.boundary_bytes,
        tp=tp,
        gemms=_counted(c.gemms),
        attention_gemms=_counted(c.attention_gemms),
        forward_memory_bytes=c.forward_memory_bytes,
        input_grad_memory_bytes=c.input_grad_memory_bytes,
        weight_grad_memory_bytes=c.weight_grad_memory_bytes,
        score_memory_bytes=c.score_memory_bytes,
        score_backward_memory_bytes=c.score_backward_memory_bytes,
        tp_forward=_counted(c.tp_forward),
        tp_backward=_counted(c.tp_backward),
        kinds=((model.layer_kind(index), 1),),
        memory_by_kind=(((model.layer_kind(index), c.forward_memory_bytes, c.input_grad_memory_bytes,
                          c.weight_grad_memory_bytes), 1),),
    )
    if mode == "full" and model.layer_kind(index) in RECOMPUTED_KINDS:
        work = replace(work, rerun=replace(work, recompute="none"))
    return work


def stage_work(model: ModelSpec, layers: range, microbatch_size: int, seq_len: int, recompute: bool | str,
               tp: int = 1, sequence_parallel: bool = False) -> Work:
    """The sum of ``layer_work`` over a stage's layers.

    A stage holding both the embedding and a tied LM head holds their one matrix once (each layer
    alone counts it, as two stages hold two copies).
    """
    work = reduce(add, (layer_work(model, i, microbatch_size, seq_len, recompute, tp, sequence_parallel)
                        for i in layers))
    if model.tied_params and layers[0] == 0 and layers[-1] == model.num_pipeline_layers - 1:
        work = replace(work, params=work.params - model.tied_params / tp)
    return work


def tp_seconds(collectives: tuple[tuple[TPCollective, int], ...], tp: int, link: LinkSpec | None) -> float:
    """The tensor-parallel collectives, one after another, each a ring over ``tp`` ranks on ``link``
    (the node's NVLink: a TP group stays inside a node)."""
    if tp == 1 or not collectives:
        return 0.0
    if link is None:
        raise SpecError("cluster.intra: pricing tensor parallelism needs the intra-node link")
    return sum(count * ring_seconds(kind, tp, nbytes, link.bandwidth, link.latency)
               for (kind, nbytes), count in collectives)


def _gemm_seconds(gpu: GPUSpec, gemms, shape) -> float:
    return sum(count * gpu.gemm_seconds(*shape(m, n, k), batch) for (m, n, k, batch), count in gemms)


def _overheads(work: Work, gpu: GPUSpec) -> tuple[float, float, float]:
    """The fixed cost of ``work``'s layer passes in F, I and W: per layer kind and pass where the GPU
    has measured them (``GPUSpec.layer_overheads``), else ``op_overhead_s`` per layer in each."""
    if gpu.layer_overheads is None or not work.kinds:
        return (gpu.op_overhead_s * work.layers,) * 3
    f = i = w = 0.0
    for kind, count in work.kinds:
        kf, ki, kw = gpu.layer_overheads.of(kind)
        f, i, w = f + count * kf, i + count * ki, w + count * kw
    return f, i, w


def _memory_seconds(work: Work, gpu: GPUSpec) -> tuple[float, float, float]:
    """The memory-bound kernels of ``work``'s F, I and W: at each layer kind's measured cost per byte
    where the GPU has them (``layer_overheads.per_byte``, moved bytes = the model's x element_bytes / 2),
    else at ``gpu.memory_kernel_seconds``, standard attention's scores at ``gpu.score_seconds``."""
    if gpu.layer_overheads is None or gpu.layer_overheads.per_byte is None or not work.memory_by_kind:
        moved = gpu.memory_kernel_seconds
        scores_f, scores_i = work.score_memory_bytes, work.score_backward_memory_bytes
        return (moved(work.forward_memory_bytes - scores_f) + gpu.score_seconds(scores_f, backward=False),
                moved(work.input_grad_memory_bytes - scores_i) + gpu.score_seconds(scores_i, backward=True),
                moved(work.weight_grad_memory_bytes))
    f = i = w = 0.0
    width = gpu.element_bytes / 2
    for (kind, bf, bi, bw), count in work.memory_by_kind:
        sf, si, sw = gpu.layer_overheads.memory_of(kind)
        f, i, w = f + count * bf * width * sf, i + count * bi * width * si, w + count * bw * width * sw
    return f, i, w


def _no_grad_terms(work: Work, gpu: GPUSpec) -> tuple[float, float] | None:
    """(memory-bound kernels, fixed cost) of ``work``'s forward run without its graph (a fully
    recomputing stage's F), per layer kind at the measured no-graph cost per byte and fixed cost
    (``layer_overheads.no_grad``); None where the GPU has not measured them."""
    overheads = gpu.layer_overheads
    if overheads is None or overheads.no_grad is None or overheads.per_byte is None or not work.memory_by_kind:
        return None
    width, memory, fixed = gpu.element_bytes / 2, 0.0, 0.0
    for (kind, bf, _, _), count in work.memory_by_kind:
        kind_fixed, per_byte = overheads.no_grad_of(kind)
        memory, fixed = memory + count * bf * width * per_byte, fixed + count * kind_fixed
    return memory, fixed


def _attention_seconds(gpu: GPUSpec, gemms, backward: bool, standard: bool = False) -> float:
    """The attention cores' GEMMs (QK^T and AV) in the forward or in I (``GPUSpec.attention_gemm_seconds``);
    ``standard``: their scores pass through memory (``Work.score_memory_bytes`` > 0)."""
    return sum(count * gpu.attention_gemm_seconds(m, n, k, batch, backward, standard)
               for (m, n, k, batch), count in gemms)


def selective_rerun_seconds(work: Work, gpu: GPUSpec) -> float:
    """What selective recomputation runs again before I: the attention core's forward GEMMs and its
    softmax and dropout (0 without stored scores, as with FlashAttention)."""
    if work.recompute != "selective" or work.score_memory_bytes <= 0:
        return 0.0
    return (_attention_seconds(gpu, work.attention_gemms, backward=False, standard=True)
            + gpu.score_seconds(work.score_memory_bytes, backward=False))


def _tp_seconds_of(work: Work, tp_link: LinkSpec | None) -> tuple[float, float]:
    """The tensor-parallel collectives of ``work``'s forward and of its backward."""
    return tp_seconds(work.tp_forward, work.tp, tp_link), tp_seconds(work.tp_backward, work.tp, tp_link)


def tp_seconds_in_ops(work: Work, tp_link: LinkSpec | None) -> tuple[float, float]:
    """(in F, in I or B): the tensor-parallel collective time inside each op ``price`` makes of ``work``.

    A fully recomputing stage runs its blocks' forward, and so their collectives, again before I.
    """
    forward, backward = _tp_seconds_of(work, tp_link)
    rerun = tp_seconds(work.rerun.tp_forward, work.tp, tp_link) if work.rerun is not None else 0.0
    return forward, backward + rerun


def forward_parts(work: Work, gpu: GPUSpec, tp_link: LinkSpec | None) -> tuple[float, float, float, float]:
    """``work``'s forward recording its graph, in parts: (GEMMs and attention cores, memory-bound
    kernels, tensor-parallel collectives, per-layer overhead)."""
    core = _attention_seconds(gpu, work.attention_gemms, backward=False, standard=work.score_memory_bytes > 0)
    return (_gemm_seconds(gpu, work.gemms, lambda m, n, k: (m, n, k)) + core, _memory_seconds(work, gpu)[0],
            tp_seconds(work.tp_forward, work.tp, tp_link), _overheads(work, gpu)[0])


def rerun_share(work: Work, gpu: GPUSpec, tp_link: LinkSpec | None) -> float:
    """The share of ``work``'s forward (recording its graph) that full recomputation runs again: its
    checkpointed layers' (``Work.rerun``; 0 when it holds none or does not recompute fully)."""
    if work.rerun is None:
        return 0.0
    total = sum(forward_parts(replace(work, recompute="none", rerun=None), gpu, tp_link))
    return sum(forward_parts(work.rerun, gpu, tp_link)) / total if total > 0 else 0.0


@lru_cache(maxsize=1 << 16)  # pure in frozen inputs; a search prices the same block thousands of times
def price(work: Work, gpu: GPUSpec, tp_link: LinkSpec | None = None) -> StageCost:
    """Seconds and bytes of ``work`` on ``gpu``; ``tp_link`` carries the tensor-parallel collectives.

    Times are summed before the per-layer overhead, which counts layers exactly.
    """
    def dx(m, n, k): return m, k, n
    def dw(m, n, k): return k, n, m
    _, overhead_i, overhead_w = _overheads(work, gpu)
    standard = work.score_memory_bytes > 0
    tp_backward = tp_seconds(work.tp_backward, work.tp, tp_link)
    _, memory_i, memory_w = _memory_seconds(work, gpu)
    forward = sum(forward_parts(work, gpu, tp_link))
    backward_input = (_gemm_seconds(gpu, work.gemms, dx)
                      + _attention_seconds(gpu, work.attention_gemms, backward=True, standard=standard)
                      + memory_i + tp_backward + overhead_i)
    backward_weight = _gemm_seconds(gpu, work.gemms, dw) + memory_w + overhead_w
    if work.rerun is not None:  # full recomputation of the checkpointed blocks
        _, rerun_memory, _, rerun_overhead = rerun = forward_parts(work.rerun, gpu, tp_link)
        backward_input += sum(rerun)  # the re-run records the graph the backward needs
        no_grad = _no_grad_terms(work.rerun, gpu)
        if no_grad is not None:  # their F itself records no graph
            forward += sum(no_grad) - rerun_memory - rerun_overhead
    backward_input += selective_rerun_seconds(work, gpu)  # FlashAttention stores no scores to drop
    return StageCost(
        forward=forward,
        backward_input=backward_input,
        backward_weight=backward_weight,
        send_forward_bytes=work.sent_bytes,
        send_backward_bytes=work.received_bytes,
        activation_bytes=work.activation_bytes,
        weight_grad_bytes=min(work.activation_bytes, work.weight_grad_bytes),
    )


def measured_stage_cost(analytic: StageCost, measured: StageProfile, recompute: bool = False,
                        share: float = 1.0) -> StageCost:
    """A stage with measured op times and boundary bytes; memory stays the model's.

    With recomputation the backward pays its blocks' forward once more, as in ``price``: ``share``
    of the measured forward (``rerun_share``: 1 for blocks only, 0 for an embedding or a head alone).
    A stage measured with it (``measured.recompute``, see ``pipeplan.profile``) already holds that
    forward in B and I; one measured without (every single-layer timing) gets it added. A stage
    measured with it but priced without has it taken off, so profiles stay reusable.
    """
    extra = share * measured.forward * (int(recompute) - int(measured.recompute))
    return replace(
        analytic, forward=measured.forward, backward=measured.backward + extra,
        backward_input=measured.backward_input + extra, backward_weight=measured.backward_weight,
        send_forward_bytes=measured.send_forward_bytes, send_backward_bytes=measured.send_backward_bytes,
    )
