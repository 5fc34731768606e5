"""`oe start`: the daemon. asyncio glue that owns the clock, the timers, the signals, the
sockets, the datapath, netlink and the control socket. It feeds what happens into the pure
parts and carries out the commands they return (oe.commands, one `match` in _run); every
decision is made there: oe.opportunist (policy, shunts, tunnels), oe.lifecycle (rekey or
retire, liveness, childless IKE SAs), oe.admission (the responder's door), oe.peerkeys (keys
by TTL) and oe.routeplan (routes and the inbound table). It sleeps until the earliest of their
timers (next_timer) or the next event. The packet's way: docs/architecture.md section 1.

Rule 1: only this process changes policy, shunts, SAs and their timers (Hannum's PF_KEY
critique). Rule 2: everything installed in the system (TUN, routes, rule, sockets, control
socket, pid file) is recorded and removed on stop, also after an error half-way through
start-up.
"""

from __future__ import annotations

import asyncio
import dataclasses
import ipaddress
import itertools
import logging
import os
import signal
import socket
import threading
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from oe import config as oeconfig
from oe import check, control, hostkey, inbound, logs, net, routing, tun
from oe.datapath import Datapath, Direction, Encap, SaSpec, esp_overhead
from oe.dnskeys.fetcher import KeyFetcher
from oe.admission import Admission
from oe.commands import Reroute, Steer
from oe.errors import OeError
from oe.executor import Executor
from oe.eroute import ErouteTable
from oe.ike.constants import HALF_OPEN_COOKIE_THRESHOLD, NAT_T_PORT
from oe.lifecycle import Lifecycle, SaTimes
from oe.logs import log_to
from oe.ike.runner import IkeRunner
from oe.ike.sa import IkeConfig, IkeEngine
from oe.ike.spis import SpiAllocator
from oe.flows import ANY_PORT, Pair, child_flow
from oe.opportunist import Limits, Opportunist, Ours
from oe.peerkeys import PeerKeys
from oe.pmtu import PathMtuDriver
from oe.policygroups import prospective_table
from oe.policygroups.loader import load_policy
from oe.routeplan import RoutePlan
from oe.status import LimitStatus, Status, build_status

log = logging.getLogger("oe")


def tun_mtu(link_mtu: int, families: Iterable[int]) -> int:
    """The TUN's MTU: the smallest MTU of our interfaces less ESP-in-UDP's worst case in the
    family of outer header that leaves the most room. Each SA still has its own inner MTU: a
    larger inner packet gets a too-big from the datapath and TCP's MSS is clamped to it
    (docs/pmtu.md), so sizing for IPv6's 20 more bytes would only shrink IPv4's packets."""
    return link_mtu - min(esp_overhead(family, "udp") for family in families)


class StartError(OeError):
    """oe cannot start: privileges, host key, TUN or addresses."""


@dataclass
class _IkeSide:
    """One address family's IKE engine (every address of ours in the family: its
    ``config.local_addrs``) and its asyncio runner."""

    version: int
    engine: IkeEngine
    runner: IkeRunner


class Daemon(Executor):
    """The process: start, stop, control socket, the datapath's SAs; its reactions to events
    are oe.executor's."""

    def __init__(self, confdir: Path, rundir: Path) -> None:
        self.confdir = confdir
        self.rundir = rundir
        self.config = oeconfig.load(confdir)
        policy = load_policy(confdir)
        for warning in policy.warnings:
            log.warning("%s", warning)
        self.key = hostkey.load(hostkey.hostkey_path(confdir))
        self.opportunist = Opportunist(prospective_table(policy), _limits(self.config))
        self.keys = PeerKeys()
        self.lifecycle = Lifecycle(self.opportunist, SaTimes(
            self.config.ike.sa_lifetime, self.config.ike.rekey_margin, self.config.ike.dpd_delay),
            self.config.limits.children_per_ike)
        self.admission = Admission(self.opportunist, self.keys, self.config.limits.lookups,
                                   _gateway_subnets(self.config), hostkey.public_blob(self.key))
        self.routes = RoutePlan()
        self.fetcher = KeyFetcher.from_config(self.config.dns, confdir)
        # shared by the engines of both families: inbound SPIs and sa_ids unique on the host
        self.spis = SpiAllocator(os.urandom)
        self.sa_ids = itertools.count(1)
        self.sides: dict[int, _IkeSide] = {}
        self.counters = {"children_refused": 0}
        self.datapath: Datapath | None = None
        self.pmtu = PathMtuDriver()  # each peer's path MTU search (issue 17, docs/pmtu.md)
        self.steering: routing.Steering | None = None
        self._inbound = False  # the inbound table is installed
        self.clients: inbound.Clients | None = None  # [gateway]: subnets, LAN (docs/gateway.md 2)
        self._wake = asyncio.Event()  # an event may have moved the earliest timer
        # pyroute2's synchronous API runs an event loop of its own, so every netlink call runs
        # in this one thread, which also keeps route changes in order.
        self._netlink = ThreadPoolExecutor(max_workers=1, thread_name_prefix="oe-netlink")
        self._refusals: tuple[set, set] | None = None  # queued for nft (Executor._refuse)
        self._refusals_lock = threading.Lock()
        self.tun_fd = -1
        self.sockets: list[socket.socket] = []
        self.stopping = asyncio.Event()
        self.flush_on_stop = False  # `oe stop --flush`: leave no fail-closed state
        self.namespace_lock: socket.socket | None = None  # held while running (oe.control)
        self.loop: asyncio.AbstractEventLoop | None = None
        # (version, IKE SA, outbound SPI) -> the datapath's handle: outbound SPIs are the
        # peers' choice, unique only within one IKE SA (issue 10, 1).
        self.sa_out: dict[tuple[int, int, int], int] = {}
        self.on_started = lambda: None
        """Called once the daemon serves its control socket (`oe start --daemon` waits for it)."""

    # ------------------------------------------------------------------ start and stop

    async def run(self) -> None:
        if os.geteuid() != 0:
            raise StartError("oe start needs root (CAP_NET_ADMIN for the TUN device and routes)")
        self.loop = asyncio.get_running_loop()
        try:
            await self._start()
            self.on_started()
            log.info("oe started: %s, policy %d entries, table %d", self._addresses_text(),
                     len(self.opportunist.base), self.config.route_table)
            await self.stopping.wait()
            control.notify("STOPPING=1")
        finally:
            await self._shutdown()

    async def _start(self) -> None:
        held = control.claim_namespace(self.rundir)
        try:  # refused before anything is in place: nothing to undo, one line
            await self._in_netlink(routing.check_table, self.config.route_table,
                                   self.config.tun_name)
        except OeError:
            held.close()
            raise
        self.namespace_lock = held
        addresses = await self._in_netlink(net.host_addresses, self.config.addresses,
                                           self.config.tun_name)
        if not addresses:
            raise StartError("no address to run IKE on: set addresses in oe.conf")
        self.opportunist.ours = self._ours(a for family in addresses.values() for a in family)
        self.tun_fd = tun.open_tun(self.config.tun_name)
        path_mtu = min((await self._in_netlink(
            net.address_mtus, [a for family in addresses.values() for a in family])).values())
        mtu = tun_mtu(path_mtu, addresses)
        await self._in_netlink(tun.set_up, self.config.tun_name, mtu)
        self.datapath = Datapath(max_holds=self.config.limits.holds, df=self.config.esp.df)
        self.datapath.replace_eroutes(self.opportunist.table())
        self.opportunist.take_changes()  # the whole table is in
        fds = {}
        for version, family in sorted(addresses.items()):
            fds.update(self._open_side(version, family))
        await asyncio.gather(*(side.runner.start() for side in self.sides.values()))
        self.datapath.start(self.tun_fd, tun_mtu=mtu, **fds)
        self.loop.add_reader(self.datapath.events_fd, self._datapath_events)
        self.clients = await self._in_netlink(self._gateway, self.config.gateway.subnets)
        await self._install_routes()
        await self._in_netlink(self._install_inbound)
        self._prefetch = self.loop.create_task(self._prefetch_own(addresses))
        self.control = await control.serve(self.rundir, self._control)
        control.pid_path(self.rundir).write_text(f"{os.getpid()}\n")
        for signum in (signal.SIGTERM, signal.SIGINT):
            self.loop.add_signal_handler(signum, self.stopping.set)
        self.loop.add_signal_handler(
            signal.SIGHUP, lambda: self.loop.create_task(self._reload_logged()))
        self.lifecycle.started(self.loop.time())
        self._timer_task = self.loop.create_task(self._timers())
        # Type=notify (contrib/oe.service): ready once routes, datapath and control socket are up
        control.notify("READY=1", f"STATUS=OE on {self._addresses_text()}",
                       f"MAINPID={os.getpid()}")

    def _addresses_text(self) -> str:
        """Our addresses for the log: each when few, else how many per family."""
        families = [sorted(s.engine.config.local_addrs) for s in self.sides.values()]
        if sum(map(len, families)) <= 4:
            return ", ".join(a for family in families for a in family)
        return ", ".join(f"{len(f)} IPv{v} addresses" for v, f in zip(self.sides, families))

    def _open_side(self, version: int, addresses: tuple[str, ...]) -> dict[str, int]:
        """The family's engine and runner on wildcard sockets (docs/gateway.md 1): however many
        addresses, one UDP 500 and one UDP 4500 socket, whose packet info names ours."""
        family = socket.AF_INET if version == 4 else socket.AF_INET6
        mark = self.config.bypass_mark
        nat_t = net.udp_socket(family, None, NAT_T_PORT, mark)
        esp = net.raw_socket(family, socket.IPPROTO_ESP if hasattr(socket, "IPPROTO_ESP") else 50,
                             mark)
        clear = net.raw_socket(family, socket.IPPROTO_RAW, mark)
        self.sockets += [nat_t, esp, clear]
        ike = IkeConfig(local_addrs=frozenset(addresses), private_key=self.key,
                        **self._ike_terms())
        engine = IkeEngine(ike, rng=os.urandom, lookup_key=self._lookup_key,
                           child_policy=self._child_policy,
                           spis=self.spis, sa_ids=self.sa_ids,
                           cookie_required=self._cookie_required, admit_init=self._admit_init)
        runner = IkeRunner(engine, family, lambda event, v=version: self._ike_event(v, event),
                           fwmark=mark, nat_t_socket=nat_t)
        self.sides[version] = _IkeSide(version, engine, runner)
        suffix = "4" if version == 4 else "6"
        return {f"udp{suffix}": nat_t.fileno(), f"esp{suffix}": esp.fileno(),
                f"pass{suffix}": clear.fileno()}

    def _in_netlink(self, fn, *args):
        return self.loop.run_in_executor(self._netlink, fn, *args)

    async def _prefetch_own(self, addresses: dict[int, tuple[str, ...]]) -> None:
        """Our own record, looked up once at start: the resolver's thread, the trust anchors'
        validation and our zone's keys are ready before a peer's lookup needs them (5 ms off
        each side's first negotiation, bench/scale.py). Whether the record carries our key is
        `oe verify`'s business; this lookup only warms the resolver."""
        first = next((found[0] for found in addresses.values() if found), None)
        if first is not None:
            await self.fetcher.fetch(first)

    def _reroute(self, command: Reroute) -> None:
        """Tunnels' peers' host routes, one each (in the netlink thread)."""
        routing.reroute(self.steering, self.config.tun_name, command.replace, command.delete)

    def _steer(self, steer: Steer) -> None:
        """(Re)install oe's routes and rule (in the netlink thread)."""
        self.steering = routing.install(
            self.config.tun_name, list(steer.trap), list(steer.exempt), clear=list(steer.clear),
            prohibit=list(steer.private), table=self.config.route_table,
            priority=self.config.rule_priority, mark=self.config.bypass_mark)

    def _nameserver_addresses(self) -> list[str]:
        """The nameservers we ask, by address (a DoH/DoT URL has none to exempt)."""
        return [ns for ns in self.fetcher.nameservers() if _is_address(ns)]

    async def _install_routes(self) -> None:
        await self._in_netlink(self._steer, self.routes.steer(
            self.opportunist.base, self._nameserver_addresses(), self.config.gateway.subnets))
        for ns in self.fetcher.nameservers():
            if _is_address(ns) and ipaddress.ip_address(ns).is_loopback:
                log.warning("nameserver %s is a local stub: the servers it forwards to are not "
                            "exempt from trapping; list them in oe.conf [dns] nameservers or in "
                            "policies/clear", ns)
        lan = self.clients.lan if self.clients is not None else ()  # stays strict (RFC 3704)
        for name in routing.loosen_rp_filter([n for n in net.interface_names(
                exclude=self.config.tun_name) if n not in lan]):
            log.info("set %s = 2 (loose): replies to trapped peers arrive on the real interface",
                     name)

    def _install_inbound(self, base: ErouteTable | None = None) -> None:
        """(Re)build the inbound cleartext policy for a policy (default: the current one)."""
        policy = self.opportunist.base if base is None else base
        exempt = [*self._nameserver_addresses(), *self.config.gateway.subnets]
        inbound.apply(inbound.ruleset(self.config.tun_name, inbound.protected(policy, exempt),
                                      set(self.routes.refused), self.clients))
        self._inbound = True

    def _gateway(self, subnets: tuple[str, ...]) -> inbound.Clients | None:
        """Forwarding for the clients behind us (docs/gateway.md 2): what an earlier run left
        (a crash) or an older [gateway] turned on is put back first, from the record in the
        run dir; then the interfaces leading to the subnets, the TUN and the WAN get it.
        Subnets no interface leads to are refused, as `oe check` refuses them."""
        tun = self.config.tun_name
        lan, wan = net.gateway_interfaces(subnets, tun) if subnets else ((), [])
        if subnets and not lan:
            raise OeError(f"[gateway] subnets: no interface has a route into "
                          f"{', '.join(subnets)}")
        record = self.rundir / routing.FORWARDING_RECORD
        for name in routing.restore_forwarding(record):
            log.info("restored %s", name)
        if not subnets:
            return None
        networks = tuple(ipaddress.ip_network(s) for s in subnets)
        changed = routing.enable_forwarding({n.version for n in networks}, list(lan), tun, wan,
                                            record)
        for name, old in changed:
            log.info("changed %s (was %s): forwarding for [gateway] subnets", name, old)
        return inbound.Clients(networks, lan, routing.opened(changed, wan))

    def _update_inbound(self) -> None:
        """The refused pairs queued since the last nft run, in one nft run (netlink thread)."""
        with self._refusals_lock:
            (add, remove), self._refusals = self._refusals, None
        try:
            inbound.apply(inbound.refused_update(add, remove))
        except OeError as exc:
            log.error("%s", exc)

    async def _shutdown(self) -> None:
        """Send DELETEs, then take out everything start() put in place, in reverse.

        A start refused because another oe runs (here or with this run dir) put nothing in
        place, and must take nothing of the other's (issue 15, 1 and 2)."""
        if self.namespace_lock is None:
            self._netlink.shutdown(wait=True)
            return
        for side in self.sides.values():
            for sa_id in self.lifecycle.ike_sas(side.version):
                try:
                    side.engine.delete_ike(sa_id, self.loop.time())
                except OeError:
                    pass
            side.runner.transmit()
        if self.sides:
            await asyncio.sleep(0.2)  # let the DELETEs leave before the sockets close
        if getattr(self, "_timer_task", None) is not None:
            self._timer_task.cancel()
        if getattr(self, "control", None) is not None:
            self.control.close()
        try:
            control.socket_path(self.rundir).unlink()
        except FileNotFoundError:
            pass
        if self.steering is not None and self.flush_on_stop:
            await self._in_netlink(routing.remove, self.steering)
        elif self.steering is not None:
            private = await self._in_netlink(routing.fail_closed, self.steering)
            if private:
                log.info("private destinations stay unreachable until oe starts again "
                         "(or `oe flush`): %s", ", ".join(private))
        if self._inbound:
            keep = not self.flush_on_stop and bool(inbound.protected(self.opportunist.base, []))
            try:
                await self._in_netlink(inbound.stop, keep)
            except OeError as exc:
                log.error("%s", exc)
        try:  # what [gateway] turned on (docs/gateway.md 2)
            for name in routing.restore_forwarding(self.rundir / routing.FORWARDING_RECORD):
                log.info("restored %s", name)
        except OeError as exc:
            log.error("%s", exc)
        if self.datapath is not None:
            self.loop.remove_reader(self.datapath.events_fd)
            self.datapath.stop()
        for side in self.sides.values():
            side.runner.close()
        for sock in self.sockets:
            sock.close()
        self._netlink.shutdown(wait=True)
        if self.tun_fd >= 0:
            os.close(self.tun_fd)
        self.namespace_lock.close()
        try:  # last: `oe stop` waits for it to go
            control.pid_path(self.rundir).unlink()
        except FileNotFoundError:
            pass
        log.info("oe stopped")

    # ------------------------------------------------------------------ the datapath's SAs

    def _install_child(self, version: int, sa_id: int, child):
        """Put both SAs of a CHILD SA into the datapath with exactly the negotiated selectors
        (child_flow). Returns (pair, narrowing, outbound handle), or None when refused: by
        selectors oe cannot enforce (the CHILD SA is deleted), or by the datapath (an SPI or a
        key installed already: a replayed exchange must never restart a sequence counter)."""
        try:
            pair, (proto, sport, dport) = child_flow(child.local_ts, child.remote_ts)
        except ValueError as exc:
            return self._refuse_child(version, sa_id, child, f"selectors oe cannot enforce: {exc}")
        local_ports = (sport, sport) if sport else ANY_PORT
        remote_ports = (dport, dport) if dport else ANY_PORT
        encap = Encap.UDP if child.udp_encap else Encap.ESP
        lifetime, soft = self.lifecycle.times.lifetime, self.lifecycle.times.soft
        common = dict(local=child.local_addr, peer=child.remote_addr, encap=encap,
                      local_port=child.local_port or NAT_T_PORT,
                      peer_port=child.remote_port or NAT_T_PORT, esn=child.esn, proto=proto)
        # the peer's path as searched so far (at first the base size, RFC 8899 5.1.2), below
        # the route's MTU
        common["path_mtu"] = self.pmtu.install(
            str(child.remote_addr), ipaddress.ip_address(child.remote_addr).version,
            net.route_mtu(child.remote_addr, self.config.bypass_mark, local=child.local_addr),
            self.loop.time())
        key = (version, sa_id, child.spi_out)
        if key in self.sa_out:
            return self._refuse_child(version, sa_id, child,
                                      f"outbound SPI {child.spi_out:08x} already in use")
        try:
            self.datapath.add_sa(SaSpec(spi=child.spi_in, direction=Direction.IN,
                                        key=child.key_in,
                                        src_ts=str(pair.dst), dst_ts=str(pair.src),
                                        sport=remote_ports, dport=local_ports,
                                        hard_time=lifetime + 60, **common))
        except ValueError as e:
            return self._refuse_child(version, sa_id, child, str(e))
        try:
            handle = self.datapath.add_sa(SaSpec(spi=child.spi_out, direction=Direction.OUT,
                                                 key=child.key_out, src_ts=str(pair.src),
                                                 dst_ts=str(pair.dst), sport=local_ports,
                                                 dport=remote_ports, soft_time=soft,
                                                 hard_time=lifetime, **common))
        except ValueError as e:
            self.datapath.del_sa(child.spi_in, "in")
            return self._refuse_child(version, sa_id, child, str(e))
        self.sa_out[key] = handle
        return pair, (proto, sport, dport), handle

    def _refuse_child(self, version: int, sa_id: int, child, why: str) -> None:
        """A CHILD SA oe will not install (Lifecycle.child_refused says what follows)."""
        self.counters["children_refused"] += 1
        self._run(self.lifecycle.child_refused(sa_id, child, why, self.loop.time()))
        return None

    # ------------------------------------------------------------------ control

    async def _control(self, command: str, args: dict):
        if command == "status":
            return self.status().to_json()
        if command == "stop":
            self.flush_on_stop = bool(args.get("flush"))
            self.stopping.set()
            prohibited = self.steering.prohibited if self.steering else []
            if prohibited and not self.flush_on_stop:
                return (f"stopping; fail closed: {', '.join(prohibited)} stay unreachable and "
                        f"refused in clear until oe starts again or `oe flush`")
            return "stopping" + ("; removing routes, rule and inbound table" if
                                 self.flush_on_stop else "")
        if command == "reload":
            return await self.reload()
        if command == "initiate":
            return self.initiate(args.get("dst", ""), args.get("src"))
        raise OeError(f"unknown control command '{command}'")

    async def reload(self) -> str:
        """Re-read policy, oe.conf and the host key, with `oe check`'s file checks; a bad
        file changes nothing (the error names it). What can change at runtime is applied;
        settings that need a restart keep their old value and are named (issue 15, 5)."""
        report = check.files(self.confdir)
        if report.problems:
            more = len(report.problems) - 1
            raise OeError(report.problems[0] + (f" (and {more} more: `oe check` lists them)"
                                                if more else ""))
        diff = oeconfig.changes(self.config, report.config)
        for warning in report.policy.warnings:
            log.warning("%s", warning)
        base = prospective_table(report.policy)
        old = self.config, self.fetcher
        self.config = diff.config
        if diff.config.dns != old[0].dns:  # new nameservers are exempt from trapping, too
            self.fetcher = KeyFetcher.from_config(diff.config.dns, self.confdir)
        clients = self.clients
        try:  # first what can fail (one nft transaction): a refusal leaves all as it was
            if diff.config.gateway != old[0].gateway:
                self.clients = await self._in_netlink(self._gateway, diff.config.gateway.subnets)
            await self._in_netlink(self._install_inbound, base)
        except OeError:
            if self.clients is not clients:  # the old subnets' forwarding back
                await self._in_netlink(self._gateway, old[0].gateway.subnets)
            self.config, self.fetcher, self.clients = *old, clients
            raise
        close = getattr(old[1].source, "close", None)
        if self.fetcher is not old[1] and close is not None:
            # libunbound's pipe stays watched until the old fetcher's lookups are over
            dns = old[0].dns
            self.loop.call_later(dns.total_timeout + dns.query_timeout, close)
        self.key = report.key
        self.opportunist.limits = _limits(self.config)
        self.admission.subnets = _gateway_subnets(self.config)
        self.admission.own_blob = hostkey.public_blob(self.key)
        self.lifecycle.children_per_ike = self.config.limits.children_per_ike
        for side in self.sides.values():  # new negotiations and rekeys take the new terms
            side.engine.config = dataclasses.replace(side.engine.config, private_key=self.key,
                                                     **self._ike_terms())
        logs.set_level(self.config.log_level)
        ours = self.opportunist.ours  # new subnets, new key (None: not started)
        ours = ours and self._ours(ours.addresses)
        self._run(self.opportunist.reload(base, self.loop.time(), ours=ours))
        await self._install_routes()
        self._apply()
        reply = f"reloaded: {len(self.opportunist.base)} policy entries"
        if diff.applied:
            reply += f"; applied: {', '.join(diff.applied)}"
        if diff.kept:
            reply += f"; kept: {', '.join(diff.kept)} changes need a restart"
        return reply

    async def _reload_logged(self) -> None:
        try:
            log.info("%s", await self.reload())
        except OeError as exc:
            log.error("reload refused: %s", exc)

    def _ours(self, addresses) -> Ours:
        """What the opportunist checks our clients' records against (docs/gateway.md 3)."""
        return Ours.of(addresses, self.config.gateway.subnets,
                       hostkey.public_blob(self.key))

    def _ike_terms(self) -> dict:
        """What oe.conf says of IKE negotiations (IkeConfig fields), at start and reload."""
        limits = self.config.limits
        return {"ike_proposals": self.config.ike.proposals,
                "esp_proposals": self.config.ike.esp_proposals,
                "fragment_size": self.config.ike.fragment_size,
                "half_open_max": limits.half_open,
                "children_per_ike": limits.children_per_ike,
                "force_encap": self.config.esp.encapsulation == "udp",
                # COOKIEs begin well before the cap, whatever the cap is (RFC 7296 2.6)
                "cookie_threshold": min(HALF_OPEN_COOKIE_THRESHOLD, limits.half_open // 2)}

    def initiate(self, dst: str, src: str | None) -> str:
        """`oe initiate`: start negotiating, or say why nothing will happen (issue 15, 6)."""
        peer = _parse_address(dst)
        source = _parse_address(src, "--src ") if src is not None else None
        if source is not None and source.version != peer.version:
            raise OeError(f"--src {source} and DST {peer} are not the same address family")
        side = self.sides.get(peer.version)
        if side is None:
            raise OeError(f"no IPv{peer.version} address of ours to initiate from")
        if peer.is_loopback or str(peer) in side.engine.config.local_addrs:
            raise OeError(f"{peer} is this host's own address: nothing to negotiate")
        if source is None:  # what an application's packet would carry (docs/gateway.md 1)
            routed = net.route_source(str(peer), self.config.bypass_mark)
            if routed is None:
                raise OeError(f"no route to {peer}")
            source = ipaddress.ip_address(routed)
        pair = Pair(source, peer)
        why = self.opportunist.initiation_refused(pair)
        if why is not None:
            raise OeError(why)
        group = self.opportunist.host_group(pair)
        self._run(self.opportunist.initiate(pair, self.loop.time()))
        self._apply()
        return f"initiating OE for {pair} (group {group})"

    def status(self) -> Status:
        """What `oe status` shows (oe.status renders it)."""
        table = self.datapath.classifier.table
        sa_stats = {t.spi_in: (self.datapath.sa_stats(t.spi_in, "in") or {},
                               self.datapath.sa_stats(t.sa_out, "out") or {})
                    for t in self.opportunist.tunnels.values()}
        datapath = self.datapath.stats()
        ike: dict[str, int] = {}
        for side in self.sides.values():
            for name, value in side.engine.stats().items():
                ike[name] = ike.get(name, 0) + value
        return build_status(
            zip(table.entries, self.datapath.classifier.counters()), self.opportunist,
            self.lifecycle, sa_stats, self.pmtu,
            [info for side in self.sides.values() for info in side.engine.ike_sas()],
            self.loop.time(), datapath=datapath, ike=ike, limits=self._limits_status(datapath, ike),
            counters={**self.admission.counters, **self.counters, **self.lifecycle.counters,
                      "cleartext_dropped": inbound.dropped(),
                      **({"spoofed_dropped": inbound.dropped(inbound.SPOOFED)}
                         if self.clients is not None else {}),
                      "key_refreshes": self.fetcher.stats.refreshes})

    def _limits_status(self, datapath: dict, ike: dict) -> dict[str, LimitStatus]:
        """Each [limits] cap: its maximum, what is in use now, and how many were dropped."""
        caps = self.config.limits
        oe = self.opportunist
        half_open = sum(side.engine.half_open() for side in self.sides.values())
        rows = {
            "holds": (caps.holds, datapath["holds"], datapath["holds_evicted"]),
            "shunts": (caps.shunts, oe.failure_shunts, oe.counters["shunts_dropped"]),
            "half_open": (caps.half_open, half_open, ike.get("half_open_dropped", 0)),
            "lookups": (caps.lookups, len(self.admission.pending),
                        self.admission.counters["ike_init_dropped"]),
            "queued_acquires": (caps.queued_acquires, oe.queued, oe.counters["acquires_dropped"]),
            # never dropped: past the cap an acquire waits, and queued_acquires bounds that
            "acquire_lookups": (caps.acquire_lookups, oe.lookups, 0),
        }
        return {name: LimitStatus(cap, used, dropped)
                for name, (cap, used, dropped) in rows.items()}


def _parse_address(text: str, what: str = ""):
    try:
        return ipaddress.ip_address(text)
    except ValueError:
        raise OeError(f"{what}'{text}' is not an IPv4 or IPv6 address") from None


def _is_address(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False  # a DoH/DoT nameserver URL: nothing to exempt by address
    return True


def _limits(config: oeconfig.Config) -> Limits:
    return Limits(shunt_lifetime=config.shunt_lifetime, pending_max=config.limits.queued_acquires,
                  max_shunts=config.limits.shunts, acquire_rate=config.limits.acquire_rate,
                  acquire_burst=config.limits.acquire_burst,
                  lookups_max=config.limits.acquire_lookups)


def _gateway_subnets(config: oeconfig.Config) -> tuple:
    """`[gateway] subnets` as networks: the clients the responder may answer for."""
    return tuple(ipaddress.ip_network(n) for n in config.gateway.subnets)


def start(confdir: Path, rundir: Path, background: bool = False) -> int:
    """`oe start`: in the foreground (log to stderr) or, with `background`, detached with its
    log in <rundir>/oe.log; either way it runs until SIGTERM, SIGINT or `oe stop`.

    Configuration, policy and host key are read before anything else, so their errors are one
    line from the command itself; with `background` the command also waits until the daemon
    serves its control socket, or reports why it did not.
    """
    daemon = Daemon(confdir, rundir)
    if background:
        return _detach(daemon, rundir)
    log_to(logging.StreamHandler())
    asyncio.run(daemon.run())
    return 0


def _detach(daemon: Daemon, rundir: Path) -> int:
    rundir.mkdir(parents=True, exist_ok=True)
    log_path = rundir / "oe.log"
    read_fd, write_fd = os.pipe()
    pid = os.fork()
    if pid:
        os.close(write_fd)
        with os.fdopen(read_fd) as report:
            word = report.read().strip()
        if word == "ok":
            print(f"oe started in the background (pid {pid}), logging to {log_path}")
            return 0
        raise StartError(word or f"oe exited while starting; see {log_path}")
    os.close(read_fd)
    os.setsid()
    with open(os.devnull, "rb") as devnull, open(log_path, "ab") as out:
        os.dup2(devnull.fileno(), 0)
        os.dup2(out.fileno(), 1)
        os.dup2(out.fileno(), 2)
    log_to(logging.StreamHandler())

    def started() -> None:
        os.write(write_fd, b"ok\n")
        os.close(write_fd)

    daemon.on_started = started
    try:
        asyncio.run(daemon.run())
    except OeError as exc:
        os.write(write_fd, f"{exc}\n".encode())
        os._exit(2)
    except BaseException:
        log.exception("oe failed")
        os._exit(1)
    os._exit(0)


__all__ = ["Daemon", "StartError", "start"]
