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


def test_peer_updates_are_one_transaction_per_family():
    a4, a6, b4 = (ipaddress.ip_address(a) for a in ("192.0.2.20", "2001:db8::20", "192.0.2.30"))
    assert inbound.peers_update({a4, a6}, {b4}) == (
        "delete element inet oe peers4 { 192.0.2.30 }\n"
        "add element inet oe peers4 { 192.0.2.20 }\n"
        "add element inet oe peers6 { 2001:db8::20 }\n")
    assert inbound.peers_update(set(), set()) == ""


@pytest.mark.skipif(os.geteuid() != 0 or not shutil.which("nft"), reason="needs root and nft")
def test_nft_accepts_the_ruleset():
    script = inbound.ruleset("oe0", nets("192.0.2.0/26", "2001:db8::/64"),
                             [ipaddress.ip_address("198.51.100.2")])
    script += inbound.peers_update([ipaddress.ip_address("2001:db8:1::2")], [])
    ns = f"oe-inbound-{os.getpid()}"
    subprocess.run(["ip", "netns", "add", ns], check=True)
    try:
        proc = subprocess.run(["ip", "netns", "exec", ns, "nft", "-f", "-"], input=script,
                              capture_output=True, text=True)
        assert proc.returncode == 0, proc.stderr
        listed = subprocess.run(["ip", "netns", "exec", ns, "nft", "list", "table", "inet", "oe"],
                                capture_output=True, text=True, check=True).stdout
        assert "198.51.100.2" in listed and "2001:db8:1::2" in listed and "drop" in listed
    finally:
        subprocess.run(["ip", "netns", "del", ns])


def test_nested_private_entries_give_no_overlapping_intervals():
    """Review of issue 10: `private` 10.0.0.0/8 and 10.1.0.0/16 made nft refuse the set
    ("conflicting intervals"), and oe would not start."""
    got = inbound.protected(table(private="10.0.0.0/8\n10.1.0.0/16\n2001:db8::/32\n"
                                          "2001:db8:1::/48\n"), [])
    assert got == nets("10.0.0.0/8", "2001:db8::/32")
