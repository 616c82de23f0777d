"""The validator's tensor (with and without sequence) and data parallelism, against the tp = 1, dp = 1 run
and hand counts.

One helper run (``tests/parallel_worker.py``, two gloo ranks then four, about 20-60 s with torch's import)
computes the sharded and data-parallel results; the references are computed here, at tp = 1 and dp = 1 in this
process. The placement is checked against Megatron-LM's own example, the refusals by their one-line
errors, the profile's measured step by the numbers put in.
"""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")

from pipeplan.errors import SpecError  # noqa: E402
from pipeplan.model import load_model  # noqa: E402
from pipeplan.parallel import Layout  # noqa: E402
from pipeplan.profile import CollectiveProfile, Profile, StageProfile  # noqa: E402
from pipeplan.validation.preflight import check_plan  # noqa: E402
from simulator.kinds import OPTIMIZER, REDUCE_GRAD  # noqa: E402
from simulator.workload import Collective, Link, StageCost  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
PLANS = ROOT / "validation" / "plans"
sys.path.insert(0, str(ROOT / "tests"))
import parallel_worker as worker  # noqa: E402


@pytest.fixture(scope="module")
def ranks(tmp_path_factory):
    out = tmp_path_factory.mktemp("parallel")
    done = subprocess.run([sys.executable, str(ROOT / "tests" / "parallel_worker.py"), str(out)],
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    return Ranks([torch.load(out / f"rank{r}.pt") for r in range(2)],
                 [torch.load(out / f"sp-dp-rank{r}.pt") for r in range(4)])


class Ranks(list):
    """The two ranks' results, and the four tp x dp ranks' as ``sp_dp``."""

    def __init__(self, two, four):
        super().__init__(two)
        self.sp_dp = four


def _reference(num_microbatches: int, split_second: bool, lr: float = 1e-4, learned_positions: bool = False):
    from validator.compute import StageRunner

    model = worker.tiny(learned_positions)
    return StageRunner(model, 0, range(model.num_pipeline_layers), worker.BATCH, worker.SEQ, num_microbatches,
                       torch.device("cpu"), torch.float32, worker.SEED, lr=lr)


def test_shard_state_cuts_megatron_splits_by_hand():
    from validator.tensor_parallel import shard_state

    w = torch.arange(24.0).reshape(4, 6)
    state = {"layers.1.q.weight": w, "layers.1.o.weight": w, "layers.1.norm1.weight": torch.ones(6),
             "layers.0.tokens.weight": w, "layers.2.lm_head.weight": w, "layers.1.down.weight": w}
    one = shard_state(state, 2, 1)
    assert one["layers.1.q.weight"].tolist() == [[12, 13, 14, 15, 16, 17], [18, 19, 20, 21, 22, 23]]  # rows 2-3
    assert one["layers.1.o.weight"].tolist() == [[3, 4, 5], [9, 10, 11], [15, 16, 17], [21, 22, 23]]  # columns 3-5
    assert one["layers.1.down.weight"].shape == (4, 3)
    assert one["layers.0.tokens.weight"].shape == one["layers.2.lm_head.weight"].shape == (2, 6)
    assert one["layers.1.norm1.weight"].tolist() == [1.0] * 6  # replicated


def test_placement_follows_megatrons_example():
    # Megatron-LM initialize_model_parallel's docstring: 16 GPUs, tp=2, pp=4, dp=2.
    from validator.placement import RankPlace

    layout = Layout(tp=2, pp=4, dp=2)
    places = [RankPlace(layout, r) for r in range(16)]
    tensor_groups = sorted({tuple(r for r in range(16) if places[r].pp_rank == p.pp_rank and places[r].dp_rank ==
                                  p.dp_rank) for p in places})
    assert tensor_groups[:2] == [(0, 1), (2, 3)]
    data_groups = sorted({tuple(r for r in range(16) if places[r].pp_rank == p.pp_rank and places[r].tp_rank ==
                                p.tp_rank) for p in places})
    assert data_groups[:2] == [(0, 2), (1, 3)]
    assert places[0].replicas()[0] == [0, 4, 8, 12] and places[0].replicas()[1] == [1, 5, 9, 13]
    assert (places[13].tp_rank, places[13].dp_rank, places[13].pp_rank, places[13].replica) == (1, 0, 3, 1)


def test_tensor_parallel_losses_and_gradients_equal_tp1(ranks):
    from validator.tensor_parallel import shard_state

    ref = _reference(worker.MICROBATCHES, True)
    ref.forward(0, None)
    ref.backward(0, None, split=False)
    ref.forward(1, None)
    ref.backward(1, None, split=True)
    ref.weight(1)
    losses = [float(x) for x in ref.losses]
    grads = {n: p.grad for n, p in ref.module.named_parameters()}
    for r, result in enumerate(ranks):
        assert result["tp"]["losses"] == pytest.approx(losses, rel=1e-5)
        share = shard_state(grads, 2, r)
        assert share.keys() == result["tp"]["grads"].keys()
        for name, grad in result["tp"]["grads"].items():
            torch.testing.assert_close(grad, share[name], rtol=1e-4, atol=1e-6)


def test_tensor_parallel_all_reduces_match_megatrons_count(ranks):
    # Hand count, tiny model (8 blocks): a block's forward all-reduces twice (after attention-out and
    # after FC2), its backward twice (the input gradients of QKV and FC1); the vocabulary-parallel
    # embedding once forward; the head's column-parallel input once backward; the parallel
    # cross-entropy three times forward (max, target logit, sum of exponentials), none backward.
    blocks = load_model("tiny").num_layers
    forward, backward = 2 * blocks + 1 + 3, 2 * blocks + 1
    assert [c["all_reduce"] for c in ranks[0]["tp"]["calls"]] == [
        forward, forward + backward, 2 * (forward + backward), 2 * (forward + backward)]  # W all-reduces nothing
    assert all(c.keys() == {"all_reduce"} for c in ranks[0]["tp"]["calls"])
    tokens, h = worker.BATCH * worker.SEQ, load_model("tiny").hidden
    # Each s·b·h block all-reduce carries every token's hidden vector; the loss's carry one number per token.
    assert ranks[0]["tp"]["elements"][-1]["all_reduce"] == 2 * (
        (2 * blocks + 1) * tokens * h + 3 * tokens + backward * tokens * h)


def _split_sequence(tensor, rank: int):
    """Tensor rank ``rank``'s half of a [b, s, h] tensor's sequence."""
    return tensor.chunk(2, dim=1)[rank]


@pytest.mark.parametrize("variant", ["sp", "sp_positions"])
def test_sequence_parallel_losses_and_gradients_equal_tp1(ranks, variant):
    from validator.tensor_parallel import shard_state

    ref = _reference(worker.MICROBATCHES, True, learned_positions=variant == "sp_positions")
    ref.forward(0, None)
    ref.backward(0, None, split=False)
    ref.forward(1, None)
    ref.backward(1, None, split=True)
    ref.weight(1)
    losses = [float(x) for x in ref.losses]
    grads = {n: p.grad for n, p in ref.module.named_parameters()}
    if variant == "sp_positions":  # each rank adds and gets gradients for its half of the positions only
        assert grads["layers.0.positions.weight"][: worker.SEQ].abs().sum(dim=1).min() > 0
    for r, result in enumerate(ranks):
        assert result[variant]["losses"] == pytest.approx(losses, rel=1e-5)
        share = shard_state(grads, 2, r)  # norms' and positions' gradients whole: summed over both ranks' tokens
        assert share.keys() == result[variant]["grads"].keys()
        for name, grad in result[variant]["grads"].items():
            torch.testing.assert_close(grad, share[name], rtol=1e-4, atol=1e-6)


def test_sequence_parallel_collectives_match_megatrons_count(ranks):
    # Hand count, tiny model (8 blocks), t = 2, one stage of all 10 layers. Forward: per block an
    # all-gather before QKV and before FC1, a reduce-scatter after attention-out and after FC2
    # (Korthikanti et al. 2022, Fig. 5); the embedding's reduce-scatter; the head's all-gather; the
    # cross-entropy's 3 all-reduces of one number per token. Backward: the conjugates (each gather's
    # gradient reduce-scattered, each scatter's gathered) and, as Megatron keeps only the shard of a
    # column-parallel input, that input gathered once more (QKV's, FC1's, the head's: one per region,
    # in B or I, none in W); no all-reduce, except that the 2nd (last of m = 2) backward sums the
    # replicated norms' gradients: (2 per block + the final norm) x (weight, bias).
    blocks, h = load_model("tiny").num_layers, load_model("tiny").hidden
    pairs = 2 * blocks + 1
    tokens = worker.BATCH * worker.SEQ
    shard = worker.BATCH * (worker.SEQ // 2) * h  # s·b·h/t
    norms = (2 * blocks + 1) * 2 * h
    calls = ranks[0]["sp"]["calls"]
    assert calls == [
        {"all_gather": pairs, "reduce_scatter": pairs, "all_reduce": 3},                      # F0
        {"all_gather": 3 * pairs, "reduce_scatter": 2 * pairs, "all_reduce": 3},              # + B0
        {"all_gather": 6 * pairs, "reduce_scatter": 4 * pairs, "all_reduce": 3 + 3 + 1},      # + F1, I1
        {"all_gather": 6 * pairs, "reduce_scatter": 4 * pairs, "all_reduce": 7}]              # + W1: none
    assert ranks[0]["sp"]["elements"][-1] == {"all_gather": 6 * pairs * shard, "reduce_scatter": 4 * pairs * shard,
                                              "all_reduce": 6 * tokens + norms}
    assert ranks[1]["sp"]["calls"] == calls


def test_sequence_parallel_two_stages_equal_tp1(ranks):
    from validator.compute import StageRunner
    from validator.tensor_parallel import shard_state

    model = load_model("tiny")
    ref = [StageRunner(model, s, layers, worker.BATCH, worker.SEQ, worker.MICROBATCHES, torch.device("cpu"),
                       torch.float32, worker.SEED) for s, layers in ((0, range(0, 5)), (1, range(5, 10)))]
    sent, returned = [], []
    for mb in range(worker.MICROBATCHES):
        sent.append(ref[0].forward(mb, None))
        ref[1].forward(mb, sent[-1].clone())
        returned.append(ref[1].backward(mb, None, split=False))
        ref[0].backward(mb, returned[-1].clone(), split=False)
    grads = {f"{s}.{n}": p.grad for s, runner in enumerate(ref) for n, p in runner.module.named_parameters()}
    for r, result in enumerate(ranks):
        got = result["sp_pp2"]
        assert got["losses"] == pytest.approx([float(x) for x in ref[1].losses], rel=1e-5)
        for mb in range(worker.MICROBATCHES):  # each rank sends and gets back its half of the sequence
            assert got["sent"][mb].shape == (worker.BATCH, worker.SEQ // 2, model.hidden)
            torch.testing.assert_close(got["sent"][mb], _split_sequence(sent[mb], r), rtol=1e-4, atol=1e-5)
            torch.testing.assert_close(got["returned"][mb], _split_sequence(returned[mb], r), rtol=1e-4, atol=1e-7)
        share = shard_state(grads, 2, r)
        assert share.keys() == got["grads"].keys()
        for name, grad in got["grads"].items():
            torch.testing.assert_close(grad, share[name], rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("variant, ends", [("dp", [REDUCE_GRAD, OPTIMIZER]),
                                           ("zero", [REDUCE_GRAD, OPTIMIZER, "GATHER_PARAMS"])])
def test_data_parallel_update_equals_dp1_over_all_microbatches(ranks, variant, ends):
    from pipeplan.lowering import generated_schedule
    from validator.data_parallel import TrainingStep
    from validator.runtime import RankExecutor
    from validator.timing import CpuClock

    runner = _reference(2 * worker.MICROBATCHES, False, lr=worker.LR)
    before = {n: p.detach().clone() for n, p in runner.module.named_parameters()}
    schedule = generated_schedule("1f1b", 1, 2 * worker.MICROBATCHES, 1)
    clock = CpuClock()
    RankExecutor(schedule, 0, {0: runner}, {}, clock, None, TrainingStep(schedule, 0, {0: runner}, clock)).run_iteration()
    for result in ranks:
        assert result[variant]["ops"][-len(ends):] == [f"0{kind}" for kind in ends]
        for name, p in runner.module.named_parameters():
            torch.testing.assert_close(result[variant]["before"][name], before[name])
            torch.testing.assert_close(result[variant]["after"][name] - before[name], p.detach() - before[name],
                                       rtol=1e-4, atol=1e-7)
    moved = max(float((p.detach() - before[n]).abs().max()) for n, p in runner.module.named_parameters())
    assert moved > 1e-3  # the update is large enough for the comparison to mean something


def test_sequence_parallel_with_distributed_optimizer_updates_as_tp1_dp1(ranks, tmp_path_factory):
    """tp = 2 with sequence parallelism x dp = 2 with the distributed optimizer (four ranks): each tensor
    rank's update is its slice of the tp = 1, dp = 1 update over all micro-batches, the norms' included
    (their gradients summed over the tensor group before the reduce-scatter over the data group)."""
    from pipeplan.lowering import generated_schedule
    from validator.data_parallel import TrainingStep
    from validator.runtime import RankExecutor
    from validator.tensor_parallel import shard_state
    from validator.timing import CpuClock

    runner = _reference(2 * worker.MICROBATCHES, False, lr=worker.LR)
    before = {n: p.detach().clone() for n, p in runner.module.named_parameters()}
    schedule = generated_schedule("1f1b", 1, 2 * worker.MICROBATCHES, 1)
    clock = CpuClock()
    RankExecutor(schedule, 0, {0: runner}, {}, clock, None, TrainingStep(schedule, 0, {0: runner}, clock)).run_iteration()
    moved = {n: p.detach() - before[n] for n, p in runner.module.named_parameters()}
    assert moved["layers.1.norm1.weight"].abs().max() > 1e-3  # a norm moves enough for the check to bite
    for rank, result in enumerate(ranks.sp_dp):
        want = shard_state(moved, 2, rank % 2)
        for name, after in result["after"].items():
            # atol: one float32 step of a weight near 1 (the norms), which the difference keeps
            torch.testing.assert_close(after - result["before"][name], want[name], rtol=1e-4, atol=3e-7)


def _plan(tmp_path, **fields) -> str:
    data = json.loads((PLANS / "tiny-tp2.json").read_text())
    data.update(cluster=str((PLANS.parent / "cpu.json").resolve()), **fields)
    path = tmp_path / "plan.json"
    path.write_text(json.dumps(data))
    return str(path)


@pytest.mark.parametrize("fields, message", [
    ({"sequence_parallel": True, "seq_len": 63},
     "plan.sequence_parallel: the sequence (63) is not divisible by tp = 2"),
    ({"scatter_gather_p2p": True}, "plan.scatter_gather_p2p:"),
    ({"blocking_p2p": True}, "plan.blocking_p2p:"),
])
def test_preflight_refuses_what_the_validator_does_not_run(tmp_path, fields, message):
    with pytest.raises(SpecError) as err:
        check_plan(_plan(tmp_path, **fields), 1.0)
    assert str(err.value).startswith(message) and "\n" not in str(err.value)


def test_preflight_refuses_torch_runtime_with_tp_and_indivisible_heads(tmp_path):
    with pytest.raises(SpecError, match="--runtime torch runs one pipeline replica"):
        check_plan(_plan(tmp_path), 1.0, runtime="torch")
    model = {"name": "odd", "num_layers": 2, "hidden": 48, "heads": 3, "ffn_hidden": 96, "vocab": 64, "seq_len": 16}
    with pytest.raises(SpecError, match=r"plan.tp: the model's heads \(3\) is not divisible by tp = 2"):
        check_plan(_plan(tmp_path, model=model, layers_per_stage=[4]), 1.0)
    for name in ("tiny-tp2.json", "tiny-dp2.json", "tiny-dp2-distributed.json", "tiny-tp2-pp2.json",
                 "tiny-tp2-sp.json"):
        assert check_plan(str(PLANS / name), 1.0).plan.num_gpus in (2, 4)
    assert check_plan(str(PLANS / "tiny-tp2-sp.json"), 1.0).plan.sequence_parallel


def test_profile_puts_measured_step_and_reduction_in_place():
    stage = StageProfile(1.0, 2.0, 1.5, 0.5, optimizer=0.25)
    reduction = CollectiveProfile(0, REDUCE_GRAD, nbytes=1e6, latency=1e-3, bandwidth=1e8)
    profile = Profile("cpu", "gloo", "tiny", 4, 64, (10,), (stage,), collectives=(reduction,))
    analytic = StageCost(1.0, 1.0, 1.0, collectives=(Collective(REDUCE_GRAD, 5e6, Link(0.0, 1e9, ("nic",))),),
                         optimizer=9.0)
    (priced,) = profile.with_measured_step((analytic,), (10,))
    assert priced.optimizer == 0.25
    assert priced.collective(REDUCE_GRAD).seconds({}) == pytest.approx(1e-3 + 1e6 / 1e8)  # 11 ms, by hand
    assert profile.with_measured_step((analytic,), (5, 5)) == (analytic,)  # another cut: analytic kept
    again = Profile.from_dict(json.loads(json.dumps(profile.to_dict())))
    assert again.collectives == (reduction,) and again.stages[0].optimizer == 0.25


def test_reductions_are_handed_over_where_the_simulator_starts_them():
    # Interleaved p=2 v=2 m=4, device 0's list: 0F0 0F1 2F0 2F1 0F2 2B0 0F3 2B1 2F2 0B0 2F3 0B1 2B2 2B3 0B2 0B3.
    from pipeplan.lowering import generated_schedule
    from validator.data_parallel import TrainingStep
    from validator.timing import CpuClock

    schedule = generated_schedule("interleaved", 2, 4, 2)
    runners = {0: None, 2: None}
    overlapped = TrainingStep(schedule, 0, runners, CpuClock(), data_ranks=2, overlap=True)
    assert overlapped.handover == {13: [2], 15: [0]} and overlapped.order == [2, 0]  # after 2B3, after 0B3
    # Without overlap all wait for the device's last backward, the stage whose backward came last first.
    at_end = TrainingStep(schedule, 0, runners, CpuClock(), data_ranks=2, overlap=False)
    assert at_end.handover == {15: [0, 2]} and at_end.order == [0, 2]
    assert TrainingStep(schedule, 0, runners, CpuClock()).handover == {}  # dp = 1: nothing to reduce
