"""No downgrade of the AUTH signature (RFC 7427 section 4): a peer that announced
SIGNATURE_HASH_ALGORITHMS must sign with method 14; its RSA SHA-1 (method 1) signature is
refused, even though it verifies."""

from __future__ import annotations

from ike_helpers import ADDR_B, Link, events, ike_pair

from oe.ike.tasks import ike_init
from oe.ike.constants import AuthMethod, NotifyType
from oe.ike.events import IkeSaEstablished, IkeSaFailed
from oe.ike.message import Auth, parse_message


def test_method_1_from_a_peer_that_announced_hash_algorithms_is_refused(monkeypatch):
    """B announces SHA2-256 in its IKE_SA_INIT answer, but (made to ignore A's announcement)
    signs its IKE_AUTH answer with method 1. A refuses: AUTHENTICATION_FAILED."""
    a, b = ike_pair()
    link = Link(a, b)
    a.initiate(ADDR_B, 0)
    [sa_a] = a._sas.values()
    real_hashes = ike_init.hashes_of
    monkeypatch.setattr(ike_init, "hashes_of", lambda msg: set())
    link.transfer(a)                                    # B reads no hash algorithms from A
    monkeypatch.setattr(ike_init, "hashes_of", real_hashes)
    link.transfer(b)                                    # A reads B's: SHA2-256 and more
    link.transfer(a)                                    # IKE_AUTH -->
    [answer] = link.transfer(b)                         # <-- IKE_AUTH, signed with method 1
    sa_a.datagram = answer
    header, msg = parse_message(answer)
    assert sa_a._open(header, msg, 0).first(Auth).method == AuthMethod.RSA_SIG
    [failed] = events(a)
    assert isinstance(failed, IkeSaFailed)
    assert failed.notify == NotifyType.AUTHENTICATION_FAILED and "SHA-1" in failed.reason
    assert [type(e) for e in events(b)][:1] == [IkeSaEstablished]
