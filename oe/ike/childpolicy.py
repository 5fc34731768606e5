"""The responder's CHILD SA decision as the engine asks it (docs/gateway.md 4.2): the hook's
shape, its three answers, and the host-to-host narrowing it falls back on.

The engine hands the hook what the peer offered (TSi, TSr as sent) and what it knows of the
authenticated IKE SA; the hook answers `Allow` (the narrowed selectors), `Refuse` (answered
TS_UNACCEPTABLE, RFC 7296 3.10.1) or `Wait` (a DNS lookup is needed first: the request is
kept unanswered and handled again by `IkeEngine.resume`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from oe.ike.auth import Identity, PeerKey
from oe.ike.ts import TrafficSelector, narrow

Selectors = tuple[TrafficSelector, ...]


@dataclass(frozen=True)
class AuthenticatedSa:
    """What the hook knows of the IKE SA a CHILD SA request came on."""

    sa_id: int
    local_addr: str
    """The address of ours the peer contacted (our ID: `IkeSa.local_addr`)."""
    peer_id: Identity
    peer_key: PeerKey
    """The key the peer proved, with the addresses it vouches for."""


@dataclass(frozen=True)
class Allow:
    """Take the CHILD SA with these selectors (each inside what the peer offered, 2.9)."""

    local_ts: Selectors
    remote_ts: Selectors


@dataclass(frozen=True)
class Refuse:
    """Answer TS_UNACCEPTABLE, for this reason (logged)."""

    reason: str


@dataclass(frozen=True)
class Wait:
    """Keep the request unanswered until these lookups (client addresses) are in."""

    lookups: tuple[str, ...]


TsVerdict = Allow | Refuse | Wait
ChildPolicy = Callable[[AuthenticatedSa, Selectors, Selectors], TsVerdict]


class AwaitingDns(Exception):
    """Raised through a responder's processing when the hook said Wait: nothing was answered
    nor changed, and the IKE SA keeps the request (oe.ike.ike_sa)."""

    def __init__(self, lookups: tuple[str, ...]) -> None:
        super().__init__(", ".join(lookups))
        self.lookups = lookups


def is_host(ts: TrafficSelector) -> bool:
    return ts.start == ts.end


def vouched_remote(sa: AuthenticatedSa, tsi: Selectors) -> Selectors:
    """TSi narrowed to the addresses the peer's key vouches for (never the outer source,
    which the initiator may change during IKE_AUTH)."""
    vouched = [TrafficSelector.host(str(a))
               for a in sorted(sa.peer_key.addresses, key=lambda a: (a.version, a))]
    return tuple(narrow(list(tsi), vouched))


def local_host(sa: AuthenticatedSa, tsr: Selectors) -> Selectors:
    """TSr narrowed to our contacted address."""
    return tuple(narrow(list(tsr), [TrafficSelector.host(sa.local_addr)]))


def host_to_host(sa: AuthenticatedSa, tsi: Selectors, tsr: Selectors) -> TsVerdict:
    """The engine's decision without a hook: between the peer's vouched addresses and us
    (nothing left of a side: the engine refuses)."""
    return Allow(local_host(sa, tsr), vouched_remote(sa, tsi))


__all__ = ["Allow", "AuthenticatedSa", "AwaitingDns", "ChildPolicy", "Refuse", "Selectors",
           "TsVerdict", "Wait", "host_to_host", "is_host", "local_host", "vouched_remote"]
