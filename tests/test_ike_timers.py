"""The engine's timer bookkeeping (issue 14): ``get_timer()`` and ``handle_timer()`` answer as
the minimum over every IKE SA's ``get_timer()`` would, and visit only the IKE SAs that are due,
so an event costs the same with 10 or 10,000 IKE SAs."""

from __future__ import annotations

import dataclasses
import random

import pytest
from ike_helpers import ADDR_A, ADDR_B, Link, established_pair, events, ike_pair, make_engine

from oe.ike.constants import PayloadType
from oe.ike.errors import LocalProtocolError
from oe.ike.ike_sa import IkeSa, State
from oe.ike.message import parse_header
from oe.ike.tasks.informational import Liveness
from oe.ike.ts import TrafficSelector

B_ADDRS = [f"198.51.100.{10 + i}" for i in range(6)]
TIMERS = {"retransmit_timeout": 0.5, "retransmit_budget": 8.0, "fragment_size": 576,
          "half_open_lifetime": 35.0}  # fragments of IKE_AUTH (4096-bit keys) time out first


def naive_timer(engine) -> float | None:
    """What get_timer() answered before the heap: the minimum over every IKE SA."""
    timers = [t for t in (sa.get_timer() for sa in engine._sas.values()) if t is not None]
    return min(timers) if timers else None


def due(engine, now: float) -> list[IkeSa]:
    """The IKE SAs handle_timer(now) must visit, in the order the engine added them."""
    return [sa for sa in engine._sas.values()
            if (t := sa.get_timer()) is not None and t <= now]


@pytest.fixture
def visits(monkeypatch) -> list[IkeSa]:
    """Every IkeSa.handle_timer call, in order."""
    seen: list[IkeSa] = []
    original = IkeSa.handle_timer

    def spy(sa, now):
        seen.append(sa)
        original(sa, now)

    monkeypatch.setattr(IkeSa, "handle_timer", spy)
    return seen


class World:
    """Engine A at ADDR_A and engine B on six addresses, a wire that loses, duplicates and
    reorders, and a clock; each step is one random event."""

    def __init__(self, seed: int) -> None:
        self.r = random.Random(seed)
        self.a = make_engine(ADDR_A, "a", dict.fromkeys(B_ADDRS, "b"), seed, key_bits=4096,
                             **TIMERS)
        self.b = make_engine(B_ADDRS[0], "b", {ADDR_A: "a"}, seed + 1, key_bits=4096,
                             local_addrs=frozenset(B_ADDRS), **TIMERS)
        self.wire: list[tuple[object, bytes, tuple, int, str]] = []
        self.now = 0.0
        self.seen: dict[str, int] = {}  # events by kind, and the most IKE SAs at once

    def collect(self) -> None:
        for sender, receiver in ((self.a, self.b), (self.b, self.a)):
            for data, addr, lport, laddr in sender.datagrams_to_send(self.now):
                self.wire.append((receiver, data, (laddr, lport), addr[1], addr[0]))
            for event in events(sender):
                kind = type(event).__name__
                self.seen[kind] = self.seen.get(kind, 0) + 1
        most = len(self.a._sas) + len(self.b._sas)
        self.seen["most"] = max(self.seen.get("most", 0), most)

    def user(self, engine) -> None:
        """One of the verbs on a random IKE SA (or CHILD SA) of ``engine``."""
        infos = engine.ike_sas()
        if not infos:
            return
        sid = self.r.choice(infos).sa_id
        children = engine.children(sid)
        verb = self.r.choice(["rekey_child", "rekey_ike", "create_child", "delete_child",
                              "delete_ike", "check_liveness", "resume"])
        try:
            if verb in ("rekey_child", "delete_child"):
                if children:
                    getattr(engine, verb)(sid, self.r.choice(children).spi_in, self.now)
            elif verb == "create_child":
                info = next(i for i in infos if i.sa_id == sid)
                engine.create_child(sid, self.now,
                                    local_ts=[TrafficSelector.host(info.local_addr, 6)],
                                    remote_ts=[TrafficSelector.host(info.remote_addr, 6)])
            else:
                getattr(engine, verb)(sid, self.now)
        except LocalProtocolError:
            pass

    def step(self, visits: list[IkeSa]) -> None:
        r = self.r
        kind = r.choices(["initiate", "deliver", "drop", "duplicate", "advance", "user"],
                         [1, 20, 2, 1, 3, 4])[0]
        if kind == "initiate":
            peer = r.choice(B_ADDRS)
            if r.random() < 0.8:
                self.a.initiate(peer, self.now)
            else:
                self.b.initiate(ADDR_A, self.now, local_addr=peer)
        elif kind in ("deliver", "drop", "duplicate") and self.wire:
            i = r.randrange(len(self.wire))
            receiver, data, src, port, dst = (self.wire[i] if kind == "duplicate"
                                              else self.wire.pop(i))
            # the path loses fragments more often than whole messages: reassembly times out
            lost = kind == "drop" or (parse_header(data).next_payload == PayloadType.SKF
                                      and r.random() < 0.4)
            if not lost:
                receiver.receive_datagram(data, src, self.now, local_port=port, local_addr=dst)
        elif kind == "advance":
            self.now += r.choice([0.1, 0.3, 1.0, 2.5, 12.0])
            for engine in (self.a, self.b):
                expected = due(engine, self.now)
                visits.clear()
                engine.handle_timer(self.now)
                assert visits == expected
        elif kind == "user":
            self.user(r.choice((self.a, self.b)))
        self.collect()


@pytest.mark.parametrize("seed", [1, 3, 7])
def test_heap_answers_as_the_minimum_over_every_sa(seed, visits):
    """Random events (many IKE SAs both ways, losses, duplicates, retransmissions, rekeys,
    deletes, fragments, timeouts): after each, get_timer() is the minimum over every IKE SA
    and handle_timer visits exactly the IKE SAs that are due, in the order they were added."""
    world = World(seed)
    for _ in range(400):
        world.step(visits)
        for engine in (world.a, world.b):
            assert engine.get_timer() == naive_timer(engine)
    seen = world.seen  # the run went through what it is meant to test
    assert seen["most"] >= 8 and seen["IkeSaRekeyed"] and seen["ChildSaRekeyed"], seen
    assert seen["IkeSaDeleted"] and seen["IkeSaFailed"] and seen["ChildSaDeleted"], seen
    assert world.a.stats()["fragment_completed"] and world.b.stats()["fragment_timed_out"] \
        + world.a.stats()["fragment_timed_out"], (world.a.stats(), world.b.stats())


def test_handle_timer_visits_only_the_due_sas(visits, monkeypatch):
    """100 IKE SAs with a request in flight, sent 10 ms apart: the first retransmission of
    the first three costs three visits, and neither handle_timer nor get_timer asks the other
    97 IKE SAs for their timers."""
    a, b = ike_pair(seed=5)
    link = Link(a, b)
    for _ in range(100):
        a.initiate(ADDR_B, link.now)
        link.roundtrip(a)
    events(a), events(b)
    sids = [info.sa_id for info in a.ike_sas()]
    assert len(sids) == 100
    for sid in sids:
        a.check_liveness(sid, link.now)
        a.datagrams_to_send(link.now)  # lost
        a.get_timer()  # as IkeRunner asks after every event
        link.now += 0.01
    asked: list[IkeSa] = []
    original = IkeSa.get_timer
    monkeypatch.setattr(IkeSa, "get_timer", lambda sa: asked.append(sa) or original(sa))
    first = a.get_timer()
    assert first == a.config.retransmit_timeout
    a.handle_timer(first + 0.025)
    assert len(visits) == 3 and len(a.datagrams_to_send(first)) == 3
    assert a.get_timer() == pytest.approx(first + 0.03)
    assert len(asked) <= 6, len(asked)  # the three visited, filed again
    asked.clear()
    assert a.get_timer() == pytest.approx(first + 0.03) and not asked


def test_new_timers_in_config_move_the_timers():
    """A reload that shortens the retransmission budget moves every IKE SA's timer."""
    a, b = ike_pair(seed=7)
    link = Link(a, b)
    sid = a.initiate(ADDR_B, 0)
    link.roundtrip(a)
    a.check_liveness(sid, 0)
    assert a.get_timer() == 0.5
    a.config = dataclasses.replace(a.config, retransmit_timeout=100.0, retransmit_budget=0.25)
    assert a.get_timer() == naive_timer(a) == 0.25


def _keepalive(sa: IkeSa) -> None:
    sa.next_keepalive = 5.0


def _retired(sa: IkeSa) -> None:
    sa.state, sa.retired_at = State.REKEYED, 5.0 - sa.config.retransmit_budget


def _retired_later(sa: IkeSa) -> None:
    _retired(sa)
    sa.host.get_timer()
    sa.retired_at = 3.0 - sa.config.retransmit_budget


def _half_open(sa: IkeSa) -> None:
    sa.state = State.EXPECT_AUTH_REQUEST


def _task(sa: IkeSa) -> None:
    sa.start(Liveness(), 5.0 - sa.config.retransmit_timeout)


@pytest.mark.parametrize("write", [_keepalive, _retired, _retired_later, _half_open, _task])
def test_a_timer_input_written_anywhere_moves_the_timer(write):
    """What get_timer() reads, written outside any engine entry point (as one IKE SA's
    exchange starts a task on its successor, section 2.8), is filed before the next read."""
    link, sid, _ = established_pair(seed=9)
    a = link.a
    assert a.get_timer() is None
    sa = a._by_id[sid]
    write(sa)
    assert a.get_timer() == naive_timer(a) == sa.get_timer()
