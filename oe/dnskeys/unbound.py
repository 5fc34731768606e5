"""A validating key source: libunbound (Debian's python3-unbound), as Libreswan and strongSwan use.

RFC 4322 3.2: keys in DNS resist passive attacks only; DNSSEC secures OE against an active one,
and 3.2.4.1 lets a record delegate to another gateway only from a validated answer. So each
Answer carries libunbound's verdict: "secure", "insecure" (no anchor covers the name, or an
unsigned delegation is proven) or "bogus" (with libunbound's why_bogus); oe.dnskeys.choice says
what each means. We do not validate by hand: libunbound proves denial of existence (NSEC, NSEC3)
and insecure delegations, and is the validator the other IPsec implementations trust.

The context (one per source):
  - the nameservers of oe.conf are its forwarders (`set_fwd`), else those of /etc/resolv.conf
    (read by dnspython, so `addresses` always says where queries go: they are exempt from
    trapping); the validator asks them for DNSKEY and DS as well, so they must serve (or
    recurse for) the chain from the anchors down;
  - the trust anchors are files of DS or DNSKEY records in zone-file format (default: the root
    key of dns-root-data when present); without any, every answer is insecure;
  - RFC 6303 local zones: libunbound answers NXDOMAIN by itself for the reverse zones of private
    and documentation ranges (10/8, 192.168/16, 192.0.2/24, 2001:db8::/32, ...), so OE inside a
    LAN, or in the test and demo worlds, would find no key. We set `unblock-lan-zones: yes` (ask
    the forwarders for them like any zone) with `insecure-lan-zones: yes` (no chain of trust is
    expected for them from the root: the public tree has none, AS112 serves them unsigned, and
    a LAN server's own copy would otherwise be bogus under the root anchor, which denies every
    peer). A trust anchor configured for such a zone overrides insecure-lan-zones, so a signed
    LAN zone (the demo, the tests) validates secure. We chose this over a `transparent` local
    zone per served zone because oe does not know which zones its peers' keys live in.

Asynchronous: `resolve_async` with libunbound's threads (`set_async`), its pipe `get_fd()`
watched by the asyncio loop and `process()` run when it is readable, which calls back in the
loop. libunbound keeps its own timeouts and retries per nameserver (oe.conf's query_timeout
is dnspython's and not used here); `lifetime`, and above it KeyFetcher's total budget, bound
what we wait, and a query nobody waits for any more is cancelled.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from pathlib import Path

import dns.exception
import dns.name
import dns.rdata
import dns.rdataclass
import dns.rcode
import dns.rdatatype
import dns.resolver
import dns.rrset
import dns.zonefile

try:
    import unbound
except ImportError:  # not Debian's python, or a venv without --system-site-packages
    unbound = None

from oe.dnskeys.choice import BOGUS, INSECURE, SECURE
from oe.dnskeys.fetcher import Answer, DnsKeyError

ROOT_KEY = Path("/usr/share/dns/root.key")
"""The root zone's trust anchor from Debian's dns-root-data."""

# RFC 6303 zones: asked of the forwarders, insecure unless an anchor covers them (docstring).
LAN_ZONE_OPTIONS = (("unblock-lan-zones:", "yes"), ("insecure-lan-zones:", "yes"))

NOERROR, NXDOMAIN = 0, 3


def read_anchors(paths: Sequence[Path]) -> list[dns.rrset.RRset]:
    """The DS and DNSKEY RRsets in `paths`; DnsKeyError (one line) for a file that is missing,
    unparsable, or holds anything else or nothing."""
    anchors: list[dns.rrset.RRset] = []
    for path in paths:
        try:
            text = path.read_text()
            rrsets = dns.zonefile.read_rrsets(text, rdclass=None, default_ttl=0,
                                              relativize=False)
        except OSError as exc:
            raise DnsKeyError(f"trust anchor {path}: {exc.strerror}") from None
        except (UnicodeDecodeError, dns.exception.DNSException) as exc:
            raise DnsKeyError(f"trust anchor {path}: {exc}") from None
        other = [r for r in rrsets if r.rdtype not in (dns.rdatatype.DS, dns.rdatatype.DNSKEY)]
        if other or not rrsets:
            what = (f"{other[0].name} {dns.rdatatype.to_text(other[0].rdtype)}" if other
                    else "nothing")
            raise DnsKeyError(f"trust anchor {path}: expected DS or DNSKEY records, found "
                              f"{what}")
        anchors += rrsets
    return anchors


def anchor_paths(trust_anchors: Sequence[str], confdir: Path) -> list[Path]:
    """oe.conf's trust_anchors (relative ones from confdir), or the root key when present."""
    if trust_anchors:
        return [confdir / p for p in trust_anchors]
    return [ROOT_KEY] if ROOT_KEY.exists() else []


class UnboundSource:
    """Answers validated by libunbound, each with its DNSSEC state."""

    def __init__(self, nameservers: Sequence[str], port: int,
                 anchors: Sequence[dns.rrset.RRset]):
        if unbound is None:
            raise DnsKeyError('[dns] dnssec = "validate" needs libunbound\'s python module: '
                              "apt install python3-unbound, and run oe with Debian's python "
                              "(a venv made with --system-site-packages)")
        if not nameservers:
            try:
                nameservers = [str(ns) for ns in dns.resolver.Resolver().nameservers]
                port = 53
            except dns.exception.DNSException as exc:
                raise DnsKeyError(f"no nameservers in oe.conf [dns] and none usable in "
                                  f"/etc/resolv.conf: {exc}") from None
        self.addresses = list(nameservers)
        """Where queries go: oe.conf's nameservers, else those of /etc/resolv.conf."""
        self._port, self._anchors = port, list(anchors)
        self.ctx = self._context()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._watched: dict[int, object] = {}
        """Contexts whose pipe the loop watches, by fd: the current one, and flushed ones
        with queries under way."""
        self._pending: dict[int, int] = {}
        """Queries under way, by context fd."""

    def _context(self):
        ctx = unbound.ub_ctx()
        self._check(ctx.set_async(True), "threads")
        for option, value in LAN_ZONE_OPTIONS:
            self._check(ctx.set_option(option, value), option)
        for address in self.addresses:
            self._check(ctx.set_fwd(f"{address}@{self._port}"), f"forwarder {address}")
        for rrset in self._anchors:
            for rdata in rrset:
                self._check(ctx.add_ta(f"{rrset.name} IN {rrset.rdtype.name} {rdata}"),
                            f"trust anchor {rrset.name}")
        return ctx

    @classmethod
    def from_config(cls, nameservers: Sequence[str], port: int, trust_anchors: Sequence[str],
                    confdir: Path) -> UnboundSource:
        """For oe.conf [dns] with dnssec = "validate" (anchors read now: errors at start)."""
        return cls(nameservers, port, read_anchors(anchor_paths(trust_anchors, confdir)))

    def nameservers(self) -> list[str]:
        """The nameservers asked, as messages name them ("192.0.2.53", "::1 port 5353")."""
        suffix = "" if self._port == 53 else f" port {self._port}"
        return [f"{address}{suffix}" for address in self.addresses]

    @staticmethod
    def _check(status: int, what: str) -> None:
        if status != 0:
            raise DnsKeyError(f"libunbound: {what}: {unbound.ub_strerror(status)}")

    def flush(self) -> None:
        """Forget libunbound's cache, validated keys included: for KeyFetcher's refresh (a key
        that just failed to authenticate must be asked for again). libunbound cannot flush one
        name, so a new context takes over; the old one lives until its queries are answered."""
        old = self.ctx
        self.ctx = self._context()
        if not self._pending.get(old.get_fd()):
            self._unwatch(old.get_fd())

    def _watch(self, ctx) -> None:
        """Have the running loop call process() whenever libunbound has answers for us."""
        loop = asyncio.get_running_loop()
        if self._loop is not loop:
            self.close()
            self._loop = loop
        if ctx.get_fd() not in self._watched:
            loop.add_reader(ctx.get_fd(), ctx.process)
            self._watched[ctx.get_fd()] = ctx

    def _unwatch(self, fd: int) -> None:
        if self._watched.pop(fd, None) is not None and not self._loop.is_closed():
            self._loop.remove_reader(fd)

    def close(self) -> None:
        """Stop watching libunbound's pipes (the contexts go with the object)."""
        for fd in list(self._watched):
            self._unwatch(fd)
        self._loop = None

    async def query(self, name: dns.name.Name, rdtype: dns.rdatatype.RdataType,
                    lifetime: float) -> Answer:
        ctx = self.ctx
        self._watch(ctx)
        future: asyncio.Future = asyncio.get_running_loop().create_future()
        answered: list[Answer] = []  # outlives the future, which the deadline cancels
        via = ", ".join(self.nameservers())

        def done(_data, status: int, result) -> None:
            # Read the result here: python3-unbound frees it when this returns.
            answered.append(answer_of(rdtype, result, via) if status == 0 else
                            Answer((), 0, f"libunbound: {unbound.ub_strerror(status)}"))
            if not future.done():
                future.set_result(answered[0])

        status, async_id = ctx.resolve_async(name.to_text(), None, done, int(rdtype),
                                             unbound.RR_CLASS_IN)
        if status != 0:
            return Answer((), 0, f"libunbound: {unbound.ub_strerror(status)}")
        fd = ctx.get_fd()
        self._pending[fd] = self._pending.get(fd, 0) + 1
        try:
            async with asyncio.timeout(lifetime):
                return await future
        except TimeoutError:
            # A loop busy past the deadline (hundreds of negotiations at once) may find the
            # answer only now in libunbound's pipe, or have run its callback just after the
            # deadline: the answer is there, and it is no timeout.
            if not answered and ctx.poll():
                ctx.process()
            if answered:
                return answered[0]
            # which forwarder was silent, libunbound does not say
            return Answer((), 0, f"no answer within {lifetime:g} s",
                          silent=tuple(self.nameservers()))
        finally:
            if not answered:  # nobody waits for it any more
                ctx.cancel(async_id)
            self._pending[fd] -= 1
            if not self._pending[fd]:
                del self._pending[fd]
                if ctx is not self.ctx:  # flushed meanwhile
                    self._unwatch(fd)


def answer_of(rdtype: dns.rdatatype.RdataType, result, via: str) -> Answer:
    """An Answer from a ub_result (asked of the nameservers `via`): its data parsed by
    dnspython, its DNSSEC state."""
    if result.bogus:
        # Whatever data came with it, none may be used (RFC 4033 5: "bogus").
        return Answer((), 0, security=BOGUS,
                      why_bogus=result.why_bogus or "no reason given by libunbound")
    security = SECURE if result.secure else INSECURE
    if result.rcode not in (NOERROR, NXDOMAIN):
        # libunbound reports a nameserver's REFUSED, or none answering, as SERVFAIL.
        return Answer((), 0, f"{dns.rcode.to_text(result.rcode)} through {via}",
                      security=security)
    rdatas = tuple(dns.rdata.from_wire(dns.rdataclass.IN, rdtype, raw, 0, len(raw))
                   for raw in (result.data.raw if result.havedata else ()))
    return Answer(rdatas, max(result.ttl, 0), nxdomain=result.rcode == NXDOMAIN,
                  security=security)
