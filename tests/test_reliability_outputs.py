"""No output ever replaces an input, another output of the same run, a folder or a special file.

Every subcommand that writes, driven as the command line (run in this process, ``reliability.run_cli``) on
inputs in the test's temp folder: a refused output is exit 2 with one line naming the flag, before any work
(nothing new in the folder, every input byte for byte the same); a character device (a symlink in the temp
folder to /dev/null: the test never creates anything in /dev) and a FIFO are written through and stay what
they are.
"""
import json
import os
import shutil
import socket
import stat
import threading
from pathlib import Path

import pytest

from reliability import assert_one_line_error, run_cli, snapshot, write_inputs  # tests/ is on sys.path


@pytest.fixture
def files(tmp_path):
    return write_inputs(tmp_path)


def command(name: str, files, flag: str, out) -> list[str]:
    """The argv of subcommand ``name`` on the inputs in ``files``, writing its ``flag`` output to ``out``."""
    p = {k: str(v) for k, v in files.items()}
    return {
        "schedule": ["schedule", "1f1b", "-p", "2", "-m", "2", flag, str(out)],
        "schedule search": ["schedule", "search", "-p", "2", "-m", "2", "--time-limit", "1", flag, str(out)],
        "simulate": ["simulate", p["plan.json"], flag, str(out)],
        "optimize": ["optimize", "--model", p["model.json"], "--cluster", p["cluster.json"], "--pp", "2",
                     "--global-batch", "8", "--solver-time-limit", "0.2", flag, str(out)],
        "validate": ["validate", p["plan.json"], flag, str(out)],
        "compare": ["compare", p["report.json"], flag, str(out)],
        "gantt": ["gantt", p["timeline.json"], flag, str(out)],
        "figures": ["figures", flag, str(out)],
    }[name]


# Every flag that writes a file, with an extension it accepts.
WRITERS = [
    ("schedule", "--csv", ".csv"), ("schedule", "--gantt", ".png"), ("schedule", "--memory-plot", ".svg"),
    ("schedule", "--trace", ".json"), ("schedule", "--timeline", ".json"), ("schedule search", "--csv", ".csv"),
    ("simulate", "--gantt", ".pdf"), ("simulate", "--memory-plot", ".png"), ("simulate", "--trace", ".json"),
    ("simulate", "--timeline", ".json"), ("optimize", "--out", ".json"), ("optimize", "--gantt", ".png"),
    ("validate", "--out", ".json"), ("validate", "--profile-out", ".json"), ("validate", "--gantt", ".png"),
    ("compare", "--gantt", ".svg"), ("gantt", "--output", ".png"),
]
# One writing flag per subcommand.
ONE_PER_COMMAND = [w for k, w in enumerate(WRITERS) if w[0] not in {v[0] for v in WRITERS[:k]}]


def refused(tmp_path, argv, flag, *needles) -> str:
    before = snapshot(tmp_path)
    out = run_cli(*argv)
    line = assert_one_line_error(out, argv[0], f"{flag}: ", *needles)
    assert snapshot(tmp_path) == before  # inputs byte for byte, nothing new, nothing replaced
    return line


@pytest.mark.parametrize("name,flag,ext", WRITERS, ids=[f"{n}{f}" for n, f, _ in WRITERS])
def test_a_folder_is_never_an_output(tmp_path, files, name, flag, ext):
    folder = tmp_path / f"folder{ext}"  # the extension the flag wants, so only the folder check can refuse it
    folder.mkdir()
    refused(tmp_path, command(name, files, flag, folder), flag, "is a folder")


@pytest.mark.parametrize("name,flag,ext", ONE_PER_COMMAND, ids=[n for n, _, _ in ONE_PER_COMMAND])
def test_an_output_in_a_missing_folder_is_refused(tmp_path, files, name, flag, ext):
    refused(tmp_path, command(name, files, flag, tmp_path / "missing" / f"out{ext}"), flag, "does not exist")


@pytest.mark.parametrize("name,flag,ext", ONE_PER_COMMAND, ids=[n for n, _, _ in ONE_PER_COMMAND])
def test_kernel_folders_are_never_written(tmp_path, files, name, flag, ext):
    # Nothing is created there even if the check were missing: /proc and /sys take no new files.
    refused(tmp_path, command(name, files, flag, f"/proc/pipeplan-test{ext}"), flag, "inside /proc")


def test_a_path_that_resolves_into_a_kernel_folder_is_refused(tmp_path, files):
    refused(tmp_path, command("schedule", files, "--trace", "/sys/pipeplan-test.json"), "--trace", "inside /sys")
    link = tmp_path / "kernel.json"  # only its resolved path is in /proc: /proc/self -> /proc/PID
    link.symlink_to("/proc/self/pipeplan-test.json")
    refused(tmp_path, command("schedule", files, "--timeline", link), "--timeline", "inside /proc")


@pytest.mark.parametrize("name,flag,input_name,reader", [
    ("simulate", "--timeline", "plan.json", "PLAN.json"),
    ("simulate", "--trace", "model.json", "plan.model"),       # a file the plan names is an input too
    ("simulate", "--timeline", "cluster.json", "plan.cluster"),
    ("optimize", "--out", "model.json", "--model"),
    ("validate", "--out", "plan.json", "PLAN.json"),
    ("validate", "--profile-out", "cluster.json", "plan.cluster"),
])
def test_an_output_that_is_an_input_is_refused(tmp_path, files, name, flag, input_name, reader):
    refused(tmp_path, command(name, files, flag, files[input_name]), flag, f"is the input {reader}")


def test_a_chart_named_like_its_input_is_refused(tmp_path, files):
    # The inputs are JSON whatever their name; a chart extension on them reaches the same-file check.
    for name, source in (("gantt", "timeline.json"), ("compare", "report.json")):
        disguised = tmp_path / f"{source}.png"
        disguised.write_bytes(files[source].read_bytes())
        flag = "--output" if name == "gantt" else "--gantt"
        refused(tmp_path, [name, str(disguised), flag, str(disguised)], flag, "is the input")


def test_links_to_an_input_are_the_input(tmp_path, files):
    symlink = tmp_path / "link.png"
    symlink.symlink_to(files["timeline.json"])
    refused(tmp_path, ["gantt", str(files["timeline.json"]), "-o", str(symlink)], "--output", "is the input INPUT")
    hard = tmp_path / "hard.json"
    os.link(files["plan.json"], hard)
    refused(tmp_path, command("simulate", files, "--timeline", hard), "--timeline", "is the input PLAN.json")
    os.link(files["model.json"], tmp_path / "model-copy.json")
    refused(tmp_path, command("optimize", files, "--out", tmp_path / "model-copy.json"), "--out", "is the input --model")
    report_link = tmp_path / "report.svg"
    report_link.symlink_to(files["report.json"])
    refused(tmp_path, command("compare", files, "--gantt", report_link), "--gantt", "is the input REPORT.json")


def test_two_outputs_on_one_path_are_refused(tmp_path, files):
    same = str(tmp_path / "same.json")
    refused(tmp_path, ["schedule", "1f1b", "-p", "2", "-m", "2", "--trace", same, "--timeline", same],
            "--timeline", "also the output of --trace")
    refused(tmp_path, ["simulate", str(files["plan.json"]), "--gantt", str(tmp_path / "a.png"),
                       "--memory-plot", str(tmp_path / "a.png")], "--memory-plot", "also the output of --gantt")
    refused(tmp_path, ["validate", str(files["plan.json"]), "--out", same, "--profile-out", same],
            "--profile-out", "also the output of --out")
    dangling = tmp_path / "chart.png"  # a symlink to the other output, which does not exist yet
    dangling.symlink_to(tmp_path / "plan-out.json")
    refused(tmp_path, command("optimize", files, "--out", tmp_path / "plan-out.json") + ["--gantt", str(dangling)],
            "--gantt", "also the output of --out")
    existing = tmp_path / "existing.csv"
    existing.write_text("old\n")
    os.link(existing, tmp_path / "existing.json")  # a hard link: another name, the same file
    refused(tmp_path, ["schedule", "1f1b", "-p", "2", "-m", "2", "--csv", str(existing),
                       "--trace", str(tmp_path / "existing.json")], "--trace", "also the output of --csv")


def test_figures_refuse_a_file_or_a_figure_name_taken_by_a_folder(tmp_path, files):
    refused(tmp_path, ["figures", "--out", str(files["plan.json"])], "--out", "not a folder")
    refused(tmp_path, ["figures", "--out", str(files["plan.json"] / "sub")], "--out", "not a folder")
    refused(tmp_path, ["figures", "--out", "/proc/pipeplan-test-figures"], "--out", "inside /proc")
    (tmp_path / "figs" / "schedules.png").mkdir(parents=True)
    refused(tmp_path, ["figures", "--out", str(tmp_path / "figs")], "--out (schedules.png)", "is a folder")


def test_a_socket_is_never_an_output(tmp_path, files):
    path = tmp_path / "s.csv"
    server = socket.socket(socket.AF_UNIX)
    try:
        server.bind(str(path))
        refused(tmp_path, command("schedule", files, "--csv", path), "--csv", "is a socket")
    finally:
        server.close()


def test_a_file_without_write_bits_is_refused_even_for_root(tmp_path, files):
    # os.access lets root write anything, so root's run renamed a new file over a chmod a-w one
    guarded = tmp_path / "guarded.csv"
    guarded.write_bytes(b"keep me\n")
    guarded.chmod(0o444)
    refused(tmp_path, command("schedule", files, "--csv", guarded), "--csv", "is read-only")
    assert guarded.read_bytes() == b"keep me\n" and stat.S_IMODE(guarded.stat().st_mode) == 0o444


@pytest.mark.skipif(os.geteuid() == 0, reason="root may write anywhere, so nothing is read-only to it")
def test_a_read_only_folder_is_refused(tmp_path, files):
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o555)
    try:
        refused(tmp_path, command("schedule", files, "--csv", locked / "s.csv"), "--csv", "not writable")
    finally:
        locked.chmod(0o755)


@pytest.mark.parametrize("name,flag,ext", [
    ("schedule", "--csv", ".csv"), ("schedule", "--trace", ".json"), ("simulate", "--timeline", ".json"),
    ("gantt", "--output", ".png"), ("compare", "--gantt", ".png"),
])
def test_a_character_device_is_written_through(tmp_path, files, name, flag, ext):
    link = tmp_path / f"null{ext}"
    link.symlink_to("/dev/null")  # the only way this test reaches /dev: through a link it made
    before = snapshot(tmp_path)
    out = run_cli(*command(name, files, flag, link))
    assert out.returncode == 0 and "Traceback" not in out.stderr, out.stderr
    assert stat.S_ISCHR(os.stat("/dev/null").st_mode)  # still the device, not a file put in its place
    assert os.path.islink(link) and os.readlink(link) == "/dev/null"
    assert snapshot(tmp_path) == before


def test_validate_refuses_a_report_it_could_not_read_back(tmp_path, files):
    link = tmp_path / "null.json"
    link.symlink_to("/dev/null")
    refused(tmp_path, command("validate", files, "--out", link), "--out", "character device")


def _read_fifo(path, into: list) -> threading.Thread:
    def read():
        with open(path, "rb") as fifo:
            into.append(fifo.read())

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    return reader


def test_a_fifo_is_written_through_to_its_reader(tmp_path, files):
    fifo = tmp_path / "pipe.csv"
    os.mkfifo(fifo)
    got: list[bytes] = []
    reader = _read_fifo(fifo, got)
    before = snapshot(tmp_path)
    out = run_cli(*command("schedule", files, "--csv", fifo))
    reader.join(timeout=30)
    assert out.returncode == 0, out.stderr
    # 1F1B at p = 2, m = 2 by hand: device 0 runs min(p - 1, m) = 1 warm-up forward, then F1 B0, then B1;
    # device 1 has no warm-up and alternates. One row per device, torch's compute-only CSV.
    assert got == [b"0F0,0F1,0B0,0B1\n1F0,1B0,1F1,1B1\n"]
    assert stat.S_ISFIFO(os.lstat(fifo).st_mode) and snapshot(tmp_path) == before

    trace = tmp_path / "trace.json"
    os.mkfifo(trace)
    got = []
    reader = _read_fifo(trace, got)
    out = run_cli(*command("simulate", files, "--trace", trace))
    reader.join(timeout=30)
    assert out.returncode == 0, out.stderr
    events = json.loads(got[0])["traceEvents"]
    assert {e["pid"] for e in events} == {0, 1} and stat.S_ISFIFO(os.lstat(trace).st_mode)


def test_a_fifo_nobody_reads_is_one_line_after_a_bounded_wait(tmp_path, monkeypatch, capsys):
    # In-process, so the wait can be shortened; the command line waits fileio.FIFO_READER_WAIT_S.
    from pipeplan import fileio
    from pipeplan.cli import main

    monkeypatch.setattr(fileio, "FIFO_READER_WAIT_S", 0.2)
    fifo = tmp_path / "nobody.csv"
    os.mkfifo(fifo)
    assert main(["schedule", "1f1b", "-p", "2", "-m", "2", "--csv", str(fifo)]) == 2
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1 and err[0].startswith("pipeplan schedule: error: --csv: no process opened the FIFO")
    assert stat.S_ISFIFO(os.lstat(fifo).st_mode)


def test_an_existing_output_is_replaced_whole_and_keeps_its_permissions(tmp_path, files):
    target = tmp_path / "s.csv"
    target.write_text("old content that is longer than the schedule\n")
    target.chmod(0o640)
    alias = tmp_path / "alias.csv"
    alias.symlink_to(target)  # written through the link: the link stays, its target gets the content
    out = run_cli(*command("schedule", files, "--csv", alias))
    assert out.returncode == 0, out.stderr
    assert target.read_text() == "0F0,0F1,0B0,0B1\n1F0,1B0,1F1,1B1\n"
    assert os.path.islink(alias) and stat.S_IMODE(target.stat().st_mode) == 0o640
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["alias.csv", "s.csv", *(p.name for p in files.values())])


def test_a_failed_write_is_one_line_and_leaves_no_temp_file(tmp_path, monkeypatch, capsys):
    # A full disk shows at the rename at the latest; in-process, so os.replace can fail as it would.
    import errno

    from pipeplan.cli import main

    def full_disk(src, dst):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "replace", full_disk)
    assert main(["schedule", "1f1b", "-p", "2", "-m", "2", "--csv", str(tmp_path / "s.csv")]) == 2
    err = capsys.readouterr().err.splitlines()
    assert err == [f"pipeplan schedule: error: --csv: cannot write {str(tmp_path / 's.csv')!r}: No space left on device"]
    assert list(tmp_path.iterdir()) == []


def test_an_output_onto_the_config_json_of_a_hugging_face_model_folder_is_refused(tmp_path):
    folder = tmp_path / "gpt2"
    shutil.copytree(Path(__file__).parent / "data" / "hf" / "gpt2", folder)
    refused(tmp_path, ["simulate", "--model", str(folder), "--pp", "2", "-m", "4", "--timeline",
                       str(folder / "config.json")], "--timeline", "input --model")
