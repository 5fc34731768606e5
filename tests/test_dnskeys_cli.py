"""`oe keygen`, `oe showhostkey`, `oe dnskey`, `oe verify`, and the round trip through knotd:
a key made by `oe keygen`, published with `oe showhostkey` in a zone knotd serves, comes back
from `oe dnskey` with the same key id, for every record kind in IPv4 and IPv6."""

import json
import os
import stat
import subprocess
import sys

import pytest
from cryptography.hazmat.primitives import serialization

from knot import ZONEFILES, Knotd, committed_zones
from oe.cli import main
from oe.dnskeys import records

SOA = "$TTL 300\n@ SOA ns.test.example. hostmaster.test.example. 1 3600 600 86400 300\n" \
      "@ NS ns.test.example.\n"

# (name, showhostkey options, target, zone): one host each, its key made at test time.
PUBLISHED = [
    ("ipseckey4", ["--ipseckey", "--address", "198.51.100.1"], "198.51.100.1",
     "100.51.198.in-addr.arpa"),
    ("ipseckey4-gw", ["--ipseckey", "--address", "198.51.100.4", "--gateway", "198.51.100.4",
                      "--precedence", "3"], "198.51.100.4", "100.51.198.in-addr.arpa"),
    ("txt4", ["--txt", "--address", "198.51.100.2"], "198.51.100.2", "100.51.198.in-addr.arpa"),
    ("key4", ["--key", "--address", "198.51.100.3"], "198.51.100.3", "100.51.198.in-addr.arpa"),
    ("ipseckey6", ["--ipseckey", "--address", "2001:db8:1::1", "--gateway", "2001:db8:1::1"],
     "2001:db8:1::1", "1.0.0.0.8.b.d.0.1.0.0.2.ip6.arpa"),
    ("txt6", ["--txt", "--address", "2001:db8:1::2"], "2001:db8:1::2",
     "1.0.0.0.8.b.d.0.1.0.0.2.ip6.arpa"),
    ("key6", ["--key", "--address", "2001:db8:1::3"], "2001:db8:1::3",
     "1.0.0.0.8.b.d.0.1.0.0.2.ip6.arpa"),
    ("ipseckey-fqdn", ["--ipseckey", "--owner", "rt.roundtrip.example", "--gateway",
                       "@rt.roundtrip.example"], "rt.roundtrip.example", "roundtrip.example"),
    ("txt-fqdn", ["--txt", "--owner", "tx.roundtrip.example"], "@tx.roundtrip.example",
     "roundtrip.example"),
]


def oe(*argv) -> subprocess.CompletedProcess:
    """The real command, as a user runs it."""
    return subprocess.run([sys.executable, "-m", "oe", *map(str, argv)], capture_output=True,
                          text=True, timeout=60)


def run(capsys, *argv):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def write_conf(confdir, port):
    confdir.mkdir(parents=True, exist_ok=True)
    (confdir / "oe.conf").write_text(f'[dns]\nnameservers = ["127.0.0.1"]\nport = {port}\n'
                                     'dnssec = "off"\n')


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """Keys from `oe keygen`, zones from `oe showhostkey`, all served by knotd."""
    base = tmp_path_factory.mktemp("published")
    zones = committed_zones()
    key_ids = {}
    for name, options, _target, zone in PUBLISHED:
        confdir = base / name
        bits = [] if name == "ipseckey4" else ["--bits", "2048"]  # one at the 3072 default
        made = oe("--confdir", confdir, "keygen", "--json", *bits)
        assert made.returncode == 0, made.stderr
        key_ids[name] = json.loads(made.stdout)["key_id"]
        shown = oe("--confdir", confdir, "showhostkey", *options)
        assert shown.returncode == 0, shown.stderr
        zones[zone] = zones.get(zone, SOA) + shown.stdout
    with Knotd(base / "knot", zones) as knot:
        for name, *_ in PUBLISHED:
            write_conf(base / name, knot.port)
        yield base, knot, key_ids


@pytest.mark.parametrize("name, options, target, zone", PUBLISHED, ids=[p[0] for p in PUBLISHED])
def test_keygen_showhostkey_knotd_dnskey_round_trip(world, name, options, target, zone):
    base, _knot, key_ids = world
    fetched = oe("--confdir", base / name, "dnskey", target, "--json")
    assert fetched.returncode == 0, fetched.stderr
    result = json.loads(fetched.stdout)
    kind = options[0][2:].upper()
    assert result["source"] == kind
    assert result["key_id"] == key_ids[name]
    assert result["error"] is None
    assert result["bits"] == (3072 if name == "ipseckey4" else 2048)
    expected_gateway = target if target[0].isdigit() or ":" in target else \
        "@" + target.lstrip("@")
    assert result["gateway"] == expected_gateway


@pytest.mark.parametrize("name, target", [(p[0], p[2]) for p in PUBLISHED[:7]])
def test_verify_finds_our_own_key(world, capsys, name, target):
    base, _knot, key_ids = world
    code, out, err = run(capsys, "--confdir", base / name, "verify", "--address", target)
    assert (code, err) == (0, "")
    assert out.startswith("ok: ") and key_ids[name] in out
    assert out.rstrip().endswith("(dnssec off)")   # issue 12: what was validated, said


def test_verify_says_which_key_dns_has_when_ours_changed(world, capsys, tmp_path):
    base, knot, key_ids = world
    confdir = tmp_path / "rolled"
    write_conf(confdir, knot.port)
    run(capsys, "--confdir", confdir, "keygen", "--bits", "2048")
    code, out, err = run(capsys, "--confdir", confdir, "verify", "--address", "198.51.100.2")
    assert code == 2 and out == ""
    assert err.startswith(f"oe: TXT at 2.100.51.198.in-addr.arpa. publishes key id "
                          f"{key_ids['txt4']} (SHA256:")
    assert "but hostkey.pem has key id" in err and err.count("\n") == 1


def test_verify_when_dns_has_no_record_or_a_broken_one(world, capsys):
    base, knot, _ = world
    confdir = base / "key4"
    code, out, err = run(capsys, "--confdir", confdir, "verify", "--address", "198.51.100.77")
    assert code == 2
    assert err == ("oe: DNS publishes no key for 198.51.100.77: no IPSECKEY, TXT X-IPsec-Server "
                   "or KEY record at 77.100.51.198.in-addr.arpa. (the name does not exist)\n")
    code, out, err = run(capsys, "--confdir", confdir, "verify", "--address", "203.0.113.12")
    assert err == ("oe: peers would refuse our record: KEY at 12.113.0.203.in-addr.arpa.: "
                   "KEY protocol 3 is not IPsec (4)\n")
    code, out, err = run(capsys, "--confdir", confdir, "verify", "--address", "198.51.100.2",
                         "--json")
    assert code == 2 and json.loads(out)["problems"] == [err[len("oe: "):].rstrip("\n")]


def test_verify_without_a_host_key(tmp_path, capsys):
    code, out, err = run(capsys, "--confdir", tmp_path, "verify", "--address", "192.0.2.7")
    assert code == 2
    assert err == (f"oe: no host key: {tmp_path}/hostkey.pem does not exist (make one with "
                   f"`oe keygen`)\n")


# ---------------------------------------------------------------- oe dnskey


@pytest.fixture
def zoneconf(tmp_path):
    (tmp_path / "oe.conf").write_text(
        f'[dns]\nkeysource = "zonefiles"\nzonefiles_dir = "{ZONEFILES}"\n')
    return tmp_path


def test_dnskey_text_output_says_why(zoneconf, capsys):
    code, out, err = run(capsys, "--confdir", zoneconf, "dnskey", "203.0.113.5")
    assert (code, err) == (0, "")
    lines = dict(line.split(None, 1) for line in out.splitlines())
    assert lines["name"] == "5.113.0.203.in-addr.arpa."
    assert lines["source"].startswith("IPSECKEY  10 1 2 203.0.113.5 AwEAAbeg1")
    assert lines["why"] == ("lowest precedence (10) of 3 IPSECKEY records; IPSECKEY is "
                            "preferred over TXT")
    assert lines["dnssec"] == "off"          # zone files are not validated (issue 12)


def test_dnskey_without_usable_key_exits_2_with_the_reason(zoneconf, capsys):
    code, out, err = run(capsys, "--confdir", zoneconf, "dnskey", "203.0.113.13")
    assert (code, out) == (2, "")
    assert err == ("oe: deny: TXT at 13.113.0.203.in-addr.arpa.: X-IPsec-Server priority "
                   "missing ')'\n")
    code, out, err = run(capsys, "--confdir", zoneconf, "dnskey", "203.0.113.9", "--json")
    assert code == 2
    result = json.loads(out)
    assert (result["source"], result["key_id"], result["verdict"]) == (None, None, "not-capable")
    assert result["error"] == ("no IPSECKEY, TXT X-IPsec-Server or KEY record at "
                               "9.113.0.203.in-addr.arpa.")
    assert err == f"oe: not-capable: {result['error']}\n"


def test_dnskey_bad_target_and_bad_keysource(zoneconf, capsys, tmp_path):
    code, _, err = run(capsys, "--confdir", zoneconf, "dnskey", "bad..name")
    assert code == 2 and err.startswith("oe: 'bad..name' is neither an address nor a domain name")
    (tmp_path / "oe.conf").write_text('[dns]\nkeysource = "ldap"\n')
    code, _, err = run(capsys, "--confdir", tmp_path, "dnskey", "192.0.2.1")
    assert (code, err) == (2, "oe: [dns] keysource = 'ldap': expected one of 'dns', "
                              "'zonefiles'\n")


# ---------------------------------------------------------------- oe keygen


def test_keygen_writes_pkcs8_mode_0600_whatever_the_umask(tmp_path, capsys):
    old = os.umask(0)
    try:
        code, out, err = run(capsys, "--confdir", tmp_path / "etc", "keygen", "--json")
    finally:
        os.umask(old)
    assert (code, err) == (0, "")
    result = json.loads(out)
    path = tmp_path / "etc" / "hostkey.pem"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    pem = path.read_bytes()
    assert pem.startswith(b"-----BEGIN PRIVATE KEY-----\n")  # PKCS#8, not PKCS#1
    key = serialization.load_pem_private_key(pem, password=None)
    assert (key.key_size, key.public_key().public_numbers().e) == (3072, 65537)
    assert result["bits"] == 3072 and len(result["key_id"]) == 9
    blob = records.encode_rsa_blob(65537, key.public_key().public_numbers().n)
    assert result["key_id"] == records.key_id(blob)
    assert result["sha256"] == records.fingerprint(blob)
    assert list((tmp_path / "etc").iterdir()) == [path]  # no temporary file left behind


def test_keygen_never_overwrites_without_force(tmp_path, capsys):
    code, out, _ = run(capsys, "--confdir", tmp_path, "keygen", "--bits", "2048")
    assert code == 0
    assert out.startswith(f"wrote {tmp_path}/hostkey.pem: RSA 2048 bits, key id AwEAA")
    before = (tmp_path / "hostkey.pem").read_bytes()
    code, out, err = run(capsys, "--confdir", tmp_path, "keygen", "--bits", "2048")
    assert (code, out) == (2, "")
    assert err == f"oe: {tmp_path}/hostkey.pem exists; use --force to replace it\n"
    assert (tmp_path / "hostkey.pem").read_bytes() == before
    code, _, _ = run(capsys, "--confdir", tmp_path, "keygen", "--bits", "2048", "--force")
    assert code == 0 and (tmp_path / "hostkey.pem").read_bytes() != before
    assert stat.S_IMODE((tmp_path / "hostkey.pem").stat().st_mode) == 0o600


def test_keygen_refuses_short_keys(tmp_path, capsys):
    code, _, err = run(capsys, "--confdir", tmp_path, "keygen", "--bits", "1024")
    assert (code, err) == (2, "oe: 1024 bits is below the minimum of 2048\n")
    assert not (tmp_path / "hostkey.pem").exists()


# ---------------------------------------------------------------- oe showhostkey


@pytest.fixture(scope="module")
def keyed(tmp_path_factory):
    confdir = tmp_path_factory.mktemp("keyed")
    assert main(["--confdir", str(confdir), "keygen", "--bits", "2048"]) == 0
    return confdir


def test_showhostkey_lines(keyed, capsys):
    code, out, _ = run(capsys, "--confdir", keyed, "showhostkey", "--ipseckey", "--address",
                       "192.0.2.7")
    comment, line = out.splitlines()
    assert comment.startswith("; RSA 2048 bits, key id AwEAA") and "SHA256:" in comment
    assert line.startswith("7.2.0.192.in-addr.arpa.\tIN\tIPSECKEY\t10 0 2 . AwEAA")
    _, out, _ = run(capsys, "--confdir", keyed, "showhostkey", "--txt", "--address",
                    "2001:db8::7", "--precedence", "20")
    line = out.splitlines()[1]
    assert line.startswith("7.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.8.b.d.0.1.0.0.2."
                           "ip6.arpa.\tIN\tTXT\t\"X-IPsec-Server(20)=2001:db8::7\" \" AwEAA")
    _, out, _ = run(capsys, "--confdir", keyed, "showhostkey", "--key", "--owner",
                    "h.example.com")
    assert out.splitlines()[1].startswith("h.example.com.\tIN\tKEY\t16896 4 1 AwEAA")
    _, out, _ = run(capsys, "--confdir", keyed, "showhostkey", "--ipseckey", "--owner",
                    "h.example.com", "--gateway", "@gw.example.com")
    assert "\tIPSECKEY\t10 3 2 gw.example.com. AwEAA" in out


@pytest.mark.parametrize("argv, reason", [
    (["--key", "--gateway", "192.0.2.1", "--owner", "h.example"],
     "showhostkey --key: a KEY record has no gateway and no precedence"),
    (["--txt", "--gateway", "0.0.0.0", "--owner", "h.example"],
     "showhostkey --txt: gateway address must not be 0.0.0.0 or 0::0"),
    (["--ipseckey", "--precedence", "300", "--owner", "h.example"],
     "showhostkey --ipseckey: IPSECKEY precedence 300 is not in 0-255 (RFC 4025 2.2)"),
    (["--ipseckey", "--address", "not-an-address"],
     "--address: 'not-an-address' is not an IPv4 or IPv6 address"),
    (["--ipseckey", "--txt"], "showhostkey: argument --txt: not allowed with argument "
                              "--ipseckey"),
])
def test_showhostkey_errors_are_one_line(keyed, capsys, argv, reason):
    code, out, err = run(capsys, "--confdir", keyed, "showhostkey", *argv)
    assert (code, out, err) == (2, "", f"oe: {reason}\n")
