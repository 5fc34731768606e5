"""What one host negotiates with (``IkeConfig``) and the shapes of the engine's hooks."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from cryptography.hazmat.primitives.asymmetric import rsa

from oe.ike.auth import Identity, PeerKey
from oe.ike.constants import (
    CHILDREN_PER_IKE,
    HALF_OPEN_COOKIE_THRESHOLD,
    HALF_OPEN_LIFETIME,
    HALF_OPEN_MAX,
    NAT_KEEPALIVE_INTERVAL,
    RETRANSMIT_BUDGET,
    RETRANSMIT_TIMEOUT,
    ProtocolId,
)
from oe.ike.fragment import FRAGMENT_SIZE
from oe.ike.proposals import Suite, parse_proposal

Addr = tuple[str, int]
KeyLookup = Callable[[Identity], PeerKey | None]
AdmitInit = Callable[[bytes, Addr, int, str], bool]
CookieRequired = Callable[[Addr], bool]


@dataclass(frozen=True)
class IkeConfig:
    """What one host negotiates with; every peer gets the same (opportunistic) terms."""

    local_addrs: frozenset[str]
    """Our addresses (one family): IKE is answered on each, each IKE SA keeps the one it was
    contacted on or initiated from as its ID (unless ``local_id`` is set), NAT-D input and
    selector; datagrams to any other address are dropped (docs/gateway.md section 1)."""
    private_key: rsa.RSAPrivateKey
    """Our RSA host key; its public half is what peers find in DNS."""
    local_id: Identity | None = None
    """Our IKE identity; None means ID_IPV4_ADDR / ID_IPV6_ADDR of the IKE SA's address."""
    ike_proposals: tuple[str, ...] = ("aes128-sha256-x25519",)
    """IKE SA proposals, strongSwan syntax, in order of preference."""
    esp_proposals: tuple[str, ...] = ("aes128gcm16",)
    """CHILD SA proposals; a DH group here means PFS in CREATE_CHILD_SA."""
    retransmit_timeout: float = RETRANSMIT_TIMEOUT
    """Seconds before the first retransmission; doubled after each."""
    retransmit_budget: float = RETRANSMIT_BUDGET
    """Seconds after the first transmission at which a request is given up."""
    cookie_threshold: int = HALF_OPEN_COOKIE_THRESHOLD
    """Half-open responder SAs at or above which IKE_SA_INIT must carry a COOKIE (2.6)."""
    half_open_max: int = HALF_OPEN_MAX
    """Half-open responder SAs at which further IKE_SA_INIT requests are dropped (counted)."""
    half_open_lifetime: float = HALF_OPEN_LIFETIME
    """Seconds a responder waits for IKE_AUTH after IKE_SA_INIT."""
    nat_keepalive_interval: float = NAT_KEEPALIVE_INTERVAL
    """Seconds between NAT keepalives (RFC 3948 section 4) while we are behind a NAT."""
    fragmentation: bool = True
    """Announce IKEV2_FRAGMENTATION_SUPPORTED and fragment when the peer did too (RFC 7383);
    False behaves as a peer without RFC 7383 (charon's ``fragmentation = no``)."""
    fragment_size: int = FRAGMENT_SIZE
    """The largest IP datagram of a protected message before it is sent as fragments."""
    force_encap: bool = False
    """Put ESP in UDP (RFC 3948) even where no NAT is: our NAT_DETECTION_SOURCE_IP hash then
    names no address, so the peer takes us to be behind a NAT and encapsulates too (section
    2.23; strongSwan's ``encap = yes`` does the same). oe's datapath is in user space, where
    ESP-in-UDP gets the kernel's UDP segmentation and coalescing (README: Tunnel throughput)."""
    children_per_ike: int = CHILDREN_PER_IKE
    """CHILD SAs one IKE SA may carry (a gateway's clients share one, docs/gateway.md 5); a
    peer asking for more gets NO_ADDITIONAL_SAS (RFC 7296 1.3)."""

    def ike_suites(self) -> list[Suite]:
        return [s for p in self.ike_proposals for s in parse_proposal(p, ProtocolId.IKE)]

    def esp_suites(self) -> list[Suite]:
        return [s for p in self.esp_proposals for s in parse_proposal(p, ProtocolId.ESP)]
