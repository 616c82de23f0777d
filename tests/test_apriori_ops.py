"""``validation/apriori_ops.py --split``: the a-priori price of a stage's op cut into GEMMs, attention cores,
memory-bound kernels and fixed cost, checked against the GEMM curve and attention table by hand."""
import sys

import pytest

from pipeplan.cluster import load_cluster
from pipeplan.costs import layer_work, price
from pipeplan.model import load_model

from reliability import REPO  # tests/ is on sys.path

sys.path.insert(0, str(REPO / "validation"))
import apriori_ops  # noqa: E402

SPEC = REPO / "validation" / "records" / "apriori-2026-12-02" / "probed-cpu-run4.json"


def test_a_tiny_blocks_forward_splits_into_its_four_gemms_its_attention_core_and_the_rest():
    gpu = load_cluster(str(SPEC)).gpu
    tiny_block = layer_work(load_model("tiny"), 1, 4, 64, False)
    parts = apriori_ops.split_terms(tiny_block, gpu)
    n, h, f = 4 * 64, 64, 256  # tokens, hidden, FFN of tiny at b = 4
    gemms = (gpu.gemm_seconds(n, 3 * h, h) + gpu.gemm_seconds(n, h, h)  # QKV, O
             + gpu.gemm_seconds(n, f, h) + gpu.gemm_seconds(n, h, f))  # fc1, fc2
    assert parts["gemm"][0] == pytest.approx(gemms, rel=1e-12)
    # dW: (k, n, m) of each
    assert parts["gemm"][2] == pytest.approx(gpu.gemm_seconds(h, 3 * h, n) + gpu.gemm_seconds(h, h, n)
                                             + gpu.gemm_seconds(h, f, n) + gpu.gemm_seconds(f, h, n), rel=1e-12)
    # the attention core of 4 sequences x 4 heads of (s, d) = (64, 16): one measured kernel, 4 s² d per pair
    assert parts["attention"][0] == pytest.approx(gpu.attention_forward.seconds(4 * 64 * 64 * 16 * 16, (64, 16)),
                                                  rel=1e-12)
    assert parts["attention"][2] == 0
    fixed = gpu.layer_overheads.block
    assert parts["fixed"] == pytest.approx(fixed, rel=1e-12)
    whole = price(tiny_block, gpu)
    for i, total in enumerate((whole.forward, whole.backward_input, whole.backward_weight)):
        assert sum(parts[k][i] for k in parts) == pytest.approx(total, rel=1e-12)
