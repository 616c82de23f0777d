"""Real execution of a pipeplan plan with torch.distributed: one rank per pipeline device runs its
action list from the shared schedule IR, times every op, calibrates, and reports to rank 0.

Start it with torchrun (``python -m torch.distributed.run ... -m validator PLAN.json``) or through
``pipeplan validate``. Importing this package does not import torch; its modules do.
"""
