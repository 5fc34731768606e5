"""The inbound cleartext policy's pure parts: which sources are refused in clear, and the nft
transaction that says so (checked by nft itself, in a namespace of its own, when root)."""

import ipaddress
import os
import shutil
import subprocess

import pytest

from oe import inbound
from oe.policygroups import combine, parse_group, prospective_table


def table(**groups):
    parsed = [parse_group(g.replace("_", "-"), text, f"policies/{g}") for g, text in groups.items()]
    return prospective_table(combine(parsed))


def nets(*texts):
    return [ipaddress.ip_network(t) for t in texts]


def test_private_less_what_more_specific_entries_and_nameservers_carve_out():
    base = table(private="192.0.2.0/24\n2001:db8::/64\n198.51.100.7 tcp 0 22\n",
                 clear="192.0.2.53\n", private_or_clear="192.0.2.128/25\n0.0.0.0/0\n")
    got = inbound.protected(base, ["2001:db8::53"])
    covered = lambda a: any(ipaddress.ip_address(a) in n for n in got)
    assert covered("192.0.2.1") and covered("192.0.2.127") and covered("2001:db8::1")
    assert not covered("192.0.2.53")            # clear wins for it: most specific
    assert not covered("192.0.2.200")           # private-or-clear /25 is more specific
    assert not covered("2001:db8::53")          # our nameserver must answer in clear
    assert not covered("198.51.100.7")          # narrowed: only port 22 is private
    assert not covered("203.0.113.1")           # private-or-clear 0/0 is less specific


def test_nothing_private_nothing_protected():
    assert inbound.protected(table(private_or_clear="0.0.0.0/0\n"), []) == []


def pair(src, dst):
    return ipaddress.ip_address(src), ipaddress.ip_address(dst)


def test_refused_pair_updates_are_one_transaction_per_family():
    """The refused set holds (source . destination) pairs: a tunnel C <-> T refuses T's
    cleartext to C only (issue 13, docs/gateway.md 2)."""
    a4, a6, b4 = (pair("192.0.2.20", "192.0.2.10"), pair("2001:db8::20", "2001:db8::10"),
                  pair("192.0.2.30", "198.51.100.10"))
    assert inbound.refused_update({a4, a6}, {b4}) == (
        "delete element inet oe refused4 { 192.0.2.30 . 198.51.100.10 }\n"
        "add element inet oe refused4 { 192.0.2.20 . 192.0.2.10 }\n"
        "add element inet oe refused6 { 2001:db8::20 . 2001:db8::10 }\n")
    assert inbound.refused_update(set(), set()) == ""


CLIENTS = inbound.Clients(subnets=tuple(nets("198.51.100.0/24", "2001:db8:5::/48")),
                          lan=("lan0",), opened=("eth0",))


def test_a_host_has_no_forward_chain():
    """Without [gateway] subnets oe polices only what is addressed to it."""
    assert "forward" not in inbound.ruleset("oe0", [], [])


def test_the_forward_chain_polices_what_is_forwarded_for_the_clients():
    """issue 13, docs/gateway.md 2 and 8: decrypted packets pass; a LAN source outside the
    subnets is dropped (RFC 3704 ingress filtering), and so is one with no route back through
    its interface; cleartext on a refused pair or from a private source to a client is
    dropped (RFC 4301 5.2); what arrives on an interface oe opened goes only to clients."""
    text = inbound.ruleset("oe0", nets("203.0.113.0/24"), [pair("192.0.2.30", "198.51.100.10")],
                           CLIENTS)
    chain = text[text.index("chain forward"):]
    lines = [line.strip() for line in chain.splitlines()]
    assert lines[1] == "type filter hook forward priority filter - 1; policy accept;"
    assert lines[2] == 'iifname "oe0" accept'
    assert ('iifname { "lan0" } ip saddr != @subnets4 counter name spoofed_dropped drop'
            in lines)
    assert ('iifname { "lan0" } ip6 saddr != @subnets6 counter name spoofed_dropped drop'
            in lines)
    assert ('iifname { "lan0" } meta nfproto ipv4 fib saddr . iif oif missing counter name '
            'spoofed_dropped drop') in lines
    assert "ip saddr . ip daddr @refused4 counter name cleartext_dropped drop" in lines
    assert "ip daddr @subnets4 ip saddr @private4 counter name cleartext_dropped drop" in lines
    assert 'iifname { "eth0" } ip daddr != @subnets4 drop' in lines
    assert "elements = { 198.51.100.0/24 }" in text and "elements = { 2001:db8:5::/48 }" in text


def test_the_forward_chain_polices_only_the_families_with_subnets():
    """An IPv4-only gateway leaves IPv6 forwarding (set up by someone else, or none) alone."""
    v4 = inbound.Clients(subnets=tuple(nets("198.51.100.0/24")), lan=("lan0",), opened=())
    text = inbound.ruleset("oe0", [], [], v4)
    assert "ip6 saddr != @subnets6" not in text and "ip saddr != @subnets4" in text
    assert "nfproto ipv6" not in text
    assert "ip daddr != @subnets4" not in text          # nothing opened: nothing to close


def test_overlapping_subnets_make_one_interval():
    overlapping = inbound.Clients(subnets=tuple(nets("198.51.100.0/24", "198.51.100.128/25")),
                                  lan=("lan0",), opened=())
    assert "elements = { 198.51.100.0/24 }" in inbound.ruleset("oe0", [], [], overlapping)


@pytest.mark.skipif(os.geteuid() != 0 or not shutil.which("nft"), reason="needs root and nft")
def test_nft_accepts_the_ruleset():
    script = inbound.ruleset("oe0", nets("192.0.2.0/26", "2001:db8::/64"),
                             [pair("198.51.100.2", "192.0.2.10")], CLIENTS)
    script += inbound.refused_update([pair("2001:db8:1::2", "2001:db8::10")], [])
    ns = f"oe-inbound-{os.getpid()}"
    subprocess.run(["ip", "netns", "add", ns], check=True)
    try:
        proc = subprocess.run(["ip", "netns", "exec", ns, "nft", "-f", "-"], input=script,
                              capture_output=True, text=True)
        assert proc.returncode == 0, proc.stderr
        listed = subprocess.run(["ip", "netns", "exec", ns, "nft", "list", "table", "inet", "oe"],
                                capture_output=True, text=True, check=True).stdout
        assert "198.51.100.2 . 192.0.2.10" in listed and "2001:db8:1::2" in listed
        assert "chain forward" in listed and "drop" in listed
    finally:
        subprocess.run(["ip", "netns", "del", ns])


def test_nested_private_entries_give_no_overlapping_intervals():
    """Review of issue 10: `private` 10.0.0.0/8 and 10.1.0.0/16 made nft refuse the set
    ("conflicting intervals"), and oe would not start."""
    got = inbound.protected(table(private="10.0.0.0/8\n10.1.0.0/16\n2001:db8::/32\n"
                                          "2001:db8:1::/48\n"), [])
    assert got == nets("10.0.0.0/8", "2001:db8::/32")
