"""Inbound ESP SPIs, unique among the live ones of the whole host.

The receiver chooses the SPI and finds its inbound SA by it alone (RFC 4303 section 2.1), so
the daemon's engines (one per address family) share one allocator: no two live CHILD SAs of
the host, in either family, get the same inbound SPI, however the random source behaves.
"""

from __future__ import annotations

from oe.ike.crypto import Rng

SPI_MIN = 256  # RFC 4303 section 2.1: 1-255 are reserved by IANA, 0 is local use


class SpiAllocator:
    """Hands out random 32-bit inbound SPIs that no live SA holds; ``release`` frees one."""

    def __init__(self, rng: Rng) -> None:
        self._rng = rng
        self._live: set[int] = set()

    def allocate(self) -> int:
        while True:
            spi = int.from_bytes(self._rng(4), "big")
            if spi >= SPI_MIN and spi not in self._live:
                self._live.add(spi)
                return spi

    def release(self, spi: int) -> None:
        self._live.discard(spi)

    def live(self) -> frozenset[int]:
        return frozenset(self._live)

    def __contains__(self, spi: int) -> bool:
        return spi in self._live

    def __len__(self) -> int:
        return len(self._live)
