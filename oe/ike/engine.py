"""The IKEv2 engine (RFC 7296), sans-IO: every IKE SA of one host, found by SPI.

Theory of operation
-------------------

``IkeEngine`` is driven like aioquic's QuicConnection, by three sources: the user
(``initiate``, ``vouch``, ``create_child``, ``rekey_child``, ``rekey_ike``, ``delete_child``,
``delete_ike``, ``check_liveness``, ``resume``), datagrams (``receive_datagram(data, addr, now,
local_port, local_addr)``) and the timer (``handle_timer(now)``). It answers through
``datagrams_to_send(now)`` (each item is ``(data, (ip, port), local_port, local_addr)``:
which of our ports, 500 or 4500, and which of our addresses must send it), ``get_timer()``
and ``next_event()`` (oe.ike.events). One engine serves every address of a family
(``IkeConfig.local_addrs``); each IKE SA keeps its own (docs/gateway.md section 1).
It never reads a clock, never opens a socket and draws every random byte (SPIs, nonces, DH
secrets, IVs) from the injected ``rng``.

The layers, each importing only those below it (strongSwan's cut)::

    engine.py         SPI dispatch, COOKIEs, half-open accounting, SA ids, what the user starts
    tasks/            one module per exchange: ike_init ike_auth child_create ike_rekey
                      informational, over tasks/common.py; RESPONDERS routes peers' requests
    ike_sa.py         one IKE SA: the legality table ACCEPT and the one gate, Message IDs,
                      the window and task queue, retransmission, CHILD SA bookkeeping

The engine owns the IKE_SA_INIT request's entry: a new request creates at most a half-open
responder SA, and only after the half-open cap, the COOKIE check (section 2.6), the proposal
and KE check and the user's admission hook, in that order. Every other message goes, by our
SPI, to its IKE SA's gate (oe.ike.ike_sa). SA ids come from one iterator shared by the
host's engines (IPv4 and IPv6), so an id names one IKE SA across both.

Timers cost O(log N) per event with N IKE SAs (issue 14): each IKE SA is filed in a heap
under its ``IkeSa.get_timer()``, stale entries skipped when they come up (lazy invalidation).
Whatever may move an IKE SA's timer marks it touched (``touch``): a datagram or a timer
handed to it, its being added or removed, and any assignment to what ``get_timer`` reads
(oe.ike.ike_sa's timer inputs); ``get_timer`` and ``handle_timer`` file the touched IKE SAs
again before they read the heap, so no entry point needs to remember to.
"""

from __future__ import annotations

import hashlib
import heapq
import hmac
import ipaddress
import itertools
from collections import deque
from dataclasses import asdict
from typing import Iterator

from oe.ike.auth import Identity, PeerKey
from oe.ike.config import (
    Addr,
    AdmitInit,
    CookieRequired,
    IkeConfig,
    KeyLookup,
)
from oe.ike.childpolicy import ChildPolicy
from oe.ike.constants import (
    HEADER_LEN,
    IKE_PORT,
    NAT_KEEPALIVE,
    NAT_T_PORT,
    NON_ESP_MARKER,
    DhId,
    EncrId,
    ExchangeType,
    IntegId,
    NotifyType,
    PayloadType,
    PrfId,
)
from oe.ike.crypto import Rng
from oe.ike.errors import IkeError, LocalProtocolError
from oe.ike.events import ChildSa, Event, IkeSaInfo
from oe.ike.fragment import MIN_FRAGMENT_SIZE, Counters
from oe.ike.ike_sa import Child, IkeSa, Responder, State, Task
from oe.ike.message import KE, SA, Header, Message, Nonce, Notify, parse_message
from oe.ike.proposals import Suite
from oe.ike.spis import SpiAllocator
from oe.ike.tasks import RESPONDERS, ike_init
from oe.ike.tasks.child_create import CreateChild
from oe.ike.tasks.common import respond_ke
from oe.ike.tasks.ike_auth import IkeAuth
from oe.ike.tasks.ike_rekey import RekeyIke
from oe.ike.tasks.informational import DeleteChildren, DeleteIke, Liveness
from oe.ike.ts import TrafficSelector

STATS = ("forged_dropped", "unexpected_dropped", "unparsable_dropped", "half_open_dropped",
         "wrong_address_dropped", "cookies_sent")
"""IkeEngine.stats() keys: messages dropped as forged (cleartext where protection is due, or
a failed integrity check), as unexpected (unknown SPI, no such request, out of order or out
of place, or to another of our addresses than its IKE SA's: mostly late retransmissions), as
unparsable, as sent to an address not in ``local_addrs``; IKE_SA_INIT requests dropped at the
half-open cap; N(COOKIE) answers sent. ``stats()`` adds the IKE SAs' reassembly counts
(RFC 7383) as ``fragment_<name>`` for each field of oe.ike.fragment.Counters: authentic
fragments dropped as duplicates, out of range, stale, too large or timed out, and messages
restarted or completed (forged fragments count as forged_dropped)."""


def _algorithm_names(suite: Suite | None) -> dict[str, str | None]:
    """IkeSaInfo's algorithm fields: IANA names, None before IKE_SA_INIT settled them."""
    if suite is None:
        return dict.fromkeys(("encryption", "integrity", "prf", "dh_group"))
    return {"encryption": f"{EncrId(suite.encr).name}_{suite.key_bits}",
            "integrity": IntegId(suite.integ).name, "prf": PrfId(suite.prf).name,
            "dh_group": DhId(suite.dh).name}


class IkeEngine:
    """All IKE SAs of one host: dispatch by SPI, half-open bookkeeping and COOKIEs.

    :param config: our proposals, key and timers.
    :param rng: ``rng(n)`` returns n random bytes (``os.urandom`` in the daemon).
    :param lookup_key: maps a peer's ID, by type and data, to a ``PeerKey`` (its RSA public
        key and the addresses that key vouches for), or None.
    :param child_policy: optional ``(AuthenticatedSa, tsi, tsr) -> Allow | Refuse | Wait``
        (oe.ike.childpolicy), asked for each CHILD SA the peer requests with the selectors
        as offered: Refuse answers TS_UNACCEPTABLE, Wait keeps the request unanswered
        (``ChildAwaitsDns``) until ``resume``; default: host to host between the peer's
        vouched addresses and us.
    :param spis: the host's inbound SPI allocator, shared by its engines; default: one of
        this engine's own, drawing from ``rng``.
    :param sa_ids: where ``sa_id`` values come from, shared by the host's engines so ids are
        unique across them; default: this engine's own count from 1.
    :param cookie_required: ``(addr) -> bool``: True demands a COOKIE round trip from that
        initiator even below ``config.cookie_threshold`` (section 2.6).
    :param admit_init: ``(data, addr, local_port, local_addr) -> bool``, asked for each
        IKE_SA_INIT request that passed the COOKIE check and would create a responder SA
        (``local_addr``: the address of ours it was sent to); False drops it
        (refused, or held while the peer's key is fetched: the caller may hand the same
        datagram to ``receive_datagram`` again later).
    """

    def __init__(self, config: IkeConfig, *, rng: Rng, lookup_key: KeyLookup,
                 child_policy: ChildPolicy | None = None, spis: SpiAllocator | None = None,
                 sa_ids: Iterator[int] | None = None,
                 cookie_required: CookieRequired | None = None,
                 admit_init: AdmitInit | None = None) -> None:
        self._config = config
        self.rng = rng
        self.lookup_key = lookup_key
        self.child_policy = child_policy
        self.spis = spis if spis is not None else SpiAllocator(rng)
        self.cookie_required = cookie_required
        self.admit_init = admit_init
        self._sas: dict[bytes, IkeSa] = {}
        # responder IKE SAs by the initiator's SPI and address, to recognise a retransmitted
        # IKE_SA_INIT request (section 2.1), for as long as the IKE SA lives
        self._by_init: dict[tuple[bytes, Addr], IkeSa] = {}
        self._half_open: set[IkeSa] = set()
        self._by_id: dict[int, IkeSa] = {}
        # authenticated IKE SAs by (peer ID, our ID): whom INITIAL_CONTACT concerns (2.4)
        self._by_peer: dict[tuple[Identity, Identity], set[IkeSa]] = {}
        # IKE SAs by the peer's address: what established_with asks (2.4), in the time of one
        # peer's IKE SAs, not of every peer's (issue 14)
        self._by_addr: dict[str, set[IkeSa]] = {}
        # the timer heap: (when, rank, seq, sa), live while it is _filed[sa]; rank is the
        # order in which the IKE SAs were added (handle_timer visits due ones in that order)
        self._timers: list[tuple[float, int, int, IkeSa]] = []
        self._filed: dict[IkeSa, tuple[float, int, int, IkeSa]] = {}
        self._rank: dict[IkeSa, int] = {}
        self._touched: set[IkeSa] = set()
        self._seq = itertools.count()
        self._out: list[tuple[bytes, Addr, int, str]] = []
        self._events: deque[Event] = deque()
        self._ids = sa_ids if sa_ids is not None else itertools.count(1)
        self._stats = dict.fromkeys(STATS, 0)
        self.fragment_counters = Counters()
        self._cookie_secret = rng(32)
        config.ike_suites()  # fail early on a bad proposal string
        config.esp_suites()
        if not config.local_addrs:
            raise ValueError("an IKE engine needs at least one local address")
        if config.fragment_size < MIN_FRAGMENT_SIZE:
            raise ValueError(f"fragment_size {config.fragment_size} is below {MIN_FRAGMENT_SIZE}")

    # --- the five verbs -------------------------------------------------------------------

    def receive_datagram(self, data: bytes, addr: Addr, now: float,
                         local_port: int = IKE_PORT, local_addr: str | None = None) -> None:
        """Handle one UDP payload from ``addr`` that arrived on our port ``local_port`` of
        our address ``local_addr`` (None: the one address of an engine that has one).

        On 4500 the payload still carries the non-ESP marker (RFC 3948 section 2.2); NAT
        keepalives and ESP (no marker) are ignored here: the datapath owns ESP.
        """
        local_addr = self._local(local_addr)
        if local_addr not in self.config.local_addrs:
            return self.count("wrong_address_dropped")
        if local_port == NAT_T_PORT:
            if data == NAT_KEEPALIVE or data[:4] != NON_ESP_MARKER:
                return
            data = data[4:]
        try:
            header, msg = parse_message(data)
        except IkeError as e:
            self.count("unparsable_dropped")
            self._answer_unparsable(data, e, addr, (local_addr, local_port))
            return
        if header.exchange == ExchangeType.IKE_SA_INIT and not header.is_response:
            # a fragment of IKE_SA_INIT does not exist (RFC 7383 2.5.3)
            if header.spi_r == bytes(8) and header.message_id == 0 and header.from_initiator \
                    and header.next_payload != PayloadType.SKF:
                self._process_r_init(header, msg, data, addr, (local_addr, local_port), now)
            else:
                self.count("unexpected_dropped")
            return
        our_spi = header.spi_r if header.from_initiator else header.spi_i
        sa = self._sas.get(our_spi)
        # both SPIs must be the IKE SA's, but for the answer to our IKE_SA_INIT, which
        # brings SPIr (section 3.1); section 2.21.4: INVALID_IKE_SPI is optional, we are silent
        if sa is None or sa.initiator == header.from_initiator or header.spi_i != sa.spi_i or (
                sa.spi_r != bytes(8) and header.spi_r != sa.spi_r) or (
                local_addr != sa.local_addr):  # our address is fixed per IKE SA (no MOBIKE)
            return self.count("unexpected_dropped")
        self.touch(sa)  # its reassembler may keep a fragment
        sa.receive(header, msg, data, addr, local_port, now)

    def datagrams_to_send(self, now: float) -> list[tuple[bytes, Addr, int, str]]:
        """Datagrams to send as ``(payload, (ip, port), local_port, local_addr)``; the marker
        is included."""
        out, self._out = self._out, []
        return out

    def handle_timer(self, now: float) -> None:
        """Hand ``now`` to each IKE SA whose timer is due, in the order they were added."""
        self._refile()
        due = []
        while self._timers and self._timers[0][0] <= now:
            entry = heapq.heappop(self._timers)
            if self._filed.get(entry[3]) is entry:
                del self._filed[entry[3]]
                due.append(entry)
        for *_, sa in sorted(due, key=lambda entry: entry[1]):
            self.touch(sa)
            sa.handle_timer(now)

    def get_timer(self) -> float | None:
        self._refile()
        timers = self._timers
        while timers and self._filed.get(timers[0][3]) is not timers[0]:
            heapq.heappop(timers)
        return timers[0][0] if timers else None

    def _refile(self) -> None:
        """File each touched IKE SA under its timer now; a removed one under none."""
        touched, self._touched = self._touched, set()
        for sa in touched:
            when = sa.get_timer() if sa in self._rank else None
            entry = self._filed.get(sa)
            if entry is not None and entry[0] == when:
                continue
            if when is None:
                self._filed.pop(sa, None)
                continue
            entry = self._filed[sa] = (when, self._rank[sa], next(self._seq), sa)
            heapq.heappush(self._timers, entry)
        if len(self._timers) > 2 * len(self._filed) + 64:  # mostly stale entries: compact
            self._timers = list(self._filed.values())
            heapq.heapify(self._timers)

    @property
    def config(self) -> IkeConfig:
        return self._config

    @config.setter
    def config(self, config: IkeConfig) -> None:
        """New terms (a reload); new timeouts move every IKE SA's timer."""
        self._config = config
        self._touched.update(self._sas.values())

    def next_event(self) -> Event | None:
        return self._events.popleft() if self._events else None

    def stats(self) -> dict[str, int]:
        """Counted drops and COOKIE answers since start; the keys are listed in ``STATS``,
        then the reassembly counts."""
        return {**self._stats, **{f"fragment_{name}": n
                                  for name, n in asdict(self.fragment_counters).items()}}

    # --- what the user starts -------------------------------------------------------------

    def initiate(self, peer: str, now: float, *, local_ts: list[TrafficSelector] | None = None,
                 remote_ts: list[TrafficSelector] | None = None, peer_port: int = IKE_PORT,
                 remote_id: Identity | None = None, any_remote_id: bool = False,
                 local_addr: str | None = None, peer_key: PeerKey | None = None) -> int:
        """Start IKE_SA_INIT towards ``peer`` from our address ``local_addr`` (None: the one
        address of an engine that has one); returns the ``sa_id`` its events will carry.

        The responder must authenticate as ``remote_id`` (default: the ID_IPV4_ADDR or
        ID_IPV6_ADDR of ``peer``), which is also sent as IDr; ``any_remote_id`` accepts
        whichever ID the key lookup vouches for and sends no IDr. ``peer_key`` pins the key
        the responder must prove (a delegating record's, RFC 4322 3.2.4.1) instead of asking
        ``lookup_key``; its addresses, the clients it was named for and not the gateway's
        own, are what the responder's selectors may hold (``vouch`` adds more).
        """
        local_addr = self._local(local_addr)
        if local_addr not in self.config.local_addrs:
            raise LocalProtocolError(f"{local_addr} is not one of our addresses")
        sa = IkeSa(self, next(self._ids), True, self.new_ike_spi(), bytes(8), (peer, peer_port),
                   (local_addr, IKE_PORT), State.EXPECT_SA_INIT_RESPONSE, now)
        sa.pinned_key = peer_key
        expected = None if any_remote_id else remote_id or Identity.from_address(peer)
        # strongSwan's initiator queue: IKE_SA_INIT, then IKE_AUTH with the first CHILD SA
        sa.queue.append(IkeAuth(
            expected, tuple(local_ts or [TrafficSelector.host(local_addr)]),
            tuple(remote_ts or [TrafficSelector.host(peer)])))
        self.add(sa)
        ike_init.IkeInit().build_i(sa, now)
        return sa.sa_id

    def _local(self, local_addr: str | None) -> str:
        if local_addr is not None:
            return local_addr
        if len(self.config.local_addrs) != 1:
            raise LocalProtocolError("which of our addresses? the engine has several")
        return next(iter(self.config.local_addrs))

    def _sa(self, sa_id: int) -> IkeSa:
        sa = self._by_id.get(sa_id)
        if sa is None or sa.state != State.ESTABLISHED:
            raise LocalProtocolError(f"no established IKE SA {sa_id}")
        return sa

    def _child(self, sa: IkeSa, spi_in: int) -> Child:
        child = sa.find_child(spi_in=spi_in)
        if child is None:
            raise LocalProtocolError(f"no CHILD SA with inbound SPI {spi_in:#x}")
        return child

    def _start(self, sa_id: int, task: Task, now: float) -> None:
        self._sa(sa_id).start(task, now)

    def rekey_child(self, sa_id: int, spi_in: int, now: float) -> None:
        """CREATE_CHILD_SA with N(REKEY_SA) for the CHILD SA whose inbound SPI is ``spi_in``."""
        sa = self._sa(sa_id)
        child = self._child(sa, spi_in)
        sa.start(CreateChild(child, child.sa.local_ts, child.sa.remote_ts), now)

    def create_child(self, sa_id: int, now: float, *, local_ts: list[TrafficSelector],
                     remote_ts: list[TrafficSelector]) -> None:
        """CREATE_CHILD_SA for one more CHILD SA with these selectors (e.g. one protocol)."""
        self._start(sa_id, CreateChild(None, tuple(local_ts), tuple(remote_ts)), now)

    def resume(self, sa_id: int, now: float) -> None:
        """Handle again the peer's request that waits on IKE SA ``sa_id`` for DNS
        (``ChildAwaitsDns``); nothing if none waits or the IKE SA is gone."""
        for sa in [sa for sa in self._sas.values() if sa.sa_id == sa_id]:
            sa.resume(now)

    def vouch(self, sa_id: int, address: str) -> None:
        """The established IKE SA's peer may also speak for ``address``: the caller found that
        address's record naming this peer with the key it proved (a further client of a
        gateway, docs/gateway.md 4.3). Raises ValueError for what is not an address."""
        sa = self._sa(sa_id)
        assert sa.peer_key is not None
        sa.peer_key = PeerKey(sa.peer_key.public_key,
                              sa.peer_key.addresses | {ipaddress.ip_address(address)})

    def rekey_ike(self, sa_id: int, now: float) -> None:
        self._start(sa_id, RekeyIke(), now)

    def delete_child(self, sa_id: int, spi_in: int, now: float) -> None:
        sa = self._sa(sa_id)
        sa.start(DeleteChildren([self._child(sa, spi_in)]), now)

    def delete_ike(self, sa_id: int, now: float) -> None:
        self._start(sa_id, DeleteIke(), now)

    def check_liveness(self, sa_id: int, now: float) -> None:
        self._start(sa_id, Liveness(), now)

    def children(self, sa_id: int) -> list[ChildSa]:
        """The CHILD SAs an IKE SA holds now (for status displays and tests)."""
        sa = self._by_id.get(sa_id)
        return [c.sa for c in sa.children] if sa is not None else []

    def half_open(self) -> int:
        """Responder IKE SAs waiting for IKE_AUTH (what the COOKIE threshold counts)."""
        return len(self._half_open)

    def ike_sas(self) -> list[IkeSaInfo]:
        """Every IKE SA, by ``sa_id`` (the live one of a rekeyed pair), for status views."""
        return [IkeSaInfo(
            sa_id=sa_id, local_addr=sa.local_addr, local_port=sa.local_port,
            remote_addr=sa.peer_addr, remote_port=sa.peer_port, initiator=sa.initiator,
            spi_i=sa.spi_i, spi_r=sa.spi_r, state=sa.state.name,
            established_at=sa.established_at, last_heard=sa.last_heard,
            child_sas=len(sa.children), **_algorithm_names(sa.suite),
        ) for sa_id, sa in sorted(self._by_id.items())]

    # --- what an IKE SA asks of its engine (the Host protocol of oe.ike.ike_sa) -----------

    def emit(self, event: Event) -> None:
        self._events.append(event)

    def transmit(self, data: bytes, addr: Addr, local: Addr, ike: bool = True) -> None:
        """Queue a datagram from our ``(address, port)``; an IKE message to port 4500 gets
        the non-ESP marker (RFC 3948 section 2.2), a NAT keepalive (``ike=False``) goes as
        it is."""
        local_addr, local_port = local
        if ike and local_port == NAT_T_PORT:
            data = NON_ESP_MARKER + data
        self._out.append((data, addr, local_port, local_addr))

    def count(self, what: str) -> None:
        self._stats[what] += 1

    def new_ike_spi(self) -> bytes:
        while True:
            spi = self.rng(8)
            # a zero IKE SPI means "unknown" (section 3.1); ours finds one IKE SA of ours
            if int.from_bytes(spi, "big") > 255 and spi not in self._sas:
                return spi

    def touch(self, sa: IkeSa) -> None:
        self._touched.add(sa)

    def identified(self, sa: IkeSa, before: Identity | None) -> None:
        self._unindex(sa, before)
        if sa.peer_id is not None:
            self._by_peer.setdefault((sa.peer_id, sa.identity), set()).add(sa)

    def _unindex(self, sa: IkeSa, peer_id: Identity | None) -> None:
        key = (peer_id, sa.identity)
        peers = self._by_peer.get(key) if peer_id is not None else None
        if peers is not None:
            peers.discard(sa)
            if not peers:
                del self._by_peer[key]

    def moved(self, sa: IkeSa, before: str) -> None:
        self._unaddr(sa, before)
        self._by_addr.setdefault(sa.peer_addr, set()).add(sa)

    def _unaddr(self, sa: IkeSa, peer_addr: str) -> None:
        same = self._by_addr.get(peer_addr)
        if same is not None:
            same.discard(sa)
            if not same:
                del self._by_addr[peer_addr]

    def add(self, sa: IkeSa) -> None:
        self._sas[sa.our_spi] = sa
        self._by_id[sa.sa_id] = sa
        self._by_addr.setdefault(sa.peer_addr, set()).add(sa)
        self._rank[sa] = next(self._seq)
        self.touch(sa)

    def remove(self, sa: IkeSa) -> None:
        sa.state = State.DELETED
        sa.request = None
        for spi in list(sa.pending_spis):
            sa.release_spi(spi)
        self._half_open.discard(sa)
        self._rank.pop(sa, None)
        if self._sas.get(sa.our_spi) is sa:
            del self._sas[sa.our_spi]
        if self._by_id.get(sa.sa_id) is sa:
            del self._by_id[sa.sa_id]
        self._unindex(sa, sa.peer_id)  # its peer_id stays, for its events
        self._unaddr(sa, sa.peer_addr)
        key = (sa.spi_i, sa.init_addr)
        if self._by_init.get(key) is sa:
            del self._by_init[key]

    def authenticated(self, sa: IkeSa) -> None:
        """IKE_AUTH completed: a responder SA is half-open no more."""
        self._half_open.discard(sa)

    def established_with(self, peer_addr: str, besides: IkeSa) -> bool:
        """Whether an IKE SA other than `besides` is up with this peer."""
        return any(sa is not besides and sa.state in (State.ESTABLISHED, State.REKEYED)
                   for sa in self._by_addr.get(peer_addr, ()))

    def initial_contact(self, new: IkeSa) -> None:
        """Forget, without DELETEs, every other IKE SA between the same two identities (2.4:
        with several addresses of ours, the peer's IKE SA with another of our IDs stays)."""
        for sa in sorted(self._by_peer.get((new.peer_id, new.identity), ()),
                         key=lambda sa: sa.sa_id):
            if sa is not new and sa.state in (State.ESTABLISHED, State.REKEYED):
                sa.delete_local("the peer started afresh (INITIAL_CONTACT)")

    def responder(self, exchange: int) -> Responder:
        return RESPONDERS[exchange]

    # --- IKE_SA_INIT, responder -----------------------------------------------------------

    def refuse_init(self, data: bytes, addr: Addr, local_port: int, local_addr: str,
                    notify: int, notify_data: bytes = b"") -> None:
        """Answer the IKE_SA_INIT request ``data`` (without the non-ESP marker) from ``addr``
        to our ``(local_addr, local_port)`` with an unprotected error notify, creating no IKE
        SA (section 2.21.1); anything but an IKE_SA_INIT request is ignored. The daemon
        refuses so a peer whose key it could not look up (oe.admission), so that the peer's
        exchange ends at once.

        Our own initiator, given such an answer, fails at once too (ike_init's error_notify):
        section 2.21.1 lets it wait for a genuine answer instead, but one forged by someone on
        the path gains nothing that dropping our IKE_SA_INIT would not (the same failure
        shunt, only sooner), and no one off the path knows our SPIi.
        """
        if len(data) < HEADER_LEN or data[18] != ExchangeType.IKE_SA_INIT or \
                data[19] & 0x20 or data[8:16] != bytes(8):
            return
        reply = Message(data[:8], bytes(8), ExchangeType.IKE_SA_INIT, 0, True, False,
                        (Notify(notify, notify_data),)).encode()
        self.transmit(reply, addr, (local_addr, local_port))

    def _answer_unparsable(self, data: bytes, e: IkeError, addr: Addr, local: Addr) -> None:
        """Answer an IKE_SA_INIT request with an unsupported critical payload (section 2.5);
        drop everything else that does not parse (we cannot authenticate it)."""
        if e.notify == NotifyType.UNSUPPORTED_CRITICAL_PAYLOAD:
            self.refuse_init(data, addr, local[1], local[0], e.notify, e.data)

    def _cookie(self, spi_i: bytes, nonce_i: bytes, addr: Addr) -> bytes:
        """Cookie = <VersionIDofSecret> | Hash(Ni | IPi | SPIi | <secret>) (section 2.6)."""
        return b"\x00" + hmac.new(
            self._cookie_secret, nonce_i + ipaddress.ip_address(addr[0]).packed + spi_i,
            hashlib.sha256).digest()

    def _process_r_init(self, header: Header, msg: Message, data: bytes, addr: Addr,
                        local: Addr, now: float) -> None:
        """IKE_SA_INIT { [N(COOKIE),] SA, KEi, Ni, N(NATD)... } --> answered, stateless on error

        Cheapest first: the half-open cap, then the COOKIE (section 2.6), then the proposal,
        and only then the admission hook (the daemon's policy check and key fetch) and the
        DH computation. A spoofed source costs one small answer and no state.
        """
        known = self._by_init.get((header.spi_i, addr))
        if known is not None:
            if known.init_request == data:  # retransmitted request: the same answer, same way
                self.transmit(known.init_response, addr, local)
            return

        def refuse(notify: Notify) -> None:
            self.transmit(Message(header.spi_i, bytes(8), ExchangeType.IKE_SA_INIT, 0, True,
                                  False, (notify,)).encode(), addr, local)

        sa_p, ke, nonce = msg.first(SA), msg.first(KE), msg.first(Nonce)
        if sa_p is None or ke is None or nonce is None:
            return refuse(Notify(NotifyType.INVALID_SYNTAX))
        if len(self._half_open) >= self.config.half_open_max:
            return self.count("half_open_dropped")
        if len(self._half_open) >= self.config.cookie_threshold or (
                self.cookie_required is not None and self.cookie_required(addr)):
            want = self._cookie(header.spi_i, nonce.data, addr)
            got = msg.payloads[0]
            if not (isinstance(got, Notify) and got.notify_type == NotifyType.COOKIE
                    and hmac.compare_digest(got.data, want)):
                self.count("cookies_sent")
                return refuse(Notify(NotifyType.COOKIE, want))
        try:
            # section 1.2: a KE of another group is answered with the group we want
            prop, suite = ike_init.process_r(self.config, sa_p, ke)
        except IkeError as e:
            return refuse(Notify(e.notify, e.data))
        if self.admit_init is not None and not self.admit_init(data, addr, local[1], local[0]):
            return
        try:
            dh, shared = respond_ke(suite, ke, self.rng)
        except IkeError as e:
            return refuse(Notify(e.notify))
        assert dh is not None
        sa = IkeSa(self, next(self._ids), False, header.spi_i, self.new_ike_spi(), addr,
                   local, State.EXPECT_AUTH_REQUEST, now)
        ike_init.build_r(sa, msg, data, prop, suite, dh, shared)
        self.add(sa)
        sa.init_addr = addr
        self._by_init[(header.spi_i, addr)] = sa
        self._half_open.add(sa)
        sa.send(sa.init_response)
