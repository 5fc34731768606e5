"""Does a client's record delegate to a gateway? pluto's "our client" and "his client" checks
(FreeS/WAN `fos_our_client`, `vos_our_client`, `vos_his_client`; RFC 4322 3.3), pure.

Both take a `KeyLookup` of the client's reverse name made by `choice.choose`, so the DNSSEC
rule is already applied (RFC 4322 3.2.4.1: a record names a gateway other than its own address
only if its answer is secure, or with allow_unsigned_delegation; bogus denies).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable

import dns.exception
import dns.name

from oe.dnskeys import records
from oe.dnskeys.choice import SECURE, KeyLookup, Verdict
from oe.dnskeys.records import KeyRecord
from oe.eroute import IPAddress
from oe.ike.auth import Identity, PeerKey
from oe.ike.constants import IdType


def _tries(lookup: KeyLookup) -> list[tuple[object, bytes | None]]:
    """(gateway, key blob) of each usable record, in RFC 4322 3.2 order."""
    if lookup.candidates:
        return [(c.gateway, c.blob) for c in lookup.candidates]
    return [(lookup.gateway, lookup.blob)]


def client_gateway(lookup: KeyLookup, local_addrs: Iterable[str],
                   our_key_blob: bytes | None) -> IPAddress | None:
    """The address of ours that one of our client's records names with our key (the first
    such record in RFC 4322 3.2 order: the gateway we act as for it), else None."""
    if lookup.verdict is not Verdict.KEY:
        return None
    ours = {ipaddress.ip_address(a) for a in local_addrs}
    return next((gateway for gateway, blob in _tries(lookup)
                 if gateway in ours and blob is not None and blob == our_key_blob), None)


def check_client(lookup: KeyLookup, local_addrs: Iterable[str],
                 our_key_blob: bytes | None) -> str | None:
    """Our client C: one of its usable records must name one of `local_addrs` as gateway and
    carry our key (docs/gateway.md 3, 4.1; RFC 4322 3.2: records are tried in order, a
    gateway that is down may come first). None if so, else the reason, worded as pluto's."""
    client = lookup.target.text
    if lookup.verdict is not Verdict.KEY:
        why = f": {lookup.error}" if lookup.error else ""
        return f"no record for our client {client} delegates us{why}"
    local_addrs = list(local_addrs)
    if client_gateway(lookup, local_addrs, our_key_blob) is not None:
        return None
    ours = {ipaddress.ip_address(a) for a in local_addrs}
    tries = _tries(lookup)
    if any(gateway in ours for gateway, _ in tries):
        return f"record for our client {client} has wrong key"
    return (f"record for our client {client} delegates to "
            f"{records.gateway_text(tries[0][0])}, not us")


def _usable(lookup: KeyLookup) -> tuple[KeyRecord, ...]:
    """The records of a lookup that may name a gateway: all of them when choose() let this
    name delegate (a secure answer, or a delegating record chosen, which it only does when
    delegation is allowed for the name); else only the chosen one (it names the client)."""
    if lookup.verdict is not Verdict.KEY or lookup.record is None:
        return ()
    if lookup.dnssec == SECURE or lookup.delegated_for is not None:
        return lookup.records
    return (lookup.record,)


def _names(record: KeyRecord, lookup: KeyLookup, peer_id: Identity) -> bool:
    """Does the record name the peer as its gateway: the same address for an address ID, the
    same name for an ID_FQDN? (An @FQDN gateway for an address ID needs that name's secure
    addresses: docs/gateway.md 5, not done here, so it does not match.)"""
    gateway = record.gateway if record.gateway is not None else lookup.target.self_gateway
    if peer_id.id_type == IdType.ID_FQDN:
        try:
            name = dns.name.from_text(peer_id.data.decode("ascii"))
        except (UnicodeDecodeError, dns.exception.DNSException):
            return False
        return isinstance(gateway, dns.name.Name) and gateway == name
    return peer_id.address() is not None and gateway == peer_id.address()


def check_his_client(lookup: KeyLookup, peer_id: Identity, peer_key: PeerKey) -> str | None:
    """His client S (RFC 4322 3.3 step 3): one of S's usable records names the peer as
    gateway, with the key the peer proved or with none. None if so, else the reason."""
    usable = _usable(lookup)
    if not usable:
        return lookup.error or f"no usable record for {lookup.target.text}"
    named = [r for r in usable if _names(r, lookup, peer_id)]
    if not named:
        gateway = usable[0].gateway if usable[0].gateway is not None else \
            lookup.target.self_gateway
        return (f"record for {lookup.target.text} delegates to "
                f"{records.gateway_text(gateway)}, not {peer_id}")
    numbers = peer_key.public_key.public_numbers()
    if any(r.key is None or (r.key.e, r.key.n) == (numbers.e, numbers.n) for r in named):
        return None
    return f"record for {lookup.target.text} names {peer_id} with another key " \
           f"(key id {named[0].key_id})"


__all__ = ["check_client", "check_his_client", "client_gateway"]
