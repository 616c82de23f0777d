"""Serving plans in the validator, in one process: the KV cache against the training forward without one, the
pass each micro-batch runs, transfer shapes, the calibrated workload, and what is refused before a run starts."""
import json
import subprocess
import sys
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")

from pipeplan.errors import SpecError  # noqa: E402
from pipeplan.inference.api import resolve_serving  # noqa: E402
from pipeplan.plan import Plan  # noqa: E402
from pipeplan.validation.options import ValidateOptions  # noqa: E402
from pipeplan.validation.preflight import check_plan, preflight  # noqa: E402
from validator.compute import StageRunner  # noqa: E402
from validator.serving_compute import ServingRunner  # noqa: E402
from validator.serving_modules import prompt_tokens  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
PLAN = REPO / "validation" / "plans" / "tiny-serving-p2.json"
SEED = 1234


def serve_in_one_process(plan: Plan):
    """Every pass of the plan in micro-batch order, stage after stage, the last stage's tokens fed back."""
    r = resolve_serving(plan, PLAN.parent)
    cpu = torch.device("cpu")
    runners = [ServingRunner(r.model, s, plan.stage_layers(s), r.passes, cpu, torch.float32, SEED)
               for s in range(plan.num_stages)]
    tokens = {}
    for p in r.passes.passes:
        x = tokens.get(p.stream) if p.step > 0 else None
        for s, runner in enumerate(runners):
            x = runner.forward(p.microbatch, x if s > 0 or p.step > 0 else None)
        tokens[p.stream] = x
    runners[-1].step()
    return r, runners


def test_cached_decoding_generates_what_the_training_forward_without_a_cache_does():
    plan = Plan.load(PLAN)
    r, runners = serve_in_one_process(plan)
    generated = runners[-1].runs[0]
    assert sorted(generated) == list(range(16)) and all(len(t) == 16 for t in generated.values())
    # The training stages (validator.modules, the same seed per stage: the same weights) run each whole sequence
    # so far, prompt and generated tokens, with plain causal attention; the argmax at the last position must be
    # the token the cached run generated, at every step of every request.
    cpu = torch.device("cpu")
    stages = [StageRunner(r.model, s, plan.stage_layers(s), 1, 64, 1, cpu, torch.float32, SEED).module
              for s in range(plan.num_stages)]
    with torch.no_grad():
        for request in (0, 9):
            sequence = prompt_tokens(r.model, request, 32, SEED).tolist()
            for step in range(16):
                x = torch.tensor([sequence])
                for stage in stages:
                    for layer in stage.layers:
                        x = layer(x)
                token = int(x[0, -1].argmax())
                assert token == generated[request][step], (request, step)
                sequence.append(token)


def test_each_micro_batch_runs_its_pass_and_its_cache_grows_a_token_per_decode_step():
    plan = Plan.load(PLAN)
    r = resolve_serving(plan, PLAN.parent)
    runner = ServingRunner(r.model, 1, plan.stage_layers(1), r.passes, torch.device("cpu"), torch.float32, SEED)
    # 2 slots of 8 requests, 16 passes each: micro-batch 2k + slot is pass k of that slot's batch.
    assert r.passes.by_microbatch[5].stream == 1 and r.passes.by_microbatch[5].step == 2
    assert runner.input_shape(0) == (8, 32, 64) and runner.input_shape(2) == (8, 1, 64)
    runner.forward(0, torch.randn(8, 32, 64))
    assert runner.caches[0].length == 32 and runner.caches[0].keys[0].shape == (8, 4, 48, 16)
    out = runner.forward(2, torch.randn(8, 1, 64))
    assert runner.caches[0].length == 33 and out.shape == (8,) and out.dtype == torch.long
    for m in range(4, 32, 2):  # the rest of slot 0's passes: the last one frees the cache
        runner.forward(m, torch.randn(8, 1, 64))
    assert 0 not in runner.caches


def test_transfers_carry_each_pass_s_shape():
    from validator.gather import RankContext
    from validator.serving_run import boundary, largest_boundary

    plan = Plan.load(PLAN)
    r = resolve_serving(plan, PLAN.parent)
    context = RankContext(str(PLAN), plan, PLAN.parent, r.schedule, r.model, torch.device("cpu"), torch.float32, 1,
                          ValidateOptions(), r)
    assert boundary(context, 0, 0) == ((8, 32, 64), torch.float32)  # a prefill's hidden states
    assert boundary(context, 0, 2) == ((8, 1, 64), torch.float32)  # a decode step's
    assert boundary(context, 1, 2) == ((8,), torch.long)  # the next tokens, back to the first stage
    assert largest_boundary(context) == 8 * 32 * 64


def test_a_serving_plan_s_memory_estimate_and_refusals(tmp_path):
    checked = check_plan(str(PLAN), 1.0)
    assert checked.serving is not None and checked.schedule.forward_only
    with pytest.raises(SpecError, match="--runtime torch: torch.distributed.pipelining's schedules train"):
        check_plan(str(PLAN), 1.0, runtime="torch")
    with pytest.raises(SpecError, match="--scale: a serving plan runs at its request mix's sizes"):
        check_plan(str(PLAN), 0.5)
    data = json.loads(PLAN.read_text())
    data["serving"]["mix"].append({"prompt_len": 16, "output_len": 8})
    data["cluster"] = str(REPO / "validation" / "cpu.json")
    mixed = tmp_path / "mixed.json"
    mixed.write_text(json.dumps(data))
    with pytest.raises(SpecError, match="plan.serving.mix: the validator serves one request class"):
        preflight(str(mixed), ValidateOptions(), None)


def test_validate_refuses_a_serving_profile_in_one_line(tmp_path):
    done = subprocess.run([sys.executable, "-m", "pipeplan", "validate", str(PLAN), "--profile-out",
                           str(tmp_path / "p.json")], capture_output=True, text=True, cwd=REPO)
    assert done.returncode == 2 and done.stderr.count("\n") == 1 and "--profile-out: a serving run" in done.stderr
