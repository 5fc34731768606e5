"""Who may make the responder work: COOKIE first (RFC 7296 section 2.6), then admission.

A spoofed IKE_SA_INIT costs the responder one N(COOKIE) answer and nothing else: the admit
hook (the daemon's policy check and DNS key fetch) runs only for an initiator that proved it
receives at its source address, and the number of half-open SAs is capped with counted drops.
"""

from __future__ import annotations

from ike_helpers import ADDR_A, ADDR_B, Link, events, ike_pair

from oe.ike.constants import INIT_RESTARTS_MAX, ExchangeType, NotifyType
from oe.ike.events import ChildSaEstablished, IkeSaEstablished, IkeSaFailed
from oe.ike.message import Message, Notify, parse_header, parse_message

SPOOFED = ("203.0.113.66", 500)


def cookie_of(answer: bytes) -> bytes | None:
    _, msg = parse_message(answer)
    found = msg.notifies(NotifyType.COOKIE)
    return found[0].data if found else None


def guarded(admit=lambda data, addr, port: True):
    """A and B, where B demands a cookie from everyone and records its admission calls."""
    asked: list = []
    calls: list = []

    def cookie_required(addr):
        asked.append(addr)
        return True

    def admit_init(data, addr, port, local):
        calls.append(addr)
        return admit(data, addr, port)

    a, b = ike_pair(cfg_b={"cookie_required": cookie_required, "admit_init": admit_init})
    return a, b, asked, calls


def test_spoofed_ike_sa_init_gets_only_a_cookie_and_is_not_admitted():
    """IKE_SA_INIT { SA, KEi, Ni } --> from a spoofed source  <-- { N(COOKIE) } only: no
    admission call (no DNS work), no state."""
    a, b, asked, calls = guarded()
    a.initiate(ADDR_B, 0)
    [(request, _, _, _)] = a.datagrams_to_send(0)
    b.receive_datagram(request, SPOOFED, 0)
    [(answer, to, _, _)] = b.datagrams_to_send(0)
    assert to == SPOOFED and cookie_of(answer) is not None
    assert len(parse_message(answer)[1].payloads) == 1
    assert asked == [SPOOFED] and calls == []
    assert b._sas == {} and b.stats()["cookies_sent"] == 1


def test_retry_with_the_cookie_is_admitted_and_completes():
    """IKE_SA_INIT { N(COOKIE), SA, KEi, Ni } --> is admitted once, then IKE_AUTH as usual."""
    a, b, asked, calls = guarded()
    link = Link(a, b)
    a.initiate(ADDR_B, 0)
    link.transfer(a)
    link.transfer(b)  # <-- { N(COOKIE) }
    link.roundtrip(a)
    assert calls == [(ADDR_A, 500)]
    assert [type(e) for e in events(a)] == [IkeSaEstablished, ChildSaEstablished]


def test_a_cookie_for_another_source_is_not_accepted():
    """The cookie binds the initiator's address (section 2.6): a cookie obtained from one
    source does not admit the same request from another."""
    a, b, asked, calls = guarded()
    a.initiate(ADDR_B, 0)
    [(request, _, _, _)] = a.datagrams_to_send(0)
    b.receive_datagram(request, (ADDR_A, 500), 0)
    [(answer, _, _, _)] = b.datagrams_to_send(0)
    a.receive_datagram(answer, (ADDR_B, 500), 0)
    [(with_cookie, _, _, _)] = a.datagrams_to_send(0)
    b.receive_datagram(with_cookie, SPOOFED, 0)
    [(again, _, _, _)] = b.datagrams_to_send(0)
    assert cookie_of(again) is not None and calls == [] and b._sas == {}


def test_refused_admission_leaves_no_state_and_a_later_retry_is_taken():
    """The hook says not yet (the daemon fetches the key): nothing is kept or sent; the
    same request handed in again later is answered."""
    verdict = [False]
    a, b, asked, calls = guarded(admit=lambda data, addr, port: verdict[0])
    link = Link(a, b)
    a.initiate(ADDR_B, 0)
    link.transfer(a)
    link.transfer(b)
    [(with_cookie, _, _, _)] = a.datagrams_to_send(0)
    b.receive_datagram(with_cookie, (ADDR_A, 500), 0)
    assert b.datagrams_to_send(0) == [] and b._sas == {} and len(calls) == 1
    verdict[0] = True
    b.receive_datagram(with_cookie, (ADDR_A, 500), 0.1)
    link.roundtrip(b)
    assert [type(e) for e in events(a)] == [IkeSaEstablished, ChildSaEstablished]


def test_no_cookie_needed_below_the_threshold_when_the_hook_says_so():
    a, b, asked, calls = guarded()
    b.cookie_required = lambda addr: False
    link = Link(a, b)
    a.initiate(ADDR_B, 0)
    link.transfer(a)
    [answer] = link.transfer(b)
    assert cookie_of(answer) is None and calls == [(ADDR_A, 500)]


def test_half_open_sas_are_capped_and_the_drops_counted():
    """Beyond half_open_max, IKE_SA_INIT requests are dropped unanswered and counted, even
    with a valid cookie; what is already half-open is untouched."""
    _, b = ike_pair(cfg_b={"half_open_max": 2, "cookie_threshold": 100})
    for i in range(4):
        x, _ = ike_pair(seed=50 + i)
        x.initiate(ADDR_B, 0)
        [(request, _, _, _)] = x.datagrams_to_send(0)
        b.receive_datagram(request, (f"203.0.113.{i + 1}", 500), 0)
    assert b.half_open() == 2 and len(b.datagrams_to_send(0)) == 2
    assert b.stats()["half_open_dropped"] == 2


def test_an_ordinary_exchange_counts_no_drop_and_no_cookie():
    a, b = ike_pair()
    link = Link(a, b)
    a.initiate(ADDR_B, 0)
    link.roundtrip(a)
    stats = b.stats()
    assert stats["cookies_sent"] == 0 and stats["half_open_dropped"] == 0
    assert stats["forged_dropped"] == 0


def test_a_duplicate_cookie_answer_does_not_end_the_negotiation():
    """The round trip is longer than the first retransmission timeout: both copies of
    IKE_SA_INIT get an N(COOKIE) answer. The second, arriving after the retry with the
    cookie left, is a late duplicate, not a responder that keeps asking (section 2.6)."""
    a, b, asked, calls = guarded()
    link = Link(a, b)
    a.initiate(ADDR_B, 0)
    [(first, _, _, _)] = a.datagrams_to_send(0)
    link.advance(0.5)
    [(again, _, _, _)] = a.datagrams_to_send(0.5)
    assert again == first
    for request in (first, again):
        b.receive_datagram(request, (ADDR_A, 500), 0.6)
    [(cookie1, _, _, _), (cookie2, _, _, _)] = b.datagrams_to_send(0.6)
    a.receive_datagram(cookie1, (ADDR_B, 500), 0.7)
    a.receive_datagram(cookie2, (ADDR_B, 500), 1.2)
    assert events(a) == []
    link.roundtrip(a)
    assert [type(e) for e in events(a)] == [IkeSaEstablished, ChildSaEstablished]


def test_a_responder_that_never_settles_ends_the_negotiation():
    """Every IKE_SA_INIT is answered with a fresh N(COOKIE): after INIT_RESTARTS_MAX repeats
    the initiator gives up, with one request sent per answer received."""
    a, _ = ike_pair()
    a.initiate(ADDR_B, 0)
    sent = 0
    while (out := a.datagrams_to_send(0)):
        [(request, _, _, _)] = out
        sent += 1
        h = parse_header(request)
        a.receive_datagram(Message(h.spi_i, bytes(8), ExchangeType.IKE_SA_INIT, 0, True, False,
                                   (Notify(NotifyType.COOKIE, bytes([sent]) * 16),)).encode(),
                           (ADDR_B, 500), 0)
    [fail] = events(a)
    assert isinstance(fail, IkeSaFailed) and fail.notify == NotifyType.COOKIE
    assert sent == INIT_RESTARTS_MAX + 1
