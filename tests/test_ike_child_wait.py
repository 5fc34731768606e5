"""The responder's CHILD SA hook and its DNS wait (docs/gateway.md 4.2, 4.4): a request whose
selectors need a delegation lookup is kept unanswered, changes nothing, and is answered once
after `resume`."""

from oe.ike.childpolicy import Allow, Refuse, Wait, host_to_host
from oe.ike.constants import NotifyType
from oe.ike.events import (ChildAwaitsDns, ChildSaEstablished, ChildSaFailed, IkeSaDeleted,
                           IkeSaEstablished)
from oe.ike.ts import TrafficSelector
from ike_helpers import ADDR_A, ADDR_B, Link, events, ike_pair, make_engine


class Gate:
    """A child_policy that waits until opened, then decides as the engine would alone."""

    def __init__(self, waits: bool = True, verdict=None) -> None:
        self.waits = waits
        self.verdict = verdict
        self.calls = 0

    def __call__(self, sa, tsi, tsr):
        self.calls += 1
        if self.waits:
            return Wait(("198.51.100.77",))
        return self.verdict or host_to_host(sa, tsi, tsr)


def waiting_pair(gate):
    a, b = ike_pair(cfg_b={"child_policy": gate})
    return Link(a, b), a, b


def test_a_waiting_ike_auth_is_answered_once_after_resume_with_its_message_id():
    gate = Gate()
    link, a, b = waiting_pair(gate)
    a.initiate(ADDR_B, 0)
    link.transfer(a)                       # IKE_SA_INIT -->
    link.transfer(b)                       # <-- IKE_SA_INIT
    link.transfer(a)                       # IKE_AUTH { IDi, AUTH, SA, TSi, TSr } -->
    [waiting] = events(b)
    assert isinstance(waiting, ChildAwaitsDns) and waiting.lookups == ("198.51.100.77",)
    assert b.datagrams_to_send(0) == []    # nothing answered, nothing cached
    [info] = b.ike_sas()
    assert info.state == "EXPECT_AUTH_REQUEST"
    gate.waits = False
    b.resume(waiting.sa_id, 0)
    [answer] = link.transfer(b)            # <-- IKE_AUTH { IDr, AUTH, SA, TSi, TSr }
    assert answer[20:24] == (1).to_bytes(4, "big")      # Message ID 1, the request's
    assert [type(e) for e in events(b)] == [IkeSaEstablished, ChildSaEstablished]
    assert [type(e) for e in events(a)] == [IkeSaEstablished, ChildSaEstablished]
    b.resume(waiting.sa_id, 0)             # a second resume finds nothing kept
    assert b.datagrams_to_send(0) == [] and events(b) == [] and gate.calls == 2


def test_a_retransmission_during_the_wait_does_nothing():
    gate = Gate()
    link, a, b = waiting_pair(gate)
    a.initiate(ADDR_B, 0)
    link.roundtrip(a)
    assert [type(e) for e in events(b)] == [ChildAwaitsDns]
    for _ in range(3):
        link.advance(a.config.retransmit_timeout * 4)     # A sends IKE_AUTH again
        assert link.transfer(a)
        assert b.datagrams_to_send(0) == [] and events(b) == []
    assert gate.calls == 1


def test_initial_contact_in_a_waiting_ike_auth_deletes_nothing_until_resumed():
    """RFC 7296 2.4: INITIAL_CONTACT makes B forget A's other IKE SAs, but only once the
    request is processed: a deferred IKE_AUTH has changed nothing."""
    gate = Gate(waits=False)
    link, a, b = waiting_pair(gate)
    a.initiate(ADDR_B, 0)
    link.roundtrip(a)
    [old] = [e.sa_id for e in events(b) if isinstance(e, IkeSaEstablished)]
    # A restarts: a fresh engine with A's address and key sends INITIAL_CONTACT
    a2 = make_engine(ADDR_A, "a", {ADDR_B: "b"}, 77)
    link2 = Link(a2, b)
    gate.waits = True
    a2.initiate(ADDR_B, 0)
    link2.roundtrip(a2)
    [waiting] = events(b)
    assert isinstance(waiting, ChildAwaitsDns)
    assert [i.state for i in b.ike_sas() if i.sa_id == old] == ["ESTABLISHED"]
    gate.waits = False
    b.resume(waiting.sa_id, 0)
    link2.roundtrip(b)
    got = events(b)
    assert any(isinstance(e, IkeSaDeleted) and e.sa_id == old for e in got)
    assert [i.sa_id for i in b.ike_sas()] == [waiting.sa_id]


def test_a_refusal_answers_ts_unacceptable_and_keeps_the_ike_sa():
    gate = Gate(waits=False, verdict=Refuse("gateway says no"))
    link, a, b = waiting_pair(gate)
    a.initiate(ADDR_B, 0)
    link.roundtrip(a)
    eb = events(b)
    assert [type(e) for e in eb] == [IkeSaEstablished, ChildSaFailed]
    assert eb[1].notify == NotifyType.TS_UNACCEPTABLE and eb[1].reason == "gateway says no"
    assert [i.state for i in b.ike_sas()] == ["ESTABLISHED"]
    assert events(a)[1].notify == NotifyType.TS_UNACCEPTABLE


def test_a_waiting_create_child_sa_does_no_dh_work_and_is_answered_after_resume():
    gate = Gate(waits=False)
    a, b = ike_pair(cfg_a={"esp_proposals": ("aes128gcm16-x25519",)},
                    cfg_b={"child_policy": gate, "esp_proposals": ("aes128gcm16-x25519",)})
    link = Link(a, b)
    sid = a.initiate(ADDR_B, 0)
    link.roundtrip(a)
    events(a), events(b)
    gate.waits = True
    drawn = []
    rng = b.rng
    b.rng = lambda n: drawn.append(n) or rng(n)
    a.create_child(sid, 0, local_ts=[TrafficSelector.host(ADDR_A, 6)],
                   remote_ts=[TrafficSelector.host(ADDR_B, 6)])
    link.roundtrip(a)
    [waiting] = events(b)
    assert isinstance(waiting, ChildAwaitsDns) and drawn == []      # no DH secret drawn
    gate.waits = False
    b.resume(waiting.sa_id, 0)
    link.roundtrip(b)
    assert [type(e) for e in events(b)] == [ChildSaEstablished]
    assert [type(e) for e in events(a)] == [ChildSaEstablished]


def test_a_hook_that_widens_the_selectors_is_not_believed():
    """RFC 7296 2.9: the responder narrows; a hook's answer outside the offer refuses."""
    gate = Gate(waits=False, verdict=Allow((TrafficSelector.host(ADDR_B),),
                                           (TrafficSelector.host("203.0.113.9"),)))
    link, a, b = waiting_pair(gate)
    a.initiate(ADDR_B, 0)
    link.roundtrip(a)
    eb = events(b)
    assert isinstance(eb[1], ChildSaFailed) and eb[1].notify == NotifyType.TS_UNACCEPTABLE


def gateway_responder(record_gateway, record_key):
    """B (ME) answers with oe.admission's child_policy; M (GW) has a valid key of its own and
    asks for TSi = CLIENT, whose record names `record_gateway` with `record_key`'s key."""
    import ipaddress

    from oe import hostkey
    from oe.admission import Admission
    from oe.dnskeys.choice import KeyLookup, Target, Verdict
    from oe.dnskeys.records import KeyRecord, decode_rsa_blob
    from oe.opportunist import Opportunist
    from oe.peerkeys import PeerKeys
    from oe.policygroups import combine, parse_group, prospective_table
    from ike_helpers import host_key

    gw, client = "192.0.2.66", "198.51.100.77"
    opp = Opportunist(prospective_table(combine([parse_group(
        "private-or-clear", "0.0.0.0/0\n", "policies/private-or-clear")])))
    admission = Admission(opp, PeerKeys(), 8)
    b = make_engine(ADDR_B, "b", {gw: "m"}, 5,
                    child_policy=lambda sa, tsi, tsr: admission.child_policy(sa, tsi, tsr, 0.0))
    m = make_engine(gw, "m", {ADDR_B: "b"}, 6)
    blob = hostkey.public_blob(host_key(record_key, 2048).public_key())
    record = KeyRecord("IPSECKEY", Target.parse(client).name, 10,
                       ipaddress.ip_address(record_gateway), decode_rsa_blob(blob), blob, "")
    lookup = KeyLookup(Target.parse(client), Verdict.KEY, record=record, key=record.key,
                       blob=blob, gateway=record.gateway, records=(record,), dnssec="secure",
                       expires=600.0)
    link = Link(m, b)
    m.initiate(ADDR_B, 0, local_ts=[TrafficSelector.host(client)])
    link.roundtrip(m)
    [waiting] = events(b)
    assert isinstance(waiting, ChildAwaitsDns) and waiting.lookups == (client,)
    [fetch] = admission.delegation_wanted(waiting.sa_id, waiting.lookups)
    [resume] = admission.delegation_fetched(fetch.client, lookup, 0.0)
    b.resume(resume.sa_id, 0)
    link.roundtrip(b)
    return m, b, events(m), events(b)


def test_a_compromised_gateway_cannot_claim_a_client_delegated_elsewhere():
    """docs/gateway.md 8: M proves its own key, but CLIENT's secure record names another
    gateway: TS_UNACCEPTABLE with pluto's reason, the IKE SA stays, no CHILD SA."""
    m, b, em, eb = gateway_responder("192.0.2.99", "m")
    assert [type(e) for e in eb] == [IkeSaEstablished, ChildSaFailed]
    assert eb[1].notify == NotifyType.TS_UNACCEPTABLE
    assert eb[1].reason == ("gateway 192.0.2.66 wants connection with 198.51.100.77 as his "
                            "client, but DNS fails to confirm delegation: record for "
                            "198.51.100.77 delegates to 192.0.2.99, not 192.0.2.66")
    assert b.children(eb[0].sa_id) == [] and [i.state for i in b.ike_sas()] == ["ESTABLISHED"]
    assert em[1].notify == NotifyType.TS_UNACCEPTABLE


def test_a_compromised_gateway_cannot_use_a_delegation_made_to_another_key():
    m, b, em, eb = gateway_responder("192.0.2.66", "x")
    assert [type(e) for e in eb] == [IkeSaEstablished, ChildSaFailed]
    assert "names 192.0.2.66 with another key" in eb[1].reason


def test_a_gateway_the_clients_record_names_gets_the_child_sa_for_it():
    m, b, em, eb = gateway_responder("192.0.2.66", "m")
    assert [type(e) for e in eb] == [IkeSaEstablished, ChildSaEstablished]
    assert eb[1].child.remote_ts == (TrafficSelector.host("198.51.100.77"),)
    assert eb[1].child.local_ts == (TrafficSelector.host(ADDR_B),)
    assert [type(e) for e in em] == [IkeSaEstablished, ChildSaEstablished]
