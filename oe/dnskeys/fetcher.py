"""Fetching peers' keys: the DNS I/O around oe.dnskeys.choice.

One lookup asks for IPSECKEY, TXT and KEY at the target's name at once, within a total budget
(default 3 s; the FreeS/WAN FAQ's "It takes forever" was long DNS timeouts), each query
attempt within query_timeout (default 1 s). Answers are cached per (name, type): positive ones
for their TTL, negative ones for the SOA minimum (RFC 2308 section 5; none without an SOA).
The cache is an LRU bounded by cache_size. Concurrent lookups of one (name, type) share one
query. Failed queries (timeout, SERVFAIL, REFUSED) are not cached. Each lookup says when it
`expires` (the earliest of its answers); `fetch(target, refresh=True)` asks past the cache, for
a key that just failed to authenticate.

Sources answer `query(name, rdtype, lifetime) -> Answer`:
  DnsSource       dnspython's async resolver, nameservers from oe.conf or /etc/resolv.conf
  ZoneFileSource  master files read with dnspython (keysource = "zonefiles": air-gapped, demo)
"""

from __future__ import annotations

import asyncio
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Protocol

import dns.asyncresolver
import dns.exception
import dns.message
import dns.name
import dns.rdata
import dns.rdataclass
import dns.rcode
import dns.rdatatype
import dns.resolver
import dns.zone

from oe.config import DnsConfig
from oe.dnskeys.choice import (
    OFF, GatewayAddresses, KeyLookup, Target, choose, gateway_addresses, not_capable, weakest,
)
from oe.dnskeys.records import KINDS
from oe.errors import OeError

KEYSOURCES = ("dns", "zonefiles")
TIMEOUT, FAILED = "DNS timeout", "DNS lookup"  # how the reasons of unanswered lookups begin
FAILURE_HOLD = 10.0
"""Seconds an unanswered lookup (timeout, SERVFAIL) is answered from memory: the next lookup of
the name (a responder's, then its own as initiator) does not wait the budget again. RFC 2308
section 7 allows up to five minutes; refresh=True asks regardless."""
EDNS_PAYLOAD = 1232  # DNS flag day 2020: fits unfragmented; longer answers retry over TCP


class DnsKeyError(OeError):
    """The key source cannot be set up (no resolvers, unreadable zone files)."""


@dataclass(frozen=True)
class Answer:
    """One (name, type) answer as the cache keeps it."""

    rdatas: tuple[dns.rdata.Rdata, ...]
    """Empty for NXDOMAIN or NODATA."""
    ttl: int
    """Seconds it may be cached: the RRset TTL, or the negative TTL (RFC 2308 section 5)."""
    error: str | None = None
    """Why there is no answer (timeout, SERVFAIL...); such answers are never cached."""
    nxdomain: bool = False
    """The name does not exist (RCODE NXDOMAIN), as opposed to NODATA."""
    silent: tuple[str, ...] = ()
    """The nameservers that did not answer in time (a timeout), as "192.0.2.53 port 5353"."""
    security: str = OFF
    """Its DNSSEC state, one of oe.dnskeys.choice.DNSSEC_STATES ("off": not validated)."""
    why_bogus: str | None = None
    """The validator's reason for a "bogus" answer."""


class Source(Protocol):
    async def query(self, name: dns.name.Name, rdtype: dns.rdatatype.RdataType,
                    lifetime: float) -> Answer: ...


def negative_ttl(response: dns.message.Message) -> int:
    """RFC 2308 section 5: min(SOA TTL, SOA MINIMUM) of the authority SOA; 0 (no caching)
    when the response has none."""
    for rrset in response.authority:
        if rrset.rdtype == dns.rdatatype.SOA:
            return min(rrset.ttl, rrset[0].minimum)
    return 0


class DnsSource:
    """Queries nameservers with dnspython's async resolver."""

    def __init__(self, nameservers: tuple[str, ...], port: int, query_timeout: float):
        if nameservers:
            self.resolver = dns.asyncresolver.Resolver(configure=False)
            self.resolver.port = port  # before nameservers: they take the port when set
            self.resolver.nameservers = list(nameservers)
        else:
            try:
                self.resolver = dns.asyncresolver.Resolver()
            except dns.exception.DNSException as exc:
                raise DnsKeyError(f"no nameservers in oe.conf [dns] and none usable in "
                                  f"/etc/resolv.conf: {exc}") from None
        self.resolver.timeout = query_timeout
        self.resolver.use_edns(0, 0, EDNS_PAYLOAD)

    def nameservers(self) -> list[str]:
        """The nameservers asked, as messages name them ("192.0.2.53", "::1 port 5353")."""
        port = self.resolver.port
        return [_server_text(ns if "@" in ns or ns.startswith("https://") else f"{ns}@{port}")
                for ns in map(str, self.resolver.nameservers)]

    async def query(self, name: dns.name.Name, rdtype: dns.rdatatype.RdataType,
                    lifetime: float) -> Answer:
        try:
            answer = await self.resolver.resolve(name, rdtype, raise_on_no_answer=False,
                                                 lifetime=lifetime, search=False)
        except dns.resolver.NXDOMAIN as exc:
            return Answer((), negative_ttl(exc.response(name)), nxdomain=True)
        except dns.resolver.LifetimeTimeout as exc:
            silent = tuple(dict.fromkeys(_server_text(e[0]) for e in exc.kwargs.get("errors")
                                         or () if isinstance(e[3], dns.exception.Timeout)))
            return Answer((), 0, f"no answer within {lifetime:g} s",
                          silent=silent or tuple(self.nameservers()))
        except dns.resolver.NoNameservers as exc:
            return Answer((), 0, _nameserver_errors(exc))
        except dns.exception.DNSException as exc:
            return Answer((), 0, str(exc))
        if answer.rrset is None:
            return Answer((), negative_ttl(answer.response))
        return Answer(tuple(answer.rrset), answer.chaining_result.minimum_ttl)


def _server_text(server: str) -> str:
    """dnspython's "Do53:192.0.2.53@5353" as "192.0.2.53 port 5353" (no port if 53)."""
    address = server.removeprefix("Do53:")
    if "@" in address and not address.startswith("https://"):
        address, port = address.rsplit("@", 1)
        return address if port == "53" else f"{address} port {port}"
    return address


def _nameserver_errors(exc: dns.resolver.NoNameservers) -> str:
    """"SERVFAIL from Do53:127.0.0.1@53" rather than dnspython's paragraph."""
    errors = exc.kwargs.get("errors") or []
    parts = []
    for nameserver, _tcp, _port, error, response in errors:
        what = dns.rcode.to_text(response.rcode()) if response is not None else str(error)
        parts.append(f"{what} from {nameserver}")  # "Do53:127.0.0.1@53"
    return "; ".join(parts) or str(exc)


class ZoneFileSource:
    """Answers from master files `<origin>.zone` in one directory, read with dnspython."""

    def __init__(self, directory: Path):
        self.directory = directory
        self.zones: dict[dns.name.Name, dns.zone.Zone] = {}
        try:
            paths = sorted(directory.glob("*.zone"))
        except OSError as exc:
            raise DnsKeyError(f"cannot read zone directory {directory}: {exc.strerror}") from None
        if not paths:
            raise DnsKeyError(f"no zone files (*.zone) in {directory}")
        for path in paths:
            origin = dns.name.from_text(path.name[:-len(".zone")])
            try:
                self.zones[origin] = dns.zone.from_file(str(path), origin=origin,
                                                        relativize=False)
            except (OSError, dns.exception.DNSException) as exc:
                raise DnsKeyError(f"{path}: {exc}") from None

    def lookup(self, name: dns.name.Name, rdtype: dns.rdatatype.RdataType) -> Answer:
        """As an authoritative server would answer: data, NODATA or NXDOMAIN with the SOA."""
        origins = [o for o in self.zones if name.is_subdomain(o)]
        if not origins:
            return Answer((), 0, f"no zone file in {self.directory} covers {name}")
        zone = self.zones[max(origins, key=len)]  # the most specific zone holds the name
        soa = zone.find_rdataset(zone.origin, dns.rdatatype.SOA)
        negative = min(soa.ttl, soa[0].minimum)
        node = zone.get_node(name)
        if node is None and not any(n.is_subdomain(name) for n in zone.nodes):
            return Answer((), negative, nxdomain=True)  # not even an empty non-terminal
        rdataset = node.get_rdataset(dns.rdataclass.IN, rdtype) if node is not None else None
        if rdataset is None:
            return Answer((), negative)
        return Answer(tuple(rdataset), rdataset.ttl)

    async def query(self, name: dns.name.Name, rdtype: dns.rdatatype.RdataType,
                    lifetime: float) -> Answer:
        return self.lookup(name, rdtype)


def make_source(config: DnsConfig, confdir: Path) -> Source:
    """The key source oe.conf asks for; a relative zonefiles_dir is taken from confdir."""
    if config.keysource == "dns":
        if config.dnssec == "validate":
            from oe.dnskeys.unbound import UnboundSource  # it imports this module
            return UnboundSource.from_config(config.nameservers, config.port,
                                             config.trust_anchors, confdir)
        return DnsSource(config.nameservers, config.port, config.query_timeout)
    if config.keysource == "zonefiles":
        if not config.zonefiles_dir:
            raise DnsKeyError('[dns] keysource = "zonefiles" needs zonefiles_dir')
        return ZoneFileSource(confdir / config.zonefiles_dir)
    raise DnsKeyError(f"[dns] keysource = {config.keysource!r}: expected one of "
                      f"{', '.join(repr(k) for k in KEYSOURCES)}")


def unanswered(lookup: KeyLookup) -> bool:
    """Whether DNS did not answer (timeout, SERVFAIL...), as opposed to answering "no key"."""
    return lookup.error is not None and lookup.error.startswith((TIMEOUT, FAILED))


@dataclass
class FetcherStats:
    """Counters for `oe status` and the tests."""

    queries: int = 0
    """Queries handed to the source (after cache and coalescing)."""
    refreshes: int = 0
    """Lookups asked to bypass the cache (fetch(..., refresh=True))."""
    cache_hits: int = 0
    coalesced: int = 0
    """Lookups that joined a query already under way."""


@dataclass(frozen=True)
class _Entry:
    answer: Answer
    expires: float
    """On the fetcher's clock: when the answer came, plus its TTL."""


class KeyFetcher:
    """Looks up targets' keys with a cache; one instance per daemon (or CLI run)."""

    def __init__(self, config: DnsConfig, source: Source, *,
                 clock: Callable[[], float] = time.monotonic):
        self.config = config
        self.source = source
        self.clock = clock
        self.stats = FetcherStats()
        self._cache: OrderedDict[tuple[dns.name.Name, int], _Entry] = OrderedDict()
        self._inflight: dict[tuple[dns.name.Name, int], asyncio.Task[Answer]] = {}
        # name -> (until, lookup): unanswered lookups held for FAILURE_HOLD, LRU-bounded
        self._failed: OrderedDict[dns.name.Name, tuple[float, KeyLookup]] = OrderedDict()

    def nameservers(self) -> list[str]:
        """Addresses of the nameservers asked (none for zone files): exempt from trapping.
        (DnsSource.nameservers() names them for messages, with their port.)"""
        resolver = getattr(self.source, "resolver", None)
        if resolver is None:
            return list(getattr(self.source, "addresses", []))  # UnboundSource's forwarders
        return [str(ns) for ns in resolver.nameservers]

    @classmethod
    def from_config(cls, config: DnsConfig, confdir: Path, *,
                    clock: Callable[[], float] = time.monotonic) -> KeyFetcher:
        """clock: what KeyLookup.expires is measured on (the daemon passes its loop.time)."""
        return cls(config, make_source(config, confdir), clock=clock)

    async def fetch(self, target: Target | str, *, refresh: bool = False) -> KeyLookup:
        """The key `target` publishes, or why there is none (never raises for DNS trouble).

        refresh: ask the source again whatever the cache holds (a query already under way is
        fresh enough and is joined); the new answers are cached as usual. An unanswered lookup
        is held for FAILURE_HOLD seconds and given again meanwhile.
        """
        if isinstance(target, str):
            try:
                target = Target.parse(target)
            except ValueError as exc:
                raise DnsKeyError(str(exc)) from None
        rdtypes = [dns.rdatatype.from_text(kind) for kind in KINDS]
        if refresh:
            self.stats.refreshes += 1
            if hasattr(self.source, "flush"):  # libunbound caches answers itself
                self.source.flush()
            for rdtype in rdtypes:
                self._cache.pop((target.name, int(rdtype)), None)
            self._failed.pop(target.name, None)
        held = self._failed.get(target.name)
        if held is not None and self.clock() < held[0]:
            return replace(held[1], target=target, expires=self.clock())
        lookup = await self._ask(target, rdtypes)
        if unanswered(lookup):
            self._failed[target.name] = (self.clock() + FAILURE_HOLD, replace(
                lookup, error=f"{lookup.error} (held for {FAILURE_HOLD:g} s)"))
            self._failed.move_to_end(target.name)
            while len(self._failed) > self.config.cache_size:
                self._failed.popitem(last=False)
        else:
            self._failed.pop(target.name, None)
        return lookup

    async def _ask(self, target: Target, rdtypes: list) -> KeyLookup:
        """One lookup of the three kinds at `target`, within the budget."""
        entries = await self._within_budget([self._answer(target.name, t) for t in rdtypes])
        if entries is None:
            return self._timed_out(target, self._source_servers())
        answers = [entry.answer for entry in entries]
        silent = tuple(dict.fromkeys(s for a in answers for s in a.silent))
        if silent:
            return self._timed_out(target, silent)
        for kind, answer in zip(KINDS, answers):
            if answer.error is not None:
                # RFC 4322 3.2: a DNS timeout means "not OE capable", like no record.
                return self._stamped(not_capable(target, f"{FAILED} of {kind} at "
                                                         f"{target.name} failed: {answer.error}"))
        lookup = choose(target, {kind: a.rdatas for kind, a in zip(KINDS, answers)},
                        min_key_bits=self.config.min_key_bits,
                        allow_unsigned_delegation=self.config.allow_unsigned_delegation,
                        dnssec=weakest([a.security for a in answers]),
                        why_bogus=next((a.why_bogus for a in answers if a.why_bogus), None),
                        require_dnssec=self.config.require_dnssec,
                        name_exists=not all(a.nxdomain for a in answers),
                        ttl=min(a.ttl for a in answers))
        return replace(lookup, expires=min(entry.expires for entry in entries))

    async def client(self, target: Target) -> KeyLookup:
        """Our client's record (docs/gateway.md 3), with each gateway named by @FQDN resolved:
        such a candidate becomes one per address the delegation rule lets it have, so the
        client check compares addresses (a gateway recognises itself in a name only through
        the name's secure addresses)."""
        lookup = await self.fetch(target)
        if not any(isinstance(c.gateway, dns.name.Name) for c in lookup.candidates):
            return lookup
        version = target.address.version if target.address is not None else 4
        candidates = []
        for candidate in lookup.candidates:
            if isinstance(candidate.gateway, dns.name.Name):
                found = await self.gateway(candidate.gateway, version, lookup.dnssec)
                candidates += [replace(candidate, gateway=a) for a in found.addresses]
            else:
                candidates.append(candidate)
        return replace(lookup, candidates=tuple(candidates))

    async def gateway(self, name: dns.name.Name, version: int,
                      record_state: str) -> GatewayAddresses:
        """The A (version 4) or AAAA addresses of an @FQDN gateway, through the same source,
        cache and budget as keys, as the delegation rule lets them be used (docs/gateway.md
        5); `record_state`: the DNSSEC state of the record that names the gateway."""
        rdtype = dns.rdatatype.A if version == 4 else dns.rdatatype.AAAA
        entries = await self._within_budget([self._answer(name, rdtype)])
        answer = entries[0].answer if entries is not None else \
            Answer((), 0, f"no answer within {self.config.total_timeout:g} s")
        return gateway_addresses(
            name, answer.rdatas, record_state=record_state, address_state=answer.security,
            allow_unsigned_delegation=self.config.allow_unsigned_delegation,
            why_bogus=answer.why_bogus, error=answer.error)

    def _timed_out(self, target: Target, silent) -> KeyLookup:
        """Issue 15, 8: say which nameservers were silent, and the timeouts that applied."""
        servers = f" from {', '.join(silent)}" if silent else ""
        return self._stamped(not_capable(
            target, f"{TIMEOUT}: no answer for {target.name}{servers} within the "
                    f"{self.config.total_timeout:g} s budget ({self.config.query_timeout:g} s "
                    f"per query)"))

    def _source_servers(self) -> list[str]:
        return self.source.nameservers() if hasattr(self.source, "nameservers") else []

    def _stamped(self, lookup: KeyLookup) -> KeyLookup:
        """A lookup from no cacheable answer: stale from now on."""
        return replace(lookup, expires=self.clock())

    async def _within_budget(self, answers: list[asyncio.Future]) -> list[_Entry] | None:
        """The entries of `answers` (from _answer), or None when the budget ran out first. The
        source keeps the budget; this only ends a source that does not. asyncio.wait, unlike
        a timeout around gather, never cancels them: a query under way is shared by every
        caller of that name and type, and one caller out of budget must not end the others'.
        No task per query either: a burst of new destinations makes thousands of them."""
        _, pending = await asyncio.wait(
            answers, timeout=self.config.total_timeout + self.config.query_timeout)
        return None if pending else [answer.result() for answer in answers]

    def _answer(self, name: dns.name.Name, rdtype: dns.rdatatype.RdataType) -> asyncio.Future:
        """The answer for (name, type) and when it expires (an _Entry), as a future: done at
        once from the cache, else the source's query under way for it."""
        key = (name, int(rdtype))
        entry = self._cache.get(key)
        now = self.clock()
        if entry is not None:
            if entry.expires > now:
                self._cache.move_to_end(key)
                self.stats.cache_hits += 1
                cached = asyncio.get_running_loop().create_future()
                cached.set_result(replace(entry, answer=replace(entry.answer,
                                                                ttl=int(entry.expires - now))))
                return cached
            del self._cache[key]
        task = self._inflight.get(key)
        if task is None:
            task = asyncio.ensure_future(self._query(key, name, rdtype))
            self._inflight[key] = task
            task.add_done_callback(lambda _: self._inflight.pop(key, None))
        else:
            self.stats.coalesced += 1
        return task

    async def _query(self, key: tuple[dns.name.Name, int], name: dns.name.Name,
                     rdtype: dns.rdatatype.RdataType) -> _Entry:
        self.stats.queries += 1
        # The budget: dnspython then says which nameservers were silent (LifetimeTimeout).
        lifetime = self.config.total_timeout
        answer = await self.source.query(name, rdtype, lifetime)
        # The TTL counts from when the answer came (RFC 1035 3.2.1); errors are not cached.
        entry = _Entry(answer, self.clock() + (answer.ttl if answer.error is None else 0))
        if answer.error is None and answer.ttl > 0:
            self._cache[key] = entry
            self._cache.move_to_end(key)
            while len(self._cache) > self.config.cache_size:
                self._cache.popitem(last=False)
        return entry

    def cached(self) -> int:
        """How many (name, type) answers the cache holds."""
        return len(self._cache)
