"""Records that must be refused, with their reason: a KEY record that is not FreeS/WAN's
IPsec key (RFC 2535 flags 0x4200, protocol 4), an RSA modulus too long to verify with in
bounded time (RFC 3110 allows 4096 octets; we stop at 16384 bits)."""

import base64

import dns.name
import dns.rdata
import dns.rdataclass
import pytest

from oe.dnskeys import records
from oe.dnskeys.records import KEY, RecordError

OWNER = dns.name.from_text("7.2.0.192.in-addr.arpa.")


def blob(bits: int) -> bytes:
    """e = 65537 and an odd modulus of exactly ``bits`` bits."""
    return records.encode_rsa_blob(65537, (1 << (bits - 1)) + 1)


def key_rdata(flags: int, protocol: int, algorithm: int = 5):
    text = f"{flags} {protocol} {algorithm} {base64.b64encode(blob(2048)).decode()}"
    return dns.rdata.from_text(dns.rdataclass.IN, KEY, text)


def test_a_modulus_longer_than_16384_bits_is_refused():
    assert records.decode_rsa_blob(blob(16384)).n.bit_length() == 16384
    with pytest.raises(RecordError) as caught:
        records.decode_rsa_blob(blob(16385))
    assert str(caught.value) == ("invalid key data: RSA modulus of 16385 bits is longer "
                                 "than 16384")


def test_key_record_for_another_protocol_is_refused():
    """Protocol 3 is DNSSEC's: such a key signs zones, it does not speak for the host."""
    assert records.decode(OWNER, key_rdata(0x4200, 4)).kind == KEY
    with pytest.raises(RecordError, match="KEY protocol 3 is not IPsec"):
        records.decode(OWNER, key_rdata(0x4200, 3))


@pytest.mark.parametrize("flags", [0x0100, 0x4100, 0x4300, 0x0200])
def test_key_record_with_other_flags_is_refused(flags):
    """0x4200: no authentication use bit cleared, an entity key (RFC 2535 3.1.2)."""
    with pytest.raises(RecordError, match=f"KEY flags {flags} "):
        records.decode(OWNER, key_rdata(flags, 4))
