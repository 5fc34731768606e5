"""oe.conf: defaults, typed values, and one-line errors naming the key."""

import dataclasses
import tomllib

import pytest

from oe import config
from oe.config import Config, ConfigError


def test_missing_file_means_defaults(tmp_path):
    assert config.load(tmp_path) == Config()
    assert Config().dns.query_timeout == 1.0 and Config().dns.total_timeout == 3.0
    assert Config().shunt_lifetime == 900.0 and Config().tun_name == "oe0"


def test_values_are_read_and_converted(tmp_path):
    (tmp_path / "oe.conf").write_text(
        'tun_name = "oe7"\nshunt_lifetime = 60\n'
        '[dns]\nnameservers = ["192.0.2.53", "2001:db8::53"]\nquery_timeout = 0.5\n'
    )
    conf = config.load(tmp_path)
    assert conf.tun_name == "oe7" and conf.shunt_lifetime == 60.0
    assert conf.dns.nameservers == ("192.0.2.53", "2001:db8::53")
    assert conf.dns.query_timeout == 0.5 and conf.dns.total_timeout == 3.0


@pytest.mark.parametrize("text, message", [
    ("tun_nme = 'x'", "oe.conf: tun_nme: unknown key"),
    ("[dns]\nquery_timeout = 'soon'", "oe.conf: [dns] query_timeout: expected a number, got 'soon'"),
    ("[dns]\nnameservers = '192.0.2.53'", "[dns] nameservers: expected a list of strings"),
    ("[dns]\nmin_key_bits = 2048.5", "[dns] min_key_bits: expected an integer"),
    ("[dns]\nallow_unsigned_delegation = 1", "expected true or false"),
    ("dns = 3", "oe.conf: dns: expected a table [dns]"),
    ("[limits]\nholds = -1", "oe.conf: [limits] holds: expected a number >= 0, got -1"),
    # issue 15: accepted before, silently
    ("shunt_lifetime = -5", "oe.conf: shunt_lifetime: expected a number >= 0, got -5.0"),
    ("[ike]\nesp_proposals = []", "oe.conf: [ike] esp_proposals: expected at least one"),
    ("[ike]\nproposals = []", "oe.conf: [ike] proposals: expected at least one"),
    ("[dns\n", "oe.conf: "),
    # issue 15, 3: a reserved table is the host's own (254 main: oe would delete its default
    # route), and rule priority 0 is the kernel's local rule's.
    ("route_table = 0", "oe.conf: route_table: 0 is reserved (unspec)"),
    ("route_table = 253", "oe.conf: route_table: 253 is reserved (default)"),
    ("route_table = 254", "oe.conf: route_table: 254 is reserved (main)"),
    ("route_table = 255", "oe.conf: route_table: 255 is reserved (local)"),
    ("route_table = 4294967296", "oe.conf: route_table: expected at most 4294967295"),
    ("rule_priority = 0", "oe.conf: rule_priority: 0 is reserved (the local table's rule)"),
    ("rule_priority = 4294967296", "oe.conf: rule_priority: expected at most 4294967295"),
    # issue 15: each of these was a traceback at `oe start` (or in oe.log with --daemon)
    ('[dns]\nnameservers = ["dns.google"]', "[dns] nameservers: 'dns.google' is not an IP "
                                            "address"),
    ('[ike]\nproposals = ["bogus"]', "[ike] proposals: unknown algorithm 'bogus'"),
    ('[ike]\nesp_proposals = ["aes128gcm16-bogus"]', "[ike] esp_proposals: unknown algorithm"),
    ('addresses = ["192.0.2.300"]', "addresses: '192.0.2.300' is not an IPv4 or IPv6 address"),
    ('addresses = ["127.0.0.1"]', "addresses: 127.0.0.1 cannot carry IKE"),
    ('addresses = ["192.0.2.1", "192.0.2.1"]', "addresses: 192.0.2.1 is listed twice"),
    ("addresses = [%s]" % ", ".join(f'"198.18.{i // 256}.{i % 256}"' for i in range(4097)),
     "addresses: 4097 addresses, at most 4096"),
    ('tun_name = "a/b"', "tun_name: 'a/b' is no interface name"),
    ('tun_name = "a-name-too-long-x"', "is no interface name"),
    ("bypass_mark = 0", "bypass_mark: expected 1 to 4294967295"),
    ("shunt_lifetime = 0", "shunt_lifetime: expected a number > 0"),
    ("[limits]\nholds = 0", "[limits] holds: expected a number > 0"),
    ("[ike]\nrekey_margin = 3600", "[ike] rekey_margin: 3600 s is not shorter than sa_lifetime"),
    ("[ike]\nfragment_size = 575", "[ike] fragment_size: 575 is below 576"),
    ("[dns]\nport = 70000", "[dns] port: expected 1 to 65535"),
    ("[dns]\ntotal_timeout = 0.5", "[dns] total_timeout: 0.5 s is shorter than one query"),
    ('log_level = "loud"', "log_level: 'loud': expected one of debug, info, warning, error"),
    ('[esp]\nencapsulation = "tcp"', "[esp] encapsulation: 'tcp': expected one of auto, udp"),
    # issue 13: the clients behind this gateway
    ('[gateway]\nsubnets = ["198.51.100.1/24"]', "[gateway] subnets: '198.51.100.1/24' has host "
                                                 "bits set"),
    ('[gateway]\nsubnets = ["a.b.c.d/8"]', "[gateway] subnets: 'a.b.c.d/8' is not an IPv4 or "
                                           "IPv6 network"),
    ('[gateway]\nsubnets = ["0.0.0.0/0"]', "[gateway] subnets: 0.0.0.0/0 is everything"),
    ('[gateway]\nsubnets = ["::/0"]', "[gateway] subnets: ::/0 is everything"),
    ('[gateway]\nsubnets = ["192.0.2.0/24"]\n[dns]\nnameservers = ["192.0.2.53"]',
     "[gateway] subnets: 192.0.2.0/24 holds the nameserver 192.0.2.53"),
    ("[gateway]\nsubnets = [" + ", ".join(f'"10.0.{i % 256}.{i // 256 * 128}/25"' for i in range(257)) + "]",
     "[gateway] subnets: 257 subnets, at most 256"),
])
def test_errors_name_the_key(text, message):
    with pytest.raises(ConfigError) as info:
        config.parse(text)
    assert message in str(info.value) and "\n" not in str(info.value)


def test_the_example_config_in_contrib_loads_and_matches_the_defaults():
    """contrib/etc-oe/oe.conf documents every key with its default value."""
    from pathlib import Path

    example = Path(__file__).resolve().parent.parent / "contrib" / "etc-oe"
    assert config.load(example) == Config()
    # ... and lists every key (a key left out would load as its default all the same)
    listed = tomllib.loads((example / "oe.conf").read_text())
    for field in dataclasses.fields(Config):
        default = getattr(Config(), field.name)
        if dataclasses.is_dataclass(default):
            assert set(listed[field.name]) == {f.name for f in dataclasses.fields(default)}
        else:
            assert field.name in listed



def test_gateway_subnets_are_read_and_may_change_on_reload():
    """issue 13: [gateway] subnets names the clients; reload re-plans routes, inbound table
    and forwarding for them, so a change applies without a restart."""
    conf = config.parse('[gateway]\nsubnets = ["198.51.100.0/24", "2001:db8:5::/48"]\n')
    assert conf.gateway.subnets == ("198.51.100.0/24", "2001:db8:5::/48")
    assert Config().gateway.subnets == ()
    diff = config.changes(Config(), conf)
    assert diff.applied == ("[gateway] subnets",) and diff.kept == ()
    assert config.parse("[dns]\nallow_unsigned_delegation = true").dns.allow_unsigned_delegation


def test_examine_lists_every_problem_with_its_line():
    text = ('tun_name = "oe0"\nshunt_lifetime = 0\n\n[ike]\n# ours\nproposals = ["bogus"]\n'
            '[dns]\nnameservers = ["dns.google", "192.0.2.53"]\nfoo = 1\n')
    conf, problems = config.examine(text)
    assert [p.text("oe.conf") for p in problems] == [
        "oe.conf:9: [dns] foo: unknown key",
        "oe.conf:2: shunt_lifetime: expected a number > 0",
        "oe.conf:6: [ike] proposals: unknown algorithm 'bogus' in proposal 'bogus'",
        "oe.conf:8: [dns] nameservers: 'dns.google' is not an IP address (nor a DNS-over-HTTPS "
        "URL): oe must know its nameservers' addresses to exempt them from trapping"]
    assert conf.tun_name == "oe0"


def test_changes_apply_what_runs_and_keep_what_needs_a_restart():
    """issue 15, 5: `oe reload` applied none of oe.conf and said nothing of what it kept."""
    old = config.parse('shunt_lifetime = 900\n[limits]\nshunts = 10\n')
    new = config.parse('shunt_lifetime = 60\ntun_name = "oe9"\nroute_table = 100\n'
                       '[limits]\nshunts = 20\nholds = 5\n[ike]\nproposals = ["aes256gcm16-prfsha384-ecp256"]\n'
                       '[dns]\nnameservers = ["192.0.2.53"]\n')
    diff = config.changes(old, new)
    assert diff.applied == ("shunt_lifetime", "[ike] proposals", "[dns] nameservers",
                            "[limits] shunts")
    assert diff.kept == ("tun_name", "route_table", "[limits] holds")
    assert diff.config.shunt_lifetime == 60 and diff.config.limits.shunts == 20
    assert (diff.config.tun_name, diff.config.route_table) == ("oe0", 4322)
    assert diff.config.limits.holds == 1024
    assert config.changes(old, old) == config.Changes(old, (), ())


def test_many_addresses_per_family_are_one_host():
    """docs/gateway.md 1: every listed address carries IKE, several per family."""
    conf = config.parse('addresses = ["192.0.2.1", "192.0.2.2", "2001:db8::1"]')
    assert conf.addresses == ("192.0.2.1", "192.0.2.2", "2001:db8::1")
