"""Traffic selectors (RFC 7296 sections 2.9 and 3.13): host-to-host ranges and narrowing."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

from oe.ike.constants import TsType
from oe.ike.message import TrafficSelectorWire

IpAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


@dataclass(frozen=True)
class TrafficSelector:
    """An address range, an IP protocol (0 = any) and a port range."""

    start: IpAddress
    end: IpAddress
    protocol: int = 0
    start_port: int = 0
    end_port: int = 65535

    @classmethod
    def host(cls, addr: str, protocol: int = 0, port: int | None = None) -> "TrafficSelector":
        """A /32 or /128 selector, optionally for one protocol and port."""
        ip = ipaddress.ip_address(addr)
        if port is None:
            return cls(ip, ip, protocol)
        return cls(ip, ip, protocol, port, port)

    @property
    def version(self) -> int:
        return self.start.version

    def to_wire(self) -> TrafficSelectorWire:
        ts_type = TsType.TS_IPV4_ADDR_RANGE if self.version == 4 else TsType.TS_IPV6_ADDR_RANGE
        return TrafficSelectorWire(ts_type, self.protocol, self.start_port, self.end_port,
                                   self.start.packed, self.end.packed)

    @classmethod
    def from_wire(cls, w: TrafficSelectorWire) -> "TrafficSelector":
        return cls(ipaddress.ip_address(w.start_addr), ipaddress.ip_address(w.end_addr),
                   w.ip_protocol, w.start_port, w.end_port)

    def intersect(self, other: "TrafficSelector") -> "TrafficSelector | None":
        """The largest selector inside both, or None (section 2.9 narrowing)."""
        if self.version != other.version:
            return None
        if self.protocol and other.protocol and self.protocol != other.protocol:
            return None
        start, end = max(self.start, other.start), min(self.end, other.end)
        sport, eport = max(self.start_port, other.start_port), min(self.end_port, other.end_port)
        if start > end or sport > eport:
            return None
        return TrafficSelector(start, end, self.protocol or other.protocol, sport, eport)

    def is_subset_of(self, other: "TrafficSelector") -> bool:
        return self.intersect(other) == self

    def __str__(self) -> str:
        addr = str(self.start) if self.start == self.end else f"{self.start}-{self.end}"
        if self.protocol == 0 and (self.start_port, self.end_port) == (0, 65535):
            return addr
        ports = str(self.start_port) if self.start_port == self.end_port else (
            f"{self.start_port}-{self.end_port}")
        return f"{addr}[{self.protocol}/{ports}]"


def narrow(offered: list[TrafficSelector], ours: list[TrafficSelector]) -> list[TrafficSelector]:
    """Every non-empty intersection of an offered selector with one of ours, in offer order."""
    out: list[TrafficSelector] = []
    for o in offered:
        for m in ours:
            x = o.intersect(m)
            if x is not None and x not in out:
                out.append(x)
    return out
