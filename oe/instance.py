"""One network namespace, one oe.

oe's routing table and rule, UDP 500 and 4500 and the nftables table `inet oe` belong to the
network namespace, not to a run directory: a second oe there would share them, and on its exit
take them from the first one, whose private traffic would then leave in clear (issue 15, 2).
So a running oe holds a lock per namespace: an abstract Unix socket, whose names are scoped to
the network namespace (unix(7)). The kernel releases it with the process, also on SIGKILL, so
what a crashed oe left behind (design.md section 6: fail closed) is taken over by the next
start, as intended.
"""

from __future__ import annotations

import errno
import socket
import struct
from pathlib import Path

from oe import control
from oe.errors import OeError

LOCK_NAME = b"\0oe: one per network namespace"
IKE_PORTS = (500, 4500)  # RFC 7296 section 2, RFC 3948 section 2


class InstanceError(OeError):
    """Another oe, or another IKE daemon, already runs in this network namespace."""


def lock(rundir: Path) -> socket.socket:
    """Take the namespace's lock, to hold while oe runs (or flushes); InstanceError if another
    oe holds it or serves `rundir`."""
    if control.daemon_running(rundir):
        raise InstanceError(f"another oe is running with run dir {rundir}")
    held = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        held.bind(LOCK_NAME)
        held.listen(1)  # so that a refused start can ask who holds it (SO_PEERCRED)
    except OSError as exc:
        held.close()
        if exc.errno != errno.EADDRINUSE:
            raise InstanceError(f"cannot take oe's namespace lock: {exc.strerror}") from None
        raise InstanceError(f"another oe{_holder()} is running in this network namespace "
                            f"(one namespace, one oe: it owns the routing table, the rule, "
                            f"UDP 500 and 4500 and nftables table inet oe)") from None
    return held


def claim(rundir: Path) -> socket.socket:
    """lock(), and make sure no other program has the IKE ports (another IKE daemon would
    share them with oe, each getting part of the other's messages)."""
    held = lock(rundir)
    busy = udp_ports_in_use(IKE_PORTS)
    if busy:
        held.close()
        raise InstanceError(f"UDP port {busy[0]} is in use in this network namespace "
                            f"(another IKE daemon? `ss -ulnp`): oe needs 500 and 4500 for itself")
    return held


def _holder() -> str:
    """ " (pid N)" of the process holding the lock, or "" if it cannot be told."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
        probe.setblocking(False)
        try:
            probe.connect(LOCK_NAME)
            pid, _, _ = struct.unpack("3i", probe.getsockopt(
                socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i")))
        except OSError:
            return ""
    return f" (pid {pid})"


def udp_ports_in_use(ports: tuple[int, ...]) -> list[int]:
    """Which of `ports` a UDP socket of this network namespace is bound to (/proc/net is the
    reading process's namespace's)."""
    bound = set()
    for name in ("udp", "udp6"):
        try:
            lines = (Path("/proc/net") / name).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            if len(fields) > 1 and ":" in fields[1]:
                bound.add(int(fields[1].rsplit(":", 1)[1], 16))
    return sorted(bound.intersection(ports))


__all__ = ["InstanceError", "lock", "claim", "udp_ports_in_use"]
