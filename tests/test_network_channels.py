"""NCCL's channels over a node's NICs and Megatron's scattered pipeline messages, against closed forms.

Hand figures: a ring all-reduce of X bytes over n ranks moves B = 2(n-1)/n·X bytes through each rank
(nccl-tests' bus bytes) and pays 2(n-1)·α. Across DGX nodes NCCL runs one ring per NIC (channel), each
moving B/C: NIC-bound it takes B / (C·NIC bandwidth), NVLink-bound B / NVLink bandwidth (every GPU's
NVLink port carries all C channels).
"""
import pytest

from pipeplan import SpecError, even_split, load_cluster, lower, simulate
from pipeplan.collectives import ALL_REDUCE, group_collective, ring_channels
from pipeplan.costs import stage_work
from plans import llama_plan  # tests/ is on sys.path
from simulator import Network, StageCost, Workload
from simulator import simulate as simulate_workload
from simulator.ir import Action, make_schedule


def _alone(cluster, collective):
    return collective.seconds({port: cluster.capacity(port) for port in collective.path.ports})


def test_a_ring_across_two_dgx_nodes_uses_all_eight_nics():
    # 16 GPUs, 1 GB: B = 2·15/16·1e9 = 1.875e9 bytes, α = 5 us (the IB hop, slower than NVLink's 3 us).
    eight = load_cluster("dgx-h100", 2)
    ring = group_collective(eight, list(range(16)), ALL_REDUCE, 1e9)
    assert ring_channels(eight, list(range(16))) == 8
    # 8 channels x 50 GB/s = 400 GB/s, under NVLink's 450: 1.875e9 / 400e9 + 30·5e-6.
    assert _alone(eight, ring) == pytest.approx(1.875e9 / 400e9 + 30 * 5e-6, rel=1e-12)
    assert ring.nbytes == pytest.approx(1.875e9 / 8) and ring.weights[ring.path.ports.index("gpu3->nvswitch0")] == 8
    one = load_cluster("dgx-h100", 2, overrides={"nics_per_node": 1})
    assert _alone(one, group_collective(one, list(range(16)), ALL_REDUCE, 1e9)) == pytest.approx(
        1.875e9 / 50e9 + 30 * 5e-6, rel=1e-12)
    # NICs of 100 GB/s: 8 x 100 > 450, so NVLink binds: 1.875e9 / 450e9.
    fast = load_cluster("dgx-h100", 2, overrides={"inter": {"bandwidth": 100e9}})
    assert _alone(fast, group_collective(fast, list(range(16)), ALL_REDUCE, 1e9)) == pytest.approx(
        1.875e9 / 450e9 + 30 * 5e-6, rel=1e-12)
    # Four GPUs of each node (0-3 and 8-11) reach NICs 0-3: 4 channels, 200 GB/s; B = 2·7/8·1e9.
    half = [0, 1, 2, 3, 8, 9, 10, 11]
    assert _alone(eight, group_collective(eight, half, ALL_REDUCE, 1e9)) == pytest.approx(
        1.75e9 / 200e9 + 14 * 5e-6, rel=1e-12)


def test_a_channel_competes_with_a_transfer_on_its_nic_as_one_flow():
    # Stage 0 on GPU 16 (node 2), stage 1 on GPU 0 (node 0): F = 1 s, B = 0. At t = 2 stage 1's
    # backward ends: its 25 GB input gradient leaves through NIC 0 of node 0, and its all-reduce of
    # 16 GB over GPUs 0-15 starts (8 channels, B = 30 GB, 3.75 GB per channel), channel 0 through the
    # same NIC. Each channel is a flow of its own there, so NIC 0's 50 GB/s is split evenly: 25 GB/s
    # to the transfer, 25 GB/s to channel 0; the channels move in lockstep, so all run at 25 GB/s:
    # 3.75 GB in 0.15 s. Then the transfer has the NIC alone: its other 21.25 GB at 50 GB/s take
    # 0.425 s. No latencies.
    cluster = load_cluster({"base": "dgx-h100", "inter": {"bandwidth": 50e9, "latency": 0.0},
                            "intra": {"bandwidth": 450e9, "latency": 0.0}}, 4)
    ring = group_collective(cluster, list(range(16)), ALL_REDUCE, 16e9)
    rows = [[Action(0, "F", 0), Action(0, "B", 0)], [Action(1, "F", 0), Action(1, "B", 0), Action(1, "REDUCE_GRAD", None)]]
    schedule = make_schedule(rows, [0, 1], 1, "hand")
    stages = (StageCost(1.0, 0.0, 0.0), StageCost(1.0, 0.0, 0.0, send_backward_bytes=25e9, collectives=(ring,)))
    base = cluster.network([16, 0])
    capacity = {port: cluster.capacity(port) for port in ring.path.ports}
    result = simulate_workload(Workload(schedule, stages, Network(base.links, {**capacity, **base.port_capacity})))
    op = next(o for o in result.timeline.ops if o.action.kind == "REDUCE_GRAD")
    assert op.start == 2.0 and op.end == pytest.approx(2.15, rel=1e-12)
    transfer = next(t for t in result.timeline.transfers if str(t.action) == "1B0")
    assert transfer.end == pytest.approx(2.0 + 0.15 + 21.25e9 / 50e9, rel=1e-12)


def test_dp16_at_tp1_across_nodes_is_slower_with_one_nic_per_node():
    plan = dict(model="llama3-8b", schedule="1f1b", pp=2, num_microbatches=4, microbatch_size=1,
                layers_per_stage=even_split(34, 2), dp=16, tp=1, nodes=4, overlap_grad_reduce=False)
    times = {}
    for nics in (8, 1):
        cluster = {"base": "dgx-h100", "nics_per_node": nics}
        workload, r = lower("llama3-8b", cluster, llama_plan(cluster=cluster, **plan))
        result = simulate_workload(workload)
        # Stage 0's data group is GPUs 0-15 on nodes 0 and 1; its fp32 gradients are all-reduced last,
        # alone. (Stage 1's reduction starts as its last input gradient leaves through NIC 0 of node 2,
        # the NIC of one of its channels, so it shares that NIC for a while.)
        params = stage_work(r.model, r.plan.stage_layers(0), 1, r.seq_len, False).params
        op = next(o for o in result.timeline.ops if str(o.action) == "0REDUCE_GRAD")
        assert op.end - op.start == pytest.approx(2 * 15 / 16 * 4 * params / (nics * 50e9) + 30 * 5e-6, rel=1e-9)
        times[nics] = result.iteration_time
    assert times[1] > times[8] * 1.1


def test_scattered_pipeline_messages_by_hand():
    # llama3-8b, b = 1, s = 8192: S = 2·8192·4096 bytes between stage 0 (GPU 0, node 0) and stage 1
    # (GPU 8, node 1) at tp = 8. Each tensor rank sends S/8 over its own NIC (25 GB/s on dgx-a100, 5 us),
    # then the 8 ranks all-gather S over NVLink (NCCL's 230 GB/s, 3 us): 5e-6 + S/8/25e9 + 7·3e-6 + 7/8·S/230e9.
    common = dict(model="llama3-8b", cluster="dgx-a100", schedule="1f1b", pp=2, num_microbatches=1,
                  microbatch_size=1, layers_per_stage=even_split(34, 2), tp=8, nodes=2)
    s = 2 * 8192 * 4096
    plain, _ = lower("llama3-8b", "dgx-a100", llama_plan(**common))
    scattered, _ = lower("llama3-8b", "dgx-a100", llama_plan(scatter_gather_p2p=True, **common))
    assert plain.network.transfer_seconds(0, 1, plain.stages[0].send_forward_bytes) == pytest.approx(
        5e-6 + s / 25e9, rel=1e-12)
    assert scattered.stages[0].send_forward_bytes == s / 8
    assert scattered.network.transfer_seconds(0, 1, scattered.stages[0].send_forward_bytes) == pytest.approx(
        5e-6 + s / 8 / 25e9 + 7 * 3e-6 + 7 / 8 * s / 230e9, rel=1e-12)
    result = simulate(plan=llama_plan(scatter_gather_p2p=True, **common))
    sent = next(t for t in result.timeline.transfers if str(t.action) == "0F0")
    assert sent.end - sent.start == pytest.approx(5e-6 + s / 8 / 25e9 + 21e-6 + 7 / 8 * s / 230e9, rel=1e-12)


@pytest.mark.parametrize("changes", [dict(tp=1), dict(tp=8, sequence_parallel=True)])
def test_scatter_gather_needs_replicated_messages(changes):
    with pytest.raises(SpecError, match="plan.scatter_gather_p2p") as err:
        llama_plan(scatter_gather_p2p=True, nodes=8, **changes)
    assert "\n" not in str(err.value)
