"""Fetching keys from a real authoritative server (knotd serving zonefiles/) and from the
zone files themselves: every record's verdict and reason, caching, coalescing, the budget."""

import asyncio
import socket
import time
from pathlib import Path

import dns.message
import dns.nameserver
import dns.rdatatype
import dns.rrset
import pytest

from knot import ZONEFILES, Knotd, committed_zones, has_ipv6_loopback
from oe.config import DnsConfig
from oe.dnskeys import Verdict
from oe.dnskeys.fetcher import (FAILURE_HOLD, DnsKeyError, KeyFetcher, make_source, negative_ttl,
                                unanswered)

# Key ids of the public test keys in zonefiles/113.0.203.in-addr.arpa.zone (K1-K4 there).
K1, K2, K3, K4 = "AwEAAfEj8", "AwEAAbeg1", "AwEAAbvSC", "AwEAAfQrG"
BAD6 = "0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.d.a.b.0.8.b.d.0.1.0.0.2.ip6.arpa."
DELEGATION = "and the answer is not DNSSEC-validated (RFC 4322 3.2.4.1; " \
             "allow_unsigned_delegation = true accepts it)"

# target -> (verdict, source, gateway, key id) for a key, or (verdict, reason) without one.
CASES = {
    "203.0.113.1": (Verdict.KEY, "IPSECKEY", "203.0.113.1", K1),
    "203.0.113.2": (Verdict.KEY, "TXT", "203.0.113.2", K2),
    "203.0.113.3": (Verdict.KEY, "KEY", "203.0.113.3", K3),
    "203.0.113.4": (Verdict.KEY, "TXT", "203.0.113.4", K4),
    "203.0.113.5": (Verdict.KEY, "IPSECKEY", "203.0.113.5", K2),
    "203.0.113.6": (Verdict.KEY, "TXT", "203.0.113.6", K3),
    "203.0.113.28": (Verdict.KEY, "IPSECKEY", "203.0.113.28", "AwEAAdZjC"),  # over TCP
    "2001:db8:bad::1": (Verdict.KEY, "IPSECKEY", "2001:db8:bad::1", K1),
    "2001:db8:bad::2": (Verdict.KEY, "TXT", "2001:db8:bad::2", K2),
    "2001:db8:bad::3": (Verdict.KEY, "KEY", "2001:db8:bad::3", K3),
    "host1.test.example": (Verdict.KEY, "IPSECKEY", "@host1.test.example", K1),
    "@host2.test.example": (Verdict.KEY, "TXT", "@host2.test.example", K2),
    "host4.test.example": (Verdict.KEY, "KEY", "@host4.test.example", K4),
    "203.0.113.7": (Verdict.DENY, "IPSECKEY at 7.113.0.203.in-addr.arpa. names gateway "
                                  f"203.0.113.99, not 203.0.113.7 itself, {DELEGATION}"),
    "203.0.113.8": (Verdict.DENY, "TXT at 8.113.0.203.in-addr.arpa. names gateway "
                                  f"@gw.test.example, not 203.0.113.8 itself, {DELEGATION}"),
    "203.0.113.9": (Verdict.NOT_CAPABLE, "no IPSECKEY, TXT X-IPsec-Server or KEY record at "
                                         "9.113.0.203.in-addr.arpa."),
    "203.0.113.10": (Verdict.DENY, "TXT at 10.113.0.203.in-addr.arpa.: malformed key data: "
                                   "bad base64 (Only base64 data is allowed)"),
    "203.0.113.11": (Verdict.DENY, "IPSECKEY at 11.113.0.203.in-addr.arpa.: RSA key of 1024 "
                                   "bits is shorter than min_key_bits 2048"),
    "203.0.113.12": (Verdict.DENY, "KEY at 12.113.0.203.in-addr.arpa.: KEY protocol 3 is not "
                                   "IPsec (4)"),
    "203.0.113.13": (Verdict.DENY, "TXT at 13.113.0.203.in-addr.arpa.: X-IPsec-Server "
                                   "priority missing ')'"),
    "203.0.113.14": (Verdict.DENY, "TXT at 14.113.0.203.in-addr.arpa.: X-IPsec-Server "
                                   "missing '('"),
    "203.0.113.15": (Verdict.DENY, "TXT at 15.113.0.203.in-addr.arpa.: gateway address must "
                                   "not be 0.0.0.0 or 0::0"),
    "203.0.113.16": (Verdict.DENY, "IPSECKEY at 16.113.0.203.in-addr.arpa.: gateway address "
                                   "must not be 0.0.0.0 or 0::0"),
    "203.0.113.17": (Verdict.DENY, "KEY at 17.113.0.203.in-addr.arpa.: KEY flags 256 "
                                   "(0x0100) are not 16896 (0x4200)"),
    "203.0.113.18": (Verdict.DENY, "KEY at 18.113.0.203.in-addr.arpa.: KEY algorithm 8 is "
                                   "not RSA (1 or 5)"),
    "203.0.113.19": (Verdict.DENY, "IPSECKEY at 19.113.0.203.in-addr.arpa.: IPSECKEY "
                                   "algorithm 3 (ECDSA) is not supported: oe uses RSA keys "
                                   "(algorithm 2)"),
    "203.0.113.20": (Verdict.DENY, "IPSECKEY at 20.113.0.203.in-addr.arpa.: invalid key data: "
                                   "RSA exponent of 1 octets leaves no room for a modulus in a "
                                   "3-octet key"),
    "203.0.113.21": (Verdict.DENY, "TXT at 21.113.0.203.in-addr.arpa.: X-IPsec-Server "
                                   "priority larger than 0xFFFF"),
    "203.0.113.22": (Verdict.DENY, "TXT at 22.113.0.203.in-addr.arpa.: X-IPsec-Server "
                                   "priority missing '='"),
    "203.0.113.23": (Verdict.DENY, "TXT at 23.113.0.203.in-addr.arpa.: TXT X-IPsec-Server "
                                   "badly formed (no gateway specified)"),
    "203.0.113.24": (Verdict.DENY, "TXT at 24.113.0.203.in-addr.arpa.: malformed "
                                   "X-IPsec-Server priority"),
    "203.0.113.25": (Verdict.DENY, "TXT at 25.113.0.203.in-addr.arpa. carries no key and "
                                   "there is no usable KEY record at 25.113.0.203.in-addr.arpa."),
    "203.0.113.26": (Verdict.DENY, "TXT at 26.113.0.203.in-addr.arpa.: malformed gateway "
                                   "'203.0.113.300': Octet 300 (> 255) not permitted in "
                                   "'203.0.113.300'"),
    "203.0.113.27": (Verdict.DENY, "TXT at 27.113.0.203.in-addr.arpa.: malformed key data: "
                                   "bad base64 (Only base64 data is allowed)"),
    "203.0.113.29": (Verdict.DENY, "IPSECKEY at 29.113.0.203.in-addr.arpa.: invalid key data: "
                                   "RSA exponent is not smaller than the modulus"),
    "203.0.113.30": (Verdict.DENY, "IPSECKEY at 30.113.0.203.in-addr.arpa.: invalid key data: "
                                   "RSA exponent 65536 is not an odd number >= 3"),
    "203.0.113.31": (Verdict.DENY, "IPSECKEY at 31.113.0.203.in-addr.arpa.: invalid key data: "
                                   "RSA exponent 1 is not an odd number >= 3"),
    "203.0.113.32": (Verdict.DENY, "IPSECKEY at 32.113.0.203.in-addr.arpa.: invalid key data: "
                                   "RSA modulus is even"),
    "203.0.113.33": (Verdict.DENY, "IPSECKEY at 33.113.0.203.in-addr.arpa.: invalid key data: "
                                   "RSA exponent has a leading zero octet (RFC 3110 section 2)"),
    "203.0.113.34": (Verdict.DENY, "IPSECKEY at 34.113.0.203.in-addr.arpa.: invalid key data: "
                                   "RSA exponent length 3 is written in three octets (RFC 3110 "
                                   "section 2: one octet for 1-255)"),
    "203.0.113.35": (Verdict.DENY, "TXT at 35.113.0.203.in-addr.arpa.: malformed gateway "
                                   "'203.0.113.35\\x1b[2J\\x1b[31mFORGED\\x08': Only decimal "
                                   "digits permitted in '35\\x1b[2J\\x1b[31mFORGED\\x08' in "
                                   "'203.0.113.35\\x1b[2J\\x1b[31mFORGED\\x08'"),
    "203.0.113.200": (Verdict.NOT_CAPABLE, "no IPSECKEY, TXT X-IPsec-Server or KEY record at "
                                           "200.113.0.203.in-addr.arpa. (the name does not "
                                           "exist)"),
    "2001:db8:bad::10": (Verdict.DENY, f"TXT at 0.1.{BAD6}: gateway address must not be "
                                       "0.0.0.0 or 0::0"),
    "2001:db8:bad::11": (Verdict.DENY, f"IPSECKEY at 1.1.{BAD6}: gateway address must not be "
                                       "0.0.0.0 or 0::0"),
    "2001:db8:bad::12": (Verdict.DENY, f"TXT at 2.1.{BAD6}: malformed key data: bad base64 "
                                       "(Only base64 data is allowed)"),
    "2001:db8:bad::13": (Verdict.DENY, f"IPSECKEY at 3.1.{BAD6} names gateway "
                                       f"2001:db8:bad::99, not 2001:db8:bad::13 itself, "
                                       f"{DELEGATION}"),
    "host3.test.example": (Verdict.DENY, "TXT at host3.test.example. names gateway "
                                         f"@gw.test.example, not host3.test.example itself, "
                                         f"{DELEGATION}"),
    "192.0.2.10": (Verdict.KEY, "IPSECKEY", "192.0.2.10", None),
    "2001:db8::20": (Verdict.KEY, "IPSECKEY", "2001:db8::20", None),
    "192.0.2.30": (Verdict.NOT_CAPABLE, "no IPSECKEY, TXT X-IPsec-Server or KEY record at "
                                        "30.2.0.192.in-addr.arpa."),
}


@pytest.fixture(scope="module")
def knot(tmp_path_factory):
    with Knotd(tmp_path_factory.mktemp("knot"), committed_zones()) as server:
        yield server


def dns_fetcher(knot, nameserver="127.0.0.1", **config) -> KeyFetcher:
    config = DnsConfig(nameservers=(nameserver,), port=knot.port, dnssec="off", **config)
    return KeyFetcher.from_config(config, Path("/nonexistent"))


def zone_fetcher(**config) -> KeyFetcher:
    config = DnsConfig(keysource="zonefiles", zonefiles_dir=str(ZONEFILES), **config)
    return KeyFetcher.from_config(config, Path("/nonexistent"))


@pytest.fixture(params=["knotd", "zonefiles"])
def fetcher(request):
    if request.param == "knotd":
        return dns_fetcher(request.getfixturevalue("knot"))
    return zone_fetcher()


@pytest.mark.parametrize("target", CASES)
def test_every_record_gets_its_verdict_and_precise_reason(fetcher, target):
    lookup = asyncio.run(fetcher.fetch(target))
    expected = CASES[target]
    assert lookup.verdict is expected[0]
    if expected[0] is Verdict.KEY:
        data = lookup.as_json()
        assert (data["source"], data["gateway"], data["error"]) == (expected[1], expected[2],
                                                                    None)
        assert expected[3] is None or data["key_id"] == expected[3]
        assert data["bits"] >= 2048
        lookup.key.public_key()  # a key the fetcher hands out is one cryptography takes
    else:
        assert lookup.error == expected[1]
        assert lookup.as_json()["key_id"] is None
        assert lookup.error.isprintable()  # DNS text in a reason is escaped (defect 10)


def test_delegation_is_accepted_when_oe_conf_allows_unsigned_delegation(knot):
    fetcher = dns_fetcher(knot, allow_unsigned_delegation=True)
    lookup = asyncio.run(fetcher.fetch("203.0.113.7"))
    assert (lookup.verdict, lookup.as_json()["gateway"], lookup.key_id) == (
        Verdict.KEY, "203.0.113.99", K2)
    # The key is the gateway's, for 203.0.113.7 as its client (issue 10 defect 11).
    assert (str(lookup.identity), lookup.delegated_for.text) == ("203.0.113.99", "203.0.113.7")
    lookup = asyncio.run(fetcher.fetch("host3.test.example"))
    assert (lookup.verdict, lookup.as_json()["gateway"]) == (Verdict.KEY, "@gw.test.example")
    assert (lookup.as_json()["identity"], lookup.as_json()["delegated_for"]) == (
        "@gw.test.example", "host3.test.example")
    own = asyncio.run(fetcher.fetch("203.0.113.1"))
    assert (str(own.identity), own.delegated_for) == ("203.0.113.1", None)


def test_min_key_bits_comes_from_oe_conf(knot):
    lookup = asyncio.run(dns_fetcher(knot, min_key_bits=1024).fetch("203.0.113.11"))
    assert lookup.verdict is Verdict.KEY and lookup.key.bits == 1024
    lookup = asyncio.run(dns_fetcher(knot, min_key_bits=4096).fetch("203.0.113.1"))
    assert lookup.error == ("IPSECKEY at 1.113.0.203.in-addr.arpa.: RSA key of 2048 bits is "
                            "shorter than min_key_bits 4096")


@pytest.mark.skipif(not has_ipv6_loopback(), reason="no ::1 on this host")
def test_nameserver_over_ipv6(knot):
    lookup = asyncio.run(dns_fetcher(knot, nameserver="::1").fetch("2001:db8:bad::1"))
    assert (lookup.verdict, lookup.key_id) == (Verdict.KEY, K1)


def test_a_name_outside_the_served_zones_is_not_capable_with_the_rcode(knot):
    lookup = asyncio.run(dns_fetcher(knot).fetch("198.18.0.1"))
    assert lookup.verdict is Verdict.NOT_CAPABLE
    assert lookup.error == (f"DNS lookup of IPSECKEY at 1.0.18.198.in-addr.arpa. failed: "
                            f"REFUSED from Do53:127.0.0.1@{knot.port}")
    lookup = asyncio.run(zone_fetcher().fetch("198.18.0.1"))
    assert lookup.error == (f"DNS lookup of IPSECKEY at 1.0.18.198.in-addr.arpa. failed: "
                            f"no zone file in {ZONEFILES} covers 1.0.18.198.in-addr.arpa.")


class Clock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self):
        return self.now


def clocked_fetcher(server) -> tuple[KeyFetcher, Clock]:
    """A fetcher asking `server` whose clock the test moves."""
    clock = Clock()
    config = DnsConfig(nameservers=("127.0.0.1",), port=server.port, dnssec="off")
    return KeyFetcher(config, make_source(config, Path("/")), clock=clock), clock


def test_positive_answers_cached_by_ttl_negative_by_soa_minimum(knot):
    """203.0.113.1: IPSECKEY with TTL 600; no TXT or KEY, so NODATA for SOA minimum 300."""
    fetcher, clock = clocked_fetcher(knot)

    async def fetch():
        return await fetcher.fetch("203.0.113.1")

    assert asyncio.run(fetch()).ttl == 300  # the shortest: the negative answers'
    assert fetcher.stats.queries == 3
    clock.now += 299
    lookup = asyncio.run(fetch())
    assert (fetcher.stats.queries, fetcher.stats.cache_hits, lookup.ttl) == (3, 3, 1)
    clock.now += 2  # 301 s: the negative answers have expired, the IPSECKEY has not
    assert asyncio.run(fetch()).verdict is Verdict.KEY
    assert (fetcher.stats.queries, fetcher.stats.cache_hits) == (5, 4)
    clock.now += 300  # 601 s: all expired
    asyncio.run(fetch())
    assert fetcher.stats.queries == 8


def test_nxdomain_is_cached_for_the_soa_minimum(knot):
    fetcher, clock = clocked_fetcher(knot)
    lookup = asyncio.run(fetcher.fetch("203.0.113.200"))
    assert (lookup.verdict, lookup.ttl) == (Verdict.NOT_CAPABLE, 300)
    clock.now += 299
    asyncio.run(fetcher.fetch("203.0.113.200"))
    assert fetcher.stats.queries == 3
    clock.now += 1
    asyncio.run(fetcher.fetch("203.0.113.200"))
    assert fetcher.stats.queries == 6


def test_negative_ttl_is_soa_ttl_or_minimum_and_nothing_without_soa():
    """RFC 2308 section 5: min(SOA TTL, SOA MINIMUM); no SOA, no negative caching."""
    query = dns.message.make_query("x.example.", dns.rdatatype.TXT)
    response = dns.message.make_response(query)
    assert negative_ttl(response) == 0
    response.authority.append(dns.rrset.from_text("example.", 120, "IN", "SOA",
                                                  "ns.example. h.example. 1 2 3 4 900"))
    assert negative_ttl(response) == 120
    response.authority[0].ttl = 3600
    assert negative_ttl(response) == 900


def test_concurrent_lookups_of_one_name_share_one_query(knot):
    fetcher = dns_fetcher(knot)

    async def many():
        return await asyncio.gather(*(fetcher.fetch("203.0.113.5") for _ in range(20)))

    lookups = asyncio.run(many())
    assert {lookup.key_id for lookup in lookups} == {K2}
    assert (fetcher.stats.queries, fetcher.stats.coalesced) == (3, 57)


def test_the_cache_is_bounded_least_recently_used_first(knot):
    fetcher = dns_fetcher(knot, cache_size=4)
    asyncio.run(fetcher.fetch("203.0.113.1"))
    asyncio.run(fetcher.fetch("203.0.113.3"))
    assert fetcher.cached() == 4 and fetcher.stats.queries == 6
    # .1's IPSECKEY and TXT were evicted, its KEY (NODATA) answer is still there
    asyncio.run(fetcher.fetch("203.0.113.1"))
    assert (fetcher.stats.queries, fetcher.stats.cache_hits, fetcher.cached()) == (8, 1, 4)


@pytest.fixture
def black_hole():
    """A UDP port that never answers: bound, never read."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("127.0.0.1", 0))
        yield sock.getsockname()[1]


def test_a_nameserver_that_never_answers_costs_the_budget_and_no_more(black_hole):
    config = DnsConfig(nameservers=("127.0.0.1",), port=black_hole, query_timeout=0.2,
                       total_timeout=0.6, dnssec="off")
    fetcher = KeyFetcher.from_config(config, Path("/"))
    start = time.monotonic()
    lookup = asyncio.run(fetcher.fetch("203.0.113.1"))
    elapsed = time.monotonic() - start
    assert lookup.verdict is Verdict.NOT_CAPABLE
    # issue 15, 8: the message named neither the nameserver nor the per-query timeout
    assert lookup.error == (f"DNS timeout: no answer for 1.113.0.203.in-addr.arpa. from "
                            f"127.0.0.1 port {black_hole} within the 0.6 s budget (0.2 s per "
                            f"query)")
    assert unanswered(lookup)
    assert elapsed < 0.6 + 2.0  # generous: the point is that it is not 3 x 5 s of retries
    assert fetcher.cached() == 0  # timeouts are not cached


def test_an_unanswered_lookup_is_held_briefly_so_the_next_one_does_not_wait_again(black_hole):
    """RFC 2308 section 7: a resolver may keep a server failure (at most 5 minutes). Issue 15,
    8: a responder whose lookup of a peer just timed out looked the same name up again as
    initiator, for the reply, and waited the whole budget a second time."""
    clock = Clock()
    config = DnsConfig(nameservers=("127.0.0.1",), port=black_hole, query_timeout=0.2,
                       total_timeout=0.4, dnssec="off")
    fetcher = KeyFetcher(config, make_source(config, Path("/")), clock=clock)
    first = asyncio.run(fetcher.fetch("203.0.113.1"))
    queries = fetcher.stats.queries
    start = time.monotonic()
    again = asyncio.run(fetcher.fetch("203.0.113.1"))
    assert time.monotonic() - start < 0.1 and fetcher.stats.queries == queries
    assert again.error == first.error + f" (held for {FAILURE_HOLD:g} s)" and unanswered(again)
    clock.now += FAILURE_HOLD
    asyncio.run(fetcher.fetch("203.0.113.1"))               # the hold is over: asked again
    assert fetcher.stats.queries > queries
    queries = fetcher.stats.queries
    asyncio.run(fetcher.fetch("203.0.113.1", refresh=True))  # refresh asks whatever is held
    assert fetcher.stats.queries > queries


def test_the_per_query_timeout_moves_on_to_the_next_nameserver(knot, black_hole):
    """First nameserver silent: after query_timeout dnspython asks the next, within budget."""
    config = DnsConfig(nameservers=("127.0.0.1",), port=black_hole, query_timeout=0.2,
                       total_timeout=3.0, dnssec="off")
    fetcher = KeyFetcher.from_config(config, Path("/"))
    resolver = fetcher.source.resolver
    resolver.nameservers = [dns.nameserver.Do53Nameserver("127.0.0.1", black_hole),
                            dns.nameserver.Do53Nameserver("127.0.0.1", knot.port)]
    start = time.monotonic()
    lookup = asyncio.run(fetcher.fetch("203.0.113.1"))
    assert (lookup.verdict, lookup.key_id) == (Verdict.KEY, K1)
    assert time.monotonic() - start < 0.2 + 1.0  # one query timeout, not the budget


def test_verify_reports_a_timeout_as_a_timeout(black_hole, tmp_path, capsys):
    """issue 15, 8: `oe verify` said "DNS publishes no key" when DNS did not answer."""
    from oe import hostkey
    from oe.cli import main

    hostkey.write(hostkey.hostkey_path(tmp_path), hostkey.generate(2048))
    (tmp_path / "oe.conf").write_text(f'[dns]\nnameservers = ["127.0.0.1"]\nport = '
                                      f'{black_hole}\nquery_timeout = 0.2\ntotal_timeout = 0.4\n')
    code = main(["--confdir", str(tmp_path), "verify", "--address", "203.0.113.1"])
    err = capsys.readouterr().err
    assert code == 2
    assert err == (f"oe: cannot verify: DNS timeout: no answer for 1.113.0.203.in-addr.arpa. "
                   f"from 127.0.0.1 port {black_hole} within the 0.4 s budget (0.2 s per "
                   f"query)\n")


@pytest.mark.parametrize("config, reason", [
    (DnsConfig(keysource="ldap"), "[dns] keysource = 'ldap': expected one of 'dns', "
                                  "'zonefiles'"),
    (DnsConfig(keysource="zonefiles"), '[dns] keysource = "zonefiles" needs zonefiles_dir'),
    (DnsConfig(keysource="zonefiles", zonefiles_dir="/nonexistent"),
     "no zone files (*.zone) in /nonexistent"),
])
def test_key_source_errors_are_one_line(config, reason):
    with pytest.raises(DnsKeyError) as caught:
        KeyFetcher.from_config(config, Path("/"))
    assert str(caught.value) == reason


def test_a_broken_zone_file_names_file_and_line(tmp_path):
    (tmp_path / "bad.example.zone").write_text(
        "$TTL 60\n@ SOA ns h 1 2 3 4 5\n@ NS ns\nx KEY 0x4200 4 1 AQID\n")
    config = DnsConfig(keysource="zonefiles", zonefiles_dir=str(tmp_path))
    with pytest.raises(DnsKeyError, match=r"bad.example.zone:4: .*"):
        KeyFetcher.from_config(config, Path("/"))


def test_relative_zonefiles_dir_is_taken_from_confdir():
    config = DnsConfig(keysource="zonefiles", zonefiles_dir=ZONEFILES.name)
    fetcher = KeyFetcher.from_config(config, ZONEFILES.parent)
    assert asyncio.run(fetcher.fetch("203.0.113.1")).key_id == K1


# ---------------------------------------------------------------- issue 10 defect 9: key TTLs

ROTATING = "100.51.198.in-addr.arpa"


def rotating_zone(serial: int, blob: str, ttl: int = 60) -> str:
    """198.51.100.7 publishes `blob` with `ttl`; NODATA for TXT and KEY lives as long."""
    return (f"$ORIGIN {ROTATING}.\n$TTL {ttl}\n"
            f"@ SOA ns.test.example. hostmaster.test.example. {serial} 3600 600 86400 {ttl}\n"
            f"@ NS ns.test.example.\n7 IPSECKEY 10 0 2 . {blob}\n")


@pytest.fixture
def rotating(tmp_path):
    """A knotd of its own serving 198.51.100.7 with key K1, whose zone the test rewrites."""
    with Knotd(tmp_path, {ROTATING: rotating_zone(1, KEYS[K1])}) as server:
        yield server


def zone_keys() -> dict[str, str]:
    """Key id -> base64 blob of the test keys in zonefiles/113.0.203.in-addr.arpa.zone."""
    text = (ZONEFILES / "113.0.203.in-addr.arpa.zone").read_text()
    keys: dict[str, str] = {}
    for line in text.splitlines()[:30]:  # the good records; broken ones share key ids
        fields = line.split()
        if "TXT" not in fields and fields and fields[-1].startswith("AwEAA"):
            keys.setdefault(fields[-1][:9], fields[-1])
    return keys


KEYS = zone_keys()


def test_a_lookup_says_when_it_expires_and_the_cache_never_outlives_it(rotating):
    """The key is served for 60 s; the zone rolls to K2 at once. Until the TTL the lookup gives
    K1 with the same expiry; at the TTL it asks again and gets K2 (RFC 4322 3.2, RFC 1035 3.2.1:
    an answer is good for its TTL and no longer)."""
    fetcher, clock = clocked_fetcher(rotating)
    first = asyncio.run(fetcher.fetch("198.51.100.7"))
    assert (first.key_id, first.ttl, first.expires) == (K1, 60, 1060.0)
    rotating.replace_zone(ROTATING, rotating_zone(2, KEYS[K2]))
    clock.now += 59.5
    cached = asyncio.run(fetcher.fetch("198.51.100.7"))
    assert (cached.key_id, cached.expires) == (K1, 1060.0) and not cached.expired(clock.now)
    assert cached.expires <= first.expires  # a cached answer never lives longer than served
    clock.now = 1060.0
    assert cached.expired(clock.now)
    fresh = asyncio.run(fetcher.fetch("198.51.100.7"))
    assert (fresh.key_id, fresh.ttl, fresh.expires) == (K2, 60, 1120.0)
    assert fetcher.stats.queries == 6


def test_refresh_bypasses_the_cache_once(rotating):
    """After an authentication failure with a cached key the daemon asks once more, past the
    cache: the rolled key is seen at once, and the fresh answer is cached again."""
    fetcher, clock = clocked_fetcher(rotating)
    assert asyncio.run(fetcher.fetch("198.51.100.7")).key_id == K1
    rotating.replace_zone(ROTATING, rotating_zone(2, KEYS[K2]))
    clock.now += 10
    assert asyncio.run(fetcher.fetch("198.51.100.7")).key_id == K1
    refreshed = asyncio.run(fetcher.fetch("198.51.100.7", refresh=True))
    assert (refreshed.key_id, refreshed.expires) == (K2, 1070.0)
    assert (fetcher.stats.queries, fetcher.stats.refreshes) == (6, 1)
    assert asyncio.run(fetcher.fetch("198.51.100.7")).key_id == K2
    assert fetcher.stats.queries == 6


def test_a_zero_ttl_answer_expires_at_once_and_is_not_cached(rotating):
    rotating.replace_zone(ROTATING, rotating_zone(2, KEYS[K3], ttl=0))
    fetcher, clock = clocked_fetcher(rotating)
    lookup = asyncio.run(fetcher.fetch("198.51.100.7"))
    assert (lookup.key_id, lookup.ttl, lookup.expires) == (K3, 0, 1000.0)
    assert lookup.expired(clock.now)  # good for the negotiation under way, not for the next
    assert fetcher.cached() == 0


def test_an_fqdn_gateways_addresses_come_through_the_same_source_and_rule():
    """docs/gateway.md 5: A/AAAA of an @FQDN gateway, under the delegation rule (zone files
    are not validated: "off", so only allow_unsigned_delegation lets them be used)."""
    import dns.name
    name = dns.name.from_text("gw.test.example.")
    found = asyncio.run(zone_fetcher(allow_unsigned_delegation=True).gateway(name, 4, "off"))
    assert [str(a) for a in found.addresses] == ["203.0.113.99"] and found.error is None
    refused = asyncio.run(zone_fetcher().gateway(name, 4, "off"))
    assert refused.addresses == () and "allow_unsigned_delegation" in refused.error
    none6 = asyncio.run(zone_fetcher(allow_unsigned_delegation=True).gateway(name, 6, "off"))
    assert none6.error == "gateway gw.test.example. has no address of the flow's family"
