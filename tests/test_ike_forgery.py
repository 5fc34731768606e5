"""An on-path attacker without keys: cleartext messages dressed as responses to our requests.

Every request of ours is visible on the wire (SPIs, Message ID). A forged answer sent as an
unprotected IKE_SA_INIT response with that Message ID must never reach the request's handler:
only the IKE_SA_INIT response, in the state that awaits it, goes without integrity protection
(RFC 7296 sections 2.6, 3.1, 3.14). Replays of anything, forged or genuine, change nothing.
"""

from __future__ import annotations

import random

import pytest
from ike_helpers import ADDR_A, ADDR_B, Link, established_pair, events, ike_pair

from oe.ike.constants import ExchangeType, NotifyType, ProtocolId
from oe.ike.crypto import DhExchange
from oe.ike.events import (
    ChildSaDeleted,
    ChildSaEstablished,
    ChildSaFailed,
    ChildSaRekeyed,
    IkeSaEstablished,
    IkeSaRekeyed,
)
from oe.ike.message import KE, SA, TS, Message, Nonce, Notify, parse_header, parse_message
from oe.ike.proposals import parse_proposal
from oe.ike.ts import TrafficSelector

ATTACKER_SPI = b"\xaa\xbb\xcc\xdd"
mallory = random.Random(666).randbytes


def forged_answer(request: bytes, payloads: tuple = ()) -> bytes:
    """A cleartext 'IKE_SA_INIT response' carrying the Message ID of ``request``."""
    h = parse_header(request)
    return Message(h.spi_i, h.spi_r, ExchangeType.IKE_SA_INIT, h.message_id, True,
                   not h.from_initiator, tuple(payloads)).encode()


def child_payloads() -> tuple:
    """<-- { SA(attacker's SPI), Nr, TSi, TSr }: what a CHILD rekey's handler wants."""
    [suite] = parse_proposal("aes128gcm16", ProtocolId.ESP)
    return (SA((suite.proposal(1, ATTACKER_SPI),)), Nonce(mallory(32)),
            TS(True, (TrafficSelector.host(ADDR_A).to_wire(),)),
            TS(False, (TrafficSelector.host(ADDR_B).to_wire(),)))


def ike_rekey_payloads() -> tuple:
    """<-- { SA(attacker's IKE SPI), Nr, KEr(attacker's DH) }"""
    [suite] = parse_proposal("aes128-sha256-x25519", ProtocolId.IKE)
    dh = DhExchange(suite.dh, mallory)
    return (SA((suite.proposal(1, mallory(8)),)), Nonce(mallory(32)), KE(dh.group, dh.public))


def state(engine):
    """Everything a forgery could change: each IKE SA's SPIs, state, Message IDs and children."""
    return sorted(
        (sa.sa_id, sa.spi_i, sa.spi_r, sa.state.name, sa.next_message_id,
         sa.expected_message_id, tuple((c.sa.spi_in, c.sa.spi_out) for c in sa.children))
        for sa in engine._sas.values()
    )


def start(a, sid, child, what):
    if what == "child_rekey":
        a.rekey_child(sid, child.spi_in, 0)
        return child_payloads()
    if what == "ike_rekey":
        a.rekey_ike(sid, 0)
        return ike_rekey_payloads()
    if what == "delete_child":
        a.delete_child(sid, child.spi_in, 0)
        return ()
    if what == "delete_ike":
        a.delete_ike(sid, 0)
        return ()
    a.check_liveness(sid, 0)
    return ()


@pytest.mark.parametrize("what", ["child_rekey", "ike_rekey", "delete_child", "delete_ike",
                                  "liveness"])
def test_forged_cleartext_response_to_a_protected_request_changes_nothing(what):
    """CREATE_CHILD_SA / INFORMATIONAL { ... } --> in flight; the attacker answers first with
    a cleartext IKE_SA_INIT-typed response of the same Message ID, twice. Nothing happens;
    the genuine answer still completes the exchange."""
    link, sid, child = established_pair()
    a, b = link.a, link.b
    payloads = start(a, sid, child, what)
    [(request, _, _, _)] = a.datagrams_to_send(0)
    before = state(a)
    forgery = forged_answer(request, payloads)
    for _ in range(2):  # a forgery, then its replay
        a.receive_datagram(forgery, (ADDR_B, 500), 0.1)
        assert events(a) == []
        assert a.datagrams_to_send(0.1) == []
        assert state(a) == before
    assert a.stats()["forged_dropped"] == 2
    # the real answer still arrives and is taken
    b.receive_datagram(request, (ADDR_A, 500), 0.2)
    link.roundtrip(b)
    got = [type(e) for e in events(a)]
    want = {"child_rekey": [ChildSaRekeyed, ChildSaDeleted], "ike_rekey": [IkeSaRekeyed],
            "delete_child": [ChildSaDeleted], "delete_ike": [ChildSaDeleted],
            "liveness": []}[what]
    assert got[:len(want)] == want
    assert all(ATTACKER_SPI not in e.child.spi_out.to_bytes(4, "big")
               for e in events(a) if isinstance(e, ChildSaRekeyed))


def test_forged_cleartext_ike_auth_answer_changes_nothing():
    """IKE_AUTH { IDi, AUTH, SA, TSi, TSr } --> in flight; a cleartext 'response' with its
    Message ID and N(AUTHENTICATION_FAILED) must not end the negotiation."""
    a, b = ike_pair()
    link = Link(a, b)
    a.initiate(ADDR_B, 0)
    link.transfer(a)
    link.transfer(b)
    [(auth_request, _, _, _)] = a.datagrams_to_send(0)
    before = state(a)
    forgery = forged_answer(auth_request, (Notify(NotifyType.AUTHENTICATION_FAILED),))
    a.receive_datagram(forgery, (ADDR_B, 500), 0.1)
    assert events(a) == [] and state(a) == before
    b.receive_datagram(auth_request, (ADDR_A, 500), 0.2)
    link.transfer(b)
    assert [type(e) for e in events(a)][:1] == [IkeSaEstablished]


def test_cleartext_ike_sa_init_answer_needs_message_id_zero_and_our_spi():
    """Even in EXPECT_SA_INIT_RESPONSE, a cleartext answer with another Message ID is no
    answer to our IKE_SA_INIT request."""
    a, b = ike_pair()
    a.initiate(ADDR_B, 0)
    [(request, _, _, _)] = a.datagrams_to_send(0)
    h = parse_header(request)
    wrong_id = Message(h.spi_i, mallory(8), ExchangeType.IKE_SA_INIT, 1, True, False,
                       (Notify(NotifyType.NO_PROPOSAL_CHOSEN),)).encode()
    other_spi = Message(mallory(8), mallory(8), ExchangeType.IKE_SA_INIT, 0, True, False,
                        (Notify(NotifyType.NO_PROPOSAL_CHOSEN),)).encode()
    before = state(a)
    for forgery in (wrong_id, other_spi):
        a.receive_datagram(forgery, (ADDR_B, 500), 0.1)
    assert events(a) == [] and state(a) == before


def test_replayed_genuine_responses_change_nothing():
    """Each answer is taken once: replaying the IKE_SA_INIT response, the IKE_AUTH response
    and a CREATE_CHILD_SA response after they were handled yields no event, no SA change
    and never a second ChildSaRekeyed for one SPI pair."""
    a, b = ike_pair()
    link = Link(a, b)
    sid = a.initiate(ADDR_B, 0)
    link.transfer(a)
    [init_answer] = link.transfer(b)
    link.transfer(a)
    [auth_answer] = link.transfer(b)
    events(a), events(b)
    child = a.children(sid)[0]
    a.rekey_child(sid, child.spi_in, 0)
    link.transfer(a)
    [rekey_answer] = link.transfer(b)
    [rekeyed] = [e for e in events(a) if isinstance(e, ChildSaRekeyed)]
    link.roundtrip(a)
    events(a), events(b)
    before = state(a)
    for answer in (init_answer, auth_answer, rekey_answer):
        a.receive_datagram(answer, (ADDR_B, 500), 1.0)
    assert events(a) == [] and a.datagrams_to_send(1.0) == [] and state(a) == before
    assert rekeyed.child.spi_in in {c.spi_in for c in a.children(sid)}


def test_an_exchange_handler_run_twice_reports_its_child_sa_once():
    """The last line of defence behind the gate: a CHILD SA is reported only on an inbound
    SPI its IKE SA offered and no CHILD SA took yet. Running the CREATE_CHILD_SA answer's
    handler a second time (as a replay would, had it got through) reports nothing."""
    link, sid, child = established_pair()
    a, b = link.a, link.b
    a.rekey_child(sid, child.spi_in, 0)
    sa = a._by_id[sid]
    task = sa.request.task
    [(request, _, _, _)] = a.datagrams_to_send(0)
    b.receive_datagram(request, (ADDR_A, 500), 0)
    [(answer, _, _, _)] = b.datagrams_to_send(0)
    header, msg = parse_message(answer)
    sa.datagram = answer
    inner = sa._open(header, msg, 0)
    a.receive_datagram(answer, (ADDR_B, 500), 0)
    assert [type(e) for e in events(a)] == [ChildSaRekeyed]
    task.process_i(sa, inner, 0.1)
    assert not [e for e in events(a) if isinstance(e, (ChildSaRekeyed, ChildSaEstablished))]


@pytest.mark.parametrize("rekeyer", ["a", "b"])
def test_a_peer_cannot_reuse_its_live_spi_for_a_new_child(rekeyer, monkeypatch):
    """An authenticated peer (B) answers, or starts, a CHILD SA rekey with the SPI its old
    CHILD SA still uses: A refuses the new SA, reports no ChildSaRekeyed, keeps the old one."""
    link, sid, child = established_pair()
    a, b = link.a, link.b
    monkeypatch.setattr(b.spis, "allocate", lambda: child.spi_out)
    if rekeyer == "a":
        a.rekey_child(sid, child.spi_in, 0)
    else:
        b.rekey_child(1, child.spi_out, 0)
    link.roundtrip(a)
    link.roundtrip(b)
    kinds = [type(e) for e in events(a)]
    assert ChildSaRekeyed not in kinds and ChildSaFailed in kinds
    assert [(c.spi_in, c.spi_out) for c in a.children(sid)] == [(child.spi_in, child.spi_out)]


def in_each_state():
    """(name, engine, its IKE SA) for an IKE SA in each state that takes messages; nothing
    is waiting to be sent when it is yielded."""
    a, b = ike_pair()
    link = Link(a, b)

    def sent(engine):
        [(data, _, _, _)] = engine.datagrams_to_send(0)
        return data

    sid = a.initiate(ADDR_B, 0)
    init = sent(a)
    yield "EXPECT_SA_INIT_RESPONSE", a, a._by_id[sid]
    b.receive_datagram(init, (ADDR_A, 500), 0)
    init_answer = sent(b)
    yield "EXPECT_AUTH_REQUEST", b, b._by_id[1]
    a.receive_datagram(init_answer, (ADDR_B, 500), 0)
    auth = sent(a)
    yield "EXPECT_AUTH_RESPONSE", a, a._by_id[sid]
    b.receive_datagram(auth, (ADDR_A, 500), 0)
    link.roundtrip(b)
    a.check_liveness(sid, 0)
    liveness = sent(a)
    yield "ESTABLISHED", a, a._by_id[sid]
    b.receive_datagram(liveness, (ADDR_A, 500), 0)
    link.roundtrip(b)
    old = a._by_id[sid]
    a.rekey_ike(sid, 0)
    link.transfer(a)
    link.transfer(b)
    sent(a)  # INFORMATIONAL { D(IKE) } for the old IKE SA: in flight
    yield "REKEYED", a, old


def test_no_cleartext_message_but_our_ike_sa_init_answer_is_taken_in_any_state():
    """Every exchange type, as request and as response, with Message IDs 0-3, in cleartext
    with the IKE SA's own SPIs: in every state nothing is answered, reported or changed,
    except the answer to our IKE_SA_INIT request (Message ID 0, EXPECT_SA_INIT_RESPONSE)."""
    for name, engine, sa in in_each_state():
        events(engine)
        assert sa.state.name == name
        before = state(engine)
        for exchange in (ExchangeType.IKE_SA_INIT, ExchangeType.IKE_AUTH,
                         ExchangeType.CREATE_CHILD_SA, ExchangeType.INFORMATIONAL):
            for response in (False, True):
                for message_id in range(4):
                    if (name, exchange, response, message_id) == (
                            "EXPECT_SA_INIT_RESPONSE", ExchangeType.IKE_SA_INIT, True, 0):
                        continue
                    forgery = Message(sa.spi_i, sa.spi_r, exchange, message_id, response,
                                      not sa.initiator,
                                      (Notify(NotifyType.AUTHENTICATION_FAILED),)).encode()
                    engine.receive_datagram(forgery, (ADDR_B if sa.initiator else ADDR_A, 500),
                                            0)
                    assert events(engine) == [], (name, exchange, response, message_id)
                    assert engine.datagrams_to_send(0) == []
                    assert state(engine) == before
