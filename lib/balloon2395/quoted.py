"""Values as messages quote them: bounded, whatever the input. A 300-byte YAML alias bomb expands to
megabytes when printed, and an integer of thousands of digits cannot even be printed (Python refuses
beyond 4300 digits) nor turned into a float; an error about either must stay one short line."""

from __future__ import annotations

import reprlib
import unicodedata
from typing import Any, Iterable

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


# Names are data, never control. What a terminal, a log reader or a line-based parser takes for structure
# or control, wherever it comes from (a domain name, virsh's stderr, domain metadata): C0 and C1 controls
# and DEL (Cc: CR and LF start a forged line, ESC [ an ANSI sequence), format characters (Cf: the bidi
# overrides and isolates U+202A-U+202E and U+2066-U+2069, U+200E/U+200F, U+061C, zero-width characters,
# U+FEFF), the line and paragraph separators U+2028/U+2029 (Zl, Zp) and lone surrogates (Cs: bytes that
# were not UTF-8). Every other character, "vm-ü" or CJK, stays as it is.
_CONTROL = frozenset(("Cc", "Cf", "Zl", "Zp", "Cs"))
_SHORT = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}


def _is_control(char: str) -> bool:
    return unicodedata.category(char) in _CONTROL


def _escape(char: str) -> str:
    code = ord(char)
    return _SHORT.get(char) or (f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}" if code < 0x10000
                                else f"\\U{code:08x}")


def escaped(text: str) -> str:
    """`text` with every control or format character as a Python escape (\\n, \\r, \\x1b, \\u202e): one
    line that shows what it holds and can move, colour or reorder nothing. Printable text is returned
    as it is, so escaping twice is escaping once."""
    if text.isprintable():  # the common case, in C: isprintable() is False for every character escaped here
        return text
    return "".join(_escape(char) if _is_control(char) else char for char in text)


def json_escaped(text: str) -> str:
    """JSON text (json.dumps(..., ensure_ascii=False)) with the characters escaped() escapes written as
    \\uXXXX escapes: the same JSON to a parser (it gives back the very name), nothing for a terminal to
    obey. json.dumps already escapes C0 controls; it leaves DEL, C1 controls, bidi and lone surrogates."""
    if text.isprintable():
        return text
    out = []
    for char in text:
        if char in "\n\r\t" or not _is_control(char):  # json.dumps' own layout (indent) and printable text
            out.append(char)
        else:
            data = char.encode("utf-16-be", "surrogatepass")  # a pair for a character beyond U+FFFF
            out.extend(f"\\u{int.from_bytes(data[i:i + 2], 'big'):04x}" for i in range(0, len(data), 2))
    return "".join(out)


class Lines(str):
    """Text of several lines whose line breaks are its structure (the debug block): made by `of`, every
    line escaped, so a log formatter keeps its line breaks and escapes nothing more."""

    @classmethod
    def of(cls, lines: Iterable[str]) -> "Lines":
        return cls("\n".join(escaped(line) for line in lines))
