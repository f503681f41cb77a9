"""Values as messages quote them: bounded, whatever the input. A 300-byte YAML alias bomb expands to
megabytes when printed, and an integer of thousands of digits cannot even be printed (Python refuses
beyond 4300 digits) nor turned into a float; an error about either must stay one short line."""

from __future__ import annotations

import reprlib
from typing import Any

SHOWN_CHARS = 200  # of a message's problem text
_BIG = 10 ** 15  # integers from here on are said, not printed

_REPR = reprlib.Repr()
_REPR.maxlevel, _REPR.maxlist, _REPR.maxdict, _REPR.maxstring, _REPR.maxother = 2, 4, 4, 60, 60


def shortened(text: str, limit: int = SHOWN_CHARS) -> str:
    """The first `limit` characters of `text`, marked when there were more (shortening it again changes
    nothing)."""
    return text if len(text) <= limit else f"{text[:limit]} [...]"


def number(value: float) -> str:
    """A number as `:g` shows it; one of more than 15 digits is said, not printed."""
    if isinstance(value, int) and abs(value) >= _BIG:
        return "a number of more than 15 digits"
    return f"{value:g}"


def shown(value: Any) -> str:
    """repr(value), bounded: nested containers and long strings cut short, huge integers said."""
    if isinstance(value, int) and not isinstance(value, bool) and abs(value) >= _BIG:
        return number(value)
    return _REPR.repr(value)
