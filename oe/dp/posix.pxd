# The few POSIX calls the datapath's parts make outside csrc/: file descriptors and eventfd.

cdef extern from "<unistd.h>" nogil:
    ssize_t sys_read "read"(int fd, void *buf, size_t count)
    ssize_t sys_write "write"(int fd, const void *buf, size_t count)
    int sys_close "close"(int fd)

cdef extern from "<sys/eventfd.h>" nogil:
    int eventfd(unsigned int initval, int flags)
    enum:
        EFD_NONBLOCK
        EFD_CLOEXEC
