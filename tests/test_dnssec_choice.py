"""What a DNSSEC state does to the choice of a key (issue 12; RFC 4322 3.2 and 3.2.4.1; Libreswan
where RFC 4322 is silent): secure keys are used and may delegate; insecure ones only without
delegation and only while require_dnssec is false; bogus answers deny whatever the group."""

import base64
import ipaddress

import dns.rdata
import dns.rdataclass
import pytest
from cryptography.hazmat.primitives.asymmetric import rsa

from oe import hostkey
from oe.config import ConfigError, parse
from oe.dnskeys.choice import (BOGUS, INSECURE, OFF, SECURE, Target, Verdict, check_own,
                               choose, dnssec_advice, weakest)
from oe.dnskeys.records import IPSECKEY

V4 = Target.parse("192.0.2.7")
WHY_BOGUS = ("validation failure <7.2.0.192.in-addr.arpa. IPSECKEY IN>: signature expired from "
             "192.0.2.53")


@pytest.fixture(scope="module")
def blob():
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    return hostkey.public_blob(key)


def pick(blob, gateway=".", **kw):
    """choose() on one IPSECKEY naming `gateway` (an IPv4 address, or "." for none)."""
    gateway_type = 0 if gateway == "." else 1
    text = f"10 {gateway_type} 2 {gateway} {base64.b64encode(blob).decode()}"
    rdata = dns.rdata.from_text(dns.rdataclass.IN, IPSECKEY, text)
    kw.setdefault("min_key_bits", 2048)
    kw.setdefault("allow_unsigned_delegation", False)
    return choose(V4, {IPSECKEY: [rdata]}, **kw)


@pytest.mark.parametrize("state", [SECURE, INSECURE, OFF])
def test_a_key_of_the_target_itself_is_used_unless_bogus(blob, state):
    lookup = pick(blob, dnssec=state)
    assert lookup.verdict is Verdict.KEY and lookup.dnssec == state
    assert lookup.as_json()["dnssec"] == state


def test_delegation_only_from_secure_answers(blob):
    secure = pick(blob, "192.0.2.99", dnssec=SECURE)
    assert secure.verdict is Verdict.KEY
    assert secure.gateway == ipaddress.ip_address("192.0.2.99")
    for state in (INSECURE, OFF):
        lookup = pick(blob, "192.0.2.99", dnssec=state)
        assert lookup.verdict is Verdict.DENY and lookup.dnssec == state
        assert "not DNSSEC-validated (RFC 4322 3.2.4.1" in lookup.error
    # The operator's explicit exception stays (oe.conf [dns] allow_unsigned_delegation).
    assert pick(blob, "192.0.2.99", dnssec=INSECURE,
                allow_unsigned_delegation=True).verdict is Verdict.KEY


def test_bogus_denies_whatever_the_records_with_the_validators_reason(blob):
    for kw in ({}, {"allow_unsigned_delegation": True}, {"require_dnssec": True}):
        lookup = pick(blob, dnssec=BOGUS, why_bogus=WHY_BOGUS, **kw)
        assert lookup.verdict is Verdict.DENY and lookup.key is None
        assert lookup.error == ("DNSSEC validation failed for 7.2.0.192.in-addr.arpa.: "
                                + WHY_BOGUS)
        assert lookup.as_json()["dnssec"] == BOGUS
    # Even a bogus "no such name": an attacker must not turn OE off by forging a denial.
    none = choose(V4, {}, min_key_bits=2048, allow_unsigned_delegation=False, dnssec=BOGUS,
                  why_bogus=None, name_exists=False)
    assert none.verdict is Verdict.DENY
    assert none.error == ("DNSSEC validation failed for 7.2.0.192.in-addr.arpa.: "
                          "the validator gave no reason")


def test_bogus_reason_is_made_printable(blob):
    lookup = pick(blob, dnssec=BOGUS, why_bogus="bad\x1b[2Jsig")
    assert "\x1b" not in lookup.error


def test_require_dnssec_counts_insecure_keys_as_none(blob):
    for state in (INSECURE, OFF):
        lookup = pick(blob, dnssec=state, require_dnssec=True)
        assert lookup.verdict is Verdict.NOT_CAPABLE and lookup.key is None
        assert lookup.error == (f"the answers for 7.2.0.192.in-addr.arpa. are not DNSSEC-secure "
                                f"({state}) and require_dnssec = true: they count as no key")
    assert pick(blob, dnssec=SECURE, require_dnssec=True).verdict is Verdict.KEY


def test_the_weakest_state_of_the_answers_counts():
    assert weakest([SECURE, SECURE, SECURE]) == SECURE
    assert weakest([SECURE, INSECURE, SECURE]) == INSECURE
    assert weakest([SECURE, BOGUS, INSECURE]) == BOGUS
    assert weakest([OFF, OFF, OFF]) == OFF


@pytest.mark.parametrize("text, error", [
    ('[dns]\ndnssec = "yes"', "oe.conf: [dns] dnssec: expected \"validate\" or \"off\", "
                              "got 'yes'"),
    ('[dns]\ndnssec = "off"\nrequire_dnssec = true',
     'oe.conf: [dns] require_dnssec: true needs dnssec = "validate"'),
    ("[dns]\ntrust_anchors = \"/x\"", "expected a list of strings"),
])
def test_dnssec_settings_are_checked(text, error):
    with pytest.raises(ConfigError) as info:
        parse(text)
    assert error in str(info.value)
    assert "\n" not in str(info.value)


def test_dnssec_settings_defaults_and_values():
    dns_config = parse("").dns
    assert (dns_config.dnssec, dns_config.trust_anchors, dns_config.require_dnssec,
            dns_config.allow_unsigned_delegation) == ("validate", (), False, False)
    dns_config = parse('[dns]\ndnssec = "off"\ntrust_anchors = ["a.key", "/b.ds"]\n').dns
    assert (dns_config.dnssec, dns_config.trust_anchors) == ("off", ("a.key", "/b.ds"))


@pytest.mark.parametrize("why, fix", [
    ("validation failure <x IPSECKEY IN>: signature expired from 192.0.2.53",
     "re-sign the zone: its signatures have expired"),
    ("validation failure <x IPSECKEY IN>: signature before inception date from 192.0.2.53",
     "the signatures are not valid yet: check the signer's clock"),
    ("validation failure <x IPSECKEY IN>: no DNSKEY rrset for trust anchor x. while building "
     "chain of trust", "publish the zone's DS at its parent (`keymgr ZONE ds` prints it), or "
     "give peers that DS as a trust anchor"),
    ("validation failure <x IPSECKEY IN>: ECDSA signature verification failed from 192.0.2.53",
     "the records changed after they were signed: sign the zone again"),
    ("something new", "check the zone with `kdig +dnssec` and a validator"),
])
def test_check_own_says_how_to_fix_a_bogus_record(blob, why, fix):
    problems = check_own(pick(blob, dnssec=BOGUS, why_bogus=why), blob)
    assert problems == [f"peers would refuse our record: DNSSEC validation failed for "
                        f"7.2.0.192.in-addr.arpa.: {why}; {fix}"]


def test_advice_for_an_insecure_own_record(blob):
    assert dnssec_advice(pick(blob, dnssec=SECURE)) is None
    assert dnssec_advice(pick(blob, dnssec=OFF)) is None
    assert dnssec_advice(pick(blob, dnssec=INSECURE)) == (
        "7.2.0.192.in-addr.arpa. is not DNSSEC-secure from the configured trust anchors: peers "
        "with require_dnssec = true will not use our key; sign the zone and publish its DS at "
        "its parent (or give peers that DS as a trust anchor)")
    assert check_own(pick(blob, dnssec=INSECURE), blob) == []  # most peers use it


@pytest.mark.parametrize("state", [SECURE, INSECURE, OFF])
def test_a_key_says_where_it_came_from(blob, state):
    """`oe status` shows each SA's key provenance: the record kind and the DNSSEC state."""
    assert pick(blob, dnssec=state).provenance == f"IPSECKEY, dnssec {state}"
