"""Clients' delegation lookups as DNS answered them, for the responder; sans-IO.

A client address (a TSi or TSr host that is not the peer's nor ours) maps to the KeyLookup of
its reverse name and until when it may be used (docs/gateway.md 4.2). Negative answers are
held too, for a short while, so a peer's retransmits and new requests do not start a lookup
each. Bounded: the oldest entry goes first; stale entries go when asked for.
Kept apart from oe.peerkeys on purpose: a delegating record's key speaks for the client only,
never for the gateway's own address (docs/gateway.md 4.3).
"""

from __future__ import annotations

from oe.dnskeys.choice import KeyLookup


class Delegations:
    """client address -> (its lookup, until when it holds), at most `capacity` of them."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self._entries: dict[str, tuple[KeyLookup, float]] = {}

    def __len__(self) -> int:
        return len(self._entries)

    def keep(self, client: str, lookup: KeyLookup, until: float) -> None:
        self._entries.pop(client, None)
        while len(self._entries) >= self.capacity:
            del self._entries[next(iter(self._entries))]
        self._entries[client] = (lookup, until)

    def get(self, client: str, now: float) -> KeyLookup | None:
        """The lookup held for `client`, None when none holds at `now`."""
        entry = self._entries.get(client)
        if entry is None:
            return None
        if entry[1] <= now:
            del self._entries[client]
            return None
        return entry[0]


__all__ = ["Delegations"]
