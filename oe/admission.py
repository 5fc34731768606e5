"""The responder's door: which IKE_SA_INIT is answered, when, and at what cost; sans-IO.

A peer's ID is its address (RFC 4322), so before answering an IKE_SA_INIT we look its key up
by the source address while the message waits (only the newest retransmission, one per peer).
Spoofed sources cost at most `[limits] lookups` DNS fetches at once; beyond that, IKE_SA_INITs
from peers whose key we do not hold are dropped and counted, and once half of the lookups are
busy such peers must first return a COOKIE (RFC 7296 2.6), so a spoofed source never gets as
far as a lookup. Policy is asked first: a peer of a group that refuses OE is never answered,
nor followed when it moves (RFC 7296 2.23).
"""

from __future__ import annotations

import ipaddress

from oe.commands import Command, DeleteIke, FetchPeerKey, FollowPeer, Log, ReplayInit
from oe.opportunist import Opportunist
from oe.peerkeys import PeerKeys, address_id


class Admission:
    """IKE_SA_INITs waiting for their peer's key, and the peers to ask DNS afresh."""

    def __init__(self, opportunist: Opportunist, keys: PeerKeys, lookups: int) -> None:
        self.opportunist = opportunist
        self.keys = keys
        self.lookups = lookups
        self.pending: dict[str, tuple[bytes, tuple, int]] = {}
        """Peer -> its newest IKE_SA_INIT (data, addr, local port), waiting for its key."""
        self._stale: set[str] = set()  # peers whose AUTH failed as responder: fetch afresh
        self.counters = {"ike_init_dropped": 0}

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
            return True, []
        commands: list[Command] = []
        if str(peer) not in self.pending:
            if len(self.pending) >= self.lookups:
                self.counters["ike_init_dropped"] += 1
                return False, []
            refresh = str(peer) in self._stale
            self._stale.discard(str(peer))
            commands.append(FetchPeerKey(str(peer), refresh))
        self.pending[str(peer)] = (data, addr, local_port)
        return False, commands

    def key_fetched(self, peer: str, lookup, now: float) -> list[Command]:
        """The answer to a FetchPeerKey (None: the lookup failed). The slot is free whatever
        happens; the waiting message is answered only with a key in hand."""
        waiting = self.pending.pop(peer, None)
        if lookup is None:
            return []
        if lookup.key is None:
            return [Log(f"refused IKE from {peer}: {lookup.error}")]
        self.keys.keep(lookup, now)
        return [] if waiting is None else [ReplayInit(*waiting)]

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


__all__ = ["Admission"]
