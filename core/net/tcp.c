/*
 * tcp.c -- the plain TCP transport: the system calls themselves, and the
 * transport-neutral helpers of io.h.
 */
#include "net/io.h"

#include <errno.h>
#include <unistd.h>

static ssize_t mg_tcp_read(mg_io_t *io, void *buf, size_t len) {
    ssize_t n = recv(io->fd, buf, len, 0);
    if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK))
        io->want = MG_IO_WANT_READ;
    return n;
}

static ssize_t mg_tcp_writev(mg_io_t *io, const struct iovec *iov, int iovcnt) {
    struct msghdr m = {.msg_iov = (struct iovec *)iov, .msg_iovlen = (size_t)iovcnt};
    ssize_t n = sendmsg(io->fd, &m, MSG_NOSIGNAL);
    if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK))
        io->want = MG_IO_WANT_WRITE;
    return n;
}

static size_t mg_tcp_pending(mg_io_t *io) {
    (void)io;
    return 0;
}

static int mg_tcp_shutdown(mg_io_t *io) { return shutdown(io->fd, SHUT_WR); }

static void mg_tcp_close(mg_io_t *io) {
    if (io->fd >= 0)
        close(io->fd);
    io->fd = -1;
}

static const mg_io_ops_t mg_tcp_ops = {
    .name = "tcp",
    .read = mg_tcp_read,
    .writev = mg_tcp_writev,
    .pending = mg_tcp_pending,
    .shutdown = mg_tcp_shutdown,
    .close = mg_tcp_close,
};

void mg_io_tcp(mg_io_t *io, int fd) { *io = (mg_io_t){.ops = &mg_tcp_ops, .fd = fd}; }

int mg_io_write_evbuffer(mg_io_t *io, struct evbuffer *b) {
    struct evbuffer_iovec v[64];
    int n = evbuffer_peek(b, -1, NULL, v, 64);
    ssize_t w;
    if (n <= 0)
        return 0;
    if (n > 64)
        n = 64;
    /* evbuffer_iovec and struct iovec have the same layout (libevent
     * documents it), so the chunks go to writev as they are */
    w = mg_io_writev(io, (const struct iovec *)v, n);
    if (w > 0)
        evbuffer_drain(b, (size_t)w);
    return (int)w;
}

int mg_io_peer(mg_io_t *io, struct sockaddr_storage *ss, socklen_t *len) {
    *len = sizeof(*ss);
    return getpeername(io->fd, (struct sockaddr *)ss, len) == 0 ? MG_OK : MG_ERR;
}
