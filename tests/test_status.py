"""`oe status` as one typed structure (oe.status): JSON once, text and --brief from it."""

import json

from oe.status import (
    ChildSaStatus, ErouteStatus, IkeSaStatus, LimitStatus, ShuntStatus, Status, render,
    render_brief,
)


def sample() -> Status:
    sa = ChildSaStatus(
        src="192.0.2.10", dst="198.51.100.2", peer="198.51.100.2", spi_in="00001001",
        spi_out="0000c0de", said="esp.c0de@198.51.100.2", algorithm="AES_GCM_16_128",
        encap="ESP", bytes_in=2048, bytes_out=4096, packets_in=2, packets_out=4, age=12.5,
        initiator=True, sa_id=3, encryption="AES_GCM_16_128", integrity=None,
        dh_group="CURVE25519", esn=False, rekey_in=3287.5, expires_in=3587.5, last_used=1.5,
        key="IPSECKEY, dnssec secure")
    return Status(
        daemon=True,
        eroutes=[ErouteStatus(4, 400, "192.0.2.10/32", "198.51.100.2/32", 0, 0, 0,
                              "esp.c0de@198.51.100.2", "private-or-clear", None),
                 ErouteStatus(0, 0, "0.0.0.0/0", "0.0.0.0/0", 0, 0, 0, "%trap",
                              "private-or-clear", "policies/private-or-clear:1")],
        sas=[sa],
        shunts=[ShuntStatus("192.0.2.10", "203.0.113.7", "%pass", "private-or-clear",
                            "no key", 880.0)],
        ike_sas=[IkeSaStatus(3, "192.0.2.10", 500, "198.51.100.2", 500, True, "0102030405060708",
                             "1112131415161718", "ESTABLISHED", "AES_GCM_16_128", "NONE",
                             "PRF_HMAC_SHA2_256", "CURVE25519", 12.5, 1.5, 1)],
        datapath={"holds": 0}, ike={"half_open": 0},
        limits={"holds": LimitStatus(128, 0, 2)}, counters={"children_refused": 0})


def test_json_keeps_todays_keys_and_reads_back_the_same():
    status = sample()
    data = json.loads(json.dumps(status.to_json()))
    assert list(data) == ["daemon", "eroutes", "sas", "shunts", "ike_sas", "datapath", "ike",
                          "limits", "counters"]
    old_sa_keys = {"src", "dst", "peer", "spi_in", "spi_out", "said", "algorithm", "encap",
                   "bytes_in", "bytes_out", "packets_in", "packets_out", "age", "initiator"}
    assert old_sa_keys < set(data["sas"][0])
    assert {"dh_group", "rekey_in", "expires_in", "last_used", "sa_id"} < set(data["sas"][0])
    assert data["sas"][0]["key"] == "IPSECKEY, dnssec secure"   # issue 12: key provenance
    assert data["limits"] == {"holds": {"max": 128, "in_use": 0, "dropped": 2}}
    assert Status.from_json(data) == status


def test_without_a_daemon_only_the_four_keys():
    status = Status(daemon=False, eroutes=[])
    assert set(status.to_json()) == {"daemon", "eroutes", "sas", "shunts"}


def test_the_text_view_shows_each_child_sa_with_its_algorithms_and_times():
    lines = render(sample()).splitlines()
    assert lines[0].startswith("0          0.0.0.0/0")    # sorted by destination
    assert f"{'esp.c0de@198.51.100.2':<28} 192.0.2.10 -> 198.51.100.2  AES_GCM_16_128 ESP  " \
           "in 2048B/2p out 4096B/4p  age 12.5s  initiator" in lines
    assert "    IKE SA #3: AES_GCM_16_128, PFS CURVE25519, rekey in 3287.5s, " \
           "expires in 3587.5s, last used 1.5s ago, key IPSECKEY, dnssec secure" in lines
    assert "%pass    192.0.2.10 -> 203.0.113.7  private-or-clear: no key (880s left)" in lines
    assert "#3    192.0.2.10[500] <-> 198.51.100.2[500]  ESTABLISHED initiator  " \
           "0102030405060708_i 1112131415161718_r  AES_GCM_16_128/PRF_HMAC_SHA2_256/CURVE25519  " \
           "established 12.5s ago, last heard 1.5s ago, 1 CHILD SA" in lines
    assert lines[-1] == "Limits: holds 0/128 (2 dropped)"


def test_brief_is_one_line_per_peer():
    lines = render_brief(sample()).splitlines()
    assert lines == [
        "198.51.100.2             up     1 SA  AES_GCM_16_128 PFS CURVE25519 ESP  "
        "last used 1.5s ago  rx 2.0 KiB tx 4.0 KiB",
        "203.0.113.7              %pass  0 SAs  private-or-clear: no key, 880s left"]
    assert render_brief(Status(daemon=True, eroutes=[])) == "no peers"
    half = sample()
    half.ike_sas[0].remote_addr, half.ike_sas[0].state = "198.51.100.9", "EXPECT_AUTH_RESPONSE"
    assert "198.51.100.9             ike    0 SAs  EXPECT_AUTH_RESPONSE initiator" in \
        render_brief(half).splitlines()


def test_each_sa_shows_what_the_kernel_refused_to_send():
    """Issue 17, 3 (no silent loss): per SA, the outbound datagrams the kernel refused
    (`send_errors`) and of them those too big for the local route (`emsgsize`), from the
    datapath's sa_stats; the text view names them only when there are any."""
    import ipaddress
    from types import SimpleNamespace
    from oe.status import child_sa_status
    peer = ipaddress.ip_address("198.51.100.2")
    tunnel = SimpleNamespace(pair=SimpleNamespace(src="192.0.2.10", dst=peer), peer=peer,
                             spi_in=0x1001, spi_out=0xC0DE, sa_out=1, algorithm="AES_GCM_16_128",
                             udp_encap=False, created=0.0, initiator=True, sa_id=3)
    lifecycle = SimpleNamespace(children={}, times=None, last_used=lambda *_: None)
    sa = child_sa_status(tunnel, lifecycle, {"packets": 1},
                         {"packets": 9, "send_errors": 3, "emsgsize": 2}, 10.0)
    assert (sa.send_errors, sa.emsgsize) == (3, 2)
    data = json.loads(json.dumps(Status(daemon=True, eroutes=[], sas=[sa]).to_json()))
    assert (data["sas"][0]["send_errors"], data["sas"][0]["emsgsize"]) == (3, 2)
    assert ", 3 send errors (2 too big)" in render(Status(daemon=True, eroutes=[], sas=[sa]))
    assert "send errors" not in render(sample())
