"""The IKE error tree: every error carries the RFC 7296 notify type it maps to."""

from __future__ import annotations

from oe.errors import OeError
from oe.ike.constants import NotifyType, notify_name


class IkeError(OeError):
    """An IKE negotiation failed; ``notify`` is the notify type to send or that was received."""

    def __init__(self, notify: int, reason: str, data: bytes = b"") -> None:
        super().__init__(f"{notify_name(notify)}: {reason}")
        self.notify = notify
        self.reason = reason
        self.data = data


class ParseError(IkeError):
    """A message from the peer is malformed (answered with INVALID_SYNTAX)."""

    def __init__(self, reason: str) -> None:
        super().__init__(NotifyType.INVALID_SYNTAX, reason)


class UnsupportedCriticalPayload(IkeError):
    """The peer marked a payload we do not know as critical (RFC 7296 section 2.5)."""

    def __init__(self, payload_type: int) -> None:
        super().__init__(
            NotifyType.UNSUPPORTED_CRITICAL_PAYLOAD,
            f"unknown critical payload {payload_type}",
            bytes([payload_type]),
        )


class IntegrityError(Exception):
    """The SK payload failed its integrity check or decryption; the message is dropped."""


class LocalProtocolError(OeError):
    """The caller used the engine wrongly (unknown SA, exchange in the wrong state)."""
