# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True
"""ESP seal and open with AES-GCM-16 (esp.pxd), and the AEAD for tests and tools."""

from libc.stdint cimport uint8_t, uint32_t, uint64_t
from libc.string cimport memcpy

from oe.dp.codes cimport (R_AUTH, R_CRYPTO, R_EXPIRED, R_MALFORMED, R_PADDING, R_REPLAY,
                          R_SEQUENCE, R_TOOBIG)
from oe.dp.openssl cimport *
from oe.dp.packet cimport oe_rd32, oe_wr32
from oe.dp.replay cimport replay_check, replay_esn_seq, replay_update
from oe.dp.sa cimport FIRED_HARD
from oe.dp.sync cimport oe_add64

from oe.dp.codes import REASONS
from oe.errors import OeError


cdef const EVP_CIPHER *_aes128gcm = NULL
cdef const EVP_CIPHER *_aes256gcm = NULL


cdef int fetch_ciphers() except -1:
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
    fetch_ciphers()
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


def esp_overhead(int family, encap="udp", bint tunnel=True) -> int:
    """Worst-case bytes ESP adds to an inner packet (outer IP, UDP, ESP, IV, pad, ICV)."""
    cdef int n = ESP_HDR + ESP_IV + 3 + ESP_TRAILER + ESP_ICV
    if tunnel:
        n += 20 if family == 4 else 40
    if encap == "udp":
        n += 8
    return n
