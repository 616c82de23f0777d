"""Tensor parallelism in the cost model: Korthikanti Table 2 memory, TP collectives by hand, per-rank FLOPs and
parameters, selective recomputation."""
import pytest

from pipeplan import SpecError, load_cluster, lower
from pipeplan.costs import layer_work, price, tp_seconds
from pipeplan.model import ModelSpec
from pipeplan.plan import Plan

S, B, H, A = 2048, 2, 4096, 32  # sequence, micro-batch, hidden, heads


def gpt(attention="standard"):
    """Megatron's GPT block: FFN 4h, dropout, learned positions (Korthikanti et al. 2022 Sec. 4)."""
    return ModelSpec("gpt", 4, H, A, 4 * H, 51200, S, dropout=True, learned_positions=True, attention=attention)


@pytest.mark.parametrize("t", [1, 2, 4, 8])
def test_block_activations_are_korthikanti_table_2(t):
    sbh = S * B * H
    block = gpt().layer_cost(1, B, S, tp=t)
    assert block.activation_bytes == pytest.approx(sbh * (10 + 24 / t + 5 * A * S / (H * t)), rel=1e-12)
    assert block.selective_bytes == pytest.approx(sbh * (10 + 24 / t), rel=1e-12)  # no 5as/h term
    assert block.recompute_bytes == 2 * sbh  # full recomputation: the block input
    assert gpt("flash").layer_cost(1, B, S, tp=t).activation_bytes == pytest.approx(sbh * (10 + 24 / t), rel=1e-12)
    if t > 1:
        sp = gpt().layer_cost(1, B, S, tp=t, sequence_parallel=True)
        assert sp.activation_bytes == pytest.approx(sbh / t * (34 + 5 * A * S / H), rel=1e-12)
        assert sp.selective_bytes == pytest.approx(sbh / t * 34, rel=1e-12)
        assert sp.recompute_bytes == pytest.approx(2 * sbh / t, rel=1e-12)
        assert gpt("flash").layer_cost(1, B, S, tp=t, sequence_parallel=True).activation_bytes == \
            pytest.approx(sbh / t * 34, rel=1e-12)


def test_tp_all_reduces_per_block_by_hand_on_dgx_h100_nvlink():
    cluster = load_cluster("dgx-h100")  # NVLink 450 GB/s each way, 3 µs
    t, nbytes = 8, 2 * S * B * H  # s·b·h bf16 values
    one = 2 * (t - 1) / t * nbytes / 450e9 + 2 * (t - 1) * 3e-6  # ring all-reduce over 8 ranks
    assert one == pytest.approx(1.30489e-4 + 42e-6, rel=1e-5)  # 1.75 x 33.55 MB / 450 GB/s + 14 x 3 µs
    for sp in (False, True):  # an all-gather + reduce-scatter pair costs what the all-reduce does
        work = layer_work(gpt(), 1, B, S, "none", tp=t, sequence_parallel=sp)
        assert tp_seconds(work.tp_forward, t, cluster.intra) == pytest.approx(2 * one, rel=1e-12)
        # With sequence parallelism Megatron's backward also all-gathers the QKV and FC1 inputs again (it kept
        # only their sequence shards; apex/Megatron LinearWithGradAccumulationAndAsyncCommunication.backward):
        # two more all-gathers, each (t-1)/t·S/B + (t-1)·α, half an all-reduce.
        backward = 2 * one + (2 * one / 2 if sp else 0)
        assert tp_seconds(work.tp_backward, t, cluster.intra) == pytest.approx(backward, rel=1e-12)
    work = layer_work(gpt(), 1, B, S, "none", tp=t)
    with_link, alone = price(work, cluster.gpu, cluster.intra), price(layer_work(gpt(), 1, B, S, "none", tp=t), cluster.gpu,
                                                                       cluster.intra.__class__("free", 1e30, 0.0))
    assert with_link.forward - alone.forward == pytest.approx(2 * one, rel=1e-9)  # on F's critical path
    assert with_link.backward_input - alone.backward_input == pytest.approx(2 * one, rel=1e-9)  # and on I's


@pytest.mark.parametrize("t", [2, 4, 8])
def test_gemm_flops_and_parameters_split_over_t(t):
    one, split = gpt().layer_cost(1, B, S), gpt().layer_cost(1, B, S, tp=t)
    assert split.forward_flops == pytest.approx(one.forward_flops / t, rel=1e-12)
    assert split.weight_grad_flops == pytest.approx(one.weight_grad_flops / t, rel=1e-12)
    assert split.params == pytest.approx((one.params - 2 * H) / t + 2 * H, rel=1e-12)  # norms replicated
    head = gpt().layer_cost(5, B, S, tp=t)
    assert head.forward_flops == pytest.approx(2 * S * B * H * 51200 / t, rel=1e-12)  # vocabulary-parallel
    assert gpt().layer_cost(0, B, S, tp=t).params == pytest.approx(51200 * H / t + S * H, rel=1e-12)


def test_static_bytes_per_device_are_stage_params_over_t():
    def plan(t):
        return Plan(model=gpt().to_dict(), cluster="dgx-h100", schedule="1f1b", pp=2, num_microbatches=4,
                    microbatch_size=1, layers_per_stage=(3, 3), tp=t, dp=2, distributed_optimizer=True, nodes=2)
    w1, _ = lower(gpt(), "dgx-h100", plan(1))
    w4, _ = lower(gpt(), "dgx-h100", plan(4))
    replicated = 2 * H * 4 + S * H + H  # block norms, positions, final norm
    per_param = 6 + 12 / 2  # distributed optimizer shards the 12 optimizer bytes over dp = 2
    assert sum(w4.static_bytes) == pytest.approx(((sum(w1.static_bytes) / per_param - replicated) / 4 + replicated)
                                                 * per_param, rel=1e-12)


def test_selective_recomputation_drops_the_scores_and_reruns_the_attention_core():
    gpu = load_cluster("dgx-h100").gpu
    none, sel = (price(layer_work(gpt(), 1, B, S, r), gpu) for r in ("none", "selective"))
    assert sel.activation_bytes < none.activation_bytes and sel.forward == none.forward
    assert none.backward_input < sel.backward_input < none.backward_input + none.forward
    flash_none, flash_sel = (price(layer_work(gpt("flash"), 1, B, S, r), gpu) for r in ("none", "selective"))
    assert flash_sel == flash_none  # FlashAttention stores no scores: nothing to drop, nothing to re-run


def test_plans_accept_selective_and_bad_input_names_the_field():
    base = dict(model="tiny", cluster="dgx-h100", schedule="1f1b", pp=2, num_microbatches=2, microbatch_size=1,
                layers_per_stage=(5, 5))
    assert Plan(**base, recompute=("selective", "full")).recompute_mode(0) == "selective"
    with pytest.raises(SpecError, match=r"^plan\.recompute: 'some'"):
        Plan(**base, recompute=("some", "full"))
    with pytest.raises(SpecError, match=r"^model\.attention: 'fast'"):
        ModelSpec("m", 2, 64, 4, 256, 512, 64, attention="fast")
    with pytest.raises(SpecError, match=r"^plan\.tp: 3 must divide"):
        gpt().layer_cost(1, B, S, tp=3)
