"""IKE_SA_INIT (RFC 7296 section 1.2): proposals, KE and nonces, NAT detection (2.23), the
COOKIE (2.6) and INVALID_KE_PAYLOAD (1.2) round trips, and the keys they yield (2.14).

The initiator's half is the ``IkeInit`` task; the responder's entry, with its cheap checks
first (half-open cap, COOKIE), is the engine's, which calls ``process_r`` and ``build_r``.
"""

from __future__ import annotations

import hashlib
import ipaddress

from oe.ike import auth as _auth
from oe.ike.constants import (
    INIT_RESTARTS_MAX,
    IKE_PORT,
    NAT_T_PORT,
    NONCE_LEN,
    ExchangeType,
    NotifyType,
    ProtocolId,
    notify_name,
)
from oe.ike.config import IkeConfig
from oe.ike.crypto import DhExchange, Prf
from oe.ike.errors import IkeError
from oe.ike.ike_sa import IkeSa, State
from oe.ike.keymat import skeyseed
from oe.ike.message import KE, SA, Message, Nonce, Notify, Payload, Proposal
from oe.ike.proposals import Suite, accept, choose_for_ke, offer, prefer_group
from oe.ike.tasks.common import asked_group, check_ke, complete_ke, error_notify, ike_keys


def natd_hash(spi_i: bytes, spi_r: bytes, addr: str, port: int) -> bytes:
    """SHA-1(SPIi | SPIr | IP | Port) (section 2.23)."""
    return hashlib.sha1(
        spi_i + spi_r + ipaddress.ip_address(addr).packed + port.to_bytes(2, "big")
    ).digest()


def natd_notifies(sa: IkeSa) -> list[Notify]:
    """N(NATD_S_IP), N(NATD_D_IP) over the SPIs as in this message's header (2.23). Forcing
    ESP-in-UDP, our source hash covers port 0, which no datagram comes from: the peer sees
    a NAT in front of us."""
    our_port = 0 if sa.config.force_encap else sa.local_port
    return [
        Notify(NotifyType.NAT_DETECTION_SOURCE_IP,
               natd_hash(sa.spi_i, sa.spi_r, sa.local_addr, our_port)),
        Notify(NotifyType.NAT_DETECTION_DESTINATION_IP,
               natd_hash(sa.spi_i, sa.spi_r, sa.peer_addr, sa.peer_port)),
    ]


def check_natd(sa: IkeSa, msg: Message, our_port: int) -> None:
    """Compare the peer's NAT-D hashes with what we see (section 2.23); a request's hashes
    cover SPIr = 0, a response's the real SPIr."""
    src = msg.notifies(NotifyType.NAT_DETECTION_SOURCE_IP)
    dst = msg.notifies(NotifyType.NAT_DETECTION_DESTINATION_IP)
    if not src or not dst:
        return
    spi_r = sa.spi_r if sa.initiator else bytes(8)
    peer_hash = natd_hash(sa.spi_i, spi_r, sa.peer_addr, sa.peer_port)
    our_hash = natd_hash(sa.spi_i, spi_r, sa.local_addr, our_port)
    peer_behind_nat = all(n.data != peer_hash for n in src)
    we_behind_nat = all(n.data != our_hash for n in dst)
    sa.nat_detected = peer_behind_nat or we_behind_nat or sa.config.force_encap
    sa.behind_nat = we_behind_nat


def hash_algorithms_notify() -> Notify:
    """N(SIGNATURE_HASH_ALGORITHMS) (RFC 7427 section 4)."""
    data = b"".join(int(h).to_bytes(2, "big") for h in _auth.SUPPORTED_HASHES)
    return Notify(NotifyType.SIGNATURE_HASH_ALGORITHMS, data)


def hashes_of(msg: Message) -> set[int]:
    """The hash algorithms the peer announced (RFC 7427 section 4)."""
    out: set[int] = set()
    for n in msg.notifies(NotifyType.SIGNATURE_HASH_ALGORITHMS):
        out |= {int.from_bytes(n.data[i : i + 2], "big") for i in range(0, len(n.data) - 1, 2)}
    return out


def fragmentation_notify(config: IkeConfig) -> list[Notify]:
    """N(IKEV2_FRAGMENTATION_SUPPORTED), empty, unless configured off (RFC 7383 2.3)."""
    return [Notify(NotifyType.IKEV2_FRAGMENTATION_SUPPORTED)] if config.fragmentation else []


def _settle(sa: IkeSa, msg: Message, suite: Suite, shared: bytes, our_port: int) -> None:
    """What both sides keep from IKE_SA_INIT: the suite, the keys, the peer's hash
    algorithms, whether a NAT is in the way and whether both support fragmentation."""
    sa.suite = suite
    prf = Prf(suite.prf)
    sa.keys = ike_keys(suite, skeyseed(prf, sa.nonce_i, sa.nonce_r, shared), sa.nonce_i,
                       sa.nonce_r, sa.spi_i, sa.spi_r)
    sa.peer_hashes = hashes_of(msg)
    check_natd(sa, msg, our_port)
    sa.fragmentation = sa.config.fragmentation and bool(
        msg.notifies(NotifyType.IKEV2_FRAGMENTATION_SUPPORTED))


class IkeInit:
    """IKE_SA_INIT as initiator. Its own state: our KE (kept across a COOKIE round trip,
    replaced on INVALID_KE_PAYLOAD), the responder's COOKIE and how often it restarted."""

    def __init__(self) -> None:
        self.dh: DhExchange | None = None
        self.cookie = b""
        self.restarts = 0  # IKE_SA_INIT repeated for a COOKIE or INVALID_KE_PAYLOAD

    def build_i(self, sa: IkeSa, now: float) -> None:
        """IKE_SA_INIT { [N(COOKIE),] SA, KEi, Ni, N(NATD_S), N(NATD_D), N(HASH_ALG),
        N(FRAG_SUP) } -->"""
        suites = sa.config.ike_suites()
        if self.dh is None:
            self.dh = DhExchange(suites[0].dh, sa.host.rng)
        if not sa.nonce_i:
            sa.nonce_i = sa.host.rng(NONCE_LEN)
        payloads: list[Payload] = []
        if self.cookie:
            payloads.append(Notify(NotifyType.COOKIE, self.cookie))
        payloads += [
            SA(offer(prefer_group(suites, self.dh.group), b"")),
            KE(self.dh.group, self.dh.public),
            Nonce(sa.nonce_i),
            *natd_notifies(sa),
            hash_algorithms_notify(),
            *fragmentation_notify(sa.config),
        ]
        sa.next_message_id = 0
        [sa.init_request] = sa.send_request(self, ExchangeType.IKE_SA_INIT, payloads, now)

    def process_i(self, sa: IkeSa, msg: Message, now: float) -> None:
        """<-- IKE_SA_INIT { SA, KEr, Nr, N(NATD_S), N(NATD_D), ... } (or COOKIE / INVALID_KE)"""
        cookie = msg.notifies(NotifyType.COOKIE)
        if cookie and len(cookie[0].data) <= 64 and not msg.get(SA):
            # section 2.6: repeat the request with the cookie in front, same nonce and KE
            self.cookie = cookie[0].data
            return self._restart(sa, NotifyType.COOKIE, now)
        invalid_ke = msg.notifies(NotifyType.INVALID_KE_PAYLOAD)
        if invalid_ke:
            group = asked_group(invalid_ke[0])
            if self.dh is None or group not in {s.dh for s in sa.config.ike_suites()}:
                return sa.fail(NotifyType.INVALID_KE_PAYLOAD,
                               f"responder wants DH group {group}", local=False)
            if group != self.dh.group:  # else a late answer to our request before the switch
                # section 1.2: retry with the group the responder asked for
                self.dh = DhExchange(group, sa.host.rng)
            return self._restart(sa, NotifyType.INVALID_KE_PAYLOAD, now)
        err = error_notify(msg)
        if err is not None:
            return sa.fail(err.notify_type, f"peer answered {notify_name(err.notify_type)}",
                           local=False)
        try:
            sa_p, ke, nonce = msg.first(SA), msg.first(KE), msg.first(Nonce)
            if sa_p is None or ke is None or nonce is None or msg.spi_r == bytes(8):
                raise IkeError(NotifyType.INVALID_SYNTAX, "IKE_SA_INIT response lacks SA, KE or Nr")
            _, suite = accept(sa_p.proposals, sa.config.ike_suites(), ProtocolId.IKE)
            shared = complete_ke(self.dh, ke, suite)
        except IkeError as e:
            return sa.fail(e.notify, e.reason, local=True)
        sa.spi_r = msg.spi_r
        sa.nonce_r = nonce.data
        sa.init_response = sa.datagram
        _settle(sa, msg, suite, shared, IKE_PORT)
        if sa.nat_detected:
            # section 2.23: move to port 4500 and put the non-ESP marker in front
            sa.local_port = NAT_T_PORT
            sa.peer_port = NAT_T_PORT
        sa.state = State.EXPECT_AUTH_RESPONSE  # IKE_AUTH, queued by the engine, starts next

    def _restart(self, sa: IkeSa, notify: int, now: float) -> None:
        """Send IKE_SA_INIT again, as the answer asked. When the round trip is longer than
        the retransmission timeout, each copy of the request gets an answer: a late one costs
        one more send, and a responder that never settles ends the negotiation."""
        self.restarts += 1
        if self.restarts > INIT_RESTARTS_MAX:
            return sa.fail(notify, f"responder keeps answering {notify_name(notify)}",
                           local=False)
        self.build_i(sa, now)


def process_r(config: IkeConfig, sa_p: SA, ke: KE) -> tuple[Proposal, Suite]:
    """The responder's choice of an IKE_SA_INIT request's proposals, and its KE check.
    Raises IkeError with the notify (and its data) to refuse it with."""
    prop, suite = choose_for_ke(sa_p.proposals, config.ike_suites(), ProtocolId.IKE, ke.group)
    check_ke(ke, suite.dh)
    return prop, suite


def build_r(sa: IkeSa, msg: Message, data: bytes, prop: Proposal, suite: Suite,
            dh: DhExchange, shared: bytes) -> None:
    """<-- IKE_SA_INIT { SA, KEr, Nr, N(NATD_S), N(NATD_D), N(HASH_ALG), [N(FRAG_SUP)] },
    kept on the new half-open ``sa`` for retransmits of the request (section 2.1); the
    fragmentation notify answers the initiator's (RFC 7383 2.3)."""
    nonce = msg.first(Nonce)
    assert nonce is not None and sa.state == State.EXPECT_AUTH_REQUEST
    sa.nonce_i = nonce.data
    sa.nonce_r = sa.host.rng(NONCE_LEN)
    sa.init_request = data
    sa.last_heard = sa.created
    _settle(sa, msg, suite, shared, sa.local_port)
    payloads = [
        SA((suite.proposal(prop.number, b""),)),
        KE(suite.dh, dh.public),
        Nonce(sa.nonce_r),
        *natd_notifies(sa),
        hash_algorithms_notify(),
        *(fragmentation_notify(sa.config) if sa.fragmentation else []),
    ]
    sa.init_response = Message(sa.spi_i, sa.spi_r, ExchangeType.IKE_SA_INIT, 0, True, False,
                               tuple(payloads)).encode()
    sa.expected_message_id = 1
