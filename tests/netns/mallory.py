"""Mallory, the on-path attacker of the end-to-end tests: she sees the wire, holds no key.

Two halves:
- `recon(pcap, a, b)` runs in the test process on a capture of a's wire: the live IKE SAs
  (SPIs, highest Message ID seen), the IKE messages and the ESP packets b sent a, verbatim;
- `python tests/netns/mallory.py PLAN.json` runs inside mallory's namespace and sends what the
  plan says, with spoofed source addresses (raw sockets, IP header included), then prints one
  JSON object: packets sent by step name.

PLAN: {"steps": [{"name": .., "attack": .., ...arguments of that attack}, ...], "start_at": T}
(T, optional: a time.time() to wait for, to hit a moment); every attack is bounded by its
packet count and by `seconds` (default 10).
"""

from __future__ import annotations

import json
import os
import socket
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from oe.ike.constants import ExchangeType, ProtocolId, TsType  # noqa: E402
from oe.ike.message import (Header, Message, Nonce, SA, TS, TrafficSelectorWire,  # noqa: E402
                            HEADER_LEN)
from oe.ike.proposals import parse_proposal  # noqa: E402

IKE_PORT, NAT_T_PORT = 500, 4500
NON_ESP_MARKER = bytes(4)  # RFC 3948 2.2
FLAG_INITIATOR, FLAG_RESPONSE = 0x08, 0x20


# ------------------------------------------------------------------- recon (test process)

@dataclass
class IkeSaSeen:
    initiator: str
    responder: str
    spi_i: bytes
    spi_r: bytes
    max_message_id: int = 0


@dataclass
class Recon:
    ike_sas: list[IkeSaSeen] = field(default_factory=list)
    ike_messages: list[dict] = field(default_factory=list)
    """{"src", "dst", "sport", "dport", "data" (hex, without marker)}"""
    esp: list[dict] = field(default_factory=list)
    """{"src", "dst", "spi", "packet" (hex: the whole IP datagram, as captured)}"""


def recon(pcap: Path, a: str, b: str) -> Recon:
    """What a capture on a's wire tells about a <-> b (one address family; call it per pair)."""
    from scapy.all import ESP, IP, UDP, IPv6, rdpcap  # scapy is slow to import

    seen = Recon()
    sas: dict[bytes, IkeSaSeen] = {}
    for packet in rdpcap(str(pcap)):
        ip = packet.getlayer(IP) or packet.getlayer(IPv6)
        if ip is None or {ip.src, ip.dst} != {a, b}:
            continue
        ports = {packet[UDP].sport, packet[UDP].dport} if packet.haslayer(UDP) else set()
        if ports & {IKE_PORT, NAT_T_PORT}:
            data = bytes(packet[UDP].payload)
            if NAT_T_PORT in ports:
                if data[:4] != NON_ESP_MARKER:
                    seen.esp.append(_esp_seen(ip, data))
                    continue
                data = data[4:]
            if len(data) < HEADER_LEN:
                continue
            seen.ike_messages.append({"src": ip.src, "dst": ip.dst, "sport": packet[UDP].sport,
                                      "dport": packet[UDP].dport, "data": data.hex()})
            spi_i, spi_r, mid, flags = data[:8], data[8:16], int.from_bytes(data[20:24], "big"), \
                data[19]
            if spi_i not in sas and spi_r != bytes(8):
                initiator = ip.src if flags & FLAG_INITIATOR else ip.dst
                sas[spi_i] = IkeSaSeen(initiator, ip.dst if initiator == ip.src else ip.src,
                                       spi_i, spi_r)
            if spi_i in sas:
                sas[spi_i].max_message_id = max(sas[spi_i].max_message_id, mid)
        elif packet.haslayer(ESP) or (ip.version == 4 and ip.proto == 50) or (
                ip.version == 6 and ip.nh == 50):
            seen.esp.append(_esp_seen(ip, bytes(ip.payload)))
    seen.ike_sas = list(sas.values())
    return seen


def _esp_seen(ip, esp: bytes) -> dict:
    return {"src": ip.src, "dst": ip.dst, "spi": int.from_bytes(esp[:4], "big"),
            "packet": bytes(ip).hex()}


# ---------------------------------------------------------------- attacks (in mallory's netns)

class Wire:
    """Raw IPv4/IPv6 sockets: whatever source address the packet claims goes out as is."""

    def __init__(self) -> None:
        self.v4 = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW)
        self.v6 = socket.socket(socket.AF_INET6, socket.SOCK_RAW, socket.IPPROTO_RAW)
        self.sent = 0

    def send(self, packet: bytes, dst: str) -> None:
        sock = self.v6 if ":" in dst else self.v4
        try:
            sock.sendto(packet, (dst, 0))
            self.sent += 1
        except OSError:
            time.sleep(0.001)  # ENOBUFS under a flood: slow down, the bound is the count


def ip_udp(src: str, dst: str, sport: int, dport: int, payload: bytes) -> bytes:
    from scapy.all import IP, UDP, IPv6
    layer = IPv6(src=src, dst=dst) if ":" in dst else IP(src=src, dst=dst)
    return bytes(layer / UDP(sport=sport, dport=dport) / payload)


def ip_proto(src: str, dst: str, proto: int, payload: bytes) -> bytes:
    from scapy.all import IP, IPv6
    layer = IPv6(src=src, dst=dst, nh=proto) if ":" in dst else IP(src=src, dst=dst, proto=proto)
    return bytes(layer / payload)


def _paced(count: int, seconds: float, rate: float):
    """range(count), at most `rate` per second, ending when `seconds` have passed."""
    start = time.monotonic()
    for i in range(count):
        if time.monotonic() - start > seconds:
            return
        ahead = i / rate - (time.monotonic() - start)
        if ahead > 0:
            time.sleep(ahead)
        yield i


def _ike_datagrams(src: str, dst: str, data: bytes, ports=(IKE_PORT, NAT_T_PORT)):
    for port in ports:
        yield ip_udp(src, dst, port, port, (NON_ESP_MARKER if port == NAT_T_PORT else b"") + data)


def forged_child_payloads(src: str, dst: str, spi: int) -> list:
    """What a CREATE_CHILD_SA answer carries (SA with an ESP proposal of `spi`, Nr, TSi, TSr),
    in clear: enough for a handler that forgets to check integrity (issue 10, defect 2)."""
    [suite] = parse_proposal("aes128gcm16", ProtocolId.ESP)
    ts_type = TsType.TS_IPV6_ADDR_RANGE if ":" in dst else TsType.TS_IPV4_ADDR_RANGE

    def host(address: str) -> TrafficSelectorWire:
        raw = socket.inet_pton(socket.AF_INET6 if ":" in address else socket.AF_INET, address)
        return TrafficSelectorWire(ts_type, 0, 0, 65535, raw, raw)

    return [SA((suite.proposal(1, spi.to_bytes(4, "big"), False),)), Nonce(os.urandom(32)),
            TS(True, (host(dst),)), TS(False, (host(src),))]


def forged_responses(wire: Wire, *, src: str, dst: str, spi_i: str, spi_r: str,
                     message_ids: list[int], spi: int, rounds: int = 1, seconds: float = 10,
                     rate: float = 2000) -> None:
    """Unprotected answers claiming to be src's, exchange type IKE_SA_INIT with the R flag, for
    dst's live IKE SA, for every plausible Message ID; to 500 and to 4500 (with the marker)."""
    payloads = forged_child_payloads(src, dst, spi)
    messages = []
    for mid in message_ids:
        for exchange in (ExchangeType.IKE_SA_INIT, ExchangeType.CREATE_CHILD_SA):
            # the answer to a request dst sent: R set, I set iff src initiated the IKE SA
            msg = Message(bytes.fromhex(spi_i), bytes.fromhex(spi_r), exchange, mid, True,
                          False, tuple(payloads))
            for from_initiator in (False, True):
                data = bytearray(msg.encode())
                data[19] = FLAG_RESPONSE | (FLAG_INITIATOR if from_initiator else 0)
                messages += list(_ike_datagrams(src, dst, bytes(data)))
    for i in _paced(rounds * len(messages), seconds, rate):
        wire.send(messages[i % len(messages)], dst)


def race_responses(wire: Wire, *, src: str, dst: str, spi_i: str, spi_r: str, spi: int,
                   seconds: float, iface: str = "eth0") -> None:
    """Watch the link (promiscuous, the bridge floods) for dst's IKE requests to src on the IKE
    SA (spi_i, spi_r) and answer each at once, before src can: an unprotected IKE_SA_INIT
    "response" with the request's Message ID, carrying a CREATE_CHILD_SA answer with `spi`."""
    forged = {}
    sniffer = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(0x0003))
    sniffer.bind((iface, 0))
    sniffer.settimeout(0.2)
    ip_udp(src, dst, IKE_PORT, IKE_PORT, b"")  # import scapy now, not when the race is on
    print("listening", file=sys.stderr, flush=True)
    want = bytes.fromhex(spi_i) + bytes.fromhex(spi_r)
    ours = socket.inet_pton(socket.AF_INET6 if ":" in dst else socket.AF_INET, dst)
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        try:
            frame = sniffer.recv(65535)
        except socket.timeout:
            continue
        ike = _ike_request_from(frame, ours)
        if ike is None or ike[:16] != want:
            continue
        mid = int.from_bytes(ike[20:24], "big")
        if mid not in forged:
            msg = Message(want[:8], want[8:], ExchangeType.IKE_SA_INIT, mid, True, False,
                          tuple(forged_child_payloads(src, dst, spi)))
            data = bytearray(msg.encode())
            data[19] = FLAG_RESPONSE | ((ike[19] & FLAG_INITIATOR) ^ FLAG_INITIATOR)
            forged[mid] = ip_udp(src, dst, IKE_PORT, IKE_PORT, bytes(data))
        wire.send(forged[mid], dst)


def _ike_request_from(frame: bytes, source: bytes) -> bytes | None:
    """The IKE message of an Ethernet frame carrying a request from `source` to UDP 500."""
    ethertype = frame[12:14]
    if ethertype == b"\x08\x00" and len(source) == 4:
        ihl = (frame[14] & 0x0F) * 4
        if frame[23] != 17 or frame[26:30] != source:
            return None
        udp = 14 + ihl
    elif ethertype == b"\x86\xdd" and len(source) == 16:
        if frame[20] != 17 or frame[22:38] != source:
            return None
        udp = 14 + 40
    else:
        return None
    if int.from_bytes(frame[udp + 2:udp + 4], "big") != IKE_PORT:
        return None
    ike = frame[udp + 8:]
    if len(ike) < HEADER_LEN or ike[19] & FLAG_RESPONSE:
        return None
    return ike


def forged_requests(wire: Wire, *, src: str, dst: str, spi_i: str, spi_r: str,
                    message_ids: list[int]) -> None:
    """Requests on the live IKE SA with an SK payload of garbage, and in clear; and IKE_SA_INIT
    requests naming the live SA's SPIs."""
    for mid in message_ids:
        for exchange in (ExchangeType.INFORMATIONAL, ExchangeType.CREATE_CHILD_SA,
                         ExchangeType.IKE_SA_INIT):
            for flags in (FLAG_INITIATOR, 0):
                for encrypted in (True, False):
                    data = _request(spi_i, spi_r, exchange, mid, flags, encrypted)
                    for packet in _ike_datagrams(src, dst, data):
                        wire.send(packet, dst)


def sk_flood(wire: Wire, *, src: str, dst: str, spi_i: str, spi_r: str, message_id: int,
             from_initiator: bool, count: int, seconds: float = 10, rate: float = 4000) -> None:
    """INFORMATIONAL requests with garbage SK payloads on the live IKE SA, to 4500 (marker):
    each is an event for dst's daemon and an integrity check (RFC 7296 3.14) that fails."""
    flags = FLAG_INITIATOR if from_initiator else 0
    pool = [next(_ike_datagrams(src, dst, _request(spi_i, spi_r, ExchangeType.INFORMATIONAL,
                                                   message_id, flags, True), (NAT_T_PORT,)))
            for _ in range(min(count, 256))]
    for i in _paced(count, seconds, rate):
        wire.send(pool[i % len(pool)], dst)


def _request(spi_i: str, spi_r: str, exchange: int, mid: int, flags: int,
             encrypted: bool) -> bytes:
    """An IKE request header and, if `encrypted`, an SK payload (46) of 80 random bytes."""
    body = bytes([0, 0]) + (4 + 80).to_bytes(2, "big") + os.urandom(80) if encrypted else b""
    header = Header(bytes.fromhex(spi_i), bytes.fromhex(spi_r), 46 if encrypted else 0,
                    exchange, flags, mid, HEADER_LEN + len(body))
    return header.encode() + body


def replay_ike(wire: Wire, *, messages: list[dict], rounds: int = 2) -> None:
    """Each captured IKE message again, verbatim, to both ports (4500 with the marker)."""
    for _ in range(rounds):
        for m in messages:
            for packet in _ike_datagrams(m["src"], m["dst"], bytes.fromhex(m["data"])):
                wire.send(packet, m["dst"])


def udp_junk(wire: Wire, *, src: str, dst: str, port: int, count: int, marker: bool = False,
             seconds: float = 10, rate: float = 4000) -> None:
    """Random datagrams (8..200 bytes) to dst:port; with `marker`, non-ESP-marker junk.
    (256 different ones, built beforehand, so that the rate is the wire's, not scapy's.)"""
    pool = [ip_udp(src, dst, port, port, (NON_ESP_MARKER if marker else b"") +
                   os.urandom(8 + os.urandom(1)[0] % 192)) for _ in range(min(count, 256))]
    for i in _paced(count, seconds, rate):
        wire.send(pool[i % len(pool)], dst)


def init_flood(wire: Wire, *, dst: str, sources: list[str], seconds: float = 10,
               rate: float = 500) -> None:
    """IKE_SA_INIT requests from many spoofed sources (each would start a DNS lookup)."""
    from oe.ike.message import KE
    for i in _paced(len(sources), seconds, rate):
        msg = Message(os.urandom(8), bytes(8), ExchangeType.IKE_SA_INIT, 0, False, True,
                      tuple(forged_child_payloads(sources[i], dst, 0)[:2]) +
                      (KE(31, os.urandom(32)),))
        wire.send(ip_udp(sources[i], dst, IKE_PORT, IKE_PORT, msg.encode()), dst)


def raw_esp(wire: Wire, *, src: str, dst: str, spis: list[int], count: int, udp: bool = False,
            seq_base: int = 0, seconds: float = 10, rate: float = 4000) -> None:
    """ESP (protocol 50, or in UDP 4500) with these SPIs, sequence numbers from seq_base + 1
    (ahead of a live window: the packet must fail its ICV, not the replay check) and garbage."""
    for i in _paced(count, seconds, rate):
        # IV, payload and ICV of a plausible length (4-byte aligned, RFC 4303 2.4), so that
        # packets on a live SPI reach the ICV check rather than fail as too short
        esp = spis[i % len(spis)].to_bytes(4, "big") + (seq_base + i + 1).to_bytes(4, "big") + \
            os.urandom(48 + 4 * (os.urandom(1)[0] % 24))
        packet = (ip_udp(src, dst, NAT_T_PORT, NAT_T_PORT, esp) if udp
                  else ip_proto(src, dst, 50, esp))
        wire.send(packet, dst)


def replay_esp(wire: Wire, *, packets: list[dict], rounds: int = 1) -> None:
    """Captured ESP datagrams again, byte for byte."""
    for _ in range(rounds):
        for p in packets:
            wire.send(bytes.fromhex(p["packet"]), p["dst"])


def cleartext(wire: Wire, *, src: str, dst: str, dport: int, payload: str, count: int) -> None:
    """Plain UDP claiming to come from src (a peer dst has an SA with)."""
    for i in range(count):
        wire.send(ip_udp(src, dst, 40000 + i, dport, f"{payload} {i}".encode()), dst)
        time.sleep(0.01)


ATTACKS = {f.__name__: f for f in (forged_responses, race_responses, forged_requests, sk_flood,
                                   replay_ike, udp_junk, init_flood, raw_esp, replay_esp,
                                   cleartext)}


def main(plan_path: str) -> int:
    plan = json.loads(Path(plan_path).read_text())
    ip_udp("192.0.2.1", "192.0.2.2", 1, 1, b"")  # scapy imported before the clock matters
    print("ready", file=sys.stderr, flush=True)
    time.sleep(max(0.0, plan.get("start_at", 0) - time.time()))
    sent = {}
    for step in plan["steps"]:
        step = dict(step)
        name, attack = step.pop("name"), ATTACKS[step.pop("attack")]
        wire = Wire()
        attack(wire, **step)
        sent[name] = wire.sent
    print(json.dumps(sent), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
