"""User-facing errors: one line that names the bad field and the fix."""
from __future__ import annotations

from simulator.ir import ScheduleError


class SpecError(ValueError):
    """A model, cluster, plan or option is invalid; the message names the field and the fix."""


class OutOfTime(SpecError):
    """A search's time ran out before it found any plan that fits (which is not the same as "nothing
    fits"); the message says which limit to raise."""


USER_ERRORS = (SpecError, ScheduleError)


def require(condition: bool, message: str) -> None:
    if not condition:
        raise SpecError(message)


def positive_int(field: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise SpecError(f"{field}: must be a positive integer (got {value!r})")
    return value


def positive_number(field: str, value: object, allow_zero: bool = False) -> float:
    ok = isinstance(value, (int, float)) and not isinstance(value, bool)
    if ok and isinstance(value, int) and abs(value) > 2**1023:
        ok = False  # float() of it would raise OverflowError
    if ok:
        value = float(value)
        ok = value >= 0 if allow_zero else value > 0
        ok = ok and value == value and value != float("inf")
    if not ok:
        bound = ">= 0" if allow_zero else "> 0"
        raise SpecError(f"{field}: must be a finite number {bound} (got {value!r})")
    return float(value)


def name_text(field: str, value: object) -> str:
    """A name shown in tables and titles: non-empty text of printable characters (no newline, no control
    character that would break a table row)."""
    if not isinstance(value, str) or not value.strip() or not value.isprintable():
        raise SpecError(f"{field}: must be a non-empty text of printable characters (got {value!r})")
    return value
