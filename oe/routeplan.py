"""Which routes steer traffic into oe, and whose cleartext the inbound table refuses; sans-IO.

The kernel's side (oe.routing, oe.inbound) installs what this module decides:
- trap into the TUN every CIDR of a trapping group, and a host route to every tunnel's peer: a
  peer whose group passes (a clear-or-private responder) would otherwise get its replies around
  the TUN, in clear;
- exempt the nameservers we ask by address (their answers must never wait for OE), and our
  clients' subnets: the gateway's own traffic to its LAN, LAN-to-LAN forwarding and the
  decrypted packets for a client take the main table (docs/gateway.md 2). A client's
  forwarded packet C -> T still meets the trap: the rule has no `iif`, so table 4322 routes it
  into the TUN, where groups apply by destination with C as source;
- prohibit the private group's CIDRs beneath, so a dead daemon fails closed;
- refuse cleartext on every pair we hold a host-to-host SA for (RFC 4301 5.2): T's cleartext
  to the SA's own end (us, or our client C), not to our other addresses or clients.
"""

from __future__ import annotations

import ipaddress
from typing import Iterable

from oe.commands import Command, RefuseInClear, Steer
from oe.eroute import ErouteTable
from oe.opportunist import Tunnel
from oe.policygroups.groups import SEMANTICS

Address = ipaddress.IPv4Address | ipaddress.IPv6Address


class RoutePlan:
    """The routed peers and refused-in-clear peers installed last."""

    def __init__(self) -> None:
        self._base: ErouteTable | None = None
        self._nameservers: tuple[str, ...] = ()
        self._subnets: tuple[str, ...] = ()
        self.peers: frozenset[str] = frozenset()
        """Tunnels' peers (/32 or /128) routed into the TUN."""
        self.refused: frozenset[tuple[Address, Address]] = frozenset()
        """(source, destination) pairs whose cleartext the inbound table drops: (T, C) for a
        tunnel C <-> T, C our address or our client's."""

    def steer(self, base: ErouteTable, nameservers: Iterable[str],
              subnets: Iterable[str] = ()) -> Steer:
        """The whole set of routes for this policy and the tunnels routed last; later
        changes (follow) keep this policy, these nameservers and our clients' subnets."""
        self._base, self._nameservers, self._subnets = base, tuple(nameservers), tuple(subnets)
        trap, clear, private = sorted(self.peers), [], []
        for eroute in base.entries:
            if eroute.group is None:
                continue
            dst = str(eroute.selector.dst)
            outbound = SEMANTICS[eroute.group].outbound.value
            (trap if outbound in ("%trap", "%reject") else clear).append(dst)
            if eroute.group == "private":
                private.append(dst)
        exempt = [str(ipaddress.ip_network(n)) for n in (*self._nameservers, *self._subnets)]
        return Steer(tuple(trap), tuple(clear), tuple(exempt), tuple(private))

    def follow(self, tunnels: Iterable[Tunnel], routes: bool, inbound: bool) -> list[Command]:
        """After an event: new routes when the tunnels' peers changed, and the inbound
        table's change, each only once it is installed (`routes`, `inbound`)."""
        tunnels = list(tunnels)
        commands: list[Command] = []
        peers = frozenset(str(t.pair.selector.dst) for t in tunnels)
        if peers != self.peers and routes and self._base is not None:
            self.peers = peers
            commands.append(self.steer(self._base, self._nameservers, self._subnets))
        refused = frozenset((t.pair.dst, t.pair.src) for t in tunnels
                            if t.narrowing == (0, 0, 0))
        if refused != self.refused and inbound:
            add, remove = refused - self.refused, self.refused - refused
            self.refused = refused
            commands.append(RefuseInClear(add, remove))
        return commands


__all__ = ["RoutePlan"]
