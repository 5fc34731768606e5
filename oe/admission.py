"""The responder's door: which IKE_SA_INIT is answered, when, and at what cost; sans-IO.

A peer's ID is its address (RFC 4322), so before answering an IKE_SA_INIT we look its key up
by the source address while the message waits (only the newest retransmission, one per peer).
Spoofed sources cost at most `[limits] lookups` DNS fetches at once; beyond that, IKE_SA_INITs
from peers whose key we do not hold are dropped and counted, and once half of the lookups are
busy such peers must first return a COOKIE (RFC 7296 2.6), so a spoofed source never gets as
far as a lookup. Policy is asked first: a peer of a group that refuses OE is never answered,
nor followed when it moves (RFC 7296 2.23).

A lookup that ends without a usable key (no answer within the budget, no key, a denied
record) answers the waiting IKE_SA_INIT at once with an unprotected error notify (REFUSAL),
and the peer is refused so, without a new lookup, for REFUSAL_HOLD: a silent nameserver of
ours costs a peer one lookup budget, not its whole retransmit budget, and its retransmits do
not start a lookup each (issue 15, 8; README: Commands, "When our nameserver is down").
"""

from __future__ import annotations

import ipaddress

from oe.commands import (
    Command, DeleteIke, FetchPeerKey, FollowPeer, Log, RefuseInit, ReplayInit,
)
from oe.ike.constants import NotifyType
from oe.opportunist import Opportunist
from oe.peerkeys import PeerKeys, address_id

REFUSAL = NotifyType.AUTHENTICATION_FAILED
"""The answer to an IKE_SA_INIT whose peer has no key for us. RFC 7296 2.21.1: in IKE_SA_INIT
any error notify ends the exchange; oe's initiator (oe.ike.tasks.ike_init, error_notify) and
strongSwan's (ike_init.c process_i: every error type but COOKIE and INVALID_KE_PAYLOAD is
FAILED) give up at once, so either this or NO_PROPOSAL_CHOSEN would end the peer's wait. This
one says what happened, and is what the IKE_AUTH would end in without the key (section
2.21.2); NO_PROPOSAL_CHOSEN would send the peer's operator to compare proposals."""

REFUSAL_HOLD = 10.0
"""Seconds a failed lookup refuses its peer without a new one (at most the negative answer's
TTL when DNS gave one, RFC 2308 5; a lookup that got no answer has none and is held this
long, as is an answer of TTL 0, which looks the same here): long enough for a peer's
retransmits (RFC 7296 2.1) and a prompt retry, short enough that a nameserver back from an
outage lets peers in soon. Never above 60 s."""

REFUSALS_PER_LOOKUP = 16
"""Refused peers remembered per `[limits] lookups`, the oldest forgotten first."""


class Admission:
    """IKE_SA_INITs waiting for their peer's key, and the peers to ask DNS afresh."""

    def __init__(self, opportunist: Opportunist, keys: PeerKeys, lookups: int) -> None:
        self.opportunist = opportunist
        self.keys = keys
        self.lookups = lookups
        self.pending: dict[str, tuple[bytes, tuple, int, str]] = {}
        """Peer -> its newest IKE_SA_INIT (data, addr, local port, local address), waiting
        for its key."""
        self._stale: set[str] = set()  # peers whose AUTH failed as responder: fetch afresh
        self.refused: dict[str, float] = {}
        """Peer -> until when its IKE_SA_INITs are refused without a lookup (oldest first)."""
        self.counters = {"ike_init_dropped": 0, "ike_init_refused": 0}

    def cookie_required(self, peer: str, now: float) -> bool:
        """Under load, a COOKIE round trip before any DNS work for a peer whose key we do not
        hold. Below half of the lookups, none: the first packet's wait is spared, and the
        number of lookups is bounded all the same."""
        return len(self.pending) >= self.lookups // 2 and \
            self.keys.get(address_id(peer), now) is None

    def admit(self, local: str, data: bytes, addr: tuple, local_port: int,
              now: float) -> tuple[bool, list[Command]]:
        """An IKE_SA_INIT from `addr` to our address `local`: True when the engine may take it
        now; else it is refused by policy, waits for its key, or is dropped (counted)."""
        peer = ipaddress.ip_address(addr[0])
        why = self.opportunist.inbound_allowed(ipaddress.ip_address(local), peer)
        if why is not None:
            return False, [Log(f"refused IKE from {peer}: {why}")]
        known = self.keys.get(address_id(str(peer)), now)
        if known is not None and peer in known.addresses:
            self.refused.pop(str(peer), None)
            return True, []
        if self.refused.get(str(peer), now) > now:
            self.counters["ike_init_refused"] += 1
            return False, [RefuseInit(data, addr, local_port, local, REFUSAL)]
        self.refused.pop(str(peer), None)
        commands: list[Command] = []
        if str(peer) not in self.pending:
            if len(self.pending) >= self.lookups:
                self.counters["ike_init_dropped"] += 1
                return False, []
            refresh = str(peer) in self._stale
            self._stale.discard(str(peer))
            commands.append(FetchPeerKey(str(peer), refresh))
        self.pending[str(peer)] = (data, addr, local_port, local)
        return False, commands

    def key_fetched(self, peer: str, lookup, now: float) -> list[Command]:
        """The answer to a FetchPeerKey (None: the lookup failed). The slot is free whatever
        happens; the waiting message goes on to the engine with a key in hand, and is refused
        at once without one. A key that cannot be kept raises before the slot is freed: call
        again with None."""
        if lookup is not None and lookup.key is not None:
            self.keys.keep(lookup, now)
            waiting = self.pending.pop(peer, None)
            return [] if waiting is None else [ReplayInit(*waiting)]
        waiting = self.pending.pop(peer, None)
        hold = REFUSAL_HOLD
        if lookup is not None and lookup.expires > now:
            hold = min(hold, lookup.expires - now)
        self.refused.pop(peer, None)
        while len(self.refused) >= REFUSALS_PER_LOOKUP * self.lookups:
            del self.refused[next(iter(self.refused))]
        self.refused[peer] = now + hold
        commands: list[Command] = []
        if waiting is not None:
            self.counters["ike_init_refused"] += 1
            commands.append(RefuseInit(*waiting, REFUSAL))
        why = "key lookup failed" if lookup is None else lookup.error
        return commands + [Log(f"refused IKE from {peer}: {why} (answered {REFUSAL.name}, "
                               f"for {hold:g} s)")]

    def selectors_allowed(self, local_address: str, remote_ts) -> bool:
        """The engine's ts_policy: every selector of the peer's side one host whose policy
        group accepts OE inbound; anything else refuses the whole CHILD SA."""
        local = ipaddress.ip_address(local_address)
        for ts in remote_ts:
            peer = ipaddress.ip_address(ts.start)
            if ts.start != ts.end or self.opportunist.inbound_allowed(local, peer) is not None:
                return False
        return True

    def auth_failed(self, peer: str) -> None:
        """A peer's AUTH did not verify as responder: the key we hold may be stale."""
        self.keys.forget(address_id(peer))
        self._stale.add(peer)

    def peer_moved(self, local: str, sa_id: int, address: str, port: int) -> list[Command]:
        """Never let a peer point our ESP at an address policy refuses OE with."""
        why = self.opportunist.inbound_allowed(ipaddress.ip_address(local),
                                               ipaddress.ip_address(address))
        if why is not None:  # never let a peer point our ESP at an address policy refuses
            return [Log(f"peer moved to {address}, deleting its IKE SA: {why}"), DeleteIke(sa_id)]
        return [FollowPeer(sa_id, address, port),
                Log(f"peer moved to {address} port {port} (NAT)")]


__all__ = ["REFUSAL", "REFUSAL_HOLD", "REFUSALS_PER_LOOKUP", "Admission"]
