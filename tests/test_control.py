"""The control socket: JSON lines over a 0600 unix socket, errors as one line."""

import asyncio
import stat
import threading

import pytest

from oe import control
from oe.errors import OeError


@pytest.fixture
def daemon(tmp_path):
    """A control server on its own event loop thread, answering 'echo' and refusing 'fail'."""
    ready = threading.Event()
    running = {}

    async def handler(command, args):
        if command == "fail":
            raise OeError("no such peer: 192.0.2.9")
        return {"command": command, "args": args}

    async def main():
        running["loop"], running["stop"] = asyncio.get_running_loop(), asyncio.Event()
        async with await control.serve(tmp_path, handler):
            ready.set()
            await running["stop"].wait()

    thread = threading.Thread(target=asyncio.run, args=(main(),))
    thread.start()
    assert ready.wait(5)
    yield tmp_path
    running["loop"].call_soon_threadsafe(running["stop"].set)
    thread.join(5)


def test_request_and_answer(daemon):
    assert control.request(daemon, "echo", peer="192.0.2.2") == {
        "command": "echo", "args": {"peer": "192.0.2.2"}}
    assert control.daemon_running(daemon)


def test_socket_is_private(daemon):
    mode = (daemon / "oe.ctl").stat().st_mode
    assert stat.S_ISSOCK(mode) and stat.S_IMODE(mode) == 0o600


def test_refusal_becomes_control_error(daemon):
    with pytest.raises(control.ControlError, match="^no such peer: 192.0.2.9$"):
        control.request(daemon, "fail")


def test_no_daemon_is_a_clear_error(tmp_path):
    assert not control.daemon_running(tmp_path)
    with pytest.raises(control.ControlError, match="no oe daemon is listening on .*oe.ctl"):
        control.request(tmp_path, "status")
