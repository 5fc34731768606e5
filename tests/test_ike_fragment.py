"""oe.ike.fragment: RFC 7383 fragments cut to charon's sizes, opened by oe.ike.crypto's
SkCipher.open unchanged, and reassembled within limits whatever order or junk arrives."""

from __future__ import annotations

import hashlib
import hmac
import random
import struct

import pytest
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from hypothesis import given, settings
from hypothesis import strategies as st

from oe.ike.constants import HEADER_LEN, EncrId, ExchangeType, Flag, IntegId, PayloadType
from oe.ike.crypto import SkCipher
from oe.ike.errors import IntegrityError, ParseError
from oe.ike.fragment import (FRAGMENT_SIZE, MAX_FRAGMENTS, Fragment, Geometry, Reassembler,
                             chunk_size, datagram_size, open_fragment, parse_fragment,
                             split_message)
from oe.ike.message import Auth, Header, Notify, Opaque, encode_payloads, parse_payloads

GCM = SkCipher(EncrId.AES_GCM_16, bytes(range(20)))
CBC = SkCipher(EncrId.AES_CBC, bytes(range(16)), IntegId.HMAC_SHA2_256_128, bytes(range(32)))
HEADER = Header(b"I" * 8, b"R" * 8, PayloadType.NONE, ExchangeType.IKE_AUTH, Flag.INITIATOR, 1, 0)


def reference_seal(cipher: SkCipher, rng=random.Random(7).randbytes):
    """RFC 7383 2.5.3 written out, independently of SkCipher.seal(fragment=...), which must
    agree with it (the SKF header, Fragment Number and Total Fragments included, in the
    associated data or under the ICV)."""
    def seal(head: bytes, nxt: int, number: int, total: int, chunk: bytes) -> bytes:
        if cipher.is_aead:
            iv, plain = rng(8), chunk + b"\x00"
        else:
            pad = (-(len(chunk) + 1)) % 16
            iv, plain = rng(16), chunk + bytes(pad) + bytes([pad])
        body_len = len(iv) + len(plain) + cipher.icv_len
        length = HEADER_LEN + 8 + body_len
        ike = head[:16] + bytes([PayloadType.SKF]) + head[17:24] + struct.pack("!I", length)
        skf = struct.pack("!BBHHH", nxt, 0, 8 + body_len, number, total)
        if cipher.is_aead:
            key, salt = cipher.key[:-4], cipher.key[-4:]
            return ike + skf + iv + AESGCM(key).encrypt(salt + iv, plain, ike + skf)
        enc = Cipher(algorithms.AES(cipher.key), modes.CBC(iv)).encryptor()
        signed = ike + skf + iv + enc.update(plain) + enc.finalize()
        return signed + hmac.new(cipher.integ_key, signed, hashlib.sha256).digest()[:16]
    return seal


def ike_auth_inner(cert_len: int = 3000) -> tuple[int, bytes]:
    """An IKE_AUTH's inner chain with a certificate: larger than any 1280 path."""
    return encode_payloads([Opaque(PayloadType.CERT, bytes(range(256)) * (cert_len // 256) +
                                   bytes(cert_len % 256)),
                            Auth(1, b"\x5a" * 512), Notify(16430)])


# ---------------------------------------------------------------- sizes, as charon computes them


def test_chunk_sizes_match_charons_sums():
    # 1280 - 20 (IPv4) - 8 (UDP) - 28 (IKE) - 8 (IV) - 16 (ICV) - 8 (SKF header) - 1 (pad len)
    assert chunk_size(Geometry.of(GCM), 4, nat_t=False) == 1191
    # IPv6 on 4500: 40 and the non-ESP marker's 4
    assert chunk_size(Geometry.of(GCM), 6, nat_t=True) == 1167
    # CBC: 16-byte IV, rounded down to the block before the pad length byte
    assert chunk_size(Geometry.of(CBC), 4, nat_t=False) == 1183
    assert Geometry.of(CBC) == Geometry(16, 16, 16)


@settings(deadline=None, max_examples=60)
@given(cipher=st.sampled_from([GCM, CBC]), family=st.sampled_from([4, 6]), nat_t=st.booleans(),
       size=st.integers(576, 1500), length=st.integers(0, 9000))
def test_every_fragment_fits_and_the_message_comes_back(cipher, family, nat_t, size, length):
    inner = random.Random(length).randbytes(length)
    chunk = chunk_size(Geometry.of(cipher), family, nat_t, size)
    datagrams = split_message(HEADER, PayloadType.CERT, inner, chunk, reference_seal(cipher))
    assert all(datagram_size(len(d), family, nat_t) <= size for d in datagrams)
    assert len(datagrams) == max(1, -(-length // chunk))
    reassembler = Reassembler()
    done = None
    for d in reversed(datagrams):                      # any order
        fragment, plain = open_fragment(d, cipher)     # SkCipher.open, as it is today
        assert fragment.header.message_id == 1 and fragment.total == len(datagrams)
        done = reassembler.add(0.0, 1, fragment, plain)
    assert done == (PayloadType.CERT, inner)


def test_an_ike_auth_with_a_certificate_crosses_1280_in_three_fragments():
    first, inner = ike_auth_inner(3000)
    chunk = chunk_size(Geometry.of(GCM), 4, nat_t=True)
    datagrams = split_message(HEADER, first, inner, chunk, reference_seal(GCM))
    assert len(datagrams) == 3 and max(map(len, datagrams)) + 20 + 8 + 4 <= FRAGMENT_SIZE
    reassembler = Reassembler()
    results = [reassembler.add(1.0, (1, False), *open_fragment(d, GCM)) for d in datagrams]
    assert results[:2] == [None, None]
    first_type, chain = results[2]
    payloads = parse_payloads(first_type, chain)
    assert [p.type for p in payloads] == [PayloadType.CERT, PayloadType.AUTH, PayloadType.NOTIFY]


def test_more_than_charon_accepts_is_refused_when_splitting():
    with pytest.raises(ValueError):
        split_message(HEADER, PayloadType.CERT, bytes(MAX_FRAGMENTS + 1), 1, reference_seal(GCM))


@pytest.mark.parametrize("cipher", [GCM, CBC], ids=["gcm", "cbc"])
def test_skcipher_seals_a_fragment_as_the_reference_does(cipher):
    """SkCipher.seal(fragment=...) is the hook reference_seal wrote out (RFC 7383 2.5.3)."""
    head, chunk = HEADER.encode(), b"chunk" * 9
    want = reference_seal(cipher, random.Random(3).randbytes)(head, PayloadType.CERT, 2, 3,
                                                               chunk)
    got = cipher.seal(head, PayloadType.CERT, chunk, random.Random(3).randbytes,
                      fragment=(2, 3))
    assert got == want
    assert open_fragment(got, cipher)[1] == chunk


# ---------------------------------------------------------------- parsing and authenticity


def one_fragment(number=1, total=1, nxt=PayloadType.CERT, chunk=b"x" * 40):
    return reference_seal(GCM)(HEADER.encode(), nxt, number, total, chunk)


@pytest.mark.parametrize("number, total", [(0, 3), (4, 3), (0, 0)])
def test_fragment_number_zero_or_above_the_total_is_refused(number, total):
    with pytest.raises(ParseError):
        parse_fragment(one_fragment(number, total))


def test_a_message_that_is_no_fragment_or_whose_length_lies_is_refused():
    data = one_fragment()
    with pytest.raises(ParseError):
        parse_fragment(data[:16] + bytes([PayloadType.SK]) + data[17:])
    lying = data[:HEADER_LEN + 2] + struct.pack("!H", 9) + data[HEADER_LEN + 4:]
    with pytest.raises(ParseError):
        parse_fragment(lying)


def test_a_tampered_fragment_fails_integrity_even_in_its_numbers():
    data = bytearray(one_fragment(2, 3, nxt=PayloadType.NONE))
    data[HEADER_LEN + 7] = 4                          # Total Fragments 3 -> 4: in the AAD
    with pytest.raises(IntegrityError):
        open_fragment(bytes(data), GCM)


def test_a_non_first_fragment_naming_a_payload_type_is_read_as_none():
    fragment = parse_fragment(one_fragment(2, 3, nxt=PayloadType.AUTH))
    assert fragment.next_payload == PayloadType.NONE  # as charon: ignored, not refused


# ---------------------------------------------------------------- reassembly limits


def frag(number, total, nxt=PayloadType.NONE):
    return Fragment(HEADER, nxt if number == 1 else PayloadType.NONE, number, total)


def test_duplicates_are_dropped_and_counted():
    r = Reassembler()
    assert r.add(0, 1, frag(1, 2, PayloadType.AUTH), b"ab") is None
    assert r.add(0, 1, frag(1, 2, PayloadType.AUTH), b"XX") is None
    assert r.counters.duplicates == 1
    assert r.add(0, 1, frag(2, 2), b"cd") == (PayloadType.AUTH, b"abcd")


def test_a_larger_total_restarts_and_a_smaller_one_is_dropped():
    """RFC 7383 2.6: a retransmission cut smaller has more fragments; the old ones go."""
    r = Reassembler()
    r.add(0, 1, frag(1, 2, PayloadType.AUTH), b"old")
    assert r.add(0, 1, frag(2, 3), b"b") is None
    assert r.counters.restarted == 1
    assert r.add(0, 1, frag(2, 2), b"stale") is None and r.counters.stale == 1
    r.add(0, 1, frag(1, 3, PayloadType.AUTH), b"a")
    assert r.add(0, 1, frag(3, 3), b"c") == (PayloadType.AUTH, b"abc")


def test_out_of_range_too_many_and_too_large_are_dropped():
    r = Reassembler(max_fragments=4, max_bytes=10)
    assert r.add(0, 1, frag(5, 4), b"") is None
    assert r.add(0, 1, frag(1, 5), b"") is None
    assert r.counters.out_of_range == 2
    r.add(0, 1, frag(1, 3, PayloadType.AUTH), b"123456")
    assert r.add(0, 1, frag(2, 3), b"7890A") is None
    assert r.counters.too_large == 1 and r.next_timer() is None   # the message is forgotten


def test_incomplete_messages_time_out_and_only_a_few_are_kept():
    r = Reassembler(timeout=30.0, max_messages=2)
    r.add(0.0, "a", frag(1, 2, PayloadType.AUTH), b"a")
    r.add(1.0, "b", frag(1, 2, PayloadType.AUTH), b"b")
    r.add(2.0, "c", frag(1, 2, PayloadType.AUTH), b"c")     # "a", the oldest, makes room
    assert r.add(3.0, "a", frag(2, 2), b"2") is None        # so "a" starts again ("b" goes)
    assert r.next_timer() == pytest.approx(32.0)            # "c"'s, the oldest kept
    r.expire(40.0)
    assert r.counters.timed_out == 2 and r.next_timer() is None


@settings(deadline=None, max_examples=200)
@given(events=st.lists(st.tuples(st.integers(0, 3), st.integers(0, 6), st.integers(0, 6),
                                 st.binary(max_size=8), st.floats(0, 20)), max_size=40))
def test_any_fragments_in_any_order_never_raise_and_stay_within_limits(events):
    r = Reassembler(max_fragments=5, max_bytes=24, max_messages=2)
    now = 0.0
    for key, number, total, chunk, dt in events:
        now += dt
        out = r.add(now, key, Fragment(HEADER, PayloadType.AUTH, number, total), chunk)
        assert out is None or len(out[1]) <= 24
        assert len(r._partial) <= 2
        assert all(p.size <= 24 and len(p.chunks) <= p.total <= 5 for p in r._partial.values())
