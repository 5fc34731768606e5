"""The `oe` CLI for policy, trace and status: JSON contracts and one-line errors."""

import json
import subprocess
import sys

import pytest

from oe.cli import main


@pytest.fixture
def confdir(tmp_path):
    policies = tmp_path / "policies"
    policies.mkdir()
    (policies / "private-or-clear").write_text("# OE wherever possible\n0.0.0.0/0\n::/0\n")
    (policies / "private").write_text("192.0.2.0/24\n2001:db8:1::/48 tcp 0 22\n")
    (policies / "clear").write_text("192.0.2.53\n")
    (policies / "block").write_text("203.0.113.0/24\n")
    return tmp_path


def run(capsys, *argv):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def test_trace_json_contract(confdir, capsys):
    code, out, err = run(capsys, "--confdir", confdir, "trace", "192.0.2.7", "--src", "198.51.100.1",
                         "--json")
    assert code == 0 and err == ""
    result = json.loads(out)
    assert {k: result[k] for k in ("src", "dst", "group", "action", "match", "origin")} == {
        "src": "198.51.100.1", "dst": "192.0.2.7", "group": "private", "action": "%trap",
        "match": "192.0.2.0/24", "origin": "policies/private:1",
    }
    assert result["failure"] == "%drop"


@pytest.mark.parametrize("argv, group, action, origin", [
    (["192.0.2.53"], "clear", "%pass", "policies/clear:1"),
    (["203.0.113.9"], "block", "%reject", "policies/block:1"),
    (["198.51.100.9"], "private-or-clear", "%trap", "policies/private-or-clear:2"),
    (["2001:db8:1::5", "--proto", "tcp", "--dport", "22"], "private", "%trap", "policies/private:2"),
    (["2001:db8:1::5", "--proto", "6", "--dport", "80"], "private-or-clear", "%trap",
     "policies/private-or-clear:3"),
])
def test_trace_overlapping_groups(confdir, capsys, argv, group, action, origin):
    src = ["--src", "2001:db8::2"] if ":" in argv[0] else ["--src", "192.0.2.2"]
    code, out, _ = run(capsys, "--confdir", confdir, "trace", *argv, *src, "--json")
    result = json.loads(out)
    assert code == 0
    assert (result["group"], result["action"], result["origin"]) == (group, action, origin)


def test_trace_outside_every_group_is_not_steered(tmp_path, capsys):
    code, out, _ = run(capsys, "--confdir", tmp_path, "trace", "192.0.2.7", "--src", "192.0.2.2",
                       "--json")
    result = json.loads(out)
    assert code == 0
    assert result["group"] is None and result["match"] is None and result["origin"] is None
    assert result["action"] == "%pass" and "not steered into oe" in result["why"]


def test_trace_text_says_why(confdir, capsys):
    code, out, _ = run(capsys, "--confdir", confdir, "trace", "192.0.2.7", "--src", "192.0.2.2")
    assert code == 0
    assert "group   private" in out and "on failure %drop" in out
    assert "less specific: policies/private-or-clear:2" in out


def test_policy_json_lists_group_selector_origin_priority(confdir, capsys):
    code, out, _ = run(capsys, "--confdir", confdir, "policy", "--json")
    rows = json.loads(out)
    assert code == 0
    assert [(r["group"], r["text"], r["origin"], r["prio"]) for r in rows] == [
        ("block", "203.0.113.0/24", "policies/block:1", "0,24"),
        ("clear", "192.0.2.53/32", "policies/clear:1", "0,32"),
        ("private", "192.0.2.0/24", "policies/private:1", "0,24"),
        ("private", "2001:db8:1::/48 tcp 0 22", "policies/private:2", "0,48+proto+dport"),
        ("private-or-clear", "0.0.0.0/0", "policies/private-or-clear:2", "0,0"),
        ("private-or-clear", "::/0", "policies/private-or-clear:3", "0,0"),
    ]
    assert rows[2]["priority"] == 24 << 8


def test_status_prints_klips_eroute_lines(confdir, capsys):
    code, out, _ = run(capsys, "--confdir", confdir, "--rundir", confdir / "run", "status")
    assert code == 0
    lines = out.splitlines()
    assert lines[0] == "no daemon running: prospective table from policy"
    assert "0          0.0.0.0/0          -> 192.0.2.0/24       => %trap" in lines
    assert "0          0.0.0.0/0          -> 192.0.2.53/32      => %pass" in lines
    assert "0          0.0.0.0/0          -> 203.0.113.0/24     => %reject" in lines
    assert "0          ::/0               -> 2001:db8:1::/48:22 => %trap:6" in lines
    code, out, _ = run(capsys, "--confdir", confdir, "--rundir", confdir / "run", "status",
                       "--json")
    status = json.loads(out)
    assert set(status) == {"daemon", "eroutes", "sas", "shunts"} and status["daemon"] is False
    rejected = [e for e in status["eroutes"] if e["said"] == "%reject"]
    assert [(e["dst"], e["origin"], e["packets"]) for e in rejected] == [
        ("203.0.113.0/24", "policies/block:1", 0)]


def test_status_without_daemon_or_policy_says_both(tmp_path, capsys):
    """Issue 15, 7: no daemon and no configuration used to print nothing at all."""
    code, out, _ = run(capsys, "--confdir", tmp_path, "--rundir", tmp_path / "run", "status")
    assert code == 0
    assert out.splitlines() == ["no daemon running: prospective table from policy",
                                f"no policy: {tmp_path}/policies holds no entries"]


def test_policy_warnings_go_to_stderr(tmp_path, capsys):
    (tmp_path / "policies").mkdir()
    (tmp_path / "policies" / "private").write_text("192.0.2.9/24\n")
    code, out, err = run(capsys, "--confdir", tmp_path, "policy")
    assert code == 0 and "192.0.2.0/24" in out
    assert err.strip() == (f"oe: warning: {tmp_path}/policies/private:1: host bits set in "
                           "'192.0.2.9/24', using 192.0.2.0/24")


@pytest.mark.parametrize("argv, message", [
    (["trace", "not-an-address"], "DST: 'not-an-address' is not an IPv4 or IPv6 address"),
    (["trace", "192.0.2.1", "--src", "2001:db8::1"], "not the same address family"),
    (["trace", "192.0.2.1", "--proto", "bogus"], "bad protocol 'bogus'"),
    (["trace", "192.0.2.1", "--dport", "70000"], "bad port '70000'"),
    (["trace"], "the following arguments are required: DST"),
    (["nosuchcommand"], "invalid choice: 'nosuchcommand'"),
    (["policy"], "policies/private:1: bad address or CIDR '192.0.2.0/40'"),
    # issue 15: a port without tcp, udp or sctp is refused, as policy files refuse it
    (["trace", "192.0.2.1", "--dport", "22"], "--sport and --dport need --proto tcp, udp or sctp"),
    (["trace", "192.0.2.1", "--proto", "icmp", "--dport", "22"], "need --proto tcp, udp or sctp"),
])
def test_errors_are_one_line_with_status_2(tmp_path, capsys, argv, message):
    (tmp_path / "policies").mkdir()
    (tmp_path / "policies" / "private").write_text("192.0.2.0/40\n")
    if argv[0] == "trace":
        (tmp_path / "policies" / "private").write_text("192.0.2.0/24\n")
    code, out, err = run(capsys, "--confdir", tmp_path, *argv)
    assert code == 2 and out == ""
    assert err.count("\n") == 1 and err.startswith("oe: ") and message in err


def test_argument_errors_have_one_prefix_and_a_hint(tmp_path, capsys):
    """Issue 15: no doubled "oe: oe:", and a global option after the command says where it goes."""
    code, _, err = run(capsys, "status", "--confdir", tmp_path)
    assert code == 2 and err.count("\n") == 1 and not err.startswith("oe: oe:")
    assert "unrecognized arguments: --confdir" in err and "before the command" in err


def test_version(capsys):
    from importlib.metadata import version
    code, out, _ = run(capsys, "--version")
    assert code == 0 and out.strip() == f"oe {version('oe')}"


def test_python_dash_m_oe_runs_without_traceback(tmp_path):
    (tmp_path / "policies").mkdir()
    (tmp_path / "policies" / "block").write_text("example.org\n")
    proc = subprocess.run([sys.executable, "-m", "oe", "--confdir", str(tmp_path), "status"],
                          capture_output=True, text=True)
    assert proc.returncode == 2
    assert proc.stderr == (f"oe: {tmp_path}/policies/block:1: host name 'example.org' is not "
                           "allowed: write an address or CIDR (names are not resolved when "
                           "policy loads)\n")


def test_status_brief_without_daemon_says_so(tmp_path, capsys):
    """`oe status --brief` (one line per peer, issue 15): none without a daemon, and it says so."""
    code, out, _ = run(capsys, "--confdir", tmp_path, "--rundir", tmp_path / "run", "status",
                       "--brief")
    assert code == 0
    assert out.splitlines() == ["no daemon running: no peers (oe start)"]


# ------------------------------------------------ oe verify --client (docs/gateway.md 6)

GW = "192.0.2.10"
CLIENT = "198.51.100.7"


@pytest.fixture(scope="module")
def gateway_blob(tmp_path_factory):
    """A gateway's confdir: its host key and [gateway] subnets; the key's RFC 3110 blob."""
    from oe import hostkey
    confdir = tmp_path_factory.mktemp("gateway")
    key = hostkey.keygen(hostkey.hostkey_path(confdir), 2048)
    (confdir / "oe.conf").write_text('[gateway]\nsubnets = ["198.51.100.0/24"]\n')
    return confdir, hostkey.public_blob(key)


def client_lookup(client, blob, gateway=GW, dnssec="secure", allow_unsigned=False):
    """What the fetcher makes of one IPSECKEY at the client's reverse name."""
    import base64

    import dns.rdata
    from oe.dnskeys.choice import Target, choose
    text = f"10 1 2 {gateway} {base64.b64encode(blob).decode()}"
    rdata = dns.rdata.from_text("IN", "IPSECKEY", text)
    return choose(Target.parse(client), {"IPSECKEY": [rdata]}, min_key_bits=2048,
                  allow_unsigned_delegation=allow_unsigned, dnssec=dnssec)


@pytest.fixture
def stub_fetcher(monkeypatch):
    """oe verify's fetcher answers from a dict: address -> KeyLookup."""
    from oe import cli
    answers = {}

    class Stub:
        async def fetch(self, target, refresh=False):
            return answers[str(target)]

    monkeypatch.setattr(cli.KeyFetcher, "from_config", classmethod(lambda *a, **k: Stub()))
    return answers


def verify_client(capsys, confdir, *clients, json_out=False):
    argv = ["--confdir", confdir, "verify", "--address", GW]
    for client in clients:
        argv += ["--client", client]
    return run(capsys, *argv, *(["--json"] if json_out else []))


def test_verify_client_ok_names_the_gateway_key_and_dnssec_state(gateway_blob, stub_fetcher,
                                                                 capsys):
    from oe.dnskeys import records
    confdir, blob = gateway_blob
    stub_fetcher[CLIENT] = client_lookup(CLIENT, blob)
    code, out, err = verify_client(capsys, confdir, CLIENT)
    assert (code, err) == (0, "")
    assert out == (f"ok: 7.100.51.198.in-addr.arpa. delegates to {GW} with hostkey.pem's key "
                   f"{records.key_id(blob)} (dnssec secure)\n")
    # accepted only through allow_unsigned_delegation: said, with the fix
    stub_fetcher[CLIENT] = client_lookup(CLIENT, blob, dnssec="insecure", allow_unsigned=True)
    code, out, err = verify_client(capsys, confdir, CLIENT)
    assert code == 0 and "(dnssec insecure)\nnote: 7.100.51.198.in-addr.arpa. is not " \
        "DNSSEC-secure from the configured trust anchors: peers accept its delegation only " \
        "with allow_unsigned_delegation = true (RFC 4322 3.2.4.1); sign the zone" in out


def test_verify_client_problems_each_on_stderr_with_exit_2(gateway_blob, stub_fetcher, capsys):
    from cryptography.hazmat.primitives.asymmetric import rsa

    from oe import hostkey
    from oe.dnskeys.choice import Target, not_capable
    confdir, blob = gateway_blob
    other = hostkey.public_blob(rsa.generate_private_key(public_exponent=65537, key_size=2048))
    stub_fetcher.update({
        "198.51.100.1": client_lookup("198.51.100.1", blob, gateway="192.0.2.99"),
        "198.51.100.2": client_lookup("198.51.100.2", other),
        "198.51.100.3": not_capable(Target.parse("198.51.100.3"), "no IPSECKEY record"),
        "198.51.100.4": client_lookup("198.51.100.4", blob, dnssec="insecure"),
        "198.51.100.5": not_capable(Target.parse("198.51.100.5"), "DNS timeout: no answer"),
        "203.0.113.5": client_lookup("203.0.113.5", blob),
    })
    code, out, err = verify_client(capsys, confdir, *stub_fetcher)
    assert (code, out) == (2, "")  # "ok" only for a client without a problem
    lines = err.splitlines()
    assert lines[:4] == [
        "oe: record for our client 198.51.100.1 delegates to 192.0.2.99, not us",
        "oe: record for our client 198.51.100.2 has wrong key",
        "oe: no record for our client 198.51.100.3 delegates us: no IPSECKEY record",
        "oe: no record for our client 198.51.100.4 delegates us: IPSECKEY at "
        "4.100.51.198.in-addr.arpa. names gateway 192.0.2.10, not 198.51.100.4 itself, and the "
        "answer is not DNSSEC-validated (RFC 4322 3.2.4.1; allow_unsigned_delegation = true "
        "accepts it)"]
    assert lines[4:] == [
        "oe: cannot verify 198.51.100.5: DNS timeout: no answer",
        "oe: 203.0.113.5 is not in [gateway] subnets: oe will not act for it"]


def test_verify_client_json_adds_client_and_in_subnets(gateway_blob, stub_fetcher, capsys):
    confdir, blob = gateway_blob
    stub_fetcher[CLIENT] = client_lookup(CLIENT, blob)
    stub_fetcher["203.0.113.5"] = client_lookup("203.0.113.5", blob, gateway="192.0.2.99")
    code, out, err = verify_client(capsys, confdir, CLIENT, "203.0.113.5", json_out=True)
    assert code == 2
    results = json.loads(out)
    assert [(r["client"], r["in_subnets"], r["gateway"], r["dnssec"]) for r in results] == [
        (CLIENT, True, GW, "secure"), ("203.0.113.5", False, "192.0.2.99", "secure")]
    assert results[0]["problems"] == [] and results[0]["key_id"] == results[0]["hostkey_key_id"]
    assert results[1]["problems"] == [
        "record for our client 203.0.113.5 delegates to 192.0.2.99, not us",
        "203.0.113.5 is not in [gateway] subnets: oe will not act for it"]
