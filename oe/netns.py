"""Small worlds of network namespaces, for `oe demo` and the end-to-end tests.

A World is a switch namespace holding bridges (br0 and any `bridge(name)` adds), and hosts
(namespaces) each joined to a bridge by a veth pair (eth0; `attach` adds eth1, ... on another
bridge: a router), with addresses from the documentation ranges. Everything it makes carries the
world's unique prefix; `close()` stops the processes it started (by pid) and deletes its
namespaces, and nothing of the machine's own interfaces, routes or rules is touched. While a
world is open, SIGTERM interrupts its owner as Ctrl-C does (KeyboardInterrupt), so the `with`
block or `finally` that closes the world runs then too.

    with World("oedemo") as world:
        alice = world.host("alice", "192.0.2.10/24", "2001:db8::10/64")
        world.run(alice, "ping", "-c1", "192.0.2.20")

    with World("oegw") as world:                      # a LAN behind a router
        world.bridge("lan")
        gw = world.host("gw", "192.0.2.1/24")
        world.attach(gw, "lan", "198.51.100.1/24")    # gw's eth1
        a1 = world.host("a1", "198.51.100.10/24", bridge="lan")
        world.route(a1, "default via 198.51.100.1")
"""

from __future__ import annotations

import os
import signal
import subprocess
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from oe.errors import OeError


class NetnsError(OeError):
    """A namespace, link or address could not be set up."""


class _SigtermAsInterrupt:
    """SIGTERM raises KeyboardInterrupt in the main thread while any world is open.

    Without it SIGTERM (systemd, `timeout`, a CI runner) would end the owner at once and leave
    namespaces and their processes behind. Only the first SIGTERM interrupts; later ones are
    ignored until the last world is closed, so they cannot cut the tear-down short. A handler
    the program installed itself is left alone.
    """

    def __init__(self) -> None:
        self.worlds = 0
        self.previous = None

    def hold(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            return
        self.worlds += 1
        if self.worlds == 1 and signal.getsignal(signal.SIGTERM) == signal.SIG_DFL:
            self.previous = signal.signal(signal.SIGTERM, self._interrupt)

    def release(self) -> None:
        if threading.current_thread() is not threading.main_thread() or not self.worlds:
            return
        self.worlds -= 1
        if self.worlds == 0 and self.previous is not None:
            signal.signal(signal.SIGTERM, self.previous)
            self.previous = None

    @staticmethod
    def _interrupt(signum, frame) -> None:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        raise KeyboardInterrupt


_sigterm = _SigtermAsInterrupt()


def _ip(*args: str) -> None:
    proc = subprocess.run(["ip", *args], capture_output=True, text=True)
    if proc.returncode != 0:
        raise NetnsError(f"ip {' '.join(args)}: {proc.stderr.strip() or 'failed'}")


@dataclass
class Host:
    name: str
    """The namespace's name (world prefix + host name)."""
    short: str
    """The host's name in the world (alice, bob, ...)."""
    addresses: tuple[str, ...]
    """Interface addresses with their prefix length."""
    dir: Path
    """A directory for this host's files (config, run dir, logs)."""
    port: str = ""
    """Its eth0's other end on the bridge, in the switch namespace: where to watch its wire."""
    ports: dict[str, str] = field(default_factory=dict)
    """Each interface's other end on its bridge, by interface name (eth0 too)."""
    processes: list[subprocess.Popen] = field(default_factory=list)

    @property
    def address(self) -> str:
        """The first address, without its prefix length."""
        return self.addresses[0].split("/")[0]

    def address6(self) -> str | None:
        return next((a.split("/")[0] for a in self.addresses if ":" in a), None)


class World:
    """Namespaces joined by a bridge; torn down completely by close()."""

    _prefixes: set[str] = set()
    """Prefixes of this process's worlds not closed yet: two worlds at once (a test's own
    beside a module's) must not share namespace names."""

    def __init__(self, prefix: str, workdir: Path) -> None:
        base = self.prefix = f"{prefix}{os.getpid() % 100000}"
        while self.prefix in World._prefixes:
            self.prefix = f"{base}w{len(World._prefixes)}"
        World._prefixes.add(self.prefix)
        self.workdir = workdir
        self.switch = f"{self.prefix}-sw"
        self.hosts: dict[str, Host] = {}
        self._namespaces: list[str] = []
        self._processes: list[subprocess.Popen] = []
        self._opened = False
        self._links = 0
        """veth pairs made: numbers their outer ends, unique in the switch namespace."""

    def open(self) -> "World":
        """The switch namespace and its bridge; on any failure, nothing is left behind."""
        self.workdir.mkdir(parents=True, exist_ok=True)
        if not self._opened:
            self._opened = True
            _sigterm.hold()
        try:
            self._add_namespace(self.switch)
            self.bridge("br0")
        except BaseException:
            self.close()
            raise
        return self

    def _add_namespace(self, name: str) -> None:
        _ip("netns", "add", name)
        self._namespaces.append(name)  # before anything else can fail: close() deletes it
        _ip("-n", name, "link", "set", "lo", "up")

    def bridge(self, name: str) -> str:
        """Another bridge in the switch namespace (a LAN); hosts join it by `bridge=` or
        `attach`. It goes with the switch namespace on close()."""
        _ip("-n", self.switch, "link", "add", name, "type", "bridge")
        _ip("-n", self.switch, "link", "set", name, "up")
        return name

    def host(self, short: str, *addresses: str, mtu: int = 1500, bridge: str = "br0") -> Host:
        """A namespace with eth0 on the bridge and these addresses (CIDR notation)."""
        name = f"{self.prefix}-{short}"
        self._add_namespace(name)
        host = Host(name, short, (), self.workdir / short)
        host.dir.mkdir(parents=True, exist_ok=True)
        self.hosts[short] = host
        host.port = self.attach(host, bridge, *addresses, ifname="eth0", mtu=mtu)
        return host

    def attach(self, host: Host, bridge: str, *addresses: str, ifname: str = "eth1",
               mtu: int = 1500) -> str:
        """A further interface `ifname` of the host on `bridge`, with these addresses (CIDR
        notation, appended to host.addresses); returns its other end's name on the bridge."""
        outer = f"v{self._links}{self.prefix}"[:15]
        self._links += 1
        _ip("link", "add", outer, "netns", self.switch, "type", "veth", "peer", "name", ifname,
            "netns", host.name)
        _ip("-n", self.switch, "link", "set", outer, "master", bridge, "mtu", str(mtu), "up")
        for address in addresses:
            extra = ["nodad"] if ":" in address else []
            _ip("-n", host.name, "addr", "add", address, "dev", ifname, *extra)
        _ip("-n", host.name, "link", "set", ifname, "mtu", str(mtu), "up")
        host.addresses += tuple(addresses)
        host.ports[ifname] = outer
        return outer

    def route(self, host: Host, route: str) -> None:
        """`ip route add <route>` in the host's namespace ("default via 198.51.100.1",
        "198.51.101.0/24 via 192.0.2.2"); the family follows from the addresses named."""
        words = route.split()
        family = "-6" if any(":" in word for word in words) else "-4"
        _ip("-n", host.name, family, "route", "add", *words)

    def run(self, host: Host, *argv: str, check: bool = True, timeout: float = 60,
            **kwargs) -> subprocess.CompletedProcess:
        """Run a command inside the host's namespace and wait for it."""
        proc = subprocess.run(["ip", "netns", "exec", host.name, *argv], capture_output=True,
                              text=True, timeout=timeout, **kwargs)
        if check and proc.returncode != 0:
            raise NetnsError(f"{host.short}: {' '.join(argv)} exited {proc.returncode}: "
                             f"{(proc.stderr or proc.stdout).strip()[-500:]}")
        return proc

    def spawn(self, host: Host, *argv: str, log: str | None = None, **kwargs) -> subprocess.Popen:
        """Start a process inside the host's namespace; close() stops it by its pid."""
        out = open(host.dir / log, "ab") if log else subprocess.DEVNULL
        try:
            # `ip netns exec` execs the command, so the pid is the command's own.
            proc = subprocess.Popen(["ip", "netns", "exec", host.name, *argv],
                                    stdin=subprocess.DEVNULL, stdout=out, stderr=out, **kwargs)
        finally:
            if log:
                out.close()
        host.processes.append(proc)
        self._processes.append(proc)
        return proc

    @staticmethod
    def stop(proc: subprocess.Popen, sig: int = signal.SIGTERM, timeout: float = 10) -> None:
        if proc.poll() is None:
            proc.send_signal(sig)
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()

    def close(self) -> None:
        for proc in reversed(self._processes):
            self.stop(proc)
        for name in reversed(self._namespaces):
            subprocess.run(["ip", "netns", "del", name], capture_output=True)
        self._namespaces.clear()
        self._processes.clear()
        World._prefixes.discard(self.prefix)
        if self._opened:
            self._opened = False
            _sigterm.release()

    def __enter__(self) -> "World":
        return self.open()

    def __exit__(self, *exc) -> None:
        self.close()


def wait_for(predicate, timeout: float, interval: float = 0.05) -> bool:
    """Poll until predicate() is true or the timeout passes (process start-up, not timing)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return bool(predicate())
