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


def test_a_key_about_to_expire_is_fetched_afresh_before_the_exchange(host_key):
    """Issue 14 (seen at the peer farm, 44 AUTHENTICATION_FAILED in one run): a key admitted
    at IKE_SA_INIT just before its TTL ran out was gone at the peer's IKE_AUTH. The door
    takes a key only if it outlives the exchange (KEY_GRACE), else it asks DNS first."""
    a, keys = door(private_or_clear="0.0.0.0/0\n")
    keys.keep(lookup(host_key, PEER, expires=600.0), 0.0)
    assert a.admit(ME, b"x", (PEER, 500), 500, 600.0 - KEY_GRACE - 1) == (True, [])
    assert a.admit(ME, b"y", (PEER, 500), 500, 600.0 - 1) == (False, [FetchPeerKey(PEER)])
    assert a.key_fetched(PEER, lookup(host_key, PEER, expires=600.0), 600.0) == [
        ReplayInit(b"y", (PEER, 500), 500, ME)]                     # even a TTL of 0
    assert a.admit(ME, b"y", (PEER, 500), 500, 600.0) == (True, [])    # the replay passes


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


def test_responder_selectors_narrow_to_vouched_hosts_of_an_oe_group(host_key):
    """The peer's side narrows to the hosts its key vouches for (a range to the one host);
    a peer in a group that refuses OE gets no CHILD SA."""
    from oe.ike.auth import PeerKey
    from oe.ike.childpolicy import Allow, AuthenticatedSa, Refuse
    a, _ = door(private_or_clear="0.0.0.0/0\n", clear="203.0.113.0/24\n")
    ip = ipaddress.ip_address
    us = (TrafficSelector.host(ME),)

    def sa(peer):
        return AuthenticatedSa(1, ME, Identity.from_address(peer),
                               PeerKey(host_key.public_key(), frozenset({peer})))
    ssh = (TrafficSelector.host(PEER, 6, 22),)
    assert a.child_policy(sa(PEER), ssh, us, 0.0) == Allow(us, ssh)
    assert a.child_policy(sa(PEER), (TrafficSelector(ip(PEER), ip("198.51.100.3")),), us,
                          0.0) == Allow(us, (TrafficSelector.host(PEER),))
    clear = (TrafficSelector.host("203.0.113.5"),)
    assert isinstance(a.child_policy(sa("203.0.113.5"), clear, us, 0.0), Refuse)


def test_kept_keys_remember_their_provenance(host_key):
    """Issue 12: status names the record and DNSSEC state of the key an SA's peer proved."""
    keys = PeerKeys()
    keys.keep(replace(lookup(host_key, PEER), dnssec="secure"), 0.0)
    assert keys.provenance(address_id(PEER)) == "IPSECKEY, dnssec secure"
    assert keys.provenance(address_id("203.0.113.99")) is None


# --- the responder for a client (docs/gateway.md 4.1, 4.2) -------------------------------

GW = "192.0.2.66"                      # the peer P: a gateway with a valid key of its own
CLIENT = "198.51.100.77"               # his client S (TSi)
OURS = "203.0.113.10"                  # our client T (TSr), in [gateway] subnets
SUBNETS = ("203.0.113.0/24",)


def record_for(owner, gateway, key_of, kind="IPSECKEY", precedence=10):
    """A KeyRecord at `owner` naming `gateway` (None: itself) with `key_of`'s key (None: no
    key)."""
    blob = hostkey.public_blob(key_of) if key_of is not None else None
    return KeyRecord(kind, Target.parse(owner).name, precedence,
                     ipaddress.ip_address(gateway) if gateway is not None else None,
                     decode_rsa_blob(blob) if blob is not None else None, blob, "")


def delegating(owner, gateway, key_of, dnssec="secure", expires=600.0, more=()):
    """A lookup as choose() makes it for a record at `owner` naming `gateway`."""
    record = record_for(owner, gateway, key_of)
    return KeyLookup(Target.parse(owner), Verdict.KEY, record=record, key=record.key,
                     blob=record.blob, gateway=record.gateway or ipaddress.ip_address(owner),
                     records=(record, *more), dnssec=dnssec, expires=expires)


@pytest.fixture(scope="module")
def keys3():
    """Our key, the peer gateway's, and a third party's."""
    return hostkey.generate(2048), hostkey.generate(2048), hostkey.generate(2048)


def gateway_door(keys3, lookups=8):
    from oe.ike.childpolicy import AuthenticatedSa
    from oe.ike.auth import PeerKey
    a, _ = door(lookups=lookups, private_or_clear="0.0.0.0/0\n")
    a.subnets = tuple(ipaddress.ip_network(n) for n in SUBNETS)
    a.own_blob = hostkey.public_blob(keys3[0])
    sa = AuthenticatedSa(5, ME, Identity.from_address(GW),
                         PeerKey(keys3[1].public_key(), frozenset({GW})))
    return a, sa


def hosts(*addrs):
    return tuple(TrafficSelector.host(x) for x in addrs)


def answered(a, sa, tsi, tsr, lookups, now=0.0):
    """child_policy waits for `lookups` (client -> KeyLookup or None), which are fetched and
    resume the request; then it decides."""
    from oe.commands import FetchDelegation, ResumeChild
    from oe.ike.childpolicy import Wait
    waiting = a.child_policy(sa, tsi, tsr, now)
    assert waiting == Wait(tuple(lookups))
    assert a.delegation_wanted(sa.sa_id, waiting.lookups) == [FetchDelegation(c) for c in lookups]
    resumed = []
    for client, lookup in lookups.items():
        resumed += a.delegation_fetched(client, lookup, now)
    assert resumed == [ResumeChild(sa.sa_id)]
    return a.child_policy(sa, tsi, tsr, now)


def test_the_peers_own_address_and_ours_need_no_lookup(keys3):
    from oe.ike.childpolicy import Allow
    a, sa = gateway_door(keys3)
    assert a.child_policy(sa, hosts(GW), hosts(ME), 0.0) == Allow(hosts(ME), hosts(GW))
    # wide offers narrow to the peer's vouched address and to us, as before
    wide = (TrafficSelector(ipaddress.ip_address("0.0.0.0"),
                            ipaddress.ip_address("255.255.255.255")),)
    assert a.child_policy(sa, wide, wide, 0.0) == Allow(hosts(ME), hosts(GW))


def test_his_client_is_taken_when_its_record_delegates_to_the_peer_with_its_key(keys3):
    from oe.ike.childpolicy import Allow
    a, sa = gateway_door(keys3)
    tsi = (TrafficSelector.host(CLIENT), TrafficSelector(ipaddress.ip_address("198.51.100.0"),
                                                         ipaddress.ip_address("198.51.100.255")))
    got = answered(a, sa, tsi, hosts(ME), {CLIENT: delegating(CLIENT, GW, keys3[1])})
    assert got == Allow(hosts(ME), hosts(CLIENT))     # the first selector only (RFC 7296 2.9)
    assert a.child_policy(sa, tsi, hosts(ME), 1.0) == got                  # held: no lookup


def test_his_client_delegating_elsewhere_is_refused_with_pluto_s_words(keys3):
    """The compromised gateway: a valid key of its own, but S's record names another one."""
    from oe.ike.childpolicy import Refuse
    a, sa = gateway_door(keys3)
    got = answered(a, sa, hosts(CLIENT), hosts(ME),
                   {CLIENT: delegating(CLIENT, "192.0.2.99", keys3[2])})
    assert got == Refuse(f"gateway {GW} wants connection with {CLIENT} as his client, but DNS "
                         f"fails to confirm delegation: record for {CLIENT} delegates to "
                         f"192.0.2.99, not {GW}")


def test_his_client_naming_the_peer_with_another_key_is_refused(keys3):
    from oe.ike.childpolicy import Refuse
    a, sa = gateway_door(keys3)
    got = answered(a, sa, hosts(CLIENT), hosts(ME), {CLIENT: delegating(CLIENT, GW, keys3[2])})
    assert isinstance(got, Refuse) and f"names {GW} with another key" in got.reason


def test_his_client_naming_itself_or_without_a_record_is_refused(keys3):
    from oe.ike.childpolicy import Refuse
    a, sa = gateway_door(keys3)
    got = answered(a, sa, hosts(CLIENT), hosts(ME), {CLIENT: delegating(CLIENT, None, keys3[2])})
    assert isinstance(got, Refuse) and f"delegates to {CLIENT}, not {GW}" in got.reason
    other = "198.51.100.78"
    got = answered(a, sa, hosts(other), hosts(ME), {other: no_key(other, error="no record")})
    assert got == Refuse(f"gateway {GW} wants connection with {other} as his client, but DNS "
                         f"fails to confirm delegation: no record")


def test_an_unsigned_record_delegates_only_if_choose_let_it(keys3):
    """choose() skips an insecure delegating record unless allow_unsigned_delegation: the
    lookup then has only the client's own record chosen, and a delegating record beside it
    in `records` does not count."""
    from oe.ike.childpolicy import Allow, Refuse
    a, sa = gateway_door(keys3)
    beside = record_for(CLIENT, GW, keys3[1], precedence=20)
    insecure = delegating(CLIENT, None, keys3[2], dnssec="insecure", more=(beside,))
    assert isinstance(answered(a, sa, hosts(CLIENT), hosts(ME), {CLIENT: insecure}), Refuse)
    secure = "198.51.100.79"
    chosen_self = delegating(secure, None, keys3[2], more=(record_for(secure, GW, keys3[1], 20),))
    assert answered(a, sa, hosts(secure), hosts(ME), {secure: chosen_self}) == \
        Allow(hosts(ME), hosts(secure))          # RFC 4322 3.2: any record naming the peer


def test_our_client_is_taken_only_in_our_subnets_delegating_to_us_with_our_key(keys3):
    from oe.ike.childpolicy import Allow, Refuse
    a, sa = gateway_door(keys3)
    assert answered(a, sa, hosts(GW), hosts(OURS), {OURS: delegating(OURS, ME, keys3[0])}) == \
        Allow(hosts(OURS), hosts(GW))
    t2 = "203.0.113.11"
    got = answered(a, sa, hosts(GW), hosts(t2), {t2: delegating(t2, ME, keys3[1])})
    assert got == Refuse(f"gateway {GW} wants connection with {t2} as our client, but DNS fails "
                         f"to confirm delegation: record for our client {t2} has wrong key")
    t3 = "203.0.113.12"
    got = answered(a, sa, hosts(GW), hosts(t3), {t3: delegating(t3, "203.0.113.1", keys3[0])})
    assert got.reason.endswith(f"record for our client {t3} delegates to 203.0.113.1, not us")
    outside = "192.0.2.200"                   # a valid delegation, but not a client of ours
    got = a.child_policy(sa, hosts(GW), hosts(outside), 0.0)
    assert got == Refuse(f"gateway {GW} wants connection with {outside} as our client, but DNS "
                         f"fails to confirm delegation: {outside} is not in [gateway] subnets")


def test_both_clients_wait_together_and_policy_judges_the_narrowed_pair(keys3):
    from oe.ike.childpolicy import Allow, Refuse
    a, sa = gateway_door(keys3)
    got = answered(a, sa, hosts(CLIENT), hosts(OURS), {
        OURS: delegating(OURS, ME, keys3[0]), CLIENT: delegating(CLIENT, GW, keys3[1])})
    assert got == Allow(hosts(OURS), hosts(CLIENT))
    a.opportunist = door(private_or_clear="0.0.0.0/0\n", clear=f"{CLIENT}/32\n")[0].opportunist
    got = a.child_policy(sa, hosts(CLIENT), hosts(OURS), 0.0)
    assert isinstance(got, Refuse) and "refuses OE" in got.reason


def test_delegation_lookups_share_the_lookup_budget_and_beyond_it_refuse(keys3):
    from oe.ike.childpolicy import Refuse, Wait
    a, sa = gateway_door(keys3, lookups=2)
    assert a.admit(ME, b"init", (PEER, 500), 500, 0.0)[1] == [FetchPeerKey(PEER)]
    assert a.child_policy(sa, hosts(CLIENT), hosts(ME), 0.0) == Wait((CLIENT,))
    got = a.child_policy(sa, hosts("198.51.100.90"), hosts(ME), 0.0)
    assert isinstance(got, Refuse) and "no DNS lookup free" in got.reason
    assert a.counters["child_lookups_refused"] == 1
    # a second request for a client already being looked up waits on the same lookup
    assert a.child_policy(replace(sa, sa_id=6), hosts(CLIENT), hosts(ME), 0.0) == Wait((CLIENT,))
    assert a.admit(ME, b"x", ("198.51.100.3", 500), 500, 0.0) == (False, [])  # budget full


def test_a_failed_delegation_lookup_is_held_no_longer_than_its_negative_answer(keys3):
    from oe.ike.childpolicy import Refuse, Wait
    a, sa = gateway_door(keys3)
    got = answered(a, sa, hosts(CLIENT), hosts(ME), {CLIENT: None})       # no answer at all
    assert isinstance(got, Refuse) and "lookup failed" in got.reason
    assert isinstance(a.child_policy(sa, hosts(CLIENT), hosts(ME), REFUSAL_HOLD - 0.1), Refuse)
    assert a.child_policy(sa, hosts(CLIENT), hosts(ME), REFUSAL_HOLD) == Wait((CLIENT,))
    short = "198.51.100.81"
    answered(a, sa, hosts(short), hosts(ME), {short: no_key(short, expires=3.0)})
    assert a.child_policy(sa, hosts(short), hosts(ME), 3.0) == Wait((short,))


def test_delegations_are_bounded_oldest_first(keys3):
    from oe.delegations import Delegations
    store = Delegations(3)
    for i in range(5):
        store.keep(f"198.51.100.{i}", no_key(f"198.51.100.{i}"), 10.0)
    assert len(store) == 3 and store.get("198.51.100.0", 0.0) is None
    assert store.get("198.51.100.4", 0.0) is not None and store.get("198.51.100.4", 10.0) is None
    assert len(store) == 2                                            # expired lazily
    a, _ = gateway_door(keys3, lookups=2)
    assert a.delegations.capacity == REFUSALS_PER_LOOKUP * 2


def test_offers_without_us_or_the_peer_and_no_client_host_are_refused_without_lookup(keys3):
    from oe.ike.childpolicy import Refuse
    a, sa = gateway_door(keys3)
    elsewhere = (TrafficSelector(ipaddress.ip_address("10.0.0.0"),
                                 ipaddress.ip_address("10.0.0.255")),)
    for tsi, tsr in ((elsewhere, hosts(ME)), (hosts(GW), elsewhere)):
        assert a.child_policy(sa, tsi, tsr, 0.0) == Refuse(
            "selectors are not host-to-host between us and the peer's key")
    assert a.fetching == {} and a.waiting == {}


def test_an_fqdn_gateway_matches_a_peer_of_that_name_only(keys3):
    """RFC 4322 3.3 step 3: the record must name the initiator, by address or identical FQDN.
    An @FQDN record does not match an address ID (its addresses are not looked up here)."""
    import dns.name

    from oe.ike.auth import PeerKey
    from oe.ike.childpolicy import Allow, AuthenticatedSa, Refuse
    a, by_address = gateway_door(keys3)
    by_name = AuthenticatedSa(6, ME, Identity.fqdn("gw.example"),
                              PeerKey(keys3[1].public_key(), frozenset({GW})))
    blob = hostkey.public_blob(keys3[1])
    record = KeyRecord("IPSECKEY", Target.parse(CLIENT).name, 10,
                       dns.name.from_text("GW.Example."), decode_rsa_blob(blob), blob, "")
    named = KeyLookup(Target.parse(CLIENT), Verdict.KEY, record=record, key=record.key,
                      blob=blob, gateway=record.gateway, records=(record,), dnssec="secure",
                      expires=600.0)
    assert answered(a, by_name, hosts(CLIENT), hosts(ME), {CLIENT: named}) == \
        Allow(hosts(ME), hosts(CLIENT))
    got = a.child_policy(by_address, hosts(CLIENT), hosts(ME), 1.0)
    assert isinstance(got, Refuse) and got.reason.endswith(
        f"record for {CLIENT} delegates to @GW.Example, not {GW}")


def test_a_record_naming_the_peer_without_a_key_takes_the_key_the_peer_proved(keys3):
    """FreeS/WAN: a gateway record without a key means the gateway's own key, which the
    peer has just proved in IKE_AUTH."""
    from oe.ike.childpolicy import Allow
    a, sa = gateway_door(keys3)
    keyless = record_for(CLIENT, GW, None)
    chosen = delegating(CLIENT, GW, keys3[2], more=(keyless,))    # its KEY: another key
    chosen = replace(chosen, record=keyless, records=(keyless,))
    assert answered(a, sa, hosts(CLIENT), hosts(ME), {CLIENT: chosen}) == \
        Allow(hosts(ME), hosts(CLIENT))
