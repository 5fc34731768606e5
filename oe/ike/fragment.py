"""IKE message fragmentation (RFC 7383): the Encrypted Fragment payload, splitting, reassembly.

An IKE_AUTH with a 4096-bit key, certificates or many selectors is larger than a 1280 path; IP
fragments of it are what middleboxes drop (RFC 7383 1). Instead the inner payloads of the SK
payload are cut into chunks, and each chunk is encrypted on its own in an Encrypted Fragment
payload (SKF, type 53; RFC 7383 2.5):

    next payload (first inner type in fragment 1, else 0) | flags | length |
    Fragment Number | Total Fragments | IV | encrypted chunk, padding, pad length | ICV

The IKE header and the whole 8-byte SKF header are the associated data (RFC 7383 2.5.3), so
`SkCipher.open(datagram, 36, len - 36)` of oe.ike.crypto checks and decrypts a fragment as it
is, and `SkCipher.seal(..., fragment=(number, total))` seals one: `split_message` is given
that as its `Seal` callable. oe.ike.ike_sa sends and reassembles with this module.

Matched to strongSwan's charon (src/libcharon/encoding/message.c, sa/ike_sa.c):

- charon fragments only when both sent IKEV2_FRAGMENTATION_SUPPORTED in IKE_SA_INIT
  (sa/ikev2/tasks/ike_init.c) and the message does not fit `fragment_size`, the whole IP
  datagram, default 1280 for IPv4 and IPv6 (`charon.fragment_size`); from it it takes 20/40
  (IP), 8 (UDP), 4 (non-ESP marker, on 4500), 28 (IKE header), IV, ICV, 8 (SKF header), rounds
  down to the cipher's block (1 for AES-GCM) and takes 1 for the pad length: `chunk_size` does
  the same, so both ends cut at the same size;
- chunks are equal but the last; fragment 1 carries the first inner type, the others 0 (a
  non-zero one is ignored, not refused);
- it accepts at most 255 fragments and 10000 bytes of reassembled message
  (`charon.max_packet`), drops duplicates, restarts reassembly when Total Fragments grows and
  silently drops fragments with a smaller Total Fragments (RFC 7383 2.6), and refuses Fragment
  Number 0 or above Total Fragments.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Hashable

from oe.ike.constants import HEADER_LEN, PayloadType
from oe.ike.errors import ParseError
from oe.ike.message import EncryptedFragment, Header, parse_message

SKF_HEADER_LEN = 8
"""Generic payload header (4) + Fragment Number (2) + Total Fragments (2), RFC 7383 2.5."""
FRAGMENT_SIZE = 1280
"""charon's default `fragment_size`: the whole IP datagram of a fragment."""
MIN_FRAGMENT_SIZE = 576
"""The smallest `fragment_size` oe takes: the IPv4 datagram every host accepts (RFC 791), where
RFC 7383 2.5.1 lets IPv4 senders start; below it a 10000-byte message needs more fragments
than a peer accepts."""
MAX_FRAGMENTS = 255
MAX_MESSAGE = 10000
"""Reassembly limits, charon's (MAX_FRAGMENTS in message.c, PACKET_MAX_DEFAULT)."""
REASSEMBLY_TIMEOUT = 30.0
"""An incomplete message is forgotten after this (RFC 7383 2.6 leaves it to the receiver; the
sender's retransmissions resend every fragment well within it)."""

Seal = Callable[[bytes, int, int, int, bytes], bytes]
"""seal(ike_header, next_payload, number, total, chunk) -> the whole datagram: the header with
next payload SKF and the length set, and the SKF payload (RFC 7383 2.5.3)."""


@dataclass(frozen=True)
class Geometry:
    """What the SK cipher adds around a chunk: oe.ike.crypto.SkCipher's IV, ICV and block."""

    iv: int
    icv: int
    block: int

    @classmethod
    def of(cls, cipher) -> "Geometry":
        """From an SkCipher: AES-GCM has an 8-byte IV and no padding (RFC 5282 3), AES-CBC a
        16-byte IV and 16-byte blocks (RFC 3602)."""
        return cls(8, cipher.icv_len, 1) if cipher.is_aead else cls(16, cipher.icv_len, 16)


def chunk_size(geometry: Geometry, family: int, nat_t: bool,
               fragment_size: int = FRAGMENT_SIZE) -> int:
    """The most inner-payload bytes one fragment carries so that its IP datagram is at most
    fragment_size (RFC 7383 2.5.1; the same sums as charon's message.c)."""
    room = fragment_size - (20 if family == 4 else 40) - 8 - (4 if nat_t else 0) - HEADER_LEN
    room -= geometry.iv + geometry.icv + SKF_HEADER_LEN
    room -= room % geometry.block
    return max(1, room - 1)


def datagram_size(message_len: int, family: int, nat_t: bool) -> int:
    """The IP datagram an IKE message of message_len bytes travels in."""
    return message_len + (20 if family == 4 else 40) + 8 + (4 if nat_t else 0)


def split_message(header: Header, first: int, inner: bytes, chunk: int, seal: Seal) -> list[bytes]:
    """The fragments of one message: `inner` (its encoded inner payload chain, whose first
    type is `first`) cut into chunks of `chunk` bytes, each sealed with the same header
    (message ID, flags) and its number (RFC 7383 2.5)."""
    if chunk < 1:
        raise ValueError("chunk size must be positive")
    chunks = [inner[i:i + chunk] for i in range(0, len(inner), chunk)] or [b""]
    total = len(chunks)
    if total > MAX_FRAGMENTS:
        raise ValueError(f"{total} fragments: more than the {MAX_FRAGMENTS} a peer accepts")
    head = header.encode()
    return [seal(head, first if n == 1 else PayloadType.NONE, n, total, c)
            for n, c in enumerate(chunks, 1)]


@dataclass(frozen=True)
class Fragment:
    """One received SKF, still encrypted: the cleartext fields and where its body starts."""

    header: Header
    next_payload: int
    number: int
    total: int

    @classmethod
    def of(cls, header: Header, skf: EncryptedFragment) -> "Fragment":
        """A parsed SKF payload's numbers; a first payload type named by a fragment other
        than the first reads as none (charon ignores it)."""
        return cls(header, skf.first if skf.number == 1 else PayloadType.NONE, skf.number,
                   skf.total)


def parse_fragment(data: bytes) -> Fragment:
    """Read the IKE header and the SKF header of a datagram whose first payload is SKF.
    Raises ParseError for anything else, or Fragment Number 0 or above Total Fragments (as
    charon's frag_verify). The SKF must be the only payload: oe sends no unprotected payload
    before it, nor does charon in IKE_AUTH or later."""
    header, msg = parse_message(data)
    skf = msg.payloads[0] if len(msg.payloads) == 1 else None
    if not isinstance(skf, EncryptedFragment):
        raise ParseError("not an Encrypted Fragment message")
    if not 1 <= skf.number <= skf.total:
        raise ParseError(f"fragment {skf.number} of {skf.total}")
    return Fragment.of(header, skf)


def open_fragment(data: bytes, cipher) -> tuple[Fragment, bytes]:
    """Parse and decrypt one fragment with the IKE SA's inbound SkCipher: every fragment is
    authenticated before it is kept (RFC 7383 2.6). Raises ParseError or IntegrityError."""
    fragment = parse_fragment(data)
    start = HEADER_LEN + SKF_HEADER_LEN
    return fragment, cipher.open(data, start, len(data) - start)


@dataclass
class Counters:
    duplicates: int = 0
    out_of_range: int = 0
    stale: int = 0
    """A smaller Total Fragments than the message being reassembled (RFC 7383 2.6)."""
    restarted: int = 0
    """A larger Total Fragments: the sender cut smaller (RFC 7383 2.6), reassembly anew."""
    too_large: int = 0
    timed_out: int = 0
    completed: int = 0


@dataclass
class _Partial:
    total: int
    started: float
    chunks: dict[int, bytes] = field(default_factory=dict)
    first: int = PayloadType.NONE
    size: int = 0


@dataclass
class Reassembler:
    """Authenticated fragments in, whole inner payload chains out; one per IKE SA.

    `key` tells apart the messages being reassembled at once (the caller's choice, e.g.
    (message ID, is response)); at most `max_messages` are kept, the oldest dropped first.
    Nothing here raises: bad fragments are dropped and counted.
    """

    max_fragments: int = MAX_FRAGMENTS
    max_bytes: int = MAX_MESSAGE
    timeout: float = REASSEMBLY_TIMEOUT
    max_messages: int = 2
    counters: Counters = field(default_factory=Counters)
    _partial: dict[Hashable, _Partial] = field(default_factory=dict)

    def add(self, now: float, key: Hashable, fragment: Fragment,
            chunk: bytes) -> tuple[int, bytes] | None:
        """Keep one decrypted chunk; returns (first payload type, inner chain) once every
        fragment of the message is in, else None."""
        self.expire(now)
        if fragment.total > self.max_fragments or not 1 <= fragment.number <= fragment.total:
            self.counters.out_of_range += 1
            return None
        partial = self._partial.get(key)
        if partial is not None and fragment.total < partial.total:
            self.counters.stale += 1
            return None
        if partial is not None and fragment.total > partial.total:
            self.counters.restarted += 1
            partial = None
        if partial is None:
            while len(self._partial) >= self.max_messages:
                self._partial.pop(next(iter(self._partial)))
            partial = self._partial[key] = _Partial(fragment.total, now)
        if fragment.number in partial.chunks:
            self.counters.duplicates += 1
            return None
        if partial.size + len(chunk) > self.max_bytes:
            self.counters.too_large += 1
            del self._partial[key]
            return None
        partial.chunks[fragment.number] = chunk
        partial.size += len(chunk)
        if fragment.number == 1:
            partial.first = fragment.next_payload
        if len(partial.chunks) < partial.total:
            return None
        del self._partial[key]
        self.counters.completed += 1
        return partial.first, b"".join(partial.chunks[n] for n in range(1, partial.total + 1))

    def expire(self, now: float) -> None:
        """Forget messages that stayed incomplete for longer than the timeout."""
        for key in [k for k, p in self._partial.items() if now - p.started > self.timeout]:
            del self._partial[key]
            self.counters.timed_out += 1

    def next_timer(self) -> float | None:
        """When the oldest incomplete message times out; None if there is none."""
        return min((p.started + self.timeout for p in self._partial.values()), default=None)
