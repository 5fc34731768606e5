"""The lives of the opportunist's SAs: lifetimes, rekey or retire, liveness, childless IKE SAs;
sans-IO.

- Lifetimes: a CHILD SA is rekeyed `rekey_margin` before its hard lifetime (at half of it at the
  latest); the datapath fires the soft and hard limits, this module decides what they mean.
- Rekey or retire (FreeS/WAN's OE rule): at the soft limit an SA used since the last one is
  rekeyed; an idle one goes, with its IKE SA unless that carries other pairs' CHILD SAs, and a
  later packet trips the %trap again.
- One IKE SA per (our address, peer, key) (docs/gateway.md 5): route_initiate puts the CHILD
  SA of a further pair on an IKE SA we initiated on the same terms (a gateway's clients), so
  the bookkeeping is per CHILD SA: which pair each carries, which requests are under way.
- Liveness (RFC 7296 2.4): every `dpd_delay` the daemon samples the tunnels' inbound packet
  counters (SampleInbound); a tunnel that received nothing since the last sample gets a
  CheckLiveness, and the engine declares a peer dead that does not answer.
- Childless IKE SAs: an IKE SA that carries no CHILD SA of ours for CHILDLESS_GRACE is deleted,
  so a key holder whose CHILD SAs we refuse cannot pile IKE SAs up (each holds keys and state).

It also knows which engine (address family) holds each IKE SA, and which host pair each CHILD
SA was asked or installed for, so the daemon can carry out commands that name an IKE SA only.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field

from oe.commands import CheckLiveness, Command, CreateChild, DeleteChild, DeleteIke, Initiate, \
    Log, RekeyChild, SampleInbound, StaleKey
from oe.eroute import IPAddress
from oe.ike.constants import CHILDREN_PER_IKE, DhId, EncrId, IntegId, NotifyType
from oe.flows import Pair, Tunnel
from oe.opportunist import Opportunist

CHILDLESS_GRACE = 30.0  # seconds an IKE SA may live without a CHILD SA before we delete it


@dataclass(frozen=True)
class SaTimes:
    """Lifetimes of CHILD SAs, from oe.conf [ike]."""

    lifetime: float = 3600.0
    rekey_margin: float = 300.0
    dpd_delay: float = 30.0

    @property
    def soft(self) -> float:
        """Seconds after installation the datapath fires the soft limit (rekey time)."""
        return max(self.lifetime - self.rekey_margin, self.lifetime / 2)


def _name(enum, value: int) -> str:
    try:
        return enum(value).name
    except ValueError:
        return f"{enum.__name__.upper()}_{value}"


def algorithm_name(child) -> str:
    """An ESP transform as strongSwan names it: AES_GCM_16_128, _ESN appended if negotiated."""
    name = {EncrId.AES_GCM_16: "AES_GCM_16"}.get(child.encr, f"ENCR_{child.encr}")
    return f"{name}_{child.key_bits}" + ("_ESN" if child.esn else "")


@dataclass
class ChildInfo:
    """What status shows of the CHILD SA a tunnel uses now, beyond the opportunist's Tunnel."""

    installed: float
    encryption: str
    integrity: str | None
    dh_group: str | None
    """The PFS group of its CREATE_CHILD_SA, or None (keys from the IKE SA's, RFC 7296 2.17)."""
    esn: bool
    last_in: tuple[int, float | None] = (0, None)
    """(packets, when the count was last seen to grow)."""
    last_out: tuple[int, float | None] = (0, None)
    key: str | None = None
    """Where the peer's key came from: record kind and DNSSEC state (oe.peerkeys)."""

    @classmethod
    def of(cls, child, now: float, key: str | None = None) -> "ChildInfo":
        """From an oe.ike ChildSa installed at `now`, its peer's key from `key`."""
        return cls(now, algorithm_name(child).removesuffix("_ESN"),
                   _name(IntegId, child.integ) if child.integ else None,
                   _name(DhId, child.dh) if child.dh else None, child.esn, key=key)


Terms = tuple[IPAddress, IPAddress, tuple[int, int] | None]
"""What an IKE SA was set up with: our address (our ID), the peer's (its ID), and the key the
peer proved as RSA (e, n) (None: the key lookup_key held for the peer's own ID, when we
initiated without a pinned key)."""


@dataclass
class _Shared:
    """An IKE SA further pairs' CHILD SAs may go on, as route_initiate sees it."""

    terms: Terms
    established: bool = False
    full: bool = False
    """The peer answered NO_ADDITIONAL_SAS (RFC 7296 1.3): ask it for no more."""
    queued: list[Pair] = field(default_factory=list)
    """Pairs whose CHILD SA waits for IKE_AUTH to finish (CREATE_CHILD_SA needs it done)."""


def terms_of(command: Initiate) -> Terms:
    """The terms an Initiate asks for: our address (default: the pair's source), the peer,
    and the key it must prove."""
    local = command.local if command.local is not None else command.pair.src
    lookup = command.peer_key
    key = (lookup.key.e, lookup.key.n) if lookup is not None and lookup.key is not None \
        else None
    return local, command.peer, key


def responded_terms(local_addr: str, remote_id: str, public_key) -> Terms | None:
    """The terms of an IKE SA the peer started: our contacted address, the peer's address ID
    and the key it proved; None for a peer with another kind of ID (an Initiate names an
    address)."""
    try:
        peer = ipaddress.ip_address(remote_id)
    except ValueError:
        return None
    numbers = public_key.public_numbers()
    return ipaddress.ip_address(local_addr), peer, (numbers.e, numbers.n)


def _requested(local_ts: tuple, remote_ts: tuple) -> Pair | None:
    """The pair a CHILD SA request was for: we ask with host selectors of the pair, and a
    responder may only narrow them (RFC 7296 2.9)."""
    if not local_ts or not remote_ts:
        return None
    return Pair(local_ts[0].start, remote_ts[0].start)


class Lifecycle:
    """IKE SA bookkeeping and the timers of the opportunist's tunnels."""

    def __init__(self, opportunist: Opportunist, times: SaTimes = SaTimes(),
                 children_per_ike: int = CHILDREN_PER_IKE) -> None:
        self.opportunist = opportunist
        self.times = times
        self.children_per_ike = children_per_ike
        self.pairs: dict[int, dict[int, Pair]] = {}
        """IKE SA -> inbound SPI of each of its CHILD SAs -> the host pair it carries."""
        self._asked: dict[int, dict[Pair, Initiate]] = {}
        """IKE SA -> pairs we asked it for a CHILD SA (or queued on it) not installed yet."""
        self._shared: dict[int, _Shared] = {}  # IKE SAs we initiated or whose terms we know
        self._by_terms: dict[Terms, list[int]] = {}  # ... by their terms
        self._family: dict[int, int] = {}  # IKE SA -> IP version of the engine holding it
        self._childless: dict[int, float] = {}  # IKE SA -> since when it carries no CHILD SA
        self._used: dict[int, int] = {}  # outbound SA handle -> packets at its last soft limit
        self._seen_in: dict[int, int] = {}  # inbound SPI -> packets at the last sample
        self._next_sample: float | None = None
        self.children: dict[int, ChildInfo] = {}
        """Inbound SPI -> the CHILD SA's algorithms and times (status)."""
        self.counters = {"childless_deleted": 0}

    # --- IKE SAs --------------------------------------------------------------------------

    def family(self, sa_id: int) -> int | None:
        """The IP version of the engine holding IKE SA `sa_id` (sa_ids are unique on the host)."""
        return self._family.get(sa_id)

    def ike_sas(self, version: int) -> list[int]:
        """Every IKE SA the engine of IP version `version` spoke of and that is not gone."""
        return [sa_id for sa_id, v in self._family.items() if v == version]

    def heard(self, version: int, sa_id: int) -> None:
        """An engine spoke of IKE SA `sa_id`."""
        self._family[sa_id] = version

    def route_initiate(self, command: Initiate) -> list[Command]:
        """One IKE SA per (our address, peer, key) carries the CHILD SAs of all pairs that
        reach the peer on those terms (a gateway's clients, docs/gateway.md 5): an established
        one is asked for one more CHILD SA, one still in IKE_AUTH takes the pair in its queue,
        and only when none has room does `command` start a new IKE SA."""
        for sa_id in self._by_terms.get(terms_of(command), ()):
            shared = self._shared[sa_id]
            carried = len(self.pairs.get(sa_id, ())) + len(self._asked.get(sa_id, ()))
            if shared.full or carried >= self.children_per_ike:
                continue
            self._asked.setdefault(sa_id, {})[command.pair] = command
            if shared.established:
                self._childless.pop(sa_id, None)  # until the request ends (child_failed)
                return [CreateChild(sa_id, command.pair)]
            shared.queued.append(command.pair)
            return [Log(f"OE for {command.pair} waits for IKE SA {sa_id} with {command.peer}")]
        return [command]

    def initiated(self, version: int, sa_id: int, command: Initiate) -> None:
        """The engine started IKE SA `sa_id` for `command` (route_initiate found none)."""
        self._family[sa_id] = version
        self._asked[sa_id] = {command.pair: command}
        self._share(sa_id, terms_of(command))

    def _share(self, sa_id: int, terms: Terms) -> _Shared:
        shared = self._shared[sa_id] = _Shared(terms)
        self._by_terms.setdefault(terms, []).append(sa_id)
        return shared

    def ike_established(self, version: int, sa_id: int, now: float,
                        terms: Terms | None = None) -> list[Command]:
        """IKE_AUTH finished: the pairs queued on the IKE SA ask for their CHILD SAs. An IKE
        SA the peer started, on `terms` (responded_terms), may carry ours from now on."""
        self._family[sa_id] = version
        self._childless[sa_id] = now
        shared = self._shared.get(sa_id)
        if shared is None and terms is not None:
            shared = self._share(sa_id, terms)
        if shared is None:
            return []
        shared.established = True
        queued, shared.queued = shared.queued, []
        return [CreateChild(sa_id, pair) for pair in queued]

    def ike_failed(self, sa_id: int, peer: str, reason: str, notify: int | None, local: bool,
                   now: float) -> list[Command]:
        """An IKE SA failed. Our own check of the peer's AUTH failing means the key we hold
        may be stale (rotated within its TTL): the initiator fetches it afresh once, the
        responder asks DNS afresh next time; anything else fails the negotiations it
        carried."""
        pairs = self.ike_gone(sa_id)
        why = f"IKE timeout: {reason}" if notify is None else reason
        auth = local and notify == NotifyType.AUTHENTICATION_FAILED
        if not pairs:
            return [Log(f"IKE with {peer} failed: {why}")] + ([StaleKey(peer)] if auth else [])
        judge = self.opportunist.auth_failed if auth else self.opportunist.negotiation_failed
        return [c for pair in pairs for c in judge(pair, why, now)]

    def ike_deleted(self, sa_id: int, reason: str, now: float) -> list[Command]:
        """An established IKE SA is gone: every tunnel it carried ends, and the CHILD SAs still
        asked of it fail."""
        self.opportunist.ike_gone(sa_id, reason, now)
        return [c for pair in self.ike_gone(sa_id)
                for c in self.opportunist.negotiation_failed(pair, f"IKE SA gone: {reason}", now)]

    def ike_gone(self, sa_id: int) -> list[Pair]:
        """Forget IKE SA `sa_id`; returns the pairs whose CHILD SAs were asked of it and not
        installed."""
        self._childless.pop(sa_id, None)
        self._family.pop(sa_id, None)
        self.pairs.pop(sa_id, None)
        shared = self._shared.pop(sa_id, None)
        if shared is not None:
            same = self._by_terms[shared.terms]
            same.remove(sa_id)
            if not same:
                del self._by_terms[shared.terms]
        return list(self._asked.pop(sa_id, {}))

    # --- CHILD SAs ------------------------------------------------------------------------

    def pair_of(self, sa_id: int, spi_in: int) -> Pair | None:
        """The pair the CHILD SA with inbound SPI `spi_in` of IKE SA `sa_id` carries."""
        return self.pairs.get(sa_id, {}).get(spi_in)

    def child_installed(self, sa_id: int, pair: Pair, spi_in: int, info: ChildInfo) -> None:
        self._childless.pop(sa_id, None)
        self.pairs.setdefault(sa_id, {})[spi_in] = pair
        self._asked.get(sa_id, {}).pop(pair, None)
        self.children[spi_in] = info

    def child_rekeyed(self, sa_id: int, old_spi_in: int, spi_in: int, info: ChildInfo) -> None:
        """The CHILD SA `old_spi_in` has a successor, for the same pair (until DELETE, both)."""
        pair = self.pair_of(sa_id, old_spi_in)
        if pair is not None:
            self.pairs[sa_id][spi_in] = pair
        self.children[spi_in] = info

    def child_failed(self, sa_id: int, local_ts: tuple, remote_ts: tuple, notify: int | None,
                     reason: str, now: float) -> list[Command]:
        """A CHILD SA request with these selectors failed (oe.ike ChildSaFailed): the
        negotiation of its pair fails, the IKE SA's other pairs go on. A peer with no room
        for more (NO_ADDITIONAL_SAS, RFC 7296 1.3) gets no more requests: the pair's Initiate
        goes again and is routed to another IKE SA or starts one."""
        pair = _requested(local_ts, remote_ts)
        command = self._asked.get(sa_id, {}).pop(pair, None) if pair is not None else None
        if command is None:
            return []
        self._left(sa_id, now)
        if notify == NotifyType.NO_ADDITIONAL_SAS and sa_id in self._shared:
            self._shared[sa_id].full = True
            return [Log(f"IKE SA {sa_id} with {command.peer} takes no more CHILD SAs"), command]
        return self.opportunist.negotiation_failed(pair, reason, now)

    def child_deleted(self, sa_id: int, spi_in: int, sa_out: int | None,
                      now: float) -> Pair | None:
        """The CHILD SA is gone; returns its pair. The last one of an IKE SA starts the
        childless grace (CHILDLESS_GRACE)."""
        self.children.pop(spi_in, None)
        self._seen_in.pop(spi_in, None)
        if sa_out is not None:
            self._used.pop(sa_out, None)
        pair = self.pairs.get(sa_id, {}).pop(spi_in, None)
        self._left(sa_id, now)
        return pair

    def _left(self, sa_id: int, now: float) -> None:
        """A CHILD SA or a request left IKE SA `sa_id`: with no CHILD SA left, it is childless
        from now (a request still under way ends within the retransmission budget, well
        inside CHILDLESS_GRACE, and its CHILD SA ends the grace)."""
        if not self.pairs.get(sa_id) and sa_id in self._family:
            self.pairs.pop(sa_id, None)
            self._childless.setdefault(sa_id, now)

    def soft_limit(self, sa_out: int, packets: int, why: str) -> list[Command]:
        """FreeS/WAN's OE rule: rekey only if the SA was used lately; idle ones go away."""
        tunnel = self._tunnel_by_sa_out(sa_out)
        if tunnel is None:
            return []
        recently = packets != self._used.get(sa_out, 0)
        self._used[sa_out] = packets
        if recently:
            return [RekeyChild(tunnel.sa_id, tunnel.spi_in)]
        return [Log(f"OE to {tunnel.pair.dst} idle, deleting at {why}"), self._retire(tunnel)]

    def hard_limit(self, direction: str, handle: int, spi: int, reason: str) -> list[Command]:
        """An SA of a tunnel expired: its CHILD SA goes (the %trap is back)."""
        commands: list[Command] = []
        for tunnel in list(self.opportunist.tunnels.values()):
            if (direction == "out" and tunnel.sa_out == handle) or (
                    direction == "in" and tunnel.spi_in == handle):
                commands += [Log(f"SA {spi:x} {direction} expired ({reason})"),
                             self._retire(tunnel)]
        return commands

    def _retire(self, tunnel: Tunnel) -> Command:
        """End a tunnel: its CHILD SA while its IKE SA carries other pairs or requests, else
        the IKE SA (no use keeping it, FreeS/WAN's OE rule: a later packet traps again)."""
        if self._asked.get(tunnel.sa_id):
            return DeleteChild(tunnel.sa_id, tunnel.spi_in)
        return self.opportunist.delete_for(tunnel)

    def _tunnel_by_sa_out(self, handle: int) -> Tunnel | None:
        for tunnel in self.opportunist.tunnels.values():
            if tunnel.sa_out == handle:
                return tunnel
        return None

    def last_used(self, spi_in: int, packets_in: int, packets_out: int,
                  now: float) -> float | None:
        """When the tunnel's CHILD SA last carried a packet, as far as the counter samples
        (status queries, liveness checks) tell: None if never."""
        info = self.children.get(spi_in)
        if info is None:
            return None
        info.last_in = _grown(info.last_in, packets_in, now)
        info.last_out = _grown(info.last_out, packets_out, now)
        times = [t for t in (info.last_in[1], info.last_out[1]) if t is not None]
        return max(times) if times else None

    # --- timers ---------------------------------------------------------------------------

    def started(self, now: float) -> None:
        self._next_sample = now + self.times.dpd_delay

    def tick(self, now: float) -> list[Command]:
        """Childless IKE SAs past their grace go; a liveness sample when it is due."""
        commands: list[Command] = []
        for sa_id, since in list(self._childless.items()):
            if now - since < CHILDLESS_GRACE:
                continue
            del self._childless[sa_id]
            self.counters["childless_deleted"] += 1
            commands.append(DeleteIke(sa_id))
        if self._next_sample is not None and now >= self._next_sample:
            self._next_sample = now + self.times.dpd_delay
            commands.append(SampleInbound())
        return commands

    def inbound_sample(self, packets: dict[int, int], now: float) -> list[Command]:
        """The tunnels' inbound packet counters (inbound SPI -> packets): a tunnel that
        received nothing since the last sample gets a liveness check. Only live SAs are
        remembered."""
        seen, self._seen_in = self._seen_in, {}
        commands: list[Command] = []
        for tunnel in list(self.opportunist.tunnels.values()):
            count = packets.get(tunnel.spi_in, 0)
            self._seen_in[tunnel.spi_in] = count
            info = self.children.get(tunnel.spi_in)
            if info is not None:
                info.last_in = _grown(info.last_in, count, now)
            if count == seen.get(tunnel.spi_in):
                commands.append(CheckLiveness(tunnel.sa_id))
        return commands

    def next_timer(self) -> float | None:
        """The earliest of: the oldest childless IKE SA's grace, the next liveness sample."""
        times = [self._next_sample] if self._next_sample is not None else []
        if self._childless:
            # established in time order, so the first is the oldest
            times.append(next(iter(self._childless.values())) + CHILDLESS_GRACE)
        return min(times) if times else None

    def child_refused(self, sa_id: int, child, why: str, now: float) -> list[Command]:
        """A CHILD SA (oe.ike ChildSa) oe will not install: delete it, and end our negotiation
        for the pair it was asked for in the failure shunt (a %hold must never stay)."""
        commands: list[Command] = [
            Log(f"refused CHILD SA {child.spi_in:08x} with {child.remote_addr}: {why}"),
            DeleteChild(sa_id, child.spi_in)]
        pair = _requested(child.local_ts, child.remote_ts)
        if pair is not None and self._asked.get(sa_id, {}).pop(pair, None) is not None:
            self._left(sa_id, now)
            commands += self.opportunist.negotiation_failed(pair, f"CHILD SA refused: {why}", now)
        return commands


def _grown(last: tuple[int, float | None], packets: int, now: float) -> tuple[int, float | None]:
    if packets == last[0]:
        return last
    return packets, now


__all__ = ["CHILDLESS_GRACE", "ChildInfo", "Lifecycle", "SaTimes", "Terms", "algorithm_name",
           "responded_terms", "terms_of"]
