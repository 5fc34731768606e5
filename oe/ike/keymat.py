"""The IKEv2 key schedule: prf+, SKEYSEED, SK_*, KEYMAT (RFC 7296 sections 2.13-2.18)."""

from __future__ import annotations

from dataclasses import dataclass

from oe.ike.crypto import Prf, SkCipher, encr_key_len, integ_key_len


def prf_plus(prf: Prf, key: bytes, seed: bytes, length: int) -> bytes:
    """prf+ (section 2.13): T1 | T2 | ... with Tn = prf(K, Tn-1 | S | n)."""
    out = b""
    t = b""
    n = 1
    while len(out) < length:
        if n > 255:
            raise ValueError("prf+ cannot produce that much keying material")
        t = prf(key, t + seed + bytes([n]))
        out += t
        n += 1
    return out[:length]


@dataclass(frozen=True)
class IkeKeys:
    """SK_d, SK_ai/ar, SK_ei/er, SK_pi/pr of one IKE SA (section 2.14)."""

    prf: Prf
    sk_d: bytes
    sk_ai: bytes
    sk_ar: bytes
    sk_ei: bytes
    sk_er: bytes
    sk_pi: bytes
    sk_pr: bytes
    encr: int
    integ: int

    def cipher(self, initiator_side: bool) -> SkCipher:
        """Protection of messages sent by the original initiator (True) or responder."""
        if initiator_side:
            return SkCipher(self.encr, self.sk_ei, self.integ, self.sk_ai)
        return SkCipher(self.encr, self.sk_er, self.integ, self.sk_ar)


def skeyseed(prf: Prf, nonce_i: bytes, nonce_r: bytes, shared: bytes) -> bytes:
    """SKEYSEED = prf(Ni | Nr, g^ir) (section 2.14)."""
    return prf(nonce_i + nonce_r, shared)


def rekey_skeyseed(prf: Prf, old_sk_d: bytes, shared: bytes, nonce_i: bytes,
                   nonce_r: bytes) -> bytes:
    """SKEYSEED = prf(SK_d (old), g^ir (new) | Ni | Nr) (section 2.18)."""
    return prf(old_sk_d, shared + nonce_i + nonce_r)


def derive_ike_keys(
    prf: Prf, seed: bytes, nonce_i: bytes, nonce_r: bytes, spi_i: bytes, spi_r: bytes,
    encr: int, key_bits: int, integ: int,
) -> IkeKeys:
    """{SK_d | SK_ai | SK_ar | SK_ei | SK_er | SK_pi | SK_pr} = prf+(SKEYSEED, Ni|Nr|SPIi|SPIr)."""
    elen = encr_key_len(encr, key_bits)
    ilen = integ_key_len(integ)
    plen = prf.size
    km = prf_plus(prf, seed, nonce_i + nonce_r + spi_i + spi_r, 3 * plen + 2 * ilen + 2 * elen)
    parts = []
    pos = 0
    for n in (plen, ilen, ilen, elen, elen, plen, plen):
        parts.append(km[pos : pos + n])
        pos += n
    return IkeKeys(prf, *parts, encr=encr, integ=integ)


def child_keymat(
    prf: Prf, sk_d: bytes, nonce_i: bytes, nonce_r: bytes, shared: bytes, encr: int,
    key_bits: int, integ: int,
) -> tuple[bytes, bytes, bytes, bytes]:
    """KEYMAT = prf+(SK_d, [g^ir (new) |] Ni | Nr) (section 2.17).

    Returns (encr_i, integ_i, encr_r, integ_r): first the initiator-to-responder SA's keys,
    then the other direction; GCM keys carry their 4-byte salt (RFC 4106 section 8.1).
    """
    elen = encr_key_len(encr, key_bits)
    ilen = integ_key_len(integ)
    km = prf_plus(prf, sk_d, shared + nonce_i + nonce_r, 2 * (elen + ilen))
    return (km[:elen], km[elen : elen + ilen], km[elen + ilen : 2 * elen + ilen],
            km[2 * elen + ilen :])
