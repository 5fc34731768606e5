"""Text from the network made safe for one log line: `printable(text)`.

IKE IDs, DNS names and TXT records are chosen by whoever sends or publishes them. Written to a
log or a terminal as they are, a newline forges a second log line, ESC sequences rewrite the
terminal, and U+2028 or a bidi override (U+202E) makes a line read other than it is (Trojan
Source, CVE-2021-42574). printable() escapes every character Python does not call printable
(categories Cc: C0, DEL, C1; Cf: bidi controls, zero-width, BOM, tags; Zl, Zp; Zs other than
the space; Cs, Co, Cn) and bounds the length, so hostile text costs one bounded line.
"""

from __future__ import annotations

LIMIT = 200
"""Default bound on the characters returned."""

ELLIPSIS = "..."  # ASCII: the line stays readable wherever it goes


def _escape(char: str) -> str:
    code = ord(char)
    if code <= 0xFF:
        return f"\\x{code:02x}"
    if code <= 0xFFFF:
        return f"\\u{code:04x}"
    return f"\\U{code:08x}"


def printable(text: str, limit: int = LIMIT) -> str:
    """`text` with non-printables as \\xNN, \\uNNNN or \\UNNNNNNNN, cut to at most `limit`
    characters (ending in "..." when cut; an escape is never cut in half). limit >= 3."""
    if len(text) <= limit and text.isprintable():  # most lines: no walk per character
        return text
    pieces: list[str] = []
    length = 0
    for char in text:
        piece = char if char.isprintable() else _escape(char)
        if length + len(piece) > limit:
            break
        pieces.append(piece)
        length += len(piece)
    else:
        return "".join(pieces)
    # Too long: drop pieces until the ellipsis fits.
    while pieces and length + len(ELLIPSIS) > limit:
        length -= len(pieces.pop())
    return "".join(pieces) + ELLIPSIS
