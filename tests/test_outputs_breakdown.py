"""FLOPs, communication and memory breakdowns against numbers worked out outside the code."""
import pytest

import pipeplan
from pipeplan import CommTime, MemoryParts, ModelSpec, Plan, communication_breakdown, megatron_flops, memory_breakdown
from simulator import Action, OpRecord, StageCost, Timeline, TransferRecord, Workload, simulate, uniform_network
from simulator.ir import make_schedule

# GPT 1.7B of Megatron-LM SC'21 Table 1 (Narayanan et al. 2021): 24 layers, hidden 2304, 24 heads,
# vocabulary 51,200, sequence 2048, global batch 512, t = p = 1 on 32 A100s, 137 TFLOP/s per GPU.
B, S, L, H, V = 512, 2048, 24, 2304, 51200
# Eq. 3 expanded by hand: 96·B·s·l·h² + 16·B·s²·l·h + 6·B·s·h·V
#   96·512·2048·24·2304² = 12,824,703,626,379,264
#   16·512·2048²·24·2304 =  1,899,956,092,796,928
#   6·512·2048·2304·51200 =    742,170,348,748,800
EQ3_RECOMPUTE = 15_466_830_067_924_992
# Without recomputation the block terms are 3/4 of the above (72·B·s·l·h² + 12·B·s²·l·h), the head stays:
#   9,618,527,719,784,448 + 1,424,967,069,597,696 + 742,170,348,748,800
EQ3_NO_RECOMPUTE = 11_785_665_138_130_944
EMBEDDING = 2 * B * S * H  # the embedding's nominal FLOPs per pass (forward, and again for its weight gradient)


def test_megatron_eq3_by_hand_for_gpt_1_7b():
    assert megatron_flops(B, S, L, H, V, recompute=True) == pytest.approx(EQ3_RECOMPUTE, rel=1e-15)
    assert megatron_flops(B, S, L, H, V, recompute=False) == pytest.approx(EQ3_NO_RECOMPUTE, rel=1e-15)
    # Table 1 reports 137 TFLOP/s per GPU on 32 GPUs: an iteration of about 3.53 s.
    assert EQ3_RECOMPUTE / (32 * 137e12) == pytest.approx(3.528, abs=1e-3)


def _gpt_1_7b_result(recompute: str):
    model = ModelSpec("gpt-1.7b", L, H, 24, 4 * H, V, S, dropout=True, learned_positions=True)
    plan = Plan(model=model.to_dict(), cluster="dgx-a100", nodes=4, schedule="1f1b", pp=1, dp=32,
                num_microbatches=16, microbatch_size=1, layers_per_stage=(L + 2,), recompute=(recompute,))
    return pipeplan.simulate(plan=plan)


def test_model_and_hardware_flops_match_eq3_for_a_gpt_model():
    plain = _gpt_1_7b_result("none")
    # Per-layer FLOPs give eq. 3's terms exactly, plus the embedding's forward and weight-gradient passes.
    assert plain.model_flops == pytest.approx(EQ3_NO_RECOMPUTE + 2 * EMBEDDING, rel=1e-12)
    assert plain.hardware_flops == plain.model_flops
    assert plain.num_gpus == 32
    recomputed = _gpt_1_7b_result("full")
    assert recomputed.model_flops == plain.model_flops
    # Full recomputation re-runs the blocks' forward only, as eq. 3 counts it: neither the LM head
    # (2·B·s·h·V) nor the embedding is re-run (Megatron checkpoints the transformer layers).
    assert recomputed.hardware_flops == pytest.approx(EQ3_RECOMPUTE + 2 * EMBEDDING, rel=1e-12)
    t = recomputed.iteration_time
    assert recomputed.hardware_tflops_per_gpu == pytest.approx(recomputed.hardware_flops / (t * 32) / 1e12)
    assert recomputed.model_tflops_per_gpu == pytest.approx(plain.model_flops / (t * 32) / 1e12)
    assert recomputed.mfu == pytest.approx(recomputed.model_tflops_per_gpu * 1e12 / 312e12)


def _op(device, text, start, end):
    return OpRecord(device, Action.parse(text), start, end)


def test_exposed_and_overlapped_on_a_hand_made_timeline():
    ops = [_op(0, "0F0", 0, 2), _op(0, "0B0", 5, 8), _op(0, "0REDUCE_GRAD", 6, 10),
           _op(1, "1F0", 3, 4), _op(1, "1B0", 4, 4.5), _op(1, "1REDUCE_GRAD", 5, 6)]
    f0, b1, f1 = Action.parse("0F0"), Action.parse("1B0"), Action.parse("1F0")
    transfers = [TransferRecord(0, 1, f0, f1, 1.5, 3, 8.0), TransferRecord(0, 1, f0, f1, 2.5, 3.5, 8.0),
                 TransferRecord(1, 0, b1, Action.parse("0B0"), 4.5, 5, 8.0)]
    comm = communication_breakdown(Timeline(2, ops, transfers))
    # PP on either device: [1.5,3] ∪ [2.5,3.5] ∪ [4.5,5] = 2.0 + 0.5 s.
    # dev0 computes [0,2] and [5,8]: hidden [1.5,2] = 0.5. dev1 computes [3,4.5]: hidden [3,3.5] = 0.5.
    assert comm.pp == (CommTime(2.5, 2.0, 0.5), CommTime(2.5, 2.0, 0.5))
    # DP: dev0's reduction [6,10] overlaps B0 [5,8] for 2 s; dev1's [5,6] runs while it is idle.
    assert comm.dp == (CommTime(4.0, 2.0, 2.0), CommTime(1.0, 1.0, 0.0))
    assert comm.other == (CommTime(0.0, 0.0, 0.0),) * 2
    assert comm.tp is None and "tp = 1" in comm.tp_note
    assert comm.mean("dp") == CommTime(2.5, 1.5, 1.0)


def test_memory_parts_of_a_tiny_plan_sum_to_the_simulated_peak():
    tiny = pipeplan.load_model("tiny")
    plan = Plan(model="tiny", cluster="dgx-h100", schedule="1f1b", pp=2, dp=2, distributed_optimizer=True,
                num_microbatches=4, microbatch_size=2, layers_per_stage=(5, 5))
    result = pipeplan.simulate(plan=plan)
    parts = result.memory_breakdown
    for d in range(2):
        assert parts[d].total == pytest.approx(result.peak_memory[d], rel=1e-12)
    # Stage 0 = embedding (512·64) + 4 blocks of 4·64² + 2·64·256 matmul weights and 2·64 norm weights.
    params0 = 512 * 64 + 4 * (4 * 64 * 64 + 2 * 64 * 256 + 2 * 64)
    assert params0 == 229_888
    assert parts[0].weights == pytest.approx(2 * params0)
    assert parts[0].grads == pytest.approx(4 * params0)
    assert parts[0].optimizer == pytest.approx(12 / 2 * params0)  # sharded over dp = 2
    # 1F1B at p = 2: device 0 holds two micro-batches of its stage's activations at its peak.
    stage0 = sum(tiny.layer_cost(i, 2, 64).activation_bytes for i in range(5))
    assert parts[0].activations == pytest.approx(2 * stage0)
    assert parts[0].buffers == 0.0


def test_gathered_parameters_are_buffers():
    # One device, one stage: UNSHARD holds 100 bytes from its start until RESHARD ends; F stores 7.
    actions = [Action(0, "UNSHARD", None), Action(0, "F", 0), Action(0, "B", 0), Action(0, "RESHARD", None)]
    schedule = make_schedule([actions], [0], 1, "hand")
    cost = StageCost(1.0, 1.0, 1.0, activation_bytes=7.0, gathered_bytes=100.0)
    workload = Workload(schedule, (cost,), uniform_network(1), static_bytes=(36.0,), capacity_bytes=(1e9,))
    sim = simulate(workload)
    (parts,) = memory_breakdown(sim.timeline, workload, dp=1, distributed_optimizer=False)
    assert sim.peak_memory == [143.0]
    # 36 static bytes = 2 parameters of 18 bytes: 4 weights, 8 gradients, 24 optimizer.
    assert parts == MemoryParts(weights=4.0, grads=8.0, optimizer=24.0, activations=7.0, buffers=100.0)


def _dp_timeline():
    ops = [_op(0, "0F0", 0, 2), _op(0, "0B0", 3, 6), _op(0, "0UNSHARD", 0, 1), _op(0, "0REDUCE_GRAD", 6, 8),
           _op(1, "1F0", 2, 3), _op(1, "1B0", 3, 4), _op(1, "1REDUCE_GRAD", 4, 5)]
    transfers = [TransferRecord(0, 1, Action.parse("0F0"), Action.parse("1F0"), 2, 2.5, 8.0)]
    return Timeline(2, ops, transfers, {"schedule": "hand"})


def test_trace_puts_data_parallel_ops_on_a_dp_lane():
    from pipeplan.charts.trace import perfetto_trace

    events = perfetto_trace(_dp_timeline())["traceEvents"]
    names = {(e["pid"], e["tid"]): e["args"]["name"] for e in events if e.get("name") == "thread_name"}
    dp_lanes = {key for key, name in names.items() if name == "DP communication"}
    assert {pid for pid, _ in dp_lanes} == {0, 1}
    for e in events:
        if e.get("ph") == "X" and e["cat"] in ("UNSHARD", "REDUCE_GRAD"):
            assert (e["pid"], e["tid"]) in dp_lanes
        elif e.get("ph") == "X" and e["cat"] in ("F", "B"):
            assert names[(e["pid"], e["tid"])] == "compute"


def test_gantt_draws_the_dp_lane_with_named_kinds(tmp_path):
    from pipeplan.charts.gantt import draw_gantt
    from pipeplan.charts.render import pyplot

    fig, ax = pyplot().subplots()
    draw_gantt(ax, _dp_timeline())
    labels = [t.get_text() for t in ax.get_legend().get_texts()]
    assert "DP: reduce gradients" in labels and "DP: gather parameters" in labels
    # compute boxes, the transfer lane, the communication-stream band: three collections
    assert len(ax.collections) == 3
    assert len(ax.collections[2].get_paths()) == 3  # UNSHARD and two REDUCE_GRADs


def test_tensor_parallel_time_by_hand_on_a_middle_stage():
    # llama3-8b, tp 2, pp 4 (even split 9 9 8 8: device 1 holds 9 blocks), m = 4, no SP: per block and
    # micro-batch 2 all-reduces of s·b·h bf16 values in F and 2 in B, each a ring over 2 ranks on
    # NVLink (450 GB/s, 3 us): 2·(1/2)·X/B + 2·α.
    import pipeplan
    from pipeplan.collectives import ALL_REDUCE, ring_seconds

    result = pipeplan.simulate("llama3-8b", "dgx-h100", tp=2, pp=4, microbatches=4)
    one = ring_seconds(ALL_REDUCE, 2, 8192 * 4096 * 2, 450e9, 3e-6)
    tp = result.communication.tp[1]
    assert tp.total == pytest.approx(4 * 9 * 4 * one, rel=1e-9)
    assert tp.exposed == tp.total and tp.overlapped == 0.0
    assert pipeplan.simulate("llama3-8b", "dgx-h100", pp=4, microbatches=4).communication.tp is None
