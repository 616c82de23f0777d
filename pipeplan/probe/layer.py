"""A transformer layer at a vanishing size: what one layer pass costs beyond its kernels' work.

The cost model charges ``GPUSpec.op_overhead_s`` once per layer in each of F, I and W (``pipeplan.costs``):
launching the pass's kernels, the framework's dispatch and autograd bookkeeping, Python. The probe
measures it on a pre-norm block of ``VANISHING`` shape (hidden 8, one head, 8 tokens), written as
eager PyTorch training code writes it (separate Q, K, V projections, torch's attention, GeLU MLP) with
the weight gradients split off the backward as Zero Bubble's implementation does (Qi et al., ICLR'24:
each linear's backward computes the input gradient and queues (input, output gradient) for W). At
that size the kernels' own work is nothing; what the fitted kernel curves still charge for it (their
per-call terms) is subtracted in ``pipeplan.probe.spec``, so nothing is counted twice.
"""
from __future__ import annotations

from typing import Any

from ..model import ModelSpec
from .kernels import Case, _nothing

# hidden, heads, ffn, tokens of the vanishing layer (one sequence)
VANISHING = ModelSpec("vanishing", 1, 8, 1, 32, 64, 8)
PASSES = ("forward", "input_grad", "weight_grad")


def _reference_block(torch: Any, spec: ModelSpec, device: Any, dtype: Any):
    """(block function, its queue of deferred weight-gradient work, its parameters)."""
    F = torch.nn.functional
    queue: list = []

    class SplitLinear(torch.autograd.Function):
        @staticmethod
        def forward(ctx, x, weight):  # type: ignore[override]
            ctx.save_for_backward(x, weight)
            return x @ weight.t()

        @staticmethod
        def backward(ctx, grad):  # type: ignore[override]
            x, weight = ctx.saved_tensors
            queue.append((weight, x, grad))
            return grad @ weight, None

    h, f = spec.hidden, spec.ffn_hidden
    shapes = {"q": (h, h), "k": (h, h), "v": (h, h), "o": (h, h), "up": (f, h), "down": (h, f)}
    weights = {n: torch.randn(*s, device=device, dtype=dtype, requires_grad=True) for n, s in shapes.items()}
    norm1, norm2 = (torch.nn.LayerNorm(h).to(device=device, dtype=dtype) for _ in range(2))

    def block(x):
        b, s, _ = x.shape
        y = norm1(x)
        q, k, v = (SplitLinear.apply(y, weights[n]).view(b, s, spec.heads, -1).transpose(1, 2) for n in "qkv")
        attn = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        x = x + SplitLinear.apply(attn.transpose(1, 2).reshape(b, s, h), weights["o"])
        return x + SplitLinear.apply(F.gelu(SplitLinear.apply(norm2(x), weights["up"])), weights["down"])

    return block, queue, weights


def _weight_grads(queue: list) -> None:
    for weight, x, grad in queue:
        dw = grad.reshape(-1, grad.shape[-1]).t() @ x.reshape(-1, x.shape[-1])
        weight.grad = dw if weight.grad is None else weight.grad.add_(dw)


def layer_cases(torch: Any, device: Any, dtype: Any, spec: ModelSpec = VANISHING) -> list[Case]:
    """F, I and W of the reference block at ``spec``'s shape, as three cases (shape = pass index)."""
    block, queue, _ = _reference_block(torch, spec, device, dtype)
    x = torch.randn(1, spec.seq_len, spec.hidden, device=device, dtype=dtype, requires_grad=True)
    g = torch.ones(1, spec.seq_len, spec.hidden, device=device, dtype=dtype)

    def forward(_s=None):
        return block(x)

    def input_grad(out):
        queue.clear()
        torch.autograd.backward(out, g)

    def ready_for_w():
        input_grad(forward())
        return list(queue)

    def weight_grad(work):
        _weight_grads(work)

    return [Case((0,), 1.0, (), _nothing, forward), Case((1,), 1.0, (), forward, input_grad),
            Case((2,), 1.0, (), ready_for_w, weight_grad)]
