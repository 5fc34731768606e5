# Included by oe/datapath.pyx (after replay.pxi).
#
# ESP (RFC 4303) with AES-GCM-16 (RFC 4106), tunnel and transport mode, with and without ESN.
#
# Wire format produced and consumed here (the outer IP / UDP headers belong to the kernel):
#
#     SPI(4) | Seq(4) | IV(8) | E(payload | pad 1,2,3.. | padlen(1) | next header(1)) | ICV(16)
#
# Keys: KEYMAT is key || salt(4) (RFC 4106 8.1). Nonce = salt || IV. IV = the 64-bit sequence
# number, which never repeats under one key (RFC 4106 3.1 allows a counter). AAD = SPI || Seq, or
# SPI || Seq-high || Seq-low with ESN (RFC 4106 5).
#
# OpenSSL 3: the cipher is fetched once per process; each SA keeps
# one pre-keyed EVP_CIPHER_CTX per thread that uses it (CTX_API: Python callers, under the GIL;
# CTX_LOOP: the loop thread that owns the SA's direction); per packet only the IV is reset.

from libc.stdint cimport int64_t

from oe.errors import OeError

cdef extern from "openssl/evp.h" nogil:
    ctypedef struct EVP_CIPHER:
        pass
    ctypedef struct EVP_CIPHER_CTX:
        pass
    EVP_CIPHER *EVP_CIPHER_fetch(void *libctx, const char *algorithm, const char *properties)
    EVP_CIPHER_CTX *EVP_CIPHER_CTX_new()
    void EVP_CIPHER_CTX_free(EVP_CIPHER_CTX *ctx)
    int EVP_EncryptInit_ex(EVP_CIPHER_CTX *ctx, const EVP_CIPHER *cipher, void *impl,
                           const unsigned char *key, const unsigned char *iv)
    int EVP_DecryptInit_ex(EVP_CIPHER_CTX *ctx, const EVP_CIPHER *cipher, void *impl,
                           const unsigned char *key, const unsigned char *iv)
    int EVP_EncryptUpdate(EVP_CIPHER_CTX *ctx, unsigned char *out, int *outl,
                          const unsigned char *inp, int inl)
    int EVP_DecryptUpdate(EVP_CIPHER_CTX *ctx, unsigned char *out, int *outl,
                          const unsigned char *inp, int inl)
    int EVP_EncryptFinal_ex(EVP_CIPHER_CTX *ctx, unsigned char *out, int *outl)
    int EVP_DecryptFinal_ex(EVP_CIPHER_CTX *ctx, unsigned char *out, int *outl)
    int EVP_CIPHER_CTX_ctrl(EVP_CIPHER_CTX *ctx, int type, int arg, void *ptr)
    enum:
        EVP_CTRL_GCM_GET_TAG
        EVP_CTRL_GCM_SET_TAG

cdef extern from "<sys/eventfd.h>" nogil:
    int eventfd(unsigned int initval, int flags)
    enum:
        EFD_NONBLOCK
        EFD_CLOEXEC

cdef extern from "<unistd.h>" nogil:
    ssize_t esp_sys_read "read"(int fd, void *buf, size_t count)
    ssize_t esp_sys_write "write"(int fd, const void *buf, size_t count)
    int esp_sys_close "close"(int fd)


# ---------------------------------------------------------------- specification constants

cdef enum:
    ESP_HDR = 8                 # SPI + Seq (RFC 4303 2)
    ESP_IV = 8                  # RFC 4106 3.1
    ESP_ICV = 16                # AES-GCM-16: ENCR_AES_GCM_16
    ESP_TRAILER = 2             # Pad Length + Next Header
    ESP_MIN = ESP_HDR + ESP_IV + 4 + ESP_ICV   # smallest ciphertext: aligned trailer
    NH_IPV4 = 4                 # IP-in-IP: tunnel mode, IPv4 inner
    NH_IPV6 = 41
    NH_NONE = 59                # RFC 4303 2.6: dummy packet, discard
    PROTO_ICMP = 1
    PROTO_TCP = 6
    PROTO_UDP = 17
    PROTO_ICMPV6 = 58

# ----------------------------------------------------------- implementation constants

cdef enum:
    DIR_IN = 0
    DIR_OUT = 1
    ENCAP_UDP = 0               # ESP-in-UDP, RFC 3948
    ENCAP_RAW = 1               # IP protocol 50
    CTX_API = 0
    CTX_LOOP = 1
    NCTX = 2
    SEQ_SOFT_32 = 0xFF000000    # ask for a rekey well before a 32-bit sequence number wraps
    FIRED_SOFT = 1
    FIRED_HARD = 2
    PENDING_REPLAY = 1          # coalesce failure events: one queued at a time per SA
    PENDING_AUTH = 2
    PENDING_SOFT = 4            # a lifetime event read_events() has yet to collect
    PENDING_HARD = 8
    EV_CAP = 4096               # events buffered for the control plane
    EV_IKE_CAP = EV_CAP // 2    # IKE-on-4500 (spoofable) never fills the queue for acquires

# Return codes of esp_seal / esp_open (negative) and reasons in events.
cdef enum:
    R_OK = 0
    R_MALFORMED = 1
    R_REPLAY = 2
    R_AUTH = 3
    R_PADDING = 4
    R_POLICY = 5
    R_EXPIRED = 6
    R_SEQUENCE = 7
    R_BYTES = 8
    R_PACKETS = 9
    R_TIME = 10
    R_TOOBIG = 11
    R_CRYPTO = 12
    R_UNKNOWN_SPI = 13
    R_DUMMY = 14

REASONS = {
    R_MALFORMED: "malformed", R_REPLAY: "replay", R_AUTH: "authentication", R_PADDING: "padding",
    R_POLICY: "policy", R_EXPIRED: "expired", R_SEQUENCE: "sequence", R_BYTES: "bytes",
    R_PACKETS: "packets", R_TIME: "time", R_TOOBIG: "too big", R_CRYPTO: "crypto",
    R_UNKNOWN_SPI: "unknown SPI", R_DUMMY: "dummy packet",
}

cdef enum:
    EV_ACQUIRE = 1
    EV_SOFT = 2
    EV_HARD = 3
    EV_REPLAY = 4
    EV_AUTH = 5
    EV_IKE = 6


cdef struct EspSa:
    uint32_t handle             # the table key: the SPI inbound, a local number outbound
    uint32_t spi
    uint8_t direction
    uint8_t tunnel
    uint8_t esn
    uint8_t encap
    uint8_t family              # outer: 4 or 6
    uint8_t local[16]
    uint8_t peer[16]
    uint16_t local_port
    uint16_t peer_port
    uint8_t salt[4]
    EVP_CIPHER_CTX *ctx[2]      # [CTX_API], [CTX_LOOP]
    uint64_t seq                # outbound: last sequence number used
    ReplayWin replay            # inbound
    # Traffic selectors the inner packet must match (inbound: RFC 4322 12.1 ingress filter).
    uint8_t ts_version
    uint8_t ts_src_lo[16]       # address ranges, first and last (RFC 7296 3.13.1)
    uint8_t ts_src_hi[16]
    uint8_t ts_dst_lo[16]
    uint8_t ts_dst_hi[16]
    uint8_t ts_proto
    uint16_t ts_sport_lo
    uint16_t ts_sport_hi
    uint16_t ts_dport_lo
    uint16_t ts_dport_hi
    # Lifetimes (0: none). Times are absolute CLOCK_MONOTONIC deadlines.
    uint64_t soft_bytes
    uint64_t hard_bytes
    uint64_t soft_packets
    uint64_t hard_packets
    double soft_time
    double hard_time
    uint32_t mtu                # largest inner packet that fits the path (outbound)
    uint64_t packets
    uint64_t nbytes
    uint64_t err_replay
    uint64_t err_auth
    uint64_t err_policy
    uint64_t err_malformed
    uint64_t err_expired
    uint32_t fired              # FIRED_* (atomic)
    uint32_t pending            # PENDING_* (atomic)
    uint8_t soft_reason         # R_* of the soft / hard event, written before its PENDING_ bit
    uint8_t hard_reason


cdef struct DpEvent:
    uint8_t kind
    uint8_t version
    uint8_t proto
    uint8_t reason
    uint8_t direction
    uint16_t sport
    uint16_t dport
    uint32_t spi
    uint32_t handle
    uint8_t src[16]
    uint8_t dst[16]
    uint64_t count
    uint8_t *data               # EV_IKE: malloc'd message, owned by the event
    uint32_t length


cdef struct SaTable:
    EspSa **slots               # open addressing on the handle, NULL = empty
    uint32_t cap                # a power of two
    uint32_t count


# ---------------------------------------------------------------------- global counters

cdef enum:
    C_TUN_READ = 0
    C_NO_POLICY
    C_DROPPED
    C_REJECTED
    C_PASSED
    C_HELD
    C_HOLD_OVERFLOW
    C_HOLD_DISCARDED
    C_HOLD_RELEASED
    C_ACQUIRES
    C_NO_SA
    C_ESP_OUT
    C_ESP_IN
    C_UNKNOWN_SPI
    C_MALFORMED
    C_REPLAY
    C_AUTH
    C_PADDING
    C_POLICY
    C_EXPIRED
    C_KEEPALIVES
    C_IKE
    C_TUN_WRITE
    C_TOO_BIG
    C_MSS_CLAMPED
    C_SEND_ERRORS
    C_LOST_ACQUIRE
    C_LOST_IKE
    C_LOST_REPLAY
    C_LOST_AUTH
    C_DUMMY
    C_HOLDS_EVICTED
    C_SA_REFUSED
    NCOUNTERS

COUNTER_NAMES = (
    "tun_read", "no_policy", "dropped", "rejected", "passed", "held", "hold_overflow",
    "hold_discarded", "hold_released", "acquires", "no_sa", "esp_out", "esp_in", "unknown_spi",
    "malformed", "replay", "authentication", "padding", "policy", "expired", "keepalives", "ike",
    "tun_write", "too_big", "mss_clamped", "send_errors", "events_lost_acquire",
    "events_lost_ike", "events_lost_replay", "events_lost_auth", "dummy", "holds_evicted",
    "sa_refused",
)


cdef const EVP_CIPHER *_aes128gcm = NULL
cdef const EVP_CIPHER *_aes256gcm = NULL


cdef int _fetch_ciphers() except -1:
    global _aes128gcm, _aes256gcm
    if _aes128gcm == NULL:
        _aes128gcm = EVP_CIPHER_fetch(NULL, b"AES-128-GCM", NULL)
        _aes256gcm = EVP_CIPHER_fetch(NULL, b"AES-256-GCM", NULL)
        if _aes128gcm == NULL or _aes256gcm == NULL:
            raise EspError("OpenSSL has no AES-GCM")
    return 0


class EspError(OeError):
    """An ESP packet was refused or could not be built; .reason says why."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


# --------------------------------------------------------------------------- SA tables

cdef EspSa *sa_find(const SaTable *t, uint32_t handle) noexcept nogil:
    cdef uint32_t i
    cdef EspSa *sa
    if t.cap == 0:
        return NULL
    i = (handle * 2654435761u) & (t.cap - 1)
    while True:
        sa = t.slots[i]
        if sa == NULL or sa.handle == handle:
            return sa
        i = (i + 1) & (t.cap - 1)


cdef int sa_table_put(SaTable *t, EspSa *sa) noexcept nogil:
    """Insert an SA whose handle is not in the table. -1: no memory."""
    cdef EspSa **old_slots
    cdef uint32_t old_cap, i, j
    if (t.count + 1) * 2 > t.cap:
        old_slots = t.slots
        old_cap = t.cap
        t.cap = 16 if t.cap == 0 else t.cap * 2
        t.slots = <EspSa **>calloc(t.cap, sizeof(EspSa *))
        if t.slots == NULL:
            t.slots = old_slots
            t.cap = old_cap
            return -1
        t.count = 0
        for i in range(old_cap):
            if old_slots[i] != NULL:
                _sa_table_insert(t, old_slots[i])
        free(old_slots)
    _sa_table_insert(t, sa)
    return 0


cdef void _sa_table_insert(SaTable *t, EspSa *sa) noexcept nogil:
    cdef uint32_t i = (sa.handle * 2654435761u) & (t.cap - 1)
    while t.slots[i] != NULL:
        i = (i + 1) & (t.cap - 1)
    t.slots[i] = sa
    t.count += 1


cdef EspSa *sa_table_remove(SaTable *t, uint32_t handle) noexcept nogil:
    """Take the SA out (backward-shift deletion keeps probing chains intact)."""
    cdef uint32_t i, j, home
    cdef EspSa *found
    if t.cap == 0:
        return NULL
    i = (handle * 2654435761u) & (t.cap - 1)
    while True:
        if t.slots[i] == NULL:
            return NULL
        if t.slots[i].handle == handle:
            break
        i = (i + 1) & (t.cap - 1)
    found = t.slots[i]
    t.slots[i] = NULL
    t.count -= 1
    j = i
    while True:
        j = (j + 1) & (t.cap - 1)
        if t.slots[j] == NULL:
            break
        home = (t.slots[j].handle * 2654435761u) & (t.cap - 1)
        # Move slot j back to the hole at i unless its home lies cyclically in (i, j].
        if (j > i and (home <= i or home > j)) or (j < i and (home <= i and home > j)):
            t.slots[i] = t.slots[j]
            t.slots[j] = NULL
            i = j
    return found


cdef void sa_free(EspSa *sa) noexcept nogil:
    cdef int k
    if sa == NULL:
        return
    for k in range(NCTX):
        if sa.ctx[k] != NULL:
            EVP_CIPHER_CTX_free(sa.ctx[k])
    replay_free(&sa.replay)
    free(sa)


# ----------------------------------------------------------------------------- helpers

cdef struct PktInfo:
    int version
    int hlen                    # bytes of IP header (IPv6: fixed header only)
    int l4off                   # where the transport header starts (after a Fragment header)
    int proto                   # IPv4 protocol / IPv6 next header (after the fixed header)
    int sport
    int dport
    int total                   # length the header claims
    bint first_fragment         # carries the transport header (ports valid)
    bint df                     # IPv4 Don't Fragment
    const uint8_t *src
    const uint8_t *dst


cdef int parse_ip(const uint8_t *p, size_t n, PktInfo *info) noexcept nogil:
    """Fill `info` from an IP packet; -1 if it is not a well-formed IPv4/IPv6 packet."""
    cdef int off
    if n < 20:
        return -1
    info.version = p[0] >> 4
    info.sport = 0
    info.dport = 0
    if info.version == 4:
        info.hlen = (p[0] & 0x0F) * 4
        info.total = oe_rd16(p + 2)
        if info.hlen < 20 or info.total < info.hlen or <size_t>info.total > n:
            return -1
        info.proto = p[9]
        info.df = (p[6] & 0x40) != 0
        info.first_fragment = (oe_rd16(p + 6) & 0x1FFF) == 0
        info.src = p + 12
        info.dst = p + 16
        off = info.hlen
    elif info.version == 6:
        if n < 40:
            return -1
        info.hlen = 40
        info.total = 40 + oe_rd16(p + 4)
        if <size_t>info.total > n:
            return -1
        info.proto = p[6]
        info.df = True          # IPv6 routers never fragment (RFC 8200 5)
        info.first_fragment = True
        info.src = p + 8
        info.dst = p + 24
        off = 40
        if info.proto == 44:    # Fragment header: ports only in the first fragment
            if info.total < 48:
                return -1
            info.first_fragment = (oe_rd16(p + 42) & 0xFFF8) == 0
            info.proto = p[40]
            off = 48
    else:
        return -1
    info.l4off = off
    if info.first_fragment and (info.proto == PROTO_TCP or info.proto == PROTO_UDP
                                or info.proto == 132) and info.total >= off + 4:
        info.sport = oe_rd16(p + off)
        info.dport = oe_rd16(p + off + 2)
    return 0


# ------------------------------------------------------------------------------ AEAD

cdef int aead_seal(EVP_CIPHER_CTX *ctx, const uint8_t *nonce, const uint8_t *aad, int aadlen,
                   uint8_t *data, int n, uint8_t *tag) noexcept nogil:
    """Encrypt `data` in place on a pre-keyed context (only the IV is set); 0 or -R_CRYPTO."""
    cdef int outl
    if EVP_EncryptInit_ex(ctx, NULL, NULL, NULL, nonce) != 1:
        return -R_CRYPTO
    if aadlen and EVP_EncryptUpdate(ctx, NULL, &outl, aad, aadlen) != 1:
        return -R_CRYPTO
    if EVP_EncryptUpdate(ctx, data, &outl, data, n) != 1:
        return -R_CRYPTO
    if EVP_EncryptFinal_ex(ctx, data + outl, &outl) != 1:
        return -R_CRYPTO
    if EVP_CIPHER_CTX_ctrl(ctx, EVP_CTRL_GCM_GET_TAG, ESP_ICV, tag) != 1:
        return -R_CRYPTO
    return 0


cdef int aead_open(EVP_CIPHER_CTX *ctx, const uint8_t *nonce, const uint8_t *aad, int aadlen,
                   const uint8_t *data, int n, const uint8_t *tag, uint8_t *out) noexcept nogil:
    """Decrypt into `out` and verify the ICV; 0, -R_AUTH or -R_CRYPTO."""
    cdef int outl
    if EVP_DecryptInit_ex(ctx, NULL, NULL, NULL, nonce) != 1:
        return -R_CRYPTO
    if aadlen and EVP_DecryptUpdate(ctx, NULL, &outl, aad, aadlen) != 1:
        return -R_CRYPTO
    if EVP_DecryptUpdate(ctx, out, &outl, data, n) != 1:
        return -R_CRYPTO
    if EVP_CIPHER_CTX_ctrl(ctx, EVP_CTRL_GCM_SET_TAG, ESP_ICV, <void *>tag) != 1:
        return -R_CRYPTO
    if EVP_DecryptFinal_ex(ctx, out + outl, &outl) <= 0:
        return -R_AUTH
    return 0


cdef EVP_CIPHER_CTX *aead_context(bytes keymat, bint encrypt) except NULL:
    """A context keyed with KEYMAT minus its 4-byte salt (RFC 4106 8.1)."""
    cdef const EVP_CIPHER *cipher
    cdef EVP_CIPHER_CTX *ctx
    cdef int ok
    _fetch_ciphers()
    if len(keymat) == 20:
        cipher = _aes128gcm
    elif len(keymat) == 36:
        cipher = _aes256gcm
    else:
        raise ValueError("KEYMAT is 20 (AES-128-GCM) or 36 (AES-256-GCM) bytes")
    ctx = EVP_CIPHER_CTX_new()
    if ctx == NULL:
        raise MemoryError()
    if encrypt:
        ok = EVP_EncryptInit_ex(ctx, cipher, NULL, <const uint8_t *><const char *>keymat, NULL)
    else:
        ok = EVP_DecryptInit_ex(ctx, cipher, NULL, <const uint8_t *><const char *>keymat, NULL)
    if ok != 1:
        EVP_CIPHER_CTX_free(ctx)
        raise EspError("OpenSSL refused the key")
    return ctx


def gcm_encrypt(bytes keymat, bytes iv, bytes aad, bytes plaintext) -> bytes:
    """RFC 4106 AES-GCM-16 through the datapath's own AEAD code: ciphertext || ICV."""
    if len(iv) != ESP_IV:
        raise ValueError("the IV is 8 bytes")
    cdef EVP_CIPHER_CTX *ctx = aead_context(keymat, True)
    cdef bytearray buf = bytearray(plaintext) + bytearray(ESP_ICV)
    cdef uint8_t[::1] view = buf
    cdef bytes nonce = keymat[len(keymat) - 4:] + iv
    cdef int r = aead_seal(ctx, <const uint8_t *><const char *>nonce,
                           <const uint8_t *><const char *>aad, len(aad), &view[0],
                           len(plaintext), &view[len(plaintext)])
    EVP_CIPHER_CTX_free(ctx)
    if r < 0:
        raise EspError(REASONS[-r])
    return bytes(buf)


def gcm_decrypt(bytes keymat, bytes iv, bytes aad, bytes sealed) -> bytes:
    """The inverse of gcm_encrypt(); EspError("authentication") on a bad ICV."""
    cdef int n = len(sealed) - ESP_ICV
    if n < 0 or len(iv) != ESP_IV:
        raise ValueError("need an 8-byte IV and at least the 16-byte ICV")
    cdef EVP_CIPHER_CTX *ctx = aead_context(keymat, False)
    cdef bytearray out = bytearray(n + 1)
    cdef uint8_t[::1] view = out
    cdef bytes nonce = keymat[len(keymat) - 4:] + iv
    cdef int r = aead_open(ctx, <const uint8_t *><const char *>nonce,
                           <const uint8_t *><const char *>aad, len(aad),
                           <const uint8_t *><const char *>sealed, n,
                           (<const uint8_t *><const char *>sealed) + n, &view[0])
    EVP_CIPHER_CTX_free(ctx)
    if r < 0:
        raise EspError(REASONS[-r])
    return bytes(out[:n])


# -------------------------------------------------------------------------- ESP seal/open

cdef int esp_seal(EspSa *sa, int ctxi, const uint8_t *pkt, size_t n, uint8_t *out, size_t cap,
                  uint64_t *seq_out) noexcept nogil:
    """Encapsulate one IP packet; the ESP length, or -R_* (the packet is not sent)."""
    cdef size_t hl = 0
    cdef int nh, padlen, i
    cdef size_t plen, total
    cdef uint64_t seq
    cdef uint8_t nonce[12]
    cdef uint8_t aad[12]
    cdef EVP_CIPHER_CTX *ctx = sa.ctx[ctxi]
    if n < 20:
        return -R_MALFORMED
    if sa.tunnel:
        nh = NH_IPV4 if (pkt[0] >> 4) == 4 else NH_IPV6
    elif (pkt[0] >> 4) == 4:
        hl = (pkt[0] & 0x0F) * 4
        nh = pkt[9]
    else:
        hl = 40
        nh = pkt[6]
    if hl > n:
        return -R_MALFORMED
    plen = n - hl
    padlen = (4 - ((plen + ESP_TRAILER) & 3)) & 3
    total = ESP_HDR + ESP_IV + plen + padlen + ESP_TRAILER + ESP_ICV
    if total > cap:
        return -R_TOOBIG
    if sa.fired & FIRED_HARD:
        return -R_EXPIRED
    seq = oe_add64(&sa.seq, 1) + 1
    if (not sa.esn and seq > 0xFFFFFFFFu) or seq == 0:
        return -R_SEQUENCE      # RFC 4303 3.3.3: never cycle; the SA must be rekeyed
    oe_wr32(out, sa.spi)
    oe_wr32(out + 4, <uint32_t>seq)
    oe_wr32(out + 8, <uint32_t>(seq >> 32))     # IV = the full sequence number
    oe_wr32(out + 12, <uint32_t>seq)
    memcpy(nonce, sa.salt, 4)
    memcpy(nonce + 4, out + 8, 8)
    memcpy(out + 16, pkt + hl, plen)
    for i in range(padlen):
        out[16 + plen + i] = i + 1            # RFC 4303 2.4: 1, 2, 3, ...
    out[16 + plen + padlen] = padlen
    out[16 + plen + padlen + 1] = nh
    if sa.esn:                                # AAD: SPI | Seq-high | Seq-low (RFC 4106 5)
        memcpy(aad, out, 4)
        oe_wr32(aad + 4, <uint32_t>(seq >> 32))
        memcpy(aad + 8, out + 4, 4)
        i = aead_seal(ctx, nonce, aad, 12, out + 16, <int>(plen + padlen + ESP_TRAILER),
                      out + total - ESP_ICV)
    else:                                     # AAD: SPI | Seq
        i = aead_seal(ctx, nonce, out, 8, out + 16, <int>(plen + padlen + ESP_TRAILER),
                      out + total - ESP_ICV)
    if i < 0:
        return i
    seq_out[0] = seq
    return <int>total


cdef int esp_open(EspSa *sa, int ctxi, const uint8_t *esp, size_t n, uint8_t *out, size_t cap,
                  int *nh_out, uint64_t *seq_out) noexcept nogil:
    """Decapsulate: the payload length written to `out` (next header in nh_out), or -R_*.

    RFC 4303 3.4.3: the window is checked before the ICV and updated only after it.
    """
    cdef uint32_t seql = oe_rd32(esp + 4)
    cdef uint64_t seq
    cdef size_t clen
    cdef int padlen, i
    cdef uint8_t nonce[12]
    cdef uint8_t aad[12]
    cdef EVP_CIPHER_CTX *ctx = sa.ctx[ctxi]
    if n < ESP_MIN or ((n - ESP_HDR - ESP_IV - ESP_ICV) & 3) != 0:
        return -R_MALFORMED
    clen = n - ESP_HDR - ESP_IV - ESP_ICV
    if clen > cap:
        return -R_MALFORMED
    if sa.fired & FIRED_HARD:
        return -R_EXPIRED
    seq = replay_esn_seq(&sa.replay, seql) if sa.esn else seql
    if not replay_check(&sa.replay, seq):
        return -R_REPLAY
    memcpy(nonce, sa.salt, 4)
    memcpy(nonce + 4, esp + 8, 8)
    if sa.esn:
        memcpy(aad, esp, 4)
        oe_wr32(aad + 4, <uint32_t>(seq >> 32))
        memcpy(aad + 8, esp + 4, 4)
        i = aead_open(ctx, nonce, aad, 12, esp + 16, <int>clen, esp + n - ESP_ICV, out)
    else:
        i = aead_open(ctx, nonce, esp, 8, esp + 16, <int>clen, esp + n - ESP_ICV, out)
    if i < 0:
        return i
    replay_update(&sa.replay, seq)
    seq_out[0] = seq
    padlen = out[clen - 2]
    if <size_t>padlen + ESP_TRAILER > clen:
        return -R_PADDING
    for i in range(padlen):
        if out[clen - 2 - padlen + i] != i + 1:
            return -R_PADDING
    nh_out[0] = out[clen - 1]
    return <int>(clen - ESP_TRAILER - padlen)


cdef bint ts_allows(const EspSa *sa, const PktInfo *info) noexcept nogil:
    """Does the inner packet match the SA's traffic selectors (RFC 4322 12.1)?"""
    cdef int alen = 4 if info.version == 4 else 16
    if info.version != sa.ts_version:
        return False
    if memcmp(info.src, sa.ts_src_lo, alen) < 0 or memcmp(info.src, sa.ts_src_hi, alen) > 0:
        return False
    if memcmp(info.dst, sa.ts_dst_lo, alen) < 0 or memcmp(info.dst, sa.ts_dst_hi, alen) > 0:
        return False
    if sa.ts_proto and info.proto != sa.ts_proto:
        return False
    if info.first_fragment and (info.proto == PROTO_TCP or info.proto == PROTO_UDP
                                or info.proto == 132):
        if info.sport < sa.ts_sport_lo or info.sport > sa.ts_sport_hi:
            return False
        if info.dport < sa.ts_dport_lo or info.dport > sa.ts_dport_hi:
            return False
    return True
