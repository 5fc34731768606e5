"""The control socket: <rundir>/oe.ctl, mode 0600, one JSON request and one JSON answer per line.

Request: {"command": "status", ...arguments}. Answer: {"ok": true, "result": ...} or
{"ok": false, "error": "one line"}. The daemon serves it; the CLI is the client.

One network namespace, one oe: oe's routing table and rule, UDP 500 and 4500 and the nftables
table `inet oe` belong to the network namespace, not to a run directory; a second oe there would
share them, and on its exit take them from the first one, whose private traffic would then leave
in clear (issue 15, 2). So a running oe also holds a lock per namespace: an abstract Unix
socket, whose names are scoped to the network namespace (unix(7)). The kernel releases it with
the process, also on SIGKILL, so what a crashed oe left behind (docs/architecture.md section 2: fail
closed) is taken over by the next start, as intended.
"""

from __future__ import annotations

import asyncio
import errno
import json
import os
import socket
import struct
from pathlib import Path
from typing import Awaitable, Callable

from oe.errors import OeError

SOCKET_NAME = "oe.ctl"
PID_NAME = "oe.pid"
MAX_LINE = 1 << 20

Handler = Callable[[str, dict], Awaitable[object]]


class ControlError(OeError):
    """The daemon could not be reached, or it refused the request."""


def socket_path(rundir: Path) -> Path:
    return rundir / SOCKET_NAME


def pid_path(rundir: Path) -> Path:
    """The daemon's pid, written once it serves the control socket, removed last on stop."""
    return rundir / PID_NAME


async def serve(rundir: Path, handler: Handler) -> asyncio.AbstractServer:
    """Listen on <rundir>/oe.ctl; each request line is answered by `handler(command, args)`.

    The handler raises OeError for a refusal, whose message goes back as the error.
    """
    path = socket_path(rundir)
    rundir.mkdir(parents=True, exist_ok=True)
    try:
        path.unlink()
    except FileNotFoundError:
        pass
    old = os.umask(0o177)  # created 0600: only root may drive the daemon
    try:
        return await asyncio.start_unix_server(
            lambda r, w: _session(r, w, handler), path=str(path), limit=MAX_LINE)
    finally:
        os.umask(old)


async def _session(reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                   handler: Handler) -> None:
    try:
        while line := await reader.readline():
            try:
                request = json.loads(line)
                command = request.pop("command")
                if not isinstance(command, str):
                    raise TypeError
            except (ValueError, TypeError, KeyError, AttributeError):
                answer: dict = {"ok": False, "error": "malformed control request"}
            else:
                try:
                    answer = {"ok": True, "result": await handler(command, request)}
                except OeError as exc:
                    answer = {"ok": False, "error": str(exc)}
            writer.write(json.dumps(answer).encode() + b"\n")
            await writer.drain()
    except (ConnectionError, asyncio.LimitOverrunError, ValueError):
        pass
    finally:
        writer.close()


def request(rundir: Path, command: str, timeout: float = 30.0, **args) -> object:
    """Send one request to the daemon and return its result; ControlError otherwise."""
    path = socket_path(rundir)
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(timeout)
        try:
            sock.connect(str(path))
        except (FileNotFoundError, ConnectionRefusedError):
            raise ControlError(f"no oe daemon is listening on {path} (is `oe start` running?)") \
                from None
        except PermissionError:
            raise ControlError(f"{path}: permission denied (run as root)") from None
        sock.sendall(json.dumps({"command": command, **args}).encode() + b"\n")
        data = b""
        try:
            while not data.endswith(b"\n"):
                chunk = sock.recv(65536)
                if not chunk:
                    break
                data += chunk
        except socket.timeout:
            raise ControlError(f"the oe daemon did not answer '{command}' within {timeout:g} s") \
                from None
    try:
        answer = json.loads(data)
    except ValueError:
        raise ControlError(f"the oe daemon closed the connection during '{command}'") from None
    if not answer.get("ok"):
        raise ControlError(answer.get("error", "refused"))
    return answer.get("result")


LOCK_NAME = b"\0oe: one per network namespace"
IKE_PORTS = (500, 4500)  # RFC 7296 section 2, RFC 3948 section 2


class InstanceError(ControlError):
    """Another oe, or another IKE daemon, already runs in this network namespace."""


def lock_namespace(rundir: Path) -> socket.socket:
    """Take the namespace's lock, to hold while oe runs (or flushes); InstanceError if another
    oe holds it or serves `rundir`."""
    if daemon_running(rundir):
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


def claim_namespace(rundir: Path) -> socket.socket:
    """lock_namespace(), and make sure no other program has the IKE ports (another IKE
    daemon would share them with oe, each getting part of the other's messages)."""
    held = lock_namespace(rundir)
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


def notify(*states: str) -> bool:
    """sd_notify(3) without libsystemd: one datagram of "KEY=value" lines to $NOTIFY_SOCKET
    (a path, or "@name" in the abstract namespace), when systemd runs us as Type=notify.
    False if there is no such socket or it cannot be reached (never fatal)."""
    address = os.environ.get("NOTIFY_SOCKET", "")
    if not address.startswith(("/", "@")):
        return False
    if address.startswith("@"):
        address = "\0" + address[1:]
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
        try:
            sock.sendto("\n".join(states).encode(), address)
        except OSError:
            return False
    return True


def daemon_running(rundir: Path) -> bool:
    """Whether something listens on the control socket."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        try:
            sock.connect(str(socket_path(rundir)))
        except OSError:
            return False
        return True
