"""The five base policy groups and what each means (FreeS/WAN doc/policygroups.html)."""

from __future__ import annotations

from dataclasses import dataclass

from oe.eroute import Eroute, ErouteTable, Shunt

# The order is the one FreeS/WAN lists them in; it is also the order files are read in.
GROUPS = ("clear", "clear-or-private", "private-or-clear", "private", "block")


@dataclass(frozen=True)
class GroupSemantics:
    outbound: Shunt
    """The prospective eroute: what a fresh outbound packet meets."""
    inbound_oe: bool
    """Whether IKE from a peer in this group is answered."""
    failure: Shunt | None
    """The failure shunt that replaces the %hold when OE cannot be set up (None: never trapped)."""


SEMANTICS = {
    "clear": GroupSemantics(Shunt.PASS, inbound_oe=False, failure=None),
    "clear-or-private": GroupSemantics(Shunt.PASS, inbound_oe=True, failure=None),
    "private-or-clear": GroupSemantics(Shunt.TRAP, inbound_oe=True, failure=Shunt.PASS),
    "private": GroupSemantics(Shunt.TRAP, inbound_oe=True, failure=Shunt.DROP),
    "block": GroupSemantics(Shunt.REJECT, inbound_oe=False, failure=None),
}


def prospective_table(policy) -> ErouteTable:
    """The eroute table before any negotiation: each entry gets its group's outbound shunt."""
    return ErouteTable(
        Eroute(entry.selector, SEMANTICS[entry.group].outbound, entry.origin, entry.group)
        for entry in policy.entries
    )
