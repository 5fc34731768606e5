"""IkeRunner on wildcard sockets (docs/gateway.md 1): every datagram goes into the engine with
the address of ours it was sent to (IP_PKTINFO, RFC 3542 6.1), and the answer leaves from that
address. Loopback 127.0.0.0/8 gives a host many addresses without root or a namespace."""

from __future__ import annotations

import asyncio
import socket

from ike_helpers import make_engine

from oe.ike.runner import IkeRunner

OURS = ("127.0.0.2", "127.0.0.3")
INITIATOR = "127.0.0.1"


def free_ports(n: int) -> list[int]:
    socks = [socket.socket(socket.AF_INET, socket.SOCK_DGRAM) for _ in range(n)]
    for s in socks:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


def test_answers_leave_from_the_address_contacted_and_others_are_dropped():
    async def run():
        b = make_engine(OURS[0], "b", {INITIATOR: "a"}, 2, local_addrs=frozenset(OURS))
        runner = IkeRunner(b, socket.AF_INET, lambda event: None, ports=tuple(free_ports(2)))
        await runner.start()
        loop = asyncio.get_running_loop()
        peer = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        peer.bind((INITIATOR, 0))
        peer.setblocking(False)
        try:
            for n, ours in enumerate(OURS + ("127.0.0.9",)):
                a = make_engine(INITIATOR, "a", {ours: "b"}, 10 + n)
                a.initiate(ours, 0)
                [(request, _, _, _)] = a.datagrams_to_send(0)
                peer.sendto(request, (ours, runner.ports[0]))
                try:
                    _, source = await asyncio.wait_for(loop.sock_recvfrom(peer, 65535), 0.5)
                except TimeoutError:
                    source = None
                assert source == ((ours, runner.ports[0]) if ours in OURS else None)
            assert sorted(info.local_addr for info in b.ike_sas()) == sorted(OURS)
            assert b.stats()["wrong_address_dropped"] == 1
        finally:
            peer.close()
            runner.close()
    asyncio.run(run())


class _Burst:
    """An engine stand-in with many events queued at once (a timer that failed 2,000
    negotiations, issue 14) and one datagram."""

    def __init__(self, n: int) -> None:
        self.events = list(range(n))
        self.out = [(b"x", ("127.0.0.1", 9), 500, "127.0.0.1")]

    def next_event(self):
        return self.events.pop(0) if self.events else None

    def datagrams_to_send(self, now):
        out, self.out = self.out, []
        return out

    def get_timer(self):
        return None


def test_an_event_handler_that_transmits_again_does_not_recurse():
    """The daemon's event handler calls transmit() itself (to send what it started): with
    thousands of events at once, that must not nest a call per event (RecursionError took
    the rest of the events with it), and every event still comes once, in order."""
    async def run():
        seen: list[int] = []
        runner = IkeRunner(_Burst(5000), socket.AF_INET,
                           lambda event: (seen.append(event), runner.transmit()))
        runner._loop = asyncio.get_running_loop()
        sent = []
        runner._send = lambda *datagram: sent.append(datagram)
        runner.transmit()
        assert seen == list(range(5000)) and len(sent) == 1

    asyncio.run(run())
