"""Replays of real exchanges with strongSwan charon 5.9.8, without charon or root.

tests/netns/make_charon_replay.py recorded them: oe initiated with a seeded rng, so a fresh
engine with the same seed, key and addresses must send the very bytes oe sent then, and
charon's recorded answers must establish the same CHILD SA (same SPIs and ESP keys). The key
in the fixture is a throwaway test key, public on purpose. A change in the order in which the
engine draws random bytes changes what it sends: then regenerate the fixtures (as root).
"""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization

from oe.ike.auth import Identity, PeerKey
from oe.ike.events import ChildSaEstablished, IkeSaEstablished
from oe.ike.sa import IkeConfig, IkeEngine

FIXTURES = sorted((Path(__file__).parent / "data").glob("charon_replay_*.json"))


@pytest.mark.parametrize("path", FIXTURES, ids=lambda p: p.stem.removeprefix("charon_replay_"))
def test_replay_of_charon_exchange(path):
    """IKE_SA_INIT <--> (charon fakes NAT-D, both float to 4500), IKE_AUTH <-->, byte for byte,
    with oe as initiator and as responder."""
    rec = json.loads(path.read_text())
    key = serialization.load_pem_private_key(rec["oe_key"].encode(), None)
    charon_pub = serialization.load_pem_public_key(rec["charon_pub"].encode())
    charon_id = Identity.from_address(rec["charon_addr"])
    charon_key = PeerKey(charon_pub, frozenset({rec["charon_addr"]}))
    engine = IkeEngine(
        IkeConfig(local_addrs=frozenset({rec["oe_addr"]}), private_key=key, ike_proposals=(rec["ike"],),
                  esp_proposals=(rec["esp"],)),
        rng=random.Random(rec["seed"]).randbytes,
        lookup_key=lambda ident: charon_key if ident == charon_id else None,
    )
    if rec["role"] == "initiator":
        engine.initiate(rec["charon_addr"], 0.0)
    now = 0.0
    for d in rec["datagrams"]:
        data = bytes.fromhex(d["data"])
        now += 0.01
        if d["from_oe"]:
            [(sent, addr, local_port, _)] = engine.datagrams_to_send(now)
            assert sent == data  # what oe put on the wire in the recorded run
            assert (addr, local_port) == ((rec["charon_addr"], d["dport"]), d["sport"])
        else:
            engine.receive_datagram(data, (rec["charon_addr"], d["sport"]), now,
                                    local_port=d["dport"])
    ike_sa, child_ev = engine.next_event(), engine.next_event()
    assert isinstance(ike_sa, IkeSaEstablished) and ike_sa.nat_detected
    assert isinstance(child_ev, ChildSaEstablished)
    child, want = child_ev.child, rec["child"]
    assert (child.spi_in, child.spi_out) == (want["spi_in"], want["spi_out"])
    assert (child.key_in.hex(), child.key_out.hex()) == (want["key_in"], want["key_out"])
    assert child.udp_encap and child.remote_port == 4500
