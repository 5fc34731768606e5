"""Public keys in DNS records: the RFC 3110 key blob and the IPSECKEY, TXT and KEY codecs.

Pure: rdata in, `KeyRecord` out (or `RecordError` with the exact reason), and the reverse for
`oe showhostkey`. The rdata objects are dnspython's own (dns.rdtypes.IN.IPSECKEY, ANY.TXT,
ANY.KEY), so the zone-file text we emit is checked by the parser every resolver uses.

Three record kinds carry an OE key, oldest last:
  IPSECKEY (RFC 4025)  precedence gateway-type algorithm gateway key
  TXT (FreeS/WAN)      "X-IPsec-Server(nnn)=gateway key"   (draft-richardson-ipsec-opportunistic)
  KEY (RFC 2535)       16896 4 1 key      flags 0x4200, protocol 4 = IPsec, algorithm 1 = RSA
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import ipaddress
import re
from dataclasses import dataclass
from typing import Union

import dns.exception
import dns.name
import dns.rdata
import dns.rdataclass
import dns.rdatatype
import dns.rdtypes.ANY.KEY
import dns.rdtypes.ANY.TXT
import dns.rdtypes.IN.IPSECKEY
from cryptography.hazmat.primitives.asymmetric import rsa

from oe.logsafe import printable

IPSECKEY = "IPSECKEY"
TXT = "TXT"
KEY = "KEY"
KINDS = (IPSECKEY, TXT, KEY)
"""Record kinds in the order they are preferred when a name has several."""

# RFC 4025 section 2.3 gateway types, section 2.4 algorithms.
GATEWAY_NONE, GATEWAY_IPV4, GATEWAY_IPV6, GATEWAY_NAME = 0, 1, 2, 3
IPSECKEY_ALG_NONE, IPSECKEY_ALG_DSA, IPSECKEY_ALG_RSA = 0, 1, 2
IPSECKEY_ALG_NAMES = {0: "no key", 1: "DSA", 2: "RSA", 3: "ECDSA", 4: "EdDSA"}

# KEY RR as FreeS/WAN published it (draft-richardson-ipsec-opportunistic section 5.1): 0x4200 =
# NOCONF (not for confidentiality) | HOST (key of the non-zone entity named by the owner).
KEY_FLAGS = 0x4200
KEY_PROTOCOL_IPSEC = 4
KEY_ALGORITHMS_RSA = (1, 5)  # RFC 2537 RSA/MD5 (FreeS/WAN's), RFC 3110 RSA/SHA-1

TXT_ATTRIBUTE = "X-IPsec-Server"
TXT_STRING_MAX = 255  # RFC 1035 section 3.3: a <character-string> is at most 255 octets
TXT_DEFAULT_PRECEDENCE = 10  # the one FreeS/WAN's showhostkey hardwired

# Implementation limits on the modulus (pluto checked 512..4096 bits; modern keys are longer).
RSA_MIN_MODULUS_OCTETS = 12  # RSA_MIN_OCTETS_RFC in FreeS/WAN keys.c
RSA_MAX_BITS = 16384

Gateway = Union[ipaddress.IPv4Address, ipaddress.IPv6Address, dns.name.Name]
"""Where IKE goes: an address, or a name to resolve (FreeS/WAN's @FQDN)."""


class RecordError(ValueError):
    """A DNS record that claims to carry an OE key but cannot be used; str() is the reason."""


# ---------------------------------------------------------------- RFC 3110 key blob


@dataclass(frozen=True)
class RsaPublicKey:
    """An RSA public key as RFC 3110 section 2 encodes it."""

    e: int
    """Public exponent."""
    n: int
    """Modulus."""

    @property
    def bits(self) -> int:
        return self.n.bit_length()

    def public_key(self) -> rsa.RSAPublicKey:
        """The key as `cryptography` uses it, to verify IKE AUTH signatures (never raises for a
        key from decode_rsa_blob, which tried it)."""
        return rsa.RSAPublicNumbers(self.e, self.n).public_key()


def encode_rsa_blob(e: int, n: int) -> bytes:
    """RFC 3110 section 2: exponent length (1 octet, or 0 and 2 octets), exponent, modulus."""
    exponent = e.to_bytes((e.bit_length() + 7) // 8, "big")
    modulus = n.to_bytes((n.bit_length() + 7) // 8, "big")
    if len(exponent) <= 255:
        length = bytes([len(exponent)])
    else:
        length = b"\x00" + len(exponent).to_bytes(2, "big")
    return length + exponent + modulus


def decode_rsa_blob(blob: bytes) -> RsaPublicKey:
    """Inverse of encode_rsa_blob, for a key that can verify a signature; RecordError says what
    is wrong with any other blob (RFC 4322 3.2: a malformed key record means deny)."""
    if len(blob) < 3:
        raise RecordError(f"invalid key data: RSA key blob of {len(blob)} octets is too short")
    if blob[0]:
        explen, start = blob[0], 1
    else:
        explen, start = int.from_bytes(blob[1:3], "big"), 3
        if explen == 0:
            raise RecordError("invalid key data: RSA exponent length is 0")
        if explen <= 255:
            raise RecordError(f"invalid key data: RSA exponent length {explen} is written in "
                              f"three octets (RFC 3110 section 2: one octet for 1-255)")
    if start + explen + RSA_MIN_MODULUS_OCTETS > len(blob):
        raise RecordError(f"invalid key data: RSA exponent of {explen} octets leaves no room "
                          f"for a modulus in a {len(blob)}-octet key")
    exponent, modulus = blob[start:start + explen], blob[start + explen:]
    # RFC 3110 section 2: "Leading zero octets are prohibited in the exponent and modulus."
    if exponent[0] == 0:
        raise RecordError("invalid key data: RSA exponent has a leading zero octet "
                          "(RFC 3110 section 2)")
    if modulus[0] == 0:
        raise RecordError("invalid key data: RSA modulus has a leading zero octet")
    e, n = int.from_bytes(exponent, "big"), int.from_bytes(modulus, "big")
    if e < 3 or e % 2 == 0:
        raise RecordError(f"invalid key data: RSA exponent {e} is not an odd number >= 3")
    if n % 2 == 0:
        raise RecordError("invalid key data: RSA modulus is even")
    if n.bit_length() > RSA_MAX_BITS:
        raise RecordError(f"invalid key data: RSA modulus of {n.bit_length()} bits is longer "
                          f"than {RSA_MAX_BITS}")
    if e >= n:
        raise RecordError("invalid key data: RSA exponent is not smaller than the modulus")
    key = RsaPublicKey(e, n)
    try:
        key.public_key()  # the last word is the library's that verifies with it
    except ValueError as exc:
        raise RecordError(f"invalid key data: {exc}") from None
    return key


def key_id(blob: bytes) -> str:
    """FreeS/WAN's keyid: the first 9 base64 characters of the key blob (keyblobtoid(3))."""
    return base64.b64encode(blob).decode()[:9]


def fingerprint(blob: bytes) -> str:
    """SHA-256 of the key blob, written as OpenSSH writes its fingerprints."""
    return "SHA256:" + base64.b64encode(hashlib.sha256(blob).digest()).decode().rstrip("=")


def _b64decode(text: str) -> bytes:
    """Base64 with whitespace anywhere ignored (draft-richardson 5.2.1), otherwise strict."""
    compact = "".join(text.split())
    try:
        return base64.b64decode(compact, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise RecordError(f"malformed key data: bad base64 ({exc})") from None


# ---------------------------------------------------------------- decoded records


@dataclass(frozen=True)
class KeyRecord:
    """One record that carries (or points to) an OE key."""

    kind: str
    """IPSECKEY, TXT or KEY."""
    owner: dns.name.Name
    """The name the record was found at."""
    precedence: int
    """Lower is preferred (IPSECKEY precedence, TXT preference); a KEY has none and sorts as 0."""
    gateway: Gateway | None
    """Where to do IKE; None means the owner's own host (IPSECKEY type 0, KEY)."""
    key: RsaPublicKey | None
    """The RSA key, or None when the record names a gateway without one."""
    blob: bytes | None
    """The RFC 3110 blob the key was decoded from."""
    text: str
    """The record as zone-file text (for `oe dnskey`)."""

    @property
    def key_id(self) -> str | None:
        return key_id(self.blob) if self.blob is not None else None


def _presentation(rdata: dns.rdata.Rdata) -> str:
    """Zone-file text with the base64 in one piece, so a key can be grepped for."""
    return rdata.to_text(chunksize=0)


def _check_gateway_address(address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> None:
    if address.is_unspecified:
        raise RecordError("gateway address must not be 0.0.0.0 or 0::0")


def from_ipseckey(owner: dns.name.Name, rdata: dns.rdtypes.IN.IPSECKEY.IPSECKEY) -> KeyRecord:
    """RFC 4025: an IPSECKEY record; a key that is not RSA is an error (oe signs with RSA)."""
    gateway: Gateway | None
    if rdata.gateway_type == GATEWAY_NONE:
        gateway = None
    elif rdata.gateway_type in (GATEWAY_IPV4, GATEWAY_IPV6):
        gateway = ipaddress.ip_address(rdata.gateway)
        _check_gateway_address(gateway)
    else:
        gateway = rdata.gateway
    key = blob = None
    if rdata.algorithm == IPSECKEY_ALG_RSA:
        blob = rdata.key
        key = decode_rsa_blob(blob)
    elif rdata.algorithm != IPSECKEY_ALG_NONE:
        name = IPSECKEY_ALG_NAMES.get(rdata.algorithm, "unassigned")
        raise RecordError(f"IPSECKEY algorithm {rdata.algorithm} ({name}) is not supported: "
                          f"oe uses RSA keys (algorithm 2)")
    return KeyRecord(IPSECKEY, owner, rdata.precedence, gateway, key, blob, _presentation(rdata))


def from_key(owner: dns.name.Name, rdata: dns.rdtypes.ANY.KEY.KEY) -> KeyRecord:
    """RFC 2535 KEY as FreeS/WAN used it: flags 0x4200, protocol 4, algorithm RSA."""
    if rdata.protocol != KEY_PROTOCOL_IPSEC:
        raise RecordError(f"KEY protocol {rdata.protocol} is not IPsec ({KEY_PROTOCOL_IPSEC})")
    if int(rdata.flags) != KEY_FLAGS:
        raise RecordError(f"KEY flags {int(rdata.flags)} (0x{int(rdata.flags):04x}) are not "
                          f"{KEY_FLAGS} (0x{KEY_FLAGS:04x})")
    if int(rdata.algorithm) not in KEY_ALGORITHMS_RSA:
        raise RecordError(f"KEY algorithm {int(rdata.algorithm)} is not RSA (1 or 5)")
    key = decode_rsa_blob(rdata.key)
    return KeyRecord(KEY, owner, 0, None, key, rdata.key, _presentation(rdata))


# X-IPsec-Server ( nnn ) = gateway key      (FreeS/WAN pluto dnskey.c, decode_iii / process_txt_rr)
_ATTRIBUTE = re.compile(r"\s*" + re.escape(TXT_ATTRIBUTE), re.IGNORECASE)
_NUMBER = re.compile(r"0[xX][0-9a-fA-F]+|0[0-7]*|[1-9][0-9]*")  # strtoul(..., 0)


def txt_string(rdata: dns.rdtypes.ANY.TXT.TXT) -> bytes:
    """RFC 1035: the <character-string>s of one TXT record joined with nothing in between."""
    return b"".join(rdata.strings)


def is_x_ipsec_server(rdata: dns.rdtypes.ANY.TXT.TXT) -> bool:
    """A TXT record that is not X-IPsec-Server is "neither interesting nor bad" (dnskey.c)."""
    return _ATTRIBUTE.match(txt_string(rdata).decode("latin-1")) is not None


def from_txt(owner: dns.name.Name, rdata: dns.rdtypes.ANY.TXT.TXT) -> KeyRecord:
    """Parse X-IPsec-Server(nnn)=gateway key; the error texts are pluto's."""
    raw = txt_string(rdata)
    if b"\0" in raw:
        raise RecordError("TXT X-IPsec-Server contains a NUL character")
    try:
        text = raw.decode("ascii")
    except UnicodeDecodeError:
        raise RecordError("TXT X-IPsec-Server contains a non-ASCII character") from None
    match = _ATTRIBUTE.match(text)
    if match is None:
        raise RecordError(f"TXT record is not {TXT_ATTRIBUTE}")
    rest = text[match.end():].lstrip()
    if not rest.startswith("("):
        raise RecordError("X-IPsec-Server missing '('")
    rest = rest[1:].lstrip()
    number = _NUMBER.match(rest)
    if number is None:
        raise RecordError("malformed X-IPsec-Server priority")
    precedence = int(number.group(), 16 if number.group()[:2] in ("0x", "0X") else
                     8 if number.group().startswith("0") else 10)
    rest = rest[number.end():].lstrip()
    if not rest.startswith(")"):
        raise RecordError("X-IPsec-Server priority missing ')'")
    if precedence > 0xFFFF:
        raise RecordError("X-IPsec-Server priority larger than 0xFFFF")
    rest = rest[1:].lstrip()
    if not rest.startswith("="):
        raise RecordError("X-IPsec-Server priority missing '='")
    fields = rest[1:].split(None, 1)
    if not fields:
        raise RecordError("TXT X-IPsec-Server badly formed (no gateway specified)")
    gateway = parse_gateway(fields[0])
    key = blob = None
    if len(fields) == 2:
        blob = _b64decode(fields[1])
        key = decode_rsa_blob(blob)
    return KeyRecord(TXT, owner, precedence, gateway, key, blob, _presentation(rdata))


def parse_gateway(text: str) -> Gateway:
    """FreeS/WAN gateway syntax: @FQDN, dotted IPv4, or IPv6 (anything with a ':')."""
    if text.startswith("@"):
        try:
            name = dns.name.from_text(text[1:])
        except dns.exception.DNSException as exc:
            raise RecordError(printable(f"malformed gateway '{text}': {exc}")) from None
        if text[1:] in ("", "."):
            raise RecordError(f"malformed gateway '{text}': empty name")
        return name
    try:
        address = (ipaddress.IPv6Address if ":" in text else ipaddress.IPv4Address)(text)
    except ValueError as exc:
        # The text is the TXT record's: escaped and bounded before it reaches a log (defect 10).
        raise RecordError(printable(f"malformed gateway '{text}': {exc}")) from None
    _check_gateway_address(address)
    return address


def gateway_text(gateway: Gateway) -> str:
    """The gateway as `oe showhostkey --gateway` takes it: an address or @FQDN."""
    if isinstance(gateway, dns.name.Name):
        return "@" + gateway.to_text(omit_final_dot=True)
    return str(gateway)


def decode(owner: dns.name.Name, rdata: dns.rdata.Rdata) -> KeyRecord:
    """Any of the three kinds; RecordError names the kind and owner with the reason."""
    kind = dns.rdatatype.to_text(rdata.rdtype)
    try:
        if rdata.rdtype == dns.rdatatype.IPSECKEY:
            return from_ipseckey(owner, rdata)
        if rdata.rdtype == dns.rdatatype.TXT:
            return from_txt(owner, rdata)
        if rdata.rdtype == dns.rdatatype.KEY:
            return from_key(owner, rdata)
    except RecordError as exc:
        raise RecordError(f"{kind} at {owner}: {exc}") from None
    raise ValueError(f"{kind} records carry no OE key")


# ---------------------------------------------------------------- building records to publish


def ipseckey_rdata(blob: bytes, gateway: Gateway | None = None,
                   precedence: int = 10) -> dns.rdtypes.IN.IPSECKEY.IPSECKEY:
    """RFC 4025 record with an RSA key; the gateway type follows from the gateway given."""
    if gateway is None:
        gateway_type, value = GATEWAY_NONE, None
    elif isinstance(gateway, dns.name.Name):
        gateway_type, value = GATEWAY_NAME, gateway
    else:
        gateway_type = GATEWAY_IPV4 if gateway.version == 4 else GATEWAY_IPV6
        value = str(gateway)
    return dns.rdtypes.IN.IPSECKEY.IPSECKEY(
        dns.rdataclass.IN, dns.rdatatype.IPSECKEY, precedence, gateway_type,
        IPSECKEY_ALG_RSA, value, blob)


def txt_rdata(blob: bytes, gateway: Gateway, precedence: int = TXT_DEFAULT_PRECEDENCE,
              ) -> dns.rdtypes.ANY.TXT.TXT:
    """X-IPsec-Server(nnn)=gateway key, cut into strings as FreeS/WAN's showhostkey cut it.

    If attribute and key fit in one 255-octet string they share it; otherwise the attribute is
    a string of its own and " key" follows in 255-octet pieces.
    """
    head = f"{TXT_ATTRIBUTE}({precedence})={gateway_text(gateway)}"
    tail = " " + base64.b64encode(blob).decode()
    if len(head) + len(tail) <= TXT_STRING_MAX:
        strings = [head + tail]
    else:
        strings = [head] + [tail[i:i + TXT_STRING_MAX]
                            for i in range(0, len(tail), TXT_STRING_MAX)]
    return dns.rdtypes.ANY.TXT.TXT(dns.rdataclass.IN, dns.rdatatype.TXT,
                                   [s.encode() for s in strings])


def key_rdata(blob: bytes) -> dns.rdtypes.ANY.KEY.KEY:
    """KEY 16896 4 1: decimal flags, because knot and dnspython refuse FreeS/WAN's 0x4200."""
    return dns.rdtypes.ANY.KEY.KEY(dns.rdataclass.IN, dns.rdatatype.KEY, KEY_FLAGS,
                                   KEY_PROTOCOL_IPSEC, 1, blob)


def zone_line(owner: dns.name.Name, rdata: dns.rdata.Rdata) -> str:
    """One master-file line (RFC 1035 section 5.1) with an absolute owner."""
    kind = dns.rdatatype.to_text(rdata.rdtype)
    return f"{owner.to_text()}\tIN\t{kind}\t{_presentation(rdata)}"


def publication(kind: str, blob: bytes, owner: dns.name.Name, gateway: Gateway | None = None,
                precedence: int | None = None) -> list[str]:
    """`oe showhostkey`: a comment naming the key, then the record, as master-file lines.

    IPSECKEY without a gateway gets gateway type 0 ("no gateway": the owner's host). TXT always
    names one, so `gateway` is required for it. KEY has neither gateway nor precedence.
    """
    if kind == IPSECKEY:
        precedence = 10 if precedence is None else precedence
        if not 0 <= precedence <= 255:
            raise ValueError(f"IPSECKEY precedence {precedence} is not in 0-255 (RFC 4025 2.2)")
        rdata = ipseckey_rdata(blob, gateway, precedence)
    elif kind == TXT:
        precedence = TXT_DEFAULT_PRECEDENCE if precedence is None else precedence
        if not 0 <= precedence <= 0xFFFF:
            raise ValueError(f"X-IPsec-Server priority {precedence} is not in 0-65535")
        if gateway is None:
            raise ValueError("a TXT X-IPsec-Server record needs a gateway")
        rdata = txt_rdata(blob, gateway, precedence)
    elif kind == KEY:
        if gateway is not None or precedence is not None:
            raise ValueError("a KEY record has no gateway and no precedence")
        rdata = key_rdata(blob)
    else:
        raise ValueError(f"unknown record kind {kind!r}")
    key = decode_rsa_blob(blob)
    return [f"; RSA {key.bits} bits, key id {key_id(blob)}, {fingerprint(blob)}",
            zone_line(owner, rdata)]


def owner_for(target: str) -> dns.name.Name:
    """The name a target's key lives at: reverse name of an address, else the name itself."""
    try:
        address = ipaddress.ip_address(target)
    except ValueError:
        name = target[1:] if target.startswith("@") else target
        try:
            result = dns.name.from_text(name)
        except dns.exception.DNSException as exc:
            raise ValueError(printable(f"'{target}' is neither an address nor a domain name: "
                                       f"{exc}")) from None
        if name in ("", "."):
            raise ValueError(f"'{target}' is neither an address nor a domain name")
        return result
    return reverse_name(address)


def reverse_name(address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> dns.name.Name:
    """The address's name under in-addr.arpa (RFC 1035 3.5) or ip6.arpa (RFC 3596 2.5), made
    from its bytes: dns.reversename.from_address parses text, and a burst of new destinations
    asks for thousands of these. An IPv4-mapped IPv6 address is its IPv4 address, as there."""
    if address.version == 6 and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    if address.version == 4:
        labels = [str(octet).encode() for octet in reversed(address.packed)] + [b"in-addr"]
    else:
        labels = [nibble.encode() for nibble in reversed(address.packed.hex())] + [b"ip6"]
    return dns.name.Name(labels + [b"arpa", b""])
