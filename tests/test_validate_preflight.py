"""What `pipeplan validate` refuses before it starts anything: a timeout that is not a finite number of
seconds, --device cuda where torch sees no GPU, --out naming a folder, a plan too big for this machine's
memory. Each is one line, exit code 2, no traceback, and nothing started: the run's TMPDIR stays empty
(torchrun and the ranks would leave their folders there) and the inputs are unchanged."""
import json
import subprocess
import sys
from pathlib import Path

import pytest

from pipeplan.errors import SpecError
from pipeplan.model import MODEL_PRESETS, ModelSpec
from pipeplan.plan import Plan
from pipeplan.validation.footprint import FLOAT32_BYTES, RANK_BASE_BYTES, rank_bytes, stage_bytes
from pipeplan.validation.options import ValidateOptions
from pipeplan.validation.preflight import check_memory, check_plan
from simulator.schedules import build_schedule

REPO = Path(__file__).resolve().parents[1]
PLAN = REPO / "validation" / "plans" / "tiny-1f1b-p2.json"


def validate(tmp_path: Path, *args: str, plan: Path = PLAN, **env: str):
    temp = tmp_path / "tmp"
    temp.mkdir(exist_ok=True)
    before = plan.read_bytes()
    out = subprocess.run([sys.executable, "-m", "pipeplan", "validate", str(plan), *args], capture_output=True,
                         text=True, cwd=tmp_path, timeout=180,
                         env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin", "TMPDIR": str(temp), **env})
    assert out.returncode == 2, (out.stdout, out.stderr)
    assert "Traceback" not in out.stderr and len(out.stderr.strip().splitlines()) == 1, out.stderr
    assert out.stderr.startswith("pipeplan validate: error: "), out.stderr
    assert list(temp.iterdir()) == [] and plan.read_bytes() == before
    return out.stderr


@pytest.mark.parametrize("value", ["inf", "-inf", "nan", "0", "-1", "1e300", "604801"])
def test_a_timeout_that_is_not_a_finite_positive_number_of_seconds_is_refused(tmp_path, value):
    err = validate(tmp_path, f"--timeout={value}")
    assert "--timeout: must be a number of seconds in (0, 604800]" in err


@pytest.mark.parametrize("flag, value, words", [
    ("--calibration-reps", "9" * 30, "at most 1,000 (got 999,999,999,999,999,999,999,999,999,999)"),
    ("--calibration-reps", "1001", "at most 1,000 (got 1,001)"),
    ("--iterations", "100001", "at most 100,000"),
    ("--warmup", "1000000000", "at most 100,000"),
    ("--threads", "257", "at most 256 per rank"),
])
def test_a_count_no_run_can_finish_is_refused_before_torchrun_starts(tmp_path, flag, value, words):
    # --calibration-reps 10^30 used to start torchrun and both ranks, which ran until the watchdog
    err = validate(tmp_path, flag, value)
    assert f"{flag}: must be {words}" in err


def test_the_largest_counts_are_accepted():
    options = ValidateOptions(iterations=100_000, warmup=100_000, calibration_reps=1_000, threads=256)
    assert (options.iterations, options.calibration_reps, options.threads) == (100_000, 1_000, 256)


def test_the_longest_timeout_is_accepted():
    assert ValidateOptions(timeout=604800.0).timeout == 604800.0


def test_device_cuda_where_torch_sees_no_gpu_is_refused(tmp_path):
    pytest.importorskip("torch")
    # CUDA_VISIBLE_DEVICES="" hides every GPU from torch, so this holds on a GPU machine as well.
    err = validate(tmp_path, "--device", "cuda", CUDA_VISIBLE_DEVICES="")
    assert "--device cuda: torch sees no CUDA device here" in err


def test_out_naming_a_folder_is_refused(tmp_path):
    pytest.importorskip("torch")
    folder = tmp_path / "reports"
    folder.mkdir()
    err = validate(tmp_path, "--out", str(folder))
    assert f"--out: {str(folder)!r} is a folder" in err
    assert list(folder.iterdir()) == []


def test_a_plan_too_big_for_this_host_is_refused_naming_the_figures_and_a_scale(tmp_path):
    pytest.importorskip("torch")
    plan = tmp_path / "huge.json"
    # llama3-405b on two ranks: about 200 B parameters each, 8 bytes apiece in float32 with their gradients.
    plan.write_text(json.dumps({"model": "llama3-405b", "cluster": str(REPO / "validation" / "cpu.json"),
                                "schedule": "1f1b", "pp": 2, "num_microbatches": 2, "microbatch_size": 1,
                                "layers_per_stage": [64, 64]}))
    err = validate(tmp_path, plan=plan)
    assert "plan: too big for this machine at --scale 1: 2 ranks need about" in err
    assert "GB of host memory" in err and "--scale" in err.split(";")[-1]


# ------------------------------------------------------------------------------------------- the estimate


def test_the_estimated_parameters_are_those_of_the_real_modules():
    """The parameter count the estimate charges weights and gradients for, against what torch allocates."""
    pytest.importorskip("torch")
    from validator.modules import StageModule

    gated = ModelSpec("gated", 4, 64, 4, 192, 512, 64, kv_heads=2, gated_mlp=True)
    for model in (MODEL_PRESETS["tiny"], gated):
        plan = Plan(model=model.to_dict(), cluster="dgx-a100", schedule="1f1b", pp=2, num_microbatches=4,
                    microbatch_size=2, layers_per_stage=(3, model.num_layers - 1))
        for stage in range(2):
            real = sum(p.numel() for p in StageModule(model, plan.stage_layers(stage)).parameters())
            # the cost model counts norms by their weights; LayerNorm also has a bias of `hidden` values
            assert stage_bytes(model, plan, stage, FLOAT32_BYTES).params == pytest.approx(real, rel=0.01)


def test_live_activations_follow_the_schedule_in_flight_counts():
    """GPipe keeps all m = 8 forwards of a device alive before its first backward; 1F1B on p = 2 devices
    keeps 2 on device 0 and 1 on device 1 (warm-up p - r - 1 forwards, then one more before each
    backward; REFERENCE): the estimates differ by exactly 6 and 7 micro-batches of the stage."""
    model = MODEL_PRESETS["tiny"]
    base = Plan(model="tiny", cluster="dgx-a100", schedule="1f1b", pp=2, num_microbatches=8, microbatch_size=4,
                layers_per_stage=(5, 5))
    one_f_one_b = rank_bytes(model, base, build_schedule("1f1b", 2, 8), on_gpu=False)
    gpipe = rank_bytes(model, base.with_(schedule="gpipe"), build_schedule("gpipe", 2, 8), on_gpu=False)
    for rank, more in ((0, 6), (1, 7)):
        full = stage_bytes(model, base, rank, FLOAT32_BYTES).full
        assert gpipe[rank].device - one_f_one_b[rank].device == pytest.approx(more * full)
        assert gpipe[rank].host - one_f_one_b[rank].host == pytest.approx(more * full)


def _need(scale: float) -> float:
    checked = check_plan(str(PLAN), scale)
    return sum(RANK_BASE_BYTES + r.host for r in rank_bytes(checked.model, checked.plan, checked.schedule, on_gpu=False))


def test_too_little_memory_suggests_the_largest_halved_scale_that_fits():
    checked, options = check_plan(str(PLAN), 1.0), ValidateOptions()
    check_memory(str(PLAN), checked, options, _need(1.0), [])  # exactly enough: accepted
    with pytest.raises(SpecError, match=r"^plan: too big for this machine at --scale 1: 2 ranks need about .* "
                       r"run it with --scale 0\.5$"):
        check_memory(str(PLAN), checked, options, _need(0.5), [])
    with pytest.raises(SpecError, match=r"run it with --scale 0\.25$"):
        check_memory(str(PLAN), checked, options, _need(0.5) - 1, [])
    # The widths shrink with --scale, the 0.4 GB each rank needs of its own do not.
    with pytest.raises(SpecError, match=r"free memory or run a plan with fewer devices$"):
        check_memory(str(PLAN), checked, options, 2 * RANK_BASE_BYTES, [])


def test_a_gpu_short_of_memory_is_named():
    checked = check_plan(str(PLAN), 1.0)
    need = rank_bytes(checked.model, checked.plan, checked.schedule, on_gpu=True)
    options = ValidateOptions(device="cuda")
    check_memory(str(PLAN), checked, options, None, [int(need[0].device + need[1].device)])  # both on GPU 0
    with pytest.raises(SpecError, match=r"^plan: too big for this machine at --scale 1: GPU 1 needs about \d+ MB "
                       r"and has \d+ MB free"):
        check_memory(str(PLAN), checked, options, None, [10 ** 12, int(need[1].device) - 1])
