"""oe.conf (TOML) -> frozen dataclasses with defaults.

Every key is optional. Tables map to the nested dataclasses below; an unknown table or key, or a
value of the wrong type, is an error naming the file and the key, and nothing is loaded.
"""

from __future__ import annotations

import dataclasses
import tomllib
import typing
from dataclasses import dataclass, field
from pathlib import Path

from oe.errors import OeError

DEFAULT_CONFDIR = Path("/etc/oe")
DEFAULT_RUNDIR = Path("/run/oe")


class ConfigError(OeError):
    """oe.conf is not valid."""


@dataclass(frozen=True)
class DnsConfig:
    nameservers: tuple[str, ...] = ()
    """Resolvers to ask; empty means those in /etc/resolv.conf. Always exempt from trapping."""
    port: int = 53
    """UDP/TCP port of the nameservers (tests run knotd on a loopback port)."""
    query_timeout: float = 1.0
    """Seconds to wait for one answer (FreeS/WAN FAQ: "It takes forever" came from DNS)."""
    total_timeout: float = 3.0
    """Seconds one key lookup may take in all, whatever the number of queries."""
    keysource: str = "dns"
    """Where peers' keys come from: "dns", or "zonefiles" (master files read from zonefiles_dir)."""
    zonefiles_dir: str = ""
    """Directory of master files for keysource = "zonefiles"."""
    allow_unsigned_delegation: bool = False
    """Accept a gateway other than the target from answers without DNSSEC (RFC 4322 3.2.4.1)."""
    dnssec: str = "validate"
    """"validate": answers are checked by libunbound from trust_anchors and carry their state
    (secure, insecure, bogus); "off": no validation, every answer counts as unsigned."""
    trust_anchors: tuple[str, ...] = ()
    """Files of DS or DNSKEY records (zone-file format), relative to the configuration
    directory; empty: the root key of dns-root-data (/usr/share/dns/root.key) when present."""
    require_dnssec: bool = False
    """Only keys from DNSSEC-secure answers count; insecure answers are no key."""
    min_key_bits: int = 2048
    """RSA keys shorter than this are refused."""
    cache_size: int = 4096
    """Most names kept in the answer cache."""


@dataclass(frozen=True)
class IkeSettings:
    proposals: tuple[str, ...] = ("aes128-sha256-x25519", "aes256gcm16-prfsha384-ecp256")
    """IKE SA proposals in strongSwan syntax, most preferred first."""
    esp_proposals: tuple[str, ...] = ("aes128gcm16", "aes256gcm16")
    """CHILD SA proposals; a DH group in one (e.g. aes256gcm16-modp2048) means PFS on rekey."""
    sa_lifetime: float = 3600.0
    """Seconds an ESP SA lives (FreeS/WAN's OE keylife: one hour)."""
    rekey_margin: float = 300.0
    """Seconds before the end of its life an SA is rekeyed, if it carried traffic lately."""
    dpd_delay: float = 30.0
    """Seconds of silence from a peer after which a liveness check is sent (RFC 7296 2.4)."""


@dataclass(frozen=True)
class LimitsConfig:
    """Global caps on what untrusted traffic can make oe keep; each drop is counted in
    `oe status --json` (design: bounded everything)."""

    holds: int = 1024
    """%holds (packets queued while negotiating) at once; beyond, the oldest hold is dropped."""
    shunts: int = 10_000
    """Failure shunts at once; beyond, the oldest is dropped and its %trap returns."""
    half_open: int = 256
    """IKE SAs answered but not yet authenticated, per address family; beyond, new
    IKE_SA_INITs are dropped (and long before, past the engine's threshold, a COOKIE is
    asked for first)."""
    lookups: int = 64
    """DNS key lookups at once for peers that contacted us (one queued IKE_SA_INIT each);
    beyond, their IKE_SA_INITs are dropped, and past half of it a COOKIE is asked first."""
    queued_acquires: int = 1024
    """Acquires waiting for the acquire rate limit; beyond, the oldest gets its failure shunt."""


@dataclass(frozen=True)
class Config:
    tun_name: str = "oe0"
    """Name of the TUN device that trapped traffic is routed into."""
    addresses: tuple[str, ...] = ()
    """This host's addresses for IKE and ESP; empty: the source address of the default route,
    else the first global address of the host, per address family."""
    shunt_lifetime: float = 900.0
    """Seconds a failure shunt (%pass/%drop) lasts before OE is tried again."""
    route_table: int = 4322
    """The routing table oe's steering routes live in (RFC 4322, for want of a better number)."""
    rule_priority: int = 4322
    """Priority of the rule that sends unmarked packets through that table."""
    bypass_mark: int = 0x4F45
    """Firewall mark of oe's own IKE, ESP and %pass packets: they skip oe's table ("OE")."""
    ike: IkeSettings = field(default_factory=IkeSettings)
    """[ike] table."""
    dns: DnsConfig = field(default_factory=DnsConfig)
    """[dns] table."""
    limits: LimitsConfig = field(default_factory=LimitsConfig)
    """[limits] table."""


def parse(text: str, origin: str = "oe.conf") -> Config:
    """Parse oe.conf text; raise ConfigError naming `origin` and the key at fault."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{origin}: {exc}") from None
    config = _build(Config, data, origin, "")
    _check_reserved(config, origin)
    _check_dnssec(config.dns, origin)
    return config


def load(confdir: Path) -> Config:
    """Read <confdir>/oe.conf; a missing file means all defaults."""
    path = confdir / "oe.conf"
    try:
        text = path.read_text()
    except FileNotFoundError:
        return Config()
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: cannot read: {exc}") from None
    return parse(text, str(path))


# Routing tables and a rule priority the kernel and the host own (linux/rtnetlink.h rt_class_t,
# and the "0: from all lookup local" rule): oe empties its table on stop, so in main it would
# take the host's default route with it, and a rule at 0 is never removed (issue 15, 3).
RESERVED_TABLES = {0: "unspec", 253: "default", 254: "main", 255: "local"}
RESERVED_PRIORITIES = {0: "the local table's rule"}
U32_MAX = 0xFFFFFFFF


def _check_reserved(config: Config, origin: str) -> None:
    for key, reserved in (("route_table", RESERVED_TABLES),
                          ("rule_priority", RESERVED_PRIORITIES)):
        value = getattr(config, key)
        if value in reserved:
            raise ConfigError(f"{origin}: {key}: {value} is reserved ({reserved[value]})")
        if value > U32_MAX:
            raise ConfigError(f"{origin}: {key}: expected at most {U32_MAX}, got {value}")


DNSSEC_MODES = ("validate", "off")


def _check_dnssec(dns: DnsConfig, origin: str) -> None:
    if dns.dnssec not in DNSSEC_MODES:
        raise ConfigError(f'{origin}: [dns] dnssec: expected "validate" or "off", '
                          f"got {dns.dnssec!r}")
    if dns.require_dnssec and dns.dnssec == "off":
        raise ConfigError(f'{origin}: [dns] require_dnssec: true needs dnssec = "validate"')


NON_EMPTY = {"proposals", "esp_proposals"}  # without one, no negotiation can succeed


def _build(cls: type, data: dict, origin: str, table: str):
    hints = typing.get_type_hints(cls)
    fields = {f.name for f in dataclasses.fields(cls)}
    values = {}
    for key, value in data.items():
        where = f"{origin}: {table}{key}"
        if key not in fields:
            raise ConfigError(f"{where}: unknown key")
        hint = hints[key]
        if dataclasses.is_dataclass(hint):
            if not isinstance(value, dict):
                raise ConfigError(f"{where}: expected a table [{key}]")
            values[key] = _build(hint, value, origin, f"[{key}] ")
        else:
            values[key] = _convert(hint, value, where)
        if key in NON_EMPTY and not values[key]:
            raise ConfigError(f"{where}: expected at least one proposal")
    return cls(**values)


def _convert(hint, value, where: str):
    if hint is bool:
        ok = isinstance(value, bool)
    elif hint is int:
        ok = isinstance(value, int) and not isinstance(value, bool)
    elif hint is float:
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        value = float(value) if ok else value
    elif hint is str:
        ok = isinstance(value, str)
    elif typing.get_origin(hint) is tuple:
        ok = isinstance(value, list) and all(isinstance(v, str) for v in value)
        value = tuple(value) if ok else value
    else:  # pragma: no cover - a field type this loader does not know is a programming error
        raise TypeError(f"unsupported config type {hint!r}")
    if not ok:
        raise ConfigError(f"{where}: expected {_type_name(hint)}, got {value!r}")
    if hint in (int, float) and value < 0:  # no count, size or duration here is negative
        raise ConfigError(f"{where}: expected a number >= 0, got {value!r}")
    return value


def _type_name(hint) -> str:
    if typing.get_origin(hint) is tuple:
        return "a list of strings"
    return {bool: "true or false", int: "an integer", float: "a number", str: "a string"}[hint]


__all__ = ["Config", "DnsConfig", "IkeSettings", "LimitsConfig", "ConfigError", "parse", "load",
           "DEFAULT_CONFDIR", "DEFAULT_RUNDIR"]
