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
from collections import Counter
from typing import Iterable, Mapping

from oe.commands import Command, RefuseInClear, Reroute, Steer
from oe.eroute import ErouteTable
from oe.flows import Pair, Tunnel
from oe.policygroups.groups import SEMANTICS

Address = ipaddress.IPv4Address | ipaddress.IPv6Address
Refused = tuple[Address, Address]


class RoutePlan:
    """The routed peers and refused-in-clear pairs: wanted (the tunnels standing) and
    installed (what the last Steer, Reroute and RefuseInClear put in place). Followed change
    by change: an event costs what it changed, never the number of tunnels (issue 14)."""

    def __init__(self) -> None:
        self._base: ErouteTable | None = None
        self._nameservers: tuple[str, ...] = ()
        self._subnets: tuple[str, ...] = ()
        self._exempt: frozenset[str] = frozenset()
        self._policy_trap: frozenset[str] = frozenset()  # prefixes the policy routes into oe0
        self._policy_clear: frozenset[str] = frozenset()  # and around it
        self._routing: dict[Pair, str] = {}  # tunnel -> its peer's host prefix
        self._refusing: dict[Pair, Refused] = {}  # tunnel -> the pair it refuses in clear
        self._routed = Counter[str]()  # host prefix -> tunnels wanting it
        self._refused = Counter[Refused]()
        self._peers_changed: set[str] = set()  # wanted, not yet installed or removed
        self._refused_changed: set[Refused] = set()
        self.peers: set[str] = set()
        """Tunnels' peers (/32 or /128) routed into the TUN."""
        self.refused: set[Refused] = set()
        """(source, destination) pairs whose cleartext the inbound table drops: (T, C) for a
        tunnel C <-> T, C our address or our client's."""

    def steer(self, base: ErouteTable, nameservers: Iterable[str],
              subnets: Iterable[str] = ()) -> Steer:
        """The whole set of routes for this policy and the tunnels standing; later changes
        (follow) keep this policy, these nameservers and our clients' subnets."""
        self._base, self._nameservers, self._subnets = base, tuple(nameservers), tuple(subnets)
        self.peers = {prefix for prefix, wanting in self._routed.items() if wanting}
        self._peers_changed.clear()
        trap, clear, private = [], [], []
        for eroute in base.entries:
            if eroute.group is None:
                continue
            dst = str(eroute.selector.dst)
            outbound = SEMANTICS[eroute.group].outbound.value
            (trap if outbound in ("%trap", "%reject") else clear).append(dst)
            if eroute.group == "private":
                private.append(dst)
        exempt = [str(ipaddress.ip_network(n)) for n in (*self._nameservers, *self._subnets)]
        self._exempt, self._policy_trap = frozenset(exempt), frozenset(trap)
        self._policy_clear = frozenset(clear)
        return Steer((*sorted(self.peers), *trap), tuple(clear), tuple(exempt), tuple(private))

    def follow(self, changes: Mapping[Pair, Tunnel | None], routes: bool,
               inbound: bool) -> list[Command]:
        """After an event, given the tunnels it changed (Opportunist.take_tunnel_changes):
        the peers' host routes and the inbound table's pairs that changed, each only once it
        is installed (`routes`, `inbound`)."""
        for pair, tunnel in changes.items():
            _want(self._routing, self._routed, self._peers_changed, pair,
                  str(tunnel.pair.selector.dst) if tunnel is not None else None)
            _want(self._refusing, self._refused, self._refused_changed, pair,
                  (tunnel.pair.dst, tunnel.pair.src)
                  if tunnel is not None and tunnel.narrowing == (0, 0, 0) else None)
        commands: list[Command] = []
        if routes and self._base is not None and self._peers_changed:
            add, gone = _settle(self._routed, self.peers, self._peers_changed)
            reroute = self._reroute(add, gone)
            if reroute.replace or reroute.delete:
                commands.append(reroute)
        if inbound and self._refused_changed:
            add, gone = _settle(self._refused, self.refused, self._refused_changed)
            if add or gone:
                commands.append(RefuseInClear(frozenset(add), frozenset(gone)))
        return commands

    def _reroute(self, add: list[str], gone: list[str]) -> Reroute:
        """The host routes a peer adds or gives back, as the whole plan would have them
        (oe.routing.plan: an exempt prefix's throw route wins over a peer's, a peer's over a
        passing group's; a trapping group's prefix is in the TUN already)."""
        untouched = self._exempt | self._policy_trap
        replace = [(prefix, "tun") for prefix in add if prefix not in untouched]
        replace += [(prefix, "throw") for prefix in gone
                    if prefix not in untouched and prefix in self._policy_clear]
        delete = [prefix for prefix in gone
                  if prefix not in untouched and prefix not in self._policy_clear]
        return Reroute(tuple(replace), tuple(delete))


def _want(wanted: dict, counts: Counter, changed: set, pair: Pair, key) -> None:
    """Record that `pair`'s tunnel now wants `key` (None: nothing)."""
    old = wanted.pop(pair, None)
    if old is not None:
        counts[old] -= 1
        if not counts[old]:
            del counts[old]
        changed.add(old)
    if key is not None:
        wanted[pair] = key
        counts[key] += 1
        changed.add(key)


def _settle(counts: Counter, installed: set, changed: set) -> tuple[list, list]:
    """What to add to and remove from `installed` for the keys in `changed`; marks them
    installed, sorted so commands are reproducible."""
    add = sorted((key for key in changed if counts[key] and key not in installed), key=str)
    gone = sorted((key for key in changed if not counts[key] and key in installed), key=str)
    changed.clear()
    installed.update(add)
    installed.difference_update(gone)
    return add, gone


__all__ = ["RoutePlan"]
