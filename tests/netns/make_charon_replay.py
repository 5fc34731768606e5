"""Regenerate tests/data/charon_replay_*.json: one real IKE_SA_INIT + IKE_AUTH with charon.

Run as root: ``.venv/bin/python tests/netns/make_charon_replay.py``. oe runs with a seeded rng,
as initiator and as responder; tcpdump records every IKE datagram on the veth. The file keeps oe's (throwaway, test-only)
private key, charon's public key, the seed, the datagrams and the CHILD SA oe derived, so that
tests/test_ike_replay.py can replay charon's answers into a fresh engine without charon.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from test_ike_interop import PROPOSAL_SETS, Topology  # noqa: E402

SEED = 7296
OUT = Path(__file__).resolve().parents[1] / "data"


def main() -> None:
    from scapy.layers.inet import IP, UDP

    for (ike, esp), role in [(p, r) for p in PROPOSAL_SETS.values()
                             for r in ("initiator", "responder")]:
        tmp = Path(tempfile.mkdtemp())
        t = Topology(tmp, ike, esp, seed=SEED)
        try:
            t.up()
            t.pcap = tmp / "ike.pcap"
            dump = subprocess.Popen(
                ["ip", "netns", "exec", t.ns_oe, "tcpdump", "--immediate-mode", "-i", t.veth_oe,
                 "-U", "-n", "-w", str(t.pcap), "udp port 500 or udp port 4500"],
                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
            assert dump.stderr is not None
            while "listening on" not in dump.stderr.readline():
                pass
            assert t.oe is not None
            if role == "initiator":
                t.oe.command("initiate")
            else:
                t.swanctl("--initiate", "--child", "hh")
            child = t.oe.expect("ChildSaEstablished")["child"]
            while len(t.captured()) < 4:
                pass
            dump.terminate()
            dump.wait()
            datagrams = [
                {"from_oe": p[IP].src == t.oe_addr, "sport": p[UDP].sport, "dport": p[UDP].dport,
                 "data": bytes(p[UDP].payload).hex()}
                for p in t.captured()
            ]
            record = {
                "ike": ike, "esp": esp, "seed": SEED, "role": role, "oe_addr": t.oe_addr,
                "charon_addr": t.charon_addr,
                "oe_key": (tmp / "oe.pem").read_text(),
                "charon_pub": (tmp / "charon.pub").read_text(),
                "datagrams": datagrams, "child": child,
            }
            (OUT / f"charon_replay_{role}_{ike}.json").write_text(json.dumps(record, indent=1) + "\n")
        finally:
            t.down()


if __name__ == "__main__":
    main()
