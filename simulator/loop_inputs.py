"""What the event loop reads per op: how many producers it waits for, each producer's consumers
(with the transfer between them), and each op's lane."""
from __future__ import annotations

from bisect import bisect_right

import numpy as np

from .compile import Compiled


def consumer_lists(c: Compiled, done: np.ndarray | None = None, unstarted: np.ndarray | None = None
                   ) -> tuple[list[int] | dict[int, int], dict[int, list[tuple[int, tuple | None]]]]:
    """Per op, how many producers it waits for, and per producer its consumers in (consumer id, rule)
    order, each with the transfer spec when the consumer is on another device (None: local). Ops
    ``done`` before the loop starts, and ops nothing consumes, are not in the mapping: they deliver
    nothing (any more). Given ``unstarted`` (the ops not started before the loop's cut, in id order:
    every consumer of an op not done is among them), only those ops are counted, in a dict."""
    if unstarted is None:
        rows, cols = np.nonzero(c.producers >= 0)  # row-major: consumer order, then rule order
        producers = c.producers[rows, cols]
        pending: list[int] | dict[int, int] = np.bincount(rows, minlength=len(c.actions)).tolist()
    else:
        table = c.producers[unstarted]
        picked, cols = np.nonzero(table >= 0)
        rows, producers = unstarted[picked], table[picked, cols]
        pending = dict(zip(unstarted.tolist(), np.bincount(picked, minlength=len(unstarted)).tolist()))
    if done is not None:
        open_rows = ~done[producers]
        rows, producers = rows[open_rows], producers[open_rows]
    spec_index = np.where(producers == c.remote[rows], c.edge[rows], -1)
    consumers: dict[int, list[tuple[int, tuple | None]]] = {}
    specs = c.edge_spec + [None]  # index -1 picks None
    for prod, consumer, spec in zip(producers.tolist(), rows.tolist(), spec_index.tolist()):
        listed = consumers.get(prod)
        if listed is None:
            consumers[prod] = [(consumer, specs[spec])]
        else:
            listed.append((consumer, specs[spec]))
    for prod, buckets in c.early.items():  # delivered before the producer ends, when it starts
        early = {o for o, _ in buckets}
        consumers[prod] = [(o, spec) for o, spec in consumers.get(prod, ()) if o not in early]
    return pending, consumers


class LaneOf(dict):
    """Op id -> its lane, looked up in the lane bounds on first ask (ids run lane-major): what the
    loop from a cut needs for its few thousand ops, without a list over all of them."""

    def __init__(self, lane_bounds: list[int]):
        super().__init__()
        self.lane_bounds = lane_bounds

    def __missing__(self, o: int) -> int:
        k = self[o] = bisect_right(self.lane_bounds, o) - 1
        return k
