"""Peers' public keys as DNS gave them, for as long as their TTL runs; sans-IO.

A key vouches for the identity it was published for and nothing else (an ID_FQDN "192.0.2.1"
is not that address), and only while its DNS answer is valid (a rotated or revoked key does not
stay good until restart). The IKE engines ask `get` (their `lookup_key` hook); the daemon feeds
`keep` every lookup it made and calls `sweep` when `next_timer` says.
"""

from __future__ import annotations

import ipaddress

from oe.ike.auth import Identity, PeerKey

KEY_GRACE = 30.0
"""Seconds a key is kept at least (a TTL of 0 must not fail its own negotiation), and between
two sweeps of keys past their TTL."""


def address_id(address: str) -> Identity:
    """The IKE ID a host's key from its reverse zone vouches for (RFC 4322: ID = address)."""
    return Identity.from_address(address)


def key_owner(identity) -> Identity:
    """The IKE ID of a KeyLookup's identity: an address, or a name (ID_FQDN, lower case)."""
    if isinstance(identity, (ipaddress.IPv4Address, ipaddress.IPv6Address)):
        return Identity.from_address(str(identity))
    return Identity.fqdn(identity.to_text(omit_final_dot=True).lower())


class PeerKeys:
    """(ID type, ID data) -> (RSA public key with the addresses it vouches for, expiry)."""

    def __init__(self) -> None:
        self._keys: dict[Identity, tuple[PeerKey, float]] = {}
        self._provenance: dict[Identity, str] = {}  # the record and DNSSEC state of each key
        self._next_sweep: float | None = None

    def __len__(self) -> int:
        return len(self._keys)

    def keep(self, lookup, now: float) -> None:
        """Keep a looked-up key under the identity that signs with it (the gateway a
        delegating record names, RFC 4322 3.2.4.1), for its TTL but at least long enough for
        the negotiation it was fetched for."""
        if lookup.key is None or lookup.delegated_for is not None:
            return  # a delegating record's key is not the client's, nor vouched for by G
        owner = key_owner(lookup.identity)
        key = lookup.key.public_key()
        # A key vouches for the address whose record published it, and nothing else: a
        # delegating record in D's zone lets the gateway speak for D, never for the gateway's
        # own address (only its own zone can). Records of one key add up.
        vouched = {lookup.target.address} - {None}
        old = self._keys.get(owner)
        if old is not None and old[1] > now and old[0].public_key.public_numbers() == \
                key.public_numbers():
            vouched |= old[0].addresses
        self._keys[owner] = (PeerKey(key, frozenset(vouched)), max(lookup.expires, now + KEY_GRACE))
        self._provenance[owner] = lookup.provenance
        if self._next_sweep is None:
            self._next_sweep = now + KEY_GRACE

    def get(self, identity: Identity, now: float) -> PeerKey | None:
        entry = self._keys.get(identity)
        if entry is None or entry[1] <= now:
            return None
        return entry[0]

    def provenance(self, identity: Identity) -> str | None:
        """The record kind and DNSSEC state of the key kept for `identity` (oe status)."""
        return self._provenance.get(identity) if identity in self._keys else None

    def forget(self, identity: Identity) -> None:
        """The key failed to verify: ask DNS afresh next time."""
        self._keys.pop(identity, None)
        self._provenance.pop(identity, None)

    def sweep(self, now: float) -> None:
        """Keys past their TTL go (a peer that returns is asked again)."""
        if self._next_sweep is None or now < self._next_sweep:
            return
        self._keys = {i: e for i, e in self._keys.items() if e[1] > now}
        self._provenance = {i: p for i, p in self._provenance.items() if i in self._keys}
        self._next_sweep = now + KEY_GRACE if self._keys else None

    def next_timer(self) -> float | None:
        return self._next_sweep


__all__ = ["KEY_GRACE", "PeerKeys", "address_id", "key_owner"]
