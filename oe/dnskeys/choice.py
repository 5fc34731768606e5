"""Which key a target publishes: the decision RFC 4322 section 3.2 makes from DNS answers.

Pure: the fetcher hands over the IPSECKEY, TXT and KEY rdata found at the target's name and
gets back a `KeyLookup` with one of three verdicts (RFC 4322 3.2, "potential OE"):

  KEY          a usable key: go on to IKE with the gateway
  NOT_CAPABLE  no record, or DNS gave no answer: the group's failure shunt (clear or drop)
  DENY         a malformed or unusable record: drop, whatever the group

Order of choice: IPSECKEY before TXT before KEY; within a kind, lower precedence first. A record
naming no key (TXT without one, IPSECKEY algorithm 0) takes the KEY at the same name. Any
malformed record at the name denies the target (FreeS/WAN failed the whole lookup on one bad
TXT); a well-formed record that cannot be used (short key, refused delegation) is skipped, and
the target is denied with its reason only when nothing usable remains.

The answers' DNSSEC state (issue 12; RFC 4322 3.2 and 3.2.4.1, Libreswan where it is silent):

  secure    the key is used; a record delegating to another gateway is accepted
  insecure  no anchor covers the name, or an unsigned delegation is proven: the key is used only
  off       without delegation (unless allow_unsigned_delegation), and with require_dnssec it
            counts as no key
  bogus     the validator refused the answers (bad, expired or missing signatures, broken
            chain): DENY whatever the group, with the validator's reason; a forged answer, or a
            forged "no such name", must never decide
"""

from __future__ import annotations

import enum
import ipaddress
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace

import dns.name
import dns.rdata

from oe.dnskeys import records
from oe.dnskeys.records import KEY, KINDS, Gateway, KeyRecord, RecordError, RsaPublicKey
from oe.logsafe import printable


SECURE, INSECURE, BOGUS, OFF = "secure", "insecure", "bogus", "off"
DNSSEC_STATES = (SECURE, INSECURE, BOGUS, OFF)
"""The `oe dnskey --json` "dnssec" values; "off": no validation was asked for."""


def weakest(states: Sequence[str]) -> str:
    """The state of several answers taken together: the weakest of them."""
    for state in (BOGUS, OFF, INSECURE):
        if state in states:
            return state
    return SECURE


CANDIDATES_MAX = 8
"""Gateways tried for one target at most (docs/gateway.md 5): a record set cannot make one flow
start more IKE negotiations than this."""


class Verdict(enum.Enum):
    KEY = "key"
    NOT_CAPABLE = "not-capable"
    DENY = "deny"


@dataclass(frozen=True)
class Target:
    """A peer named by address (key at its reverse name) or by ID_FQDN (forward name)."""

    text: str
    """As the user or the IKE ID gave it, made printable (it is echoed in reasons and logs)."""
    name: dns.name.Name
    """Where its key records live."""
    address: ipaddress.IPv4Address | ipaddress.IPv6Address | None
    """The address, for an address target."""

    @classmethod
    def parse(cls, text: str) -> Target:
        """An IPv4/IPv6 address or a domain name (optionally @name); ValueError otherwise."""
        name = records.owner_for(text)
        try:
            address = ipaddress.ip_address(text)
        except ValueError:
            return cls(printable(text), name, None)
        return cls(str(address), name, address)

    @property
    def self_gateway(self) -> Gateway:
        """The gateway meaning "the target itself"."""
        return self.address if self.address is not None else self.name

    def is_self(self, gateway: Gateway | None) -> bool:
        """RFC 4322 3.2.4.1: does the record name the target's own host as its gateway?"""
        if gateway is None:
            return True
        if self.address is not None:
            return gateway == self.address
        return isinstance(gateway, dns.name.Name) and gateway == self.name


@dataclass(frozen=True)
class Candidate:
    """One usable record of a target: a gateway to try and the key it must prove (RFC 4322
    3.2: several records, tried in order until one works)."""

    record: KeyRecord
    gateway: Gateway
    key: RsaPublicKey
    blob: bytes

    @property
    def kind(self) -> str:
        return self.record.kind

    @property
    def precedence(self) -> int:
        return self.record.precedence


@dataclass(frozen=True)
class KeyLookup:
    """What DNS says about one target's key, and why."""

    target: Target
    verdict: Verdict
    record: KeyRecord | None = None
    """The chosen record (its kind is the JSON "source")."""
    key: RsaPublicKey | None = None
    blob: bytes | None = None
    """The RFC 3110 blob of the key: the record's own, or the KEY fallback's."""
    gateway: Gateway | None = None
    """Where IKE goes: the record's gateway, or the target itself."""
    error: str | None = None
    """None with a key, else the reason (the shunt's reason, the CLI's error line)."""
    why: str = ""
    """How the record was chosen."""
    records: tuple[KeyRecord, ...] = ()
    """Every well-formed OE record at the name."""
    ttl: int = 0
    """Seconds the answers stay valid (RFC 4322 3.2: a failure lives as long as the DNS data)."""
    expires: float = 0.0
    """When the shortest-lived answer expires, on the fetcher's clock (time.monotonic, which is
    asyncio's loop.time()); set by KeyFetcher.fetch, 0.0 from choose() alone. A key must not
    authenticate an IKE SA begun after it: fetch again (RFC 1035 3.2.1, the TTL)."""
    dnssec: str = OFF
    """The DNSSEC state of the answers: one of DNSSEC_STATES."""
    candidates: tuple[Candidate, ...] = ()
    """Every usable record, the chosen one first, in the order to try them (IPSECKEY, TXT,
    KEY; lower precedence first), one per (gateway, key), at most CANDIDATES_MAX."""

    def for_candidate(self, candidate: Candidate) -> KeyLookup:
        """This lookup as if `candidate` had been chosen: what trying its gateway needs."""
        return replace(self, record=candidate.record, key=candidate.key, blob=candidate.blob,
                       gateway=candidate.gateway)

    @property
    def key_id(self) -> str | None:
        return records.key_id(self.blob) if self.blob is not None else None

    @property
    def identity(self) -> Gateway | None:
        """Whose key this is: the peer that signs IKE_AUTH with it, as an address or an FQDN.
        The gateway a delegating record names (RFC 4322 3.2.4.1: D's record, G's key), else
        the target itself; None without a key. Store the key under this, never the target."""
        return self.gateway if self.key is not None else None

    @property
    def delegated_for(self) -> Target | None:
        """The client a delegating record made `identity` the gateway of; None for a key the
        target holds itself. Such a key speaks for this client only, and only as set by its
        zone: it must not replace or stand for the gateway's own key."""
        if self.key is None or self.target.is_self(self.record.gateway):
            return None
        return self.target

    @property
    def provenance(self) -> str | None:
        """Where the key came from, for status and the decision log: record kind and DNSSEC
        state (issue 12: say what was validated); None without a key."""
        return None if self.record is None else f"{self.record.kind}, dnssec {self.dnssec}"

    def expired(self, now: float) -> bool:
        """Is the lookup stale at `now` (the fetcher's clock)? Then fetch again."""
        return now >= self.expires

    def as_json(self) -> dict:
        """The `oe dnskey --json` object (README: Commands)."""
        return {
            "target": self.target.text,
            "name": self.target.name.to_text(),
            "verdict": self.verdict.value,
            "source": self.record.kind if self.record else None,
            "record": self.record.text if self.record else None,
            "precedence": (self.record.precedence
                           if self.record and self.record.kind != KEY else None),
            "gateway": records.gateway_text(self.gateway) if self.gateway is not None else None,
            "identity": records.gateway_text(self.identity) if self.identity is not None else None,
            "delegated_for": self.delegated_for.text if self.delegated_for is not None else None,
            "key_id": self.key_id,
            "bits": self.key.bits if self.key else None,
            "sha256": records.fingerprint(self.blob) if self.blob is not None else None,
            "ttl": self.ttl,
            "why": self.why,
            "error": self.error,
            "dnssec": self.dnssec,
        }


def not_capable(target: Target, reason: str, ttl: int = 0) -> KeyLookup:
    """No key: no record, or no answer within the budget (RFC 4322 3.2, "not OE capable")."""
    return KeyLookup(target, Verdict.NOT_CAPABLE, error=reason, ttl=ttl)


def choose(target: Target, rdatas: Mapping[str, Sequence[dns.rdata.Rdata]], *,
           min_key_bits: int, allow_unsigned_delegation: bool, dnssec: str = OFF,
           why_bogus: str | None = None, require_dnssec: bool = False,
           name_exists: bool = True, ttl: int = 0) -> KeyLookup:
    """Pick the record and key for `target` from the rdata of each kind found at its name
    (`name_exists` False: the answers were NXDOMAIN), given the answers' DNSSEC state
    (`why_bogus`: the validator's reason when it is BOGUS)."""
    if dnssec == BOGUS:
        reason = printable(why_bogus) if why_bogus else "the validator gave no reason"
        return KeyLookup(target, Verdict.DENY, error=f"DNSSEC validation failed for "
                                                     f"{target.name}: {reason}",
                         why="DNSSEC bogus", ttl=ttl, dnssec=dnssec)
    if require_dnssec and dnssec != SECURE:
        return replace(not_capable(target, f"the answers for {target.name} are not "
                                           f"DNSSEC-secure ({dnssec}) and require_dnssec = "
                                           f"true: they count as no key", ttl), dnssec=dnssec)
    lookup = _choose(target, rdatas, min_key_bits=min_key_bits,
                     delegation=dnssec == SECURE or allow_unsigned_delegation,
                     name_exists=name_exists, ttl=ttl)
    return replace(lookup, dnssec=dnssec)


def _choose(target: Target, rdatas: Mapping[str, Sequence[dns.rdata.Rdata]], *,
            min_key_bits: int, delegation: bool, name_exists: bool, ttl: int) -> KeyLookup:
    """choose() for answers that may be used (`delegation`: may name another gateway)."""
    decoded: list[KeyRecord] = []
    for kind in KINDS:
        for rdata in rdatas.get(kind, ()):
            if kind == records.TXT and not records.is_x_ipsec_server(rdata):
                continue
            try:
                decoded.append(records.decode(target.name, rdata))
            except RecordError as exc:
                # RFC 4322 3.2: a malformed record means deny, whatever the policy group.
                return KeyLookup(target, Verdict.DENY, error=str(exc), ttl=ttl,
                                 why="malformed record")
    if not decoded:
        return not_capable(target, f"no IPSECKEY, TXT X-IPsec-Server or KEY record at "
                                   f"{target.name}"
                                   + ("" if name_exists else " (the name does not exist)"), ttl)
    # Stable sort: equal precedences keep answer order (RFC 4025 2.1 leaves ties open).
    candidates = sorted(decoded, key=lambda r: (KINDS.index(r.kind), r.precedence))
    key_records = [r for r in candidates if r.kind == KEY]
    skipped: list[str] = []
    usable: list[Candidate] = []
    why = ""
    for record in candidates:
        where = f"{record.kind} at {record.owner}"
        if not (target.is_self(record.gateway) or delegation):
            skipped.append(
                f"{where} names gateway {records.gateway_text(record.gateway)}, not "
                f"{target.text} itself, and the answer is not DNSSEC-validated "
                f"(RFC 4322 3.2.4.1; allow_unsigned_delegation = true accepts it)")
            continue
        key, blob, via = record.key, record.blob, ""
        if key is None:
            keyed = [k for k in key_records if k.key.bits >= min_key_bits]
            if not keyed:
                skipped.append(f"{where} carries no key and there is no usable KEY record at "
                               f"{record.owner}")
                continue
            key, blob, via = keyed[0].key, keyed[0].blob, "; key from the KEY record"
        if key.bits < min_key_bits:
            skipped.append(f"{where}: RSA key of {key.bits} bits is shorter than "
                           f"min_key_bits {min_key_bits}")
            continue
        gateway = record.gateway if record.gateway is not None else target.self_gateway
        if any((c.gateway, c.blob) == (gateway, blob) for c in usable):
            continue  # the same gateway with the same key: one try is enough
        if not usable:
            why = _why(record, decoded, via, skipped)
        usable.append(Candidate(record, gateway, key, blob))
    if not usable:
        return KeyLookup(target, Verdict.DENY, error=skipped[0], records=tuple(decoded),
                         ttl=ttl, why="; ".join(skipped))
    ignored = len(usable) - CANDIDATES_MAX
    if ignored > 0:
        why += (f"; {ignored} more usable records ignored (at most {CANDIDATES_MAX} gateways "
                f"are tried)")
    best = usable[0]
    return KeyLookup(target, Verdict.KEY, best.record, best.key, best.blob, best.gateway,
                     why=why, records=tuple(decoded), ttl=ttl,
                     candidates=tuple(usable[:CANDIDATES_MAX]))


@dataclass(frozen=True)
class GatewayAddresses:
    """An @FQDN gateway's addresses as far as the delegation rule lets them be used."""

    addresses: tuple[ipaddress.IPv4Address | ipaddress.IPv6Address, ...] = ()
    error: str | None = None
    """Why none may be used (the next record is tried)."""
    deny: bool = False
    """A bogus answer: the target is denied, whatever the group."""


def gateway_addresses(name: dns.name.Name, rdatas: Sequence[dns.rdata.Rdata], *,
                      record_state: str, address_state: str, allow_unsigned_delegation: bool,
                      why_bogus: str | None = None,
                      error: str | None = None) -> GatewayAddresses:
    """RFC 4322 3.2.4.1 for a gateway named by FQDN (RFC 4025 2.3 type 3): its A/AAAA answer
    is part of the delegation, so the weakest of the record's and the addresses' DNSSEC states
    decides (docs/gateway.md 5); bogus denies. At most CANDIDATES_MAX addresses."""
    state = weakest([record_state, address_state])
    if state == BOGUS:
        reason = printable(why_bogus) if why_bogus else "the validator gave no reason"
        return GatewayAddresses(error=f"DNSSEC validation failed for gateway {name}: {reason}",
                                deny=True)
    if error is not None:
        return GatewayAddresses(error=f"no addresses for gateway {name}: {printable(error)}")
    if state != SECURE and not allow_unsigned_delegation:
        return GatewayAddresses(error=f"the addresses of gateway {name} are not "
                                      f"DNSSEC-validated ({state}) (RFC 4322 3.2.4.1; "
                                      f"allow_unsigned_delegation = true accepts them)")
    addresses = tuple(ipaddress.ip_address(r.address) for r in rdatas)[:CANDIDATES_MAX]
    if not addresses:
        return GatewayAddresses(error=f"gateway {name} has no address of the flow's family")
    return GatewayAddresses(addresses)


def _why(record: KeyRecord, decoded: list[KeyRecord], via: str, skipped: list[str]) -> str:
    same = [r for r in decoded if r.kind == record.kind]
    others = sorted({r.kind for r in decoded} - {record.kind}, key=KINDS.index)
    if record.kind == KEY:
        why = "KEY record" if len(same) == 1 else f"first of {len(same)} KEY records"
    elif len(same) == 1:
        why = f"the only {record.kind} record (precedence {record.precedence})"
    else:
        why = f"lowest precedence ({record.precedence}) of {len(same)} {record.kind} records"
    if others:
        preferred = [k for k in others if KINDS.index(k) > KINDS.index(record.kind)]
        if preferred:
            why += f"; {record.kind} is preferred over {' and '.join(preferred)}"
    why += via
    if skipped:
        why += "; skipped: " + "; ".join(skipped)
    return why


def check_own(lookup: KeyLookup, own_blob: bytes) -> list[str]:
    """What is wrong with what DNS publishes for our own address, given our key; [] if all right."""
    target = lookup.target
    if lookup.verdict is Verdict.NOT_CAPABLE:
        return [f"DNS publishes no key for {target.text}: {lookup.error}"]
    if lookup.verdict is Verdict.DENY:
        fix = f"; {_bogus_fix(lookup.error)}" if lookup.dnssec == BOGUS else ""
        return [f"peers would refuse our record: {lookup.error}{fix}"]
    problems = []
    if not target.is_self(lookup.gateway):
        problems.append(f"{lookup.record.kind} at {target.name} names gateway "
                        f"{records.gateway_text(lookup.gateway)}, not {target.text} itself")
    ours = records.key_id(own_blob)
    for record in lookup.records:
        if record.blob is not None and record.blob != own_blob:
            problems.append(
                f"{record.kind} at {record.owner} publishes key id {record.key_id} "
                f"({records.fingerprint(record.blob)}) but hostkey.pem has key id {ours} "
                f"({records.fingerprint(own_blob)})")
    return problems


# What to do about libunbound's why_bogus, by the words its reasons use; first match wins.
BOGUS_FIXES = (
    ("expired", "re-sign the zone: its signatures have expired"),
    ("before inception", "the signatures are not valid yet: check the signer's clock"),
    ("chain of trust", "publish the zone's DS at its parent (`keymgr ZONE ds` prints it), or "
                       "give peers that DS as a trust anchor"),
    ("verification failed", "the records changed after they were signed: sign the zone again"),
)


def _bogus_fix(error: str) -> str:
    return next((fix for words, fix in BOGUS_FIXES if words in error),
                "check the zone with `kdig +dnssec` and a validator")


def dnssec_advice(lookup: KeyLookup, delegation: bool = False) -> str | None:
    """For `oe verify`: what an insecure own record (or a client's delegating one, with
    `delegation`) costs and how to make it secure; None when it is secure, bogus (check_own
    says that) or not validated."""
    if lookup.dnssec != INSECURE:
        return None
    cost = ("peers accept its delegation only with allow_unsigned_delegation = true "
            "(RFC 4322 3.2.4.1)" if delegation else
            "peers with require_dnssec = true will not use our key")
    return (f"{lookup.target.name} is not DNSSEC-secure from the configured trust anchors: "
            f"{cost}; sign the zone and publish its DS at its parent (or give peers that DS as "
            f"a trust anchor)")
