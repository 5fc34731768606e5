"""oe.logsafe.printable: text from the network (IKE IDs, DNS records) made safe for one log line."""

import pytest
from hypothesis import given
from hypothesis import strategies as st

from oe.logsafe import LIMIT, printable


@pytest.mark.parametrize("text, shown", [
    ("host.example", "host.example"),
    ("caf\u00e9 \u6771\u4eac", "caf\u00e9 \u6771\u4eac"),  # printable non-ASCII stays
    ("a\nFORGED: oe started", "a\\x0aFORGED: oe started"),  # a second, forged log line
    ("\r\t\0", "\\x0d\\x09\\x00"),
    ("\x1b[2J\x1b[31mred", "\\x1b[2J\\x1b[31mred"),  # terminal escapes: clear screen, colour
    ("del\x7f", "del\\x7f"),
    ("c1\x85\x9b", "c1\\x85\\x9b"),  # NEL, CSI
    ("line\u2028sep\u2029", "line\\u2028sep\\u2029"),
    ("evil\u202egnp.exe", "evil\\u202egnp.exe"),  # RIGHT-TO-LEFT OVERRIDE
    ("\u2066isolate\u2069\ufeff\u200b", "\\u2066isolate\\u2069\\ufeff\\u200b"),
    ("\U000e0041tag", "\\U000e0041tag"),  # TAG LATIN CAPITAL LETTER A (format, invisible)
    ("nb\u00a0sp", "nb\\xa0sp"),  # only the ASCII space is kept as a space
    ("back\\slash", "back\\slash"),
])
def test_non_printables_are_escaped(text, shown):
    assert printable(text) == shown


def test_long_text_is_cut_to_the_limit_with_an_ellipsis():
    assert LIMIT == 200
    assert printable("x" * 200) == "x" * 200
    assert printable("x" * 201) == "x" * 197 + "..."
    assert printable("x" * 65535, limit=20) == "x" * 17 + "..."


def test_an_escape_is_never_cut_in_half():
    assert printable("ab" + "\x1b" * 100, limit=13) == "ab\\x1b\\x1b..."
    assert printable("ab" + "\x1b" * 100, limit=12) == "ab\\x1b..."


@given(st.text(max_size=400), st.integers(min_value=3, max_value=300))
def test_any_text_becomes_one_bounded_printable_line(text, limit):
    shown = printable(text, limit)
    assert shown.isprintable() and len(shown) <= limit
    if text.isprintable() and len(text) <= limit:
        assert shown == text
