"""IkeEngine.ike_sas(): the snapshot a status view shows, from IKE_SA_INIT to a rekey."""

from __future__ import annotations

from ike_helpers import ADDR_A, ADDR_B, Link, events, ike_pair

from oe.ike.events import IkeSaInfo, IkeSaRekeyed


def test_ike_sas_follow_one_negotiation_through_its_states():
    """Each side lists its IKE SA with addresses, SPIs, the state it waits in, the algorithms
    IKE_SA_INIT settled, when it was established and last heard from, and its CHILD SAs."""
    a, b = ike_pair(cfg_a={"ike_proposals": ("aes256gcm16-prfsha384-ecp256",)},
                    cfg_b={"ike_proposals": ("aes256gcm16-prfsha384-ecp256",)})
    link = Link(a, b)
    sid = a.initiate(ADDR_B, 1.0)
    [info] = a.ike_sas()
    assert info == IkeSaInfo(
        sa_id=sid, local_addr=ADDR_A, local_port=500, remote_addr=ADDR_B, remote_port=500,
        initiator=True, spi_i=info.spi_i, spi_r=bytes(8), state="EXPECT_SA_INIT_RESPONSE",
        encryption=None, integrity=None, prf=None, dh_group=None, established_at=None,
        last_heard=None, child_sas=0)
    link.now = 2.0
    link.transfer(a)                                    # IKE_SA_INIT { SA, KEi, Ni } -->
    [half_open] = b.ike_sas()
    assert (half_open.state, half_open.initiator, half_open.spi_i) == (
        "EXPECT_AUTH_REQUEST", False, info.spi_i)
    assert half_open.spi_r != bytes(8) and half_open.established_at is None
    assert half_open.last_heard == 2.0
    link.now = 3.0
    link.transfer(b)                                    # <-- IKE_SA_INIT { SA, KEr, Nr }
    assert a.ike_sas()[0].state == "EXPECT_AUTH_RESPONSE"
    assert a.ike_sas()[0].last_heard == 3.0
    link.now = 4.0
    link.roundtrip(a)                                   # IKE_AUTH both ways
    for engine, initiator in ((a, True), (b, False)):
        [up] = engine.ike_sas()
        assert (up.state, up.initiator, up.child_sas) == ("ESTABLISHED", initiator, 1)
        assert (up.spi_i, up.spi_r) == (info.spi_i, half_open.spi_r)
        assert (up.encryption, up.integrity, up.prf, up.dh_group) == (
            "AES_GCM_16_256", "NONE", "HMAC_SHA2_384", "ECP_256")
        assert up.established_at == 4.0 and up.last_heard == 4.0


def test_ike_sas_show_the_new_ike_sa_after_a_rekey():
    """After an IKE SA rekey by B the list holds one IKE SA per sa_id: the new one, with its
    SPIs, B as its initiator, its own established time, and the CHILD SA it took over."""
    a, b = ike_pair()
    link = Link(a, b)
    sid = a.initiate(ADDR_B, 0)
    link.roundtrip(a)
    events(a), events(b)
    link.now = 10.0
    b.rekey_ike(b.ike_sas()[0].sa_id, link.now)
    link.roundtrip(b)
    [rekeyed] = [e for e in events(a) if isinstance(e, IkeSaRekeyed)]
    [info] = a.ike_sas()
    assert (info.sa_id, info.spi_i, info.spi_r) == (sid, rekeyed.spi_i, rekeyed.spi_r)
    assert (info.initiator, info.state, info.child_sas) == (False, "ESTABLISHED", 1)
    assert info.established_at == 10.0 and info.last_heard == 10.0
    assert info.encryption == "AES_CBC_128" and info.integrity == "HMAC_SHA2_256_128"
    assert (info.prf, info.dh_group) == ("HMAC_SHA2_256", "CURVE25519")


def test_ike_sas_forget_a_deleted_ike_sa():
    a, b = ike_pair()
    link = Link(a, b)
    sid = a.initiate(ADDR_B, 0)
    link.roundtrip(a)
    a.delete_ike(sid, 1.0)
    link.roundtrip(a)
    assert a.ike_sas() == [] and b.ike_sas() == []
