"""optimize --inference: the serving search against a brute force, its bounds against the simulator, a tight TPOT
target against a hand count, the explanation against the model's weights counted by hand, bad input."""
import json
import math
import subprocess
import sys
from itertools import combinations
from pathlib import Path

import pytest

from pipeplan.cluster import load_cluster
from pipeplan.inference.api import simulate_serving
from pipeplan.inference.bounds import candidate_bounds
from pipeplan.inference.candidates import enumerate_candidates, layouts, microbatch_sizes
from pipeplan.inference.planner import ServingQuestion, ServingTarget, candidate_plan, search
from pipeplan.inference.requests import ServingSpec
from pipeplan.model import load_model

ROOT = Path(__file__).resolve().parents[1]
TINY = load_model("tiny")
# Two nodes of two CPU-like "GPUs" (validation/cpu.json: 100 GFLOP/s, 20 GB/s) holding 1.5 MB each: the tiny
# model's weights are 0.92 MB, so one replica of 8 requests on one device runs out of memory as its KV cache
# grows, and memory, throughput and latency pull apart.
SMALL = load_cluster(str(ROOT / "validation" / "cpu.json"), nodes=2, overrides={"gpu": {"memory_bytes": 1.5e6}})
MIX = ServingSpec.uniform(16, 4)


def tiny_question(target: ServingTarget, batch: int = 8, gpus: int = 4) -> ServingQuestion:
    return ServingQuestion("tiny", SMALL.to_dict(), TINY, SMALL, None, gpus, MIX, batch, target)


def brute_force(q: ServingQuestion, candidates) -> tuple:
    """Simulate every candidate with the public API and keep the best by the documented rule."""
    best = None
    for c in candidates:
        r = simulate_serving(candidate_plan(q, c), model=TINY, cluster=SMALL)
        if any(peak > 0.95 * cap for peak, cap in zip(r.peak_memory, r.sim.capacity)):
            continue
        tpot = 0.0 if math.isnan(r.tpot.p99) else r.tpot.p99
        t = q.target
        if any(slo is not None and value > slo for value, slo in
               ((r.latency.p99, t.latency_slo), (r.ttft.p99, t.ttft_slo), (tpot, t.tpot_slo))):
            continue
        value = ((-r.tokens_per_second, r.latency.p99) if t.objective == "throughput"
                 else (r.latency.p99, -r.tokens_per_second))
        if best is None or (*value, c.key) < best[0]:
            best = ((*value, c.key), c)
    return best[1] if best else None


@pytest.mark.parametrize("target", [
    ServingTarget(),
    ServingTarget("latency"),
    ServingTarget(tpot_slo=3.48e-4),
    ServingTarget("latency", tpot_slo=3.48e-4),
    ServingTarget(ttft_slo=1.5e-3, tpot_slo=6e-4),
    ServingTarget(tpot_slo=3e-4),
], ids=["throughput", "latency", "tpot-slo", "latency-tpot-slo", "latency-and-ttft-slo", "nothing-meets"])
def test_the_search_chooses_what_simulating_every_candidate_chooses(target):
    q = tiny_question(target)
    candidates, left_out = enumerate_candidates(TINY, SMALL, MIX, layouts(TINY, q.gpus, 2, q.batch))
    assert len(candidates) == 69 and not left_out
    answer = search(q, candidates)
    chosen = answer.chosen.candidate if answer.chosen else None
    assert chosen == brute_force(q, candidates)
    assert answer.simulated < len(candidates)  # the bounds spared some simulations


def test_the_candidate_space_by_hand():
    # 4 GPUs, 8 requests: tp in {1, 2, 4} (tiny has 4 heads), tp x pp x dp <= 4 with dp dividing 8:
    # tp1: pp1 dp1,2,4; pp2 dp1,2; pp3 dp1; pp4 dp1; tp2: pp1 dp1,2; pp2 dp1; tp4: pp1 dp1: 11 layouts.
    found = layouts(TINY, 4, 8, 8)
    assert len(found) == 11
    assert {(x.tp, x.pp, x.dp, x.requests) for x in found if x.tp == 2} == {(2, 1, 1, 8), (2, 1, 2, 4), (2, 2, 1, 8)}
    # 8 requests over k = 3 slots: 3 per batch, or 1 or 2 (the powers of two below) and still 3 batches.
    assert microbatch_sizes(8, 3) == [1, 2, 3]
    assert microbatch_sizes(5, 4) == [1]  # 2 per batch would make only 3 batches for 4 slots


def test_the_balanced_cut_leaves_the_busiest_stage_least_busy():
    # A model whose LM head (131,072 x 2,048) outweighs four of its 7 blocks (61 M parameters each). Against
    # every contiguous cut into 3 stages, each simulated: the balanced cut's busiest device is the least busy
    # any cut reaches, and the even cut's is busier.
    spec = {"name": "head-heavy", "num_layers": 7, "hidden": 2048, "heads": 16, "ffn_hidden": 8192, "vocab": 131072,
            "seq_len": 4096, "kv_heads": 4, "gated_mlp": True}
    model, cluster = load_model(spec), load_cluster("dgx-h100")
    mix = ServingSpec.uniform(512, 8)
    candidates, _ = enumerate_candidates(model, cluster, mix, layouts(model, 3, 8, 6, tp=1, pp=3, dp=1))
    balanced = next(c for c in candidates if c.split == "balanced" and c.microbatch_size == 2 and c.in_flight == 3)
    q = ServingQuestion(spec, "dgx-h100", model, cluster, None, 3, mix, 6, ServingTarget())
    n = model.num_pipeline_layers

    def busiest(cut):
        return max(simulate_serving(candidate_plan(q, balanced).with_(layers_per_stage=cut)).sim.busy_time)

    best = min(busiest((a, b - a, n - b)) for a, b in combinations(range(1, n), 2))
    assert busiest(balanced.layers_per_stage) == pytest.approx(best, rel=1e-9)
    assert busiest((3, 3, 3)) > 1.2 * best


def test_bounds_never_exceed_the_simulation():
    q = tiny_question(ServingTarget(), batch=8)
    candidates, _ = enumerate_candidates(TINY, SMALL, MIX, layouts(TINY, 4, 2, 8))
    for c in candidates:
        lay = c.layout
        b = candidate_bounds(TINY, SMALL, lay.tp, MIX, lay.requests, c.microbatch_size, c.in_flight,
                             c.layers_per_stage)
        r = simulate_serving(candidate_plan(q, c), model=TINY, cluster=SMALL)
        assert b.makespan <= r.makespan and b.latency_p99 <= r.latency.p99 and b.ttft_p99 <= r.ttft.p99
        assert b.tpot_p99 <= r.tpot.p99
        assert all(floor <= peak for floor, peak in zip(b.peak_memory, r.peak_memory))


def run_cli(*args, env=None):
    return subprocess.run([sys.executable, "-m", "pipeplan", "optimize", "--inference", *args], capture_output=True,
                          text=True, cwd=ROOT, env=env)


LLAMA70 = ("--model", "llama3-70b", "--prompt-len", "512", "--output-len", "32", "--batch", "16")
# llama3-70b's weight matrices a decode step reads: 80 blocks of Q, K, V (8,192 x (8,192 + 2 x 1,024)), O (8,192^2)
# and three 8,192 x 28,672 MLP matrices, and the 128,256 x 8,192 LM head (the embedding is a lookup): 2 bytes each.
LLAMA70_READ = 2 * (80 * (8192 * 10240 + 8192 * 8192 + 3 * 8192 * 28672) + 128256 * 8192)


def test_a_tight_tpot_target_chooses_a_larger_tensor_group():
    loose = json.loads(run_cli(*LLAMA70, "--json").stdout)["chosen"]
    tight_run = run_cli(*LLAMA70, "--tpot-slo", "0.0145", "--json")
    assert tight_run.returncode == 0, tight_run.stderr
    tight = json.loads(tight_run.stdout)["chosen"]
    assert loose["tp"] == 4 and tight["tp"] == 8 and tight["tpot"]["p99"] <= 0.0145
    # By hand, no tp = 4 plan can decode a token in 14.5 ms: each rank reads a quarter of the weights at 3.35 TB/s,
    # runs 2 ring all-reduces per block of 2(4 - 1) steps of NVLink's 3 us latency, and 82 layers' 20 us overheads.
    floor = LLAMA70_READ / 4 / 3.35e12 + 80 * 2 * 2 * 3 * 3e-6 + 82 * 20e-6
    assert floor > 0.0145


def test_the_explanation_names_memory_bound_decode_for_llama3_70b_on_a_dgx_h100():
    done = run_cli(*LLAMA70, "--json")
    data = json.loads(done.stdout)
    decode = data["explanation"][0]
    assert decode.startswith("decode is memory-bound: a decode step")
    tp = data["chosen"]["tp"]
    assert f"{LLAMA70_READ / tp / 1e9:,.2f} GB of weights" in decode
    assert any(line.startswith("prefill is compute-bound") for line in data["explanation"])
    assert len(data["layouts"]) == 26 and data["layouts"][0]["layout"] == f"tp{tp} pp1 dp{data['chosen']['dp']}"


def test_the_chosen_plan_file_simulates_to_the_same_numbers(tmp_path):
    out = tmp_path / "serve.json"
    done = run_cli("--model", "tiny", "--prompt-len", "16", "--output-len", "4", "--batch", "8", "--gpus", "4",
                   "--out", str(out))
    assert done.returncode == 0, done.stderr
    assert "why:" in done.stdout and "decode is memory-bound" in done.stdout
    throughput = float(done.stdout.split("\n")[2].split()[1].replace(",", ""))
    again = subprocess.run([sys.executable, "-m", "pipeplan", "simulate", str(out), "--json"], capture_output=True,
                           text=True, cwd=ROOT)
    assert json.loads(again.stdout)["tokens_per_second"] == pytest.approx(throughput, abs=0.5)


@pytest.mark.parametrize("args, message", [
    (("--objective", "latency", "--latency-slo", "3"), "--latency-slo: --objective latency already minimises"),
    (("--latency-slo", "3", "--tpot-slo", "0.01"), "--latency-slo: give either an end-to-end target"),
    (("--global-batch", "8"), "--global-batch: not used by optimize --inference"),
    (("--tpot-slo", "0.005"), "no plan can meet the target"),
])
def test_bad_serving_searches_are_refused_in_one_line(args, message):
    done = run_cli(*LLAMA70, *args)
    assert done.returncode == 2 and done.stderr.count("\n") == 1 and message in done.stderr, done.stderr
    assert "Traceback" not in done.stderr


@pytest.mark.parametrize("args, message", [
    (("--model", "llama3-70b", "--prompt-len", "8000", "--output-len", "500", "--batch", "8"),
     "8,000 + 500 = 8,500 tokens exceed llama3-70b's 8,192 positions"),
    (("--model", "llama3-405b", "--prompt-len", "1024", "--output-len", "16", "--batch", "8"),
     "the weights alone (811.71 GB) need at least 11 GPU(s)"),
    (("--model", "tiny", "--prompt-len", "16", "--batch", "8"), "--output-len: give the prompt and output lengths"),
    (("--model", "tiny", "--prompt-len", "16", "--output-len", "8"), "--batch: give how many requests"),
])
def test_impossible_requests_say_what_would_work(args, message):
    done = run_cli(*args)
    assert done.returncode == 2 and done.stderr.count("\n") == 1 and message in done.stderr, done.stderr


def test_a_search_too_large_is_refused_before_it_starts():
    env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": str(ROOT), "PIPEPLAN_MAX_SERVING_OPS": "1000"}
    done = run_cli("--model", "tiny", "--prompt-len", "16", "--output-len", "8", "--batch", "8", env=env)
    assert done.returncode == 2 and "over the limit of 1,000" in done.stderr and "PIPEPLAN_MAX_SERVING_OPS" in done.stderr
