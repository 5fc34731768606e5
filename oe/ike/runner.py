"""The asyncio shell around IkeEngine: UDP sockets on 500 and 4500, the clock, the timer.

It only drains and re-arms, as aioquic's QuicConnectionProtocol does: every input goes into
the engine, then ``transmit()`` sends what the engine produced, re-arms the single timer and
hands the events to ``on_event``. ESP that arrives on 4500 (no non-ESP marker, RFC 3948 2.2)
goes to ``on_esp``; the datapath owns it.

One engine serves every address of a family, so its sockets are bound to the wildcard address
with packet info (RFC 3542 6.1, Linux IP_PKTINFO): each datagram's destination goes into the
engine with it, and each answer leaves from the address the engine names (docs/gateway.md 1).
asyncio's DatagramTransport carries no ancillary data: the sockets are read with recvmsg()
from ``loop.add_reader`` and written with sendmsg().
"""

from __future__ import annotations

import asyncio
import socket
from typing import Callable

from oe import net
from oe.ike.constants import IKE_PORT, NAT_KEEPALIVE, NAT_T_PORT, NON_ESP_MARKER
from oe.ike.events import Event
from oe.ike.sa import IkeEngine

Addr = tuple[str, int]
RECV_SIZE = 65535


class IkeRunner:
    """Owns the sockets and the timer of one IkeEngine (one address family).

    :param engine: the sans-IO engine.
    :param family: ``socket.AF_INET`` or ``socket.AF_INET6``.
    :param on_event: called with every engine event, in order.
    :param on_esp: called with ``(esp_bytes, addr)`` for ESP-in-UDP arriving on 4500.
    :param fwmark: SO_MARK for both sockets (so oe's own IKE never loops into its TUN).
    :param nat_t_socket: a wildcard UDP 4500 socket that someone else reads (the datapath,
        which hands IKE up through ``receive``); the runner only sends on it.

    Admission of new peers is the engine's (``IkeEngine(admit_init=...)``): it runs after
    the COOKIE check, so a spoofed source never reaches it.
    """

    def __init__(self, engine: IkeEngine, family: int, on_event: Callable[[Event], None],
                 on_esp: Callable[[bytes, Addr], None] | None = None,
                 fwmark: int | None = None, ports: tuple[int, int] = (IKE_PORT, NAT_T_PORT),
                 nat_t_socket: socket.socket | None = None) -> None:
        self.engine = engine
        self.family = family
        self.on_event = on_event
        self.on_esp = on_esp
        self.fwmark = fwmark
        self.ports = ports
        self.sockets: dict[int, socket.socket] = {}
        if nat_t_socket is not None:
            self.sockets[NAT_T_PORT] = nat_t_socket
        self._owned: list[socket.socket] = []
        self._loop: asyncio.AbstractEventLoop | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at: float | None = None
        self._transmitting = False

    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        for engine_port, port in zip((IKE_PORT, NAT_T_PORT), self.ports):
            if engine_port in self.sockets:
                continue
            sock = net.udp_socket(self.family, None, port, self.fwmark)
            self.sockets[engine_port] = sock
            self._owned.append(sock)
            self._loop.add_reader(sock.fileno(), self._readable, sock, engine_port)

    def close(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
        for sock in self._owned:
            if self._loop is not None:
                self._loop.remove_reader(sock.fileno())
            sock.close()
        self._owned = []

    def now(self) -> float:
        assert self._loop is not None
        return self._loop.time()

    def send_esp(self, esp: bytes, addr: Addr, local_addr: str) -> None:
        """Send ESP-in-UDP from our 4500 socket (RFC 3948: no marker, the SPI comes first)."""
        self._send(esp, addr, NAT_T_PORT, local_addr)

    def _send(self, data: bytes, addr: Addr, local_port: int, local_addr: str) -> None:
        try:
            self.sockets[local_port].sendmsg([data], net.pktinfo(local_addr), 0, addr)
        except OSError:  # a full buffer or an ICMP error: retransmission copes
            pass

    def _readable(self, sock: socket.socket, local_port: int) -> None:
        """Drain the socket: each datagram with the address of ours it was sent to."""
        while True:
            try:
                data, ancdata, _, addr = sock.recvmsg(RECV_SIZE, net.PKTINFO_SPACE)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:  # an ICMP error queued for this socket: the retransmits cope
                continue
            local_addr = net.pktinfo_address(ancdata)
            if local_addr is not None:
                self._received(data, addr[:2], local_port, local_addr)

    def _received(self, data: bytes, addr: Addr, local_port: int, local_addr: str) -> None:
        if local_port == NAT_T_PORT and data != NAT_KEEPALIVE and data[:4] != NON_ESP_MARKER:
            if self.on_esp is not None and len(data) >= 8:
                self.on_esp(data, addr)
            return
        self.receive(data, addr, local_port, local_addr)

    def receive(self, data: bytes, addr: Addr, local_port: int, local_addr: str) -> None:
        """One IKE datagram (on 4500 with its non-ESP marker) to our ``local_addr``."""
        self.engine.receive_datagram(data, addr, self.now(), local_port=local_port,
                                     local_addr=local_addr)
        self.transmit()

    def _handle_timer(self) -> None:
        self._timer = None
        self._timer_at = None
        self.engine.handle_timer(self.now())
        self.transmit()

    def transmit(self) -> None:
        """Deliver the events, send what the engine has, re-arm the timer.

        Events first: a responder's CHILD SA must be in the datapath before the IKE_AUTH
        response leaves, or the initiator's first ESP packets (its held ones) would meet an
        unknown SPI. An ``on_event`` that calls ``transmit`` again (to send what it started)
        returns at once: this call drains what it would, so a burst of events (a timer that
        failed thousands of negotiations) never nests one call per event.
        """
        if self._transmitting:
            return
        self._transmitting = True
        try:
            while (event := self.engine.next_event()) is not None:
                self.on_event(event)
        finally:
            self._transmitting = False
        for data, addr, local_port, local_addr in self.engine.datagrams_to_send(self.now()):
            self._send(data, addr, local_port, local_addr)
        timer_at = self.engine.get_timer()
        if self._timer is not None and self._timer_at != timer_at:
            self._timer.cancel()
            self._timer = None
        if self._timer is None and timer_at is not None:
            assert self._loop is not None
            self._timer_at = timer_at
            self._timer = self._loop.call_at(timer_at, self._handle_timer)
