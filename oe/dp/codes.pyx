# cython: language_level=3
"""Names of the datapath's reasons and counters (codes.pxd)."""

REASONS = {
    R_MALFORMED: "malformed", R_REPLAY: "replay", R_AUTH: "authentication", R_PADDING: "padding",
    R_POLICY: "policy", R_EXPIRED: "expired", R_SEQUENCE: "sequence", R_BYTES: "bytes",
    R_PACKETS: "packets", R_TIME: "time", R_TOOBIG: "too big", R_CRYPTO: "crypto",
    R_UNKNOWN_SPI: "unknown SPI", R_DUMMY: "dummy packet",
}

COUNTER_NAMES = (
    "tun_read", "no_policy", "dropped", "rejected", "passed", "held", "hold_overflow",
    "hold_discarded", "hold_released", "acquires", "no_sa", "esp_out", "esp_in", "unknown_spi",
    "malformed", "replay", "authentication", "padding", "policy", "expired", "keepalives", "ike",
    "tun_write", "too_big", "mss_clamped", "send_errors", "events_lost_acquire",
    "events_lost_ike", "events_lost_replay", "events_lost_auth", "dummy", "holds_evicted",
    "sa_refused", "pmtu_probes", "pmtu_acks", "pmtu_too_big",
    "pmtu_too_big_ignored", "pmtu_black_holes",
)
assert len(COUNTER_NAMES) == NCOUNTERS
