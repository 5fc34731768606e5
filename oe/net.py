"""Sockets and netlink: the only network I/O outside the datapath's loops."""

from __future__ import annotations

import socket

# Documentation addresses (RFC 5737, RFC 3849): connecting a UDP socket to one sends nothing,
# it only makes the kernel pick the source address it would use on the default route.
_PROBE = {4: ("203.0.113.1", socket.AF_INET), 6: ("2001:db8::1", socket.AF_INET6)}


def default_source(version: int) -> str | None:
    """The address this host would send from on its default route, or None if it has none."""
    address, family = _PROBE[version]
    with socket.socket(family, socket.SOCK_DGRAM) as sock:
        try:
            sock.connect((address, 9))
        except OSError:
            return None
        return sock.getsockname()[0]
