"""CREATE_CHILD_SA for the IKE SA itself (RFC 7296 sections 1.3.2, 2.18): a new IKE SA takes
the CHILD SAs and the task queue, the old one finishes what is under way and is deleted by
the rekey's initiator.

Collision: a peer's IKE SA rekey while a request of ours is in flight (its own IKE rekey, or
anything whose answer could die with the old IKE SA) is refused with TEMPORARY_FAILURE and
tried again later (sections 2.8.2, 2.25).
"""

from __future__ import annotations

from collections import deque

from oe.ike.constants import NONCE_LEN, ExchangeType, NotifyType, ProtocolId
from oe.ike.crypto import DhExchange
from oe.ike.errors import IkeError
from oe.ike.events import ChildSaFailed, IkeSaRekeyed
from oe.ike.ike_sa import IkeSa, State
from oe.ike.keymat import rekey_skeyseed
from oe.ike.message import KE, SA, Message, Nonce, Notify, Payload
from oe.ike.proposals import Suite, accept, choose_for_ke, offer, prefer_group
from oe.ike.tasks.common import complete_ke, error_answer, ike_keys, respond_ke
from oe.ike.tasks.informational import DeleteIke


def _rekeyed_to(sa: IkeSa, we_initiated: bool, spi_i: bytes, spi_r: bytes, suite: Suite,
                nonce_i: bytes, nonce_r: bytes, shared: bytes, now: float) -> None:
    """Make the new IKE SA, hand it the CHILD SAs and retire ``sa`` (section 2.18)."""
    assert sa.keys is not None
    seed = rekey_skeyseed(sa.keys.prf, sa.keys.sk_d, shared, nonce_i, nonce_r)
    new = IkeSa(sa.host, sa.sa_id, we_initiated, spi_i, spi_r, (sa.peer_addr, sa.peer_port),
                (sa.local_addr, sa.local_port), State.ESTABLISHED, now)
    new.established_at = new.last_heard = now
    new.suite = suite
    new.keys = ike_keys(suite, seed, nonce_i, nonce_r, spi_i, spi_r)
    new.nat_detected = sa.nat_detected
    new.behind_nat, new.next_keepalive = sa.behind_nat, sa.next_keepalive
    new.peer_id, new.peer_key = sa.peer_id, sa.peer_key
    new.peer_hashes = sa.peer_hashes
    new.fragmentation = sa.fragmentation  # what IKE_SA_INIT settled holds on (RFC 7383 2.3)
    # shared, so that exchanges still finishing on the old IKE SA update the new one's list
    new.children = sa.children
    new.queue = sa.queue
    sa.queue = deque()
    sa.successor = new
    sa.state = State.REKEYED
    sa.retired_at = now
    sa.host.add(new)
    sa.emit(IkeSaRekeyed(sa.sa_id, sa.spi_i, sa.spi_r, spi_i, spi_r))
    new.request_done(now)  # start what was queued on the old IKE SA


class RekeyIke:
    """The IKE SA rekey as initiator. Its own state: the DH group offered first (the
    responder may ask for another), and our KE, nonce and new SPI of the request in flight."""

    def __init__(self) -> None:
        self.group: int | None = None
        self.dh: DhExchange | None = None
        self.nonce = b""
        self.new_spi = b""

    def build_i(self, sa: IkeSa, now: float) -> None:
        """CREATE_CHILD_SA { SA, Ni, KEi } -->"""
        if sa.state != State.ESTABLISHED:
            return
        suites = sa.config.ike_suites()
        group = self.group = self.group or suites[0].dh
        self.dh = DhExchange(group, sa.host.rng)
        self.nonce = sa.host.rng(NONCE_LEN)
        self.new_spi = sa.host.new_ike_spi()
        payloads: list[Payload] = [SA(offer(prefer_group(suites, group), self.new_spi)),
                                   Nonce(self.nonce), KE(group, self.dh.public)]
        sa.send_request(self, ExchangeType.CREATE_CHILD_SA, payloads, now)

    def process_i(self, sa: IkeSa, msg: Message, now: float) -> None:
        """<-- CREATE_CHILD_SA { SA, Nr, KEr }"""
        if error_answer(sa, self, msg, sa.config.ike_suites(), now, "IKE rekey refused: "):
            return
        try:
            sa_p, nr, ke = msg.first(SA), msg.first(Nonce), msg.first(KE)
            if sa_p is None or nr is None or ke is None:
                raise IkeError(NotifyType.INVALID_SYNTAX, "IKE rekey response lacks SA/Nr/KEr")
            _, suite = accept(sa_p.proposals, sa.config.ike_suites(), ProtocolId.IKE)
            if len(sa_p.proposals[0].spi) != 8:
                raise IkeError(NotifyType.INVALID_KE_PAYLOAD, "KEr does not match")
            shared = complete_ke(self.dh, ke, suite)
        except IkeError as e:
            sa.emit(ChildSaFailed(sa.sa_id, e.notify, f"IKE rekey failed: {e.reason}"))
            return
        _rekeyed_to(sa, True, self.new_spi, sa_p.proposals[0].spi, suite, self.nonce, nr.data,
                    shared, now)
        # section 2.18: the initiator of the rekey deletes the old IKE SA
        DeleteIke().build_i(sa, now)


def process_r(sa: IkeSa, msg: Message, sa_p: SA, nonce: Nonce, ke: KE | None,
              now: float) -> None:
    """CREATE_CHILD_SA { SA, Ni, KEi } --> answered { SA, Nr, KEr }"""
    mid = msg.message_id
    if sa.request is not None:
        # A request of ours is in flight on this IKE SA: its answer could be lost with the
        # old SA, and if it is our own IKE rekey (simultaneous rekeys, section 2.8.2) both
        # sides would make a new IKE SA. Refuse; the peer tries again later (2.25).
        return sa.respond(ExchangeType.CREATE_CHILD_SA, mid,
                          [Notify(NotifyType.TEMPORARY_FAILURE)])
    try:
        prop, suite = choose_for_ke(sa_p.proposals, sa.config.ike_suites(), ProtocolId.IKE,
                                    ke.group if ke is not None else None)
        if len(prop.spi) != 8:
            raise IkeError(NotifyType.INVALID_SYNTAX, "IKE rekey without an 8-byte SPI")
        dh, shared = respond_ke(suite, ke, sa.host.rng)
    except IkeError as e:
        return sa.respond(ExchangeType.CREATE_CHILD_SA, mid, [Notify(e.notify, e.data)])
    assert dh is not None
    new_spi = sa.host.new_ike_spi()
    nonce_r = sa.host.rng(NONCE_LEN)
    sa.respond(ExchangeType.CREATE_CHILD_SA, mid, [
        SA((suite.proposal(prop.number, new_spi),)), Nonce(nonce_r), KE(dh.group, dh.public),
    ])
    _rekeyed_to(sa, False, prop.spi, new_spi, suite, nonce.data, nonce_r, shared, now)
