"""The control socket: <rundir>/oe.ctl, mode 0600, one JSON request and one JSON answer per line.

Request: {"command": "status", ...arguments}. Answer: {"ok": true, "result": ...} or
{"ok": false, "error": "one line"}. The daemon serves it; the CLI is the client.
"""

from __future__ import annotations

import asyncio
import json
import os
import socket
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


def daemon_running(rundir: Path) -> bool:
    """Whether something listens on the control socket."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        try:
            sock.connect(str(socket_path(rundir)))
        except OSError:
            return False
        return True
