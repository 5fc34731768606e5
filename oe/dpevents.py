"""Events the datapath raises for the control plane (read with Datapath.read_events()).

Pure: frozen dataclasses only. The daemon reacts to them; it never looks inside the datapath.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from typing import Union

IPAddress = Union[ipaddress.IPv4Address, ipaddress.IPv6Address]


@dataclass(frozen=True)
class Acquire:
    """A packet hit a %trap: negotiate for (src, dst). A /32 %hold is already in place."""

    src: IPAddress
    """Source address of the packet that was trapped (this host)."""
    dst: IPAddress
    """Destination address: the would-be peer."""
    proto: int
    """IP protocol of the trapped packet."""
    sport: int
    """Its source port (0 when the protocol has none)."""
    dport: int
    """Its destination port (0 when the protocol has none)."""


@dataclass(frozen=True)
class SaSoftLimit:
    """An SA passed a soft lifetime (or neared sequence number exhaustion): rekey it.

    Never lost, whatever else floods the datapath (read_events() collects it from the SA).
    """

    spi: int
    """SPI of the SA (for logs: outbound SPIs are the peer's choice and need not be unique)."""
    direction: str
    """"in" or "out"."""
    reason: str
    """"bytes", "packets", "time" or "sequence"."""
    handle: int
    """What add_sa() returned: identifies the SA to del_sa(), sa_stats(), move_sa()."""


@dataclass(frozen=True)
class SaExpired:
    """An SA reached a hard limit: the datapath no longer uses it; delete it. Never lost."""

    spi: int
    """SPI of the SA (for logs)."""
    direction: str
    """"in" or "out"."""
    reason: str
    """"bytes", "packets", "time" or "sequence" (RFC 4303 3.3.3: no cycling)."""
    handle: int
    """What add_sa() returned: identifies the SA to del_sa(), sa_stats(), move_sa()."""


@dataclass(frozen=True)
class ReplayFailure:
    """Packets on an inbound SA were replayed or too old (RFC 4303 3.4.3); coalesced."""

    spi: int
    """SPI of the inbound SA."""
    total: int
    """Replayed packets on this SA so far."""


@dataclass(frozen=True)
class AuthFailure:
    """Packets on an inbound SA failed the ICV check (RFC 4303 3.4.4); coalesced."""

    spi: int
    """SPI of the inbound SA."""
    total: int
    """Packets that failed authentication on this SA so far."""


@dataclass(frozen=True)
class IkeMessage:
    """An IKE message arrived on the UDP 4500 socket (non-ESP marker stripped, RFC 3948 2.2)."""

    src: IPAddress
    """Sender's address."""
    sport: int
    """Sender's UDP port."""
    data: bytes
    """The IKE message, from its header on."""
    dst: IPAddress
    """The address of ours it was sent to (packet info; unspecified if unknown)."""


@dataclass(frozen=True)
class PathMtuProbeAcked:
    """The peer answered a path MTU probe (Datapath.probe(), docs/pmtu.md): an ESP packet of
    `size` bytes crossed the path to it (RFC 8899 4.1: the acknowledgement of a probe)."""

    peer: IPAddress
    """The peer's (outer) address."""
    size: int
    """The probe's size: the outer IP packet, as Datapath.probe() was asked for."""


@dataclass(frozen=True)
class PathMtuTooBig:
    """A datagram of ours to `peer` was too big for the path (IP_RECVERR): an ICMP
    fragmentation-needed or packet-too-big naming `mtu`, or the kernel's own refusal (`local`).
    Matched to one of our outbound SAs to that peer by the SPI it quotes (RFC 8899 4.6.1)."""

    peer: IPAddress
    """The peer's (outer) address: the destination of the datagram."""
    mtu: int
    """The MTU the ICMP or the kernel named."""
    local: bool
    """True: the local route refused it (EMSGSIZE); False: an ICMP from the path."""


@dataclass(frozen=True)
class PathMtuBlackHole:
    """Large packets to `peer` seem lost: a TCP segment whose ESP packet exceeds the base size
    was sent again (RFC 8899 4.3: black hole detection); at most once a second per SA."""

    peer: IPAddress
    """The peer's (outer) address."""


DatapathEvent = Union[Acquire, SaSoftLimit, SaExpired, ReplayFailure, AuthFailure, IkeMessage,
                      PathMtuProbeAcked, PathMtuTooBig, PathMtuBlackHole]
