"""IKE_AUTH (RFC 7296 section 1.2): identities, AUTH (section 2.15, RFC 7427) and the first
CHILD SA. Rule: a key speaks only for the addresses it vouches for: ``lookup_key`` answers a
typed ID with a ``PeerKey``, and the peer's selectors, as responder and as initiator, must lie
within that key's addresses (docs/architecture.md section 3)."""

from __future__ import annotations

import ipaddress

from oe.ike import auth as _auth
from oe.ike.auth import Identity
from oe.ike.childpolicy import AwaitingDns
from oe.ike.constants import (
    AuthMethod,
    ExchangeType,
    HashId,
    IdType,
    NotifyType,
    ProtocolId,
    notify_name,
)
from oe.ike.errors import IkeError
from oe.ike.events import ChildSaFailed, IkeSaEstablished
from oe.ike.ike_sa import Child, IkeSa, State
from oe.ike.message import ID, SA, Auth, Message, Notify, Payload
from oe.ike.proposals import accept, choose, offer
from oe.ike.tasks import common
from oe.ike.tasks.common import Selectors, error_notify, id_of, make_child, ts_payloads
from oe.ike.tasks.informational import DeleteRefused


def _is_address_literal(name: bytes) -> bool:
    try:
        ipaddress.ip_address(name.decode("ascii").rstrip("."))
    except ValueError:  # UnicodeDecodeError is one
        return False
    return True


def _octets(sa: IkeSa, of_initiator: bool, id_body: bytes) -> bytes:
    """What the initiator's (``of_initiator``) or the responder's AUTH signs (section 2.15):
    its IKE_SA_INIT message, the other side's nonce, prf(SK_p, ID)."""
    keys = sa.keys
    assert keys is not None
    if of_initiator:
        return _auth.signed_octets(keys.prf, sa.init_request, sa.nonce_r, keys.sk_pi, id_body)
    return _auth.signed_octets(keys.prf, sa.init_response, sa.nonce_i, keys.sk_pr, id_body)


def auth_payload(sa: IkeSa, id_payload: ID) -> Auth:
    """Our AUTH over our ID."""
    octets = _octets(sa, sa.initiator, id_payload.body)
    # RFC 7427 only with peers that announced SHA2-256; method 1 otherwise
    method = (AuthMethod.DIGITAL_SIGNATURE if HashId.SHA2_256 in sa.peer_hashes
              else AuthMethod.RSA_SIG)
    return Auth(method, _auth.sign(sa.config.private_key, octets, method))


def verify_peer(sa: IkeSa, id_payload: ID | None, auth: Auth | None,
                expected_peer_id: Identity | None = None) -> None:
    """Look up the peer's key by its ID (type and data) and check AUTH; on success the key's
    addresses bound the peer's selectors. An initiator names the ID it asked for (None:
    any). IkeError(AUTHENTICATION_FAILED)."""
    fail = NotifyType.AUTHENTICATION_FAILED
    if id_payload is None or auth is None:
        raise IkeError(fail, "IKE_AUTH lacks ID or AUTH")
    peer = Identity(id_payload.id_type, id_payload.data)
    if sa.initiator and expected_peer_id not in (None, peer):
        # a valid key for another ID is no proof of being the peer we asked for
        raise IkeError(fail, f"peer identified as {peer}, expected {expected_peer_id}")
    if peer.id_type == IdType.ID_FQDN and _is_address_literal(peer.data):
        # an address's key vouches for its address ID only, never for a name spelled
        # like it (a lookup keyed by the ID's text would hand it over)
        raise IkeError(fail, f"ID_FQDN {peer} is an address, not a name")
    if sa.initiator and sa.pinned_key is not None:
        # a key a delegating record named: it vouches for the client(s) it was pinned for,
        # never for the gateway's own address (RFC 4322 3.2.4.1, docs/gateway.md 4.3)
        found = sa.pinned_key
    else:
        found = sa.host.lookup_key(peer)
        if found is None:
            raise IkeError(fail, f"no public key known for peer ID {peer}")
        if peer.id_type in (IdType.ID_IPV4_ADDR, IdType.ID_IPV6_ADDR) and (
                peer.address() not in found.addresses):
            raise IkeError(fail, f"the key found for {peer} does not vouch for that address")
    key = found.public_key
    octets = _octets(sa, not sa.initiator, id_payload.body)
    try:
        _auth.verify(key, auth.method, auth.data, octets, sha1_allowed=not sa.peer_hashes)
    except IkeError as e:
        raise IkeError(fail, f"peer {peer}: {e.reason}") from e
    sa.peer_id = peer
    sa.peer_key = found


def _established(sa: IkeSa, now: float) -> None:
    sa.state = State.ESTABLISHED
    sa.established_at = now
    sa.host.authenticated(sa)
    if sa.behind_nat:
        sa.next_keepalive = now + sa.config.nat_keepalive_interval
    sa.emit(IkeSaEstablished(
        sa.sa_id, sa.spi_i, sa.spi_r, sa.initiator, sa.local_addr,
        sa.peer_addr, sa.peer_port, str(sa.peer_id), sa.nat_detected, sa.peer_key,
    ))


class IkeAuth:
    """IKE_AUTH as initiator, with the first CHILD SA. Its own state: whom we asked for (None:
    whoever the key lookup vouches for), the selectors we offer, the inbound SPI offered."""

    def __init__(self, expected_peer_id: Identity | None, local_ts: Selectors,
                 remote_ts: Selectors) -> None:
        self.expected_peer_id = expected_peer_id
        self.local_ts = local_ts
        self.remote_ts = remote_ts
        self.spi_in = b""

    def build_i(self, sa: IkeSa, now: float) -> None:
        """IKE_AUTH { IDi, [IDr,] AUTH, SA, TSi, TSr } -->"""
        idi = ID(True, sa.identity.id_type, sa.identity.data)
        self.spi_in = sa.new_spi_in()
        payloads: list[Payload] = [idi]
        if self.expected_peer_id is not None:
            payloads.append(ID(False, self.expected_peer_id.id_type, self.expected_peer_id.data))
        if not sa.host.established_with(sa.peer_addr, sa):
            # Section 2.4: our first IKE SA with this peer; it may drop what it still holds
            # from an earlier life of ours (a restart leaves the peer with dead SAs).
            payloads.append(Notify(NotifyType.INITIAL_CONTACT))
        payloads += [
            auth_payload(sa, idi),
            SA(offer(sa.config.esp_suites(), self.spi_in, with_dh=False)),
            *ts_payloads(self.local_ts, self.remote_ts),
        ]
        sa.send_request(self, ExchangeType.IKE_AUTH, payloads, now,
                        spi_in=int.from_bytes(self.spi_in, "big"))

    def process_i(self, sa: IkeSa, msg: Message, now: float) -> None:
        """<-- IKE_AUTH { IDr, AUTH, SA, TSi, TSr } or { N(error) }"""
        auth = msg.first(Auth)
        err = error_notify(msg)
        if auth is None:
            if err is not None:
                return sa.fail(err.notify_type,
                               f"peer answered {notify_name(err.notify_type)}", local=False)
            return sa.fail(NotifyType.INVALID_SYNTAX, "IKE_AUTH response lacks AUTH", True)
        try:
            verify_peer(sa, id_of(msg, initiator=False), auth, self.expected_peer_id)
        except IkeError as e:
            # section 2.21.2: we cannot tell an authenticated peer; delete the IKE SA
            return sa.fail(e.notify, e.reason, local=True)
        _established(sa, now)
        sa_p = msg.first(SA)
        if err is not None or sa_p is None:
            notify = err.notify_type if err is not None else None
            sa.emit(ChildSaFailed(sa.sa_id, notify,
                                  f"peer answered {notify_name(notify or 0)} for the CHILD SA",
                                  self.local_ts, self.remote_ts))
            return
        try:
            _, suite = accept(sa_p.proposals, sa.config.esp_suites(), ProtocolId.ESP,
                              ignore_dh=True)
            local_ts, remote_ts = common.check_narrowed(sa, msg, self.local_ts, self.remote_ts)
        except IkeError as e:
            sa.emit(ChildSaFailed(sa.sa_id, e.notify, e.reason, self.local_ts, self.remote_ts))
            # section 2.9: the peer made a CHILD SA we cannot accept; delete it
            return sa.start(DeleteRefused(self.spi_in), now)
        sa.adopt(make_child(sa, suite, self.spi_in, sa_p.proposals[0].spi, sa.nonce_i,
                            sa.nonce_r, b"", local_ts, remote_ts, we_initiated=True))


def process_r(sa: IkeSa, msg: Message, now: float) -> None:
    """IKE_AUTH { IDi, AUTH, SA, TSi, TSr } --> answered { IDr, AUTH, SA, TSi, TSr }"""
    mid = msg.message_id
    try:
        verify_peer(sa, id_of(msg, initiator=True), msg.first(Auth))
    except IkeError as e:
        # section 2.21.2: answer AUTHENTICATION_FAILED and forget the SA
        sa.respond(ExchangeType.IKE_AUTH, mid, [Notify(e.notify)])
        return sa.fail(e.notify, e.reason, local=True)
    child: Child | None = None
    child_error: IkeError | None = None
    sa_p = msg.first(SA)
    chosen = None
    if sa_p is None:
        child_error = IkeError(NotifyType.NO_PROPOSAL_CHOSEN, "IKE_AUTH request without SA")
    else:
        try:
            chosen = choose(sa_p.proposals, sa.config.esp_suites(), ProtocolId.ESP,
                            ignore_dh=True), common.narrow_as_responder(sa, msg)
        except IkeError as e:
            child_error = e
        except AwaitingDns:
            # docs/gateway.md 4.2: the request waits for DNS and must have changed nothing
            sa.peer_id = sa.peer_key = None
            raise
    if msg.notifies(NotifyType.INITIAL_CONTACT):
        # Section 2.4: the authenticated peer has no other IKE SA with us any more.
        sa.host.initial_contact(sa)
    idr = ID(False, sa.identity.id_type, sa.identity.data)
    payloads: list[Payload] = [idr, auth_payload(sa, idr)]
    if chosen is not None:
        (prop, suite), (local_ts, remote_ts) = chosen
        try:
            spi_in = sa.new_spi_in()
            child = make_child(sa, suite, spi_in, prop.spi, sa.nonce_i, sa.nonce_r, b"",
                               local_ts, remote_ts, we_initiated=False)
            payloads += [
                SA((suite.proposal(prop.number, spi_in, with_dh=False),)),
                *ts_payloads(remote_ts, local_ts),
            ]
        except IkeError as e:
            child_error = e
    if child is None and child_error is not None and sa_p is not None:
        payloads.append(Notify(child_error.notify))
    sa.respond(ExchangeType.IKE_AUTH, mid, payloads)
    _established(sa, now)
    if child is not None:
        sa.adopt(child)
    elif child_error is not None:
        sa.emit(ChildSaFailed(sa.sa_id, child_error.notify, child_error.reason))
