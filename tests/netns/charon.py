"""strongSwan charon 5.9 (kernel-libipsec, raw RSA keys) as a test peer inside a namespace.

As in the strongSwan pair bench/throughput.py measures against: charon runs in its own mount namespace so that /run and
/etc/swanctl are this test's directories; it is stopped by its pid. Debian's charon 5.9.8 with
kernel-libipsec never initiates from a trap (swanctl --initiate does) and always forces
ESP-in-UDP by faking its NAT-detection hash.
"""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

CHARON = Path("/usr/lib/ipsec/charon")

STRONGSWAN_CONF = """charon {{
  load = random nonce openssl pem pkcs1 pkcs8 pubkey sha1 sha2 hmac gcm aes kdf gmp curve25519 kernel-libipsec kernel-netlink socket-default vici
  retransmit_timeout = 1.0
  retransmit_tries = 3
  rsa_pss = {rsa_pss}
  fragment_size = {fragment_size}
  filelog {{
    log {{
      path = {d}/charon.log
      time_format = %T
      flush_line = yes
      default = 1
      ike = 2
      cfg = 2
      enc = 1
    }}
  }}
  plugins {{
    vici {{
      socket = unix://{d}/charon.vici
    }}
    socket-default {{
      fwmark = 0x42
    }}
    kernel-libipsec {{
      allow_peer_ts = yes
    }}
    kernel-netlink {{
      fwmark = !0x42
    }}
  }}
}}
swanctl {{
  socket = unix://{d}/charon.vici
}}
"""

SWANCTL_CONF = """connections {{
  hh {{
    version = 2
    dpd_delay = {dpd}
    local_addrs = {me}
    remote_addrs = {remote_addrs}
    proposals = {ike}
    local {{
      auth = pubkey
      pubkeys = me.pub
      id = {me}
    }}
    remote {{
      auth = pubkey
      pubkeys = peer.pub
      id = {peer}
    }}
    children {{
      hh {{
        esp_proposals = {esp}
        start_action = {start_action}
        mode = tunnel{child_extra}
      }}
    }}
  }}
}}
"""


def pem_private(key: rsa.RSAPrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def pem_public(key: rsa.RSAPrivateKey) -> bytes:
    return key.public_key().public_bytes(serialization.Encoding.PEM,
                                         serialization.PublicFormat.SubjectPublicKeyInfo)


class Charon:
    """charon in namespace `ns`, host-to-host with one peer, keys given as PEM bytes."""

    def __init__(self, ns: str, workdir: Path, *, me: str, peer: str, key: rsa.RSAPrivateKey,
                 peer_key: rsa.RSAPrivateKey | rsa.RSAPublicKey,
                 ike: str = "aes128-sha256-x25519", esp: str = "aes128gcm16",
                 start_action: str = "none", dpd: str = "0s", rsa_pss: bool = False,
                 remote_addrs: str | None = None, remote_ts: str | None = None,
                 local_ts: str | None = None, fragment_size: int = 1280) -> None:
        """remote_addrs: where IKE may come from (default `peer`; "%any" behind a NAT);
        remote_ts: the peer's traffic selector when it differs from its address (NAT), or
        several, comma-separated; local_ts: ours, when not just our address;
        fragment_size: the largest IP datagram of an IKE fragment (charon's default 1280)."""
        self.ns = ns
        self.d = workdir
        sw = self.d / "swanctl"
        for sub in ("private", "pubkey"):
            (sw / sub).mkdir(parents=True, exist_ok=True)
        (self.d / "run").mkdir(exist_ok=True)
        peer_public = peer_key.public_key() if hasattr(peer_key, "public_key") else peer_key
        (sw / "private/key.pem").write_bytes(pem_private(key))
        (sw / "pubkey/me.pub").write_bytes(pem_public(key))
        (sw / "pubkey/peer.pub").write_bytes(peer_public.public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))
        (self.d / "strongswan.conf").write_text(STRONGSWAN_CONF.format(
            d=self.d, rsa_pss="yes" if rsa_pss else "no", fragment_size=fragment_size))
        (sw / "swanctl.conf").write_text(SWANCTL_CONF.format(
            me=me, peer=peer, ike=ike, esp=esp, start_action=start_action, dpd=dpd,
            remote_addrs=remote_addrs or peer,
            child_extra=(f"\n        remote_ts = {remote_ts}" if remote_ts else "")
            + (f"\n        local_ts = {local_ts}" if local_ts else "")))
        self.process: subprocess.Popen | None = None

    def _mounts(self) -> str:
        return f"mount --bind {self.d}/run /run && mount --bind {self.d}/swanctl /etc/swanctl"

    def start(self, wait: float = 20.0) -> None:
        self.process = subprocess.Popen(
            ["ip", "netns", "exec", self.ns, "unshare", "-m", "sh", "-c",
             f"{self._mounts()} && STRONGSWAN_CONF={self.d}/strongswan.conf exec {CHARON}"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + wait
        while not (self.d / "charon.vici").exists():
            if time.monotonic() > deadline or self.process.poll() is not None:
                raise RuntimeError(f"charon did not start: {self.log[-500:]}")
            time.sleep(0.05)
        self.swanctl("--load-all")

    def swanctl(self, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        proc = subprocess.run(
            ["ip", "netns", "exec", self.ns, "unshare", "-m", "sh", "-c",
             f"mount --bind {self.d}/swanctl /etc/swanctl && "
             f"STRONGSWAN_CONF={self.d}/strongswan.conf swanctl {' '.join(args)}"],
            capture_output=True, text=True, timeout=60)
        if check and proc.returncode != 0:
            raise RuntimeError(f"swanctl {' '.join(args)}: {proc.stdout}{proc.stderr}"
                               f"{self.log[-800:]}")
        return proc

    @property
    def log(self) -> str:
        path = self.d / "charon.log"
        return path.read_text() if path.exists() else ""

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.process = None
