"""Lowering is a pure function of loaded specs; one layer's cost by hand; stages sum their layers."""
import json

import pytest

from pipeplan import SpecError, even_split, load_cluster, load_model, lower
from pipeplan.costs import layer_work, price, stage_work, static_bytes
from pipeplan.lowering import Resolved, build_workload, generated_schedule
from pipeplan.plan import default_placement
from pipeplan.specs import resolve
from plans import llama_plan  # tests/ is on sys.path


def test_one_llama3_8b_block_on_an_h100_by_hand():
    model, gpu = load_model("llama3-8b"), load_cluster("dgx-h100").gpu
    b, s, h, kv, f = 1, 8192, 4096, 1024, 14336  # 8 KV heads of 128; SwiGLU MLP
    n = b * s
    # QKV, O, gate+up, down; then QK^T and AV over 32 heads of 128
    gemms = [gpu.gemm_seconds(n, h + 2 * kv, h), gpu.gemm_seconds(n, h, h), gpu.gemm_seconds(n, 2 * f, h),
             gpu.gemm_seconds(n, h, f), gpu.gemm_seconds(s, s, 128, 32), gpu.gemm_seconds(s, 128, s, 32)]
    # two norms (read + write), two residual adds (read two, write one), SwiGLU (read two, write one), bf16
    memory = n * (2 * 2 * 2 * h + 2 * 3 * 2 * h + 3 * 2 * f) / 3.35e12
    cost = price(layer_work(model, 1, b, s, recompute=False), gpu)
    assert cost.forward == pytest.approx(sum(gemms) + memory + 20e-6, rel=1e-12)
    assert cost.send_forward_bytes == cost.send_backward_bytes == 2 * b * s * h


def test_gemm_time_by_hand_tiles_waves_and_the_roofline():
    gpu = load_cluster("dgx-h100").gpu  # 132 SMs, 256 x 128 tiles, 0.83 of 989 TFLOP/s per SM share
    # 8192^3: 32 x 64 = 2048 tiles in ceil(2048 / 132) = 16 waves of one 256 x 128 x 8192 tile per SM
    wave = 2 * 256 * 128 * 8192 / (989e12 * 0.83 / 132)
    assert gpu.gemm_seconds(8192, 8192, 8192) == pytest.approx(16 * wave, rel=1e-12)
    assert gpu.gemm_efficiency(8192, 8192, 8192) == pytest.approx(0.83 * 2048 / (16 * 132), rel=1e-12)
    # a skinny GEMM is memory-bound: 2 bytes x (mk + kn + mn) at 3.35 TB/s
    assert gpu.gemm_seconds(8192, 8, 8192) == pytest.approx(2 * (8192 * 8192 + 8192 * 8 + 8192 * 8) / 3.35e12, rel=1e-12)


def test_recomputation_stores_the_input_and_pays_the_forward_again():
    model, gpu = load_model("llama3-8b"), load_cluster("dgx-h100").gpu
    plain = price(layer_work(model, 1, 2, 4096, recompute=False), gpu)
    rc = price(layer_work(model, 1, 2, 4096, recompute=True), gpu)
    assert rc.activation_bytes == 2 * 2 * 4096 * 4096  # bf16 block input, b·s·h values
    assert rc.backward_input == pytest.approx(plain.backward_input + plain.forward, rel=1e-12)
    assert rc.forward == plain.forward


def test_full_recomputation_of_a_stage_holding_the_head_reruns_its_blocks_only():
    """Megatron-LM checkpoints the transformer layers (``_checkpointed_forward``); the final norm, the
    LM head and the loss keep their activations and are not re-run. Hand count for the last two blocks
    and the head of a small GPT (h 256, 4 heads, FFN 4h, V 1000, b 2, s 128, no dropout)."""
    from pipeplan.costs import tp_seconds_in_ops
    from pipeplan.model import ModelSpec

    model = ModelSpec("gpt-small", 4, 256, 4, 1024, 1000, 128)
    gpu, link = load_cluster("dgx-a100").gpu, load_cluster("dgx-a100").intra
    b, s, h, v, n = 2, 128, 256, 1000, 2 * 128
    layers = range(3, 6)  # blocks 3 and 4 (pipeline layers), then the head
    full, plain = (stage_work(model, layers, b, s, mode) for mode in ("full", "none"))
    # What is re-run: two blocks' forward, 24·b·s·h² + 4·b·s²·h FLOPs each, and their four GEMMs each.
    assert full.rerun.forward_flops == 2 * (24 * b * s * h * h + 4 * b * s * s * h)
    assert dict(full.rerun.gemms) == {(n, 3 * h, h, 1): 2, (n, h, h, 1): 2, (n, 4 * h, h, 1): 2, (n, h, 4 * h, 1): 2}
    assert full.forward_flops - full.rerun.forward_flops == 2 * n * h * v  # the LM head, not re-run
    # Stored: each block's bf16 input; the head keeps its norm input, the LM head input and the logits.
    assert full.activation_bytes == 2 * (2 * n * h) + n * (2 * h + 2 * h + 2 * v)
    # After I each layer keeps for W at most what it stored: a block its input, the head its LM head's input.
    assert price(full, gpu).weight_grad_bytes == 2 * (2 * n * h) + 2 * n * h
    blocks = sum(price(layer_work(model, i, b, s, "none"), gpu).forward for i in (3, 4))
    rc, base = price(full, gpu), price(plain, gpu)
    assert rc.backward_input == pytest.approx(base.backward_input + blocks, rel=1e-12)
    assert rc.forward == base.forward and rc.backward_weight == base.backward_weight
    # With t = 2 the re-run repeats the blocks' 2 all-reduces of b·s·h bf16 values each, not the
    # vocabulary-parallel cross-entropy's three fp32 ones.
    tp_full = stage_work(model, layers, b, s, "full", tp=2)
    ring = 2 * (2 - 1) / 2 * 2 * n * h / link.bandwidth + 2 * (2 - 1) * link.latency
    forward, backward = tp_seconds_in_ops(tp_full, link)
    plain_forward, plain_backward = tp_seconds_in_ops(stage_work(model, layers, b, s, "none", tp=2), link)
    assert (forward, backward - plain_backward) == (plain_forward, pytest.approx(2 * 2 * ring, rel=1e-12))


def test_a_stage_is_the_sum_of_its_layers():
    model, gpu = load_model("llama3-8b"), load_cluster("dgx-h100").gpu
    layers = range(3, 8)
    stage = price(stage_work(model, layers, 1, 8192, False), gpu)
    each = [price(layer_work(model, i, 1, 8192, False), gpu) for i in layers]
    assert stage.forward == pytest.approx(sum(c.forward for c in each), rel=1e-12)
    assert stage.backward_weight == pytest.approx(sum(c.backward_weight for c in each), rel=1e-12)
    assert stage.activation_bytes == sum(c.activation_bytes for c in each)
    assert stage.send_backward_bytes == each[0].send_backward_bytes
    assert stage.send_forward_bytes == each[-1].send_forward_bytes


def test_static_memory_is_18_bytes_per_parameter_over_the_devices():
    workload, r = lower("llama3-8b", "dgx-h100", llama_plan())
    assert sum(workload.static_bytes) == pytest.approx(18 * r.model.total_params(), rel=1e-12)
    embedding = 128256 * 4096
    assert static_bytes(embedding, 4, True) == embedding * (6 + 12 / 4)


def test_lowering_needs_no_files():
    plan = llama_plan()
    model, cluster = load_model("llama3-8b"), load_cluster("dgx-h100")
    resolved = Resolved(model, cluster, plan, generated_schedule("1f1b", 8, 16, 1))
    loaded, _ = lower(plan.model, plan.cluster, plan)
    assert build_workload(resolved) == loaded


def test_resolved_checks_the_schedule_against_thellama_plan():
    model, cluster = load_model("llama3-8b"), load_cluster("dgx-h100")
    with pytest.raises(SpecError, match=r"plan\.num_microbatches: the schedule has 8, the plan says 16"):
        Resolved(model, cluster, llama_plan(), generated_schedule("1f1b", 8, 8, 1))


def test_spec_files_are_found_beside_thellama_plan(tmp_path):
    (tmp_path / "box.json").write_text(json.dumps(load_cluster("dgx-h100").to_dict()))
    r = resolve("llama3-8b", "box.json", llama_plan(cluster="box.json"), tmp_path)
    assert r.cluster == load_cluster("dgx-h100")


def test_default_placement_is_one_replica_in_megatron_rank_order():
    assert default_placement(4, 2) == [0, 2, 4, 6]
    assert llama_plan(pp=4, dp=2, layers_per_stage=even_split(34, 4)).gpus() == [0, 2, 4, 6]
