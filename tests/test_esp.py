"""ESP seal/open (RFC 4303, RFC 4106) against oracles: published GCM vectors and scapy's ESP."""

import ipaddress
import os
import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scapy.layers.inet import ICMP, IP, TCP, UDP
from scapy.layers.inet6 import IPv6
from scapy.layers.ipsec import ESP, SecurityAssociation
from scapy.packet import raw

from oe.datapath import Datapath, EspError, SaSpec, gcm_decrypt, gcm_encrypt
from oe.dpevents import AuthFailure, ReplayFailure, SaExpired, SaSoftLimit

LOCAL, PEER = "192.0.2.1", "198.51.100.2"
LOCAL6, PEER6 = "2001:db8::1", "2001:db8:1::2"
SPI = 0x1234ABCD

# McGrew & Viega, "The Galois/Counter Mode of Operation", test cases 3, 4, 15 and 16, in the
# RFC 4106 split (KEYMAT = key || 4-byte salt, 8-byte IV) as strongSwan's test vectors carry
# them: strongswan src/libstrongswan/plugins/test_vectors/test_vectors/aes_gcm.c (aes_gcm3,
# aes_gcm4, aes_gcm6, aes_gcm7).
_K128 = "feffe9928665731c6d6a8f9467308308"
_P = ("d9313225f88406e5a55909c5aff5269a86a7a9531534f7da2e4c303d8a318a72"
      "1c3c0c95956809532fcf0e2449a6b525b16aedf5aa0de657ba637b391aafd255")
_AAD = "feedfacedeadbeeffeedfacedeadbeefabaddad2"
GCM_VECTORS = [
    (_K128 + "cafebabe", "", _P,
     "42831ec2217774244b7221b784d0d49ce3aa212f2c02a4e035c17e2329aca12e"
     "21d514b25466931c7d8f6a5aac84aa051ba30b396a0aac973d58e091473f5985"
     "4d5c2af327cd64a62cf35abd2ba6fab4"),
    (_K128 + "cafebabe", _AAD, _P[:120],
     "42831ec2217774244b7221b784d0d49ce3aa212f2c02a4e035c17e2329aca12e"
     "21d514b25466931c7d8f6a5aac84aa051ba30b396a0aac973d58e0915bc94fbc"
     "3221a5db94fae95ae7121a47"),
    (_K128 * 2 + "cafebabe", "", _P,
     "522dc1f099567d07f47f37a32a84427d643a8cdcbfe5c0c97598a2bd2555d1aa"
     "8cb08e48590dbb3da7b08b1056828838c5f61e6393ba7a0abcc9f662898015ad"
     "b094dac5d93471bdec1a502270e3cc6c"),
    (_K128 * 2 + "cafebabe", _AAD, _P[:120],
     "522dc1f099567d07f47f37a32a84427d643a8cdcbfe5c0c97598a2bd2555d1aa"
     "8cb08e48590dbb3da7b08b1056828838c5f61e6393ba7a0abcc9f66276fc6ece"
     "0f4e1768cddf8853bb2d551b"),
]
GCM_IV = bytes.fromhex("facedbaddecaf888")


@pytest.mark.parametrize("keymat,aad,plain,sealed", GCM_VECTORS)
def test_published_gcm_vectors(keymat, aad, plain, sealed):
    """The datapath's AEAD code reproduces the GCM paper's vectors in the RFC 4106 split."""
    keymat, aad, plain, sealed = map(bytes.fromhex, (keymat, aad, plain, sealed))
    assert gcm_encrypt(keymat, GCM_IV, aad, plain) == sealed
    assert gcm_decrypt(keymat, GCM_IV, aad, sealed) == plain
    forged = bytearray(sealed)
    forged[3] ^= 1
    with pytest.raises(EspError, match="authentication"):
        gcm_decrypt(keymat, GCM_IV, aad, bytes(forged))


def keymat(bits: int) -> bytes:
    return bytes(range(1, bits // 8 + 5))


class Loopback:
    """Both ends of one SA: seal() on the sender's outbound SA, the rest on the receiver's
    inbound SA. Two datapaths, because one refuses to hold one KEYMAT twice (issue 10, 2)."""

    def __init__(self, sender, handle, receiver):
        self.sender, self.handle, self.receiver = sender, handle, receiver

    def seal(self, spi, packet):
        assert spi == SPI
        return self.sender.seal(self.handle, packet)

    def read_events(self):
        return self.sender.read_events() + self.receiver.read_events()

    def __getattr__(self, name):
        return getattr(self.receiver, name)


def pair(bits=128, esn=False, tunnel=True, seq=0, local=LOCAL, peer=PEER, **kw):
    """Our side (out SA + in SA with one key) and scapy's SA for the same key and SPI."""
    key = keymat(bits)
    sender, receiver = Datapath(), Datapath()
    handle = sender.add_sa(SaSpec(spi=SPI, direction="out", key=key, local=local, peer=peer,
                                  tunnel=tunnel, esn=esn, seq=seq, **kw))
    receiver.add_sa(SaSpec(spi=SPI, direction="in", key=key, local=peer, peer=local,
                           tunnel=tunnel, esn=esn, seq=seq, **kw))
    dp = Loopback(sender, handle, receiver)
    outer = IP if ipaddress.ip_address(local).version == 4 else IPv6
    sa = SecurityAssociation(ESP, spi=SPI, crypt_algo="AES-GCM", crypt_key=key,
                             crypt_icv_size=16,
                             tunnel_header=outer(src=local, dst=peer) if tunnel else None,
                             esn_en=esn, esn=seq >> 32)
    return dp, sa, outer


INNER = [
    IP(src=LOCAL, dst=PEER) / ICMP(id=7, seq=1) / (b"x" * 56),
    IP(src=LOCAL, dst=PEER) / UDP(sport=5000, dport=53) / (b"q" * 3),
    IPv6(src=LOCAL6, dst=PEER6) / UDP(sport=1, dport=2) / (b"v6" * 300),
]
CASES = [(bits, esn, i) for bits in (128, 256) for esn in (False, True) for i in range(len(INNER))]


@pytest.mark.parametrize("bits,esn,i", CASES)
def test_tunnel_seal_is_byte_exact_with_scapy(bits, esn, i):
    """Our ESP equals scapy's for the same SA, sequence number and IV, and scapy opens it."""
    seq = (5 << 32) + 0xFFFFFFF0 if esn else 41
    dp, sa, outer = pair(bits, esn, seq=seq)
    inner = INNER[i]
    ours = dp.seal(SPI, raw(inner))
    n = seq + 1
    theirs = sa.encrypt(inner, seq_num=n & 0xFFFFFFFF, iv=n.to_bytes(8, "big"),
                        esn_en=esn, esn=n >> 32)
    assert ours == raw(theirs[ESP])
    opened = sa.decrypt(outer(src=LOCAL, dst=PEER) / ESP(ours), esn_en=esn, esn=n >> 32)
    assert raw(opened) == raw(inner)


@pytest.mark.parametrize("bits,esn,i", CASES)
def test_tunnel_open_accepts_scapy(bits, esn, i):
    """What scapy seals, we open to the same inner packet; a second copy is a replay."""
    seq = (3 << 32) + 100 if esn else 100
    dp, sa, outer = pair(bits, esn, seq=seq)
    inner = INNER[i]
    n = seq + 7
    pkt = sa.encrypt(inner, seq_num=n & 0xFFFFFFFF, iv=os.urandom(8), esn_en=esn, esn=n >> 32)
    spi, nh, payload = dp.open(raw(pkt[ESP]))
    assert (spi, nh) == (SPI, 4 if inner.version == 4 else 41)
    assert payload == raw(inner)
    with pytest.raises(EspError, match="replay"):
        dp.open(raw(pkt[ESP]))
    assert dp.sa_stats(SPI, "in")["replay"] == 1


def test_transport_mode_both_ways_with_scapy():
    """Transport mode: the payload after the IP header is protected; next header = TCP."""
    dp, sa, outer = pair(tunnel=False)
    inner = IP(src=LOCAL, dst=PEER) / TCP(sport=1234, dport=80, flags="PA") / b"GET /"
    ours = dp.seal(SPI, raw(inner))
    theirs = sa.encrypt(inner, seq_num=1, iv=(1).to_bytes(8, "big"))
    assert ours == raw(theirs[ESP])
    datagram = raw(IP(src=LOCAL, dst=PEER) / UDP(sport=9, dport=9) / b"hi")
    back = sa.encrypt(IP(datagram), seq_num=3)
    spi, nh, payload = dp.open(raw(back[ESP]))
    assert nh == 17 and payload == datagram[20:]
    # Through inbound(): the IP header is rebuilt from the SA's addresses.
    [(kind, _, _, packet)] = dp.inbound(raw(sa.encrypt(
        IP(src=LOCAL, dst=PEER) / UDP(sport=9, dport=9) / b"yo", seq_num=4)[ESP]), LOCAL)
    assert kind == "tun"
    rebuilt = IP(packet)
    assert (rebuilt.src, rebuilt.dst, rebuilt.proto) == (LOCAL, PEER, 17)
    assert raw(rebuilt[UDP].payload) == b"yo"


def test_ipv6_outer_with_scapy():
    """IPv6 outer, IPv4 inner."""
    dp, sa, outer = pair(local=LOCAL6, peer=PEER6, src_ts="0.0.0.0/0", dst_ts="0.0.0.0/0")
    ours = dp.seal(SPI, raw(INNER[0]))
    assert raw(sa.decrypt(IPv6(src=LOCAL6, dst=PEER6) / ESP(ours))) == raw(INNER[0])


def test_ipv4_options_and_fragments_cross_intact():
    """KLIPS could not carry IP options; NRL's ESP corrupted fragments (FreeS/WAN's BUGS, NRL's bug list)."""
    dp, sa, outer = pair()
    with_options = IP(src=LOCAL, dst=PEER, options=b"\x94\x04\x00\x00") / ICMP() / b"ra"
    frags = [raw(f) for f in (IP(src=LOCAL, dst=PEER, id=99) / UDP() / (b"F" * 3000)).fragment(1000)]
    for packet in [raw(with_options)] + frags:
        assert dp.open(dp.seal(SPI, packet))[2] == packet


def test_truncated_forged_and_wrong_spi_packets_are_counted_and_dropped():
    dp, sa, outer = pair()
    good = dp.seal(SPI, raw(INNER[0]))
    for cut in (0, 3, 8, 16, 20, 31, 32, len(good) - 1):
        with pytest.raises(EspError):
            dp.open(good[:cut])
    for flip in (8, 16, len(good) // 2, len(good) - 1):      # IV, ciphertext, ICV
        forged = bytearray(good)
        forged[flip] ^= 0x80
        with pytest.raises(EspError, match="authentication"):
            dp.open(bytes(forged))
    with pytest.raises(EspError, match="unknown SPI"):
        dp.open(b"\x00\x00\x99\x99" + good[4:])
    wrong_seq = bytearray(good)
    wrong_seq[7] ^= 2                                           # Seq is in the AAD
    with pytest.raises(EspError, match="authentication"):
        dp.open(bytes(wrong_seq))
    assert dp.open(good)[2] == raw(INNER[0])                    # forgeries moved no window
    stats = dp.sa_stats(SPI, "in")
    assert stats["authentication"] == 5 and stats["packets"] == 1
    assert dp.stats()["unknown_spi"] == 1
    events = dp.read_events()
    assert events == [AuthFailure(spi=SPI, total=1)]            # coalesced until read
    forged = bytearray(dp.seal(SPI, raw(INNER[0])))
    forged[-1] ^= 1
    with pytest.raises(EspError):
        dp.open(bytes(forged))
    assert dp.read_events() == [AuthFailure(spi=SPI, total=6)]


def test_wrong_padding_is_refused():
    """RFC 4303 2.4: padding bytes are 1, 2, 3, ...; authentic packets with others are dropped."""
    key = keymat(128)
    dp = Datapath()
    dp.add_sa(SaSpec(spi=SPI, direction="in", key=key, local=PEER, peer=LOCAL))
    inner = raw(INNER[0])                       # 84 bytes: 2 bytes of padding
    header = SPI.to_bytes(4, "big") + (1).to_bytes(4, "big")
    iv = (1).to_bytes(8, "big")
    plain = inner + b"\x01\x07" + b"\x02\x04"
    esp = header + iv + gcm_encrypt(key, iv, header, plain)
    with pytest.raises(EspError, match="padding"):
        dp.open(esp)
    assert dp.stats()["padding"] == 1


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=200), st.sampled_from(["udp", "esp"]))
def test_random_datagrams_never_crash(data, encap):
    dp, sa, outer = pair()
    assert dp.inbound(data, LOCAL, encap=encap) == []


def test_keepalive_and_ike_demux_on_4500():
    """RFC 3948: 0xFF is a NAT-keepalive; a zero non-ESP marker means IKE for the control plane."""
    dp, sa, outer = pair()
    assert dp.inbound(b"\xff", LOCAL) == []
    assert dp.inbound(b"\x00\x00\x00\x00IKEHDR", LOCAL, sport=4501) == []
    [event] = dp.read_events()
    assert (str(event.src), event.sport, event.data) == (LOCAL, 4501, b"IKEHDR")
    assert dp.stats()["keepalives"] == 1


def test_inner_packet_outside_selectors_is_dropped():
    """RFC 4322 12.1: a peer may only send what its SA was negotiated for (FreeS/WAN's BUGS)."""
    dp, sa, outer = pair()
    spoofed = IP(src="203.0.113.66", dst=PEER) / ICMP()
    esp = raw(sa.encrypt(spoofed, seq_num=1)[ESP])
    assert dp.inbound(esp, LOCAL) == []
    assert dp.sa_stats(SPI, "in")["policy"] == 1
    fine = raw(sa.encrypt(INNER[0], seq_num=2)[ESP])
    assert [k for k, *_ in dp.inbound(fine, LOCAL)] == ["tun"]


def test_hard_packet_limit_stops_sending_and_soft_limit_warns():
    dp, sa, outer = pair(soft_packets=2, hard_packets=3)
    for _ in range(3):
        dp.seal(SPI, raw(INNER[0]))
    with pytest.raises(EspError, match="expired"):
        dp.seal(SPI, raw(INNER[0]))
    assert dp.read_events() == [
        SaSoftLimit(spi=SPI, direction="out", reason="packets", handle=dp.handle),
        SaExpired(spi=SPI, direction="out", reason="packets", handle=dp.handle)]


def test_byte_and_time_lifetimes():
    t0 = time.monotonic()                       # the datapath's clock is CLOCK_MONOTONIC
    dp = Datapath()
    out = dp.add_sa(SaSpec(spi=SPI, direction="out", key=keymat(128), local=LOCAL, peer=PEER,
                           hard_bytes=200, soft_time=1000.0, hard_time=2000.0))
    dp.seal(out, raw(INNER[0]))                 # 84 bytes
    dp.seal(out, raw(INNER[0]))                 # 168
    with pytest.raises(EspError, match="expired"):
        dp.seal(out, raw(INNER[0]))             # would pass 200
    dp.add_sa(SaSpec(spi=SPI + 1, direction="in", key=keymat(256), local=PEER, peer=LOCAL,
                     soft_time=10.0, hard_time=20.0), now=t0)
    dp.check_lifetimes(now=t0 + 11)
    dp.check_lifetimes(now=t0 + 12)             # fires once
    dp.check_lifetimes(now=t0 + 21)
    assert dp.read_events() == [
        SaExpired(spi=SPI, direction="out", reason="bytes", handle=out),
        SaSoftLimit(spi=SPI + 1, direction="in", reason="time", handle=SPI + 1),
        SaExpired(spi=SPI + 1, direction="in", reason="time", handle=SPI + 1),
    ]


def test_sequence_number_exhaustion_without_esn():
    """RFC 4303 3.3.3: a 32-bit counter must not cycle; the last number is 2^32 - 1."""
    dp, sa, outer = pair(seq=0xFFFFFFFE)
    esp = dp.seal(SPI, raw(INNER[0]))
    assert esp[4:8] == b"\xff\xff\xff\xff"
    with pytest.raises(EspError, match="sequence"):
        dp.seal(SPI, raw(INNER[0]))
    assert SaExpired(spi=SPI, direction="out", reason="sequence",
                     handle=dp.handle) in dp.read_events()


def test_esn_crosses_the_32_bit_boundary():
    dp, sa, outer = pair(esn=True, seq=0xFFFFFFFD)
    for _ in range(5):
        assert dp.open(dp.seal(SPI, raw(INNER[0])))[2] == raw(INNER[0])
    assert dp.sa_stats(SPI, "in")["seq"] == (1 << 32) + 2


def test_ivs_never_repeat_under_a_key():
    dp, sa, outer = pair()
    ivs = {dp.seal(SPI, raw(INNER[1]))[8:16] for _ in range(1000)}
    assert len(ivs) == 1000


def test_replay_failure_event():
    dp, sa, outer = pair()
    esp = dp.seal(SPI, raw(INNER[0]))
    dp.open(esp)
    for _ in range(3):
        with pytest.raises(EspError, match="replay"):
            dp.open(esp)
    assert dp.read_events() == [ReplayFailure(spi=SPI, total=1)]


def test_bad_parameters_are_refused():
    dp = Datapath()
    with pytest.raises(ValueError):
        dp.add_sa(SaSpec(spi=7, direction="out", key=keymat(128), local=LOCAL,
                         peer=PEER))                                        # reserved SPI
    with pytest.raises(ValueError):
        dp.add_sa(SaSpec(spi=SPI, direction="out", key=b"short", local=LOCAL, peer=PEER))
    with pytest.raises(ValueError):
        dp.add_sa(SaSpec(spi=SPI, direction="out", key=keymat(128), local=LOCAL, peer=PEER6))
    assert dp.del_sa(SPI, "out") is False
