"""One oe daemon serves a host with 500 addresses (issue 13, "Done when"; docs/gateway.md 1).

    [ns cli]  tests/netns/ike_peer.py  192.0.2.10 --bridge-- 192.0.2.20  oe  [ns srv]
              (one per family)       2001:db8::10            2001:db8::20
                                         and on srv's eth0: 198.18.0.1 - 198.18.1.244 (500),
                                                            2001:db8:1f::1 - ::14 (20)
    [ns dns]  knotd 192.0.2.53: signed reverse zones, one IPSECKEY per address (srv's one key)

The peer initiates to each address and demands that address as the responder's ID: every
IKE_AUTH verifies, `oe status` lists one IKE SA on each local address, and the daemon holds
one UDP socket per port and family, not one per address. ESP then leaves from the address of
each CHILD SA, not from the route's source (packet info on the datapath's sends).
"""

from __future__ import annotations

import ipaddress
import os
import subprocess
import sys
import time

import pytest
from cryptography.hazmat.primitives import serialization

from oe import control, demo, hostkey
from oe.knotd import NSEC, Knotd
from oe.netns import World, wait_for

from test_ike_interop import OePeer

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root for network namespaces")

DNS = "192.0.2.53"
SRV = {4: "192.0.2.20", 6: "2001:db8::20"}
CLI = {4: "192.0.2.10", 6: "2001:db8::10"}
NET = {4: ipaddress.ip_network("198.18.0.0/23"), 6: ipaddress.ip_network("2001:db8:1f::/119")}
MANY = {4: [str(a) for a in list(NET[4].hosts())[:500]],
        6: [str(a) for a in list(NET[6].hosts())[:20]]}
ZONES = ("2.0.192.in-addr.arpa", "0.18.198.in-addr.arpa", "1.18.198.in-addr.arpa",
         "0.0.0.0.0.0.0.0.8.b.d.0.1.0.0.2.ip6.arpa", "f.1.0.0.8.b.d.0.1.0.0.2.ip6.arpa")
BATCH = 25  # initiations in flight at once: below the responder's COOKIE threshold
ESP_SOURCES = ("import socket, sys\n"
               "s = socket.socket(int(sys.argv[1]), socket.SOCK_RAW, 50)\n"
               "print('ready', flush=True)\n"
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
        hosts = {"dns": world.host("dns", f"{DNS}/24"),
                 "srv": world.host("srv", f"{SRV[4]}/24", f"{SRV[6]}/64"),
                 "cli": world.host("cli", f"{CLI[4]}/24", f"{CLI[6]}/64")}
        srv, cli = hosts["srv"], hosts["cli"]
        # on eth0: this kernel may lack the dummy link type
        batch = "".join(f"addr add {a}/{32 if v == 4 else 128} dev eth0"
                        f"{' nodad' if v == 6 else ''}\n" for v in MANY for a in MANY[v])
        subprocess.run(["ip", "-n", srv.name, "-batch", "-"], input=batch, text=True,
                       check=True, capture_output=True)
        for v in NET:
            world.run(cli, "ip", f"-{v}", "route", "add", str(NET[v]), "via", SRV[v])
        keys = {name: hostkey.keygen(hostkey.hostkey_path(hosts[name].dir / "conf"),
                                     force=True) for name in ("srv", "cli")}
        (cli.dir / "srv.pub").write_bytes(pem_public(keys["srv"]))
        blobs = {name: hostkey.public_blob(key) for name, key in keys.items()}
        zones = demo.zone_texts(blobs, origins=ZONES, addresses={
            "srv": MANY[4] + MANY[6], "cli": (CLI[4], CLI[6])})
        knotd = Knotd(hosts["dns"].dir / "knot", zones, listen=[(DNS, 53)],
                      prefix=("ip", "netns", "exec", hosts["dns"].name),
                      signing={origin: NSEC for origin in ZONES})
        knotd.start(ready=knotd.signed)
        confdir = srv.dir / "conf"
        demo.policy_conf(confdir, DNS, {"private-or-clear": "0.0.0.0/0\n::/0\n"})
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


def establish_each(world, version: int) -> float:
    """ike_peer on cli initiates to each of srv's addresses of the family; seconds taken."""
    cli = world.hosts["cli"]
    peer = OePeer(cli.name, ["--local", CLI[version], "--peer", MANY[version][0],
                             "--peer-net", str(NET[version]),
                             "--key", str(hostkey.hostkey_path(cli.dir / "conf")),
                             "--peer-pub", str(cli.dir / "srv.pub")])
    try:
        peer.expect("ready")
        start = time.monotonic()
        addresses = MANY[version]
        for at in range(0, len(addresses), BATCH):
            for address in addresses[at:at + BATCH]:
                peer.send("initiate", peer=address)
            for address in addresses[at:at + BATCH]:
                # ike_peer asked for IDr = the contacted address; its key lookup vouches for
                # that address only, so this is srv's AUTH verified under that ID
                established = peer.expect("IkeSaEstablished", remote_addr=address)
                assert established["remote_id"] == address
        return time.monotonic() - start
    finally:
        peer.stop()


def test_ike_answered_on_each_address_with_its_own_id(world):
    took = {version: establish_each(world, version) for version in (4, 6)}
    print(f"IKE SAs, one per address: 500 IPv4 in {took[4]:.1f} s, 20 IPv6 in {took[6]:.1f} s")
    status = control.request(world.rundir("srv"), "status")
    ours = [sa for sa in status["ike_sas"] if sa["state"] == "ESTABLISHED"]
    assert sorted(sa["local_addr"] for sa in ours) == sorted(MANY[4] + MANY[6])
    assert {sa["remote_addr"] for sa in ours} == {CLI[4], CLI[6]}
    pid = world.daemons["srv"].pid
    fds = len(os.listdir(f"/proc/{pid}/fd"))
    sockets = world.world.run(world.hosts["srv"], "ss", "-H", "-uanp").stdout
    bound = [line for line in sockets.splitlines()
             if f"pid={pid}," in line and (":500 " in line or ":4500 " in line)]
    print(f"daemon: {fds} open fds, UDP 500/4500 sockets: {len(bound)}")
    assert len(bound) == 4, sockets       # 500 and 4500 per family, wildcard, whatever the count
    assert fds < 100, fds                 # one socket per address would be over 1000


@pytest.mark.parametrize("version", [4, 6])
def test_esp_leaves_from_each_child_sas_address(world, version):
    """A packet from one of srv's addresses to cli goes through that address's CHILD SA (the
    test above made them); its ESP must leave from that address, not the route's source."""
    cli, srv = world.hosts["cli"], world.hosts["srv"]
    log = cli.dir / f"esp{version}.log"
    family = 2 if version == 4 else 10  # AF_INET, AF_INET6
    listener = world.world.spawn(cli, sys.executable, "-c", ESP_SOURCES, str(family),
                                 log=log.name)
    chosen = [MANY[version][0], MANY[version][len(MANY[version]) // 2], MANY[version][-1]]
    try:
        assert wait_for(lambda: log.exists() and log.read_text().startswith("ready"), 10)
        for address in chosen:
            world.world.run(srv, "ping", f"-{version}", "-n", "-c", "1", "-W", "1", "-I",
                            address, CLI[version], check=False)
        assert wait_for(lambda: len(log.read_text().split()) >= 1 + len(chosen), 5)
    finally:
        World.stop(listener)
    assert log.read_text().split()[1:] == chosen
