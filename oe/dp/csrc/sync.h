/* Atomics, locks and the clock shared by the datapath's threads (docs/architecture.md, 4).
   Counters are relaxed atomics; flags that publish data use acquire/release. */
#ifndef OE_DP_SYNC_H
#define OE_DP_SYNC_H

#include <pthread.h>
#include <stdint.h>
#include <time.h>

static inline uint64_t oe_add64(uint64_t *p, uint64_t v) {
    return __atomic_fetch_add(p, v, __ATOMIC_RELAXED);      /* the value before */
}
static inline uint64_t oe_load64(uint64_t *p) { return __atomic_load_n(p, __ATOMIC_RELAXED); }
static inline uint32_t oe_or32(uint32_t *p, uint32_t v) {
    return __atomic_fetch_or(p, v, __ATOMIC_ACQ_REL);
}
static inline uint32_t oe_and32(uint32_t *p, uint32_t v) {
    return __atomic_fetch_and(p, v, __ATOMIC_ACQ_REL);
}
static inline uint32_t oe_load_acq32(uint32_t *p) { return __atomic_load_n(p, __ATOMIC_ACQUIRE); }
static inline void oe_store_rel32(uint32_t *p, uint32_t v) {
    __atomic_store_n(p, v, __ATOMIC_RELEASE);
}
static inline int oe_cas32(uint32_t *p, uint32_t expect, uint32_t v) {
    return __atomic_compare_exchange_n(p, &expect, v, 0, __ATOMIC_ACQUIRE, __ATOMIC_RELAXED);
}
static inline void oe_fence_acq(void) { __atomic_thread_fence(__ATOMIC_ACQUIRE); }
static inline void oe_fence_rel(void) { __atomic_thread_fence(__ATOMIC_RELEASE); }
static inline int oe_load_int(int *p) { return __atomic_load_n(p, __ATOMIC_ACQUIRE); }
static inline void oe_store_int(int *p, int v) { __atomic_store_n(p, v, __ATOMIC_RELEASE); }
static inline int oe_swap_int(int *p, int v) {
    return __atomic_exchange_n(p, v, __ATOMIC_ACQ_REL);
}

/* CLOCK_MONOTONIC in seconds: SA lifetimes and hold ages. */
static inline double oe_now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec * 1e-9;
}

typedef pthread_mutex_t oe_mutex_t;
typedef pthread_rwlock_t oe_rwlock_t;

static inline void oe_mutex_init(oe_mutex_t *m) { pthread_mutex_init(m, NULL); }

/* Writers (SA installs from Python) must not starve behind the busy loop threads. */
static inline void oe_rwlock_init_writers_first(oe_rwlock_t *l) {
    pthread_rwlockattr_t a;
    pthread_rwlockattr_init(&a);
    pthread_rwlockattr_setkind_np(&a, PTHREAD_RWLOCK_PREFER_WRITER_NONRECURSIVE_NP);
    pthread_rwlock_init(l, &a);
    pthread_rwlockattr_destroy(&a);
}

static inline void oe_rwlock_init(oe_rwlock_t *l) { pthread_rwlock_init(l, NULL); }

#endif
