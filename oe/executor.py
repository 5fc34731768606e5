"""The daemon's core: events in, commands out (docs/architecture.md section 3).

Every event (the datapath's, an IKE engine's, a DNS answer, a timer) is handed to the pure part
it concerns, with `now`; what comes back (oe.commands) is carried out by `_run`, one `match` on
the command type. No decision is taken here: the opportunist, the lifecycle, the admission, the
peer keys and the route plan take them. The timers are theirs too: `_timers` sleeps until the
earliest `next_timer()` or until an event may have moved it.

`Executor` is the half of oe.daemon.Daemon that reacts; the other half (oe/daemon.py) starts,
stops, serves the control socket and installs SAs. Daemon provides the attributes used here:
loop, opportunist, lifecycle, admission, keys, routes, fetcher, datapath, sides, sa_out,
steering, _inbound, _netlink, _refusals(_lock), _wake, and the methods _install_child, _steer,
_reroute, _update_inbound.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging

from oe import net
from oe.commands import (
    CheckLiveness, CreateChild, DeleteChild, DeleteIke, FetchDelegation, FetchGateway, FetchKey,
    FetchPeerKey, FollowPeer, Initiate, Log, RefuseInClear, RefuseInit, RekeyChild, ReplayInit,
    ResumeChild, Reroute, SampleInbound, StaleKey, Steer,
)
from oe.dnskeys.choice import Target
from oe.dpevents import (Acquire, IkeMessage, PathMtuBlackHole, PathMtuProbeAcked, PathMtuTooBig,
                         SaExpired, SaSoftLimit)
from oe.errors import OeError
from oe.ike import events as ike_events
from oe.ike.auth import Identity, PeerKey
from oe.ike.childpolicy import AuthenticatedSa, Selectors, TsVerdict
from oe.ike.constants import NON_ESP_MARKER, NAT_T_PORT
from oe.ike.ts import TrafficSelector
from oe.lifecycle import ChildInfo, algorithm_name, responded_terms
from oe.flows import Pair
from oe.peerkeys import address_id

log = logging.getLogger("oe")

TIMER_SLACK = 0.01  # seconds the timer loop waits at least, so a due timer cannot spin it


class Executor:
    """Feeds events to the pure parts and carries out their commands."""

    # ------------------------------------------------------------------ events in

    def _datapath_events(self) -> None:
        for event in self.datapath.read_events():
            try:
                self._datapath_event(event)
            except Exception:  # one event's bug must not lose the rest of the batch
                log.exception("datapath event %s", event)
        self._apply()

    def _datapath_event(self, event) -> None:
        now = self.loop.time()
        match event:
            case Acquire():
                self._run(self.opportunist.acquire(Pair(event.src, event.dst), now,
                                                   event.proto, event.sport, event.dport))
            case IkeMessage():
                side = self.sides.get(event.src.version)
                if side is not None:
                    side.runner.receive(NON_ESP_MARKER + event.data,
                                        (str(event.src), event.sport), NAT_T_PORT,
                                        str(event.dst))
            case SaSoftLimit(direction="out"):
                stats = self.datapath.sa_stats(event.handle, "out") or {}
                self._run(self.lifecycle.soft_limit(event.handle, stats.get("packets", 0),
                                                    f"soft limit ({event.reason})"))
            case SaExpired():
                self._run(self.lifecycle.hard_limit(event.direction, event.handle, event.spi,
                                                    event.reason))
            case PathMtuProbeAcked():  # the peer answered a probe (docs/pmtu.md)
                self.pmtu.on_probe_acked(self.datapath, str(event.peer), event.size, now)
            case PathMtuTooBig():  # ICMP about the outer path, its quoted SPI ours
                self.pmtu.on_too_big(self.datapath, str(event.peer), event.mtu, event.local, now)
            case PathMtuBlackHole():  # a large TCP segment sent again (RFC 8899 4.3)
                self.pmtu.on_black_hole_suspected(self.datapath, str(event.peer), now)
            case _:
                log.warning("datapath: %s", event)

    def _ike_event(self, version: int, event) -> None:
        now = self.loop.time()
        side = self.sides[version]
        self.lifecycle.heard(version, event.sa_id)
        match event:
            case ike_events.ChildSaEstablished():
                self._child_established(version, event.sa_id, event.child, now)
            case ike_events.ChildSaRekeyed():
                installed = self._install_child(version, event.sa_id, event.child)
                pair = self.lifecycle.pair_of(event.sa_id, event.old_spi_in)
                if pair is not None and installed is not None:
                    self.lifecycle.child_rekeyed(event.sa_id, event.old_spi_in,
                                                 event.child.spi_in, ChildInfo.of(
                                                     event.child, now, self._key_provenance(pair)))
                    self.opportunist.tunnel_rekeyed(pair, event.child.spi_in, event.child.spi_out,
                                                    now, sa_out=installed[2],
                                                    narrowing=installed[1])
            case ike_events.ChildSaDeleted():
                self.datapath.del_sa(event.spi_in, "in")
                handle = self.sa_out.pop((version, event.sa_id, event.spi_out), None)
                if handle is not None:
                    self.datapath.del_sa(handle, "out")
                pair = self.lifecycle.child_deleted(event.sa_id, event.spi_in, handle, now)
                if pair is not None:
                    self.opportunist.tunnel_down(pair, event.spi_in, event.reason, now)
            case ike_events.IkeSaEstablished():  # the CHILD SAs queued on it start
                terms = None if event.initiator or event.peer_key is None else responded_terms(
                    event.local_addr, event.remote_id, event.peer_key.public_key)
                self._run(self.lifecycle.ike_established(version, event.sa_id, now, terms))
            case ike_events.IkeSaFailed():
                self._run(self.lifecycle.ike_failed(event.sa_id, event.remote_addr, event.reason,
                                                    event.notify, event.local, now))
            case ike_events.IkeSaDeleted():
                self._run(self.lifecycle.ike_deleted(event.sa_id, event.reason, now))
            case ike_events.IkeSaPeerMoved():
                self._run(self.admission.peer_moved(event.local_addr, event.sa_id,
                                                    event.remote_addr, event.remote_port))
            case ike_events.ChildSaFailed():  # the request its selectors name (of several)
                if not event.local_ts:  # the peer's request, refused (docs/gateway.md 4.1: why)
                    log.info("IKE SA %d: CHILD SA failed: %s", event.sa_id, event.reason)
                self._run(self.lifecycle.child_failed(event.sa_id, event.local_ts,
                                                      event.remote_ts, event.notify,
                                                      event.reason, now))
            case ike_events.ChildAwaitsDns():
                self._run(self.admission.delegation_wanted(event.sa_id, event.lookups))
        self._apply()
        side.runner.transmit()

    def _child_established(self, version: int, sa_id: int, child, now: float) -> None:
        installed = self._install_child(version, sa_id, child)
        if installed is None:
            return
        pair, narrowing, handle = installed
        initiator = pair in self.opportunist.negotiations
        self.lifecycle.child_installed(sa_id, pair, child.spi_in,
                                       ChildInfo.of(child, now, self._key_provenance(pair)))
        self._run(self.opportunist.tunnel_up(
            pair, ipaddress.ip_address(child.remote_addr), sa_id, child.spi_in, child.spi_out,
            algorithm_name(child), child.udp_encap, initiator, now, narrowing, handle))

    def _key_provenance(self, pair: Pair) -> str | None:
        """Where the peer's key came from (oe status): the key kept for its address (RFC 4322:
        the ID is the address), or what its tunnel showed before a rekey."""
        tunnel = self.opportunist.tunnels.get(pair)
        before = self.lifecycle.children.get(tunnel.spi_in) if tunnel is not None else None
        return self.keys.provenance(address_id(str(pair.dst))) or \
            (before.key if before is not None else None)

    async def _timers(self) -> None:
        """Sleep until the earliest timer of the pure parts (shunt expiry, rate-limited
        acquires, key TTLs, liveness samples, childless IKE SAs) or until an event moved it."""
        while True:
            now = self.loop.time()
            deadline = self._next_timer()
            if deadline is not None and deadline <= now:
                try:
                    self._on_timer(now)
                except Exception:  # a bug in one timer must not stop all of them
                    log.exception("timer")
                deadline = self._next_timer()
            self._wake.clear()
            timeout = None if deadline is None else max(deadline - now, TIMER_SLACK)
            try:
                await asyncio.wait_for(self._wake.wait(), timeout)
            except asyncio.TimeoutError:
                pass

    def _next_timer(self) -> float | None:
        times = [t for t in (self.opportunist.next_timer(), self.lifecycle.next_timer(),
                             self.keys.next_timer(), self.pmtu.next_timer()) if t is not None]
        return min(times) if times else None

    def _on_timer(self, now: float) -> None:
        self.keys.sweep(now)
        self.pmtu.tick(self.datapath, now)  # probes due, path MTUs changed (RFC 8899)
        self._run(self.opportunist.tick(now) + self.lifecycle.tick(now))
        self._apply()

    # ------------------------------------------------------------------ commands out

    def _run(self, commands) -> None:
        """Carry out what the pure parts decided."""
        now = self.loop.time()
        for command in commands:
            match command:
                case FetchKey():
                    self.loop.create_task(self._fetch(command))
                case FetchGateway():
                    self.loop.create_task(self._fetch_gateway(command))
                case Initiate():  # on an IKE SA of the same terms if one has room
                    for routed in self.lifecycle.route_initiate(command):
                        if isinstance(routed, Initiate):
                            self._initiate(routed)
                        else:
                            self._run([routed])
                case CreateChild(sa_id=sa_id, pair=pair):
                    self._on_ike_sa(sa_id, lambda engine: self._create_child(engine, sa_id,
                                                                            pair, now))
                case DeleteIke(sa_id=sa_id):
                    self._on_ike_sa(sa_id, lambda engine: engine.delete_ike(sa_id, now))
                case DeleteChild(sa_id=sa_id, spi_in=spi_in):
                    self._on_ike_sa(sa_id, lambda engine: engine.delete_child(sa_id, spi_in, now))
                case RekeyChild(sa_id=sa_id, spi_in=spi_in):
                    self._on_ike_sa(sa_id, lambda engine: engine.rekey_child(sa_id, spi_in, now))
                case CheckLiveness(sa_id=sa_id):
                    self._on_ike_sa(sa_id, lambda engine: engine.check_liveness(sa_id, now))
                case SampleInbound():
                    self._run(self.lifecycle.inbound_sample(self._inbound_packets(), now))
                case FetchPeerKey():
                    self.loop.create_task(self._fetch_peer_key(command))
                case FetchDelegation():
                    self.loop.create_task(self._fetch_delegation(command))
                case ResumeChild(sa_id=sa_id):
                    self._on_ike_sa(sa_id, lambda engine: engine.resume(sa_id, now))
                case ReplayInit(data=data, addr=addr, local_port=port, local_addr=local):
                    side = self.sides.get(ipaddress.ip_address(addr[0]).version)
                    if side is not None:
                        side.runner.receive(data, addr, port, local)
                case RefuseInit(data=data, addr=addr, local_port=port, local_addr=local,
                                notify=notify):
                    side = self.sides.get(ipaddress.ip_address(addr[0]).version)
                    if side is not None:
                        side.engine.refuse_init(data, addr, port, local, notify)
                        side.runner.transmit()
                case FollowPeer():
                    self._follow_peer(command)
                case Steer():
                    # Synchronously: a responder's route must be in place before its IKE_AUTH
                    # response leaves, or its first replies would go around the TUN in clear.
                    self._netlink.submit(self._steer, command).result()
                case Reroute():
                    # Synchronously, as Steer; one route per peer that came or went
                    self._netlink.submit(self._reroute, command).result()
                case RefuseInClear(add=add, remove=remove):
                    self._refuse(add, remove)
                case StaleKey(peer=peer):
                    self.admission.auth_failed(peer)
                case Log(line=line):
                    log.info("%s", line)
                case _:
                    raise TypeError(f"not a command: {command!r}")

    def _refuse(self, add, remove) -> None:
        """Queue a change of the refused pairs for nft, a process per run: changes that come
        while a run is queued join it, so a burst of tunnels costs one run, not one each."""
        with self._refusals_lock:
            queued = self._refusals is not None
            if not queued:
                self._refusals = (set(), set())
            adding, removing = self._refusals
            for pair in add:  # a pair removed and added again while queued: no change
                if pair in removing:
                    removing.discard(pair)
                else:
                    adding.add(pair)
            for pair in remove:
                if pair in adding:
                    adding.discard(pair)
                else:
                    removing.add(pair)
        if not queued:
            self._netlink.submit(self._update_inbound)

    def _apply(self) -> None:
        """Hand the datapath what changed in the table, write the decisions to the log, follow
        the tunnels with routes and the inbound table, and let the timers look again."""
        changes = self.opportunist.take_changes()
        if changes is None:
            self.datapath.replace_eroutes(self.opportunist.table())
        else:
            self.datapath.update_eroutes(*changes)
        for line in self.opportunist.take_log():
            log.info("%s", line)
        tunnels = self.opportunist.take_tunnel_changes()
        self._run(self.routes.follow(tunnels, routes=self.steering is not None,
                                     inbound=self._inbound))
        self.pmtu.follow(tunnels)  # a search ends with the peer's last tunnel (docs/pmtu.md)
        self._wake.set()

    async def _fetch(self, command: FetchKey) -> None:
        """Every lookup ends in a decision, whatever it raises: a %hold never stays."""
        try:
            if command.role == "client":  # its @FQDN gateways resolved, for check_client
                lookup = await self.fetcher.client(Target.parse(command.target))
            else:
                lookup = await self.fetcher.fetch(command.target, refresh=command.refresh)
            if command.role == "target":  # a client's record carries our own key
                self.keys.keep(lookup, self.loop.time())
            commands = self.opportunist.key_found(command.pair, lookup, self.loop.time(),
                                                  role=command.role)
        except Exception as exc:  # a bug in a lookup must not leave the %hold for ever
            log.exception("key lookup for %s", command.target)
            commands = self.opportunist.negotiation_failed(
                command.pair, f"key lookup failed: {exc}", self.loop.time())
        self._run(commands)
        self._apply()

    async def _fetch_gateway(self, command: FetchGateway) -> None:
        """An @FQDN gateway's addresses: like _fetch, every lookup ends in a decision."""
        try:
            found = await self.fetcher.gateway(command.name, command.pair.dst.version,
                                               command.dnssec)
            commands = self.opportunist.gateway_found(command.pair, command.name, found,
                                                      self.loop.time())
        except Exception as exc:  # a bug in a lookup must not leave the %hold for ever
            log.exception("address lookup for gateway %s", command.name)
            commands = self.opportunist.negotiation_failed(
                command.pair, f"address lookup for gateway {command.name} failed: {exc}",
                self.loop.time())
        self._run(commands)
        self._apply()

    async def _fetch_peer_key(self, command: FetchPeerKey) -> None:
        """The responder's lookup: whatever it raises, the peer's slot is freed."""
        lookup = None
        try:
            lookup = await self.fetcher.fetch(Target.parse(command.peer), refresh=command.refresh)
        except Exception:  # a bug in a lookup refuses this peer, and frees its slot
            log.exception("key lookup for %s", command.peer)
        try:
            commands = self.admission.key_fetched(command.peer, lookup, self.loop.time())
        except Exception:  # a key that fails late (e >= n): refused like no key
            log.exception("key lookup for %s", command.peer)
            commands = self.admission.key_fetched(command.peer, None, self.loop.time())
        self._run(commands)

    async def _fetch_delegation(self, command: FetchDelegation) -> None:
        """A client's record for a waiting CHILD SA request, chosen as any key is (`choose`:
        delegation only from secure answers or with allow_unsigned_delegation); whatever
        the lookup raises, the slot is freed and the request refused."""
        lookup = None
        try:
            lookup = await self.fetcher.client(Target.parse(command.client))
        except Exception:
            log.exception("delegation lookup for %s", command.client)
        self._run(self.admission.delegation_fetched(command.client, lookup, self.loop.time()))

    def _initiate(self, command: Initiate) -> None:
        side = self.sides.get(command.peer.version)
        if side is None:
            self._run(self.opportunist.negotiation_failed(
                command.pair, f"no IPv{command.peer.version} address of ours", self.loop.time()))
            return
        local = self._local_for(command)
        if local is None:
            self._run(self.opportunist.negotiation_failed(
                command.pair, f"no address of ours routes to {command.peer}", self.loop.time()))
            return
        sa_id = side.engine.initiate(
            str(command.peer), self.loop.time(),
            local_ts=[TrafficSelector.host(str(command.pair.src))],
            remote_ts=[TrafficSelector.host(str(command.pair.dst))], local_addr=local,
            peer_key=_pinned(command))
        self.lifecycle.initiated(side.version, sa_id, command)
        side.runner.transmit()

    def _local_for(self, command: Initiate) -> str | None:
        """Our address for the IKE SA (docs/gateway.md 1): the one asked for, else the pair's
        source, when ours; else the source the kernel picks for the peer (`ip route get`)."""
        ours = self.sides[command.peer.version].engine.config.local_addrs
        wanted = str(command.local or command.pair.src)
        if wanted in ours:
            return wanted
        routed = net.route_source(str(command.peer), self.config.bypass_mark)
        return routed if routed in ours else None

    def _create_child(self, engine, sa_id: int, pair: Pair, now: float) -> None:
        """One more CHILD SA on an IKE SA whose peer proved the key the pair's record names
        (Lifecycle.route_initiate): the IKE SA vouches for the pair's far end first
        (docs/gateway.md 4.3)."""
        engine.vouch(sa_id, str(pair.dst))
        engine.create_child(sa_id, now, local_ts=[TrafficSelector.host(str(pair.src))],
                            remote_ts=[TrafficSelector.host(str(pair.dst))])

    def _on_ike_sa(self, sa_id: int, act) -> None:
        """Start an exchange on the engine that holds IKE SA `sa_id` and send it; one already
        gone (its peer deleted it meanwhile) is skipped."""
        side = self.sides.get(self.lifecycle.family(sa_id))
        if side is None:
            return
        try:
            act(side.engine)
        except OeError:
            return
        side.runner.transmit()

    def _inbound_packets(self) -> dict[int, int]:
        """Inbound packets of every tunnel's CHILD SA, by inbound SPI."""
        return {t.spi_in: (self.datapath.sa_stats(t.spi_in, "in") or {}).get("packets", 0)
                for t in self.opportunist.tunnels.values()}

    def _follow_peer(self, command: FollowPeer) -> None:
        """Point the SAs of a moved peer's IKE SA at its new address (RFC 7296 2.23)."""
        version = self.lifecycle.family(command.sa_id)
        side = self.sides.get(version)
        if side is None:
            return
        for child in side.engine.children(command.sa_id):
            handle = self.sa_out.get((version, command.sa_id, child.spi_out))
            for ref, direction in ((handle, "out"), (child.spi_in, "in")):
                if ref is not None:
                    self.datapath.move_sa(ref, direction, command.address, command.port)

    # ------------------------------------------------------------------ IKE engine hooks

    def _cookie_required(self, addr) -> bool:
        return self.admission.cookie_required(addr[0], self.loop.time())

    def _lookup_key(self, identity: Identity) -> PeerKey | None:
        return self.keys.get(identity, self.loop.time())

    def _child_policy(self, sa: AuthenticatedSa, tsi: Selectors, tsr: Selectors) -> TsVerdict:
        return self.admission.child_policy(sa, tsi, tsr, self.loop.time())

    def _admit_init(self, data: bytes, addr, local_port: int, local_addr: str) -> bool:
        """An IKE_SA_INIT from a peer to our `local_addr`: True when the runner may hand it
        to the engine now."""
        admitted, commands = self.admission.admit(local_addr, data, addr, local_port,
                                                  self.loop.time())
        self._run(commands)
        return admitted


def _pinned(command: Initiate) -> PeerKey | None:
    """The key a delegating record named, vouching for the pair's far end only, never for the
    gateway's own address (RFC 4322 3.2.4.1, docs/gateway.md 4.3); None: the engine asks
    lookup_key for the peer's own key."""
    lookup = command.peer_key
    if lookup is None or lookup.key is None:
        return None
    return PeerKey(lookup.key.public_key(), frozenset({command.pair.dst}))


__all__ = ["Executor"]
