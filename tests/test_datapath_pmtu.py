"""Path MTU in the datapath (issue 17): the outer DF bit (RFC 4301 8.1), inner fragmentation
before encryption, the SA's path MTU at install and at runtime, and the MSS and ICMP it drives.

Driven from Python with no TUN or socket, as tests/test_datapath.py: outbound() returns
[(kind, address, port, bytes)]. An outer IPv4 packet without DF goes out on the clear raw
socket with the header oe built ("pass", peer, 0, IPv4 header + [UDP header] + ESP): Linux
sets DF per socket, not per packet.
"""

import ipaddress

import pytest
from scapy.layers.inet import ICMP, IP, TCP, UDP
from scapy.layers.inet6 import ICMPv6PacketTooBig, IPv6
from scapy.packet import raw

from oe.datapath import Datapath, SaSpec
from oe.eroute import ErouteTable

from test_datapath import KEY, KEY6, ME, ME6, PEER, PEER6, SPI_OUT, ping, sa_eroute


def sealing(path_mtu=1500, encap="udp", **kw):
    """A datapath with one outbound SA to PEER, and the peer that opens it."""
    dp = Datapath(**kw)
    handle = dp.add_sa(SaSpec(spi=SPI_OUT, direction="out", key=KEY, local=ME, peer=PEER,
                              path_mtu=path_mtu, encap=encap))
    dp.replace_eroutes(ErouteTable([sa_eroute(PEER + "/32", handle)]))
    peer = Datapath()
    peer.add_sa(SaSpec(spi=SPI_OUT, direction="in", key=KEY, local=PEER, peer=ME, encap=encap))
    return dp, handle, peer


def esp_of(kind, data):
    """The ESP part of what outbound() sent, and whether the outer packet forbids fragments
    (None: the socket's default, DF)."""
    if kind == "pass":
        outer = IP(data)
        assert (outer.src, outer.dst, outer.ttl) == (ME, PEER, 64)
        if outer.proto == 17:
            assert (outer[UDP].sport, outer[UDP].dport, outer[UDP].chksum) == (4500, 4500, 0)
            return raw(outer[UDP].payload), bool(outer.flags.DF)
        assert outer.proto == 50
        return raw(outer.payload), bool(outer.flags.DF)
    assert kind in ("udp", "esp")
    return data, None


@pytest.mark.parametrize("encap", ["udp", "esp"])
@pytest.mark.parametrize("policy, inner_df, outer_df", [
    ("copy", True, None), ("copy", False, False), ("set", False, None),
    ("set", True, None), ("clear", True, False), ("clear", False, False)])
def test_the_outer_df_follows_the_policy(encap, policy, inner_df, outer_df):
    """RFC 4301 8.1: the outer header's DF is copied from the inner packet, set, or cleared;
    without DF the outer packet is built by oe and sent on the clear raw socket."""
    dp, _, peer = sealing(encap=encap, df=policy)
    inner = ping(size=100, flags="DF" if inner_df else 0)
    [(kind, address, _, data)] = dp.outbound(inner)
    assert str(address) == PEER
    esp, df = esp_of(kind, data)
    assert df is outer_df
    assert peer.open(esp)[2][:len(inner)] == inner
    assert dp.stats()["esp_out"] == 1 and dp.stats()["passed"] == 0


def test_df_policy_default_is_copy_and_bad_policies_are_refused():
    assert Datapath().df == "copy"
    with pytest.raises(ValueError, match="df"):
        Datapath(df="sometimes")


@pytest.mark.parametrize("encap", ["udp", "esp"])
def test_inner_ipv4_without_df_is_fragmented_before_encryption(encap):
    """RFC 4301 8.1: an inner IPv4 packet without DF larger than the SA's inner MTU becomes
    inner fragments that each fit, each its own ESP packet; the peer's stack reassembles."""
    dp, handle, peer = sealing(path_mtu=1280, encap=encap)
    mtu = dp.sa_stats(handle, "out")["mtu"]
    inner = ping(size=3000, id=77, flags=0)
    sent = dp.outbound(inner)
    assert len(sent) == 3
    frags = []
    for kind, _, _, data in sent:
        esp, df = esp_of(kind, data)
        assert df is False and len(data) <= 1280
        frag = IP(peer.open(esp)[2])
        assert frag.len <= mtu and frag.id == 77 and not frag.flags.DF
        frags.append(frag)
    assert [f.frag * 8 for f in frags] == [0, len(frags[0].payload),
                                           len(frags[0].payload) + len(frags[1].payload)]
    assert [bool(f.flags.MF) for f in frags] == [True, True, False]
    assert b"".join(raw(f.payload) for f in frags) == inner[20:]
    for f in frags:             # each header's checksum is right
        check = f.copy()
        del check.chksum
        assert IP(raw(check)).chksum == f.chksum
    assert dp.sa_stats(handle, "out")["packets"] == 3


def test_a_fragment_is_fragmented_further_keeping_its_offset_and_more_fragments():
    dp, _, peer = sealing(path_mtu=1000)
    inner = raw(IP(src=ME, dst=PEER, id=5, flags="MF", frag=100, proto=17) / (b"u" * 2000))
    frags = [IP(peer.open(esp_of(kind, data)[0])[2]) for kind, _, _, data in dp.outbound(inner)]
    assert len(frags) == 3 and all(f.flags.MF for f in frags)
    assert frags[0].frag == 100 and b"".join(raw(f.payload) for f in frags) == inner[20:]


def test_later_fragments_keep_only_the_options_marked_copied():
    """RFC 791: options without the copied flag go in the first fragment only (NOPs after)."""
    dp, _, peer = sealing(path_mtu=600)
    # Record route (7, not copied) and a copied option 0x94 (router alert), 4 bytes each.
    options = bytes([7, 7, 4]) + bytes(4) + bytes([0x94, 4, 0, 0]) + bytes([0])
    header = IP(src=ME, dst=PEER, ihl=5 + 4, proto=17, options=[])
    inner = bytearray(raw(header / (b"o" * 1200)))
    inner[0] = 0x49
    inner[20:36] = options + bytes(16 - len(options))
    inner[2:4] = (len(inner)).to_bytes(2, "big")
    inner[10:12] = b"\0\0"
    inner = raw(IP(bytes(inner)))   # checksum fixed by scapy
    sent = dp.outbound(inner)
    first, later = (peer.open(esp_of(k, d)[0])[2] for k, _, _, d in sent[:2])
    assert first[20:36] == inner[20:36]
    assert later[20:27] == bytes([1] * 7) and later[27:31] == bytes([0x94, 4, 0, 0])


def test_df_packets_and_ipv6_still_get_too_big_not_fragments():
    dp, handle, _ = sealing(path_mtu=1280)
    mtu = dp.sa_stats(handle, "out")["mtu"]
    [(kind, _, _, answer)] = dp.outbound(ping(size=1300, flags="DF"))
    assert kind == "tun" and IP(answer)[ICMP].nexthopmtu == mtu


def test_set_path_mtu_changes_the_inner_mtu_by_handle_or_peer():
    """The learned path MTU moves the too-big check and the MSS clamp (RFC 4301 8.2.1)."""
    dp, handle, _ = sealing()
    dp.add_sa(SaSpec(spi=0x7000, direction="in", key=KEY6, local=ME, peer=PEER))
    assert dp.sa_stats(handle, "out")["path_mtu"] == 1500
    assert dp.set_path_mtu(handle, 1280) == 1
    assert dp.sa_stats(handle, "out")["mtu"] == 1280 - 20 - 8 - 37
    assert dp.set_path_mtu(PEER, 1400) == 2
    assert [s["path_mtu"] for s in dp.sas()] == [1400, 1400]
    assert dp.set_path_mtu("203.0.113.99", 1400) == 0
    with pytest.raises(ValueError, match="no room"):
        dp.set_path_mtu(handle, 100)
    assert dp.sa_stats(handle, "out")["path_mtu"] == 1400
    [(kind, _, _, answer)] = dp.outbound(ping(size=1400, flags="DF"))
    assert kind == "tun" and IP(answer)[ICMP].nexthopmtu == 1400 - 20 - 8 - 37


def syn(src, dst, mss=1460):
    return raw(IP(src=src, dst=dst, flags="DF") / TCP(sport=40000, dport=80, flags="S",
                                                       options=[("MSS", mss)]))


def test_the_sa_mtu_clamps_the_mss_both_ways():
    """RFC 4459 3.2: a SYN from the peer is clamped to our SA's MTU, not the TUN's: the answer
    goes back over the same path."""
    dp, handle, _ = sealing(path_mtu=1280)
    [(_, _, _, esp)] = dp.outbound(syn(ME, PEER))
    opener = Datapath()
    opener.add_sa(SaSpec(spi=SPI_OUT, direction="in", key=KEY, local=PEER, peer=ME))
    assert dict(IP(opener.open(esp)[2])[TCP].options)["MSS"] == 1280 - 65 - 40
    receiver = Datapath()
    receiver.add_sa(SaSpec(spi=0x7000, direction="in", key=KEY6, local=ME, peer=PEER,
                           path_mtu=1280))
    sender = Datapath()
    out = sender.add_sa(SaSpec(spi=0x7000, direction="out", key=KEY6, local=PEER, peer=ME))
    [(kind, _, _, inner)] = receiver.inbound(sender.seal(out, syn(PEER, ME)), PEER)
    assert kind == "tun" and dict(IP(inner)[TCP].options)["MSS"] == 1280 - 65 - 40


def test_ipv6_senders_are_never_told_less_than_1280():
    """RFC 8200 5: no IPv6 sender is told an MTU below 1280; a packet of up to 1280 bytes the
    SA cannot carry whole goes in an outer IPv4 packet without DF (RFC 4459 3)."""
    dp = Datapath()
    handle = dp.add_sa(SaSpec(spi=SPI_OUT, direction="out", key=KEY, local=ME, peer=PEER,
                              path_mtu=1280, src_ts="::/0", dst_ts="::/0"))
    dp.replace_eroutes(ErouteTable([sa_eroute(PEER6 + "/128", handle)]))
    big = raw(IPv6(src=ME6, dst=PEER6) / UDP(sport=1, dport=2) / (b"x" * 1300))
    [(kind, _, _, answer)] = dp.outbound(big)
    assert kind == "tun" and IPv6(answer)[ICMPv6PacketTooBig].mtu == 1280
    minimum = raw(IPv6(src=ME6, dst=PEER6) / UDP(sport=1, dport=2) / (b"x" * 1232))
    [(kind, _, _, data)] = dp.outbound(minimum)
    assert kind == "pass" and not IP(data).flags.DF and len(data) > 1280


def test_the_outer_df_policy_is_read_from_oe_conf_and_kept_until_a_restart():
    """[esp] df in oe.conf (RFC 4301 8.1); the datapath takes it when it starts."""
    from oe import config
    assert config.Config().esp.df == "copy"
    assert config.parse('[esp]\ndf = "clear"\n').esp.df == "clear"
    with pytest.raises(config.ConfigError, match=r"\[esp\] df: 'maybe': expected one of copy, "
                                                 r"set, clear"):
        config.parse('[esp]\ndf = "maybe"\n')
    diff = config.changes(config.Config(), config.parse('[esp]\ndf = "set"\n'))
    assert diff.kept == ("[esp] df",) and diff.config.esp.df == "copy"


def test_route_mtu_asks_the_kernel_and_falls_back_to_the_default():
    from oe.net import route_mtu
    assert route_mtu("127.0.0.1", 0) == route_mtu("::1", 0) == 65535   # lo: 65536
    assert route_mtu("0.0.0.0", 0, default=1400) in (1400, 65535)


def test_route_mtu_asks_from_our_own_address(monkeypatch):
    """Issue 14: the farm's host has 10,000 addresses, and a socket connected with no source
    bound has the kernel choose one (RFC 6724 source selection walks every address: 850 µs per
    SA there, 5.5 µs bound). The SA's own address is bound first."""
    import socket

    from oe import net
    calls = []

    class Recording(socket.socket):
        def bind(self, address):
            calls.append(("bind", address[0]))
            super().bind(address)

        def connect(self, address):
            calls.append(("connect", address[0]))
            super().connect(address)

    monkeypatch.setattr(net.socket, "socket", Recording)
    assert net.route_mtu("::1", 0, local="::1") == 65535
    assert calls == [("bind", "::1"), ("connect", "::1")]


@pytest.mark.parametrize("family", [4, 6])
@pytest.mark.parametrize("encap", ["udp", "esp"])
def test_a_probe_is_a_padded_echo_request_whose_reply_is_consumed_as_its_ack(family, encap):
    """DPLPMTUD for ESP with any RFC 4303 peer (docs/pmtu.md): the probe is an ESP packet of
    the size asked for, with DF, whose inner packet is a small ICMP echo request padded with
    TFC padding (RFC 4303 2.7); the peer trims the padding and its stack answers; the reply is
    the acknowledgement, consumed by the datapath and raised as an event."""
    from oe.dpevents import PathMtuProbeAcked
    me, peer_addr, key_back = (ME, PEER, KEY6) if family == 4 else (ME6, PEER6, KEY6)
    dp = Datapath()
    dp.add_sa(SaSpec(spi=SPI_OUT, direction="out", key=KEY, local=me, peer=peer_addr,
                     encap=encap))
    dp.add_sa(SaSpec(spi=0x7000, direction="in", key=key_back, local=me, peer=peer_addr,
                     encap=encap))
    peer = Datapath()
    peer.add_sa(SaSpec(spi=SPI_OUT, direction="in", key=KEY, local=peer_addr, peer=me,
                       encap=encap))
    back = peer.add_sa(SaSpec(spi=0x7000, direction="out", key=key_back, local=peer_addr,
                              peer=me, encap=encap))
    assert dp.probe("192.0.2.99" if family == 4 else "2001:db8::99", 1400) is None
    wire = dp.probe(peer_addr, 1400)
    outer = IP(wire) if family == 4 else IPv6(wire)
    assert len(wire) == 1400
    if family == 4:
        assert outer.flags.DF and outer.len == 1400
    esp = raw(outer[UDP].payload) if encap == "udp" else raw(outer.payload)
    if family == 6 and encap == "udp":
        check = outer.copy()
        del check[UDP].chksum
        assert IPv6(raw(check))[UDP].chksum == outer[UDP].chksum
    [(kind, _, _, inner)] = peer.inbound(esp, me, encap=encap)
    request = IP(inner) if family == 4 else IPv6(inner)
    assert kind == "tun" and len(inner) < 100 and (request.src, request.dst) == (me, peer_addr)
    echo = request.payload
    assert echo.type == (8 if family == 4 else 128)
    check = request.copy()
    if family == 4:
        del check.payload.chksum
    else:
        del check.payload.cksum
    rebuilt = (IP if family == 4 else IPv6)(raw(check)).payload
    assert (rebuilt.cksum if family == 6 else rebuilt.chksum) == \
        (echo.cksum if family == 6 else echo.chksum)
    # The peer's stack answers with an echo reply of the same identifier, sequence and data.
    if family == 4:
        reply = IP(src=peer_addr, dst=me) / ICMP(type=0, id=echo.id, seq=echo.seq) / echo.load
    else:
        from scapy.layers.inet6 import ICMPv6EchoReply
        reply = IPv6(src=peer_addr, dst=me) / ICMPv6EchoReply(id=echo.id, seq=echo.seq,
                                                               data=echo.data)
    assert dp.inbound(peer.seal(back, raw(reply)), peer_addr, encap=encap) == []
    assert dp.read_events() == [PathMtuProbeAcked(peer=ipaddress.ip_address(peer_addr),
                                                  size=1400)]
    stats = dp.stats()
    assert (stats["pmtu_probes"], stats["pmtu_acks"], stats["tun_write"]) == (1, 1, 0)
    if family == 4:     # any other echo reply goes to the TUN as before
        other = IP(src=peer_addr, dst=me) / ICMP(type=0, id=echo.id, seq=echo.seq) / (b"x" * 8)
        assert [k for k, *_ in dp.inbound(peer.seal(back, raw(other)), peer_addr,
                                          encap=encap)] == ["tun"]


@pytest.mark.parametrize("encap", ["udp", "esp"])
def test_ipv6_minimum_mtu_packets_go_in_outer_ipv6_fragments_oe_makes(encap):
    """RFC 8200 5, RFC 4459 3: a 1280-byte IPv6 packet must cross a 1280 path, so its ESP
    packet (larger) is fragmented by oe at the source, in IPv6 fragments that fit the SA's
    path MTU (the kernel does not know the path: its ICMP was black-holed)."""
    from scapy.layers.inet6 import IPv6ExtHdrFragment, defragment6
    dp = Datapath()
    handle = dp.add_sa(SaSpec(spi=SPI_OUT, direction="out", key=KEY, local=ME6, peer=PEER6,
                              path_mtu=1280, encap=encap))
    dp.replace_eroutes(ErouteTable([sa_eroute(PEER6 + "/128", handle, peer=PEER6)]))
    peer = Datapath()
    peer.add_sa(SaSpec(spi=SPI_OUT, direction="in", key=KEY, local=PEER6, peer=ME6,
                       encap=encap))
    inner = raw(IPv6(src=ME6, dst=PEER6) / UDP(sport=1, dport=2) / (b"m" * 1232))
    sent = dp.outbound(inner)
    assert [kind for kind, *_ in sent] == ["pass", "pass"]
    frags = [IPv6(data) for _, _, _, data in sent]
    assert all(len(raw(f)) <= 1280 and IPv6ExtHdrFragment in f for f in frags)
    assert len({f[IPv6ExtHdrFragment].id for f in frags}) == 1
    whole = defragment6(frags)
    assert (whole.src, whole.dst) == (ME6, PEER6)
    esp = raw(whole[UDP].payload) if encap == "udp" else raw(whole.payload)
    if encap == "udp":
        check = whole.copy()
        del check[UDP].chksum
        assert IPv6(raw(check))[UDP].chksum == whole[UDP].chksum
    assert peer.open(esp)[2][:len(inner)] == inner
    # What fits goes whole, on the ESP socket as ever.
    small = raw(IPv6(src=ME6, dst=PEER6) / UDP(sport=1, dport=2) / (b"s" * 100))
    assert [kind for kind, *_ in dp.outbound(small)] == [encap]


@pytest.mark.parametrize("family", [4, 6])
def test_a_too_big_that_names_none_of_our_sas_to_that_peer_is_counted_and_ignored(family):
    """RFC 8899 4.6.1: an ICMP too-big is believed only if the datagram it quotes is ours: its
    SPI names one of our outbound SAs to that peer. Anything else (another SPI, an SPI of an SA
    to another peer: spoofed or stale) is counted `pmtu_too_big_ignored` and raises nothing,
    so no path MTU moves. The kernel's own refusal (EMSGSIZE, SO_EE_ORIGIN_LOCAL) quotes
    nothing and is believed for any peer we have an SA to."""
    from oe.dpevents import PathMtuTooBig
    me, peer, other = (ME, PEER, "192.0.2.99") if family == 4 else (ME6, PEER6, "2001:db8::99")
    dp = Datapath()
    dp.add_sa(SaSpec(spi=SPI_OUT, direction="out", key=KEY, local=me, peer=peer))
    dp.add_sa(SaSpec(spi=0x7000, direction="in", key=KEY6, local=me, peer=peer))
    before = dp.sas()
    assert dp.path_mtu_error(peer, SPI_OUT + 1, 1280) is False        # not our SPI
    assert dp.path_mtu_error(peer, 0x7000, 1280) is False             # inbound, not outbound
    assert dp.path_mtu_error(other, SPI_OUT, 1280) is False           # ours, to another peer
    assert dp.path_mtu_error(other, 0, 1280, local=True) is False     # no SA to that peer
    assert dp.stats()["pmtu_too_big_ignored"] == 4
    assert dp.stats()["pmtu_too_big"] == 0
    assert dp.read_events() == [] and dp.sas() == before
    assert dp.path_mtu_error(peer, SPI_OUT, 1280) is True
    assert dp.path_mtu_error(peer, 0, 1400, local=True) is True
    assert dp.read_events() == [
        PathMtuTooBig(peer=ipaddress.ip_address(peer), mtu=1280, local=False),
        PathMtuTooBig(peer=ipaddress.ip_address(peer), mtu=1400, local=True)]
    assert (dp.stats()["pmtu_too_big"], dp.stats()["pmtu_too_big_ignored"]) == (2, 4)


def test_datagrams_the_kernel_refuses_are_counted_on_their_sa_and_none_lost_to_an_old_error():
    """Issue 17, 3 (no silent loss): a datagram sendmmsg() refuses is counted on the SA it was
    sealed under (`send_errors`; EMSGSIZE also as `emsgsize`, tests/netns/test_pmtu_netns.py),
    not only globally. With IP_RECVERR an ICMP about an earlier datagram (here: port
    unreachable from 127.0.0.1) fails the socket's next send once: that datagram is sent again,
    not lost. The loops run on a socketpair as the TUN and one real UDP socket."""
    import socket
    import time
    tun, tun_peer = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
    udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    udp.bind(("127.0.0.1", 0))
    closed = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    closed.bind(("127.0.0.1", 0))
    closed_port = closed.getsockname()[1]
    closed.close()                                  # nobody listens: port unreachable
    for s in (tun, udp):
        s.setblocking(False)
    dp = Datapath()
    refused = dp.add_sa(SaSpec(spi=SPI_OUT, direction="out", key=KEY, local="127.0.0.1",
                               peer="255.255.255.255"))     # no SO_BROADCAST: EACCES
    fine = dp.add_sa(SaSpec(spi=SPI_OUT + 1, direction="out", key=KEY6, local="127.0.0.1",
                            peer="127.0.0.1", peer_port=closed_port))
    dp.replace_eroutes(ErouteTable([
        sa_eroute(PEER + "/32", refused, peer="255.255.255.255"),
        sa_eroute("203.0.113.7/32", fine, spi=SPI_OUT + 1, peer="127.0.0.1")]))
    for n in range(3):      # queued first: one read, one sendmmsg (sizes apart: no GSO)
        tun_peer.send(ping(n, size=56 + 100 * n, dst="203.0.113.7"))
    for n in range(3):
        tun_peer.send(ping(n))
    dp.start(tun.fileno(), udp4=udp.fileno(), threads=1, vnet_hdr=False)
    try:
        time.sleep(0.2)
    finally:
        dp.stop()
        for s in (tun, tun_peer, udp):
            s.close()
    stats = {sa["handle"]: sa for sa in dp.sas()}
    assert (stats[refused]["send_errors"], stats[refused]["emsgsize"]) == (3, 0)
    assert (stats[fine]["send_errors"], stats[fine]["packets"]) == (0, 3)
    assert dp.stats()["send_errors"] == 3


def test_a_large_tcp_segment_sent_again_raises_a_suspected_black_hole():
    """RFC 8899 4.3 / 5.2: the datapath's own evidence that large packets are lost: a TCP
    segment whose ESP packet exceeds the base size (1200 outer, IPv4), sent again (its data at
    or below what its flow already sent), raises PathMtuBlackHole for the SA's peer, at most
    once a second; small segments sent again (loss the path MTU cannot explain) raise
    nothing."""
    from oe.dpevents import PathMtuBlackHole
    dp, handle, _ = sealing()
    mtu = dp.sa_stats(handle, "out")["mtu"]

    def segment(seq, size, sport=40000):
        return raw(IP(src=ME, dst=PEER, flags="DF") / TCP(sport=sport, dport=80, flags="A",
                                                          seq=seq) / (b"d" * size))

    full = mtu - 40
    for k in range(4):
        dp.outbound(segment(1000 + k * full, full), now=1.0)
    dp.outbound(segment(7, full, sport=40001), now=1.0)              # another flow
    dp.outbound(segment(5000, 100), now=1.5)                          # small, then again
    dp.outbound(segment(5000, 100), now=1.6)
    assert dp.read_events() == []
    dp.outbound(segment(1000 + full, full), now=2.0)                  # sent again
    assert dp.read_events() == [PathMtuBlackHole(peer=ipaddress.ip_address(PEER))]
    dp.outbound(segment(1000, full), now=2.5)                         # within the second
    assert dp.read_events() == []
    dp.outbound(segment(7, full, sport=40001), now=3.1)
    assert dp.read_events() == [PathMtuBlackHole(peer=ipaddress.ip_address(PEER))]
    assert dp.stats()["pmtu_black_holes"] == 2


def test_a_probe_and_a_peers_path_mtu_cost_the_same_beside_20000_sas():
    """Issue 14: with 10,000 peers, each path MTU probe and each change of a peer's path MTU
    walked every SA's slot (13 probes per peer at the farm: O(N²) in all); they find the
    peer's SAs by its address, in the same time beside 20,000 other SAs as beside none."""
    import time

    def cost(others: int) -> float:
        dp, _, _ = sealing()
        dp.add_sa(SaSpec(spi=0x7000, direction="in", key=KEY6, local=ME, peer=PEER))
        base = ipaddress.ip_address("198.18.0.1")
        for n in range(others):
            peer = str(base + n)
            dp.add_sa(SaSpec(spi=0x10000 + n, direction="out", key=n.to_bytes(20, "big"),
                             local=ME, peer=peer))
            dp.add_sa(SaSpec(spi=0x10000 + n, direction="in",
                             key=(n + others).to_bytes(20, "big"), local=ME, peer=peer))
        best = float("inf")
        for _ in range(5):
            start = time.perf_counter()
            for size in range(1300, 1400):
                assert dp.probe(PEER, size) is not None
                assert dp.set_path_mtu(PEER, size) == 2
            best = min(best, time.perf_counter() - start)
        return best

    small, large = cost(0), cost(20_000)
    assert large < 3 * small, f"{large / small:.1f} times slower beside 20,000 SAs"
