"""A key speaks only for the addresses it was published for (docs/architecture.md section 3).

The key lookup gets the typed ID (type and data, never its text) and answers with a PeerKey:
the public key and the addresses it vouches for. The responder narrows the initiator's TSi
to those addresses, never to the outer source address (which an initiator may change during
IKE_AUTH); the initiator accepts a CHILD SA only for a TSr the responder's key vouches for.
"""

from __future__ import annotations

import ipaddress

import pytest
from ike_helpers import ADDR_A, ADDR_B, Link, events, host_key, seeded_rng

from oe.ike.auth import Identity, PeerKey
from oe.ike.constants import IdType, NotifyType
from oe.ike.events import ChildSaEstablished, ChildSaFailed, IkeSaEstablished, IkeSaFailed
from oe.ike.sa import IkeConfig, IkeEngine
from oe.ike.ts import TrafficSelector

ADDR_M = "198.51.100.3"  # mallory: a valid key of its own, and an appetite for A's traffic
NET = TrafficSelector(ipaddress.ip_address("198.51.100.0"), ipaddress.ip_address("198.51.100.255"))


def engine(addr: str, key: str, lookup, seed: int, local_id: Identity | None = None):
    return IkeEngine(IkeConfig(local_addrs=frozenset({addr}), private_key=host_key(key), local_id=local_id),
                     rng=seeded_rng(seed), lookup_key=lookup)


def vouch(key: str, *addrs: str) -> PeerKey:
    return PeerKey(host_key(key).public_key(), frozenset(addrs))


def b_knows(table: dict[Identity, PeerKey]) -> IkeEngine:
    return engine(ADDR_B, "b", table.get, 2)


def initiator(addr: str, key: str, local_id: Identity | None = None) -> IkeEngine:
    return engine(addr, key, {Identity.from_address(ADDR_B): vouch("b", ADDR_B)}.get, 1,
                  local_id)


@pytest.mark.parametrize("lookup_by", ["type_and_data", "text"])
def test_fqdn_id_spelled_as_an_address_does_not_borrow_that_addresss_key(lookup_by):
    """IDi = ID_FQDN "198.51.100.1", signed with the key of 198.51.100.1. Whether the lookup
    is keyed properly or (a careless one) by the ID's text, B refuses: an address's key
    vouches for the address ID, never for a name that reads like it."""
    known = {Identity.from_address(ADDR_A): vouch("a", ADDR_A)}
    lookup = known.get if lookup_by == "type_and_data" else (
        lambda ident: {str(i): k for i, k in known.items()}.get(str(ident)))
    a = initiator(ADDR_A, "a", Identity.fqdn(ADDR_A))
    b = engine(ADDR_B, "b", lookup, 2)
    link = Link(a, b)
    a.initiate(ADDR_B, 0)
    link.roundtrip(a)
    [fb] = events(b)
    assert isinstance(fb, IkeSaFailed) and fb.notify == NotifyType.AUTHENTICATION_FAILED
    assert isinstance(events(a)[0], IkeSaFailed)


def auth_from_a(m_id: Identity | None, vouched: tuple[str, ...], tsi: TrafficSelector):
    """M (key "m", vouched for ``vouched``) runs IKE_SA_INIT from its own address, then sends
    IKE_AUTH { IDi, AUTH, SA, TSi, TSr } from A's address; returns B's events."""
    m = initiator(ADDR_M, "m", m_id)
    b = b_knows({m_id or Identity.from_address(ADDR_M): vouch("m", *vouched)})
    link = Link(m, b)
    m.initiate(ADDR_B, 0, local_ts=[tsi])
    link.transfer(m)  # IKE_SA_INIT -->
    link.transfer(b)  # <-- IKE_SA_INIT
    [(auth, _, _, _)] = m.datagrams_to_send(0)
    b.receive_datagram(auth, (ADDR_A, 500), 0)
    return events(b)


@pytest.mark.parametrize("m_id", [Identity.fqdn("m.example.org"), None],
                         ids=["ID_FQDN", "ID_IPV4_ADDR"])
def test_peer_gets_no_selectors_for_the_source_it_moved_to(m_id):
    """M authenticates with a key that vouches for 198.51.100.3, offers TSi = A's address
    and sends IKE_AUTH from A's address: B must not give it A's traffic."""
    eb = auth_from_a(m_id, (ADDR_M,), TrafficSelector.host(ADDR_A))
    assert [type(e) for e in eb] == [IkeSaEstablished, ChildSaFailed]
    assert eb[1].notify == NotifyType.TS_UNACCEPTABLE


def test_fqdn_peer_is_narrowed_to_the_addresses_its_key_vouches_for():
    """TSi offered as a wide range: B narrows it to the addresses of M's name, not to the
    outer source address."""
    [_, up] = auth_from_a(Identity.fqdn("m.example.org"), (ADDR_M, "198.51.100.4"), NET)
    assert isinstance(up, ChildSaEstablished)
    assert set(up.child.remote_ts) == {TrafficSelector.host(ADDR_M),
                                       TrafficSelector.host("198.51.100.4")}


def test_address_id_needs_a_key_that_vouches_for_that_address():
    """The lookup answers for ID_IPV4_ADDR 198.51.100.1 with a key that vouches for another
    address only (a lookup that mixed up its entries): AUTHENTICATION_FAILED."""
    a = initiator(ADDR_A, "a")
    b = b_knows({Identity.from_address(ADDR_A): vouch("a", ADDR_M)})
    link = Link(a, b)
    a.initiate(ADDR_B, 0)
    link.roundtrip(a)
    [fb] = events(b)
    assert isinstance(fb, IkeSaFailed) and fb.notify == NotifyType.AUTHENTICATION_FAILED


def test_initiator_refuses_a_tsr_the_responders_key_does_not_vouch_for(monkeypatch):
    """A offers TSr = 198.51.100.0/24 to B; B (its key vouches for 198.51.100.2 only) narrows
    it to 198.51.100.3. A refuses the CHILD SA (TS_UNACCEPTABLE) and deletes it."""
    from oe.ike.tasks import common

    a = initiator(ADDR_A, "a")
    b = b_knows({Identity.from_address(ADDR_A): vouch("a", ADDR_A)})
    link = Link(a, b)
    real = common.narrow_as_responder

    def lying(self, msg):
        local, remote = real(self, msg)
        return (TrafficSelector.host(ADDR_M),), remote
    monkeypatch.setattr(common, "narrow_as_responder", lying)
    a.initiate(ADDR_B, 0, remote_ts=[NET])
    link.roundtrip(a)
    ea = events(a)
    assert [type(e) for e in ea] == [IkeSaEstablished, ChildSaFailed]
    assert ea[1].notify == NotifyType.TS_UNACCEPTABLE
    assert a.children(ea[0].sa_id) == []


def test_initiator_takes_a_tsr_the_responders_key_vouches_for():
    """The same wide TSr, narrowed honestly to B itself: accepted."""
    a = initiator(ADDR_A, "a")
    b = b_knows({Identity.from_address(ADDR_A): vouch("a", ADDR_A)})
    link = Link(a, b)
    a.initiate(ADDR_B, 0, remote_ts=[NET])
    link.roundtrip(a)
    ea = events(a)
    assert [type(e) for e in ea] == [IkeSaEstablished, ChildSaEstablished]
    assert ea[1].child.remote_ts == (TrafficSelector.host(ADDR_B),)


EVIL = Identity(IdType.ID_FQDN, b"m.example.org\n2026-11-30 12:00:00 oe: forged line\x1b[2J\xff")


def printable_only(text: str) -> bool:
    return all(" " <= ch <= "~" for ch in text)


def test_peer_id_is_escaped_in_failure_reasons():
    """An unknown ID with control characters: B's failure reason shows them as \\xNN, so the
    peer cannot forge log lines or drive a terminal."""
    m = initiator(ADDR_M, "m", EVIL)
    b = b_knows({})
    m.initiate(ADDR_B, 0)
    Link(m, b).roundtrip(m)
    [fb] = events(b)
    assert isinstance(fb, IkeSaFailed) and printable_only(fb.reason)
    assert "m.example.org\\x0a2026" in fb.reason and "\\x1b" in fb.reason and "\\xff" in fb.reason


def test_peer_id_is_escaped_in_the_established_event():
    m = initiator(ADDR_M, "m", EVIL)
    b = b_knows({EVIL: vouch("m", ADDR_M)})
    link = Link(m, b)
    m.initiate(ADDR_B, 0)
    link.roundtrip(m)
    up = events(b)[0]
    assert isinstance(up, IkeSaEstablished) and printable_only(up.remote_id)
    assert up.remote_id.startswith("m.example.org\\x0a")
