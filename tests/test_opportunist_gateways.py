"""Targets that delegate to gateways (docs/gateway.md 5; RFC 4322 3.2): IKE with the gateway a
record names, with the key that record carries; several records tried in order, the failure
shunt only after the last, with every reason."""

import ipaddress

import dns.name
from cryptography.hazmat.primitives.asymmetric import rsa

from oe import hostkey
from oe.dnskeys import records
from oe.dnskeys.choice import SECURE, GatewayAddresses, Target, choose
from oe.eroute import SaAction, Shunt
from oe.commands import FetchGateway
from oe.commands import FetchKey, Initiate
from oe.flows import Pair
from oe.opportunist import Opportunist, Ours
from oe.policygroups import combine, parse_group, prospective_table

ME, T = "192.0.2.10", "203.0.113.5"
G1, G2, G3 = (ipaddress.ip_address(a) for a in ("198.51.100.1", "198.51.100.2", "198.51.100.3"))
BLOB = hostkey.public_blob(rsa.generate_private_key(public_exponent=65537, key_size=2048))


def opportunist(group="private"):
    parsed = [parse_group(group, "0.0.0.0/0\n", f"policies/{group}")]
    return Opportunist(prospective_table(combine(parsed)),
                       ours=Ours.of([ME], ["10.0.0.0/8"], b"ours"))


def delegating(*gateways, target=T):
    """A secure lookup of `target` whose IPSECKEYs name these gateways, precedence 10, 20..."""
    rdatas = [records.ipseckey_rdata(BLOB, g, 10 * (i + 1)) for i, g in enumerate(gateways)]
    return choose(Target.parse(target), {"IPSECKEY": rdatas}, min_key_bits=2048,
                  allow_unsigned_delegation=False, dnssec=SECURE)


def started(oe, lookup):
    pair = Pair.of(ME, T)
    oe.acquire(pair, 0)
    return pair, oe.key_found(pair, lookup, 0.1)


def test_a_delegated_target_is_reached_through_its_gateway_with_the_records_key():
    oe = opportunist()
    lookup = delegating(G1)
    pair, commands = started(oe, lookup)
    assert commands == [Initiate(pair, G1, peer_key=lookup)]
    assert commands[0].peer_key.delegated_for == Target.parse(T)


def test_the_first_gateway_dead_the_second_failing_auth_the_third_works():
    oe = opportunist()
    lookup = delegating(G1, G2, G3)
    pair, commands = started(oe, lookup)
    assert [c.peer for c in commands] == [G1]
    second = oe.negotiation_failed(pair, "IKE timeout: no answer", 8)
    assert second == [Initiate(pair, G2, peer_key=lookup.for_candidate(lookup.candidates[1]))]
    assert oe.shunts[pair].action is Shunt.HOLD          # still negotiating: no shunt
    # AUTH fails: the key is fetched afresh once, and the same gateway tried again ...
    assert oe.auth_failed(pair, "AUTHENTICATION_FAILED", 9) == [FetchKey(pair, T, refresh=True)]
    assert [c.peer for c in oe.key_found(pair, lookup, 9.1)] == [G2]
    # ... then the next one
    assert [c.peer for c in oe.auth_failed(pair, "AUTHENTICATION_FAILED", 10)] == [G3]
    oe.tunnel_up(pair, G3, 5, 0x11, 0x22, "x", False, True, 11, sa_out=3)
    table = oe.table()
    index = table.lookup(pair.src, pair.dst)
    assert table.entries[index].action == SaAction(G3, 0x22, 3)
    log = oe.take_log()
    assert f"OE to {T}: gateway {G1} failed (IKE timeout: no answer); trying {G2}" in log
    assert f"OE to {T}: gateway {G2} failed (AUTHENTICATION_FAILED); trying {G3}" in log


def test_the_failure_shunt_comes_after_the_last_gateway_with_every_reason():
    oe = opportunist("private-or-clear")
    pair, _ = started(oe, delegating(G1, G2))
    oe.negotiation_failed(pair, "IKE timeout: no answer", 8)
    assert oe.negotiation_failed(pair, "NO_PROPOSAL_CHOSEN", 9) == []
    assert oe.shunts[pair].action is Shunt.PASS
    assert oe.shunts[pair].reason == (f"all 2 gateways failed: {G1}: IKE timeout: no answer; "
                                      f"{G2}: NO_PROPOSAL_CHOSEN")
    assert oe.negotiation_failed(pair, "late", 10) == []  # nothing left to try


def test_one_gateway_fails_with_its_reason_alone():
    oe = opportunist()
    pair, _ = started(oe, delegating(G1))
    oe.negotiation_failed(pair, "IKE timeout: no answer", 8)
    assert oe.shunts[pair].reason == "IKE timeout: no answer"


GW_NAME = dns.name.from_text("gw.example.")


def test_an_fqdn_gateway_is_resolved_then_its_addresses_tried_in_order():
    oe = opportunist()
    lookup = delegating(GW_NAME, G3)
    pair, commands = started(oe, lookup)
    assert commands == [FetchGateway(pair, GW_NAME, SECURE)]
    assert oe.key_found(pair, lookup, 0.2) == []                   # a duplicate answer
    found = GatewayAddresses((G1, G2))
    assert [c.peer for c in oe.gateway_found(pair, GW_NAME, found, 1)] == [G1]
    assert oe.gateway_found(pair, GW_NAME, found, 1.1) == []      # not waiting for it now
    assert [(c.peer, c.peer_key.gateway) for c in oe.negotiation_failed(pair, "timeout", 5)] \
        == [(G2, GW_NAME)]
    assert [c.peer for c in oe.negotiation_failed(pair, "timeout", 9)] == [G3]
    oe.negotiation_failed(pair, "NO_PROPOSAL_CHOSEN", 10)
    assert oe.shunts[pair].reason == (f"all 3 gateways failed: {G1}: timeout; {G2}: timeout; "
                                      f"{G3}: NO_PROPOSAL_CHOSEN")


def test_an_fqdn_gateway_without_usable_addresses_moves_on_and_bogus_denies():
    oe = opportunist("private-or-clear")
    lookup = delegating(GW_NAME, G3)
    pair, _ = started(oe, lookup)
    refused = GatewayAddresses(error="the addresses of gateway gw.example. are not "
                                     "DNSSEC-validated (insecure)")
    assert [c.peer for c in oe.gateway_found(pair, GW_NAME, refused, 1)] == [G3]
    oe.negotiation_failed(pair, "timeout", 5)
    assert oe.shunts[pair].reason.startswith("all 2 gateways failed: gw.example.: the addresses")
    # bogus: %drop at once, whatever the group and the records left
    oe = opportunist("private-or-clear")
    pair, _ = started(oe, lookup)
    bogus = GatewayAddresses(error="DNSSEC validation failed for gateway gw.example.: expired",
                             deny=True)
    assert oe.gateway_found(pair, GW_NAME, bogus, 1) == []
    assert oe.shunts[pair].action is Shunt.DROP
