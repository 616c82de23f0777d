"""A hostile user's sweep of the ``pipeplan`` command line (issue 14's reliability classes).

Each case runs ``python -m pipeplan ARGS`` as a subprocess (60 s at most) in a fresh temp folder that
holds the usual inputs (a tiny plan with its model and cluster files, a saved timeline, a validation
report, a schedule CSV) plus, as the case needs, a damaged input, a FIFO, a character device made with
``mknod`` (root only; the kernel's null device, created inside the temp folder), a symlink to /dev/null,
a folder. A case is

* ``OK``: exit 0 with no nan/inf in stdout and only the outputs the case names new in the folder, or
  exit 2 with exactly one stderr line ``pipeplan CMD: error: ...`` and nothing new in the folder (a
  case that must be refused is OK only with exit 2; exit 3 is OK for ``--fail-on-oom``);
* ``FAULT``: a traceback, another exit code, several stderr lines, a timeout, nan/inf in the output,
  an input changed, a stray file left, a special file or symlink replaced, or a wrong-input case that
  exits 0.

The cases are in ``hostile_cases.py``, the files they start from in ``hostile_inputs.py``.

    python benchmarks/hostile_sweep.py              # every case: the table, then the count
    python benchmarks/hostile_sweep.py csv- plan-   # the cases whose names start with these
"""
from __future__ import annotations

import os
import re
import stat
import subprocess
import sys
import tempfile
from pathlib import Path

from hostile_cases import cases
from hostile_inputs import BASE, PASS, REFUSE, REPO, Case

TIMEOUT_S = 60


def populate(folder: Path, files: dict) -> None:
    for name, content in {**BASE, **files}.items():
        path = folder / name
        path.parent.mkdir(parents=True, exist_ok=True)
        if content == "fifo":
            os.mkfifo(path)
        elif content == "chardev":
            if os.geteuid() == 0:
                os.mknod(path, 0o666 | stat.S_IFCHR, os.makedev(1, 3))  # the null device, inside the temp folder
            else:
                path.symlink_to("/dev/null")
        elif content == "devnull-link":
            path.symlink_to("/dev/null")
        elif content == "folder":
            path.mkdir()
        elif content.startswith(b"@link:"):
            path.symlink_to(content[6:].decode())
        elif content.startswith(b"@hardlink:"):
            os.link(folder / content[10:].decode(), path)
        elif content == b"@readonly":
            path.write_bytes(b"read-only\n")
            path.chmod(0o444)
        else:
            path.write_bytes(content)


def snapshot(folder: Path) -> dict:
    entries = {}
    for root, dirs, files in os.walk(folder):
        for name in dirs + files:
            path = os.path.join(root, name)
            st = os.lstat(path)
            rel = os.path.relpath(path, folder)
            if stat.S_ISLNK(st.st_mode):
                entries[rel] = ("symlink", os.readlink(path))
            elif stat.S_ISREG(st.st_mode):
                entries[rel] = (Path(path).read_bytes(), stat.S_IMODE(st.st_mode))
            else:
                entries[rel] = ("type", stat.S_IFMT(st.st_mode))
    return entries


NAN_INF = re.compile(r"(?<![A-Za-z_])(nan|inf|infinity)(?![A-Za-z_])", re.IGNORECASE)


def run_case(case: Case) -> tuple[int | str, str, str]:
    """(exit code or "timeout", first stderr line, verdict and why)."""
    with tempfile.TemporaryDirectory(prefix="hostile-") as tmp:
        folder = Path(tmp)
        populate(folder, case.files)
        before = snapshot(folder)
        args = [a.replace("{t}", tmp) for a in case.args]
        env = {"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin", "HOME": os.environ.get("HOME", "/root"),
               "MPLBACKEND": "Agg"}
        try:
            out = subprocess.run([sys.executable, "-m", "pipeplan", *args], capture_output=True, text=True,
                                 cwd=tmp, timeout=TIMEOUT_S, env=env, errors="replace")
        except subprocess.TimeoutExpired:
            return "timeout", "", f"FAULT: no exit within {TIMEOUT_S} s"
        after = snapshot(folder)
        lines = out.stderr.splitlines()
        first = lines[0] if lines else ""
        problems = []
        if "Traceback" in out.stderr:
            problems.append("traceback")
        if out.returncode not in (0, 2, 3):
            problems.append(f"exit {out.returncode}")
        if out.returncode == 3 and "--fail-on-oom" not in args:
            problems.append("exit 3 without --fail-on-oom")
        if out.returncode == 2:
            if len(lines) != 1:
                problems.append(f"{len(lines)} stderr lines")
            elif not first.startswith("pipeplan"):
                problems.append("stderr line not 'pipeplan ...'")
            if out.stdout:
                problems.append("stdout on refusal")
        if out.returncode == 0 and case.expect == REFUSE:
            problems.append("accepted a wrong input (exit 0)")
        if out.returncode != 0 and case.expect == PASS and out.returncode != 3:
            problems.append("refused a good input")
        if out.returncode in (0, 3) and NAN_INF.search(out.stdout):  # a refusal may quote the "nan" it got
            problems.append("nan/inf in output")
        allowed = set(case.outputs) if out.returncode in (0, 3) else set()
        for name in set(before) | set(after):
            if name in allowed:
                continue
            if name not in after:
                problems.append(f"{name} removed")
            elif name not in before:
                problems.append(f"stray {name}")
            elif before[name] != after[name]:
                problems.append(f"{name} changed")
        verdict = "FAULT: " + ", ".join(problems) if problems else "OK"
        return out.returncode, first, verdict


def main(prefixes: list[str]) -> int:
    selected = [c for c in cases() if not prefixes or c.name.startswith(tuple(prefixes))]
    faults = 0
    print(f"{'case':38s} {'exit':>7s}  verdict / first stderr line")
    for case in selected:
        code, first, verdict = run_case(case)
        faults += verdict != "OK"
        print(f"{case.name:38s} {code!s:>7s}  {verdict}  | {first[:150]}", flush=True)
    print(f"\n{len(selected)} cases, {faults} faults")
    return 1 if faults else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
