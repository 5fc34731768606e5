"""The IKEv2 engine (RFC 7296), sans-IO: IKE SAs, their exchanges, and the engine that owns them.

Theory of operation
-------------------

``IkeEngine`` is driven like aioquic's QuicConnection, by three sources: the user
(``initiate``, ``rekey_child``, ``rekey_ike``, ``delete_child``, ``delete_ike``,
``check_liveness``), datagrams (``receive_datagram(data, addr, now, local_port)``) and the
timer (``handle_timer(now)``). It answers through ``datagrams_to_send(now)`` (each item is
``(data, (ip, port), local_port)``: which of our sockets, 500 or 4500, must send it),
``get_timer()`` and ``next_event()`` (oe.ike.events). It never reads a clock, never opens a
socket and draws every random byte (SPIs, nonces, DH secrets, IVs) from the injected ``rng``.

Each IKE SA is an ``IkeSa``; its state names what it waits for::

    initiator                                    responder
    ---------                                    ---------
    initiate()
      | IKE_SA_INIT { SA, KEi, Ni, N(NATD)... } -->   (engine: cookie, proposal, KE check)
    EXPECT_SA_INIT_RESPONSE                       <-- { SA, KEr, Nr, N(NATD)... }
      | (NAT-D mismatch: float to UDP 4500)      EXPECT_AUTH_REQUEST  (half-open)
      | IKE_AUTH { IDi, AUTH, SA, TSi, TSr } -->
    EXPECT_AUTH_RESPONSE                          <-- { IDr, AUTH, SA, TSi, TSr }
      v                                               v
    ESTABLISHED  <-- CREATE_CHILD_SA / INFORMATIONAL, either side, one request in flight -->
      | IKE SA rekeyed: the new IkeSa takes the children; the old one waits for DELETE
    REKEYED --> DELETED

Rule 1: a message changes state only after its integrity check passed. ``_ACCEPT`` says which
message each state takes and how it must be protected; ``IkeSa.receive`` consults it before
any handler runs. The only cleartext message an IKE SA takes is the answer to its own
IKE_SA_INIT request (Message ID 0, in EXPECT_SA_INIT_RESPONSE); a request of ours is answered
once, then forgotten, so no answer can be replayed. A new IKE_SA_INIT request creates at most
a half-open responder SA, and only after the COOKIE check (section 2.6) and the user's
admission hook, in that order. Rule 2: requests we send are retransmitted
with exponential backoff until a budget runs out (section 2.1); requests we receive are
answered once and the answer is replayed for retransmits (section 2.1, the responder's cache).
Rule 3: at most one request of ours is in flight per IKE SA (window size 1, section 2.3);
further exchanges wait in a queue. Rule 4: a key speaks only for the addresses it vouches
for: ``lookup_key`` answers a typed ID with a ``PeerKey``, and the peer's selectors, as
responder and as initiator, must lie within that key's addresses (docs/architecture.md section 3).
Rule 5: every inbound SPI comes from the host's ``SpiAllocator`` and goes back when its
CHILD SA goes or its offer ends; a CHILD SA is reported once, on an SPI still on offer.

Collisions (found by the hypothesis state machine in tests/test_ike_fuzz.py):

- both sides rekey one CHILD SA: both exchanges complete, and the SA made by the exchange
  with the lowest of the four nonces is deleted by its initiator (section 2.8.1);
- a peer's IKE SA rekey while a request of ours is in flight (its own IKE rekey, or anything
  whose answer could die with the old IKE SA): TEMPORARY_FAILURE, it tries again later;
- an IKE SA rekey overtaking a CHILD SA exchange: the CHILD SA list is shared with the new
  IKE SA and follow-up exchanges go to whichever IKE SA is alive;
- a DELETE for a CHILD SA whose CREATE_CHILD_SA answer we have not seen yet: remembered, and
  that SA is dropped when the (retransmitted) answer arrives.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import itertools
from collections import deque
from dataclasses import dataclass
from enum import Enum, auto
from typing import Callable, Iterator

from cryptography.hazmat.primitives.asymmetric import rsa

from oe.ike import auth as _auth
from oe.ike.auth import Identity, PeerKey
from oe.ike.constants import (
    ERROR_NOTIFY_MAX,
    HALF_OPEN_COOKIE_THRESHOLD,
    HALF_OPEN_LIFETIME,
    CHILD_SAS_MAX,
    HALF_OPEN_MAX,
    HEADER_LEN,
    IKE_PORT,
    INIT_RESTARTS_MAX,
    NAT_KEEPALIVE,
    NAT_KEEPALIVE_INTERVAL,
    NAT_T_PORT,
    NON_ESP_MARKER,
    NONCE_LEN,
    RETRANSMIT_BUDGET,
    RETRANSMIT_TIMEOUT,
    AuthMethod,
    EsnId,
    ExchangeType,
    HashId,
    IdType,
    NotifyType,
    ProtocolId,
    notify_name,
)
from oe.ike.crypto import DhExchange, Prf, Rng
from oe.ike.errors import IkeError, IntegrityError, LocalProtocolError
from oe.ike.events import (
    ChildSa,
    ChildSaDeleted,
    ChildSaEstablished,
    ChildSaFailed,
    ChildSaRekeyed,
    Event,
    IkeSaDeleted,
    IkeSaEstablished,
    IkeSaFailed,
    IkeSaPeerMoved,
    IkeSaRekeyed,
)
from oe.ike.keymat import IkeKeys, child_keymat, derive_ike_keys, rekey_skeyseed, skeyseed
from oe.ike.message import (
    ID,
    KE,
    SA,
    TS,
    Auth,
    Delete,
    Encrypted,
    Header,
    Message,
    Nonce,
    Notify,
    Payload,
    encode_payloads,
    parse_message,
    parse_payloads,
)
from oe.ike.proposals import Suite, accept, choose, offer, parse_proposal
from oe.ike.spis import SpiAllocator
from oe.ike.ts import TrafficSelector, narrow

Addr = tuple[str, int]
KeyLookup = Callable[[Identity], PeerKey | None]
TsPolicy = Callable[[Identity, tuple[TrafficSelector, ...], tuple[TrafficSelector, ...]], bool]
AdmitInit = Callable[[bytes, Addr, int], bool]
CookieRequired = Callable[[Addr], bool]


@dataclass(frozen=True)
class IkeConfig:
    """What one host negotiates with; every peer gets the same (opportunistic) terms."""

    local_addr: str
    """Our address: the ID (unless ``local_id`` is set), NAT-D input and our selector."""
    private_key: rsa.RSAPrivateKey
    """Our RSA host key; its public half is what peers find in DNS."""
    local_id: Identity | None = None
    """Our IKE identity; None means ID_IPV4_ADDR / ID_IPV6_ADDR of ``local_addr``."""
    ike_proposals: tuple[str, ...] = ("aes128-sha256-x25519",)
    """IKE SA proposals, strongSwan syntax, in order of preference."""
    esp_proposals: tuple[str, ...] = ("aes128gcm16",)
    """CHILD SA proposals; a DH group here means PFS in CREATE_CHILD_SA."""
    retransmit_timeout: float = RETRANSMIT_TIMEOUT
    """Seconds before the first retransmission; doubled after each."""
    retransmit_budget: float = RETRANSMIT_BUDGET
    """Seconds after the first transmission at which a request is given up."""
    cookie_threshold: int = HALF_OPEN_COOKIE_THRESHOLD
    """Half-open responder SAs at or above which IKE_SA_INIT must carry a COOKIE (2.6)."""
    half_open_max: int = HALF_OPEN_MAX
    """Half-open responder SAs at which further IKE_SA_INIT requests are dropped (counted)."""
    half_open_lifetime: float = HALF_OPEN_LIFETIME
    """Seconds a responder waits for IKE_AUTH after IKE_SA_INIT."""
    nat_keepalive_interval: float = NAT_KEEPALIVE_INTERVAL
    """Seconds between NAT keepalives (RFC 3948 section 4) while we are behind a NAT."""

    @property
    def identity(self) -> Identity:
        return self.local_id or Identity.from_address(self.local_addr)

    def ike_suites(self) -> list[Suite]:
        return [s for p in self.ike_proposals for s in parse_proposal(p, ProtocolId.IKE)]

    def esp_suites(self) -> list[Suite]:
        return [s for p in self.esp_proposals for s in parse_proposal(p, ProtocolId.ESP)]


class State(Enum):
    EXPECT_SA_INIT_RESPONSE = auto()
    EXPECT_AUTH_RESPONSE = auto()
    EXPECT_AUTH_REQUEST = auto()
    ESTABLISHED = auto()
    REKEYED = auto()
    DELETED = auto()


class Take(Enum):
    """How an IKE SA takes a message that is legal in its state."""

    CLEARTEXT = auto()
    """Handled without integrity protection: there are no keys yet (sections 2.6, 3.1)."""
    PROTECTED = auto()
    """Handled only after its SK payload passed the integrity check (section 3.14)."""
    REFUSED = auto()
    """Out of place but authentic: after the integrity check, answered INVALID_SYNTAX (2.21)."""


_X = ExchangeType
# (state, exchange, is a response) -> how it is taken; whatever is missing is dropped unread.
# The one cleartext entry: the answer to our own IKE_SA_INIT request. Requests of the peer's
# keep their Message ID order (2.3); a rekeyed IKE SA still finishes what is under way (2.18).
_ACCEPT: dict[tuple[State, int, bool], Take] = {
    (State.EXPECT_SA_INIT_RESPONSE, _X.IKE_SA_INIT, True): Take.CLEARTEXT,
    (State.EXPECT_AUTH_RESPONSE, _X.IKE_AUTH, True): Take.PROTECTED,
    (State.EXPECT_AUTH_REQUEST, _X.IKE_AUTH, False): Take.PROTECTED,
    (State.EXPECT_AUTH_REQUEST, _X.CREATE_CHILD_SA, False): Take.REFUSED,
    (State.EXPECT_AUTH_REQUEST, _X.INFORMATIONAL, False): Take.REFUSED,
    **{(state, exchange, response): Take.PROTECTED
       for state in (State.ESTABLISHED, State.REKEYED)
       for exchange in (_X.CREATE_CHILD_SA, _X.INFORMATIONAL) for response in (False, True)},
    (State.ESTABLISHED, _X.IKE_AUTH, False): Take.REFUSED,
    (State.REKEYED, _X.IKE_AUTH, False): Take.REFUSED,
}

STATS = ("forged_dropped", "unexpected_dropped", "unparsable_dropped", "half_open_dropped",
         "cookies_sent")
"""IkeEngine.stats() keys: messages dropped as forged (cleartext where protection is due, or
a failed integrity check), as unexpected (unknown SPI, no such request, out of order or out
of place: mostly late retransmissions), as unparsable; IKE_SA_INIT requests dropped at the
half-open cap; N(COOKIE) answers sent."""


@dataclass
class _Request:
    """One request of ours in flight, with its retransmission schedule (section 2.1)."""

    message_id: int
    exchange: int
    datagram: bytes
    handler: Callable[[Message, float], None]
    first_sent: float
    next_retransmit: float
    interval: float
    spi_in: int | None
    """The inbound SPI offered for a CHILD SA in this request; free again unless a CHILD SA
    took it by the time the exchange ends."""


@dataclass
class _Child:
    """A CHILD SA as the engine tracks it: what the event said, plus the rekey state."""

    sa: ChildSa
    suite: Suite
    rekeying: bool = False
    own_rekey: tuple[bytes, "_Child"] | None = None
    """Lowest nonce of our rekey exchange of this SA, and the SA it made."""
    peer_rekey: tuple[bytes, "_Child"] | None = None
    """The same for the peer's rekey of this SA, when both rekeyed it at once."""


def _natd_hash(spi_i: bytes, spi_r: bytes, addr: str, port: int) -> bytes:
    """SHA-1(SPIi | SPIr | IP | Port) (section 2.23)."""
    return hashlib.sha1(
        spi_i + spi_r + ipaddress.ip_address(addr).packed + port.to_bytes(2, "big")
    ).digest()


def _hash_algorithms_notify() -> Notify:
    data = b"".join(int(h).to_bytes(2, "big") for h in _auth.SUPPORTED_HASHES)
    return Notify(NotifyType.SIGNATURE_HASH_ALGORITHMS, data)


def _error_notify(msg: Message) -> Notify | None:
    for p in msg.payloads:
        if isinstance(p, Notify) and p.notify_type <= ERROR_NOTIFY_MAX:
            return p
    return None


def _is_address_literal(name: bytes) -> bool:
    try:
        ipaddress.ip_address(name.decode("ascii").rstrip("."))
    except ValueError:  # UnicodeDecodeError is one
        return False
    return True


def _choose_for_ke(offered: tuple, suites: list[Suite], protocol: int,
                   ke: KE | None) -> tuple:
    """choose(), preferring what the initiator's KE already fits: a different group than its
    KE would cost a round trip through INVALID_KE_PAYLOAD (section 1.2)."""
    if ke is not None:
        try:
            return choose(offered, [s for s in suites if s.dh == ke.group], protocol)
        except IkeError:
            pass
    return choose(offered, suites, protocol)


class IkeSa:
    """One IKE SA: its keys, Message IDs, exchanges in flight and CHILD SAs."""

    def __init__(self, engine: "IkeEngine", sa_id: int, initiator: bool, spi_i: bytes,
                 spi_r: bytes, peer: Addr, local_port: int, state: State) -> None:
        self.engine = engine
        self.sa_id = sa_id
        self.initiator = initiator
        self.spi_i = spi_i
        self.spi_r = spi_r
        self.peer_addr, self.peer_port = peer
        self.local_port = local_port
        self.state = state
        self.suite: Suite | None = None
        self.keys: IkeKeys | None = None
        self.nat_detected = False
        self.behind_nat = False  # our own address is translated: we keep the mapping open
        self.next_keepalive: float | None = None
        self.peer_id: Identity | None = None
        self.peer_key: PeerKey | None = None  # the authenticated peer's key and its addresses
        self.peer_hashes: set[int] = set()
        self.children: list[_Child] = []
        self.pending_spis: set[int] = set()  # inbound SPIs offered that no CHILD SA took yet
        self.next_message_id = 0  # of our next request
        self.expected_message_id = 0  # of the peer's next request
        self.request: _Request | None = None
        # exchanges waiting for the one in flight; each takes the IKE SA it runs on, since
        # an IKE SA rekey hands the queue to the new IKE SA
        self.queue: deque[Callable[[IkeSa, float], None]] = deque()
        self.last_response: tuple[int, bytes] | None = None
        self.created = 0.0
        self.retired_at = 0.0  # when a rekey replaced this IKE SA
        self._raw = b""  # the datagram being processed (AUTH and the ICV cover it whole)
        self._source: tuple[Addr, int] = (peer, local_port)  # ... and where it came from
        # IKE_SA_INIT / IKE_AUTH scratch
        self.nonce_i = b""
        self.nonce_r = b""
        self.dh: DhExchange | None = None
        self.init_request = b""
        self.init_response = b""
        self.cookie = b""
        self.init_restarts = 0  # IKE_SA_INIT repeated for a COOKIE or INVALID_KE_PAYLOAD
        self.local_ts: tuple[TrafficSelector, ...] = ()
        self.remote_ts: tuple[TrafficSelector, ...] = ()
        self.expected_peer_id: Identity | None = None  # as initiator: who must answer
        self.successor: IkeSa | None = None  # the IKE SA that replaced this one (2.18)
        self.early_deletes: set[int] = set()  # unknown SPIs the peer deleted meanwhile
        self.init_addr: Addr = peer  # where a responder's IKE_SA_INIT request came from

    # --- small helpers --------------------------------------------------------------------

    def _live(self) -> "IkeSa":
        """This IKE SA, or the one that replaced it: where follow-up exchanges must go."""
        sa = self
        while sa.successor is not None:
            sa = sa.successor
        return sa

    @property
    def our_spi(self) -> bytes:
        return self.spi_i if self.initiator else self.spi_r

    @property
    def config(self) -> IkeConfig:
        return self.engine.config

    def _emit(self, event: Event) -> None:
        self.engine._events.append(event)

    def _send(self, data: bytes) -> None:
        self.engine._transmit(data, (self.peer_addr, self.peer_port), self.local_port)

    def _encode(self, exchange: int, payloads: list[Payload], response: bool,
                message_id: int) -> bytes:
        if exchange == ExchangeType.IKE_SA_INIT:
            return Message(self.spi_i, self.spi_r, exchange, message_id, response,
                           self.initiator, tuple(payloads)).encode()
        assert self.keys is not None
        flags = Message(b"", b"", exchange, message_id, response, self.initiator).flags
        header = Header(self.spi_i, self.spi_r, 0, exchange, flags, message_id, 0).encode()
        first, inner = encode_payloads(payloads)
        return self.keys.cipher(self.initiator).seal(header, first, inner, self.engine.rng)

    def _open(self, header: Header, msg: Message) -> Message:
        """Check and decrypt an SK-protected message (section 3.14). Raises IntegrityError for
        anything that fails before the integrity check, ParseError/IkeError after it."""
        enc = msg.payloads[0] if len(msg.payloads) == 1 else None
        if self.keys is None or not isinstance(enc, Encrypted):
            raise IntegrityError("expected exactly one SK payload")
        raw = self._raw
        inner = self.keys.cipher(not self.initiator).open(
            raw, len(raw) - len(enc.body), len(enc.body)
        )
        payloads = parse_payloads(enc.first, inner)
        return Message(msg.spi_i, msg.spi_r, msg.exchange, msg.message_id, msg.is_response,
                       msg.from_initiator, tuple(payloads))

    # --- requests of ours -----------------------------------------------------------------

    def _start(self, starter: "Callable[[IkeSa, float], None]", now: float) -> None:
        """Run an exchange now, or after the one in flight (window size 1, section 2.3)."""
        if self.request is None and self.state in (State.ESTABLISHED, State.REKEYED):
            starter(self, now)
        else:
            self.queue.append(starter)

    def _send_request(self, exchange: int, payloads: list[Payload],
                      handler: Callable[[Message, float], None], now: float,
                      spi_in: int | None = None) -> None:
        msgid = self.next_message_id
        self.next_message_id += 1
        data = self._encode(exchange, payloads, False, msgid)
        if exchange == ExchangeType.IKE_SA_INIT:
            self.init_request = data
        self.request = _Request(msgid, exchange, data, handler, now,
                                now + self.config.retransmit_timeout,
                                self.config.retransmit_timeout, spi_in)
        self._send(data)

    def _request_done(self, now: float) -> None:
        self.request = None
        self.early_deletes.clear()
        while self.queue and self.request is None and self.state in (State.ESTABLISHED,
                                                                     State.REKEYED):
            self.queue.popleft()(self, now)

    def get_timer(self) -> float | None:
        timers = []
        if self.request is not None:
            timers.append(min(self.request.next_retransmit,
                              self.request.first_sent + self.config.retransmit_budget))
        if self.state == State.EXPECT_AUTH_REQUEST:
            timers.append(self.created + self.config.half_open_lifetime)
        if self.state == State.REKEYED and self.request is None:
            timers.append(self.retired_at + self.config.retransmit_budget)
        if self.next_keepalive is not None and self.state == State.ESTABLISHED:
            timers.append(self.next_keepalive)
        return min(timers) if timers else None

    def handle_timer(self, now: float) -> None:
        if self.state == State.EXPECT_AUTH_REQUEST and (
                now >= self.created + self.config.half_open_lifetime):
            self.engine._remove(self)  # half-open and never authenticated: nobody to tell
            return
        if self.state == State.REKEYED and self.request is None and (
                now >= self.retired_at + self.config.retransmit_budget):
            self.engine._remove(self)  # the peer never deleted the old IKE SA (2.18): forget it
            return
        if self.next_keepalive is not None and now >= self.next_keepalive:
            # RFC 3948 section 2.3: one 0xFF octet, no non-ESP marker
            self.engine._out.append((NAT_KEEPALIVE, (self.peer_addr, self.peer_port),
                                     NAT_T_PORT))
            self.next_keepalive = now + self.config.nat_keepalive_interval
        req = self.request
        if req is None:
            return
        if now >= req.first_sent + self.config.retransmit_budget:
            self._fail_dead("no response to request %d (retransmits exhausted)" % req.message_id)
        elif now >= req.next_retransmit:
            req.interval *= 2
            req.next_retransmit = now + req.interval
            self._send(req.datagram)

    def _fail_dead(self, reason: str) -> None:
        if self.state in (State.ESTABLISHED, State.REKEYED):
            self._delete_local(reason)
        else:
            self._fail(None, reason, local=True)

    # --- receiving ------------------------------------------------------------------------

    def receive(self, header: Header, msg: Message, raw: bytes, addr: Addr, local_port: int,
                now: float) -> None:
        """The one gate (rule 1): nothing reaches a handler unless ``_ACCEPT`` takes it in
        this state, as a request or as the answer to our request in flight, and, unless it
        is our IKE_SA_INIT's answer, it passed the integrity check."""
        take = _ACCEPT.get((self.state, header.exchange, header.is_response))
        if take is None:
            # cleartext with a protected exchange's Message ID can only be forged; the rest
            # is late (a duplicate IKE_SA_INIT answer) or stray
            forged = header.exchange == ExchangeType.IKE_SA_INIT and header.message_id != 0
            return self.engine._count("forged_dropped" if forged else "unexpected_dropped")
        self._raw = raw
        self._source = (addr, local_port)
        if header.is_response:
            self._receive_response(header, msg, take, addr, local_port, now)
        else:
            self._receive_request(header, msg, take, addr, local_port, now)

    def _receive_response(self, header: Header, msg: Message, take: Take, addr: Addr,
                          local_port: int, now: float) -> None:
        req = self.request
        if req is None or (header.message_id, header.exchange) != (req.message_id,
                                                                   req.exchange):
            return self.engine._count("unexpected_dropped")  # late retransmit: section 2.3
        if take is Take.PROTECTED:
            try:
                msg = self._open(header, msg)
            except IntegrityError:
                return self.engine._count("forged_dropped")
            except IkeError as e:  # authentic but malformed answer: the exchange failed
                self.request = None
                self._release_spi(req.spi_in)
                return self._exchange_failed(e.notify, f"malformed response: {e.reason}", now)
            self._peer_moved(addr, local_port)
        self.request = None  # answered: a replay of this or any answer finds no request
        req.handler(msg, now)
        self._release_spi(req.spi_in)
        if self.request is None:
            self._request_done(now)

    def _receive_request(self, header: Header, msg: Message, take: Take, addr: Addr,
                         local_port: int, now: float) -> None:
        if self.last_response is not None and header.message_id == self.last_response[0]:
            try:
                self._open(header, msg)
            except IntegrityError:
                return self.engine._count("forged_dropped")
            except IkeError:
                return self.engine._count("unexpected_dropped")
            # retransmitted request: replay our answer, to where this copy came from (2.11)
            self.engine._transmit(self.last_response[1], addr, local_port)
            return
        if header.message_id != self.expected_message_id:
            return self.engine._count("unexpected_dropped")
        try:
            msg = self._open(header, msg)
        except IntegrityError:
            return self.engine._count("forged_dropped")
        except IkeError as e:
            self._respond(header.exchange, header.message_id, [Notify(e.notify, e.data)])
            if self.state == State.EXPECT_AUTH_REQUEST:
                self._fail(e.notify, e.reason, local=True)
            return
        self._peer_moved(addr, local_port)
        if take is Take.REFUSED:
            return self._respond(header.exchange, header.message_id,
                                 [Notify(NotifyType.INVALID_SYNTAX)])
        handler = {
            ExchangeType.IKE_AUTH: self._process_r_auth,
            ExchangeType.CREATE_CHILD_SA: self._process_r_create_child,
            ExchangeType.INFORMATIONAL: self._process_r_informational,
        }[header.exchange]
        handler(msg, now)

    def _peer_moved(self, addr: Addr, local_port: int) -> None:
        """Follow the peer to a new address/port after an authentic, new message: during
        IKE_AUTH (the initiator floats to 4500) and, later, only across a NAT (section 2.23;
        without NAT a changed source means a spoofed replay, not a moved peer)."""
        if self.state == State.EXPECT_AUTH_REQUEST or self.nat_detected:
            moved = addr != (self.peer_addr, self.peer_port)
            self.peer_addr, self.peer_port = addr
            self.local_port = local_port
            if moved and self.state == State.ESTABLISHED:
                self._emit(IkeSaPeerMoved(self.sa_id, self.peer_addr, self.peer_port))

    def _respond(self, exchange: int, message_id: int, payloads: list[Payload]) -> None:
        """Answer the request being processed, to the address and port it came from (2.11)."""
        data = self._encode(exchange, payloads, True, message_id)
        self.last_response = (message_id, data)
        self.expected_message_id = message_id + 1
        addr, local_port = self._source
        self.engine._transmit(data, addr, local_port)

    # --- failures and deletion ------------------------------------------------------------

    def _fail(self, notify: int | None, reason: str, local: bool) -> None:
        self._emit(IkeSaFailed(self.sa_id, self.peer_addr, notify, reason, local))
        self.engine._remove(self)

    def _exchange_failed(self, notify: int | None, reason: str, now: float) -> None:
        if self.state in (State.EXPECT_SA_INIT_RESPONSE, State.EXPECT_AUTH_RESPONSE):
            self._fail(notify, reason, local=True)
        else:
            self._emit(ChildSaFailed(self.sa_id, notify, reason))
            for c in self.children:
                c.rekeying = False
            self._request_done(now)

    def _delete_local(self, reason: str) -> None:
        """Forget the IKE SA and tell about every CHILD SA and the IKE SA itself."""
        if self.state != State.REKEYED:
            for c in list(self.children):
                self._child_gone(c, reason)
            self._emit(IkeSaDeleted(self.sa_id, self.peer_addr, reason))
        self.children = []  # a rekeyed IKE SA's children live on with its successor
        self.engine._remove(self)

    # --- CHILD SA bookkeeping -------------------------------------------------------------

    def _new_spi_in(self) -> bytes:
        """An inbound SPI for a CHILD SA we offer, unique on this host (oe.ike.spis)."""
        spi = self.engine.spis.allocate()
        self.pending_spis.add(spi)
        return spi.to_bytes(4, "big")

    def _release_spi(self, spi: int | None) -> None:
        """Free an offered SPI that no CHILD SA took (refused, failed, or the exchange died)."""
        if spi in self.pending_spis:
            self.pending_spis.remove(spi)
            self.engine.spis.release(spi)

    def _adopt(self, child: _Child, old: _Child | None = None) -> bool:
        """Keep a new CHILD SA and report it (ChildSaEstablished, or ChildSaRekeyed for
        ``old``), only if it sits on an SPI this IKE SA offered and no CHILD SA took yet: so
        no SPI pair is ever reported twice."""
        if child.sa.spi_in not in self.pending_spis:
            return False
        self.pending_spis.remove(child.sa.spi_in)
        self.children.append(child)
        if old is None:
            self._emit(ChildSaEstablished(self.sa_id, child.sa))
        else:
            self._emit(ChildSaRekeyed(self.sa_id, old.sa.spi_in, old.sa.spi_out, child.sa))
        return True

    def _check_peer_spi(self, spi: bytes) -> None:
        """The peer's SPI for a new CHILD SA must not be one its live CHILD SAs use: we would
        send two SAs' ESP to one SPI of one peer (and the datapath keeps one SA per SPI)."""
        if any(c.sa.spi_out.to_bytes(4, "big") == spi for c in self.children):
            raise IkeError(NotifyType.INVALID_SYNTAX,
                           f"peer's SPI {spi.hex()} is in use by another of its CHILD SAs")

    def _child_gone(self, child: _Child, reason: str) -> None:
        """Forget a CHILD SA, free its inbound SPI and report it."""
        self.children.remove(child)
        self.engine.spis.release(child.sa.spi_in)
        self._emit(ChildSaDeleted(self.sa_id, child.sa.spi_in, child.sa.spi_out, reason))

    # --- IKE_SA_INIT, initiator -----------------------------------------------------------

    def start_init(self, now: float) -> None:
        """IKE_SA_INIT { [N(COOKIE),] SA, KEi, Ni, N(NATD_S), N(NATD_D), N(HASH_ALG) } -->"""
        suites = self.config.ike_suites()
        if self.dh is None:
            self.dh = DhExchange(suites[0].dh, self.engine.rng)
        if not self.nonce_i:
            self.nonce_i = self.engine.rng(NONCE_LEN)
        # offer the suites of the KE's group first so the responder can take them (1.2)
        ordered = [s for s in suites if s.dh == self.dh.group] + [
            s for s in suites if s.dh != self.dh.group]
        payloads: list[Payload] = []
        if self.cookie:
            payloads.append(Notify(NotifyType.COOKIE, self.cookie))
        payloads += [
            SA(offer(ordered, b"")),
            KE(self.dh.group, self.dh.public),
            Nonce(self.nonce_i),
            *self._natd_notifies(),
            _hash_algorithms_notify(),
        ]
        self.next_message_id = 0
        self._send_request(ExchangeType.IKE_SA_INIT, payloads, self._process_i_init, now)

    def _natd_notifies(self) -> list[Notify]:
        """N(NATD_S_IP), N(NATD_D_IP) over the SPIs as in this message's header (2.23)."""
        return [
            Notify(NotifyType.NAT_DETECTION_SOURCE_IP,
                   _natd_hash(self.spi_i, self.spi_r, self.config.local_addr, self.local_port)),
            Notify(NotifyType.NAT_DETECTION_DESTINATION_IP,
                   _natd_hash(self.spi_i, self.spi_r, self.peer_addr, self.peer_port)),
        ]

    def _check_natd(self, msg: Message, our_port: int) -> None:
        """Compare the peer's NAT-D hashes with what we see (section 2.23); a request's
        hashes cover SPIr = 0, a response's the real SPIr."""
        src = msg.notifies(NotifyType.NAT_DETECTION_SOURCE_IP)
        dst = msg.notifies(NotifyType.NAT_DETECTION_DESTINATION_IP)
        if not src or not dst:
            return
        spi_r = self.spi_r if self.initiator else bytes(8)
        peer_hash = _natd_hash(self.spi_i, spi_r, self.peer_addr, self.peer_port)
        our_hash = _natd_hash(self.spi_i, spi_r, self.config.local_addr, our_port)
        peer_behind_nat = all(n.data != peer_hash for n in src)
        we_behind_nat = all(n.data != our_hash for n in dst)
        self.nat_detected = peer_behind_nat or we_behind_nat
        self.behind_nat = we_behind_nat

    def _process_i_init(self, msg: Message, now: float) -> None:
        """<-- IKE_SA_INIT { SA, KEr, Nr, N(NATD_S), N(NATD_D), ... } (or COOKIE / INVALID_KE)"""
        cookie = msg.notifies(NotifyType.COOKIE)
        if cookie and len(cookie[0].data) <= 64 and not msg.get(SA):
            # section 2.6: repeat the request with the cookie in front, same nonce and KE
            self.cookie = cookie[0].data
            return self._restart_init(NotifyType.COOKIE, now)
        invalid_ke = msg.notifies(NotifyType.INVALID_KE_PAYLOAD)
        if invalid_ke:
            group = int.from_bytes(invalid_ke[0].data[:2], "big")
            if self.dh is None or group not in {s.dh for s in self.config.ike_suites()}:
                return self._fail(NotifyType.INVALID_KE_PAYLOAD,
                                  f"responder wants DH group {group}", local=False)
            if group != self.dh.group:  # else a late answer to our request before the switch
                # section 1.2: retry with the group the responder asked for
                self.dh = DhExchange(group, self.engine.rng)
            return self._restart_init(NotifyType.INVALID_KE_PAYLOAD, now)
        err = _error_notify(msg)
        if err is not None:
            return self._fail(err.notify_type, f"peer answered {notify_name(err.notify_type)}",
                              local=False)
        try:
            sa, ke, nonce = msg.first(SA), msg.first(KE), msg.first(Nonce)
            if sa is None or ke is None or nonce is None or msg.spi_r == bytes(8):
                raise IkeError(NotifyType.INVALID_SYNTAX, "IKE_SA_INIT response lacks SA, KE or Nr")
            _, suite = accept(sa.proposals, self.config.ike_suites(), ProtocolId.IKE)
            assert self.dh is not None
            if ke.group != suite.dh or suite.dh != self.dh.group:
                raise IkeError(NotifyType.INVALID_KE_PAYLOAD, "KE group differs from the proposal")
            shared = self.dh.shared(ke.data)
        except IkeError as e:
            return self._fail(e.notify, e.reason, local=True)
        self.spi_r = msg.spi_r
        self.engine._rekey_index(self)
        self.nonce_r = nonce.data
        self.init_response = self._raw
        self.suite = suite
        self.keys = derive_ike_keys(
            Prf(suite.prf), skeyseed(Prf(suite.prf), self.nonce_i, self.nonce_r, shared),
            self.nonce_i, self.nonce_r, self.spi_i, self.spi_r, suite.encr, suite.key_bits,
            suite.integ,
        )
        self.peer_hashes = self._hashes_of(msg)
        self._check_natd(msg, IKE_PORT)
        if self.nat_detected:
            # section 2.23: move to port 4500 and put the non-ESP marker in front
            self.local_port = NAT_T_PORT
            self.peer_port = NAT_T_PORT
        self.state = State.EXPECT_AUTH_RESPONSE
        self._start_auth(now)

    def _restart_init(self, notify: int, now: float) -> None:
        """Send IKE_SA_INIT again, as the answer asked. When the round trip is longer than
        the retransmission timeout, each copy of the request gets an answer: a late one costs
        one more send, and a responder that never settles ends the negotiation."""
        self.init_restarts += 1
        if self.init_restarts > INIT_RESTARTS_MAX:
            return self._fail(notify, f"responder keeps answering {notify_name(notify)}",
                              local=False)
        self.start_init(now)

    @staticmethod
    def _hashes_of(msg: Message) -> set[int]:
        out: set[int] = set()
        for n in msg.notifies(NotifyType.SIGNATURE_HASH_ALGORITHMS):
            out |= {int.from_bytes(n.data[i : i + 2], "big") for i in range(0, len(n.data) - 1, 2)}
        return out

    # --- IKE_AUTH -------------------------------------------------------------------------

    def _auth_payload(self, id_payload: ID) -> Auth:
        assert self.keys is not None
        if self.initiator:
            octets = _auth.signed_octets(self.keys.prf, self.init_request, self.nonce_r,
                                         self.keys.sk_pi, id_payload.body)
        else:
            octets = _auth.signed_octets(self.keys.prf, self.init_response, self.nonce_i,
                                         self.keys.sk_pr, id_payload.body)
        # RFC 7427 only with peers that announced SHA2-256; method 1 otherwise
        method = (AuthMethod.DIGITAL_SIGNATURE if HashId.SHA2_256 in self.peer_hashes
                  else AuthMethod.RSA_SIG)
        return Auth(method, _auth.sign(self.config.private_key, octets, method))

    def _verify_peer(self, id_payload: ID | None, auth: Auth | None) -> None:
        """Look up the peer's key by its ID (type and data) and check AUTH; on success the
        key's addresses bound the peer's selectors. IkeError(AUTHENTICATION_FAILED)."""
        fail = NotifyType.AUTHENTICATION_FAILED
        if id_payload is None or auth is None:
            raise IkeError(fail, "IKE_AUTH lacks ID or AUTH")
        peer = Identity(id_payload.id_type, id_payload.data)
        if self.initiator and self.expected_peer_id not in (None, peer):
            # a valid key for another ID is no proof of being the peer we asked for
            raise IkeError(fail, f"peer identified as {peer}, expected {self.expected_peer_id}")
        if peer.id_type == IdType.ID_FQDN and _is_address_literal(peer.data):
            # an address's key vouches for its address ID only, never for a name spelled
            # like it (a lookup keyed by the ID's text would hand it over)
            raise IkeError(fail, f"ID_FQDN {peer} is an address, not a name")
        found = self.engine.lookup_key(peer)
        if found is None:
            raise IkeError(fail, f"no public key known for peer ID {peer}")
        if peer.id_type in (IdType.ID_IPV4_ADDR, IdType.ID_IPV6_ADDR) and (
                peer.address() not in found.addresses):
            raise IkeError(fail, f"the key found for {peer} does not vouch for that address")
        key = found.public_key
        assert self.keys is not None
        if self.initiator:
            octets = _auth.signed_octets(self.keys.prf, self.init_response, self.nonce_i,
                                         self.keys.sk_pr, id_payload.body)
        else:
            octets = _auth.signed_octets(self.keys.prf, self.init_request, self.nonce_r,
                                         self.keys.sk_pi, id_payload.body)
        try:
            _auth.verify(key, auth.method, auth.data, octets, sha1_allowed=not self.peer_hashes)
        except IkeError as e:
            raise IkeError(fail, f"peer {peer}: {e.reason}") from e
        self.peer_id = peer
        self.peer_key = found

    def _vouched(self) -> list[TrafficSelector]:
        """One host selector per address the peer's key vouches for (docs/architecture.md
        section 3)."""
        assert self.peer_key is not None
        return [TrafficSelector(a, a) for a in sorted(self.peer_key.addresses,
                                                      key=lambda a: (a.version, a))]

    def _start_auth(self, now: float) -> None:
        """IKE_AUTH { IDi, [IDr,] AUTH, SA, TSi, TSr } -->"""
        idi = ID(True, self.config.identity.id_type, self.config.identity.data)
        spi_in = self._new_spi_in()
        payloads: list[Payload] = [idi]
        if self.expected_peer_id is not None:
            payloads.append(ID(False, self.expected_peer_id.id_type, self.expected_peer_id.data))
        if not self.engine._established_with(self.peer_addr, self):
            # Section 2.4: our first IKE SA with this peer; it may drop what it still holds
            # from an earlier life of ours (a restart leaves the peer with dead SAs).
            payloads.append(Notify(NotifyType.INITIAL_CONTACT))
        payloads += [
            self._auth_payload(idi),
            SA(offer(self.config.esp_suites(), spi_in, with_dh=False)),
            TS(True, tuple(t.to_wire() for t in self.local_ts)),
            TS(False, tuple(t.to_wire() for t in self.remote_ts)),
        ]
        self._send_request(ExchangeType.IKE_AUTH, payloads,
                           lambda msg, t: self._process_i_auth(msg, spi_in, t), now,
                           spi_in=int.from_bytes(spi_in, "big"))

    def _process_i_auth(self, msg: Message, spi_in: bytes, now: float) -> None:
        """<-- IKE_AUTH { IDr, AUTH, SA, TSi, TSr } or { N(error) }"""
        auth = msg.first(Auth)
        err = _error_notify(msg)
        if auth is None:
            if err is not None:
                return self._fail(err.notify_type,
                                  f"peer answered {notify_name(err.notify_type)}", local=False)
            return self._fail(NotifyType.INVALID_SYNTAX, "IKE_AUTH response lacks AUTH", True)
        try:
            self._verify_peer(next((p for p in msg.get(ID) if not p.is_initiator), None), auth)
        except IkeError as e:
            # section 2.21.2: we cannot tell an authenticated peer; delete the IKE SA
            return self._fail(e.notify, e.reason, local=True)
        self._established(now)
        if err is not None or msg.first(SA) is None:
            notify = err.notify_type if err is not None else None
            self._emit(ChildSaFailed(self.sa_id, notify,
                                     f"peer answered {notify_name(notify or 0)} for the CHILD SA"))
            return
        try:
            _, suite = accept(msg.first(SA).proposals, self.config.esp_suites(), ProtocolId.ESP,
                              ignore_dh=True)
            local_ts, remote_ts = self._check_narrowed(msg, self.local_ts, self.remote_ts)
        except IkeError as e:
            self._emit(ChildSaFailed(self.sa_id, e.notify, e.reason))
            return self._start_delete_child_spi(spi_in, now)
        self._adopt(self._make_child(suite, spi_in, msg.first(SA).proposals[0].spi,
                                     self.nonce_i, self.nonce_r, b"", local_ts, remote_ts,
                                     we_initiated=True))

    def _check_narrowed(self, msg: Message, ours_l: tuple[TrafficSelector, ...],
                        ours_r: tuple[TrafficSelector, ...]
                        ) -> tuple[tuple[TrafficSelector, ...], ...]:
        """The responder's TS must lie inside what we offered (section 2.9)."""
        tsi = next((p for p in msg.get(TS) if p.is_initiator), None)
        tsr = next((p for p in msg.get(TS) if not p.is_initiator), None)
        if tsi is None or tsr is None:
            raise IkeError(NotifyType.TS_UNACCEPTABLE, "response lacks TSi or TSr")
        local = tuple(TrafficSelector.from_wire(w) for w in tsi.selectors)
        remote = tuple(TrafficSelector.from_wire(w) for w in tsr.selectors)
        if not all(any(t.is_subset_of(o) for o in ours_l) for t in local) or not all(
            any(t.is_subset_of(o) for o in ours_r) for t in remote
        ):
            raise IkeError(NotifyType.TS_UNACCEPTABLE, "responder widened the traffic selectors")
        vouched = self._vouched()
        if not all(any(t.is_subset_of(v) for v in vouched) for t in remote):
            raise IkeError(NotifyType.TS_UNACCEPTABLE,
                           "responder's key does not vouch for its traffic selectors")
        return local, remote

    def _established(self, now: float) -> None:
        self.state = State.ESTABLISHED
        self.engine._half_open.discard(self)
        self.dh = None
        if self.behind_nat:
            self.next_keepalive = now + self.config.nat_keepalive_interval
        self._emit(IkeSaEstablished(
            self.sa_id, self.spi_i, self.spi_r, self.initiator, self.config.local_addr,
            self.peer_addr, self.peer_port, str(self.peer_id), self.nat_detected,
        ))

    def _make_child(self, suite: Suite, spi_in: bytes, spi_out: bytes, nonce_i: bytes,
                    nonce_r: bytes, shared: bytes, local_ts: tuple[TrafficSelector, ...],
                    remote_ts: tuple[TrafficSelector, ...], we_initiated: bool) -> _Child:
        """KEYMAT = prf+(SK_d, [g^ir |] Ni | Nr): first the exchange initiator's outbound."""
        assert self.keys is not None
        ei, ai, er, ar = child_keymat(self.keys.prf, self.keys.sk_d, nonce_i, nonce_r, shared,
                                      suite.encr, suite.key_bits, suite.integ)
        if we_initiated:
            key_out, integ_out, key_in, integ_in = ei, ai, er, ar
        else:
            key_out, integ_out, key_in, integ_in = er, ar, ei, ai
        encap = self.nat_detected
        return _Child(ChildSa(
            spi_in=int.from_bytes(spi_in, "big"), spi_out=int.from_bytes(spi_out, "big"),
            encr=suite.encr, key_bits=suite.key_bits, integ=suite.integ,
            esn=suite.esn == EsnId.ESN, key_in=key_in, key_out=key_out, integ_key_in=integ_in,
            integ_key_out=integ_out, local_ts=local_ts, remote_ts=remote_ts,
            local_addr=self.config.local_addr, remote_addr=self.peer_addr, udp_encap=encap,
            local_port=self.local_port if encap else 0,
            remote_port=self.peer_port if encap else 0, dh=suite.dh,
        ), suite)

    def _process_r_auth(self, msg: Message, now: float) -> None:
        """IKE_AUTH { IDi, AUTH, SA, TSi, TSr } --> answered { IDr, AUTH, SA, TSi, TSr }"""
        mid = msg.message_id
        try:
            self._verify_peer(next((p for p in msg.get(ID) if p.is_initiator), None),
                              msg.first(Auth))
        except IkeError as e:
            # section 2.21.2: answer AUTHENTICATION_FAILED and forget the SA
            self._respond(ExchangeType.IKE_AUTH, mid, [Notify(e.notify)])
            return self._fail(e.notify, e.reason, local=True)
        if msg.notifies(NotifyType.INITIAL_CONTACT):
            # Section 2.4: the authenticated peer has no other IKE SA with us any more.
            self.engine._initial_contact(self)
        idr = ID(False, self.config.identity.id_type, self.config.identity.data)
        payloads: list[Payload] = [idr, self._auth_payload(idr)]
        child: _Child | None = None
        child_error: IkeError | None = None
        sa = msg.first(SA)
        if sa is None:
            child_error = IkeError(NotifyType.NO_PROPOSAL_CHOSEN, "IKE_AUTH request without SA")
        else:
            try:
                prop, suite = choose(sa.proposals, self.config.esp_suites(), ProtocolId.ESP,
                                     ignore_dh=True)
                local_ts, remote_ts = self._narrow_as_responder(msg)
                spi_in = self._new_spi_in()
                child = self._make_child(suite, spi_in, prop.spi, self.nonce_i, self.nonce_r,
                                         b"", local_ts, remote_ts, we_initiated=False)
                payloads += [
                    SA((suite.proposal(prop.number, spi_in, with_dh=False),)),
                    TS(True, tuple(t.to_wire() for t in remote_ts)),
                    TS(False, tuple(t.to_wire() for t in local_ts)),
                ]
            except IkeError as e:
                child_error = e
                payloads.append(Notify(e.notify))
        self._respond(ExchangeType.IKE_AUTH, mid, payloads)
        self._established(now)
        if child is not None:
            self._adopt(child)
        elif child_error is not None:
            self._emit(ChildSaFailed(self.sa_id, child_error.notify, child_error.reason))

    def _narrow_as_responder(self, msg: Message) -> tuple[tuple[TrafficSelector, ...], ...]:
        """TSi narrowed to the addresses the peer's key vouches for, never to the outer
        source (which the initiator may change during IKE_AUTH), TSr to us (section 2.9);
        then the user's policy callback."""
        tsi = next((p for p in msg.get(TS) if p.is_initiator), None)
        tsr = next((p for p in msg.get(TS) if not p.is_initiator), None)
        if tsi is None or tsr is None:
            raise IkeError(NotifyType.TS_UNACCEPTABLE, "request lacks TSi or TSr")
        remote = narrow([TrafficSelector.from_wire(w) for w in tsi.selectors], self._vouched())
        local = narrow([TrafficSelector.from_wire(w) for w in tsr.selectors],
                       [TrafficSelector.host(self.config.local_addr)])
        if not remote or not local:
            raise IkeError(NotifyType.TS_UNACCEPTABLE,
                           "selectors are not host-to-host between us and the peer's key")
        policy = self.engine.ts_policy
        assert self.peer_id is not None
        if policy is not None and not policy(self.peer_id, tuple(local), tuple(remote)):
            raise IkeError(NotifyType.TS_UNACCEPTABLE, "policy refuses the traffic selectors")
        return tuple(local), tuple(remote)

    # --- CREATE_CHILD_SA ------------------------------------------------------------------

    def _find_child(self, spi_in: int | None = None, spi_out: int | None = None) -> _Child | None:
        for c in self.children:
            if (spi_in is not None and c.sa.spi_in == spi_in) or (
                spi_out is not None and c.sa.spi_out == spi_out
            ):
                return c
        return None

    def rekey_child(self, spi_in: int, now: float) -> None:
        child = self._find_child(spi_in=spi_in)
        if child is None:
            raise LocalProtocolError(f"no CHILD SA with inbound SPI {spi_in:#x}")
        self._start(lambda sa, t: sa._start_create_child(child, child.sa.local_ts,
                                                         child.sa.remote_ts, t, None), now)

    def create_child(self, local_ts: tuple[TrafficSelector, ...],
                     remote_ts: tuple[TrafficSelector, ...], now: float) -> None:
        self._start(lambda sa, t: sa._start_create_child(None, local_ts, remote_ts, t, None),
                    now)

    def _start_create_child(self, old: _Child | None, local_ts: tuple[TrafficSelector, ...],
                            remote_ts: tuple[TrafficSelector, ...], now: float,
                            group: int | None) -> None:
        """CREATE_CHILD_SA { [N(REKEY_SA),] SA, Ni, [KEi,] TSi, TSr } -->"""
        if old is not None:
            if old not in self.children:
                return self._request_done(now)  # deleted while the rekey waited in the queue
            old.rekeying = True
        suites = self.config.esp_suites()
        if group is None:
            group = suites[0].dh
        dh = DhExchange(group, self.engine.rng) if group else None
        nonce = self.engine.rng(NONCE_LEN)
        spi_in = self._new_spi_in()
        ordered = [s for s in suites if s.dh == group] + [s for s in suites if s.dh != group]
        payloads: list[Payload] = []
        if old is not None:
            payloads.append(Notify(NotifyType.REKEY_SA, protocol=ProtocolId.ESP,
                                   spi=old.sa.spi_in.to_bytes(4, "big")))
        payloads += [SA(offer(ordered, spi_in)), Nonce(nonce)]
        if dh is not None:
            payloads.append(KE(dh.group, dh.public))
        payloads += [TS(True, tuple(t.to_wire() for t in local_ts)),
                     TS(False, tuple(t.to_wire() for t in remote_ts))]

        def done(msg: Message, t: float) -> None:
            """<-- CREATE_CHILD_SA { SA, Nr, [KEr,] TSi, TSr }"""
            if old is not None:
                old.rekeying = False
            err = _error_notify(msg)
            if err is not None and err.notify_type == NotifyType.INVALID_KE_PAYLOAD:
                want = int.from_bytes(err.data[:2], "big")
                if want != group and want in {s.dh for s in suites}:
                    # section 1.3: retry with the group the responder asked for
                    return self._start_create_child(old, local_ts, remote_ts, t, want)
            if err is not None:
                self._emit(ChildSaFailed(self.sa_id, err.notify_type,
                                         f"peer answered {notify_name(err.notify_type)}"))
                return
            try:
                new = self._child_from_response(msg, suites, spi_in, nonce, dh, local_ts,
                                                remote_ts)
            except IkeError as e:
                self._emit(ChildSaFailed(self.sa_id, e.notify, e.reason))
                return
            if new.sa.spi_out in self.early_deletes:
                # the peer answered, lost the answer, then deleted the SA before our
                # retransmission fetched that answer again: it never comes to life
                self._emit(ChildSaFailed(self.sa_id, None, "deleted by peer before it was up"))
                return
            if not self._adopt(new, old) or old is None:
                return
            old.own_rekey = (min(nonce, msg.first(Nonce).data), new)
            redundant = self._rekey_collision(old)
            if old not in self.children:
                return  # the peer deleted the old one while we rekeyed
            # section 2.8: the initiator of the rekey deletes the old CHILD SA (on the IKE SA
            # that now holds it, should an IKE rekey have overtaken this exchange)
            self._live()._start_delete_children([old] + redundant, t, front=True)

        self._send_request(ExchangeType.CREATE_CHILD_SA, payloads, done, now,
                           spi_in=int.from_bytes(spi_in, "big"))

    def _child_from_response(self, msg: Message, suites: list[Suite], spi_in: bytes,
                             nonce_i: bytes, dh: DhExchange | None,
                             local_ts: tuple[TrafficSelector, ...],
                             remote_ts: tuple[TrafficSelector, ...]) -> _Child:
        sa, nonce = msg.first(SA), msg.first(Nonce)
        if sa is None or nonce is None:
            raise IkeError(NotifyType.INVALID_SYNTAX, "CREATE_CHILD_SA response lacks SA or Nr")
        _, suite = accept(sa.proposals, suites, ProtocolId.ESP)
        self._check_peer_spi(sa.proposals[0].spi)
        shared = b""
        if suite.dh:
            ke = msg.first(KE)
            if dh is None or ke is None or ke.group != dh.group or suite.dh != dh.group:
                raise IkeError(NotifyType.INVALID_KE_PAYLOAD, "KEr does not match the proposal")
            shared = dh.shared(ke.data)
        local_ts, remote_ts = self._check_narrowed(msg, local_ts, remote_ts)
        return self._make_child(suite, spi_in, sa.proposals[0].spi, nonce_i, nonce.data, shared,
                                local_ts, remote_ts, we_initiated=True)

    def _process_r_create_child(self, msg: Message, now: float) -> None:
        """CREATE_CHILD_SA { [N(REKEY_SA),] SA, Ni, [KEi,] [TSi, TSr] } --> answered"""
        mid = msg.message_id
        sa, nonce, ke = msg.first(SA), msg.first(Nonce), msg.first(KE)
        if sa is None or nonce is None:
            return self._respond(ExchangeType.CREATE_CHILD_SA, mid,
                                 [Notify(NotifyType.INVALID_SYNTAX)])
        if self.state != State.ESTABLISHED:
            # section 2.25: a rekeyed or deleting IKE SA takes no new SAs
            return self._respond(ExchangeType.CREATE_CHILD_SA, mid,
                                 [Notify(NotifyType.TEMPORARY_FAILURE)])
        if any(p.protocol == ProtocolId.IKE for p in sa.proposals) and not msg.get(TS):
            return self._process_r_rekey_ike(msg, sa, nonce, ke, now)
        rekey = next((n for n in msg.notifies(NotifyType.REKEY_SA)), None)
        old: _Child | None = None
        if rekey is not None:
            old = self._find_child(spi_out=int.from_bytes(rekey.spi, "big"))
            if old is None:
                return self._respond(ExchangeType.CREATE_CHILD_SA, mid,
                                     [Notify(NotifyType.CHILD_SA_NOT_FOUND, protocol=rekey.protocol,
                                             spi=rekey.spi)])
        elif len(self.children) >= CHILD_SAS_MAX:
            # section 1.3: an authenticated peer still cannot make us hold SAs without bound
            return self._respond(ExchangeType.CREATE_CHILD_SA, mid,
                                 [Notify(NotifyType.NO_ADDITIONAL_SAS)])
        try:
            prop, suite = _choose_for_ke(sa.proposals, self.config.esp_suites(),
                                         ProtocolId.ESP, ke)
            self._check_peer_spi(prop.spi)
            shared = b""
            dh = None
            if suite.dh:
                if ke is None or ke.group != suite.dh:
                    raise IkeError(NotifyType.INVALID_KE_PAYLOAD, "KEi group mismatch",
                                   suite.dh.to_bytes(2, "big"))
                dh = DhExchange(suite.dh, self.engine.rng)
                shared = dh.shared(ke.data)
            local_ts, remote_ts = self._narrow_as_responder(msg)
        except IkeError as e:
            self._respond(ExchangeType.CREATE_CHILD_SA, mid, [Notify(e.notify, e.data)])
            if e.notify != NotifyType.INVALID_KE_PAYLOAD:  # that one is retried (1.3)
                self._emit(ChildSaFailed(self.sa_id, e.notify, e.reason))
            return
        spi_in = self._new_spi_in()
        nonce_r = self.engine.rng(NONCE_LEN)
        child = self._make_child(suite, spi_in, prop.spi, nonce.data, nonce_r, shared, local_ts,
                                 remote_ts, we_initiated=False)
        payloads: list[Payload] = [SA((suite.proposal(prop.number, spi_in),)), Nonce(nonce_r)]
        if dh is not None:
            payloads.append(KE(dh.group, dh.public))
        payloads += [TS(True, tuple(t.to_wire() for t in remote_ts)),
                     TS(False, tuple(t.to_wire() for t in local_ts))]
        self._respond(ExchangeType.CREATE_CHILD_SA, mid, payloads)
        if not self._adopt(child, old) or old is None:
            return
        if old.rekeying or old.own_rekey is not None:
            old.peer_rekey = (min(nonce.data, nonce_r), child)
            redundant = self._rekey_collision(old)
            if redundant:
                self._start(lambda sa, t: sa._start_delete_children(redundant, t), now)

    def _rekey_collision(self, old: _Child) -> list[_Child]:
        """Section 2.8.1: both sides rekeyed ``old``; the SA made by the exchange with the
        lowest of the four nonces is redundant and its creator deletes it. Returns the SAs
        we must delete (ours, if our exchange had the lowest nonce)."""
        if old.own_rekey is None or old.peer_rekey is None:
            return []
        if old.own_rekey[0] < old.peer_rekey[0]:
            return [old.own_rekey[1]]
        return []

    # --- IKE SA rekey (section 2.18) ------------------------------------------------------

    def rekey_ike(self, now: float) -> None:
        self._start(lambda sa, t: sa._start_rekey_ike(t), now)

    def _start_rekey_ike(self, now: float, group: int | None = None) -> None:
        """CREATE_CHILD_SA { SA, Ni, KEi } -->"""
        if self.state != State.ESTABLISHED:
            return
        suites = self.config.ike_suites()
        group = group or suites[0].dh
        dh = DhExchange(group, self.engine.rng)
        nonce = self.engine.rng(NONCE_LEN)
        new_spi = self.engine._new_ike_spi()
        ordered = [s for s in suites if s.dh == group] + [s for s in suites if s.dh != group]
        payloads: list[Payload] = [SA(offer(ordered, new_spi)), Nonce(nonce), KE(group, dh.public)]

        def done(msg: Message, t: float) -> None:
            """<-- CREATE_CHILD_SA { SA, Nr, KEr }"""
            err = _error_notify(msg)
            if err is not None and err.notify_type == NotifyType.INVALID_KE_PAYLOAD:
                want = int.from_bytes(err.data[:2], "big")
                if want != group and want in {s.dh for s in suites}:
                    return self._start_rekey_ike(t, want)
            if err is not None:
                self._emit(ChildSaFailed(self.sa_id, err.notify_type,
                                         f"IKE rekey refused: {notify_name(err.notify_type)}"))
                return
            try:
                sa, nr, ke = msg.first(SA), msg.first(Nonce), msg.first(KE)
                if sa is None or nr is None or ke is None:
                    raise IkeError(NotifyType.INVALID_SYNTAX, "IKE rekey response lacks SA/Nr/KEr")
                _, suite = accept(sa.proposals, suites, ProtocolId.IKE)
                if ke.group != group or suite.dh != group or len(sa.proposals[0].spi) != 8:
                    raise IkeError(NotifyType.INVALID_KE_PAYLOAD, "KEr does not match")
                shared = dh.shared(ke.data)
            except IkeError as e:
                self._emit(ChildSaFailed(self.sa_id, e.notify, f"IKE rekey failed: {e.reason}"))
                return
            self._rekeyed_to(True, new_spi, sa.proposals[0].spi, suite, nonce, nr.data, shared, t)
            # section 2.18: the initiator of the rekey deletes the old IKE SA
            self._send_request(ExchangeType.INFORMATIONAL, [Delete(ProtocolId.IKE, ())],
                               lambda m, t2: self.engine._remove(self), t)

        self._send_request(ExchangeType.CREATE_CHILD_SA, payloads, done, now)

    def _process_r_rekey_ike(self, msg: Message, sa: SA, nonce: Nonce, ke: KE | None,
                             now: float) -> None:
        mid = msg.message_id
        if self.request is not None:
            # A request of ours is in flight on this IKE SA: its answer could be lost with the
            # old SA, and if it is our own IKE rekey (simultaneous rekeys, section 2.8.2) both
            # sides would make a new IKE SA. Refuse; the peer tries again later (2.25).
            return self._respond(ExchangeType.CREATE_CHILD_SA, mid,
                                 [Notify(NotifyType.TEMPORARY_FAILURE)])
        try:
            prop, suite = _choose_for_ke(sa.proposals, self.config.ike_suites(),
                                         ProtocolId.IKE, ke)
            if len(prop.spi) != 8:
                raise IkeError(NotifyType.INVALID_SYNTAX, "IKE rekey without an 8-byte SPI")
            if ke is None or ke.group != suite.dh:
                raise IkeError(NotifyType.INVALID_KE_PAYLOAD, "KEi group mismatch",
                               suite.dh.to_bytes(2, "big"))
            dh = DhExchange(suite.dh, self.engine.rng)
            shared = dh.shared(ke.data)
        except IkeError as e:
            return self._respond(ExchangeType.CREATE_CHILD_SA, mid, [Notify(e.notify, e.data)])
        new_spi = self.engine._new_ike_spi()
        nonce_r = self.engine.rng(NONCE_LEN)
        self._respond(ExchangeType.CREATE_CHILD_SA, mid, [
            SA((suite.proposal(prop.number, new_spi),)), Nonce(nonce_r), KE(dh.group, dh.public),
        ])
        self._rekeyed_to(False, prop.spi, new_spi, suite, nonce.data, nonce_r, shared, now)

    def _rekeyed_to(self, we_initiated: bool, spi_i: bytes, spi_r: bytes, suite: Suite,
                    nonce_i: bytes, nonce_r: bytes, shared: bytes, now: float) -> None:
        """Make the new IKE SA, hand it the CHILD SAs and retire this one (section 2.18)."""
        assert self.keys is not None
        seed = rekey_skeyseed(self.keys.prf, self.keys.sk_d, shared, nonce_i, nonce_r)
        new = IkeSa(self.engine, self.sa_id, we_initiated, spi_i, spi_r,
                    (self.peer_addr, self.peer_port), self.local_port, State.ESTABLISHED)
        new.suite = suite
        new.keys = derive_ike_keys(Prf(suite.prf), seed, nonce_i, nonce_r, spi_i, spi_r,
                                   suite.encr, suite.key_bits, suite.integ)
        new.nat_detected = self.nat_detected
        new.behind_nat, new.next_keepalive = self.behind_nat, self.next_keepalive
        new.peer_id, new.peer_key = self.peer_id, self.peer_key
        new.expected_peer_id = self.expected_peer_id
        new.peer_hashes = self.peer_hashes
        # shared, so that exchanges still finishing on this IKE SA update the new one's list
        new.children = self.children
        new.local_ts, new.remote_ts = self.local_ts, self.remote_ts
        new.queue = self.queue
        self.queue = deque()
        self.successor = new
        self.state = State.REKEYED
        self.retired_at = now
        self.engine._add(new)
        self._emit(IkeSaRekeyed(self.sa_id, self.spi_i, self.spi_r, spi_i, spi_r))
        new._request_done(now)  # start what was queued on the old IKE SA

    # --- INFORMATIONAL --------------------------------------------------------------------

    def delete_child(self, spi_in: int, now: float) -> None:
        child = self._find_child(spi_in=spi_in)
        if child is None:
            raise LocalProtocolError(f"no CHILD SA with inbound SPI {spi_in:#x}")
        self._start(lambda sa, t: sa._start_delete_children([child], t), now)

    def _start_delete_child_spi(self, spi_in: bytes, now: float) -> None:
        """Delete a CHILD SA the peer made but we refused (section 2.9: TS we cannot accept)."""
        self._start(lambda sa, t: sa._send_request(
            ExchangeType.INFORMATIONAL, [Delete(ProtocolId.ESP, (spi_in,))],
            lambda m, t2: None, t), now)

    def _start_delete_children(self, children: list[_Child], now: float,
                               front: bool = False) -> None:
        """INFORMATIONAL { D(ESP, SPI...) } -->  <-- { D(ESP, SPI...) }"""
        if front and self.request is not None:
            self.queue.appendleft(lambda sa, t: sa._start_delete_children(children, t))
            return
        live = [c for c in children if c in self.children]
        if not live:
            return self._request_done(now)

        def done(msg: Message, t: float) -> None:
            for c in live:
                if c in self.children:
                    self._child_gone(c, "deleted by us")

        spis = tuple(c.sa.spi_in.to_bytes(4, "big") for c in live)
        self._send_request(ExchangeType.INFORMATIONAL, [Delete(ProtocolId.ESP, spis)], done, now)

    def delete_ike(self, now: float) -> None:
        def start(sa: IkeSa, t: float) -> None:
            """INFORMATIONAL { D(IKE) } -->"""
            sa._send_request(ExchangeType.INFORMATIONAL, [Delete(ProtocolId.IKE, ())],
                             lambda m, t2: sa._delete_local("deleted by us"), t)
        self._start(start, now)

    def check_liveness(self, now: float) -> None:
        """INFORMATIONAL { } -->  (section 1.4: an empty request; no answer means dead)"""
        self._start(lambda sa, t: sa._send_request(ExchangeType.INFORMATIONAL, [],
                                                   lambda m, t2: None, t), now)

    def _process_r_informational(self, msg: Message, now: float) -> None:
        """INFORMATIONAL { [D(...)], [N(...)] } --> answered"""
        mid = msg.message_id
        deletes = msg.get(Delete)
        if any(d.protocol == ProtocolId.IKE for d in deletes):
            # section 1.4.1: answer with an empty message, then the IKE SA and its children go
            self._respond(ExchangeType.INFORMATIONAL, mid, [])
            return self._delete_local("deleted by peer")
        ours: list[bytes] = []
        for d in deletes:
            if d.protocol != ProtocolId.ESP:
                continue
            for spi in d.spis:
                child = self._find_child(spi_out=int.from_bytes(spi, "big"))
                if child is None:
                    # already gone (both sides deleted at once, 1.4.1), or made by our
                    # CREATE_CHILD_SA whose answer we have not seen yet: remember it
                    if self.request is not None:
                        self.early_deletes.add(int.from_bytes(spi, "big"))
                    continue
                ours.append(child.sa.spi_in.to_bytes(4, "big"))
                self._child_gone(child, "deleted by peer")
        self._respond(ExchangeType.INFORMATIONAL, mid,
                      [Delete(ProtocolId.ESP, tuple(ours))] if ours else [])


class IkeEngine:
    """All IKE SAs of one host: dispatch by SPI, half-open bookkeeping and COOKIEs.

    :param config: our proposals, key and timers.
    :param rng: ``rng(n)`` returns n random bytes (``os.urandom`` in the daemon).
    :param lookup_key: maps a peer's ID, by type and data, to a ``PeerKey`` (its RSA public
        key and the addresses that key vouches for), or None.
    :param ts_policy: optional ``(peer_id, local_ts, remote_ts) -> bool``; False answers
        TS_UNACCEPTABLE.
    :param spis: the host's inbound SPI allocator, shared by its engines; default: one of
        this engine's own, drawing from ``rng``.
    :param sa_ids: where ``sa_id`` values come from, shared by the host's engines so ids are
        unique across them; default: this engine's own count from 1.
    :param cookie_required: ``(addr) -> bool``: True demands a COOKIE round trip from that
        initiator even below ``config.cookie_threshold`` (section 2.6).
    :param admit_init: ``(data, addr, local_port) -> bool``, asked for each IKE_SA_INIT
        request that passed the COOKIE check and would create a responder SA; False drops it
        (refused, or held while the peer's key is fetched: the caller may hand the same
        datagram to ``receive_datagram`` again later).
    """

    def __init__(self, config: IkeConfig, *, rng: Rng, lookup_key: KeyLookup,
                 ts_policy: TsPolicy | None = None, spis: SpiAllocator | None = None,
                 sa_ids: Iterator[int] | None = None,
                 cookie_required: CookieRequired | None = None,
                 admit_init: AdmitInit | None = None) -> None:
        self.config = config
        self.rng = rng
        self.lookup_key = lookup_key
        self.ts_policy = ts_policy
        self.spis = spis if spis is not None else SpiAllocator(rng)
        self.cookie_required = cookie_required
        self.admit_init = admit_init
        self._sas: dict[bytes, IkeSa] = {}
        # responder IKE SAs by the initiator's SPI and address, to recognise a retransmitted
        # IKE_SA_INIT request (section 2.1), for as long as the IKE SA lives
        self._by_init: dict[tuple[bytes, Addr], IkeSa] = {}
        self._half_open: set[IkeSa] = set()
        self._by_id: dict[int, IkeSa] = {}
        self._out: list[tuple[bytes, Addr, int]] = []
        self._events: deque[Event] = deque()
        self._ids = sa_ids if sa_ids is not None else itertools.count(1)
        self._stats = dict.fromkeys(STATS, 0)
        self._cookie_secret = rng(32)
        config.ike_suites()  # fail early on a bad proposal string
        config.esp_suites()

    # --- the five verbs -------------------------------------------------------------------

    def receive_datagram(self, data: bytes, addr: Addr, now: float,
                         local_port: int = IKE_PORT) -> None:
        """Handle one UDP payload from ``addr`` that arrived on our port ``local_port``.

        On 4500 the payload still carries the non-ESP marker (RFC 3948 section 2.2); NAT
        keepalives and ESP (no marker) are ignored here: the datapath owns ESP.
        """
        if local_port == NAT_T_PORT:
            if data == NAT_KEEPALIVE or data[:4] != NON_ESP_MARKER:
                return
            data = data[4:]
        try:
            header, msg = parse_message(data)
        except IkeError as e:
            self._count("unparsable_dropped")
            self._answer_unparsable(data, e, addr, local_port)
            return
        if header.exchange == ExchangeType.IKE_SA_INIT and not header.is_response:
            if header.spi_r == bytes(8) and header.message_id == 0 and header.from_initiator:
                self._process_r_init(header, msg, data, addr, local_port, now)
            else:
                self._count("unexpected_dropped")
            return
        our_spi = header.spi_r if header.from_initiator else header.spi_i
        sa = self._sas.get(our_spi)
        # both SPIs must be the IKE SA's, but for the answer to our IKE_SA_INIT, which
        # brings SPIr (section 3.1); section 2.21.4: INVALID_IKE_SPI is optional, we are silent
        if sa is None or sa.initiator == header.from_initiator or header.spi_i != sa.spi_i or (
                sa.spi_r != bytes(8) and header.spi_r != sa.spi_r):
            return self._count("unexpected_dropped")
        sa.receive(header, msg, data, addr, local_port, now)

    def datagrams_to_send(self, now: float) -> list[tuple[bytes, Addr, int]]:
        """Datagrams to send as ``(payload, (ip, port), local_port)``; the marker is included."""
        out, self._out = self._out, []
        return out

    def handle_timer(self, now: float) -> None:
        for sa in list(self._sas.values()):
            t = sa.get_timer()
            if t is not None and t <= now:
                sa.handle_timer(now)

    def get_timer(self) -> float | None:
        timers = [t for t in (sa.get_timer() for sa in self._sas.values()) if t is not None]
        return min(timers) if timers else None

    def next_event(self) -> Event | None:
        return self._events.popleft() if self._events else None

    def stats(self) -> dict[str, int]:
        """Counted drops and COOKIE answers since start; the keys are listed in ``STATS``."""
        return dict(self._stats)

    # --- what the user starts -------------------------------------------------------------

    def initiate(self, peer: str, now: float, *, local_ts: list[TrafficSelector] | None = None,
                 remote_ts: list[TrafficSelector] | None = None, peer_port: int = IKE_PORT,
                 remote_id: Identity | None = None, any_remote_id: bool = False) -> int:
        """Start IKE_SA_INIT towards ``peer``; returns the ``sa_id`` its events will carry.

        The responder must authenticate as ``remote_id`` (default: the ID_IPV4_ADDR or
        ID_IPV6_ADDR of ``peer``), which is also sent as IDr; ``any_remote_id`` accepts
        whichever ID the key lookup vouches for and sends no IDr.
        """
        sa = IkeSa(self, next(self._ids), True, self._new_ike_spi(), bytes(8), (peer, peer_port),
                   IKE_PORT, State.EXPECT_SA_INIT_RESPONSE)
        sa.local_ts = tuple(local_ts or [TrafficSelector.host(self.config.local_addr)])
        sa.remote_ts = tuple(remote_ts or [TrafficSelector.host(peer)])
        sa.created = now
        if not any_remote_id:
            sa.expected_peer_id = remote_id or Identity.from_address(peer)
        self._add(sa)
        sa.start_init(now)
        return sa.sa_id

    def _sa(self, sa_id: int) -> IkeSa:
        sa = self._by_id.get(sa_id)
        if sa is None or sa.state != State.ESTABLISHED:
            raise LocalProtocolError(f"no established IKE SA {sa_id}")
        return sa

    def rekey_child(self, sa_id: int, spi_in: int, now: float) -> None:
        """CREATE_CHILD_SA with N(REKEY_SA) for the CHILD SA whose inbound SPI is ``spi_in``."""
        self._sa(sa_id).rekey_child(spi_in, now)

    def create_child(self, sa_id: int, now: float, *, local_ts: list[TrafficSelector],
                     remote_ts: list[TrafficSelector]) -> None:
        """CREATE_CHILD_SA for one more CHILD SA with these selectors (e.g. one protocol)."""
        self._sa(sa_id).create_child(tuple(local_ts), tuple(remote_ts), now)

    def rekey_ike(self, sa_id: int, now: float) -> None:
        self._sa(sa_id).rekey_ike(now)

    def delete_child(self, sa_id: int, spi_in: int, now: float) -> None:
        self._sa(sa_id).delete_child(spi_in, now)

    def delete_ike(self, sa_id: int, now: float) -> None:
        self._sa(sa_id).delete_ike(now)

    def check_liveness(self, sa_id: int, now: float) -> None:
        self._sa(sa_id).check_liveness(now)

    def children(self, sa_id: int) -> list[ChildSa]:
        """The CHILD SAs an IKE SA holds now (for status displays and tests)."""
        sa = self._by_id.get(sa_id)
        return [c.sa for c in sa.children] if sa is not None else []

    # --- bookkeeping ----------------------------------------------------------------------

    def _new_ike_spi(self) -> bytes:
        while True:
            spi = self.rng(8)
            # a zero IKE SPI means "unknown" (section 3.1); ours finds one IKE SA of ours
            if int.from_bytes(spi, "big") > 255 and spi not in self._sas:
                return spi

    def _count(self, what: str) -> None:
        self._stats[what] += 1

    def _add(self, sa: IkeSa) -> None:
        self._sas[sa.our_spi] = sa
        self._by_id[sa.sa_id] = sa

    def _rekey_index(self, sa: IkeSa) -> None:
        self._sas[sa.our_spi] = sa

    def _established_with(self, peer_addr: str, besides: IkeSa) -> bool:
        """Whether an IKE SA other than `besides` is up with this peer."""
        return any(sa is not besides and sa.peer_addr == peer_addr
                   and sa.state in (State.ESTABLISHED, State.REKEYED)
                   for sa in self._by_id.values())

    def _initial_contact(self, new: IkeSa) -> None:
        """Forget, without DELETEs, every other IKE SA with the identity `new` authenticated."""
        for sa in list(self._by_id.values()):
            if sa is not new and sa.peer_id == new.peer_id and sa.state in (
                    State.ESTABLISHED, State.REKEYED):
                sa._delete_local("the peer started afresh (INITIAL_CONTACT)")

    def _remove(self, sa: IkeSa) -> None:
        sa.state = State.DELETED
        sa.request = None
        for spi in list(sa.pending_spis):
            sa._release_spi(spi)
        self._half_open.discard(sa)
        if self._sas.get(sa.our_spi) is sa:
            del self._sas[sa.our_spi]
        if self._by_id.get(sa.sa_id) is sa:
            del self._by_id[sa.sa_id]
        key = (sa.spi_i, sa.init_addr)
        if self._by_init.get(key) is sa:
            del self._by_init[key]

    def half_open(self) -> int:
        """Responder IKE SAs waiting for IKE_AUTH (what the COOKIE threshold counts)."""
        return len(self._half_open)

    def _transmit(self, data: bytes, addr: Addr, local_port: int) -> None:
        if local_port == NAT_T_PORT:
            data = NON_ESP_MARKER + data
        self._out.append((data, addr, local_port))

    def _answer_unparsable(self, data: bytes, e: IkeError, addr: Addr, local_port: int) -> None:
        """Answer an IKE_SA_INIT request with an unsupported critical payload (section 2.5);
        drop everything else that does not parse (we cannot authenticate it)."""
        if e.notify != NotifyType.UNSUPPORTED_CRITICAL_PAYLOAD or len(data) < HEADER_LEN:
            return
        if data[18] != ExchangeType.IKE_SA_INIT or data[19] & 0x20 or data[8:16] != bytes(8):
            return
        reply = Message(data[:8], bytes(8), ExchangeType.IKE_SA_INIT, 0, True, False,
                        (Notify(e.notify, e.data),)).encode()
        self._transmit(reply, addr, local_port)

    # --- IKE_SA_INIT, responder -----------------------------------------------------------

    def _cookie(self, spi_i: bytes, nonce_i: bytes, addr: Addr) -> bytes:
        """Cookie = <VersionIDofSecret> | Hash(Ni | IPi | SPIi | <secret>) (section 2.6)."""
        return b"\x00" + hmac.new(
            self._cookie_secret, nonce_i + ipaddress.ip_address(addr[0]).packed + spi_i,
            hashlib.sha256).digest()

    def _process_r_init(self, header: Header, msg: Message, data: bytes, addr: Addr,
                        local_port: int, now: float) -> None:
        """IKE_SA_INIT { [N(COOKIE),] SA, KEi, Ni, N(NATD)... } --> answered, stateless on error

        Cheapest first: the half-open cap, then the COOKIE (section 2.6), then the proposal,
        and only then the admission hook (the daemon's policy check and key fetch) and the
        DH computation. A spoofed source costs one small answer and no state.
        """
        known = self._by_init.get((header.spi_i, addr))
        if known is not None:
            if known.init_request == data:  # retransmitted request: the same answer, same way
                self._transmit(known.init_response, addr, local_port)
            return

        def refuse(notify: Notify) -> None:
            self._transmit(Message(header.spi_i, bytes(8), ExchangeType.IKE_SA_INIT, 0, True,
                                   False, (notify,)).encode(), addr, local_port)

        sa_p, ke, nonce = msg.first(SA), msg.first(KE), msg.first(Nonce)
        if sa_p is None or ke is None or nonce is None:
            return refuse(Notify(NotifyType.INVALID_SYNTAX))
        if len(self._half_open) >= self.config.half_open_max:
            return self._count("half_open_dropped")
        if len(self._half_open) >= self.config.cookie_threshold or (
                self.cookie_required is not None and self.cookie_required(addr)):
            want = self._cookie(header.spi_i, nonce.data, addr)
            got = msg.payloads[0]
            if not (isinstance(got, Notify) and got.notify_type == NotifyType.COOKIE
                    and hmac.compare_digest(got.data, want)):
                self._count("cookies_sent")
                return refuse(Notify(NotifyType.COOKIE, want))
        try:
            prop, suite = _choose_for_ke(sa_p.proposals, self.config.ike_suites(),
                                         ProtocolId.IKE, ke)
        except IkeError as e:
            return refuse(Notify(e.notify))
        if ke.group != suite.dh:
            # section 1.2: tell the initiator which group we want
            return refuse(Notify(NotifyType.INVALID_KE_PAYLOAD, suite.dh.to_bytes(2, "big")))
        if self.admit_init is not None and not self.admit_init(data, addr, local_port):
            return
        dh = DhExchange(suite.dh, self.rng)
        try:
            shared = dh.shared(ke.data)
        except IkeError as e:
            return refuse(Notify(e.notify))
        sa = IkeSa(self, next(self._ids), False, header.spi_i, self._new_ike_spi(), addr,
                   local_port, State.EXPECT_AUTH_REQUEST)
        sa.created = now
        sa.suite = suite
        sa.nonce_i = nonce.data
        sa.nonce_r = self.rng(NONCE_LEN)
        sa.init_request = data
        sa.peer_hashes = IkeSa._hashes_of(msg)
        sa._check_natd(msg, local_port)
        sa.keys = derive_ike_keys(
            Prf(suite.prf), skeyseed(Prf(suite.prf), sa.nonce_i, sa.nonce_r, shared),
            sa.nonce_i, sa.nonce_r, sa.spi_i, sa.spi_r, suite.encr, suite.key_bits, suite.integ,
        )
        payloads = [
            SA((suite.proposal(prop.number, b""),)),
            KE(suite.dh, dh.public),
            Nonce(sa.nonce_r),
            *sa._natd_notifies(),
            _hash_algorithms_notify(),
        ]
        sa.init_response = Message(sa.spi_i, sa.spi_r, ExchangeType.IKE_SA_INIT, 0, True, False,
                                   tuple(payloads)).encode()
        sa.expected_message_id = 1
        self._add(sa)
        sa.init_addr = addr
        self._by_init[(header.spi_i, addr)] = sa
        self._half_open.add(sa)
        sa._send(sa.init_response)
