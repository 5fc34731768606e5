"""oe's side of the charon interop test, run inside a network namespace by the test.

It runs IkeEngine behind IkeRunner on UDP 500/4500, prints every engine event as one JSON line
on stdout (keys as hex), and obeys JSON commands on stdin:

  {"cmd": "initiate"}            start IKE_SA_INIT towards the peer; "local_ts": [addresses]
                                 proposes those hosts as TSi instead of our address,
                                 "remote_ts": [addresses] those as TSr instead of the peer's;
                                 "peer": another address of the peer's (in --peer-net), which
                                 must authenticate as itself
  {"cmd": "rekey_child"}         CREATE_CHILD_SA with N(REKEY_SA) for the newest CHILD SA
  {"cmd": "rekey_ike"}           CREATE_CHILD_SA rekeying the IKE SA
  {"cmd": "delete_child"}        INFORMATIONAL { D(ESP) } for the newest CHILD SA
  {"cmd": "delete_ike"}          INFORMATIONAL { D(IKE) }
  {"cmd": "liveness"}            INFORMATIONAL { }; {"event": "idle"} follows once no request
                                 of ours is in flight any more
  {"cmd": "ping", "seq": N}      ESP-in-UDP echo request built by scapy with the newest
                                 CHILD SA's outbound keys, sent from our 4500 socket
  {"cmd": "quit"}

ESP arriving on 4500 is reported as {"event": "esp", "data": hex}.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import ipaddress
import json
import os
import random
import socket
import sys

from cryptography.hazmat.primitives import serialization

from oe.ike.auth import Identity, PeerKey
from oe.ike.events import ChildSaDeleted, ChildSaEstablished, ChildSaRekeyed, IkeSaEstablished
from oe.ike.runner import IkeRunner
from oe.ike.sa import IkeConfig, IkeEngine
from oe.ike.ts import TrafficSelector


def jsonable(value):
    if isinstance(value, bytes):
        return value.hex()
    if dataclasses.is_dataclass(value):
        return {f.name: jsonable(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    if isinstance(value, (int, float, str, bool)) or value is None:
        return value
    return str(value)


def emit(obj: dict) -> None:
    sys.stdout.write(json.dumps(obj) + "\n")
    sys.stdout.flush()


async def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--local", required=True)
    ap.add_argument("--peer", required=True)
    ap.add_argument("--key", required=True, help="our private key, PEM")
    ap.add_argument("--peer-pub", required=True, help="the peer's public key, PEM")
    ap.add_argument("--ike", default="aes128-sha256-x25519")
    ap.add_argument("--esp", default="aes128gcm16")
    ap.add_argument("--seed", type=int, help="draw randomness from random.Random(seed) (replays)")
    ap.add_argument("--cookie-threshold", type=int, default=32)
    ap.add_argument("--peer-net", help="the peer's key vouches for each address in this network "
                                       "too (a host with many addresses, docs/gateway.md 1)")
    args = ap.parse_args()

    with open(args.key, "rb") as f:
        key = serialization.load_pem_private_key(f.read(), None)
    with open(args.peer_pub, "rb") as f:
        peer_pub = serialization.load_pem_public_key(f.read())
    peer_id = Identity.from_address(args.peer)
    config = IkeConfig(local_addrs=frozenset({args.local}), private_key=key,
                       ike_proposals=(args.ike,), esp_proposals=(args.esp,),
                       cookie_threshold=args.cookie_threshold)
    rng = os.urandom if args.seed is None else random.Random(args.seed).randbytes
    peer_key = PeerKey(peer_pub, frozenset({args.peer}))
    peer_net = ipaddress.ip_network(args.peer_net) if args.peer_net else None

    def lookup_key(ident: Identity) -> PeerKey | None:
        if ident == peer_id:
            return peer_key
        address = ident.address()
        if peer_net is not None and address is not None and address in peer_net:
            return PeerKey(peer_pub, frozenset({str(address)}))
        return None

    engine = IkeEngine(config, rng=rng, lookup_key=lookup_key)
    state: dict = {"sa_id": None, "children": []}

    def on_event(ev) -> None:
        if isinstance(ev, IkeSaEstablished):
            state["sa_id"] = ev.sa_id
        if isinstance(ev, (ChildSaEstablished, ChildSaRekeyed)):
            state["children"].append(ev.child)
        if isinstance(ev, ChildSaDeleted):
            state["children"] = [c for c in state["children"] if c.spi_in != ev.spi_in]
        emit({"event": type(ev).__name__, **jsonable(ev)})

    def on_esp(data: bytes, addr) -> None:
        emit({"event": "esp", "data": data.hex(), "from": list(addr)})

    family = socket.AF_INET6 if ":" in args.local else socket.AF_INET
    runner = IkeRunner(engine, family, on_event, on_esp)
    await runner.start()
    emit({"event": "ready"})

    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    while line := await reader.readline():
        cmd = json.loads(line)
        now = runner.now()
        name = cmd["cmd"]
        try:
            if name == "quit":
                break
            if name == "initiate":
                local_ts = [TrafficSelector.host(a) for a in cmd.get("local_ts", [])]
                remote_ts = [TrafficSelector.host(a) for a in cmd.get("remote_ts", [])]
                state["sa_id"] = engine.initiate(cmd.get("peer", args.peer), now,
                                                 local_ts=local_ts or None,
                                                 remote_ts=remote_ts or None)
            elif name == "rekey_child":
                engine.rekey_child(state["sa_id"], state["children"][-1].spi_in, now)
            elif name == "rekey_ike":
                engine.rekey_ike(state["sa_id"], now)
            elif name == "delete_child":
                engine.delete_child(state["sa_id"], state["children"][-1].spi_in, now)
            elif name == "delete_ike":
                engine.delete_ike(state["sa_id"], now)
            elif name == "liveness":
                engine.check_liveness(state["sa_id"], now)
                wait_idle(engine, state["sa_id"])
            elif name == "ping":
                send_ping(runner, state["children"][-1], cmd["seq"])
            emit({"event": "ok", "cmd": name})
        except Exception as e:  # report to the test, keep running
            emit({"event": "error", "cmd": name, "error": repr(e)})
        runner.transmit()
    runner.close()


def wait_idle(engine: IkeEngine, sa_id: int) -> None:
    """Report {"event": "idle"} once the IKE SA has no request in flight (polled on the loop)."""
    loop = asyncio.get_running_loop()

    def check() -> None:
        sa = engine._by_id.get(sa_id)
        if sa is not None and sa.request is None and not sa.queue:
            emit({"event": "idle"})
        else:
            loop.call_later(0.05, check)

    loop.call_later(0.05, check)


def send_ping(runner: IkeRunner, child, seq: int) -> None:
    """An ICMP echo request, tunnel mode, sealed by scapy with our outbound key."""
    from scapy.layers.inet import ICMP, IP, UDP
    from scapy.layers.inet6 import ICMPv6EchoRequest, IPv6
    from scapy.layers.ipsec import ESP, SecurityAssociation

    ip = IPv6 if ":" in child.local_addr else IP
    sa = SecurityAssociation(
        ESP, spi=child.spi_out, seq_num=seq, crypt_algo="AES-GCM", crypt_key=child.key_out,
        tunnel_header=ip(src=child.local_addr, dst=child.remote_addr),
        nat_t_header=UDP(sport=4500, dport=child.remote_port or 4500),
    )
    echo = ICMPv6EchoRequest(id=0x4F45, seq=seq) if ip is IPv6 else ICMP(id=0x4F45, seq=seq)
    inner = ip(src=child.local_addr, dst=child.remote_addr) / echo / (b"oe-interop" * 4)
    pkt = sa.encrypt(inner)
    runner.send_esp(bytes(pkt[UDP].payload), (child.remote_addr, child.remote_port or 4500),
                    child.local_addr)


if __name__ == "__main__":
    asyncio.run(main())
