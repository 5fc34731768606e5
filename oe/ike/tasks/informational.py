"""INFORMATIONAL (RFC 7296 section 1.4): DELETE of CHILD SAs and of the IKE SA, and the empty
request that checks liveness. Imports only the IKE SA core: the other tasks start these."""

from __future__ import annotations

from oe.ike.constants import ExchangeType, ProtocolId
from oe.ike.ike_sa import Child, IkeSa
from oe.ike.message import Delete, Message


class DeleteChildren:
    """INFORMATIONAL { D(ESP, SPI...) } -->  <-- { D(ESP, SPI...) }: CHILD SAs of ours."""

    def __init__(self, children: list[Child]) -> None:
        self.children = children
        self.live: list[Child] = []

    def build_i(self, sa: IkeSa, now: float) -> None:
        self.live = [c for c in self.children if c in sa.children]
        if not self.live:
            return sa.request_done(now)
        spis = tuple(c.sa.spi_in.to_bytes(4, "big") for c in self.live)
        sa.send_request(self, ExchangeType.INFORMATIONAL, [Delete(ProtocolId.ESP, spis)], now)

    def process_i(self, sa: IkeSa, msg: Message, now: float) -> None:
        for c in self.live:
            if c in sa.children:
                sa.child_gone(c, "deleted by us")


class DeleteRefused:
    """INFORMATIONAL { D(ESP, SPI) } -->: a CHILD SA the peer made but we refused (section
    2.9: selectors we cannot accept); nothing of it is kept, so the answer changes nothing."""

    def __init__(self, spi_in: bytes) -> None:
        self.spi_in = spi_in

    def build_i(self, sa: IkeSa, now: float) -> None:
        sa.send_request(self, ExchangeType.INFORMATIONAL,
                        [Delete(ProtocolId.ESP, (self.spi_in,))], now)

    def process_i(self, sa: IkeSa, msg: Message, now: float) -> None:
        pass


class DeleteIke:
    """INFORMATIONAL { D(IKE) } -->: the IKE SA and its CHILD SAs go when it is answered (or
    only the old IKE SA, after a rekey, section 2.18)."""

    def build_i(self, sa: IkeSa, now: float) -> None:
        sa.send_request(self, ExchangeType.INFORMATIONAL, [Delete(ProtocolId.IKE, ())], now)

    def process_i(self, sa: IkeSa, msg: Message, now: float) -> None:
        sa.delete_local("deleted by us")


class Liveness:
    """INFORMATIONAL { } -->  (section 1.4: an empty request; no answer means dead)"""

    def build_i(self, sa: IkeSa, now: float) -> None:
        sa.send_request(self, ExchangeType.INFORMATIONAL, [], now)

    def process_i(self, sa: IkeSa, msg: Message, now: float) -> None:
        pass


def process_r(sa: IkeSa, msg: Message, now: float) -> None:
    """INFORMATIONAL { [D(...)], [N(...)] } --> answered"""
    mid = msg.message_id
    deletes = msg.get(Delete)
    if any(d.protocol == ProtocolId.IKE for d in deletes):
        # section 1.4.1: answer with an empty message, then the IKE SA and its children go
        sa.respond(ExchangeType.INFORMATIONAL, mid, [])
        return sa.delete_local("deleted by peer")
    ours: list[bytes] = []
    for d in deletes:
        if d.protocol != ProtocolId.ESP:
            continue
        for spi in d.spis:
            child = sa.find_child(spi_out=int.from_bytes(spi, "big"))
            if child is None:
                # already gone (both sides deleted at once, 1.4.1), or made by our
                # CREATE_CHILD_SA whose answer we have not seen yet: remember it
                if sa.request is not None:
                    sa.early_deletes.add(int.from_bytes(spi, "big"))
                continue
            ours.append(child.sa.spi_in.to_bytes(4, "big"))
            sa.child_gone(child, "deleted by peer")
    sa.respond(ExchangeType.INFORMATIONAL, mid,
               [Delete(ProtocolId.ESP, tuple(ours))] if ours else [])
