"""Many addresses per host (docs/gateway.md section 1): one engine answers IKE on each of
its addresses with that address as its ID (RFC 7296 3.5: ID_IPV4_ADDR / ID_IPV6_ADDR of the
address the peer contacted), and initiates from the address it is told."""

from __future__ import annotations

import pytest
from ike_helpers import ADDR_A, Link, events, make_engine

from oe.ike.errors import LocalProtocolError
from oe.ike.events import IkeSaEstablished
from oe.ike.ts import TrafficSelector

B1, B2 = "198.51.100.21", "198.51.100.22"
A2 = "198.51.100.11"


def two_address_pair(**cfg_b):
    """A (one address) and B (two addresses, one key for both), linked."""
    a = make_engine(ADDR_A, "a", {B1: "b", B2: "b"}, 1)
    b = make_engine(B1, "b", {ADDR_A: "a"}, 2, local_addrs=frozenset({B1, B2}), **cfg_b)
    return a, b, Link(a, b)


def established(engine) -> list[IkeSaEstablished]:
    return [e for e in events(engine) if isinstance(e, IkeSaEstablished)]


def test_responder_answers_each_address_with_its_own_id():
    a, b, link = two_address_pair()
    sids = {peer: a.initiate(peer, 0) for peer in (B1, B2)}
    link.roundtrip(a)
    # A asked for IDr = the contacted address and authenticated exactly that
    assert {(e.sa_id, e.remote_id) for e in established(a)} == {(sids[B1], B1), (sids[B2], B2)}
    assert sorted(e.local_addr for e in established(b)) == [B1, B2]
    assert sorted(info.local_addr for info in b.ike_sas()) == [B1, B2]
    for peer, sid in sids.items():
        (child,) = a.children(sid)
        assert child.remote_ts == (TrafficSelector.host(peer),)
    assert sorted(c.local_addr for info in b.ike_sas() for c in b.children(info.sa_id)) == [B1, B2]


def test_initial_contact_spares_the_ike_sa_with_our_other_id():
    """RFC 7296 2.4: INITIAL_CONTACT speaks for the pair of identities; A's fresh IKE SA with
    B2 must not forget its IKE SA with B1 (the test above fails without this)."""
    a, b, link = two_address_pair()
    a.initiate(B1, 0)
    link.roundtrip(a)
    a.initiate(B2, 0)
    link.roundtrip(a)
    assert len(b.ike_sas()) == 2 and all(i.state == "ESTABLISHED" for i in b.ike_sas())


def test_answers_leave_from_the_contacted_address():
    a, b, _ = two_address_pair()
    a.initiate(B2, 0)
    [(request, to, port, _)] = a.datagrams_to_send(0)
    b.receive_datagram(request, (ADDR_A, 500), 0, local_port=port, local_addr=to[0])
    [(_, _, _, source)] = b.datagrams_to_send(0)
    assert source == B2


def test_initiator_from_a_chosen_address():
    a = make_engine(ADDR_A, "a", {B1: "b"}, 1, local_addrs=frozenset({ADDR_A, A2}))
    b = make_engine(B1, "b", {A2: "a"}, 2)
    link = Link(a, b)
    sid = a.initiate(B1, 0, local_addr=A2)
    link.roundtrip(a)
    # B authenticated us as A2 (our ID is the address we initiated from)
    [at_b] = established(b)
    assert (at_b.remote_id, at_b.remote_addr) == (A2, A2)
    [at_a] = established(a)
    assert (at_a.sa_id, at_a.local_addr) == (sid, A2)
    assert a.children(sid)[0].local_ts == (TrafficSelector.host(A2),)


def test_initiate_needs_one_of_our_addresses():
    a = make_engine(ADDR_A, "a", {B1: "b"}, 1, local_addrs=frozenset({ADDR_A, A2}))
    with pytest.raises(LocalProtocolError):
        a.initiate(B1, 0)  # which one?
    with pytest.raises(LocalProtocolError):
        a.initiate(B1, 0, local_addr="203.0.113.9")
    assert a.datagrams_to_send(0) == []


def test_datagram_to_an_address_not_ours_is_counted_and_dropped():
    a, b, _ = two_address_pair()
    a.initiate(B1, 0)
    [(request, _, _, _)] = a.datagrams_to_send(0)
    b.receive_datagram(request, (ADDR_A, 500), 0, local_addr="198.51.100.99")
    assert b.datagrams_to_send(0) == [] and b.ike_sas() == []
    assert b.stats()["wrong_address_dropped"] == 1


def test_an_ike_sa_takes_messages_only_on_its_own_address():
    a, b, link = two_address_pair()
    a.initiate(B1, 0)
    link.transfer(a)
    link.transfer(b)
    [(auth, _, port, _)] = a.datagrams_to_send(0)
    b.receive_datagram(auth, (ADDR_A, 500), 0, local_port=port, local_addr=B2)
    assert b.datagrams_to_send(0) == [] and b.stats()["unexpected_dropped"] == 1


def test_half_open_cap_is_per_engine_not_per_address():
    a, b, _ = two_address_pair(half_open_max=1, cookie_threshold=5)
    for peer in (B1, B2):
        a.initiate(peer, 0)
    for request, to, port, _ in a.datagrams_to_send(0):
        b.receive_datagram(request, (ADDR_A, 500), 0, local_port=port, local_addr=to[0])
    assert b.half_open() == 1 and b.stats()["half_open_dropped"] == 1
