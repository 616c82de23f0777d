"""The probe's ping-pong posts every receive before its message is sent, as the validator's gloo
channels do (``validator.runtime.Channel.start_iteration`` posts an iteration's receives up front).

Each rank's calls are logged in order by an in-memory ``dist`` (two threads); the expected orders are
counted by hand from that rule."""
import queue
import threading

import pytest

from pipeplan.probe.links import SIZES, ping_pong

torch = pytest.importorskip("torch")
REPS = 3
N = REPS * len(SIZES)  # timed round trips


class _Work:
    def __init__(self, done):
        self.done = done

    def wait(self, timeout=None):
        self.done()
        return True


def _dist(me, boxes, log):
    class Dist:
        @staticmethod
        def isend(tensor, peer):
            log.append(("send", tensor.numel()))
            boxes[peer].put(tensor.clone())
            return _Work(lambda: None)

        @staticmethod
        def irecv(tensor, peer):
            log.append(("recv", tensor.numel()))
            return _Work(lambda: tensor.copy_(boxes[me].get(timeout=10)))

    return Dist


def _run(prepost):
    boxes, logs, out = {0: queue.Queue(), 1: queue.Queue()}, {0: [], 1: []}, {}

    def rank(r):
        out[r] = ping_pong(torch, _dist(r, boxes, logs[r]), r, torch.device("cpu"), False, REPS, 10.0, 7,
                           prepost=prepost)

    threads = [threading.Thread(target=rank, args=(r,)) for r in (0, 1)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    return logs, out


def test_every_receive_is_posted_before_its_message_is_sent():
    logs, out = _run(prepost=True)
    zero, one = logs[0], logs[1]
    # rank 0: an untimed round trip (post the token's reply, send the token), then per sample the
    # reply's receive posted right before the ping
    assert zero[:2] == [("recv", 1), ("send", 1)]
    assert [kind for kind, _ in zero[2:]] == ["recv", "send"] * N
    assert all(zero[2 + 2 * j][1] == zero[3 + 2 * j][1] for j in range(N))
    # rank 1: the token's receive, the first ping's receive posted before the token goes back, then
    # before the j-th pong the receive of ping j + 1 (none after the last): j + 3 receives posted
    # before pong j (the token's, pings 0 .. j + 1), N + 1 before the last
    assert one[:3] == [("recv", 1), ("recv", one[1][1]), ("send", 1)]
    pongs = [i for i, (kind, _) in enumerate(one) if kind == "send"][1:]
    assert len(pongs) == N
    posted = [sum(1 for kind, _ in one[:i] if kind == "recv") for i in pongs]
    assert posted == [j + 3 for j in range(N - 1)] + [N + 1]
    assert [len(s) for s in out[0]] == [REPS] * len(SIZES) and all(not s for s in out[1])


def test_nccl_order_posts_each_receive_when_it_is_needed():
    # NCCL: a posted receive would hold the pair's stream, so rank 0 sends and then receives, rank 1
    # receives and then replies; no untimed round trip
    logs, out = _run(prepost=False)
    assert [kind for kind, _ in logs[0]] == ["send", "recv"] * N
    assert [kind for kind, _ in logs[1]] == ["recv", "send"] * N
    assert [len(s) for s in out[0]] == [REPS] * len(SIZES) and all(not s for s in out[1])
