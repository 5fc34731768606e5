"""What the IKE engine tells its user: frozen dataclasses, one per kind of news.

Every event names the negotiation by ``sa_id``: a small integer the engine gives each IKE SA
and keeps across IKE SA rekeys, so the daemon can follow one peer's SAs without looking inside.
"""

from __future__ import annotations

from dataclasses import dataclass

from oe.ike.auth import PeerKey
from oe.ike.ts import TrafficSelector


@dataclass(frozen=True)
class ChildSa:
    """The ESP SA pair the datapath installs (RFC 7296 section 2.17 for the keys)."""

    spi_in: int
    """SPI we chose: the peer sends ESP to it."""
    spi_out: int
    """SPI the peer chose: we send ESP to it."""
    encr: int
    """ENCR transform id (EncrId.AES_GCM_16 = 20)."""
    key_bits: int
    """AES key size in bits."""
    integ: int
    """INTEG transform id (0 for AEAD)."""
    esn: bool
    """Extended sequence numbers negotiated."""
    key_in: bytes
    """Decryption key of the inbound SA; for GCM the 4-byte salt is appended (RFC 4106 8.1)."""
    key_out: bytes
    """Encryption key of the outbound SA, salt appended for GCM."""
    integ_key_in: bytes
    """Integrity key inbound (empty for AEAD)."""
    integ_key_out: bytes
    """Integrity key outbound (empty for AEAD)."""
    local_ts: tuple[TrafficSelector, ...]
    """Our side's traffic selectors."""
    remote_ts: tuple[TrafficSelector, ...]
    """The peer's side's traffic selectors."""
    local_addr: str
    """Our outer address."""
    remote_addr: str
    """The peer's outer address."""
    udp_encap: bool
    """ESP in UDP (RFC 3948): NAT detected, or a peer that fakes it (charon + kernel-libipsec)."""
    local_port: int
    """Our UDP port for ESP-in-UDP (4500), or 0 for raw ESP."""
    remote_port: int
    """The peer's UDP port for ESP-in-UDP, or 0 for raw ESP."""
    dh: int
    """DH group used for PFS when it was created by CREATE_CHILD_SA, else 0."""


@dataclass(frozen=True)
class IkeSaEstablished:
    """IKE_AUTH finished: the peer is authenticated."""

    sa_id: int
    spi_i: bytes
    spi_r: bytes
    initiator: bool
    """We were the initiator of this IKE SA."""
    local_addr: str
    remote_addr: str
    remote_port: int
    remote_id: str
    """The peer's authenticated identity, printed (an address or a name; what the peer chose
    is escaped, so it is safe to log). Reasons in the other events escape it the same way."""
    nat_detected: bool
    peer_key: PeerKey | None = None
    """The key the peer proved, with the addresses it vouches for (its selectors' bounds)."""


@dataclass(frozen=True)
class ChildSaEstablished:
    """A new CHILD SA (from IKE_AUTH or CREATE_CHILD_SA without REKEY_SA)."""

    sa_id: int
    child: ChildSa


@dataclass(frozen=True)
class ChildSaRekeyed:
    """A CHILD SA was rekeyed: install ``child``; the old SPIs stay valid until deleted."""

    sa_id: int
    old_spi_in: int
    old_spi_out: int
    child: ChildSa


@dataclass(frozen=True)
class ChildSaDeleted:
    """A CHILD SA is gone (DELETE either way, IKE SA deleted, or rekeyed and retired)."""

    sa_id: int
    spi_in: int
    spi_out: int
    reason: str


@dataclass(frozen=True)
class ChildSaFailed:
    """A CHILD SA could not be created or rekeyed (or an IKE SA rekey was refused); the IKE
    SA stays."""

    sa_id: int
    notify: int | None
    """The notify type received or sent (e.g. TS_UNACCEPTABLE = 38), or None."""
    reason: str
    local_ts: tuple[TrafficSelector, ...] = ()
    """Our side's selectors of the CHILD SA we asked for (a rekey: the old SA's); empty when
    the peer asked, or for an IKE SA rekey. With ``remote_ts`` it says which of several
    requests on one IKE SA failed."""
    remote_ts: tuple[TrafficSelector, ...] = ()
    """The peer's side's selectors we asked for."""


@dataclass(frozen=True)
class ChildAwaitsDns:
    """A CHILD SA request of the peer's waits, unanswered, for these DNS lookups (client
    addresses whose delegation must be confirmed, docs/gateway.md 4.2); ``IkeEngine.resume``
    handles it once they are in. Its retransmissions are ignored meanwhile."""

    sa_id: int
    lookups: tuple[str, ...]


@dataclass(frozen=True)
class IkeSaRekeyed:
    """The IKE SA was replaced by a new one with fresh SPIs and keys (RFC 7296 section 2.18)."""

    sa_id: int
    old_spi_i: bytes
    old_spi_r: bytes
    spi_i: bytes
    spi_r: bytes


@dataclass(frozen=True)
class IkeSaPeerMoved:
    """The peer's NAT mapping changed (an authentic message from a new address or port,
    RFC 7296 section 2.23): its CHILD SAs' ESP-in-UDP must now go there."""

    sa_id: int
    remote_addr: str
    remote_port: int
    local_addr: str
    """Our address on this IKE SA (it does not move)."""


@dataclass(frozen=True)
class IkeSaDeleted:
    """An established IKE SA is gone; its CHILD SAs were reported deleted just before."""

    sa_id: int
    remote_addr: str
    reason: str


@dataclass(frozen=True)
class IkeSaFailed:
    """The negotiation failed before IKE_AUTH completed (or IKE_AUTH itself failed)."""

    sa_id: int
    remote_addr: str
    notify: int | None
    """The notify type that ended it (sent or received), None for a timeout."""
    reason: str
    local: bool
    """True when we detected the failure, False when the peer reported it."""


Event = (IkeSaEstablished | ChildSaEstablished | ChildSaRekeyed | ChildSaDeleted | ChildSaFailed
         | ChildAwaitsDns | IkeSaRekeyed | IkeSaPeerMoved | IkeSaDeleted | IkeSaFailed)


@dataclass(frozen=True)
class IkeSaInfo:
    """One IKE SA as ``IkeEngine.ike_sas()`` shows it (for status views): a snapshot, not an
    event. Algorithm names are those of the IANA IKEv2 registries (RFC 7296 section 3.3.2)."""

    sa_id: int
    local_addr: str
    local_port: int
    remote_addr: str
    remote_port: int
    initiator: bool
    """We were the initiator of this IKE SA (of its rekey, for a rekeyed one)."""
    spi_i: bytes
    spi_r: bytes
    """All zero until the responder's IKE_SA_INIT answer arrived."""
    state: str
    """What the IKE SA waits for: EXPECT_SA_INIT_RESPONSE, EXPECT_AUTH_RESPONSE,
    EXPECT_AUTH_REQUEST (half-open), ESTABLISHED."""
    encryption: str | None
    """E.g. ``AES_GCM_16_128``; None before IKE_SA_INIT settled it."""
    integrity: str | None
    """E.g. ``HMAC_SHA2_256_128``, ``NONE`` with an AEAD cipher; None before IKE_SA_INIT."""
    prf: str | None
    dh_group: str | None
    """E.g. ``CURVE25519``."""
    established_at: float | None
    """When IKE_AUTH (or the rekey that made this IKE SA) completed; None before."""
    last_heard: float | None
    """When the last authentic message from the peer arrived; None if none yet."""
    child_sas: int
    """How many CHILD SAs it holds."""
