"""In-memory IKE pairs (aioquic's transfer()/roundtrip(), strongSwan's exchange_test_helper)."""

from __future__ import annotations

import random
from functools import lru_cache

from cryptography.hazmat.primitives.asymmetric import rsa

from oe.ike.auth import Identity, PeerKey
from oe.ike.events import Event
from oe.ike.sa import IkeConfig, IkeEngine

ADDR_A = "198.51.100.1"
ADDR_B = "198.51.100.2"


@lru_cache(maxsize=None)
def host_key(name: str, bits: int = 2048) -> rsa.RSAPrivateKey:
    """One RSA key per name and size, generated once per test run (never written to disk)."""
    return rsa.generate_private_key(public_exponent=65537, key_size=bits)


def seeded_rng(seed: int):
    r = random.Random(seed)
    return lambda n: r.randbytes(n)


ENGINE_ARGS = ("child_policy", "spis", "sa_ids", "cookie_required", "admit_init")


def make_engine(addr: str, key_name: str, peers: dict[str, str], seed: int, key_bits: int = 2048,
                **cfg) -> IkeEngine:
    """An engine at ``addr`` whose key lookup knows ``peers`` (address -> key name, each key
    vouching for its address; every key of ``key_bits``); ``cfg`` holds IkeConfig fields and
    IkeEngine keywords (``local_addrs`` replaces the one address ``addr``)."""
    known = {Identity.from_address(a): PeerKey(host_key(k, key_bits).public_key(),
                                               frozenset({a}))
             for a, k in peers.items()}
    engine_args = {k: cfg.pop(k) for k in ENGINE_ARGS if k in cfg}
    cfg.setdefault("local_addrs", frozenset({addr}))
    config = IkeConfig(private_key=host_key(key_name, key_bits), **cfg)
    return IkeEngine(config, rng=seeded_rng(seed), lookup_key=known.get, **engine_args)


def ike_pair(seed: int = 1, cfg_a: dict | None = None, cfg_b: dict | None = None):
    a = make_engine(ADDR_A, "a", {ADDR_B: "b"}, seed, **(cfg_a or {}))
    b = make_engine(ADDR_B, "b", {ADDR_A: "a"}, seed + 1000, **(cfg_b or {}))
    return a, b


class Link:
    """Moves datagrams between two engines A and B. With ``nat``, A sits behind a NAT whose
    public address is ``nat`` and which maps A's ports 500/4500 to 40500/44500."""

    NAT_PORTS = {500: 40500, 4500: 44500}

    def __init__(self, a: IkeEngine, b: IkeEngine, nat: str | None = None) -> None:
        self.a, self.b = a, b
        self.nat = nat
        self.now = 0.0

    def transfer(self, sender: IkeEngine, drop: bool = False) -> list[bytes]:
        receiver = self.b if sender is self.a else self.a
        sent = []
        for data, addr, lport, laddr in sender.datagrams_to_send(self.now):
            sent.append(data)
            if drop:
                continue
            src = (laddr, lport)
            dst = addr
            if self.nat and sender is self.a:
                src = (self.nat, self.NAT_PORTS[lport])
            if self.nat and receiver is self.a:
                assert addr[0] == self.nat, addr
                dst = (ADDR_A, {v: k for k, v in self.NAT_PORTS.items()}[addr[1]])
            receiver.receive_datagram(data, src, self.now, local_port=dst[1], local_addr=dst[0])
        return sent

    def roundtrip(self, sender: IkeEngine) -> None:
        """Deliver until both sides are quiet."""
        for _ in range(20):
            other = self.b if sender is self.a else self.a
            n = len(self.transfer(sender)) + len(self.transfer(other))
            if n == 0:
                return

    def advance(self, seconds: float) -> None:
        self.now += seconds
        for e in (self.a, self.b):
            t = e.get_timer()
            if t is not None and t <= self.now:
                e.handle_timer(self.now)


def established_pair(seed: int = 1):
    """A initiated an IKE SA with one CHILD SA to B, events taken: (link, A's sa_id, A's
    CHILD SA)."""
    a, b = ike_pair(seed)
    link = Link(a, b)
    sid = a.initiate(ADDR_B, 0)
    link.roundtrip(a)
    events(a), events(b)
    return link, sid, a.children(sid)[0]


def events(engine: IkeEngine) -> list[Event]:
    out = []
    while (ev := engine.next_event()) is not None:
        out.append(ev)
    return out
