"""`oe check` and the same checks in `oe start` (issue 15): one line per problem, with
file:line where there is one, exit 2; nothing is started when a check fails."""

import os
import subprocess
import sys

import pytest
from cryptography.hazmat.primitives.asymmetric import rsa

from oe import hostkey
from oe.cli import main

needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="looks at the host's tables as root")


@pytest.fixture(scope="module")
def key():
    return hostkey.generate(2048)


@pytest.fixture
def confdir(tmp_path, key):
    (tmp_path / "policies").mkdir()
    (tmp_path / "policies" / "private-or-clear").write_text("0.0.0.0/0\n::/0\n")
    (tmp_path / "oe.conf").write_text('[dns]\nnameservers = ["192.0.2.53"]\n')
    hostkey.write(hostkey.hostkey_path(tmp_path), key)
    return tmp_path


@pytest.fixture(autouse=True)
def never_start(monkeypatch):
    """A check that wrongly passed must not start oe in the test's own namespace."""
    from oe import daemon

    def refuse(*args, **kwargs):
        raise AssertionError("oe start went past its checks")
    monkeypatch.setattr(daemon, "start", refuse)


def run(capsys, confdir, *argv):
    code = main(["--confdir", str(confdir), "--rundir", str(confdir / "run"), *argv])
    out, err = capsys.readouterr()
    return code, out, err.splitlines()


@needs_root
def test_a_good_configuration_passes_with_a_short_summary(confdir, capsys):
    code, out, err = run(capsys, confdir, "check")
    assert (code, err) == (0, [])
    assert out == ("ok: oe.conf (default addresses, table 4322, rule 4322), 2 policy entries, "
                   "host key RSA 2048 bits\n")


@needs_root
@pytest.mark.parametrize("command", ["check", "start"])
def test_every_problem_is_one_line_with_its_place(confdir, capsys, command):
    (confdir / "oe.conf").write_text('shunt_lifetime = 0\n[ike]\nproposals = ["bogus"]\n'
                                     '[dns]\nnameservers = ["dns.google"]\n')
    (confdir / "policies" / "private-or-clr").write_text("192.0.2.0/24\n")
    os.chmod(hostkey.hostkey_path(confdir), 0o644)
    code, out, err = run(capsys, confdir, command)
    conf, policies, pem = confdir / "oe.conf", confdir / "policies", confdir / "hostkey.pem"
    assert (code, out) == (2, "")
    assert err[:3] == [
        f"oe: {conf}:1: shunt_lifetime: expected a number > 0",
        f"oe: {conf}:3: [ike] proposals: unknown algorithm 'bogus' in proposal 'bogus'",
        f"oe: {conf}:5: [dns] nameservers: 'dns.google' is not an IP address (nor a "
        f"DNS-over-HTTPS URL): oe must know its nameservers' addresses to exempt them from "
        f"trapping"]
    assert err[3].startswith(f"oe: {policies}/private-or-clr: not a policy group")
    assert err[4:] == [f"oe: {pem}: mode 0644 lets others read the host key (chmod 600 {pem})"]


@needs_root
def test_subnets_no_interface_leads_to_are_refused(confdir, capsys):
    """issue 13: forwarding for clients oe cannot find would be for nobody (docs/gateway.md 2);
    the test's own namespace has no route into the benchmark range."""
    (confdir / "oe.conf").write_text('[gateway]\nsubnets = ["198.18.250.0/24"]\n')
    code, _, err = run(capsys, confdir, "start")
    assert code == 2 and err == [f"oe: {confdir}/oe.conf: [gateway] subnets: no interface has "
                                 f"a route into 198.18.250.0/24 (`ip route` lists them)"]


def test_a_short_host_key_is_refused_as_keygen_refuses_it(confdir, capsys):
    short = rsa.generate_private_key(public_exponent=65537, key_size=1024)
    hostkey.write(hostkey.hostkey_path(confdir), short, force=True)
    code, _, err = run(capsys, confdir, "start")
    assert code == 2 and err == [f"oe: {confdir}/hostkey.pem: RSA 1024 bits is below the "
                                 f"minimum of 2048 (make a new one with `oe keygen --force`)"]


@needs_root
@pytest.mark.parametrize("addresses, message", [
    ('["192.0.2.300"]', "oe.conf:1: addresses: '192.0.2.300' is not an IPv4 or IPv6 address"),
    ('["198.51.100.77"]', "oe.conf: addresses: 198.51.100.77 is not an address of this host"),
])
def test_addresses_must_be_well_formed_and_ours(confdir, capsys, addresses, message):
    """Before: ValueError, and OSError 99 (Cannot assign requested address) from the daemon."""
    (confdir / "oe.conf").write_text(f"addresses = {addresses}\n")
    code, _, err = run(capsys, confdir, "start")
    assert code == 2 and len(err) == 1 and message in err[0], err


@needs_root
def test_missing_cap_net_raw_is_named(confdir):
    """Before: `oe: internal error: PermissionError: [Errno 1] Operation not permitted`."""
    proc = subprocess.run(["setpriv", "--bounding-set=-net_raw", "--inh-caps=-net_raw",
                           sys.executable, "-m", "oe", "--confdir", str(confdir), "--rundir",
                           str(confdir / "run"), "check"], capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": os.getcwd()}, timeout=60)
    assert proc.returncode == 2 and proc.stdout == ""
    assert proc.stderr == "oe: oe start needs CAP_NET_RAW (the raw ESP and %pass sockets)\n"


def test_an_unknown_key_source_is_a_problem_of_oe_conf(confdir, capsys):
    (confdir / "oe.conf").write_text('[dns]\nkeysource = "zonefiles"\n')
    code, _, err = run(capsys, confdir, "start")
    assert code == 2 and err == [f'oe: {confdir}/oe.conf: [dns] keysource = "zonefiles" needs '
                                 f'zonefiles_dir']


@needs_root
@pytest.mark.parametrize("argv, level", [([], "info"), (["-v"], "debug"),
                                         (["--log-level", "error"], "error")])
def test_start_takes_its_log_level_from_the_command_line_over_oe_conf(confdir, capsys,
                                                                       monkeypatch, argv, level):
    import logging

    from oe import daemon, logs

    (confdir / "oe.conf").write_text('log_level = "warning"\n' if argv else "")
    seen = []
    monkeypatch.setattr(daemon, "start", lambda *a, **k: seen.append(
        logging.getLevelName(logging.getLogger().level).lower()) or 0)
    root_level = logging.getLogger().level
    try:
        code, _, err = run(capsys, confdir, "start", *argv)
    finally:
        logging.getLogger().setLevel(root_level)
        logs._levels.update(pinned=None, configured=logging.INFO)
    assert (code, err, seen) == (0, [], [level])


def test_a_log_level_oe_does_not_know_is_an_argument_error(confdir, capsys):
    code, _, err = run(capsys, confdir, "start", "--log-level", "loud")
    assert code == 2 and len(err) == 1 and "invalid choice: 'loud'" in err[0]
