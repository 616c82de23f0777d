"""Whole layers, as eager PyTorch training code writes them, at a few shapes: what a layer pass costs
beyond its GEMMs and attention core, per layer kind and pass.

The cost model prices a layer pass as its GEMMs, its attention core, its memory-bound kernels (the
bytes ``pipeplan.model`` counts) and a fixed cost (launching the pass's kernels, the framework's
dispatch and autograd bookkeeping, Python). On a CPU the last two are what the kernels cost *inside
a layer*: a norm, an activation or a residual add there costs several times what the same kernel
timed alone costs, a head's cross-entropy moves its bytes faster than a block's norms do, and an
eager backward spends about what its forward spends on them where the model counts twice the
bytes. So the probe times whole layers and ``pipeplan.probe.spec`` fits, per layer kind and pass,
what is left after the priced GEMMs and attention core: a fixed cost and a cost per byte
(``GPUSpec.layer_overheads``).

The layers are the repository's eager reference implementation, ``validator.compute.StageRunner``
over ``validator.modules`` (what a pipeline stage runs when ``pipeplan validate`` times a plan), one
layer a stage, at ``LAYER_SHAPES`` (none is a preset's shape or a validation plan's):

* embedding: a token lookup; its backward (I) computes the table's gradient, so its W has nothing
  to run and costs nothing;
* block: pre-norm attention (separate Q, K, V projections, torch's attention kernel) and an MLP,
  the weight gradients split off the backward as Zero Bubble's implementation does (Qi et al.,
  ICLR'24);
* head: the final norm, the vocabulary projection and the cross-entropy loss.

As a pipeline stage does, each pass runs on ``IN_FLIGHT`` micro-batches (both forwards, then both
input gradients, then both weight gradients), and every forward reads a fresh input. Each case runs
in a stage's steady state (``kernels.Case.warm``): ``WARM`` untimed repetitions of the same layer's
passes right before the timed one, as a stage runs its layers op after op, not after the other
benchmarks' shapes.

What a layer's GEMMs and attention core take inside it is measured too (``inside``: the same cases
under torch's profiler, their self CPU time): what is left of a pass is its measured time less those,
in the same state, rather than less their price from the kernel benchmarks, which ran at other
moments and in other states. On the CPU VM two quiet probes ten minutes apart fitted a block
forward's cost per byte at 188 and 1 ps/B from priced remainders: the layers ran 45 % slower in the
first (a 32-wide block's forward 0.63 against 0.43 ms) while the GEMM curve moved 5 %.

A fully recomputing stage runs its blocks' F without recording the graph (``validator.compute``:
Megatron's reentrant activation checkpointing per block; the embedding and the head keep theirs); the
probe times that forward too (pass ``NO_GRAD``, a recomputing ``StageRunner``), so the cost model
prices a block's as run (``LayerOverheads.no_grad``) rather than as a forward that builds its graph.
"""
from __future__ import annotations

from typing import Any

from ..model import ModelSpec
from .kernels import Case, _nothing

# hidden, heads, ffn, vocabulary, sequence length; and sequences per micro-batch. The first is of a
# vanishing size (its passes are nearly all fixed cost); the others span widths 32-160, head sizes 8-16
# and 32-256 tokens, and a block's forward moves 5 kB to 3 MB in float32 (the last: past a core's L2).
VANISHING = ModelSpec("vanishing", 1, 8, 1, 32, 64, 8)
LAYER_SHAPES = ((VANISHING, 1), (ModelSpec("probe-narrow", 1, 32, 2, 128, 256, 128), 2),
                (ModelSpec("probe-wide", 1, 128, 8, 512, 1024, 32), 1),
                (ModelSpec("probe-heads", 1, 96, 12, 384, 2048, 96), 1),
                (ModelSpec("probe-long", 1, 160, 10, 640, 512, 256), 1))
IN_FLIGHT = 2
KINDS = ("embedding", "block", "head")
PASSES = ("forward", "input_grad", "weight_grad")
NO_GRAD = len(PASSES)  # the pass index of a forward without its graph (a recomputing stage's F)
# Untimed repetitions before each timed one: one leaves the caches, the allocator's free lists and the
# interpreter as the stage's previous op of the same layer does.
WARM = 1


def _stage(torch: Any, spec: ModelSpec, batch: int, kind: str, device: Any, dtype: Any, recompute: bool = False):
    from validator.compute import StageRunner  # the eager reference stage (imports torch)

    index = spec.layer_kinds.index(kind)
    return StageRunner(spec, index, range(index, index + 1), batch, spec.seq_len, IN_FLIGHT, device, dtype, seed=1,
                       recompute=recompute)


def layer_cases(torch: Any, device: Any, dtype: Any, shapes=LAYER_SHAPES) -> list[Case]:
    """Per shape, F and I of each kind, W of the block and the head (an embedding's W runs
    nothing) and F without the graph (pass ``NO_GRAD``), each on ``IN_FLIGHT`` micro-batches: a
    case's shape is (shape index, kind index, pass index), its size 1 / ``IN_FLIGHT`` (a sample is
    the time of ``IN_FLIGHT`` passes)."""
    cases = []
    for j, (spec, batch) in enumerate(shapes):
        for k, kind in enumerate(KINDS):
            cases.append(_no_grad_case(torch, spec, batch, j, k, device, dtype))
            runner = _stage(torch, spec, batch, kind, device, dtype)
            boundary = (batch, spec.seq_len, spec.hidden)
            ids = iter(range(1 << 30))  # a micro-batch number per pass: the runner keeps state by it

            def forwards(_s=None, runner=runner, boundary=boundary, ids=ids):
                done = []
                for _ in range(IN_FLIGHT):
                    mb = next(ids)
                    x = None if runner.first else torch.randn(boundary, device=device, dtype=dtype)
                    runner.forward(mb, x)
                    done.append(mb)
                return done

            def input_grads(done, runner=runner, boundary=boundary):
                grads = [None if runner.last else torch.ones(boundary, device=device, dtype=dtype) for _ in done]
                for mb, grad in zip(done, grads):
                    runner.backward(mb, grad, True)
                return done

            def ready_for_w(forwards=forwards, input_grads=input_grads):
                return input_grads(forwards())

            def weight_grads(done, runner=runner):
                for mb in done:
                    runner.weight(mb)

            def kept(done, runner=runner):
                """What the runner keeps of these micro-batches, handed to the timer, which holds the
                newest results as a stage holds its in-flight micro-batches (``kernels.Timer``)."""
                held = []
                for mb in done:
                    held += [runner.inputs.pop(mb, None), runner.outputs.pop(mb, None)]
                    held += [t for work in runner.module.store.pending.pop(mb, []) for t in work[1:]]
                return [t for t in held if isinstance(t, torch.Tensor)]

            per = 1.0 / IN_FLIGHT
            cases += [Case((j, k, 0), per, (), _nothing, lambda _s, f=forwards, h=kept: h(f()), WARM),
                      Case((j, k, 1), per, (), forwards, lambda done, i=input_grads, h=kept: h(i(done)), WARM)]
            if kind != "embedding":
                cases.append(Case((j, k, 2), per, (), ready_for_w,
                                  lambda done, w=weight_grads: w(done) or [], WARM))
    return cases


# The operators whose self time ``inside`` sums: the GEMMs the model prices by the curve, and the
# attention core it prices by the attention tables (torch's CPU flash kernel, forward and backward).
GEMM_OPS = ("aten::mm", "aten::bmm", "aten::addmm")
ATTENTION_OPS = ("aten::_scaled_dot_product_flash_attention_for_cpu",
                 "aten::_scaled_dot_product_flash_attention_for_cpu_backward")
INSIDE_REPS = 3


def inside(timer: Any, cases: list[Case], reps: int, seed: int) -> list[list[list[float]]]:
    """Per case, ``reps`` samples of [GEMM seconds, attention-core seconds] as they ran inside its
    ``IN_FLIGHT`` passes (``Timer.self_seconds``, shuffled passes as ``run_rounds`` runs them)."""
    import random

    rng = random.Random(seed)
    samples: list[list[list[float]]] = [[] for _ in cases]
    for _ in range(reps):
        order = list(range(len(cases)))
        rng.shuffle(order)
        for i, got in enumerate(timer.self_seconds(cases, order, (GEMM_OPS, ATTENTION_OPS))):
            samples[i].append(got)
    return samples


def _no_grad_case(torch: Any, spec: ModelSpec, batch: int, j: int, k: int, device: Any, dtype: Any) -> Case:
    """``IN_FLIGHT`` forwards of a recomputing stage of one layer (no graph; it keeps their inputs)."""
    runner = _stage(torch, spec, batch, KINDS[k], device, dtype, recompute=True)
    boundary = (batch, spec.seq_len, spec.hidden)
    ids = iter(range(1 << 30))

    def forwards(_s=None):
        held = []
        for _ in range(IN_FLIGHT):
            mb = next(ids)
            x = None if runner.first else torch.randn(boundary, device=device, dtype=dtype)
            held.append(runner.forward(mb, x))
            held += [runner.inputs.pop(mb, None), runner.outputs.pop(mb, None)]
        return [t for t in held if isinstance(t, torch.Tensor)]

    return Case((j, k, NO_GRAD), 1.0 / IN_FLIGHT, (), _nothing, forwards, WARM)
