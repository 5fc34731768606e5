"""No path-MTU black holes (issue 17): oe on a and d, a 1280 link between them, routers that
drop ICMP fragmentation-needed and packet-too-big (tests/netns/pmtu_world.py draws the world).

FreeS/WAN's BUGS opened its list of *serious* bugs with this one:

    If both ends of a TCP conversation see routes pointing into an ipsecN device (which normally
    has a huge MTU), they will agree on a huge TCP MSS, and try to send very large IP packets.
    This is fine if the whole path between them is via an IPsec tunnel, but problematic if some
    of it goes via regular IP, because the regular-IP part's "must fragment" ICMP messages in
    response to oversize packets may not get through, depending on details. The result is that
    any TCP connection which tries to pass a large lump of data all at once will hang.

        A====B......C====D

    The workaround is to use the overridemtu parameter to reduce the MTU of the ipsecN interface
    on at least one end.

and Herbert Xu's proposal to Openswan (July 2004) asked that the IPsec peers find the path MTU
between themselves, "This makes any ICMP black holes between the gateways invisible to the end
users". These tests are what a user would try: TCP both ways, pings with and without DF. Those
that fail on today's code are xfail(strict): they flip to passing when the fix lands, and
strict makes that flip fail the run until the marker is removed. The control tests (plain
routing, no oe on the path) pass: they show the world breaks what it should and nothing else.
"""

from __future__ import annotations

import os
import re
import time

import pytest

from oe import demo
from oe.netns import wait_for

from pmtu_world import A6, D, D6, DNS, A, both_ways, build, start_transfer

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root for network namespaces")

ISSUE = "issue 17: "
MB10 = 10 << 20
# The largest inner IPv4 packet an ESP SA (AES-GCM-16, 8-byte IV, 16-byte ICV, tunnel mode)
# carries across a 1280 outer path: 1280 - 20 (IP) - 8 (SPI, sequence) - 8 (IV) - 16 (ICV) =
# 1228 for the inner packet, its padding and the 2 trailer bytes, a multiple of 4 (RFC 4303
# 2.4): 1226. UDP encapsulation (RFC 3948) takes 8 more.
INNER_MAX_V4 = 1226


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    made = build(tmp_path_factory.mktemp("pmtu"))
    try:
        yield made
    finally:
        made.close()


@pytest.fixture
def path(world):
    """The black-holed 1280 link in the middle, the kernels' learned path MTUs forgotten, oe
    restarted on a and d (no SA, nothing learned: every test negotiates afresh)."""
    world.place("middle")
    world.black_hole(True)
    for name in ("a", "d"):
        if name in world.daemons:
            demo.stop_oe(world, name)
    world.forget_path_mtus()
    for name in ("a", "d"):
        demo.start_oe(world, name)
    yield world


def ping(world, src, dst, *args, count=3):
    return world.run(src, "ping", "-c", str(count), "-i", "0.3", "-W", "2", *args, dst,
                     check=False, timeout=60)


def report(world, *transfers) -> str:
    """Failure text: what moved, and what oe on both ends counted."""
    return " | ".join([*map(str, transfers), world.counters("a"), world.counters("d"),
                       f"ICMP too-big dropped by the routers {world.icmp_dropped()}"])


# ---------------------------------------------------------------- controls: plain routing


def test_control_the_black_hole_is_real(path):
    """dns (no oe, exempt as the nameserver) to d, plain routing: a DF ping too big for the
    1280 link is lost without a word while the routers drop ICMP, and told 'mtu = 1280'
    when they do not."""
    silent = ping(path, "dns", D, "-M", "do", "-s", "1400", count=2)
    assert "100% packet loss" in silent.stdout and "mtu" not in silent.stdout, silent.stdout
    path.black_hole(False)
    told = ping(path, "dns", D, "-M", "do", "-s", "1400", count=2)
    assert re.search(r"mtu ?= ?1280", told.stdout + told.stderr), told.stdout + told.stderr


def test_control_plain_routing_fragments_non_df(path):
    """Without DF the router fragments: plain routing delivers a 1428-byte ping across it."""
    proc = ping(path, "dns", D, "-M", "dont", "-s", "1400")
    assert " 0% packet loss" in proc.stdout, proc.stdout


def test_control_plain_tcp_with_icmp_allowed(path):
    """Plain routing, ICMP allowed: 10 MB of TCP to d complete (PMTUD works, RFC 1191)."""
    path.black_hole(False)
    transfer = start_transfer(path, "dns", "d", D, MB10, 5003, 30)()
    assert transfer.ok, str(transfer)


def test_oe_with_icmp_allowed_carries_tcp(path):
    """oe, ICMP allowed: a's kernel learns 1280 for the route of oe's own ESP and fragments it
    from then on (oe itself learns nothing: see test_status_shows_the_learned_path_mtu)."""
    path.black_hole(False)
    to_d, to_a = both_ways(path, 4, MB10)
    assert to_d.ok and to_a.ok, report(path, to_d, to_a)


# ---------------------------------------------------------------- oe across the black hole


@pytest.mark.parametrize("family, where", [(4, "middle"), (6, "middle"), (4, "a"), (4, "d")],
                         ids=["v4-middle", "v6-middle", "v4-a-side", "v4-d-side"])
def test_tcp_both_ways_completes_across_the_black_hole(path, family, where):
    """10 MB a→d and d→a at once, sha256 intact, within 30 s; the small link on the
    initiator's side, in the middle or on the responder's side."""
    path.place(where)
    to_d, to_a = both_ways(path, family, MB10)
    print(f"pmtu {family} {where}: a->d {to_d}; d->a {to_a}")
    assert to_d.ok and to_a.ok, report(path, to_d, to_a)


def searched(world, name, dst, mtu):
    """Has `name`'s SA to dst a path MTU of `mtu`? (its search at rest: oe status)"""
    return any(sa["dst"] == dst and sa.get("path_mtu") == mtu
               and sa.get("pmtu_state") == "search complete" for sa in world.status(name)["sas"])


def test_tcp_survives_the_path_mtu_shrinking_while_it_runs(path):
    """All links 1500, the SA's path MTU searched and found 1500, then a 200 MB transfer a→d;
    once the first megabyte is in, the middle link drops to 1280 (ICMP still dropped). The
    transfer completes within 60 s in all; oe's recovery is how long a's SA took to learn
    1280 (RFC 8899 4.3: the confirmation probes of 1500 are lost, a black hole, the search
    again)."""
    path.place("none")
    ping(path, "a", D, count=2)
    assert wait_for(lambda: searched(path, "a", D, 1500), 20), path.status("a")["sas"]
    finish = start_transfer(path, "a", "d", D, 20 * MB10, 5004, 60)
    log = path.hosts["d"].dir / "server-5004.log"
    assert wait_for(lambda: "1 MB in" in log.read_text(), 20), log.read_text()
    path.place("middle")
    shrunk = time.monotonic()
    learned = wait_for(lambda: searched(path, "a", D, 1280), 40)
    recovery = time.monotonic() - shrunk
    transfer = finish()
    print(f"pmtu shrink: {transfer}; a's SA learned 1280 {recovery:.1f} s after the shrink")
    assert learned and transfer.ok, report(path, transfer)


def sa_to(world, name, dst) -> dict:
    [sa] = [sa for sa in world.status(name)["sas"] if sa["dst"] == dst]
    return sa


def test_a_local_link_that_shrinks_is_counted_and_learned_from_emsgsize(path):
    """Issue 17, 3 (no silent loss): a's own link drops to 1280 after the search found 1500.
    The outer packet of a non-DF ping, built by oe without DF (RFC 4301 8.1), is too big for
    that link: the kernel refuses it (EMSGSIZE on the clear raw socket). oe counts it on the
    SA (`send_errors`, `emsgsize`) and the error queue's MTU (the kernel's own, naming the
    link) lowers the SA's path MTU at once; the next pings cross, fragmented before
    encryption."""
    path.place("none")
    ping(path, "a", D, count=2)
    assert wait_for(lambda: searched(path, "a", D, 1500), 20), str(sa_to(path, "a", D))
    path.place("a")
    shrunk = time.monotonic()
    ping(path, "a", D, "-M", "dont", "-s", "1400", count=1)
    assert wait_for(lambda: sa_to(path, "a", D)["path_mtu"] <= 1280, 5), sa_to(path, "a", D)
    learned = time.monotonic() - shrunk
    sa = sa_to(path, "a", D)
    assert sa["send_errors"] >= 1 and sa["emsgsize"] >= 1, sa
    proc = ping(path, "a", D, "-M", "dont", "-s", "1400", count=3)
    print(f"pmtu emsgsize: a's SA at {sa['path_mtu']} {learned:.1f} s after its link shrank")
    assert " 0% packet loss" in proc.stdout, proc.stdout + report(path)


@pytest.mark.parametrize("family", [4, 6], ids=["v4", "v6"])
def test_non_df_ping_crosses(path, family):
    """`ping -M dont -s 1400` through oe arrives, as it does with plain routing (the control
    above): the inner packet did not forbid fragmentation (RFC 4301 8.1). IPv6 has no DF:
    its hosts fragment at the source to the path MTU they learn (RFC 8201), here from oe's
    packet-too-big naming 1280 (RFC 8200 5: never less), so a first ping teaches both hosts;
    oe carries the 1280-byte fragments in outer fragments of its own."""
    if family == 6:
        ping(path, "a", D6, "-M", "dont", "-s", "1400", count=2)
    proc = ping(path, "a", D if family == 4 else D6, "-M", "dont", "-s", "1400", count=4)
    # the first may be held while IKE negotiates; the rest must arrive
    assert re.search(r"\b[34] received", proc.stdout), proc.stdout + report(path)


def test_ipv6_minimum_mtu_packets_cross(path):
    """IPv6 guarantees 1280 end to end: a 1280-byte inner packet must cross the 1280 path
    (oe fragments the outer packet, RFC 4459 3 / RFC 8200 5, since no inner MTU may be less)."""
    proc = ping(path, "a", D6, "-s", "1232", count=4)
    assert re.search(r"\b[34] received", proc.stdout), proc.stdout + report(path)


def test_df_ping_too_big_gets_icmp_from_oe_with_the_learned_mtu(path):
    """A DF ping of 1328 bytes fits the TUN (1435) but not the 1280 path once encrypted: oe
    answers with fragmentation-needed naming the SA's learned inner MTU (RFC 4301 8.2,
    RFC 1191), at most INNER_MAX_V4; smaller pings still cross. (Learned: until its search
    ends, the SA's path MTU is the base, 1200, and oe names less.)"""
    ping(path, "a", D, count=1)
    assert wait_for(lambda: searched(path, "a", D, 1280), 20), path.status("a")["sas"]
    first = ping(path, "a", D, "-M", "do", "-s", "1300", count=6)
    told = re.findall(r"mtu ?= ?(\d+)", first.stdout + first.stderr)
    assert told and 1200 <= int(told[-1]) <= INNER_MAX_V4, first.stdout + report(path)
    fits = ping(path, "a", D, "-M", "do", "-s", str(int(told[-1]) - 28))
    assert " 0% packet loss" in fits.stdout, fits.stdout


@pytest.mark.parametrize("black_hole", [False, True], ids=["icmp", "probed"])
def test_status_shows_the_learned_path_mtu(path, black_hole):
    """After traffic too big for the path, each SA of a's shows the path MTU it learned, and how:
    by probing where ICMP is black-holed; where it is not, the routers' fragmentation-needed
    about the probes reaches oe too (IP_RECVERR, matched to the SA by its SPI) and bounds the
    search at once, which the probe of 1280 then confirms (RFC 8899 4.6.2: a PTB is a hint)."""
    path.black_hole(black_hole)
    ping(path, "a", D, "-s", "1300", count=6)
    assert wait_for(lambda: searched(path, "a", D, 1280), 20), path.status("a")["sas"]
    status = path.status("a")
    [sa] = [sa for sa in status["sas"] if sa["dst"] == D]
    assert sa.get("path_mtu") == 1280, sa
    assert sa.get("path_mtu_source") == "probe", sa
    told = status["datapath"]["pmtu_too_big"]
    assert told == 0 if black_hole else told >= 1, status["datapath"]
    assert status["datapath"]["pmtu_too_big_ignored"] == 0, status["datapath"]


def test_addresses_are_documentation_ranges():
    """The world uses only 192.0.2.0/24, 198.51.100.0/24, 203.0.113.0/24 and 2001:db8::/32."""
    import ipaddress

    documentation = [ipaddress.ip_network(n) for n in ("192.0.2.0/24", "198.51.100.0/24",
                                                         "203.0.113.0/24", "2001:db8::/32")]
    for address in (A, A6, D, D6, DNS):
        assert any(ipaddress.ip_address(address) in n for n in documentation), address
