"""The cost model lowering and the planner share: what a layer costs on a GPU, and how layers add up.

``layer_work(model, i, b, s, recompute)`` is layer i for one micro-batch of b sequences of s
tokens: FLOPs by op, bytes by lifetime, parameters, and the tensors it receives and sends (see
``ModelSpec`` for the per-layer formulas). Works of consecutive layers add (``+``) into a stage's.
``price(work, gpu, tokens)`` turns a work into the simulator's ``StageCost``:

    time of an op = its FLOPs / (peak x achieved fraction at b·s tokens) + a per-layer overhead

Full recomputation stores only each layer's input and runs the forward again before the input
gradient (I, or B when the backward is not split); after I a stage keeps what W still needs, at
most what F stored. The planner prices each layer on its own (``price(layer_work(...))``),
lowering prices each stage's sum, so the two agree up to rounding.

Static memory (weights, gradients, optimizer state) is ``static_bytes(params, dp, distributed)``.
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from functools import reduce
from operator import add

from simulator.workload import StageCost

from .cluster import GPUSpec
from .model import ModelSpec
from .profile import StageProfile

BYTES_PER_PARAM_WEIGHTS_GRADS = 2 + 4  # bf16 weights + fp32 gradients (Megatron mixed precision)
BYTES_PER_PARAM_OPTIMIZER = 12  # fp32 master weights, Adam m and v


def bytes_per_param(dp: int, distributed_optimizer: bool) -> float:
    """18 bytes per parameter; a distributed optimizer shards the 12 optimizer bytes over dp."""
    return BYTES_PER_PARAM_WEIGHTS_GRADS + BYTES_PER_PARAM_OPTIMIZER / (dp if distributed_optimizer else 1)


def static_bytes(params: float, dp: int, distributed_optimizer: bool) -> float:
    """Weights, gradients and optimizer state of ``params`` parameters on one GPU."""
    return params * bytes_per_param(dp, distributed_optimizer)


@dataclass(frozen=True)
class Work:
    """One micro-batch through one layer or a run of consecutive layers, before it meets a GPU.

    ``activation_bytes`` are what F stores (the layer inputs only, with recomputation);
    ``weight_grad_bytes`` what W needs after I, summed over the layers. ``received_bytes`` is the
    tensor the first layer gets from the layer before it (0 for the embedding), ``sent_bytes`` the
    one the last layer passes on; their gradients travel back the same size.
    """

    layers: int
    recompute: bool
    forward_flops: float
    input_grad_flops: float
    weight_grad_flops: float
    activation_bytes: float
    weight_grad_bytes: float
    params: float
    received_bytes: float
    sent_bytes: float

    def __add__(self, later: "Work") -> "Work":
        """This run of layers followed by ``later`` (the layers right after it)."""
        if later.recompute != self.recompute:
            raise ValueError("a stage either recomputes all of its layers or none")
        return Work(
            layers=self.layers + later.layers,
            recompute=self.recompute,
            forward_flops=self.forward_flops + later.forward_flops,
            input_grad_flops=self.input_grad_flops + later.input_grad_flops,
            weight_grad_flops=self.weight_grad_flops + later.weight_grad_flops,
            activation_bytes=self.activation_bytes + later.activation_bytes,
            weight_grad_bytes=self.weight_grad_bytes + later.weight_grad_bytes,
            params=self.params + later.params,
            received_bytes=self.received_bytes,
            sent_bytes=later.sent_bytes,
        )


def layer_work(model: ModelSpec, index: int, microbatch_size: int, seq_len: int, recompute: bool) -> Work:
    """Layer ``index`` of ``model`` for one micro-batch of ``microbatch_size`` sequences of ``seq_len``."""
    c = model.layer_cost(index, microbatch_size, seq_len)
    received = model.layer_cost(index - 1, microbatch_size, seq_len).boundary_bytes if index > 0 else 0.0
    return Work(
        layers=1,
        recompute=recompute,
        forward_flops=c.forward_flops,
        input_grad_flops=c.input_grad_flops,
        weight_grad_flops=c.weight_grad_flops,
        activation_bytes=c.recompute_bytes if recompute else c.activation_bytes,
        weight_grad_bytes=c.weight_grad_bytes,
        params=c.params,
        received_bytes=received,
        sent_bytes=c.boundary_bytes,
    )


def stage_work(model: ModelSpec, layers: range, microbatch_size: int, seq_len: int, recompute: bool) -> Work:
    """The sum of ``layer_work`` over a stage's layers."""
    return reduce(add, (layer_work(model, i, microbatch_size, seq_len, recompute) for i in layers))


def price(work: Work, gpu: GPUSpec, tokens: int) -> StageCost:
    """Seconds and bytes of ``work`` on ``gpu`` for a micro-batch of ``tokens`` tokens.

    FLOPs are summed before dividing by the rate, so a stage's time is one rounding away from its
    FLOPs and the per-layer overhead counts layers exactly.
    """
    rate = gpu.peak_flops * gpu.achieved_fraction(tokens)
    overhead = gpu.op_overhead_s * work.layers
    forward = work.forward_flops / rate + overhead
    backward_input = work.input_grad_flops / rate + overhead
    backward_weight = work.weight_grad_flops / rate + overhead
    if work.recompute:
        backward_input += forward
    return StageCost(
        forward=forward,
        backward_input=backward_input,
        backward_weight=backward_weight,
        send_forward_bytes=work.sent_bytes,
        send_backward_bytes=work.received_bytes,
        activation_bytes=work.activation_bytes,
        weight_grad_bytes=min(work.activation_bytes, work.weight_grad_bytes),
    )


def measured_stage_cost(analytic: StageCost, measured: StageProfile, recompute: bool = False) -> StageCost:
    """A stage with measured op times and boundary bytes; memory stays the model's.

    With recomputation the backward pays one more forward, as in ``price``. A stage measured
    with it (``measured.recompute``, see ``pipeplan.profile``) already holds that forward in B and I;
    one measured without (every single-layer timing) gets the measured forward added. A stage
    measured with it but priced without has the forward taken off, so profiles stay reusable.
    """
    extra = measured.forward * (int(recompute) - int(measured.recompute))
    return replace(
        analytic, forward=measured.forward, backward=measured.backward + extra,
        backward_input=measured.backward_input + extra, backward_weight=measured.backward_weight,
        send_forward_bytes=measured.send_forward_bytes, send_backward_bytes=measured.send_backward_bytes,
    )
