"""The probe's fits recover known parameters from synthetic timings, and its spec builder puts them
where the cost model reads them (no torch needed: the timings here are generated from known figures)."""
import json
import math
import random

import pytest

from pipeplan.cluster import GPUSpec, load_cluster
from pipeplan.costs import layer_work, price
from pipeplan.kernel_curves import LayerOverheads, ShapeCurve, ShapeTable
from pipeplan.model import MODEL_PRESETS
from pipeplan.probe.fit import fit_affine, fit_curve, fit_table, fit_tile_waves, tile_wave_seconds
from pipeplan.probe.layer import IN_FLIGHT, LAYER_SHAPES, NO_GRAD
from pipeplan.probe.spec import build_spec, overhead_fit
from pipeplan.scaling import scale_model

GEMM_DIMS = [(t, o, i) for t in (32, 128, 512, 2048) for i in (16, 64, 256, 1024) for o in (16, 64, 256, 1024)
             if 2 * t * i * o <= 2 ** 27]
ATTENTION_DIMS = [(s, d) for s in (16, 64, 256) for d in (8, 16, 64)]


def noisy(value: float, rng: random.Random, level: float) -> float:
    return value * (1 + level * rng.uniform(-1, 1))


def test_the_curve_of_known_parameters_is_recovered_from_timings_with_two_percent_noise():
    true = ShapeCurve(7.5e10, (12.0, 20.0, 6.0), 3e-6)
    rng = random.Random(1)
    work = [2.0 * m * n * k for m, n, k in GEMM_DIMS]
    seconds = [noisy(true.seconds(w, d), rng, 0.02) for w, d in zip(work, GEMM_DIMS)]
    fitted, rms = fit_curve(GEMM_DIMS, work, seconds)
    assert fitted.rate == pytest.approx(true.rate, rel=0.03)
    assert fitted.call_s == pytest.approx(true.call_s, rel=0.15)
    for got, want in zip(fitted.halves, true.halves):
        assert got == pytest.approx(want, rel=0.2)
    assert rms < 0.02  # uniform noise of +-2 % has an rms of 2 % / sqrt(3)
    # and it predicts shapes it never saw within the noise
    for dims in ((100, 300, 50), (3000, 40, 700)):
        w = 2.0 * math.prod(dims)
        assert fitted.seconds(w, dims) == pytest.approx(true.seconds(w, dims), rel=0.03)


def test_a_table_holds_the_measured_rates_and_says_how_well_neighbours_predict_each():
    # rates 1, 2, 4 GFLOP/s at s = 16, 32, 64 (d = 8): log-linear in s, so each middle point is its
    # neighbours' log-interpolation exactly; d = 16 runs 3x faster at s = 32 than its neighbours say
    dims = [(s, d) for s in (16, 32, 64) for d in (8, 16)]
    rates = {(16, 8): 1e9, (32, 8): 2e9, (64, 8): 4e9, (16, 16): 1e9, (32, 16): 6e9, (64, 16): 4e9}
    work = [4.0 * s * s * d for s, d in dims]
    table, left_out = fit_table(dims, work, [w / rates[d] for w, d in zip(work, dims)])
    assert table.axes == ((16, 32, 64), (8, 16))
    assert [table.rate(d) for d in dims] == pytest.approx([rates[d] for d in dims], rel=1e-12)
    assert table.rate((128, 8)) == pytest.approx(4e9) and table.rate((8, 4)) == pytest.approx(1e9)  # held at edges
    assert table.rate((32, 8 * 2 ** 0.5)) == pytest.approx((2e9 * 6e9) ** 0.5, rel=1e-12)  # halfway in log d
    by_point = dict(zip(dims, left_out))
    assert by_point[(32, 8)] == pytest.approx(work[2] / 2e9, rel=1e-12)  # predicted exactly: residual 0
    assert by_point[(32, 16)] == pytest.approx(work[3] / 2e9, rel=1e-12)  # neighbours say 2 GFLOP/s, it ran 6
    assert by_point[(16, 8)] == pytest.approx(work[0] / 1e9)  # an edge point stands for itself
    with pytest.raises(ValueError):
        fit_table(dims[:-1], work[:-1], work[:-1])  # a hole in the grid
    # a call of no size took 20 us: the rates are what is left after it, and it prices every call
    work = [1000 * w for w in work]  # 1000 pairs each: a call is a small part of every point
    timed = [2e-5 + w / rates[d] for w, d in zip(work, dims)]
    table, _ = fit_table(dims, work, timed, call_s=2e-5)
    assert table.call_s == 2e-5 and table.rates == pytest.approx([rates[d] for d in dims], rel=1e-9)
    assert table.seconds(work[0], dims[0]) == pytest.approx(timed[0], rel=1e-12)
    # a call time longer than half of some point's (noise) is held to that half
    assert fit_table(dims, work, timed, call_s=1.0)[0].call_s == pytest.approx(min(timed) / 2)


def test_exact_timings_give_the_exact_curve():
    true = ShapeCurve(3e10, (0.0, 64.0), 0.0)
    work = [4.0 * s * s * d for s, d in ATTENTION_DIMS]
    fitted, rms = fit_curve(ATTENTION_DIMS, work, [true.seconds(w, d) for w, d in zip(work, ATTENTION_DIMS)])
    assert rms < 1e-3
    assert fitted.rate == pytest.approx(3e10, rel=1e-3)
    assert fitted.halves[0] < 0.5 and fitted.halves[1] == pytest.approx(64.0, rel=0.02)


def test_an_affine_fit_gives_back_latency_and_bandwidth():
    sizes = [4, 4096, 65536, 1 << 20, 1 << 22]
    fit = fit_affine(sizes, [25e-6 + n / 2e9 for n in sizes])
    assert fit.intercept == pytest.approx(25e-6, rel=1e-9)
    assert fit.rate == pytest.approx(2e9, rel=1e-9)
    assert fit.rms < 1e-12


def test_the_tile_wave_fit_recovers_the_rate_of_a_gpu_that_follows_it():
    shapes = [(m, n, k) for m in (512, 2048, 8192) for n in (512, 2048, 8192) for k in (512, 8192)]
    rate = 989e12 * 0.8
    seconds = [tile_wave_seconds(m, n, k, 132, 256, 128, rate) for m, n, k in shapes]
    got, rms = fit_tile_waves(shapes, seconds, 132, 256, 128)
    assert got == pytest.approx(rate, rel=1e-9) and rms < 1e-9


def test_fits_refuse_too_few_points():
    with pytest.raises(ValueError):
        fit_curve([(1, 2, 3), (2, 3, 4)], [1.0, 2.0], [1.0, 2.0])
    with pytest.raises(ValueError):
        fit_affine([1.0], [1.0])


def fake_ranks(true: GPUSpec, link: tuple[float, float], ew_intercept: float, rng: random.Random,
                cuda_name: str | None = None, sms: int | None = None, gemm_dims=GEMM_DIMS) -> list[dict]:
    """What two ranks would report on a device that follows ``true`` exactly, +-1 % per sample."""
    def result(shapes, sizes, dims, seconds):
        return {"shapes": shapes, "sizes": sizes, "dims": dims, "disturbed": None, "tries": 1,
                "samples": [[noisy(t, rng, 0.01) for _ in range(5)] for t in seconds]}

    eb = true.element_bytes
    gemm = result([[*d, 0] for d in gemm_dims], [2.0 * math.prod(d) for d in gemm_dims], [list(d) for d in gemm_dims],
                  [true.gemm_seconds(*d) for d in gemm_dims])
    att = {}
    for name in ("attention_forward", "attention_backward"):
        table = getattr(true, name)
        work = [4.0 * s * s * d * 256 for s, d in ATTENTION_DIMS] + [4.0 * 8 ** 3]  # 256 pairs a point, as probed
        att[name] = result([[256, s, d] for s, d in ATTENTION_DIMS] + [[1, 8, 8]], work,
                           [list(d) for d in ATTENTION_DIMS] + [[]],  # the last: a call of no size
                           [table.seconds(w, d) for w, d in zip(work, ATTENTION_DIMS)] + [table.call_s])
    ew_sizes = [1e4 * 3 ** i for i in range(8)]
    ew = result([[i, 0, 0, 0] for i in range(8)], ew_sizes, [[] for _ in ew_sizes],
                [ew_intercept + b * eb / 2 / true.kernel_bandwidth for b in ew_sizes])
    copy_sizes = [2.0 ** 25, 2.0 ** 27]
    copy = result([[b / 2] for b in copy_sizes], copy_sizes, [[], []], [b / true.hbm_bandwidth for b in copy_sizes])
    points, seconds = [], []
    for j, (spec, batch) in enumerate(LAYER_SHAPES):  # whole layers: the true price, two micro-batches a sample
        for k, kind in enumerate(("embedding", "block", "head")):
            c = price(layer_work(spec, spec.layer_kinds.index(kind), batch, spec.seq_len, False), true)
            for p, t in enumerate((c.forward, c.backward_input, c.backward_weight)[:2 if kind == "embedding" else 3]):
                points.append([j, k, p])
                seconds.append(IN_FLIGHT * t)
            if true.layer_overheads.no_grad is not None:  # the forward without its graph: a recomputing stage's F
                points.append([j, k, NO_GRAD])
                seconds.append(IN_FLIGHT * price(layer_work(spec, spec.layer_kinds.index(kind), batch, spec.seq_len,
                                                            True), true).forward)
    layer = result(points, [1.0 / IN_FLIGHT] * len(points), [[]] * len(points), seconds)
    sizes = [4, 4096, 65536, 1 << 20, 1 << 22, 1 << 24]
    links = result([[n] for n in sizes], sizes, [[] for _ in sizes], [link[0] + n / link[1] for n in sizes])
    results = {"gemm": gemm, **att, "elementwise_forward": ew, "elementwise_backward": ew, "copy": copy,
               "layer": layer}
    head = {"rank": 0, "results": {**results, "link": links}, "torch": "2.13.0", "cuda_name": cuda_name, "sms": sms}
    return [head, {"rank": 1, "results": results, "torch": "2.13.0"}]


CPU_TRUTH = GPUSpec("core", 1.66e11, 12e9, hbm_bandwidth=9e9, op_overhead_s=140e-6, element_bytes=4,
                    layer_overheads=LayerOverheads(embedding=(60e-6, 80e-6, 0.0), block=(150e-6, 200e-6, 70e-6),
                                                   head=(90e-6, 110e-6, 30e-6),
                                                   per_byte=((5e-10, 0.0, 0.0), (4e-10, 2e-10, 0.0), (1e-10, 5e-11, 0.0)),
                                                   no_grad=((40e-6, 3e-10), (100e-6, 3e-10), (70e-6, 8e-11))),
                    kernel_bandwidth=8e9, gemm_curve=ShapeCurve(8e10, (10.0, 12.0, 4.0), 2e-6),
                    attention_forward=ShapeTable(((16, 64, 256), (8, 16, 64)),
                                                 (1e10, 2e10, 3e10, 2e10, 3e10, 5e10, 3e10, 5e10, 7e10), 1e-5),
                    attention_backward=ShapeTable(((16, 64, 256), (8, 16, 64)),
                                                  (2e9, 8e9, 1e10, 3e9, 1.5e10, 2e10, 5e9, 2e10, 3e10), 3e-5))
MACHINE = {"cpu_name": "a test CPU", "peak_flops": 1.66e11, "memory_bytes": 12e9, "devices": 2}
OPTIONS = {"device": "cpu", "backend": "gloo"}


def test_the_spec_built_from_a_known_device_carries_its_figures():
    spec = build_spec(fake_ranks(CPU_TRUTH, (30e-6, 1.5e9), 4e-6, random.Random(2)), OPTIONS, MACHINE, 12.0)
    gpu = spec.gpu
    assert gpu.gemm_curve is not None  # on a CPU the curve fits better than one rate for every shape
    assert gpu.gemm_curve.rate == pytest.approx(8e10, rel=0.03)
    assert gpu.max_fraction == pytest.approx(8e10 / 1.66e11, rel=0.03)
    for name in ("attention_forward", "attention_backward"):
        assert getattr(gpu, name).axes == getattr(CPU_TRUTH, name).axes
        assert getattr(gpu, name).rates == pytest.approx(getattr(CPU_TRUTH, name).rates, rel=0.03)
        assert getattr(gpu, name).call_s == pytest.approx(getattr(CPU_TRUTH, name).call_s, rel=0.02)
    assert gpu.kernel_bandwidth == pytest.approx(8e9, rel=0.02)
    # in whole layers, per kind and pass: the cost per byte of the memory-bound kernels
    for kind in ("embedding", "block", "head"):
        assert gpu.layer_overheads.memory_of(kind) == pytest.approx(CPU_TRUTH.layer_overheads.memory_of(kind), rel=0.05)
    assert gpu.hbm_bandwidth == pytest.approx(9e9, rel=0.02)
    for kind in ("embedding", "block", "head"):
        assert gpu.layer_overheads.of(kind) == pytest.approx(CPU_TRUTH.layer_overheads.of(kind), rel=0.05, abs=1e-6)
        # the forward of a recomputing stage, fitted as F is: a block's without its graph; the embedding and
        # the head are not checkpointed, so theirs is their forward with its graph
        truth = CPU_TRUTH.layer_overheads
        no_grad = truth.no_grad_of(kind) if kind == "block" else (truth.of(kind)[0], truth.memory_of(kind)[0])
        assert gpu.layer_overheads.no_grad_of(kind) == pytest.approx(no_grad, rel=0.05, abs=1e-6)
    assert gpu.op_overhead_s == pytest.approx((150e-6 + 200e-6 + 70e-6) / 3, rel=0.05)  # the block's mean
    assert gpu.element_bytes == 4 and gpu.peak_flops == 1.66e11
    assert spec.intra.latency == pytest.approx(30e-6, rel=0.05)
    assert spec.intra.bandwidth == pytest.approx(1.5e9, rel=0.02)
    assert spec.gpus_per_node == 2
    # a layer priced with the recovered spec costs what the true device charges, within the noise
    work = layer_work(scale_model(MODEL_PRESETS["gpt2-xl"], 0.05), 1, 2, 48, False)
    for got, want in zip(_times(price(work, gpu)), _times(price(work, CPU_TRUTH))):
        assert got == pytest.approx(want, rel=0.04)
    record = spec.probe
    assert not record.disturbed and record.ranks == 2
    gemm = record.quantity("gemm")
    assert len(gemm.points) == len(GEMM_DIMS) and all(len(p.samples) == 10 for p in gemm.points)
    assert 0.002 < gemm.spread < 0.01  # +-1 % uniform: a relative std of 0.58 %
    assert max(abs(r) for r in gemm.fit_residuals) < 0.03


def test_a_spec_on_a_gpu_keeps_the_tile_model_where_it_fits_and_takes_the_datasheet_peak():
    true = GPUSpec("H100", 989e12, 80e9, max_fraction=0.8, sms=132, hbm_bandwidth=3.0e12, op_overhead_s=20e-6,
                   layer_overheads=LayerOverheads((5e-6, 5e-6, 0.0), (20e-6, 30e-6, 10e-6), (8e-6, 8e-6, 4e-6)),
                   element_bytes=2, kernel_bandwidth=2.5e12,
                   attention_forward=ShapeTable(((16, 64, 256), (8, 16, 64)), (4e14,) * 9),
                   attention_backward=ShapeTable(((16, 64, 256), (8, 16, 64)), (3e14,) * 9))
    shapes = [(m, n, k) for m in (512, 2048, 8192) for n in (512, 2048, 8192) for k in (512, 8192)]
    ranks = fake_ranks(true, (8e-6, 4e10), 3e-6, random.Random(3), "NVIDIA H100 80GB HBM3", 132, shapes)
    spec = build_spec(ranks, {"device": "cuda", "backend": "nccl"}, {**MACHINE, "peak_flops": None}, 20.0)
    assert spec.gpu.gemm_curve is None and spec.gpu.sms == 132
    assert spec.gpu.peak_flops == 989e12
    assert spec.gpu.max_fraction == pytest.approx(0.8, rel=0.02)
    assert spec.gpu.element_bytes == 2 and spec.probe.dtype == "bfloat16"


def test_the_written_spec_loads_back_equal_and_keeps_the_record(tmp_path):
    spec = build_spec(fake_ranks(CPU_TRUTH, (30e-6, 1.5e9), 4e-6, random.Random(4)), OPTIONS, MACHINE, 12.0)
    path = tmp_path / "cluster.json"
    path.write_text(json.dumps(spec.to_dict()))
    again = load_cluster(str(path))
    assert again == spec and hash(again) == hash(spec)
    assert again.probe.quantity("link").points == spec.probe.quantity("link").points
    assert again.to_dict() == json.loads(json.dumps(spec.to_dict()))
    stored = json.loads(path.read_text())["probe"]["quantities"]["gemm"]  # what an error band reads
    assert {"spread", "fit_residuals", "points"} <= set(stored) and "samples" in stored["points"][0]
    assert len(stored["fit_residuals"]) == len(stored["points"])


def _times(cost):
    return cost.forward, cost.backward_input, cost.backward_weight



def test_round_trips_the_other_rank_waited_in_do_not_set_the_link():
    """Three of every five round trips 20x longer (the other rank waited for its core): the median is one
    of them; the lower quartile keeps the link's own latency and bandwidth."""
    ranks = fake_ranks(CPU_TRUTH, (30e-6, 1.5e9), 4e-6, random.Random(4))
    link = ranks[0]["results"]["link"]
    link["samples"] = [[t * (20.0 if i % 5 in (1, 2, 3) else 1.0) for i, t in enumerate(s * 3)] for s in link["samples"]]
    spec = build_spec(ranks, OPTIONS, MACHINE, 12.0)
    assert spec.intra.latency == pytest.approx(30e-6, rel=0.05)
    assert spec.intra.bandwidth == pytest.approx(1.5e9, rel=0.03)


def test_the_layer_overhead_fit_recovers_a_known_line_and_ignores_one_mispriced_shape():
    moved = [5e3, 3e5, 6e5, 6.6e5, 3e6]
    left = [2e-4 + 2e-10 * b for b in moved]
    assert overhead_fit(moved, left) == pytest.approx((2e-4, 2e-10), rel=1e-9)
    # the largest shape's GEMMs priced 1 ms off: its slope from the vanishing shape is off, the median is not
    off = left[:-1] + [left[-1] + 1e-3]
    assert overhead_fit(moved, off) == pytest.approx((2e-4, 2e-10), rel=1e-9)
    # a pass whose bytes buy nothing: no cost per byte, the median is the fixed cost
    assert overhead_fit(moved, [3e-4, 1e-4, 2e-4, 2e-4, 1e-4]) == pytest.approx((2e-4, 0.0), abs=1e-15)
    # no bytes at all (a W): the median
    assert overhead_fit([0.0] * 3, [1e-4, 2e-4, 3e-4]) == pytest.approx((2e-4, 0.0), rel=1e-9)
