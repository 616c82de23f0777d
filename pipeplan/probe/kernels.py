"""The probe's kernel benchmarks: GEMMs, attention cores, memory-bound kernels, DRAM/HBM copies.

Each benchmark is a list of ``Case``s, one per shape; a *round* runs every case once, in a shuffled
order, ``reps`` times, timing each call on its own (``perf_counter`` around a CPU call, CUDA events
around a GPU one). Interleaving the shapes leaves each call the cache a layer's kernel meets (the
one before it touched other data), not the hot cache of a loop over one shape, which on the CPU VM
ran 5-20 % faster than the same kernels inside a training step.

Shapes are what transformer layers run (``grid``): tokens b·s (m) by the layer's widths (n, k) for
GEMMs, in the three products of a linear layer (forward x·Wᵀ, input gradient g·W, weight gradient
gᵀ·x); attention cores over sequence length and head size; a block's memory-bound kernels (two
norms, two residual adds, the MLP's activation, GeLU or SwiGLU) forward and backward, and a head's
norm and cross-entropy, each with the bytes ``pipeplan.model`` counts for them. torch is imported
inside the functions.
"""
from __future__ import annotations

import collections
import random
import time
from dataclasses import dataclass
from typing import Any, Callable

from ..model import ModelSpec

# Per device type: tokens x widths x widths of the GEMM grid (shapes past ``gemm_work`` FLOPs left out),
# (s, d) of the attention grid, (tokens, hidden) of the memory-bound grid, (tokens, vocabulary) of the
# head's, the copies' bytes. A CPU core spends 3 us - 2 ms per kernel on these (one pass of the GEMM
# grid about 40 ms); a GPU needs larger ones. The CPU's memory-bound kernels stay within a core's L2
# (an MLP activation of tokens x 4·hidden float32 values up to 2 MB), where the layers a CPU
# validation runs live: past the caches (1024 x 4096 values) they ran up to 3.5x slower per byte,
# which one in-cache rate does not price.
GRIDS = {
    "cpu": {"tokens": (32, 128, 512, 2048), "widths": (16, 64, 256, 1024), "gemm_work": 2.0 ** 27,
            "seq": (16, 32, 64, 128, 256, 512), "head": (8, 16, 32, 64, 128), "attention_work": 2.0 ** 23,
            "elementwise": ((64, 32), (64, 256), (256, 64), (256, 512), (512, 256), (1024, 128)),
            "vocab": ((64, 512), (256, 4096), (1024, 2048)), "copy_bytes": (2 ** 26, 2 ** 28)},
    "cuda": {"tokens": (512, 2048, 8192), "widths": (512, 2048, 8192), "gemm_work": 2.0 ** 40,
             "seq": (512, 1024, 2048, 4096, 8192), "head": (64, 128), "attention_work": 2.0 ** 38,
             "elementwise": ((2048, 1024), (8192, 4096), (16384, 8192)),
             "vocab": ((2048, 32768), (8192, 131072)), "copy_bytes": (2 ** 28, 2 ** 30)},
}
LAYOUTS = ("forward", "input_grad", "weight_grad")
# Results a benchmark keeps alive (``Timer``): about what a CPU pipeline stage holds in flight, more
# than a core's L2 and its share of the L3.
HOLD_BYTES = 64 << 20


@dataclass(frozen=True)
class Case:
    """One shape of a benchmark: ``prepare()`` (untimed) makes what ``run(state)`` (timed) needs.

    ``shape`` is recorded with the samples; ``size`` is what the fit divides by a rate (FLOPs or bytes)
    and ``dims`` the curve's dimensions (empty for an affine fit). ``warm`` > 0 makes the case run in
    a steady state (``Timer``): that many untimed ``prepare()``-then-``run`` before the timed one,
    back to back."""

    shape: tuple[float, ...]
    size: float
    dims: tuple[float, ...]
    prepare: Callable[[], Any]
    run: Callable[[Any], Any]
    warm: int = 0


def _nothing() -> None:
    return None


class Timer:
    """Times single calls on ``device``: on a CPU the calling thread's CPU time (a rank computes with
    one thread, this one; time spent waiting for the core while other processes run is not the
    kernel's, and the validator keeps only iterations that did not wait), CUDA events on a GPU.

    A pass prepares every case first (a backward's forward: its graph then waits, as a pipeline
    stage's activations wait for their backward, and is read from wherever memory holds it by then)
    and keeps the newest results, up to ``HOLD_BYTES``, as a stage keeps its in-flight micro-batches'
    activations: a kernel writes to memory no recent kernel used, not to the cache lines the last
    freed tensor left hot. On the CPU VM holding them made a block's memory-bound kernels 2.5-3x
    slower and an attention forward 10 % slower (GEMMs: no change); a validator block's forward ran
    1.4x slower with two micro-batches in flight than when each output was dropped at once.

    A case with ``warm`` > 0 is a pipeline stage's steady state instead: it is prepared right before
    it runs, ``warm`` times untimed and then once timed, back to back (a stage runs the same layers
    op after op: its code, its weights and the memory its freed activations leave are warm). On the
    CPU VM a block of vanishing size (all dispatch and autograd bookkeeping) took 0.54 ms a forward
    after the shuffled cases of other shapes and 0.34 ms in the validator's stage code run op after
    op; blocks of 32-256 tokens took within 10 % of the same in both."""

    def __init__(self, torch: Any, device: Any) -> None:
        self.torch, self.device = torch, device
        self.cuda = device.type == "cuda"
        self.held: collections.deque = collections.deque()
        self.held_bytes = 0

    def _hold(self, result: Any) -> None:
        tensors = [t for t in (result if isinstance(result, (tuple, list)) else (result,))
                   if isinstance(t, self.torch.Tensor)]
        for t in tensors:
            self.held.append(t)
            self.held_bytes += t.numel() * t.element_size()
        while self.held_bytes > HOLD_BYTES and self.held:
            t = self.held.popleft()
            self.held_bytes -= t.numel() * t.element_size()

    def times(self, cases: list[Case], order: list[int]) -> list[float]:
        """Seconds of each case's ``run`` in ``order``, returned in case order."""
        out = [0.0] * len(cases)
        states = {i: cases[i].prepare() for i in order if not cases[i].warm}
        if not self.cuda:
            for i in order:
                state = self._warm_up(cases[i]) if cases[i].warm else states.pop(i)
                start = time.thread_time()
                result = cases[i].run(state)
                out[i] = time.thread_time() - start
                self._hold(result)
            return out
        events = []
        for i in order:
            state = self._warm_up(cases[i]) if cases[i].warm else states.pop(i)
            begin, end = self.torch.cuda.Event(enable_timing=True), self.torch.cuda.Event(enable_timing=True)
            begin.record()
            self._hold(cases[i].run(state))
            end.record()
            events.append((i, begin, end))
        self.torch.cuda.synchronize(self.device)
        for i, begin, end in events:
            out[i] = begin.elapsed_time(end) / 1e3
        return out

    def self_seconds(self, cases: list[Case], order: list[int], groups: tuple[tuple[str, ...], ...]) -> list[list[float]]:
        """Per case of ``order`` (returned in case order), run as ``times`` runs it but under torch's profiler
        (CPU only): the self CPU seconds of its operators in each of ``groups`` (operator names, such as
        ``aten::mm``). What a kernel takes inside a layer, in the state the layer leaves it."""
        from torch.profiler import ProfilerActivity, profile

        out: list[list[float]] = [[0.0] * len(groups) for _ in cases]
        states = {i: cases[i].prepare() for i in order if not cases[i].warm}
        for i in order:
            state = self._warm_up(cases[i]) if cases[i].warm else states.pop(i)
            with profile(activities=[ProfilerActivity.CPU]) as prof:
                result = cases[i].run(state)
            self._hold(result)
            events = prof.key_averages()
            out[i] = [1e-6 * sum(e.self_cpu_time_total for e in events if e.key in names) for names in groups]
        return out

    def _warm_up(self, case: Case) -> Any:
        """``case.warm`` untimed runs, each right after its own prepare; the state for the timed one."""
        for _ in range(case.warm):
            self._hold(case.run(case.prepare()))
        return case.prepare()


def run_rounds(timer: Timer, cases: list[Case], reps: int, seed: int) -> list[list[float]]:
    """``reps`` shuffled passes over ``cases``: per case, its ``reps`` samples."""
    rng = random.Random(seed)
    samples: list[list[float]] = [[] for _ in cases]
    for _ in range(reps):
        order = list(range(len(cases)))
        rng.shuffle(order)
        for i, t in enumerate(timer.times(cases, order)):
            samples[i].append(t)
    return samples


def gemm_cases(torch: Any, device: Any, dtype: Any, grid: dict) -> list[Case]:
    """A linear layer's three products over tokens x widths; ``dims`` as ``pipeplan.costs.price`` asks them."""
    F = torch.nn.functional
    cases = []
    for tokens in grid["tokens"]:
        for n_in in grid["widths"]:
            for n_out in grid["widths"]:
                if 2.0 * tokens * n_in * n_out > grid["gemm_work"]:
                    continue
                x = torch.randn(tokens, n_in, device=device, dtype=dtype)
                w = torch.randn(n_out, n_in, device=device, dtype=dtype)
                g = torch.randn(tokens, n_out, device=device, dtype=dtype)
                work = 2.0 * tokens * n_in * n_out
                # model (m, n, k) = (tokens, n_out, n_in); dX asks (m, k, n), dW (k, n, m)
                products = (((tokens, n_out, n_in), lambda _s, x=x, w=w: F.linear(x, w)),
                            ((tokens, n_in, n_out), lambda _s, g=g, w=w: g @ w),
                            ((n_in, n_out, tokens), lambda _s, g=g, x=x: g.t() @ x))
                for layout, (dims, fn) in enumerate(products):
                    cases.append(Case((*dims, layout), work, dims, _nothing, fn))
    return cases


def attention_cases(torch: Any, device: Any, dtype: Any, grid: dict, backward: bool) -> list[Case]:
    """Causal attention cores (torch's scaled_dot_product_attention) over (s, d), about
    ``attention_work`` FLOPs each (dense count 4·s²·d per sequence and head), and last one core of
    no size (one pair, s = d = 8: ``dims`` empty), whose time is the cost of a call."""
    F = torch.nn.functional
    grid_points = [(s, d) for s in grid["seq"] for d in grid["head"]]
    cases = []
    for i, (s, d) in enumerate(grid_points + [(8, 8)]):
        call = i == len(grid_points)
        pairs = 1 if call else max(1, min(256, round(grid["attention_work"] / (4.0 * s * s * d))))
        q, k, v = (torch.randn(1, pairs, s, d, device=device, dtype=dtype, requires_grad=True) for _ in range(3))
        g = torch.randn(1, pairs, s, d, device=device, dtype=dtype)
        work = 4.0 * s * s * d * pairs
        dims = () if call else (s, d)

        def forward(_s=None, q=q, k=k, v=v):
            return F.scaled_dot_product_attention(q, k, v, is_causal=True)

        if backward:
            cases.append(Case((pairs, s, d), work, dims, forward,
                              lambda out, q=q, k=k, v=v, g=g: torch.autograd.grad(out, (q, k, v), g)))
        else:
            cases.append(Case((pairs, s, d), work, dims, _nothing, forward))
    return cases


def _block_kernels(torch: Any, tokens: int, hidden: int, gated: bool, device: Any, dtype: Any):
    """A block's memory-bound kernels as one function of its residual input: norm, residual add, norm,
    activation (GeLU, or SiLU(gate)·up), residual add. A norm's output stands in for the branch
    (attention, MLP) the add brings back, so the backward runs through every kernel."""
    F = torch.nn.functional
    ffn = 4 * hidden
    kind = torch.nn.RMSNorm if gated else torch.nn.LayerNorm  # Llama's and GPT's pairing
    norm, norm2 = kind(hidden).to(device=device, dtype=dtype), kind(hidden).to(device=device, dtype=dtype)
    up = torch.randn(tokens, ffn, device=device, dtype=dtype, requires_grad=True)
    gate = torch.randn(tokens, ffn, device=device, dtype=dtype, requires_grad=True)

    def block(x):
        y = x + norm(x)
        act = F.silu(gate) * up if gated else F.gelu(up)
        return y + norm2(y), act

    return block, [up, gate, *norm.parameters(), *norm2.parameters()]


def elementwise_cases(torch: Any, device: Any, dtype: Any, grid: dict, backward: bool) -> list[Case]:
    """Memory-bound kernels of a block (both MLP kinds) and of a head (norm, cross-entropy), sized by
    the bytes ``pipeplan.model`` counts for them (its bf16 count; ``element_bytes`` scales it)."""
    F = torch.nn.functional
    cases = []
    for tokens, hidden in grid["elementwise"]:
        for gated in (False, True):
            spec = ModelSpec("probe", 1, hidden, max(1, hidden // 64), 4 * hidden, 64, tokens, gated_mlp=gated)
            cost = spec.layer_cost(1, 1, tokens)
            block, params = _block_kernels(torch, tokens, hidden, gated, device, dtype)
            x = torch.randn(tokens, hidden, device=device, dtype=dtype, requires_grad=True)
            if backward:
                def graph(block=block, x=x):
                    out, act = block(x)
                    return out, act, torch.ones_like(out), torch.ones_like(act)

                # fresh gradients of the input and of every weight, as a backward writes them
                cases.append(Case((tokens, hidden, int(gated), 0), cost.input_grad_memory_bytes, (), graph,
                                  lambda st, leaves=[x, *params]: torch.autograd.grad(
                                      st[:2], leaves, st[2:], allow_unused=True)))
            else:
                cases.append(Case((tokens, hidden, int(gated), 0), cost.forward_memory_bytes, (), _nothing,
                                  lambda _s, block=block, x=x: block(x)))
    for tokens, vocab in grid["vocab"]:
        spec = ModelSpec("probe", 1, 64, 1, 256, vocab, tokens)
        head = spec.layer_cost(2, 1, tokens)
        logits = torch.randn(tokens, vocab, device=device, dtype=dtype, requires_grad=True)
        target = torch.randint(0, vocab, (tokens,), device=device)
        h = torch.randn(tokens, 64, device=device, dtype=dtype, requires_grad=True)
        norm = torch.nn.LayerNorm(64).to(device=device, dtype=dtype)

        def head_forward(_s=None, logits=logits, target=target, h=h, norm=norm):
            return F.cross_entropy(logits.float(), target) + norm(h).sum()

        if backward:
            cases.append(Case((tokens, 64, 0, vocab), head.input_grad_memory_bytes, (), head_forward,
                              lambda loss, leaves=[logits, h, *norm.parameters()]: torch.autograd.grad(loss, leaves)))
        else:
            cases.append(Case((tokens, 64, 0, vocab), head.forward_memory_bytes, (), _nothing, head_forward))
    return cases


def _copy(src: Any, dst: Any) -> None:
    dst.copy_(src)  # returns nothing: the destination is no new result to hold


def copy_cases(torch: Any, device: Any, dtype: Any, grid: dict) -> list[Case]:
    """Large copies (read + write: 2 x the tensor's bytes), past every cache (64 MB and more against a CPU's
    32 MB of L3): DRAM or HBM bandwidth."""
    cases = []
    for nbytes in grid["copy_bytes"]:
        src = torch.empty(nbytes // 4, device=device, dtype=torch.float32).normal_()
        dst = torch.empty_like(src)
        cases.append(Case((float(nbytes),), 2.0 * nbytes, (), _nothing, lambda _s, src=src, dst=dst: _copy(src, dst)))
    return cases
