"""IKEv2 codecs, proposals, key schedule, SK payload and signatures, against oracles where we
have them: a captured charon 5.9.8 IKE_SA_INIT (byte-exact), scapy's IKEv2 layer, and
RFC 4868 / RFC 7427 constants."""

from __future__ import annotations

import hmac
from hashlib import sha256
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from ike_helpers import host_key, seeded_rng

from oe.ike import auth
from oe.ike import message as m
from oe.ike.constants import (
    AuthMethod,
    DhId,
    EncrId,
    ExchangeType,
    IntegId,
    NotifyType,
    PayloadType,
    PrfId,
    ProtocolId,
    TransformType,
)
from oe.ike.crypto import DhExchange, Prf, SkCipher
from oe.ike.errors import IkeError, IntegrityError, ParseError
from oe.ike.keymat import child_keymat, derive_ike_keys, prf_plus
from oe.ike.proposals import Suite, choose, offer, parse_proposal

CHARON_INIT = (Path(__file__).parent / "data/charon_ike_sa_init.bin").read_bytes()


def test_charon_ike_sa_init_parses_and_reencodes_byte_exact():
    """charon's `aes128-sha256-x25519` request: [ SA KE No N(NATD_S_IP) N(NATD_D_IP)
    N(FRAG_SUP) N(HASH_ALG) N(REDIR_SUP) ] (as charon 5.9 sends it)."""
    header, msg = m.parse_message(CHARON_INIT)
    assert header.exchange == ExchangeType.IKE_SA_INIT and header.from_initiator
    assert msg.encode() == CHARON_INIT
    sa, ke, nonce = msg.first(m.SA), msg.first(m.KE), msg.first(m.Nonce)
    [prop] = sa.proposals
    assert prop.protocol == ProtocolId.IKE and prop.spi == b""
    assert prop.transforms == (
        m.Transform(TransformType.ENCR, EncrId.AES_CBC, 128),
        m.Transform(TransformType.INTEG, IntegId.HMAC_SHA2_256_128),
        m.Transform(TransformType.PRF, PrfId.HMAC_SHA2_256),
        m.Transform(TransformType.DH, DhId.CURVE25519),
    )
    assert ke.group == 31 and len(ke.data) == 32 and len(nonce.data) == 32
    assert [n.notify_type for n in msg.get(m.Notify)] == [
        NotifyType.NAT_DETECTION_SOURCE_IP, NotifyType.NAT_DETECTION_DESTINATION_IP,
        NotifyType.IKEV2_FRAGMENTATION_SUPPORTED, NotifyType.SIGNATURE_HASH_ALGORITHMS,
        NotifyType.REDIRECT_SUPPORTED,
    ]
    assert msg.notifies(NotifyType.SIGNATURE_HASH_ALGORITHMS)[0].data == bytes.fromhex(
        "0002000300040005")
    _, suite = choose(sa.proposals, parse_proposal("aes128-sha256-x25519", ProtocolId.IKE),
                      ProtocolId.IKE)
    assert suite.dh == DhId.CURVE25519


def test_our_ike_sa_init_reads_the_same_in_scapy():
    """scapy's IKEv2 layer (an independent codec) sees the payloads and transforms we meant."""
    from scapy.contrib.ikev2 import IKEv2

    from ike_helpers import ADDR_B, ike_pair

    a, _ = ike_pair(cfg_a={"ike_proposals": ("aes256gcm16-prfsha384-ecp256",)})
    a.initiate(ADDR_B, 0)
    [(data, _, _, _)] = a.datagrams_to_send(0)
    pkt = IKEv2(data)
    assert pkt.exch_type == 34 and pkt.length == len(data)
    layer, kinds = pkt.payload, []
    while layer and layer.name != "NoPayload" and hasattr(layer, "next_payload"):
        kinds.append(layer.name)
        layer = layer.payload
    assert kinds[:3] == ["IKEv2 SA", "IKEv2 Key Exchange", "IKEv2 Nonce"]
    prop = pkt["IKEv2 SA"].prop
    ids = [(t.transform_type, t.transform_id) for t in prop.trans.iterpayloads()]
    assert ids == [(1, 20), (2, 6), (4, 19)]
    assert pkt["IKEv2 Key Exchange"].group == 19 and len(pkt["IKEv2 Key Exchange"].ke) == 64


# --- payload round trips -------------------------------------------------------------------

_bytes = st.binary(max_size=40)
_transform = st.builds(m.Transform, st.integers(1, 5), st.integers(0, 65535),
                       st.none() | st.integers(0, 65535))
_proposal = st.builds(m.Proposal, st.integers(1, 255), st.integers(1, 3),
                      st.binary(max_size=8), st.lists(_transform, min_size=1, max_size=5).map(tuple))
_ts = st.builds(lambda six, p, a, b, c, d: m.TrafficSelectorWire(8 if six else 7, p, a, b,
                                                                 c[: 16 if six else 4].ljust(16 if six else 4, b"\0"),
                                                                 d[: 16 if six else 4].ljust(16 if six else 4, b"\0")),
                st.booleans(), st.integers(0, 255), st.integers(0, 65535), st.integers(0, 65535),
                st.binary(max_size=16), st.binary(max_size=16))
_payload = st.one_of(
    st.builds(m.SA, st.lists(_proposal, min_size=1, max_size=3).map(tuple)),
    st.builds(m.KE, st.integers(0, 65535), _bytes),
    st.builds(m.Nonce, st.binary(min_size=16, max_size=64)),
    st.builds(m.ID, st.booleans(), st.integers(0, 255), _bytes),
    st.builds(m.Auth, st.integers(0, 255), _bytes),
    st.builds(m.Notify, st.integers(0, 65535), _bytes, st.integers(0, 3), st.binary(max_size=8)),
    st.builds(m.Delete, st.just(3), st.lists(st.binary(min_size=4, max_size=4), max_size=4).map(tuple)),
    st.builds(m.TS, st.booleans(), st.lists(_ts, min_size=1, max_size=3).map(tuple)),
    st.builds(m.Opaque, st.just(int(PayloadType.VENDOR_ID)), _bytes),
)


@settings(max_examples=300, deadline=None)
@given(st.lists(_payload, max_size=6), st.binary(min_size=8, max_size=8), st.booleans())
def test_payload_chain_round_trips(payloads, spi, response):
    msg = m.Message(spi, bytes(8), ExchangeType.INFORMATIONAL, 7, response, True, tuple(payloads))
    data = msg.encode()
    _, back = m.parse_message(data)
    assert back == msg and back.encode() == data


EXCHANGES = {e.value for e in ExchangeType}


def assert_read_as_sent(data: bytes, header: m.Header, msg: m.Message) -> None:
    """What the parser took is what the bytes say: a whole IKEv2 datagram of a known exchange,
    its SPIs, Message ID and flags (section 3.1)."""
    assert header.length == len(data) and data[17] >> 4 == 2 and data[18] in EXCHANGES
    assert (msg.spi_i, msg.spi_r, msg.exchange) == (data[:8], data[8:16], data[18])
    assert msg.message_id == int.from_bytes(data[20:24], "big")
    assert (msg.is_response, msg.from_initiator) == (bool(data[19] & 0x20), bool(data[19] & 0x08))


@settings(max_examples=2000, deadline=None)
@given(st.binary(max_size=300))
def test_parser_raises_only_defined_errors_on_random_input(data):
    try:
        header, msg = m.parse_message(data)
    except IkeError:
        return
    assert_read_as_sent(data, header, msg)


@settings(max_examples=1000, deadline=None)
@given(st.integers(0, len(CHARON_INIT) - 1), st.integers(0, 255), st.integers(0, 20))
def test_parser_raises_only_defined_errors_on_mutated_charon_message(pos, value, cut):
    """One octet changed, the tail cut: a defined error, or a message read as it stands; a cut
    or a wrong version or exchange type is always refused, the unchanged message never."""
    data = bytearray(CHARON_INIT)
    data[pos] = value
    data = bytes(data[: len(data) - cut])
    try:
        header, msg = m.parse_message(data)
    except IkeError:
        assert data != CHARON_INIT
        return
    assert_read_as_sent(data, header, msg)
    assert cut == 0 or 24 <= pos < 28          # only a rewritten length field fits a cut


def test_unknown_critical_payload_is_reported_with_its_type():
    chain = bytes([0, 0x80, 0, 4])
    with pytest.raises(IkeError) as e:
        m.parse_payloads(199, chain)
    assert e.value.notify == NotifyType.UNSUPPORTED_CRITICAL_PAYLOAD and e.value.data == b"\xc7"
    assert m.parse_payloads(199, bytes([0, 0, 0, 6, 1, 2])) == []


@pytest.mark.parametrize("data", [
    b"", bytes(27), CHARON_INIT[:-1], CHARON_INIT[:17] + b"\x30" + CHARON_INIT[18:],
])
def test_malformed_headers(data):
    with pytest.raises(ParseError):
        m.parse_message(data)


# --- proposals -----------------------------------------------------------------------------


def test_strongswan_proposal_strings():
    [s] = parse_proposal("aes256gcm16-prfsha384-ecp256", ProtocolId.IKE)
    assert s == Suite(ProtocolId.IKE, EncrId.AES_GCM_16, 256, IntegId.NONE,
                      PrfId.HMAC_SHA2_384, DhId.ECP_256)
    [s] = parse_proposal("aes128-sha256-x25519", ProtocolId.IKE)
    assert (s.integ, s.prf) == (IntegId.HMAC_SHA2_256_128, PrfId.HMAC_SHA2_256)
    assert len(parse_proposal("aes128-aes256-sha256-x25519-ecp256", ProtocolId.IKE)) == 4
    [s] = parse_proposal("aes128gcm16-esn", ProtocolId.ESP)
    assert s.esn == 1 and s.dh == 0
    with pytest.raises(ValueError):
        parse_proposal("3des-md5-modp768", ProtocolId.IKE)


def test_choose_follows_the_initiators_order_and_refuses_strangers():
    ours = parse_proposal("aes128gcm16-aes256gcm16", ProtocolId.ESP)
    theirs = offer(parse_proposal("aes256gcm16-aes128gcm16", ProtocolId.ESP), b"\x00\x00\x10\x00")
    prop, suite = choose(theirs, ours, ProtocolId.ESP)
    assert prop.number == 1 and suite.key_bits == 256
    with pytest.raises(IkeError) as e:
        choose(offer(parse_proposal("aes128", ProtocolId.ESP), b"1234"), ours, ProtocolId.ESP)
    assert e.value.notify == NotifyType.NO_PROPOSAL_CHOSEN
    pfs = offer(parse_proposal("aes128gcm16-modp2048", ProtocolId.ESP), b"1234")
    assert choose(pfs, ours, ProtocolId.ESP, ignore_dh=True)[1].dh == 0


# --- key schedule and crypto ---------------------------------------------------------------


def test_prf_plus_is_the_section_2_13_construction():
    prf = Prf(PrfId.HMAC_SHA2_256)
    k, s = b"key", b"seed"
    t1 = hmac.new(k, s + b"\x01", sha256).digest()
    t2 = hmac.new(k, t1 + s + b"\x02", sha256).digest()
    assert prf_plus(prf, k, s, 50) == (t1 + t2)[:50]


def test_ike_key_lengths_follow_the_transforms():
    """SK_d/SK_p: PRF output size; SK_a: RFC 4868 key sizes; SK_e: key (+4-byte GCM salt)."""
    keys = derive_ike_keys(Prf(PrfId.HMAC_SHA2_384), b"s" * 48, b"n" * 32, b"m" * 32, b"i" * 8,
                           b"r" * 8, EncrId.AES_CBC, 256, IntegId.HMAC_SHA2_512_256)
    assert [len(k) for k in (keys.sk_d, keys.sk_ai, keys.sk_ar, keys.sk_ei, keys.sk_er,
                             keys.sk_pi, keys.sk_pr)] == [48, 64, 64, 32, 32, 48, 48]
    ei, ai, er, ar = child_keymat(Prf(PrfId.HMAC_SHA2_256), b"d" * 32, b"n" * 32, b"m" * 32, b"",
                                  EncrId.AES_GCM_16, 128, 0)
    assert (len(ei), len(ai), len(er), len(ar)) == (20, 0, 20, 0)
    both = prf_plus(Prf(PrfId.HMAC_SHA2_256), b"d" * 32, b"n" * 32 + b"m" * 32, 40)
    assert ei + er == both  # RFC 4106 8.1: initiator-to-responder first


@pytest.mark.parametrize("group", [DhId.CURVE25519, DhId.ECP_256, DhId.MODP_2048, DhId.MODP_3072])
def test_dh_groups_agree_and_reject_bad_values(group):
    rng = seeded_rng(group)
    x, y = DhExchange(group, rng), DhExchange(group, rng)
    assert x.shared(y.public) == y.shared(x.public)
    with pytest.raises(IkeError):
        x.shared(b"\x00" * len(x.public))
    with pytest.raises(IkeError):
        x.shared(x.public[:-1])


@pytest.mark.parametrize("cipher", [
    SkCipher(EncrId.AES_CBC, b"k" * 16, IntegId.HMAC_SHA2_256_128, b"a" * 32),
    SkCipher(EncrId.AES_CBC, b"k" * 32, IntegId.HMAC_SHA2_512_256, b"a" * 64),
    SkCipher(EncrId.AES_GCM_16, b"k" * 20),
    SkCipher(EncrId.AES_GCM_16, b"k" * 36),
])
def test_sk_payload_seal_open_and_tamper(cipher):
    header = m.Header(b"i" * 8, b"r" * 8, 0, ExchangeType.INFORMATIONAL, 8, 3, 0).encode()
    inner = bytes(range(37))
    data = cipher.seal(header, PayloadType.DELETE, inner, seeded_rng(5))
    assert int.from_bytes(data[24:28], "big") == len(data) and data[16] == PayloadType.SK
    _, msg = m.parse_message(data)
    body = msg.payloads[0].body
    assert cipher.open(data, len(data) - len(body), len(body)) == inner
    for pos in (0, 20, 30, len(data) // 2, len(data) - 1):
        bad = bytearray(data)
        bad[pos] ^= 1
        with pytest.raises(IntegrityError):
            cipher.open(bytes(bad), len(data) - len(body), len(body))


# --- signatures ----------------------------------------------------------------------------


def test_method_14_carries_sha256_with_rsa_algorithm_identifier():
    """RFC 7427 appendix A.4.3 (sha256WithRSAEncryption, NULL parameters), as charon sends."""
    key = host_key("a")
    data = auth.sign(key, b"octets")
    assert data[:16] == bytes.fromhex("0f300d06092a864886f70d01010b0500")
    auth.verify(key.public_key(), AuthMethod.DIGITAL_SIGNATURE, data, b"octets", False)
    with pytest.raises(IkeError) as e:
        auth.verify(key.public_key(), AuthMethod.DIGITAL_SIGNATURE, data, b"other", False)
    assert e.value.notify == NotifyType.AUTHENTICATION_FAILED


def test_pss_is_accepted_and_method_1_only_without_hash_notify():
    key = host_key("a")
    auth.verify(key.public_key(), AuthMethod.DIGITAL_SIGNATURE, auth.sign_pss(key, b"x"), b"x",
                False)
    sha1 = auth.sign(key, b"x", AuthMethod.RSA_SIG)
    auth.verify(key.public_key(), AuthMethod.RSA_SIG, sha1, b"x", sha1_allowed=True)
    with pytest.raises(IkeError):
        auth.verify(key.public_key(), AuthMethod.RSA_SIG, sha1, b"x", sha1_allowed=False)
    with pytest.raises(IkeError):
        auth.verify(key.public_key(), AuthMethod.SHARED_KEY, sha1, b"x", sha1_allowed=True)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=80))
def test_auth_verify_on_garbage_fails_cleanly(data):
    with pytest.raises(IkeError):
        auth.verify(host_key("a").public_key(), AuthMethod.DIGITAL_SIGNATURE, data, b"x", False)


def test_pss_with_impossible_salt_length_is_an_authentication_failure():
    key = host_key("a")
    good = auth.sign_pss(key, b"x")
    bad = good.replace(bytes.fromhex("a203020120"), bytes.fromhex("a2040202ffff"))
    bad = bytearray(bad)
    for pos in (0, 2, 15):  # AUTH's length octet, AlgorithmIdentifier, RSASSA-PSS-params
        bad[pos] += 1
    with pytest.raises(IkeError) as e:
        auth.verify(key.public_key(), AuthMethod.DIGITAL_SIGNATURE, bytes(bad), b"x", False)
    assert e.value.notify == NotifyType.AUTHENTICATION_FAILED
    assert e.value.reason == "signature does not verify"  # it parsed; the salt cannot fit
