"""Monte Carlo over op and link times: a simulated plan re-timed N times with drawn factors.

The model (one sample; ``Spread`` gives the 1-sigmas per op class c):

    op o's time   = t_o · [ sum over its parts p of share_p · exp(sc_c·Z + ss_c·Z_g(p) + sd_c·Z_d(o)) ] · max(0, 1 + si_o·e_o)
    transfer's    = t   · exp(sc_link·Z + ss_link·Z_link) · max(0, 1 + si_link·e)

* Z ~ N(0, 1): one draw per sample shared by every op and transfer, each class scaling it by its own
  ``common`` 1-sigma sc_c: a slow machine (or a cost model off by a constant) slows every op at once,
  so these do not average out over the ops of an iteration. Log-normal, median 1: the point prediction
  stays the band's median when nothing else varies.
* Z_g ~ N(0, 1): one draw per sample and group g (an op type: a layer kind's F, I or W, a measured
  stage's op, a link; see ``terms``), times the class's ``systematic`` 1-sigma ss_c: the same for every
  micro-batch of that op type, so an op type priced too low stays too low all iteration long.
* Z_d ~ N(0, 1): one draw per sample and device d (the device op o runs on), times the class's
  ``device`` 1-sigma sd_c: one rank slow for the whole iteration while the others wait for it. Each
  device's draw is its own, so the iteration (a maximum over dependency paths) is on average longer
  than the one simulated at the median op times.
* e_o ~ N(0, 1): one draw per op and sample, independent, times si_o = sqrt(sum_p share_p^2 · si_c(p)^2)
  (the parts' ``independent`` 1-sigmas combined as independent normals): one op's run-to-run noise.
  Normal (not log-normal) so that a chain of n equal ops with only this noise sums to exactly
  n·t ± sqrt(n)·si·t, the closed form the tests check; clipped at 0 (no op runs backwards).

Draws are seeded: the common, group and device draws from (seed, the group's name), so two plans sampled with
one seed see the same machine and the same op-type errors (common random numbers: what two plans
share cancels when they are compared), and the per-op draws from (seed, the plan). The same seed
gives the same samples, bit for bit.
"""
from __future__ import annotations

import json
import zlib
from dataclasses import dataclass

import numpy as np

from simulator.compile import compile_workload
from simulator.kinds import BY_CODE
from simulator.perturb import makespan_and_busy, rescaled

from .spread import Spread
from .terms import op_terms

NUM_KINDS = len(BY_CODE)
P2P_GROUP = ("p2p",)


@dataclass(frozen=True)
class Samples:
    """Per sample: the iteration time (seconds) and the bubble fraction of one simulated iteration."""

    iteration_time: np.ndarray
    bubble_fraction: np.ndarray


def _key_seed(seed: int, key: object) -> list[int]:
    return [seed, zlib.crc32(repr(key).encode())]


def group_draws(seed: int, key: tuple, samples: int) -> np.ndarray:
    """The N(0, 1) draws of group ``key`` (``("common",)`` for the common factor): one per sample."""
    return np.random.default_rng(_key_seed(seed, ("group",) + tuple(key))).standard_normal(samples)


def plan_key(plan) -> str:
    """What tells two plans apart in the per-op draws' seed."""
    return json.dumps(plan.to_dict(), sort_keys=True, default=str)


def sample_plan(result, spread: Spread, samples: int, seed: int = 0, profile=None) -> Samples:
    """``samples`` re-timings of ``result`` (a ``PlanResult``) under ``spread`` (see the module docstring).

    ``profile``: the measured profile that priced ``result``, if any: its ops become ``compute`` parts
    and its measured links get a group each. The caller sizes the work first (``limits``).
    """
    workload, resolved = result.workload, result.resolved
    compiled = compile_workload(workload)
    n = len(compiled.actions)
    p = len(compiled.bounds) - 1
    terms = op_terms(resolved, len(workload.stages), measured=profile is not None)
    keys = compiled.stage.astype(np.int64) * NUM_KINDS + compiled.code.astype(np.int64)
    unique, first, where = np.unique(keys, return_index=True, return_inverse=True)
    unique_device = compiled.device[first].astype(np.int64)  # a stage runs on one device
    parts = [terms.get((int(k) // NUM_KINDS, int(k) % NUM_KINDS), ()) for k in unique]
    common = group_draws(seed, ("common",), samples)

    # Per part of each unique (stage, kind): its log-factor per sample, exp'd and weighted by its share.
    factor = np.ones((samples, len(unique)))
    independent = np.zeros(len(unique))
    cache: dict[tuple, np.ndarray] = {}
    for u, op_parts in enumerate(parts):
        if not op_parts:
            continue
        total = np.zeros(samples)
        weight = np.zeros(samples)  # the shares summed in the same order: total / weight is exactly 1 with no spread
        var = 0.0
        for cls, group, share in op_parts:
            s = spread.of(cls)
            key = (cls,) + tuple(group)
            if key not in cache:
                cache[key] = group_draws(seed, key, samples) if s.systematic else np.zeros(samples)
            exponent = s.common * common + s.systematic * cache[key]
            if s.device:
                device_key = ("device", int(unique_device[u]))
                if device_key not in cache:
                    cache[device_key] = group_draws(seed, device_key, samples)
                exponent = exponent + s.device * cache[device_key]
            total += share * np.exp(exponent)
            weight += share
            var += (share * s.independent) ** 2
        factor[:, u] = total / weight
        independent[u] = np.sqrt(var)

    # Transfers: the consumer op o's incoming transfer, grouped by link (a measured one) or all together.
    link = spread.of("link")
    consumers = np.nonzero(compiled.remote >= 0)[0]
    measured_links = {(m.src, m.dst) for m in profile.links} if profile is not None else set()
    link_groups = {}
    transfer_group = np.zeros(len(consumers), dtype=np.int64)
    for j, o in enumerate(consumers.tolist()):
        pair = (int(compiled.device[compiled.remote[o]]), int(compiled.device[o]))
        group = ("link", "p2p") + pair if pair in measured_links else ("link",) + P2P_GROUP
        transfer_group[j] = link_groups.setdefault(group, len(link_groups))
    link_factor = np.ones((samples, max(1, len(link_groups))))
    for group, g in link_groups.items():
        draws = group_draws(seed, group, samples) if link.systematic else np.zeros(samples)
        link_factor[:, g] = np.exp(link.common * common + link.systematic * draws)

    noise = np.random.default_rng(_key_seed(seed, ("ops", plan_key(resolved.plan))))
    per_op_sigma = independent[where]
    capacity = workload.network.port_capacity
    times = np.empty(samples)
    bubbles = np.empty(samples)
    transfer_factor = np.ones(n)
    for k in range(samples):
        op_noise = np.maximum(0.0, 1.0 + per_op_sigma * noise.standard_normal(n))
        op_factor = factor[k, where] * op_noise
        if len(consumers):
            link_noise = np.maximum(0.0, 1.0 + link.independent * noise.standard_normal(len(consumers)))
            transfer_factor[consumers] = link_factor[k, transfer_group] * link_noise
        total, busy = makespan_and_busy(rescaled(compiled, op_factor, transfer_factor), capacity)
        times[k] = total
        bubbles[k] = 1.0 - sum(busy) / (p * total) if total > 0 else 0.0
    return Samples(times, bubbles)

