"""Reading spec files and writing outputs without ever destroying an input, a folder or a system file.

Where an output may go (``output_target``, checked before any work and again at the write):

* a new path in an existing, writable folder, or an existing regular file: written to a temp file
  in the same folder and renamed over it, so a reader never sees half an output. A symlink is
  followed: its target gets the new content and the link stays a link.
* an existing character device (``/dev/null``, a terminal) or FIFO (a named pipe): written through,
  opened for writing and never renamed over, as the shell's ``>`` does; a FIFO waits at most
  ``FIFO_READER_WAIT_S`` seconds for a process to open it for reading.
* refused with one line naming the flag: a folder, a path whose folder does not exist, a path in
  ``/proc`` or ``/sys`` (kernel settings, not files), a block device or socket, a read-only file.
"""
from __future__ import annotations

import errno
import json
import math
import os
import stat
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import SpecError

KERNEL_ROOTS = ("/proc", "/sys")  # a "file" there is a kernel setting; writing a chart into one can break the machine
FIFO_READER_WAIT_S = 10.0  # a FIFO without a reader would block for ever; this long a reader may take to come
WRITE_THROUGH = ("character device", "FIFO")


def load_mapping(path: str | os.PathLike, what: str) -> dict[str, Any]:
    """Load a JSON or YAML file holding one mapping; errors name the file and the problem."""
    from .limits import check_input_file

    p = Path(path)
    if not p.is_file():
        if p.is_dir():
            raise SpecError(f"{what}: {str(p)!r} is a folder; give a JSON or YAML file")
        if p.exists():
            raise SpecError(f"{what}: {str(p)!r} is not a regular file; give a JSON or YAML file")
        fixes = {"model": "a preset name, a path to a JSON/YAML file or a Hugging Face model folder",
                 "cluster": "a preset name or a path to a JSON/YAML file"}
        fix = fixes.get(what, "the path of an existing file")
        raise SpecError(f"{what}: file {str(p)!r} does not exist; give {fix}")
    check_input_file(p, what)
    text = read_text(p, what, "a JSON or YAML file")
    try:
        if p.suffix.lower() in (".yaml", ".yml"):
            data = _yaml_load(text)
        else:
            data = json.loads(text)
    except RecursionError:
        raise SpecError(f"{what}: cannot parse {str(p)!r}: nested too deeply") from None
    except Exception as err:  # the parser's own message says where
        first_line = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise SpecError(f"{what}: cannot parse {str(p)!r}: {first_line}") from None
    if not isinstance(data, dict):
        raise SpecError(f"{what}: {str(p)!r} must hold a mapping (JSON object), not {type(data).__name__}")
    return data


def read_text(path: str | os.PathLike, what: str, kind: str) -> str:
    """The UTF-8 text of an input file; a binary or unreadable file is a one-line error naming ``what``."""
    try:
        return Path(path).read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise SpecError(f"{what}: {str(path)!r} is not a text file; give {kind}") from None
    except OSError as err:
        raise SpecError(f"{what}: cannot read {str(path)!r}: {err.strerror}") from None


def _yaml_load(text: str) -> Any:
    """``yaml.safe_load``, but 989e12 and 1.0e9 are numbers as in JSON and YAML 1.2 (PyYAML follows
    YAML 1.1, where an exponent needs a dot and a sign, so they would be text)."""
    import re

    import yaml

    class Loader(yaml.SafeLoader):
        pass

    exponent = re.compile(r"^[-+]?(?:[0-9][0-9_]*(?:\.[0-9_]*)?|\.[0-9_]+)[eE][-+]?[0-9]+$")
    Loader.add_implicit_resolver("tag:yaml.org,2002:float", exponent, list("-+0123456789."))
    return yaml.load(text, Loader=Loader)


@dataclass(frozen=True)
class OutputTarget:
    """Where one output goes. ``kind``: "new file", "regular file" (both written by temp + rename at
    ``real``, the path with symlinks resolved), "character device" or "FIFO" (written through at
    ``given``); ``identity`` is (st_dev, st_ino) of what exists there, None for a new file."""

    field: str
    given: str
    real: str
    kind: str
    identity: tuple[int, int] | None


def _under(path: str, roots: tuple[str, ...]) -> str | None:
    return next((root for root in roots if path == root or path.startswith(root + os.sep)), None)


def _file_kind(mode: int) -> str:
    for test, name in ((stat.S_ISDIR, "folder"), (stat.S_ISREG, "regular file"), (stat.S_ISCHR, "character device"),
                       (stat.S_ISFIFO, "FIFO"), (stat.S_ISBLK, "block device"), (stat.S_ISSOCK, "socket")):
        if test(mode):
            return name
    return "special file"


def output_target(path: str | os.PathLike, field: str = "output") -> OutputTarget:
    """Classify the output path ``path`` given by ``field``, or raise a one-line SpecError saying why
    nothing may be written there (see the module docstring for the rules)."""
    given = os.fspath(path)
    if not given:
        raise SpecError(f"{field}: the path is empty; give a file name")
    if "\0" in given:
        raise SpecError(f"{field}: the path {given!r} holds a NUL byte; give a file name")
    real = os.path.realpath(given)
    try:
        st = os.stat(given)  # through symlinks: /dev/stdout is the pipe or terminal it stands for
    except FileNotFoundError:
        st = None
    except NotADirectoryError:
        raise SpecError(f"{field}: {given!r} goes through a file as if it were a folder; choose another path") from None
    except OSError as err:
        raise SpecError(f"{field}: cannot use {given!r}: {err.strerror}") from None
    kind = "new file" if st is None else _file_kind(st.st_mode)
    if kind in WRITE_THROUGH:
        return OutputTarget(field, given, real, kind, (st.st_dev, st.st_ino))
    root = _under(real, KERNEL_ROOTS)
    if root is not None:
        raise SpecError(f"{field}: {given!r} is inside {root}, where files are kernel settings; "
                        "write the output somewhere else")
    if kind == "folder" or (st is None and given.endswith(os.sep)):
        raise SpecError(f"{field}: {given!r} is a folder; give a file path, e.g. "
                        f"{os.path.join(given, 'NAME')!r} with the extension the flag wants")
    if kind not in ("new file", "regular file"):
        raise SpecError(f"{field}: {given!r} is a {kind}; give a regular file, a character device or a FIFO")
    folder = os.path.dirname(real)
    shown = os.path.dirname(given) or "."
    if not os.path.isdir(folder):
        raise SpecError(f"{field}: folder {shown!r} of {given!r} does not exist; create it or choose another path")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise SpecError(f"{field}: folder {shown!r} of {given!r} is not writable; choose another path")
    # No write bit at all is read-only even for root, whom os.access always lets write: chmod a-w is how a
    # user guards a file, and the rename would replace it (and its mode) all the same.
    if st is not None and (not os.access(real, os.W_OK) or not st.st_mode & 0o222):
        raise SpecError(f"{field}: {given!r} is read-only; choose another path or make it writable")
    return OutputTarget(field, given, real, kind, None if st is None else (st.st_dev, st.st_ino))


def check_output_folder(path: str | os.PathLike, field: str = "--out") -> None:
    """A folder outputs go into: an existing folder, or one that can be created (its nearest existing
    ancestor is a writable folder), never inside ``/proc`` or ``/sys``."""
    given = os.fspath(path)
    if not given:
        raise SpecError(f"{field}: the path is empty; give a folder")
    real = os.path.realpath(given)
    root = _under(real, KERNEL_ROOTS)
    if root is not None:
        raise SpecError(f"{field}: {given!r} is inside {root}, where files are kernel settings; choose another folder")
    existing = real
    while not os.path.lexists(existing):
        existing = os.path.dirname(existing)
    if not os.path.isdir(existing):
        what = "is" if existing == real else f"is under {existing!r}, which is"
        raise SpecError(f"{field}: {given!r} {what} not a folder; give a folder (it is created if missing)")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise SpecError(f"{field}: folder {existing!r} is not writable; choose another folder")


def write_atomic(path: str | os.PathLike, data: str | bytes, field: str = "output") -> None:
    """Write ``data`` where ``output_target(path)`` says: temp file + rename for a file, written
    through for a character device or FIFO. An OS error (a full disk, say) is a one-line SpecError."""
    target = output_target(path, field)
    payload = data.encode() if isinstance(data, str) else data
    try:
        if target.kind in WRITE_THROUGH:
            _write_through(target, payload)
        else:
            _replace(target, payload)
    except OSError as err:
        if err.errno == errno.EPIPE:
            raise  # the reader went away, as with `| head`: the CLI ends quietly
        raise SpecError(f"{field}: cannot write {target.given!r}: {err.strerror}") from None


def _replace(target: OutputTarget, payload: bytes) -> None:
    folder, name = os.path.split(target.real)
    fd, tmp = tempfile.mkstemp(prefix=f".{name}.", dir=folder)
    try:
        # mkstemp creates 0600; give the file the permissions a plain open() would (0666 minus umask),
        # or keep those of the file it replaces.
        if target.identity is not None:
            mode = stat.S_IMODE(os.stat(target.real).st_mode)
        else:
            umask = os.umask(0)
            os.umask(umask)
            mode = 0o666 & ~umask
        os.fchmod(fd, mode)
        with os.fdopen(fd, "wb") as handle:
            handle.write(payload)
        os.replace(tmp, target.real)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def _write_through(target: OutputTarget, payload: bytes) -> None:
    flags = os.O_WRONLY | os.O_NOCTTY
    if target.kind == "FIFO":
        # Opening a FIFO for writing blocks until a reader comes; poll without blocking, for a bounded time.
        deadline = time.monotonic() + FIFO_READER_WAIT_S
        while True:
            try:
                fd = os.open(target.given, flags | os.O_NONBLOCK)
                break
            except OSError as err:
                if err.errno != errno.ENXIO:
                    raise
                if time.monotonic() >= deadline:
                    raise SpecError(f"{target.field}: no process opened the FIFO {target.given!r} for reading "
                                    f"within {FIFO_READER_WAIT_S:g} s; start its reader first") from None
                time.sleep(0.05)
        os.set_blocking(fd, True)
    else:
        fd = os.open(target.given, flags)
    with os.fdopen(fd, "wb") as handle:
        handle.write(payload)


def jsonable(obj: Any) -> Any:
    """``obj`` with non-finite floats as null: strict JSON has no NaN or Infinity (an unbounded capacity, say)."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [jsonable(v) for v in obj]
    return obj


def write_json_atomic(path: str | os.PathLike, obj: Any, field: str = "output") -> None:
    write_atomic(path, json.dumps(jsonable(obj), indent=2) + "\n", field)
