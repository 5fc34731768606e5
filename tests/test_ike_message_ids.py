"""The Message-ID window (RFC 7296 section 2.3, window size 1), attacked by the authenticated
peer itself: a request whose Message ID is not the next one expected, old, future or replayed,
is dropped unread, even when it carries a DELETE; a response whose Message ID is not that of
our request in flight ends nothing. A copy of the last request is answered again only if it is
authentic; an authentic request out of place (IKE_AUTH on an established SA) is refused.

B is the responder of an IKE SA that A initiated, so B's requests to A count from 0. B's own
IKE SA object seals hand-made requests, so each passes the integrity check and only the
Message ID is wrong.
"""

from __future__ import annotations

import pytest
from ike_helpers import ADDR_B, established_pair, events

from oe.ike.constants import ExchangeType, NotifyType, ProtocolId
from oe.ike.events import ChildSaDeleted
from oe.ike.message import Delete, Notify, parse_message
from oe.ike.ike_sa import State


def established():
    """A's and B's IKE SA objects (one CHILD SA), A's sa_id and the link between them."""
    link, sid, _ = established_pair()
    [sa_a] = link.a._sas.values()
    [sa_b] = link.b._sas.values()
    assert sa_a.expected_message_id == 0 and len(sa_a.children) == 1
    return link, sid, sa_a, sa_b


def delete_child_request(sa_b, message_id: int) -> bytes:
    """INFORMATIONAL { D(ESP, B's inbound SPI) } -->, sealed with B's keys."""
    child = sa_b.children[0].sa
    [data] = sa_b._encode(ExchangeType.INFORMATIONAL,
                          [Delete(ProtocolId.ESP, (child.spi_in.to_bytes(4, "big"),))],
                          False, message_id)
    return data


def liveness_request(sa_b, message_id: int) -> bytes:
    """INFORMATIONAL { } -->, sealed with B's keys."""
    [data] = sa_b._encode(ExchangeType.INFORMATIONAL, [], False, message_id)
    return data


def deliver(link, data: bytes) -> list:
    """Hand ``data`` from B to A; what A sends back."""
    link.a.receive_datagram(data, (ADDR_B, 500), link.now)
    return link.a.datagrams_to_send(link.now)


def assert_dropped_unread(link, sa_a, data: bytes, expected: int) -> None:
    before = link.a.stats()["unexpected_dropped"]
    assert deliver(link, data) == []                        # no answer
    assert events(link.a) == []                             # no CHILD SA deleted
    assert len(sa_a.children) == 1
    assert sa_a.expected_message_id == expected             # the window did not move
    assert link.a.stats()["unexpected_dropped"] == before + 1


def test_request_with_a_future_message_id_is_dropped():
    """B skips Message IDs 0 and 1: its DELETE with ID 2 is not the next request."""
    link, _, sa_a, sa_b = established()
    assert_dropped_unread(link, sa_a, delete_child_request(sa_b, 2), expected=0)
    # the next request in order is taken, so the drop was the window's doing
    assert len(deliver(link, delete_child_request(sa_b, 0))) == 1
    assert [type(e) for e in events(link.a)] == [ChildSaDeleted]


def test_request_with_an_old_message_id_is_dropped():
    """Requests 0 and 1 were answered; a new request claiming ID 0 (neither the next one nor
    the last, whose answer would be replayed) is dropped."""
    link, _, sa_a, sa_b = established()
    for mid in (0, 1):
        assert len(deliver(link, liveness_request(sa_b, mid))) == 1
    assert sa_a.expected_message_id == 2
    assert_dropped_unread(link, sa_a, delete_child_request(sa_b, 0), expected=2)


def test_replayed_old_request_is_neither_answered_nor_taken_again():
    """A copy of B's request 0 (a DELETE) captured on the wire and replayed after request 1."""
    link, _, sa_a, sa_b = established()
    first = liveness_request(sa_b, 0)
    assert len(deliver(link, first)) == 1
    assert len(deliver(link, liveness_request(sa_b, 1))) == 1
    assert_dropped_unread(link, sa_a, first, expected=2)


def test_replay_of_the_last_request_gets_the_cached_answer_only():
    """The last request again (a retransmission, section 2.1): the same answer, taken once."""
    link, _, sa_a, sa_b = established()
    delete = delete_child_request(sa_b, 0)
    [(answer, _, _, _)] = deliver(link, delete)
    assert [type(e) for e in events(link.a)] == [ChildSaDeleted]
    [(again, _, _, _)] = deliver(link, delete)
    assert again == answer and events(link.a) == [] and sa_a.expected_message_id == 1


def in_flight(link, sid, sa_a) -> bytes:
    """A starts a liveness check; B's answer, not yet delivered."""
    link.a.check_liveness(sid, link.now)
    link.transfer(link.a)
    [(answer, _, _, _)] = link.b.datagrams_to_send(link.now)
    assert sa_a.request is not None
    return answer


@pytest.mark.parametrize("wrong", ["with the next Message ID", "an earlier answer replayed"])
def test_a_response_not_to_our_request_in_flight_answers_nothing(wrong):
    """A's second liveness check in flight; an authentic INFORMATIONAL response with the ID
    after its own, or B's answer to the first one again: A keeps waiting, counts the drop,
    and still takes the real answer."""
    link, sid, sa_a, sa_b = established()
    old = in_flight(link, sid, sa_a)
    link.a.receive_datagram(old, (ADDR_B, 500), link.now)
    real = in_flight(link, sid, sa_a)
    bad = old if wrong.startswith("an earlier") else sa_b._encode(
        ExchangeType.INFORMATIONAL, [], True, sa_a.request.message_id + 1)[0]
    link.a.receive_datagram(bad, (ADDR_B, 500), link.now)
    assert sa_a.request is not None
    assert link.a.stats()["unexpected_dropped"] == 1
    link.a.receive_datagram(real, (ADDR_B, 500), link.now)
    assert sa_a.request is None


def test_forged_copy_of_the_last_request_gets_no_answer():
    """The last request's Message ID with a broken ICV: a retransmission only if authentic,
    so no cached answer goes out (no reflection by an off-path sender)."""
    link, _, sa_a, sa_b = established()
    request = liveness_request(sa_b, 0)
    assert len(deliver(link, request)) == 1
    forged = request[:-1] + bytes([request[-1] ^ 1])
    assert deliver(link, forged) == []
    assert link.a.stats()["forged_dropped"] == 1
    assert len(deliver(link, request)) == 1                 # the authentic copy still is


def test_authentic_ike_auth_request_on_an_established_sa_is_refused():
    """IKE_AUTH is over once the SA is up (section 1.2): B's authentic IKE_AUTH request is
    answered INVALID_SYNTAX and changes nothing, rather than re-running authentication."""
    link, sid, sa_a, sa_b = established()
    [request] = sa_b._encode(ExchangeType.IKE_AUTH, [], False, 0)
    [(answer, _, _, _)] = deliver(link, request)
    header, msg = parse_message(answer)
    sa_b.datagram = answer
    [notify] = sa_b._open(header, msg, link.now).payloads
    assert isinstance(notify, Notify) and notify.notify_type == NotifyType.INVALID_SYNTAX
    assert events(link.a) == []
    assert sa_a.state is State.ESTABLISHED and len(link.a.children(sid)) == 1
