"""oe.pmtu: the per-peer path MTU search (RFC 8899) driven by hand against simulated paths."""

from __future__ import annotations

import copy
import ipaddress
from types import SimpleNamespace

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from oe.pmtu import (BASE_PLPMTU, EspOverhead, PathMtu, Paths, Source, State, Timers,
                     fragment_outer, mss, too_big_mtu)

RTT = 0.02


class Path:
    """A path that carries packets up to `mtu` bytes and silently drops larger ones (ICMP
    black-holed), to a peer that acknowledges every probe it receives after one RTT."""

    def __init__(self, pm: PathMtu, mtu: int, now: float = 0.0):
        self.pm, self.mtu, self.now = pm, mtu, now
        self.acks: list[tuple[float, int]] = []
        self.sent: list[int] = []

    def step(self) -> None:
        """Send what is due, then advance to the next ack or timer and deliver it."""
        for size in self.pm.probes_to_send(self.now):
            self.sent.append(size)
            if size <= self.mtu:
                self.acks.append((self.now + RTT, size))
        due = [t for t in (self.pm.next_timer(),) if t is not None] + [t for t, _ in self.acks]
        assert due, "nothing pending: the machine stalled"
        self.now = max(self.now, min(due))
        for t, size in [a for a in self.acks if a[0] <= self.now]:
            self.acks.remove((t, size))
            self.pm.on_probe_acked(self.now, size)
        timer = self.pm.next_timer()
        if timer is not None and timer <= self.now:
            self.pm.handle_timer(self.now)

    def until(self, done, limit: float = 60.0) -> float:
        start = self.now
        while not done():
            assert self.now - start < limit, (self.pm.state, self.pm.mtu, self.now)
            self.step()
        return self.now - start


def complete(pm):
    return lambda: pm.state is State.SEARCH_COMPLETE


def test_a_1500_path_is_confirmed_in_one_round():
    pm = PathMtu(4, 1500, 0.0)
    assert (pm.state, pm.mtu, pm.source) == (State.BASE, 1200, Source.BASE)
    path = Path(pm, 1500)
    took = path.until(complete(pm))
    assert (pm.mtu, pm.source) == (1500, Source.PROBE)
    assert took <= 2 * RTT + 1e-9      # base, then the round that includes 1500


@pytest.mark.parametrize("family, hop", [(4, 1280), (4, 1400), (4, 1492), (6, 1280),
                                         (6, 1453), (4, 1201), (4, 1200)])
def test_a_black_holed_smaller_hop_is_found_exactly(family, hop):
    pm = PathMtu(family, 1500, 0.0)
    path = Path(pm, hop)
    took = path.until(complete(pm))
    assert (pm.mtu, pm.source) == (hop, Source.PROBE)
    assert took <= 7 * pm.timers.probe          # a handful of rounds, not MAX_PROBES per size
    assert pm.counters.black_holes == 0


def test_ipv6_base_is_the_minimum_mtu_and_ipv4_base_1200():
    assert PathMtu(6, 1500, 0.0).base == 1280 == BASE_PLPMTU[6]
    assert PathMtu(4, 1500, 0.0).base == 1200
    assert PathMtu(4, 1000, 0.0).base == 1000    # a route smaller than the base bounds it


def test_nothing_answers_is_error_at_the_base_then_recovers():
    pm = PathMtu(4, 1500, 0.0)
    path = Path(pm, 0)                           # the peer is unreachable
    path.until(lambda: pm.state is State.ERROR)
    assert pm.mtu == pm.base and path.now == pytest.approx(3 * pm.timers.probe)
    assert pm.next_timer() == pytest.approx(path.now + pm.timers.confirm)
    path.mtu = 1500
    path.until(complete(pm))
    assert pm.mtu == 1500


def test_black_hole_when_a_working_size_stops_working():
    """Complete at 1500; the path shrinks to 1280 and the datapath reports full-size loss:
    back to the base after MAX_PROBES lost confirmations, then the search finds 1280."""
    pm = PathMtu(4, 1500, 0.0)
    path = Path(pm, 1500)
    path.until(complete(pm))
    path.mtu = 1280
    path.now += 1.0
    pm.on_black_hole_suspected(path.now)
    path.until(lambda: pm.state is State.BASE)
    assert pm.mtu == pm.base and pm.counters.black_holes == 1
    took = path.until(complete(pm))
    assert pm.mtu == 1280 and took <= 8 * pm.timers.probe


def test_the_confirm_timer_notices_a_shrunk_path_without_any_sign():
    pm = PathMtu(4, 1500, 0.0)
    path = Path(pm, 1500)
    path.until(complete(pm))
    path.mtu = 1280
    took = path.until(lambda: pm.counters.black_holes == 1)
    assert took <= pm.timers.confirm + pm.timers.max_probes * pm.timers.probe + RTT
    path.until(complete(pm))
    assert pm.mtu == 1280


def test_the_raise_timer_finds_a_path_that_grew():
    pm = PathMtu(4, 1500, 0.0, timers=Timers(raise_=60.0))
    path = Path(pm, 1280)
    path.until(complete(pm))
    path.mtu = 1500
    took = path.until(lambda: pm.mtu == 1500, limit=120)
    assert 50 <= took <= 60 + 7 * pm.timers.probe
    assert pm.state is State.SEARCH_COMPLETE and pm.counters.black_holes == 0


def test_confirmations_keep_a_search_complete_at_the_top():
    pm = PathMtu(4, 1500, 0.0)
    path = Path(pm, 1500)
    path.until(complete(pm))
    sent = len(path.sent)
    path.until(lambda: path.now > 35)
    assert pm.state is State.SEARCH_COMPLETE and pm.mtu == 1500
    assert path.sent[sent:] == [1500, 1500, 1500]      # one confirmation per confirm interval


# ---------------------------------------------------------------- packet too big (RFC 8899 4.6)


def test_ptb_below_the_base_or_not_below_the_size_it_is_about_is_ignored():
    pm = PathMtu(4, 1500, 0.0)
    Path(pm, 1500).until(complete(pm))
    assert not pm.on_packet_too_big(1.0, 1199)       # below the base
    assert not pm.on_packet_too_big(1.0, 1500)       # not smaller than anything we sent
    assert not pm.on_packet_too_big(1.0, 9000)       # would raise: never
    assert (pm.mtu, pm.counters.ptb_ignored, pm.counters.ptb_accepted) == (1500, 3, 0)


def test_a_valid_ptb_lowers_at_once_and_is_then_confirmed_by_probe():
    pm = PathMtu(4, 1500, 0.0)
    path = Path(pm, 1500)
    path.until(complete(pm))
    path.mtu = 1400
    assert pm.on_packet_too_big(path.now, 1400)
    assert (pm.mtu, pm.source, pm.state) == (1400, Source.ICMP, State.SEARCHING)
    path.until(complete(pm))
    assert (pm.mtu, pm.source) == (1400, Source.PROBE)


def test_a_ptb_about_a_probe_bounds_the_search():
    pm = PathMtu(4, 1500, 0.0)
    path = Path(pm, 1500)
    path.step()                                        # base acknowledged: searching
    probes = pm.probes_to_send(path.now)
    assert probes[0] == pm.mtu == 1200 and probes[-1] == 1500
    assert pm.on_packet_too_big(path.now, 1300)        # about the 1500 probe
    assert pm.mtu == 1200 and max(pm.probes_to_send(path.now) or [0]) <= 1300


# ---------------------------------------------------------------- local MTU and EMSGSIZE


def test_emsgsize_or_a_smaller_route_lowers_at_once():
    pm = PathMtu(4, 1500, 0.0)
    path = Path(pm, 1500)
    path.until(complete(pm))
    pm.on_local_mtu(path.now, 1300)
    assert (pm.mtu, pm.max, pm.source) == (1300, 1300, Source.ROUTE)
    assert all(size <= 1300 for size in pm.probes_to_send(path.now))


def test_a_larger_route_is_searched_upwards():
    pm = PathMtu(4, 1400, 0.0)
    path = Path(pm, 1500)
    path.until(complete(pm))
    assert pm.mtu == 1400
    pm.on_local_mtu(path.now, 1500)
    path.until(complete(pm))
    assert pm.mtu == 1500


def test_acks_never_sent_or_late_change_nothing():
    pm = PathMtu(4, 1500, 0.0)
    pm.on_probe_acked(0.0, 1500)
    assert (pm.mtu, pm.state, pm.counters.acks_ignored) == (1200, State.BASE, 1)


# ---------------------------------------------------------------- any inputs keep the invariant

ops = st.lists(st.tuples(st.sampled_from(["probe", "ack", "ptb", "local", "suspect", "timer"]),
                         st.integers(0, 10000), st.floats(0, 30)), max_size=60)


@settings(max_examples=300, deadline=None)
@given(family=st.sampled_from([4, 6]), route=st.integers(576, 9000), steps=ops)
def test_any_inputs_keep_base_le_mtu_le_max_and_never_stall(family, route, steps):
    pm = PathMtu(family, route, 0.0)
    now = 0.0
    for op, number, dt in steps:
        now += dt
        if op == "probe":
            for size in pm.probes_to_send(now):
                assert pm.base <= size <= pm.max
        elif op == "ack":
            pm.on_probe_acked(now, number)
        elif op == "ptb":
            pm.on_packet_too_big(now, number)
        elif op == "local":
            pm.on_local_mtu(now, number)
        elif op == "suspect":
            pm.on_black_hole_suspected(now)
        else:
            timer = pm.next_timer()
            if timer is not None:
                now = max(now, timer)
                pm.handle_timer(now)
        assert pm.base <= pm.mtu <= pm.max, (op, number, pm.base, pm.mtu, pm.max)
        # never stalled: a timer is pending or a round is ready to go
        assert pm.next_timer() is not None or copy.deepcopy(pm).probes_to_send(now)


@settings(max_examples=100, deadline=None)
@given(family=st.sampled_from([4, 6]), route=st.integers(1280, 9000), hop=st.integers(1280, 9000))
def test_any_black_holed_hop_is_found_exactly(family, route, hop):
    pm = PathMtu(family, route, 0.0)
    Path(pm, hop).until(complete(pm), limit=30)
    assert pm.mtu == min(route, hop)


# ---------------------------------------------------------------- what the datapath derives

GCM4 = EspOverhead(outer_family=4, udp=False, iv=8, icv=16)


def test_inner_mtu_of_aes_gcm_over_ipv4_across_1280():
    # 1280 = 20 (IP) + 8 (SPI, sequence) + 8 (IV) + 1226 + 2 (pad length, next header) + 16
    assert GCM4.inner_mtu(1280) == 1226
    assert GCM4.outer_size(1226) == 1280 and GCM4.outer_size(1227) > 1280
    assert EspOverhead(6, True, 8, 16).inner_mtu(1280) == 1198
    assert EspOverhead(4, False, 16, 12, align=16).inner_mtu(1500) == 1438


@given(family=st.sampled_from([4, 6]), udp=st.booleans(), iv=st.sampled_from([8, 16]),
       icv=st.sampled_from([12, 16]), align=st.sampled_from([4, 16]),
       path=st.integers(200, 9000))
def test_inner_mtu_is_the_largest_that_fits(family, udp, iv, icv, align, path):
    overhead = EspOverhead(family, udp, iv, icv, align)
    inner = overhead.inner_mtu(path)
    assert overhead.outer_size(inner) <= path < overhead.outer_size(inner + 1)


def test_mss_and_the_too_big_told_to_local_senders():
    assert mss(1226, 4) == 1186 and mss(1226, 6) == 1166
    assert too_big_mtu(1226, 4) == 1226
    assert too_big_mtu(1206, 6) == 1280        # IPv6 is never told less (RFC 8200 5)
    assert fragment_outer(1206, 6, 1280, df=True)      # ...so the outer packet is fragmented
    assert not fragment_outer(1206, 6, 1281, df=True)
    assert fragment_outer(1226, 4, 1400, df=False)
    assert not fragment_outer(1226, 4, 1400, df=True)  # DF: told with too_big_mtu instead
    assert not fragment_outer(1226, 4, 1226, df=True)


@pytest.mark.parametrize("family", [4, 6])
@pytest.mark.parametrize("encap", ["esp", "udp"])
def test_the_datapaths_worst_case_overhead_agrees(family, encap):
    """The TUN's MTU (route MTU less the datapath's worst-case esp_overhead, AES-GCM-16) fits
    any SA at the route's MTU: the two counts of ESP's bytes must not drift apart."""
    from oe.datapath import esp_overhead

    overhead = EspOverhead(family, encap == "udp", iv=8, icv=16)
    assert overhead.fixed + 2 + (overhead.align - 1) == esp_overhead(family, encap)
    assert overhead.inner_mtu(1500) >= 1500 - esp_overhead(family, encap)


def test_paths_share_one_search_per_peer_and_report_changes_once():
    paths = Paths()
    a = paths.track("192.0.2.10", 4, 1500, 0.0)
    assert paths.track("192.0.2.10", 4, 1500, 5.0) is a          # a second SA: the same path
    b = paths.track("2001:db8::20", 6, 1500, 0.0)
    assert [peer for peer, _ in paths.changed()] == ["192.0.2.10", "2001:db8::20"]
    assert paths.changed() == []
    assert paths.probes_to_send(0.0) == [("192.0.2.10", 1200), ("2001:db8::20", 1280)]
    assert paths.next_timer() == pytest.approx(a.timers.probe)
    b.on_probe_acked(0.01, 1280)
    assert paths.changed() == []                                  # acked, but still 1280
    sizes = dict.fromkeys(s for peer, s in paths.probes_to_send(0.01) if peer == "2001:db8::20")
    for size in sizes:
        if size <= 1400:
            b.on_probe_acked(0.02, size)
    paths.handle_timer(1.1)                                       # the rest are lost
    [(peer, path)] = [c for c in paths.changed() if c[0] == "2001:db8::20"]
    assert path is b and b.mtu > 1280
    paths.forget("192.0.2.10")
    assert paths.get("192.0.2.10") is None
    assert {peer for peer, _ in paths.probes_to_send(1.1)} == {"2001:db8::20"}   # next round


class FakeDatapath:
    """A datapath whose path to each peer carries `mtu` bytes, its peer answering every probe
    that fits (the ack raised as the real one raises PathMtuProbeAcked)."""

    def __init__(self, mtu: int):
        self.mtu = mtu
        self.acks: list[tuple[str, int]] = []
        self.set: list[tuple[str, int]] = []

    def probe(self, peer: str, size: int):
        if size <= self.mtu:
            self.acks.append((peer, size))
        return b"x" * size

    def set_path_mtu(self, peer: str, mtu: int) -> int:
        self.set.append((peer, mtu))
        return 2


def test_the_driver_starts_sas_at_the_base_and_pushes_what_the_probes_find():
    """docs/pmtu.md: the daemon installs a peer's SAs with the path's current MTU (the base,
    RFC 8899 5.1.2), ticks the probes out and hands the acks back; each change of the path
    MTU goes to the datapath's SAs of that peer, once."""
    from oe.pmtu import PathMtuDriver
    dp = FakeDatapath(1280)
    driver = PathMtuDriver()
    assert driver.install("203.0.113.20", 4, 1500, 0.0) == BASE_PLPMTU[4]
    assert driver.status("203.0.113.20") == {"path_mtu": 1200, "path_mtu_source": "base",
                                             "pmtu_state": "base"}
    now = 0.0
    for _ in range(20):
        due = driver.tick(dp, now)
        assert due == driver.next_timer()
        while dp.acks:
            peer, size = dp.acks.pop(0)
            driver.on_probe_acked(dp, peer, size, now + RTT)
        now = min(due, now + 1.0) if due is not None else now + 1.0
    assert driver.status("203.0.113.20") == {"path_mtu": 1280, "path_mtu_source": "probe",
                                             "pmtu_state": "search complete"}
    assert dp.set[-1] == ("203.0.113.20", 1280)
    assert len(dp.set) == len(set(dp.set))
    assert driver.status("198.51.100.1") == {}
    driver.on_probe_acked(dp, "198.51.100.1", 1400, now)    # no such peer: nothing
    driver.forget("203.0.113.20")
    assert driver.status("203.0.113.20") == {}


@settings(max_examples=60, deadline=None)
@given(st.sampled_from([4, 6]), st.integers(1280, 1500), st.integers(1200, 1500))
def test_with_a_step_every_probe_is_a_multiple_and_the_largest_one_is_found(family, route, hop):
    """ESP packets come in steps of 4 bytes (RFC 4303 2.4: the payload and trailer are aligned
    to 4): a probe size between two steps would be sent one step smaller and its ack would
    overstate the path, so the search probes steps only and finds the largest step that fits."""
    hop = max(hop, BASE_PLPMTU[family])     # an IPv6 path carries 1280 (RFC 8200 5)
    pm = PathMtu(family, route, 0.0, step=4)
    path = Path(pm, hop)
    path.until(complete(pm))
    assert all(size % 4 == 0 for size in path.sent)
    assert pm.mtu == max(min(hop, route) // 4 * 4, pm.base)


def test_the_driver_takes_a_validated_too_big_and_the_local_route():
    """ICMP about the outer path (IP_RECVERR, matched to an SA by the datapath) lowers the
    path MTU at once when RFC 8899 4.6.2 allows it; EMSGSIZE sets the ceiling."""
    from oe.pmtu import PathMtuDriver
    dp = FakeDatapath(1500)
    driver = PathMtuDriver()
    driver.install("192.0.2.1", 4, 1500, 0.0)
    driver.on_probe_acked(dp, "192.0.2.1", 1200, 0.01)     # base confirmed: searching
    while dp.acks:
        driver.on_probe_acked(dp, *dp.acks.pop(0), 0.02)
    assert driver.status("192.0.2.1")["path_mtu"] == 1500
    driver.on_too_big(dp, "192.0.2.1", 1100, False, 1.0)     # below the base: ignored
    assert driver.status("192.0.2.1")["path_mtu"] == 1500
    driver.on_too_big(dp, "192.0.2.1", 1280, False, 1.0)
    assert driver.status("192.0.2.1")["path_mtu"] == 1280
    assert driver.status("192.0.2.1")["path_mtu_source"] == "icmp"
    assert dp.set[-1] == ("192.0.2.1", 1280)
    driver.on_too_big(dp, "192.0.2.1", 1240, True, 1.1)
    assert driver.status("192.0.2.1")["path_mtu"] == 1240
    driver.on_too_big(dp, "198.51.100.9", 1240, False, 1.2)  # no such peer: nothing


def tunnel(peer: str):
    """What PathMtuDriver.follow reads of an oe.opportunist.Tunnel: its outer destination."""
    return SimpleNamespace(peer=ipaddress.ip_address(peer))


def test_peers_whose_last_tunnel_went_are_forgotten_and_the_table_stays_bounded():
    """docs/pmtu.md: a peer's search ends with its last tunnel (`follow`, given the tunnels
    each event changed), so peers coming and going leave nothing behind; and the table is
    capped anyway (oldest forgotten), whatever makes many short-lived SAs."""
    from oe.pmtu import MAX_PATHS, PathMtuDriver
    dp = FakeDatapath(1500)
    driver = PathMtuDriver()
    driver.install("192.0.2.1", 4, 1500, 0.0)
    driver.follow({"stays": tunnel("192.0.2.1")})
    for i in range(3000):
        peer = f"2001:db8::{i:x}"
        driver.install(peer, 6, 1500, float(i))
        driver.tick(dp, float(i))
        driver.follow({i: tunnel(peer), i - 1: None})
    assert len(driver.paths) == 2
    driver.follow({2999: None})
    assert len(driver.paths) == 1 and driver.status("192.0.2.1")["path_mtu"] == BASE_PLPMTU[4]
    driver.follow({"stays": None})
    assert len(driver.paths) == 0
    for i in range(MAX_PATHS + 10):                 # nobody follows: the cap holds
        driver.install(f"10.{i >> 16 & 255}.{i >> 8 & 255}.{i & 255}", 4, 1500, 1.0)
    assert len(driver.paths) == MAX_PATHS
    assert driver.status("10.0.0.0") == {}
    assert driver.status(f"10.0.{(MAX_PATHS + 9) >> 8 & 255}.{(MAX_PATHS + 9) & 255}")


def test_a_peer_is_forgotten_with_the_last_of_its_tunnels_whatever_pair_they_carry():
    """A gateway carries the tunnels of several pairs (docs/gateway.md): its path stays while
    any does. A pair whose tunnel moves to another peer gives the old one back; an SA installed
    for a tunnel that never stood (a refused CHILD SA) is forgotten at the next change, as
    when the daemon kept only the peers of the tunnels standing."""
    from oe.pmtu import PathMtuDriver
    driver = PathMtuDriver()
    for peer in ("192.0.2.1", "2001:db8::1", "198.51.100.7"):
        driver.install(peer, 6 if ":" in peer else 4, 1500, 0.0)
    driver.follow({"a": tunnel("192.0.2.1"), "b": tunnel("192.0.2.1"),
                   "c": tunnel("2001:db8::1")})
    assert driver.status("198.51.100.7") == {}               # installed, no tunnel came
    assert len(driver.paths) == 2
    driver.follow({"a": None})
    assert driver.status("192.0.2.1")                        # b still goes through it
    driver.follow({"c": tunnel("2001:db8::1")})              # rekeyed: the same peer
    assert driver.status("2001:db8::1")
    driver.follow({"b": tunnel("2001:db8::1")})              # b moved to another gateway
    assert driver.status("192.0.2.1") == {} and driver.status("2001:db8::1")
    driver.follow({"c": None})
    assert driver.status("2001:db8::1")
    driver.follow({"b": None, "gone already": None})
    assert len(driver.paths) == 0


class Spied(PathMtu):
    """A PathMtu that counts how often its owner looks at it."""

    looked = 0

    def next_timer(self):
        self.looked += 1
        return super().next_timer()

    def probes_to_send(self, now):
        self.looked += 1
        return super().probes_to_send(now)

    def handle_timer(self, now):
        self.looked += 1
        return super().handle_timer(now)


def test_one_peers_news_looks_at_that_peer_only(monkeypatch):
    """Issue 14: with many peers, an ack, a too-big or a black hole costs that peer's path,
    not every peer's (each event's cost independent of the number of peers)."""
    import oe.pmtu
    from oe.pmtu import PathMtuDriver
    monkeypatch.setattr(oe.pmtu, "PathMtu", Spied)
    dp = FakeDatapath(1400)
    driver = PathMtuDriver()
    peers = [f"2001:db8::{i:x}" for i in range(1000)]
    for peer in peers:
        driver.install(peer, 6, 1500, 0.0)
    assert driver.tick(dp, 0.0) == 1.0                       # every base probe out
    assert len(dp.acks) == 1000
    for peer in peers:
        driver.paths.get(peer).looked = 0
    one = peers[500]
    driver.on_probe_acked(dp, one, 1280, 0.01)               # base confirmed: a round
    driver.on_too_big(dp, one, 1300, False, 0.02)
    driver.on_too_big(dp, one, 1296, True, 0.03)
    driver.on_black_hole_suspected(dp, one, 0.04)
    assert driver.next_timer() == 1.0
    assert [p for p in peers if driver.paths.get(p).looked] == [one]
    assert {peer for peer, _ in dp.acks[1000:]} == {one}     # its next round went out


class NaivePaths:
    """Paths as it was before issue 14, every call looking at every path: the model the
    bookkeeping must agree with."""

    def __init__(self):
        self.paths: dict[str, PathMtu] = {}
        self.told: dict[str, int] = {}

    def track(self, peer, family, route_mtu, now):
        return self.paths.setdefault(peer, PathMtu(family, route_mtu, now, step=4))

    def forget(self, peer):
        self.paths.pop(peer, None)
        self.told.pop(peer, None)

    def probes_to_send(self, now):
        return [(peer, size) for peer, path in self.paths.items()
                for size in path.probes_to_send(now)]

    def handle_timer(self, now):
        for path in self.paths.values():
            timer = path.next_timer()
            if timer is not None and timer <= now:
                path.handle_timer(now)

    def next_timer(self):
        return min((t for t in (p.next_timer() for p in self.paths.values()) if t is not None),
                   default=None)

    def changed(self):
        out = [(peer, path) for peer, path in self.paths.items()
               if self.told.get(peer) != path.mtu]
        for peer, path in out:
            self.told[peer] = path.mtu
        return out


PEERS = ["192.0.2.1", "192.0.2.2", "2001:db8::1", "2001:db8::2"]
_peer = st.integers(0, len(PEERS) - 1)
OPS = st.one_of(
    st.tuples(st.just("track"), _peer, st.integers(1200, 1500)),
    st.tuples(st.just("forget"), _peer),
    st.tuples(st.just("wait"), st.sampled_from([0.0, 0.01, 0.5, 1.0, 1.5, 10.0, 600.0])),
    st.tuples(st.just("ack"), _peer, st.integers(0, 8)),
    st.tuples(st.just("ack"), _peer, st.integers(1200, 1500)),
    st.tuples(st.just("ptb"), _peer, st.integers(1100, 1500)),
    st.tuples(st.just("local"), _peer, st.integers(500, 1600)),
    st.tuples(st.just("black hole"), _peer),
    st.tuples(st.sampled_from(["timer", "probes", "changed", "next", "tick"])))


@settings(max_examples=500, deadline=None)
@given(st.lists(OPS, max_size=80))
@example([("track", 0, 1500), ("probes",), ("wait", 1.0), ("timer",)])  # round due unfiled
def test_the_bookkeeping_gives_what_looking_at_every_path_gives(ops):
    """Issue 14's heap of timers and set of touched peers against the model that looks at
    every path each time: the same probes, changes and timers for any sequence of events
    (the order across peers aside: each peer's output is its own)."""
    paths, model = Paths(step=4), NaivePaths()
    now, sent = 0.0, {peer: [] for peer in PEERS}

    def both(name, *args):
        ours, theirs = getattr(paths, name)(*args), getattr(model, name)(*args)
        if name == "changed":
            ours = [(peer, path.mtu) for peer, path in ours]
            theirs = [(peer, path.mtu) for peer, path in theirs]
        if isinstance(ours, list):
            ours, theirs = sorted(ours), sorted(theirs)
        assert ours == theirs, (name, args)
        if name == "probes_to_send":
            for peer, size in ours:
                sent[peer].append(size)

    for op in ops:
        kind, args = op[0], op[1:]
        peer = PEERS[args[0]] if args and kind != "wait" else None
        pair = (paths.get(peer), model.paths.get(peer)) if peer else (None, None)
        if kind == "track":
            a = paths.track(peer, 6 if ":" in peer else 4, args[1], now)
            b = model.track(peer, 6 if ":" in peer else 4, args[1], now)
            assert (a.mtu, a.next_timer()) == (b.mtu, b.next_timer())
        elif kind == "forget":
            paths.forget(peer)
            model.forget(peer)
        elif kind == "wait":
            now += args[0]
        elif pair[0] is None:
            assert kind not in ("ack", "ptb", "local", "black hole") or pair[1] is None
        elif kind == "ack":
            size = args[1] if args[1] >= 1200 or not sent[peer] else \
                sent[peer][-1 - args[1] % len(sent[peer])]
            for path in pair:
                path.on_probe_acked(now, size)
        elif kind == "ptb":
            assert pair[0].on_packet_too_big(now, args[1]) == \
                pair[1].on_packet_too_big(now, args[1])
        elif kind == "local":
            for path in pair:
                path.on_local_mtu(now, args[1])
        elif kind == "black hole":
            for path in pair:
                path.on_black_hole_suspected(now)
        if kind == "timer":
            both("handle_timer", now)
        elif kind == "probes":
            both("probes_to_send", now)
        elif kind == "changed":
            both("changed")
        elif kind == "next":
            both("next_timer")
        elif kind == "tick":                              # as PathMtuDriver.tick does
            for name, *rest in (("handle_timer", now), ("probes_to_send", now), ("changed",),
                                ("next_timer",)):
                both(name, *rest)
    both("next_timer")
    both("changed")


def test_the_driver_confirms_at_once_when_a_black_hole_is_suspected():
    """A PathMtuBlackHole from the datapath (a large TCP segment retransmitted, RFC 8899 4.3):
    a path at rest probes its size at once instead of at the next confirmation (10 s)."""
    from oe.pmtu import PathMtuDriver
    dp = FakeDatapath(1500)
    driver = PathMtuDriver()
    driver.install("192.0.2.1", 4, 1500, 0.0)
    now = 0.0
    while driver.status("192.0.2.1")["pmtu_state"] != "search complete":
        driver.tick(dp, now)
        while dp.acks:
            driver.on_probe_acked(dp, *dp.acks.pop(0), now + RTT)
        now += 1.0
    assert driver.next_timer() > now + 5
    driver.on_black_hole_suspected(dp, "192.0.2.1", now)
    assert dp.acks == [("192.0.2.1", 1500)]
    driver.on_black_hole_suspected(dp, "198.51.100.9", now)          # no such peer: nothing
def test_an_owner_that_ticks_only_when_next_timer_says_gets_every_round():
    """The daemon calls tick() only when next_timer() is due (no polling): a wanted round must
    be due at once, or a new path would sit at its base for good (seen: pmtu_probes 0)."""
    paths = Paths()
    paths.track("192.0.2.1", 4, 1500, 10.0)
    now, sent = 10.0, []
    while now < 30.0:
        due = paths.next_timer()
        assert due is not None, "nothing pending: the search stalled"
        now = max(now, due)
        paths.handle_timer(now)
        for _peer, size in paths.probes_to_send(now):
            sent.append(size)
            if size <= 1400:
                paths.get("192.0.2.1").on_probe_acked(now + RTT, size)
    assert paths.get("192.0.2.1").state is State.SEARCH_COMPLETE
    assert paths.get("192.0.2.1").mtu == 1400 and sent[0] == BASE_PLPMTU[4]
