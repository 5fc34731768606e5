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

The CHILD SAs an authenticated peer asks for (`child_policy`, the engines' hook; RFC 4322 3.3,
docs/gateway.md 4.1): our side is our contacted address, or a client in `[gateway] subnets`
whose record delegates to that address with our key; the peer's side is an address its key
vouches for, or a client whose record names the peer as gateway (with the peer's key, when
the record carries one). A client's record not held yet makes the request wait (`Wait`), its
lookup inside the same `[limits] lookups` as the peers' keys; answers, negative ones too, are
held in `oe.delegations`.
"""

from __future__ import annotations

import ipaddress

from oe.commands import (
    Command, DeleteIke, FetchDelegation, FetchPeerKey, FollowPeer, Log, RefuseInit, ReplayInit,
    ResumeChild,
)
from oe.delegations import Delegations
from oe.dnskeys.choice import KeyLookup, Target, Verdict, not_capable
from oe.dnskeys.delegation import check_client, check_his_client
from oe.ike.childpolicy import (
    Allow, AuthenticatedSa, Refuse, Selectors, TsVerdict, Wait, is_host, local_host,
    vouched_remote,
)
from oe.ike.constants import NotifyType
from oe.opportunist import Opportunist
from oe.peerkeys import KEY_GRACE, PeerKeys, address_id

REFUSAL = NotifyType.AUTHENTICATION_FAILED
"""The answer to an IKE_SA_INIT whose peer has no key for us. RFC 7296 2.21.1: in IKE_SA_INIT
any error notify ends the exchange; oe's initiator (oe.ike.tasks.ike_init, error_notify) and
strongSwan's (ike_init.c process_i: every error type but COOKIE and INVALID_KE_PAYLOAD is
FAILED) give up at once, so either this or NO_PROPOSAL_CHOSEN would end the peer's wait. This
one says what happened, and is what the IKE_AUTH would end in without the key (section
2.21.2); NO_PROPOSAL_CHOSEN would send the peer's operator to compare proposals."""

EXCHANGE_MARGIN = KEY_GRACE / 2
"""Seconds a peer's key must still be valid to answer its IKE_SA_INIT with it; else DNS is
asked first. The engine asks for the key again at IKE_AUTH, and a key that ran out in between
failed the exchange (issue 14, the peer farm). A key just fetched lives KEY_GRACE at least,
so the message that waited for it passes."""

REFUSAL_HOLD = 10.0
"""Seconds a failed lookup refuses its peer without a new one (at most the negative answer's
TTL when DNS gave one, RFC 2308 5; a lookup that got no answer has none and is held this
long, as is an answer of TTL 0, which looks the same here): long enough for a peer's
retransmits (RFC 7296 2.1) and a prompt retry, short enough that a nameserver back from an
outage lets peers in soon. Never above 60 s."""

REFUSALS_PER_LOOKUP = 16
"""Refused peers (and clients' delegation answers) remembered per `[limits] lookups`, the
oldest forgotten first."""

DELEGATION_HOLD_MIN = 1.0
"""Seconds a client's answer is held at least, so the request it resumes finds it (a TTL of
0 must not send the request back to wait)."""


def refusal_hold(lookup: KeyLookup | None, now: float) -> float:
    """How long a failed lookup refuses without a new one: REFUSAL_HOLD, at most the negative
    answer's TTL (RFC 2308 5)."""
    if lookup is not None and lookup.expires > now:
        return min(REFUSAL_HOLD, lookup.expires - now)
    return REFUSAL_HOLD


class Admission:
    """IKE_SA_INITs waiting for their peer's key, and the peers to ask DNS afresh."""

    def __init__(self, opportunist: Opportunist, keys: PeerKeys, lookups: int,
                 subnets: tuple = (), own_blob: bytes | None = None) -> None:
        self.opportunist = opportunist
        self.keys = keys
        self.lookups = lookups
        self.subnets = subnets
        """`[gateway] subnets` as ip_networks: the clients we may answer for."""
        self.own_blob = own_blob
        """Our public key's RFC 3110 blob, which our clients' records must carry."""
        self.delegations = Delegations(REFUSALS_PER_LOOKUP * lookups)
        self.fetching: dict[str, bool] = {}
        """Client -> whether its FetchDelegation went out (a slot of `lookups` either way)."""
        self.waiting: dict[int, set[str]] = {}
        """IKE SA -> the clients its deferred request still waits for."""
        self.pending: dict[str, tuple[bytes, tuple, int, str]] = {}
        """Peer -> its newest IKE_SA_INIT (data, addr, local port, local address), waiting
        for its key."""
        self._stale: set[str] = set()  # peers whose AUTH failed as responder: fetch afresh
        self.refused: dict[str, float] = {}
        """Peer -> until when its IKE_SA_INITs are refused without a lookup (oldest first)."""
        self.counters = {"ike_init_dropped": 0, "ike_init_refused": 0,
                         "child_lookups_refused": 0}

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
        # Taken only if it outlives the exchange: the engine asks for it again at IKE_AUTH.
        known = self.keys.get(address_id(str(peer)), now + EXCHANGE_MARGIN)
        if known is not None and peer in known.addresses:
            self.refused.pop(str(peer), None)
            return True, []
        if self.refused.get(str(peer), now) > now:
            self.counters["ike_init_refused"] += 1
            return False, [RefuseInit(data, addr, local_port, local, REFUSAL)]
        self.refused.pop(str(peer), None)
        commands: list[Command] = []
        if str(peer) not in self.pending:
            if len(self.pending) + len(self.fetching) >= self.lookups:
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
        hold = refusal_hold(lookup, now)
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

    def child_policy(self, sa: AuthenticatedSa, tsi: Selectors, tsr: Selectors,
                     now: float) -> TsVerdict:
        """The engines' child_policy (docs/gateway.md 4.1). A side's first selector, when it
        is one host other than the peer's vouched addresses (TSi) or our address (TSr), names
        a client (RFC 7296 2.9: the packet's selectors come first), so at most two lookups
        per request whatever the peer sends; else the side narrows to the peer / to us."""
        his = tsi[0] if tsi and is_host(tsi[0]) and \
            tsi[0].start not in sa.peer_key.addresses else None
        our = tsr[0] if tsr and is_host(tsr[0]) and \
            tsr[0].start != ipaddress.ip_address(sa.local_addr) else None
        remote = (his,) if his is not None else vouched_remote(sa, tsi)
        local = (our,) if our is not None else local_host(sa, tsr)
        if not remote or not local:
            return Refuse("selectors are not host-to-host between us and the peer's key")
        wanted: list[str] = []
        for whose, ts in (("our", our), ("his", his)):
            if ts is None:
                continue
            client = str(ts.start)
            why = None
            if whose == "our" and not any(ts.start in net for net in self.subnets):
                why = f"{client} is not in [gateway] subnets"
            elif (lookup := self.delegations.get(client, now)) is None:
                wanted.append(client)
                continue
            elif whose == "our":
                why = check_client(lookup, (sa.local_addr,), self.own_blob)
            else:
                why = check_his_client(lookup, sa.peer_id, sa.peer_key)
            if why is not None:
                return Refuse(f"gateway {sa.peer_id} wants connection with {client} as "
                              f"{whose} client, but DNS fails to confirm delegation: {why}")
        if wanted:
            return self._wait(sa, wanted)
        # narrowed to hosts by now: our address or client, and each host of the peer's side
        ours = ipaddress.ip_address(local[0].start)
        for ts in remote:
            why = self.opportunist.inbound_allowed(ours, ipaddress.ip_address(ts.start))
            if why is not None:
                return Refuse(f"policy refuses the CHILD SA {ours} <-> {ts}: {why}")
        return Allow(local, remote)

    def _wait(self, sa: AuthenticatedSa, clients: list[str]) -> TsVerdict:
        """Wait for the clients' lookups, each within the `[limits] lookups` budget that the
        peers' key lookups use too; a request beyond it is refused (counted)."""
        new = [c for c in clients if c not in self.fetching]
        if len(self.pending) + len(self.fetching) + len(new) > self.lookups:
            self.counters["child_lookups_refused"] += 1
            return Refuse(f"gateway {sa.peer_id} wants connection with {', '.join(clients)}: "
                          f"no DNS lookup free ([limits] lookups = {self.lookups})")
        for client in new:
            self.fetching[client] = False
        self.waiting[sa.sa_id] = set(clients)
        return Wait(tuple(clients))

    def delegation_wanted(self, sa_id: int, lookups: tuple[str, ...]) -> list[Command]:
        """A request of IKE SA `sa_id` waits (ChildAwaitsDns): fetch what is not under way."""
        commands: list[Command] = []
        for client in lookups:
            if self.fetching.get(client) is False:
                self.fetching[client] = True
                commands.append(FetchDelegation(client))
        return commands

    def delegation_fetched(self, client: str, lookup: KeyLookup | None,
                           now: float) -> list[Command]:
        """The answer to a FetchDelegation (None: the lookup failed): held, and every request
        that waited for nothing more goes on (ResumeChild)."""
        self.fetching.pop(client, None)
        if lookup is None:
            lookup = not_capable(Target.parse(client), "delegation lookup failed")
        if lookup.verdict is Verdict.KEY:
            until = max(lookup.expires, now + REFUSAL_HOLD)
        else:
            until = now + max(refusal_hold(lookup, now), DELEGATION_HOLD_MIN)
        self.delegations.keep(client, lookup, until)
        resumed: list[Command] = []
        for sa_id, clients in list(self.waiting.items()):
            clients.discard(client)
            if not clients:
                del self.waiting[sa_id]
                resumed.append(ResumeChild(sa_id))
        return resumed

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
