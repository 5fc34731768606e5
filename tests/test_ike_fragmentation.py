"""IKE fragmentation (RFC 7383) in the engine: IKE_AUTH with 4096-bit keys cut into SKF
fragments that fit a small path, both ways, and whatever arrives in their place (forged,
duplicated, out of range, too many, out of order, a fragmented IKE_SA_INIT) is dropped and
counted without breaking the exchange."""

from __future__ import annotations

import random

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from ike_helpers import ADDR_A, ADDR_B, Link, events, make_engine

from oe.ike.constants import ExchangeType, Flag, NotifyType, PayloadType
from oe.ike.events import ChildSaEstablished, IkeSaEstablished
from oe.ike.fragment import MAX_FRAGMENTS, datagram_size
from oe.ike.message import Header, parse_header, parse_message
from oe.ike.ts import TrafficSelector

FRAG = 576
"""fragment_size for these tests: a 4096-bit IKE_AUTH needs two or three fragments."""


def big_pair(seed: int = 1, cfg_a: dict | None = None, cfg_b: dict | None = None):
    a = make_engine(ADDR_A, "a", {ADDR_B: "b"}, seed, key_bits=4096,
                    **{"fragment_size": FRAG, **(cfg_a or {})})
    b = make_engine(ADDR_B, "b", {ADDR_A: "a"}, seed + 1000, key_bits=4096,
                    **{"fragment_size": FRAG, **(cfg_b or {})})
    return a, b, Link(a, b)


def is_fragment(datagram: bytes) -> bool:
    return parse_header(datagram).next_payload == PayloadType.SKF


def sent(engine) -> list[bytes]:
    """What `engine` has queued, taken from it without delivering it."""
    return [d for d, _, _, _ in engine.datagrams_to_send(0)]


def deliver(receiver, datagrams: list[bytes], src: str, now: float = 0.0) -> None:
    for d in datagrams:
        receiver.receive_datagram(d, (src, 500), now)


def up_to_auth(link: Link) -> int:
    """IKE_SA_INIT both ways: A's IKE_AUTH request is queued, not sent."""
    sid = link.a.initiate(ADDR_B, 0)
    link.transfer(link.a)
    link.transfer(link.b)
    return sid


def sa_of(engine):
    [sa] = engine._by_id.values()
    return sa


def assert_established(a, b) -> None:
    ev_a, ev_b = events(a), events(b)
    assert any(isinstance(e, IkeSaEstablished) for e in ev_a), ev_a
    assert any(isinstance(e, IkeSaEstablished) for e in ev_b), ev_b
    [ca] = [e.child for e in ev_a if isinstance(e, ChildSaEstablished)]
    [cb] = [e.child for e in ev_b if isinstance(e, ChildSaEstablished)]
    assert (ca.spi_in, ca.key_in) == (cb.spi_out, cb.key_out)


def sealed_fragment(engine, message_id: int, number: int, total: int, chunk: bytes,
                    exchange: int = ExchangeType.IKE_AUTH) -> bytes:
    """An authentic SKF of the initiator `engine`'s IKE SA, with any numbers (a peer that
    has the keys and misbehaves)."""
    sa = sa_of(engine)
    head = Header(sa.spi_i, sa.spi_r, 0, exchange, Flag.INITIATOR, message_id, 0).encode()
    return sa.keys.cipher(True).seal(head, PayloadType.IDi if number == 1 else 0, chunk,
                                     random.Random(number).randbytes, fragment=(number, total))


def test_both_sides_announce_fragmentation_in_ike_sa_init():
    a, b, link = big_pair()
    a.initiate(ADDR_B, 0)
    [request] = link.transfer(a)
    [response] = link.transfer(b)
    for d in (request, response):
        assert parse_message(d)[1].notifies(NotifyType.IKEV2_FRAGMENTATION_SUPPORTED)
    assert sa_of(a).fragmentation and sa_of(b).fragmentation


def test_ike_auth_crosses_as_fragments_both_ways():
    a, b, link = big_pair()
    up_to_auth(link)
    request = link.transfer(a)
    response = link.transfer(b)
    assert len(request) >= 2 and len(response) >= 2
    assert all(is_fragment(d) and datagram_size(len(d), 4, False) <= FRAG
               for d in request + response)
    assert_established(a, b)
    assert a.stats()["fragment_completed"] == 1 and b.stats()["fragment_completed"] == 1


def test_ike_sa_init_is_never_fragmented():
    """RFC 7383 2.5.3: even when it is larger than the fragment size (MODP-3072's KE)."""
    modp = {"ike_proposals": ("aes128-sha256-modp3072",)}
    a, b, link = big_pair(cfg_a=modp, cfg_b=modp)
    a.initiate(ADDR_B, 0)
    [request] = link.transfer(a)
    [response] = link.transfer(b)
    assert not is_fragment(request) and not is_fragment(response)
    assert datagram_size(len(request), 4, False) > FRAG
    assert datagram_size(len(response), 4, False) > FRAG
    link.roundtrip(a)
    assert_established(a, b)


def test_a_fragment_size_below_576_is_refused():
    with pytest.raises(ValueError, match="fragment_size 575"):
        big_pair(cfg_a={"fragment_size": 575})


def test_a_peer_without_the_notify_gets_unfragmented_messages():
    a, b, link = big_pair(cfg_b={"fragmentation": False})
    up_to_auth(link)
    assert not sa_of(a).fragmentation and not sa_of(b).fragmentation
    [request] = link.transfer(a)
    [response] = link.transfer(b)
    assert not is_fragment(request) and datagram_size(len(request), 4, False) > FRAG
    assert not is_fragment(response) and datagram_size(len(response), 4, False) > FRAG
    assert_established(a, b)


def test_a_forged_fragment_is_dropped_before_it_is_kept():
    """RFC 7383 2.6: integrity of each fragment is checked before it is stored; a tampered
    copy that came first must not take the real fragment's place."""
    a, b, link = big_pair()
    up_to_auth(link)
    request = sent(a)
    tampered = [d[:-1] + bytes([d[-1] ^ 1]) for d in request]
    renumbered = [d[:32] + b"\x00\x09" + d[34:] for d in request]  # Fragment Number 9
    deliver(b, tampered + renumbered + request, ADDR_A)
    assert b.stats()["forged_dropped"] == 2 * len(request)
    assert b.stats()["fragment_duplicates"] == 0
    link.transfer(b)
    assert_established(a, b)


def test_duplicate_fragments_are_dropped_and_answered_once():
    a, b, link = big_pair()
    up_to_auth(link)
    request = sent(a)
    deliver(b, [d for d in request for _ in range(2)], ADDR_A)
    # the last one's copy comes after the message was whole: a retransmission, not first
    assert b.stats()["fragment_duplicates"] == len(request) - 1
    response = link.transfer(b)
    assert len(response) >= 2 and all(is_fragment(d) for d in response)
    deliver(b, request[1:], ADDR_A)  # late copies of fragments other than the first
    assert sent(b) == []
    assert_established(a, b)


def test_out_of_range_fragments_are_dropped_and_counted():
    a, b, link = big_pair()
    up_to_auth(link)
    request = sent(a)
    total = len(request)
    junk = [sealed_fragment(a, 1, total + 1, total, b"x"),
            sealed_fragment(a, 1, 1, MAX_FRAGMENTS + 1, b"x")]
    deliver(b, junk, ADDR_A)
    assert b.stats()["fragment_out_of_range"] == 2
    deliver(b, request, ADDR_A)
    link.transfer(b)
    assert_established(a, b)


def test_a_message_beyond_the_reassembly_limit_is_dropped():
    """charon's limit, 10000 bytes of reassembled message: the partial message goes, and
    the real IKE_AUTH that follows is reassembled afresh."""
    a, b, link = big_pair()
    up_to_auth(link)
    request = sent(a)
    for n in range(1, 18):  # 17 * 600 > 10000
        deliver(b, [sealed_fragment(a, 1, n, 20, bytes(600))], ADDR_A)
    assert b.stats()["fragment_too_large"] == 1
    assert sent(b) == []
    deliver(b, request, ADDR_A)
    link.transfer(b)
    assert_established(a, b)


def test_a_fragment_of_ike_sa_init_is_refused():
    """RFC 7383 2.5.3: IKE_SA_INIT is never fragmented; an SKF in its place is taken neither
    as a request (no half-open SA) nor as the answer to ours."""
    a, b, link = big_pair()
    skf = bytes([0, 0, 0, 8 + 40]) + (1).to_bytes(2, "big") + (1).to_bytes(2, "big") + bytes(40)
    request = Header(b"\x11" * 8, bytes(8), PayloadType.SKF, ExchangeType.IKE_SA_INIT,
                     Flag.INITIATOR, 0, 28 + len(skf)).encode() + skf
    deliver(b, [request], ADDR_A)
    assert b.half_open() == 0 and sent(b) == []
    assert b.stats()["unexpected_dropped"] == 1

    a.initiate(ADDR_B, 0)
    [init] = link.transfer(a)
    h = parse_header(init)
    answer = Header(h.spi_i, b"\x22" * 8, PayloadType.SKF, ExchangeType.IKE_SA_INIT,
                    Flag.RESPONSE, 0, 28 + len(skf)).encode() + skf
    deliver(a, [answer], ADDR_B)
    assert a.stats()["forged_dropped"] == 1
    assert sa_of(a).state.name == "EXPECT_SA_INIT_RESPONSE"
    link.roundtrip(b)
    assert_established(a, b)


def test_a_retransmitted_fragmented_request_gets_the_cached_fragmented_response():
    """RFC 7383 2.6: every fragment is retransmitted; the responder answers the retransmitted
    request once (on its first fragment) with the fragments it sent before."""
    a, b, link = big_pair()
    up_to_auth(link)
    request = link.transfer(a)
    response = link.transfer(b, drop=True)
    link.advance(a.config.retransmit_timeout)
    again = link.transfer(a)
    assert again == request
    assert link.transfer(b) == response
    assert_established(a, b)


@pytest.mark.parametrize("rekeyed", [False, True], ids=["first IKE SA", "rekeyed IKE SA"])
def test_later_exchanges_are_fragmented_too(rekeyed):
    """CREATE_CHILD_SA with many selectors, on the IKE SA or on its successor, which keeps
    what IKE_SA_INIT settled."""
    a, b, link = big_pair()
    sid = up_to_auth(link)
    link.roundtrip(a)
    if rekeyed:
        a.rekey_ike(sid, 0.5)
        link.roundtrip(a)
    events(a), events(b)
    many = [TrafficSelector.host(ADDR_A)] + [TrafficSelector.host(f"192.0.2.{n}")
                                             for n in range(1, 60)]
    a.create_child(sid, 1.0, local_ts=many, remote_ts=[TrafficSelector.host(ADDR_B)])
    request = link.transfer(a)
    assert len(request) >= 2 and all(is_fragment(d) for d in request)
    link.roundtrip(b)
    assert any(isinstance(e, ChildSaEstablished) for e in events(a))
    assert any(isinstance(e, ChildSaEstablished) for e in events(b))


def test_an_incomplete_message_is_forgotten_after_the_timeout():
    a, b, link = big_pair()
    up_to_auth(link)
    request = sent(a)
    deliver(b, request[:1], ADDR_A)
    assert b.get_timer() is not None
    link.now = 31.0
    b.handle_timer(link.now)
    assert b.stats()["fragment_timed_out"] == 1


@pytest.mark.parametrize("family", [4, 6])
def test_fragments_fit_the_family(family):
    """The per-family overhead (20 or 40 bytes of IP header) as fragment.chunk_size sums it."""
    if family == 4:
        a, b, link = big_pair()
    else:
        a = make_engine("2001:db8::1", "a", {"2001:db8::2": "b"}, 5, key_bits=4096,
                        fragment_size=FRAG)
        b = make_engine("2001:db8::2", "b", {"2001:db8::1": "a"}, 6, key_bits=4096,
                        fragment_size=FRAG)
        link = Link(a, b)
    a.initiate(ADDR_B if family == 4 else "2001:db8::2", 0)
    link.transfer(a)
    link.transfer(b)
    request = link.transfer(a)
    assert len(request) >= 2
    sizes = [datagram_size(len(d), family, False) for d in request]
    assert max(sizes) <= FRAG and max(sizes) > FRAG - 16 - 1  # full up to the last block
    link.roundtrip(b)
    assert_established(a, b)


@settings(deadline=None, max_examples=15, suppress_health_check=[HealthCheck.too_slow])
@given(st.randoms(use_true_random=False))
def test_any_order_of_fragments_establishes(shuffler):
    a, b, link = big_pair()
    up_to_auth(link)
    request = sent(a)
    shuffler.shuffle(request)
    deliver(b, request, ADDR_A)
    response = sent(b)
    shuffler.shuffle(response)
    deliver(a, response, ADDR_B)
    assert_established(a, b)
