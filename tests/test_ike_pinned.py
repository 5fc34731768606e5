"""A key a delegating record named, pinned by the initiator (docs/gateway.md 4.3): the
gateway must prove that key, and the IKE SA it authenticates speaks for the clients it was
pinned or vouched for, never for the gateway's own address (RFC 4322 3.2.4.1). One IKE SA
carries the CHILD SAs of several clients (docs/gateway.md 5).

B plays the gateway; its responder answers for any TSr it is asked (what a gateway's
child_policy does for its clients), so that only A's checks are under test.
"""

from __future__ import annotations

from ipaddress import ip_address

import pytest
from ike_helpers import ADDR_A, ADDR_B, Link, events, host_key, make_engine

from oe.ike.auth import PeerKey
from oe.ike.constants import NotifyType
from oe.ike.errors import IkeError, LocalProtocolError
from oe.ike.events import (ChildSaDeleted, ChildSaEstablished, ChildSaFailed, IkeSaEstablished,
                           IkeSaFailed)
from oe.ike.ts import TrafficSelector, narrow

CLIENT = "198.51.100.20"      # behind B; its record names B and B's key
CLIENT_2 = "198.51.100.30"
NOT_A_CLIENT = "198.51.100.40"  # B refuses to answer for it
host = TrafficSelector.host


@pytest.fixture(autouse=True)
def gateway_answers_for_its_clients(monkeypatch):
    """B's responder keeps the TSr asked for (narrowed to one host), as a gateway does."""
    from oe.ike.tasks import common

    def for_clients(sa, msg):
        tsi, tsr = common.selectors_of(msg, "request")
        if tsr[0] == host(NOT_A_CLIENT):
            raise IkeError(NotifyType.TS_UNACCEPTABLE, "not a client of B's")
        return tuple(tsr[:1]), tuple(narrow(tsi, common.vouched(sa)))  # (ours, theirs)
    monkeypatch.setattr(common, "narrow_as_responder", for_clients)


def gateway_pair(a_knows_b: bool = False):
    """A, whose key lookup knows nothing (or B's own key for B's address), and gateway B."""
    a = make_engine(ADDR_A, "a", {ADDR_B: "b"} if a_knows_b else {}, 1)
    b = make_engine(ADDR_B, "b", {ADDR_A: "a"}, 1001)
    return a, b, Link(a, b)


def pinned(key: str, *clients: str) -> PeerKey:
    return PeerKey(host_key(key, 2048).public_key(), frozenset(clients))  # as make_engine


def test_the_pinned_key_authenticates_the_gateway_for_its_client():
    """A's key lookup knows no key at all: the pinned one is used, and the CHILD SA is for the
    client."""
    a, b, link = gateway_pair()
    sa_id = a.initiate(ADDR_B, 0, remote_ts=[host(CLIENT)], peer_key=pinned("b", CLIENT))
    link.roundtrip(a)
    ea = events(a)
    assert [type(e) for e in ea] == [IkeSaEstablished, ChildSaEstablished]
    assert ea[1].child.remote_ts == (host(CLIENT),) and a.children(sa_id)
    # the events say which key each side proved, and for whom it speaks
    assert ea[0].peer_key == pinned("b", CLIENT)
    assert events(b)[0].peer_key.addresses == {ip_address(ADDR_A)}


def test_a_pinned_key_the_gateway_does_not_hold_fails_auth():
    """The record named key "m"; B signs with its own key "b", which A's lookup would vouch
    for B's address: not asked, AUTHENTICATION_FAILED."""
    a, b, link = gateway_pair(a_knows_b=True)
    a.initiate(ADDR_B, 0, remote_ts=[host(CLIENT)], peer_key=pinned("m", CLIENT))
    link.roundtrip(a)
    [failed] = events(a)
    assert isinstance(failed, IkeSaFailed) and failed.local
    assert failed.notify == NotifyType.AUTHENTICATION_FAILED


def test_a_pinned_ike_sa_does_not_speak_for_the_gateways_own_address():
    """The key vouches for the client only: a CHILD SA for B itself is refused, on IKE_AUTH
    and on CREATE_CHILD_SA, even when A's lookup holds B's own key; the failure names the
    request's selectors. A client vouched for later gets its CHILD SA."""
    a, b, link = gateway_pair(a_knows_b=True)
    sa_id = a.initiate(ADDR_B, 0, remote_ts=[host(ADDR_B)], peer_key=pinned("b", CLIENT))
    link.roundtrip(a)
    ea = events(a)
    assert [type(e) for e in ea] == [IkeSaEstablished, ChildSaFailed]
    assert ea[1].notify == NotifyType.TS_UNACCEPTABLE
    assert ea[1].remote_ts == (host(ADDR_B),) and ea[1].local_ts == (host(ADDR_A),)
    a.create_child(sa_id, link.now, local_ts=[host(ADDR_A)], remote_ts=[host(ADDR_B)])
    link.roundtrip(a)
    [refused] = events(a)
    assert isinstance(refused, ChildSaFailed) and refused.remote_ts == (host(ADDR_B),)
    [b_sa] = b.ike_sas()
    assert b.children(b_sa.sa_id) == []       # A deleted what B made (RFC 7296 2.9), twice
    [up] = join(a, link, sa_id, CLIENT_2)
    assert isinstance(up, ChildSaEstablished) and up.child.remote_ts == (host(CLIENT_2),)


def client_ike_sa(a_knows_b: bool = False):
    """A's IKE SA with gateway B, pinned to B's key for CLIENT, with CLIENT's CHILD SA; events
    taken: (A, B, link, A's sa_id)."""
    a, b, link = gateway_pair(a_knows_b)
    sa_id = a.initiate(ADDR_B, 0, remote_ts=[host(CLIENT)], peer_key=pinned("b", CLIENT))
    link.roundtrip(a)
    events(a), events(b)
    return a, b, link, sa_id


def join(a, link, sa_id: int, address: str) -> list:
    """The caller vouches for `address` on the IKE SA and asks for its CHILD SA: A's events."""
    a.vouch(sa_id, address)
    a.create_child(sa_id, link.now, local_ts=[host(ADDR_A)], remote_ts=[host(address)])
    link.roundtrip(a)
    return events(a)


def test_two_clients_on_one_ike_sa_deleting_one_keeps_the_other():
    a, b, link, sa_id = client_ike_sa()
    join(a, link, sa_id, CLIENT_2)
    first, second = a.children(sa_id)
    assert {first.remote_ts, second.remote_ts} == {(host(CLIENT),), (host(CLIENT_2),)}
    events(b)
    a.delete_child(sa_id, first.spi_in, link.now)
    link.roundtrip(a)
    assert [type(e) for e in events(a)] == [ChildSaDeleted]
    [b_sa] = b.ike_sas()
    assert a.children(sa_id) == [second] and len(b.children(b_sa.sa_id)) == 1


def test_vouch_needs_an_established_ike_sa_and_an_address():
    a, b, link = gateway_pair()
    with pytest.raises(LocalProtocolError):
        a.vouch(42, CLIENT)
    sa_id = a.initiate(ADDR_B, 0, remote_ts=[host(CLIENT)], peer_key=pinned("b", CLIENT))
    with pytest.raises(LocalProtocolError):
        a.vouch(sa_id, CLIENT_2)                      # not established yet
    link.roundtrip(a)
    with pytest.raises(ValueError):
        a.vouch(sa_id, "not an address")


def test_a_refused_request_is_named_by_its_selectors():
    """ChildSaFailed carries the selectors of the request that failed, so the daemon fails
    that client's negotiation and no other of the IKE SA (docs/gateway.md 5)."""
    a, b, link, sa_id = client_ike_sa()
    [failed] = join(a, link, sa_id, NOT_A_CLIENT)
    assert isinstance(failed, ChildSaFailed) and failed.notify == NotifyType.TS_UNACCEPTABLE
    assert (failed.local_ts, failed.remote_ts) == ((host(ADDR_A),), (host(NOT_A_CLIENT),))
    assert len(a.children(sa_id)) == 1


def test_the_gateways_own_address_once_vouched_gets_a_child_sa():
    """Its own record vouching for it (the caller's to check), the gateway's address may join."""
    a, b, link, sa_id = client_ike_sa()
    [up] = join(a, link, sa_id, ADDR_B)
    assert isinstance(up, ChildSaEstablished) and up.child.remote_ts == (host(ADDR_B),)
