"""Cryptographic primitives for IKE: DH groups, PRFs, and the SK payload (RFC 7296 3.14, RFC 5282).

Everything random (DH private values, IVs) comes from the injected ``rng``.
"""

from __future__ import annotations

import hashlib
import hmac
import struct
from dataclasses import dataclass
from typing import Callable

# cryptography loads its OpenSSL backend lazily, on the first x25519 or ECP key: load it with
# this module instead, so that the first negotiation does not pay for it (2-6 ms on each side,
# bench/scale.py's latency split).
import cryptography.hazmat.backends.openssl.backend  # noqa: F401
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import serialization as _ser
from cryptography.hazmat.primitives.asymmetric import ec, x25519
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from oe.ike.constants import HEADER_LEN, DhId, EncrId, IntegId, NotifyType, PayloadType, PrfId
from oe.ike.errors import IkeError, IntegrityError

Rng = Callable[[int], bytes]

# RFC 3526 groups 14 and 15 (generator 2), as OpenSSL ships them.
MODP_2048 = int(
    "FFFFFFFFFFFFFFFFC90FDAA22168C234C4C6628B80DC1CD129024E088A67CC74020BBEA63B139B22"
    "514A08798E3404DDEF9519B3CD3A431B302B0A6DF25F14374FE1356D6D51C245E485B576625E7EC6"
    "F44C42E9A637ED6B0BFF5CB6F406B7EDEE386BFB5A899FA5AE9F24117C4B1FE649286651ECE45B3D"
    "C2007CB8A163BF0598DA48361C55D39A69163FA8FD24CF5F83655D23DCA3AD961C62F356208552BB"
    "9ED529077096966D670C354E4ABC9804F1746C08CA18217C32905E462E36CE3BE39E772C180E8603"
    "9B2783A2EC07A28FB5C55DF06F4C52C9DE2BCBF6955817183995497CEA956AE515D2261898FA0510"
    "15728E5A8AACAA68FFFFFFFFFFFFFFFF"
    , 16)
MODP_3072 = int(
    "FFFFFFFFFFFFFFFFC90FDAA22168C234C4C6628B80DC1CD129024E088A67CC74020BBEA63B139B22"
    "514A08798E3404DDEF9519B3CD3A431B302B0A6DF25F14374FE1356D6D51C245E485B576625E7EC6"
    "F44C42E9A637ED6B0BFF5CB6F406B7EDEE386BFB5A899FA5AE9F24117C4B1FE649286651ECE45B3D"
    "C2007CB8A163BF0598DA48361C55D39A69163FA8FD24CF5F83655D23DCA3AD961C62F356208552BB"
    "9ED529077096966D670C354E4ABC9804F1746C08CA18217C32905E462E36CE3BE39E772C180E8603"
    "9B2783A2EC07A28FB5C55DF06F4C52C9DE2BCBF6955817183995497CEA956AE515D2261898FA0510"
    "15728E5A8AAAC42DAD33170D04507A33A85521ABDF1CBA64ECFB850458DBEF0A8AEA71575D060C7D"
    "B3970F85A6E1E4C7ABF5AE8CDB0933D71E8C94E04A25619DCEE3D2261AD2EE6BF12FFA06D98A0864"
    "D87602733EC86A64521F2B18177B200CBBE117577A615D6C770988C0BAD946E208E24FA074E5AB31"
    "43DB5BFCE0FD108E4B82D120A93AD2CAFFFFFFFFFFFFFFFF"
    , 16)

_HASHES = {
    PrfId.HMAC_SHA1: hashlib.sha1,
    PrfId.HMAC_SHA2_256: hashlib.sha256,
    PrfId.HMAC_SHA2_384: hashlib.sha384,
    PrfId.HMAC_SHA2_512: hashlib.sha512,
}


@dataclass(frozen=True)
class Prf:
    """A PRF transform: HMAC with the transform's hash (RFC 4868)."""

    id: int

    @property
    def size(self) -> int:
        return _HASHES[PrfId(self.id)]().digest_size

    def __call__(self, key: bytes, data: bytes) -> bytes:
        return hmac.new(key, data, _HASHES[PrfId(self.id)]).digest()


_INTEG = {  # id: (hash, key length, ICV length), RFC 4868 section 2
    IntegId.HMAC_SHA1_96: (hashlib.sha1, 20, 12),
    IntegId.HMAC_SHA2_256_128: (hashlib.sha256, 32, 16),
    IntegId.HMAC_SHA2_384_192: (hashlib.sha384, 48, 24),
    IntegId.HMAC_SHA2_512_256: (hashlib.sha512, 64, 32),
}

AEAD_IDS = (EncrId.AES_GCM_8, EncrId.AES_GCM_12, EncrId.AES_GCM_16)


def integ_key_len(integ: int) -> int:
    return _INTEG[IntegId(integ)][1] if integ else 0


def encr_key_len(encr: int, key_bits: int) -> int:
    """Bytes of SK_e / ESP key material: the key, plus a 4-byte salt for GCM (RFC 5282 7.1)."""
    return key_bits // 8 + (4 if encr in AEAD_IDS else 0)


# --- Diffie-Hellman -----------------------------------------------------------------------


class DhExchange:
    """One side of a DH exchange: ``public`` goes into KE, ``shared(peer)`` yields g^ir."""

    def __init__(self, group: int, rng: Rng) -> None:
        self.group = group
        if group == DhId.CURVE25519:
            self._x = x25519.X25519PrivateKey.from_private_bytes(rng(32))
            self.public = self._x.public_key().public_bytes_raw()
        elif group == DhId.ECP_256:
            n = 0xFFFFFFFF00000000FFFFFFFFFFFFFFFFBCE6FAADA7179E84F3B9CAC2FC632551
            d = int.from_bytes(rng(40), "big") % (n - 1) + 1
            self._ec = ec.derive_private_key(d, ec.SECP256R1())
            point = self._ec.public_key().public_bytes(
                _ser.Encoding.X962, _ser.PublicFormat.UncompressedPoint
            )
            self.public = point[1:]  # RFC 5903 section 7: x | y without the 0x04 prefix
        elif group in (DhId.MODP_2048, DhId.MODP_3072):
            self._p = MODP_2048 if group == DhId.MODP_2048 else MODP_3072
            self._len = self._p.bit_length() // 8
            self._priv = int.from_bytes(rng(64), "big") | (1 << 511)
            self.public = pow(2, self._priv, self._p).to_bytes(self._len, "big")
        else:
            raise IkeError(NotifyType.NO_PROPOSAL_CHOSEN, f"unsupported DH group {group}")

    def shared(self, peer: bytes) -> bytes:
        """g^ir; a bad public value raises IkeError(INVALID_SYNTAX)."""
        bad = IkeError(NotifyType.INVALID_SYNTAX, f"invalid KE data for group {self.group}")
        if self.group == DhId.CURVE25519:
            if len(peer) != 32:
                raise bad
            try:
                # OpenSSL refuses an all-zero result (RFC 8031 section 2.3)
                return self._x.exchange(x25519.X25519PublicKey.from_public_bytes(peer))
            except ValueError as e:
                raise bad from e
        if self.group == DhId.ECP_256:
            if len(peer) != 64:
                raise bad
            try:
                pub = ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256R1(), b"\x04" + peer)
                return self._ec.exchange(ec.ECDH(), pub)
            except ValueError as e:
                raise bad from e
        y = int.from_bytes(peer, "big")
        if len(peer) != self._len or not 1 < y < self._p - 1:
            raise bad
        return pow(y, self._priv, self._p).to_bytes(self._len, "big")


# --- the SK payload -----------------------------------------------------------------------


@dataclass(frozen=True)
class SkCipher:
    """Protection of one direction: encryption key (+salt for GCM) and integrity key."""

    encr: int
    key: bytes
    integ: int = 0
    integ_key: bytes = b""

    @property
    def is_aead(self) -> bool:
        return self.encr in AEAD_IDS

    @property
    def icv_len(self) -> int:
        if self.is_aead:
            return {EncrId.AES_GCM_8: 8, EncrId.AES_GCM_12: 12, EncrId.AES_GCM_16: 16}[
                EncrId(self.encr)
            ]
        return _INTEG[IntegId(self.integ)][2]

    def seal(self, header: bytes, first: int, inner: bytes, rng: Rng,
             fragment: tuple[int, int] | None = None) -> bytes:
        """Return the whole message: ``header`` (28 bytes, length patched) | SK payload.

        With ``fragment=(number, total)`` the payload is an Encrypted Fragment (SKF) carrying
        ``inner`` as one chunk: its header grows by Fragment Number and Total Fragments, and
        all 8 bytes are associated data as the SK header is (RFC 7383 2.5, 2.5.3)."""
        if self.is_aead:
            iv = rng(8)
            plain = inner + b"\x00"  # no padding needed, pad length 0 (RFC 5282 section 3)
            body_len = len(iv) + len(plain) + self.icv_len
        else:
            iv = rng(16)
            padlen = (-(len(inner) + 1)) % 16
            plain = inner + bytes(padlen) + bytes([padlen])
            body_len = len(iv) + len(plain) + self.icv_len
        ptype, numbers = PayloadType.SK, b""
        if fragment is not None:
            ptype, numbers = PayloadType.SKF, struct.pack("!HH", *fragment)
        sk_len = 4 + len(numbers) + body_len
        head = header[:16] + bytes([ptype]) + header[17:24] + struct.pack("!I", HEADER_LEN + sk_len)
        sk_header = struct.pack("!BBH", first, 0, sk_len) + numbers
        if self.is_aead:
            key, salt = self.key[:-4], self.key[-4:]
            # RFC 5282 section 5.1: AAD = IKE header | SK payload header
            ct = AESGCM(key).encrypt(salt + iv, plain, head + sk_header)
            return head + sk_header + iv + ct
        enc = Cipher(algorithms.AES(self.key), modes.CBC(iv)).encryptor()
        ct = enc.update(plain) + enc.finalize()
        signed = head + sk_header + iv + ct
        hash_, _, icv_len = _INTEG[IntegId(self.integ)]
        return signed + hmac.new(self.integ_key, signed, hash_).digest()[:icv_len]

    def open(self, data: bytes, body_offset: int, body_len: int) -> bytes:
        """Check and decrypt the SK payload whose body is ``data[body_offset:][:body_len]``;
        returns the inner payload bytes. Raises IntegrityError and nothing else."""
        if body_offset + body_len != len(data):
            raise IntegrityError("SK payload is not at the end")
        body = data[body_offset:]
        if self.is_aead:
            if len(body) < 8 + 1 + self.icv_len:
                raise IntegrityError("SK payload too short")
            key, salt = self.key[:-4], self.key[-4:]
            iv = body[:8]
            try:
                plain = AESGCM(key).decrypt(salt + iv, body[8:], data[:body_offset])
            except (InvalidTag, ValueError) as e:
                raise IntegrityError("AEAD tag mismatch") from e
        else:
            icv_len = self.icv_len
            if len(body) < 16 + 16 + icv_len or (len(body) - 16 - icv_len) % 16:
                raise IntegrityError("SK payload length")
            hash_ = _INTEG[IntegId(self.integ)][0]
            want = hmac.new(self.integ_key, data[:-icv_len], hash_).digest()[:icv_len]
            if not hmac.compare_digest(want, data[-icv_len:]):
                raise IntegrityError("ICV mismatch")
            dec = Cipher(algorithms.AES(self.key), modes.CBC(body[:16])).decryptor()
            plain = dec.update(body[16:-icv_len]) + dec.finalize()
        padlen = plain[-1]
        if padlen + 1 > len(plain):
            raise IntegrityError("bad padding length")
        return plain[: len(plain) - padlen - 1]
