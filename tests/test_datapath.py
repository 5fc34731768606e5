"""The per-packet decisions around ESP, driven from Python with no TUN or socket.

Datapath.outbound() is what the TUN loop does with one packet, inbound() what the socket loop
does with one datagram; they return [(kind, address, port, bytes)] instead of sending.
"""

import ipaddress
import select

from hypothesis import given, settings
from hypothesis import strategies as st
from scapy.layers.inet import ICMP, IP, TCP, UDP, IPerror
from scapy.layers.inet6 import ICMPv6DestUnreach, ICMPv6PacketTooBig, IPv6
from scapy.packet import raw

from oe.datapath import Datapath
from oe.dpevents import Acquire
from oe.eroute import Eroute, ErouteTable, SaAction, Selector, Shunt

ME, PEER, OTHER = "192.0.2.1", "198.51.100.2", "203.0.113.9"
ME6, PEER6 = "2001:db8::1", "2001:db8:1::2"
SPI_OUT, SPI_IN = 0x5000, 0x6000
KEY = bytes(range(20))


def net(text):
    return ipaddress.ip_network(text)


def eroute(dst, action, src=None):
    dst = net(dst)
    src = net(src) if src else Selector.any_source(dst.version)
    return Eroute(Selector(src, dst), action)


def sa_eroute(dst, spi=SPI_OUT, peer=PEER):
    return eroute(dst, SaAction(ipaddress.ip_address(peer), spi))


def datapath(*eroutes, **kw):
    dp = Datapath(**kw)
    dp.replace_eroutes(ErouteTable(eroutes))
    return dp


def peer_of(dp_out_key=KEY, mode_kw=None):
    """The other end: opens what we seal towards it."""
    peer = Datapath()
    peer.add_sa(SPI_OUT, "in", dp_out_key, local=PEER, peer=ME, **(mode_kw or {}))
    return peer


def ping(n=0, size=56, dst=PEER, src=ME, **ip):
    return raw(IP(src=src, dst=dst, **ip) / ICMP(id=1, seq=n) / (b"p" * size))


def test_sa_eroute_seals_towards_the_peer_on_4500():
    dp = datapath(sa_eroute(PEER + "/32"))
    dp.add_sa(SPI_OUT, "out", KEY, local=ME, peer=PEER)
    [(kind, address, port, esp)] = dp.outbound(ping())
    assert (kind, str(address), port) == ("udp", PEER, 4500)
    assert peer_of().open(esp)[2] == ping()
    assert dp.classifier.counters()[0][0] == 1


def test_raw_esp_encapsulation():
    dp = datapath(sa_eroute(PEER + "/32"))
    dp.add_sa(SPI_OUT, "out", KEY, local=ME, peer=PEER, encap="esp")
    [(kind, address, port, esp)] = dp.outbound(ping())
    assert (kind, str(address)) == ("esp", PEER)


def test_sa_eroute_without_sa_is_dropped_and_counted():
    dp = datapath(sa_eroute(PEER + "/32"))
    assert dp.outbound(ping()) == []
    assert dp.stats()["no_sa"] == 1


def test_trap_raises_one_acquire_and_holds_the_pair():
    """seeds/003: an acquire per packet floods the keying daemon; a /32 %hold stops it."""
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
    dp.add_sa(SPI_OUT, "out", KEY, local=ME, peer=PEER)
    sa = eroute(PEER + "/32", SaAction(ipaddress.ip_address(PEER), SPI_OUT), src=ME + "/32")
    dp.replace_eroutes(ErouteTable([trap, sa]))
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
    assert IP(raw(icmp)).chksum == IP(answer).chksum           # header checksum is right
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
    """seeds/000, seeds/004: PMTU discovery through the tunnel instead of a black hole."""
    dp = datapath(sa_eroute(PEER + "/32"), sa_eroute(PEER6 + "/128", spi=SPI_OUT + 1, peer=PEER6))
    dp.add_sa(SPI_OUT, "out", KEY, local=ME, peer=PEER, path_mtu=1400)
    dp.add_sa(SPI_OUT + 1, "out", KEY, local=ME6, peer=PEER6, path_mtu=1500)
    mtu = dp.sa_stats(SPI_OUT, "out")["mtu"]
    assert mtu == 1400 - 20 - 8 - 37
    [(kind, _, _, answer)] = dp.outbound(ping(size=1400, flags="DF"))
    icmp = IP(answer)
    assert (kind, icmp[ICMP].type, icmp[ICMP].code, icmp[ICMP].nexthopmtu) == ("tun", 3, 4, mtu)
    # Without DF it is sealed and the outer packet may be fragmented.
    assert dp.outbound(ping(size=1400))[0][0] == "udp"
    big6 = raw(IPv6(src=ME6, dst=PEER6) / UDP(sport=1, dport=2) / (b"x" * 1450))
    [(_, _, _, answer6)] = dp.outbound(big6)
    assert IPv6(answer6)[ICMPv6PacketTooBig].mtu == 1500 - 40 - 8 - 37


def test_tcp_syn_mss_is_clamped_to_the_tunnel():
    dp = datapath(sa_eroute(PEER + "/32"))
    dp.add_sa(SPI_OUT, "out", KEY, local=ME, peer=PEER)
    syn = raw(IP(src=ME, dst=PEER) / TCP(sport=40000, dport=80, flags="S",
                                          options=[("MSS", 1460), ("SAckOK", b"")]))
    [(_, _, _, esp)] = dp.outbound(syn)
    clamped = IP(peer_of().open(esp)[2])
    assert dict(clamped[TCP].options)["MSS"] == 1435 - 40
    checked = clamped.copy()
    del checked[TCP].chksum
    assert IP(raw(checked))[TCP].chksum == clamped[TCP].chksum  # incremental update is right
    assert dp.stats()["mss_clamped"] == 1


def test_inbound_through_the_sa_writes_the_inner_packet_to_the_tun():
    dp = Datapath()
    dp.add_sa(SPI_IN, "in", KEY, local=ME, peer=PEER)
    sender = Datapath()
    sender.add_sa(SPI_IN, "out", KEY, local=PEER, peer=ME)
    reply = ping(dst=ME, src=PEER)
    [(kind, address, port, packet)] = dp.inbound(sender.seal(SPI_IN, reply), PEER)
    assert (kind, address, packet) == ("tun", None, reply)
    assert dp.sa_stats(SPI_IN, "in")["packets"] == 1


@settings(max_examples=300, deadline=None)
@given(st.binary(min_size=0, max_size=120), st.sampled_from([4, 6]))
def test_random_packets_from_the_tun_never_crash(tail, version):
    """Whatever the host writes into the TUN is classified, sealed, held or dropped, never more."""
    dp = datapath(eroute("0.0.0.0/0", Shunt.REJECT), eroute("::/0", Shunt.REJECT),
                  sa_eroute(PEER + "/32"))
    dp.add_sa(SPI_OUT, "out", KEY, local=ME, peer=PEER)
    header = raw(IP(src=ME, dst=PEER)) if version == 4 else raw(IPv6(src=ME6, dst=PEER6))
    for packet in (tail, header[:1] + tail, header + tail):
        for kind, _, _, data in dp.outbound(packet):
            assert kind in ("udp", "tun") and len(data) < 2000


@settings(max_examples=200, deadline=None)
@given(st.binary(min_size=0, max_size=200))
def test_authentic_garbage_inside_esp_is_dropped(inner):
    """A peer that seals garbage gets it counted as malformed, not written to the TUN."""
    dp = Datapath()
    dp.add_sa(SPI_IN, "in", KEY, local=ME, peer=PEER)
    sender = Datapath()
    sender.add_sa(SPI_IN, "out", KEY, local=PEER, peer=ME)
    sealed = sender.seal(SPI_IN, b"\x45" + inner.ljust(19, b"\0"))   # tunnel mode, IPv4 next header
    for kind, _, _, packet in dp.inbound(sealed, PEER):
        assert kind == "tun" and IP(packet).src == PEER and IP(packet).dst == ME


def test_packet_too_big_about_an_ipv6_fragment():
    """The Fragment header is skipped to find the ICMPv6 type (it is not an ICMPv6 error)."""
    from scapy.layers.inet6 import ICMPv6EchoRequest, IPv6ExtHdrFragment, fragment6
    dp = datapath(sa_eroute(PEER6 + "/128", peer=PEER6))
    dp.add_sa(SPI_OUT, "out", KEY, local=ME6, peer=PEER6, path_mtu=1300)
    big = IPv6(src=ME6, dst=PEER6) / IPv6ExtHdrFragment() / ICMPv6EchoRequest(data=b"e" * 3000)
    first = raw(fragment6(big, 1400)[0])
    [(kind, _, _, answer)] = dp.outbound(first)
    assert kind == "tun" and IPv6(answer)[ICMPv6PacketTooBig].mtu == 1300 - 40 - 8 - 37


def test_move_sa_follows_the_peer_without_restarting_sequence_numbers():
    """A NAT rebinding moves an SA to the peer's new address and port; the next packet carries
    the next sequence number (re-adding the SA would repeat IVs under one key)."""
    dp = Datapath()
    dp.add_sa(SPI_OUT, "out", KEY, local=ME, peer=PEER, encap="udp", peer_port=4500)
    dp.replace_eroutes(ErouteTable([eroute(PEER + "/32", SaAction(ipaddress.ip_address(PEER),
                                                                   SPI_OUT))]))
    [(_, _, port, first)] = dp.outbound(ping(1))
    assert port == 4500 and int.from_bytes(first[4:8], "big") == 1
    assert dp.move_sa(SPI_OUT, "out", "203.0.113.254", 40123)
    [(kind, addr, port, second)] = dp.outbound(ping(2))
    assert (kind, str(addr), port) == ("udp", "203.0.113.254", 40123)
    assert int.from_bytes(second[4:8], "big") == 2
    assert not dp.move_sa(0x7777, "out", PEER, 4500)
