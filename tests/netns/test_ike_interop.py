"""oe's IKEv2 engine against strongSwan charon 5.9 (kernel-libipsec), in network namespaces.

Topology (both namespaces created here, joined by one veth pair; nothing in the root namespace):

    [ns oei<pid>] oe: tests/netns/ike_peer.py   203.0.113.1 --veth-- 203.0.113.2   charon [ns oec<pid>]
                  tcpdump on the veth (udp 4500)

Each test negotiates with one proposal set, oe as initiator or as responder, then proves the
ESP keys from oe's CHILD SA event both ways: charon's ESP, captured on the veth, decrypts with
oe's inbound key in scapy's ESP; ESP that scapy seals with oe's outbound key is accepted by
charon (its echo replies come back, and decrypt too). Then a CHILD SA rekey and an IKE SA rekey
started by each side, the ESP proof again with the newest keys, and DELETEs.
charon 5.9.8 + kernel-libipsec never initiates from a trap and always forces ESP-in-UDP.
"""

from __future__ import annotations

import json
import os
import queue
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric import rsa

from charon import Charon, pem_private, pem_public

pytestmark = [
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root for network namespaces"),
    pytest.mark.skipif(not Path("/usr/lib/ipsec/charon").exists() or not shutil.which("swanctl"),
                       reason="strongSwan charon/swanctl not installed (make apt)"),
    pytest.mark.skipif(not shutil.which("tcpdump"), reason="tcpdump not installed (make apt)"),
]
needs_nft = pytest.mark.skipif(not shutil.which("nft"), reason="nftables not installed (make apt)")

ROOT = Path(__file__).resolve().parents[2]
ADDRS = {4: ("203.0.113.1", "203.0.113.2", 24), 6: ("2001:db8:5::1", "2001:db8:5::2", 64)}
NAT_INSIDE, NAT_OUTSIDE = "198.51.100.1", "203.0.113.254"
CHARON_PROBE = b"cleartext-from-charon"
WAIT = 20.0  # seconds for one expected event; only a bound for failures, never a measurement

PROPOSAL_SETS = {
    "aes128-sha256-x25519": ("aes128-sha256-x25519", "aes128gcm16"),
    "aes256gcm16-prfsha384-ecp256": ("aes256gcm16-prfsha384-ecp256", "aes256gcm16-modp2048"),
}

def run(*cmd: str, check: bool = True, timeout: float = 30) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, check=check, capture_output=True, text=True, timeout=timeout)


class OePeer:
    """tests/netns/ike_peer.py in the oe namespace: JSON events out, JSON commands in."""

    def __init__(self, ns: str, args: list[str]) -> None:
        self.proc = subprocess.Popen(
            ["ip", "netns", "exec", ns, sys.executable, str(ROOT / "tests/netns/ike_peer.py"),
             *args],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
            cwd=ROOT,
        )
        self.lines: queue.Queue = queue.Queue()
        self.seen: list[dict] = []
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.put(json.loads(line))
        self.lines.put(None)

    def send(self, cmd: str, **kw) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(json.dumps({"cmd": cmd, **kw}) + "\n")
        self.proc.stdin.flush()

    def expect(self, event: str, **match) -> dict:
        """The next event named ``event`` (with fields equal to ``match``); others are kept."""
        deadline = time.monotonic() + WAIT
        while True:
            for ev in self.seen:
                if ev["event"] == event and all(ev.get(k) == v for k, v in match.items()):
                    self.seen.remove(ev)
                    return ev
            left = deadline - time.monotonic()
            try:
                ev = self.lines.get(timeout=max(left, 0.01))
            except queue.Empty:
                ev = None
            if ev is None:
                stderr = ""
                if self.proc.poll() is not None and self.proc.stderr is not None:
                    stderr = self.proc.stderr.read()
                raise AssertionError(f"no {event} {match} from oe; got {self.seen} {stderr}")
            if ev["event"] == "error":
                raise AssertionError(f"oe driver error: {ev}")
            self.seen.append(ev)

    def command(self, cmd: str, **kw) -> None:
        self.send(cmd, **kw)
        self.expect("ok", cmd=cmd)

    def stop(self) -> None:
        if self.proc.poll() is None:
            try:
                self.send("quit")
                self.proc.wait(timeout=5)
            except (OSError, subprocess.TimeoutExpired):
                self.proc.kill()
                self.proc.wait()


class Topology:
    def __init__(self, tmp: Path, ike: str, esp: str, oe_ike: str | None = None,
                 family: int = 4, dpd: str = "0s", seed: int | None = None,
                 oe_esp: str | None = None, oe_args: tuple[str, ...] = (),
                 nat: bool = False, rsa_pss: bool = False, key_bits: int = 2048,
                 charon_kw: dict | None = None) -> None:
        """key_bits: both RSA keys' size; charon_kw: more keywords for Charon."""
        pid = os.getpid()
        self.tmp = tmp
        self.ns_oe, self.ns_charon = f"oei{pid}", f"oec{pid}"
        self.veth_oe, self.veth_charon = f"oei{pid}", f"oec{pid}"
        self.d = tmp / "charon"
        self.ike, self.esp = ike, esp
        self.oe_ike = oe_ike or ike
        self.dpd = dpd
        self.seed = seed
        self.oe_esp = oe_esp or esp
        self.oe_args = oe_args
        self.oe_addr, self.charon_addr, self.prefix = ADDRS[family]
        self.charon: Charon | None = None
        self.tcpdump: subprocess.Popen | None = None
        self.oe: OePeer | None = None
        self.pcap = tmp / "esp.pcap"
        self.nat = nat
        self.rsa_pss = rsa_pss
        self.key_bits = key_bits
        self.charon_kw = charon_kw or {}
        self.ns_nat = f"oen{pid}"
        if nat:  # oe on a private side, behind a NAT that also changes ports (below)
            self.oe_addr = NAT_INSIDE

    # --- setup / teardown -----------------------------------------------------------------

    def up(self) -> None:
        if self.nat:
            self._nat_network()
        else:
            self._network()
        oe_key = rsa.generate_private_key(public_exponent=65537, key_size=self.key_bits)
        charon_key = rsa.generate_private_key(public_exponent=65537, key_size=self.key_bits)
        (self.tmp / "oe.pem").write_bytes(pem_private(oe_key))
        (self.tmp / "charon.pub").write_bytes(pem_public(charon_key))
        self.charon = Charon(
            self.ns_charon, self.d, me=self.charon_addr, peer=self.oe_addr, key=charon_key,
            peer_key=oe_key, ike=self.ike, esp=self.esp, dpd=self.dpd, rsa_pss=self.rsa_pss,
            # behind the NAT oe shows up from the NAT's address; its selector stays private
            remote_addrs="%any" if self.nat else None,
            **{"remote_ts": f"{self.oe_addr}/32" if self.nat else None, **self.charon_kw})
        self.charon.start(WAIT)
        self.oe = OePeer(self.ns_oe, [
            "--local", self.oe_addr, "--peer", self.charon_addr, "--key", str(self.tmp / "oe.pem"),
            "--peer-pub", str(self.tmp / "charon.pub"), "--ike", self.oe_ike, "--esp", self.oe_esp,
            *(["--seed", str(self.seed)] if self.seed is not None else []), *self.oe_args])
        self.oe.expect("ready")

    def down(self) -> None:
        if self.oe is not None:
            self.oe.stop()
        if self.tcpdump is not None and self.tcpdump.poll() is None:
            self.tcpdump.terminate()
            try:
                self.tcpdump.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.tcpdump.kill()
                self.tcpdump.wait()
        if self.charon is not None:
            self.charon.stop()
        for ns in (self.ns_oe, self.ns_charon, self.ns_nat):
            run("ip", "netns", "del", ns, check=False)

    def _network(self) -> None:
        """oe --veth-- charon, one subnet."""
        run("ip", "netns", "add", self.ns_oe)
        run("ip", "netns", "add", self.ns_charon)
        run("ip", "link", "add", self.veth_oe, "netns", self.ns_oe, "type", "veth", "peer",
            "name", self.veth_charon, "netns", self.ns_charon)
        for ns, dev, addr in ((self.ns_oe, self.veth_oe, self.oe_addr),
                              (self.ns_charon, self.veth_charon, self.charon_addr)):
            # nodad: an IPv6 address is usable at once, not after duplicate detection
            extra = ["nodad"] if ":" in addr else []
            run("ip", "-n", ns, "addr", "add", f"{addr}/{self.prefix}", "dev", dev, *extra)
            run("ip", "-n", ns, "link", "set", "lo", "up")
            run("ip", "-n", ns, "link", "set", dev, "up")

    def _nat_network(self) -> None:
        """oe 198.51.100.1 --veth-- [NAT 198.51.100.254 | 203.0.113.254] --veth-- charon
        203.0.113.2; the NAT rewrites oe's UDP source to 203.0.113.254:40000-40999."""
        pid = os.getpid()
        for ns in (self.ns_oe, self.ns_nat, self.ns_charon):
            run("ip", "netns", "add", ns)
            run("ip", "-n", ns, "link", "set", "lo", "up")
        nat_in, nat_out = f"oea{pid}", f"oeb{pid}"
        run("ip", "link", "add", self.veth_oe, "netns", self.ns_oe, "type", "veth", "peer",
            "name", nat_in, "netns", self.ns_nat)
        run("ip", "link", "add", nat_out, "netns", self.ns_nat, "type", "veth", "peer",
            "name", self.veth_charon, "netns", self.ns_charon)
        for ns, dev, addr in ((self.ns_oe, self.veth_oe, f"{NAT_INSIDE}/24"),
                              (self.ns_nat, nat_in, "198.51.100.254/24"),
                              (self.ns_nat, nat_out, f"{NAT_OUTSIDE}/24"),
                              (self.ns_charon, self.veth_charon, f"{self.charon_addr}/24")):
            run("ip", "-n", ns, "addr", "add", addr, "dev", dev)
            run("ip", "-n", ns, "link", "set", dev, "up")
        run("ip", "-n", self.ns_oe, "route", "add", "default", "via", "198.51.100.254")
        run("ip", "netns", "exec", self.ns_nat, "sysctl", "-qw", "net.ipv4.ip_forward=1")
        for rule in ("add table ip nat",
                     "add chain ip nat post { type nat hook postrouting priority 100 ; }",
                     f"add rule ip nat post oifname {nat_out} meta l4proto udp "
                     f"snat to {NAT_OUTSIDE}:40000-40999"):
            run("ip", "netns", "exec", self.ns_nat, "nft", rule)

    # --- charon ---------------------------------------------------------------------------

    def swanctl(self, *args: str) -> str:
        assert self.charon is not None
        return self.charon.swanctl(*args).stdout

    def charon_log(self) -> str:
        return self.charon.log if self.charon is not None else ""

    def charon_send(self, count: int = 2) -> None:
        """Cleartext UDP datagrams from charon's namespace to oe: libipsec seals them."""
        run("ip", "netns", "exec", self.ns_charon, sys.executable, "-c",
            f"import socket; s = socket.socket(socket.AF_INET{'6' if ':' in self.oe_addr else ''}, "
            "socket.SOCK_DGRAM); "
            f"[s.sendto(b'{CHARON_PROBE.decode()}', ('{self.oe_addr}', 7777)) "
            f"for _ in range({count})]")

    def captured(self) -> list:
        """The packets tcpdump has written so far (a torn last record is left for later)."""
        import scapy.layers.inet  # noqa: F401  (registers Ether/IP/UDP for the reader)
        import scapy.layers.l2  # noqa: F401
        from scapy.utils import PcapReader

        out = []
        try:
            with PcapReader(str(self.pcap)) as reader:
                for p in reader:
                    out.append(p)
        except Exception:  # noqa: BLE001  (a record still being written)
            pass
        return out

    def restart_capture(self, name: str) -> None:
        if self.tcpdump is not None:
            self.tcpdump.terminate()
            self.tcpdump.wait(timeout=5)
        self.pcap = self.tmp / name
        self.tcpdump = subprocess.Popen(
            ["ip", "netns", "exec", self.ns_oe, "tcpdump", "--immediate-mode", "-i",
             self.veth_oe, "-U", "-n", "-w", str(self.pcap), "udp", "port", "4500"],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
        )
        assert self.tcpdump.stderr is not None
        for _ in range(10):  # "listening on ...": the capture is running
            line = self.tcpdump.stderr.readline()
            if "listening on" in line or not line:
                break
        assert self.tcpdump.poll() is None, "tcpdump did not start"


@pytest.fixture
def topology_factory(tmp_path):
    made: list[Topology] = []

    def make(ike: str, esp: str, oe_ike: str | None = None, family: int = 4,
             dpd: str = "0s", **kw) -> Topology:
        t = Topology(tmp_path, ike, esp, oe_ike, family, dpd, **kw)
        made.append(t)
        t.up()
        return t

    try:
        yield make
    finally:
        for t in made:
            t.down()


def decrypt_all(packets: list, child: dict) -> list:
    """Every captured ESP-in-UDP packet to ``child``'s inbound SPI, opened with scapy's ESP
    and oe's inbound key (RFC 4106: key | 4-byte salt)."""
    from scapy.layers.inet import IP, UDP
    from scapy.layers.inet6 import IPv6
    from scapy.layers.ipsec import ESP, SecurityAssociation

    sa = SecurityAssociation(ESP, spi=child["spi_in"], crypt_algo="AES-GCM",
                             crypt_key=bytes.fromhex(child["key_in"]))
    out = []
    for p in packets:
        outer = p[IP] if p.haslayer(IP) else p[IPv6] if p.haslayer(IPv6) else None
        if outer is None or not p.haslayer(UDP) or outer.src != child["remote_addr"]:
            continue
        payload = bytes(p[UDP].payload)
        if len(payload) < 8 or payload[:4] == b"\x00\x00\x00\x00":
            continue  # IKE behind the non-ESP marker, or a keepalive
        if int.from_bytes(payload[:4], "big") != child["spi_in"]:
            continue
        if isinstance(outer, IP):
            esp = IP(src=outer.src, dst=outer.dst, proto=50) / ESP(payload)
        else:
            esp = IPv6(src=outer.src, dst=outer.dst, nh=50) / ESP(payload)
        out.append(sa.decrypt(esp))
    return out


def prove_esp(t: Topology, child: dict, first_seq: int) -> None:
    """charon's ESP decrypts with oe's inbound key; scapy's ESP with oe's outbound key is
    accepted by charon (echo replies come back, sealed by charon, and decrypt)."""
    from scapy.layers.inet import ICMP, UDP
    from scapy.layers.inet6 import ICMPv6EchoReply

    assert t.oe is not None
    t.restart_capture(f"esp{first_seq}.pcap")
    t.charon_send()
    seqs = set(range(first_seq, first_seq + 3))
    for seq in sorted(seqs):
        t.oe.command("ping", seq=seq)
        t.oe.expect("esp")  # the echo reply, still sealed, at oe's 4500 socket
    deadline = time.monotonic() + WAIT
    while True:  # until tcpdump has written what oe already received
        inner = decrypt_all(t.captured(), child)
        from_charon = [p for p in inner if p.haslayer(UDP)
                       and bytes(p[UDP].payload) == CHARON_PROBE]
        replies = {p[ICMP].seq for p in inner if p.haslayer(ICMP) and p[ICMP].type == 0
                   and p[ICMP].id == 0x4F45}
        replies |= {p[ICMPv6EchoReply].seq for p in inner if p.haslayer(ICMPv6EchoReply)
                    and p[ICMPv6EchoReply].id == 0x4F45}
        if (from_charon and replies >= seqs) or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    assert from_charon, "no datagram from charon decrypted with oe's inbound key"
    assert replies >= seqs, f"echo replies decrypted: {replies}"


def charon_sas(t: Topology) -> str:
    return t.swanctl("--list-sas")


@pytest.mark.parametrize("proposals", list(PROPOSAL_SETS))
@pytest.mark.parametrize("oe_role", ["initiator", "responder"])
def test_charon_interop(topology_factory, proposals: str, oe_role: str) -> None:
    """oe and charon establish, rekey CHILD and IKE SAs each way, delete, and the ESP keys from
    oe's events work in scapy's ESP against charon's libipsec."""
    ike, esp = PROPOSAL_SETS[proposals]
    t = topology_factory(ike, esp)
    oe = t.oe
    assert oe is not None

    # IKE_SA_INIT { SA, KE, Nonce, N(NATD)... } <--> ; charon fakes NAT-D: IKE floats to 4500
    # IKE_AUTH { IDi, AUTH, SA, TSi, TSr } <-->
    if oe_role == "initiator":
        oe.command("initiate")
    else:
        t.swanctl("--initiate", "--child", "hh")
    ike_sa = oe.expect("IkeSaEstablished")
    assert ike_sa["nat_detected"] and ike_sa["remote_id"] == t.charon_addr
    child = oe.expect("ChildSaEstablished")["child"]
    assert child["udp_encap"] and child["remote_port"] == 4500
    assert f"{child['spi_out']:08x}" in charon_sas(t)
    prove_esp(t, child, first_seq=1)

    # CREATE_CHILD_SA { N(REKEY_SA), SA, Ni, [KEi,] TSi, TSr } --> (oe), then the old is deleted
    oe.command("rekey_child")
    child = oe.expect("ChildSaRekeyed", old_spi_in=child["spi_in"])["child"]
    oe.expect("ChildSaDeleted")
    if "modp2048" in esp:
        assert child["dh"] == 14  # PFS
    # <-- CREATE_CHILD_SA { N(REKEY_SA), SA, Ni, [KEi,] TSi, TSr } (charon)
    t.swanctl("--rekey", "--child", "hh")
    child = oe.expect("ChildSaRekeyed", old_spi_in=child["spi_in"])["child"]
    oe.expect("ChildSaDeleted")
    assert f"{child['spi_out']:08x}" in charon_sas(t)

    # CREATE_CHILD_SA { SA, Ni, KEi } --> rekeys the IKE SA (oe), then <-- (charon)
    oe.command("rekey_ike")
    r1 = oe.expect("IkeSaRekeyed")
    t.swanctl("--rekey", "--ike", "hh")
    r2 = oe.expect("IkeSaRekeyed", old_spi_i=r1["spi_i"])
    sas = charon_sas(t)
    assert f"{r2['spi_i']}_i" in sas and f"{r2['spi_r']}_r" in sas, sas

    # a CHILD SA rekey under the rekeyed IKE SA (its SK_d) and the ESP proof with those keys
    oe.command("rekey_child")
    child = oe.expect("ChildSaRekeyed", old_spi_in=child["spi_in"])["child"]
    oe.expect("ChildSaDeleted")
    prove_esp(t, child, first_seq=10)

    # INFORMATIONAL { D(ESP) } and { D(IKE) }, each way across the two roles
    if oe_role == "initiator":
        oe.command("delete_child")
        oe.expect("ChildSaDeleted", spi_in=child["spi_in"])
        t.swanctl("--terminate", "--ike", "hh")
        oe.expect("IkeSaDeleted", reason="deleted by peer")
    else:
        t.swanctl("--terminate", "--child", "hh")
        oe.expect("ChildSaDeleted", spi_in=child["spi_in"], reason="deleted by peer")
        oe.command("delete_ike")
        oe.expect("IkeSaDeleted", reason="deleted by us")
    assert "hh:" not in charon_sas(t)


@pytest.mark.parametrize("oe_role", ["initiator", "responder"])
def test_charon_invalid_ke_payload_retry(topology_factory, oe_role: str) -> None:
    """The initiator's KE is for a group the responder does not take:
    <-- IKE_SA_INIT { N(INVALID_KE_PAYLOAD, group) }, and the retry with that group works."""
    if oe_role == "initiator":  # oe sends KE(x25519); charon wants ECP-256
        t = topology_factory("aes128-sha256-ecp256", "aes128gcm16",
                             oe_ike="aes128-sha256-x25519-ecp256")
        assert t.oe is not None
        t.oe.command("initiate")
    else:  # charon sends KE(x25519); oe takes only ECP-256
        t = topology_factory("aes128-sha256-x25519-ecp256", "aes128gcm16",
                             oe_ike="aes128-sha256-ecp256")
        t.swanctl("--initiate", "--child", "hh")
    assert t.oe is not None
    t.oe.expect("IkeSaEstablished")
    child = t.oe.expect("ChildSaEstablished")["child"]
    assert "ECP_256" in charon_sas(t)
    prove_esp(t, child, first_seq=1)


def test_charon_interop_ipv6(topology_factory) -> None:
    """IPv6 hosts: ID_IPV6_ADDR, TS_IPV6_ADDR_RANGE /128, NAT-D over IPv6, ESP-in-UDP over
    IPv6 proven both ways with scapy; then a CHILD SA rekey by charon and a DELETE by oe."""
    t = topology_factory("aes128-sha256-x25519", "aes128gcm16", family=6)
    assert t.oe is not None
    t.oe.command("initiate")
    assert t.oe.expect("IkeSaEstablished")["remote_id"] == t.charon_addr
    child = t.oe.expect("ChildSaEstablished")["child"]
    assert child["remote_ts"] == [{"start": t.charon_addr, "end": t.charon_addr, "protocol": 0,
                                   "start_port": 0, "end_port": 65535}]
    prove_esp(t, child, first_seq=1)
    t.swanctl("--rekey", "--child", "hh")
    child = t.oe.expect("ChildSaRekeyed", old_spi_in=child["spi_in"])["child"]
    prove_esp(t, child, first_seq=5)
    t.oe.command("delete_ike")
    t.oe.expect("IkeSaDeleted", reason="deleted by us")
    assert "hh:" not in charon_sas(t)


def test_charon_liveness_checks_both_ways(topology_factory) -> None:
    """INFORMATIONAL { } --> <-- { }: oe's liveness check is answered by charon, and charon's
    DPD (dpd_delay 1 s, sent while no ESP arrives) is answered by oe."""
    t = topology_factory("aes128-sha256-x25519", "aes128gcm16", dpd="1s")
    assert t.oe is not None
    t.oe.command("initiate")
    t.oe.expect("ChildSaEstablished")
    t.oe.command("liveness")
    t.oe.expect("idle")  # our request was answered: nothing in flight any more
    deadline = time.monotonic() + WAIT
    while "parsed INFORMATIONAL response" not in t.charon_log():  # charon's DPD, answered
        assert time.monotonic() < deadline, t.charon_log()[-6000:]
        time.sleep(0.1)
    assert "parsed INFORMATIONAL request" in t.charon_log()  # and oe's check reached charon
    assert "hh:" in charon_sas(t)


def test_charon_answers_our_cookie(topology_factory) -> None:
    """oe demands a COOKIE from every initiator (threshold 0): charon repeats IKE_SA_INIT
    { N(COOKIE), SA, KE, Ni, ... } (section 2.6) and the SAs come up."""
    t = topology_factory("aes128-sha256-x25519", "aes128gcm16",
                         oe_args=("--cookie-threshold", "0"))
    assert t.oe is not None
    t.swanctl("--initiate", "--child", "hh")
    child = t.oe.expect("ChildSaEstablished")["child"]
    assert f"{child['spi_out']:08x}" in charon_sas(t)
    log = t.charon_log()
    assert "parsed IKE_SA_INIT response 0 [ N(COOKIE) ]" in log, log[-6000:]


def test_charon_child_rekey_invalid_ke_retry(topology_factory) -> None:
    """oe's PFS rekey carries KEi(ECP-256); charon wants MODP-2048: <-- N(INVALID_KE_PAYLOAD)
    and oe's second CREATE_CHILD_SA with KEi(MODP-2048) rekeys the CHILD SA."""
    t = topology_factory("aes128-sha256-x25519", "aes128gcm16-modp2048",
                         oe_esp="aes128gcm16-ecp256-modp2048")
    assert t.oe is not None
    t.oe.command("initiate")
    child = t.oe.expect("ChildSaEstablished")["child"]
    t.oe.command("rekey_child")
    child = t.oe.expect("ChildSaRekeyed", old_spi_in=child["spi_in"])["child"]
    assert child["dh"] == 14
    t.oe.expect("ChildSaDeleted")
    prove_esp(t, child, first_seq=1)


@pytest.mark.parametrize("ike", [
    "aes256-sha512-modp3072",
    "aes128gcm16-prfsha512-x25519",
    "aes256-sha384-ecp256",
    "aes128-sha256-modp2048",
])
def test_charon_more_ike_suites(topology_factory, ike: str) -> None:
    """More IKE transforms against charon (AES-CBC-256, HMAC-SHA2-384/512, PRF-SHA512,
    MODP-2048/3072), charon initiating; the ESP keys still check out in scapy."""
    t = topology_factory(ike, "aes256gcm16")
    assert t.oe is not None
    t.swanctl("--initiate", "--child", "hh")
    child = t.oe.expect("ChildSaEstablished")["child"]
    assert child["key_bits"] == 256
    t.swanctl("--rekey", "--ike", "hh")  # the rekeyed IKE SA's SK_d makes the next CHILD SA
    t.oe.expect("IkeSaRekeyed")
    t.oe.command("rekey_child")
    child = t.oe.expect("ChildSaRekeyed", old_spi_in=child["spi_in"])["child"]
    prove_esp(t, child, first_seq=1)


@needs_nft
def test_charon_through_a_real_nat(topology_factory) -> None:
    """oe behind a NAT that rewrites addresses and ports: NAT-D sees the truth, IKE_AUTH and
    ESP ride UDP 4500 through the mapping, charon's answers find their way back, and the
    CHILD SA rekeys and keys check out; oe, being behind the NAT, owns the keepalives."""
    t = topology_factory("aes128-sha256-x25519", "aes128gcm16", nat=True)
    assert t.oe is not None
    t.oe.command("initiate")
    assert t.oe.expect("IkeSaEstablished")["nat_detected"]
    child = t.oe.expect("ChildSaEstablished")["child"]
    assert child["udp_encap"] and child["local_ts"][0]["start"] == NAT_INSIDE
    sas = charon_sas(t)
    assert f"{NAT_OUTSIDE}[" in sas and "[500]" not in sas.split(NAT_OUTSIDE)[1][:10], sas
    prove_esp(t, child, first_seq=1)
    t.swanctl("--rekey", "--child", "hh")
    child = t.oe.expect("ChildSaRekeyed", old_spi_in=child["spi_in"])["child"]
    prove_esp(t, child, first_seq=5)


@pytest.mark.parametrize("oe_role", ["initiator", "responder"])
def test_charon_signs_with_rsassa_pss(topology_factory, oe_role: str) -> None:
    """charon with rsa_pss = yes signs AUTH with RSASSA-PSS (RFC 7427, method 14): oe verifies
    it, while charon checks oe's sha256WithRSAEncryption."""
    t = topology_factory("aes128-sha256-x25519", "aes128gcm16", rsa_pss=True)
    assert t.oe is not None
    if oe_role == "initiator":
        t.oe.command("initiate")
    else:
        t.swanctl("--initiate", "--child", "hh")
    t.oe.expect("ChildSaEstablished")
    auth = [line for line in t.charon_log().splitlines() if "authentication of" in line]
    assert any("(myself) with RSA_EMSA_PSS" in line for line in auth), auth
