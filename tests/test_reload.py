"""`oe reload` applies oe.conf (issue 15, 5): what can change at runtime takes effect, what
needs a restart keeps its old value and is named in the reply, a bad file changes nothing, and
the host key is read again (key rollover, README). In process, without netlink or sockets."""

import asyncio
import logging
from types import SimpleNamespace

import pytest

from oe import daemon as oedaemon, hostkey
from oe.errors import OeError
from oe.ike.sa import IkeConfig

ME = "192.0.2.10"


class Datapath:
    def __getattr__(self, name):
        return lambda *args, **kwargs: None


@pytest.fixture(scope="module")
def keys():
    return hostkey.generate(2048), hostkey.generate(2048)


@pytest.fixture
def confdir(tmp_path, keys):
    (tmp_path / "policies").mkdir()
    (tmp_path / "policies" / "private-or-clear").write_text("0.0.0.0/0\n")
    (tmp_path / "oe.conf").write_text('[dns]\nnameservers = ["192.0.2.53"]\n')
    hostkey.write(tmp_path / "hostkey.pem", keys[0])
    return tmp_path


def reload(confdir, text: str | None = None, key=None, daemon=None):
    """Start a daemon stand-in on the files as they are, change them, reload: (daemon, reply)."""
    async def run():
        d = daemon or oedaemon.Daemon(confdir, confdir / "run")
        d.loop = asyncio.get_running_loop()
        d.datapath = Datapath()
        d.sides[4] = oedaemon._IkeSide(4, SimpleNamespace(
            config=IkeConfig(local_addrs=frozenset({ME}), private_key=d.key, **d._ike_terms())), None)

        async def nothing(*args):
            return None
        d._in_netlink = nothing  # no nftables, routes or rp_filter on the test's host
        d._install_routes = nothing
        if text is not None:
            (confdir / "oe.conf").write_text(text)
        if key is not None:
            hostkey.write(confdir / "hostkey.pem", key, force=True)
        return d, await d.reload()
    return asyncio.run(run())


def test_runtime_settings_apply_and_restart_settings_are_named(confdir):
    d, reply = reload(confdir, 'shunt_lifetime = 60\ntun_name = "oe9"\nroute_table = 100\n'
                               '[ike]\nproposals = ["aes256gcm16-prfsha384-ecp256"]\n'
                               '[limits]\nshunts = 7\n[dns]\nnameservers = ["192.0.2.54"]\n')
    assert reply == ("reloaded: 1 policy entries; applied: shunt_lifetime, [ike] proposals, "
                     "[dns] nameservers, [limits] shunts; kept: tun_name, route_table changes "
                     "need a restart")
    assert d.opportunist.limits.shunt_lifetime == 60 and d.opportunist.limits.max_shunts == 7
    assert d.sides[4].engine.config.ike_proposals == ("aes256gcm16-prfsha384-ecp256",)
    assert d.fetcher.nameservers() == ["192.0.2.54"]
    assert (d.config.tun_name, d.config.route_table) == ("oe0", 4322)   # not half applied


def test_forced_udp_encapsulation_applies_to_new_ike_sas(confdir):
    """[esp] encapsulation = "udp" (README: Tunnel throughput) reaches the engines on reload."""
    d, reply = reload(confdir, '[esp]\nencapsulation = "udp"\n[dns]\nnameservers = ["192.0.2.53"]\n')
    assert reply == "reloaded: 1 policy entries; applied: [esp] encapsulation"
    assert d.sides[4].engine.config.force_encap


def test_one_restart_setting_is_named_alone(confdir):
    _, reply = reload(confdir, 'tun_name = "oe9"\n[dns]\nnameservers = ["192.0.2.53"]\n')
    assert reply == "reloaded: 1 policy entries; kept: tun_name changes need a restart"


def test_the_host_key_is_read_again(confdir, keys):
    """Key rollover: the new key signs new IKE_AUTHs after `oe reload`."""
    d, _ = reload(confdir, key=keys[1])
    assert d.key.private_numbers() == keys[1].private_numbers()
    assert d.sides[4].engine.config.private_key is d.key


def test_a_bad_file_changes_nothing(confdir):
    with pytest.raises(OeError) as info:
        reload(confdir, 'shunt_lifetime = 60\n[ike]\nproposals = ["bogus"]\n')
    assert "[ike] proposals: unknown algorithm 'bogus'" in str(info.value)


def test_the_log_level_applies(confdir):
    root = logging.getLogger()
    before = root.level
    try:
        reload(confdir, 'log_level = "debug"\n[dns]\nnameservers = ["192.0.2.53"]\n')
        assert root.level == logging.DEBUG
    finally:
        root.setLevel(before)


def test_sighup_logs_what_the_reload_did_or_why_it_was_refused(confdir, caplog):
    d, _ = reload(confdir)
    caplog.set_level(logging.INFO, logger="oe")

    async def hup(text):
        d.loop = asyncio.get_running_loop()
        (confdir / "oe.conf").write_text(text)
        await d._reload_logged()
    asyncio.run(hup('shunt_lifetime = 30\n[dns]\nnameservers = ["192.0.2.53"]\n'))
    asyncio.run(hup('shunt_lifetime = -1\n'))
    assert [r.getMessage() for r in caplog.records] == [
        "reloaded: 1 policy entries; applied: shunt_lifetime",
        f"reload refused: {confdir}/oe.conf:1: shunt_lifetime: expected a number >= 0, got -1.0"]
