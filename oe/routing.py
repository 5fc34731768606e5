"""Steering trapped destinations into the TUN device (netlink, via pyroute2).

docs/architecture.md section 1: a routing table of oe's own holds a route into the TUN for every
CIDR of a trapping group (private-or-clear, private), of block (so %reject can answer) and for
every peer with a tunnel, and throw routes for what must not enter it: the CIDRs of the passing
groups (clear, clear-or-private), the nameservers (or OE could never look up a key), link-local
and multicast. One rule, "not fwmark BYPASS lookup TABLE", sends every unmarked packet through
that table; oe's own IKE, ESP and %pass sockets carry the mark and take the main table.

Fail closed while running (docs/architecture.md section 1): beneath the TUN route of every
private CIDR, at a worse metric, lies a prohibit route. The kernel removes a route with its
device, so when oe dies (SIGKILL, OOM, a segfault) the TUN routes vanish with the TUN and the
prohibit routes answer instead: private destinations become unreachable, never reachable in
clear. Throw routes have no device and stay too, and so does the rule.

install() is idempotent: it replaces routes in place and drops those no longer wanted (also
what an instance that died left in the same table), so reloads leave no gap. Before it,
check_table() makes sure the table holds nothing but such leftovers: oe empties its table, and
must not take someone else's routes with it. On stop, fail_closed() leaves what a crash would
leave; remove() takes the table's routes and the rule out, and flush() does the same without a
daemon (`oe flush`: the fail-closed state removed on purpose).
"""

from __future__ import annotations

import errno
import ipaddress
import json
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
# The prohibit routes' metric: worse than any route into the TUN (IPv4 0, IPv6 1024 by default),
# so they answer only once the TUN's routes are gone.
FAIL_CLOSED_METRIC = 65535
RTN_UNICAST, RTN_PROHIBIT, RTN_THROW = 1, 8, 9  # linux/rtnetlink.h


class RoutingError(OeError):
    """The routes or rules steering traffic into the TUN could not be installed."""


@dataclass
class Steering:
    """What install() put in place, so remove() can take it out again."""

    table: int
    priority: int
    mark: int
    routes: dict[tuple[str, str], None] = field(default_factory=dict)
    """(dst, "tun" | "throw" | "prohibit"), in order; a prohibit route lies beneath, at
    FAIL_CLOSED_METRIC. A dict: reroute() changes one route in constant time."""
    rules: list[int] = field(default_factory=list)  # address families with a rule

    @property
    def prohibited(self) -> list[str]:
        """The CIDRs that stay unreachable once the TUN is gone (fail closed)."""
        return [dst for dst, kind in self.routes if kind == "prohibit"]


def _family(network: ipaddress._BaseNetwork) -> int:
    return 2 if network.version == 4 else 10  # AF_INET, AF_INET6


def plan(trap: list, exempt: list, *, clear: list = (),
         prohibit: list = ()) -> list[tuple[ipaddress._BaseNetwork, str]]:
    """The routes, one per prefix and kind, ordered by family then prefix.

    `exempt` (the nameservers, and ALWAYS_EXEMPT) is never trapped: its throw route wins. A
    `clear` CIDR (a passing group's) is thrown unless the same prefix is also trapped, by a
    tunnel's host route or a narrowed entry: then it goes into the TUN, whose classifier passes
    what is clear packet by packet. `prohibit` CIDRs get a prohibit route beneath.
    """
    routes: dict[ipaddress._BaseNetwork, str] = {}
    for cidrs, kind in ((clear, "throw"), (trap, "tun"), ([*exempt, *ALWAYS_EXEMPT], "throw")):
        for cidr in cidrs:
            routes[ipaddress.ip_network(cidr)] = kind
    planned = list(routes.items())
    planned += [(network, "prohibit") for network in {ipaddress.ip_network(c) for c in prohibit}]
    return sorted(planned, key=lambda item: (item[0].version, item[0], item[1]))


def install(tun_name: str, trap: list, exempt: list, *, table: int, priority: int,
            mark: int, clear: list = (), prohibit: list = ()) -> Steering:
    """Route `trap` CIDRs into the TUN, `clear` and `exempt` ones around it (see plan()), put
    prohibit routes beneath the `prohibit` CIDRs, and make sure the rule is there.

    Idempotent and without a gap: every wanted route is replaced in place, then routes no longer
    wanted go, and the rule comes last, so neither a start nor a reload ever leaves a trapped
    CIDR to the main table for a moment (a private flow would leak in clear).
    """
    steering = Steering(table, priority, mark)
    with IPRoute() as ipr:
        links = ipr.link_lookup(ifname=tun_name) if trap else [0]
        if not links:
            raise RoutingError(f"no device {tun_name} to route into")
        routes = plan(trap, exempt, clear=clear, prohibit=prohibit)
        try:
            for network, kind in routes:
                args = {"dst": str(network), "table": table, "family": _family(network)}
                if kind == "tun":
                    ipr.route("replace", oif=links[0], **args)
                elif kind == "prohibit":
                    ipr.route("replace", type=kind, priority=FAIL_CLOSED_METRIC, **args)
                else:
                    ipr.route("replace", type=kind, **args)
                steering.routes[(str(network), kind)] = None
            _drop_stale(ipr, table, {_key(d, kind) for d, kind in steering.routes})
            families = {_family(n) for n, kind in routes if kind != "throw"}
            for family in (2, 10):
                present = _has_rule(ipr, family, table, priority)
                if family in families and not present:
                    _add_rule(ipr, steering, family)
                elif family not in families and present:
                    ipr.rule("del", family=family, table=table, priority=priority)
            steering.rules = sorted(families)
        except NetlinkError as exc:
            raise RoutingError(f"cannot install oe's routes in table {table}: {exc.args[-1]}") \
                from None
    return steering


def reroute(steering: Steering, tun_name: str, replace, delete) -> None:
    """Tunnels' peers came or went (oe.routeplan): replace these (dst, "tun" | "throw") host
    routes and delete those, one route each: the cost of an event, not of the table."""
    with IPRoute() as ipr:
        links = ipr.link_lookup(ifname=tun_name)
        if not links:
            raise RoutingError(f"no device {tun_name} to route into")
        try:
            for dst, kind in replace:
                args = {"dst": dst, "table": steering.table,
                        "family": _family(ipaddress.ip_network(dst))}
                if kind == "tun":
                    ipr.route("replace", oif=links[0], **args)
                    if args["family"] not in steering.rules:  # a policy of passing groups only
                        _add_rule(ipr, steering, args["family"])
                        steering.rules = sorted({*steering.rules, args["family"]})
                else:
                    ipr.route("replace", type=kind, **args)
                steering.routes.pop((dst, "throw" if kind == "tun" else "tun"), None)
                steering.routes[(dst, kind)] = None
            for dst in delete:
                steering.routes.pop((dst, "tun"), None)
                try:
                    ipr.route("del", dst=dst, table=steering.table,
                              family=_family(ipaddress.ip_network(dst)))
                except NetlinkError as exc:
                    if exc.code != errno.ESRCH:  # gone already: oe stop took the table first
                        raise
        except NetlinkError as exc:
            raise RoutingError(f"cannot change oe's routes in table {steering.table}: "
                               f"{exc.args[-1]}") from None


def _add_rule(ipr, steering: Steering, family: int) -> None:
    """The rule "not fwmark BYPASS lookup TABLE" for one address family."""
    ipr.rule("add", family=family, table=steering.table, priority=steering.priority,
             fwmark=steering.mark, fwmask=steering.mark, flags=FIB_RULE_INVERT)


def fail_closed(steering: Steering) -> list[str]:
    """On stop: leave what a crash would leave, and return the CIDRs that stay prohibited.

    The routes into the TUN go; the prohibit routes beneath the private CIDRs, the throw routes
    and the rule stay, so a private destination is never reached in clear, also while oe is not
    running; the next `oe start` replaces them. Without a private CIDR everything goes.
    """
    prohibited = steering.prohibited
    if not prohibited:
        remove(steering)
        return []
    with IPRoute() as ipr:
        _drop_stale(ipr, steering.table,
                    {_key(d, kind) for d, kind in steering.routes if kind != "tun"})
    return prohibited


def remove(steering: Steering) -> None:
    """Take out the rule(s) and routes install() made."""
    with IPRoute() as ipr:
        _drop_rules(ipr, steering.table, steering.priority)
        _drop_stale(ipr, steering.table, set())


def check_table(table: int, tun_name: str) -> None:
    """RoutingError naming the routes in `table` that oe did not put there (issue 15, 3)."""
    with IPRoute() as ipr:
        tun = ipr.link_lookup(ifname=tun_name)
        foreign = [_describe(network, route) for family, network, route in _routes(ipr, table)
                   if not _is_ours(route, tun)]
    if foreign:
        shown = ", ".join(foreign[:3]) + (f" and {len(foreign) - 3} more" if len(foreign) > 3
                                          else "")
        raise RoutingError(f"table {table} holds routes oe did not put there ({shown}): "
                           f"choose a free route_table in oe.conf")


def flush(table: int, priority: int, tun_name: str) -> list[str]:
    """Without a daemon: take out oe's rule and oe's routes in `table` (what fail_closed()
    or a crash left), and return the prefixes removed. Routes of others stay."""
    removed = []
    with IPRoute() as ipr:
        tun = ipr.link_lookup(ifname=tun_name)
        try:
            _drop_rules(ipr, table, priority)
        except NetlinkError as exc:
            raise RoutingError(f"cannot remove oe's rule {priority}: {exc.args[-1]}") from None
        for family, network, route in list(_routes(ipr, table)):
            if _is_ours(route, tun):
                _delete(ipr, table, family, network, route)
                removed.append(str(network))
    return removed


def _is_ours(route, tun: list[int]) -> bool:
    """What install() makes: throw routes, prohibit routes at FAIL_CLOSED_METRIC, routes into
    the TUN (gone with it after a crash)."""
    kind = route["type"]
    return (kind == RTN_THROW
            or (kind == RTN_PROHIBIT and route.get_attr("RTA_PRIORITY") == FAIL_CLOSED_METRIC)
            or (kind == RTN_UNICAST and route.get_attr("RTA_OIF") in tun))


def _describe(network: ipaddress._BaseNetwork, route) -> str:
    gateway = route.get_attr("RTA_GATEWAY")
    kind = {RTN_UNICAST: ""}.get(route["type"], f"type {route['type']} ")
    return f"{kind}{network}" + (f" via {gateway}" if gateway else "")


def _drop_rules(ipr: IPRoute, table: int, priority: int) -> None:
    for family in (2, 10):
        if _has_rule(ipr, family, table, priority):
            ipr.rule("del", family=family, table=table, priority=priority)


def _key(dst: str, kind: str) -> tuple[ipaddress._BaseNetwork, bool]:
    """A route's identity in the table: its prefix and whether it lies beneath (metric)."""
    return ipaddress.ip_network(dst), kind == "prohibit"


def _has_rule(ipr: IPRoute, family: int, table: int, priority: int) -> bool:
    return any(rule.get_attr("FRA_PRIORITY") == priority and rule.get_attr("FRA_TABLE") == table
               for rule in ipr.get_rules(family=family))


def _routes(ipr: IPRoute, table: int):
    """(family, prefix, route) of every route in `table`."""
    for family in (2, 10):
        for route in ipr.get_routes(family=family, table=table):
            if route.get_attr("RTA_TABLE") != table:
                continue
            dst = route.get_attr("RTA_DST") or ("0.0.0.0" if family == 2 else "::")
            yield family, ipaddress.ip_network(f"{dst}/{route['dst_len']}"), route


def _delete(ipr: IPRoute, table: int, family: int, network, route) -> None:
    try:
        ipr.route("del", table=table, family=family, dst=str(network), type=route["type"],
                  priority=route.get_attr("RTA_PRIORITY") or 0)
    except NetlinkError:
        pass


def _drop_stale(ipr: IPRoute, table: int, wanted: set) -> None:
    for family, network, route in list(_routes(ipr, table)):
        if (network, route.get_attr("RTA_PRIORITY") == FAIL_CLOSED_METRIC) not in wanted:
            _delete(ipr, table, family, network, route)


SYSCTL = Path("/proc/sys")


def _sysctl(root: Path, name: str) -> Path:
    """net.ipv4.conf.<device>.<key> as a path; a device name may hold dots (eth0.100)."""
    net, family, conf, *device, key = name.split(".")
    return root / net / family / conf / ".".join(device) / key


def _read(root: Path, name: str) -> str | None:
    try:
        return _sysctl(root, name).read_text().strip()
    except OSError:
        return None


FORWARDING_RECORD = "forwarding.json"
"""In the run dir: the forwarding sysctls oe changed and their old values."""


def forwarding_changes(families: set[int], lan: list[str], tun: str, wan: list[str],
                       root: Path = SYSCTL) -> list[tuple[str, str, str]]:
    """(sysctl, old, new) for what a gateway's clients need (docs/gateway.md 2), only for the
    address `families` of [gateway] subnets, and only where the value differs.

    Linux forwards by the flag of the packet's *input* device (IPv4 `ip_route_input_slow`
    checks IN_DEV_FORWARD; IPv6 `force_forwarding`, Linux 6.17 on): the LAN for the clients'
    packets, the TUN for decrypted ones, the WAN for the replies to flows of a passing group.
    `all` stays as it was, so interfaces oe does not know of stay as they were; the forward
    chain (oe.inbound) lets the WAN reach only the clients. A kernel without
    `force_forwarding` forwards IPv6 only with `all.forwarding`, which also makes every
    interface with accept_ra 1 drop its RA-learned routes: those get accept_ra 2 first.
    """
    wanted: list[tuple[str, str]] = []
    devices = [*lan, tun, *wan]
    if 4 in families:
        wanted += [(f"net.ipv4.conf.{d}.forwarding", "1") for d in devices]
    if 6 in families and _read(root, "net.ipv6.conf.all.force_forwarding") is not None:
        wanted += [(f"net.ipv6.conf.{d}.force_forwarding", "1") for d in devices]
    elif 6 in families:
        wanted += [(f"net.ipv6.conf.{d}.accept_ra", "2") for d in wan
                   if _read(root, f"net.ipv6.conf.{d}.accept_ra") == "1"]
        wanted.append(("net.ipv6.conf.all.forwarding", "1"))
    return [(name, old, new) for name, new in wanted
            if (old := _read(root, name)) is not None and old != new]


def enable_forwarding(families: set[int], lan: list[str], tun: str, wan: list[str],
                      record: Path, root: Path = SYSCTL) -> list[tuple[str, str]]:
    """Make forwarding_changes(), and return (sysctl, old value) of each. The old values are
    written to `record` before anything changes, so a crash half-way is undone by
    restore_forwarding() all the same."""
    changes = forwarding_changes(families, lan, tun, wan, root)
    if changes:
        record.parent.mkdir(parents=True, exist_ok=True)
        record.write_text(json.dumps([(name, old) for name, old, _ in changes]) + "\n")
    for name, _, new in changes:
        try:
            _sysctl(root, name).write_text(new)
        except OSError as exc:
            raise RoutingError(f"cannot set {name} = {new}: {exc.strerror}") from None
    return [(name, old) for name, old, _ in changes]


def opened(changes: list[tuple[str, str]], wan: list[str]) -> tuple[str, ...]:
    """The WAN interfaces oe turned forwarding on for: the forward chain lets them reach only
    the clients (all of them when IPv6 forwarding had to be turned on for all)."""
    if ("net.ipv6.conf.all.forwarding", "0") in changes:
        return tuple(wan)
    names = {name for name, _ in changes}
    return tuple(d for d in wan if {f"net.ipv4.conf.{d}.forwarding",
                                    f"net.ipv6.conf.{d}.force_forwarding"} & names)


def restore_forwarding(record: Path, root: Path = SYSCTL) -> list[str]:
    """Put back what enable_forwarding() recorded, in reverse (on stop, at the next start
    after a crash, or by `oe flush`), and forget the record; returns the sysctls restored.
    An interface gone since (the TUN) is skipped."""
    try:
        changes = json.loads(record.read_text())
    except FileNotFoundError:
        return []
    except (OSError, ValueError) as exc:
        raise RoutingError(f"{record}: cannot read the forwarding sysctls to restore: {exc}") \
            from None
    restored = []
    for name, old in reversed(changes):
        try:
            _sysctl(root, name).write_text(str(old))
            restored.append(name)
        except OSError:
            continue
    record.unlink()
    return restored


def loosen_rp_filter(interfaces: list[str], root: Path = SYSCTL) -> list[str]:
    """Make reverse-path filtering loose (2) on `interfaces` where it is strict.

    Replies for peers routed into the TUN arrive on the real interface; strict mode would drop
    them. The kernel applies max(all, interface), so an interface is strict when either is 1;
    `all` itself is never changed: a gateway's LAN, not passed in, stays strict (RFC 3704,
    docs/gateway.md 2). Returns the sysctl names changed, for the log.
    """
    changed = []
    every = _read(root, "net.ipv4.conf.all.rp_filter") or "0"
    for name in interfaces:
        sysctl = f"net.ipv4.conf.{name}.rp_filter"
        own = _read(root, sysctl)
        if own is not None and max(own, every) == "1":
            try:
                _sysctl(root, sysctl).write_text("2")
            except OSError:
                continue
            changed.append(sysctl)
    return changed
