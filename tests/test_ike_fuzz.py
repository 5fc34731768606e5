"""Hypothesis against the engine's receive path: random and mutated datagrams end in a defined
answer or are ignored; never an exception, never an event or a state change on an established
IKE SA without a message that passed its integrity check."""

from __future__ import annotations

from functools import lru_cache

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from ike_helpers import ADDR_A, ADDR_B, Link, events, ike_pair

from oe.ike.constants import NON_ESP_MARKER
from oe.ike.ts import TrafficSelector

SUITES = {
    "cbc": {"ike_proposals": ("aes128-sha256-x25519",)},
    "gcm": {"ike_proposals": ("aes256gcm16-prfsha384-ecp256",)},
}


@lru_cache(maxsize=None)
def established(kind: str):
    """An established pair and one protected request of A's that B has not seen yet
    (CREATE_CHILD_SA { N(REKEY_SA), SA, Ni, TSi, TSr }), so its Message ID is the one B
    expects: only the integrity check stands between a mutation and a state change."""
    a, b = ike_pair(seed=7, cfg_a=SUITES[kind], cfg_b=SUITES[kind])
    link = Link(a, b)
    sid = a.initiate(ADDR_B, 0)
    link.roundtrip(a)
    events(a), events(b)
    child = a.children(sid)[0]
    a.rekey_child(sid, child.spi_in, 0)
    [(request, _, _, _)] = a.datagrams_to_send(0)
    return b, request


def snapshot(engine):
    return sorted(
        (sa.our_spi, sa.state, sa.expected_message_id, sa.next_message_id,
         tuple((c.sa.spi_in, c.sa.spi_out) for c in sa.children), sa.peer_addr, sa.peer_port,
         sa.local_port)
        for sa in engine._sas.values()
    )


def mutate(data: bytes, pos: int, value: int, cut: int) -> bytes:
    out = bytearray(data)
    out[pos % len(out)] ^= value or 1
    return bytes(out[: max(len(out) - cut, 0)])


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.sampled_from(sorted(SUITES)), st.integers(0, 10_000), st.integers(0, 255),
       st.integers(0, 40), st.booleans())
def test_mutated_protected_request_changes_nothing(kind, pos, value, cut, on_4500):
    b, request = established(kind)
    before = snapshot(b)
    data = mutate(request, pos, value, cut)
    if on_4500:
        b.receive_datagram(NON_ESP_MARKER + data, (ADDR_A, 4500), 1.0, local_port=4500)
    else:
        b.receive_datagram(data, (ADDR_A, 500), 1.0)
    assert b.datagrams_to_send(1.0) == []
    assert b.next_event() is None
    assert snapshot(b) == before


@settings(max_examples=600, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.sampled_from(sorted(SUITES)), st.binary(max_size=400), st.sampled_from([500, 4500]),
       st.booleans())
def test_random_datagrams_never_touch_established_sas(kind, data, port, keep_spis):
    b, request = established(kind)
    if keep_spis:  # aim at the established SA: its real SPIs in front of random bytes
        data = request[:16] + data
    if port == 4500 and keep_spis:
        data = NON_ESP_MARKER + data
    before = snapshot(b)
    b.receive_datagram(data, (ADDR_A, port), 1.0, local_port=port)
    b.datagrams_to_send(1.0)
    assert b.next_event() is None
    established_before = [s for s in before if s[1].name == "ESTABLISHED"]
    established_after = [s for s in snapshot(b) if s[1].name == "ESTABLISHED"]
    assert established_after == established_before


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.integers(0, 10_000), st.integers(0, 255), st.integers(0, 30))
def test_mutated_handshake_ends_defined(pos, value, cut):
    """Mutate one datagram of a fresh handshake, then run it to the end: it either completes
    or fails with events; the engines never raise."""
    a, b = ike_pair(seed=pos)
    link = Link(a, b)
    a.initiate(ADDR_B, 0)
    step = pos % 4
    for i in range(6):
        sender = a if i % 2 == 0 else b
        receiver = b if sender is a else a
        for data, addr, lport, laddr in sender.datagrams_to_send(link.now):
            if i == step:
                data = mutate(data, pos // 4, value, cut)
            receiver.receive_datagram(data, (laddr, lport), link.now, local_port=addr[1],
                                      local_addr=addr[0])
    while (t := a.get_timer()) is not None and t < 100:
        link.advance(t - link.now)
        link.roundtrip(a)
    kinds = {type(e).__name__ for e in events(a)}
    assert kinds & {"IkeSaEstablished", "IkeSaFailed"}, kinds


def test_control_the_unmutated_request_is_accepted():
    """The fuzzed request is one B would act on: delivered intact, it rekeys the CHILD SA."""
    established.cache_clear()
    b, request = established("cbc")
    before = snapshot(b)
    b.receive_datagram(request, (ADDR_A, 500), 1.0)
    assert b.datagrams_to_send(1.0) and b.next_event() is not None
    assert snapshot(b) != before
    established.cache_clear()


from hypothesis.stateful import RuleBasedStateMachine, precondition, rule  # noqa: E402

from oe.ike.errors import LocalProtocolError  # noqa: E402


class TwoPeers(RuleBasedStateMachine):
    """Random interleavings of CHILD/IKE rekeys, new and deleted CHILD SAs and liveness checks by
    either side, with datagrams delivered in random order, a few lost, and retransmissions:
    after everything is delivered, both ends agree on the IKE SA and every CHILD SA's keys."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.b = ike_pair(seed=3)
        self.link = Link(self.a, self.b)
        self.sid = {self.a: self.a.initiate(ADDR_B, 0), self.b: 1}
        self.link.roundtrip(self.a)
        self.ticks = 0
        self.losses = 0

    def _do(self, side: str, action) -> None:
        engine = self.a if side == "a" else self.b
        try:
            action(engine, self.sid[engine], self.link.now)
        except LocalProtocolError:
            pass

    @rule(side=st.sampled_from("ab"), newest=st.booleans())
    def rekey_child(self, side, newest):
        def act(e, sid, now):
            children = e.children(sid)
            if children:
                e.rekey_child(sid, children[-1 if newest else 0].spi_in, now)
        self._do(side, act)

    @rule(side=st.sampled_from("ab"), newest=st.booleans())
    def delete_child(self, side, newest):
        def act(e, sid, now):
            children = e.children(sid)
            if len(children) > 1:
                e.delete_child(sid, children[-1 if newest else 0].spi_in, now)
        self._do(side, act)

    @rule(side=st.sampled_from("ab"))
    def rekey_ike(self, side):
        self._do(side, lambda e, sid, now: e.rekey_ike(sid, now))

    @rule(side=st.sampled_from("ab"))
    def liveness(self, side):
        self._do(side, lambda e, sid, now: e.check_liveness(sid, now))

    @rule(side=st.sampled_from("ab"), port=st.integers(1, 3))
    def new_child(self, side, port):
        def act(e, sid, now):
            me, peer = (ADDR_A, ADDR_B) if e is self.a else (ADDR_B, ADDR_A)
            e.create_child(sid, now, local_ts=[TrafficSelector.host(me, 17)],
                           remote_ts=[TrafficSelector.host(peer, 17, port)])
        self._do(side, act)

    @rule(side=st.sampled_from("ab"))
    def deliver(self, side):
        self.link.transfer(self.a if side == "a" else self.b)

    @precondition(lambda self: self.losses < 3)
    @rule(side=st.sampled_from("ab"))
    def lose(self, side):
        self.losses += 1
        self.link.transfer(self.a if side == "a" else self.b, drop=True)

    @precondition(lambda self: self.ticks < 5)
    @rule()
    def tick(self):
        self.ticks += 1
        self.link.advance(0.6)

    def teardown(self) -> None:
        # deliver everything; let retransmissions repair losses (within the 8 s budget)
        for _ in range(50):
            self.link.roundtrip(self.a)
            self.link.roundtrip(self.b)
            timers = [t for t in (self.a.get_timer(), self.b.get_timer()) if t is not None]
            if not timers:
                break
            self.link.advance(min(timers) - self.link.now)
        kinds = {type(ev).__name__ for e in (self.a, self.b) for ev in events(e)}
        assert not kinds & {"IkeSaDeleted", "IkeSaFailed"}, kinds
        ike_a = {(s.spi_i, s.spi_r) for s in self.a._sas.values()}
        ike_b = {(s.spi_i, s.spi_r) for s in self.b._sas.values()}
        assert ike_a == ike_b and len(ike_a) == 1
        pairs_a = {(c.spi_in, c.spi_out, c.key_in, c.key_out) for c in self.a.children(1)}
        pairs_b = {(c.spi_out, c.spi_in, c.key_out, c.key_in) for c in self.b.children(1)}
        assert pairs_a == pairs_b
        for e in (self.a, self.b):  # every inbound SPI not held by a CHILD SA was freed
            assert e.spis.live() == {c.spi_in for c in e.children(1)}


TwoPeers.TestCase.settings = settings(max_examples=150, stateful_step_count=25, deadline=None,
                                      suppress_health_check=[HealthCheck.too_slow])
test_two_peers_agree_after_random_exchanges = TwoPeers.TestCase


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.sampled_from(sorted(SUITES)), st.sampled_from([35, 36, 37]),
       st.lists(__import__("test_ike_message")._payload, max_size=6))
def test_authentic_requests_with_random_payloads_are_answered(kind, exchange, payloads):
    """A request that passes the integrity check but carries any payloads at all gets exactly
    one answer (an exchange's result or an error notify) and never an exception."""
    from oe.ike.message import Header, encode_payloads

    a, b = ike_pair(seed=11, cfg_a=SUITES[kind], cfg_b=SUITES[kind])
    link = Link(a, b)
    sid = a.initiate(ADDR_B, 0)
    link.roundtrip(a)
    sa = a._by_id[sid]
    header = Header(sa.spi_i, sa.spi_r, 0, exchange, 0x08, sa.next_message_id, 0).encode()
    first, inner = encode_payloads(payloads)
    b.receive_datagram(sa.keys.cipher(True).seal(header, first, inner, a.rng), (ADDR_A, 500), 1.0)
    assert len(b.datagrams_to_send(1.0)) == 1
    while b.next_event() is not None:
        pass


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.sampled_from(sorted(SUITES)),
       st.lists(__import__("test_ike_message")._payload, max_size=6), st.booleans())
def test_authentic_ike_auth_with_random_payloads_is_answered(kind, payloads, with_real_auth):
    """The half-open responder gets an IKE_AUTH that passes the integrity check but holds
    random payloads (optionally after a real IDi and AUTH): one answer, then either an
    established IKE SA or a failure event, never an exception."""
    from oe.ike.message import ID, Auth, Header, encode_payloads
    from oe.ike.tasks.ike_auth import auth_payload

    a, b = ike_pair(seed=13, cfg_a=SUITES[kind], cfg_b=SUITES[kind])
    link = Link(a, b)
    sid = a.initiate(ADDR_B, 0)
    link.transfer(a)
    link.transfer(b)
    a.datagrams_to_send(0)  # the real IKE_AUTH request, never delivered
    sa = a._by_id[sid]
    if with_real_auth:
        idi = ID(True, sa.identity.id_type, sa.identity.data)
        payloads = [idi, auth_payload(sa, idi)] + [p for p in payloads
                                                   if not isinstance(p, (ID, Auth))]
    header = Header(sa.spi_i, sa.spi_r, 0, 35, 0x08, 1, 0).encode()
    first, inner = encode_payloads(payloads)
    b.receive_datagram(sa.keys.cipher(True).seal(header, first, inner, a.rng), (ADDR_A, 500), 1.0)
    assert len(b.datagrams_to_send(1.0)) == 1
    kinds = []
    while (ev := b.next_event()) is not None:
        kinds.append(type(ev).__name__)
    assert kinds[:1] in (["IkeSaEstablished"], ["IkeSaFailed"]), kinds
