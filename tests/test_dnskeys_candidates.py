"""Several records, several gateways: choose() lists every usable one in RFC 4322 3.2 order,
at most CANDIDATES_MAX, each under the delegation rule (docs/gateway.md 5)."""

import ipaddress

import dns.name
import dns.rdata
import pytest
from cryptography.hazmat.primitives.asymmetric import rsa
from hypothesis import given, settings, strategies as st

from oe import hostkey
from oe.dnskeys import records
from oe.dnskeys.choice import (
    BOGUS, CANDIDATES_MAX, INSECURE, OFF, SECURE, Target, Verdict, choose, gateway_addresses,
)
from oe.dnskeys.records import IPSECKEY, KEY, KINDS, TXT

TARGET = Target.parse("198.51.100.7")
GATEWAYS = [ipaddress.ip_address(a) for a in
            ("198.51.100.7", "192.0.2.1", "192.0.2.2", "192.0.2.3", "2001:db8::1")]


BLOBS = [hostkey.public_blob(rsa.generate_private_key(public_exponent=65537, key_size=2048))
         for _ in range(2)]

record_spec = st.tuples(st.sampled_from(KINDS), st.integers(0, 255),
                        st.sampled_from(range(len(GATEWAYS))), st.sampled_from(range(2)))


def rdatas_of(specs):
    """Rdata per kind from (kind, precedence, gateway index, key index) specs."""
    found = {kind: [] for kind in KINDS}
    for kind, precedence, gateway, blob in specs:
        if kind == IPSECKEY:
            found[kind].append(records.ipseckey_rdata(BLOBS[blob], GATEWAYS[gateway], precedence))
        elif kind == TXT:
            found[kind].append(records.txt_rdata(BLOBS[blob], GATEWAYS[gateway], precedence))
        else:
            found[kind].append(records.key_rdata(BLOBS[blob]))
    return found


def pick(specs, dnssec=SECURE):
    return choose(TARGET, rdatas_of(specs), min_key_bits=2048, allow_unsigned_delegation=False,
                  dnssec=dnssec)


@settings(max_examples=60, deadline=None)
@given(st.lists(record_spec, min_size=1, max_size=14))
def test_candidates_come_in_rfc_4322_order_capped_and_distinct(specs):
    lookup = pick(specs)
    assert lookup.verdict is Verdict.KEY
    candidates = lookup.candidates
    assert 1 <= len(candidates) <= CANDIDATES_MAX
    first = candidates[0]
    assert (first.record, first.gateway, first.blob) == (lookup.record, lookup.gateway,
                                                        lookup.blob)
    order = [(KINDS.index(c.kind), c.precedence) for c in candidates]
    assert order == sorted(order)                         # IPSECKEY, TXT, KEY; precedence
    tries = [(c.gateway, c.blob) for c in candidates]
    assert len(set(tries)) == len(tries)                  # one try per gateway and key
    distinct = {(GATEWAYS[g] if k != KEY else TARGET.address, b) for k, _p, g, b in specs}
    assert len(candidates) == min(len(distinct), CANDIDATES_MAX)
    if len(distinct) > CANDIDATES_MAX:
        assert f"{len(distinct) - CANDIDATES_MAX} more usable records ignored" in lookup.why


@settings(max_examples=40, deadline=None)
@given(st.lists(record_spec, min_size=1, max_size=10))
def test_insecure_answers_give_only_the_target_itself(specs):
    """RFC 4322 3.2.4.1 for every candidate, not only the first."""
    lookup = pick(specs, dnssec=INSECURE)
    assert all(c.gateway == TARGET.address for c in lookup.candidates)


def test_a_candidate_as_a_lookup_carries_its_own_record_and_key():
    lookup = pick([(IPSECKEY, 10, 1, 0), (IPSECKEY, 20, 2, 1)])
    second = lookup.for_candidate(lookup.candidates[1])
    assert second.gateway == GATEWAYS[2] and second.blob == BLOBS[1]
    assert second.record.precedence == 20 and second.delegated_for == TARGET


GW_NAME = dns.name.from_text("gw.example.")
A_RDATAS = [dns.rdata.from_text("IN", "A", a) for a in ("192.0.2.1", "192.0.2.2")]


def addresses(record_state=SECURE, address_state=SECURE, allow=False, **kw):
    return gateway_addresses(GW_NAME, A_RDATAS, record_state=record_state,
                             address_state=address_state, allow_unsigned_delegation=allow, **kw)


def test_an_fqdn_gateways_addresses_are_used_when_record_and_addresses_are_secure():
    assert addresses().addresses == tuple(ipaddress.ip_address(a)
                                          for a in ("192.0.2.1", "192.0.2.2"))


@pytest.mark.parametrize("record_state, address_state", [
    (SECURE, INSECURE), (INSECURE, SECURE), (SECURE, OFF)])
def test_an_fqdn_gateway_needs_the_weakest_state_secure_or_allow_unsigned(record_state,
                                                                          address_state):
    refused = addresses(record_state, address_state)
    assert refused.addresses == () and not refused.deny
    assert "allow_unsigned_delegation = true accepts them" in refused.error
    assert addresses(record_state, address_state, allow=True).addresses


def test_a_bogus_address_answer_denies_even_with_allow_unsigned():
    found = addresses(address_state=BOGUS, allow=True, why_bogus="signature expired")
    assert found.deny and found.addresses == ()
    assert found.error == "DNSSEC validation failed for gateway gw.example.: signature expired"


def test_no_answer_for_the_gateway_moves_on():
    found = addresses(error="no answer within 3 s")
    assert not found.deny and found.error == ("no addresses for gateway gw.example.: no answer "
                                              "within 3 s")


def test_our_client_may_name_us_in_any_of_its_records():
    """RFC 4322 3.2 for the client check (docs/gateway.md 7.2, test 7): a client with a
    precedence-10 record for a gateway that is down and a precedence-20 one for us is ours;
    the gateway oe acts as is the one that record names."""
    from oe.dnskeys.delegation import check_client, client_gateway
    lookup = pick([(IPSECKEY, 10, 2, 0), (IPSECKEY, 20, 1, 1)])
    assert check_client(lookup, [str(GATEWAYS[1])], BLOBS[1]) is None
    assert client_gateway(lookup, [str(GATEWAYS[1])], BLOBS[1]) == GATEWAYS[1]
    assert "has wrong key" in check_client(lookup, [str(GATEWAYS[1])], BLOBS[0])
    assert "delegates to 192.0.2.2, not us" in check_client(lookup, ["192.0.2.9"], BLOBS[1])
    # insecure: only the client's own records count, never a delegation
    unsigned = pick([(IPSECKEY, 10, 2, 0), (IPSECKEY, 20, 1, 1)], dnssec=INSECURE)
    assert check_client(unsigned, [str(GATEWAYS[1])], BLOBS[1]) is not None
