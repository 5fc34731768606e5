# cython: language_level=3
# The datapath's numbers: reasons (why a packet or an SA failed; esp_seal / esp_open return
# them negated) and the global counters (Datapath.stats(); names in codes.pyx, same order).

from libc.stdint cimport uint64_t

from oe.dp.sync cimport oe_add64

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
    C_PMTU_PROBES
    C_PMTU_ACKS
    C_PMTU_TOO_BIG
    C_PMTU_TOO_BIG_IGNORED
    C_PMTU_BLACK_HOLES
    NCOUNTERS


cdef inline void count(uint64_t *counters, int which) noexcept nogil:
    oe_add64(&counters[which], 1)


cdef inline void count_n(uint64_t *counters, int which, uint64_t n) noexcept nogil:
    oe_add64(&counters[which], n)
