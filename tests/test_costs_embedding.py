"""Where the embedding's weight gradient runs, and what the cost model counts for it.

The validator's embedding is ``torch.nn.Embedding`` (autograd, no ``SplitLinear``): its table gets its
gradient in I and W has nothing to run, which is what the cost model must price (counted by hand below).
"""
import pytest

from pipeplan.costs import layer_work, price
from pipeplan.model import ModelSpec, load_model


def test_validator_embedding_gradient_lands_in_i_and_w_runs_nothing():
    torch = pytest.importorskip("torch")
    from validator.compute import StageRunner

    tiny = load_model("tiny")
    runner = StageRunner(tiny, 0, range(0, 1), 2, tiny.seq_len, 4, torch.device("cpu"), torch.float32, seed=1)
    table = runner.module.layers[0].tokens.weight
    runner.forward(0, None)
    assert not table.grad.any()  # its slot of the stage's gradient buffer, still zero
    runner.backward(0, torch.ones(runner.boundary_shape()), split=True)
    assert table.grad is not None and float(table.grad.abs().sum()) > 0  # I wrote the table's gradient
    assert runner.module.store.pending[0] == []  # W of this micro-batch has no work to run
    before = table.grad.clone()
    runner.weight(0)
    assert torch.equal(table.grad, before)


def test_embedding_backward_bytes_are_in_i_by_hand_count():
    # tiny: V = 512, h = 64, b = 2, s = 64 -> n = 128 tokens; no positions, no dropout.
    # zero the V x h gradient (2 B a value) + scatter-add (read the gradient row 2, read and write the
    # table row 4: 6 B a token value) + accumulate into .grad (read two, write one: 6 B a value)
    tiny = load_model("tiny")
    work = layer_work(tiny, 0, 2, 64, False)
    assert work.input_grad_memory_bytes == 8 * 512 * 64 + 6 * 128 * 64  # 311,296
    assert work.weight_grad_memory_bytes == 0
    assert work.weight_grad_flops == 0 and work.input_grad_flops == 2 * 128 * 64


def test_learned_positions_and_dropout_backward_by_hand_count():
    # V = 1000, h = 32, s = 16, b = 3 (n = 48), 20 position rows, dropout; tp = 1.
    model = ModelSpec("m", 2, 32, 2, 128, 1000, 16, dropout=True, learned_positions=True, position_rows=20)
    work = layer_work(model, 0, 3, 16, False)
    tokens = 8 * 1000 * 32 + 6 * 48 * 32
    positions = 8 * 20 * 32 + 2 * 48 * 32 + 8 * 16 * 32  # table + the sum over the batch (read n, write s)
    dropout = 5 * 48 * 32  # read the gradient and the 1-byte mask, write
    assert work.input_grad_memory_bytes == tokens + positions + dropout


def test_vocabulary_parallel_table_gradient_is_per_rank():
    tiny = load_model("tiny")
    one, four = layer_work(tiny, 0, 2, 64, False, tp=4), layer_work(tiny, 0, 2, 64, False)
    assert four.input_grad_memory_bytes - one.input_grad_memory_bytes == pytest.approx(8 * 512 * 64 * (1 - 1 / 4))


def test_embedding_w_is_priced_at_nothing_on_a_gpu():
    from pipeplan.cluster import CLUSTER_PRESETS

    gpu = CLUSTER_PRESETS["dgx-h100"].gpu
    cost = price(layer_work(load_model("tiny"), 0, 2, 64, False), gpu)
    assert cost.backward_weight == pytest.approx(gpu.op_overhead_s)  # only the per-layer overhead
    # I: the overhead and the table's gradient, 311,296 bytes (above) at the kernels' bandwidth
    assert cost.backward_input == pytest.approx(gpu.op_overhead_s + gpu.memory_kernel_seconds(311_296))
