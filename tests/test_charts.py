"""Charts and traces: real files, opened and checked, and trace events counted against the schedule."""
import json
import struct
import subprocess
import sys
from pathlib import Path

import pytest

from pipeplan.charts.gantt import gantt, side_by_side
from pipeplan.charts.memory import memory_plot
from pipeplan.charts.trace import perfetto_trace
from pipeplan.results import load_timelines, save_simulation
from simulator import build_schedule, simulate, uniform_workload

REPO = Path(__file__).resolve().parents[1]


def png_pixels(path):
    import matplotlib.image as mpimg

    return mpimg.imread(str(path))


def assert_real_png(path, min_side=300):
    data = Path(path).read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    width, height = struct.unpack(">II", data[16:24])
    assert width >= min_side and height >= min_side // 3
    pixels = png_pixels(path)
    assert pixels[..., :3].std() > 0.05  # not blank: boxes of several colours on white


def result(name="1f1b", p=4, m=8, comm=0.0):
    r = simulate(uniform_workload(build_schedule(name, p, m), comm=comm))
    r.timeline.meta["time_unit"] = "unit"
    return r


@pytest.mark.parametrize("name", ["gpipe", "1f1b", "interleaved", "zb-h1", "zb-h2", "zb-v"])
def test_gantt_png_of_every_schedule(tmp_path, name):
    out = tmp_path / f"{name}.png"
    gantt(result(name, comm=0.2).timeline, str(out))
    assert_real_png(out)


def test_gantt_svg(tmp_path):
    out = tmp_path / "g.svg"
    gantt(result().timeline, str(out))
    text = out.read_text()
    assert text.lstrip().startswith("<?xml") and "<svg" in text and len(text) > 10_000


def test_large_svg_embeds_boxes_as_an_image(tmp_path):
    # 32 x 256 x 2 = 16,384 boxes: one <path> each would make a multi-MB file.
    timeline = result("1f1b", 32, 256).timeline
    gantt(timeline, str(tmp_path / "big.svg"))
    text = (tmp_path / "big.svg").read_text()
    assert "<image" in text and text.count("<path") < 1000
    assert (tmp_path / "big.svg").stat().st_size < 2_000_000


def test_side_by_side_and_memory(tmp_path):
    a, b = result("1f1b"), result("zb-h1")
    side_by_side(a.timeline, b.timeline, str(tmp_path / "sbs.png"), ("1f1b", "zb-h1"))
    assert_real_png(tmp_path / "sbs.png")
    memory_plot(a.memory, a.capacity, str(tmp_path / "mem.png"), unit="unit")
    assert_real_png(tmp_path / "mem.png")


def test_trace_has_one_x_event_per_op_and_a_flow_per_transfer():
    p, m = 4, 8
    trace = perfetto_trace(result("1f1b", p, m, comm=0.5).timeline)
    events = trace["traceEvents"]
    ops = [e for e in events if e["ph"] == "X" and e["tid"] == 0]
    # 1F1B: one F and one B per stage and micro-batch.
    assert len(ops) == 2 * p * m
    assert all({"stage", "microbatch"} <= set(e["args"]) and e["dur"] >= 0 for e in ops)
    # Activations cross p-1 boundaries forward and gradients p-1 backward, per micro-batch.
    sends = [e for e in events if e["ph"] == "X" and e["tid"] >= 1]
    starts = [e for e in events if e["ph"] == "s"]
    finishes = [e for e in events if e["ph"] == "f"]
    assert len(sends) == len(starts) == len(finishes) == 2 * (p - 1) * m
    assert sorted(e["id"] for e in starts) == sorted(e["id"] for e in finishes)
    # Each flow ends on the consuming op's device, at or after the send began.
    by_id = {e["id"]: e for e in starts}
    assert all(f["ts"] >= by_id[f["id"]]["ts"] for f in finishes)
    names = {(e["pid"], e["args"]["name"]) for e in events if e["ph"] == "M" and e["name"] == "thread_name"}
    assert (0, "compute") in names and (0, "communication") in names
    # A flow end binds to the slice enclosing it, so it must lie inside the consuming op.
    op_at = {(e["pid"], e["name"]): e for e in ops}
    sends_by_id = {s["id"]: e for s, e in zip(starts, sends)}
    for f in finishes:
        consumer = op_at[(f["pid"], sends_by_id[f["id"]]["args"]["consumer"])]
        assert consumer["ts"] < f["ts"] <= consumer["ts"] + consumer["dur"]


def test_trace_slices_on_one_thread_never_overlap():
    # Transfers (3 units) longer than the ops (1 unit): a device has several sends in flight at once.
    trace = perfetto_trace(result("1f1b", 4, 8, comm=3.0).timeline)
    slices = {}
    for e in trace["traceEvents"]:
        if e["ph"] == "X":
            slices.setdefault((e["pid"], e["tid"]), []).append((e["ts"], e["ts"] + e["dur"]))
    assert max(tid for _, tid in slices) > 1  # overlapping sends did need extra lanes
    for spans in slices.values():
        spans.sort()
        assert all(a_end <= b_start + 1e-9 for (_, a_end), (b_start, _) in zip(spans, spans[1:]))


def test_saved_timeline_redraws_the_same_picture(tmp_path):
    r = result("zb-v", comm=0.1)
    gantt(r.timeline, str(tmp_path / "direct.png"))
    save_simulation(r, str(tmp_path / "sim.json"))
    ((_, loaded),) = load_timelines(str(tmp_path / "sim.json"))
    gantt(loaded, str(tmp_path / "redrawn.png"))
    import numpy as np

    assert np.array_equal(png_pixels(tmp_path / "direct.png"), png_pixels(tmp_path / "redrawn.png"))


def test_cli_writes_every_output_and_gantt_redraws_it(tmp_path):
    env = {"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin", "MPLBACKEND": "Agg"}
    args = ["schedule", "zb-h1", "-p", "4", "-m", "8", "--comm", "0.3", "--gantt", "g.png", "--memory-plot", "m.svg",
            "--trace", "t.json", "--timeline", "tl.json"]
    out = subprocess.run([sys.executable, "-m", "pipeplan", *args], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert_real_png(tmp_path / "g.png")
    assert "<svg" in (tmp_path / "m.svg").read_text()
    assert len([e for e in json.loads((tmp_path / "t.json").read_text())["traceEvents"] if e["ph"] == "X"]) == 3 * 4 * 8 + 2 * 3 * 8
    again = subprocess.run([sys.executable, "-m", "pipeplan", "gantt", "tl.json", "-o", "again.png"], cwd=tmp_path,
                           env=env, capture_output=True, text=True)
    assert again.returncode == 0, again.stderr
    assert_real_png(tmp_path / "again.png")


def test_bad_chart_extension_fails_before_any_output(tmp_path):
    env = {"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"}
    out = subprocess.run([sys.executable, "-m", "pipeplan", "schedule", "1f1b", "-p", "2", "-m", "2", "--gantt",
                          "g.jpg", "--trace", "t.json"], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert out.returncode == 2 and "needs a .png, .svg or .pdf extension" in out.stderr
    assert list(tmp_path.iterdir()) == []


def test_figures_command_regenerates_every_figure(tmp_path):
    from pipeplan.charts.figures import FIGURES, regenerate

    written = regenerate(tmp_path)
    assert sorted(p.name for p in written) == sorted(FIGURES)
    for path in written:
        assert_real_png(path)
