# cython: language_level=3
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

from libc.stdint cimport uint8_t, uint64_t

from oe.dp.openssl cimport EVP_CIPHER_CTX
from oe.dp.sa cimport EspSa

cdef enum:
    ESP_HDR = 8                 # SPI + Seq (RFC 4303 2)
    ESP_IV = 8                  # RFC 4106 3.1
    ESP_ICV = 16                # AES-GCM-16: ENCR_AES_GCM_16
    ESP_TRAILER = 2             # Pad Length + Next Header
    ESP_MIN = ESP_HDR + ESP_IV + 4 + ESP_ICV   # smallest ciphertext: aligned trailer
    NH_IPV4 = 4                 # IP-in-IP: tunnel mode, IPv4 inner
    NH_IPV6 = 41
    NH_NONE = 59                # RFC 4303 2.6: dummy packet, discard


cdef int fetch_ciphers() except -1
cdef EVP_CIPHER_CTX *aead_context(bytes keymat, bint encrypt) except NULL
cdef int esp_seal(EspSa *sa, int ctxi, const uint8_t *pkt, size_t n, uint8_t *out, size_t cap,
                  uint64_t *seq_out) noexcept nogil
cdef int esp_open(EspSa *sa, int ctxi, const uint8_t *esp, size_t n, uint8_t *out, size_t cap,
                  int *nh_out, uint64_t *seq_out) noexcept nogil
