"""IKEv2 numbers (IANA "Internet Key Exchange Version 2 (IKEv2) Parameters", RFC 7296 section 3).

Specification constants first, then the implementation's own defaults.
"""

from __future__ import annotations

from enum import IntEnum

# --- Specification ------------------------------------------------------------------------

IKE_PORT = 500
NAT_T_PORT = 4500
NON_ESP_MARKER = b"\x00\x00\x00\x00"  # RFC 3948 section 2.2
NAT_KEEPALIVE = b"\xff"  # RFC 3948 section 2.3
IKE_VERSION = 0x20  # major 2, minor 0
HEADER_LEN = 28


class ExchangeType(IntEnum):
    IKE_SA_INIT = 34
    IKE_AUTH = 35
    CREATE_CHILD_SA = 36
    INFORMATIONAL = 37


class Flag(IntEnum):
    INITIATOR = 0x08
    VERSION = 0x10
    RESPONSE = 0x20


class PayloadType(IntEnum):
    NONE = 0
    SA = 33
    KE = 34
    IDi = 35
    IDr = 36
    CERT = 37
    CERTREQ = 38
    AUTH = 39
    NONCE = 40
    NOTIFY = 41
    DELETE = 42
    VENDOR_ID = 43
    TSi = 44
    TSr = 45
    SK = 46
    CP = 47
    EAP = 48
    SKF = 53


class ProtocolId(IntEnum):
    NONE = 0
    IKE = 1
    AH = 2
    ESP = 3


class TransformType(IntEnum):
    ENCR = 1
    PRF = 2
    INTEG = 3
    DH = 4
    ESN = 5


class EncrId(IntEnum):
    AES_CBC = 12
    AES_GCM_8 = 18
    AES_GCM_12 = 19
    AES_GCM_16 = 20


class PrfId(IntEnum):
    HMAC_SHA1 = 2
    HMAC_SHA2_256 = 5
    HMAC_SHA2_384 = 6
    HMAC_SHA2_512 = 7


class IntegId(IntEnum):
    NONE = 0
    HMAC_SHA1_96 = 2
    HMAC_SHA2_256_128 = 12
    HMAC_SHA2_384_192 = 13
    HMAC_SHA2_512_256 = 14


class DhId(IntEnum):
    NONE = 0
    MODP_2048 = 14
    MODP_3072 = 15
    ECP_256 = 19
    CURVE25519 = 31


class EsnId(IntEnum):
    NO_ESN = 0
    ESN = 1


ATTR_KEY_LENGTH = 14  # transform attribute, RFC 7296 section 3.3.5
ATTR_TV = 0x8000


class AuthMethod(IntEnum):
    RSA_SIG = 1
    SHARED_KEY = 2
    DIGITAL_SIGNATURE = 14  # RFC 7427


class HashId(IntEnum):
    """SIGNATURE_HASH_ALGORITHMS values, RFC 7427 section 4."""

    SHA1 = 1
    SHA2_256 = 2
    SHA2_384 = 3
    SHA2_512 = 4
    IDENTITY = 5


class IdType(IntEnum):
    ID_IPV4_ADDR = 1
    ID_FQDN = 2
    ID_RFC822_ADDR = 3
    ID_IPV6_ADDR = 5
    ID_DER_ASN1_DN = 9
    ID_KEY_ID = 11


class TsType(IntEnum):
    TS_IPV4_ADDR_RANGE = 7
    TS_IPV6_ADDR_RANGE = 8


class NotifyType(IntEnum):
    # error types, RFC 7296 section 3.10.1
    UNSUPPORTED_CRITICAL_PAYLOAD = 1
    INVALID_IKE_SPI = 4
    INVALID_MAJOR_VERSION = 5
    INVALID_SYNTAX = 7
    INVALID_MESSAGE_ID = 9
    INVALID_SPI = 11
    NO_PROPOSAL_CHOSEN = 14
    INVALID_KE_PAYLOAD = 17
    AUTHENTICATION_FAILED = 24
    SINGLE_PAIR_REQUIRED = 34
    NO_ADDITIONAL_SAS = 35
    INTERNAL_ADDRESS_FAILURE = 36
    FAILED_CP_REQUIRED = 37
    TS_UNACCEPTABLE = 38
    INVALID_SELECTORS = 39
    TEMPORARY_FAILURE = 43
    CHILD_SA_NOT_FOUND = 44
    # status types
    INITIAL_CONTACT = 16384
    SET_WINDOW_SIZE = 16385
    ADDITIONAL_TS_POSSIBLE = 16386
    IPCOMP_SUPPORTED = 16387
    NAT_DETECTION_SOURCE_IP = 16388
    NAT_DETECTION_DESTINATION_IP = 16389
    COOKIE = 16390
    USE_TRANSPORT_MODE = 16391
    HTTP_CERT_LOOKUP_SUPPORTED = 16392
    REKEY_SA = 16393
    ESP_TFC_PADDING_NOT_SUPPORTED = 16394
    NON_FIRST_FRAGMENTS_ALSO = 16395
    MOBIKE_SUPPORTED = 16396
    NO_ADDITIONAL_ADDRESSES = 16399
    MULTIPLE_AUTH_SUPPORTED = 16404
    REDIRECT_SUPPORTED = 16406
    EAP_ONLY_AUTHENTICATION = 16417
    CHILDLESS_IKEV2_SUPPORTED = 16418
    IKEV2_MESSAGE_ID_SYNC_SUPPORTED = 16420
    IKEV2_FRAGMENTATION_SUPPORTED = 16430
    SIGNATURE_HASH_ALGORITHMS = 16431


ERROR_NOTIFY_MAX = 16383  # below 16384 a notify reports an error (section 3.10.1)


def notify_name(value: int) -> str:
    try:
        return NotifyType(value).name
    except ValueError:
        return f"NOTIFY_{value}"


# --- Implementation -----------------------------------------------------------------------

NONCE_LEN = 32  # as charon (NONCE_SIZE); RFC 7296 section 2.10 asks for >= 16 and >= prf key/2
RETRANSMIT_TIMEOUT = 0.5  # RFC 7296 2.1: first retransmit after 0.5 s, doubling
RETRANSMIT_BUDGET = 8.0  # ... give up after about 8 s
HALF_OPEN_COOKIE_THRESHOLD = 32  # half-open IKE SAs above which COOKIE is demanded (2.6)
HALF_OPEN_LIFETIME = 30.0  # seconds a responder keeps a half-open IKE SA
CHILDREN_PER_IKE = 256  # CHILD SAs one IKE SA may carry; more get NO_ADDITIONAL_SAS (RFC 7296 1.3)
HALF_OPEN_MAX = 1024  # half-open IKE SAs beyond which IKE_SA_INIT is dropped, cookie or not
INIT_RESTARTS_MAX = 5  # COOKIE / INVALID_KE answers one IKE_SA_INIT follows (charon's MAX_RETRIES)
NAT_KEEPALIVE_INTERVAL = 20.0  # seconds between keepalives when we are behind NAT (charon's)
MAX_MESSAGE_LEN = 65535
