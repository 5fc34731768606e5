"""Steering trapped destinations into the TUN device (netlink, via pyroute2).

design.md section 1: a routing table of oe's own holds a route into the TUN for every CIDR of a
trapping group (private-or-clear, private) and of block (so %reject can answer), and throw
routes for what must never enter it: clear CIDRs, the nameservers (or OE could never look up a
key), link-local and multicast. One rule, "not fwmark BYPASS lookup TABLE", sends every
unmarked packet through that table; oe's own IKE, ESP and %pass sockets carry the mark and
take the main table.

install() is idempotent: it replaces routes in place and drops those no longer wanted (also
what an instance that died left in the same table), so reloads leave no gap. remove() takes
the table's routes and the rule out; fail_closed() leaves prohibit routes for private CIDRs.
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
            mark: int, prohibit: tuple = ()) -> Steering:
    """Route `trap` CIDRs into the TUN, `exempt` ones around it, and make sure the rule is there.

    Idempotent and without a gap: every wanted route is replaced in place, then routes no longer
    wanted go, so a reload never leaves a trapped CIDR to the main table for a moment (a private
    flow would leak in clear). `prohibit` CIDRs get prohibit routes (fail closed).
    """
    steering = Steering(table, priority, mark)
    with IPRoute() as ipr:
        links = ipr.link_lookup(ifname=tun_name) if trap else [0]
        if not links:
            raise RoutingError(f"no device {tun_name} to route into")
        routes = plan(trap, exempt)
        routes += [(ipaddress.ip_network(c), "prohibit") for c in prohibit]
        try:
            for network, kind in routes:
                args = {"dst": str(network), "table": table, "family": _family(network)}
                if kind == "tun":
                    ipr.route("replace", oif=links[0], **args)
                else:
                    ipr.route("replace", type=kind, **args)
                steering.routes.append((str(network), kind))
            _drop_stale(ipr, table, {ipaddress.ip_network(d) for d, _ in steering.routes})
            families = {_family(n) for n, kind in routes if kind != "throw"}
            for family in (2, 10):
                present = _has_rule(ipr, family, table, priority)
                if family in families and not present:
                    ipr.rule("add", family=family, table=table, priority=priority, fwmark=mark,
                             fwmask=mark, flags=FIB_RULE_INVERT)
                elif family not in families and present:
                    ipr.rule("del", family=family, table=table, priority=priority)
            steering.rules = sorted(families)
        except NetlinkError as exc:
            raise RoutingError(f"cannot install oe's routes in table {table}: {exc.args[-1]}") \
                from None
    return steering


def fail_closed(steering: Steering, prohibit: list, exempt: list) -> Steering:
    """On stop: `prohibit` CIDRs (the private group's) stay unreachable, everything else goes.

    A private destination must never be reached in clear, also when oe is not running; the
    next `oe start` replaces these routes.
    """
    if not prohibit:
        remove(steering)
        return steering
    return install("", [], exempt, table=steering.table, priority=steering.priority,
                   mark=steering.mark, prohibit=tuple(prohibit))


def remove(steering: Steering) -> None:
    """Take out the rule(s) and routes install() made."""
    with IPRoute() as ipr:
        for family in (2, 10):
            if _has_rule(ipr, family, steering.table, steering.priority):
                ipr.rule("del", family=family, table=steering.table, priority=steering.priority)
        _drop_stale(ipr, steering.table, set())


def _has_rule(ipr: IPRoute, family: int, table: int, priority: int) -> bool:
    return any(rule.get_attr("FRA_PRIORITY") == priority and rule.get_attr("FRA_TABLE") == table
               for rule in ipr.get_rules(family=family))


def _drop_stale(ipr: IPRoute, table: int, wanted: set) -> None:
    for family in (2, 10):
        for route in ipr.get_routes(family=family, table=table):
            if route.get_attr("RTA_TABLE") != table:
                continue
            dst = route.get_attr("RTA_DST") or ("0.0.0.0" if family == 2 else "::")
            network = ipaddress.ip_network(f"{dst}/{route['dst_len']}")
            if network not in wanted:
                try:
                    ipr.route("del", table=table, family=family, dst=str(network),
                              type=route["type"])
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
