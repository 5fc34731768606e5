"""The responder's door (oe.admission) and the key cache (oe.peerkeys), driven in memory."""

import ipaddress
from dataclasses import replace

import pytest

from oe import hostkey
from oe.admission import REFUSAL_HOLD, REFUSALS_PER_LOOKUP, Admission
from oe.commands import DeleteIke, FetchPeerKey, FollowPeer, Log, RefuseInit, ReplayInit
from oe.dnskeys.choice import KeyLookup, Target, Verdict
from oe.dnskeys.records import KeyRecord, decode_rsa_blob
from oe.ike.auth import Identity
from oe.ike.constants import NotifyType
from oe.ike.ts import TrafficSelector
from oe.opportunist import Opportunist
from oe.peerkeys import KEY_GRACE, PeerKeys, address_id
from oe.policygroups import combine, parse_group, prospective_table

ME = "192.0.2.10"
PEER = "198.51.100.2"


@pytest.fixture(scope="module")
def host_key():
    return hostkey.generate(2048)


def door(lookups=8, **groups):
    parsed = [parse_group(g.replace("_", "-"), text, f"policies/{g}") for g, text in groups.items()]
    keys = PeerKeys()
    return Admission(Opportunist(prospective_table(combine(parsed))), keys, lookups), keys


def lookup(host_key, target, expires=600.0):
    key = decode_rsa_blob(hostkey.public_blob(host_key))
    record = KeyRecord("IPSECKEY", Target.parse(target).name, 10, ipaddress.ip_address(target),
                       key, None, "")
    return KeyLookup(Target.parse(target), Verdict.KEY, record=record, key=key,
                     gateway=ipaddress.ip_address(target), expires=expires)


def test_policy_refuses_before_any_lookup():
    a, _ = door(private_or_clear="0.0.0.0/0\n", block="203.0.113.0/24\n")
    assert a.admit(ME, b"x", ("203.0.113.5", 500), 500, 0.0) == (
        False, [Log("refused IKE from 203.0.113.5: 203.0.113.5 is in group block, which "
                    "refuses OE")])
    assert a.pending == {}


def test_one_lookup_per_peer_the_newest_message_waits_and_the_rest_are_counted():
    a, _ = door(lookups=2, private_or_clear="0.0.0.0/0\n")
    assert a.admit(ME, b"1", (PEER, 500), 500, 0.0) == (False, [FetchPeerKey(PEER)])
    assert a.admit(ME, b"2", (PEER, 500), 500, 0.0) == (False, [])     # a retransmission
    assert a.pending[PEER][0] == b"2"
    a.admit(ME, b"x", ("198.51.100.3", 500), 500, 0.0)
    assert a.admit(ME, b"x", ("198.51.100.4", 500), 500, 0.0) == (False, [])
    assert a.counters["ike_init_dropped"] == 1 and len(a.pending) == 2


def test_a_cookie_is_asked_of_unknown_peers_once_half_the_lookups_are_busy(host_key):
    a, keys = door(lookups=4, private_or_clear="0.0.0.0/0\n")
    assert not a.cookie_required("203.0.113.99", 0.0)
    for i in range(2):
        a.admit(ME, b"x", (f"203.0.113.{i + 1}", 500), 500, 0.0)
    assert a.cookie_required("203.0.113.99", 0.0)
    keys.keep(lookup(host_key, "203.0.113.99"), 0.0)
    assert not a.cookie_required("203.0.113.99", 0.0)                 # its key is known


def test_the_key_answers_the_waiting_message_and_frees_the_slot(host_key):
    a, keys = door(private_or_clear="0.0.0.0/0\n")
    a.admit(ME, b"init", (PEER, 500), 500, 0.0)
    assert a.key_fetched(PEER, lookup(host_key, PEER), 1.0) == [ReplayInit(b"init", (PEER, 500),
                                                                           500, ME)]
    assert a.pending == {}
    assert a.admit(ME, b"again", (PEER, 500), 500, 2.0) == (True, [])
    a.admit(ME, b"init", ("198.51.100.3", 500), 500, 0.0)
    assert a.key_fetched("198.51.100.3", KeyLookup(Target.parse("198.51.100.3"),
                                                   Verdict.NOT_CAPABLE, error="no key"), 1.0) \
        == [refusal(b"init", "198.51.100.3"),
            Log("refused IKE from 198.51.100.3: no key (answered AUTHENTICATION_FAILED, "
                "for 10 s)")]
    a.admit(ME, b"init", ("198.51.100.4", 500), 500, 0.0)
    assert a.key_fetched("198.51.100.4", None, 1.0)[0] == refusal(b"init", "198.51.100.4")
    assert a.pending == {}


def refusal(data, peer):
    return RefuseInit(data, (peer, 500), 500, ME, NotifyType.AUTHENTICATION_FAILED)


def no_key(peer, error="DNS timeout: no answer", expires=0.0):
    return KeyLookup(Target.parse(peer), Verdict.NOT_CAPABLE, error=error, expires=expires)


def test_a_failed_lookup_answers_at_once_and_retransmits_start_no_new_lookup():
    """Issue 15, 8: the waiting IKE_SA_INIT is answered with an error as soon as its lookup
    fails, and the peer's retransmits and new IKE_SA_INITs get the same answer without a new
    lookup for REFUSAL_HOLD; counted each time, logged once."""
    a, _ = door(private_or_clear="0.0.0.0/0\n")
    assert a.admit(ME, b"init", (PEER, 500), 500, 0.0) == (False, [FetchPeerKey(PEER)])
    out = a.key_fetched(PEER, no_key(PEER, expires=3.0), 3.0)        # timed out after 3 s
    assert out[0] == refusal(b"init", PEER) and len(out) == 2 and isinstance(out[1], Log)
    assert a.admit(ME, b"init", (PEER, 500), 500, 3.5) == (False, [refusal(b"init", PEER)])
    assert a.admit(ME, b"new", (PEER, 4500), 4500, 12.9) == (
        False, [RefuseInit(b"new", (PEER, 4500), 4500, ME, NotifyType.AUTHENTICATION_FAILED)])
    assert a.counters["ike_init_refused"] == 3 and a.pending == {}
    assert a.admit(ME, b"init", (PEER, 500), 500, 3.0 + REFUSAL_HOLD) == (
        False, [FetchPeerKey(PEER)])                                  # the hold is over


def test_a_refusal_lives_no_longer_than_the_negative_answer(host_key):
    a, keys = door(private_or_clear="0.0.0.0/0\n")
    a.admit(ME, b"init", (PEER, 500), 500, 0.0)
    a.key_fetched(PEER, no_key(PEER, error="no key published", expires=4.0), 1.0)  # TTL 3 s
    assert a.admit(ME, b"init", (PEER, 500), 500, 3.9)[1] == [refusal(b"init", PEER)]
    assert a.admit(ME, b"init", (PEER, 500), 500, 4.0)[1] == [FetchPeerKey(PEER)]
    a.key_fetched(PEER, no_key(PEER), 5.0)
    keys.keep(lookup(host_key, PEER), 6.0)        # our own lookup found its key meanwhile
    assert a.admit(ME, b"init", (PEER, 500), 500, 6.0) == (True, [])
    assert a.admit(ME, b"init", (PEER, 500), 500, 6.5) == (True, [])


def test_the_refusals_kept_are_bounded_the_oldest_forgotten_first():
    a, _ = door(lookups=2, private_or_clear="0.0.0.0/0\n")
    peers = [f"203.0.113.{i + 1}" for i in range(2 * REFUSALS_PER_LOOKUP + 1)]
    for peer in peers:
        a.admit(ME, b"x", (peer, 500), 500, 0.0)
        a.key_fetched(peer, no_key(peer), 0.0)
    assert a.admit(ME, b"x", (peers[0], 500), 500, 1.0)[1] == [FetchPeerKey(peers[0])]
    assert a.admit(ME, b"x", (peers[1], 500), 500, 1.0)[1] == [refusal(b"x", peers[1])]


def test_after_an_auth_failure_the_key_is_forgotten_and_fetched_afresh(host_key):
    a, keys = door(private_or_clear="0.0.0.0/0\n")
    keys.keep(lookup(host_key, PEER), 0.0)
    a.auth_failed(PEER)
    assert keys.get(Identity.from_address(PEER), 1.0) is None
    assert a.admit(ME, b"x", (PEER, 500), 500, 1.0) == (False, [FetchPeerKey(PEER, True)])


def test_keys_live_by_their_ttl_and_are_swept(host_key):
    keys = PeerKeys()
    keys.keep(lookup(host_key, PEER, expires=600.0), 0.0)
    peer = Identity.from_address(PEER)
    assert keys.get(peer, 599.0) is not None and keys.get(peer, 601.0) is None
    assert keys.get(Identity.fqdn(PEER), 1.0) is None    # an ID_FQDN is not the address
    assert keys.next_timer() == KEY_GRACE
    keys.sweep(KEY_GRACE)
    assert len(keys) == 1
    keys.sweep(601.0)
    assert len(keys) == 0 and keys.next_timer() is None
    keys.keep(lookup(host_key, PEER, expires=0.0), 1000.0)    # TTL 0: still for its negotiation
    assert keys.get(peer, 1000.0 + KEY_GRACE - 1) is not None


def test_a_peer_moves_only_where_policy_takes_oe():
    a, _ = door(private_or_clear="0.0.0.0/0\n", block="203.0.113.0/24\n")
    assert a.peer_moved(ME, 7, "198.51.100.9", 4500) == [
        FollowPeer(7, "198.51.100.9", 4500), Log("peer moved to 198.51.100.9 port 4500 (NAT)")]
    assert a.peer_moved(ME, 7, "203.0.113.5", 4500)[-1] == DeleteIke(7)


def test_responder_selectors_are_single_hosts_of_an_oe_group():
    a, _ = door(private_or_clear="0.0.0.0/0\n", clear="203.0.113.0/24\n")
    ip = ipaddress.ip_address
    assert a.selectors_allowed(ME, (TrafficSelector.host(PEER, 6, 22),))
    assert not a.selectors_allowed(ME, (TrafficSelector(ip(PEER), ip("198.51.100.3")),))
    assert not a.selectors_allowed(ME, (TrafficSelector.host("203.0.113.5"),))


def test_kept_keys_remember_their_provenance(host_key):
    """Issue 12: status names the record and DNSSEC state of the key an SA's peer proved."""
    keys = PeerKeys()
    keys.keep(replace(lookup(host_key, PEER), dnssec="secure"), 0.0)
    assert keys.provenance(address_id(PEER)) == "IPSECKEY, dnssec secure"
    assert keys.provenance(address_id("203.0.113.99")) is None
