"""Traffic selector narrowing (RFC 7296 section 2.9) in the ordinary OE case, address IDs:
the responder narrows a TSi wider than the peer to the peer's address, and its TSr to itself;
the initiator refuses an answer wider than its offer (TSi or TSr, addresses, protocol or
ports); the responder's child_policy sees the offered selectors and decides per CHILD SA.
"""

from __future__ import annotations

import ipaddress

import pytest
from ike_helpers import ADDR_A, ADDR_B, Link, events, ike_pair

from oe.ike.childpolicy import Refuse, host_to_host
from oe.ike.constants import NotifyType
from oe.ike.events import ChildSaEstablished, ChildSaFailed, IkeSaEstablished
from oe.ike.tasks import common
from oe.ike.ts import TrafficSelector

NET = TrafficSelector(ipaddress.ip_address("198.51.100.0"), ipaddress.ip_address("198.51.100.255"))
HOST_A, HOST_B = TrafficSelector.host(ADDR_A), TrafficSelector.host(ADDR_B)


def negotiate(cfg_b: dict | None = None, **initiate):
    a, b = ike_pair(cfg_b=cfg_b)
    link = Link(a, b)
    a.initiate(ADDR_B, 0, **initiate)
    link.roundtrip(a)
    return a, b, events(a), events(b)


def test_a_tsi_wider_than_the_peer_is_narrowed_to_the_peers_address():
    """A offers TSi = 198.51.100.0/24 (its whole LAN) and TSr = the same /24: B's CHILD SA
    carries A's address only, from B's address only, and A installs what B answered."""
    a, b, ea, eb = negotiate(local_ts=[NET], remote_ts=[NET])
    assert [type(e) for e in eb] == [IkeSaEstablished, ChildSaEstablished]
    assert (eb[1].child.remote_ts, eb[1].child.local_ts) == ((HOST_A,), (HOST_B,))
    assert [type(e) for e in ea] == [IkeSaEstablished, ChildSaEstablished]
    assert (ea[1].child.local_ts, ea[1].child.remote_ts) == ((HOST_A,), (HOST_B,))


def test_a_tsi_without_the_peers_address_gets_no_child_sa():
    """TSi = another host of the LAN (A asks for M's traffic): nothing is left after
    narrowing; TS_UNACCEPTABLE, and no CHILD SA on either side."""
    a, b, ea, eb = negotiate(local_ts=[TrafficSelector.host("198.51.100.3")])
    assert [type(e) for e in eb] == [IkeSaEstablished, ChildSaFailed]
    assert eb[1].notify == NotifyType.TS_UNACCEPTABLE
    assert [type(e) for e in ea] == [IkeSaEstablished, ChildSaFailed]
    assert b.children(eb[0].sa_id) == [] and a.children(ea[0].sa_id) == []


def test_a_tsr_for_another_host_gets_no_child_sa():
    """TSr = a host that is not B: B has nothing to narrow it to."""
    a, b, ea, eb = negotiate(remote_ts=[TrafficSelector.host("198.51.100.3")])
    assert [type(e) for e in eb] == [IkeSaEstablished, ChildSaFailed]
    assert eb[1].notify == NotifyType.TS_UNACCEPTABLE


def test_protocol_and_ports_survive_narrowing():
    """TSi = A's LAN for tcp, TSr = B for tcp/22..80: narrowed in addresses only, each
    selector keeps its protocol and ports."""
    tsr = TrafficSelector(HOST_B.start, HOST_B.end, 6, 22, 80)
    _, _, ea, eb = negotiate(local_ts=[TrafficSelector(NET.start, NET.end, 6)], remote_ts=[tsr])
    assert eb[1].child.remote_ts == (TrafficSelector.host(ADDR_A, 6),)
    assert eb[1].child.local_ts == (tsr,)
    assert ea[1].child.remote_ts == (tsr,)


WIDER = {
    "TSi: A's LAN for A": ((NET,), None),
    "TSr: any protocol for tcp/443": (None, (HOST_B,)),
    "TSr: all ports for 443": (None, (TrafficSelector(HOST_B.start, HOST_B.end, 6),)),
    "TSi: a second host": ((HOST_A, TrafficSelector.host("198.51.100.3")), None),
    "TSr: udp for tcp": (None, (TrafficSelector.host(ADDR_B, 17, 443),)),
}


@pytest.mark.parametrize("what", WIDER)
def test_initiator_refuses_a_responder_that_widens(monkeypatch, what):
    """A offers host A (any port) to B's tcp/443; B answers wider than that, in a way its
    key would still vouch for (B's own address), so only the 'inside our offer' check can
    catch it (section 2.9: the responder may only narrow). A refuses the CHILD SA and
    deletes it at B."""
    tsi, tsr = WIDER[what]
    real = common.narrow_as_responder

    def widening(self, msg):
        local, remote = real(self, msg)
        return (tsr or local), (tsi or remote)
    monkeypatch.setattr(common, "narrow_as_responder", widening)
    offer_r = TrafficSelector.host(ADDR_B, 6, 443)
    a, b, ea, eb = negotiate(local_ts=[HOST_A], remote_ts=[offer_r])
    assert [type(e) for e in ea] == [IkeSaEstablished, ChildSaFailed]
    assert ea[1].notify == NotifyType.TS_UNACCEPTABLE and "widened" in ea[1].reason
    assert a.children(ea[0].sa_id) == []
    assert b.children(eb[0].sa_id) == []                      # A's DELETE reached B


def test_selectors_of_two_protocols_have_no_intersection():
    tcp, udp = TrafficSelector.host(ADDR_B, 6), TrafficSelector.host(ADDR_B, 17)
    assert tcp.intersect(udp) is None and not udp.is_subset_of(tcp)
    assert tcp.intersect(HOST_B) == tcp and tcp.is_subset_of(HOST_B)
    assert not HOST_B.is_subset_of(tcp)


def test_child_policy_sees_the_offer_and_decides_per_child():
    """B's child_policy gets the authenticated peer and the selectors as offered; it takes
    tcp/22 (narrowed host to host) and refuses the rest, CHILD SA by CHILD SA on one IKE SA."""
    seen = []

    def policy(sa, tsi, tsr):
        seen.append((str(sa.peer_id), tsr, tsi))
        verdict = host_to_host(sa, tsi, tsr)
        if all(t.protocol == 6 and (t.start_port, t.end_port) == (22, 22) for t in tsr):
            return verdict
        return Refuse("ssh only")
    ssh = TrafficSelector.host(ADDR_B, 6, 22)
    a, b, ea, eb = negotiate({"child_policy": policy}, local_ts=[NET], remote_ts=[ssh])
    assert [type(e) for e in eb] == [IkeSaEstablished, ChildSaEstablished]
    assert seen == [(ADDR_A, (ssh,), (NET,))]
    assert b.children(eb[0].sa_id)[0].remote_ts == (HOST_A,)
    link = Link(a, b)
    a.create_child(ea[0].sa_id, 0, local_ts=[HOST_A], remote_ts=[HOST_B])
    link.roundtrip(a)
    [failed] = events(b)
    assert isinstance(failed, ChildSaFailed) and failed.notify == NotifyType.TS_UNACCEPTABLE
    assert seen[1] == (ADDR_A, (HOST_B,), (HOST_A,))
    assert len(b.children(eb[0].sa_id)) == 1
