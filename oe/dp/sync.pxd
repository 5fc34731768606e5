# Declarations of sync.h: atomics, locks and the clock of the datapath's threads.

from libc.stdint cimport uint32_t, uint64_t

cdef extern from "sync.h" nogil:
    uint64_t oe_add64(uint64_t *p, uint64_t v)
    uint64_t oe_load64(uint64_t *p)
    uint32_t oe_or32(uint32_t *p, uint32_t v)
    uint32_t oe_and32(uint32_t *p, uint32_t v)
    uint32_t oe_load_acq32(uint32_t *p)
    void oe_store_rel32(uint32_t *p, uint32_t v)
    bint oe_cas32(uint32_t *p, uint32_t expect, uint32_t v)
    void oe_fence_acq()
    void oe_fence_rel()
    int oe_load_int(int *p)
    void oe_store_int(int *p, int v)
    int oe_swap_int(int *p, int v)
    double oe_now()

    ctypedef struct oe_mutex_t:
        pass
    ctypedef struct oe_rwlock_t:
        pass
    void oe_mutex_init(oe_mutex_t *m)
    void oe_rwlock_init(oe_rwlock_t *l)
    void oe_rwlock_init_writers_first(oe_rwlock_t *l)
    int oe_mutex_lock "pthread_mutex_lock"(oe_mutex_t *m)
    int oe_mutex_unlock "pthread_mutex_unlock"(oe_mutex_t *m)
    int oe_mutex_destroy "pthread_mutex_destroy"(oe_mutex_t *m)
    int oe_rd_lock "pthread_rwlock_rdlock"(oe_rwlock_t *l)
    int oe_wr_lock "pthread_rwlock_wrlock"(oe_rwlock_t *l)
    int oe_rw_unlock "pthread_rwlock_unlock"(oe_rwlock_t *l)
    int oe_rwlock_destroy "pthread_rwlock_destroy"(oe_rwlock_t *l)
