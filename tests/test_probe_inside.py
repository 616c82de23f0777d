"""A layer's remainder is its measured time less its GEMMs and attention core as they ran inside it.

A device whose GEMMs and attention cores run 20 % faster inside layers than the kernel benchmarks
price them (a different cache and load state a few seconds later): the layers' fixed cost and cost
per byte come back as built when the probe's ``inside`` times are there, and do not without them.
"""
import random
from dataclasses import replace

import pytest

from pipeplan.costs import layer_work, price
from pipeplan.probe.layer import IN_FLIGHT, KINDS, LAYER_SHAPES, NO_GRAD
from pipeplan.probe.spec import build_spec

from test_probe_fit import CPU_TRUTH, MACHINE, OPTIONS, fake_ranks  # tests/ is on sys.path

FASTER = 0.8  # the kernels inside layers, against their price


def _ranks(with_inside: bool) -> list[dict]:
    ranks = fake_ranks(CPU_TRUTH, (30e-6, 1.5e9), 4e-6, random.Random(3))
    bare = replace(CPU_TRUTH, layer_overheads=None, op_overhead_s=0.0, kernel_bandwidth=1e30)
    for rank in ranks:
        layer = dict(rank["results"]["layer"])
        samples, inside = [], []
        for (j, k, p), got in zip(layer["shapes"], layer["samples"]):
            spec, batch = LAYER_SHAPES[j]
            work = layer_work(spec, spec.layer_kinds.index(KINDS[k]), batch, spec.seq_len, p == NO_GRAD)
            c = price(work, bare)
            kernels = IN_FLIGHT * (c.forward, c.backward_input, c.backward_weight, c.forward)[p]
            # the layer ran its kernels at FASTER x their price, the rest as the true device charges it
            samples.append([t - (1 - FASTER) * kernels for t in got])
            inside.append([[FASTER * kernels, 0.0]] * len(got))
        layer["samples"] = samples
        if with_inside:
            layer["inside"] = inside
        rank["results"] = {**rank["results"], "layer": layer}
    return ranks


def test_with_the_kernels_as_they_ran_the_layer_costs_come_back():
    gpu = build_spec(_ranks(True), OPTIONS, MACHINE, 12.0).gpu
    for kind in KINDS:
        assert gpu.layer_overheads.of(kind) == pytest.approx(CPU_TRUTH.layer_overheads.of(kind), rel=0.05, abs=1e-6)
        assert gpu.layer_overheads.memory_of(kind) == pytest.approx(CPU_TRUTH.layer_overheads.memory_of(kind),
                                                                    rel=0.05, abs=1e-12)


def test_with_priced_kernels_the_block_forward_comes_back_wrong():
    gpu = build_spec(_ranks(False), OPTIONS, MACHINE, 12.0).gpu
    true_fixed, true_per_byte = CPU_TRUTH.layer_overheads.block[0], CPU_TRUTH.layer_overheads.memory_of("block")[0]
    fixed, per_byte = gpu.layer_overheads.block[0], gpu.layer_overheads.memory_of("block")[0]
    assert abs(fixed / true_fixed - 1) > 0.2 or abs(per_byte / true_per_byte - 1) > 0.2
