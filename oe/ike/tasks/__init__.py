"""The exchanges of IKEv2 (RFC 7296), one module each, in the spirit of strongSwan's
sa/ikev2/tasks: ``ike_init``, ``ike_auth``, ``child_create`` (also the CHILD SA rekey),
``ike_rekey`` and ``informational`` (DELETE, liveness), over the helpers in ``common``.

An exchange we start is a task object (its scratch state, ``build_i`` and ``process_i``),
run by the IKE SA's queue (oe.ike.ike_sa). A request of the peer's reaches ``RESPONDERS``
only after ``oe.ike.ike_sa.ACCEPT`` took it; each responder half is one function,
``process_r``, that answers with ``IkeSa.respond`` (strongSwan's process_r and build_r in
one, as the answer is made of what processing found; IKE_SA_INIT's keeps them apart, since
the engine asks its admission hook in between).
Tasks import the IKE SA core and ``common``; the ones that end in a DELETE also import
``informational``, which imports no task.
"""

from __future__ import annotations

from oe.ike.constants import ExchangeType, NotifyType, ProtocolId
from oe.ike.ike_sa import IkeSa, Responder, State
from oe.ike.message import KE, SA, TS, Message, Nonce, Notify
from oe.ike.tasks import child_create, ike_auth, ike_rekey, informational


def _create_child_sa_r(sa: IkeSa, msg: Message, now: float) -> None:
    """CREATE_CHILD_SA request: the IKE SA's rekey (an IKE proposal, no TS: section 1.3.2) or
    a CHILD SA's creation or rekey."""
    sa_p, nonce, ke = msg.first(SA), msg.first(Nonce), msg.first(KE)
    if sa_p is None or nonce is None:
        return sa.respond(ExchangeType.CREATE_CHILD_SA, msg.message_id,
                          [Notify(NotifyType.INVALID_SYNTAX)])
    if sa.state != State.ESTABLISHED:
        # section 2.25: a rekeyed or deleting IKE SA takes no new SAs
        return sa.respond(ExchangeType.CREATE_CHILD_SA, msg.message_id,
                          [Notify(NotifyType.TEMPORARY_FAILURE)])
    if any(p.protocol == ProtocolId.IKE for p in sa_p.proposals) and not msg.get(TS):
        return ike_rekey.process_r(sa, msg, sa_p, nonce, ke, now)
    child_create.process_r(sa, msg, sa_p, nonce, ke, now)


RESPONDERS: dict[int, Responder] = {
    ExchangeType.IKE_AUTH: ike_auth.process_r,
    ExchangeType.CREATE_CHILD_SA: _create_child_sa_r,
    ExchangeType.INFORMATIONAL: informational.process_r,
}
"""The responder half of each exchange that ``ACCEPT`` lets through as a request."""
