"""One IKE SA (RFC 7296): its long-lived state, the one gate every message passes, Message
IDs, the window, the task queue and retransmission. The exchanges are tasks
(``oe.ike.tasks``); this module imports none of them.

Theory of operation
-------------------

Each IKE SA's state names what it waits for::

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

Rule 1: a message changes state only after its integrity check passed. ``ACCEPT`` says which
message each state takes and how it must be protected; ``IkeSa.receive`` consults it before
any handler runs. The only cleartext message an IKE SA takes is the answer to its own
IKE_SA_INIT request (Message ID 0, in EXPECT_SA_INIT_RESPONSE); a request of ours is answered
once, then forgotten, so no answer can be replayed. Encrypted Fragments (SKF, RFC 7383) are
taken wherever SK is, each checked before it is kept, and the message they make up is then
handled as if it had come whole. Rule 2: requests we send are retransmitted
with exponential backoff until a budget runs out (section 2.1); requests we receive are
answered once and the answer is replayed for retransmits (section 2.1, the responder's cache);
one whose CHILD SA must wait for DNS (the user's child_policy said Wait) is kept unanswered,
its Message ID still expected and its copies ignored, until ``resume`` (docs/gateway.md 4.2).
Rule 3: at most one request of ours is in flight per IKE SA (window size 1, section 2.3);
further tasks wait in a queue. Rule 4: every inbound SPI comes from the host's
``SpiAllocator`` and goes back when its CHILD SA goes or its offer ends; a CHILD SA is
reported once, on an SPI still on offer.
"""

from __future__ import annotations

from collections import deque
from functools import cached_property
from dataclasses import dataclass
from enum import Enum, auto
from typing import Callable, Protocol

from oe.ike import fragment
from oe.ike.auth import Identity, PeerKey
from oe.ike.childpolicy import AwaitingDns, ChildPolicy
from oe.ike.config import Addr, IkeConfig, KeyLookup
from oe.ike.constants import NAT_KEEPALIVE, NAT_T_PORT, ExchangeType, NotifyType, PayloadType
from oe.ike.crypto import Rng
from oe.ike.errors import IkeError, IntegrityError
from oe.ike.events import (
    ChildAwaitsDns,
    ChildSa,
    ChildSaDeleted,
    ChildSaEstablished,
    ChildSaFailed,
    ChildSaRekeyed,
    Event,
    IkeSaDeleted,
    IkeSaFailed,
    IkeSaPeerMoved,
)
from oe.ike.keymat import IkeKeys
from oe.ike.message import (
    Encrypted,
    EncryptedFragment,
    Header,
    Message,
    Notify,
    Payload,
    encode_payloads,
    parse_payloads,
)
from oe.ike.proposals import Suite
from oe.ike.spis import SpiAllocator


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

    @property
    def protected(self) -> bool:
        """Whether the message goes through the integrity check: then it may come as SK or,
        cut in fragments, as SKF (RFC 7383 2.5.3: never in IKE_SA_INIT)."""
        return self is not Take.CLEARTEXT


_X = ExchangeType
# (state, exchange, is a response) -> how it is taken; whatever is missing is dropped unread.
# The one cleartext entry: the answer to our own IKE_SA_INIT request. Requests of the peer's
# keep their Message ID order (2.3); a rekeyed IKE SA still finishes what is under way (2.18).
ACCEPT: dict[tuple[State, int, bool], Take] = {
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

# States in which the next queued task may start once no request is in flight: IKE_AUTH
# follows IKE_SA_INIT, everything else waits for an established (or finishing) IKE SA.
_RUNS_TASKS = (State.EXPECT_AUTH_RESPONSE, State.ESTABLISHED, State.REKEYED)


class Task(Protocol):
    """An exchange we initiate (strongSwan's task_t): ``build_i`` sends the request through
    ``IkeSa.send_request``, ``process_i`` takes the authentic answer."""

    def build_i(self, sa: IkeSa, now: float) -> None: ...

    def process_i(self, sa: IkeSa, msg: Message, now: float) -> None: ...


def requested_ts(task: Task) -> tuple[tuple, tuple]:
    """The selectors a task of ours asked a CHILD SA for ((), () for an exchange that asks
    for none): ChildSaFailed names the failed request by them."""
    return getattr(task, "local_ts", ()), getattr(task, "remote_ts", ())


Responder = Callable[["IkeSa", Message, float], None]
"""The responder half of an exchange: processes an authentic request and answers it with
``IkeSa.respond``."""


class Host(Protocol):
    """What an IKE SA and its tasks ask of the engine that holds it (oe.ike.engine)."""

    config: IkeConfig
    rng: Rng
    spis: SpiAllocator
    fragment_counters: fragment.Counters
    """What the IKE SAs' reassemblers dropped and completed, counted together."""
    lookup_key: KeyLookup
    child_policy: ChildPolicy | None
    """Decides the selectors of a CHILD SA the peer asks for (oe.ike.childpolicy); None:
    host to host between the peer's vouched addresses and us."""

    def emit(self, event: Event) -> None:
        """Queue an event for the user (``next_event``)."""

    def transmit(self, data: bytes, addr: Addr, local: Addr, ike: bool = True) -> None:
        """Queue a datagram from our address and port ``local``; ``ike=False`` sends it as
        it is."""

    def count(self, what: str) -> None:
        """Count a drop (one of the engine's ``STATS``)."""

    def add(self, sa: IkeSa) -> None:
        """Find ``sa`` by our SPI and its ``sa_id`` from now on (a new or rekeyed IKE SA)."""

    def remove(self, sa: IkeSa) -> None:
        """Forget ``sa`` and free the SPIs it still offered; it is DELETED."""

    def new_ike_spi(self) -> bytes:
        """An IKE SPI of ours no other IKE SA of this engine uses."""

    def established_with(self, peer_addr: str, besides: IkeSa) -> bool:
        """Whether another IKE SA is up with that peer (INITIAL_CONTACT, section 2.4)."""

    def moved(self, sa: IkeSa, before: str) -> None:
        """``sa`` follows its peer from the address ``before`` to ``sa.peer_addr`` (2.23)."""

    def initial_contact(self, sa: IkeSa) -> None:
        """The peer of ``sa`` started afresh: forget its other IKE SAs (section 2.4)."""

    def authenticated(self, sa: IkeSa) -> None:
        """IKE_AUTH completed on ``sa``: it is half-open no more."""

    def responder(self, exchange: int) -> Responder:
        """The responder half of ``exchange`` (oe.ike.tasks.RESPONDERS)."""

    def touch(self, sa: IkeSa) -> None:
        """``sa``'s timer may have moved: file it again before the timer is next read."""

    def identified(self, sa: IkeSa, before: Identity | None) -> None:
        """``sa``'s peer ID changed from ``before`` (None: unknown) to ``sa.peer_id``."""


@dataclass
class Request:
    """One request of ours in flight, with its retransmission schedule (section 2.1)."""

    message_id: int
    exchange: int
    datagrams: list[bytes]
    """The request as sent: one datagram, or every fragment (all are retransmitted, RFC 7383
    2.6)."""
    task: Task
    first_sent: float
    next_retransmit: float
    interval: float
    spi_in: int | None
    """The inbound SPI offered for a CHILD SA in this request; free again unless a CHILD SA
    took it by the time the exchange ends."""


@dataclass
class Child:
    """A CHILD SA as the engine tracks it: what the event said, plus the rekey state."""

    sa: ChildSa
    suite: Suite
    rekeying: bool = False
    own_rekey: tuple[bytes, "Child"] | None = None
    """Lowest nonce of our rekey exchange of this SA, and the SA it made."""
    peer_rekey: tuple[bytes, "Child"] | None = None
    """The same for the peer's rekey of this SA, when both rekeyed it at once."""


class _TimerInput:
    """An attribute ``IkeSa.get_timer`` reads: each assignment, wherever it is made (a task,
    the engine, another IKE SA), touches the IKE SA so its host files it under its new timer.
    The other inputs change only while the host hands the IKE SA a datagram (the reassembler)
    or a timer (the request's schedule), and then the host touches it itself."""

    def __set_name__(self, owner: type, name: str) -> None:
        self.slot = "_" + name

    def __get__(self, sa, owner=None):
        return self if sa is None else sa.__dict__[self.slot]

    def __set__(self, sa: IkeSa, value) -> None:
        sa.__dict__[self.slot] = value
        sa.host.touch(sa)


class _PeerId:
    """``IkeSa.peer_id``: each assignment tells the host, which keeps its IKE SAs by peer ID
    (INITIAL_CONTACT forgets a peer's others, section 2.4, without a walk over every IKE SA)."""

    def __get__(self, sa, owner=None):
        return self if sa is None else sa.__dict__["_peer_id"]

    def __set__(self, sa: IkeSa, value: Identity | None) -> None:
        before = sa.__dict__.get("_peer_id")
        sa.__dict__["_peer_id"] = value
        sa.host.identified(sa, before)


class IkeSa:
    """One IKE SA: its keys, Message IDs, exchanges in flight and CHILD SAs."""

    state: State = _TimerInput()  # type: ignore[assignment]
    request: Request | None = _TimerInput()  # type: ignore[assignment]
    retired_at: float = _TimerInput()  # type: ignore[assignment]
    next_keepalive: float | None = _TimerInput()  # type: ignore[assignment]
    peer_id: Identity | None = _PeerId()  # type: ignore[assignment]

    def __init__(self, host: Host, sa_id: int, initiator: bool, spi_i: bytes, spi_r: bytes,
                 peer: Addr, local: Addr, state: State, now: float) -> None:
        self.host = host
        self.sa_id = sa_id
        self.initiator = initiator
        self.spi_i = spi_i
        self.spi_r = spi_r
        self.peer_addr, self.peer_port = peer
        # our address for this IKE SA: where the peer reached us, or where we initiated from;
        # our ID unless one is configured (docs/gateway.md section 1)
        self.local_addr, self.local_port = local
        self.state = state
        self.created = now
        self.established_at: float | None = None
        self.last_heard: float | None = None  # the last authentic message from the peer
        self.suite: Suite | None = None
        self.keys: IkeKeys | None = None
        self.nat_detected = False
        self.behind_nat = False  # our own address is translated: we keep the mapping open
        self.next_keepalive: float | None = None
        self.peer_id: Identity | None = None
        self.peer_key: PeerKey | None = None  # the authenticated peer's key and its addresses
        # the key an initiator was told the peer must prove, and the addresses it vouches for
        # (docs/gateway.md 4.3); None: lookup_key answers for the peer's ID
        self.pinned_key: PeerKey | None = None
        self.peer_hashes: set[int] = set()
        self.children: list[Child] = []
        self.pending_spis: set[int] = set()  # inbound SPIs offered that no CHILD SA took yet
        self.next_message_id = 0  # of our next request
        self.expected_message_id = 0  # of the peer's next request
        self.request: Request | None = None
        # tasks waiting for the one in flight; an IKE SA rekey hands the queue to the new SA
        self.queue: deque[Task] = deque()
        self.last_response: tuple[int, list[bytes]] | None = None
        # the peer's request that waits for DNS, unanswered (docs/gateway.md 4.2): its
        # exchange, the authentic message (whole, even if it came in fragments) and whence
        self.deferred: tuple[int, Message, tuple[Addr, int]] | None = None
        self.retired_at = 0.0  # when a rekey replaced this IKE SA
        self.datagram = b""  # the datagram being processed (AUTH and the ICV cover it whole)
        self._source: tuple[Addr, int] = (peer, self.local_port)  # ... and where it came from
        # what IKE_SA_INIT settled and IKE_AUTH signs (section 2.15)
        self.nonce_i = b""
        self.nonce_r = b""
        self.init_request = b""
        self.init_response = b""
        self.successor: IkeSa | None = None  # the IKE SA that replaced this one (2.18)
        self.early_deletes: set[int] = set()  # unknown SPIs the peer deleted meanwhile
        self.init_addr: Addr = peer  # where a responder's IKE_SA_INIT request came from
        # both sent IKEV2_FRAGMENTATION_SUPPORTED (RFC 7383 2.3); kept across rekeys
        self.fragmentation = False
        self.reassembler = fragment.Reassembler(counters=host.fragment_counters)

    # --- small helpers --------------------------------------------------------------------

    def live(self) -> IkeSa:
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
        return self.host.config

    @property
    def identity(self) -> Identity:
        """Our ID on this IKE SA: the configured one, else the address the peer contacted."""
        return self.config.local_id or self._address_id

    @cached_property
    def _address_id(self) -> Identity:
        """The ID of our address, which is fixed per IKE SA (no MOBIKE): built once, as the
        engine compares it for every IKE SA on each INITIAL_CONTACT (section 2.4)."""
        return Identity.from_address(self.local_addr)

    def emit(self, event: Event) -> None:
        self.host.emit(event)

    def send(self, data: bytes) -> None:
        self.host.transmit(data, (self.peer_addr, self.peer_port),
                           (self.local_addr, self.local_port))

    def _encode(self, exchange: int, payloads: list[Payload], response: bool,
                message_id: int) -> list[bytes]:
        """The datagrams of one message: one, or its fragments when it would not fit the
        fragment size and both sides support RFC 7383 (never IKE_SA_INIT, 2.5.3)."""
        if exchange == ExchangeType.IKE_SA_INIT:
            return [Message(self.spi_i, self.spi_r, exchange, message_id, response,
                            self.initiator, tuple(payloads)).encode()]
        assert self.keys is not None
        flags = Message(b"", b"", exchange, message_id, response, self.initiator).flags
        header = Header(self.spi_i, self.spi_r, 0, exchange, flags, message_id, 0)
        first, inner = encode_payloads(payloads)
        cipher, rng = self.keys.cipher(self.initiator), self.host.rng
        data = cipher.seal(header.encode(), first, inner, rng)
        family = 6 if ":" in self.peer_addr else 4
        nat_t = self.local_port == NAT_T_PORT
        size = self.config.fragment_size
        if not self.fragmentation or fragment.datagram_size(len(data), family, nat_t) <= size:
            return [data]
        chunk = fragment.chunk_size(fragment.Geometry.of(cipher), family, nat_t, size)
        return fragment.split_message(
            header, first, inner, chunk,
            lambda head, nxt, number, total, part: cipher.seal(head, nxt, part, rng,
                                                               fragment=(number, total)))

    def _decrypt(self, msg: Message) -> tuple[Encrypted | EncryptedFragment, bytes]:
        """Check and decrypt the one SK or SKF payload of the datagram being processed
        (section 3.14; RFC 7383 2.6: each fragment before it is kept). Raises IntegrityError."""
        enc = msg.payloads[0] if len(msg.payloads) == 1 else None
        if self.keys is None or not isinstance(enc, (Encrypted, EncryptedFragment)):
            raise IntegrityError("expected exactly one SK or SKF payload")
        raw = self.datagram
        return enc, self.keys.cipher(not self.initiator).open(
            raw, len(raw) - len(enc.body), len(enc.body)
        )

    def _open(self, header: Header, msg: Message, now: float) -> Message | None:
        """Check and decrypt an SK-protected message (section 3.14), or one fragment of it:
        None while fragments are missing (RFC 7383 2.6). Raises IntegrityError for anything
        that fails before the integrity check, ParseError/IkeError after it."""
        enc, inner = self._decrypt(msg)
        first = enc.first
        if isinstance(enc, EncryptedFragment):
            whole = self.reassembler.add(now, (header.message_id, header.is_response),
                                         fragment.Fragment.of(header, enc), inner)
            if whole is None:
                return None
            first, inner = whole
        payloads = parse_payloads(first, inner)
        return Message(msg.spi_i, msg.spi_r, msg.exchange, msg.message_id, msg.is_response,
                       msg.from_initiator, tuple(payloads))

    # --- requests of ours -----------------------------------------------------------------

    def start(self, task: Task, now: float, front: bool = False) -> None:
        """Run a task now, or after the one in flight (window size 1, section 2.3); ``front``
        puts it before the others waiting (a DELETE that finishes a rekey, 2.8)."""
        if front and self.request is not None:
            self.queue.appendleft(task)
        elif front or (self.request is None and self.state in _RUNS_TASKS):
            task.build_i(self, now)
        else:
            self.queue.append(task)

    def send_request(self, task: Task, exchange: int, payloads: list[Payload], now: float,
                     spi_in: int | None = None) -> list[bytes]:
        """Send a request of ``task``'s, whose answer goes to ``task.process_i``; returns its
        datagrams."""
        msgid = self.next_message_id
        self.next_message_id += 1
        datagrams = self._encode(exchange, payloads, False, msgid)
        self.request = Request(msgid, exchange, datagrams, task, now,
                               now + self.config.retransmit_timeout,
                               self.config.retransmit_timeout, spi_in)
        for data in datagrams:
            self.send(data)
        return datagrams

    def request_done(self, now: float) -> None:
        self.request = None
        self.early_deletes.clear()
        while self.queue and self.request is None and self.state in _RUNS_TASKS:
            self.queue.popleft().build_i(self, now)

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
        reassembly = self.reassembler.next_timer()
        if reassembly is not None:
            timers.append(reassembly)
        return min(timers) if timers else None

    def handle_timer(self, now: float) -> None:
        self.reassembler.expire(now)
        if self.state == State.EXPECT_AUTH_REQUEST and (
                now >= self.created + self.config.half_open_lifetime):
            self.host.remove(self)  # half-open and never authenticated: nobody to tell
            return
        if self.state == State.REKEYED and self.request is None and (
                now >= self.retired_at + self.config.retransmit_budget):
            self.host.remove(self)  # the peer never deleted the old IKE SA (2.18): forget it
            return
        if self.next_keepalive is not None and now >= self.next_keepalive:
            # RFC 3948 section 2.3: one 0xFF octet, no non-ESP marker
            self.host.transmit(NAT_KEEPALIVE, (self.peer_addr, self.peer_port),
                               (self.local_addr, NAT_T_PORT),
                               ike=False)
            self.next_keepalive = now + self.config.nat_keepalive_interval
        req = self.request
        if req is None:
            return
        if now >= req.first_sent + self.config.retransmit_budget:
            self._fail_dead("no response to request %d (retransmits exhausted)" % req.message_id)
        elif now >= req.next_retransmit:
            req.interval *= 2
            req.next_retransmit = now + req.interval
            for data in req.datagrams:
                self.send(data)

    def _fail_dead(self, reason: str) -> None:
        if self.state in (State.ESTABLISHED, State.REKEYED):
            self.delete_local(reason)
        else:
            self.fail(None, reason, local=True)

    # --- receiving ------------------------------------------------------------------------

    def receive(self, header: Header, msg: Message, raw: bytes, addr: Addr, local_port: int,
                now: float) -> None:
        """The one gate (rule 1): nothing reaches a handler unless ``ACCEPT`` takes it in
        this state, as a request or as the answer to our request in flight, and, unless it
        is our IKE_SA_INIT's answer, it passed the integrity check."""
        take = ACCEPT.get((self.state, header.exchange, header.is_response))
        if take is not None and not take.protected and header.next_payload == PayloadType.SKF:
            # RFC 7383 2.5.3: fragments only where SK is due; before the keys, forged
            return self.host.count("forged_dropped")
        if take is None:
            # cleartext with a protected exchange's Message ID can only be forged; the rest
            # is late (a duplicate IKE_SA_INIT answer) or stray
            forged = header.exchange == ExchangeType.IKE_SA_INIT and header.message_id != 0
            return self.host.count("forged_dropped" if forged else "unexpected_dropped")
        self.datagram = raw
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
            return self.host.count("unexpected_dropped")  # late retransmit: section 2.3
        if take is Take.PROTECTED:
            try:
                opened = self._open(header, msg, now)
            except IntegrityError:
                return self.host.count("forged_dropped")
            except IkeError as e:  # authentic but malformed answer: the exchange failed
                self.last_heard = now
                self.request = None
                self.release_spi(req.spi_in)
                return self._exchange_failed(e.notify, f"malformed response: {e.reason}", now,
                                             req.task)
            if opened is None:
                return  # an authentic fragment, kept until the others arrive
            msg = opened
            self._peer_moved(addr, local_port)
        self.last_heard = now
        self.request = None  # answered: a replay of this or any answer finds no request
        req.task.process_i(self, msg, now)
        self.release_spi(req.spi_in)
        if self.request is None:
            self.request_done(now)

    def _receive_request(self, header: Header, msg: Message, take: Take, addr: Addr,
                         local_port: int, now: float) -> None:
        if self.last_response is not None and header.message_id == self.last_response[0]:
            try:
                enc, _ = self._decrypt(msg)
            except IntegrityError:
                return self.host.count("forged_dropped")
            # retransmitted request: replay our answer, to where this copy came from (2.11),
            # every fragment of it, once per retransmission: on its first fragment (RFC 7383
            # 2.6.1, as charon)
            self.last_heard = now
            if isinstance(enc, EncryptedFragment) and enc.number != 1:
                return
            for data in self.last_response[1]:
                self.host.transmit(data, addr, (self.local_addr, local_port))
            return
        if self.deferred is not None and header.message_id == self.deferred[1].message_id:
            return  # a copy of the request that waits for DNS: it changes nothing (4.2)
        if header.message_id != self.expected_message_id:
            return self.host.count("unexpected_dropped")
        try:
            opened = self._open(header, msg, now)
        except IntegrityError:
            return self.host.count("forged_dropped")
        except IkeError as e:
            self.last_heard = now
            self.respond(header.exchange, header.message_id, [Notify(e.notify, e.data)])
            if self.state == State.EXPECT_AUTH_REQUEST:
                self.fail(e.notify, e.reason, local=True)
            return
        if opened is None:
            return  # an authentic fragment, kept until the others arrive
        msg = opened
        self.last_heard = now
        self._peer_moved(addr, local_port)
        if take is Take.REFUSED:
            return self.respond(header.exchange, header.message_id,
                                [Notify(NotifyType.INVALID_SYNTAX)])
        self._handle_request(header.exchange, msg, now)

    def _handle_request(self, exchange: int, msg: Message, now: float) -> None:
        """Hand an authentic request to its responder; one whose CHILD SA must wait for DNS
        is kept unanswered, its Message ID still expected (docs/gateway.md 4.2)."""
        try:
            self.host.responder(exchange)(self, msg, now)
        except AwaitingDns as wait:
            self.deferred = (exchange, msg, self._source)
            self.emit(ChildAwaitsDns(self.sa_id, wait.lookups))

    def resume(self, now: float) -> None:
        """Handle the request kept while its lookups ran, if this state still takes it."""
        if self.deferred is None:
            return
        exchange, msg, source = self.deferred
        self.deferred = None
        if msg.message_id != self.expected_message_id or \
                ACCEPT.get((self.state, exchange, False)) is not Take.PROTECTED:
            return
        self._source = source
        self._handle_request(exchange, msg, now)

    def _peer_moved(self, addr: Addr, local_port: int) -> None:
        """Follow the peer to a new address/port after an authentic, new message: during
        IKE_AUTH (the initiator floats to 4500) and, later, only across a NAT (section 2.23;
        without NAT a changed source means a spoofed replay, not a moved peer)."""
        if self.state == State.EXPECT_AUTH_REQUEST or self.nat_detected:
            moved = addr != (self.peer_addr, self.peer_port)
            before = self.peer_addr
            self.peer_addr, self.peer_port = addr
            if before != self.peer_addr:
                self.host.moved(self, before)
            self.local_port = local_port
            if moved and self.state == State.ESTABLISHED:
                self.emit(IkeSaPeerMoved(self.sa_id, self.peer_addr, self.peer_port,
                                          self.local_addr))

    def respond(self, exchange: int, message_id: int, payloads: list[Payload]) -> None:
        """Answer the request being processed, to the address and port it came from (2.11)."""
        datagrams = self._encode(exchange, payloads, True, message_id)
        self.last_response = (message_id, datagrams)
        self.expected_message_id = message_id + 1
        addr, local_port = self._source
        for data in datagrams:
            self.host.transmit(data, addr, (self.local_addr, local_port))

    # --- failures and deletion ------------------------------------------------------------

    def fail(self, notify: int | None, reason: str, local: bool) -> None:
        self.emit(IkeSaFailed(self.sa_id, self.peer_addr, notify, reason, local))
        self.host.remove(self)

    def _exchange_failed(self, notify: int | None, reason: str, now: float, task: Task) -> None:
        if self.state in (State.EXPECT_SA_INIT_RESPONSE, State.EXPECT_AUTH_RESPONSE):
            self.fail(notify, reason, local=True)
        else:
            self.emit(ChildSaFailed(self.sa_id, notify, reason, *requested_ts(task)))
            for c in self.children:
                c.rekeying = False
            self.request_done(now)

    def delete_local(self, reason: str) -> None:
        """Forget the IKE SA and tell about every CHILD SA and the IKE SA itself."""
        if self.state != State.REKEYED:
            for c in list(self.children):
                self.child_gone(c, reason)
            self.emit(IkeSaDeleted(self.sa_id, self.peer_addr, reason))
        self.children = []  # a rekeyed IKE SA's children live on with its successor
        self.host.remove(self)

    # --- CHILD SA bookkeeping -------------------------------------------------------------

    def find_child(self, spi_in: int | None = None, spi_out: int | None = None) -> Child | None:
        for c in self.children:
            if (spi_in is not None and c.sa.spi_in == spi_in) or (
                spi_out is not None and c.sa.spi_out == spi_out
            ):
                return c
        return None

    def new_spi_in(self) -> bytes:
        """An inbound SPI for a CHILD SA we offer, unique on this host (oe.ike.spis)."""
        spi = self.host.spis.allocate()
        self.pending_spis.add(spi)
        return spi.to_bytes(4, "big")

    def release_spi(self, spi: int | None) -> None:
        """Free an offered SPI that no CHILD SA took (refused, failed, or the exchange died)."""
        if spi in self.pending_spis:
            self.pending_spis.remove(spi)
            self.host.spis.release(spi)

    def adopt(self, child: Child, old: Child | None = None) -> bool:
        """Keep a new CHILD SA and report it (ChildSaEstablished, or ChildSaRekeyed for
        ``old``), only if it sits on an SPI this IKE SA offered and no CHILD SA took yet: so
        no SPI pair is ever reported twice."""
        if child.sa.spi_in not in self.pending_spis:
            return False
        self.pending_spis.remove(child.sa.spi_in)
        self.children.append(child)
        if old is None:
            self.emit(ChildSaEstablished(self.sa_id, child.sa))
        else:
            self.emit(ChildSaRekeyed(self.sa_id, old.sa.spi_in, old.sa.spi_out, child.sa))
        return True

    def check_peer_spi(self, spi: bytes) -> None:
        """The peer's SPI for a new CHILD SA must not be one its live CHILD SAs use: we would
        send two SAs' ESP to one SPI of one peer (and the datapath keeps one SA per SPI)."""
        if any(c.sa.spi_out.to_bytes(4, "big") == spi for c in self.children):
            raise IkeError(NotifyType.INVALID_SYNTAX,
                           f"peer's SPI {spi.hex()} is in use by another of its CHILD SAs")

    def child_gone(self, child: Child, reason: str) -> None:
        """Forget a CHILD SA, free its inbound SPI and report it."""
        self.children.remove(child)
        self.host.spis.release(child.sa.spi_in)
        self.emit(ChildSaDeleted(self.sa_id, child.sa.spi_in, child.sa.spi_out, reason))
