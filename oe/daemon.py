"""`oe start`: the daemon. asyncio glue that owns the clock, the timers, the signals and the
control socket, and reacts to events; every decision is made by oe.opportunist.

The packet's way (docs/architecture.md section 1):

1. The kernel routes a packet for a trapping group's CIDR into the TUN (oe.routing).
2. The datapath's outbound thread classifies it (oe.datapath) and, by its eroute: seals it on
   an SA; on %trap raises an Acquire and holds it under a /32 %hold; passes, drops or rejects.
3. Acquire -> Opportunist -> FetchKey (oe.dnskeys, async) -> Initiate (oe.ike) -> the CHILD SA
   goes into the datapath and the table now says SA where it said %hold: the held packets leave
   encrypted. A failure turns the %hold into the group's failure shunt, with its reason.
4. Inbound ESP is opened by the datapath's inbound thread and written to the TUN; IKE on 4500
   comes up as an event, IKE on 500 arrives on our own socket.

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
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from oe import config as oeconfig
from oe import check, control, hostkey, inbound, logs, net, routing, tun
from oe.datapath import Datapath, esp_overhead
from oe.dnskeys.fetcher import KeyFetcher
from oe.dnskeys.choice import Target
from oe.dpevents import Acquire, IkeMessage, SaExpired, SaSoftLimit
from oe.errors import OeError
from oe.eroute import ErouteTable, SaAction
from oe.ike import events as ike_events
from oe.ike.auth import Identity, PeerKey
from oe.ike.constants import (
    HALF_OPEN_COOKIE_THRESHOLD, NON_ESP_MARKER, NAT_T_PORT, NotifyType,
)
from oe.logs import log_to
from oe.ike.runner import IkeRunner
from oe.ike.sa import IkeConfig, IkeEngine
from oe.ike.spis import SpiAllocator
from oe.ike.ts import TrafficSelector
from oe.opportunist import (
    ANY_PORT, DeleteChild, DeleteIke, FetchKey, Initiate, Limits, Opportunist, Pair, child_flow,
)
from oe.policygroups import SEMANTICS, prospective_table
from oe.policygroups.loader import load_policy

log = logging.getLogger("oe")

HOUSEKEEPING = 1.0  # seconds between lifetime, liveness and shunt checks
KEY_GRACE = 30.0  # seconds a key is kept at least: a TTL of 0 must not fail its own negotiation
CHILDLESS_GRACE = 30.0  # seconds an IKE SA may live without a CHILD SA before we delete it


class StartError(OeError):
    """oe cannot start: privileges, host key, TUN or addresses."""


@dataclass
class _IkeSide:
    """One address family's IKE engine and its asyncio runner."""

    version: int
    address: str
    engine: IkeEngine
    runner: IkeRunner


class Daemon:
    def __init__(self, confdir: Path, rundir: Path) -> None:
        self.confdir = confdir
        self.rundir = rundir
        self.config = oeconfig.load(confdir)
        policy = load_policy(confdir)
        for warning in policy.warnings:
            log.warning("%s", warning)
        self.key = hostkey.load(hostkey.hostkey_path(confdir))
        self.opportunist = Opportunist(prospective_table(policy), _limits(self.config))
        self.fetcher = KeyFetcher.from_config(self.config.dns, confdir)
        # (ID type, ID data) -> (RSA public key, when its DNS answer expires): a key vouches
        # for the identity it was published for and nothing else (an ID_FQDN "192.0.2.1" is
        # not that address), and only while its TTL runs.
        self.peer_keys: dict[Identity, tuple[PeerKey, float]] = {}
        # shared by the engines of both families: inbound SPIs and sa_ids unique on the host
        self.spis = SpiAllocator(os.urandom)
        self.sa_ids = itertools.count(1)
        self._stale: set[str] = set()  # peers whose AUTH failed as responder: fetch afresh
        self.sides: dict[int, _IkeSide] = {}
        self.sa_pairs: dict[tuple[int, int], Pair] = {}  # (family, sa_id) -> pair
        # peer -> its newest IKE_SA_INIT, waiting for the peer's key; at most [limits] lookups
        self.pending_init: dict[str, tuple[bytes, tuple, int]] = {}
        self.counters = {"ike_init_dropped": 0, "children_refused": 0, "childless_deleted": 0}
        # (family, sa_id) -> since when an IKE SA has carried no CHILD SA of ours
        self._childless: dict[tuple[int, int], float] = {}
        self.datapath: Datapath | None = None
        self.steering: routing.Steering | None = None
        self._routed_peers: set[str] = set()
        self._refused_in_clear: set = set()  # SA peers whose cleartext the inbound table drops
        self._inbound = False  # the inbound table is installed
        # pyroute2's synchronous API runs an event loop of its own, so every netlink call runs
        # in this one thread, which also keeps route changes in order.
        self._netlink = ThreadPoolExecutor(max_workers=1, thread_name_prefix="oe-netlink")
        self.tun_fd = -1
        self.sockets: list[socket.socket] = []
        self.stopping = asyncio.Event()
        self.flush_on_stop = False  # `oe stop --flush`: leave no fail-closed state
        self.namespace_lock: socket.socket | None = None  # held while running (oe.control)
        self.loop: asyncio.AbstractEventLoop | None = None
        self.sa_used: dict[int, int] = {}  # outbound SA handle -> packets at its last soft limit
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
            log.info("oe started: %s, policy %d entries, table %d", ", ".join(
                s.address for s in self.sides.values()), len(self.opportunist.base),
                self.config.route_table)
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
        self.tun_fd = tun.open_tun(self.config.tun_name)
        # The TUN's MTU: the smallest path MTU of our interfaces minus the worst-case ESP
        # overhead (outer IPv6 + UDP encapsulation), so inner packets always fit.
        path_mtu = min([await self._in_netlink(net.address_mtu, a) for a in addresses.values()])
        mtu = path_mtu - esp_overhead(6 if 6 in addresses else 4, "udp")
        await self._in_netlink(tun.set_up, self.config.tun_name, mtu)
        self.datapath = Datapath(max_holds=self.config.limits.holds)
        self.datapath.replace_eroutes(self.opportunist.table())
        self.opportunist.take_changes()  # the whole table is in
        fds = {}
        for version, address in sorted(addresses.items()):
            fds.update(self._open_side(version, address))
        await asyncio.gather(*(side.runner.start() for side in self.sides.values()))
        self.datapath.start(self.tun_fd, tun_mtu=mtu, **fds)
        self.loop.add_reader(self.datapath.events_fd, self._datapath_events)
        await self._install_routes()
        await self._in_netlink(self._install_inbound)
        self.control = await control.serve(self.rundir, self._control)
        control.pid_path(self.rundir).write_text(f"{os.getpid()}\n")
        for signum in (signal.SIGTERM, signal.SIGINT):
            self.loop.add_signal_handler(signum, self.stopping.set)
        self.loop.add_signal_handler(
            signal.SIGHUP, lambda: self.loop.create_task(self._reload_logged()))
        self._housekeeping = self.loop.create_task(self._housekeep())
        # Type=notify (contrib/oe.service): ready once routes, datapath and control socket are up
        control.notify("READY=1", f"STATUS=OE on {', '.join(addresses.values())}",
                       f"MAINPID={os.getpid()}")

    def _open_side(self, version: int, address: str) -> dict[str, int]:
        family = socket.AF_INET if version == 4 else socket.AF_INET6
        mark = self.config.bypass_mark
        nat_t = net.udp_socket(family, address, NAT_T_PORT, mark)
        esp = net.raw_socket(family, socket.IPPROTO_ESP if hasattr(socket, "IPPROTO_ESP") else 50,
                             mark)
        clear = net.raw_socket(family, socket.IPPROTO_RAW, mark)
        self.sockets += [nat_t, esp, clear]
        ike = IkeConfig(local_addr=address, private_key=self.key, **self._ike_terms())
        engine = IkeEngine(ike, rng=os.urandom, lookup_key=self._lookup_key,
                           ts_policy=lambda peer_id, local_ts, remote_ts, v=version:
                           self._ts_allowed(v, peer_id, local_ts, remote_ts),
                           spis=self.spis, sa_ids=self.sa_ids,
                           cookie_required=self._cookie_required, admit_init=self._admit_init)
        runner = IkeRunner(engine, address, lambda event, v=version: self._ike_event(v, event),
                           fwmark=mark, nat_t_socket=nat_t)
        self.sides[version] = _IkeSide(version, address, engine, runner)
        suffix = "4" if version == 4 else "6"
        return {f"udp{suffix}": nat_t.fileno(), f"esp{suffix}": esp.fileno(),
                f"pass{suffix}": clear.fileno()}

    def _in_netlink(self, fn, *args):
        return self.loop.run_in_executor(self._netlink, fn, *args)

    def _steer(self) -> None:
        """(Re)install oe's routes and rule for the current policy and tunnels."""
        trap, clear, exempt, private = self._route_sets()
        self.steering = routing.install(
            self.config.tun_name, trap, exempt, clear=clear, prohibit=private,
            table=self.config.route_table, priority=self.config.rule_priority,
            mark=self.config.bypass_mark)

    def _route_sets(self) -> tuple[list[str], list[str], list[str], list[str]]:
        """CIDRs to trap into the TUN, of the passing groups, never to trap (the nameservers),
        and to fail closed (the private group's: prohibited beneath, see oe.routing)."""
        trap, clear, private = sorted(self._routed_peers), [], []
        for eroute in self.opportunist.base.entries:
            if eroute.group is None:
                continue
            dst = str(eroute.selector.dst)
            outbound = SEMANTICS[eroute.group].outbound.value
            (trap if outbound in ("%trap", "%reject") else clear).append(dst)
            if eroute.group == "private":
                private.append(dst)
        exempt = [str(ipaddress.ip_network(ns)) for ns in self._nameserver_addresses()]
        return trap, clear, exempt, private

    def _nameserver_addresses(self) -> list[str]:
        """The nameservers we ask, by address (a DoH/DoT URL has none to exempt)."""
        return [ns for ns in self.fetcher.nameservers() if _is_address(ns)]

    async def _install_routes(self) -> None:
        await self._in_netlink(self._steer)
        for ns in self.fetcher.nameservers():
            if _is_address(ns) and ipaddress.ip_address(ns).is_loopback:
                log.warning("nameserver %s is a local stub: the servers it forwards to are not "
                            "exempt from trapping; list them in oe.conf [dns] nameservers or in "
                            "policies/clear", ns)
        for name in routing.loosen_rp_filter(net.interface_names(exclude=self.config.tun_name)):
            log.info("set %s = 2 (loose): replies to trapped peers arrive on the real interface",
                     name)

    def _install_inbound(self, base: ErouteTable | None = None) -> None:
        """(Re)build the inbound cleartext policy for a policy (default: the current one)."""
        policy = self.opportunist.base if base is None else base
        inbound.apply(inbound.ruleset(self.config.tun_name,
                                      inbound.protected(policy, self._nameserver_addresses()),
                                      self._refused_in_clear))
        self._inbound = True

    def _update_inbound(self, add: set, remove: set) -> None:
        try:
            inbound.apply(inbound.peers_update(add, remove))
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
            for sa_id in {sa_id for (v, sa_id) in self.sa_pairs if v == side.version}:
                try:
                    side.engine.delete_ike(sa_id, self.loop.time())
                except OeError:
                    pass
            side.runner.transmit()
        if self.sides:
            await asyncio.sleep(0.2)  # let the DELETEs leave before the sockets close
        if getattr(self, "_housekeeping", None) is not None:
            self._housekeeping.cancel()
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

    # ------------------------------------------------------------------ datapath events

    def _datapath_events(self) -> None:
        for event in self.datapath.read_events():
            try:
                self._datapath_event(event)
            except Exception:  # one event's bug must not lose the rest of the batch
                log.exception("datapath event %s", event)
        self._apply()

    def _datapath_event(self, event) -> None:
        now = self.loop.time()
        if isinstance(event, Acquire):
            self._run(self.opportunist.acquire(Pair(event.src, event.dst), now, event.proto,
                                               event.sport, event.dport))
        elif isinstance(event, IkeMessage):
            side = self.sides.get(event.src.version)
            if side is not None:
                side.runner.receive(NON_ESP_MARKER + event.data, (str(event.src), event.sport),
                                    NAT_T_PORT)
        elif isinstance(event, SaSoftLimit) and event.direction == "out":
            self._rekey_or_retire(event.handle, f"soft limit ({event.reason})")
        elif isinstance(event, SaExpired):
            self._expire(event)
        else:
            log.warning("datapath: %s", event)

    # ------------------------------------------------------------------ opportunist commands

    def _run(self, commands) -> None:
        for command in commands:
            if isinstance(command, FetchKey):
                self.loop.create_task(self._fetch(command))
            elif isinstance(command, Initiate):
                self._initiate(command)
            elif isinstance(command, DeleteIke):
                self._delete_ike(command.sa_id)
            elif isinstance(command, DeleteChild):
                self._delete_child(command.sa_id, command.spi_in)

    def _apply(self) -> None:
        """Hand the datapath what changed in the table and write the decisions to the log."""
        changes = self.opportunist.take_changes()
        if changes is None:
            self.datapath.replace_eroutes(self.opportunist.table())
        else:
            self.datapath.update_eroutes(*changes)
        for line in self.opportunist.take_log():
            log.info("%s", line)
        # A tunnel to a peer whose group passes (clear-or-private responder) needs a host route
        # into the TUN, or replies would go around it in clear.
        peers = {str(p.selector.dst) for p in self.opportunist.tunnels}
        if peers != self._routed_peers and self.steering is not None:
            # Synchronously: a responder's route must be in place before its IKE_AUTH
            # response leaves, or its first replies would go around the TUN in clear.
            self._routed_peers = peers
            self._netlink.submit(self._steer).result()
        # RFC 4301 5.2: from a peer we hold a host-to-host SA with, cleartext is refused.
        refused = {t.pair.dst for t in self.opportunist.tunnels.values()
                   if t.narrowing == (0, 0, 0)}
        if refused != self._refused_in_clear and self._inbound:
            add, remove = refused - self._refused_in_clear, self._refused_in_clear - refused
            self._refused_in_clear = refused
            self._netlink.submit(self._update_inbound, add, remove)

    async def _fetch(self, command: FetchKey) -> None:
        """Every lookup ends in a decision, whatever it raises: a %hold never stays."""
        try:
            lookup = await self.fetcher.fetch(command.target, refresh=command.refresh)
            self._keep_key(lookup)
            commands = self.opportunist.key_found(command.pair, lookup, self.loop.time())
        except Exception as exc:  # a bug in a lookup must not leave the %hold for ever
            log.exception("key lookup for %s", command.target)
            commands = self.opportunist.negotiation_failed(
                command.pair, f"key lookup failed: {exc}", self.loop.time())
        self._run(commands)
        self._apply()

    def _initiate(self, command: Initiate) -> None:
        side = self.sides.get(command.peer.version)
        if side is None:
            self._run(self.opportunist.negotiation_failed(
                command.pair, f"no IPv{command.peer.version} address of ours", self.loop.time()))
            return
        sa_id = side.engine.initiate(
            str(command.peer), self.loop.time(),
            local_ts=[TrafficSelector.host(str(command.pair.src))],
            remote_ts=[TrafficSelector.host(str(command.pair.dst))])
        self.sa_pairs[(side.version, sa_id)] = command.pair
        side.runner.transmit()

    def _delete_ike(self, sa_id: int) -> None:
        self._on_ike_sa(sa_id, lambda engine, now: engine.delete_ike(sa_id, now))

    def _delete_child(self, sa_id: int, spi_in: int) -> None:
        self._on_ike_sa(sa_id, lambda engine, now: engine.delete_child(sa_id, spi_in, now))

    def _on_ike_sa(self, sa_id: int, act) -> None:
        """Start an exchange on the engine that holds IKE SA `sa_id` and send it; one already
        gone (its peer deleted it meanwhile) is skipped."""
        for side in self.sides.values():
            if (side.version, sa_id) in self.sa_pairs:
                try:
                    act(side.engine, self.loop.time())
                except OeError:
                    continue
                side.runner.transmit()

    def _reap_childless(self, now: float) -> None:
        """Delete IKE SAs that have carried no CHILD SA of ours for CHILDLESS_GRACE: a peer
        whose CHILD SAs we refuse must not pile up IKE SAs (each holds keys and state)."""
        for (version, sa_id), since in list(self._childless.items()):
            if now - since < CHILDLESS_GRACE:
                continue
            del self._childless[(version, sa_id)]
            self.counters["childless_deleted"] += 1
            side = self.sides[version]
            try:
                side.engine.delete_ike(sa_id, now)
            except OeError:
                continue
            side.runner.transmit()

    # ------------------------------------------------------------------ IKE

    def _keep_key(self, lookup) -> None:
        """Keep a looked-up key under the identity that signs with it (the gateway a
        delegating record names, RFC 4322 3.2.4.1), for its TTL but at least long enough for
        the negotiation it was fetched for."""
        if lookup.key is None or lookup.delegated_for is not None:
            return  # a delegating record's key is not the client's, nor vouched for by G
        now = self.loop.time()
        owner = _key_owner(lookup.identity)
        key = lookup.key.public_key()
        # A key vouches for the address whose record published it, and nothing else: a
        # delegating record in D's zone lets the gateway speak for D, never for the gateway's
        # own address (only its own zone can). Records of one key add up.
        vouched = {lookup.target.address} - {None}
        old = self.peer_keys.get(owner)
        if old is not None and old[1] > now and old[0].public_key.public_numbers() == \
                key.public_numbers():
            vouched |= old[0].addresses
        self.peer_keys[owner] = (PeerKey(key, frozenset(vouched)),
                                 max(lookup.expires, now + KEY_GRACE))

    def _cookie_required(self, addr) -> bool:
        """Under load, a COOKIE round trip (RFC 7296 2.6) before any DNS work for a peer
        whose key we do not hold: once half of [limits] lookups are busy, a spoofed source
        never gets as far as _admit_init. Below that, lookups need no extra round trip (the
        first packet's wait), and their number is bounded all the same."""
        return len(self.pending_init) >= self.config.limits.lookups // 2 and \
            self._lookup_key(_address_id(addr[0])) is None

    def _lookup_key(self, identity: Identity) -> PeerKey | None:
        entry = self.peer_keys.get(identity)
        if entry is None or entry[1] <= self.loop.time():
            return None
        return entry[0]

    def _ts_allowed(self, version: int, peer_id: Identity, local_ts, remote_ts) -> bool:
        local = ipaddress.ip_address(self.sides[version].address)
        for ts in remote_ts:
            peer = ipaddress.ip_address(ts.start)
            if ts.start != ts.end or self.opportunist.inbound_allowed(local, peer) is not None:
                return False
        return True

    def _admit_init(self, data: bytes, addr, local_port: int) -> bool:
        """An IKE_SA_INIT from a peer: refuse it by policy, or fetch its key before answering.

        Returns True when the runner may hand it to the engine now. The peer's ID is its
        address (RFC 4322), so the key is looked up by the source address while the message
        waits (only the newest retransmission). Spoofed sources cost at most [limits] lookups
        DNS fetches at once; beyond, IKE_SA_INITs from unknown peers are dropped and counted.
        """
        peer = ipaddress.ip_address(addr[0])
        side = self.sides.get(peer.version)
        if side is None:
            return False
        why = self.opportunist.inbound_allowed(ipaddress.ip_address(side.address), peer)
        if why is not None:
            log.info("refused IKE from %s: %s", peer, why)
            return False
        known = self._lookup_key(_address_id(str(peer)))
        if known is not None and peer in known.addresses:
            return True
        if str(peer) not in self.pending_init:
            if len(self.pending_init) >= self.config.limits.lookups:
                self.counters["ike_init_dropped"] += 1
                return False
            self.loop.create_task(self._fetch_for_responder(side, str(peer)))
        self.pending_init[str(peer)] = (data, addr, local_port)
        return False

    async def _fetch_for_responder(self, side: _IkeSide, peer: str) -> None:
        try:
            refresh = peer in self._stale
            self._stale.discard(peer)
            lookup = await self.fetcher.fetch(Target.parse(peer), refresh=refresh)
            if lookup.key is None:
                log.info("refused IKE from %s: %s", peer, lookup.error)
                return
            self._keep_key(lookup)
        except Exception:  # a bug in a lookup refuses this peer, and frees its slot
            log.exception("key lookup for %s", peer)
            return
        finally:
            waiting = self.pending_init.pop(peer, None)
        if waiting is not None:
            side.runner.receive(*waiting)

    def _ike_event(self, version: int, event) -> None:
        now = self.loop.time()
        side = self.sides[version]
        if isinstance(event, ike_events.ChildSaEstablished):
            child = event.child
            installed = self._install_child(version, event.sa_id, child)
            if installed is not None:
                self._childless.pop((version, event.sa_id), None)
                pair, narrowing, handle = installed
                self.sa_pairs[(version, event.sa_id)] = pair
                initiator = self._initiated(version, event.sa_id)
                self._run(self.opportunist.tunnel_up(
                    pair, ipaddress.ip_address(child.remote_addr), event.sa_id, child.spi_in,
                    child.spi_out, _algorithm(child), child.udp_encap, initiator, now,
                    narrowing, handle))
        elif isinstance(event, ike_events.ChildSaRekeyed):
            installed = self._install_child(version, event.sa_id, event.child)
            pair = self.sa_pairs.get((version, event.sa_id))
            if pair is not None and installed is not None:
                self.opportunist.tunnel_rekeyed(pair, event.child.spi_in, event.child.spi_out, now,
                                                sa_out=installed[2], narrowing=installed[1])
        elif isinstance(event, ike_events.ChildSaDeleted):
            self.datapath.del_sa(event.spi_in, "in")
            handle = self.sa_out.pop((version, event.sa_id, event.spi_out), None)
            if handle is not None:
                self.datapath.del_sa(handle, "out")
                self.sa_used.pop(handle, None)
            pair = self.sa_pairs.get((version, event.sa_id))
            if pair is not None:
                self.opportunist.tunnel_down(pair, event.spi_in, event.reason, now)
        elif isinstance(event, ike_events.IkeSaEstablished):
            self._childless[(version, event.sa_id)] = now
        elif isinstance(event, ike_events.IkeSaFailed):
            self._childless.pop((version, event.sa_id), None)
            pair = self.sa_pairs.pop((version, event.sa_id), None)
            why = f"IKE timeout: {event.reason}" if event.notify is None else event.reason
            auth = event.local and event.notify == NotifyType.AUTHENTICATION_FAILED
            if pair is not None:
                self._run(self.opportunist.auth_failed(pair, why, now) if auth
                          else self.opportunist.negotiation_failed(pair, why, now))
            else:
                log.info("IKE with %s failed: %s", event.remote_addr, why)
                if auth:  # the key we hold may be stale: ask DNS afresh next time
                    self.peer_keys.pop(_address_id(event.remote_addr), None)
                    self._stale.add(event.remote_addr)
        elif isinstance(event, ike_events.IkeSaDeleted):
            self._childless.pop((version, event.sa_id), None)
            self.sa_pairs.pop((version, event.sa_id), None)
            self.opportunist.ike_gone(event.sa_id, event.reason, now)
        elif isinstance(event, ike_events.IkeSaPeerMoved):
            why = self.opportunist.inbound_allowed(ipaddress.ip_address(side.address),
                                                   ipaddress.ip_address(event.remote_addr))
            if why is not None:  # never let a peer point our ESP at an address policy refuses
                log.info("peer moved to %s, deleting its IKE SA: %s", event.remote_addr, why)
                try:
                    side.engine.delete_ike(event.sa_id, now)
                except OeError:
                    pass  # the same message ended it
                self._apply()
                side.runner.transmit()
                return
            for child in side.engine.children(event.sa_id):
                handle = self.sa_out.get((version, event.sa_id, child.spi_out))
                for ref, direction in ((handle, "out"), (child.spi_in, "in")):
                    if ref is not None:
                        self.datapath.move_sa(ref, direction, event.remote_addr,
                                              event.remote_port)
            log.info("peer moved to %s port %d (NAT)", event.remote_addr, event.remote_port)
        elif isinstance(event, ike_events.ChildSaFailed):
            pair = self.sa_pairs.get((version, event.sa_id))
            if pair is not None:
                self._run(self.opportunist.negotiation_failed(pair, event.reason, now))
        self._apply()
        side.runner.transmit()

    def _initiated(self, version: int, sa_id: int) -> bool:
        pair = self.sa_pairs.get((version, sa_id))
        return pair is not None and pair in self.opportunist.negotiations

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
        encap = "udp" if child.udp_encap else "esp"
        lifetime = self.config.ike.sa_lifetime
        soft = max(lifetime - self.config.ike.rekey_margin, lifetime / 2)
        common = dict(local=child.local_addr, peer=child.remote_addr, encap=encap,
                      local_port=child.local_port or NAT_T_PORT,
                      peer_port=child.remote_port or NAT_T_PORT, esn=child.esn, proto=proto)
        key = (version, sa_id, child.spi_out)
        if key in self.sa_out:
            return self._refuse_child(version, sa_id, child,
                                      f"outbound SPI {child.spi_out:08x} already in use")
        try:
            self.datapath.add_sa(child.spi_in, "in", child.key_in,
                                 src_ts=str(pair.dst), dst_ts=str(pair.src),
                                 sport=remote_ports, dport=local_ports,
                                 hard_time=lifetime + 60, **common)
        except ValueError as e:
            return self._refuse_child(version, sa_id, child, str(e))
        try:
            handle = self.datapath.add_sa(child.spi_out, "out", child.key_out,
                                          src_ts=str(pair.src), dst_ts=str(pair.dst),
                                          sport=local_ports, dport=remote_ports,
                                          soft_time=soft, hard_time=lifetime, **common)
        except ValueError as e:
            self.datapath.del_sa(child.spi_in, "in")
            return self._refuse_child(version, sa_id, child, str(e))
        self.sa_out[key] = handle
        return pair, (proto, sport, dport), handle

    def _refuse_child(self, version: int, sa_id: int, child, why: str) -> None:
        """A CHILD SA oe will not install: delete it, and end our negotiation for its pair in
        the failure shunt (a %hold must never stay)."""
        self.counters["children_refused"] += 1
        log.info("refused CHILD SA %08x with %s: %s", child.spi_in, child.remote_addr, why)
        now = self.loop.time()
        try:
            self.sides[version].engine.delete_child(sa_id, child.spi_in, now)
        except OeError:
            pass  # already gone with its IKE SA
        pair = self.sa_pairs.get((version, sa_id))
        if pair is not None:
            self._run(self.opportunist.negotiation_failed(pair, f"CHILD SA refused: {why}", now))
        return None

    def _tunnel_by_sa_out(self, handle: int):
        for tunnel in self.opportunist.tunnels.values():
            if tunnel.sa_out == handle:
                return tunnel
        return None

    def _rekey_or_retire(self, handle: int, why: str) -> None:
        """FreeS/WAN's OE rule: rekey only if the SA was used lately; idle ones go away."""
        tunnel = self._tunnel_by_sa_out(handle)
        if tunnel is None:
            return
        side = self.sides[tunnel.peer.version]
        stats = self.datapath.sa_stats(handle, "out") or {}
        used = stats.get("packets", 0)
        recently = used != self.sa_used.get(handle, 0)
        self.sa_used[handle] = used
        try:
            if recently:
                side.engine.rekey_child(tunnel.sa_id, tunnel.spi_in, self.loop.time())
            else:
                log.info("OE to %s idle, deleting at %s", tunnel.pair.dst, why)
                side.engine.delete_ike(tunnel.sa_id, self.loop.time())
        except OeError:
            return
        side.runner.transmit()

    def _expire(self, event: SaExpired) -> None:
        for tunnel in list(self.opportunist.tunnels.values()):
            if (event.direction == "out" and tunnel.sa_out == event.handle) or (
                    event.direction == "in" and tunnel.spi_in == event.handle):
                log.info("SA %x %s expired (%s)", event.spi, event.direction, event.reason)
                self._delete_ike(tunnel.sa_id)

    async def _housekeep(self) -> None:
        """Shunt expiry, rate-limited acquires, liveness checks of quiet peers."""
        last_in: dict[int, int] = {}
        next_dpd = self.loop.time() + self.config.ike.dpd_delay
        next_sweep = self.loop.time() + KEY_GRACE
        while True:
            await asyncio.sleep(HOUSEKEEPING)
            now = self.loop.time()
            self._run(self.opportunist.tick(now))
            self._reap_childless(now)
            if now >= next_sweep:  # keys past their TTL go (a peer that returns is asked again)
                next_sweep = now + KEY_GRACE
                self.peer_keys = {i: e for i, e in self.peer_keys.items() if e[1] > now}
            if now >= next_dpd:
                next_dpd = now + self.config.ike.dpd_delay
                seen, last_in = last_in, {}  # only live SAs are remembered
                for tunnel in list(self.opportunist.tunnels.values()):
                    stats = self.datapath.sa_stats(tunnel.spi_in, "in") or {}
                    packets = stats.get("packets", 0)
                    last_in[tunnel.spi_in] = packets
                    if packets == seen.get(tunnel.spi_in):
                        side = self.sides[tunnel.peer.version]
                        try:
                            side.engine.check_liveness(tunnel.sa_id, now)
                        except OeError:
                            continue
                        side.runner.transmit()
            self._apply()

    # ------------------------------------------------------------------ control

    async def _control(self, command: str, args: dict):
        if command == "status":
            return self.status()
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
        try:  # first what can fail (one nft transaction): a refusal leaves all as it was
            await self._in_netlink(self._install_inbound, base)
        except OeError:
            self.config, self.fetcher = old
            raise
        self.key = report.key
        self.opportunist.limits = _limits(self.config)
        for side in self.sides.values():  # new negotiations and rekeys take the new terms
            side.engine.config = dataclasses.replace(side.engine.config, private_key=self.key,
                                                     **self._ike_terms())
        logs.set_level(self.config.log_level)
        self._run(self.opportunist.reload(base, self.loop.time()))
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

    def _ike_terms(self) -> dict:
        """What oe.conf says of IKE negotiations (IkeConfig fields), at start and reload."""
        limits = self.config.limits
        return {"ike_proposals": self.config.ike.proposals,
                "esp_proposals": self.config.ike.esp_proposals,
                "half_open_max": limits.half_open,
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
        if peer.is_loopback or peer in {ipaddress.ip_address(s.address)
                                        for s in self.sides.values()}:
            raise OeError(f"{peer} is this host's own address: nothing to negotiate")
        pair = Pair(source or ipaddress.ip_address(side.address), peer)
        group = self.opportunist.host_group(pair)
        if group is None:
            raise OeError(f"{peer} is in no policy group: not steered into oe, sent in clear")
        outbound = SEMANTICS[group].outbound.value
        if outbound != "%trap":
            raise OeError(f"{peer} is in group {group} ({outbound}): oe does not negotiate "
                          f"with it")
        self._run(self.opportunist.initiate(pair, self.loop.time()))
        self._apply()
        return f"initiating OE for {pair} (group {group})"

    def status(self) -> dict:
        table = self.datapath.classifier.table
        counters = self.datapath.classifier.counters()
        now = self.loop.time()
        eroutes = [eroute.as_json(packets, nbytes)
                   for eroute, (packets, nbytes) in zip(table.entries, counters)]
        sas = []
        for tunnel in self.opportunist.tunnels.values():
            stats_in = self.datapath.sa_stats(tunnel.spi_in, "in") or {}
            stats_out = self.datapath.sa_stats(tunnel.sa_out, "out") or {}
            sas.append({
                "src": str(tunnel.pair.src), "dst": str(tunnel.pair.dst),
                "peer": str(tunnel.peer), "spi_in": f"{tunnel.spi_in:08x}",
                "spi_out": f"{tunnel.spi_out:08x}", "said": str(SaAction(tunnel.peer,
                                                                          tunnel.spi_out,
                                                                          tunnel.sa_out)),
                "algorithm": tunnel.algorithm,
                "encap": "ESP-in-UDP" if tunnel.udp_encap else "ESP",
                "bytes_in": stats_in.get("bytes", 0), "bytes_out": stats_out.get("bytes", 0),
                "packets_in": stats_in.get("packets", 0),
                "packets_out": stats_out.get("packets", 0),
                "age": round(now - tunnel.created, 1),
                "initiator": tunnel.initiator,
            })
        shunts = [{"src": str(s.pair.src), "dst": str(s.pair.dst), "said": str(s.action),
                   "group": s.group, "reason": s.reason,
                   "expires_in": None if s.expires is None else round(s.expires - now, 1)}
                  for s in self.opportunist.shunts.values()]
        datapath = self.datapath.stats()
        ike: dict[str, int] = {}
        for side in self.sides.values():
            for name, value in side.engine.stats().items():
                ike[name] = ike.get(name, 0) + value
        return {"eroutes": eroutes, "sas": sas, "shunts": shunts, "datapath": datapath,
                "ike": ike, "limits": self._limits_status(datapath, ike),
                "counters": {**self.counters, "cleartext_dropped": inbound.dropped(),
                             "key_refreshes": self.fetcher.stats.refreshes}}

    def _limits_status(self, datapath: dict, ike: dict) -> dict:
        """Each [limits] cap: its maximum, what is in use now, and how many were dropped."""
        caps = self.config.limits
        oe = self.opportunist
        half_open = sum(side.engine.half_open() for side in self.sides.values())
        rows = {
            "holds": (caps.holds, datapath["holds"], datapath["holds_evicted"]),
            "shunts": (caps.shunts, oe.failure_shunts, oe.counters["shunts_dropped"]),
            "half_open": (caps.half_open, half_open, ike.get("half_open_dropped", 0)),
            "lookups": (caps.lookups, len(self.pending_init), self.counters["ike_init_dropped"]),
            "queued_acquires": (caps.queued_acquires, oe.queued, oe.counters["acquires_dropped"]),
        }
        return {name: {"max": cap, "in_use": used, "dropped": dropped}
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


def _address_id(address: str) -> Identity:
    """The IKE ID a host's key from its reverse zone vouches for (RFC 4322: ID = address)."""
    return Identity.from_address(address)


def _key_owner(identity) -> Identity:
    """The IKE ID of a KeyLookup's identity: an address, or a name (ID_FQDN, lower case)."""
    if isinstance(identity, (ipaddress.IPv4Address, ipaddress.IPv6Address)):
        return Identity.from_address(str(identity))
    return Identity.fqdn(identity.to_text(omit_final_dot=True).lower())


def _limits(config: oeconfig.Config) -> Limits:
    return Limits(shunt_lifetime=config.shunt_lifetime, pending_max=config.limits.queued_acquires,
                  max_shunts=config.limits.shunts)


def _algorithm(child) -> str:
    name = {20: "AES_GCM_16"}.get(child.encr, f"ENCR_{child.encr}")
    return f"{name}_{child.key_bits}" + ("_ESN" if child.esn else "")


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
