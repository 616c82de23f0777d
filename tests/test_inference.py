"""Serving plans: the inference cost model, request batches and passes, metrics, against hand counts."""
import json
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest

from pipeplan import SpecError
from pipeplan.cluster import load_cluster
from pipeplan.inference import RequestClass, ServingSpec, parse_mix, request_order
from pipeplan.inference.api import simulate_serving
from pipeplan.inference.costs import PassShape, kv_bytes_per_token, kv_bytes_per_token_per_layer, layer_pass
from pipeplan.inference.metrics import percentile
from pipeplan.inference.passes import plan_passes
from pipeplan.model import MODEL_PRESETS
from pipeplan.plan import Plan
from simulator.memory import memory_curves

ROOT = Path(__file__).resolve().parents[1]
LLAMA8, LLAMA70 = MODEL_PRESETS["llama3-8b"], MODEL_PRESETS["llama3-70b"]
H100 = load_cluster("dgx-h100")
NO_OVERHEAD = replace(H100.gpu, op_overhead_s=0.0)


def test_kv_cache_bytes_per_token_are_the_hand_counts():
    # 2 (K and V) x layers x kv_heads x head_dim x 2 bytes (bf16).
    assert kv_bytes_per_token(LLAMA8) == 2 * 32 * 8 * 128 * 2 == 131_072
    assert kv_bytes_per_token(LLAMA70) == 2 * 80 * 8 * 128 * 2 == 327_680
    assert kv_bytes_per_token(LLAMA8, tp=2) == 65_536  # the KV heads split over the tensor ranks
    # Without GQA every head keeps its K and V: GPT-2 XL, 48 layers of 25 heads of 64.
    assert kv_bytes_per_token(MODEL_PRESETS["gpt2-xl"]) == 2 * 48 * 25 * 64 * 2


def test_a_decode_step_of_one_block_is_its_bytes_over_hbm_bandwidth():
    # Llama 3 8B block, one request with 8,192 tokens cached, one H100 (3.35 TB/s), no launch overhead.
    # By hand: its weights, 2 bytes x (4096·(4096 + 2·1024) + 4096·4096 + 3·4096·14336) = 436,207,616 bytes,
    # and its KV cache, 8,192 x 4,096 bytes, read once each. The rest (the one token's activations and norms)
    # is under 0.1 %.
    weights = 2 * (4096 * (4096 + 2 * 1024) + 4096 * 4096 + 3 * 4096 * 14336)
    assert weights == 436_207_616
    seconds = layer_pass(LLAMA8, "block", NO_OVERHEAD, None, 1, PassShape.decode_of((8192,))).seconds
    assert seconds == pytest.approx((weights + 8192 * 4096) / 3.35e12, rel=1e-3)
    # tp = 2: half the weights and half the cache per rank, plus two ring all-reduces of the token's 8,192 bytes
    # over 2 ranks on NVLink (450 GB/s, 3 us): 2(n-1)/n·S/B + 2(n-1)·α each.
    seconds = layer_pass(LLAMA8, "block", NO_OVERHEAD, H100.intra, 2, PassShape.decode_of((8192,))).seconds
    all_reduce = 1 * 8192 / 450e9 + 2 * 3e-6
    assert seconds == pytest.approx((weights + 8192 * 4096) / 2 / 3.35e12 + 2 * all_reduce, rel=1e-3)


def test_a_decode_step_of_the_head_reads_its_weights_and_gathers_the_logits_for_sampling():
    # Llama 3 8B's final norm and LM head (4096 x 128,256, untied) for 16 requests' last tokens, one H100, no
    # launch overhead. By hand: the head's weights, 2 x 4096 x 128,256 bytes, read once (a decode GEMM of 16 rows
    # is memory-bound); the norm reads and writes 16 x 4096 bf16 values; sampling reads the 16 x 128,256 bf16
    # logits once. No loss: no fp32 softmax, no cross-entropy all-reduces, whatever Megatron kernels say.
    weights, norm, logits = 2 * 4096 * 128_256, 16 * 2 * (2 * 4096), 16 * 2 * 128_256
    shape = PassShape.decode_of((1024,) * 16)
    head = layer_pass(LLAMA8, "head", NO_OVERHEAD, None, 1, shape).seconds
    assert head == pytest.approx((weights + 16 * 2 * 4096 + 16 * 2 * 128_256 + norm + logits) / 3.35e12, rel=2e-3)
    megatron = replace(LLAMA8, kernels="megatron-2022")
    assert layer_pass(megatron, "head", NO_OVERHEAD, None, 1, shape).seconds == head
    # tp = 2: half the head (and its GEMM's output) per rank, then each rank's half of the logits all-gathered:
    # (n-1)/n·S/B + (n-1)·α over NVLink (450 GB/s, 3 us) for the S = 16 x 128,256 x 2 bytes gathered.
    gather = logits / 2 / 450e9 + 3e-6
    tp2 = layer_pass(LLAMA8, "head", NO_OVERHEAD, H100.intra, 2, shape).seconds
    by_hand = (weights / 2 + 16 * 2 * 4096 + 16 * 2 * 128_256 / 2 + norm + logits) / 3.35e12 + gather
    assert tp2 == pytest.approx(by_hand, rel=2e-3)


def test_a_prefill_is_compute_bound():
    # 8 prompts of 2,048 tokens through one Llama 3 8B block: 2 FLOPs per weight per token, plus the attention
    # core 4·s²·hidden per prompt, at the GEMM ceiling (0.83 x 989 TFLOP/s) is the floor; norms, residual
    # adds and partial GEMM waves add less than a quarter.
    flops = 2 * 8 * 2048 * 218_103_808 + 8 * 4 * 2048 ** 2 * 4096
    floor = flops / (989e12 * 0.83)
    seconds = layer_pass(LLAMA8, "block", NO_OVERHEAD, None, 1, PassShape.prefill_of((2048,) * 8)).seconds
    assert floor <= seconds <= 1.25 * floor
    # A decode step of the same 8 requests is memory-bound: reading the weights and the 8 caches at HBM bandwidth
    # is its floor, and its FLOPs at the GEMM ceiling would take about 3 % of that.
    decode = layer_pass(LLAMA8, "block", NO_OVERHEAD, None, 1, PassShape.decode_of((2048,) * 8)).seconds
    memory_floor = (436_207_616 + 8 * 2048 * 4096) / 3.35e12
    assert memory_floor <= decode <= 1.01 * memory_floor
    assert (2 * 8 * 218_103_808 + 8 * 4 * 2048 * 4096) / (989e12 * 0.83) < 0.05 * memory_floor


def test_the_cache_grows_by_each_pass_s_tokens_and_is_freed_after_the_batch_s_last_pass():
    # tiny (8 blocks, 4 heads of 16): 2·4·16·2 = 256 bytes per token and layer, 2,048 per token for the model.
    tiny = MODEL_PRESETS["tiny"]
    assert kv_bytes_per_token_per_layer(tiny) == 256
    result = simulate_serving(model="tiny", pp=1, microbatch_size=2, serving=ServingSpec.uniform(4, 3))
    # One batch of two requests: a prefill writes 2 x 4 tokens, each of the two decode steps 2 x 1.
    workload = result.workload
    cache_only = replace(workload, stages=tuple(replace(c, activation_bytes=0.0) for c in workload.stages),
                         pass_stages=tuple(tuple(replace(c, activation_bytes=0.0) for c in costs)
                                           for costs in workload.pass_stages))
    _, levels = memory_curves(result.sim.timeline, cache_only, [0.0])[0]
    steps = [lv for k, lv in enumerate(levels) if k == 0 or lv != levels[k - 1]]  # releases of 0 bytes repeat a level
    assert steps == [0.0, 8 * 2048, 10 * 2048, 12 * 2048, 0.0]
    assert result.memory[0].weights == workload.static_bytes[0]


def test_request_batches_take_the_slots_in_turn():
    spec = ServingSpec((RequestClass(16, 3), RequestClass(8, 1)), requests=5)
    passes = plan_passes(spec, streams=2, batch=2)
    # Requests in order A B A B A (weights 1:1), batches [0, 1], [2, 3], [4]; batch 2 waits for slot 0.
    assert passes.batches == ((0, 1), (2, 3), (4,))
    assert [(p.microbatch, p.stream, p.batch, p.step, p.requests) for p in passes.passes] == [
        (0, 0, 0, 0, (0, 1)), (1, 1, 1, 0, (2, 3)), (2, 0, 0, 1, (0,)), (3, 1, 1, 1, (2,)),
        (4, 0, 0, 2, (0,)), (5, 1, 1, 2, (2,)), (6, 0, 2, 0, (4,)), (8, 0, 2, 1, (4,)), (10, 0, 2, 2, (4,))]
    assert passes.passes[2].shape == PassShape(False, (1,), (17,))  # decode step 1: the prompt and one token
    assert passes.passes_per_stream == (6, 3)
    with pytest.raises(SpecError, match="serve at least 3 requests or lower -m"):
        plan_passes(ServingSpec.uniform(8, 2, requests=2), streams=2, batch=2)


def test_request_order_is_smooth_weighted_round_robin():
    # nginx's documented sequence for weights a=5, b=1, c=1: a a b a c a a.
    a, b, c = RequestClass(1, 1, 5), RequestClass(2, 1, 1), RequestClass(3, 1, 1)
    assert "".join("abc"[[a, b, c].index(r)] for r in request_order((a, b, c), 7)) == "aabacaa"
    assert parse_mix("512x128:3, 2048x256") == (RequestClass(512, 128, 3), RequestClass(2048, 256, 1))


def test_nearest_rank_percentiles():
    values = [float(v) for v in range(100, 0, -1)]
    assert (percentile(values, 0.5), percentile(values, 0.99), percentile(values, 1.0)) == (50.0, 99.0, 100.0)


def test_latencies_add_up_from_the_passes_on_one_device():
    result = simulate_serving(model="tiny", pp=1, microbatch_size=1, serving=ServingSpec.uniform(32, 5))
    prefill, *steps = [op.end - op.start for op in result.sim.timeline.ops]
    assert result.first_token_times == [pytest.approx(prefill)]
    assert result.end_to_end_times == [pytest.approx(prefill + sum(steps))]
    assert result.per_output_token_times == [pytest.approx(sum(steps) / 4)]
    assert result.tokens_per_second == pytest.approx(5 / (prefill + sum(steps)))


def test_serving_plans_round_trip_and_refuse_training_options():
    plan = simulate_serving(model="tiny", pp=2, serving=ServingSpec.uniform(16, 4)).plan
    again = Plan.from_dict(json.loads(plan.to_json()))
    assert again == plan.with_(placement=tuple(plan.gpus())) and again.serving == ServingSpec.uniform(16, 4)
    assert "serving" not in Plan.from_dict({**plan.to_dict(), "serving": None, "schedule": "1f1b"}).to_dict()
    with pytest.raises(SpecError, match="plan.schedule: 1f1b trains"):
        plan.with_(schedule="1f1b")
    with pytest.raises(SpecError, match="plan.recompute: a serving plan keeps nothing"):
        plan.with_(recompute=("full", "full"))
    from pipeplan import simulate
    with pytest.raises(SpecError, match="inference is forward-only"):
        simulate(model="tiny", pp=2, schedule="inference")


def run_cli(*args, cwd=ROOT):
    return subprocess.run([sys.executable, "-m", "pipeplan", *args], capture_output=True, text=True, cwd=cwd)


def test_cli_serves_a_plan_and_a_forward_only_csv(tmp_path):
    done = run_cli("simulate", "--inference", "--model", "tiny", "--pp", "2", "-b", "2", "--prompt-len", "16",
                   "--output-len", "4", "--json")
    assert done.returncode == 0, done.stderr
    data = json.loads(done.stdout)
    assert (data["requests"], data["passes"], data["output_tokens"]) == (4, 8, 16)  # m = pp = 2 slots of 2
    assert data["ttft"]["p50"] <= data["latency"]["p50"] and data["fits"]
    plan_file = tmp_path / "serve.json"
    plan_file.write_text(json.dumps(data["plan"]))
    again = run_cli("simulate", str(plan_file), "--json")
    assert json.loads(again.stdout)["makespan"] == data["makespan"]
    drawn = run_cli("gantt", str(plan_file), "-o", str(tmp_path / "serve.png"))
    assert drawn.returncode == 0, drawn.stderr
    assert (tmp_path / "serve.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    csv = tmp_path / "forward.csv"
    csv.write_text("0F0,0F1,0F2\n1F0,1F1,1F2\n")
    done = run_cli("simulate", "--model", "tiny", "--schedule-csv", str(csv))
    assert done.returncode == 0, done.stderr
    assert "custom tp=1 pp=2" in done.stdout and "3 batches, 3 passes per stage" in done.stdout


@pytest.mark.parametrize("args, message", [
    (["--mix", "10x"], "--mix: '10x' is not PROMPTxOUTPUT[:WEIGHT]"),
    (["--inference", "--recompute", "full"], "--recompute: a serving run is forward-only"),
    (["--inference", "--iterations", "2"], "--iterations: a serving run's passes already follow one another"),
    (["--mix", "8x2", "--prompt-len", "8"], "--mix: give either --mix or --prompt-len/--output-len"),
    (["--inference", "--schedule", "1f1b"], "plan.schedule: 1f1b trains"),
    (["--schedule", "inference", "--output-len", "3"], "inference runs each micro-batch once"),
    (["--inference", "--tp", "3"], "--tp"),
    (["--inference", "--requests", "1", "-m", "2"], "serve at least 2 requests or lower -m"),
])
def test_cli_refuses_bad_serving_input_in_one_line(args, message):
    done = run_cli("simulate", "--model", "tiny", "--pp", "2", *args)
    assert done.returncode == 2
    assert done.stderr.count("\n") == 1 and message in done.stderr and "Traceback" not in done.stderr


def test_the_event_loop_times_a_serving_run_as_the_exact_pass_does():
    # Two nodes' worth of ports (NVLink, a NIC hop) under a recurrent schedule with per-pass costs and releases.
    from simulator import simulate
    result = simulate_serving(model="tiny", pp=4, nodes=2, gpus=16, dp=4, microbatch_size=3,
                              serving=ServingSpec((RequestClass(24, 4), RequestClass(8, 2)), requests=30))
    again = simulate(result.workload, force_event_loop=True)
    assert [str(op.action) for op in again.timeline.ops] == [str(op.action) for op in result.sim.timeline.ops]
    assert [t for op in again.timeline.ops for t in (op.start, op.end)] == pytest.approx(
        [t for op in result.sim.timeline.ops for t in (op.start, op.end)])
    assert again.peak_memory == pytest.approx(result.sim.peak_memory)
    assert result.output_tokens == 4 * (15 * 4 + 15 * 2)  # dp = 4 replicas, each serving the 1:1 mix
