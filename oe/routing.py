"""Steering trapped destinations into the TUN device (netlink, via pyroute2).

design.md section 1: a routing table of oe's own holds a route into the TUN for every CIDR of a
trapping group (private-or-clear, private) and of block (so %reject can answer), and throw
routes for what must never enter it: clear CIDRs, the nameservers (or OE could never look up a
key), link-local and multicast. One rule, "not fwmark BYPASS lookup TABLE", sends every
unmarked packet through that table; oe's own IKE, ESP and %pass sockets carry the mark and
take the main table.

Everything installed is recorded, and remove() takes out exactly that; install() first clears
what a previous instance that died may have left in the same table and rule priority.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field
from pathlib import Path

from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkError

from oe.errors import OeError

FIB_RULE_INVERT = 0x2  # linux/fib_rules.h: "not fwmark ..."
# Never steered into the TUN: link-local and multicast (IPv6 neighbour discovery lives there),
# loopback and the limited broadcast.
ALWAYS_EXEMPT = ("127.0.0.0/8", "169.254.0.0/16", "224.0.0.0/4", "255.255.255.255/32",
                 "fe80::/10", "ff00::/8", "::1/128")


class RoutingError(OeError):
    """The routes or rules steering traffic into the TUN could not be installed."""


@dataclass
class Steering:
    """What install() put in place, so remove() can take it out again."""

    table: int
    priority: int
    mark: int
    routes: list[tuple[str, str]] = field(default_factory=list)  # (dst, "tun" | "throw")
    rules: list[int] = field(default_factory=list)  # address families with a rule


def _family(network: ipaddress._BaseNetwork) -> int:
    return 2 if network.version == 4 else 10  # AF_INET, AF_INET6


def plan(trap: list, exempt: list) -> list[tuple[ipaddress._BaseNetwork, str]]:
    """The routes, deduplicated: a CIDR both trapped and exempt is exempt (throw wins)."""
    routes: dict[ipaddress._BaseNetwork, str] = {}
    for cidr in trap:
        routes[ipaddress.ip_network(cidr)] = "tun"
    for cidr in list(exempt) + list(ALWAYS_EXEMPT):
        routes[ipaddress.ip_network(cidr)] = "throw"
    return sorted(routes.items(), key=lambda item: (item[0].version, item[0]))


def install(tun_name: str, trap: list, exempt: list, *, table: int, priority: int,
            mark: int) -> Steering:
    """Route `trap` CIDRs into the TUN, `exempt` ones around it, and add the rule(s)."""
    steering = Steering(table, priority, mark)
    with IPRoute() as ipr:
        _clear(ipr, table, priority)
        links = ipr.link_lookup(ifname=tun_name)
        if not links:
            raise RoutingError(f"no device {tun_name} to route into")
        oif = links[0]
        routes = plan(trap, exempt)
        try:
            for network, kind in routes:
                args = {"dst": str(network), "table": table, "family": _family(network)}
                if kind == "tun":
                    ipr.route("replace", oif=oif, **args)
                else:
                    ipr.route("replace", type="throw", **args)
                steering.routes.append((str(network), kind))
            for family in sorted({_family(n) for n, kind in routes if kind == "tun"}):
                ipr.rule("add", family=family, table=table, priority=priority, fwmark=mark,
                         fwmask=mark, flags=FIB_RULE_INVERT)
                steering.rules.append(family)
        except NetlinkError as exc:
            _clear(ipr, table, priority)
            raise RoutingError(f"cannot install oe's routes in table {table}: {exc.args[-1]}") \
                from None
    return steering


def remove(steering: Steering) -> None:
    """Take out the rule(s) and routes install() made."""
    with IPRoute() as ipr:
        _clear(ipr, steering.table, steering.priority)


def _clear(ipr: IPRoute, table: int, priority: int) -> None:
    for family in (2, 10):
        for rule in ipr.get_rules(family=family):
            if rule.get_attr("FRA_PRIORITY") == priority and rule.get_attr("FRA_TABLE") == table:
                try:
                    ipr.rule("del", family=family, table=table, priority=priority)
                except NetlinkError:
                    pass
        try:
            ipr.flush_routes(table=table, family=family)
        except NetlinkError:
            pass


def loosen_rp_filter(interfaces: list[str]) -> list[str]:
    """Set strict reverse-path filtering (1) to loose (2) where it would drop our traffic.

    Replies for peers routed into the TUN arrive on the real interface; strict mode would drop
    them. Returns the sysctl names changed, for the log.
    """
    changed = []
    for name in ["all", *interfaces]:
        path = Path("/proc/sys/net/ipv4/conf") / name / "rp_filter"
        try:
            if path.read_text().strip() == "1":
                path.write_text("2")
                changed.append(f"net.ipv4.conf.{name}.rp_filter")
        except OSError:
            continue
    return changed
