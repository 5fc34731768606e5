"""What Datapath.add_sa() installs: one ESP SA, described by a typed record (SaSpec).

A bad description never gets as far as the datapath: SaSpec checks itself when built and
raises ValueError. What depends on the datapath's state (an SPI or a KEYMAT in use) is checked
by add_sa().
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from enum import StrEnum

Address = ipaddress.IPv4Address | ipaddress.IPv6Address
# A traffic selector's addresses (RFC 7296 3.13.1): an address, a CIDR, or a (first, last) pair.
TsAddresses = str | Address | ipaddress.IPv4Network | ipaddress.IPv6Network | tuple

ANY_PORT = (0, 65535)
NAT_T_PORT = 4500               # RFC 3948


class Direction(StrEnum):
    IN = "in"                   # opens what the peer sends; found by the SPI we chose
    OUT = "out"                 # seals towards the peer


class Encap(StrEnum):
    UDP = "udp"                 # ESP-in-UDP, RFC 3948
    ESP = "esp"                 # IP protocol 50


@dataclass(frozen=True, kw_only=True)
class SaSpec:
    """One ESP SA with AES-GCM-16 (RFC 4106).

    `key` is KEYMAT: AES key || 4-byte salt (RFC 4106 8.1), 20 or 36 bytes. Traffic selectors
    (src_ts/dst_ts; proto; inclusive port ranges, which need a proto) say which inner packets
    the SA carries, exactly as negotiated; they default to peer -> local inbound (checked on
    every packet, RFC 4322 12.1) and local -> peer outbound. Lifetimes are seconds from
    installation (0: none). `seq` is the last sequence number sent (OUT) or the top of the
    replay window (IN): 0 for a new SA; tests start near a 32-bit boundary with it.
    `replay_window` None: the datapath's default.
    """

    spi: int
    direction: Direction
    key: bytes
    local: Address | str
    peer: Address | str
    tunnel: bool = True
    esn: bool = False
    encap: Encap = Encap.UDP
    local_port: int = NAT_T_PORT
    peer_port: int = NAT_T_PORT
    src_ts: TsAddresses | None = None
    dst_ts: TsAddresses | None = None
    proto: int = 0
    sport: tuple[int, int] = ANY_PORT
    dport: tuple[int, int] = ANY_PORT
    path_mtu: int = 1500
    replay_window: int | None = None
    soft_bytes: int = 0
    hard_bytes: int = 0
    soft_packets: int = 0
    hard_packets: int = 0
    soft_time: float = 0.0
    hard_time: float = 0.0
    seq: int = 0

    def __post_init__(self) -> None:
        fix = object.__setattr__         # frozen: normalise once, here
        if not 256 <= self.spi <= 0xFFFFFFFF:
            raise ValueError("an SPI is 256 to 2^32 - 1: 0 to 255 are reserved (RFC 4303 2.1)")
        fix(self, "direction", Direction(self.direction))
        fix(self, "encap", Encap(self.encap))
        if len(self.key) not in (20, 36):
            raise ValueError("KEYMAT is 20 (AES-128-GCM) or 36 (AES-256-GCM) bytes")
        fix(self, "local", ipaddress.ip_address(self.local))
        fix(self, "peer", ipaddress.ip_address(self.peer))
        if self.local.version != self.peer.version:
            raise ValueError("local and peer are not of one address family")
        if not 0 <= self.proto <= 255:
            raise ValueError("the protocol is 0 (any) to 255")
        fix(self, "sport", tuple(self.sport))
        fix(self, "dport", tuple(self.dport))
        for lo, hi in (self.sport, self.dport):
            if not 0 <= lo <= hi <= 65535:
                raise ValueError(f"bad port range {lo}-{hi}")
        if not self.proto and (self.sport != ANY_PORT or self.dport != ANY_PORT):
            raise ValueError("port ranges need a protocol")
        inbound = self.direction is Direction.IN
        if self.src_ts is None:
            fix(self, "src_ts", self.peer if inbound else self.local)
        if self.dst_ts is None:
            fix(self, "dst_ts", self.local if inbound else self.peer)
        if ts_range(self.src_ts)[0] != ts_range(self.dst_ts)[0]:
            raise ValueError("traffic selectors mix address families")
        if not self.tunnel and ts_range(self.src_ts)[0] != self.family:
            raise ValueError("transport mode carries the outer address family only")
        if self.replay_window is not None and not 1 <= self.replay_window <= 0x7FFFFFFF:
            raise ValueError("the replay window is 1 to 2^31 - 1 packets")

    @property
    def family(self) -> int:
        """The outer address family: 4 or 6."""
        return self.peer.version


def ts_range(ts: TsAddresses) -> tuple[int, bytes, bytes]:
    """A traffic selector's addresses (RFC 7296 3.13.1) as (version, first packed, last
    packed)."""
    if isinstance(ts, tuple):
        first, last = (ipaddress.ip_address(a) for a in ts)
        if first.version != last.version or first > last:
            raise ValueError(f"bad traffic selector range {first}-{last}")
    else:
        net = ipaddress.ip_network(ts, strict=False)
        first, last = net.network_address, net.broadcast_address
    return first.version, first.packed, last.packed
