"""Policy-group file parser: pure text -> entries, each carrying its file:line.

Format (FreeS/WAN ipsec.conf(5) "POLICY GROUP FILES", with Libreswan's narrowing):

    # comment
    192.0.2.0/24                 a CIDR block
    198.51.100.7                 a bare address: /32 (IPv4) or /128 (IPv6)
    2001:db8::/32 tcp 0 22       narrowed to a protocol, source port and destination port (0 = any)

Host names are refused: FreeS/WAN resolved them at load time, which stalled startup and silently
dropped names that did not resolve (doc/policygroups.html).
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass

from oe.eroute import PORT_PROTOCOLS, Selector, port_number, protocol_number
from oe.errors import OeError


class PolicyError(OeError):
    """A policy-group file is malformed; the message starts with file:line."""


@dataclass(frozen=True)
class PolicyEntry:
    group: str
    """The group (file name) this line is in."""
    selector: Selector
    """What the line selects: destination CIDR and optional protocol and ports."""
    file: str
    """The file as the user knows it, e.g. /etc/oe/policies/private."""
    line: int
    """1-based line number in that file."""

    @property
    def origin(self) -> str:
        """Where the entry came from, as `policies/<group>:<line>`."""
        return f"policies/{self.group}:{self.line}"

    @property
    def place(self) -> str:
        """file:line, for messages."""
        return f"{self.file}:{self.line}"


@dataclass(frozen=True)
class Policy:
    entries: tuple[PolicyEntry, ...] = ()
    """Every entry of every group, in group order then line order."""
    warnings: tuple[str, ...] = ()
    """Things fixed up while loading (host bits cleared), each naming file:line."""


_HOSTNAME = re.compile(r"^(?=.*[A-Za-z])[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?(?:\.[A-Za-z0-9-]+)*\.?$")


def parse_group(group: str, text: str, file: str) -> tuple[list[PolicyEntry], list[str]]:
    """Parse one group file's text; return its entries and warnings, or raise PolicyError."""
    entries: list[PolicyEntry] = []
    warnings: list[str] = []
    for number, raw in enumerate(text.splitlines(), start=1):
        tokens = raw.split("#", 1)[0].split()
        if not tokens:
            continue
        place = f"{file}:{number}"
        if len(tokens) not in (1, 4):
            raise PolicyError(
                f"{place}: expected 'CIDR' or 'CIDR proto sport dport', got {len(tokens)} fields"
            )
        dst, warning = _parse_cidr(tokens[0], place)
        if warning:
            warnings.append(warning)
        proto = sport = dport = 0
        if len(tokens) == 4:
            proto = _parse_proto(tokens[1], place)
            sport = _parse_port(tokens[2], place)
            dport = _parse_port(tokens[3], place)
            if (sport or dport) and proto not in PORT_PROTOCOLS:
                raise PolicyError(
                    f"{place}: ports need tcp, udp or sctp, not protocol '{tokens[1]}'"
                )
        selector = Selector(Selector.any_source(dst.version), dst, proto, sport, dport)
        entries.append(PolicyEntry(group, selector, file, number))
    return entries, warnings


def combine(groups: list[tuple[list[PolicyEntry], list[str]]]) -> Policy:
    """Join parsed groups into one Policy; the same selector twice is an error naming both places."""
    seen: dict[Selector, PolicyEntry] = {}
    entries: list[PolicyEntry] = []
    warnings: list[str] = []
    for group_entries, group_warnings in groups:
        warnings.extend(group_warnings)
        for entry in group_entries:
            first = seen.get(entry.selector)
            if first is not None:
                raise PolicyError(
                    f"{entry.place}: {entry.selector} is already in {first.group} at {first.place}"
                )
            seen[entry.selector] = entry
            entries.append(entry)
    return Policy(tuple(entries), tuple(warnings))


def _parse_cidr(token: str, place: str):
    if "%" in token:
        raise PolicyError(f"{place}: scoped address '{token}' is not allowed in a policy group")
    try:
        if "/" not in token:
            return ipaddress.ip_network(ipaddress.ip_address(token)), None
        network = ipaddress.ip_network(token, strict=False)
    except ValueError:
        if "/" not in token and _HOSTNAME.match(token):
            raise PolicyError(
                f"{place}: host name '{token}' is not allowed: write an address or CIDR "
                "(names are not resolved when policy loads)"
            ) from None
        raise PolicyError(f"{place}: bad address or CIDR '{token}'") from None
    if ipaddress.ip_interface(token).ip != network.network_address:
        return network, f"{place}: host bits set in '{token}', using {network}"
    return network, None


def _parse_proto(token: str, place: str) -> int:
    proto = protocol_number(token)
    if proto is None:
        raise PolicyError(f"{place}: bad protocol '{token}' (a name such as tcp, or 0-255)")
    return proto


def _parse_port(token: str, place: str) -> int:
    port = port_number(token)
    if port is None:
        raise PolicyError(f"{place}: bad port '{token}' (0-65535, 0 = any)")
    return port
