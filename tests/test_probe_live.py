"""A short live probe on this machine (two ranks, one sample per point and rank): what it measured is
physically possible by facts from outside the probe, and its spec loads back as a cluster.

Outside facts, from /proc/cpuinfo (``pipeplan.probe.machine``): no GEMM beats the core's peak (vector
lanes x 2 for a fused multiply-add x 2 FMA pipes x clock); no single-threaded copy, and no message
between two ranks (a socket copies it through a core), moves more bytes per second than a core's
load and store units do (two loads and one store of one vector register per cycle, Intel since
Haswell and AMD since Zen 2; fewer on older cores)."""
import json

import pytest

from pipeplan.cluster import load_cluster
from pipeplan.probe.machine import core_peak_flops, cpu_flags, max_clock_hz, vector_bytes

torch = pytest.importorskip("torch")


@pytest.fixture(scope="module")
def spec():
    from pipeplan.probe.run import ProbeOptions, check, probe

    options = ProbeOptions(reps=1, link_reps=3)
    check(options)
    return probe(options)


def test_no_gemm_beats_the_cores_peak(spec):
    peak = core_peak_flops()
    if peak is None:
        pytest.skip("/proc/cpuinfo gives no clock here")
    gemm = spec.probe.quantity("gemm")
    best = max(2 * p.shape[0] * p.shape[1] * p.shape[2] / min(p.samples) for p in gemm.points)
    assert 1e8 < best < peak, (best, peak)
    assert spec.gpu.peak_flops == pytest.approx(peak) and spec.gpu.max_fraction <= 1


def test_no_copy_or_message_outruns_a_cores_load_and_store_units(spec):
    clock = max_clock_hz()
    if clock is None:
        pytest.skip("/proc/cpuinfo gives no clock here")
    bound = 3 * vector_bytes(cpu_flags()) * clock
    copy = spec.probe.quantity("copy")
    best_copy = max(2 * p.shape[0] / min(p.samples) for p in copy.points)  # read + write of each byte
    assert best_copy < bound and spec.gpu.hbm_bandwidth < bound, (best_copy, spec.gpu.hbm_bandwidth, bound)
    link = spec.probe.quantity("link")
    biggest = max(link.points, key=lambda p: p.shape[0])
    assert biggest.shape[0] / min(biggest.samples) < bound
    assert spec.intra.latency >= 0 and spec.gpu.op_overhead_s >= 0


def test_the_record_holds_every_rank_and_the_spec_loads_back(spec, tmp_path):
    record = spec.probe
    assert record.ranks == 2 and record.dtype == "float32" and record.threads == 1
    gemm = record.quantity("gemm")
    assert all(len(p.samples) == 2 for p in gemm.points)  # one pass on each of the two ranks
    assert len(record.quantity("link").points) == 6 and all(len(p.samples) == 3 for p in record.quantity("link").points)
    assert record.disturbed == any(q.disturbed for _, q in record.quantities)
    path = tmp_path / "probed.json"
    path.write_text(json.dumps(spec.to_dict()))
    assert load_cluster(str(path)) == spec
