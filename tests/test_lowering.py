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
    params = 2 * h * h + 2 * h * kv + 3 * h * f  # Q, O; K, V; gate, up, down
    forward_flops = 2 * b * s * params + 4 * b * s * s * h
    rate = 989e12 * 0.6 * (b * s) / (b * s + 256)  # peak x achieved fraction at b·s tokens
    cost = price(layer_work(model, 1, b, s, recompute=False), gpu, b * s)
    assert cost.forward == pytest.approx(forward_flops / rate + 20e-6, rel=1e-12)
    assert cost.send_forward_bytes == cost.send_backward_bytes == 2 * b * s * h


def test_recomputation_stores_the_input_and_pays_the_forward_again():
    model, gpu = load_model("llama3-8b"), load_cluster("dgx-h100").gpu
    plain = price(layer_work(model, 1, 2, 4096, recompute=False), gpu, 2 * 4096)
    rc = price(layer_work(model, 1, 2, 4096, recompute=True), gpu, 2 * 4096)
    assert rc.activation_bytes == 2 * 2 * 4096 * 4096  # bf16 block input, b·s·h values
    assert rc.backward_input == pytest.approx(plain.backward_input + plain.forward, rel=1e-12)
    assert rc.forward == plain.forward


def test_a_stage_is_the_sum_of_its_layers():
    model, gpu = load_model("llama3-8b"), load_cluster("dgx-h100").gpu
    layers = range(3, 8)
    stage = price(stage_work(model, layers, 1, 8192, False), gpu, 8192)
    each = [price(layer_work(model, i, 1, 8192, False), gpu, 8192) for i in layers]
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
