"""Unbounded work: every job is sized before it starts and refused past a limit in one line.

The command line runs as a subprocess would run it, in this process (``reliability.run_here``): exit code 2,
one stderr line that names the field, the number and the environment variable that raises the limit, no
traceback, inputs unchanged, no new files. The timeout (60 s) is generous, so a regression that starts the
work fails instead of hanging. Unit tests below hold the structures that used to grow with p^2 or layers^2
to their hand-counted contents.
"""
import json
import subprocess
import sys
import tracemalloc
from pathlib import Path

import pytest

from pipeplan import load_cluster
from pipeplan.limits import LIMITS
from pipeplan.model import BLOCK, EMBEDDING, HEAD, ModelSpec
from pipeplan.topology import topology
from simulator import build_schedule, uniform_network
from simulator.workload import Network, PairLinks

from reliability import REPO, refused_in_one_line as refused, run_here  # tests/ is on sys.path


def run(*args, cwd, env=None):
    return run_here(cwd, *args, env=env)


def test_schedule_with_a_huge_device_count_is_refused_with_its_op_count(tmp_path):
    # 99999999999999999999 devices x 8 micro-batches x F and B = 1,599,999,999,999,999,999,984 ops
    line = refused(run("schedule", "1f1b", "-p", "99999999999999999999", "-m", "8", cwd=tmp_path),
                   "p=99,999,999,999,999,999,999", "1,599,999,999,999,999,999,984 ops", "PIPEPLAN_MAX_OPS")
    assert f"limit of {LIMITS['ops'].default:,}" in line


def test_schedule_p512_m16384_is_refused_up_front(tmp_path):
    # 512 x 16,384 x 2 (F and B) = 16,777,216 ops, past the default 2,000,000
    refused(run("schedule", "1f1b", "-p", "512", "-m", "16384", cwd=tmp_path), "16,777,216 ops", "PIPEPLAN_MAX_OPS=")


def test_the_ops_limit_is_raised_by_its_environment_variable_exactly_at_the_count(tmp_path):
    # 1F1B at p=4, m=16 is 4 x 16 x 2 = 128 ops: refused under 127, run under 128.
    refused(run("schedule", "1f1b", "-p", "4", "-m", "16", cwd=tmp_path, env={"PIPEPLAN_MAX_OPS": "127"}),
            "128 ops", "limit of 127")
    out = run("schedule", "1f1b", "-p", "4", "-m", "16", "--json", cwd=tmp_path, env={"PIPEPLAN_MAX_OPS": "128"})
    assert out.returncode == 0 and json.loads(out.stdout)["iteration_time"] == (16 + 4 - 1) * 3  # (m+p-1)(F+B+W)
    # iterations multiply the ops: 3 x 128 = 384
    refused(run("schedule", "1f1b", "-p", "4", "-m", "16", "--iterations", "3", cwd=tmp_path,
                env={"PIPEPLAN_MAX_OPS": "383"}), "384 ops")


@pytest.mark.parametrize("value", ["abc", "0", "-5", "1e9"])
def test_a_bad_limit_value_names_the_variable(tmp_path, value):
    refused(run("schedule", "1f1b", "-p", "2", "-m", "2", cwd=tmp_path, env={"PIPEPLAN_MAX_OPS": value}),
            "PIPEPLAN_MAX_OPS", repr(value))


def test_charts_and_traces_have_their_own_limit(tmp_path):
    # 1F1B at p=64, m=4096: 524,288 ops simulate under the ops limit, but drawing them is refused first
    refused(run("schedule", "1f1b", "-p", "64", "-m", "4096", "--trace", "t.json", "--gantt", "g.png", cwd=tmp_path),
            "--gantt:", "524,288 ops", "drop --gantt and --trace", "PIPEPLAN_MAX_OUTPUT_OPS")
    # tiny at pp=2: 2 x 100,000 x F and B = 400,000 ops
    refused(run("simulate", "--model", "tiny", "--pp", "2", "-m", "100000", "--timeline", "t.json", cwd=tmp_path),
            "--timeline:", "400,000 ops")


def test_schedule_search_has_its_own_smaller_limit(tmp_path):
    # CP-SAT holds one interval per op: 64 x 512 x 3 (F, I, W) = 98,304
    refused(run("schedule", "search", "-p", "64", "-m", "512", cwd=tmp_path), "98,304 ops", "PIPEPLAN_MAX_SEARCH_OPS")


def test_a_non_integer_count_is_refused_naming_the_flag(tmp_path):
    refused(run("schedule", "1f1b", "-p", "4", "-m", "1e20", cwd=tmp_path), "--microbatches", "'1e20'")


def _plan(tmp_path, **fields):
    plan = {"model": "tiny", "cluster": "dgx-h100", "schedule": "1f1b", "pp": 2, "num_microbatches": 8,
            "microbatch_size": 1, "layers_per_stage": [5, 5], **fields}
    path = tmp_path / "plan.json"
    path.write_text(json.dumps(plan))
    return path


@pytest.mark.parametrize("fields, words", [
    ({"pp": 1e20}, ["plan.pp", "positive integer"]),
    ({"pp": 10**20}, ["100,000,000,000,000,000,000 GPUs", "PIPEPLAN_MAX_GPUS"]),
    # 2 stages x 10^12 micro-batches x F and B
    ({"num_microbatches": 10**12}, ["4,000,000,000,000 ops", "PIPEPLAN_MAX_OPS"]),
    ({"layers_per_stage": [1] * 60_000}, ["plan.layers_per_stage", "PIPEPLAN_MAX_LAYERS"]),
])
@pytest.mark.parametrize("command", ["simulate", "validate"])
def test_a_plan_too_large_is_refused_when_loaded(tmp_path, fields, words, command):
    path = _plan(tmp_path, **fields)
    refused(run(command, path.name, cwd=tmp_path), *words)


def test_a_csv_cell_naming_a_huge_stage_is_refused_at_once(tmp_path):
    (tmp_path / "s.csv").write_text("99999999F0\n")
    refused(run("simulate", "--model", "tiny", "--schedule-csv", "s.csv", cwd=tmp_path), "stage 0")


def test_a_csv_cell_naming_a_huge_microbatch_is_sized_before_it_is_built(tmp_path):
    # complete, the schedule would run F and B of 10^11 micro-batches on 2 stages: 4 x 10^11 ops
    (tmp_path / "s.csv").write_text("0F0,0B0\n1F99999999999,1B0\n")
    refused(run("simulate", "--model", "tiny", "--schedule-csv", "s.csv", cwd=tmp_path),
            "400,000,000,000 ops", "PIPEPLAN_MAX_OPS")


def test_a_csv_with_more_actions_than_the_limit_stops_being_read(tmp_path):
    (tmp_path / "s.csv").write_text("0F0,0F1,0B0,0B1\n" * 1 + "1F0,1F1,1B0,1B1\n")  # 8 actions
    refused(run("simulate", "--model", "tiny", "--schedule-csv", "s.csv", cwd=tmp_path, env={"PIPEPLAN_MAX_OPS": "7"}),
            "--schedule-csv", "8 ops", "limit of 7")


def test_an_input_file_over_the_size_limit_is_not_read(tmp_path):
    (tmp_path / "s.csv").write_text("0F0,0B0\n" * 25)  # 200 bytes
    refused(run("simulate", "--model", "tiny", "--schedule-csv", "s.csv", cwd=tmp_path,
                env={"PIPEPLAN_MAX_INPUT_BYTES": "199"}), "--schedule-csv", "200 bytes", "PIPEPLAN_MAX_INPUT_BYTES")
    path = _plan(tmp_path)
    size = path.stat().st_size
    refused(run("simulate", path.name, cwd=tmp_path, env={"PIPEPLAN_MAX_INPUT_BYTES": str(size - 1)}),
            "plan:", f"{size:,} bytes")


def test_optimize_with_a_huge_global_batch_is_refused(tmp_path):
    # b = 1: m = 10^9 micro-batches over tiny's 10 pipeline layers (8 stages at most with pp=2, 4 chunks), F, I, W
    refused(run("optimize", "--model", "tiny", "--pp", "2", "--global-batch", "1000000000", cwd=tmp_path),
            "m = 1,000,000,000", "24,000,000,000 ops", "--microbatch-sizes", "PIPEPLAN_MAX_OPS")


def test_a_cluster_too_large_for_its_graph_is_refused(tmp_path):
    refused(run("simulate", "--model", "tiny", "--nodes", str(10**20), cwd=tmp_path), "--nodes",
            "800,000,000,000,000,000,000 GPUs", "PIPEPLAN_MAX_GPUS")


def test_a_model_with_too_many_layers_is_refused(tmp_path):
    spec = {"name": "deep", "num_layers": 10**9, "hidden": 64, "heads": 4, "ffn_hidden": 256, "vocab": 512,
            "seq_len": 64}
    (tmp_path / "deep.json").write_text(json.dumps(spec))
    for command in (["simulate", "--model", "deep.json", "--pp", "2"],
                    ["optimize", "--model", "deep.json", "--pp", "2", "--global-batch", "8"]):
        refused(run(*command, cwd=tmp_path), "model.num_layers", "1,000,000,000 layers", "PIPEPLAN_MAX_LAYERS")


# --- the structures that grew with p^2 or layers^2 --------------------------------------------------


def _all_pair_ports(topo, gpus):
    """The ports of every route among ``gpus``, each GPU to itself included: what the p x p table collected."""
    ports = set()
    for a in gpus:
        for b in gpus:
            for u, v in topo.route_edges(a, b):
                if topo.graph.edges[u, v]["capacity"] != float("inf"):
                    ports.add(f"{u}->{v}")
    return ports


@pytest.mark.parametrize("name, nodes, overrides, gpus", [
    ("dgx-h100", 2, None, [3, 11, 4]),
    ("dgx-h100", 1, None, [0, 5, 7]),
    ("pcie-l40s", 2, None, [0, 1, 8, 9]),  # one NIC per node, shared
    ("dgx-h100", 4, {"nodes_per_leaf": 2, "oversubscription": 2.0}, [0, 8, 16, 24, 25]),
    ("dgx-h100", 4, {"nodes_per_leaf": 2}, [0, 1, 8]),  # one leaf only: no uplink port
    ("dgx-h100", 2, {"rail_optimized": True}, [0, 9, 2]),  # rails: traffic between rails crosses the spine
])
def test_the_capacity_table_holds_exactly_the_ports_of_all_routes(name, nodes, overrides, gpus):
    cluster = load_cluster(name, nodes, overrides=overrides)
    topo = topology(cluster)
    network = cluster.network(gpus)
    assert set(network.port_capacity) == _all_pair_ports(topo, gpus)
    for port, capacity in network.port_capacity.items():
        assert capacity == topo.capacity(port)
    for i, a in enumerate(gpus):
        for j, b in enumerate(gpus):
            assert network.link(i, j) == topo.link(a, b) == network.links[i][j]


def test_hand_counted_ports_of_three_gpus_on_two_nodes():
    network = load_cluster("dgx-h100", 2).network([3, 11, 4])
    nvswitch = {f"gpu{g}->nvswitch{g // 8}" for g in (3, 11, 4)} | {f"nvswitch{g // 8}->gpu{g}" for g in (3, 11, 4)}
    nics = {"node0.nic3->leaf0", "leaf0->node0.nic3", "node1.nic3->leaf0", "leaf0->node1.nic3",
            "node0.nic4->leaf0", "leaf0->node0.nic4"}
    assert set(network.port_capacity) == nvswitch | nics
    assert network.transfer_seconds(0, 1, 50e9) == pytest.approx(5e-6 + 1.0)  # IB: 5 us + 50 GB at 50 GB/s
    assert network.transfer_seconds(0, 2, 450e9) == pytest.approx(3e-6 + 1.0)  # NVLink: 3 us + 450 GB at 450 GB/s


def test_16384_gpus_have_a_port_table_linear_in_the_gpus():
    # 2,048 dgx-h100 nodes: per GPU its two NVSwitch ports and its NIC's two fabric ports
    gpus = list(range(16384))
    network = load_cluster("dgx-h100", 2048).network(gpus)
    assert len(network.port_capacity) == 4 * 16384
    assert network.link(0, 16383).ports == ("node0.nic0->leaf0", "leaf0->node2047.nic7")


def test_a_uniform_network_stores_no_table_of_pairs():
    tracemalloc.start()
    network = uniform_network(16384, latency=2.0)
    allocated = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert allocated < 100_000  # a p x p table of references alone is 16384^2 x 8 B = 2.1 GB
    assert len(network.links) == 16384 and len(network.links[16383]) == 16384
    assert network.transfer_seconds(0, 16383, 1e9) == 2.0 and network.transfer_seconds(7, 7, 1e9) == 0.0
    with pytest.raises(IndexError):
        network.links[16384]


def test_pair_links_fall_back_to_their_base():
    base = uniform_network(3, latency=1.0)
    network = Network(PairLinks(3, {(0, 1): base.link(0, 1).__class__(5.0)}, base))
    assert [network.link(0, b).latency for b in range(3)] == [1.0, 5.0, 1.0]
    assert [link.latency for link in network.links[1]] == [1.0, 1.0, 1.0]


def test_layer_kind_matches_the_list_and_never_builds_it(monkeypatch):
    model = ModelSpec("m", 3, 64, 4, 256, 512, 64)
    kinds = model.layer_kinds
    assert kinds == [EMBEDDING, BLOCK, BLOCK, BLOCK, HEAD]
    assert [model.layer_kind(i) for i in range(-5, 5)] == kinds[-5:] + kinds
    for bad in (5, -6):
        with pytest.raises(IndexError):
            model.layer_kind(bad)

    def forbidden(self):
        raise AssertionError("a per-layer lookup built the list of every layer's kind")

    monkeypatch.setattr(ModelSpec, "layer_kinds", property(forbidden))
    import pipeplan

    result = pipeplan.simulate("tiny", pp=2, microbatches=4)  # every layer priced through layer_cost
    assert result.iteration_time > 0


@pytest.mark.parametrize("name, p, m", [("zb-v", 4, 8), ("interleaved", 3, 6), ("1f1b", 5, 5), ("v-half", 4, 8)])
def test_stages_of_gives_the_stages_each_device_holds(name, p, m):
    schedule = build_schedule(name, p, m)
    for d in range(p):
        assert schedule.stages_of(d) == [s for s, dev in enumerate(schedule.stage_to_device) if dev == d]
    assert schedule.stages_of(p) == []
    if name == "zb-v":  # device d holds stages d and 2p - 1 - d
        assert [schedule.stages_of(d) for d in range(p)] == [[d, 2 * p - 1 - d] for d in range(p)]


def test_a_profile_network_keeps_the_all_pairs_rule_and_is_sized_first(monkeypatch):
    from pipeplan import SpecError
    from pipeplan.profile import LinkProfile, Profile, StageProfile

    base = load_cluster("dgx-h100", 1).network([0, 1, 2])
    stages = (StageProfile(1e-3, 2e-3, 1e-3, 1e-3),) * 2
    profile = Profile("cpu", "gloo", "tiny", 1, 64, (5, 5), stages, links=(LinkProfile(0, 1, 1e-5, 900e9),))
    network = profile.network(base)
    assert network.link(0, 1).latency == 1e-5 and network.link(1, 0) == base.link(1, 0)
    # gpu0->nvswitch0 carries the measured 0 -> 1 link and the unmeasured 0 -> 2 one (450 GB/s): the lower rate
    assert network.port_capacity["gpu0->nvswitch0"] == 450e9
    monkeypatch.setenv("PIPEPLAN_MAX_OPS", "8")  # 3 devices: 9 pairs
    with pytest.raises(SpecError, match="9 ops"):
        profile.network(base)


def test_limit_defaults_are_what_the_readme_says():
    readme = (REPO / "README.md").read_text()
    for lim in LIMITS.values():
        assert f"`{lim.env}`" in readme and f"{lim.default:,}" in readme, lim.env

