"""Inbound ESP SPIs and SA ids shared by the engines of one host (one IkeEngine per family).

The datapath finds an inbound SA by its SPI alone (RFC 4303 section 2.1: the receiver picks
it), so no two live CHILD SAs of the host, in either family, may get the same inbound SPI;
the daemon files SAs by ``sa_id``, so ids must not collide across the engines either.
"""

from __future__ import annotations

import itertools

from ike_helpers import ADDR_A, ADDR_B, Link, events, make_engine

from oe.ike.childpolicy import Refuse
from oe.ike.spis import SpiAllocator

A6, B6 = "2001:db8::1", "2001:db8::2"


def repeating(*values: int):
    """An rng that yields each 32-bit value twice before the next, then the last forever."""
    seq = (v for v in values for _ in range(2))

    def rng(n: int) -> bytes:
        return next(seq, values[-1]).to_bytes(n, "big")
    return rng


def test_allocator_hands_out_unique_spis_of_256_and_up():
    """RFC 4303 2.1: SPIs 1-255 are reserved; a value drawn twice is drawn again."""
    spis = SpiAllocator(repeating(7, 0x1000, 0x1000, 0x2000))
    assert spis.allocate() == 0x1000
    assert spis.allocate() == 0x2000
    assert 0x1000 in spis and 0x2000 in spis and len(spis) == 2


def test_released_spi_can_be_handed_out_again():
    spis = SpiAllocator(repeating(0x1000, 0x1000))
    assert spis.allocate() == 0x1000
    spis.release(0x1000)
    assert 0x1000 not in spis
    assert spis.allocate() == 0x1000


def pair(local: str, peer: str, seed: int, **shared):
    a = make_engine(local, "a", {peer: "b"}, seed, **shared)
    b = make_engine(peer, "b", {local: "a"}, seed + 1000)
    return Link(a, b)


def test_two_engines_sharing_an_allocator_never_collide():
    """An IPv4 and an IPv6 engine with identical rngs (the worst case: every draw repeats)
    share one SpiAllocator and one id source: their inbound SPIs and sa_ids all differ."""
    spis, ids = SpiAllocator(repeating(*range(0x1000, 0x1010))), itertools.count(1)
    v4 = pair(ADDR_A, ADDR_B, seed=5, spis=spis, sa_ids=ids)
    v6 = pair(A6, B6, seed=5, spis=spis, sa_ids=ids)
    sid4 = v4.a.initiate(ADDR_B, 0)
    sid6 = v6.a.initiate(B6, 0)
    v4.roundtrip(v4.a)
    v6.roundtrip(v6.a)
    assert sid4 != sid6
    [c4], [c6] = v4.a.children(sid4), v6.a.children(sid6)
    assert c4.spi_in != c6.spi_in
    v4.a.rekey_child(sid4, c4.spi_in, 0)
    v6.a.rekey_child(sid6, c6.spi_in, 0)
    v4.roundtrip(v4.a)
    v6.roundtrip(v6.a)
    live = [c.spi_in for c in v4.a.children(sid4) + v6.a.children(sid6)]
    assert len(set(live)) == len(live) == 2
    assert set(live) == set(spis.live())


def test_spis_are_released_when_children_and_ike_sas_go():
    """Deleted, rekeyed-away and refused CHILD SAs, and a deleted IKE SA, give their inbound
    SPIs back; nothing leaks."""
    link = pair(ADDR_A, ADDR_B, seed=9)
    a, b = link.a, link.b
    sid = a.initiate(ADDR_B, 0)
    link.roundtrip(a)
    [child] = a.children(sid)
    a.rekey_child(sid, child.spi_in, 0)
    link.roundtrip(a)
    assert set(a.spis.live()) == {c.spi_in for c in a.children(sid)}
    a.rekey_ike(sid, 0)
    link.roundtrip(a)
    assert set(a.spis.live()) == {c.spi_in for c in a.children(sid)}
    assert set(b.spis.live()) == {c.spi_in for c in b.children(1)}
    a.delete_ike(sid, 0)
    link.roundtrip(a)
    events(a), events(b)
    assert len(a.spis) == len(b.spis) == 0


def test_spi_of_a_refused_child_is_released():
    """The responder refuses the CHILD SA of IKE_AUTH (TS_UNACCEPTABLE): the SPI the
    initiator offered for it is free again."""
    link = pair(ADDR_A, ADDR_B, seed=9)
    link.b.child_policy = lambda sa, tsi, tsr: Refuse("refused")
    link.a.initiate(ADDR_B, 0)
    link.roundtrip(link.a)
    assert len(link.a.spis) == 0 and len(link.b.spis) == 0


def test_spi_of_a_failed_negotiation_is_released():
    """IKE_AUTH fails (the responder does not know the initiator's key)."""
    a = make_engine(ADDR_A, "a", {ADDR_B: "b"}, 1)
    b = make_engine(ADDR_B, "b", {}, 2)
    a.initiate(ADDR_B, 0)
    Link(a, b).roundtrip(a)
    assert len(a.spis) == 0 and len(b.spis) == 0
