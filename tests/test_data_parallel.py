"""Data-parallel collectives, the optimizer step and the fabric against hand counts.

Hand figures follow the alpha-beta ring model (shared REFERENCE; nccl-tests PERFORMANCE.md):
ring all-reduce of X bytes over n ranks alone = 2(n-1)/n·X/B + 2(n-1)·α.
"""
import pytest

from pipeplan import SpecError, even_split, load_cluster, lower
from pipeplan.collectives import ALL_REDUCE, group_collective, port_sharing
from pipeplan.costs import stage_work
from pipeplan.lowering import build_workload
from pipeplan.specs import resolve
from plans import llama_plan  # tests/ is on sys.path
from simulator import Action, Network, StageCost, Workload, simulate
from simulator.ir import make_schedule


def _cluster(gpus_per_node, nodes, inter_bw, inter_latency, nics=1):
    return load_cluster({"name": "hand", "gpu": {"name": "g", "peak_flops": 1e15, "memory_bytes": 80e9},
                         "gpus_per_node": gpus_per_node, "intra": {"bandwidth": 1e12, "latency": 0.0},
                         "inter": {"bandwidth": inter_bw, "latency": inter_latency}, "nics_per_node": nics,
                         "nodes": nodes})


def _run(cluster, gpus, collectives):
    """A pipeline over ``gpus`` (one stage each, one micro-batch, F = B = 1 s, no bytes sent), each stage
    ending with its REDUCE_GRAD priced by ``collectives[s]``; returns {action text: (start, end)}."""
    p = len(gpus)
    rows = [[Action(s, "F", 0), Action(s, "B", 0), Action(s, "REDUCE_GRAD", None)] for s in range(p)]
    schedule = make_schedule(rows, list(range(p)), 1, "hand")
    stages = tuple(StageCost(1.0, 0.5, 0.5, collectives=(c,)) for c in collectives)
    base = cluster.network(list(gpus))
    capacity = {port: cluster.capacity(port) for c in collectives for port in c.path.ports}
    result = simulate(Workload(schedule, stages, Network(base.links, {**capacity, **base.port_capacity})))
    return {str(o.action): (o.start, o.end) for o in result.timeline.ops}, result


def test_a_ring_all_reduce_alone_takes_the_alpha_beta_time_on_the_timeline():
    # 4 nodes of 1 GPU, 25 GB/s NICs, 5 us: 1 GB all-reduce = 2·3/4·1e9/25e9 + 2·3·5e-6 = 0.06 + 30e-6 s,
    # starting when the stage's backward ends at t = 2.
    cluster = _cluster(1, 4, 25e9, 5e-6)
    c = group_collective(cluster, [0, 1, 2, 3], ALL_REDUCE, 1e9)
    times, _ = _run(cluster, [0], [c])
    start, end = times["0REDUCE_GRAD"]
    assert start == 2.0
    assert end - start == pytest.approx(0.06 + 30e-6, rel=1e-12)


def test_two_collectives_sharing_a_port_split_it_max_min_fairly():
    # 2 nodes of 2 GPUs behind one 10 GB/s NIC each. Stage 1 (GPU 1) all-reduces 20 GB with GPU 3,
    # stage 0 (GPU 0) 5 GB with GPU 2: n = 2 moves X bytes through both NICs. Stage 1's starts at 3
    # alone (10 GB/s): 10 GB by 4. Stage 0's starts at 4: 5 GB/s each; stage 0's 5 GB end at 5; stage 1's
    # last 5 GB then go alone at 10 GB/s: end 5.5 (alone it would have ended at 5).
    cluster = _cluster(2, 2, 10e9, 0.0)
    c0 = group_collective(cluster, [0, 2], ALL_REDUCE, 5e9)
    c1 = group_collective(cluster, [1, 3], ALL_REDUCE, 20e9)
    assert set(c0.path.ports) == set(c1.path.ports)
    times, _ = _run(cluster, [0, 1], [c0, c1])
    assert times["1REDUCE_GRAD"][0] == 3.0 and times["0REDUCE_GRAD"][0] == 4.0
    assert times["0REDUCE_GRAD"][1] == pytest.approx(5.0, rel=1e-12)
    assert times["1REDUCE_GRAD"][1] == pytest.approx(5.5, rel=1e-12)


def test_rings_of_other_tensor_ranks_through_one_nic_divide_its_rate():
    # 8 tensor ranks' DP rings [t, t+8] cross node0's only NIC at once: each gets 50/8 GB/s.
    cluster = load_cluster("dgx-h100", 2, overrides={"nics_per_node": 1})
    shared = port_sharing(cluster, [[t, t + 8] for t in range(8)])
    assert shared["node0.nic0->leaf0"] == 8
    assert group_collective(cluster, [0, 8], ALL_REDUCE, 1e9, shared).path.bandwidth == 50e9 / 8
    eight = load_cluster("dgx-h100", 2)
    assert group_collective(eight, [0, 8], ALL_REDUCE, 1e9,
                            port_sharing(eight, [[t, t + 8] for t in range(8)])).path.bandwidth == 50e9


def test_tree_all_reduce_latency_is_logarithmic():
    cluster = _cluster(1, 16, 25e9, 5e-6)
    ring = group_collective(cluster, list(range(16)), ALL_REDUCE, 1e6)
    tree = group_collective(cluster, list(range(16)), ALL_REDUCE, 1e6, algorithm="tree")
    assert ring.path.latency == pytest.approx(2 * 15 * 5e-6)
    assert tree.path.latency == pytest.approx(2 * 4 * 5e-6)  # 2·log2(16)·α
    assert tree.nbytes == ring.nbytes and tree.path.bandwidth == ring.path.bandwidth
    with pytest.raises(SpecError, match="tree runs all-reduce only"):
        group_collective(cluster, [0, 1], "reduce-scatter", 1e6, algorithm="tree")


def test_dp1_adds_the_optimizer_step_and_no_collective():
    workload, r = lower("llama3-8b", "dgx-h100", llama_plan())
    assert all(s.collectives == () for s in workload.stages)
    assert workload.schedule.kinds_present == {"F", "B", "OPTIMIZER"}
    result = simulate(workload)
    for device in range(8):
        ops = [o for o in result.timeline.ops if o.device == device]
        step = ops[-1]
        assert str(step.action) == f"{device}OPTIMIZER"
        params = stage_work(r.model, r.plan.stage_layers(device), 1, r.seq_len, False).params
        # Adam, 30 B per parameter (see below) at the H100's 3.35 TB/s, right after the stage's last backward.
        assert step.end - step.start == pytest.approx(params * 30 / 3.35e12, rel=1e-12)
        assert step.start == max(o.end for o in ops if o.action.kind == "B")
    assert result.iteration_time == max(o.end for o in result.timeline.ops)


def test_dp16_across_nodes_is_slower_with_one_nic_per_node():
    plan = dict(model="llama3-8b", schedule="1f1b", pp=2, num_microbatches=4, microbatch_size=1,
                layers_per_stage=even_split(34, 2), dp=16, tp=2, nodes=8)
    eight = llama_plan(cluster="dgx-h100", **plan)
    one = llama_plan(cluster={"base": "dgx-h100", "nics_per_node": 1}, **plan)
    from pipeplan import simulate

    t8, t1 = simulate(plan=eight).sim.iteration_time, simulate(plan=one).sim.iteration_time
    assert t1 > t8 * 1.05
    w8, _ = lower("llama3-8b", "dgx-h100", eight)
    assert w8.schedule.kinds_present >= {"REDUCE_GRAD", "OPTIMIZER"}


def test_optimizer_step_is_bytes_over_hbm_bandwidth_by_hand():
    plan = llama_plan(dp=2, nodes=2)
    workload, r = lower("llama3-8b", "dgx-h100", plan)
    result = simulate(workload)
    params = stage_work(r.model, plan.stage_layers(0), 1, r.seq_len, False).params
    # Adam: read fp32 grad 4 + master/m/v 12, write master/m/v 12 + bf16 weight 2 = 30 B per parameter.
    expected = params * 30 / 3.35e12
    op = next(o for o in result.timeline.ops if str(o.action) == "0OPTIMIZER")
    assert op.end - op.start == pytest.approx(expected, rel=1e-12)
    reduce = next(o for o in result.timeline.ops if str(o.action) == "0REDUCE_GRAD")
    assert op.start >= reduce.end
    assert result.iteration_time == pytest.approx(max(o.end for o in result.timeline.ops) -
                                                  min(o.start for o in result.timeline.ops))
    # The distributed optimizer steps a 1/dp shard, reduce-scatters and all-gathers the parameters.
    dist, _ = lower("llama3-8b", "dgx-h100", llama_plan(dp=2, nodes=2, distributed_optimizer=True))
    assert dist.stages[0].optimizer == pytest.approx(expected / 2, rel=1e-12)
    assert "GATHER_PARAMS" in dist.schedule.kinds_present
    assert dist.stages[0].collective("REDUCE_GRAD").nbytes == pytest.approx(params * 4 / 2, rel=1e-12)


def test_megatron_fp16_runs_step_in_five_passes_and_reduce_fp16_gradients_by_hand():
    """Megatron-LM's fp16 optimizer of 2021-22 (pipeplan.megatron_kernels): fp16 grads copied to fp32
    (2 + 4), unscaled with the inf check (4 + 4), their norm for clipping (4), FusedAdam (16 + 12), fp32
    weights copied to fp16 (4 + 2) = 52 B per parameter, against the fused count's 30; all at the A100's
    streaming rate for memory-bound kernels (1.8 TB/s, below its 2.0 TB/s datasheet). Without
    --accumulate-allreduce-grads-in-fp32 the data-parallel all-reduce moves 2-byte gradients."""
    from pipeplan import Plan
    from pipeplan.model import ModelSpec

    def lowered(kernels):
        model = ModelSpec("gpt", 4, 1024, 16, 4096, 51200, 1024, kernels=kernels)
        plan = Plan(model=model.to_dict(), cluster="dgx-a100", schedule="1f1b", pp=2, num_microbatches=4,
                    microbatch_size=1, layers_per_stage=(3, 3), nodes=2, dp=8)
        workload, r = lower(model, "dgx-a100", plan)
        return workload, stage_work(r.model, plan.stage_layers(0), 1, r.seq_len, False).params

    for kernels, step_bytes, grad_bytes in (("fused", 30, 4), ("megatron-2021", 52, 2), ("megatron-2022", 52, 2)):
        workload, params = lowered(kernels)
        assert workload.stages[0].optimizer == pytest.approx(params * step_bytes / 1.8e12, rel=1e-12)
        reduce = workload.stages[0].collective("REDUCE_GRAD")
        fused = lowered("fused")[0].stages[0].collective("REDUCE_GRAD")
        assert reduce.nbytes == pytest.approx(fused.nbytes * grad_bytes / 4, rel=1e-12)


def test_without_overlap_every_reduction_starts_after_the_devices_last_backward():
    for overlap in (True, False):
        plan = llama_plan(schedule="interleaved", chunks=2, layers_per_stage=even_split(34, 16), dp=2, nodes=2,
                          overlap_grad_reduce=overlap)
        result = simulate(build_workload(resolve(plan.model, plan.cluster, plan)))
        ops = [o for o in result.timeline.ops if o.device == 0]
        last_backward = max(o.end for o in ops if o.action.kind == "B")
        starts = [o.start for o in ops if o.action.kind == "REDUCE_GRAD"]
        assert (min(starts) >= last_backward) is (not overlap)


def test_oversubscribed_leaves_halve_the_uplink():
    cluster = load_cluster({"base": "dgx-h100", "nodes_per_leaf": 2, "oversubscription": 2.0}, 4)
    link = cluster.link_between(0, 16)  # node 0 -> node 2: across the spine
    assert "leaf0->spine0" in link.ports
    assert cluster.capacity("leaf0->spine0") == 2 * 8 * 50e9 / 2
    rail = load_cluster({"base": "dgx-h100", "rail_optimized": True}, 2)
    assert rail.link_between(3, 11).ports == ("node0.nic3->leaf0.rail3", "leaf0.rail3->node1.nic3")
    assert load_cluster("dgx-h100", 2).link_between(3, 11).ports == ("node0.nic3->leaf0", "leaf0->node1.nic3")


def test_cluster_overrides_name_a_bad_field_in_one_line():
    assert load_cluster("dgx-a100", overrides={"gpu": {"hbm_bandwidth": 1.5e12}}).gpu.hbm_bandwidth == 1.5e12
    assert load_cluster("dgx-a100").gpu.hbm_bandwidth == 2.0e12
    assert load_cluster("dgx-h100").gpu.hbm_bandwidth == 3.35e12
    for bad, field in (({"base": "dgx-h100", "nic": 1}, "cluster.nic:"),
                       ({"base": "dgx-h100", "inter": {"bw": 1}}, "cluster.inter.bw:"),
                       ({"base": "dgx-h100", "oversubscription": 4.0}, "cluster.oversubscription:"),
                       ({"base": "dgx-h100", "nodes_per_leaf": -1}, "cluster.nodes_per_leaf:")):
        with pytest.raises(SpecError, match=field) as err:
            load_cluster(bad)
        assert "\n" not in str(err.value)
