"""Where a rank computes, and how its boundary tensors reach the other ranks.

* ``compute_device``: CPU (float32), or the rank's GPU (bfloat16): GPU ``local_rank % GPUs``, so several
  ranks share one GPU when there are fewer GPUs than ranks (they time-slice it, or share its SMs under
  NVIDIA MPS). NCCL refuses two ranks on one GPU (up to NCCL 2.29, shared REFERENCE), so NCCL needs a
  GPU per rank; gloo takes any number.
* ``stages_through_host``: gloo moves CPU tensors only, so with CUDA compute a boundary tensor is copied
  to host memory before its send and back to the GPU after its receive (``to_host`` / ``to_device``,
  used by ``runtime.Channel`` and the link calibration). NCCL sends GPU tensors as they are.

Every check here raises a one-line ``SpecError`` naming the flag, before any process group exists.
"""
from __future__ import annotations

import torch

from pipeplan.errors import SpecError


def compute_device(device: str, backend: str, local_rank: int, local_world: int) -> tuple[torch.device, torch.dtype]:
    """This rank's compute device and dtype for ``--device`` / ``--backend`` (binding the rank to its GPU)."""
    if device == "cuda":
        if not torch.cuda.is_available():
            raise SpecError("--device cuda: torch sees no CUDA device here; use --device cpu, or a CUDA build "
                            "of torch on a machine with a GPU")
        gpus = torch.cuda.device_count()
        if backend == "nccl" and local_world > gpus:
            raise SpecError(
                f"--backend nccl: {local_world} ranks on this node but {gpus} GPU(s); NCCL "
                "refuses two ranks on one GPU, use --backend gloo (it stages boundary tensors through host memory)"
            )
        chosen = torch.device("cuda", local_rank % gpus)
        torch.cuda.set_device(chosen)
        return chosen, torch.bfloat16
    if backend == "nccl":
        raise SpecError("--backend nccl needs --device cuda")
    return torch.device("cpu"), torch.float32


def stages_through_host(backend: str, device: torch.device) -> bool:
    """True when boundary tensors go through host memory: gloo with CUDA compute."""
    return backend == "gloo" and device.type == "cuda"


def to_host(tensor: torch.Tensor) -> torch.Tensor:
    """A boundary tensor's host copy, for a backend that sends CPU tensors only (a synchronous copy)."""
    return tensor.cpu()


def to_device(tensor: torch.Tensor, device: torch.device) -> torch.Tensor:
    """A received host tensor on the rank's compute device (a synchronous copy)."""
    return tensor.to(device, non_blocking=False)
