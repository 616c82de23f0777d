"""The splits people use today, to score against: Megatron's uniform split, DeepSpeed's ``parameters``
split, and for small models the brute-force optimum (every split, judged by the simulator)."""
from __future__ import annotations

import itertools
import math

from ..model import ModelSpec
from ..plan import even_split

UNIFORM, PARAMETERS, BRUTE_FORCE = "megatron-uniform", "deepspeed-parameters", "brute-force"
BRUTE_FORCE_MAX_SPLITS = 200  # simulations a brute force may spend; larger models skip it


def megatron_uniform(model: ModelSpec, num_stages: int) -> tuple[int, ...]:
    """Equal transformer blocks per stage, the embedding with the first stage, the head with the last.

    Megatron asks num_layers % stages == 0; when it does not divide, the extra blocks go to the first
    stages (as ``even_split`` does) rather than refusing.
    """
    blocks = list(even_split(model.num_layers, num_stages)) if num_stages <= model.num_layers else None
    if blocks is None:
        return even_split(model.num_pipeline_layers, num_stages)
    blocks[0] += 1
    blocks[-1] += 1
    return tuple(blocks)


def linear_partition(weights: list[float], parts: int) -> tuple[int, ...]:
    """Contiguous split into ``parts`` non-empty pieces minimising the heaviest piece (dynamic programming).

    DeepSpeed's ``partition_method="parameters"`` balances parameter counts the same way; ties go to
    the split with the earliest cuts.
    """
    n = len(weights)
    prefix = [0.0]
    for w in weights:
        prefix.append(prefix[-1] + w)
    # best[k][i]: the lightest heaviest piece splitting the first i weights into k pieces.
    best = [[math.inf] * (n + 1) for _ in range(parts + 1)]
    cut = [[0] * (n + 1) for _ in range(parts + 1)]
    best[0][0] = 0.0
    for k in range(1, parts + 1):
        for i in range(k, n - (parts - k) + 1):
            for j in range(k - 1, i):
                value = max(best[k - 1][j], prefix[i] - prefix[j])
                if value < best[k][i]:
                    best[k][i], cut[k][i] = value, j
    sizes, i = [], n
    for k in range(parts, 0, -1):
        j = cut[k][i]
        sizes.append(i - j)
        i = j
    return tuple(reversed(sizes))


def deepspeed_parameters(model: ModelSpec, num_stages: int, seq_len: int) -> tuple[int, ...]:
    params = [model.layer_cost(i, 1, seq_len).params for i in range(model.num_pipeline_layers)]
    return linear_partition(params, num_stages)


def all_splits(num_layers: int, num_stages: int) -> list[tuple[int, ...]] | None:
    """Every contiguous split, or None when there are more than the brute force may simulate."""
    if num_stages > num_layers or math.comb(num_layers - 1, num_stages - 1) > BRUTE_FORCE_MAX_SPLITS:
        return None
    splits = []
    for cuts in itertools.combinations(range(1, num_layers), num_stages - 1):
        bounds = (0, *cuts, num_layers)
        splits.append(tuple(bounds[i + 1] - bounds[i] for i in range(num_stages)))
    return splits
