"""The lives of the opportunist's SAs (oe.lifecycle), driven in memory: rekey or retire at the
soft limit, hard limits, liveness samples, childless IKE SAs, and the timer that wakes the
daemon for them."""

import ipaddress

from oe.commands import (CheckLiveness, CreateChild, DeleteChild, DeleteIke, FetchKey, Initiate,
                         Log, RekeyChild, SampleInbound, StaleKey)
from oe.dnskeys.choice import KeyLookup, Target, Verdict
from oe.dnskeys.records import RsaPublicKey
from oe.ike.constants import NotifyType
from oe.ike.events import ChildSa
from oe.ike.ts import TrafficSelector
from oe.eroute import Shunt
from oe.lifecycle import CHILDLESS_GRACE, ChildInfo, Lifecycle, SaTimes
from oe.flows import Pair
from oe.opportunist import Opportunist
from oe.policygroups import combine, parse_group, prospective_table

ME = "192.0.2.10"
PEER = "198.51.100.2"


def world(times=SaTimes(lifetime=3600, rekey_margin=300, dpd_delay=30)):
    policy = combine([parse_group("private-or-clear", "0.0.0.0/0\n", "policies/p-o-c")])
    oe = Opportunist(prospective_table(policy))
    return oe, Lifecycle(oe, times)


def lookup_of(dst):
    return KeyLookup(Target.parse(dst), Verdict.KEY, gateway=ipaddress.ip_address(dst))


def tunnel(oe, life, dst=PEER, sa_id=1, spi_in=0x1001, sa_out=7, now=0.0):
    pair = Pair.of(ME, dst)
    oe.tunnel_up(pair, ipaddress.ip_address(dst), sa_id, spi_in, 0xc0de, "AES_GCM_16_128",
                 False, True, now, sa_out=sa_out)
    life.child_installed(sa_id, pair, spi_in, ChildInfo(now, "AES_GCM_16_128", None, None, False))
    return pair


def child_sa(local, remote, spi_in):
    """An oe.ike ChildSa with host selectors local <-> remote (keys do not matter here)."""
    return ChildSa(spi_in, 0xc0de, 20, 128, 0, False, b"", b"", b"", b"",
                   (TrafficSelector.host(local),), (TrafficSelector.host(remote),), ME,
                   remote, False, 0, 0, 0)


def test_soft_limit_rekeys_a_used_sa_and_retires_an_idle_one():
    """FreeS/WAN's OE rule: rekey only what was used since the last soft limit."""
    oe, life = world()
    tunnel(oe, life)
    assert life.soft_limit(7, packets=10, why="soft limit (time)") == [RekeyChild(1, 0x1001)]
    assert life.soft_limit(7, packets=10, why="soft limit (time)") == [
        Log(f"OE to {PEER} idle, deleting at soft limit (time)"), DeleteIke(1)]
    assert life.soft_limit(99, packets=10, why="x") == []     # not a tunnel's SA now


def test_a_hard_limit_ends_the_tunnels_ike_sa():
    oe, life = world()
    tunnel(oe, life)
    assert life.hard_limit("in", 0x1001, 0x1001, "time") == [
        Log("SA 1001 in expired (time)"), DeleteIke(1)]
    assert life.hard_limit("out", 7, 0xc0de, "packets")[-1] == DeleteIke(1)
    assert life.hard_limit("out", 8, 0xc0de, "packets") == []


def test_childless_ike_sas_go_after_their_grace_and_wake_the_timer():
    oe, life = world()
    life.ike_established(4, 5, now=100.0)
    life.ike_established(4, 6, now=101.0)
    assert life.next_timer() == 100.0 + CHILDLESS_GRACE
    assert life.tick(100.0 + CHILDLESS_GRACE - 1) == []
    assert life.tick(100.0 + CHILDLESS_GRACE) == [DeleteIke(5)]
    assert life.counters["childless_deleted"] == 1
    life.child_installed(6, Pair.of(ME, PEER), 0x1001,
                         ChildInfo(0, "AES_GCM_16_128", None, None, False))
    assert life.tick(200.0) == [] and life.next_timer() is None     # it has a CHILD SA now
    assert life.family(5) == 4 and life.ike_gone(5) == [] and life.family(5) is None


def test_a_tunnel_quiet_between_two_samples_gets_a_liveness_check():
    """RFC 7296 2.4: only a peer we heard nothing from is asked whether it is alive."""
    oe, life = world()
    tunnel(oe, life, PEER, sa_id=1, spi_in=0x1001)
    tunnel(oe, life, "198.51.100.3", sa_id=2, spi_in=0x2001, sa_out=8)
    life.started(0.0)
    assert life.next_timer() == 30.0
    assert life.tick(29.0) == []
    assert life.tick(30.0) == [SampleInbound()] and life.next_timer() == 60.0
    assert life.inbound_sample({0x1001: 5, 0x2001: 9}, 30.0) == []   # nothing to compare yet
    assert life.inbound_sample({0x1001: 5, 0x2001: 12}, 60.0) == [CheckLiveness(1)]


def test_last_use_follows_the_counters():
    oe, life = world()
    tunnel(oe, life)
    assert life.last_used(0x1001, 0, 0, now=5.0) is None             # never used
    assert life.last_used(0x1001, 0, 3, now=6.0) == 6.0
    assert life.last_used(0x1001, 0, 3, now=9.0) == 6.0              # nothing since
    assert life.inbound_sample({0x1001: 2}, 10.0) == []
    assert life.last_used(0x1001, 2, 3, now=11.0) == 10.0


def test_a_refused_child_sa_is_deleted_and_ends_the_negotiation():
    oe, life = world()
    pair = Pair.of(ME, PEER)
    oe.acquire(pair, 0.0)
    life.initiated(4, 9, Initiate(pair, pair.dst))
    commands = life.child_refused(9, child_sa(ME, PEER, 0x1001), "port range 1000-2000", 1.0)
    assert commands[:2] == [Log(f"refused CHILD SA 00001001 with {PEER}: port range 1000-2000"),
                            DeleteChild(9, 0x1001)]
    assert pair not in oe.negotiations and oe.shunts[pair].action is Shunt.PASS


def test_rekey_time_is_the_margin_before_the_lifetime_but_at_most_half():
    assert SaTimes(3600, 300).soft == 3300
    assert SaTimes(600, 500).soft == 300


def test_a_failed_ike_sa_is_judged_here_not_in_the_daemon():
    """Issue 11, 3: which failure it was (our check of the peer's AUTH, or anything else) is
    decided in the pure part: ours fetches the key afresh once (the peer may have rotated it),
    the rest fails the negotiation; a responder's failure marks the peer's key stale."""
    oe, life = world()
    pair = Pair.of(ME, PEER)
    oe.acquire(pair, 0.0)
    oe.key_found(pair, lookup_of(PEER), 0.1)
    life.initiated(4, 1, Initiate(pair, pair.dst))
    assert life.ike_failed(1, PEER, "AUTH payload does not verify",
                           NotifyType.AUTHENTICATION_FAILED, True, 1.0) == [
        FetchKey(pair, PEER, refresh=True)]
    life.initiated(4, 2, Initiate(pair, pair.dst))
    assert life.ike_failed(2, PEER, "no response", None, False, 2.0) == []
    assert oe.shunts[pair].reason.startswith("IKE timeout: no response")
    assert life.ike_failed(3, "203.0.113.9", "AUTH payload does not verify",
                           NotifyType.AUTHENTICATION_FAILED, True, 3.0) == [
        Log("IKE with 203.0.113.9 failed: AUTH payload does not verify"),
        StaleKey("203.0.113.9")]
    assert life.ike_failed(4, "203.0.113.9", "peer answered AUTHENTICATION_FAILED",
                           NotifyType.AUTHENTICATION_FAILED, False, 3.0) == [
        Log("IKE with 203.0.113.9 failed: peer answered AUTHENTICATION_FAILED")]


GATEWAY = "192.0.2.1"
CLIENTS = ("198.51.100.10", "198.51.100.20", "198.51.100.30")


GATEWAY_KEY = RsaPublicKey(65537, 0xC0FFEE << 2000 | 1)


def via_gateway(oe, dst, key=GATEWAY_KEY):
    """The Initiate for our flow to `dst`, whose record delegates to GATEWAY with `key`."""
    pair = Pair.of(ME, dst)
    oe.acquire(pair, 0.0)
    oe.negotiations[pair].stage = "ike"
    lookup = KeyLookup(Target.parse(dst), Verdict.KEY, key=key,
                       gateway=ipaddress.ip_address(GATEWAY))
    return Initiate(pair, ipaddress.ip_address(GATEWAY), peer_key=lookup)


def test_an_idle_child_sa_of_a_shared_ike_sa_goes_alone():
    """docs/gateway.md 5: soft and hard limits delete the tunnel's CHILD SA while its IKE SA
    carries other pairs; the last one takes the IKE SA with it."""
    oe, life = world()
    tunnel(oe, life, CLIENTS[0], sa_id=1, spi_in=0x1001, sa_out=7)
    tunnel(oe, life, CLIENTS[1], sa_id=1, spi_in=0x2001, sa_out=8)
    assert life.soft_limit(7, packets=0, why="soft limit (time)") == [
        Log(f"OE to {CLIENTS[0]} idle, deleting at soft limit (time)"), DeleteChild(1, 0x1001)]
    assert life.hard_limit("in", 0x2001, 0x2001, "time") == [
        Log("SA 2001 in expired (time)"), DeleteChild(1, 0x2001)]
    oe.tunnel_down(Pair.of(ME, CLIENTS[0]), 0x1001, "deleted", 1.0)
    assert life.soft_limit(8, packets=0, why="soft limit (time)")[-1] == DeleteIke(1)


def test_pairs_are_kept_per_child_sa():
    oe, life = world()
    first = tunnel(oe, life, CLIENTS[0], sa_id=1, spi_in=0x1001, sa_out=7)
    second = tunnel(oe, life, CLIENTS[1], sa_id=1, spi_in=0x2001, sa_out=8)
    assert life.pair_of(1, 0x1001) == first and life.pair_of(1, 0x2001) == second
    life.child_rekeyed(1, 0x1001, 0x3001, ChildInfo(5, "AES_GCM_16_128", None, None, False))
    assert life.child_deleted(1, 0x1001, 7, now=6.0) == first        # the rekeyed one
    assert life.pair_of(1, 0x3001) == first and life.pair_of(1, 0x1001) is None
    assert life.child_deleted(1, 0x2001, 8, now=7.0) == second
    assert life.next_timer() is None                                  # 0x3001 is still up
    life.heard(4, 1)
    assert life.ike_sas(4) == [1] and life.ike_sas(6) == []          # what stop deletes
    assert life.child_deleted(1, 0x3001, None, now=8.0) == first
    assert life.next_timer() == 8.0 + CHILDLESS_GRACE                 # the last one went


def test_an_ike_sa_with_the_same_terms_carries_further_pairs():
    """route_initiate: one IKE SA per (our address, gateway, key): queued while IKE_AUTH runs,
    CREATE_CHILD_SA once established; another key or another local address starts anew."""
    oe, life = world()
    first, second, third = (via_gateway(oe, c) for c in CLIENTS)
    assert life.route_initiate(first) == [first]
    life.initiated(4, 1, first)
    assert life.route_initiate(second)[0].line.startswith("OE for")      # queued on 1
    assert life.ike_established(4, 1, now=1.0) == [CreateChild(1, second.pair)]
    assert life.route_initiate(third) == [CreateChild(1, third.pair)]
    assert life.tick(1.0 + CHILDLESS_GRACE) == []          # requests under way: not childless
    other_key = via_gateway(oe, "198.51.100.40", key=RsaPublicKey(65537, 0xBAD << 2000 | 1))
    assert life.route_initiate(other_key) == [other_key]
    elsewhere = Initiate(other_key.pair, other_key.peer, local=ipaddress.ip_address(
        "192.0.2.11"), peer_key=first.peer_key)
    assert life.route_initiate(elsewhere) == [elsewhere]


def test_children_per_ike_bounds_what_one_ike_sa_takes():
    oe, _ = world()
    life = Lifecycle(oe, children_per_ike=2)
    first, second, third = (via_gateway(oe, c) for c in CLIENTS)
    life.initiated(4, 1, first)
    life.ike_established(4, 1, now=1.0)
    assert life.route_initiate(second) == [CreateChild(1, second.pair)]
    assert life.route_initiate(third) == [third]                       # full: a second IKE SA


def test_a_failed_child_sa_request_fails_its_own_pair_only():
    """ChildSaFailed names the request by its selectors: the other pairs of the IKE SA go on;
    NO_ADDITIONAL_SAS sends the pair to another IKE SA (RFC 7296 1.3)."""
    oe, life = world()
    first, second, third = (via_gateway(oe, c) for c in CLIENTS)
    life.initiated(4, 1, first)
    life.ike_established(4, 1, now=1.0)
    life.route_initiate(second), life.route_initiate(third)
    host = TrafficSelector.host
    assert life.child_failed(1, (host(ME),), (host(CLIENTS[1]),), NotifyType.TS_UNACCEPTABLE,
                             "peer answered TS_UNACCEPTABLE", 2.0) == []
    assert oe.shunts[second.pair].reason == "peer answered TS_UNACCEPTABLE"
    assert first.pair in oe.negotiations and third.pair in oe.negotiations
    assert life.child_failed(1, (), (), None, "IKE rekey failed", 2.0) == []   # names no pair
    assert life.child_failed(1, (host(ME),), (host(CLIENTS[2]),), NotifyType.NO_ADDITIONAL_SAS,
                             "peer answered NO_ADDITIONAL_SAS", 3.0)[-1] == third
    assert life.route_initiate(third) == [third]                      # not on IKE SA 1 again


def test_an_ike_sa_that_fails_or_goes_fails_every_pair_asked_of_it():
    oe, life = world()
    first, second, third = (via_gateway(oe, c) for c in CLIENTS)
    life.initiated(4, 1, first)
    life.route_initiate(second)
    assert life.ike_failed(1, GATEWAY, "no response", None, False, 2.0) == []
    assert {p for p in (first.pair, second.pair) if p in oe.negotiations} == set()
    assert life.route_initiate(third) == [third]                      # IKE SA 1 is forgotten
    life.initiated(4, 2, third)
    life.ike_established(4, 2, now=3.0)
    life.child_installed(2, third.pair, 0x3001, ChildInfo(3, "AES_GCM_16_128", None, None, False))
    oe.tunnel_up(third.pair, third.peer, 2, 0x3001, 0x3002, "x", False, True, 3.0)
    fourth = via_gateway(oe, "198.51.100.40")
    life.route_initiate(fourth)
    assert life.ike_deleted(2, "DELETE from the peer", 4.0) == []
    assert third.pair not in oe.tunnels
    assert oe.shunts[fourth.pair].reason == "IKE SA gone: DELETE from the peer"


def test_an_idle_last_tunnel_keeps_the_ike_sa_a_request_is_under_way_on():
    oe, life = world()
    first, second = via_gateway(oe, CLIENTS[0]), via_gateway(oe, CLIENTS[1])
    life.initiated(4, 1, first)
    life.ike_established(4, 1, now=1.0)
    tunnel(oe, life, CLIENTS[0], sa_id=1, spi_in=0x1001, sa_out=7)
    assert life.route_initiate(second) == [CreateChild(1, second.pair)]
    assert life.soft_limit(7, packets=0, why="soft limit (time)")[-1] == DeleteChild(1, 0x1001)


def test_an_ike_sa_is_childless_from_its_last_child_sa_or_failed_request():
    """The childless grace runs from the last CHILD SA's end; a request on the IKE SA stops
    it, and its failure, with no CHILD SA left, starts it again."""
    oe, life = world()
    first, second = via_gateway(oe, CLIENTS[0]), via_gateway(oe, CLIENTS[1])
    life.initiated(4, 1, first)
    life.ike_established(4, 1, now=1.0)
    tunnel(oe, life, CLIENTS[0], sa_id=1, spi_in=0x1001, sa_out=7)
    life.child_deleted(1, 0x1001, 7, now=2.0)
    assert life.next_timer() == 2.0 + CHILDLESS_GRACE
    assert life.route_initiate(second) == [CreateChild(1, second.pair)]
    assert life.next_timer() is None                                  # a request is under way
    host = TrafficSelector.host
    life.child_failed(1, (host(ME),), (host(CLIENTS[1]),), None, "no answer", 3.0)
    assert life.next_timer() == 3.0 + CHILDLESS_GRACE
    assert life.tick(3.0 + CHILDLESS_GRACE) == [DeleteIke(1)]


def test_an_ike_sa_the_gateway_started_carries_our_pairs_to_its_clients():
    """One IKE SA per gateway whichever side began it: an IKE SA the gateway started, from its
    own address with the key our pair's record names, takes our CHILD SA for its client."""
    oe, life = world()
    first, other = via_gateway(oe, CLIENTS[0]), via_gateway(oe, CLIENTS[1], key=RsaPublicKey(
        65537, 0xBAD << 2000 | 1))
    terms = (ipaddress.ip_address(ME), ipaddress.ip_address(GATEWAY),
             (GATEWAY_KEY.e, GATEWAY_KEY.n))
    assert life.ike_established(4, 7, now=1.0, terms=terms) == []
    assert life.route_initiate(first) == [CreateChild(7, first.pair)]
    assert life.route_initiate(other) == [other]
    life.ike_deleted(7, "DELETE", 2.0)
    assert first.pair not in oe.negotiations                        # failed with IKE SA 7
    third = via_gateway(oe, CLIENTS[2])
    assert life.route_initiate(third) == [third]                    # IKE SA 7 is forgotten
