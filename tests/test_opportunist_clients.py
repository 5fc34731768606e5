"""The opportunist as a gateway's initiator for its clients (FreeS/WAN `fos_our_client`;
docs/gateway.md 3): two lookups per client flow, the client check's reasons, failure shunts per
(client, target), and a reload that drops a subnet."""

import ipaddress

import pytest

from oe.dnskeys.choice import KeyLookup, Target, Verdict, not_capable
from oe.eroute import Shunt
from oe.commands import DeleteChild, FetchKey, Initiate
from oe.flows import Pair
from oe.opportunist import Opportunist, Ours
from oe.policygroups import combine, parse_group, prospective_table

ME = "192.0.2.10"          # the gateway's address, and its ID
OTHER_ME = "192.0.2.11"    # a second address of the gateway's
C, C2 = "198.51.100.7", "198.51.100.8"  # clients in [gateway] subnets
T, T2 = "203.0.113.5", "203.0.113.6"    # targets
OUR_BLOB = b"\x03\x01\x00\x01" + bytes(range(64))
OURS = Ours.of([ME, OTHER_ME], ["198.51.100.0/24"], OUR_BLOB)


def opportunist(ours=OURS, **groups):
    groups = groups or {"private_or_clear": "0.0.0.0/0\n"}
    parsed = [parse_group(g.replace("_", "-"), text, f"policies/{g}") for g, text in groups.items()]
    return Opportunist(prospective_table(combine(parsed)), ours=ours)


def fate(oe, src, dst):
    table = oe.table()
    index = table.lookup(ipaddress.ip_address(src), ipaddress.ip_address(dst))
    return None if index is None else table.entries[index].action


def target_key(dst):
    return KeyLookup(Target.parse(dst), Verdict.KEY, gateway=ipaddress.ip_address(dst))


def client_record(client=C, gateway=ME, blob=OUR_BLOB, verdict=Verdict.KEY, error=None):
    return KeyLookup(Target.parse(client), verdict, gateway=ipaddress.ip_address(gateway),
                     blob=blob, error=error)


def test_a_client_flow_looks_up_the_client_and_the_target():
    oe = opportunist()
    pair = Pair.of(C, T)
    assert oe.acquire(pair, 0) == [FetchKey(pair, C, role="client"), FetchKey(pair, T)]
    assert fate(oe, C, T) is Shunt.HOLD


def test_a_host_flow_looks_up_the_target_only():
    oe = opportunist()
    pair = Pair.of(OTHER_ME, T)
    assert oe.acquire(pair, 0) == [FetchKey(pair, T)]
    assert oe.key_found(pair, target_key(T), 0.1) == [Initiate(pair, ipaddress.ip_address(T))]


@pytest.mark.parametrize("client_first", [True, False])
def test_both_answers_in_either_order_initiate_from_the_address_the_record_names(client_first):
    """Our ID must be what T's side checks against C's record: the gateway it names."""
    oe = opportunist()
    pair = Pair.of(C, T)
    oe.acquire(pair, 0)
    answers = [(client_record(gateway=OTHER_ME), "client"), (target_key(T), "target")]
    if not client_first:
        answers.reverse()
    assert oe.key_found(pair, answers[0][0], 0.1, role=answers[0][1]) == []
    assert fate(oe, C, T) is Shunt.HOLD
    assert oe.key_found(pair, answers[1][0], 0.2, role=answers[1][1]) == [
        Initiate(pair, ipaddress.ip_address(T), local=ipaddress.ip_address(OTHER_ME))]
    # a late duplicate answer is dropped: one Initiate per negotiation
    assert oe.key_found(pair, answers[1][0], 0.3, role=answers[1][1]) == []


@pytest.mark.parametrize("lookup, group, expected, reason", [
    (not_capable(Target.parse(C), "no IPSECKEY, TXT X-IPsec-Server or KEY record"),
     "private_or_clear", Shunt.PASS,
     f"no record for our client {C} delegates us: no IPSECKEY, TXT X-IPsec-Server or KEY record"),
    (client_record(gateway=C), "private_or_clear", Shunt.PASS,
     f"record for our client {C} delegates to {C}, not us"),
    (client_record(gateway="192.0.2.99"), "private", Shunt.DROP,
     f"record for our client {C} delegates to 192.0.2.99, not us"),
    (client_record(blob=b"\x03\x01\x00\x01" + bytes(64)), "private_or_clear", Shunt.PASS,
     f"record for our client {C} has wrong key"),
    # bogus or malformed: %drop whatever the group (RFC 4322 3.2)
    (KeyLookup(Target.parse(C), Verdict.DENY, error="DNSSEC validation failed"),
     "private_or_clear", Shunt.DROP,
     f"no record for our client {C} delegates us: DNSSEC validation failed"),
])
def test_each_client_check_failure_is_the_failure_shunt_with_its_reason(lookup, group,
                                                                         expected, reason):
    oe = opportunist(**{group: "0.0.0.0/0\n"})
    pair = Pair.of(C, T)
    oe.acquire(pair, 0)
    assert oe.key_found(pair, lookup, 1.0, role="client") == []
    assert fate(oe, C, T) is expected
    assert oe.shunts[pair].reason == reason
    assert oe.take_log() == [f"can't opportunistically initiate for {C} to {T}: {reason}; "
                             f"{expected} for 900 s"]
    assert oe.key_found(pair, target_key(T), 1.1) == []  # the target's answer comes too late


@pytest.mark.parametrize("client_ok, reason", [
    (True, "no record"), (False, f"record for our client {C} delegates to {C}, not us")])
def test_the_clients_reason_comes_first_whichever_answer_came_first(client_ok, reason):
    """pluto's order (our client, then his): a target without a key waits for the client's
    answer, so the shunt's reason does not depend on which DNS answer was faster."""
    oe = opportunist()
    pair = Pair.of(C, T)
    oe.acquire(pair, 0)
    assert oe.key_found(pair, not_capable(Target.parse(T), "no record"), 0.1) == []
    assert fate(oe, C, T) is Shunt.HOLD
    client = client_record() if client_ok else client_record(gateway=C)
    assert oe.key_found(pair, client, 0.2, role="client") == []
    assert fate(oe, C, T) is Shunt.PASS and oe.shunts[pair].reason == reason


def test_a_malformed_target_record_denies_once_the_client_is_checked():
    oe = opportunist()
    pair = Pair.of(C, T)
    oe.acquire(pair, 0)
    oe.key_found(pair, KeyLookup(Target.parse(T), Verdict.DENY, error="malformed"), 0.1)
    oe.key_found(pair, client_record(), 0.2, role="client")
    assert fate(oe, C, T) is Shunt.DROP and oe.shunts[pair].reason == "malformed"


def test_a_source_neither_ours_nor_a_client_is_dropped_without_a_lookup():
    oe = opportunist()
    pair = Pair.of("198.51.101.7", T)
    assert oe.acquire(pair, 0) == []
    assert fate(oe, "198.51.101.7", T) is Shunt.DROP
    assert oe.shunts[pair].reason == \
        "source 198.51.101.7 is not an address of oe's nor a client"


def test_a_shunt_for_a_client_and_target_leaves_other_pairs_alone():
    oe = opportunist()
    pair = Pair.of(C, T)
    oe.acquire(pair, 0)
    oe.key_found(pair, client_record(gateway=C), 0.1, role="client")
    assert fate(oe, C, T) is Shunt.PASS
    assert fate(oe, C, T2) is Shunt.TRAP and fate(oe, ME, T) is Shunt.TRAP
    assert fate(oe, C2, T) is Shunt.TRAP
    assert oe.acquire(Pair.of(C, T2), 1) == [FetchKey(Pair.of(C, T2), C, role="client"),
                                             FetchKey(Pair.of(C, T2), T2)]
    assert oe.acquire(Pair.of(ME, T), 1) == [FetchKey(Pair.of(ME, T), T)]


def test_reload_dropping_a_subnet_fails_the_pending_client_negotiations():
    oe = opportunist()
    client, host = Pair.of(C, T), Pair.of(ME, T2)
    oe.acquire(client, 0)
    oe.acquire(host, 0)
    oe.reload(oe.base, 1.0, ours=Ours.of([ME, OTHER_ME], [], OUR_BLOB))
    assert fate(oe, C, T) is Shunt.DROP
    assert oe.shunts[client].reason == f"source {C} is not an address of oe's nor a client"
    assert oe.key_found(client, client_record(), 1.1, role="client") == []
    assert fate(oe, ME, T2) is Shunt.HOLD                     # the host's own flow goes on
    assert oe.key_found(host, target_key(T2), 1.2) == [Initiate(host, ipaddress.ip_address(T2))]


def test_an_authentication_failure_refetches_the_target_and_keeps_the_client_check():
    oe = opportunist()
    pair = Pair.of(C, T)
    oe.acquire(pair, 0)
    oe.key_found(pair, client_record(), 0.1, role="client")
    oe.key_found(pair, target_key(T), 0.2)
    assert oe.auth_failed(pair, "AUTHENTICATION_FAILED", 1) == [
        FetchKey(pair, T, refresh=True)]
    assert oe.key_found(pair, target_key(T), 1.1) == [
        Initiate(pair, ipaddress.ip_address(T), local=ipaddress.ip_address(ME))]


def test_reload_dropping_a_subnet_ends_that_clients_tunnels_only():
    oe = opportunist()
    client, other, host = Pair.of(C, T), Pair.of("198.51.102.7", T), Pair.of(ME, T2)
    wider = Ours.of([ME, OTHER_ME], ["198.51.100.0/24", "198.51.102.0/24"], OUR_BLOB)
    oe.reload(oe.base, 0, ours=wider)
    oe.tunnel_up(client, client.dst, 1, 0x11, 0x12, "x", False, True, 0)
    oe.tunnel_up(other, other.dst, 1, 0x21, 0x22, "x", False, True, 0)
    oe.tunnel_up(host, host.dst, 2, 0x31, 0x32, "x", False, True, 0)
    oe.take_log()
    assert oe.reload(oe.base, 10, ours=Ours.of([ME, OTHER_ME], ["198.51.102.0/24"],
                                               OUR_BLOB)) == [DeleteChild(1, 0x11)]
    assert set(oe.tunnels) == {other, host}
    assert oe.take_log() == [f"OE to {T} via {T} ended: {C} is no longer an address of oe's "
                             f"nor a client"]
