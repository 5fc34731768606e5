"""What the pure parts ask the daemon to do (docs/architecture.md section 3).

The opportunist, the SA lifecycle, the responder's admission and the route plan decide; they
return these commands and the daemon carries them out, with one `match` on the type. A command
says what to do, never how: the daemon owns the sockets, the engines, the datapath and netlink.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Union

from oe.eroute import IPAddress

if TYPE_CHECKING:
    import dns.name

    from oe.dnskeys.choice import KeyLookup
    from oe.flows import Pair


@dataclass(frozen=True)
class FetchKey:
    """Look up the public key of `target` in DNS, then call key_found(pair, lookup)."""

    pair: "Pair"
    target: str
    refresh: bool = False
    """Ask DNS again even if an answer is cached (after an authentication failure)."""
    role: str = "target"
    """Whose record this is, handed back to key_found: "target" (the flow's far end) or
    "client" (our client, the flow's source, whose record must delegate to us:
    docs/gateway.md 3)."""


@dataclass(frozen=True)
class FetchGateway:
    """Look up the addresses of an @FQDN gateway a record of the pair's target names (RFC 4025
    2.3 type 3) in the pair's address family, then call gateway_found (docs/gateway.md 5)."""

    pair: "Pair"
    name: "dns.name.Name"
    dnssec: str
    """The DNSSEC state of the record that names it: the weaker state decides (choice.weakest)."""


@dataclass(frozen=True)
class Initiate:
    """Start IKE with `peer` for host-to-host selectors of `pair`."""

    pair: "Pair"
    peer: IPAddress
    local: IPAddress | None = None
    """Our address, and so our ID, for the IKE SA; None: the pair's source (docs/gateway.md 1, 3)."""
    peer_key: "KeyLookup | None" = None
    """The key `peer` must prove when a record delegated the pair's far end to it (RFC 4322
    3.2.4.1; docs/gateway.md 4.3); None: the engine asks for `peer`'s own key."""


@dataclass(frozen=True)
class CreateChild:
    """Ask the established IKE SA `sa_id` for one more CHILD SA, with host selectors of `pair`
    (RFC 7296 1.3.1): its peer proved the key `pair`'s Initiate named, so the IKE SA first
    vouches for `pair.dst` (docs/gateway.md 4.3, 5)."""

    sa_id: int
    pair: "Pair"


@dataclass(frozen=True)
class DeleteIke:
    """Send DELETE for an IKE SA (its CHILD SAs go with it)."""

    sa_id: int


@dataclass(frozen=True)
class DeleteChild:
    """Send DELETE for one CHILD SA of an IKE SA (by our inbound SPI)."""

    sa_id: int
    spi_in: int


@dataclass(frozen=True)
class RekeyChild:
    """Start a CREATE_CHILD_SA that replaces the CHILD SA with inbound SPI `spi_in` (RFC 7296
    1.3.3)."""

    sa_id: int
    spi_in: int


@dataclass(frozen=True)
class CheckLiveness:
    """Send an empty INFORMATIONAL request on the IKE SA (RFC 7296 2.4): no answer, and the
    engine declares the peer dead."""

    sa_id: int


@dataclass(frozen=True)
class SampleInbound:
    """Read the inbound packet counter of every tunnel and hand them to
    Lifecycle.inbound_sample (the liveness check's input)."""


@dataclass(frozen=True)
class FetchPeerKey:
    """Look up the key of a peer whose IKE_SA_INIT waits (the responder), then call
    Admission.key_fetched."""

    peer: str
    refresh: bool = False


@dataclass(frozen=True)
class FetchDelegation:
    """Look up the record of a client a peer's CHILD SA request names (docs/gateway.md 4.2),
    then call Admission.delegation_fetched."""

    client: str


@dataclass(frozen=True)
class ResumeChild:
    """Hand the CHILD SA request that waits on IKE SA `sa_id` to its engine again: the
    lookups it waited for are in."""

    sa_id: int


@dataclass(frozen=True)
class ReplayInit:
    """Hand a waiting IKE_SA_INIT to the IKE runner again: its peer's key is now known."""

    data: bytes
    addr: tuple
    local_port: int
    local_addr: str
    """The address of ours it was sent to (docs/gateway.md 1)."""


@dataclass(frozen=True)
class RefuseInit:
    """Answer a peer's IKE_SA_INIT with an unprotected error `notify` and keep no state (RFC
    7296 2.21.1): the initiator's exchange ends at once instead of retransmitting."""

    data: bytes
    addr: tuple
    local_port: int
    local_addr: str
    notify: int


@dataclass(frozen=True)
class FollowPeer:
    """A NAT'd peer moved (RFC 7296 2.23) and policy allows the new address: point the IKE
    SA's ESP there."""

    sa_id: int
    address: str
    port: int


@dataclass(frozen=True)
class Steer:
    """(Re)install oe's routes and rule: CIDRs to trap into the TUN, of passing groups, never
    to trap (the nameservers), and to fail closed (prohibited beneath, oe.routing)."""

    trap: tuple[str, ...]
    clear: tuple[str, ...]
    exempt: tuple[str, ...]
    private: tuple[str, ...]


@dataclass(frozen=True)
class Reroute:
    """Tunnels' peers came or went: set these host routes in oe's table ("tun" into the TUN,
    "throw" around it) and delete those, one route each, never the whole table again."""

    replace: tuple[tuple[str, str], ...]
    delete: tuple[str, ...]


@dataclass(frozen=True)
class RefuseInClear:
    """Change the inbound table's set of peers whose cleartext is dropped (RFC 4301 5.2)."""

    add: frozenset
    remove: frozenset


@dataclass(frozen=True)
class StaleKey:
    """A peer's AUTH did not verify with the key we hold as responder: ask DNS afresh next
    time (oe.admission)."""

    peer: str


@dataclass(frozen=True)
class Log:
    """One decision line for the log."""

    line: str


Command = Union[FetchKey, FetchGateway, Initiate, CreateChild, DeleteIke, DeleteChild,
                RekeyChild, CheckLiveness, SampleInbound, FetchPeerKey, FetchDelegation,
                ResumeChild, ReplayInit, RefuseInit, FollowPeer, Steer, Reroute, RefuseInClear,
                StaleKey, Log]

__all__ = ["FetchKey", "FetchGateway", "Initiate", "CreateChild", "DeleteIke", "DeleteChild",
           "RekeyChild", "CheckLiveness", "SampleInbound", "FetchPeerKey", "FetchDelegation",
           "ResumeChild", "ReplayInit", "RefuseInit", "FollowPeer", "Steer", "Reroute",
           "RefuseInClear", "StaleKey", "Log", "Command"]
