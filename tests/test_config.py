"""oe.conf: defaults, typed values, and one-line errors naming the key."""

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
