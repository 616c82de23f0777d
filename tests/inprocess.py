"""``pipeplan ARGS`` run inside the test process, for the tests that check hundreds of command lines.

It returns what ``subprocess.run([python, -m, pipeplan, ARGS], capture_output=True, text=True)`` returns
(a ``CompletedProcess`` with the exit status, stdout and stderr), run the way the subprocess runs it: in
``cwd``, with only PYTHONPATH, PATH and ``env`` in the environment, file descriptors 1 and 2 sent to
files (so a forked worker's or a C library's output is caught too, and neither is a terminal), an
uncaught exception printed as Python prints it (a traceback, exit 1) and a hang stopped after
``timeout`` seconds. What it saves is the interpreter's start and pipeplan's import, about a second of
CPU per command. The real ``python -m pipeplan`` stays tested as a subprocess (``test_cli.pipeplan``
and the subprocess tests of each command).
"""
from __future__ import annotations

import contextlib
import io
import os
import signal
import subprocess
import sys
import tempfile
import traceback
import warnings
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


class _Hung(BaseException):
    """Raised in the command when it ran past its time, as subprocess.run's timeout would end it."""


@contextlib.contextmanager
def _environment(values: dict[str, str]):
    saved = dict(os.environ)
    os.environ.clear()
    os.environ.update(values)
    try:
        yield
    finally:
        os.environ.clear()
        os.environ.update(saved)


@contextlib.contextmanager
def _interpreter_warnings():
    """Warnings as a fresh interpreter shows them (its default filters, printed to stderr), not as pytest
    records them: a warning the command prints counts against it here as it would in a terminal."""
    with warnings.catch_warnings():
        warnings.resetwarnings()
        for category in (DeprecationWarning, PendingDeprecationWarning, ImportWarning, ResourceWarning):
            warnings.simplefilter("ignore", category)
        warnings.filterwarnings("default", category=DeprecationWarning, module="__main__")

        def show(message, category, filename, lineno, file=None, line=None):
            sys.stderr.write(warnings.formatwarning(message, category, filename, lineno, line))

        warnings.showwarning = show
        yield


@contextlib.contextmanager
def _captured_fds():
    """Descriptors 1 and 2 (and sys.stdout/sys.stderr over them) into two temporary files; yields a function
    that returns their text so far."""
    sys.stdout.flush()
    sys.stderr.flush()
    files = [tempfile.TemporaryFile(), tempfile.TemporaryFile()]
    saved = [os.dup(1), os.dup(2)]
    streams = (sys.stdout, sys.stderr)
    try:
        os.dup2(files[0].fileno(), 1)
        os.dup2(files[1].fileno(), 2)
        sys.stdout = open(1, "w", encoding="utf-8", closefd=False)
        sys.stderr = open(2, "w", encoding="utf-8", errors="backslashreplace", closefd=False)

        def read() -> tuple[str, str]:
            for stream in (sys.stdout, sys.stderr):
                with contextlib.suppress(ValueError):  # closed by the command (a broken pipe)
                    stream.flush()
            texts = []
            for f in files:
                f.seek(0)
                texts.append(f.read().decode("utf-8", errors="replace"))
            return texts[0], texts[1]

        yield read
    finally:
        for stream in (sys.stdout, sys.stderr):
            with contextlib.suppress(Exception):
                stream.flush()
        sys.stdout, sys.stderr = streams
        os.dup2(saved[0], 1)
        os.dup2(saved[1], 2)
        for fd in saved:
            os.close(fd)
        for f in files:
            f.close()


def run_pipeplan(*args: str, cwd, env: dict[str, str] | None = None,
                 timeout: float = 60.0) -> subprocess.CompletedProcess:
    """``pipeplan ARGS`` in ``cwd`` in this process; see the module docstring."""
    from pipeplan.cli import main

    def hung(signum, frame):
        raise _Hung()

    environment = {"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin", **(env or {})}
    previous = signal.signal(signal.SIGALRM, hung)
    signal.setitimer(signal.ITIMER_REAL, timeout)
    try:
        with contextlib.chdir(cwd), _environment(environment), _captured_fds() as read, _interpreter_warnings():
            try:
                code = main(list(args))
            except SystemExit as done:  # argparse's errors and --help; a message is printed, status 1
                code = 0 if done.code is None else done.code if isinstance(done.code, int) else 1
                if code == 1 and not isinstance(done.code, int):
                    print(done.code, file=sys.stderr)
            except _Hung:
                raise
            except BaseException:  # as the interpreter ends on an uncaught exception
                traceback.print_exc()
                code = 1
            out, err = read()
    except _Hung:
        raise subprocess.TimeoutExpired(["pipeplan", *args], timeout) from None
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
    return subprocess.CompletedProcess(["pipeplan", *args], code, out, err)
