"""The asyncio shell around IkeEngine: UDP sockets on 500 and 4500, the clock, the timer.

It only drains and re-arms, as aioquic's QuicConnectionProtocol does: every input goes into
the engine, then ``transmit()`` sends what the engine produced, re-arms the single timer and
hands the events to ``on_event``. ESP that arrives on 4500 (no non-ESP marker, RFC 3948 2.2)
goes to ``on_esp``; the datapath owns it.
"""

from __future__ import annotations

import asyncio
import socket
from typing import Callable

from oe.ike.constants import IKE_PORT, NAT_KEEPALIVE, NAT_T_PORT, NON_ESP_MARKER
from oe.ike.events import Event
from oe.ike.sa import IkeEngine

Addr = tuple[str, int]


class _Endpoint(asyncio.DatagramProtocol):
    def __init__(self, runner: "IkeRunner", local_port: int) -> None:
        self.runner = runner
        self.local_port = local_port

    def datagram_received(self, data: bytes, addr: Addr) -> None:
        self.runner._received(data, addr[:2], self.local_port)

    def error_received(self, exc: Exception) -> None:  # ICMP errors: the retransmits cope
        pass


class IkeRunner:
    """Owns the sockets and the timer of one IkeEngine.

    :param engine: the sans-IO engine.
    :param local_addr: address to bind both sockets to.
    :param on_event: called with every engine event, in order.
    :param on_esp: called with ``(esp_bytes, addr)`` for ESP-in-UDP arriving on 4500.
    :param fwmark: SO_MARK for both sockets (so oe's own IKE never loops into its TUN).
    :param nat_t_socket: a bound UDP 4500 socket that someone else reads (the datapath, which
        hands IKE up through ``receive``); the runner only sends on it.

    Admission of new peers is the engine's (``IkeEngine(admit_init=...)``): it runs after
    the COOKIE check, so a spoofed source never reaches it.
    """

    def __init__(self, engine: IkeEngine, local_addr: str, on_event: Callable[[Event], None],
                 on_esp: Callable[[bytes, Addr], None] | None = None,
                 fwmark: int | None = None, ports: tuple[int, int] = (IKE_PORT, NAT_T_PORT),
                 nat_t_socket: socket.socket | None = None) -> None:
        self.engine = engine
        self.local_addr = local_addr
        self.on_event = on_event
        self.on_esp = on_esp
        self.fwmark = fwmark
        self.ports = ports
        self.nat_t_socket = nat_t_socket
        self.transports: dict[int, asyncio.DatagramTransport] = {}
        self._loop: asyncio.AbstractEventLoop | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at: float | None = None

    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        family = socket.AF_INET6 if ":" in self.local_addr else socket.AF_INET
        for engine_port, port in zip((IKE_PORT, NAT_T_PORT), self.ports):
            if engine_port == NAT_T_PORT and self.nat_t_socket is not None:
                continue
            sock = socket.socket(family, socket.SOCK_DGRAM)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if self.fwmark is not None:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_MARK, self.fwmark)
            sock.bind((self.local_addr, port))
            transport, _ = await self._loop.create_datagram_endpoint(
                lambda p=engine_port: _Endpoint(self, p), sock=sock)
            self.transports[engine_port] = transport  # type: ignore[assignment]

    def close(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
        for t in self.transports.values():
            t.close()

    def now(self) -> float:
        assert self._loop is not None
        return self._loop.time()

    def send_esp(self, esp: bytes, addr: Addr) -> None:
        """Send ESP-in-UDP from our 4500 socket (RFC 3948: no marker, the SPI comes first)."""
        self._send(esp, addr, NAT_T_PORT)

    def _send(self, data: bytes, addr: Addr, local_port: int) -> None:
        if local_port == NAT_T_PORT and self.nat_t_socket is not None:
            try:
                self.nat_t_socket.sendto(data, addr)
            except OSError:  # a full buffer or an ICMP error: retransmission copes
                pass
        else:
            self.transports[local_port].sendto(data, addr)

    def _received(self, data: bytes, addr: Addr, local_port: int) -> None:
        if local_port == NAT_T_PORT and data != NAT_KEEPALIVE and data[:4] != NON_ESP_MARKER:
            if self.on_esp is not None and len(data) >= 8:
                self.on_esp(data, addr)
            return
        self.receive(data, addr, local_port)

    def receive(self, data: bytes, addr: Addr, local_port: int) -> None:
        """One IKE datagram (on 4500 with its non-ESP marker) for the engine."""
        self.engine.receive_datagram(data, addr, self.now(), local_port=local_port,
                                     local_addr=self.local_addr)
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
        unknown SPI.
        """
        while (event := self.engine.next_event()) is not None:
            self.on_event(event)
        for data, addr, local_port, _ in self.engine.datagrams_to_send(self.now()):
            self._send(data, addr, local_port)
        timer_at = self.engine.get_timer()
        if self._timer is not None and self._timer_at != timer_at:
            self._timer.cancel()
            self._timer = None
        if self._timer is None and timer_at is not None:
            assert self._loop is not None
            self._timer_at = timer_at
            self._timer = self._loop.call_at(timer_at, self._handle_timer)
