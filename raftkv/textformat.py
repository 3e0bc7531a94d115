"""The field syntax every text file of a node shares (logs.txt, metadata.txt, snapshot.txt), and
the client's listings (`raftkv ls`) too.

One implementation, so that a key written by one file's writer reads back through another's
parser, and a rule changed here changes for every file at once (docs/design.md §5 states it).
It lives at the top of the product, beside limits.py, because the client prints keys and values
the way the files hold them and the client imports no server code:

  * A key, value, client id or cluster id is one token: the UTF-8 bytes of every space, ``%``,
    ``=`` and every character for which ``str.isprintable()`` is false are written as ``%XX``
    (uppercase hex); every other character, non-ASCII included, is written as it is, so ordinary
    text stays readable. The empty string is ``%-``, which no escaped non-empty string can
    produce because a literal ``%`` is always ``%25``. The decoder accepts any well-formed
    ``%XX`` sequence that yields valid UTF-8, so files stay readable by Python versions whose
    Unicode tables consider a different set of characters printable.
  * Lone surrogates are not Unicode text and cannot be written: `escape_field` raises
    ValueError (gRPC strings cannot carry them either).
  * Counters (terms, indexes, sequence numbers) are unsigned decimal integers without sign or
    leading zeros (`UINT_RE`), so that every number has exactly one spelling.

Plain functions, no I/O: the callers turn a ValueError into their own corruption error, which
names the file and the line.
"""

from __future__ import annotations

import re
import string
from typing import Final

__all__ = [
    "EMPTY_FIELD",
    "UINT_RE",
    "check_uint",
    "escape_field",
    "is_plain",
    "parse_uint",
    "preview",
    "unescape_field",
]

EMPTY_FIELD: Final = "%-"
# The separators of the line formats (" " between fields, "=" in `name=value` fields) and the
# escape character itself.
_ALWAYS_ESCAPED: Final = frozenset(" %=")
_HEX_DIGITS: Final = frozenset(string.hexdigits)
# `[0-9]`, not `\d`: int() would also accept "+1", " 1", "1_0" and non-ASCII digits.
UINT_RE: Final = re.compile(r"0|[1-9][0-9]*")


def is_plain(text: str) -> bool:
    """Whether `escape_field` leaves every character of `text` as it is (true for "" too, which
    is still written as %-). One scan per separator, in C: a concatenation of many fields can be
    checked at once."""
    return text.isprintable() and not any(char in text for char in _ALWAYS_ESCAPED)


def escape_field(text: str) -> str:
    """Escape a key, value or client id into one space-free, newline-free token."""
    if not text:
        return EMPTY_FIELD
    if is_plain(text):
        return text
    parts: list[str] = []
    for position, char in enumerate(text):
        if char in _ALWAYS_ESCAPED or not char.isprintable():
            try:
                raw = char.encode("utf-8")
            except UnicodeEncodeError:
                raise ValueError(
                    f"cannot store {preview(text)}: lone surrogate U+{ord(char):04X} at "
                    f"position {position} is not valid Unicode"
                ) from None
            parts.append("".join(f"%{byte:02X}" for byte in raw))
        else:
            parts.append(char)
    return "".join(parts)


def unescape_field(token: str) -> str:
    """Inverse of `escape_field`. Raises ValueError for a token it could not have produced."""
    if token == EMPTY_FIELD:
        return ""
    if not token:
        raise ValueError("empty field (the empty string is written as %-)")
    if "%" not in token:
        return token
    decoded = bytearray()
    i = 0
    while i < len(token):
        char = token[i]
        if char == "%":
            digits = token[i + 1 : i + 3]
            if len(digits) != 2 or not _HEX_DIGITS.issuperset(digits):
                raise ValueError(f"malformed escape {token[i : i + 3]!r} at position {i}")
            decoded.append(int(digits, 16))
            i += 3
        else:
            decoded += char.encode("utf-8")
            i += 1
    try:
        return decoded.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ValueError(f"escapes do not form valid UTF-8 ({exc.reason})") from None


def parse_uint(token: str, name: str) -> int:
    """`token` as an unsigned decimal integer in its one spelling; ValueError naming `name`."""
    if not UINT_RE.fullmatch(token):
        raise ValueError(f"{name} {preview(token)} is not an unsigned decimal integer")
    return int(token)


def check_uint(value: object, name: str) -> None:
    """ValueError unless `value` is an int ≥ 0 (bool excluded): what a writer checks so that
    nothing it writes is refused by `parse_uint` later."""
    if type(value) is not int or value < 0:
        raise ValueError(f"{name} must be a non-negative int, got {value!r}")


def preview(text: str, limit: int = 60) -> str:
    """`text` for an error message, cut to its start."""
    # A corrupt line can be megabytes long; error messages show only its start.
    return repr(text) if len(text) <= limit else f"{text[:limit]!r}… ({len(text)} chars)"
