# cython: language_level=3
# The loop threads: one per direction (LOOP_OUT reads the TUN, LOOP_IN the sockets) or one for
# both. See loop.pyx for their stages.

from cpython.ref cimport PyObject

from oe.dp.core cimport DpCore

cdef extern from "<pthread.h>" nogil:
    ctypedef unsigned long pthread_t

cdef enum:
    LOOP_OUT = 1                # reads the TUN, seals, sends
    LOOP_IN = 2                 # reads the sockets, opens, writes the TUN


cdef struct LoopThread:
    pthread_t thread
    DpCore *core
    PyObject *classifier        # a Classifier the thread's owner keeps alive
    int role


cdef void loop_sockets(DpCore *c) noexcept nogil
cdef int loop_start(LoopThread *t) noexcept nogil
cdef void loop_join(LoopThread *t) noexcept nogil
