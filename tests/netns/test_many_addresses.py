"""One oe daemon serves a host with 500 addresses (issue 13, "Done when"; docs/gateway.md 1).

    [ns cli]  tests/netns/ike_peer.py  192.0.2.10 --bridge-- 192.0.2.20  oe  [ns srv]
                                                        and on eth0 198.18.0.1 - 198.18.1.244
    [ns dns]  knotd 192.0.2.53: signed reverse zones, one IPSECKEY per address (srv's one key)

The peer initiates to each of the 500 addresses and demands that address as the responder's
ID: every IKE_AUTH verifies, `oe status` lists 500 IKE SAs each on its own local address, and
the daemon holds one UDP socket per port and family, not one per address. ESP then leaves
from the address of each CHILD SA, not from the route's source (packet info on the datapath's
sends).
"""

from __future__ import annotations

import ipaddress
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization

from oe import control, demo, hostkey
from oe.knotd import NSEC, Knotd
from oe.netns import World, wait_for

from test_ike_interop import OePeer

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root for network namespaces")

DNS, SRV, CLI = "192.0.2.53", "192.0.2.20", "192.0.2.10"
NET = ipaddress.ip_network("198.18.0.0/23")
MANY = [str(a) for a in list(NET.hosts())[:500]]
ZONES = ("2.0.192.in-addr.arpa", "0.18.198.in-addr.arpa", "1.18.198.in-addr.arpa")
BATCH = 25  # initiations in flight at once: below the responder's COOKIE threshold
ESP_SOURCES = ("import socket; s = socket.socket(socket.AF_INET, socket.SOCK_RAW, 50)\n"
               "while True: print(s.recvfrom(65535)[1][0], flush=True)")


def pem_public(key) -> bytes:
    return key.public_key().public_bytes(serialization.Encoding.PEM,
                                         serialization.PublicFormat.SubjectPublicKeyInfo)


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("many")
    world = World("oema", tmp).open()
    knotd = None
    try:
        hosts = {name: world.host(name, f"{addr}/24")
                 for name, addr in (("dns", DNS), ("srv", SRV), ("cli", CLI))}
        srv, cli = hosts["srv"], hosts["cli"]
        # on eth0: this kernel may lack the dummy link type
        batch = "".join(f"addr add {a}/32 dev eth0\n" for a in MANY)
        subprocess.run(["ip", "-n", srv.name, "-batch", "-"], input=batch, text=True,
                       check=True, capture_output=True)
        world.run(cli, "ip", "route", "add", str(NET), "via", SRV)
        keys = {name: hostkey.keygen(hostkey.hostkey_path(hosts[name].dir / "conf"),
                                     force=True) for name in ("srv", "cli")}
        (cli.dir / "srv.pub").write_bytes(pem_public(keys["srv"]))
        blobs = {name: hostkey.public_blob(key) for name, key in keys.items()}
        zones = demo.zone_texts(blobs, origins=ZONES, addresses={"srv": MANY, "cli": (CLI,)})
        knotd = Knotd(hosts["dns"].dir / "knot", zones, listen=[(DNS, 53)],
                      prefix=("ip", "netns", "exec", hosts["dns"].name),
                      signing={origin: NSEC for origin in ZONES})
        knotd.start(ready=knotd.signed)
        confdir = srv.dir / "conf"
        demo.policy_conf(confdir, DNS, {"private-or-clear": "0.0.0.0/0\n"})
        (confdir / demo.ANCHORS).write_text("".join(knotd.anchor(o) for o in ZONES))
        with open(confdir / "oe.conf", "a") as conf:
            conf.write(f'trust_anchors = ["{demo.ANCHORS}"]\n')
        made = demo.OeWorld(world, hosts, knotd)
        demo.start_oe(made, "srv")
        yield made
    finally:
        if knotd is not None:
            try:
                demo.stop_oe(demo.OeWorld(world, world.hosts, knotd), "srv")
            except KeyError:
                pass
            knotd.stop()
        world.close()


def test_ike_answered_on_each_of_500_addresses_with_its_own_id(world):
    cli = world.hosts["cli"]
    peer = OePeer(cli.name, ["--local", CLI, "--peer", MANY[0], "--peer-net", str(NET),
                             "--key", str(hostkey.hostkey_path(cli.dir / "conf")),
                             "--peer-pub", str(cli.dir / "srv.pub")])
    try:
        peer.expect("ready")
        start = time.monotonic()
        for at in range(0, len(MANY), BATCH):
            for address in MANY[at:at + BATCH]:
                peer.send("initiate", peer=address)
            for address in MANY[at:at + BATCH]:
                # ike_peer asked for IDr = the contacted address; its key lookup vouches for
                # that address only, so this is srv's AUTH verified under that ID
                established = peer.expect("IkeSaEstablished", remote_addr=address)
                assert established["remote_id"] == address
        elapsed = time.monotonic() - start
        print(f"500 IKE SAs, one per address, in {elapsed:.1f} s")
        status = control.request(world.rundir("srv"), "status")
        ours = [sa for sa in status["ike_sas"] if sa["state"] == "ESTABLISHED"]
        assert sorted(sa["local_addr"] for sa in ours) == sorted(MANY)
        assert {sa["remote_addr"] for sa in ours} == {CLI}
        pid = world.daemons["srv"].pid
        fds = len(os.listdir(f"/proc/{pid}/fd"))
        sockets = world.world.run(world.hosts["srv"], "ss", "-H", "-uanp").stdout
        bound = [line for line in sockets.splitlines()
                 if f"pid={pid}," in line and (":500 " in line or ":4500 " in line)]
        print(f"daemon: {fds} open fds, UDP 500/4500 sockets: {len(bound)}")
        assert len(bound) == 2, sockets       # IPv4 500 and 4500, wildcard, whatever the count
        assert fds < 100, fds                 # one socket per address would be over 1000
        esp_from_each_sa_address(world)
    finally:
        peer.stop()


def esp_from_each_sa_address(world) -> None:
    """A packet from one of srv's addresses to cli goes through that address's CHILD SA; its
    ESP must leave from that address (cli would otherwise see all from srv's route source)."""
    cli, srv = world.hosts["cli"], world.hosts["srv"]
    listener = world.world.spawn(cli, sys.executable, "-c", ESP_SOURCES, log="esp.log")
    time.sleep(0.3)
    chosen = [MANY[0], MANY[250], MANY[-1]]
    try:
        for address in chosen:
            world.world.run(srv, "ping", "-n", "-c", "1", "-W", "1", "-I", address, CLI,
                            check=False)
        assert wait_for(lambda: len((cli.dir / "esp.log").read_text().split()) >= 3, 5)
    finally:
        World.stop(listener)
    assert (cli.dir / "esp.log").read_text().split() == chosen
