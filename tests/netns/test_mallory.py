"""Mallory on the e2e bridge: what an on-path attacker without keys injects changes nothing.

    dns 192.0.2.53   alice 192.0.2.10   bob 192.0.2.20   mallory 192.0.2.66   (+ 2001:db8::/64)

alice and bob run oe (private-or-clear everywhere) and ping each other over IPv4 and IPv6
through their SAs the whole time. Mallory reads alice's wire (a capture on her bridge port:
the IKE SPIs and Message IDs, the SPIs, ESP packets to replay) and sends from her own
namespace with forged source addresses (tests/netns/mallory.py). After every attack
(issue 10, "An attacker in the end-to-end tests"):

- every SA is still there with the same SPIs on both sides, and no SA was added;
- the pings went on, with no loss beyond a small bound;
- the daemons' memory grew by less than RSS_BOUND;
- the counters of `oe status --json` ("datapath", and any section named in COUNTER_SECTIONS)
  account for what was dropped: each test's table for counted() says which counters must grow
  with which of mallory's steps; new counter names go there;
- cleartext claiming bob's address never reaches alice's applications (KLIPS delivered it).

A test of its own forges answers to a CHILD SA rekey while bob is slow to answer.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from unittest import mock

import pytest

from oe import demo
from oe.netns import Host, World, wait_for

import mallory

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root for network namespaces")

ALICE, BOB = demo.ADDRESSES["alice"][0], demo.ADDRESSES["bob"][0]
ALICE6, BOB6 = demo.ADDRESSES["alice"][1], demo.ADDRESSES["bob"][1]
MALLORY, MALLORY6 = "192.0.2.66", "2001:db8::66"
PAIRS = ((ALICE, BOB), (ALICE6, BOB6))
ATTACKER = Path(mallory.__file__)
LISTEN_PORT = 7777
RSS_BOUND = 20 << 20          # bytes a daemon may grow by while attacked
PING_INTERVAL = 0.05
LOSS_BOUND = 0.05             # of the pings sent during an attack, plus a couple in flight
COVERED = 0.9                 # a counter must account for this share of what was sent
COUNTER_SECTIONS = ("datapath", "ike")
"""Sections of `oe status --json` whose numbers are drop/packet counters (add new ones here)."""
PAUSE = 2.5                   # seconds bob's daemon is stopped around alice's rekey
SOFT = 8.0                    # alice's soft lifetime in the rekey test (hard: twice that)
FLOOD = 100_000               # packets per second mallory tries, for FLOOD_TIME seconds
FLOOD_TIME = 1.5

_LISTENER = """
import select, socket, sys
socks = []
for family, address in ((socket.AF_INET, sys.argv[1]), (socket.AF_INET6, sys.argv[2])):
    s = socket.socket(family, socket.SOCK_DGRAM); s.bind((address, int(sys.argv[3])))
    socks.append(s)
print("ready", flush=True)
while True:
    for s in select.select(socks, [], [])[0]:
        data, peer = s.recvfrom(2048)
        print(peer[0], data.decode(errors="replace"), flush=True)
"""

_SENDER = """
import socket, sys
for address in sys.argv[2:]:
    s = socket.socket(socket.AF_INET6 if ':' in address else socket.AF_INET, socket.SOCK_DGRAM)
    s.sendto(sys.argv[1].encode(), (address, %d))
""" % LISTEN_PORT


@dataclass
class Arena:
    oe: demo.OeWorld
    mallory: Host
    recon: mallory.Recon
    pingers: dict[str, Path] = field(default_factory=dict)
    """ping log by destination"""
    heard: Path | None = None
    """what alice's UDP listener received, one "source payload" line each"""
    capture: object = None
    pcap: Path | None = None

    @property
    def world(self) -> World:
        return self.oe.world

    def status(self, name: str) -> dict:
        return json.loads(demo.oe_cmd(self.oe, name, "status", "--json").stdout)

    def rss(self, name: str) -> int:
        text = Path(f"/proc/{self.oe.daemons[name].pid}/status").read_text()
        return int(re.search(r"VmRSS:\s+(\d+) kB", text).group(1)) << 10

    def attack(self, steps: list[dict], timeout: float = 60) -> dict[str, int]:
        """Run mallory's plan in her namespace; packets sent by step name."""
        proc = self.world.run(self.mallory, sys.executable, str(ATTACKER), self._plan(steps),
                              timeout=timeout)
        sent = json.loads(proc.stdout)
        print("mallory sent:", sent)
        return sent

    def attack_in_background(self, steps: list[dict], **plan) -> subprocess.Popen:
        """The same, while the test watches; what was sent goes to mallory.log."""
        return self.world.spawn(self.mallory, sys.executable, str(ATTACKER),
                                self._plan(steps, **plan), log="mallory.log")

    def _plan(self, steps: list[dict], **plan) -> str:
        path = self.mallory.dir / f"plan{time.monotonic_ns()}.json"
        path.write_text(json.dumps({"steps": steps, **plan}))
        return str(path)


@contextmanager
def mallory_world(workdir: Path, pings=(BOB, BOB6), prefix: str = "oe", **build):
    """demo.build(**build) plus mallory; oe on alice and bob, alice pinging `pings`, the capture
    of alice's wire running. Everything is torn down, whatever happens. A `prefix` of its own
    lets this world's namespaces live beside another's (demo.build always says "oe")."""
    with mock.patch.object(demo, "World", lambda _, path: World(prefix, path)):
        oe = demo.build(workdir, **build)
    try:
        host = oe.world.host("mallory", f"{MALLORY}/24", f"{MALLORY6}/64")
        arena = Arena(oe, host, mallory.Recon())
        arena.capture, arena.pcap = demo.start_capture(oe)
        for name in ("alice", "bob"):
            demo.start_oe(oe, name)
        for dst in pings:
            log = f"ping-{dst.replace(':', '_')}.log"
            oe.world.spawn(oe.hosts["alice"], "ping", "-n", "-i", str(PING_INTERVAL), dst,
                           log=log)
            arena.pingers[dst] = oe.hosts["alice"].dir / log
        yield arena
    finally:
        for name in list(oe.daemons):
            demo.stop_oe(oe, name)
        oe.close()


def read_wire(arena: Arena) -> None:
    """Stop the capture; what mallory learnt from it, both address families."""
    World.stop(arena.capture)
    for a, b in PAIRS:
        seen = mallory.recon(arena.pcap, a, b)
        arena.recon.ike_sas += seen.ike_sas
        arena.recon.ike_messages += seen.ike_messages
        arena.recon.esp += seen.esp


@pytest.fixture(scope="module")
def arena(tmp_path_factory):
    """alice and bob with SAs up (IPv4 and IPv6), pinging; mallory has read alice's wire."""
    with mallory_world(tmp_path_factory.mktemp("mallory"), prefix="oemal") as arena:
        oe = arena.oe
        arena.heard = oe.hosts["alice"].dir / "heard.log"
        listener = oe.world.spawn(oe.hosts["alice"], sys.executable, "-u", "-c", _LISTENER,
                                  ALICE, ALICE6, str(LISTEN_PORT), log="heard.log")
        assert wait_for(lambda: "ready" in arena.heard.read_text(), 10) and listener.poll() is None
        assert wait_for(lambda: len(arena.status("alice")["sas"]) == 2
                        and len(arena.status("bob")["sas"]) == 2, 20), arena.status("alice")
        time.sleep(1.0)  # ESP both ways for mallory to record
        read_wire(arena)
        assert len(arena.recon.ike_sas) == 2 and arena.recon.esp, arena.recon
        yield arena


# ------------------------------------------------------------------------- what must hold

@dataclass
class Before:
    sas: dict[str, set]
    counters: dict[str, dict[str, int]]
    rss: dict[str, int]
    ping_offsets: dict[str, int]


def before(arena: Arena) -> Before:
    statuses = {name: arena.status(name) for name in ("alice", "bob")}
    return Before({name: _sa_keys(s) for name, s in statuses.items()},
                  {name: counters(s) for name, s in statuses.items()},
                  {name: arena.rss(name) for name in statuses},
                  {dst: log.stat().st_size for dst, log in arena.pingers.items()})


def counters(status: dict) -> dict[str, int]:
    """The counters of `oe status --json`, by name ("datapath" ones bare, others "section.name")."""
    found = {}
    for section in COUNTER_SECTIONS:
        prefix = "" if section == "datapath" else f"{section}."
        found.update({prefix + k: v for k, v in status.get(section, {}).items()
                      if isinstance(v, int)})
    return found


def _sa_keys(status: dict) -> set:
    return {(sa["src"], sa["dst"], sa["spi_in"], sa["spi_out"]) for sa in status["sas"]}


def unharmed(arena: Arena, was: Before) -> dict[str, dict[str, int]]:
    """The invariants after an attack; returns the counters' growth by host."""
    time.sleep(1.0)  # pings sent during the attack are answered or lost by now
    problems = []
    statuses = {name: arena.status(name) for name in ("alice", "bob")}
    deltas = {name: {k: v - was.counters[name].get(k, 0) for k, v in counters(s).items()}
              for name, s in statuses.items()}
    for name, status in statuses.items():
        print(f"{name}'s counters grew by", {k: v for k, v in deltas[name].items() if v})
        now = _sa_keys(status)
        if now != was.sas[name]:
            problems.append(f"{name}'s SAs changed: before {sorted(was.sas[name])}, "
                            f"after {sorted(now)}")
        grown = arena.rss(name) - was.rss[name]
        print(f"{name} RSS grew by {grown >> 10} KiB")
        if grown >= RSS_BOUND:
            problems.append(f"{name}'s daemon grew by {grown >> 20} MiB (bound "
                            f"{RSS_BOUND >> 20} MiB)")
    problems += mirrored(statuses["alice"]["sas"], statuses["bob"]["sas"])
    for dst in arena.pingers:
        problems += pings_went_on(arena, dst, was.ping_offsets[dst], "during the attack")
    assert not problems, "\n".join(problems)
    return deltas


def mirrored(alice: list[dict], bob: list[dict]) -> list[str]:
    """Each side's SPIs are the other's, reversed: nothing foreign slipped into either."""
    if {(sa["spi_in"], sa["spi_out"]) for sa in alice} == {
            (sa["spi_out"], sa["spi_in"]) for sa in bob}:
        return []
    return [f"alice's SAs {alice} are not bob's {bob} reversed"]


def pings_went_on(arena: Arena, dst: str, offset: int, when: str) -> list[str]:
    """Pings to dst answered since `offset` of its log, with at most LOSS_BOUND lost."""
    answered, lost = _pings(arena.pingers[dst], offset)
    print(f"ping {dst} {when}: {answered} answered, {lost} lost")
    if answered < 10 or lost > LOSS_BOUND * (answered + lost) + 2:
        return [f"ping {dst}: {answered} answered, {lost} lost {when}"]
    return []


def _pings(log: Path, offset: int) -> tuple[int, int]:
    """Answered and missing icmp_seq since `offset` in a running ping's output."""
    with open(log, "rb") as f:
        f.seek(offset)
        text = f.read().decode(errors="replace")
    seqs = {int(m) for m in re.findall(r"bytes from .*icmp_seq=(\d+)", text)}
    if not seqs:
        return 0, 0
    return len(seqs), max(seqs) - min(seqs) + 1 - len(seqs)


def counted(deltas: dict[str, dict[str, int]], sent: dict[str, int],
            table: dict[tuple[str, tuple[str, ...]], tuple[str, ...]]) -> None:
    """table: (host, counters) -> steps; the counters' summed growth on that host must account
    for COVERED of the packets those steps sent there."""
    problems = []
    for (host, counters), steps in table.items():
        grew = sum(deltas[host].get(c, 0) for c in counters)
        want = sum(sent[s] for s in steps)
        if grew < COVERED * want:
            problems.append(f"{host}: {'+'.join(counters)} grew by {grew}, but steps "
                            f"{', '.join(steps)} sent {want}")
    assert not problems, "\n".join(problems)


def live(arena: Arena, name: str) -> list[dict]:
    return arena.status(name)["sas"]


def peer_of(address: str) -> str:
    return {ALICE: BOB, BOB: ALICE, ALICE6: BOB6, BOB6: ALICE6}[address]


# --------------------------------------------------------------------------------- attacks

def test_forged_and_replayed_ike_change_no_sa(arena):
    """Unprotected "responses" (IKE_SA_INIT, R flag) on the live IKE SAs' SPIs for Message
    IDs 0..N, requests with garbage SK payloads, IKE_SA_INIT naming live SPIs, every captured
    IKE message replayed to 500 and 4500, and IKE_SA_INIT from 300 spoofed sources."""
    was = before(arena)
    steps = []
    for sa in arena.recon.ike_sas:
        mids = list(range(sa.max_message_id + 4))
        for target in (sa.initiator, sa.responder):
            common = dict(src=peer_of(target), dst=target, spi_i=sa.spi_i.hex(),
                          spi_r=sa.spi_r.hex(), message_ids=mids)
            steps.append(dict(name=f"forged responses to {target}", attack="forged_responses",
                              spi=0x66600000 + len(steps), rounds=20, **common))
            steps.append(dict(name=f"forged requests to {target}", attack="forged_requests",
                              **common))
    steps.append(dict(name="replayed IKE", attack="replay_ike",
                      messages=arena.recon.ike_messages))
    steps.append(dict(name="IKE_SA_INIT from spoofed sources", attack="init_flood", dst=ALICE,
                      sources=[f"203.0.113.{i % 250 + 1}" for i in range(300)]))
    sent = arena.attack(steps)
    deltas = unharmed(arena, was)
    # every copy to 4500 carried the non-ESP marker: handed to IKE, none taken for ESP
    assert deltas["alice"]["unknown_spi"] == 0 and deltas["bob"]["unknown_spi"] == 0, deltas
    assert deltas["alice"]["ike"] + deltas["bob"]["ike"] > 0, deltas
    # the engines dropped every forgery: no integrity (forged) or no request it answers
    forged: dict[tuple[str, tuple[str, ...]], tuple[str, ...]] = {}
    for step in steps:
        if step["name"].startswith("forged"):
            host = "alice" if step["dst"] in (ALICE, ALICE6) else "bob"
            key = (host, ("ike.forged_dropped", "ike.unexpected_dropped"))
            forged[key] = forged.get(key, ()) + (step["name"],)
    counted(deltas, sent, forged)


def test_junk_on_500_and_4500_costs_bounded_memory(arena):
    """Random datagrams to 500 and 4500, and a flood of non-ESP-marker junk on 4500."""
    was = before(arena)
    steps = []
    for target, claimed in ((ALICE, BOB), (ALICE6, BOB6), (BOB, ALICE)):
        for port in (500, 4500):
            steps.append(dict(name=f"junk to {target}:{port}", attack="udp_junk", src=claimed,
                              dst=target, port=port, count=500))
    for target, claimed in ((ALICE, BOB), (ALICE6, BOB6)):
        steps.append(dict(name=f"marker junk to {target}:4500", attack="udp_junk", src=claimed,
                          dst=target, port=4500, count=3000, marker=True))
    sent = arena.attack(steps)
    deltas = unharmed(arena, was)
    print("IKE events lost:", {name: d["events_lost_ike"] for name, d in deltas.items()})
    counted(deltas, sent, {
        # random first bytes are an SPI nobody picked (RFC 4303 3.4.2)
        ("alice", ("unknown_spi", "malformed")): (f"junk to {ALICE}:4500",
                                                  f"junk to {ALICE6}:4500"),
        ("bob", ("unknown_spi", "malformed")): (f"junk to {BOB}:4500",),
        # after the marker: IKE for the daemon, which drops what does not parse
        ("alice", ("ike",)): (f"marker junk to {ALICE}:4500", f"marker junk to {ALICE6}:4500"),
        # on 500: the engine's own socket, counted there
        ("alice", ("ike.unparsable_dropped", "ike.unexpected_dropped")): (
            f"junk to {ALICE}:500", f"junk to {ALICE6}:500"),
    })


def test_forged_and_replayed_esp_is_dropped_and_counted(arena):
    """ESP (protocol 50 and in UDP 4500) from spoofed sources with random SPIs; with the live
    SPIs, sequence numbers ahead of the window and garbage; captured ESP replayed verbatim."""
    was = before(arena)
    random_spis = [int.from_bytes(os.urandom(4), "big") | 0x1000 for _ in range(64)]
    steps: list[dict] = []
    expect: dict[tuple[str, tuple[str, ...]], tuple[str, ...]] = {}

    def step(host: str, counters: tuple[str, ...], **kwargs) -> None:
        steps.append(kwargs)
        expect[host, counters] = expect.get((host, counters), ()) + (kwargs["name"],)

    for host, other in (("alice", "bob"), ("bob", "alice")):
        for sa in live(arena, host):
            dst, src = sa["src"], sa["dst"]
            if host == "alice":
                for udp in (False, True):
                    how = "ESP-in-UDP" if udp else "ESP"
                    step(host, ("unknown_spi",), name=f"random SPIs to {dst} ({how})",
                         attack="raw_esp", src=src, dst=dst, spis=random_spis, count=1000,
                         udp=udp)
                    step(host, ("unknown_spi",), name=f"random SPIs from mallory to {dst} "
                         f"({how})", attack="raw_esp", src=MALLORY6 if ":" in dst else MALLORY,
                         dst=dst, spis=random_spis, count=200, udp=udp)
            step(host, ("authentication",), name=f"live SPI garbage to {dst}", attack="raw_esp",
                 src=src, dst=dst, spis=[int(sa["spi_in"], 16)], count=500,
                 seq_base=0x7FFF0000)
        mine = tuple(demo.ADDRESSES[host])
        step(host, ("replay",), name=f"{other}'s ESP replayed to {host}", attack="replay_esp",
             packets=[p for p in arena.recon.esp if p["dst"] in mine])
    sent = arena.attack(steps)
    deltas = unharmed(arena, was)
    counted(deltas, sent, expect)


def test_cleartext_claiming_a_protected_peer_is_not_delivered(arena):
    """Plain UDP "from bob" to alice, who has SAs with bob: never reaches her application
    (KLIPS delivered it, seed 000); the same datagram sent by bob himself arrives, encrypted."""
    was = before(arena)
    sent = arena.attack([dict(name=f"cleartext from {src}", attack="cleartext", src=src,
                              dst=dst, dport=LISTEN_PORT, payload="forged-by-mallory", count=20)
                         for dst, src in PAIRS])
    arena.world.run(arena.oe.hosts["bob"], sys.executable, "-c", _SENDER, "genuine-from-bob",
                    ALICE, ALICE6)
    assert wait_for(lambda: arena.heard.read_text().count("genuine-from-bob") == 2, 5), \
        arena.heard.read_text()
    unharmed(arena, was)
    forged = [line for line in arena.heard.read_text().splitlines() if "forged" in line]
    assert sum(sent.values()) == 40
    assert forged == [], f"alice's application received {len(forged)} forged datagrams: " \
        f"{forged[:3]}"


def test_forged_answer_to_a_rekey_installs_nothing(tmp_path):
    """alice rekeys her CHILD SA SOFT s after it is up (sa_lifetime = 2 * SOFT); bob is slow
    to answer (his daemon is stopped for PAUSE s around that moment). Mallory sees the link (the
    bridge floods: ageing 0) and answers each of alice's requests at once with an unprotected
    IKE_SA_INIT "response" offering her own SPI (issue 10, defect 2). alice must never use
    mallory's SPI, never send one (SPI, sequence number) twice (AES-GCM nonce reuse, RFC 4106
    3.1), and the rekey must end with bob's SPIs on both sides and the pings going on."""
    forged_spi = 0x66600001
    lifetimes = f"[ike]\nsa_lifetime = {2 * SOFT}\nrekey_margin = {SOFT}\n"
    with mallory_world(tmp_path, pings=(BOB,), conf={"alice": lifetimes}) as arena:
        world = arena.world
        subprocess.run(["ip", "-n", world.switch, "link", "set", "br0", "type", "bridge",
                        "ageing_time", "0"], check=True)
        world.run(arena.mallory, "ip", "link", "set", "eth0", "promisc", "on")
        assert wait_for(lambda: live(arena, "alice") and live(arena, "bob"), 20)
        read_wire(arena)
        [ike_sa] = [sa for sa in arena.recon.ike_sas if sa.initiator == ALICE]
        arena.capture, arena.pcap = demo.start_capture(arena.oe)  # what alice sends from now
        [sa] = live(arena, "alice")
        pause_at = time.monotonic() + SOFT - 0.4 - sa["age"]
        attacker = arena.attack_in_background([dict(
            name="forged answers to alice's requests", attack="race_responses", src=BOB,
            dst=ALICE, spi_i=ike_sa.spi_i.hex(), spi_r=ike_sa.spi_r.hex(), spi=forged_spi,
            seconds=pause_at - time.monotonic() + PAUSE + 0.5)])
        mallory_log = arena.mallory.dir / "mallory.log"
        assert wait_for(lambda: "listening" in mallory_log.read_text(), 10)
        assert time.monotonic() < pause_at, "too slow to catch alice's rekey"
        time.sleep(pause_at - time.monotonic())
        print("pausing bob at", time.time())
        seen = []  # alice's SPI pairs (in, out) as they were, through the rekey
        bob = arena.oe.daemons["bob"].pid
        os.kill(bob, signal.SIGSTOP)
        try:
            paused = time.monotonic()
            while time.monotonic() - paused < PAUSE:
                spis = [(sa["spi_in"], sa["spi_out"]) for sa in live(arena, "alice")]
                if not seen or seen[-1] != spis:
                    seen.append(spis)
                time.sleep(0.1)
        finally:
            os.kill(bob, signal.SIGCONT)
        print("bob resumed at", time.time())
        time.sleep(1.0)  # bob catches up with what waited for him
        offset = arena.pingers[BOB].stat().st_size
        attacker.wait(15)
        time.sleep(1.0)
        print("alice's SPIs (in, out) over time:", seen)
        sent = json.loads(mallory_log.read_text().splitlines()[-1])
        print("mallory sent:", sent)
        assert sum(sent.values()) > 0, "mallory saw no request of alice's to answer"
        alice, bob = live(arena, "alice"), live(arena, "bob")
        World.stop(arena.capture)
        problems = []
        if f"{forged_spi:08x}" in repr(seen):
            problems.append(f"alice took mallory's SPI {forged_spi:08x}: {seen}")
        reused = _repeated_esp(arena.pcap, ALICE)
        if reused:
            problems.append(f"alice sent {len(reused)} (SPI, sequence number) pairs twice, "
                            f"e.g. {reused[:3]}")
        problems += mirrored(alice, bob)
        problems += pings_went_on(arena, BOB, offset, "after the rekey")
        assert not problems, "\n".join(problems)


def test_flood_on_4500_loses_no_lifetime_event(tmp_path):
    """Mallory floods alice's 4500 with INFORMATIONAL "requests" on the live IKE SA (garbage SK
    payloads behind the non-ESP marker: each one an event for the daemon and a failed integrity
    check) across the soft limit of a busy SA (issue 10, defect 7). The SA must still be rekeyed
    before its hard limit, never expire under traffic, and the pings go on afterwards."""
    soft = 6.0
    lifetimes = f"[ike]\nsa_lifetime = {2 * soft}\nrekey_margin = {soft}\n"
    with mallory_world(tmp_path, pings=(BOB,), conf={"alice": lifetimes}) as arena:
        assert wait_for(lambda: live(arena, "alice") and live(arena, "bob"), 20)
        [first] = live(arena, "alice")
        up = time.time() - first["age"]   # when the SA came up
        read_wire(arena)
        [ike_sa] = [sa for sa in arena.recon.ike_sas if sa.initiator == ALICE]
        start_at = up + soft - FLOOD_TIME / 2
        flood = arena.attack_in_background([dict(
            name="forged INFORMATIONAL to alice:4500", attack="sk_flood", src=BOB, dst=ALICE,
            spi_i=ike_sa.spi_i.hex(), spi_r=ike_sa.spi_r.hex(), message_id=0,
            from_initiator=False, count=int(FLOOD * FLOOD_TIME), rate=FLOOD,
            seconds=FLOOD_TIME)], start_at=start_at)
        mallory_log = arena.mallory.dir / "mallory.log"
        assert wait_for(lambda: "ready" in mallory_log.read_text(), 10)
        assert time.time() < start_at, "mallory was not ready before alice's soft limit"
        rss = arena.rss("alice")
        time.sleep(max(0.0, up + 2 * soft + 1.5 - time.time()))  # past the hard limit
        flood.wait(15)
        grown = arena.rss("alice") - rss
        offset = arena.pingers[BOB].stat().st_size
        time.sleep(1.5)
        print("mallory sent:", mallory_log.read_text().splitlines()[-1])
        print("alice lost", arena.status("alice")["datapath"]["events_lost_ike"], "IKE events;",
              f"her RSS grew by {grown >> 10} KiB")
        log = (arena.oe.hosts["alice"].dir / "oe.log").read_text()
        expired = [line for line in log.splitlines() if "expired" in line]
        alice = live(arena, "alice")
        problems = []
        if expired:
            problems.append(f"a busy SA expired instead of being rekeyed: {expired}")
        # rekeyed: new SPIs in the same tunnel (a new negotiation would start its age afresh)
        if not alice or alice[0]["spi_out"] == first["spi_out"] or alice[0]["age"] < first["age"]:
            problems.append(f"alice's SA was not rekeyed: first {first}, now {alice}")
        if grown >= RSS_BOUND:
            problems.append(f"alice's daemon grew by {grown >> 20} MiB under the flood")
        problems += pings_went_on(arena, BOB, offset, "after the flood")
        assert not problems, "\n".join(problems)


def _repeated_esp(pcap: Path, sender: str) -> list[tuple[str, int]]:
    """(SPI, sequence number) pairs that `sender` put on the wire more than once."""
    from scapy.all import IP, rdpcap

    seen, repeated = set(), []
    for packet in rdpcap(str(pcap)):
        if packet.haslayer(IP) and packet[IP].src == sender and packet[IP].proto == 50:
            esp = bytes(packet[IP].payload)
            key = (esp[:4].hex(), int.from_bytes(esp[4:8], "big"))
            if key in seen:
                repeated.append(key)
            seen.add(key)
    return repeated
