"""DualPipeV against the DualPipe README's table (deepseek-ai/DualPipe, "Pipeline Bubbles and Memory
Usage Comparison"): PP stages on PP/2 devices, bubble (PP/2−1)(F&B+B−3W), parameters 2×, activations PP+1."""
import pytest

import pipeplan
from pipeplan.errors import SpecError
from simulator import ScheduleError, check_schedule, simulate, uniform_workload
from simulator.dualpipe import dualpipe_v
from simulator.ir import Action, from_csv
from simulator.kinds import OVERLAP_F_B

F = I = W = 1.0  # per chunk (stage); B = I + W is the README's full backward


@pytest.mark.parametrize("p", [2, 3, 4, 5, 8])
def test_bubble_is_the_readme_s_for_uniform_stages_and_any_overlap_time(p):
    # PP = 2p stages; F&B from max(F, B) (all overlapped) to F + B (nothing gained, the default).
    b = I + W
    for m in (2 * p, 3 * p + 1):
        schedule = dualpipe_v(p, m)
        for fb in (max(F, b), 2.5, F + b, None):
            result = simulate(uniform_workload(schedule, F, I, W, overlap=fb))
            readme = (2 * p // 2 - 1) * ((F + b if fb is None else fb) + b - 3 * W)
            worst_device_idle = max(result.iteration_time - busy for busy in result.busy_time)
            assert worst_device_idle == pytest.approx(readme, abs=1e-9), (p, m, fb)


@pytest.mark.parametrize("p", [1, 2, 3, 4, 6, 8])
def test_activations_per_device_are_pp_plus_one(p):
    # PP + 1 chunk activations on every device: the steady state's overlapped F allocates before its B frees.
    result = simulate(uniform_workload(dualpipe_v(p, 4 * p)))
    assert result.peak_activations == [2 * p + 1] * p


def test_parameters_are_two_stages_per_device_and_the_model_once():
    # DualPipeV's 2x is two different chunks per device (DualPipe's is one chunk kept twice): against
    # 1F1B on PP = 4 devices, each of DualPipeV's PP/2 = 2 devices holds two of the same four stages.
    def weights(schedule, pp, chunks):
        plan = pipeplan.Plan(model="tiny", cluster="dgx-h100", schedule=schedule, pp=pp, chunks=chunks,
                             num_microbatches=8, microbatch_size=4, layers_per_stage=[3, 2, 2, 3])
        return [part.weights for part in pipeplan.simulate(plan=plan).memory_breakdown]

    dual, one = weights("dualpipe-v", 2, 2), weights("1f1b", 4, 1)
    assert dualpipe_v(2, 8).stages_of(1) == [1, 2]
    assert dual[1] == 2 * one[1] == one[1] + one[2]  # two blocks-only stages: exactly 2x
    assert dual[0] == one[0] + one[3] and sum(dual) == sum(one)  # no copy kept twice


def test_an_overlapped_pair_runs_as_one_op_of_its_own_time():
    # Device 0 of p = 2, m = 4: the first pair starts when both its inputs are there and lasts F&B.
    schedule = dualpipe_v(2, 4)
    pair = next(a for a in schedule.device_actions[0] if a.kind == OVERLAP_F_B)
    assert str(pair) == "(0F3;3B1)OVERLAP_F_B"
    ops = {op.action: op for op in simulate(uniform_workload(schedule, overlap=2.5)).timeline.ops}
    forward, backward = (ops[part] for part in pair.parts)
    assert (forward.end - forward.start, backward.start, backward.end) == (2.5, forward.end, forward.end)
    # On device 1 the B part's gradient comes from device 0: it is there when the pair starts.
    result = simulate(uniform_workload(schedule, overlap=2.5, comm=0.25))
    ops = {op.action: op for op in result.timeline.ops}
    checked = 0
    for pair in (a for a in schedule.device_actions[1] if a.kind == OVERLAP_F_B):
        for arrival in (t.end for t in result.timeline.transfers if t.consumer == pair.parts[1]):
            assert arrival <= ops[pair.parts[0]].start
            checked += 1
    assert checked == 1  # its one (1F;2B) pair; a (2F;1B) pair's gradient is local


def test_the_checker_treats_a_pair_as_one_op_that_waits_for_both_inputs():
    # One device, two stages: the pair (0F1;1B0) needs 1F0's output for its B part; listing it before
    # 1F0 deadlocks even though its F part alone could run.
    ok = from_csv("0F0,1F0,(0F1;1B0)OVERLAP_F_B,1F1,1B1,0B0,0B1\n")
    check_schedule(ok)
    with pytest.raises(ScheduleError, match="1F0"):
        check_schedule(from_csv("0F0,(0F1;1B0)OVERLAP_F_B,1F0,1F1,1B1,0B0,0B1\n"))
    with pytest.raises(ScheduleError, match="pairs one forward and one full backward"):
        Action.parse("(0F1;1I0)OVERLAP_F_B")


def test_rule_and_cli_and_the_validator_refusal(tmp_path, capsys):
    with pytest.raises(ScheduleError, match="m >= 2p = 8"):
        dualpipe_v(4, 7)
    from pipeplan.cli import main
    assert main(["schedule", "dualpipe-v", "-p", "4", "-m", "16", "--overlap", "2.5"]) == 0
    assert "dualpipe-v: p=4 m=16 v=2  bubble 4.63 %  iteration time 89" in capsys.readouterr().out
    plan = tmp_path / "plan.json"
    plan.write_text('{"model": "tiny", "cluster": "%s", "schedule": "dualpipe-v", "pp": 2, "chunks": 2, '
                    '"num_microbatches": 8, "microbatch_size": 4, "layers_per_stage": [3, 2, 2, 3]}'
                    % (pipeplan.__file__.rsplit("/", 2)[0] + "/validation/cpu.json"))
    from pipeplan.validation import ValidateOptions, run_validation
    with pytest.raises(SpecError, match="runs F, B, I and W actions only; remove the OVERLAP_F_B"):
        run_validation(str(plan), ValidateOptions())
