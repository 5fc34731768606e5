"""What more than one exchange needs, written once: KE checks, key derivation, selectors and
their narrowing, and CHILD SA keys. Imports the IKE SA core and nothing above it."""

from __future__ import annotations

from typing import Protocol

from oe.ike.childpolicy import AuthenticatedSa, AwaitingDns, Refuse, Wait, host_to_host
from oe.ike.constants import ERROR_NOTIFY_MAX, EsnId, NotifyType, notify_name
from oe.ike.crypto import DhExchange, Prf, Rng
from oe.ike.errors import IkeError
from oe.ike.events import ChildSa, ChildSaFailed
from oe.ike.ike_sa import Child, IkeSa, requested_ts
from oe.ike.keymat import IkeKeys, child_keymat, derive_ike_keys
from oe.ike.message import ID, KE, TS, Message, Notify
from oe.ike.proposals import Suite
from oe.ike.ts import TrafficSelector

Selectors = tuple[TrafficSelector, ...]


def error_notify(msg: Message) -> Notify | None:
    """The first error notify of an answer (section 3.10.1: types below 16384)."""
    for p in msg.payloads:
        if isinstance(p, Notify) and p.notify_type <= ERROR_NOTIFY_MAX:
            return p
    return None


def asked_group(notify: Notify) -> int:
    """The DH group an INVALID_KE_PAYLOAD notify asks for (section 3.10.1: two octets)."""
    return int.from_bytes(notify.data[:2], "big")


class KeTask(Protocol):
    """A CREATE_CHILD_SA task that offers a KE of ``group`` (a CHILD SA's PFS, an IKE rekey)."""

    group: int | None

    def build_i(self, sa: IkeSa, now: float) -> None: ...


def error_answer(sa: IkeSa, task: KeTask, msg: Message, suites: list[Suite], now: float,
                 failed: str) -> bool:
    """Whether ``msg`` is an error answer to ``task``'s CREATE_CHILD_SA request, and then
    handled: INVALID_KE_PAYLOAD for a group we offer and did not use sends the request again
    with that group (section 1.3); any other error fails the exchange (ChildSaFailed, with
    ``failed`` in front of the notify's name)."""
    err = error_notify(msg)
    if err is None:
        return False
    if err.notify_type == NotifyType.INVALID_KE_PAYLOAD:
        want = asked_group(err)
        if want != task.group and want in {s.dh for s in suites}:
            task.group = want
            task.build_i(sa, now)
            return True
    sa.emit(ChildSaFailed(sa.sa_id, err.notify_type, f"{failed}{notify_name(err.notify_type)}",
                          *requested_ts(task)))
    return True


def check_ke(ke: KE | None, group: int) -> None:
    """The initiator's KE must be of the chosen group; INVALID_KE_PAYLOAD names the group we
    want (section 1.2)."""
    if ke is None or ke.group != group:
        raise IkeError(NotifyType.INVALID_KE_PAYLOAD, "KEi group mismatch",
                       group.to_bytes(2, "big"))


def respond_ke(suite: Suite, ke: KE | None, rng: Rng) -> tuple[DhExchange | None, bytes]:
    """The responder's half of the DH exchange of the chosen suite: (our DH, g^ir), or (None,
    b"") for a suite without DH (a CHILD SA without PFS)."""
    if not suite.dh:
        return None, b""
    check_ke(ke, suite.dh)
    assert ke is not None
    dh = DhExchange(suite.dh, rng)
    return dh, dh.shared(ke.data)


def complete_ke(dh: DhExchange | None, ke: KE | None, suite: Suite) -> bytes:
    """The initiator's g^ir from the responder's KE, which must match our KE and the chosen
    suite; b"" for a suite without DH."""
    if not suite.dh:
        return b""
    if dh is None or ke is None or ke.group != dh.group or suite.dh != dh.group:
        raise IkeError(NotifyType.INVALID_KE_PAYLOAD, "KEr does not match the proposal")
    return dh.shared(ke.data)


def ike_keys(suite: Suite, seed: bytes, nonce_i: bytes, nonce_r: bytes, spi_i: bytes,
             spi_r: bytes) -> IkeKeys:
    """SK_* of a new IKE SA from its SKEYSEED (sections 2.14, 2.18)."""
    return derive_ike_keys(Prf(suite.prf), seed, nonce_i, nonce_r, spi_i, spi_r, suite.encr,
                           suite.key_bits, suite.integ)


def id_of(msg: Message, initiator: bool) -> ID | None:
    """IDi (``initiator``) or IDr of a message."""
    return next((p for p in msg.get(ID) if p.is_initiator == initiator), None)


def ts_payloads(ts_i: Selectors, ts_r: Selectors) -> list[TS]:
    """TSi, TSr."""
    return [TS(True, tuple(t.to_wire() for t in ts_i)),
            TS(False, tuple(t.to_wire() for t in ts_r))]


def selectors_of(msg: Message, what: str) -> tuple[list[TrafficSelector], ...]:
    """TSi and TSr of a message; TS_UNACCEPTABLE when one lacks."""
    tsi = next((p for p in msg.get(TS) if p.is_initiator), None)
    tsr = next((p for p in msg.get(TS) if not p.is_initiator), None)
    if tsi is None or tsr is None:
        raise IkeError(NotifyType.TS_UNACCEPTABLE, f"{what} lacks TSi or TSr")
    return ([TrafficSelector.from_wire(w) for w in tsi.selectors],
            [TrafficSelector.from_wire(w) for w in tsr.selectors])


def vouched(sa: IkeSa) -> list[TrafficSelector]:
    """One host selector per address the peer's key vouches for (docs/architecture.md
    section 3)."""
    assert sa.peer_key is not None
    return [TrafficSelector(a, a) for a in sorted(sa.peer_key.addresses,
                                                  key=lambda a: (a.version, a))]


def _inside(narrowed: Selectors, offered: Selectors) -> bool:
    """Each selector inside one of the offered ones (section 2.9: narrowing, never widening)."""
    return all(any(t.is_subset_of(o) for o in offered) for t in narrowed)


def check_narrowed(sa: IkeSa, msg: Message, ours_l: Selectors,
                   ours_r: Selectors) -> tuple[Selectors, Selectors]:
    """The responder's TS must lie inside what we offered (section 2.9)."""
    tsi, tsr = selectors_of(msg, "response")
    local, remote = tuple(tsi), tuple(tsr)
    if not _inside(local, ours_l) or not _inside(remote, ours_r):
        raise IkeError(NotifyType.TS_UNACCEPTABLE, "responder widened the traffic selectors")
    vouched_ts = vouched(sa)
    if not all(any(t.is_subset_of(v) for v in vouched_ts) for t in remote):
        raise IkeError(NotifyType.TS_UNACCEPTABLE,
                       "responder's key does not vouch for its traffic selectors")
    return local, remote


def narrow_as_responder(sa: IkeSa, msg: Message) -> tuple[Selectors, Selectors]:
    """(local, remote) selectors of the CHILD SA the peer asks for, as the user's
    child_policy narrows them (docs/gateway.md 4.1; without one: host to host between the
    addresses the peer's key vouches for and us). Raises AwaitingDns when the decision needs
    a lookup first, IkeError(TS_UNACCEPTABLE) when refused (section 3.10.1)."""
    tsi, tsr = selectors_of(msg, "request")
    assert sa.peer_id is not None and sa.peer_key is not None
    info = AuthenticatedSa(sa.sa_id, sa.local_addr, sa.peer_id, sa.peer_key)
    verdict = (sa.host.child_policy or host_to_host)(info, tuple(tsi), tuple(tsr))
    if isinstance(verdict, Wait):
        raise AwaitingDns(verdict.lookups)
    if isinstance(verdict, Refuse):
        raise IkeError(NotifyType.TS_UNACCEPTABLE, verdict.reason)
    local, remote = verdict.local_ts, verdict.remote_ts
    if not local or not remote:
        raise IkeError(NotifyType.TS_UNACCEPTABLE,
                       "selectors are not host-to-host between us and the peer's key")
    if not _inside(local, tuple(tsr)) or not _inside(remote, tuple(tsi)):
        raise IkeError(NotifyType.TS_UNACCEPTABLE, "policy widened the traffic selectors")
    return local, remote


def make_child(sa: IkeSa, suite: Suite, spi_in: bytes, spi_out: bytes, nonce_i: bytes,
               nonce_r: bytes, shared: bytes, local_ts: Selectors, remote_ts: Selectors,
               we_initiated: bool) -> Child:
    """KEYMAT = prf+(SK_d, [g^ir |] Ni | Nr): first the exchange initiator's outbound."""
    assert sa.keys is not None
    ei, ai, er, ar = child_keymat(sa.keys.prf, sa.keys.sk_d, nonce_i, nonce_r, shared,
                                  suite.encr, suite.key_bits, suite.integ)
    if we_initiated:
        key_out, integ_out, key_in, integ_in = ei, ai, er, ar
    else:
        key_out, integ_out, key_in, integ_in = er, ar, ei, ai
    encap = sa.nat_detected
    return Child(ChildSa(
        spi_in=int.from_bytes(spi_in, "big"), spi_out=int.from_bytes(spi_out, "big"),
        encr=suite.encr, key_bits=suite.key_bits, integ=suite.integ,
        esn=suite.esn == EsnId.ESN, key_in=key_in, key_out=key_out, integ_key_in=integ_in,
        integ_key_out=integ_out, local_ts=local_ts, remote_ts=remote_ts,
        local_addr=sa.local_addr, remote_addr=sa.peer_addr, udp_encap=encap,
        local_port=sa.local_port if encap else 0,
        remote_port=sa.peer_port if encap else 0, dh=suite.dh,
    ), suite)
