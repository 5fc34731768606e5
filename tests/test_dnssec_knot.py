"""Validation by libunbound of zones knotd signs (issue 12, item 6): secure, insecure (no anchor;
an unsigned child with its DS absence proven), bogus (wrong anchor; tampered, expired or missing
signatures), NXDOMAIN proven by NSEC and NSEC3, delegation from secure and insecure answers,
require_dnssec both ways. The queries go through the validator as a forwarding client of knotd
(`set_fwd`), as oe asks its nameservers."""

import asyncio
import socket
import threading
import time
from pathlib import Path

import dns.dnssec
import dns.message
import dns.name
import dns.query
import dns.rcode
import dns.rdatatype
import dns.zone
import pytest
from cryptography.hazmat.primitives.asymmetric import ec

from knot import Knotd, committed_zones

pytest.importorskip("unbound", reason="python3-unbound is not importable: make the venv from "
                                      "Debian's /usr/bin/python3 --system-site-packages "
                                      "(make venv)")
from oe.config import DnsConfig
from oe.dnskeys import Verdict
from oe.dnskeys.choice import BOGUS, INSECURE, SECURE
from oe.dnskeys.fetcher import DnsKeyError, KeyFetcher
from oe.dnskeys.unbound import UnboundSource, read_anchors
from oe.knotd import NSEC, NSEC3

SIGNED = {"113.0.203.in-addr.arpa": NSEC, "test.example": NSEC3, "signed.example": NSEC}
ZONES = [*SIGNED, "unsigned.signed.example"]
NO_DELEGATION = "and the answer is not DNSSEC-validated (RFC 4322 3.2.4.1"


@pytest.fixture(scope="module")
def signer(tmp_path_factory):
    """knotd signing zonefiles/' zones (and serving the unsigned child), and their DS anchors."""
    zones = committed_zones()
    with Knotd(tmp_path_factory.mktemp("signer"), {o: zones[o] for o in ZONES},
               signing=SIGNED) as knot:
        yield knot


@pytest.fixture(scope="module")
def anchors(signer, tmp_path_factory):
    path = tmp_path_factory.mktemp("anchors") / "anchors.ds"
    path.write_text("".join(signer.anchor(origin) for origin in SIGNED))
    return path


def fetch(knot, anchor_files, target, **settings):
    """The KeyLookup oe makes for `target`, validating from `anchor_files` through knotd."""
    config = DnsConfig(nameservers=("127.0.0.1",), port=knot.port, **settings)
    source = UnboundSource(["127.0.0.1"], knot.port, read_anchors(anchor_files))

    async def run():
        try:
            return await KeyFetcher(config, source).fetch(target)
        finally:
            source.close()
    return asyncio.run(run())


@pytest.mark.parametrize("target, source, gateway", [
    ("203.0.113.1", "IPSECKEY", "203.0.113.1"),          # NSEC-signed reverse zone
    ("host1.test.example", "IPSECKEY", "@host1.test.example"),  # NSEC3-signed
    ("host.signed.example", "IPSECKEY", "@host.signed.example"),
])
def test_secure_key_is_used(signer, anchors, target, source, gateway):
    lookup = fetch(signer, [anchors], target)
    data = lookup.as_json()
    assert (data["verdict"], data["dnssec"], data["source"], data["gateway"]) == \
        ("key", SECURE, source, gateway)


@pytest.mark.parametrize("target, gateway", [("203.0.113.7", "203.0.113.99"),
                                             ("client.signed.example", "@gw.signed.example")])
def test_delegation_from_a_secure_answer_is_accepted(signer, anchors, target, gateway):
    lookup = fetch(signer, [anchors], target)
    assert (lookup.verdict, lookup.dnssec) == (Verdict.KEY, SECURE)
    assert lookup.as_json()["gateway"] == gateway and lookup.delegated_for is not None


@pytest.mark.parametrize("target, name", [
    ("203.0.113.250", "250.113.0.203.in-addr.arpa."),    # NSEC proves it
    ("nohost.test.example", "nohost.test.example."),      # NSEC3 proves it
])
def test_nxdomain_proven_is_secure_and_no_key(signer, anchors, target, name):
    lookup = fetch(signer, [anchors], target)
    assert (lookup.verdict, lookup.dnssec) == (Verdict.NOT_CAPABLE, SECURE)
    assert lookup.error == (f"no IPSECKEY, TXT X-IPsec-Server or KEY record at {name} "
                            f"(the name does not exist)")


def test_unsigned_child_without_ds_is_proven_insecure(signer, anchors):
    # What knotd serves: no DS at the cut, and a signed NSEC there whose type bitmap lacks DS.
    query = dns.message.make_query("unsigned.signed.example.", "DS", want_dnssec=True)
    response = dns.query.udp(query, "127.0.0.1", port=signer.port, timeout=2)
    assert response.rcode() == dns.rcode.NOERROR and not response.answer
    nsec = [r for r in response.authority if r.rdtype == dns.rdatatype.NSEC]
    assert nsec and nsec[0].name == dns.name.from_text("unsigned.signed.example.")
    assert "NS" in nsec[0][0].to_text().split() and "DS" not in nsec[0][0].to_text().split()
    assert any(r.rdtype == dns.rdatatype.RRSIG for r in response.authority)
    lookup = fetch(signer, [anchors], "host.unsigned.signed.example")
    assert (lookup.verdict, lookup.dnssec, lookup.record.kind) == (Verdict.KEY, INSECURE,
                                                                   "IPSECKEY")
    # ... and with require_dnssec it counts as no key (private-or-clear goes clear).
    lookup = fetch(signer, [anchors], "host.unsigned.signed.example", require_dnssec=True)
    assert (lookup.verdict, lookup.dnssec, lookup.key) == (Verdict.NOT_CAPABLE, INSECURE, None)
    assert "require_dnssec = true" in lookup.error
    # require_dnssec leaves secure keys alone.
    assert fetch(signer, [anchors], "host.signed.example",
                 require_dnssec=True).verdict is Verdict.KEY


def test_delegation_from_an_insecure_answer_is_refused(signer, anchors):
    lookup = fetch(signer, [anchors], "client.unsigned.signed.example")
    assert (lookup.verdict, lookup.dnssec) == (Verdict.DENY, INSECURE)
    assert NO_DELEGATION in lookup.error
    accepted = fetch(signer, [anchors], "client.unsigned.signed.example",
                     allow_unsigned_delegation=True)
    assert (accepted.verdict, accepted.dnssec) == (Verdict.KEY, INSECURE)


def test_without_an_anchor_everything_is_insecure(signer):
    lookup = fetch(signer, [], "203.0.113.1")
    assert (lookup.verdict, lookup.dnssec) == (Verdict.KEY, INSECURE)
    assert fetch(signer, [], "203.0.113.7").verdict is Verdict.DENY  # delegation refused
    assert fetch(signer, [], "203.0.113.1", require_dnssec=True).verdict is Verdict.NOT_CAPABLE


def test_wrong_anchor_is_bogus_and_denies(signer, tmp_path):
    """A DS for a key the zone does not have: no chain of trust, whatever the records say."""
    key = ec.generate_private_key(ec.SECP256R1())
    dnskey = dns.dnssec.make_dnskey(key.public_key(), dns.dnssec.Algorithm.ECDSAP256SHA256,
                                    flags=257)
    origin = dns.name.from_text("signed.example.")
    wrong = tmp_path / "wrong.ds"
    wrong.write_text(f"{origin} IN DS {dns.dnssec.make_ds(origin, dnskey, 'SHA256')}\n")
    for target in ("host.signed.example", "nohost.signed.example"):  # a denial too
        lookup = fetch(signer, [wrong], target, allow_unsigned_delegation=True)
        assert (lookup.verdict, lookup.dnssec, lookup.key) == (Verdict.DENY, BOGUS, None)
        assert lookup.error.startswith(f"DNSSEC validation failed for {target}.: ")
        assert "validation failure" in lookup.error  # libunbound's why_bogus


def sign_expired(text: str, origin: str) -> tuple[str, str]:
    """`text` signed by dnspython with a new key whose signatures expired yesterday, and the DS
    of that key: well-formed, but bogus (RFC 4035 5.3.1)."""
    zone = dns.zone.from_text(text, origin=origin, relativize=False)
    key = ec.generate_private_key(ec.SECP256R1())
    dnskey = dns.dnssec.make_dnskey(key.public_key(), dns.dnssec.Algorithm.ECDSAP256SHA256,
                                    flags=257)
    now = int(time.time())
    dns.dnssec.sign_zone(zone, keys=[(key, dnskey)], inception=now - 2 * 86400,
                         expiration=now - 86400)
    name = dns.name.from_text(origin)
    return zone.to_text(), f"{name} IN DS {dns.dnssec.make_ds(name, dnskey, 'SHA256')}\n"


@pytest.fixture(scope="module")
def forger(signer, anchors, tmp_path_factory):
    """A second knotd serving, for signed names, what an attacker could: knotd's signed zone
    with one record replaced (signatures kept), the zone without any signature, and a zone whose
    signatures expired. Returns it and the anchors (the real DS, and the expired zone's)."""
    zones = committed_zones()
    tampered = signer.served("113.0.203.in-addr.arpa").replace(
        "1.113.0.203.in-addr.arpa. 600 IPSECKEY 10 0 2 . AwEAAfEj8",
        "1.113.0.203.in-addr.arpa. 600 IPSECKEY 10 0 2 . AwEAAbvSC", 1)
    assert tampered != signer.served("113.0.203.in-addr.arpa")
    expired, expired_ds = sign_expired(zones["signed.example"], "signed.example")
    path = tmp_path_factory.mktemp("forger-anchors") / "anchors.ds"
    path.write_text(anchors.read_text().replace(signer.anchor("signed.example"), "")
                    + expired_ds)
    with Knotd(tmp_path_factory.mktemp("forger"),
               {"113.0.203.in-addr.arpa": tampered, "test.example": zones["test.example"],
                "signed.example": expired}) as knot:
        yield knot, path


@pytest.mark.parametrize("target, why", [
    ("203.0.113.1", "signature verification failed"),  # a record replaced, RRSIG kept
    ("host1.test.example", "no DNSKEY rrset"),  # a signed zone served unsigned
    ("host.signed.example", "signature expired"),
])
def test_forged_answers_for_signed_names_are_bogus_and_deny(forger, target, why):
    knot, anchor_file = forger
    for settings in ({}, {"allow_unsigned_delegation": True}):
        lookup = fetch(knot, [anchor_file], target, **settings)
        assert (lookup.verdict, lookup.dnssec, lookup.key) == (Verdict.DENY, BOGUS, None)
        assert lookup.error.startswith("DNSSEC validation failed for ")
        assert why in lookup.error


@pytest.mark.parametrize("content, error", [
    (None, "No such file or directory"),
    ("not a record\n", "trust anchor"),
    ("signed.example. IN A 192.0.2.1\n", "expected DS or DNSKEY records, found signed.example. A"),
    ("", "expected DS or DNSKEY records, found nothing"),
])
def test_bad_anchor_files_are_one_line_errors(tmp_path, content, error):
    path = tmp_path / "anchor"
    if content is not None:
        path.write_text(content)
    with pytest.raises(DnsKeyError) as info:
        UnboundSource.from_config(("127.0.0.1",), 53, [str(path)], Path("/"))
    assert error in str(info.value) and "\n" not in str(info.value)
    assert str(info.value).startswith(f"trust anchor {path}: ")


def test_default_anchor_is_the_root_key(monkeypatch, tmp_path):
    from oe.dnskeys import unbound
    assert unbound.anchor_paths((), tmp_path) == (
        [unbound.ROOT_KEY] if unbound.ROOT_KEY.exists() else [])
    assert unbound.anchor_paths(("a.ds", "/b.ds"), tmp_path) == [tmp_path / "a.ds",
                                                                   Path("/b.ds")]
    monkeypatch.setattr(unbound, "ROOT_KEY", tmp_path / "absent.key")
    assert unbound.anchor_paths((), tmp_path) == []


def test_lookups_run_at_once_are_coalesced_and_cached_with_their_state(signer, anchors):
    config = DnsConfig(nameservers=("127.0.0.1",), port=signer.port)
    source = UnboundSource(["127.0.0.1"], signer.port, read_anchors([anchors]))
    fetcher = KeyFetcher(config, source)
    targets = [f"203.0.113.{n}" for n in (1, 2, 3, 7, 9, 250)] * 3

    async def run():
        try:
            first = await asyncio.gather(*(fetcher.fetch(t) for t in targets))
            again = await fetcher.fetch("203.0.113.1")
            return first, again
        finally:
            source.close()
    first, again = asyncio.run(run())
    assert {lookup.dnssec for lookup in first} == {SECURE}
    assert fetcher.stats.queries == 6 * 3 and fetcher.stats.coalesced == 12 * 3
    assert (again.verdict, again.dnssec) == (Verdict.KEY, SECURE)  # from the cache
    assert fetcher.stats.cache_hits == 3


def test_a_silent_nameserver_costs_the_budget_and_no_more(tmp_path):
    """libunbound keeps retrying; the lookup ends at the budget and its queries are cancelled."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as silent:
        silent.bind(("127.0.0.1", 0))
        port = silent.getsockname()[1]
        config = DnsConfig(nameservers=("127.0.0.1",), port=port, query_timeout=0.2,
                           total_timeout=0.5)
        source = UnboundSource(["127.0.0.1"], port, [])

        async def run():
            try:
                start = time.monotonic()
                lookup = await KeyFetcher(config, source).fetch("203.0.113.1")
                return lookup, time.monotonic() - start
            finally:
                source.close()
        lookup, took = asyncio.run(run())
    assert lookup.verdict is Verdict.NOT_CAPABLE and 0.5 <= took < 1.5
    assert lookup.error == (f"DNS timeout: no answer for 1.113.0.203.in-addr.arpa. from "
                            f"127.0.0.1 port {port} within the 0.5 s budget (0.2 s per query)")


def test_without_libunbound_the_source_is_a_one_line_error(monkeypatch):
    from oe.dnskeys import unbound
    monkeypatch.setattr(unbound, "unbound", None)
    with pytest.raises(DnsKeyError) as info:
        UnboundSource(["127.0.0.1"], 53, [])
    assert "python3-unbound" in str(info.value) and "\n" not in str(info.value)


def test_flush_forgets_what_libunbound_cached(tmp_path):
    """KeyFetcher's refresh (a key that just failed to authenticate) must reach the nameserver:
    libunbound caches answers itself, so the source is flushed as well."""
    zones = committed_zones()
    with Knotd(tmp_path / "knot", {"signed.example": zones["signed.example"]},
               signing={"signed.example": NSEC}) as knot:
        anchor = tmp_path / "anchor.ds"
        anchor.write_text(knot.anchor("signed.example"))
        config = DnsConfig(nameservers=("127.0.0.1",), port=knot.port)
        source = UnboundSource(["127.0.0.1"], knot.port, read_anchors([anchor]))
        k1 = "AwEAAfEj8"
        k3 = zones["signed.example"].split("client\tIPSECKEY\t10 3 2 gw.signed.example. ")[1][:9]

        async def run():
            # A new KeyFetcher each time: its own cache is not what this is about.
            try:
                before = await KeyFetcher(config, source).fetch("host.signed.example")
                knot.replace_zone("signed.example", zones["signed.example"].replace(
                    " 1 3600 600", " 2 3600 600").replace(
                    "host.signed.example. " + k1, "host.signed.example. " + k3))
                cached = await KeyFetcher(config, source).fetch("host.signed.example")
                source.flush()
                fresh = await KeyFetcher(config, source).fetch("host.signed.example")
                return before, cached, fresh
            finally:
                source.close()
        before, cached, fresh = asyncio.run(run())
    assert (before.key_id, before.dnssec) == (k1, SECURE)
    assert cached.key_id == k1  # libunbound's cache answered
    assert (fresh.key_id, fresh.dnssec) == (k3, SECURE)


class Relay:
    """A forwarder between the validator and knotd, over UDP: it passes answers on as they
    are, or (strip=True) as a resolver that knows nothing of DNSSEC would, without RRSIGs."""

    def __init__(self, upstream_port: int, strip: bool):
        self.upstream, self.strip = upstream_port, strip
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.settimeout(0.2)
        self.port = self.sock.getsockname()[1]
        self.running = True
        self.thread = threading.Thread(target=self.serve, daemon=True)

    def serve(self) -> None:
        while self.running:
            try:
                query, client = self.sock.recvfrom(65535)
            except TimeoutError:
                continue
            answer = dns.query.udp(dns.message.from_wire(query), "127.0.0.1",
                                   port=self.upstream, timeout=2)
            if self.strip:
                for section in (answer.answer, answer.authority):
                    section[:] = [r for r in section if r.rdtype != dns.rdatatype.RRSIG]
            self.sock.sendto(answer.to_wire(), client)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.running = False
        self.thread.join()
        self.sock.close()


@pytest.mark.parametrize("strip, verdict, state", [(False, Verdict.KEY, SECURE),
                                                   (True, Verdict.DENY, BOGUS)])
def test_validating_through_a_forwarder(signer, anchors, strip, verdict, state):
    """oe asks a forwarder, not knotd: the chain still validates end to end, and a forwarder
    that drops the signatures (or an attacker in its place) makes the answer bogus."""
    with Relay(signer.port, strip) as relay:
        config = DnsConfig(nameservers=("127.0.0.1",), port=relay.port)
        source = UnboundSource(["127.0.0.1"], relay.port, read_anchors([anchors]))

        async def run():
            try:
                return await KeyFetcher(config, source).fetch("host.signed.example")
            finally:
                source.close()
        lookup = asyncio.run(run())
    assert (lookup.verdict, lookup.dnssec) == (verdict, state)


def test_an_answer_that_waited_on_a_busy_loop_is_not_a_timeout(signer, anchors):
    """issue 14: with hundreds of negotiations at once the event loop may be busy past a
    query's deadline while libunbound's answer waits in its pipe; the answer is there and
    must be used, not reported as "DNS timeout" (a failure shunt, cleartext for
    private-or-clear)."""
    source = UnboundSource(["127.0.0.1"], signer.port, read_anchors([anchors]))

    async def run():
        try:
            asyncio.get_running_loop().call_soon(time.sleep, 0.5)  # the loop, busy
            return await source.query(dns.name.from_text("1.113.0.203.in-addr.arpa."),
                                      dns.rdatatype.IPSECKEY, 0.3)
        finally:
            source.close()
    answer = asyncio.run(run())
    assert answer.error is None and answer.rdatas and answer.security == SECURE
