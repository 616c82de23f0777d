"""The validator's CUDA code paths, run on a machine without CUDA: torch.cuda is replaced where a path
touches it, so what each path asks of CUDA, and what it does with the answers, is checked here.

* the rank's device: refused in one line without CUDA; GPU local_rank % GPUs with bfloat16; NCCL refused
  with fewer GPUs than ranks on the node (it refuses two ranks on one GPU), gloo shares one GPU;
* gloo with CUDA compute stages every boundary tensor through host memory, on both ends;
* the CUDA clock turns events into host seconds through the reference event of the iteration;
* the end-to-end refusals: ``pipeplan validate --device cuda`` and ``python -m validator --device cuda``
  on a host where torch sees no GPU say so in one line (exit 2 for the launcher, before anything runs).
"""
import subprocess
import sys
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")

from pipeplan.errors import SpecError  # noqa: E402
from simulator.ir import Action  # noqa: E402
from validator import devices, runtime, timing  # noqa: E402
from validator.gather import device_name  # noqa: E402
from validator.runtime import Channel, Transfer  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
PLAN = REPO / "validation" / "plans" / "tiny-1f1b-p2.json"


class FakeCuda:
    """What the validator asks of ``torch.cuda``, answered for ``count`` GPUs and recorded."""

    def __init__(self, count: int):
        self.count, self.bound, self.synced = count, [], []

    def is_available(self):
        return self.count > 0

    def device_count(self):
        return self.count

    def set_device(self, device):
        self.bound.append(device)

    def synchronize(self, device=None):
        self.synced.append(device)

    def get_device_name(self, device=None):
        return "NVIDIA H200"


@pytest.fixture
def cuda(monkeypatch):
    def install(count: int) -> FakeCuda:
        fake = FakeCuda(count)
        for name in ("is_available", "device_count", "set_device", "synchronize", "get_device_name"):
            monkeypatch.setattr(torch.cuda, name, getattr(fake, name))
        return fake
    return install


def test_cuda_asked_for_where_there_is_none_is_refused_in_one_line(cuda):
    cuda(0)
    with pytest.raises(SpecError, match=r"^--device cuda: torch sees no CUDA device here; use --device cpu"):
        devices.compute_device("cuda", "gloo", 0, 2)


def test_several_gloo_ranks_share_one_gpu_in_bfloat16(cuda):
    fake = cuda(1)
    chosen = [devices.compute_device("cuda", "gloo", r, 3) for r in range(3)]
    assert chosen == [(torch.device("cuda", 0), torch.bfloat16)] * 3
    assert fake.bound == [torch.device("cuda", 0)] * 3


def test_nccl_takes_a_gpu_per_rank_and_refuses_fewer(cuda):
    cuda(2)
    assert [devices.compute_device("cuda", "nccl", r, 2)[0] for r in range(2)] == [torch.device("cuda", 0),
                                                                                    torch.device("cuda", 1)]
    with pytest.raises(SpecError, match=r"^--backend nccl: 4 ranks on this node but 2 GPU\(s\); NCCL refuses two "
                                        r"ranks on one GPU, use --backend gloo"):
        devices.compute_device("cuda", "nccl", 0, 4)


def test_cpu_computes_in_float32_and_nccl_needs_cuda():
    assert devices.compute_device("cpu", "gloo", 1, 2) == (torch.device("cpu"), torch.float32)
    with pytest.raises(SpecError, match="^--backend nccl needs --device cuda"):
        devices.compute_device("cpu", "nccl", 0, 2)


def test_only_gloo_with_cuda_stages_through_host_memory():
    gpu, cpu = torch.device("cuda", 0), torch.device("cpu")
    assert devices.stages_through_host("gloo", gpu)
    assert not devices.stages_through_host("nccl", gpu) and not devices.stages_through_host("gloo", cpu)


class FakeWork:
    def wait(self, timeout=None):
        return True


def test_a_staged_channel_sends_a_host_copy_and_hands_the_receiver_a_device_copy(monkeypatch):
    gpu = torch.device("cuda", 0)
    sent, posted, moved = [], [], []
    monkeypatch.setattr(runtime.dist, "isend", lambda t, dst, group=None, tag=0: sent.append((t, dst, tag)) or FakeWork())
    monkeypatch.setattr(runtime.dist, "irecv", lambda t, src, group=None, tag=0: posted.append((t, src, tag)) or FakeWork())
    monkeypatch.setattr(devices, "to_device", lambda t, device: moved.append((t, device)) or ("on", device))

    class GpuTensor:  # stands for a CUDA tensor: only its host copy may reach gloo
        def detach(self):
            return self

        def cpu(self):
            return torch.ones(2, 3)

    transfer = Transfer(Action(0, "F", 0), Action(1, "F", 0), 0, 1, "fwd", 0)
    sender = Channel(0, 1, None, [transfer], (2, 3), torch.float32, gpu, staged=True, prepost=True, timeout=5)
    sender.send(transfer.producer, transfer.consumer, GpuTensor())
    (payload, dst, tag), = sent
    assert payload.device.type == "cpu" and torch.equal(payload, torch.ones(2, 3)) and (dst, tag) == (1, 0)
    receiver = Channel(0, 1, None, [transfer], (2, 3), torch.float32, gpu, staged=True, prepost=True, timeout=5)
    receiver.start_iteration()
    (buffer, src, _), = posted
    assert buffer.device.type == "cpu" and tuple(buffer.shape) == (2, 3) and src == 0
    assert receiver.receive(transfer.producer, transfer.consumer) == ("on", gpu)
    assert moved == [(buffer, gpu)]


def test_the_cuda_clock_reads_events_against_the_iterations_reference(cuda, monkeypatch):
    fake = cuda(1)
    recorded = []

    class Event:  # recorded at GPU time ``at``; elapsed_time in milliseconds, as torch's
        def __init__(self, enable_timing=False):
            assert enable_timing
            self.at = None

        def record(self):
            self.at = 0.25 * len(recorded)
            recorded.append(self)

        def elapsed_time(self, later):
            return (later.at - self.at) * 1e3

    monkeypatch.setattr(torch.cuda, "Event", Event)
    monkeypatch.setattr(timing.time, "perf_counter", lambda: 100.0)
    clock = timing.make_clock(torch.device("cuda", 0))
    assert isinstance(clock, timing.CudaClock)
    clock.begin_iteration()  # reference at GPU time 0 is host time 100 s
    marks = [clock.mark(), clock.mark()]
    assert clock.resolve(marks) == [100.25, 100.5]
    assert fake.synced == [torch.device("cuda", 0)] * 3  # before and after the reference, before reading


def test_a_cuda_device_is_named_by_its_gpu(cuda):
    cuda(1)
    assert device_name(torch.device("cuda", 0)) == "NVIDIA H200"


def _run(args: list[str], **env: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *args], capture_output=True, text=True, cwd=REPO, timeout=300,
                          env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin", "CUDA_VISIBLE_DEVICES": "", **env})


def test_pipeplan_validate_refuses_cuda_without_a_gpu_before_anything_runs():
    out = _run(["-m", "pipeplan", "validate", str(PLAN), "--device", "cuda", "--backend", "nccl"])
    assert out.returncode == 2 and out.stderr.strip().count("\n") == 0 and "Traceback" not in out.stderr
    assert out.stderr.startswith("pipeplan validate: error: --device cuda: torch sees no CUDA device here")


def test_a_rank_started_by_hand_refuses_cuda_without_a_gpu_in_one_line():
    # As on a multi-node run (README: torchrun ... -m validator): no process group is formed, exit code 2.
    out = _run(["-m", "validator", str(PLAN), "--device", "cuda"], WORLD_SIZE="2", LOCAL_WORLD_SIZE="2", RANK="0",
               LOCAL_RANK="0")
    assert out.returncode == 2, out.stderr
    assert out.stderr.strip() == ("python -m validator: error: --device cuda: torch sees no CUDA device here; use "
                                  "--device cpu, or a CUDA build of torch on a machine with a GPU")
