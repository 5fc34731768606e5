"""Proposals: strongSwan-style strings, SA payload offers, and the responder's choice.

A ``Suite`` is one fully chosen set of transforms (what a negotiation settles on). Offers are
written as strongSwan writes them, e.g. ``aes128-sha256-x25519`` (IKE) or
``aes256gcm16-modp2048`` (ESP), so test configurations read the same on both sides.
RFC 7296 section 3.3 describes the encoding; section 2.7 the choice.
"""

from __future__ import annotations

from dataclasses import dataclass

from oe.ike.constants import (
    DhId,
    EncrId,
    EsnId,
    IntegId,
    NotifyType,
    PrfId,
    ProtocolId,
    TransformType,
)
from oe.ike.crypto import AEAD_IDS
from oe.ike.errors import IkeError
from oe.ike.message import Proposal, Transform

_ENCR = {
    "aes128": (EncrId.AES_CBC, 128),
    "aes256": (EncrId.AES_CBC, 256),
    "aes128gcm16": (EncrId.AES_GCM_16, 128),
    "aes256gcm16": (EncrId.AES_GCM_16, 256),
    "aes128gcm": (EncrId.AES_GCM_16, 128),
    "aes256gcm": (EncrId.AES_GCM_16, 256),
}
_INTEG = {
    "sha256": (IntegId.HMAC_SHA2_256_128, PrfId.HMAC_SHA2_256),
    "sha384": (IntegId.HMAC_SHA2_384_192, PrfId.HMAC_SHA2_384),
    "sha512": (IntegId.HMAC_SHA2_512_256, PrfId.HMAC_SHA2_512),
}
_PRF = {
    "prfsha256": PrfId.HMAC_SHA2_256,
    "prfsha384": PrfId.HMAC_SHA2_384,
    "prfsha512": PrfId.HMAC_SHA2_512,
}
_DH = {
    "x25519": DhId.CURVE25519,
    "curve25519": DhId.CURVE25519,
    "ecp256": DhId.ECP_256,
    "modp2048": DhId.MODP_2048,
    "modp3072": DhId.MODP_3072,
}
_ESN = {"esn": EsnId.ESN, "noesn": EsnId.NO_ESN}


@dataclass(frozen=True)
class Suite:
    """One negotiated combination. ``dh`` is DhId.NONE for an ESP SA without PFS."""

    protocol: int
    encr: int
    key_bits: int
    integ: int = IntegId.NONE
    prf: int = 0
    dh: int = DhId.NONE
    esn: int = EsnId.NO_ESN

    def transforms(self, with_dh: bool = True) -> tuple[Transform, ...]:
        t = [Transform(TransformType.ENCR, self.encr, self.key_bits)]
        if self.protocol == ProtocolId.IKE:
            t.append(Transform(TransformType.PRF, self.prf))
        if self.integ:
            t.append(Transform(TransformType.INTEG, self.integ))
        if self.dh and with_dh:
            t.append(Transform(TransformType.DH, self.dh))
        if self.protocol == ProtocolId.ESP:
            t.append(Transform(TransformType.ESN, self.esn))
        return tuple(t)

    def proposal(self, number: int, spi: bytes, with_dh: bool = True) -> Proposal:
        return Proposal(number, self.protocol, spi, self.transforms(with_dh))

    def with_dh(self, dh: int) -> "Suite":
        return Suite(self.protocol, self.encr, self.key_bits, self.integ, self.prf, dh, self.esn)


def parse_proposal(text: str, protocol: int) -> list[Suite]:
    """Expand one strongSwan proposal string into the suites it allows, in order.

    ``protocol`` is ProtocolId.IKE or ProtocolId.ESP. Several algorithms of one kind may be
    listed (``aes128-aes256-sha256-x25519-ecp256``); the first of each kind is preferred.
    """
    encrs, integs, prfs, dhs, esns = [], [], [], [], []
    for tok in text.lower().split("-"):
        if tok in _ENCR:
            encrs.append(_ENCR[tok])
        elif tok in _INTEG:
            integs.append(_INTEG[tok])
        elif tok in _PRF:
            prfs.append(_PRF[tok])
        elif tok in _DH:
            dhs.append(_DH[tok])
        elif tok in _ESN and protocol == ProtocolId.ESP:
            esns.append(_ESN[tok])
        else:
            raise ValueError(f"unknown algorithm {tok!r} in proposal {text!r}")
    if not encrs:
        raise ValueError(f"proposal {text!r} names no encryption algorithm")
    if protocol == ProtocolId.IKE:
        if not dhs:
            raise ValueError(f"IKE proposal {text!r} names no DH group")
        if not prfs:
            # strongSwan: an integrity algorithm implies the PRF of the same hash
            prfs = [p for _, p in integs] or [PrfId.HMAC_SHA2_256]
    suites = []
    for encr, bits in encrs:
        aead = encr in AEAD_IDS
        integ_ids = [i for i, _ in integs] or [IntegId.HMAC_SHA2_256_128]
        for integ in [IntegId.NONE] if aead else integ_ids:
            for prf in prfs if protocol == ProtocolId.IKE else [0]:
                for dh in dhs or [DhId.NONE]:
                    for esn in esns or [EsnId.NO_ESN]:
                        suites.append(Suite(protocol, encr, bits, integ, prf, dh,
                                            esn if protocol == ProtocolId.ESP else EsnId.NO_ESN))
    return suites


def offer(suites: list[Suite], spi: bytes, with_dh: bool = True) -> tuple[Proposal, ...]:
    """The SA payload's proposals: one per suite, numbered from 1 (section 3.3.1)."""
    seen: list[tuple] = []
    proposals = []
    for s in suites:
        key = s.transforms(with_dh)
        if key in seen:
            continue
        seen.append(key)
        proposals.append(s.proposal(len(proposals) + 1, spi, with_dh))
    return tuple(proposals)


def _suite_of(prop: Proposal, ours: Suite, ignore_dh: bool) -> Suite | None:
    """``ours`` if ``prop`` offers every transform of it (and no type we lack), else None."""
    by_type: dict[int, list[Transform]] = {}
    for t in prop.transforms:
        by_type.setdefault(t.type, []).append(t)
    want = {tr.type: tr for tr in ours.transforms()}
    for ttype, offered in by_type.items():
        if ttype == TransformType.DH and ignore_dh:
            continue
        if ttype == TransformType.INTEG and all(t.id == IntegId.NONE for t in offered) \
                and ttype not in want:
            continue
        if ttype not in want:
            if ttype == TransformType.DH and all(t.id == DhId.NONE for t in offered):
                continue
            return None
        if want[ttype] not in offered:
            return None
    for ttype, tr in want.items():
        if ttype == TransformType.DH and ignore_dh:
            continue
        if ttype not in by_type:
            return None
    return ours if not ignore_dh else ours.with_dh(DhId.NONE)


def choose(
    offered: tuple[Proposal, ...], ours: list[Suite], protocol: int, ignore_dh: bool = False
) -> tuple[Proposal, Suite]:
    """Responder's choice (section 2.7): the initiator's first proposal that one of our suites
    allows. Returns (that offered proposal, for its number and SPI; the suite chosen).
    ``ignore_dh`` drops DH transforms (IKE_AUTH carries no KE, section 1.2).
    Raises IkeError(NO_PROPOSAL_CHOSEN)."""
    for prop in offered:
        if prop.protocol != protocol:
            continue
        if protocol == ProtocolId.IKE and len(prop.spi) not in (0, 8):
            continue
        if protocol == ProtocolId.ESP and len(prop.spi) != 4:
            continue
        for s in ours:
            chosen = _suite_of(prop, s, ignore_dh)
            if chosen is not None:
                return prop, chosen
    raise IkeError(NotifyType.NO_PROPOSAL_CHOSEN, "no acceptable proposal")


def accept(answer: tuple[Proposal, ...], ours: list[Suite], protocol: int,
           ignore_dh: bool = False) -> tuple[Proposal, Suite]:
    """Initiator's check of the responder's answer: exactly one proposal, one we offered."""
    if len(answer) != 1:
        raise IkeError(NotifyType.NO_PROPOSAL_CHOSEN, "answer must hold exactly one proposal")
    prop = answer[0]
    if prop.protocol != protocol or any(
        sum(1 for t in prop.transforms if t.type == tt) > 1 for tt in TransformType
    ):
        raise IkeError(NotifyType.NO_PROPOSAL_CHOSEN, "answer is not a single choice")
    return choose(answer, ours, protocol, ignore_dh)


def prefer_group(suites: list[Suite], group: int) -> list[Suite]:
    """Our suites with those of ``group`` first, so that the responder can take the KE we
    send with them instead of answering INVALID_KE_PAYLOAD (sections 1.2, 1.3)."""
    return [s for s in suites if s.dh == group] + [s for s in suites if s.dh != group]


def choose_for_ke(offered: tuple[Proposal, ...], suites: list[Suite], protocol: int,
                  ke_group: int | None) -> tuple[Proposal, Suite]:
    """choose(), preferring what the initiator's KE already fits: a different group than its
    KE would cost a round trip through INVALID_KE_PAYLOAD (section 1.2)."""
    if ke_group is not None:
        try:
            return choose(offered, [s for s in suites if s.dh == ke_group], protocol)
        except IkeError:
            pass
    return choose(offered, suites, protocol)
