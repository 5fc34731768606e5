"""Authentication with raw RSA public keys: IDs, the signed octets, RFC 7427 signatures.

We sign with method 14 (Digital Signature, RFC 7427) using sha256WithRSAEncryption and accept
method 14 with PKCS#1 v1.5 SHA-256/384/512 or RSASSA-PSS, and method 1 (RSA Digital Signature,
PKCS#1 v1.5 over SHA-1, RFC 7296 section 3.8) from peers that did not send
SIGNATURE_HASH_ALGORITHMS.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding, rsa

from oe.ike.constants import AuthMethod, HashId, IdType, NotifyType
from oe.ike.crypto import Prf
from oe.ike.errors import IkeError
from oe.ike.ts import IpAddress
from oe.logsafe import printable


@dataclass(frozen=True)
class Identity:
    """An IKE identity (RFC 7296 section 3.5)."""

    id_type: int
    data: bytes

    @classmethod
    def from_address(cls, addr: str) -> "Identity":
        ip = ipaddress.ip_address(addr)
        return cls(IdType.ID_IPV4_ADDR if ip.version == 4 else IdType.ID_IPV6_ADDR, ip.packed)

    @classmethod
    def fqdn(cls, name: str) -> "Identity":
        return cls(IdType.ID_FQDN, name.encode("ascii"))

    def address(self) -> IpAddress | None:
        """The address an ID_IPV4_ADDR / ID_IPV6_ADDR names; None for any other ID."""
        size = {IdType.ID_IPV4_ADDR: 4, IdType.ID_IPV6_ADDR: 16}.get(self.id_type)
        return ipaddress.ip_address(self.data) if len(self.data) == size else None

    def __str__(self) -> str:
        """For logs and events: the peer chose these bytes, so anything but printable ASCII
        is shown escaped (bytes above 0x7f and controls as \\xNN)."""
        addr = self.address()
        if addr is not None:
            return str(addr)
        if self.id_type == IdType.ID_FQDN:
            return printable(self.data.decode("ascii", "backslashreplace"))
        return f"{self.id_type}:{self.data.hex()}"


@dataclass(frozen=True)
class PeerKey:
    """What a key lookup answers for an ID: the peer's public key and the addresses that key
    was published for (an address ID: that address; an ID_FQDN: its name's addresses). Only
    these addresses may appear in the peer's traffic selectors (docs/architecture.md section 3)."""

    public_key: rsa.RSAPublicKey
    addresses: frozenset[IpAddress]
    """Given as address objects or strings; kept as address objects."""

    def __post_init__(self) -> None:
        object.__setattr__(self, "addresses",
                           frozenset(ipaddress.ip_address(a) for a in self.addresses))


def signed_octets(prf: Prf, first_message: bytes, peer_nonce: bytes, sk_p: bytes,
                  id_body: bytes) -> bytes:
    """RealMessage | Nonce(peer) | prf(SK_p, ID') (section 2.15)."""
    return first_message + peer_nonce + prf(sk_p, id_body)


# AlgorithmIdentifier DER, RFC 7427 appendix A (RSA with NULL parameters, as charon sends them)
_RSA_OID = bytes.fromhex("2a864886f70d0101")
_PKCS1 = {
    0x0B: hashes.SHA256,
    0x0C: hashes.SHA384,
    0x0D: hashes.SHA512,
}
_HASH_OIDS = {
    bytes.fromhex("608648016503040201"): hashes.SHA256,
    bytes.fromhex("608648016503040202"): hashes.SHA384,
    bytes.fromhex("608648016503040203"): hashes.SHA512,
}
SHA256_WITH_RSA = bytes.fromhex("300d06092a864886f70d01010b0500")
SUPPORTED_HASHES = (HashId.SHA2_256, HashId.SHA2_384, HashId.SHA2_512)


def _tlv(data: bytes, pos: int) -> tuple[int, bytes, int]:
    """Read one DER TLV at ``pos``: (tag, value, position after it)."""
    if pos + 2 > len(data):
        raise ValueError("truncated DER")
    tag, n = data[pos], data[pos + 1]
    pos += 2
    if n & 0x80:
        k = n & 0x7F
        if k == 0 or k > 2 or pos + k > len(data):
            raise ValueError("bad DER length")
        n = int.from_bytes(data[pos : pos + k], "big")
        pos += k
    if pos + n > len(data):
        raise ValueError("truncated DER")
    return tag, data[pos : pos + n], pos + n


def _pss_params(params: bytes) -> tuple[type[hashes.HashAlgorithm], int]:
    """RSASSA-PSS-params (RFC 4055 section 3.1): hash and salt length (MGF1 with that hash)."""
    hash_cls: type[hashes.HashAlgorithm] = hashes.SHA1
    salt = 20
    pos = 0
    while pos < len(params):
        tag, value, pos = _tlv(params, pos)
        if tag == 0xA0:
            _, alg, _ = _tlv(value, 0)
            _, oid, _ = _tlv(alg, 0)
            if oid not in _HASH_OIDS:
                raise ValueError("unsupported PSS hash")
            hash_cls = _HASH_OIDS[oid]
        elif tag == 0xA2:
            _, num, _ = _tlv(value, 0)
            salt = int.from_bytes(num, "big")
    return hash_cls, salt


def _scheme(alg_id: bytes) -> tuple[padding.AsymmetricPadding, hashes.HashAlgorithm]:
    """Map an AlgorithmIdentifier (RFC 7427 section 3) to a verification scheme."""
    tag, seq, end = _tlv(alg_id, 0)
    if tag != 0x30 or end != len(alg_id):
        raise ValueError("AlgorithmIdentifier is not a SEQUENCE")
    tag, oid, pos = _tlv(seq, 0)
    if tag != 0x06 or len(oid) != 9 or oid[:8] != _RSA_OID:
        raise ValueError("not an RSA signature algorithm")
    if oid[8] in _PKCS1:
        return padding.PKCS1v15(), _PKCS1[oid[8]]()
    if oid[8] == 0x0A:  # id-RSASSA-PSS
        params = b""
        if pos < len(seq):
            _, params, _ = _tlv(seq, pos)
        hash_cls, salt = _pss_params(params)
        return padding.PSS(mgf=padding.MGF1(hash_cls()), salt_length=salt), hash_cls()
    raise ValueError("unsupported RSA signature algorithm")


def sign(key: rsa.RSAPrivateKey, octets: bytes,
         method: int = AuthMethod.DIGITAL_SIGNATURE) -> bytes:
    """AUTH data for ``method``: RFC 7427 (length | AlgorithmIdentifier | signature) or method 1."""
    if method == AuthMethod.RSA_SIG:
        return key.sign(octets, padding.PKCS1v15(), hashes.SHA1())
    return bytes([len(SHA256_WITH_RSA)]) + SHA256_WITH_RSA + key.sign(
        octets, padding.PKCS1v15(), hashes.SHA256()
    )


def sign_pss(key: rsa.RSAPrivateKey, octets: bytes) -> bytes:
    """Method 14 AUTH data with RSASSA-PSS SHA-256, salt 32 (for tests of the verifier)."""
    params = bytes.fromhex(
        "3034a00f300d06096086480165030402010500a11c301a06092a864886f70d010108300d0609608648"
        "0165030402010500a203020120"
    )
    oid = bytes.fromhex("06092a864886f70d01010a")
    alg = bytes([0x30, len(oid) + len(params)]) + oid + params
    sig = key.sign(octets, padding.PSS(mgf=padding.MGF1(hashes.SHA256()), salt_length=32),
                   hashes.SHA256())
    return bytes([len(alg)]) + alg + sig


def verify(key: rsa.RSAPublicKey, method: int, data: bytes, octets: bytes,
           sha1_allowed: bool) -> None:
    """Check AUTH; raises IkeError(AUTHENTICATION_FAILED) with the reason."""
    fail = NotifyType.AUTHENTICATION_FAILED
    try:
        if method == AuthMethod.DIGITAL_SIGNATURE:
            if not data or 1 + data[0] > len(data):
                raise IkeError(fail, "malformed RFC 7427 AUTH data")
            try:
                pad, hash_ = _scheme(data[1 : 1 + data[0]])
            except ValueError as e:
                raise IkeError(fail, f"signature algorithm: {e}") from e
            key.verify(data[1 + data[0] :], octets, pad, hash_)
        elif method == AuthMethod.RSA_SIG:
            if not sha1_allowed:
                raise IkeError(fail, "RSA SHA-1 signature from a peer that announced RFC 7427")
            key.verify(data, octets, padding.PKCS1v15(), hashes.SHA1())
        else:
            raise IkeError(fail, f"unsupported AUTH method {method}")
    except (InvalidSignature, ValueError) as e:  # ValueError: e.g. a PSS salt longer than fits
        raise IkeError(fail, "signature does not verify") from e
