"""CREATE_CHILD_SA for a CHILD SA (RFC 7296 section 1.3.1) and its rekey (1.3.3, 2.8).

Collisions (found by the hypothesis state machine in tests/test_ike_fuzz.py):

- both sides rekey one CHILD SA: both exchanges complete, and the SA made by the exchange
  with the lowest of the four nonces is deleted by its initiator (section 2.8.1);
- an IKE SA rekey overtaking a CHILD SA exchange: the CHILD SA list is shared with the new
  IKE SA and follow-up exchanges go to whichever IKE SA is alive;
- a DELETE for a CHILD SA whose CREATE_CHILD_SA answer we have not seen yet: remembered, and
  that SA is dropped when the (retransmitted) answer arrives.
"""

from __future__ import annotations

from oe.ike.constants import (
    NONCE_LEN,
    ExchangeType,
    NotifyType,
    ProtocolId,
)
from oe.ike.crypto import DhExchange
from oe.ike.errors import IkeError
from oe.ike.events import ChildSaFailed
from oe.ike.ike_sa import Child, IkeSa
from oe.ike.message import KE, SA, Message, Nonce, Notify, Payload
from oe.ike.proposals import accept, choose_for_ke, offer, prefer_group
from oe.ike.tasks import common
from oe.ike.tasks.common import (
    Selectors,
    complete_ke,
    error_answer,
    make_child,
    respond_ke,
    ts_payloads,
)
from oe.ike.tasks.informational import DeleteChildren, DeleteRefused


def _rekey_collision(old: Child) -> list[Child]:
    """Section 2.8.1: both sides rekeyed ``old``; the SA made by the exchange with the
    lowest of the four nonces is redundant and its creator deletes it. Returns the SAs
    we must delete (ours, if our exchange had the lowest nonce)."""
    if old.own_rekey is None or old.peer_rekey is None:
        return []
    if old.own_rekey[0] < old.peer_rekey[0]:
        return [old.own_rekey[1]]
    return []


class CreateChild:
    """CREATE_CHILD_SA as initiator: one more CHILD SA, or the rekey of ``old``. Its own
    state: the DH group to offer first (the responder may ask for another), and our nonce,
    KE and inbound SPI of the request in flight."""

    def __init__(self, old: Child | None, local_ts: Selectors, remote_ts: Selectors) -> None:
        self.old = old
        self.local_ts = local_ts
        self.remote_ts = remote_ts
        self.group: int | None = None
        self.nonce = b""
        self.dh: DhExchange | None = None
        self.spi_in = b""

    def build_i(self, sa: IkeSa, now: float) -> None:
        """CREATE_CHILD_SA { [N(REKEY_SA),] SA, Ni, [KEi,] TSi, TSr } -->"""
        old = self.old
        if old is not None:
            if old not in sa.children:
                return sa.request_done(now)  # deleted while the rekey waited in the queue
            old.rekeying = True
        suites = sa.config.esp_suites()
        if self.group is None:
            self.group = suites[0].dh
        group = self.group
        self.dh = DhExchange(group, sa.host.rng) if group else None
        self.nonce = sa.host.rng(NONCE_LEN)
        self.spi_in = sa.new_spi_in()
        payloads: list[Payload] = []
        if old is not None:
            payloads.append(Notify(NotifyType.REKEY_SA, protocol=ProtocolId.ESP,
                                   spi=old.sa.spi_in.to_bytes(4, "big")))
        payloads += [SA(offer(prefer_group(suites, group), self.spi_in)), Nonce(self.nonce)]
        if self.dh is not None:
            payloads.append(KE(self.dh.group, self.dh.public))
        payloads += ts_payloads(self.local_ts, self.remote_ts)
        sa.send_request(self, ExchangeType.CREATE_CHILD_SA, payloads, now,
                        spi_in=int.from_bytes(self.spi_in, "big"))

    def process_i(self, sa: IkeSa, msg: Message, now: float) -> None:
        """<-- CREATE_CHILD_SA { SA, Nr, [KEr,] TSi, TSr }"""
        old = self.old
        if old is not None:
            old.rekeying = False
        if error_answer(sa, self, msg, sa.config.esp_suites(), now, "peer answered "):
            return
        try:
            new = self._child_from_response(sa, msg)
        except IkeError as e:
            sa.emit(ChildSaFailed(sa.sa_id, e.notify, e.reason, self.local_ts, self.remote_ts))
            if msg.first(SA) is not None:
                # section 2.9: the peer made a CHILD SA we cannot accept; delete it
                sa.start(DeleteRefused(self.spi_in), now)
            return
        if new.sa.spi_out in sa.early_deletes:
            # the peer answered, lost the answer, then deleted the SA before our
            # retransmission fetched that answer again: it never comes to life
            sa.emit(ChildSaFailed(sa.sa_id, None, "deleted by peer before it was up",
                                  self.local_ts, self.remote_ts))
            return
        if not sa.adopt(new, old) or old is None:
            return
        nonce_r = msg.first(Nonce)
        assert nonce_r is not None
        old.own_rekey = (min(self.nonce, nonce_r.data), new)
        redundant = _rekey_collision(old)
        if old not in sa.children:
            return  # the peer deleted the old one while we rekeyed
        # section 2.8: the initiator of the rekey deletes the old CHILD SA (on the IKE SA
        # that now holds it, should an IKE rekey have overtaken this exchange)
        sa.live().start(DeleteChildren([old] + redundant), now, front=True)

    def _child_from_response(self, sa: IkeSa, msg: Message) -> Child:
        sa_p, nonce = msg.first(SA), msg.first(Nonce)
        if sa_p is None or nonce is None:
            raise IkeError(NotifyType.INVALID_SYNTAX, "CREATE_CHILD_SA response lacks SA or Nr")
        _, suite = accept(sa_p.proposals, sa.config.esp_suites(), ProtocolId.ESP)
        sa.check_peer_spi(sa_p.proposals[0].spi)
        shared = complete_ke(self.dh, msg.first(KE), suite)
        local_ts, remote_ts = common.check_narrowed(sa, msg, self.local_ts, self.remote_ts)
        return make_child(sa, suite, self.spi_in, sa_p.proposals[0].spi, self.nonce,
                          nonce.data, shared, local_ts, remote_ts, we_initiated=True)


def process_r(sa: IkeSa, msg: Message, sa_p: SA, nonce: Nonce, ke: KE | None,
              now: float) -> None:
    """CREATE_CHILD_SA { [N(REKEY_SA),] SA, Ni, [KEi,] TSi, TSr } --> answered"""
    mid = msg.message_id
    rekey = next((n for n in msg.notifies(NotifyType.REKEY_SA)), None)
    old: Child | None = None
    if rekey is not None:
        old = sa.find_child(spi_out=int.from_bytes(rekey.spi, "big"))
        if old is None:
            return sa.respond(ExchangeType.CREATE_CHILD_SA, mid,
                              [Notify(NotifyType.CHILD_SA_NOT_FOUND, protocol=rekey.protocol,
                                      spi=rekey.spi)])
    elif len(sa.children) >= sa.config.children_per_ike:
        # section 1.3: an authenticated peer still cannot make us hold SAs without bound
        return sa.respond(ExchangeType.CREATE_CHILD_SA, mid,
                          [Notify(NotifyType.NO_ADDITIONAL_SAS)])
    try:
        prop, suite = choose_for_ke(sa_p.proposals, sa.config.esp_suites(), ProtocolId.ESP,
                                    ke.group if ke is not None else None)
        sa.check_peer_spi(prop.spi)
        # before the DH work: a request that waits for DNS costs nothing (docs/gateway.md 4.2)
        local_ts, remote_ts = common.narrow_as_responder(sa, msg)
        dh, shared = respond_ke(suite, ke, sa.host.rng)
    except IkeError as e:
        sa.respond(ExchangeType.CREATE_CHILD_SA, mid, [Notify(e.notify, e.data)])
        if e.notify != NotifyType.INVALID_KE_PAYLOAD:  # that one is retried (1.3)
            sa.emit(ChildSaFailed(sa.sa_id, e.notify, e.reason))
        return
    spi_in = sa.new_spi_in()
    nonce_r = sa.host.rng(NONCE_LEN)
    child = make_child(sa, suite, spi_in, prop.spi, nonce.data, nonce_r, shared, local_ts,
                       remote_ts, we_initiated=False)
    payloads: list[Payload] = [SA((suite.proposal(prop.number, spi_in),)), Nonce(nonce_r)]
    if dh is not None:
        payloads.append(KE(dh.group, dh.public))
    payloads += ts_payloads(remote_ts, local_ts)
    sa.respond(ExchangeType.CREATE_CHILD_SA, mid, payloads)
    if not sa.adopt(child, old) or old is None:
        return
    if old.rekeying or old.own_rekey is not None:
        old.peer_rekey = (min(nonce.data, nonce_r), child)
        redundant = _rekey_collision(old)
        if redundant:
            sa.start(DeleteChildren(redundant), now)
