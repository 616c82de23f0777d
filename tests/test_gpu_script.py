"""validation/gpu/run.sh without a GPU: shellcheck-clean, a clean refusal here, and its whole course on a
stand-in machine.

The stand-in puts fake ``nvidia-smi`` and ``nvidia-cuda-mps-control`` first on PATH and runs the
script with a fake ``PYTHON`` whose ``pipeplan validate`` writes a recorded CPU run as its report (the
real validator's CUDA paths are unit-tested in test_validator_cuda.py). What is checked is the
script's own logic: which runs it starts on one and on two GPUs, that the MPS daemon it starts is
stopped, the budget skipping steps, and the records, table and chart it leaves (through the real
validation/gpu/table.py).
"""
import json
import os
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "validation" / "gpu" / "run.sh"
RECORD = REPO / "validation" / "records" / "cpu-gloo-tiny-1f1b-p2.json"

FAKE_PYTHON = r'''#!{python}
import json, os, shutil, sys
args = sys.argv[1:]
log = os.environ["FAKE_LOG"]
with open(log, "a") as handle:
    handle.write(" ".join(args) + "\n")
if args and args[0].endswith(".py"):  # table.py: the real thing
    os.execv({python!r}, [{python!r}, *args])
if args[:1] == ["-c"]:
    print("torch 2.13.0 cuda 12.8 nccl (2, 28, 3)")
    sys.exit(0)
if args[:3] == ["-m", "pipeplan", "probe"]:
    sys.exit(1)  # not in this checkout
if args[:3] == ["-m", "pipeplan", "validate"]:
    plan = os.path.abspath(args[3])
    value = lambda flag: args[args.index(flag) + 1]
    report = json.load(open({record!r}))
    report["run"].update(plan_file=plan, base_dir=os.path.dirname(plan), scale=float(value("--scale")),
                         device="NVIDIA H200 (stand-in)", backend=value("--backend"))
    json.dump(report, open(value("--out"), "w"))
    shutil.copy({figure!r}, value("--gantt"))
    print("tiny 1f1b p=2 ... (a recorded CPU run standing in)")
    sys.exit(0)
sys.exit(3)
'''

FAKE_SMI = r'''#!/bin/sh
if [ "$1" = "-L" ]; then
    i=0; while [ $i -lt "$FAKE_GPUS" ]; do echo "GPU $i: NVIDIA H200 (UUID: GPU-$i)"; i=$((i + 1)); done
elif [ "$1" = "--query-gpu=name" ]; then
    echo "NVIDIA H200"
else
    echo "a stand-in nvidia-smi"
fi
'''

FAKE_MPS = r'''#!/bin/sh
if [ "$1" = "-d" ]; then echo "start $CUDA_MPS_PIPE_DIRECTORY" >> "$FAKE_LOG"; else read -r cmd; echo "$cmd" >> "$FAKE_LOG"; fi
'''


def _executable(path: Path, text: str) -> None:
    path.write_text(text)
    path.chmod(path.stat().st_mode | stat.S_IEXEC)


def stand_in(tmp_path: Path, gpus: int, budget: int = 560, mps: bool = True) -> tuple[subprocess.CompletedProcess, str]:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    _executable(bin_dir / "python-gpu", FAKE_PYTHON.format(python=sys.executable, record=str(RECORD),
                                                           figure=str(REPO / "figures" / "validation_zb-h1_cpu.png")))
    _executable(bin_dir / "nvidia-smi", FAKE_SMI)
    if mps:
        _executable(bin_dir / "nvidia-cuda-mps-control", FAKE_MPS)
    (tmp_path / "records").mkdir()
    log = tmp_path / "calls.log"
    env = {"PATH": f"{bin_dir}:/usr/bin:/bin", "PYTHON": str(bin_dir / "python-gpu"), "FAKE_GPUS": str(gpus),
           "FAKE_LOG": str(log), "TMPDIR": str(tmp_path), "PIPEPLAN_GPU_BUDGET_S": str(budget),
           "PIPEPLAN_GPU_RECORDS": str(tmp_path / "records"), "PIPEPLAN_GPU_FIGURE": str(tmp_path / "gantt.png")}
    out = subprocess.run(["bash", str(SCRIPT)], capture_output=True, text=True, env=env, timeout=300)
    return out, log.read_text() if log.exists() else ""


@pytest.mark.skipif(shutil.which("shellcheck") is None, reason="shellcheck is not installed (apt-get install shellcheck)")
def test_the_script_is_shellcheck_clean():
    out = subprocess.run(["shellcheck", str(SCRIPT)], capture_output=True, text=True)
    assert out.returncode == 0, out.stdout


@pytest.mark.skipif(shutil.which("nvidia-smi", path="/usr/bin:/bin") is not None,
                    reason="this machine has nvidia-smi: run the script itself")
def test_without_a_gpu_it_says_so_and_runs_nothing(tmp_path):
    out = subprocess.run(["bash", str(SCRIPT)], capture_output=True, text=True, timeout=60,
                         env={"PATH": "/usr/bin:/bin", "TMPDIR": str(tmp_path)})
    assert out.returncode == 2
    assert out.stderr == "run.sh: no NVIDIA GPU here (nvidia-smi not found); nothing was run\n"
    assert list(tmp_path.iterdir()) == []  # its run folder is gone too


def test_on_one_gpu_it_validates_through_gloo_and_mps_and_records_them(tmp_path):
    out, calls = stand_in(tmp_path, gpus=1)
    assert out.returncode == 0, out.stderr
    assert "pipeplan probe is not in this checkout" in out.stderr and "one GPU: no NCCL runs" in out.stderr
    validations = [line for line in calls.splitlines() if line.startswith("-m pipeplan validate")]
    assert len(validations) == 4 and all("--device cuda --backend gloo" in v for v in validations)
    lines = calls.splitlines()
    started, stopped = lines.index(next(l for l in lines if l.startswith("start "))), lines.index("quit")
    assert [l.split()[3].rsplit("/", 1)[1] for l in lines[started + 1:stopped]] == [
        "llama3-8b-1f1b-p2.json", "llama3-8b-zb-h1-p2.json"]  # the MPS runs, between the daemon's start and stop
    records = sorted(p.name for p in (tmp_path / "records").iterdir())
    assert records == ["nvidia-h200-gloo-llama3-8b-1f1b-p2.json", "nvidia-h200-gloo-llama3-8b-zb-h1-p2.json",
                       "nvidia-h200-mps-llama3-8b-1f1b-p2.json", "nvidia-h200-mps-llama3-8b-zb-h1-p2.json",
                       "nvidia-h200-table.md"]
    table = (tmp_path / "records" / "nvidia-h200-table.md").read_text()
    assert table.startswith("GPU validation on NVIDIA H200 (stand-in)") and table.count("\n| ") == 5
    record = json.loads((tmp_path / "records" / "nvidia-h200-gloo-llama3-8b-1f1b-p2.json").read_text())
    assert record["run"]["plan_file"] == "gpu/plans/llama3-8b-1f1b-p2.json" and "tolerance" in record
    assert (tmp_path / "gantt.png").read_bytes() == (REPO / "figures" / "validation_zb-h1_cpu.png").read_bytes()


def test_on_two_gpus_it_adds_nccl_with_a_rank_per_gpu(tmp_path):
    out, calls = stand_in(tmp_path, gpus=2, mps=False)
    assert out.returncode == 0, out.stderr
    assert "no nvidia-cuda-mps-control here; no MPS runs" in out.stderr
    nccl = [line for line in calls.splitlines() if "--backend nccl" in line]
    assert [line.split()[3].rsplit("/", 1)[1] for line in nccl] == ["llama3-8b-1f1b-p2.json",
                                                                   "gpt2-xl-interleaved-p2.json"]


def test_steps_that_do_not_fit_the_budget_are_skipped_saying_so(tmp_path):
    # A validation may take 110 s: with 100 s in all, none starts, and nothing is recorded (exit 1).
    out, calls = stand_in(tmp_path, gpus=1, budget=100)
    assert out.returncode == 1, out.stderr
    assert not any(line.startswith("-m pipeplan validate") for line in calls.splitlines())
    assert "run.sh: skipped gloo-llama3-8b-zb-h1-p2: " in out.stderr and "it may take 110 s" in out.stderr
    assert "run.sh: no run finished; nothing recorded" in out.stderr
    assert list((tmp_path / "records").iterdir()) == []


def test_a_machine_whose_torch_sees_no_gpu_is_refused(tmp_path):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    _executable(bin_dir / "nvidia-smi", FAKE_SMI)
    env = {"PATH": f"{bin_dir}:/usr/bin:/bin", "FAKE_GPUS": "1", "TMPDIR": str(tmp_path),
           "PYTHON": sys.executable, "CUDA_VISIBLE_DEVICES": "", "PYTHONPATH": os.environ.get("PYTHONPATH", "")}
    out = subprocess.run(["bash", str(SCRIPT)], capture_output=True, text=True, env=env, timeout=300)
    assert out.returncode == 2
    assert out.stderr.strip().endswith("torch here sees no CUDA device (a CPU build of torch?); install a CUDA build "
                                       "and run again")
