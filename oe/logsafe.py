"""Text from the network, made safe for a log line or an event reason."""

from __future__ import annotations


def _escape(ch: str) -> str:
    o = ord(ch)
    return f"\\x{o:02x}" if o < 0x100 else f"\\u{o:04x}" if o < 0x10000 else f"\\U{o:08x}"


def printable(text: str) -> str:
    """``text`` with every non-printable character (controls, line and paragraph separators,
    format characters such as bidi overrides) written as ``\\xNN``, ``\\uNNNN`` or
    ``\\UNNNNNNNN``, so a peer cannot end a log line early, forge the next one or drive a
    terminal."""
    return "".join(ch if ch.isprintable() else _escape(ch) for ch in text)
