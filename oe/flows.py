"""What OE negotiates for: a host pair (FreeS/WAN's unit of policy, shunts and SAs), its bare
shunt while negotiating or after a failure, and its tunnel once a CHILD SA carries it; and the
pair a negotiated CHILD SA's selectors name (RFC 7296 2.9). Data only: oe.opportunist decides.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

from oe.eroute import IPAddress, Selector, Shunt

_HOST_NETWORK = {4: ipaddress.IPv4Network, 6: ipaddress.IPv6Network}
"""An integer makes a host network (/32, /128)."""


@dataclass(frozen=True, order=True)
class Pair:
    """A host-to-host flow: OE's unit of policy, shunts and SAs."""

    src: IPAddress
    dst: IPAddress

    @classmethod
    def of(cls, src: str | IPAddress, dst: str | IPAddress) -> "Pair":
        return cls(ipaddress.ip_address(src), ipaddress.ip_address(dst))

    @property
    def selector(self) -> Selector:
        return self.selector_narrowed()

    def selector_narrowed(self, proto: int = 0, sport: int = 0, dport: int = 0) -> Selector:
        # From the integer: a host network without parsing text, 15x cheaper than
        # ip_network((address, width)), and every shunt and tunnel change builds these.
        network = _HOST_NETWORK[self.src.version]
        return Selector(network(int(self.src)), network(int(self.dst)), proto, sport, dport)

    def __str__(self) -> str:
        return f"{self.src} -> {self.dst}"


@dataclass
class BareShunt:
    """A %hold while negotiating, or a failure shunt (%pass / %drop) with why it is there."""

    pair: Pair
    action: Shunt
    reason: str
    group: str | None
    created: float
    expires: float | None
    """When the shunt goes away and the %trap is back; None for a %hold."""
    narrowing: tuple[int, int, int] = (0, 0, 0)
    """(proto, sport, dport) of the policy entry that trapped: a shunt for `private ... tcp 0
    22` covers that port only, the rest of the pair's traffic keeps its own fate."""

    @property
    def selector(self) -> Selector:
        return self.pair.selector_narrowed(*self.narrowing)


@dataclass
class Tunnel:
    """An installed OE SA pair between us and a peer."""

    pair: Pair
    peer: IPAddress
    """Where ESP goes: the destination itself, or the gateway it delegates to."""
    sa_id: int
    """The IKE SA (oe.ike event sa_id)."""
    spi_in: int
    spi_out: int
    algorithm: str
    udp_encap: bool
    initiator: bool
    created: float
    narrowing: tuple[int, int, int] = (0, 0, 0)
    """(proto, sport, dport) the CHILD SA was narrowed to (child_flow); (0, 0, 0): all."""
    sa_out: int = 0
    """The datapath's handle of the outbound SA (Datapath.add_sa): what the SA eroute uses."""

    @property
    def selector(self) -> Selector:
        return self.pair.selector_narrowed(*self.narrowing)


ANY_PORT = (0, 65535)


def child_flow(local_ts: tuple, remote_ts: tuple) -> tuple[Pair, tuple[int, int, int]]:
    """The flow a negotiated CHILD SA carries, exactly: its host pair and (proto, sport,
    dport) narrowing, as an eroute can enforce it (RFC 7296 2.9). Raises ValueError, saying
    why, for selectors an eroute cannot express (several, ranges of hosts or ports), so such an
    SA is refused rather than installed wider than negotiated."""
    if len(local_ts) != 1 or len(remote_ts) != 1:
        raise ValueError("more than one selector on a side")
    local, remote = local_ts[0], remote_ts[0]
    if local.start != local.end or remote.start != remote.end:
        raise ValueError(f"selector {local} or {remote} is not a single host")
    if local.version != remote.version:
        raise ValueError("selectors of two address families")
    if local.protocol and remote.protocol and local.protocol != remote.protocol:
        raise ValueError(f"selectors of two protocols ({local.protocol}, {remote.protocol})")
    ports = []
    for ts in (local, remote):
        if (ts.start_port, ts.end_port) == ANY_PORT:
            ports.append(0)
        elif ts.start_port == ts.end_port and ts.start_port != 0:
            ports.append(ts.start_port)
        else:
            raise ValueError(f"port range {ts.start_port}-{ts.end_port} of {ts}")
    protocol = local.protocol or remote.protocol
    if any(ports) and not protocol:
        raise ValueError(f"a port without a protocol in {local} or {remote}")
    return Pair(local.start, remote.start), (protocol, *ports)
