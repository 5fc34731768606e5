"""Inbound policy for cleartext: what arrives in clear from a source that must speak ESP is
dropped (nftables).

RFC 4301 section 5.2: an unprotected inbound packet whose selectors call for protection is
discarded. FreeS/WAN's KLIPS did not check it ("A packet which shows up at Y, in clear text,
claiming to be from S ... will be forwarded... even if there is an IPSEC tunnel between X and
Y", its BUGS). Two kinds of cleartext are refused:

- from the `private` group's destinations, less the more specific entries of other groups, the
  nameservers and our clients' subnets: policy says never in clear, and that holds both ways;
- on the pairs we hold a host-to-host SA for, (T, C) for a tunnel C <-> T: their traffic
  comes through ESP, so cleartext is spoofed, or a downgrade. Pairs, not peers: a tunnel
  between T and our client C does not refuse T's cleartext to us, nor to another client.

From those sources only IKE (UDP 500 and 4500), ESP and IPv6 neighbour discovery are taken in
clear; what the TUN delivers (opened ESP) is accepted whatever its source. One table, `inet oe`,
holds the rules: the interval sets `private4`/`private6` follow the policy, the sets
`refused4`/`refused6` of (source . destination) follow the SAs. The table outlives the daemon
on purpose: after a crash the private sources and the last SA pairs stay refused in clear until
oe starts again and rebuilds it (fail closed, as the prohibit routes do outbound).

A gateway (`[gateway] subnets`, docs/gateway.md 2) gets a `forward` chain for what it forwards
for its clients: decrypted packets from the TUN pass; from the LAN only the clients' own
sources (RFC 3704 ingress filtering: the subnets, and a route back through the interface it
came in on, as strict rp_filter would for IPv4; IPv6 has no rp_filter); to a client, the same
refusals as above; and from the interfaces oe turned forwarding on for the clients' replies
(`opened`), only what goes to a client, so nobody routes through us in clear.
"""

from __future__ import annotations

import ipaddress
import json
import subprocess
from dataclasses import dataclass
from typing import Iterable

from oe.eroute import ErouteTable
from oe.errors import OeError

TABLE = "inet oe"
COUNTER = "cleartext_dropped"
SPOOFED = "spoofed_dropped"
Network = ipaddress.IPv4Network | ipaddress.IPv6Network
Address = ipaddress.IPv4Address | ipaddress.IPv6Address
Pair = tuple[Address, Address]
FAMILIES = ((4, "ip", "ipv4_addr"), (6, "ip6", "ipv6_addr"))


@dataclass(frozen=True)
class Clients:
    """What the forward chain knows of a gateway's clients (docs/gateway.md 2)."""

    subnets: tuple[Network, ...]
    """[gateway] subnets."""
    lan: tuple[str, ...]
    """The interfaces the clients are on (their connected routes cover a subnet)."""
    opened: tuple[str, ...] = ()
    """Other interfaces oe turned forwarding on for, so replies reach the clients."""


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


def ruleset(tun_name: str, networks: Iterable[Network], refused: Iterable[Pair],
            clients: Clients | None = None) -> str:
    """The whole table as one nft transaction (replaces what an earlier run left)."""
    networks, refused = list(networks), list(refused)
    sets = []
    for family, _, kind in FAMILIES:
        sets.append(f"  set private{family} {{ type {kind}; flags interval;"
                    + _elements(n for n in networks if n.version == family) + " }")
        sets.append(f"  set refused{family} {{ type {kind} . {kind};"
                    + _elements(_pair(p) for p in refused if p[0].version == family) + " }")
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
        *(f"    {ip} saddr @private{family} counter name {COUNTER} drop"
          for family, ip, _ in FAMILIES),
        *(f"    {ip} saddr . {ip} daddr @refused{family} counter name {COUNTER} drop"
          for family, ip, _ in FAMILIES),
        "  }",
        *(_forward(tun_name, clients) if clients is not None and clients.subnets else []),
        "}",
    ]) + "\n"


def _forward(tun_name: str, clients: Clients) -> list[str]:
    """The sets and chain that police forwarded packets, for the families with subnets."""
    lines = [f"  counter {SPOOFED} {{ }}"]
    rules = []
    lan = _names(clients.lan)
    opened = _names(clients.opened)
    for family, ip, kind in FAMILIES:
        subnets = list(ipaddress.collapse_addresses(
            n for n in clients.subnets if n.version == family))
        if not subnets:
            continue
        lines.append(f"  set subnets{family} {{ type {kind}; flags interval;"
                     + _elements(subnets) + " }")
        if lan:  # RFC 3704 2.1 and 2.3: a client sends only from its subnet, and from where
            # the route back to it leads
            rules += [f"    iifname {lan} meta nfproto ipv{family} fib saddr . iif oif missing "
                      f"counter name {SPOOFED} drop",
                      f"    iifname {lan} {ip} saddr != @subnets{family} "
                      f"counter name {SPOOFED} drop"]
        rules += [f"    {ip} saddr . {ip} daddr @refused{family} counter name {COUNTER} drop",
                  f"    {ip} daddr @subnets{family} {ip} saddr @private{family} "
                  f"counter name {COUNTER} drop"]
        if opened:
            rules.append(f"    iifname {opened} {ip} daddr != @subnets{family} drop")
    return [*lines,
            "  chain forward {",
            "    type filter hook forward priority filter - 1; policy accept;",
            f'    iifname "{tun_name}" accept',
            *rules,
            "  }"]


def _names(interfaces: Iterable[str]) -> str:
    """An anonymous nft set of interface names ("" for none)."""
    names = ", ".join(f'"{name}"' for name in interfaces)
    return f"{{ {names} }}" if names else ""


def _pair(pair: Pair) -> str:
    return f"{pair[0]} . {pair[1]}"


def _elements(items: Iterable) -> str:
    text = ", ".join(str(i) for i in items)
    return f" elements = {{ {text} }};" if text else ""


def refused_update(add: Iterable[Pair], remove: Iterable[Pair]) -> str:
    """Set changes for SA pairs that came and went, as one nft transaction."""
    lines = []
    for verb, items in (("delete", list(remove)), ("add", list(add))):
        for family, _, _ in FAMILIES:
            chosen = [_pair(p) for p in items if p[0].version == family]
            if chosen:
                lines.append(f"{verb} element {TABLE} refused{family} {{ {', '.join(chosen)} }}")
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
    apply(f"flush set {TABLE} refused4\nflush set {TABLE} refused6\n" if keep_private
          else f"add table {TABLE}\ndelete table {TABLE}\n")


def dropped(counter: str = COUNTER) -> int:
    """Packets refused so far (0 when there is no table): in clear, or (SPOOFED) from a LAN
    source that is not a client's."""
    proc = subprocess.run(["nft", "-j", "list", "counter", *TABLE.split(), counter],
                          capture_output=True, text=True, timeout=10)
    if proc.returncode != 0:
        return 0
    for item in json.loads(proc.stdout).get("nftables", []):
        if "counter" in item:
            return int(item["counter"].get("packets", 0))
    return 0


__all__ = ["InboundError", "Clients", "protected", "ruleset", "refused_update", "apply", "stop",
           "dropped"]
