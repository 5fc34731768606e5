/* Packet helpers: big-endian byte readers and writers, the Internet checksum (RFC 1071) and
   the FNV-1a hash of an address pair. One copy for the whole datapath. */
#ifndef OE_DP_PACKET_H
#define OE_DP_PACKET_H

#include <stddef.h>
#include <stdint.h>

static inline uint16_t oe_rd16(const uint8_t *p) { return (uint16_t)((p[0] << 8) | p[1]); }
static inline uint32_t oe_rd32(const uint8_t *p) {
    return ((uint32_t)p[0] << 24) | ((uint32_t)p[1] << 16) | ((uint32_t)p[2] << 8) | p[3];
}
static inline void oe_wr16(uint8_t *p, uint16_t v) { p[0] = v >> 8; p[1] = v & 0xFF; }
static inline void oe_wr32(uint8_t *p, uint32_t v) {
    p[0] = v >> 24; p[1] = (v >> 16) & 0xFF; p[2] = (v >> 8) & 0xFF; p[3] = v & 0xFF;
}

/* Ones' complement partial sum of n bytes (RFC 1071), 32 bits at a time into 64. */
static inline uint64_t oe_csum_add(uint64_t s, const uint8_t *p, size_t n) {
    while (n >= 4) { s += oe_rd32(p); p += 4; n -= 4; }
    if (n >= 2) { s += oe_rd16(p); p += 2; n -= 2; }
    if (n) s += (uint64_t)p[0] << 8;
    return s;
}

/* The partial sum folded to 16 bits (not inverted: a checksum field takes ~oe_csum_fold). */
static inline uint16_t oe_csum_fold(uint64_t s) {
    while (s >> 16) s = (s & 0xFFFF) + (s >> 16);
    return (uint16_t)s;
}

/* FNV-1a over two addresses of alen bytes: cheap and good enough for the datapath's tables. */
static inline uint32_t oe_pair_hash(const uint8_t *src, const uint8_t *dst, int alen) {
    uint32_t h = 2166136261u;
    int i;
    for (i = 0; i < alen; i++) h = (h ^ src[i]) * 16777619u;
    for (i = 0; i < alen; i++) h = (h ^ dst[i]) * 16777619u;
    return h;
}

#endif
