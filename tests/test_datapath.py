"""The per-packet decisions around ESP, driven from Python with no TUN or socket.

Datapath.outbound() is what the TUN loop does with one packet, inbound() what the socket loop
does with one datagram; they return [(kind, address, port, bytes)] instead of sending.
"""

import ipaddress
import select

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scapy.layers.inet import ICMP, IP, TCP, UDP, IPerror
from scapy.layers.inet6 import ICMPv6DestUnreach, ICMPv6PacketTooBig, IPv6
from scapy.packet import raw

from oe.datapath import Datapath, SaSpec
from oe.dpevents import Acquire, IkeMessage, ReplayFailure, SaExpired, SaSoftLimit
from oe.eroute import Eroute, ErouteTable, SaAction, Selector, Shunt

ME, PEER, OTHER = "192.0.2.1", "198.51.100.2", "203.0.113.9"
ME6, PEER6 = "2001:db8::1", "2001:db8:1::2"
SPI_OUT, SPI_IN = 0x5000, 0x6000
KEY = bytes(range(20))
KEY6 = bytes(range(100, 120))


def net(text):
    return ipaddress.ip_network(text)


def eroute(dst, action, src=None):
    dst = net(dst)
    src = net(src) if src else Selector.any_source(dst.version)
    return Eroute(Selector(src, dst), action)


def sa_eroute(dst, handle, spi=SPI_OUT, peer=PEER, src=None):
    return eroute(dst, SaAction(ipaddress.ip_address(peer), spi, handle), src)


def datapath(*eroutes, **kw):
    dp = Datapath(**kw)
    dp.replace_eroutes(ErouteTable(eroutes))
    return dp


def peer_of(dp_out_key=KEY, mode_kw=None):
    """The other end: opens what we seal towards it."""
    peer = Datapath()
    peer.add_sa(SaSpec(spi=SPI_OUT, direction="in", key=dp_out_key, local=PEER, peer=ME,
                       **(mode_kw or {})))
    return peer


def ping(n=0, size=56, dst=PEER, src=ME, **ip):
    """An echo request with DF, as Linux sends it (ping -M want); flags=0: without."""
    ip.setdefault("flags", "DF")
    return raw(IP(src=src, dst=dst, **ip) / ICMP(id=1, seq=n) / (b"p" * size))


def test_sa_eroute_seals_towards_the_peer_on_4500():
    dp = Datapath()
    handle = dp.add_sa(SaSpec(spi=SPI_OUT, direction="out", key=KEY, local=ME, peer=PEER))
    dp.replace_eroutes(ErouteTable([sa_eroute(PEER + "/32", handle)]))
    [(kind, address, port, esp)] = dp.outbound(ping())
    assert (kind, str(address), port) == ("udp", PEER, 4500)
    assert peer_of().open(esp)[2] == ping()
    assert dp.classifier.counters()[0][0] == 1


def test_raw_esp_encapsulation():
    dp = Datapath()
    handle = dp.add_sa(SaSpec(spi=SPI_OUT, direction="out", key=KEY, local=ME, peer=PEER,
                              encap="esp"))
    dp.replace_eroutes(ErouteTable([sa_eroute(PEER + "/32", handle)]))
    [(kind, address, port, esp)] = dp.outbound(ping())
    assert (kind, str(address)) == ("esp", PEER)


def test_sa_eroute_without_sa_is_dropped_and_counted():
    dp = datapath(sa_eroute(PEER + "/32", 1))
    assert dp.outbound(ping()) == []
    assert dp.stats()["no_sa"] == 1


def test_trap_raises_one_acquire_and_holds_the_pair():
    """Hannum's PF_KEY critique: an acquire per packet floods the keying daemon; a /32 %hold stops it."""
    dp = datapath(eroute("198.51.100.0/24", Shunt.TRAP))
    assert not select.select([dp.events_fd], [], [], 0)[0]
    for n in range(5):
        assert dp.outbound(ping(n)) == []
    assert select.select([dp.events_fd], [], [], 0)[0]          # asyncio can watch it
    assert dp.read_events() == [Acquire(src=ipaddress.ip_address(ME),
                                        dst=ipaddress.ip_address(PEER), proto=1, sport=0,
                                        dport=0)]
    assert [(str(s), str(d), n) for s, d, n in dp.holds()] == [(ME, PEER, 5)]
    # Another destination in the trapped range is its own negotiation.
    dp.outbound(raw(IP(src=ME, dst="198.51.100.3") / UDP(sport=5, dport=53)))
    [acquire] = dp.read_events()
    assert (str(acquire.dst), acquire.proto, acquire.sport, acquire.dport) == (
        "198.51.100.3", 17, 5, 53)


def test_hold_released_in_order_when_the_sa_arrives():
    trap = eroute("198.51.100.0/24", Shunt.TRAP)
    dp = datapath(trap)
    for n in range(10):
        dp.outbound(ping(n))
    hold = eroute(PEER + "/32", Shunt.HOLD, src=ME + "/32")
    dp.replace_eroutes(ErouteTable([trap, hold]))               # the control plane's %hold
    assert dp.release_holds() == []
    assert dp.holds()[0][2] == 10
    handle = dp.add_sa(SaSpec(spi=SPI_OUT, direction="out", key=KEY, local=ME, peer=PEER))
    dp.replace_eroutes(ErouteTable([trap, sa_eroute(PEER + "/32", handle, src=ME + "/32")]))
    released = dp.release_holds()
    peer = peer_of()
    assert [IP(peer.open(esp)[2])[ICMP].seq for _, _, _, esp in released] == list(range(10))
    assert dp.holds() == []
    assert dp.stats()["hold_released"] == 10
    assert dp.outbound(ping(10))[0][0] == "udp"                  # no longer held


def test_hold_is_bounded_oldest_dropped():
    dp = datapath(eroute("198.51.100.0/24", Shunt.TRAP), hold_packets=4)
    for n in range(9):
        dp.outbound(ping(n))
    dp.replace_eroutes(ErouteTable([eroute(PEER + "/32", Shunt.PASS)]))
    assert [IP(p)[ICMP].seq for _, _, _, p in dp.release_holds()] == [5, 6, 7, 8]
    assert dp.stats()["hold_overflow"] == 5


def test_hold_byte_bound():
    dp = datapath(eroute("198.51.100.0/24", Shunt.TRAP), hold_bytes=3000)
    for n in range(5):
        dp.outbound(ping(n, size=1000))
    assert dp.holds()[0][2] == 2


def test_failure_shunt_pass_sends_held_packets_clear_and_drop_discards():
    dp = datapath(eroute("198.51.100.0/24", Shunt.TRAP))
    dp.outbound(ping(1))
    dp.outbound(ping(2, dst="198.51.100.7"))
    dp.replace_eroutes(ErouteTable([
        eroute("198.51.100.0/24", Shunt.TRAP),
        eroute(PEER + "/32", Shunt.PASS, src=ME + "/32"),
        eroute("198.51.100.7/32", Shunt.DROP, src=ME + "/32"),
    ]))
    assert dp.release_holds() == [("pass", ipaddress.ip_address(PEER), 0, ping(1))]
    assert dp.holds() == []
    assert dp.stats()["dropped"] == 1


def test_holds_time_out():
    dp = datapath(eroute("198.51.100.0/24", Shunt.TRAP), hold_timeout=5.0)
    dp.outbound(ping(), now=100.0)
    dp.release_holds(now=104.0)
    assert len(dp.holds()) == 1
    dp.release_holds(now=106.0)
    assert dp.holds() == [] and dp.stats()["hold_discarded"] == 1


def test_pass_drop_and_no_policy():
    dp = datapath(eroute("198.51.100.0/24", Shunt.PASS), eroute(OTHER + "/32", Shunt.DROP))
    assert dp.outbound(ping()) == [("pass", ipaddress.ip_address(PEER), 0, ping())]
    assert dp.outbound(ping(dst=OTHER)) == []
    # IPv6 link-local chatter the kernel sends into any TUN: no eroute, no acquire.
    rs = raw(IPv6(src="fe80::1", dst="ff02::2") / ICMPv6DestUnreach())
    assert dp.outbound(rs) == []
    assert dp.outbound(ping(dst="224.0.0.251")) == []
    # A unicast packet with no eroute (routed in for a narrowed entry, `tcp 0 22`, whose other
    # traffic is in no group) goes in clear, as it would have without oe.
    stray = ping(dst="203.0.113.77")
    assert dp.outbound(stray) == [("pass", ipaddress.ip_address("203.0.113.77"), 0, stray)]
    assert dp.read_events() == []
    stats = dp.stats()
    assert (stats["passed"], stats["dropped"], stats["no_policy"]) == (1, 1, 3)


def test_reject_answers_icmp_administratively_prohibited():
    dp = datapath(eroute("198.51.100.0/24", Shunt.REJECT), eroute("2001:db8:1::/48", Shunt.REJECT))
    [(kind, _, _, answer)] = dp.outbound(ping())
    icmp = IP(answer)
    assert kind == "tun"
    assert (icmp.src, icmp.dst, icmp[ICMP].type, icmp[ICMP].code) == (PEER, ME, 3, 13)
    assert raw(icmp[IPerror])[:20] == ping()[:20]
    recomputed = IP(answer)
    del recomputed.chksum, recomputed[ICMP].chksum
    recomputed = IP(raw(recomputed))                            # scapy computes both afresh
    assert (icmp.chksum, icmp[ICMP].chksum) == (recomputed.chksum, recomputed[ICMP].chksum)
    v6 = raw(IPv6(src=ME6, dst=PEER6) / UDP(sport=1, dport=2) / b"x")
    [(_, _, _, answer6)] = dp.outbound(v6)
    reply = IPv6(answer6)
    assert (reply[ICMPv6DestUnreach].type, reply[ICMPv6DestUnreach].code) == (1, 1)
    checked = IPv6(answer6)
    del checked[ICMPv6DestUnreach].cksum
    assert IPv6(raw(checked))[ICMPv6DestUnreach].cksum == reply[ICMPv6DestUnreach].cksum
    # Never an ICMP error about an ICMP error.
    assert [kind for kind, *_ in dp.outbound(answer) if kind == "tun"] == []


def test_df_packet_too_big_for_the_path_gets_fragmentation_needed():
    """FreeS/WAN's BUGS, Bantoft's ICMP black-hole proposal: PMTU discovery through the tunnel instead of a black hole."""
    dp = Datapath()
    h4 = dp.add_sa(SaSpec(spi=SPI_OUT, direction="out", key=KEY, local=ME, peer=PEER,
                          path_mtu=1400))
    h6 = dp.add_sa(SaSpec(spi=SPI_OUT + 1, direction="out", key=KEY6, local=ME6, peer=PEER6,
                          path_mtu=1500))
    dp.replace_eroutes(ErouteTable([sa_eroute(PEER + "/32", h4),
                                    sa_eroute(PEER6 + "/128", h6, spi=SPI_OUT + 1, peer=PEER6)]))
    mtu = dp.sa_stats(h4, "out")["mtu"]
    assert mtu == 1400 - 20 - 8 - 37
    [(kind, _, _, answer)] = dp.outbound(ping(size=1400, flags="DF"))
    icmp = IP(answer)
    assert (kind, icmp[ICMP].type, icmp[ICMP].code, icmp[ICMP].nexthopmtu) == ("tun", 3, 4, mtu)
    # Without DF it is fragmented before encryption, the outer packets without DF too
    # (tests/test_datapath_pmtu.py).
    assert [kind for kind, *_ in dp.outbound(ping(size=1400, flags=0))] == ["pass", "pass"]
    big6 = raw(IPv6(src=ME6, dst=PEER6) / UDP(sport=1, dport=2) / (b"x" * 1450))
    [(_, _, _, answer6)] = dp.outbound(big6)
    assert IPv6(answer6)[ICMPv6PacketTooBig].mtu == 1500 - 40 - 8 - 37


def test_tcp_syn_mss_is_clamped_to_the_tunnel():
    dp = Datapath()
    handle = dp.add_sa(SaSpec(spi=SPI_OUT, direction="out", key=KEY, local=ME, peer=PEER))
    dp.replace_eroutes(ErouteTable([sa_eroute(PEER + "/32", handle)]))
    syn = raw(IP(src=ME, dst=PEER, flags="DF") / TCP(sport=40000, dport=80, flags="S",
                                                      options=[("MSS", 1460),
                                                               ("SAckOK", b"")]))
    [(_, _, _, esp)] = dp.outbound(syn)
    clamped = IP(peer_of().open(esp)[2])
    assert dict(clamped[TCP].options)["MSS"] == 1435 - 40
    checked = clamped.copy()
    del checked[TCP].chksum
    assert IP(raw(checked))[TCP].chksum == clamped[TCP].chksum  # incremental update is right
    assert dp.stats()["mss_clamped"] == 1


def test_inbound_through_the_sa_writes_the_inner_packet_to_the_tun():
    dp = Datapath()
    dp.add_sa(SaSpec(spi=SPI_IN, direction="in", key=KEY, local=ME, peer=PEER))
    sender = Datapath()
    handle = sender.add_sa(SaSpec(spi=SPI_IN, direction="out", key=KEY, local=PEER, peer=ME))
    reply = ping(dst=ME, src=PEER)
    [(kind, address, port, packet)] = dp.inbound(sender.seal(handle, reply), PEER)
    assert (kind, address, packet) == ("tun", None, reply)
    assert dp.sa_stats(SPI_IN, "in")["packets"] == 1


FATES = ("esp_out", "esp_in", "rejected", "malformed", "policy", "dropped", "no_policy", "passed",
         "held", "too_big", "no_sa")


def fate(dp, handle):
    """Run handle() (one packet through dp): what came out, and the one counter it moved."""
    before = dp.stats()
    out = handle()
    after = dp.stats()
    moved = {k: after[k] - before[k] for k in FATES if after[k] != before[k]}
    assert len(moved) == 1 and list(moved.values()) == [1], moved   # one fate, counted once
    [name] = moved
    return out, name


@settings(max_examples=300, deadline=None)
@given(st.binary(min_size=0, max_size=120), st.sampled_from([4, 6]))
def test_random_packets_from_the_tun_never_crash(tail, version):
    """Whatever the host writes into the TUN gets one fate, counted: sealed, rejected or
    dropped as malformed, never more; a valid header towards the SA's peer is sealed, whatever
    trails it, and opens to exactly that packet at the peer."""
    dp = Datapath()
    handle = dp.add_sa(SaSpec(spi=SPI_OUT, direction="out", key=KEY, local=ME, peer=PEER))
    dp.replace_eroutes(ErouteTable([eroute("0.0.0.0/0", Shunt.REJECT),
                                    eroute("::/0", Shunt.REJECT), sa_eroute(PEER + "/32", handle)]))
    header = raw(IP(src=ME, dst=PEER, flags="DF")) if version == 4 else raw(IPv6(src=ME6, dst=PEER6))
    for packet in (tail, header[:1] + tail):
        out, name = fate(dp, lambda: dp.outbound(packet))
        assert [kind for kind, *_ in out] == {"esp_out": ["udp"], "rejected": ["tun"]}.get(name, [])
        assert all(len(data) < 2000 for *_, data in out)
    out, name = fate(dp, lambda: dp.outbound(header + tail))
    if version == 4:
        [(kind, _, _, esp)] = out
        assert (name, kind) == ("esp_out", "udp") and peer_of().open(esp)[2] == header
    else:  # no SA towards PEER6: the ::/0 %reject answers
        [(kind, _, _, answer)] = out
        assert (name, kind) == ("rejected", "tun") and ICMPv6DestUnreach in IPv6(answer)


@settings(max_examples=200, deadline=None)
@given(st.binary(min_size=0, max_size=200))
def test_authentic_garbage_inside_esp_is_dropped(inner):
    """A peer that seals garbage gets it counted as malformed or outside the SA's selectors,
    not written to the TUN; only a packet from the peer to us would be (never garbage)."""
    dp = Datapath()
    dp.add_sa(SaSpec(spi=SPI_IN, direction="in", key=KEY, local=ME, peer=PEER))
    sender = Datapath()
    handle = sender.add_sa(SaSpec(spi=SPI_IN, direction="out", key=KEY, local=PEER, peer=ME))
    sealed = sender.seal(handle, b"\x45" + inner.ljust(19, b"\0"))   # tunnel mode, IPv4 next header
    out, name = fate(dp, lambda: dp.inbound(sealed, PEER))
    assert name in ("malformed", "policy", "esp_in")
    assert bool(out) == (name == "esp_in")
    for kind, _, _, packet in out:
        assert kind == "tun" and IP(packet).src == PEER and IP(packet).dst == ME
    # the control: an inner packet that fits the SA arrives, so the drops above were checks
    out, name = fate(dp, lambda: dp.inbound(sender.seal(handle, ping(dst=ME, src=PEER)), PEER))
    assert name == "esp_in" and out[0][3] == ping(dst=ME, src=PEER)


def test_packet_too_big_about_an_ipv6_fragment():
    """The Fragment header is skipped to find the ICMPv6 type (it is not an ICMPv6 error)."""
    from scapy.layers.inet6 import ICMPv6EchoRequest, IPv6ExtHdrFragment, fragment6
    dp = Datapath()
    handle = dp.add_sa(SaSpec(spi=SPI_OUT, direction="out", key=KEY, local=ME6, peer=PEER6,
                              path_mtu=1400))
    dp.replace_eroutes(ErouteTable([sa_eroute(PEER6 + "/128", handle, peer=PEER6)]))
    big = IPv6(src=ME6, dst=PEER6) / IPv6ExtHdrFragment() / ICMPv6EchoRequest(data=b"e" * 3000)
    first = raw(fragment6(big, 1400)[0])
    [(kind, _, _, answer)] = dp.outbound(first)
    assert kind == "tun" and IPv6(answer)[ICMPv6PacketTooBig].mtu == 1400 - 40 - 8 - 37


def test_move_sa_follows_the_peer_without_restarting_sequence_numbers():
    """A NAT rebinding moves an SA to the peer's new address and port; the next packet carries
    the next sequence number (re-adding the SA would repeat IVs under one key)."""
    dp = Datapath()
    handle = dp.add_sa(SaSpec(spi=SPI_OUT, direction="out", key=KEY, local=ME, peer=PEER,
                              encap="udp", peer_port=4500))
    dp.replace_eroutes(ErouteTable([sa_eroute(PEER + "/32", handle)]))
    [(_, _, port, first)] = dp.outbound(ping(1))
    assert port == 4500 and int.from_bytes(first[4:8], "big") == 1
    assert dp.move_sa(handle, "out", "203.0.113.254", 40123)
    [(kind, addr, port, second)] = dp.outbound(ping(2))
    assert (kind, str(addr), port) == ("udp", "203.0.113.254", 40123)
    assert int.from_bytes(second[4:8], "big") == 2
    assert not dp.move_sa(0x7777, "out", PEER, 4500)


# ------------------------------------------------------------------ issue 10: hardening

V, M = PEER, "203.0.113.66"
KEY_V, KEY_M = bytes(range(20)), bytes(range(1, 21))


def test_outbound_spi_collision_cannot_hijack_a_peers_traffic():
    """Issue 10, 1: M picks as its inbound SPI the one V picked (visible on the wire). Our
    traffic classified to V's eroute is still sealed with V's key and sent to V.
    Before: add_sa replaced V's SA silently; the packet went to 203.0.113.66 under M's key."""
    dp = Datapath()
    to_v = dp.add_sa(SaSpec(spi=SPI_OUT, direction="out", key=KEY_V, local=ME, peer=V))
    to_m = dp.add_sa(SaSpec(spi=SPI_OUT, direction="out", key=KEY_M, local=ME, peer=M))
    assert to_v != to_m
    dp.replace_eroutes(ErouteTable([sa_eroute(V + "/32", to_v, peer=V),
                                    sa_eroute(M + "/32", to_m, peer=M)]))
    [(kind, address, port, esp)] = dp.outbound(ping(dst=V))
    assert (kind, str(address), port) == ("udp", V, 4500)
    assert peer_of(KEY_V).open(esp)[2] == ping(dst=V)
    [(_, address, _, esp)] = dp.outbound(ping(dst=M))
    assert str(address) == M and int.from_bytes(esp[:4], "big") == SPI_OUT
    # Each SA is its own: stats and deletion by handle.
    assert dp.sa_stats(to_v, "out")["peer"] == ipaddress.ip_address(V)
    assert dp.del_sa(to_m, "out") and dp.sa_stats(to_m, "out") is None
    assert dp.outbound(ping(dst=V))[0][1] == ipaddress.ip_address(V)


def test_handles_are_never_reused():
    dp = Datapath()
    first = dp.add_sa(SaSpec(spi=SPI_OUT, direction="out", key=KEY_V, local=ME, peer=V))
    dp.del_sa(first, "out")
    second = dp.add_sa(SaSpec(spi=SPI_OUT, direction="out", key=KEY_M, local=ME, peer=V))
    assert second != first and dp.sa_stats(first, "out") is None


def test_add_sa_refuses_duplicates_and_never_resets_a_live_counter():
    """Issue 10, 1 and 2: a replayed ChildSaRekeyed re-added the same SA and add_sa reset its
    sequence number, so IVs repeated under one key (AES-GCM nonce reuse). Before: accepted,
    and the next packet carried IV 1 again."""
    dp = Datapath()
    handle = dp.add_sa(SaSpec(spi=SPI_OUT, direction="out", key=KEY_V, local=ME, peer=V))
    dp.replace_eroutes(ErouteTable([sa_eroute(V + "/32", handle)]))
    first = dp.outbound(ping(dst=V))[0][3]
    dp.add_sa(SaSpec(spi=SPI_IN, direction="in", key=KEY_M, local=ME, peer=V))
    refusals = [
        lambda: dp.add_sa(SaSpec(spi=SPI_OUT, direction="out", key=KEY_V, local=ME,
                                 peer=V)),                                 # same key, out
        lambda: dp.add_sa(SaSpec(spi=SPI_IN + 1, direction="in", key=KEY_V, local=ME,
                                 peer=V)),                                 # same key, in
        lambda: dp.add_sa(SaSpec(spi=SPI_IN, direction="in", key=bytes(range(40, 60)), local=ME,
                                 peer=V)),                                 # same SPI
    ]
    for refused in refusals:
        with pytest.raises(ValueError, match="add_sa refused"):
            refused()
    assert dp.stats()["sa_refused"] == 3
    second = dp.outbound(ping(dst=V))[0][3]
    assert int.from_bytes(second[8:16], "big") == int.from_bytes(first[8:16], "big") + 1
    # Once deleted, the SPI and the key may come back (a new negotiation's own SA).
    assert dp.del_sa(SPI_IN, "in")
    dp.add_sa(SaSpec(spi=SPI_IN, direction="in", key=KEY_M, local=ME, peer=V))


def test_lifetime_events_are_never_lost_in_a_flood():
    """Issue 10, 7: spoofed non-ESP-marker datagrams on 4500 fill the event queue; the soft
    and hard limits crossed then must still reach the control plane (once each), and the
    dropped events are counted by kind. Before: only IkeMessage events came out, the limits'
    events were dropped and, being marked fired, never raised again."""
    dp = Datapath()
    handle = dp.add_sa(SaSpec(spi=SPI_OUT, direction="out", key=KEY, local=ME, peer=PEER,
                              soft_packets=2, hard_packets=3))
    dp.add_sa(SaSpec(spi=SPI_IN, direction="in", key=KEY_M, local=ME, peer=PEER, soft_time=1.0,
                     hard_time=2.0), now=0.0)
    dp.replace_eroutes(ErouteTable([sa_eroute(PEER + "/32", handle),
                                    eroute("203.0.113.0/24", Shunt.TRAP)]))
    for n in range(5000):
        dp.inbound(b"\0\0\0\0ike" + n.to_bytes(2, "big"), OTHER, 4500)
    for n in range(3000):                                   # acquires fill the rest
        dp.outbound(ping(dst=f"203.0.113.{n % 250 + 1}", src=f"192.0.2.{n // 250 + 1}"))
    for n in range(5):
        dp.outbound(ping(n))
    dp.check_lifetimes(now=1.5)
    dp.check_lifetimes(now=3.0)
    events = dp.read_events()
    lifetime = [e for e in events if isinstance(e, (SaSoftLimit, SaExpired))]
    assert lifetime == [
        SaSoftLimit(spi=SPI_OUT, direction="out", reason="packets", handle=handle),
        SaExpired(spi=SPI_OUT, direction="out", reason="packets", handle=handle),
        SaSoftLimit(spi=SPI_IN, direction="in", reason="time", handle=SPI_IN),
        SaExpired(spi=SPI_IN, direction="in", reason="time", handle=SPI_IN)]
    stats = dp.stats()
    # IKE-on-4500 takes half the queue at most: acquires still get through.
    assert sum(isinstance(e, IkeMessage) for e in events) == 2048
    assert stats["events_lost_ike"] == 5000 - 2048
    assert sum(isinstance(e, Acquire) for e in events) == 2048
    assert stats["events_lost_acquire"] == stats["acquires"] - 2048 == 3000 - 2048
    assert dp.read_events() == []


def test_a_lost_acquire_leaves_no_hold_behind():
    """An Acquire dropped by a full queue would leave its %hold (and the destination) stuck
    until hold_timeout; without the hold, the next packet traps again."""
    dp = datapath(eroute("198.51.100.0/24", Shunt.TRAP), eroute("203.0.113.0/24", Shunt.TRAP),
                  max_holds=5000)
    for n in range(4096):
        dp.outbound(ping(dst=f"203.0.113.{n % 250 + 1}", src=f"192.0.2.{n // 250 + 1}"))
    holds = len(dp.holds())
    dp.outbound(ping(1))
    assert dp.stats()["events_lost_acquire"] == 1 and len(dp.holds()) == holds
    dp.read_events()
    dp.outbound(ping(2))
    assert [str(e.dst) for e in dp.read_events()] == [PEER]
    assert (ME, PEER, 1) in [(str(s), str(d), k) for s, d, k in dp.holds()]


def test_failure_events_rearm_after_a_drop():
    """A coalesced replay/auth event lost to a full queue must not silence the SA for good."""
    dp = Datapath()
    dp.add_sa(SaSpec(spi=SPI_IN, direction="in", key=KEY, local=ME, peer=PEER))
    sender = Datapath()
    handle = sender.add_sa(SaSpec(spi=SPI_IN, direction="out", key=KEY, local=PEER, peer=ME))
    esp = sender.seal(handle, ping(dst=ME, src=PEER))
    dp.inbound(esp, PEER)
    for n in range(4096):
        dp.inbound(b"\0\0\0\0ike" + n.to_bytes(2, "big"), OTHER, 4500)
    dp.outbound(ping())                                     # no eroute: nothing queued
    dp.replace_eroutes(ErouteTable([eroute("198.51.100.0/24", Shunt.TRAP)]))
    for n in range(2100):
        dp.outbound(ping(dst=f"198.51.100.{n % 250 + 1}", src=f"192.0.2.{n // 250 + 1}"))
    dp.inbound(esp, PEER)                                   # a replay: its event is lost
    assert dp.stats()["events_lost_replay"] == 1
    dp.read_events()
    dp.inbound(esp, PEER)
    assert ReplayFailure(spi=SPI_IN, total=2) in dp.read_events()


def test_holds_are_capped_globally_oldest_evicted():
    """Issue 10, 6: 200 trapped destinations held 200 holds (49 MiB at 256 KiB each). Now
    max_holds bounds their number and max_hold_total their bytes; the oldest hold goes,
    counted. Before: 200 holds."""
    dp = datapath(eroute("198.51.100.0/24", Shunt.TRAP), max_holds=50,
                  max_hold_total=20 * 1100)
    for n in range(1, 201):
        dp.outbound(ping(dst=f"198.51.100.{n}"))
    held = dp.holds()
    assert len(held) == 50
    assert {str(d) for _, d, _ in held} == {f"198.51.100.{n}" for n in range(151, 201)}
    stats = dp.stats()
    assert (stats["holds"], stats["max_holds"], stats["holds_evicted"]) == (50, 50, 150)
    assert stats["hold_overflow"] == 150
    # The byte cap: big packets to new destinations evict the oldest holds first.
    for n in range(1, 31):
        dp.outbound(ping(dst=f"198.51.100.{n}", size=1000))
    stats = dp.stats()
    assert stats["hold_total_bytes"] <= 20 * 1100 and stats["max_hold_total"] == 20 * 1100
    assert len(dp.holds()) == stats["holds"] < 50
    assert {str(d) for _, d, _ in dp.holds()} >= {f"198.51.100.{n}" for n in range(21, 31)}
    # Releasing holds gives their bytes back.
    dp.replace_eroutes(ErouteTable([eroute("198.51.100.0/24", Shunt.PASS)]))
    dp.release_holds()
    assert (dp.stats()["holds"], dp.stats()["hold_total_bytes"]) == (0, 0)


def test_update_eroutes_is_incremental_and_releases_holds():
    trap = eroute("198.51.100.0/24", Shunt.TRAP)
    dp = datapath(trap)
    dp.outbound(ping(1))
    hold = eroute(PEER + "/32", Shunt.HOLD, src=ME + "/32")
    dp.update_eroutes(add=[hold])
    assert dp.release_holds() == [] and len(dp.holds()) == 1
    handle = dp.add_sa(SaSpec(spi=SPI_OUT, direction="out", key=KEY, local=ME, peer=PEER))
    dp.update_eroutes(add=[sa_eroute(PEER + "/32", handle, src=ME + "/32")])   # replaces
    [(kind, _, _, esp)] = dp.release_holds()
    assert kind == "udp" and peer_of().open(esp)[2] == ping(1)
    dp.update_eroutes(remove=[hold.selector])
    assert set(dp.classifier.table.entries) == {trap}


def test_an_eroute_change_rechecks_the_holds_of_its_pairs():
    """issue 14: after a change of host eroutes the loop rechecks the holds of those pairs (a
    burst of acquires changes the table thousands of times a second, each holding a pair);
    a wider change, or more pairs than it marks, has every hold rechecked."""
    trap = eroute("198.51.100.0/24", Shunt.TRAP)
    dp = datapath(trap)
    peers = [f"198.51.100.{n}" for n in range(1, 80)]
    for peer in peers:
        dp.outbound(raw(IP(src=ME, dst=peer) / UDP(sport=5, dport=53)))
    dp.read_events()
    assert dp.release_holds(every=False) == []          # the first table's own recheck
    dp.update_eroutes(add=[eroute(peers[0] + "/32", Shunt.PASS, src=ME + "/32"),
                           eroute(peers[1] + "/32", Shunt.HOLD, src=ME + "/32")])
    assert [str(IP(p).dst) for _, _, _, p in dp.release_holds(every=False)] == peers[:1]
    assert len(dp.holds()) == dp.stats()["holds"] == len(peers) - 1
    dp.update_eroutes(add=[eroute("198.51.100.0/28", Shunt.PASS)])     # not one pair
    assert len(dp.release_holds(every=False)) == 13                   # .3 to .15 (.2 held)
    held = [peers[1]] + peers[15:]                                     # 65 pairs, 64 marks
    dp.update_eroutes(add=[eroute(p + "/32", Shunt.PASS, src=ME + "/32") for p in held])
    assert len(dp.release_holds(every=False)) == len(held)            # past the marks: all
    assert dp.holds() == [] and dp.release_holds(every=False) == []
    assert dp.stats()["holds"] == dp.stats()["hold_total_bytes"] == 0


@pytest.mark.parametrize("inbound", [True, False])
def test_sa_with_exactly_negotiated_selectors(inbound):
    """Issue 10, 12: add_sa takes address ranges (RFC 7296 3.13.1; CIDRs too), a protocol and
    port ranges; inbound, what arrives outside them is dropped (RFC 4322 12.1)."""
    dp = Datapath()
    kw = dict(src_ts="198.51.100.0/28", dst_ts=("192.0.2.1", "192.0.2.3"), proto=6,
              sport=(1024, 65535), dport=(80, 80)) if inbound else dict(
              src_ts=("192.0.2.1", "192.0.2.3"), dst_ts="198.51.100.0/28", proto=6,
              sport=(80, 80), dport=(1024, 65535))
    dp.add_sa(SaSpec(spi=SPI_IN, direction="in" if inbound else "out", key=KEY, local=ME,
                     peer=PEER, **kw))
    if not inbound:
        return
    sender = Datapath()
    handle = sender.add_sa(SaSpec(spi=SPI_IN, direction="out", key=KEY, local=PEER, peer=ME))

    def arrives(src, dst, proto, sport=0, dport=0):
        l4 = TCP(sport=sport, dport=dport) if proto == "tcp" else UDP(sport=sport, dport=dport)
        return bool(dp.inbound(sender.seal(handle, raw(IP(src=src, dst=dst) / l4)), PEER))

    assert arrives("198.51.100.7", "192.0.2.3", "tcp", 40000, 80)
    assert not arrives("198.51.100.17", "192.0.2.3", "tcp", 40000, 80)   # source outside
    assert not arrives("198.51.100.7", "192.0.2.4", "tcp", 40000, 80)    # destination outside
    assert not arrives("198.51.100.7", "192.0.2.0", "tcp", 40000, 80)    # below the range
    assert not arrives("198.51.100.7", "192.0.2.3", "udp", 40000, 80)    # protocol
    assert not arrives("198.51.100.7", "192.0.2.3", "tcp", 1000, 80)     # source port
    assert not arrives("198.51.100.7", "192.0.2.3", "tcp", 40000, 81)    # destination port
    assert dp.sa_stats(SPI_IN, "in")["policy"] == 6


@pytest.mark.parametrize("bad", [dict(proto=256), dict(proto=6, dport=(90, 80)),
                                 dict(proto=6, sport=(0, 70000)), dict(dport=(80, 80)),
                                 dict(src_ts=("198.51.100.9", "198.51.100.2")),
                                 dict(src_ts=("198.51.100.1", "2001:db8::1"))])
def test_bad_selectors_are_refused(bad):
    with pytest.raises(ValueError):
        Datapath().add_sa(SaSpec(spi=SPI_IN, direction="in", key=KEY, local=ME, peer=PEER, **bad))


def test_ike_on_4500_keeps_the_address_of_ours_it_was_sent_to():
    """docs/gateway.md 1: the wildcard 4500 socket's packet info reaches the IKE engine, which
    answers from that address; an unknown destination is the unspecified address (the engine
    drops it as not ours)."""
    dp = Datapath()
    dp.inbound(b"\0\0\0\0ike", PEER, 4500, dst=ME)
    dp.inbound(b"\0\0\0\0ike", PEER, 4500)
    assert [(str(e.src), str(e.dst), e.data) for e in dp.read_events()] == [
        (PEER, ME, b"ike"), (PEER, "0.0.0.0", b"ike")]
