"""``pipeplan probe`` refuses what it cannot do in one line before measuring, and the spec it writes is
accepted wherever a cluster is: ``--cluster FILE`` of simulate and optimize, a plan's ``"cluster"``,
the Python API. The measured-kernel pricing it relies on is checked against hand-computed numbers."""
import json
import random
from dataclasses import replace
import subprocess
import sys

import pytest

from pipeplan.api import simulate
from pipeplan.cluster import GPUSpec, load_cluster
from pipeplan.errors import SpecError
from pipeplan.bands.terms import layer_parts
from pipeplan.costs import price, stage_work
from pipeplan.kernel_curves import LayerOverheads, ShapeCurve, ShapeTable
from pipeplan.model import MODEL_PRESETS
from pipeplan.plan import Plan
from pipeplan.probe.run import ProbeOptions, check

from reliability import REPO, assert_one_line_error, run_in  # tests/ is on sys.path
from test_probe_fit import CPU_TRUTH, MACHINE, OPTIONS, fake_ranks


@pytest.mark.parametrize("args, needles", [
    (["--device", "tpu"], ["--device", "cpu or cuda"]),
    (["--backend", "mpi"], ["--backend", "gloo or nccl"]),
    (["--backend", "nccl"], ["--backend nccl", "--device cuda"]),
    (["--out", "."], ["--out", "folder"]),
    (["--out", "/proc/self/status"], ["--out"]),
])
def test_what_cannot_run_is_refused_in_one_line_before_anything_starts(tmp_path, args, needles):
    if "--out" not in args:
        args = [*args, "--out", "cluster.json"]
    out = run_in(tmp_path, "probe", *args)  # run_in also checks that no file appeared
    assert_one_line_error(out, "probe", *needles)


def test_without_out_argparse_refuses(tmp_path):
    out = run_in(tmp_path, "probe")
    assert out.returncode == 2 and "--out" in out.stderr and "Traceback" not in out.stderr


def test_device_cuda_where_torch_sees_no_gpu_is_refused(tmp_path):
    torch = pytest.importorskip("torch")
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    out = run_in(tmp_path, "probe", "--device", "cuda", "--out", "cluster.json")
    assert_one_line_error(out, "probe", "--device cuda", "no CUDA device")


def test_a_machine_without_torch_is_told_how_to_get_it(tmp_path):
    code = ("import sys; sys.modules['torch'] = None; from pipeplan.cli import main; "
            "sys.exit(main(['probe', '--out', 'cluster.json']))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path, timeout=60,
                         env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"})
    assert_one_line_error(out, "probe", "needs torch", "pipeplan[validate]")
    assert not (tmp_path / "cluster.json").exists()


@pytest.mark.parametrize("count, backend, refused", [(0, "gloo", "no CUDA device"), (1, "nccl", "needs 2 GPUs"),
                                                     (1, "gloo", None), (2, "nccl", None)])
def test_the_gpu_checks_count_the_devices_torch_sees(count, backend, refused):
    pytest.importorskip("torch")
    options = ProbeOptions(device="cuda", backend=backend)
    if refused:
        with pytest.raises(SpecError, match=refused):
            check(options, cuda_count=lambda: count)
    else:
        check(options, cuda_count=lambda: count)


@pytest.fixture
def probed(tmp_path):
    """A spec as the probe writes it (fitted from synthetic timings of a known device), in a file."""
    from pipeplan.probe.spec import build_spec

    spec = build_spec(fake_ranks(CPU_TRUTH, (30e-6, 1.5e9), 4e-6, random.Random(5)), OPTIONS, MACHINE, 10.0)
    (tmp_path / "probed.json").write_text(json.dumps(spec.to_dict()))
    return tmp_path / "probed.json"


def test_simulate_and_optimize_take_the_probed_spec_as_cluster(probed):
    folder = probed.parent
    out = run_in(folder, "simulate", "--model", "tiny", "--cluster", "probed.json", "--pp", "2", "-m", "8", "--json")
    assert out.returncode == 0, out.stderr
    flag_result = json.loads(out.stdout)
    plan = {"model": "tiny", "cluster": "probed.json", "schedule": "1f1b", "pp": 2, "num_microbatches": 8,
            "microbatch_size": 1, "layers_per_stage": [5, 5]}
    (folder / "plan.json").write_text(json.dumps(plan))
    out = run_in(folder, "simulate", "plan.json", "--json")
    assert out.returncode == 0, out.stderr
    api = simulate(plan=Plan.from_dict(plan), base_dir=folder)
    assert json.loads(out.stdout)["iteration_time"] == pytest.approx(api.iteration_time, rel=1e-9)
    assert flag_result["iteration_time"] == pytest.approx(api.iteration_time, rel=1e-9)
    out = run_in(folder, "optimize", "--model", "tiny", "--cluster", "probed.json", "--pp", "2",
                 "--global-batch", "8", "--time-limit", "20")
    assert out.returncode == 0, out.stderr


def test_a_probed_spec_prices_ops_with_what_it_measured(probed):
    """The same plan on the probed spec and on its nominal figures alone (curves, kernel bandwidth and
    element width dropped): the measured fields change the price, so they are read."""
    spec = load_cluster(str(probed))
    nominal = spec.to_dict()
    for field in ("gemm_curve", "attention_forward", "attention_backward", "kernel_bandwidth", "layer_overheads"):
        nominal["gpu"][field] = None
    nominal["gpu"]["element_bytes"] = 2
    plan = Plan.from_dict({"model": "tiny", "cluster": spec.to_dict(), "schedule": "1f1b", "pp": 2,
                           "num_microbatches": 8, "microbatch_size": 1, "layers_per_stage": [5, 5]})
    assert simulate(plan=plan).iteration_time != pytest.approx(
        simulate(plan=plan.with_(cluster=nominal)).iteration_time, rel=0.05)


def test_measured_curves_price_gemms_attention_and_memory_kernels_as_written_by_hand():
    gpu = GPUSpec("core", 2e11, 8e9, hbm_bandwidth=1e10, element_bytes=4, kernel_bandwidth=5e9,
                  gemm_curve=ShapeCurve(1e11, (10.0, 20.0, 5.0), 2e-6),
                  attention_forward=ShapeTable(((16, 256), (8, 32)), (1e10, 2e10, 3e10, 6e10)),
                  attention_backward=ShapeTable(((16, 256), (8, 32)), (2e9, 8e9, 6e9, 2.4e10)))
    # 100 x 200 x 50: 2e6 FLOPs / 1e11 x 1.1 x 1.1 x 1.1 + 2 us; its 140 kB at 4 bytes take 14 us < that
    assert gpu.gemm_seconds(100, 200, 50) == pytest.approx(2e-5 * 1.331 + 2e-6, rel=1e-12)
    # 64 x 64 x 1024: 8,388,608 FLOPs / 1e11 x (1 + 10/64)(1 + 20/64)(1 + 5/1024) + 2 us = 130 us; it moves
    # 4 x (65536 + 65536 + 4096) = 540,672 B, which the roofline charges 5.4 ms for at 100 MB/s
    assert gpu.gemm_seconds(64, 64, 1024) == pytest.approx(8388608 / 1e11 * 1.15625 * 1.3125 * (1 + 5 / 1024) + 2e-6,
                                                           rel=1e-12)
    assert replace(gpu, hbm_bandwidth=1e8).gemm_seconds(64, 64, 1024) == pytest.approx(540672 / 1e8, rel=1e-12)
    # an attention core at s = 64, d = 16 for 8 pairs: halfway between the grid's s and d in log terms,
    # so its rate is the geometric mean of the four corners, sqrt(sqrt(1e10 x 2e10 x 3e10 x 6e10)) = 2.45e10;
    # 4 x 64² x 16 x 8 FLOPs at that, half of it in each of QK^T (64, 64, 16) and AV (64, 16, 64)
    core = 4 * 64 * 64 * 16 * 8 / (1e10 * 2e10 * 3e10 * 6e10) ** 0.25
    assert gpu.attention_gemm_seconds(64, 64, 16, 8, False) == pytest.approx(core / 2, rel=1e-12)
    assert gpu.attention_gemm_seconds(64, 16, 64, 8, False) == pytest.approx(core / 2, rel=1e-12)
    back = 4 * 64 * 64 * 16 * 8 / (2e9 * 8e9 * 6e9 * 2.4e10) ** 0.25
    assert gpu.attention_gemm_seconds(64, 64, 16, 8, True) == pytest.approx(back / 2, rel=1e-12)
    # past the grid the table holds its edge: s = 1024, d = 128 runs at the (256, 32) corner's rate
    assert gpu.attention_gemm_seconds(1024, 1024, 128, 1, False) == pytest.approx(
        4 * 1024 ** 2 * 128 / 6e10 / 2, rel=1e-12)
    # 1 MB counted in bf16 moves 2 MB in float32: 0.4 ms at 5 GB/s
    assert gpu.memory_kernel_seconds(1e6) == pytest.approx(4e-4, rel=1e-12)


def test_measured_per_byte_costs_price_each_layer_kinds_memory_kernels_by_hand():
    """tiny, b = 1, s = 64: a block's forward moves 64 x (20 x 64 + 4 x 256) = 147,456 bf16 bytes (two norms
    4h each, 12h of adds, 4f of GeLU), I twice that; the head 64 x (4 x 64 + 6 x 512) = 212,992 in F and I.
    In float32 (x 2) at the per-byte costs below, a stage of 2 blocks and the head costs exactly that more
    than the same stage with the memory-bound kernels free."""
    costs = ((0.0, 0.0, 0.0), (3e-10, 1e-10, 0.0), (5e-11, 2e-11, 0.0))
    base = GPUSpec("core", 2e11, 8e9, hbm_bandwidth=1e10, element_bytes=4, kernel_bandwidth=5e9,
                   gemm_curve=ShapeCurve(1e11, (10.0, 20.0, 5.0), 2e-6))
    fixed = dict(embedding=(1e-5, 2e-5, 0.0), block=(1e-4, 1e-4, 5e-5), head=(3e-5, 3e-5, 1e-5))
    priced = replace(base, layer_overheads=LayerOverheads(**fixed, per_byte=costs))
    free = replace(base, layer_overheads=LayerOverheads(**fixed, per_byte=((0.0,) * 3,) * 3))
    model = MODEL_PRESETS["tiny"]
    work = stage_work(model, range(model.num_pipeline_layers - 3, model.num_pipeline_layers), 1, 64, False)  # 2 blocks, head
    block, head = 64 * (20 * 64 + 4 * 256) * 2, 64 * (4 * 64 + 6 * 512) * 2
    a, b = price(work, priced), price(work, free)
    assert a.forward - b.forward == pytest.approx(2 * block * 3e-10 + head * 5e-11, rel=1e-9)
    assert a.backward_input - b.backward_input == pytest.approx(2 * 2 * block * 1e-10 + head * 2e-11, rel=1e-9)
    assert a.backward_weight == pytest.approx(b.backward_weight, rel=1e-12)
    # the band's parts add up to the same price (they mirror price term by term)
    parts = layer_parts(work, priced, None)
    assert sum(t for _, _, t in parts["F"]) == pytest.approx(a.forward, rel=1e-12)
    assert sum(t for _, _, t in parts["I"]) == pytest.approx(a.backward_input, rel=1e-12)


def test_a_recomputing_stages_forward_is_priced_without_its_graph_by_hand():
    """A fully recomputing stage's F runs under no_grad (``validator.compute``). tiny, b = 1, s = 64, two
    blocks: each forward moves 147,456 bf16 bytes (see above), 294,912 in float32. With a measured
    no-graph fixed cost and cost per byte below the forward's, F costs exactly the difference less than
    the same stage's F without recomputation; its I is that stage's I plus the forward *with* its graph
    (the re-run records it); W is unchanged."""
    base = GPUSpec("core", 2e11, 8e9, hbm_bandwidth=1e10, element_bytes=4, kernel_bandwidth=5e9,
                   gemm_curve=ShapeCurve(1e11, (10.0, 20.0, 5.0), 2e-6))
    fixed = dict(embedding=(1e-5, 2e-5, 0.0), block=(3e-4, 2e-4, 5e-5), head=(3e-5, 3e-5, 1e-5))
    per_byte = ((0.0, 0.0, 0.0), (8e-10, 6e-10, 0.0), (2e-10, 1e-10, 0.0))
    no_grad = {"embedding": [1e-5, 0.0], "block": [2e-4, 6e-10], "head": [3e-5, 2e-10]}
    with_no_grad = replace(base, layer_overheads=LayerOverheads(**fixed, per_byte=per_byte, no_grad=no_grad))
    without = replace(base, layer_overheads=LayerOverheads(**fixed, per_byte=per_byte))
    model = MODEL_PRESETS["tiny"]
    blocks = range(1, 3)
    plain = price(stage_work(model, blocks, 1, 64, False), with_no_grad)
    again = price(stage_work(model, blocks, 1, 64, True), with_no_grad)
    moved = 64 * (20 * 64 + 4 * 256) * 2
    assert plain.forward - again.forward == pytest.approx(2 * (1e-4 + moved * (8e-10 - 6e-10)), rel=1e-9)
    assert again.backward_input == pytest.approx(plain.backward_input + plain.forward, rel=1e-12)
    assert again.backward_weight == pytest.approx(plain.backward_weight, rel=1e-12)
    # a spec that never measured the no-graph forward prices it as the forward, as before
    old = price(stage_work(model, blocks, 1, 64, True), without)
    assert old.forward == pytest.approx(plain.forward, rel=1e-12)
    assert old.backward_input == pytest.approx(plain.backward_input + plain.forward, rel=1e-12)
    # the band's parts mirror it
    parts = layer_parts(stage_work(model, blocks, 1, 64, True), with_no_grad, None)
    assert sum(t for _, _, t in parts["F"]) == pytest.approx(again.forward, rel=1e-12)
    assert sum(t for _, _, t in parts["I"]) == pytest.approx(again.backward_input, rel=1e-12)
    # and it survives the cluster file
    assert LayerOverheads.from_dict("x", with_no_grad.layer_overheads.to_dict()) == with_no_grad.layer_overheads


@pytest.mark.parametrize("field, value, needle", [
    ("gemm_curve", {"rate": 1e11, "halves": [1, 2]}, "needs 3 numbers"),
    ("gemm_curve", {"rate": -1, "halves": [1, 2, 3]}, "gemm_curve.rate"),
    ("gemm_curve", {"rate": 1e11, "halves": [1, 2, 3], "speed": 1}, "gemm_curve.speed: unknown field"),
    ("attention_backward", None, "attention_backward: give attention_forward"),
    ("attention_forward", {"axes": [[16, 64], [8]], "rates": [1e9]}, "needs one rate per grid point"),
    ("attention_forward", {"axes": [[64, 16], [8]], "rates": [1e9, 1e9]}, "ascending"),
    ("attention_forward", {"axes": [[16, 64]], "rates": [1e9, 1e9]}, "needs 2 axes"),
    ("attention_forward", {"axes": [[16], [8]], "rates": [1e30]}, "attention_forward.rates"),
    ("element_bytes", 3, "element_bytes: must be one of"),
    ("layer_overheads", {"embedding": [0, 0, 0], "block": [1e-4, 1e-4], "head": [0, 0, 0]},
     "layer_overheads.block: needs 3"),
    ("layer_overheads", {"embedding": [0, 0, 0], "block": [0, 0, 0], "head": [0, 0, -1]}, "layer_overheads.head"),
    ("layer_overheads", {"embedding": [0, 0, 0], "block": [0, 0, 0]}, "layer_overheads.head: required"),
    ("kernel_bandwidth", 0, "kernel_bandwidth"),
    ("kernel_bandwidth", 1e30, "kernel_bandwidth"),
    ("layer_overheads", {"embedding": [0, 0, 0], "block": [0, 0, 0], "head": [0, 0, 0],
                         "per_byte": {"embedding": [0, 0, 0], "block": [0, 0], "head": [0, 0, 0]}}, "per_byte.block: needs 3"),
    ("layer_overheads", {"embedding": [0, 0, 0], "block": [0, 0, 0], "head": [0, 0, 0],
                         "per_byte": {"embedding": [0, 0, 0], "block": [0, 0, 0], "head": [0, -1e-9, 0]}},
     "per_byte.head"),
    ("layer_overheads", {"embedding": [0, 0, 0], "block": [0, 0, 0], "head": [0, 0, 0],
                         "no_grad": {"embedding": [0, 0], "block": [0, 0, 0], "head": [0, 0]}}, "no_grad.block: needs"),
    ("layer_overheads", {"embedding": [0, 0, 0], "block": [0, 0, 0], "head": [0, 0, 0],
                         "no_grad": {"embedding": [0, 0], "block": [0, 0]}}, "no_grad.head: required"),
    ("layer_overheads", {"embedding": [0, 0, 0], "block": [0, 0, 0], "head": [0, 0, 0],
                         "no_grad": {"embedding": [0, 0], "block": [-1, 0], "head": [0, 0]}}, "no_grad.block"),
])
def test_a_bad_measured_field_is_named(probed, field, value, needle):
    data = json.loads(probed.read_text())
    data["gpu"][field] = value
    with pytest.raises(SpecError, match=needle):
        load_cluster(data)
