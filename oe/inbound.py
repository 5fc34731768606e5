"""Inbound policy for cleartext: what arrives in clear from a source that must speak ESP is
dropped (nftables).

RFC 4301 section 5.2: an unprotected inbound packet whose selectors call for protection is
discarded. FreeS/WAN's KLIPS did not check it ("A packet which shows up at Y, in clear text,
claiming to be from S ... will be forwarded... even if there is an IPSEC tunnel between X and
Y", its BUGS). Two kinds of source are refused in clear:

- the `private` group's destinations, less the more specific entries of other groups and the
  nameservers: policy says never in clear, and that holds both ways;
- the peers we hold a host-to-host SA with: their traffic comes through ESP, so cleartext
  with their source is spoofed, or a downgrade.

From those sources only IKE (UDP 500 and 4500), ESP and IPv6 neighbour discovery are taken in
clear; what the TUN delivers (opened ESP) is accepted whatever its source. One table, `inet oe`,
holds the rules: the interval sets `private4`/`private6` follow the policy, the plain sets
`peers4`/`peers6` follow the SAs. The table outlives the daemon on purpose: after a crash the
private sources and the last SA peers stay refused in clear until oe starts again and rebuilds
it (fail closed, as the prohibit routes do outbound).
"""

from __future__ import annotations

import ipaddress
import json
import subprocess
from typing import Iterable

from oe.eroute import ErouteTable
from oe.errors import OeError

TABLE = "inet oe"
COUNTER = "cleartext_dropped"
Network = ipaddress.IPv4Network | ipaddress.IPv6Network
Address = ipaddress.IPv4Address | ipaddress.IPv6Address


class InboundError(OeError):
    """The inbound cleartext policy could not be installed (nft failed)."""


def protected(base: ErouteTable, exempt: Iterable[str]) -> list[Network]:
    """The networks whose cleartext is refused by policy: every `private` entry that is not
    narrowed to a protocol or port, less what a more specific entry of another group (or a
    nameserver) carves out of it, as most-specific-match would decide per packet."""
    holes = [ipaddress.ip_network(a) for a in exempt]
    holes += [e.selector.dst for e in base.entries if e.group != "private"]
    out: list[Network] = []
    for eroute in base.entries:
        sel = eroute.selector
        if eroute.group != "private" or (sel.proto, sel.sport, sel.dport) != (0, 0, 0):
            continue
        parts = [sel.dst]
        for hole in holes:
            if hole.version != sel.dst.version or hole.prefixlen <= sel.dst.prefixlen:
                continue
            parts = [rest for part in parts for rest in _exclude(part, hole)]
        out += parts
    # an interval set takes no overlaps (nested private entries): merge them
    return [n for family in (4, 6)
            for n in ipaddress.collapse_addresses(p for p in out if p.version == family)]


def _exclude(network: Network, hole: Network) -> list[Network]:
    if not hole.subnet_of(network):  # type: ignore[arg-type]
        return [network]
    return list(network.address_exclude(hole))  # type: ignore[arg-type]


def ruleset(tun_name: str, networks: Iterable[Network], peers: Iterable[Address]) -> str:
    """The whole table as one nft transaction (replaces what an earlier run left)."""
    networks, peers = list(networks), list(peers)
    sets = []
    for family in (4, 6):
        kind = "ipv4_addr" if family == 4 else "ipv6_addr"
        sets.append(f"  set private{family} {{ type {kind}; flags interval;"
                    + _elements(n for n in networks if n.version == family) + " }")
        sets.append(f"  set peers{family} {{ type {kind};"
                    + _elements(p for p in peers if p.version == family) + " }")
    return "\n".join([
        f"add table {TABLE}",
        f"delete table {TABLE}",
        f"table {TABLE} {{",
        *sets,
        f"  counter {COUNTER} {{ }}",
        "  chain input {",
        "    type filter hook input priority filter - 1; policy accept;",
        f'    iifname "{tun_name}" accept',
        "    meta l4proto esp accept",
        "    udp dport { 500, 4500 } accept",
        "    icmpv6 type { nd-neighbor-solicit, nd-neighbor-advert, nd-router-advert,"
        " nd-redirect } accept",
        *(f"    {ip} saddr @{name}{family} counter name {COUNTER} drop"
          for family, ip in ((4, "ip"), (6, "ip6")) for name in ("private", "peers")),
        "  }",
        "}",
    ]) + "\n"


def _elements(items: Iterable) -> str:
    text = ", ".join(str(i) for i in items)
    return f" elements = {{ {text} }};" if text else ""


def peers_update(add: Iterable[Address], remove: Iterable[Address]) -> str:
    """Set changes for SA peers that came and went, as one nft transaction."""
    lines = []
    for verb, items in (("delete", list(remove)), ("add", list(add))):
        for family in (4, 6):
            chosen = [str(a) for a in items if a.version == family]
            if chosen:
                lines.append(f"{verb} element {TABLE} peers{family} {{ {', '.join(chosen)} }}")
    return "\n".join(lines) + "\n" if lines else ""


def apply(script: str) -> None:
    """Run an nft transaction: all of it or nothing, an error as one line."""
    if not script:
        return
    try:
        proc = subprocess.run(["nft", "-f", "-"], input=script, capture_output=True,
                              text=True, timeout=10)
    except FileNotFoundError:
        raise InboundError("nft not found: install nftables (oe refuses cleartext from "
                           "protected peers with it)") from None
    if proc.returncode != 0:
        detail = " ".join(proc.stderr.split())[:300]
        raise InboundError(f"nft: {detail or f'exit status {proc.returncode}'}")


def stop(keep_private: bool) -> None:
    """On a clean stop: the table goes, unless private sources must stay refused."""
    apply(f"flush set {TABLE} peers4\nflush set {TABLE} peers6\n" if keep_private
          else f"add table {TABLE}\ndelete table {TABLE}\n")


def dropped() -> int:
    """Packets refused so far (0 when there is no table)."""
    proc = subprocess.run(["nft", "-j", "list", "counter", *TABLE.split(), COUNTER],
                          capture_output=True, text=True, timeout=10)
    if proc.returncode != 0:
        return 0
    for item in json.loads(proc.stdout).get("nftables", []):
        if "counter" in item:
            return int(item["counter"].get("packets", 0))
    return 0


__all__ = ["InboundError", "protected", "ruleset", "peers_update", "apply", "stop", "dropped"]
