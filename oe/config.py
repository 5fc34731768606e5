"""oe.conf (TOML) -> frozen dataclasses with defaults.

Every key is optional. Tables map to the nested dataclasses below; an unknown table or key, or a
value of the wrong type, is an error naming the file and the key, and nothing is loaded.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import re
import tomllib
import typing
from dataclasses import dataclass, field
from pathlib import Path

from oe.dp.saspec import DF_POLICIES
from oe.errors import OeError
from oe.ike.constants import ProtocolId
from oe.ike.fragment import FRAGMENT_SIZE, MIN_FRAGMENT_SIZE
from oe.ike.proposals import parse_proposal

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
    fragment_size: int = FRAGMENT_SIZE
    """Largest IKE datagram (IP header included) before a protected message is sent as RFC 7383
    fragments, when the peer supports them; charon's default, a path every IPv6 link carries."""


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
    acquire_rate: float = 20.0
    """IKE negotiations started per second at most, across all peers (key lookups are not
    rationed by it: a burst of destinations without keys delays no keyed peer)."""
    acquire_burst: int = 40
    """IKE negotiations that may start at once before `acquire_rate` applies."""
    acquire_lookups: int = 16
    """DNS key lookups at once for our own trapped packets; further acquires wait for a place,
    newest first. What a new acquire waits for is the lookups ahead of it, so keep it small;
    raise it only for many new destinations per second over a slow resolver (it allows
    acquire_lookups / round trip lookups per second)."""
    children_per_ike: int = 256
    """CHILD SAs one IKE SA carries at most: a peer asking for more gets NO_ADDITIONAL_SAS
    (RFC 7296 1.3); ours beyond it start another IKE SA with the same gateway (a gateway's
    clients share one, docs/gateway.md 5)."""


@dataclass(frozen=True)
class EspConfig:
    df: str = "copy"
    """The outer IPv4 header's DF bit (RFC 4301 8.1): "copy" the inner packet's, "set" or
    "clear" it. With copy, inner packets without DF cross a smaller link as with plain routing."""
    encapsulation: str = "auto"
    """ "auto": ESP in UDP only across a NAT (RFC 7296 2.23); "udp": always, as if a NAT were
    in the way (IkeConfig.force_encap): faster with oe's user-space datapath (README: Tunnel
    throughput), 8 bytes more per packet, and through firewalls that pass only UDP."""


@dataclass(frozen=True)
class GatewayConfig:
    subnets: tuple[str, ...] = ()
    """Networks of the clients behind this host ("our clients", FreeS/WAN): oe traps their
    forwarded traffic like its own and enables forwarding for them (docs/gateway.md 2);
    empty: oe is a host, and leaves every forwarding sysctl alone."""


@dataclass(frozen=True)
class Config:
    tun_name: str = "oe0"
    """Name of the TUN device that trapped traffic is routed into."""
    addresses: tuple[str, ...] = ()
    """This host's addresses for IKE and ESP, any number per family up to MAX_ADDRESSES;
    empty: every global address of the host but temporary, deprecated and tentative ones
    (docs/gateway.md 1)."""
    shunt_lifetime: float = 900.0
    """Seconds a failure shunt (%pass/%drop) lasts before OE is tried again."""
    route_table: int = 4322
    """The routing table oe's steering routes live in (RFC 4322, for want of a better number)."""
    rule_priority: int = 4322
    """Priority of the rule that sends unmarked packets through that table."""
    bypass_mark: int = 0x4F45
    """Firewall mark of oe's own IKE, ESP and %pass packets: they skip oe's table ("OE")."""
    log_level: str = "info"
    """Least level logged: "debug", "info", "warning" or "error" (`oe start --log-level`
    overrides it; `oe reload` applies a new one)."""
    ike: IkeSettings = field(default_factory=IkeSettings)
    """[ike] table."""
    dns: DnsConfig = field(default_factory=DnsConfig)
    """[dns] table."""
    limits: LimitsConfig = field(default_factory=LimitsConfig)
    """[limits] table."""
    esp: EspConfig = field(default_factory=EspConfig)
    """[esp] table."""
    gateway: GatewayConfig = field(default_factory=GatewayConfig)
    """[gateway] table."""


def parse(text: str, origin: str = "oe.conf") -> Config:
    """Parse oe.conf text; raise ConfigError naming `origin` and the key at fault."""
    config, problems = examine(text)
    if problems:
        raise ConfigError(problems[0].text(origin, line=False))
    return config


def load(confdir: Path) -> Config:
    """Read <confdir>/oe.conf; a missing file means all defaults."""
    return parse(*read(confdir))


def read(confdir: Path) -> tuple[str, str]:
    """(text, path) of <confdir>/oe.conf; a missing file is an empty one."""
    path = confdir / "oe.conf"
    try:
        return path.read_text(), str(path)
    except FileNotFoundError:
        return "", str(path)
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: cannot read: {exc}") from None


@dataclass(frozen=True)
class Problem:
    """One thing wrong in oe.conf: the key (as "[table] key"), what is wrong, and the line."""

    key: str
    message: str
    line: int | None = None

    def text(self, origin: str, line: bool = True) -> str:
        where = f"{origin}:{self.line}" if line and self.line else origin
        return f"{where}: {self.key}: {self.message}" if self.key else f"{where}: {self.message}"


def examine(text: str) -> tuple[Config, list[Problem]]:
    """Every problem of oe.conf `text` (types, ranges, names), and the configuration with the
    defaults in place of the values at fault; `oe check` lists them all, parse() the first."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        return Config(), [Problem("", str(exc), getattr(exc, "lineno", None))]
    problems: list[Problem] = []
    config = _build(Config, data, "", problems)
    problems += _values(config)
    lines = _key_lines(text)
    return config, [dataclasses.replace(p, line=lines.get(p.key)) for p in problems]


def _key_lines(text: str) -> dict[str, int]:
    """"[table] key" -> the line that sets it (TOML as oe.conf writes it: one key a line)."""
    lines, table = {}, ""
    for number, line in enumerate(text.splitlines(), 1):
        stripped = line.split("#", 1)[0].strip()
        if header := re.fullmatch(r"\[\s*([A-Za-z0-9_-]+)\s*\]", stripped):
            table = f"[{header[1]}] "
            lines.setdefault(table.strip(), number)
        elif key := re.match(r"([A-Za-z0-9_-]+)\s*=", stripped):
            lines.setdefault(f"{table}{key[1]}", number)
    return lines


# Routing tables and a rule priority the kernel and the host own (linux/rtnetlink.h rt_class_t,
# and the "0: from all lookup local" rule): oe empties its table on stop, so in main it would
# take the host's default route with it, and a rule at 0 is never removed (issue 15, 3).
RESERVED_TABLES = {0: "unspec", 253: "default", 254: "main", 255: "local"}
RESERVED_PRIORITIES = {0: "the local table's rule"}
U32_MAX = 0xFFFFFFFF
IFNAMSIZ = 16  # linux/if.h: an interface name and its NUL
MAX_ADDRESSES = 4096  # one daemon, one wildcard socket per family and port (docs/gateway.md 1)
LOG_LEVELS = ("debug", "info", "warning", "error")
DNSSEC_MODES = ("validate", "off")
ENCAPSULATIONS = ("auto", "udp")  # [esp] encapsulation: ESP in UDP across a NAT, or always
SUBNETS_MAX = 256  # [gateway] subnets: each is a route, an nft element and a sysctl plan
POSITIVE = {"shunt_lifetime", "sa_lifetime", "dpd_delay", "query_timeout", "total_timeout",
            "holds", "shunts", "half_open", "lookups", "queued_acquires", "cache_size",
            "children_per_ike", "acquire_rate", "acquire_burst", "acquire_lookups"}


def _values(config: Config) -> list[Problem]:
    """What the types allow but oe cannot run with (issue 15: each was a traceback or worse)."""
    found: list[Problem] = []

    def bad(key: str, message: str) -> None:
        found.append(Problem(key, message))

    for key, reserved in (("route_table", RESERVED_TABLES),
                          ("rule_priority", RESERVED_PRIORITIES)):
        value = getattr(config, key)
        if value in reserved:
            bad(key, f"{value} is reserved ({reserved[value]})")
        elif value > U32_MAX:
            bad(key, f"expected at most {U32_MAX}, got {value}")
    if not 0 < config.bypass_mark <= U32_MAX:
        bad("bypass_mark", f"expected 1 to {U32_MAX}: without a mark oe's own packets would be "
                           f"trapped again")
    if not 0 < len(config.tun_name) < IFNAMSIZ or re.search(r"[\s/:]", config.tun_name) \
            or config.tun_name in (".", ".."):
        bad("tun_name", f"{config.tun_name!r} is no interface name (1 to {IFNAMSIZ - 1} "
                        f"characters, no blank, '/' or ':')")
    if len(config.addresses) > MAX_ADDRESSES:
        bad("addresses", f"{len(config.addresses)} addresses, at most {MAX_ADDRESSES}")
    seen: set[ipaddress.IPv4Address | ipaddress.IPv6Address] = set()
    for text in config.addresses:
        try:
            address = ipaddress.ip_address(text)
        except ValueError:
            bad("addresses", f"{text!r} is not an IPv4 or IPv6 address")
            continue
        if address.is_loopback or address.is_multicast or address.is_unspecified:
            bad("addresses", f"{text} cannot carry IKE to peers (loopback, multicast or "
                             f"unspecified)")
        elif address in seen:
            bad("addresses", f"{text} is listed twice")
        seen.add(address)
    for table, settings in (("", config), ("[ike] ", config.ike), ("[dns] ", config.dns),
                            ("[limits] ", config.limits)):
        for name in POSITIVE & {f.name for f in dataclasses.fields(settings)}:
            if getattr(settings, name) == 0:
                bad(f"{table}{name}", "expected a number > 0")
    ike = config.ike
    if ike.rekey_margin >= ike.sa_lifetime:
        bad("[ike] rekey_margin", f"{ike.rekey_margin:g} s is not shorter than sa_lifetime "
                                  f"{ike.sa_lifetime:g} s")
    if ike.fragment_size < MIN_FRAGMENT_SIZE:
        bad("[ike] fragment_size", f"{ike.fragment_size} is below {MIN_FRAGMENT_SIZE}, the "
                                   f"datagram every IPv4 host takes (RFC 791)")
    for key, protocol, proposals in (("[ike] proposals", ProtocolId.IKE, ike.proposals),
                                     ("[ike] esp_proposals", ProtocolId.ESP, ike.esp_proposals)):
        for proposal in proposals:
            try:
                parse_proposal(proposal, protocol)
            except ValueError as exc:
                bad(key, str(exc))
    dns = config.dns
    for server in dns.nameservers:
        if not (_is_address(server) or server.startswith("https://")):
            bad("[dns] nameservers", f"{server!r} is not an IP address (nor a DNS-over-HTTPS "
                                     f"URL): oe must know its nameservers' addresses to exempt "
                                     f"them from trapping")
    if not 0 < dns.port <= 65535:
        bad("[dns] port", f"expected 1 to 65535, got {dns.port}")
    if dns.total_timeout < dns.query_timeout:
        bad("[dns] total_timeout", f"{dns.total_timeout:g} s is shorter than one query "
                                   f"({dns.query_timeout:g} s)")
    if dns.dnssec not in DNSSEC_MODES:
        bad("[dns] dnssec", f'expected "validate" or "off", got {dns.dnssec!r}')
    if dns.require_dnssec and dns.dnssec == "off":
        bad("[dns] require_dnssec", 'true needs dnssec = "validate"')
    found += [Problem("[gateway] subnets", m)
              for m in _subnet_problems(config.gateway.subnets, dns.nameservers)]
    if config.log_level not in LOG_LEVELS:
        bad("log_level", f"{config.log_level!r}: expected one of {', '.join(LOG_LEVELS)}")
    if config.esp.df not in DF_POLICIES:
        bad("[esp] df", f"{config.esp.df!r}: expected one of {', '.join(DF_POLICIES)}")
    if config.esp.encapsulation not in ENCAPSULATIONS:
        bad("[esp] encapsulation",
            f"{config.esp.encapsulation!r}: expected one of {', '.join(ENCAPSULATIONS)}")
    return found


def _subnet_problems(subnets: tuple[str, ...], nameservers: tuple[str, ...]) -> list[str]:
    """What is wrong with [gateway] subnets: each a network without host bits, none the
    whole address space (an open relay), none holding a nameserver we ask (nameservers are
    exempt from all oe does, clients are what it acts for: no address is both), not too many."""
    found = [f"{len(subnets)} subnets, at most {SUBNETS_MAX}"] if len(subnets) > SUBNETS_MAX \
        else []
    servers = [ipaddress.ip_address(s) for s in nameservers if _is_address(s)]
    for text in subnets[:SUBNETS_MAX]:
        try:
            network = ipaddress.ip_network(text, strict=True)
        except ValueError as exc:
            found.append(f"{text!r} has host bits set" if "host bits" in str(exc)
                         else f"{text!r} is not an IPv4 or IPv6 network")
            continue
        if network.prefixlen == 0:
            found.append(f"{network} is everything: oe would forward for the whole internet")
        found += [f"{network} holds the nameserver {s}" for s in servers if s in network]
    return found


def _is_address(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True


NON_EMPTY = {"proposals", "esp_proposals"}  # without one, no negotiation can succeed


def _build(cls: type, data: dict, table: str, problems: list[Problem]):
    hints = typing.get_type_hints(cls)
    fields = {f.name for f in dataclasses.fields(cls)}
    values = {}
    for key, value in data.items():
        where = f"{table}{key}"
        if key not in fields:
            problems.append(Problem(where, "unknown key"))
            continue
        hint = hints[key]
        if dataclasses.is_dataclass(hint):
            if not isinstance(value, dict):
                problems.append(Problem(where, f"expected a table [{key}]"))
                continue
            values[key] = _build(hint, value, f"[{key}] ", problems)
            continue
        try:
            values[key] = _convert(hint, value)
        except ValueError as exc:
            problems.append(Problem(where, str(exc)))
            continue
        if key in NON_EMPTY and not values[key]:
            problems.append(Problem(where, "expected at least one proposal"))
            del values[key]
    return cls(**values)


def _convert(hint, value):
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
        raise ValueError(f"expected {_type_name(hint)}, got {value!r}")
    if hint in (int, float) and value < 0:  # no count, size or duration here is negative
        raise ValueError(f"expected a number >= 0, got {value!r}")
    return value


def _type_name(hint) -> str:
    if typing.get_origin(hint) is tuple:
        return "a list of strings"
    return {bool: "true or false", int: "an integer", float: "a number", str: "a string"}[hint]


# What `oe reload` cannot change in a running daemon: the TUN, the routing table and rule, the
# mark its sockets carry and the addresses they are bound to are set up once, at start.
# The datapath's hold cap is fixed when it starts, too.
RESTART_KEYS = ("tun_name", "addresses", "route_table", "rule_priority", "bypass_mark",
                "[limits] holds")
RESTART_KEYS += ("[esp] df",)  # the datapath's DF policy too (issue 17)


@dataclass(frozen=True)
class Changes:
    """What `oe reload` makes of a new oe.conf (changes(old, new))."""

    config: Config
    """The configuration to run with: the new one, but the restart-only keys as they were."""
    applied: tuple[str, ...]
    """Keys whose new value takes effect now ("shunt_lifetime", "[ike] proposals"...)."""
    kept: tuple[str, ...]
    """Keys whose new value needs a restart, and is not applied at all."""


def changes(old: Config, new: Config) -> Changes:
    """Split the difference of two configurations into what applies at runtime and what
    needs a restart; the latter keep their old value, so nothing is half applied."""
    kept = tuple(k for k in _differences(old, new) if k in RESTART_KEYS)
    config = new
    for key in kept:
        config = _with(config, key.replace("[", "").replace("] ", ".").split("."), old)
    return Changes(config, tuple(_differences(old, config)), kept)


def _with(config, path: list[str], old):
    """`config` with the value at `path` (["limits", "holds"]) taken from `old`."""
    name, *rest = path
    value = _with(getattr(config, name), rest, getattr(old, name)) if rest else getattr(old, name)
    return dataclasses.replace(config, **{name: value})


def _differences(old, new, table: str = "") -> list[str]:
    found = []
    for f in dataclasses.fields(old):
        before, after = getattr(old, f.name), getattr(new, f.name)
        if dataclasses.is_dataclass(before):
            found += _differences(before, after, f"[{f.name}] ")
        elif before != after:
            found.append(f"{table}{f.name}")
    return found


__all__ = ["Config", "DnsConfig", "GatewayConfig", "IkeSettings", "LimitsConfig", "ConfigError", "Problem",
           "Changes", "parse", "load", "read", "examine", "changes", "DEFAULT_CONFDIR",
           "DEFAULT_RUNDIR"]
