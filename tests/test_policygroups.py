"""Policy-group files: parsing, errors naming file:line, all-or-nothing loading, priorities."""

import ipaddress

import pytest

from oe.eroute import Shunt
from oe.policygroups import PolicyError, combine, parse_group, prospective_table
from oe.policygroups.loader import load_policy

F = "/etc/oe/policies/private"


def parse(text, group="private"):
    return parse_group(group, text, F)


def test_cidrs_addresses_comments_and_narrowing():
    entries, warnings = parse(
        "# header comment\n"
        "\n"
        "192.0.2.0/24   # the lab\n"
        "198.51.100.7\n"
        "2001:db8::/32 tcp 0 22\n"
        "2001:db8::1\n"
        "203.0.113.0/28 udp 500 4500\n"
        "203.0.113.64/26 icmp 0 0\n"
    )
    assert warnings == []
    assert [(str(e.selector), e.line) for e in entries] == [
        ("192.0.2.0/24", 3),
        ("198.51.100.7/32", 4),
        ("2001:db8::/32 tcp 0 22", 5),
        ("2001:db8::1/128", 6),
        ("203.0.113.0/28 udp 500 4500", 7),
        ("203.0.113.64/26 icmp 0 0", 8),
    ]
    assert entries[0].origin == "policies/private:3"
    assert entries[2].selector.src == ipaddress.ip_network("::/0")
    assert entries[4].selector.proto == 17 and entries[4].selector.dport == 4500


def test_host_bits_are_cleared_with_a_warning_naming_the_line():
    entries, warnings = parse("192.0.2.77/24\n2001:db8::1/32\n")
    assert [str(e.selector.dst) for e in entries] == ["192.0.2.0/24", "2001:db8::/32"]
    assert warnings == [
        f"{F}:1: host bits set in '192.0.2.77/24', using 192.0.2.0/24",
        f"{F}:2: host bits set in '2001:db8::1/32', using 2001:db8::/32",
    ]


@pytest.mark.parametrize("line, message", [
    ("192.0.2.0/33", "bad address or CIDR '192.0.2.0/33'"),
    ("192.0.2", "bad address or CIDR '192.0.2'"),
    ("300.1.1.1", "bad address or CIDR '300.1.1.1'"),
    ("2001:db8::/129", "bad address or CIDR '2001:db8::/129'"),
    ("fe80::1%eth0", "scoped address 'fe80::1%eth0' is not allowed"),
    ("www.example.com", "host name 'www.example.com' is not allowed: write an address or CIDR"),
    ("localhost", "host name 'localhost' is not allowed"),
    ("192.0.2.0/24 tcp 0", "expected 'CIDR' or 'CIDR proto sport dport', got 3 fields"),
    ("192.0.2.0/24 tcp 0 22 x", "got 5 fields"),
    ("192.0.2.0/24 bogus 0 22", "bad protocol 'bogus'"),
    ("192.0.2.0/24 256 0 0", "bad protocol '256'"),
    ("192.0.2.0/24 tcp 0 65536", "bad port '65536'"),
    ("192.0.2.0/24 tcp -1 0", "bad port '-1'"),
    ("192.0.2.0/24 icmp 0 8", "ports need tcp, udp or sctp, not protocol 'icmp'"),
    ("192.0.2.0/24 0 0 22", "ports need tcp, udp or sctp, not protocol '0'"),
])
def test_malformed_line_names_file_line_and_token(line, message):
    with pytest.raises(PolicyError) as info:
        parse(f"# ok\n192.0.2.128/25\n{line}\n")
    assert str(info.value).startswith(f"{F}:3: ")
    assert message in str(info.value)
    assert "\n" not in str(info.value)


def test_same_selector_in_two_groups_names_both_places():
    a = parse_group("private", "192.0.2.0/24\n", "/c/policies/private")
    b = parse_group("clear", "# x\n192.0.2.0/24\n", "/c/policies/clear")
    with pytest.raises(PolicyError, match=r"^/c/policies/clear:2: 192\.0\.2\.0/24 is already in "
                                          r"private at /c/policies/private:1$"):
        combine([a, b])
    # Different narrowing is a different selector, not a duplicate.
    c = parse_group("clear", "192.0.2.0/24 tcp 0 22\n", "/c/policies/clear")
    assert len(combine([a, c]).entries) == 2


def write(confdir, group, text):
    (confdir / "policies").mkdir(parents=True, exist_ok=True)
    (confdir / "policies" / group).write_text(text)


def test_loader_reads_all_groups_and_missing_files_are_empty(tmp_path):
    write(tmp_path, "private-or-clear", "0.0.0.0/0\n::/0\n")
    write(tmp_path, "block", "203.0.113.0/24\n")
    policy = load_policy(tmp_path)
    assert [(e.group, str(e.selector)) for e in policy.entries] == [
        ("private-or-clear", "0.0.0.0/0"),
        ("private-or-clear", "::/0"),
        ("block", "203.0.113.0/24"),
    ]
    assert load_policy(tmp_path / "nowhere").entries == ()


def test_loader_is_all_or_nothing(tmp_path):
    """An error in the last group read means no Policy at all, not the first groups alone."""
    write(tmp_path, "clear", "192.0.2.0/24\n")
    write(tmp_path, "block", "192.0.2.999\n")
    with pytest.raises(PolicyError, match=r"policies/block:1: bad address or CIDR '192.0.2.999'"):
        load_policy(tmp_path)


def test_loader_reports_unreadable_files(tmp_path):
    (tmp_path / "policies" / "private").mkdir(parents=True)
    with pytest.raises(PolicyError, match=r"policies/private: cannot read"):
        load_policy(tmp_path)
    (tmp_path / "policies" / "private").rmdir()
    (tmp_path / "policies" / "private").write_bytes(b"192.0.2.0/24\n\xff\n")
    with pytest.raises(PolicyError, match=r"policies/private: not UTF-8 text"):
        load_policy(tmp_path)


@pytest.mark.parametrize("name", ["private-or-clr", "private-or-clear.txt", "Private"])
def test_loader_refuses_files_it_would_ignore(tmp_path, name):
    """Issue 15: a misspelled group file was silently ignored (its CIDRs never applied)."""
    write(tmp_path, "private", "192.0.2.0/24\n")
    (tmp_path / "policies" / name).write_text("198.51.100.0/24\n")
    with pytest.raises(PolicyError, match=rf"policies/{name}: not a policy group \(the files "
                                          r"are clear, clear-or-private, private-or-clear, "
                                          r"private, block\)"):
        load_policy(tmp_path)


def test_loader_takes_a_utf8_bom(tmp_path):
    """Issue 15: a file saved with a BOM gave an error quoting an invisible character."""
    (tmp_path / "policies").mkdir()
    (tmp_path / "policies" / "private").write_bytes("\ufeff192.0.2.0/24\n".encode())
    assert [str(e.selector.dst) for e in load_policy(tmp_path).entries] == ["192.0.2.0/24"]


def trace(table, dst, src="192.0.2.2", proto=0, sport=0, dport=0):
    index = table.lookup(ipaddress.ip_address(src), ipaddress.ip_address(dst), proto, sport, dport)
    return None if index is None else table.entries[index]


def test_freeswan_faq_example_more_specific_entries_win(tmp_path):
    """FreeS/WAN's example: private-or-clear for a /24, with more specific exceptions."""
    write(tmp_path, "private-or-clear", "192.0.2.0/24\n")
    write(tmp_path, "clear", "192.0.2.128/25\n")
    write(tmp_path, "private", "192.0.2.8/29\n192.0.2.130\n")
    write(tmp_path, "block", "192.0.2.9\n")
    write(tmp_path, "clear-or-private", "192.0.2.0/24 tcp 0 25\n")
    table = prospective_table(load_policy(tmp_path))
    assert trace(table, "192.0.2.1").group == "private-or-clear"
    assert trace(table, "192.0.2.1").action is Shunt.TRAP
    assert trace(table, "192.0.2.200").action is Shunt.PASS
    assert trace(table, "192.0.2.12").group == "private"
    assert trace(table, "192.0.2.130").group == "private"       # /32 beats the clear /25
    assert trace(table, "192.0.2.9").action is Shunt.REJECT     # /32 block beats private /29
    assert trace(table, "192.0.2.1", proto=6, dport=25).group == "clear-or-private"
    assert trace(table, "192.0.2.12", proto=6, dport=25).group == "private"  # /29 beats /24+port
    assert trace(table, "198.51.100.1") is None                 # no group: not steered into oe


def test_ipv6_groups(tmp_path):
    write(tmp_path, "private-or-clear", "::/0\n")
    write(tmp_path, "private", "2001:db8::/32\n")
    write(tmp_path, "clear", "2001:db8:0:1::/64\n2001:db8::53\n")
    table = prospective_table(load_policy(tmp_path))
    assert trace(table, "2001:db8:5::1", src="2001:db8::2").group == "private"
    assert trace(table, "2001:db8:0:1::9", src="2001:db8::2").group == "clear"
    assert trace(table, "2001:db8::53", src="2001:db8::2").group == "clear"
    assert trace(table, "2001:db9::1", src="2001:db8::2").group == "private-or-clear"
    assert trace(table, "192.0.2.1") is None   # IPv6 policy never matches IPv4
