"""The OE control plane's decisions, sans-IO (RFC 4322 section 3.2; FreeS/WAN pluto).

Theory of operation
-------------------
One object owns the policy, the bare shunts, the tunnels and their timers (Hannum's PF_KEY
critique: the racoon/kernel split, where two processes each held half of this state, is what
we avoid). The daemon feeds it what happened and carries out the commands it returns; it never
reads a clock or a socket itself.

    acquire(src, dst)                       the datapath trapped a packet, put a /32 %hold
      -> policy: the most specific group    not trapping any more (reload)? drop the hold
      -> src ours: FetchKey(dst)            the daemon asks DNS (oe.dnskeys)
      -> src our client: FetchKey(src,      a gateway for the hosts behind it (docs/gateway.md
         role="client") and FetchKey(dst)   3): the client's record must delegate to us
      -> src neither: %drop                 spoofed or misrouted
    key_found(pair, lookup, role)
      -> usable key(s): Initiate(gateway)   the daemon starts IKE (oe.ike) with the first
                                            gateway of the target's records (RFC 4322 3.2)
      -> an @FQDN gateway: FetchGateway     its addresses, then gateway_found
      -> no key / refused: failure shunt    private-or-clear: %pass, private: %drop
      -> malformed record: %drop            RFC 4322: malformed means deny, whatever the group
    tunnel_up(...)                          CHILD SA established (either side initiated) and
      -> the SA eroute replaces the %hold      in the datapath: held packets go out encrypted
    negotiation_failed(pair, reason)        IKE timeout, AUTHENTICATION_FAILED, ...
      -> the next gateway: Initiate         while the target's records name more
      -> the failure shunt, with every      after the last, for shunt_lifetime seconds
         gateway's reason
    tunnel_down(...)                        DELETE, dead peer, idle: the %trap is back

Rule 1: at most one negotiation per (src, dst) at a time; a second acquire for a pair that is
negotiating is ignored (the %hold is already there). Rule 2: IKE negotiations beyond a global
rate are queued and started as the rate allows, so a scan of many addresses cannot start a
negotiation storm (the PF_KEY critique: racoon's acquire floods); key lookups are bounded
instead (a few at once, newest acquire first), so a burst of destinations without keys does
not delay the acquire that comes after it (issue 14). Rule 3: every decision yields one log line.
Rule 4: the cost of an event does not grow with the number of shunts or tunnels: failure shunts
are capped (the oldest goes, counted), expire from a heap, and the datapath is handed only the
eroutes an event changed (take_changes).
"""

from __future__ import annotations

import heapq
import ipaddress
from collections import deque
from dataclasses import dataclass, field

from collections.abc import Iterable

from oe.commands import Command, DeleteChild, DeleteIke, FetchGateway, FetchKey, Initiate
from oe.dnskeys.choice import GatewayAddresses, KeyLookup
from oe.dnskeys.delegation import check_client, client_gateway
from oe.eroute import Eroute, ErouteTable, IPAddress, SaAction, Selector, Shunt
from oe.flows import BareShunt, Pair, Tunnel
from oe.policygroups.groups import SEMANTICS


def _shunt_eroute(shunt: BareShunt) -> Eroute:
    return Eroute(shunt.selector, shunt.action, None, shunt.group)


@dataclass(frozen=True)
class Limits:
    shunt_lifetime: float = 900.0
    """Seconds a failure shunt lasts (FreeS/WAN SHUNT_PATIENCE)."""
    acquire_rate: float = 20.0
    """IKE negotiations started per second at most, across all peers (each costs a DH and an
    RSA signature on both sides; key lookups are not rationed by it, issue 14)."""
    acquire_burst: int = 40
    """IKE negotiations that may start at once before the rate applies."""
    lookups_max: int = 16
    """Key lookups of our own negotiations at once ([limits] acquire_lookups); further
    acquires wait for a place, newest first. Few: what a new acquire waits for is the work
    of the lookups ahead of it (issue 14); enough for acquire_rate at a slow DNS round trip."""
    pending_max: int = 1024
    """Acquires waiting for the rate limit; beyond this the oldest gets its failure shunt."""
    max_shunts: int = 10_000
    """Failure shunts at once; beyond this the oldest is dropped and its %trap returns."""


@dataclass(frozen=True)
class Ours:
    """What a gateway checks its clients' records against (docs/gateway.md 3): our addresses,
    the subnets of the hosts we act for ([gateway] subnets) and our public key's RFC 3110
    blob."""

    addresses: frozenset[IPAddress] = frozenset()
    subnets: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...] = ()
    key_blob: bytes | None = None

    @classmethod
    def of(cls, addresses: Iterable[str], subnets: Iterable[str],
           key_blob: bytes | None) -> "Ours":
        return cls(frozenset(ipaddress.ip_address(a) for a in addresses),
                   tuple(ipaddress.ip_network(s) for s in subnets), key_blob)

    def role(self, source: IPAddress) -> str | None:
        """"host" for one of our addresses, "client" inside our subnets, else None."""
        if source in self.addresses:
            return "host"
        if any(source in subnet for subnet in self.subnets):
            return "client"
        return None


@dataclass
class _Negotiation:
    pair: Pair
    group: str
    stage: str  # "queued" (for a lookup), "dns", "keyed" (for the IKE rate), "gateway", "ike"
    narrowing: tuple[int, int, int] = (0, 0, 0)
    refreshed: bool = False  # the key was fetched afresh after an authentication failure
    awaits_client: bool = False
    """A client flow whose client's record has not been checked yet (docs/gateway.md 3)."""
    local: IPAddress | None = None
    """Our address the client's record names: our ID towards the target."""
    target: KeyLookup | None = None
    """The target's KeyLookup, once it is in (a client flow may still wait for the client's)."""
    index: int = -1
    """The target's candidate being tried (KeyLookup.candidates; docs/gateway.md 5)."""
    addresses: list[IPAddress] = field(default_factory=list)
    """The candidate's gateway addresses not tried yet (several for an @FQDN gateway)."""
    gateway: IPAddress | None = None
    """The address IKE is being tried with."""
    tried: list[tuple[str, str]] = field(default_factory=list)
    """(gateway, why it failed) for each gateway tried."""


class Opportunist:
    """Policy, bare shunts and tunnels of one host, and what to do when things happen."""

    def __init__(self, base: ErouteTable, limits: Limits = Limits(),
                 ours: Ours | None = None) -> None:
        self.base = base
        self.limits = limits
        self.ours = ours
        """Our addresses, subnets and key (the daemon sets them once it has its addresses;
        reload replaces them); None: every source is taken as ours, no flow is a client's."""
        self.shunts: dict[Pair, BareShunt] = {}
        """Read-only outside this class: changes go through _put_shunt/_drop_shunt."""
        self.tunnels: dict[Pair, Tunnel] = {}
        """Read-only outside this class: changes go through _put_tunnel/_drop_tunnel."""
        self._by_ike: dict[int, set[Pair]] = {}  # IKE SA -> the pairs of its tunnels
        self.counters = {"shunts_dropped": 0, "acquires_dropped": 0}
        self._failures = 0  # failure shunts in self.shunts (the rest are %holds)
        self._expiry: list[tuple[float, int, Pair]] = []  # heap; stale entries are skipped
        self._seq = 0
        self._base_at = {e.selector: e for e in base.entries}
        self._dirty: set[Selector] = set()
        self._tunnels_changed: set[Pair] = set()  # for take_tunnel_changes (routes, inbound)
        self._whole_table = True  # the datapath needs the whole table (start, reload)
        self.negotiations: dict[Pair, _Negotiation] = {}
        self._pending: deque[Pair] = deque()  # waiting for a lookup's place, newest first
        self._looking: set[Pair] = set()  # lookups under way (_lookup_ended frees a place)
        self._keyed: deque[Pair] = deque()  # keys found, waiting for the IKE rate
        self._tokens = float(limits.acquire_burst)
        self._tokens_at: float | None = None
        self.log: list[str] = []
        """Log lines not yet taken by the daemon (take_log)."""

    # --- what the datapath sees -------------------------------------------------------------

    def table(self) -> ErouteTable:
        """Policy, then bare shunts and SA eroutes (/32, so more specific than any policy)."""
        extra = [_shunt_eroute(s) for s in self.shunts.values()]
        extra += [self._tunnel_eroute(t) for t in self.tunnels.values()]
        return self.base.replace(*extra)

    def _tunnel_eroute(self, tunnel: Tunnel) -> Eroute:
        return Eroute(tunnel.selector, SaAction(tunnel.peer, tunnel.spi_out, tunnel.sa_out),
                      None, self.host_group(tunnel.pair))

    @property
    def failure_shunts(self) -> int:
        """Failure shunts standing now (the rest of `shunts` are %holds)."""
        return self._failures

    @property
    def lookups(self) -> int:
        """Key lookups under way for our own negotiations (at most Limits.lookups_max)."""
        return len(self._looking)

    @property
    def queued(self) -> int:
        """Acquires waiting: for a lookup's place, or, keyed, for the IKE rate."""
        return len(self._pending) + len(self._keyed)

    def take_changes(self) -> tuple[list[Eroute], list[Selector]] | None:
        """What changed in table() since the last call: (eroutes to add or replace, selectors
        to remove), or None when the whole table must be installed (first call, reload)."""
        if self._whole_table:
            self._whole_table = False
            self._dirty.clear()
            return None
        add: list[Eroute] = []
        remove: list[Selector] = []
        for selector in self._dirty:
            eroute = self._eroute_at(selector)
            if eroute is None:
                remove.append(selector)
            else:
                add.append(eroute)
        self._dirty.clear()
        return add, remove

    def take_tunnel_changes(self) -> dict[Pair, Tunnel | None]:
        """The pairs whose tunnel came, went or changed since the last call, with their
        tunnel now (None: gone): what the route plan follows, at a cost per change, not per
        tunnel standing (issue 14)."""
        changes = {pair: self.tunnels.get(pair) for pair in self._tunnels_changed}
        self._tunnels_changed.clear()
        return changes

    def _eroute_at(self, selector: Selector) -> Eroute | None:
        """The eroute table() has for this selector: an SA, else a shunt, else policy."""
        if selector.src.prefixlen == selector.src.max_prefixlen and \
                selector.dst.prefixlen == selector.dst.max_prefixlen:
            pair = Pair(selector.src.network_address, selector.dst.network_address)
            tunnel = self.tunnels.get(pair)
            if tunnel is not None and tunnel.selector == selector:
                return self._tunnel_eroute(tunnel)
            shunt = self.shunts.get(pair)
            if shunt is not None and shunt.selector == selector:
                return _shunt_eroute(shunt)
        return self._base_at.get(selector)

    def policy_entry(self, pair: Pair, proto: int = 0, sport: int = 0,
                     dport: int = 0) -> Eroute | None:
        """The most specific policy entry for a packet of this flow, if any."""
        index = self.base.lookup(pair.src, pair.dst, proto, sport, dport)
        return None if index is None else self.base.entries[index]

    def host_group(self, pair: Pair) -> str | None:
        """The group that decides OE between the two hosts, whatever the ports: of the most
        specific entries by prefix, an OE-accepting one if there is one (a host-to-host SA
        serves every narrowed entry for the pair)."""
        matching = [e for e in self.base.entries
                    if pair.src in e.selector.src and pair.dst in e.selector.dst]
        if not matching:
            return None
        best = max(e.selector.priority >> 8 for e in matching)
        groups = [e.group for e in matching if e.selector.priority >> 8 == best]
        return next((g for g in groups if SEMANTICS[g].inbound_oe), groups[0])

    # --- events ---------------------------------------------------------------------------

    def acquire(self, pair: Pair, now: float, proto: int = 0, sport: int = 0,
                dport: int = 0) -> list[Command]:
        """The datapath trapped a packet of `pair` (with this protocol and ports) and holds it."""
        if pair in self.negotiations or pair in self.tunnels:
            return []
        dst = pair.dst
        if dst.is_multicast or dst.is_link_local or dst.is_unspecified or dst.is_loopback:
            # The TUN's own link-local chatter (router solicitations, MLD): never negotiate.
            self._put_shunt(BareShunt(pair, Shunt.DROP, "not a unicast destination", None,
                                      now, now + self.limits.shunt_lifetime))
            return []
        entry = self.policy_entry(pair, proto, sport, dport)
        if entry is None or SEMANTICS[entry.group].outbound is not Shunt.TRAP:
            # Policy changed since the packet was trapped: nothing to negotiate.
            self._drop_shunt(pair)
            return []
        shunt = self.shunts.get(pair)
        if shunt is not None and shunt.action is not Shunt.HOLD:
            return []  # a failure shunt is in force until it expires or `oe initiate`
        sel = entry.selector
        narrowing = (sel.proto, sel.sport, sel.dport)
        self._put_shunt(BareShunt(pair, Shunt.HOLD, "negotiating", entry.group, now, None,
                                  narrowing))
        negotiation = _Negotiation(pair, entry.group, "queued", narrowing)
        self.negotiations[pair] = negotiation
        role = self._source_role(pair.src)
        if role is None:
            return self._fail(pair, _foreign(pair.src), now, deny=True)
        negotiation.awaits_client = role == "client"
        self._pending.appendleft(pair)  # newest first: see _start_pending
        return self._start_pending(now)

    def _source_role(self, source: IPAddress) -> str | None:
        return "host" if self.ours is None else self.ours.role(source)

    def initiate(self, pair: Pair, now: float) -> list[Command]:
        """`oe initiate`: forget a failure shunt and try at once."""
        shunt = self.shunts.get(pair)
        if shunt is not None and shunt.action is not Shunt.HOLD:
            self._drop_shunt(pair)
        return self.acquire(pair, now)

    def initiation_refused(self, pair: Pair) -> str | None:
        """Why `oe initiate` would negotiate nothing for `pair` (issue 15, 6), or None."""
        group = self.host_group(pair)
        if group is None:
            return f"{pair.dst} is in no policy group: not steered into oe, sent in clear"
        outbound = SEMANTICS[group].outbound.value
        if outbound != "%trap":
            return f"{pair.dst} is in group {group} ({outbound}): oe does not negotiate with it"
        return None

    def key_found(self, pair: Pair, lookup, now: float, role: str = "target") -> list[Command]:
        """The DNS answer for a FetchKey of this `role`: an oe.dnskeys KeyLookup. A client
        flow decides once both its answers are in; a late or duplicate answer is dropped."""
        commands = self._answered(pair, lookup, now, role)
        self._lookup_ended(pair)
        return commands

    def _answered(self, pair: Pair, lookup, now: float, role: str) -> list[Command]:
        negotiation = self.negotiations.get(pair)
        if negotiation is None or negotiation.stage != "dns":
            return []
        # RFC 4322 3.2: a malformed (or bogus) record denies whatever the group; no record
        # means not OE-capable, and the group's failure shunt applies.
        if role == "client":
            if not negotiation.awaits_client:
                return []
            negotiation.awaits_client = False
            assert self.ours is not None  # only Ours makes client flows
            addresses = [str(a) for a in self.ours.addresses]
            why = check_client(lookup, addresses, self.ours.key_blob)
            if why is not None:
                return self._fail(pair, why, now, deny=lookup.verdict.value == "deny")
            negotiation.local = client_gateway(lookup, addresses, self.ours.key_blob)
        elif negotiation.target is not None:
            return []
        else:
            negotiation.target = lookup
        if negotiation.awaits_client or negotiation.target is None:
            return []  # pluto's order: our client's reason first, whichever answer came first
        target = negotiation.target
        if target.error is not None:
            return self._fail(pair, target.error, now, deny=target.verdict.value == "deny")
        return self._initiate(negotiation, now)

    def _initiate(self, negotiation: _Negotiation, now: float) -> list[Command]:
        """Both answers are in and usable: IKE with the target's first gateway, now if the
        IKE rate allows, else once it does (_start_pending)."""
        self._refill(now)
        if self._tokens < 1:
            negotiation.stage = "keyed"
            self._keyed.append(negotiation.pair)
            return []
        self._tokens -= 1
        lookup = negotiation.target
        if lookup.provenance is not None:
            self.log.append(f"key for {negotiation.pair.dst} from {lookup.provenance}: "
                            f"initiating IKE")
        return self._next_gateway(negotiation, now)

    def _next_gateway(self, negotiation: _Negotiation, now: float) -> list[Command]:
        """IKE with the next gateway of the target's records, in RFC 4322 3.2 order (an @FQDN
        one once its addresses are in: FetchGateway); the failure shunt after the last."""
        pair = negotiation.pair
        candidates = negotiation.target.candidates or (None,)  # (None,): the lookup itself
        while not negotiation.addresses:
            negotiation.index += 1
            if negotiation.index >= len(candidates):
                return self._fail(pair, _all_failed(negotiation.tried), now)
            gateway = self._attempt(negotiation).gateway
            gateway = pair.dst if gateway is None else gateway
            if not isinstance(gateway, ipaddress.IPv4Address | ipaddress.IPv6Address):
                negotiation.stage = "gateway"  # RFC 4025 2.3 gateway type 3: a name
                return [FetchGateway(pair, gateway, negotiation.target.dnssec)]
            negotiation.addresses.append(gateway)
        gateway = negotiation.addresses.pop(0)
        if gateway.version != pair.dst.version:
            negotiation.tried.append((str(gateway), "not of the flow's address family"))
            return self._next_gateway(negotiation, now)
        if negotiation.tried:
            failed, why = negotiation.tried[-1]
            self.log.append(f"OE to {pair.dst}: gateway {failed} failed ({why}); trying "
                            f"{gateway}")
        negotiation.stage = "ike"
        negotiation.gateway = gateway
        # The target's own key, first choice: the engine asks for it by the peer's ID as ever.
        # Any other: the record's key pins what the gateway must prove (RFC 4322 3.2.4.1).
        own = negotiation.index == 0 and gateway == pair.dst
        return [Initiate(pair, gateway, local=negotiation.local,
                         peer_key=None if own else self._attempt(negotiation))]

    def _attempt(self, negotiation: _Negotiation) -> KeyLookup:
        """The target's lookup as if the candidate being tried had been chosen."""
        lookup = negotiation.target
        if not lookup.candidates:
            return lookup
        return lookup.for_candidate(lookup.candidates[negotiation.index])

    def gateway_found(self, pair: Pair, name, found: GatewayAddresses,
                      now: float) -> list[Command]:
        """The addresses of an @FQDN gateway (FetchGateway), under the delegation rule: try
        them in order; none usable moves on to the next record; bogus denies."""
        negotiation = self.negotiations.get(pair)
        if negotiation is None or negotiation.stage != "gateway":
            return []
        if found.deny:
            return self._fail(pair, found.error, now, deny=True)
        if found.error is not None:
            negotiation.tried.append((str(name), found.error))
        negotiation.addresses = list(found.addresses)
        return self._next_gateway(negotiation, now)

    def negotiation_failed(self, pair: Pair, reason: str, now: float) -> list[Command]:
        """IKE could not set up the CHILD SA we asked for: the next gateway of the target's
        records, if any (RFC 4322 3.2: fail only after all of them)."""
        negotiation = self.negotiations.get(pair)
        if negotiation is None:
            return []
        if negotiation.stage != "ike" or negotiation.target is None:
            commands = self._fail(pair, reason, now)  # a lookup that raised ends here too
            self._lookup_ended(pair)
            return commands
        negotiation.tried.append((str(negotiation.gateway), reason))
        return self._next_gateway(negotiation, now)

    def auth_failed(self, pair: Pair, reason: str, now: float) -> list[Command]:
        """The peer's AUTH did not verify with the key we hold: it may have rotated its key
        within the TTL of our cached answer, so fetch it afresh and try once more."""
        negotiation = self.negotiations.get(pair)
        if negotiation is None or negotiation.refreshed:
            return self.negotiation_failed(pair, reason, now)
        negotiation.refreshed = True
        negotiation.stage = "dns"
        self._looking.add(pair)
        negotiation.target = None
        negotiation.index -= 1  # the same gateway again, with the fresh answer
        negotiation.addresses = []
        self.log.append(f"authentication of {pair.dst} failed ({reason}); fetching its key "
                        "afresh")
        return [FetchKey(pair, str(pair.dst), refresh=True)]

    def tunnel_up(self, pair: Pair, peer: IPAddress, sa_id: int, spi_in: int, spi_out: int,
                  algorithm: str, udp_encap: bool, initiator: bool, now: float,
                  narrowing: tuple[int, int, int] = (0, 0, 0),
                  sa_out: int = 0) -> list[Command]:
        """A CHILD SA for `pair` is in the datapath (we initiated, or the peer did and policy
        allowed it). A tunnel of another IKE SA for the pair is stale: the peer restarted and
        negotiated afresh (what INITIAL_CONTACT says, RFC 7296 2.4), so its CHILD SA goes, and
        its IKE SA with it unless that carries other pairs' tunnels (a gateway's clients,
        docs/gateway.md 5)."""
        commands: list[Command] = []
        old = self.tunnels.get(pair)
        if old is not None and old.sa_id != sa_id:
            commands.append(self.delete_for(old))
        elif old is not None and old.spi_in != spi_in:
            if old.initiator != initiator and \
                    min(old.spi_in, old.spi_out) < min(spi_in, spi_out):
                # Both ends asked for the pair at once; each learns of the other's CHILD SA
                # after its own, so both keep the one with the lower SPIs, which both see
                # (RFC 7296 2.8 settles a rekey collision alike, by nonces).
                self.negotiations.pop(pair, None)
                return [DeleteChild(sa_id, spi_in)]
            commands.append(DeleteChild(sa_id, old.spi_in))  # one SA per pair: no orphans
        self.negotiations.pop(pair, None)
        self._drop_shunt(pair)
        self._put_tunnel(Tunnel(pair, peer, sa_id, spi_in, spi_out, algorithm, udp_encap,
                                initiator, now, narrowing, sa_out))
        how = "initiated" if initiator else "responded to"
        self.log.append(f"{how} OE to {pair.dst} via {peer}: ESP {algorithm}"
                        + (" in UDP" if udp_encap else ""))
        return commands

    def tunnel_rekeyed(self, pair: Pair, spi_in: int, spi_out: int, now: float,
                       sa_out: int = 0, narrowing: tuple[int, int, int] = (0, 0, 0)) -> None:
        """The CHILD SA was replaced; the SA eroute points at the new outbound SA, with the
        new SA's selectors (a rekey may narrow them, RFC 7296 2.9)."""
        tunnel = self.tunnels.get(pair)
        if tunnel is not None:
            self._dirty.add(tunnel.selector)
            tunnel.spi_in, tunnel.spi_out, tunnel.sa_out = spi_in, spi_out, sa_out
            tunnel.narrowing = narrowing
            self._dirty.add(tunnel.selector)
            self._tunnels_changed.add(pair)

    def tunnel_down(self, pair: Pair, spi_in: int, reason: str, now: float) -> None:
        """The CHILD SA is gone: the pair falls back to its policy (%trap for OE groups)."""
        tunnel = self.tunnels.get(pair)
        if tunnel is None or tunnel.spi_in != spi_in:
            return  # an SA already replaced by a rekey
        self._drop_tunnel(pair)
        self.log.append(f"OE to {pair.dst} via {tunnel.peer} ended: {reason}")

    def ike_gone(self, sa_id: int, reason: str, now: float) -> None:
        """An IKE SA died (dead peer, DELETE, failed): every tunnel it carried ends."""
        for pair in self.tunnels_of(sa_id):
            self.tunnel_down(pair, self.tunnels[pair].spi_in, reason, now)

    def tunnels_of(self, sa_id: int) -> frozenset[Pair]:
        """The pairs whose tunnels IKE SA `sa_id` carries."""
        return frozenset(self._by_ike.get(sa_id, ()))

    def delete_for(self, tunnel: Tunnel) -> Command:
        """What ends `tunnel`: its CHILD SA while its IKE SA carries other pairs' tunnels (a
        gateway's clients, docs/gateway.md 5), else the IKE SA."""
        if self.tunnels_of(tunnel.sa_id) - {tunnel.pair}:
            return DeleteChild(tunnel.sa_id, tunnel.spi_in)
        return DeleteIke(tunnel.sa_id)

    def tick(self, now: float) -> list[Command]:
        """Expire failure shunts (the %trap returns) and start rate-limited acquires."""
        while self._expiry and self._expiry[0][0] <= now:
            self._expire_oldest()
        if self._pending and self.lookups >= self.limits.lookups_max:
            # Every lookup ends in key_found or negotiation_failed, which free its place at
            # once (_lookup_ended); this only guards the places against a path that does not.
            self._looking = {pair for pair in self._looking if (n := self.negotiations.get(
                pair)) is not None and n.stage == "dns"}
        return self._start_pending(now)

    def next_timer(self) -> float | None:
        while self._expiry and not self._live(self._expiry[0]):
            heapq.heappop(self._expiry)
        times = [self._expiry[0][0]] if self._expiry else []
        if self._keyed and self._tokens_at is not None:
            times.append(self._tokens_at + (1 - self._tokens) / self.limits.acquire_rate)
        if self._pending and self.lookups < self.limits.lookups_max:
            times.append(0.0)  # a lookup ended: the next acquire's turn, at once
        return min(times) if times else None

    def reload(self, base: ErouteTable, now: float, ours: Ours | None = None) -> list[Command]:
        """New policy (and our addresses, subnets and key, when given): tunnels and shunts
        that no longer fit it go; the rest stay. A negotiation or tunnel for a source that is
        no longer ours nor a client's ends too (docs/gateway.md 3)."""
        if ours is not None:
            self.ours = ours
            for pair in [p for p in self.negotiations if ours.role(p.src) is None]:
                self._fail(pair, _foreign(pair.src), now, deny=True)
        self.base = base
        self._base_at = {e.selector: e for e in base.entries}
        self._whole_table = True
        commands: list[Command] = []
        for pair, tunnel in list(self.tunnels.items()):
            group = self.host_group(pair)
            if self._source_role(pair.src) is None:  # a subnet dropped: not our client now
                why = f"{pair.src} is no longer an address of oe's nor a client"
            elif group is None or not SEMANTICS[group].inbound_oe:
                why = f"policy now {group or 'none'}"
            else:
                continue
            self._drop_tunnel(pair)
            self.log.append(f"OE to {pair.dst} via {tunnel.peer} ended: {why}")
            commands.append(self.delete_for(tunnel))
        for pair, shunt in list(self.shunts.items()):
            entry = self.policy_entry(pair, *shunt.narrowing)
            if entry is None or entry.group != shunt.group:
                self._drop_shunt(pair)
                self.negotiations.pop(pair, None)
        return commands

    def inbound_allowed(self, local: IPAddress, peer: IPAddress) -> str | None:
        """None if IKE from `peer` may be answered, else why not (clear, block, no policy)."""
        group = self.host_group(Pair(local, peer))
        if group is None:
            return f"no policy group covers {peer}"
        if not SEMANTICS[group].inbound_oe:
            return f"{peer} is in group {group}, which refuses OE"
        return None

    def take_log(self) -> list[str]:
        lines, self.log = self.log, []
        return lines

    # --- internals ------------------------------------------------------------------------

    def _put_shunt(self, shunt: BareShunt) -> None:
        self._drop_shunt(shunt.pair)
        self.shunts[shunt.pair] = shunt
        self._dirty.add(shunt.selector)
        if shunt.expires is None:
            return
        self._failures += 1
        self._seq += 1
        heapq.heappush(self._expiry, (shunt.expires, self._seq, shunt.pair))
        # All failure shunts live equally long, so the heap's top is also the oldest one.
        while self._failures > self.limits.max_shunts:
            if self._expire_oldest():
                self.counters["shunts_dropped"] += 1

    def _drop_shunt(self, pair: Pair) -> None:
        shunt = self.shunts.pop(pair, None)
        if shunt is not None:
            self._dirty.add(shunt.selector)
            if shunt.expires is not None:
                self._failures -= 1

    def _live(self, entry: tuple[float, int, Pair]) -> bool:
        """Whether a heap entry still stands for the pair's current failure shunt."""
        shunt = self.shunts.get(entry[2])
        return shunt is not None and shunt.expires == entry[0]

    def _expire_oldest(self) -> bool:
        entry = heapq.heappop(self._expiry)
        if not self._live(entry):
            return False
        self._drop_shunt(entry[2])
        return True

    def _put_tunnel(self, tunnel: Tunnel) -> None:
        if tunnel.pair in self.tunnels:
            self._drop_tunnel(tunnel.pair)
        self.tunnels[tunnel.pair] = tunnel
        self._by_ike.setdefault(tunnel.sa_id, set()).add(tunnel.pair)
        self._dirty.add(tunnel.selector)
        self._tunnels_changed.add(tunnel.pair)

    def _drop_tunnel(self, pair: Pair) -> None:
        tunnel = self.tunnels.pop(pair)
        self._dirty.add(tunnel.selector)
        self._tunnels_changed.add(pair)
        carried = self._by_ike[tunnel.sa_id]
        carried.discard(pair)
        if not carried:
            del self._by_ike[tunnel.sa_id]

    def _fail(self, pair: Pair, why: str, now: float, deny: bool = False) -> list[Command]:
        negotiation = self.negotiations.pop(pair)
        failure = Shunt.DROP if deny else SEMANTICS[negotiation.group].failure
        assert failure is not None  # only trapping groups negotiate
        self._put_shunt(BareShunt(pair, failure, why, negotiation.group, now,
                                  now + self.limits.shunt_lifetime, negotiation.narrowing))
        self.log.append(f"can't opportunistically initiate for {pair.src} to {pair.dst}: {why}; "
                        f"{failure} for {self.limits.shunt_lifetime:g} s")
        return []

    def _refill(self, now: float) -> None:
        if self._tokens_at is not None:
            self._tokens = min(float(self.limits.acquire_burst),
                               self._tokens + (now - self._tokens_at) * self.limits.acquire_rate)
        self._tokens_at = now

    def _lookup_ended(self, pair: Pair) -> None:
        """An answer came (or the lookup raised): its place is free unless the negotiation
        still waits in DNS (a client flow's other answer)."""
        negotiation = self.negotiations.get(pair)
        if negotiation is None or negotiation.stage != "dns":
            self._looking.discard(pair)

    def _start_pending(self, now: float) -> list[Command]:
        """Keyed negotiations the IKE rate lets start, then lookups for as many waiting
        acquires as there are lookup places."""
        self._refill(now)
        commands: list[Command] = []
        while self._keyed and self._tokens >= 1:
            negotiation = self.negotiations.get(self._keyed.popleft())
            if negotiation is not None and negotiation.stage == "keyed":
                commands += self._initiate(negotiation, now)
        room = self.limits.lookups_max - self.lookups
        # Newest first (issue 14): a burst of new destinations (most without keys) must not
        # delay the acquire that came after it by the burst's whole cost; its own older
        # acquires are late already, and the oldest is the one the bound below ends.
        while self._pending and room > 0:
            pair = self._pending.popleft()
            negotiation = self.negotiations.get(pair)
            if negotiation is None or negotiation.stage != "queued":
                continue
            room -= 1
            negotiation.stage = "dns"
            self._looking.add(pair)
            if negotiation.awaits_client:  # one place for both lookups of a client flow
                commands.append(FetchKey(pair, str(pair.src), role="client"))
            commands.append(FetchKey(pair, str(pair.dst)))
        while self.queued > self.limits.pending_max:  # stale entries count: a bound anyway
            pair = self._pending.pop() if self._pending else self._keyed.popleft()
            if pair in self.negotiations:
                self.counters["acquires_dropped"] += 1
                commands += self._fail(pair, "too many negotiations waiting", now)
        return commands


def _all_failed(tried: list[tuple[str, str]]) -> str:
    """The failure shunt's reason: one gateway's own, or every gateway's."""
    if len(tried) == 1:
        return tried[0][1]
    return f"all {len(tried)} gateways failed: " + "; ".join(f"{g}: {why}" for g, why in tried)


def _foreign(source: IPAddress) -> str:
    return f"source {source} is not an address of oe's nor a client"


__all__ = [
    "Ours", "Pair", "BareShunt", "Tunnel", "child_flow", "FetchKey", "Initiate", "DeleteIke",
    "DeleteChild",
    "Command", "Limits", "Opportunist",
]
