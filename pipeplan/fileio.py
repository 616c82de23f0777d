"""Reading spec files and writing outputs atomically (temp file + rename, never half-written)."""
from __future__ import annotations

import json
import math
import os
import tempfile
from pathlib import Path
from typing import Any

from .errors import SpecError


def load_mapping(path: str | os.PathLike, what: str) -> dict[str, Any]:
    """Load a JSON or YAML file holding one mapping; errors name the file and the problem."""
    from .limits import check_input_file

    p = Path(path)
    if not p.is_file():
        fix = "a preset name or a path to a JSON/YAML file" if what in ("model", "cluster") else "the path of an existing file"
        raise SpecError(f"{what}: file {str(p)!r} does not exist; give {fix}")
    check_input_file(p, what)
    try:
        text = p.read_text()
    except UnicodeDecodeError:
        raise SpecError(f"{what}: {str(p)!r} is not a text file; give a JSON or YAML file") from None
    except OSError as err:
        raise SpecError(f"{what}: cannot read {str(p)!r}: {err.strerror}") from None
    try:
        if p.suffix.lower() in (".yaml", ".yml"):
            data = _yaml_load(text)
        else:
            data = json.loads(text)
    except Exception as err:  # the parser's own message says where
        first_line = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise SpecError(f"{what}: cannot parse {str(p)!r}: {first_line}") from None
    if not isinstance(data, dict):
        raise SpecError(f"{what}: {str(p)!r} must hold a mapping (JSON object), not {type(data).__name__}")
    return data


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


def write_atomic(path: str | os.PathLike, data: str | bytes) -> None:
    """Write ``data`` to ``path`` through a temp file in the same folder and a rename."""
    target = Path(path)
    folder = target.parent if str(target.parent) else Path(".")
    if not folder.is_dir():
        raise SpecError(f"output: folder {str(folder)!r} does not exist; create it or choose another path")
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", dir=folder)
    try:
        # mkstemp creates 0600; give the file the permissions a plain open() would (0666 minus umask).
        umask = os.umask(0)
        os.umask(umask)
        os.fchmod(fd, 0o666 & ~umask)
        with os.fdopen(fd, "wb") as handle:
            handle.write(data.encode() if isinstance(data, str) else data)
        os.replace(tmp, target)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def jsonable(obj: Any) -> Any:
    """``obj`` with non-finite floats as null: strict JSON has no NaN or Infinity (an unbounded capacity, say)."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [jsonable(v) for v in obj]
    return obj


def write_json_atomic(path: str | os.PathLike, obj: Any) -> None:
    write_atomic(path, json.dumps(jsonable(obj), indent=2) + "\n")
