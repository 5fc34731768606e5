"""IKEv2 message and payload codecs (RFC 7296 section 3), pure and symmetric.

``parse_message`` reads the header and the cleartext payload chain; an SK payload stays
encrypted (``Encrypted``) until oe.ike.crypto opens it, and ``parse_payloads`` then reads the
inner chain. ``Message.encode`` writes the header and a cleartext chain; protected messages are
built by oe.ike.crypto.seal around ``encode_payloads``.

Unknown payload types are skipped unless their critical bit is set (section 2.5), which raises
UnsupportedCriticalPayload. Every other malformation raises ParseError.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from typing import Union

from oe.ike.constants import (
    ATTR_KEY_LENGTH,
    ATTR_TV,
    HEADER_LEN,
    IKE_VERSION,
    ExchangeType,
    Flag,
    PayloadType,
)
from oe.ike.errors import ParseError, UnsupportedCriticalPayload

CRITICAL = 0x80


# --- payloads -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Transform:
    """One transform of a proposal (section 3.3.2); ``key_length`` from the attribute or None."""

    type: int
    id: int
    key_length: int | None = None


@dataclass(frozen=True)
class Proposal:
    """One proposal substructure (section 3.3.1)."""

    number: int
    protocol: int
    spi: bytes
    transforms: tuple[Transform, ...]


@dataclass(frozen=True)
class SA:
    proposals: tuple[Proposal, ...]
    type = PayloadType.SA


@dataclass(frozen=True)
class KE:
    group: int
    data: bytes
    type = PayloadType.KE


@dataclass(frozen=True)
class Nonce:
    data: bytes
    type = PayloadType.NONCE


@dataclass(frozen=True)
class ID:
    """IDi or IDr (section 3.5); ``body`` is what AUTH signs (type | reserved | data)."""

    is_initiator: bool
    id_type: int
    data: bytes

    @property
    def type(self) -> int:  # type: ignore[override]
        return PayloadType.IDi if self.is_initiator else PayloadType.IDr

    @property
    def body(self) -> bytes:
        return bytes([self.id_type, 0, 0, 0]) + self.data


@dataclass(frozen=True)
class Auth:
    method: int
    data: bytes
    type = PayloadType.AUTH


@dataclass(frozen=True)
class Notify:
    notify_type: int
    data: bytes = b""
    protocol: int = 0
    spi: bytes = b""
    type = PayloadType.NOTIFY


@dataclass(frozen=True)
class Delete:
    protocol: int
    spis: tuple[bytes, ...]
    type = PayloadType.DELETE


@dataclass(frozen=True)
class TrafficSelectorWire:
    """One traffic selector as on the wire (section 3.13.1)."""

    ts_type: int
    ip_protocol: int
    start_port: int
    end_port: int
    start_addr: bytes
    end_addr: bytes


@dataclass(frozen=True)
class TS:
    is_initiator: bool
    selectors: tuple[TrafficSelectorWire, ...]

    @property
    def type(self) -> int:  # type: ignore[override]
        return PayloadType.TSi if self.is_initiator else PayloadType.TSr


@dataclass(frozen=True)
class Encrypted:
    """The SK payload before decryption: ``first`` names the first inner payload."""

    first: int
    body: bytes
    type = PayloadType.SK


@dataclass(frozen=True)
class EncryptedFragment:
    """The Encrypted Fragment payload (SKF, RFC 7383 2.5) before decryption: one chunk of an
    SK payload's inner chain; ``first`` names the first inner payload in fragment 1 only."""

    first: int
    number: int
    total: int
    body: bytes
    type = PayloadType.SKF


@dataclass(frozen=True)
class Opaque:
    """A payload we carry but do not interpret (VENDOR_ID, CERTREQ, ...)."""

    payload_type: int
    body: bytes
    critical: bool = False

    @property
    def type(self) -> int:  # type: ignore[override]
        return self.payload_type


Payload = Union[SA, KE, Nonce, ID, Auth, Notify, Delete, TS, Encrypted, EncryptedFragment,
                Opaque]


# --- codecs per payload -------------------------------------------------------------------


def _need(body: bytes, n: int, what: str) -> None:
    if len(body) < n:
        raise ParseError(f"{what} payload too short")


def _pull_sa(body: bytes) -> SA:
    proposals = []
    pos = 0
    last = False
    while not last:
        if pos + 8 > len(body):
            raise ParseError("truncated proposal")
        more, _, plen, number, protocol, spi_size, ntrans = struct.unpack_from(
            "!BBHBBBB", body, pos
        )
        if more not in (0, 2) or plen < 8 + spi_size or pos + plen > len(body):
            raise ParseError("bad proposal header")
        last = more == 0
        spi = body[pos + 8 : pos + 8 + spi_size]
        tpos = pos + 8 + spi_size
        end = pos + plen
        transforms = []
        for i in range(ntrans):
            if tpos + 8 > end:
                raise ParseError("truncated transform")
            tmore, _, tlen, ttype, _, tid = struct.unpack_from("!BBHBBH", body, tpos)
            if tmore != (0 if i == ntrans - 1 else 3) or tlen < 8 or tpos + tlen > end:
                raise ParseError("bad transform header")
            key_length = None
            apos = tpos + 8
            while apos < tpos + tlen:
                if apos + 4 > tpos + tlen:
                    raise ParseError("truncated transform attribute")
                atype, aval = struct.unpack_from("!HH", body, apos)
                if atype & ATTR_TV:
                    if atype & ~ATTR_TV == ATTR_KEY_LENGTH:
                        key_length = aval
                    apos += 4
                else:
                    apos += 4 + aval  # TLV attributes: none defined for IKEv2, skip
            if apos != tpos + tlen:
                raise ParseError("bad transform attributes")
            transforms.append(Transform(ttype, tid, key_length))
            tpos += tlen
        if tpos != end:
            raise ParseError("proposal length mismatch")
        proposals.append(Proposal(number, protocol, spi, tuple(transforms)))
        pos = end
    if pos != len(body):
        raise ParseError("trailing bytes after last proposal")
    return SA(tuple(proposals))


def _push_sa(sa: SA) -> bytes:
    out = b""
    for i, prop in enumerate(sa.proposals):
        tbytes = b""
        for j, t in enumerate(prop.transforms):
            attrs = b""
            if t.key_length is not None:
                attrs = struct.pack("!HH", ATTR_TV | ATTR_KEY_LENGTH, t.key_length)
            more = 0 if j == len(prop.transforms) - 1 else 3
            tbytes += struct.pack("!BBHBBH", more, 0, 8 + len(attrs), t.type, 0, t.id) + attrs
        more = 0 if i == len(sa.proposals) - 1 else 2
        plen = 8 + len(prop.spi) + len(tbytes)
        out += struct.pack(
            "!BBHBBBB", more, 0, plen, prop.number, prop.protocol, len(prop.spi),
            len(prop.transforms),
        ) + prop.spi + tbytes
    return out


def _pull_ts(body: bytes, is_initiator: bool) -> TS:
    _need(body, 4, "TS")
    count = body[0]
    pos = 4
    selectors = []
    for _ in range(count):
        if pos + 8 > len(body):
            raise ParseError("truncated traffic selector")
        ts_type, proto, slen, sport, eport = struct.unpack_from("!BBHHH", body, pos)
        alen = {7: 4, 8: 16}.get(ts_type)
        if alen is None:
            raise ParseError(f"unknown traffic selector type {ts_type}")
        if slen != 8 + 2 * alen or pos + slen > len(body):
            raise ParseError("bad traffic selector length")
        a = pos + 8
        selectors.append(
            TrafficSelectorWire(ts_type, proto, sport, eport, body[a : a + alen],
                                body[a + alen : a + 2 * alen])
        )
        pos += slen
    if pos != len(body) or count == 0:
        raise ParseError("bad TS payload")
    return TS(is_initiator, tuple(selectors))


def _push_ts(ts: TS) -> bytes:
    out = bytes([len(ts.selectors), 0, 0, 0])
    for s in ts.selectors:
        out += struct.pack(
            "!BBHHH", s.ts_type, s.ip_protocol, 8 + len(s.start_addr) * 2, s.start_port,
            s.end_port,
        ) + s.start_addr + s.end_addr
    return out


def pull_payload(ptype: int, critical: bool, body: bytes) -> Payload | None:
    """Decode one payload body; None for an unknown non-critical payload (section 2.5)."""
    if ptype == PayloadType.SA:
        return _pull_sa(body)
    if ptype == PayloadType.KE:
        _need(body, 4, "KE")
        return KE(struct.unpack_from("!H", body)[0], body[4:])
    if ptype == PayloadType.NONCE:
        if not 16 <= len(body) <= 256:  # section 3.9
            raise ParseError("nonce length out of range")
        return Nonce(body)
    if ptype in (PayloadType.IDi, PayloadType.IDr):
        _need(body, 4, "ID")
        return ID(ptype == PayloadType.IDi, body[0], body[4:])
    if ptype == PayloadType.AUTH:
        _need(body, 4, "AUTH")
        return Auth(body[0], body[4:])
    if ptype == PayloadType.NOTIFY:
        _need(body, 4, "Notify")
        protocol, spi_size, ntype = struct.unpack_from("!BBH", body)
        _need(body, 4 + spi_size, "Notify")
        return Notify(ntype, body[4 + spi_size :], protocol, body[4 : 4 + spi_size])
    if ptype == PayloadType.DELETE:
        _need(body, 4, "Delete")
        protocol, spi_size, count = struct.unpack_from("!BBH", body)
        if len(body) != 4 + spi_size * count or (protocol == 1 and (spi_size, count) != (0, 0)):
            raise ParseError("bad Delete payload")
        return Delete(protocol, tuple(body[4 + i * spi_size : 4 + (i + 1) * spi_size]
                                      for i in range(count)))
    if ptype in (PayloadType.TSi, PayloadType.TSr):
        return _pull_ts(body, ptype == PayloadType.TSi)
    if ptype in (PayloadType.VENDOR_ID, PayloadType.CERTREQ, PayloadType.CERT):
        return Opaque(ptype, body, critical)
    if critical:
        raise UnsupportedCriticalPayload(ptype)
    return None


def push_payload(p: Payload) -> bytes:
    """Encode one payload body (without the generic header)."""
    if isinstance(p, SA):
        return _push_sa(p)
    if isinstance(p, KE):
        return struct.pack("!HH", p.group, 0) + p.data
    if isinstance(p, Nonce):
        return p.data
    if isinstance(p, ID):
        return p.body
    if isinstance(p, Auth):
        return bytes([p.method, 0, 0, 0]) + p.data
    if isinstance(p, Notify):
        return struct.pack("!BBH", p.protocol, len(p.spi), p.notify_type) + p.spi + p.data
    if isinstance(p, Delete):
        size = len(p.spis[0]) if p.spis else 0
        return struct.pack("!BBH", p.protocol, size, len(p.spis)) + b"".join(p.spis)
    if isinstance(p, TS):
        return _push_ts(p)
    if isinstance(p, Opaque):
        return p.body
    raise TypeError(f"cannot encode {p!r}")


# --- chains and messages ------------------------------------------------------------------


def parse_payloads(first: int, data: bytes) -> list[Payload]:
    """Read a payload chain starting with type ``first``; an SK or SKF payload must come
    last (RFC 7383 2.5)."""
    payloads: list[Payload] = []
    ptype = first
    pos = 0
    while ptype != PayloadType.NONE:
        if pos + 4 > len(data):
            raise ParseError("truncated payload header")
        nxt, flags, plen = struct.unpack_from("!BBH", data, pos)
        if plen < 4 or pos + plen > len(data):
            raise ParseError("bad payload length")
        body = data[pos + 4 : pos + plen]
        if ptype in (PayloadType.SK, PayloadType.SKF):
            if pos + plen != len(data):
                raise ParseError("SK payload is not the last payload")
            if ptype == PayloadType.SK:
                payloads.append(Encrypted(nxt, body))
            else:
                _need(body, 4, "SKF")
                number, total = struct.unpack_from("!HH", body)
                payloads.append(EncryptedFragment(nxt, number, total, body[4:]))
            return payloads
        p = pull_payload(ptype, bool(flags & CRITICAL), body)
        if p is not None:
            payloads.append(p)
        pos += plen
        ptype = nxt
    if pos != len(data):
        raise ParseError("trailing bytes after last payload")
    return payloads


def encode_payloads(payloads: list[Payload] | tuple[Payload, ...]) -> tuple[int, bytes]:
    """Encode a chain; returns (type of the first payload, bytes)."""
    out = b""
    for i, p in enumerate(payloads):
        nxt = payloads[i + 1].type if i + 1 < len(payloads) else PayloadType.NONE
        body = push_payload(p)
        flags = CRITICAL if isinstance(p, Opaque) and p.critical else 0
        out += struct.pack("!BBH", nxt, flags, 4 + len(body)) + body
    first = payloads[0].type if payloads else PayloadType.NONE
    return first, out


@dataclass(frozen=True)
class Header:
    """The IKE header (section 3.1)."""

    spi_i: bytes
    spi_r: bytes
    next_payload: int
    exchange: int
    flags: int
    message_id: int
    length: int

    @property
    def is_response(self) -> bool:
        return bool(self.flags & Flag.RESPONSE)

    @property
    def from_initiator(self) -> bool:
        """Set when the sender is the original initiator of the IKE SA (the I flag)."""
        return bool(self.flags & Flag.INITIATOR)

    def encode(self) -> bytes:
        return self.spi_i + self.spi_r + struct.pack(
            "!BBBBII", self.next_payload, IKE_VERSION, self.exchange, self.flags,
            self.message_id, self.length,
        )


def parse_header(data: bytes) -> Header:
    if len(data) < HEADER_LEN:
        raise ParseError("shorter than an IKE header")
    nxt, version, exchange, flags, msgid, length = struct.unpack_from("!BBBBII", data, 16)
    if version >> 4 != 2:
        raise ParseError(f"IKE major version {version >> 4}")
    if length != len(data):
        raise ParseError("header length does not match the datagram")
    return Header(data[:8], data[8:16], nxt, exchange, flags, msgid, length)


@dataclass(frozen=True)
class Message:
    """A decoded message: its header fields and its (possibly still encrypted) payloads."""

    spi_i: bytes
    spi_r: bytes
    exchange: int
    message_id: int
    is_response: bool
    from_initiator: bool
    payloads: tuple[Payload, ...] = field(default=())

    @property
    def flags(self) -> int:
        return (Flag.RESPONSE if self.is_response else 0) | (
            Flag.INITIATOR if self.from_initiator else 0
        )

    def encode(self) -> bytes:
        """Encode a message whose payloads are all cleartext."""
        first, body = encode_payloads(self.payloads)
        header = Header(self.spi_i, self.spi_r, first, self.exchange, self.flags,
                        self.message_id, HEADER_LEN + len(body))
        return header.encode() + body

    def get(self, kind: type) -> list:
        return [p for p in self.payloads if isinstance(p, kind)]

    def first(self, kind: type):
        found = self.get(kind)
        return found[0] if found else None

    def notifies(self, notify_type: int) -> list[Notify]:
        return [p for p in self.payloads if isinstance(p, Notify) and p.notify_type == notify_type]


def parse_message(data: bytes) -> tuple[Header, Message]:
    """Decode header and cleartext chain. Raises ParseError (or UnsupportedCriticalPayload)."""
    header = parse_header(data)
    if header.exchange not in {e.value for e in ExchangeType}:
        raise ParseError(f"unknown exchange type {header.exchange}")
    payloads = parse_payloads(header.next_payload, data[HEADER_LEN:])
    return header, Message(
        header.spi_i, header.spi_r, header.exchange, header.message_id, header.is_response,
        header.from_initiator, tuple(payloads),
    )
