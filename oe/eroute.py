"""The eroute table: (src, dst, proto, sport, dport) -> action, most specific first.

This is the reference model: a sorted list scanned linearly, simple enough to trust. The compiled
classifier in oe/dp/classifier.pyx must agree with it on every lookup (tests/test_classifier.py).

Priority (FreeS/WAN pluto connections.h set_policy_prio): (srcbits << 16) | (dstbits << 8), then,
in the low byte, narrowing: a destination port (4) beats a source port (2) beats a protocol (1).
Two distinct selectors that both match one packet never tie: equal prefix lengths that both
contain one address are the same prefix, and equal narrowing that both match means equal values,
so tying entries would be the same selector, and a table holds each selector at most once.
"""

from __future__ import annotations

import enum
import ipaddress
from dataclasses import dataclass
from typing import Iterable, Union

IPNetwork = Union[ipaddress.IPv4Network, ipaddress.IPv6Network]
IPAddress = Union[ipaddress.IPv4Address, ipaddress.IPv6Address]

# IANA protocol numbers that policy files and `oe trace --proto` accept by name.
PROTOCOLS = {
    "icmp": 1, "tcp": 6, "udp": 17, "gre": 47, "esp": 50, "ah": 51,
    "icmpv6": 58, "ipv6-icmp": 58, "sctp": 132,
}
PROTOCOL_NAMES = {6: "tcp", 17: "udp", 1: "icmp", 58: "ipv6-icmp", 132: "sctp", 47: "gre",
                  50: "esp", 51: "ah"}
# Protocols whose selectors may carry ports.
PORT_PROTOCOLS = frozenset({6, 17, 132})


def protocol_number(text: str) -> int | None:
    """A protocol by name (tcp, udp, ...) or number 0-255; None if it is neither."""
    proto = PROTOCOLS.get(text.lower())
    if proto is None and text.isdigit() and int(text) <= 255:
        proto = int(text)
    return proto


def port_number(text: str) -> int | None:
    """A port 0-65535 (0 = any); None if it is not one."""
    return int(text) if text.isdigit() and int(text) <= 65535 else None


class Shunt(enum.Enum):
    """KLIPS's magic SAIDs (FreeS/WAN eroute(5))."""

    TRAP = "%trap"
    """Send an acquire to the control plane and put a /32 %hold in place."""
    HOLD = "%hold"
    """Queue packets until the eroute is replaced."""
    PASS = "%pass"
    """Send in clear."""
    DROP = "%drop"
    """Discard."""
    REJECT = "%reject"
    """Discard and answer ICMP administratively prohibited."""

    def __str__(self) -> str:
        return self.value


@dataclass(frozen=True)
class SaAction:
    """Encrypt with the outbound ESP SA `handle` (SPI `spi`) towards `peer`.

    The datapath finds the SA by `handle`, what Datapath.add_sa() returned, never by `spi`:
    the peer chose that SPI, and another peer may choose the same one (issue 10, 1).
    """

    peer: IPAddress
    spi: int
    handle: int

    def __str__(self) -> str:
        # Openswan satot(): "esp" + "." (IPv4) or ":" (IPv6) + hex SPI + "@" + edst.
        sep = "." if self.peer.version == 4 else ":"
        return f"esp{sep}{self.spi:x}@{self.peer}"


Action = Union[Shunt, SaAction]


@dataclass(frozen=True)
class Selector:
    src: IPNetwork
    dst: IPNetwork
    proto: int = 0
    """IP protocol number, 0 = any."""
    sport: int = 0
    """Source port, 0 = any."""
    dport: int = 0
    """Destination port, 0 = any."""

    def __post_init__(self) -> None:
        if self.src.version != self.dst.version:
            raise ValueError(f"selector mixes address families: {self.src} -> {self.dst}")

    @staticmethod
    def any_source(version: int) -> IPNetwork:
        return ipaddress.ip_network("0.0.0.0/0" if version == 4 else "::/0")

    @property
    def version(self) -> int:
        return self.dst.version

    @property
    def priority(self) -> int:
        narrowing = (4 if self.dport else 0) | (2 if self.sport else 0) | (1 if self.proto else 0)
        return (self.src.prefixlen << 16) | (self.dst.prefixlen << 8) | narrowing

    def matches(self, src: IPAddress, dst: IPAddress, proto: int, sport: int, dport: int) -> bool:
        return (
            src.version == self.dst.version
            and src in self.src
            and dst in self.dst
            and (not self.proto or self.proto == proto)
            and (not self.sport or self.sport == sport)
            and (not self.dport or self.dport == dport)
        )

    def __str__(self) -> str:
        """The policy-file form: `dst [proto sport dport]`, prefixed by `src ->` when narrowed."""
        text = str(self.dst)
        if self.src.prefixlen:
            text = f"{self.src} -> {text}"
        if self.proto:
            text += f" {PROTOCOL_NAMES.get(self.proto, self.proto)} {self.sport} {self.dport}"
        return text


@dataclass(frozen=True)
class Eroute:
    selector: Selector
    action: Action
    origin: str | None = None
    """Where it came from: `policies/<group>:<line>`, or None for holds, shunts and SAs."""
    group: str | None = None
    """The policy group whose rule made this eroute, if any."""

    def as_json(self, packets: int = 0, nbytes: int = 0) -> dict:
        """One row of `oe status --json`'s "eroutes"."""
        sel = self.selector
        return {"packets": packets, "bytes": nbytes, "src": str(sel.src), "dst": str(sel.dst),
                "proto": sel.proto, "sport": sel.sport, "dport": sel.dport,
                "said": str(self.action), "group": self.group, "origin": self.origin}


class ErouteTable:
    """An immutable set of eroutes, most specific first (the compiled classifier counts).

    Replacing the table means building a new one and swapping the reference: a reader holds one
    table for a whole lookup, so it never sees a half-updated table (KLIPS's non-atomic replace
    let packets slip through: FreeS/WAN's BUGS).
    """

    def __init__(self, eroutes: Iterable[Eroute] = ()) -> None:
        by_selector: dict[Selector, Eroute] = {}
        for eroute in eroutes:
            by_selector[eroute.selector] = eroute  # a later eroute for one selector replaces it
        self.entries: tuple[Eroute, ...] = tuple(
            sorted(by_selector.values(), key=lambda e: e.selector.priority, reverse=True)
        )

    def __len__(self) -> int:
        return len(self.entries)

    def lookup(self, src: IPAddress, dst: IPAddress, proto: int = 0, sport: int = 0,
               dport: int = 0) -> int | None:
        """Index of the most specific eroute matching the packet, or None."""
        for index, eroute in enumerate(self.entries):
            if eroute.selector.matches(src, dst, proto, sport, dport):
                return index
        return None

    def matches(self, src: IPAddress, dst: IPAddress, proto: int = 0, sport: int = 0,
                dport: int = 0) -> list[Eroute]:
        """Every matching eroute, most specific first (for `oe trace`'s explanation)."""
        return [e for e in self.entries if e.selector.matches(src, dst, proto, sport, dport)]

    def replace(self, *eroutes: Eroute) -> "ErouteTable":
        """A new table with these eroutes added, replacing any with the same selector."""
        return ErouteTable(self.entries + eroutes)
