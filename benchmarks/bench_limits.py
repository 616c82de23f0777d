"""Peak memory and wall time of the big cases behind the README's "Size limits" table.

Each case runs in a fresh subprocess, which reports its own peak RSS (``resource.getrusage``)
and wall time, so one case's memory never counts against another's:

* ``topology``: 2,048 dgx-h100 nodes (16,384 GPUs), a 16,384-device 1F1B pipeline over all of them,
  m = 1: the cluster graph, the network among the GPUs and one simulation (the all-pairs link
  table this used to build held 2.1 GB at p = 16,384);
* ``uniform``: ``pipeplan schedule 1f1b -p 16384 -m 1`` (synthetic costs, the same device count);
* ``layers``: ``pipeplan simulate`` of a 20,000-block model, pp = 8, m = 8 (10.8 s when every
  layer lookup rebuilt the list of layer kinds);
* ``at-limit``: ``pipeplan schedule 1f1b -p 512 -m 1953``, the largest m at p = 512 under the
  default ops limit (1,999,872 ops); ``simulate-at-limit``: ``pipeplan simulate --model tiny --pp 8
  -m 125000`` (2,000,000 ops, through lowering and the breakdowns);
* ``refused``: ``pipeplan schedule 1f1b -p 512 -m 16384`` (16,777,216 ops), refused up front;
* ``plain``, ``trace``, ``timeline``, ``gantt``: ``schedule 1f1b -p 64 -m 4096`` (524,288 ops) without
  outputs and with each output, the output limit raised for them (what its default is set from).

    python benchmarks/bench_limits.py            # every case
    python benchmarks/bench_limits.py layers     # one
"""
from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DEEP = {"name": "deep-20k", "num_layers": 20000, "hidden": 256, "heads": 4, "ffn_hidden": 1024, "vocab": 1000,
        "seq_len": 128}


def _cli(*args: str) -> int:
    from pipeplan.cli import main

    with open(os.devnull, "w") as sink:
        stdout, stderr = sys.stdout, sys.stderr
        sys.stdout = sys.stderr = sink
        try:
            return main(list(args))
        finally:
            sys.stdout, sys.stderr = stdout, stderr


def case_topology() -> str:
    from pipeplan.cluster import load_cluster
    from simulator import build_schedule, simulate
    from simulator.workload import StageCost, Workload

    p = 16384
    cluster = load_cluster("dgx-h100", p // 8)
    schedule = build_schedule("1f1b", p, 1)
    cost = StageCost(1e-3, 1e-3, 1e-3, send_forward_bytes=1e6, send_backward_bytes=1e6, activation_bytes=1.0)
    result = simulate(Workload(schedule, (cost,) * p, cluster.network(list(range(p)))))
    return f"iteration {result.iteration_time * 1e3:.3f} ms"


def case_uniform() -> str:
    return f"exit {_cli('schedule', '1f1b', '-p', '16384', '-m', '1')}"


def case_layers() -> str:
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "deep-20k.json"
        path.write_text(json.dumps(DEEP))
        return f"exit {_cli('simulate', '--model', str(path), '--pp', '8', '-m', '8')}"


def case_at_limit() -> str:
    return f"exit {_cli('schedule', '1f1b', '-p', '512', '-m', '1953')}"


def case_simulate_at_limit() -> str:
    return f"exit {_cli('simulate', '--model', 'tiny', '--pp', '8', '-m', '125000')}"


def case_refused() -> str:
    return f"exit {_cli('schedule', '1f1b', '-p', '512', '-m', '16384')}"


def _with_output(flag: str | None, suffix: str) -> str:
    os.environ["PIPEPLAN_MAX_OUTPUT_OPS"] = "600000"
    with tempfile.TemporaryDirectory() as folder:
        extra = [flag, str(Path(folder) / f"out{suffix}")] if flag else []
        code = _cli("schedule", "1f1b", "-p", "64", "-m", "4096", *extra)
        size = sum(p.stat().st_size for p in Path(folder).iterdir())
    return f"exit {code}" + (f", {size / 1e6:.1f} MB written" if flag else "")


CASES = {"topology": case_topology, "uniform": case_uniform, "layers": case_layers, "at-limit": case_at_limit,
         "simulate-at-limit": case_simulate_at_limit, "refused": case_refused,
         "plain": lambda: _with_output(None, ""), "trace": lambda: _with_output("--trace", ".json"),
         "timeline": lambda: _with_output("--timeline", ".json"), "gantt": lambda: _with_output("--gantt", ".png")}


def run_case(name: str) -> None:
    """In the subprocess: run one case, print one JSON line with its figures."""
    start = time.perf_counter()
    note = CASES[name]()
    wall = time.perf_counter() - start
    rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB
    print(json.dumps({"case": name, "seconds": round(wall, 2), "peak_rss_mb": round(rss_mb), "note": note}))


def main(names: list[str]) -> None:
    for name in names or list(CASES):
        out = subprocess.run([sys.executable, __file__, "--case", name], capture_output=True, text=True,
                             cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)})
        if out.returncode != 0:
            print(f"{name}: failed\n{out.stderr}")
            continue
        row = json.loads(out.stdout.strip().splitlines()[-1])
        print(f"{row['case']:17s} {row['seconds']:7.2f} s  peak RSS {row['peak_rss_mb']:6,d} MB  {row['note']}")


if __name__ == "__main__":
    if sys.argv[1:2] == ["--case"]:
        sys.path.insert(0, str(REPO))
        run_case(sys.argv[2])
    else:
        main(sys.argv[1:])
