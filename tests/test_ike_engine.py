"""Two IkeEngines in memory: every exchange, loss, retransmission, crossing rekeys, failures.

Each step is labelled in RFC 7296 notation (strongSwan's exchange tests). A is the
initiator unless said otherwise; ``Link`` moves datagrams and can drop them or put A behind NAT.
"""

from __future__ import annotations

import pytest
from ike_helpers import ADDR_A, ADDR_B, Link, events, ike_pair, make_engine

from oe.ike.childpolicy import Refuse
from oe.ike.constants import DhId, EncrId, ExchangeType, NotifyType
from oe.ike.errors import LocalProtocolError
from oe.ike.events import (
    ChildSaDeleted,
    ChildSaEstablished,
    ChildSaFailed,
    ChildSaRekeyed,
    IkeSaDeleted,
    IkeSaEstablished,
    IkeSaFailed,
    IkeSaRekeyed,
)
from oe.ike.message import parse_header
from oe.ike.ts import TrafficSelector


def of(evs, kind):
    return [e for e in evs if isinstance(e, kind)]


def establish(link: Link, **initiate):
    """IKE_SA_INIT and IKE_AUTH; returns (sa_id at A, sa_id at B, child at A, child at B)."""
    a, b = link.a, link.b
    sid = a.initiate(ADDR_B, link.now, **initiate)
    # IKE_SA_INIT { SA, KEi, Ni, N(NATD_S_IP), N(NATD_D_IP), N(HASH_ALG) } -->
    assert len(link.transfer(a)) == 1
    # <-- IKE_SA_INIT { SA, KEr, Nr, N(NATD_S_IP), N(NATD_D_IP), N(HASH_ALG) }
    assert len(link.transfer(b)) == 1
    # IKE_AUTH { IDi, AUTH, SA, TSi, TSr } -->
    assert len(link.transfer(a)) == 1
    # <-- IKE_AUTH { IDr, AUTH, SA, TSi, TSr }
    assert len(link.transfer(b)) == 1
    ea, eb = events(a), events(b)
    assert [type(e) for e in ea] == [IkeSaEstablished, ChildSaEstablished], ea
    assert [type(e) for e in eb] == [IkeSaEstablished, ChildSaEstablished], eb
    return sid, eb[0].sa_id, ea[1].child, eb[1].child


def assert_pair(ca, cb):
    """The two ends of one CHILD SA: SPIs and keys cross over."""
    assert (ca.spi_in, ca.spi_out) == (cb.spi_out, cb.spi_in)
    assert (ca.key_in, ca.key_out) == (cb.key_out, cb.key_in)
    assert (ca.integ_key_in, ca.integ_key_out) == (cb.integ_key_out, cb.integ_key_in)
    assert ca.key_in != ca.key_out


@pytest.mark.parametrize("ike,esp", [
    ("aes128-sha256-x25519", "aes128gcm16"),
    ("aes256-sha512-modp3072", "aes256gcm16-esn"),
    ("aes128gcm16-prfsha256-ecp256", "aes128gcm16-noesn"),
    ("aes256gcm16-prfsha384-modp2048", "aes256gcm16-modp2048"),
    ("aes256-sha384-ecp256", "aes128gcm16"),
])
def test_establish_with_each_suite(ike, esp):
    """IKE_SA_INIT + IKE_AUTH agree on keys for every supported transform family."""
    a, b = ike_pair(cfg_a={"ike_proposals": (ike,), "esp_proposals": (esp,)},
                    cfg_b={"ike_proposals": (ike,), "esp_proposals": (esp,)})
    link = Link(a, b)
    _, _, ca, cb = establish(link)
    assert_pair(ca, cb)
    assert ca.esn == ("-esn" in esp)
    assert len(ca.key_in) == (16 if "128gcm" in esp else 32) + 4
    assert ca.local_ts == (TrafficSelector.host(ADDR_A),)
    assert ca.remote_ts == (TrafficSelector.host(ADDR_B),)
    assert not ca.udp_encap and ca.remote_port == 0


def test_responder_picks_initiators_first_acceptable_proposal():
    """The responder takes the initiator's first proposal it allows, in the initiator's order."""
    a, b = ike_pair(cfg_a={"ike_proposals": ("aes128-sha256-x25519", "aes256-sha512-x25519")},
                    cfg_b={"ike_proposals": ("aes256-sha512-x25519", "aes128-sha256-x25519")})
    link = Link(a, b)
    establish(link)
    assert b._by_id[1].suite.key_bits == 128


def test_no_proposal_chosen():
    """<-- IKE_SA_INIT { N(NO_PROPOSAL_CHOSEN) } ends the negotiation at the initiator."""
    a, b = ike_pair(cfg_b={"ike_proposals": ("aes256gcm16-prfsha512-ecp256",)})
    link = Link(a, b)
    a.initiate(ADDR_B, 0)
    link.roundtrip(a)
    [fail] = events(a)
    assert isinstance(fail, IkeSaFailed) and fail.notify == NotifyType.NO_PROPOSAL_CHOSEN
    assert not fail.local and events(b) == []


def test_invalid_ke_payload_retry():
    """IKE_SA_INIT { KEi(31) } --> <-- N(INVALID_KE_PAYLOAD, 19); the retry with 19 succeeds."""
    a, b = ike_pair(cfg_a={"ike_proposals": ("aes128-sha256-x25519-ecp256",)},
                    cfg_b={"ike_proposals": ("aes128-sha256-ecp256",)})
    link = Link(a, b)
    a.initiate(ADDR_B, 0)
    link.transfer(a)
    [refusal] = link.transfer(b)
    assert (NotifyType.INVALID_KE_PAYLOAD).to_bytes(2, "big") in refusal
    link.roundtrip(a)
    assert [type(e) for e in events(a)] == [IkeSaEstablished, ChildSaEstablished]
    assert b._by_id[1].suite.dh == DhId.ECP_256


def test_cookie_above_half_open_threshold():
    """With cookie_threshold 0 the responder answers N(COOKIE) and keeps no state; the
    initiator repeats IKE_SA_INIT { N(COOKIE), SA, KEi, Ni, ... } and succeeds."""
    a, b = ike_pair(cfg_b={"cookie_threshold": 0})
    link = Link(a, b)
    a.initiate(ADDR_B, 0)
    link.transfer(a)
    [cookie] = link.transfer(b)
    assert len(cookie) < 100 and b._sas == {}
    link.roundtrip(a)
    assert [type(e) for e in events(a)] == [IkeSaEstablished, ChildSaEstablished]


def test_nat_floats_to_4500_and_encapsulates():
    """A behind NAT: NAT-D mismatch, IKE_AUTH on 4500 with the non-ESP marker, ESP in UDP."""
    a, b = ike_pair()
    link = Link(a, b, nat="203.0.113.77")
    _, _, ca, cb = establish(link)
    assert ca.udp_encap and cb.udp_encap
    assert (ca.local_port, ca.remote_port) == (4500, 4500)
    assert cb.remote_port == Link.NAT_PORTS[4500] and cb.remote_addr == "203.0.113.77"
    assert_pair(ca, cb)


@pytest.mark.parametrize("forcing", ["initiator", "responder"])
def test_forced_encapsulation_without_nat(forcing):
    """force_encap on one side and no NAT: its NAT-D source hash matches no address (2.23),
    so both float to 4500 and put ESP in UDP; neither sends keepalives (no one is behind a NAT,
    as the other's hashes say)."""
    force = {"force_encap": True}
    a, b = ike_pair(cfg_a=force if forcing == "initiator" else None,
                    cfg_b=force if forcing == "responder" else None)
    link = Link(a, b)
    _, _, ca, cb = establish(link)
    assert ca.udp_encap and cb.udp_encap
    assert (ca.local_port, ca.remote_port) == (cb.local_port, cb.remote_port) == (4500, 4500)
    assert a.get_timer() is None and b.get_timer() is None
    assert_pair(ca, cb)


def test_nat_keepalives_from_the_side_behind_nat():
    """Only A (whose own NAT-D hash mismatched) sends 0xFF to 4500 every 20 s (RFC 3948 4)."""
    a, b = ike_pair()
    link = Link(a, b, nat="203.0.113.77")
    establish(link)
    assert b.get_timer() is None and a.get_timer() == 20.0
    link.advance(20.0)
    assert a.datagrams_to_send(link.now) == [(b"\xff", (ADDR_B, 4500), 4500, ADDR_A)]
    assert a.get_timer() == 40.0


def test_nat_keepalive_and_esp_on_4500_are_ignored():
    a, b = ike_pair()
    link = Link(a, b)
    establish(link)
    b.receive_datagram(b"\xff", (ADDR_A, 4500), 1.0, local_port=4500)
    b.receive_datagram(b"\x12\x34\x56\x78" + bytes(40), (ADDR_A, 4500), 1.0, local_port=4500)
    assert b.datagrams_to_send(1.0) == [] and events(b) == []


def test_retransmission_after_loss():
    """A lost IKE_SA_INIT request is retransmitted after 0.5 s; a lost IKE_AUTH response is
    answered again from the responder's cache, byte for byte."""
    a, b = ike_pair()
    link = Link(a, b)
    a.initiate(ADDR_B, 0)
    link.transfer(a, drop=True)
    assert a.get_timer() == 0.5
    link.advance(0.5)
    link.transfer(a)
    link.transfer(b)
    link.transfer(a)
    [lost] = link.transfer(b, drop=True)
    link.advance(1.0)
    link.transfer(a)  # the retransmitted IKE_AUTH request
    [again] = link.transfer(b)
    assert again == lost
    assert [type(e) for e in events(a)] == [IkeSaEstablished, ChildSaEstablished]
    assert [type(e) for e in events(b)] == [IkeSaEstablished, ChildSaEstablished]


def test_retransmission_budget_exhausted():
    """No answer at all: retransmits at 0.5, 1.5, 3.5, 7.5 s, then failure at 8 s."""
    a, b = ike_pair()
    a.initiate(ADDR_B, 0)
    sends = [t for t in [0.0] if a.datagrams_to_send(0)]
    now = 0.0
    while (t := a.get_timer()) is not None:
        now = t
        a.handle_timer(now)
        if a.datagrams_to_send(now):
            sends.append(now)
    assert sends == [0.0, 0.5, 1.5, 3.5, 7.5]
    [fail] = events(a)
    assert isinstance(fail, IkeSaFailed) and fail.notify is None and now == 8.0


def test_half_open_responder_sa_expires():
    a, b = ike_pair()
    link = Link(a, b)
    a.initiate(ADDR_B, 0)
    link.transfer(a)
    link.transfer(b)
    assert len(b._sas) == 1
    link.now = b.get_timer()
    b.handle_timer(link.now)
    assert b._sas == {} and events(b) == []


def test_bad_signature_fails_authentication():
    """B knows a different key for A: <-- IKE_AUTH { N(AUTHENTICATION_FAILED) }."""
    a = make_engine(ADDR_A, "a", {ADDR_B: "b"}, 1)
    b = make_engine(ADDR_B, "b", {ADDR_A: "mallory"}, 2)
    link = Link(a, b)
    a.initiate(ADDR_B, 0)
    link.roundtrip(a)
    [fa], [fb] = events(a), events(b)
    assert fa.notify == fb.notify == NotifyType.AUTHENTICATION_FAILED
    assert "signature does not verify" in fb.reason and fb.local and not fa.local
    assert a._sas == {} and b._sas == {}


def test_unknown_id_fails_authentication():
    a = make_engine(ADDR_A, "a", {ADDR_B: "b"}, 1)
    b = make_engine(ADDR_B, "b", {}, 2)
    link = Link(a, b)
    a.initiate(ADDR_B, 0)
    link.roundtrip(a)
    [fb] = events(b)
    assert fb.notify == NotifyType.AUTHENTICATION_FAILED and "no public key" in fb.reason
    assert isinstance(events(a)[0], IkeSaFailed)


def test_initiator_rejects_responder_with_wrong_key():
    """The responder signs with a key the initiator does not know for its ID."""
    a = make_engine(ADDR_A, "a", {ADDR_B: "mallory"}, 1)
    b = make_engine(ADDR_B, "b", {ADDR_A: "a"}, 2)
    link = Link(a, b)
    a.initiate(ADDR_B, 0)
    link.roundtrip(a)
    [fa] = events(a)
    assert fa.notify == NotifyType.AUTHENTICATION_FAILED and fa.local


def test_child_policy_refusal_gives_ts_unacceptable():
    """The IKE SA comes up, the CHILD SA fails with TS_UNACCEPTABLE on both sides."""
    a, b = ike_pair(cfg_b={"child_policy": lambda sa, tsi, tsr: Refuse("no")})
    link = Link(a, b)
    a.initiate(ADDR_B, 0)
    link.roundtrip(a)
    ea, eb = events(a), events(b)
    assert [type(e) for e in ea] == [IkeSaEstablished, ChildSaFailed]
    assert ea[1].notify == eb[1].notify == NotifyType.TS_UNACCEPTABLE


def test_responder_narrows_port_selectors():
    """TSi/TSr for one protocol and port are kept as offered (host-to-host)."""
    a, b = ike_pair()
    link = Link(a, b)
    _, _, ca, cb = establish(link, local_ts=[TrafficSelector.host(ADDR_A, 6)],
                             remote_ts=[TrafficSelector.host(ADDR_B, 6, 443)])
    assert ca.remote_ts == (TrafficSelector.host(ADDR_B, 6, 443),)
    assert cb.local_ts == ca.remote_ts


def test_child_rekey_by_either_side():
    """CREATE_CHILD_SA { N(REKEY_SA), SA, Ni, TSi, TSr } --> <-- { SA, Nr, TSi, TSr },
    then INFORMATIONAL { D(ESP) } retires the old SA, by A and then by B."""
    a, b = ike_pair()
    link = Link(a, b)
    sa, sb, ca, cb = establish(link)
    a.rekey_child(sa, ca.spi_in, link.now)
    link.roundtrip(a)
    ea, eb = events(a), events(b)
    assert [type(e) for e in ea] == [ChildSaRekeyed, ChildSaDeleted]
    assert [type(e) for e in eb] == [ChildSaRekeyed, ChildSaDeleted]
    assert_pair(ea[0].child, eb[0].child)
    assert ea[0].child.key_in != ca.key_in and ea[1].spi_in == ca.spi_in
    b.rekey_child(sb, eb[0].child.spi_in, link.now)
    link.roundtrip(b)
    ea, eb = events(a), events(b)
    assert [type(e) for e in eb] == [ChildSaRekeyed, ChildSaDeleted]
    assert_pair(ea[0].child, eb[0].child)
    assert len(a.children(sa)) == len(b.children(sb)) == 1


def test_child_rekey_with_pfs():
    """CREATE_CHILD_SA { N(REKEY_SA), SA, Ni, KEi, TSi, TSr } with MODP-2048 (PFS)."""
    cfg = {"esp_proposals": ("aes256gcm16-modp2048",)}
    a, b = ike_pair(cfg_a=cfg, cfg_b=cfg)
    link = Link(a, b)
    sa, _, ca, _ = establish(link)
    assert ca.dh == 0  # no KE in IKE_AUTH (section 1.2)
    a.rekey_child(sa, ca.spi_in, link.now)
    link.roundtrip(a)
    new_a, new_b = events(a)[0].child, events(b)[0].child
    assert new_a.dh == DhId.MODP_2048
    assert_pair(new_a, new_b)


def test_crossing_child_rekeys_converge():
    """Both sides rekey the same CHILD SA at once (section 2.8.1): both exchanges complete,
    the old SA is deleted, and both ends hold the same set of SA pairs."""
    a, b = ike_pair()
    link = Link(a, b)
    sa, sb, ca, cb = establish(link)
    a.rekey_child(sa, ca.spi_in, link.now)
    b.rekey_child(sb, cb.spi_in, link.now)
    link.transfer(a)
    link.transfer(b)
    link.roundtrip(a)
    pairs_a = {(c.spi_in, c.spi_out) for c in a.children(sa)}
    pairs_b = {(c.spi_out, c.spi_in) for c in b.children(sb)}
    assert pairs_a == pairs_b and (ca.spi_in, ca.spi_out) not in pairs_a
    assert len(pairs_a) == 1


def test_ike_rekey_by_either_side_keeps_children():
    """CREATE_CHILD_SA { SA, Ni, KEi } --> <-- { SA, Nr, KEr }; then INFORMATIONAL { D(IKE) }
    on the old IKE SA. The CHILD SA lives on; a later CHILD rekey uses the new SK_d."""
    a, b = ike_pair()
    link = Link(a, b)
    sa, sb, ca, _ = establish(link)
    old = a._by_id[sa]
    a.rekey_ike(sa, link.now)
    link.roundtrip(a)
    [ra], [rb] = events(a), events(b)
    assert isinstance(ra, IkeSaRekeyed) and (ra.spi_i, ra.spi_r) == (rb.spi_i, rb.spi_r)
    assert old.our_spi not in a._sas and len(a._sas) == len(b._sas) == 1
    assert a.children(sa)[0].spi_in == ca.spi_in
    b.rekey_ike(sb, link.now)  # and back the other way
    link.roundtrip(b)
    assert isinstance(events(a)[0], IkeSaRekeyed) and isinstance(events(b)[0], IkeSaRekeyed)
    a.rekey_child(sa, ca.spi_in, link.now)
    link.roundtrip(a)
    ea, eb = events(a), events(b)
    assert_pair(ea[0].child, eb[0].child)


def test_delete_child_and_ike_each_way():
    a, b = ike_pair()
    link = Link(a, b)
    sa, sb, ca, cb = establish(link)
    # INFORMATIONAL { D(ESP, SPI) } --> <-- { D(ESP, SPI) }
    b.delete_child(sb, cb.spi_in, link.now)
    link.roundtrip(b)
    [da], [db] = events(a), events(b)
    assert (da.spi_in, db.spi_in) == (ca.spi_in, cb.spi_in)
    assert da.reason == "deleted by peer" and db.reason == "deleted by us"
    # INFORMATIONAL { D(IKE) } --> <-- { }
    a.delete_ike(sa, link.now)
    link.roundtrip(a)
    assert [type(e) for e in events(a)] == [IkeSaDeleted]
    assert [type(e) for e in events(b)] == [IkeSaDeleted]
    assert a._sas == {} and b._sas == {}
    with pytest.raises(LocalProtocolError):
        a.rekey_ike(sa, link.now)


def test_delete_ike_reports_its_children():
    a, b = ike_pair()
    link = Link(a, b)
    sa, _, ca, _ = establish(link)
    a.delete_ike(sa, link.now)
    link.roundtrip(a)
    eb = events(b)
    assert [type(e) for e in eb] == [ChildSaDeleted, IkeSaDeleted]
    assert eb[0].spi_out == ca.spi_in


def test_liveness_check_and_dead_peer():
    """INFORMATIONAL { } --> <-- { }; without an answer the IKE SA is deleted after ~8 s."""
    a, b = ike_pair()
    link = Link(a, b)
    sa, _, _, _ = establish(link)
    a.check_liveness(sa, link.now)
    link.roundtrip(a)
    assert events(a) == [] and events(b) == []
    a.check_liveness(sa, link.now)
    link.transfer(a, drop=True)
    while (t := a.get_timer()) is not None:
        link.now = t
        a.handle_timer(t)
        link.transfer(a, drop=True)
    ea = events(a)
    assert [type(e) for e in ea] == [ChildSaDeleted, IkeSaDeleted]
    assert "retransmits exhausted" in ea[1].reason


def test_requests_queue_behind_the_one_in_flight():
    """Window size 1 (section 2.3): a second request waits for the first answer."""
    a, b = ike_pair()
    link = Link(a, b)
    sa, _, ca, _ = establish(link)
    a.check_liveness(sa, link.now)
    a.rekey_child(sa, ca.spi_in, link.now)
    assert len(link.transfer(a)) == 1
    link.roundtrip(b)
    assert [type(e) for e in events(a)] == [ChildSaRekeyed, ChildSaDeleted]


def test_retransmitted_request_gets_cached_response_without_reprocessing():
    a, b = ike_pair()
    link = Link(a, b)
    sa, _, ca, _ = establish(link)
    a.rekey_child(sa, ca.spi_in, link.now)
    [req] = link.transfer(a)
    [resp] = link.transfer(b, drop=True)
    assert len(events(b)) == 1
    b.receive_datagram(req, (ADDR_A, 500), link.now)
    [(again, _, _, _)] = b.datagrams_to_send(link.now)
    assert again == resp and events(b) == []


def next_informational(a, b):
    """An IKE SA from A to B, and the header of A's next INFORMATIONAL request on it, for
    hand-made protected requests."""
    from oe.ike.constants import ExchangeType
    from oe.ike.message import Header

    link = Link(a, b)
    sa_id, _, _, _ = establish(link)
    sa = a._by_id[sa_id]
    header = Header(sa.spi_i, sa.spi_r, 0, ExchangeType.INFORMATIONAL, 0x08,
                    sa.next_message_id, 0).encode()
    return link, sa, header


def test_malformed_protected_request_is_answered_invalid_syntax():
    """A request that passes the integrity check but does not parse: N(INVALID_SYNTAX)."""
    a, b = ike_pair()
    link, sa, header = next_informational(a, b)
    # an inner chain whose first payload claims 200 bytes
    bad = sa.keys.cipher(True).seal(header, 41, b"\x00\x00\x00\xc8", a.rng)
    b.receive_datagram(bad, (ADDR_A, 500), link.now)
    [(resp, _, _, _)] = b.datagrams_to_send(link.now)
    peer = b._by_id[2 - 1]
    plain = peer.keys.cipher(False).open(resp, 28 + 4, len(resp) - 32)
    assert plain[4:8] == b"\x00\x00\x00\x07"  # Notify, protocol 0, INVALID_SYNTAX (7)


def test_unknown_critical_payload_in_ike_sa_init():
    """IKE_SA_INIT with an unknown critical payload: N(UNSUPPORTED_CRITICAL_PAYLOAD, type)."""
    a, b = ike_pair()
    a.initiate(ADDR_B, 0)
    [(req, _, _, _)] = a.datagrams_to_send(0)
    # append payload type 200, critical, after the last one
    first, chain = req[16], bytearray(req[28:])
    pos, ptype = 0, first
    while chain[pos] != 0:
        pos += int.from_bytes(chain[pos + 2 : pos + 4], "big")
    chain[pos] = 200
    data = bytearray(req[:28]) + chain + bytes([0, 0x80, 0, 8, 1, 2, 3, 4])
    data[24:28] = len(data).to_bytes(4, "big")
    b.receive_datagram(bytes(data), (ADDR_A, 500), 0)
    [(resp, _, _, _)] = b.datagrams_to_send(0)
    assert resp[-3:] == b"\x00\x01\xc8"  # notify type 1, data = the payload type
    assert b._sas == {}
    del ptype


def test_unknown_noncritical_payload_and_status_notify_are_skipped():
    from oe.ike import message as m

    a, b = ike_pair()
    a.initiate(ADDR_B, 0)
    [(req, _, _, _)] = a.datagrams_to_send(0)
    header, msg = m.parse_message(req)
    extra = m.Message(msg.spi_i, msg.spi_r, msg.exchange, 0, False, True,
                      msg.payloads + (m.Notify(40000, b"??"), m.Opaque(222, b"vendor stuff")))
    b.receive_datagram(extra.encode(), (ADDR_A, 500), 0)
    [(resp, _, _, _)] = b.datagrams_to_send(0)
    assert m.parse_message(resp)[1].first(m.SA) is not None
    del header


def test_user_errors_are_local_protocol_errors():
    a, b = ike_pair()
    with pytest.raises(LocalProtocolError):
        a.rekey_child(99, 1, 0)
    link = Link(a, b)
    sa, _, _, _ = establish(link)
    with pytest.raises(LocalProtocolError):
        a.rekey_child(sa, 12345, 0)


def test_gcm_ike_encryption_with_nat_and_rekeys():
    """AES-GCM for IKE itself, over NAT on 4500, through CHILD and IKE rekeys."""
    cfg = {"ike_proposals": ("aes256gcm16-prfsha512-x25519",),
           "esp_proposals": ("aes256gcm16",)}
    a, b = ike_pair(cfg_a=cfg, cfg_b=cfg)
    link = Link(a, b, nat="203.0.113.9")
    sa, sb, ca, _ = establish(link)
    assert a._by_id[sa].suite.encr == EncrId.AES_GCM_16
    b.rekey_ike(sb, link.now)
    link.roundtrip(b)
    a.rekey_child(sa, ca.spi_in, link.now)
    link.roundtrip(a)
    ea, eb = events(a), events(b)
    assert [type(e) for e in ea] == [IkeSaRekeyed, ChildSaRekeyed, ChildSaDeleted]
    assert ea[1].child.udp_encap
    assert_pair(ea[1].child, eb[1].child)


def test_ipv6_hosts_use_id_ipv6_addr_and_128_selectors():
    a = make_engine("2001:db8::1", "a", {"2001:db8::2": "b"}, 1)
    b = make_engine("2001:db8::2", "b", {"2001:db8::1": "a"}, 2)
    link = Link(a, b)
    a.initiate("2001:db8::2", 0)
    link.roundtrip(a)
    ea, eb = events(a), events(b)
    assert ea[0].remote_id == "2001:db8::2" and eb[0].remote_id == "2001:db8::1"
    assert ea[1].child.remote_ts == (TrafficSelector.host("2001:db8::2"),)
    assert_pair(ea[1].child, eb[1].child)


def test_fqdn_identity():
    """IDi of type ID_FQDN: the responder's key lookup gets the name, and the selectors
    narrow to the addresses the name's key vouches for."""
    from oe.ike.auth import Identity, PeerKey
    from oe.ike.sa import IkeConfig, IkeEngine
    from ike_helpers import host_key, seeded_rng

    name = Identity.fqdn("a.example.org")
    b_key = PeerKey(host_key("b").public_key(), frozenset({ADDR_B}))
    a = IkeEngine(IkeConfig(local_addrs=frozenset({ADDR_A}), private_key=host_key("a"), local_id=name),
                  rng=seeded_rng(1), lookup_key={Identity.from_address(ADDR_B): b_key}.get)
    asked = []

    def lookup(ident):
        asked.append(ident)
        return PeerKey(host_key("a").public_key(), frozenset({ADDR_A})) if ident == name else None

    b = IkeEngine(IkeConfig(local_addrs=frozenset({ADDR_B}), private_key=host_key("b")), rng=seeded_rng(2),
                  lookup_key=lookup)
    link = Link(a, b)
    a.initiate(ADDR_B, 0)
    link.roundtrip(a)
    eb = events(b)
    assert asked == [name] and eb[0].remote_id == "a.example.org"
    assert eb[1].child.remote_ts == (TrafficSelector.host(ADDR_A),)


def test_method_1_with_a_peer_that_does_not_announce_hash_algorithms(monkeypatch):
    """A peer without SIGNATURE_HASH_ALGORITHMS gets AUTH method 1 (RSA, SHA-1) and its own
    method 1 signature is accepted (RFC 7427 section 4)."""
    from oe.ike.tasks import ike_init
    from oe.ike.message import Auth, Notify

    a, b = ike_pair()
    link = Link(a, b)
    real_notify, real_hashes = ike_init.hash_algorithms_notify, ike_init.hashes_of
    monkeypatch.setattr(ike_init, "hash_algorithms_notify", lambda: Notify(40001, b""))
    a.initiate(ADDR_B, 0)  # A plays the legacy peer: no notify ...
    monkeypatch.setattr(ike_init, "hash_algorithms_notify", real_notify)
    link.transfer(a)
    monkeypatch.setattr(ike_init, "hashes_of", lambda msg: set())
    link.transfer(b)  # ... and ignores B's, so it signs with method 1
    monkeypatch.setattr(ike_init, "hashes_of", real_hashes)
    [auth_req] = link.transfer(a)
    link.transfer(b)
    assert [type(e) for e in events(a)] == [IkeSaEstablished, ChildSaEstablished]
    assert [type(e) for e in events(b)] == [IkeSaEstablished, ChildSaEstablished]
    sa_b = b._by_id[1]
    from oe.ike.message import parse_message
    header, msg = parse_message(auth_req)
    sa_b.datagram = auth_req
    inner = sa_b._open(header, msg, 0)
    assert inner.first(Auth).method == 1


def test_create_child_sa_for_one_more_selector_pair():
    """CREATE_CHILD_SA { SA, Ni, TSi, TSr } --> <-- { SA, Nr, TSi, TSr }: a second CHILD SA."""
    a, b = ike_pair()
    link = Link(a, b)
    sa, sb, _, _ = establish(link)
    a.create_child(sa, link.now, local_ts=[TrafficSelector.host(ADDR_A, 17)],
                   remote_ts=[TrafficSelector.host(ADDR_B, 17, 53)])
    link.roundtrip(a)
    [ea], [eb] = events(a), events(b)
    assert isinstance(ea, ChildSaEstablished) and isinstance(eb, ChildSaEstablished)
    assert_pair(ea.child, eb.child)
    assert ea.child.remote_ts == (TrafficSelector.host(ADDR_B, 17, 53),)
    assert len(a.children(sa)) == len(b.children(sb)) == 2


def test_child_rekey_invalid_ke_retry():
    """PFS groups differ: <-- N(INVALID_KE_PAYLOAD, 14), the retry with MODP-2048 succeeds."""
    a, b = ike_pair(cfg_a={"esp_proposals": ("aes128gcm16-ecp256-modp2048",)},
                    cfg_b={"esp_proposals": ("aes128gcm16-modp2048",)})
    link = Link(a, b)
    sa, _, ca, _ = establish(link)
    a.rekey_child(sa, ca.spi_in, link.now)
    link.roundtrip(a)
    ea, eb = events(a), events(b)
    assert [type(e) for e in ea] == [ChildSaRekeyed, ChildSaDeleted]
    assert [type(e) for e in eb] == [ChildSaRekeyed, ChildSaDeleted]
    assert ea[0].child.dh == DhId.MODP_2048


def test_old_ike_sa_is_forgotten_when_the_peer_never_deletes_it():
    a, b = ike_pair()
    link = Link(a, b)
    sa, _, _, _ = establish(link)
    a.rekey_ike(sa, link.now)
    link.transfer(a)
    link.transfer(b)  # <-- CREATE_CHILD_SA { SA, Nr, KEr }
    link.transfer(a, drop=True)  # INFORMATIONAL { D(IKE) } is lost, every time
    assert len(b._sas) == 2
    while (t := b.get_timer()) is not None:
        link.now = t
        b.handle_timer(t)
    assert len(b._sas) == 1 and [type(e) for e in events(b)] == [IkeSaRekeyed]


def test_initiator_insists_on_the_peer_it_asked_for():
    """B authenticates fine, but as the wrong ID: A refuses (a key that DNS vouches for is
    not enough, it must be the key of the peer A wanted)."""
    from oe.ike.auth import Identity

    a, b = ike_pair()
    link = Link(a, b)
    a.initiate(ADDR_B, 0, remote_id=Identity.fqdn("b.example.org"))
    link.roundtrip(a)
    [fa] = events(a)
    assert fa.notify == NotifyType.AUTHENTICATION_FAILED and "expected b.example.org" in fa.reason
    a, b = ike_pair()
    link = Link(a, b)
    a.initiate(ADDR_B, 0, any_remote_id=True)
    link.roundtrip(a)
    assert [type(e) for e in events(a)] == [IkeSaEstablished, ChildSaEstablished]


@pytest.mark.parametrize("order", ["crossing", "a_answered_first"])
def test_simultaneous_ike_rekeys_stay_consistent(order):
    """Both sides rekey the IKE SA at once (section 2.8.2): each answers the other with
    TEMPORARY_FAILURE while its own rekey is in flight, so both keep one and the same IKE SA
    and the CHILD SA stays with it."""
    a, b = ike_pair()
    link = Link(a, b)
    sa, sb, ca, _ = establish(link)
    a.rekey_ike(sa, link.now)
    b.rekey_ike(sb, link.now)
    if order == "crossing":
        link.transfer(a)
        link.transfer(b)
    link.roundtrip(a)
    assert {(s.spi_i, s.spi_r) for s in a._sas.values()} == \
        {(s.spi_i, s.spi_r) for s in b._sas.values()}
    assert len(a._sas) == len(b._sas) == 1
    assert [c.spi_in for c in a.children(sa)] == [ca.spi_in]
    assert [c.spi_out for c in b.children(sb)] == [ca.spi_in]
    events(a), events(b)
    a.rekey_child(sa, ca.spi_in, link.now)  # the survivors still work together
    link.roundtrip(a)
    assert [type(e) for e in events(b)] == [ChildSaRekeyed, ChildSaDeleted]


def test_child_deleted_by_peer_before_its_creation_answer_arrives():
    """B: CREATE_CHILD_SA --> A answers, the answer is lost; A deletes the new SA at once
    (INFORMATIONAL { D(ESP) } --> B, which does not know it yet); B's retransmission fetches
    the cached answer. The SA must not come to life at B alone."""
    a, b = ike_pair()
    link = Link(a, b)
    sa, sb, _, _ = establish(link)
    b.create_child(sb, link.now, local_ts=[TrafficSelector.host(ADDR_B, 17)],
                   remote_ts=[TrafficSelector.host(ADDR_A, 17, 53)])
    link.transfer(b)
    link.transfer(a, drop=True)  # <-- CREATE_CHILD_SA { SA, Nr, TSi, TSr } lost
    [new] = [e.child for e in events(a)]
    a.delete_child(sa, new.spi_in, link.now)
    link.roundtrip(a)
    link.advance(0.5)  # B retransmits and gets the cached answer
    link.roundtrip(b)
    assert [type(e) for e in events(b)] == [ChildSaFailed]
    assert {c.spi_in for c in a.children(sa)} == {c.spi_out for c in b.children(sb)}


def test_late_ike_sa_init_retransmit_gets_the_same_answer_after_auth():
    """A retransmitted IKE_SA_INIT request that arrives after IKE_AUTH is answered from the
    IKE SA it made (section 2.1), and makes no new half-open SA."""
    a, b = ike_pair()
    link = Link(a, b)
    a.initiate(ADDR_B, 0)
    [init] = link.transfer(a)
    [answer] = link.transfer(b)
    link.roundtrip(a)
    assert b.half_open() == 0 and len(b._sas) == 1
    b.receive_datagram(init, (ADDR_A, 500), 1.0)
    assert b.datagrams_to_send(1.0) == [(answer, (ADDR_A, 500), 500, ADDR_B)]
    assert len(b._sas) == 1 and b.half_open() == 0


def test_responder_prefers_a_group_that_fits_the_initiators_ke():
    """Both groups are allowed on both sides: no INVALID_KE_PAYLOAD round trip, even though
    the responder lists the other group first."""
    a, b = ike_pair(cfg_a={"ike_proposals": ("aes128-sha256-x25519-ecp256",)},
                    cfg_b={"ike_proposals": ("aes128-sha256-ecp256-x25519",)})
    link = Link(a, b)
    establish(link)  # asserts one datagram per step: no retry
    assert b._by_id[1].suite.dh == DhId.CURVE25519


def test_unknown_critical_payload_in_a_protected_request():
    """INFORMATIONAL { <222, critical> } --> <-- { N(UNSUPPORTED_CRITICAL_PAYLOAD, 222) }"""
    from oe.ike.message import Notify, Opaque, encode_payloads, parse_payloads

    a, b = ike_pair()
    link, sa, header = next_informational(a, b)
    first, inner = encode_payloads([Opaque(222, b"??", critical=True)])
    b.receive_datagram(sa.keys.cipher(True).seal(header, first, inner, a.rng), (ADDR_A, 500), 0)
    [(resp, _, _, _)] = b.datagrams_to_send(0)
    plain = sa.keys.cipher(False).open(resp, 32, len(resp) - 32)
    [notify] = parse_payloads(resp[32 - 4], plain)
    assert notify == Notify(NotifyType.UNSUPPORTED_CRITICAL_PAYLOAD, b"\xde")


def test_request_from_another_source_is_answered_there_but_moves_nothing_without_nat():
    """Section 2.11: the answer goes where the request came from; section 2.23: without NAT
    the IKE SA keeps its peer address (a spoofed replay must not redirect it)."""
    a, b = ike_pair()
    link = Link(a, b)
    sa, sb, _, _ = establish(link)
    a.check_liveness(sa, link.now)
    [(req, _, _, _)] = a.datagrams_to_send(link.now)
    b.receive_datagram(req, ("198.51.100.99", 600), link.now)
    [(_, to, _, _)] = b.datagrams_to_send(link.now)
    assert to == ("198.51.100.99", 600)
    assert (b._by_id[sb].peer_addr, b._by_id[sb].peer_port) == (ADDR_A, 500)


def test_nat_rebinding_moves_the_peer_and_says_so():
    """Behind NAT, A's mapping changes: B follows the authentic request to the new port and
    reports IkeSaPeerMoved, so the datapath can send ESP-in-UDP there."""
    from oe.ike.events import IkeSaPeerMoved

    a, b = ike_pair()
    link = Link(a, b, nat="203.0.113.77")
    sa, sb, _, _ = establish(link)
    a.check_liveness(sa, link.now)
    [(req, _, _, _)] = a.datagrams_to_send(link.now)
    b.receive_datagram(req, ("203.0.113.77", 45000), link.now, local_port=4500)
    assert events(b) == [IkeSaPeerMoved(sb, "203.0.113.77", 45000, ADDR_B)]
    assert b.datagrams_to_send(link.now)[0][1] == ("203.0.113.77", 45000)


def test_initial_contact_retires_the_ike_sa_of_a_peers_earlier_life():
    """A restarts (a fresh engine, same key) and initiates again: its IKE_AUTH carries
    N(INITIAL_CONTACT), so B forgets the IKE SA it still held from A's earlier life
    (section 2.4), without DELETEs, before reporting the new one."""
    a, b = ike_pair()
    _, old_b, _, _ = establish(Link(a, b))
    a2 = make_engine(ADDR_A, "a", {ADDR_B: "b"}, seed=77)
    link = Link(a2, b)
    a2.initiate(ADDR_B, link.now)
    # IKE_SA_INIT { SA, KEi, Ni, N(NATD)... } -->  <-- { SA, KEr, Nr, N(NATD)... }
    link.transfer(a2)
    link.transfer(b)
    # IKE_AUTH { IDi, IDr, N(INITIAL_CONTACT), AUTH, SA, TSi, TSr } -->
    assert len(link.transfer(a2)) == 1
    got = events(b)
    kinds = [type(e) for e in got]
    assert kinds == [ChildSaDeleted, IkeSaDeleted, IkeSaEstablished, ChildSaEstablished], kinds
    assert got[1].sa_id == old_b and "INITIAL_CONTACT" in got[1].reason
    assert b.children(old_b) == [] and len(b.children(got[2].sa_id)) == 1
    # <-- IKE_AUTH { IDr, AUTH, SA, TSi, TSr } and nothing else: no DELETE for the forgotten SA
    [answer] = link.transfer(b)
    header = parse_header(answer)
    assert (header.exchange, header.is_response) == (ExchangeType.IKE_AUTH, True)
    # A's second IKE SA with B (B still up) carries no INITIAL_CONTACT: nothing is retired.
    a2.initiate(ADDR_B, link.now)
    link.roundtrip(a2)
    assert IkeSaDeleted not in [type(e) for e in events(b)]


def test_a_peer_cannot_make_us_hold_unbounded_child_sas():
    """Review of issue 10: an authenticated peer asking for CHILD SA after CHILD SA (no
    REKEY_SA) gets N(NO_ADDITIONAL_SAS) past children_per_ike, and we hold no more SPIs."""
    from oe.ike import events as E
    from oe.ike.ts import TrafficSelector
    CHILD_SAS_MAX = 16
    a, b = ike_pair(cfg_a={"children_per_ike": CHILD_SAS_MAX})
    link = Link(a, b)
    sa_id = a.initiate(ADDR_B, 0.0)
    link.roundtrip(a)
    b_id = next(e.sa_id for e in events(b) if isinstance(e, E.IkeSaEstablished))
    for _ in range(CHILD_SAS_MAX + 20):
        b.create_child(b_id, link.now, local_ts=[TrafficSelector.host(ADDR_B)],
                       remote_ts=[TrafficSelector.host(ADDR_A)])
        link.roundtrip(b)
    assert len(a.children(sa_id)) == CHILD_SAS_MAX
    assert len(a.spis) == CHILD_SAS_MAX
    refused = [e for e in events(b) if isinstance(e, E.ChildSaFailed)]
    # the first CHILD SA came with IKE_AUTH: CHILD_SAS_MAX - 1 more were taken
    assert len(refused) == 21 and all(e.notify == NotifyType.NO_ADDITIONAL_SAS for e in refused)


def test_established_with_follows_a_peer_that_moved():
    """INITIAL_CONTACT's question (section 2.4), asked of the IKE SAs by peer address: an IKE
    SA that followed its peer across a NAT (2.23) answers for the new address, not the old."""
    a, b = ike_pair()
    link = Link(a, b, nat="203.0.113.77")
    sa, sb, _, _ = establish(link)
    assert b.established_with("203.0.113.77", None)
    a.check_liveness(sa, link.now)
    [(req, _, _, _)] = a.datagrams_to_send(link.now)
    b.receive_datagram(req, ("203.0.113.78", 45000), link.now, local_port=4500)
    assert b.established_with("203.0.113.78", None)
    assert not b.established_with("203.0.113.77", None)
    assert not b.established_with("203.0.113.78", b._by_id[sb])


def test_initial_contact_question_does_not_walk_every_ike_sa(monkeypatch):
    """Issue 14: with 10,000 peers, A's IKE_AUTH asked every IKE SA whether it was with B
    (section 2.4's INITIAL_CONTACT); the IKE SAs with other peers are not looked at."""
    from oe.ike.ike_sa import IkeSa

    a, b = ike_pair()
    link = Link(a, b)
    for n in range(200):  # half-open IKE SAs with 200 other peers
        a.initiate(f"203.0.113.{n + 1}", link.now)
    a.datagrams_to_send(link.now)
    read = []

    class Counted:  # reads of an IKE SA's peer address, by which SA
        def __get__(self, sa, owner):
            if sa is None:
                return self
            read.append(sa)
            return sa.__dict__["peer_addr"]

        def __set__(self, sa, value):
            sa.__dict__["peer_addr"] = value

    monkeypatch.setattr(IkeSa, "peer_addr", Counted(), raising=False)
    a.initiate(ADDR_B, link.now)
    link.roundtrip(a)
    others = {sa for sa in read if sa.__dict__["peer_addr"] not in (ADDR_A, ADDR_B)}
    assert len(others) == 0, f"{len(others)} IKE SAs with other peers looked at"
