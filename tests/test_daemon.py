"""The daemon's glue driven in process: real Opportunist and IkeEngine, a recording stand-in
for the datapath and the DNS fetcher (no root, no sockets). What it guards is what the daemon
itself decides: which key an identity gets, what it installs, and what hostile input costs."""

import asyncio
import dataclasses
import ipaddress
import os

import pytest
from ike_helpers import Link, events, make_engine

from oe import daemon as oedaemon, hostkey
from oe.commands import Initiate
from oe.dnskeys.choice import KeyLookup, Target, Verdict
from oe.dnskeys.records import KeyRecord, RsaPublicKey, decode_rsa_blob
from oe.eroute import Shunt
from oe.ike.auth import Identity, PeerKey
from oe.ike.childpolicy import Allow, AuthenticatedSa, Refuse
from oe.ike.config import IkeConfig
from oe.ike.constants import IdType, NotifyType
from oe.ike.events import ChildSa, ChildSaEstablished, ChildSaFailed
from oe.ike.ts import TrafficSelector
from oe.lifecycle import CHILDLESS_GRACE
from oe.flows import Pair

ME = "192.0.2.10"
PEER = "198.51.100.2"


@pytest.fixture(scope="module")
def host_key():
    return hostkey.generate(2048)


@pytest.fixture
def confdir(tmp_path, host_key):
    (tmp_path / "policies").mkdir()
    (tmp_path / "policies" / "private-or-clear").write_text("0.0.0.0/0\n")
    (tmp_path / "oe.conf").write_text("[limits]\nlookups = 8\n")
    hostkey.write(tmp_path / "hostkey.pem", host_key)
    return tmp_path


class RecordingDatapath:
    """Records what the daemon installs; every call the daemon makes on the datapath lands
    in `calls` as (method, args, kwargs)."""

    def __init__(self):
        self.calls = []

    def __getattr__(self, name):
        def record(*args, **kwargs):
            self.calls.append((name, args, kwargs))
            return len(self.calls)
        return record


class StallingFetcher:
    """A DNS fetcher whose lookups wait until released; counts what was asked."""

    def __init__(self, answer=None):
        self.asked = []
        self.release = asyncio.Event()
        self.answer = answer

    async def fetch(self, target, **_):
        self.asked.append(str(target))
        await self.release.wait()
        return self.answer(target)

    async def client(self, target):
        return await self.fetch(target.text)

    def nameservers(self):
        return []


def make_daemon(confdir, tmp_path):
    d = oedaemon.Daemon(confdir, tmp_path / "run")
    d.loop = asyncio.get_running_loop()
    d.datapath = RecordingDatapath()
    return d


def peer_key(host_key):
    return host_key.public_key()


def test_an_fqdn_id_never_borrows_an_address_key(confdir, tmp_path, host_key):
    """Defect 3: keys are looked up by (ID type, data): an ID_FQDN whose text is an address
    gets nothing, however the address's key was cached."""
    async def run():
        d = make_daemon(confdir, tmp_path)
        d.fetcher = StallingFetcher(lambda t: _lookup(host_key, PEER,
                                                      expires=d.loop.time() + 600))
        d.fetcher.release.set()
        pair = Pair.of(ME, PEER)
        d.opportunist.acquire(pair, d.loop.time())
        await d._fetch(_fetch_command(d, pair))
        assert d._lookup_key(Identity.from_address(PEER)) is not None
        assert d._lookup_key(Identity(IdType.ID_FQDN, PEER.encode())) is None
    asyncio.run(run())


def _fetch_command(d, pair):
    from oe.commands import FetchKey
    negotiation = d.opportunist.negotiations[pair]
    negotiation.stage = "dns"
    return FetchKey(pair, str(pair.dst))


class _BadKey:
    """A key record that decoded but whose key cryptography refuses (defect 8: e >= n)."""

    def public_key(self):
        raise ValueError("e must be < n")


def test_a_key_that_fails_late_still_ends_in_a_decision(confdir, tmp_path):
    """Defect 8: whatever a lookup raises, the %hold ends in a decision (here: deny)."""
    async def run():
        d = make_daemon(confdir, tmp_path)
        d.fetcher = StallingFetcher(lambda t: KeyLookup(Target.parse(PEER), Verdict.KEY,
                                                        key=_BadKey(),
                                                        gateway=ipaddress.ip_address(PEER)))
        d.fetcher.release.set()
        pair = Pair.of(ME, PEER)
        d.opportunist.acquire(pair, d.loop.time())
        try:
            await d._fetch(_fetch_command(d, pair))
        except Exception:
            pass
        assert pair not in d.opportunist.negotiations
        assert d.opportunist.shunts[pair].action is not Shunt.HOLD
    asyncio.run(run())


def test_spoofed_ike_sa_inits_cost_bounded_dns_work(confdir, tmp_path):
    """Defect 4: IKE_SA_INITs from many spoofed sources start at most [limits] lookups
    DNS fetches at once, keep one message per peer, and the rest are counted drops."""
    async def run():
        d = make_daemon(confdir, tmp_path)
        d.fetcher = StallingFetcher(lambda t: KeyLookup(t, Verdict.NOT_CAPABLE, error="none"))
        d.sides[4] = oedaemon._IkeSide(4, engine=None, runner=None)
        for i in range(200):
            for copy in range(3):  # and retransmissions: only the newest waits
                d._admit_init(bytes([copy]) * 300, (f"203.0.113.{i + 1}", 500), 500, ME)
        await asyncio.sleep(0)
        assert len(d.fetcher.asked) <= 8
        assert len(d.admission.pending) <= 8
        assert all(data == bytes([2]) * 300 for data, _, _, _ in d.admission.pending.values())
        assert d.admission.counters["ike_init_dropped"] > 0
        d.fetcher.release.set()
        await asyncio.sleep(0.01)
        assert d.admission.pending == {}
    asyncio.run(run())


def _child(local, remote, protocol=0, lport=(0, 65535), rport=(0, 65535)):
    lts = TrafficSelector(ipaddress.ip_address(local), ipaddress.ip_address(local), protocol,
                          *lport)
    rts = TrafficSelector(ipaddress.ip_address(remote), ipaddress.ip_address(remote), protocol,
                          *rport)
    return ChildSa(spi_in=0x1001, spi_out=0x2002, encr=20, key_bits=128, integ=0, esn=False,
                   key_in=os.urandom(20), key_out=os.urandom(20), integ_key_in=b"",
                   integ_key_out=b"", local_ts=(lts,), remote_ts=(rts,), local_addr=local,
                   remote_addr=remote, udp_encap=False, local_port=0, remote_port=0, dh=0)


def test_the_sa_carries_exactly_the_negotiated_selectors(confdir, tmp_path):
    """Defect 12: a CHILD SA narrowed to tcp port 22 is installed for tcp port 22 only (the
    datapath checks inbound packets against it), never as the whole host pair."""
    async def run():
        d = make_daemon(confdir, tmp_path)
        d.sides[4] = oedaemon._IkeSide(4, engine=None, runner=None)
        d._install_child(4, 1, _child(ME, PEER, protocol=6, rport=(22, 22)))
        installs = {args[0].direction: args[0]          # add_sa(SaSpec)
                    for name, args, kw in d.datapath.calls if name == "add_sa"}
        assert installs["out"].proto == 6 and tuple(installs["out"].dport) == (22, 22)
        assert tuple(installs["out"].sport) == (0, 65535)
        assert installs["in"].proto == 6 and tuple(installs["in"].sport) == (22, 22)
    asyncio.run(run())


class RecordingEngine(RecordingDatapath):
    def children(self, sa_id):
        self.calls.append(("children", (sa_id,), {}))
        return []


class NullRunner:
    def transmit(self):
        pass

    def receive(self, data, addr, local_port, local_addr):
        pass


def test_a_peer_that_moves_is_checked_against_policy_again(confdir, tmp_path):
    """Defect 3: a NAT'd peer may move (RFC 7296 2.23), but not to an address our policy
    refuses OE with: there the IKE SA is deleted instead of our ESP following it."""
    from oe.ike.events import IkeSaPeerMoved
    (confdir / "policies" / "block").write_text("203.0.113.0/24\n")

    async def run():
        d = make_daemon(confdir, tmp_path)
        engine = RecordingEngine()
        d.sides[4] = oedaemon._IkeSide(4, engine=engine, runner=NullRunner())
        d._ike_event(4, IkeSaPeerMoved(7, "198.51.100.9", 4500, ME))
        assert [c[0] for c in engine.calls] == ["children"]     # followed
        d._ike_event(4, IkeSaPeerMoved(7, "203.0.113.5", 4500, ME))
        assert ("delete_ike", 7) in [(c[0], c[1][0]) for c in engine.calls]
    asyncio.run(run())


class ClockLoop:
    """The running loop with a clock the test sets."""

    def __init__(self, loop):
        self._loop = loop
        self.now = loop.time()

    def time(self):
        return self.now

    def __getattr__(self, name):
        return getattr(self._loop, name)


def _lookup(host_key, target, gateway=None, expires=0.0):
    """What the fetcher answers for an IPSECKEY at target's reverse name naming `gateway`."""
    key = decode_rsa_blob(hostkey.public_blob(host_key))
    gw = ipaddress.ip_address(gateway or target)
    record = KeyRecord("IPSECKEY", Target.parse(target).name, 10, gw, key, None, "")
    return KeyLookup(Target.parse(target), Verdict.KEY, record=record, key=key, gateway=gw,
                     expires=expires)


def test_cached_peer_keys_expire_with_their_dns_ttl(confdir, tmp_path, host_key):
    """Defect 9: a key fetched from DNS is used only while its TTL runs (a rotated or revoked
    key, or a previous owner's key for an address, does not stay valid until restart)."""
    async def run():
        d = make_daemon(confdir, tmp_path)
        d.loop = ClockLoop(d.loop)
        start = d.loop.now
        d.fetcher = StallingFetcher(lambda t: _lookup(host_key, PEER, expires=start + 600))
        d.fetcher.release.set()
        pair = Pair.of(ME, PEER)
        d.opportunist.acquire(pair, start)
        await d._fetch(_fetch_command(d, pair))
        peer = Identity.from_address(PEER)
        d.loop.now = start + 599
        assert d._lookup_key(peer) is not None
        d.loop.now = start + 601
        assert d._lookup_key(peer) is None
    asyncio.run(run())


def test_a_delegated_key_is_never_kept_for_the_client_nor_the_gateway(confdir, tmp_path,
                                                                      host_key):
    """Defect 11: the key in D's record that names gateway G is not D's (D does not sign with
    it), and D's zone cannot vouch for G: the key is kept under neither identity (the Initiate
    carries it pinned for G instead, docs/gateway.md 5)."""
    gateway = "198.51.100.1"

    async def run():
        d = make_daemon(confdir, tmp_path)
        d.fetcher = StallingFetcher(lambda t: _lookup(host_key, PEER, gateway=gateway,
                                                      expires=d.loop.time() + 600))
        d.fetcher.release.set()
        pair = Pair.of(ME, PEER)
        d.opportunist.acquire(pair, d.loop.time())
        await d._fetch(_fetch_command(d, pair))
        assert d._lookup_key(Identity.from_address(PEER)) is None
        assert d._lookup_key(Identity.from_address(gateway)) is None
    asyncio.run(run())


def test_a_refused_child_sa_ends_the_negotiation(confdir, tmp_path):
    """Review of issue 10: a CHILD SA oe refuses (selectors it cannot enforce) is deleted and
    the negotiation ends in the group's failure shunt, never a %hold that stays."""
    async def run():
        d = make_daemon(confdir, tmp_path)
        engine = RecordingEngine()
        d.sides[4] = oedaemon._IkeSide(4, engine=engine, runner=NullRunner())
        pair = Pair.of(ME, PEER)
        d.opportunist.acquire(pair, d.loop.time())
        _fetch_command(d, pair)
        d.opportunist.negotiations[pair].stage = "ike"
        d.lifecycle.initiated(4, 9, Initiate(pair, pair.dst))
        from oe.ike.events import ChildSaEstablished
        d._ike_event(4, ChildSaEstablished(9, _child(ME, PEER, 6, rport=(1000, 2000))))
        assert pair not in d.opportunist.negotiations
        assert d.opportunist.shunts[pair].action is Shunt.PASS
        assert "port range" in d.opportunist.shunts[pair].reason
        assert ("delete_child", (9, 0x1001)) in [(c[0], c[1][:2]) for c in engine.calls]
    asyncio.run(run())


def test_an_ike_sa_without_a_child_sa_is_deleted_after_a_while(confdir, tmp_path):
    """Review of issue 10: an authenticated peer whose CHILD SAs we refuse keeps no IKE SA
    with us for long (else any key holder could pile them up)."""
    from oe.ike.events import IkeSaEstablished
    async def run():
        d = make_daemon(confdir, tmp_path)
        d.loop = ClockLoop(d.loop)
        engine = RecordingEngine()
        d.sides[4] = oedaemon._IkeSide(4, engine=engine, runner=NullRunner())
        d._ike_event(4, IkeSaEstablished(5, b"i" * 8, b"r" * 8, False, ME, PEER, 500, PEER,
                                         False))
        d._on_timer(d.loop.now + CHILDLESS_GRACE - 1)
        assert "delete_ike" not in [c[0] for c in engine.calls]
        d._on_timer(d.loop.now + CHILDLESS_GRACE + 1)
        assert ("delete_ike", 5) in [(c[0], c[1][0]) for c in engine.calls]
    asyncio.run(run())


def test_peer_supplied_text_is_escaped_in_the_log(confdir, tmp_path, caplog):
    """Defect 10: an ID or reason with control characters cannot forge log lines or drive
    the terminal of whoever reads the log."""
    import logging
    from oe.ike.events import IkeSaFailed
    handler = logging.StreamHandler(__import__("io").StringIO())
    oedaemon.log_to(handler)
    try:
        async def run():
            d = make_daemon(confdir, tmp_path)
            d.sides[4] = oedaemon._IkeSide(4, engine=RecordingEngine(), runner=NullRunner())
            d._ike_event(4, IkeSaFailed(3, PEER, 24, "bad ID 'x\n2026 oe: forged\x1b[2J'", True))
        asyncio.run(run())
        try:
            raise ValueError("bad record\n2026 oe: forged too\x1b[31m")
        except ValueError:
            oedaemon.log.exception("lookup")
        written = handler.stream.getvalue()
        assert "\x1b" not in written and "\n2026 oe: forged" not in written
        assert "\\x1b[2J" in written and "\\x0a2026" in written
        assert "    2026 oe: forged too\\x1b[31m" in written     # a traceback line, indented
    finally:
        logging.getLogger().removeHandler(handler)


def test_unknown_peers_return_a_cookie_before_dns_work_under_load(confdir, tmp_path, host_key):
    """Defect 4: once half of [limits] lookups are busy, an IKE_SA_INIT from a peer whose key
    we do not hold must come back with a COOKIE (RFC 7296 2.6) before any DNS lookup."""
    async def run():
        d = make_daemon(confdir, tmp_path)
        d.fetcher = StallingFetcher(lambda t: _lookup(host_key, str(t.address),
                                                      expires=d.loop.time() + 600))
        d.sides[4] = oedaemon._IkeSide(4, engine=None, runner=NullRunner())
        assert not d._cookie_required(("203.0.113.1", 500))
        for i in range(4):
            d._admit_init(b"x", (f"203.0.113.{i + 1}", 500), 500, ME)
        assert d._cookie_required(("203.0.113.99", 500))
        d.fetcher.release.set()
        await asyncio.sleep(0.01)
        assert not d._cookie_required(("203.0.113.99", 500))   # load gone
    asyncio.run(run())


def test_responder_selectors_must_be_single_hosts_whose_group_takes_oe(confdir, tmp_path,
                                                                      host_key):
    """The engine's child_policy hook as the daemon answers it: the peer's side narrowed to
    the hosts its key vouches for, whose policy group must accept OE inbound; a host of a
    clear group refuses the whole CHILD SA."""
    (confdir / "policies" / "clear").write_text("203.0.113.0/24\n")
    ip = ipaddress.ip_address

    def sa(*vouched):
        return AuthenticatedSa(1, ME, Identity.from_address(vouched[0]),
                               PeerKey(host_key.public_key(), frozenset(vouched)))

    async def run():
        d = make_daemon(confdir, tmp_path)
        local = (TrafficSelector.host(ME),)
        ssh = (TrafficSelector.host(PEER, 6, 22),)
        assert d._child_policy(sa(PEER), ssh, local) == Allow(local, ssh)
        assert d._child_policy(sa(PEER), (TrafficSelector(ip(PEER), ip("198.51.100.3")),),
                               local) == Allow(local, (TrafficSelector.host(PEER),))
        assert isinstance(d._child_policy(sa("203.0.113.5"), (TrafficSelector.host(
            "203.0.113.5"),), local), Refuse)
        wide = (TrafficSelector(ip("0.0.0.0"), ip("255.255.255.255")),)
        assert isinstance(d._child_policy(sa(PEER, "203.0.113.5"), wide, local), Refuse)
    asyncio.run(run())


def test_the_daemons_selector_policy_decides_in_the_engine(confdir, tmp_path):
    """An IkeEngine with the daemon's hook, as _open_side wires it: a peer of the OE group
    gets its CHILD SA, a peer of the clear group (with a valid key) gets TS_UNACCEPTABLE."""
    (confdir / "policies" / "clear").write_text("203.0.113.0/24\n")

    async def run():
        d = make_daemon(confdir, tmp_path)
        d.sides[4] = oedaemon._IkeSide(4, engine=None, runner=None)
        got = {}
        for peer in (PEER, "203.0.113.5"):
            us = make_engine(ME, "b", {peer: "a"}, 2, child_policy=d._child_policy)
            them = make_engine(peer, "a", {ME: "b"}, 1)
            them.initiate(ME, 0)
            Link(them, us).roundtrip(them)
            got[peer] = events(us)[1]
        assert isinstance(got[PEER], ChildSaEstablished)
        assert isinstance(got["203.0.113.5"], ChildSaFailed)
        assert got["203.0.113.5"].notify == NotifyType.TS_UNACCEPTABLE
    asyncio.run(run())


class StatusDatapath(RecordingDatapath):
    """A datapath with the counters status reads."""

    class classifier:
        table = type("T", (), {"entries": []})()

        @staticmethod
        def counters():
            return []

    def sa_stats(self, handle, direction):
        return {"packets": 3, "bytes": 300} if direction == "in" else {"packets": 5, "bytes": 500}

    def stats(self):
        return {"holds": 0, "holds_evicted": 0}


def test_status_shows_each_child_sa_with_algorithms_pfs_and_times(confdir, tmp_path):
    """Issue 15: a CHILD SA in `oe status` as an IPsec user expects it: algorithms with the PFS
    group, rekey and expiry, last use; one structure for --json, the text and --brief."""
    from oe.ike.events import ChildSaEstablished, IkeSaInfo
    from oe.status import Status, render, render_brief
    import dataclasses

    async def run():
        d = make_daemon(confdir, tmp_path)
        d.loop = ClockLoop(d.loop)
        d.datapath = StatusDatapath()
        engine = RecordingEngine()
        engine.stats = lambda: {"half_open_dropped": 0}
        engine.half_open = lambda: 0
        engine.ike_sas = lambda: [IkeSaInfo(
            9, ME, 500, PEER, 500, True, b"\x01" * 8, b"\x02" * 8, "ESTABLISHED",
            "AES_GCM_16_128", "NONE", "PRF_HMAC_SHA2_256", "CURVE25519", d.loop.now - 5,
            d.loop.now - 1, 1)]
        d.sides[4] = oedaemon._IkeSide(4, engine=engine, runner=NullRunner())
        d.fetcher.stats = type("S", (), {"refreshes": 0})()
        child = dataclasses.replace(_child(ME, PEER), dh=31)
        d._ike_event(4, ChildSaEstablished(9, child))
        d.loop.now += 100
        status = d.status()
        [sa] = status.sas
        assert (sa.sa_id, sa.encryption, sa.dh_group, sa.esn) == (9, "AES_GCM_16_128",
                                                                  "CURVE25519", False)
        lifetime, margin = d.config.ike.sa_lifetime, d.config.ike.rekey_margin
        assert sa.rekey_in == max(lifetime - margin, lifetime / 2) - 100
        assert sa.expires_in == lifetime - 100 and sa.last_used == 0
        assert (sa.packets_in, sa.bytes_out) == (3, 500)
        data = status.to_json()
        assert Status.from_json(data) == status
        assert data["ike_sas"][0]["spi_i"] == "01" * 8 and data["ike_sas"][0]["age"] == 5
        assert data["ike_sas"][0]["last_heard"] == 1
        assert data["counters"]["children_refused"] == 0 and "ike_init_dropped" in \
            data["counters"] and data["limits"]["lookups"]["max"] == 8
        # our own lookups for trapped packets: a burst fills them (issue 14)
        assert data["limits"]["acquire_lookups"] == {"max": 16, "in_use": 0, "dropped": 0}
        assert "PFS CURVE25519, rekey in" in render(status)
        assert render_brief(status).startswith(f"{PEER:<24} up     1 SA  AES_GCM_16_128 PFS")
    asyncio.run(run())


def test_the_daemon_sleeps_until_the_earliest_timer(confdir, tmp_path):
    """Issue 11, 3: no 1 s poll: a failure shunt of 0.2 s goes after 0.2 s, woken by
    next_timer(), and an idle daemon has nothing to wake for but its liveness sample."""
    (confdir / "oe.conf").write_text("shunt_lifetime = 0.2\n[limits]\nlookups = 8\n")

    async def run():
        d = make_daemon(confdir, tmp_path)
        d.lifecycle.started(d.loop.time())
        assert d._next_timer() == pytest.approx(d.loop.time() + d.config.ike.dpd_delay, abs=1)
        task = d.loop.create_task(d._timers())
        pair = Pair.of(ME, PEER)
        d.opportunist.acquire(pair, d.loop.time())
        d.opportunist.negotiation_failed(pair, "no key", d.loop.time())
        d._apply()
        assert d._next_timer() == pytest.approx(d.loop.time() + 0.2, abs=0.05)
        await asyncio.sleep(0.5)
        assert pair not in d.opportunist.shunts
        task.cancel()
    asyncio.run(run())


def test_a_timer_that_raises_does_not_stop_the_timers(confdir, tmp_path, caplog):
    """One timer's bug is logged; the next deadline still fires (the shunt still expires)."""
    (confdir / "oe.conf").write_text("shunt_lifetime = 0.2\n[limits]\nlookups = 8\n")

    async def run():
        d = make_daemon(confdir, tmp_path)
        tick, calls = d.opportunist.tick, []

        def buggy(now):
            calls.append(now)
            if len(calls) == 1:
                raise RuntimeError("a bug")
            return tick(now)
        d.opportunist.tick = buggy
        task = d.loop.create_task(d._timers())
        pair = Pair.of(ME, PEER)
        d.opportunist.acquire(pair, d.loop.time())
        d.opportunist.negotiation_failed(pair, "no key", d.loop.time())
        d._apply()
        await asyncio.sleep(0.5)
        assert len(calls) >= 2 and pair not in d.opportunist.shunts
        task.cancel()
    asyncio.run(run())


class EngineRunner:
    """In-process stand-in for IkeRunner: the daemon's engine, its clock, what it sent."""

    def __init__(self, engine, clock):
        self.engine, self.clock, self.sent = engine, clock, []

    def receive(self, data, addr, local_port, local_addr=ME):
        self.engine.receive_datagram(data, addr, self.clock(), local_port=local_port,
                                     local_addr=local_addr)
        self.transmit()

    def transmit(self):
        self.sent += self.engine.datagrams_to_send(self.clock())


def test_a_responder_whose_lookup_fails_refuses_at_once_and_looks_up_once(confdir, tmp_path):
    """Issue 15, 8: while only the responder's nameserver is silent, the initiator learns
    within one lookup budget (an unprotected AUTHENTICATION_FAILED, RFC 7296 2.21.1, which
    ends its IKE_SA_INIT at once), and its retransmits get the same answer without a second
    lookup."""
    async def run():
        d = make_daemon(confdir, tmp_path)
        d.loop = ClockLoop(d.loop)
        d.fetcher = StallingFetcher(lambda t: KeyLookup(
            t, Verdict.NOT_CAPABLE, error=f"DNS timeout: no answer for {t.name}",
            expires=d.loop.now))
        bob = make_engine(ME, "b", {}, 7, admit_init=d._admit_init,
                          cookie_required=d._cookie_required)
        runner = EngineRunner(bob, d.loop.time)
        d.sides[4] = oedaemon._IkeSide(4, engine=bob, runner=runner)
        alice = make_engine(PEER, "a", {}, 8)
        sa_id = alice.initiate(ME, d.loop.now)
        (init, _, _, _), = alice.datagrams_to_send(d.loop.now)
        runner.receive(init, (PEER, 500), 500)
        await asyncio.sleep(0)
        assert len(d.fetcher.asked) == 1 and runner.sent == []      # waits for the key
        d.loop.now += 3.0
        d.fetcher.release.set()
        await asyncio.sleep(0.01)
        (answer, to, _, _), = runner.sent
        assert to == (PEER, 500)
        alice.receive_datagram(answer, (ME, 500), d.loop.now)
        failed, = [e for e in events(alice) if e.sa_id == sa_id]
        assert failed.notify == NotifyType.AUTHENTICATION_FAILED and not failed.local
        runner.receive(init, (PEER, 500), 500)                      # a late retransmit
        await asyncio.sleep(0.01)
        assert len(d.fetcher.asked) == 1 and len(runner.sent) == 2
        assert d.admission.counters["ike_init_refused"] == 2
    asyncio.run(run())


def test_a_refusal_ends_only_the_exchange_whose_spi_it_names():
    """RFC 7296 2.21.1: an unprotected refusal is taken at once (oe.ike.engine refuse_init),
    so it must name our IKE_SA_INIT: one for another SPIi is dropped, and only an IKE_SA_INIT
    request is ever answered so."""
    alice, bob = make_engine(PEER, "a", {}, 8), make_engine(ME, "b", {}, 7)
    sa_id = alice.initiate(ME, 0.0)
    (init, _, _, _), = alice.datagrams_to_send(0.0)
    bob.refuse_init(bytes([init[0] ^ 1]) + init[1:], (PEER, 500), 500, ME,
                    NotifyType.AUTHENTICATION_FAILED)
    (forged, _, _, _), = bob.datagrams_to_send(0.0)
    alice.receive_datagram(forged, (ME, 500), 0.1)
    assert events(alice) == [] and alice.stats()["unexpected_dropped"] == 1
    bob.refuse_init(forged, (PEER, 500), 500, ME, NotifyType.AUTHENTICATION_FAILED)
    assert bob.datagrams_to_send(0.1) == []
    bob.refuse_init(init, (PEER, 500), 500, ME, NotifyType.AUTHENTICATION_FAILED)
    (answer, _, _, _), = bob.datagrams_to_send(0.2)
    alice.receive_datagram(answer, (ME, 500), 0.3)
    failed, = events(alice)
    assert failed.sa_id == sa_id and failed.notify == NotifyType.AUTHENTICATION_FAILED
    assert failed.reason == "peer answered AUTHENTICATION_FAILED"


def test_a_child_sa_for_his_client_waits_for_the_delegation_lookup_then_goes_on(
        confdir, tmp_path):
    """docs/gateway.md 4.2, the daemon's glue: the engine's Wait becomes a FetchDelegation
    with the daemon's fetcher, its answer a ResumeChild, and the kept IKE_AUTH is answered
    with the CHILD SA for the client whose secure record names the peer."""
    from ike_helpers import host_key as test_key
    from oe.ike.events import ChildAwaitsDns, IkeSaEstablished
    gw, client = "192.0.2.66", "198.51.100.77"
    blob = hostkey.public_blob(test_key("m", 2048).public_key())
    record = KeyRecord("IPSECKEY", Target.parse(client).name, 10, ipaddress.ip_address(gw),
                       decode_rsa_blob(blob), blob, "")
    delegating = KeyLookup(Target.parse(client), Verdict.KEY, record=record, key=record.key,
                           blob=blob, gateway=record.gateway, records=(record,),
                           dnssec="secure", expires=1e9)

    class Runner:
        """Hands ChildAwaitsDns to the daemon and keeps the other events for the test."""

        def __init__(self):
            self.seen = []

        def transmit(self):
            while (event := us.next_event()) is not None:
                if isinstance(event, ChildAwaitsDns):
                    d._ike_event(4, event)
                else:
                    self.seen.append(event)

    async def run():
        nonlocal d, us
        d = make_daemon(confdir, tmp_path)
        d.fetcher = StallingFetcher(lambda target: delegating)
        us = make_engine(ME, "b", {gw: "m"}, 2, child_policy=d._child_policy)
        runner = Runner()
        d.sides[4] = oedaemon._IkeSide(4, engine=us, runner=runner)
        them = make_engine(gw, "m", {ME: "b"}, 1)
        them.initiate(ME, 0, local_ts=[TrafficSelector.host(client)])
        link = Link(them, us)
        link.roundtrip(them)
        runner.transmit()
        await asyncio.sleep(0.01)
        assert len(d.fetcher.asked) == 1 and client in d.fetcher.asked[0]
        assert runner.seen == []
        d.fetcher.release.set()
        await asyncio.sleep(0.01)
        assert [type(e) for e in runner.seen] == [IkeSaEstablished, ChildSaEstablished]
        assert runner.seen[1].child.remote_ts == (TrafficSelector.host(client),)
        link.roundtrip(us)
        assert [type(e) for e in events(them)] == [IkeSaEstablished, ChildSaEstablished]
        assert d.admission.fetching == {} and d.admission.waiting == {}
    d = us = None


def _delegating(client: str, gateway, host_key) -> KeyLookup:
    """`client`'s record: `gateway` speaks for it with `host_key`'s key."""
    numbers = host_key.public_key().public_numbers()
    return KeyLookup(Target.parse(client), Verdict.KEY, key=RsaPublicKey(numbers.e, numbers.n),
                     gateway=gateway)


def recording_side(d) -> RecordingEngine:
    """An IPv4 side of `d` whose engine records the calls, our address ME."""
    engine = RecordingEngine()
    engine.config = IkeConfig(local_addrs=frozenset({ME}), private_key=None)
    d.sides[4] = oedaemon._IkeSide(4, engine=engine, runner=NullRunner())
    return engine


def test_the_clients_of_one_gateway_share_its_ike_sa(confdir, tmp_path, host_key):
    """docs/gateway.md 4.3 and 5: every Initiate goes through Lifecycle.route_initiate. The
    first starts an IKE SA with the delegating record's key pinned, vouching for its client
    only (never the gateway's own address); the second waits for IKE_AUTH, then the IKE SA
    vouches for its client and asks for one more CHILD SA."""
    from oe.ike.events import IkeSaEstablished

    async def run():
        d = make_daemon(confdir, tmp_path)
        engine = recording_side(d)
        gateway = ipaddress.ip_address("192.0.2.1")
        commands = []
        for client in ("198.51.100.10", "198.51.100.20"):
            pair = Pair.of(ME, client)
            d.opportunist.acquire(pair, d.loop.time())
            d.opportunist.negotiations[pair].stage = "ike"
            commands.append(Initiate(pair, gateway, peer_key=_delegating(client, gateway,
                                                                         host_key)))
        d._run(commands)
        [(_, (peer, _), started)] = [c for c in engine.calls if c[0] == "initiate"]
        assert peer == "192.0.2.1"
        assert started["peer_key"].addresses == {ipaddress.ip_address("198.51.100.10")}
        assert started["peer_key"].public_key.public_numbers() == \
            host_key.public_key().public_numbers()
        sa_id = len(engine.calls)
        d._ike_event(4, IkeSaEstablished(sa_id, b"i" * 8, b"r" * 8, True, ME, "192.0.2.1", 500,
                                         "192.0.2.1", False))
        vouched, created = engine.calls[-2:]
        assert vouched[:2] == ("vouch", (sa_id, "198.51.100.20"))
        assert created[0] == "create_child" and created[1][0] == sa_id
        assert created[2]["remote_ts"] == [TrafficSelector.host("198.51.100.20")]
    asyncio.run(run())


def test_an_ike_sa_the_gateway_started_carries_our_pair_to_its_client(confdir, tmp_path,
                                                                      host_key):
    """The gateway began the IKE SA (its own address ID, the key our pair's record names): our
    CHILD SA for its client goes on it, no second IKE SA (docs/gateway.md 5)."""
    from oe.ike.auth import PeerKey
    from oe.ike.events import IkeSaEstablished

    async def run():
        d = make_daemon(confdir, tmp_path)
        engine = recording_side(d)
        gateway = ipaddress.ip_address("192.0.2.1")
        d._ike_event(4, IkeSaEstablished(
            3, b"i" * 8, b"r" * 8, False, ME, "192.0.2.1", 500, "192.0.2.1", False,
            peer_key=PeerKey(host_key.public_key(), frozenset({"192.0.2.1"}))))
        pair = Pair.of(ME, "198.51.100.10")
        d.opportunist.acquire(pair, d.loop.time())
        d.opportunist.negotiations[pair].stage = "ike"
        d._run([Initiate(pair, gateway, peer_key=_delegating("198.51.100.10", gateway,
                                                             host_key))])
        assert [c[0] for c in engine.calls] == ["vouch", "create_child"]
        assert engine.calls[0][1] == (3, "198.51.100.10")
    asyncio.run(run())


def test_a_client_lookup_is_handed_back_with_its_role_and_its_key_never_kept(confdir, tmp_path,
                                                                           host_key):
    """docs/gateway.md 3: our client's record carries our own key; it is checked against
    Ours, never kept as a peer's key, and the target's answer completes the negotiation."""
    from oe.commands import FetchKey
    from oe.opportunist import Ours
    client, target = "198.51.100.7", PEER

    async def run():
        d = make_daemon(confdir, tmp_path)
        blob = hostkey.public_blob(host_key)
        d.opportunist.ours = Ours.of([ME], ["198.51.100.0/24"], blob)
        d.fetcher = StallingFetcher(lambda t: dataclasses.replace(
            _lookup(host_key, str(t), gateway=ME, expires=d.loop.time() + 600), blob=blob)
                                    if str(t) == client else
                                    _lookup(host_key, str(t), expires=d.loop.time() + 600))
        d.fetcher.release.set()
        pair = Pair.of(client, target)
        d.opportunist.acquire(pair, d.loop.time())
        negotiation = d.opportunist.negotiations[pair]
        negotiation.stage = "dns"
        await d._fetch(FetchKey(pair, client, role="client"))
        assert d._lookup_key(Identity.from_address(ME)) is None
        assert pair in d.opportunist.negotiations  # the client check passed
        assert negotiation.local == ipaddress.ip_address(ME) and not negotiation.awaits_client
    asyncio.run(run())


def test_an_fqdn_gateway_lookup_ends_in_a_decision(confdir, tmp_path):
    """A lookup that raises still fails the negotiation: a %hold never stays."""
    import dns.name

    from oe.commands import FetchGateway

    class Broken:
        async def gateway(self, *_):
            raise RuntimeError("boom")

        def nameservers(self):
            return []

    async def run():
        d = make_daemon(confdir, tmp_path)
        d.fetcher = Broken()
        pair = Pair.of(ME, PEER)
        d.opportunist.acquire(pair, d.loop.time())
        d.opportunist.negotiations[pair].stage = "gateway"
        await d._fetch_gateway(FetchGateway(pair, dns.name.from_text("gw.example."), "secure"))
        assert pair not in d.opportunist.negotiations
        assert "address lookup for gateway gw.example. failed: boom" in \
            d.opportunist.shunts[pair].reason
    asyncio.run(run())


def test_the_tun_mtu_leaves_room_for_the_roomiest_family():
    """A dual-stack host's TUN is sized for ESP-in-UDP over IPv4 (1435 on a 1500 link), not
    over IPv6 (1415): an inner packet larger than its SA carries gets a too-big from the
    datapath and TCP is clamped to the SA's MTU (docs/pmtu.md), so IPv6 loses nothing while
    IPv4 keeps 20 bytes (README: Tunnel throughput, 1400-byte UDP datagrams whole)."""
    assert oedaemon.tun_mtu(1500, {4, 6}) == 1435
    assert oedaemon.tun_mtu(1500, {6}) == 1415
    assert oedaemon.tun_mtu(1400, {4}) == 1335
