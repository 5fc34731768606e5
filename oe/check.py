"""`oe check`: everything `oe start` needs, checked before anything is touched (issue 15).

One line per problem, with file:line where there is one. The configuration's own rules live
in oe.config (examine), the policy's in oe.policygroups, the host key's in oe.hostkey and the
key source's in oe.dnskeys.fetcher: this module only asks each and adds what depends on the
host (its addresses, routing table and rule, capabilities). `oe start` runs all of it, `oe
reload` what does not depend on the host (the daemon owns the table and rule by then).
"""

from __future__ import annotations

import errno
import ipaddress
import socket
from dataclasses import dataclass, field
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric import rsa

from oe import config as oeconfig
from oe import hostkey
from oe.dnskeys.fetcher import make_source
from oe.errors import OeError
from oe.policygroups import Policy
from oe.policygroups.loader import load_policy

# linux/capability.h: what the daemon uses, and why (the unit grants exactly these)
CAPABILITIES = {10: ("CAP_NET_BIND_SERVICE", "UDP 500 and 4500"),
                12: ("CAP_NET_ADMIN", "the TUN device, routes, rule and nftables"),
                13: ("CAP_NET_RAW", "the raw ESP and %pass sockets")}


@dataclass
class Report:
    """What the checks found: one line per problem, and what was read when it was good."""

    problems: list[str] = field(default_factory=list)
    origin: str = "oe.conf"
    """The oe.conf read, as problems name it."""
    config: oeconfig.Config | None = None
    policy: Policy | None = None
    key: rsa.RSAPrivateKey | None = None


def files(confdir: Path) -> Report:
    """oe.conf, the key source, policies/ and hostkey.pem: what `oe reload` re-reads."""
    report = Report()
    try:
        text, origin = oeconfig.read(confdir)
    except OeError as exc:
        report.problems.append(str(exc))
    else:
        report.origin = origin
        config, problems = oeconfig.examine(text)
        report.problems += [p.text(origin) for p in problems]
        if not problems:
            report.config = config
            try:
                make_source(config.dns, confdir)
            except OeError as exc:
                report.problems.append(f"{origin}: {exc}")
    try:
        report.policy = load_policy(confdir)
    except OeError as exc:
        report.problems.append(str(exc))
    try:
        report.key = hostkey.load_own(hostkey.hostkey_path(confdir))
    except OeError as exc:
        report.problems.append(str(exc))
    return report


def host(config: oeconfig.Config, running: bool, origin: str = "oe.conf") -> list[str]:
    """What `oe start` needs of this host and network namespace; with `running` (an oe runs
    here already) its table and rule are its own and are not looked at."""
    problems = [f"oe start needs {name} ({why})" for name, why in _missing_capabilities()]
    problems += [f"{origin}: addresses: {p}" for a in config.addresses if (p := _not_local(a))]
    if config.gateway.subnets and not _lan(config):
        problems.append(f"{origin}: [gateway] subnets: no interface has a route into "
                        f"{', '.join(config.gateway.subnets)} (`ip route` lists them)")
    if not running:
        from oe import routing  # pyroute2: only where the host is looked at

        try:
            routing.check_table(config.route_table, config.tun_name)
        except OeError as exc:
            problems.append(str(exc))
        problems += [f"{origin}: rule_priority: {p}"
                     for p in _foreign_rules(config.route_table, config.rule_priority)]
    return problems


def _missing_capabilities() -> list[tuple[str, str]]:
    try:
        status = Path("/proc/self/status").read_text()
    except OSError:
        return []
    effective = next((int(line.split()[1], 16) for line in status.splitlines()
                      if line.startswith("CapEff:")), 0)
    return [CAPABILITIES[bit] for bit in sorted(CAPABILITIES) if not effective >> bit & 1]


def _not_local(address: str) -> str | None:
    """Whether `address` (valid: oe.config checked it) is one of this host's: only then can
    the daemon's IKE answer from it (its wildcard sockets send from the address the peer
    contacted, docs/gateway.md 1)."""
    family = socket.AF_INET6 if ":" in address else socket.AF_INET
    with socket.socket(family, socket.SOCK_DGRAM) as probe:
        try:
            probe.bind((address, 0))
        except OSError as exc:
            if exc.errno == errno.EADDRNOTAVAIL:
                return f"{address} is not an address of this host (`ip address` lists them)"
            return f"{address}: {exc.strerror}"
    return None


def _foreign_rules(table: int, priority: int) -> list[str]:
    """A rule at oe's priority that is not oe's would be deleted or shadowed by it."""
    from pyroute2 import IPRoute

    with IPRoute() as ipr:
        rules = [(r.get_attr("FRA_TABLE") or r["table"]) for family in
                 (socket.AF_INET, socket.AF_INET6)
                 for r in ipr.get_rules(family=family) if r.get_attr("FRA_PRIORITY") == priority]
    return [f"{priority} is taken by a rule of table {t} (`ip rule`): choose a free one"
            for t in sorted(set(rules)) if t != table][:1]


def _lan(config: oeconfig.Config) -> tuple[str, ...]:
    from oe import net  # pyroute2: only where the host is looked at

    return net.interfaces_for(config.gateway.subnets, config.tun_name)


def forwarding(config: oeconfig.Config) -> list[str]:
    """The gateway's LAN and the sysctls `oe start` would change for [gateway] subnets, one
    line each (none without subnets: oe never touches forwarding then)."""
    subnets = config.gateway.subnets
    if not subnets:
        return []
    from oe import net, routing

    lan, wan = net.gateway_interfaces(subnets, config.tun_name)
    families = {ipaddress.ip_network(s).version for s in subnets}
    return [f"gateway for {', '.join(subnets)} on {', '.join(lan)}",
            *(f"would set {name} = {new} (now {old})" for name, old, new in
              routing.forwarding_changes(families, list(lan), config.tun_name, wan))]


def summary(report: Report) -> str:
    config = report.config
    text = (f"ok: oe.conf ({len(config.addresses) or 'default'} addresses, table "
            f"{config.route_table}, rule {config.rule_priority}), {len(report.policy.entries)} "
            f"policy entries, host key RSA {report.key.key_size} bits")
    return "\n".join([text, *forwarding(config)])


__all__ = ["Report", "files", "host", "summary"]
