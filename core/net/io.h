/*
 * io.h -- the transport: how a connection's bytes are read and written,
 * whatever carries them. Every session (HTTP/1.1, WebSocket, tunnel,
 * upstream) reads and writes through an mg_io_t and never calls recv(),
 * send() or close() on the socket itself, so TLS comes in as a second
 * implementation beside plain TCP (tcp.c) without touching them.
 *
 * The calls behave like their system calls on a non-blocking socket:
 * read returns the bytes read, 0 at the end of the stream, or -1 with
 * errno (EAGAIN/EWOULDBLOCK: nothing now; wait for the event in `want`).
 * A transport may hold bytes it has read from the socket but not handed
 * out yet (TLS records): `pending` says so, and a reader that reads once
 * per readable event must read again while it is non-zero, since the
 * socket will not report them.
 */
#ifndef MG_IO_H
#define MG_IO_H

#include "loop/loop.h"

#include <sys/socket.h>
#include <sys/uio.h>

typedef struct mg_io_s mg_io_t;

typedef struct {
    const char *name; /* "tcp", "tls" */
    ssize_t (*read)(mg_io_t *io, void *buf, size_t len);
    /* never raises SIGPIPE; a short write is normal */
    ssize_t (*writev)(mg_io_t *io, const struct iovec *iov, int iovcnt);
    size_t (*pending)(mg_io_t *io);
    /* ends our sending side (TCP: FIN; TLS: close_notify, then FIN) */
    int (*shutdown)(mg_io_t *io);
    /* frees the transport's state and closes the socket; io->fd is -1 after */
    void (*close)(mg_io_t *io);
} mg_io_ops_t;

enum { MG_IO_WANT_READ = 1, MG_IO_WANT_WRITE = 2 };

struct mg_io_s {
    const mg_io_ops_t *ops;
    int fd;
    unsigned tls : 1;  /* encrypted between us and the peer */
    unsigned want : 2; /* after EAGAIN: the socket event the call waits for (MG_IO_WANT_*) */
    unsigned hs : 1;   /* TLS: the handshake is done and its ALPN and SNI noted */
    const char *alpn;  /* the protocol agreed in the TLS handshake, or NULL */
    const char *sni;   /* the server name the client asked for, or NULL (the SSL's) */
    void *ctx;         /* the transport's own state (TLS: the SSL object) */
};

/* Plain TCP over fd (tcp.c); the io owns fd from here on. */
void mg_io_tcp(mg_io_t *io, int fd);

static inline ssize_t mg_io_read(mg_io_t *io, void *buf, size_t len) {
    return io->ops->read(io, buf, len);
}
static inline ssize_t mg_io_writev(mg_io_t *io, const struct iovec *iov, int iovcnt) {
    return io->ops->writev(io, iov, iovcnt);
}
static inline ssize_t mg_io_write(mg_io_t *io, const void *buf, size_t len) {
    struct iovec v = {(void *)buf, len};
    return io->ops->writev(io, &v, 1);
}
static inline size_t mg_io_pending(mg_io_t *io) { return io->ops->pending(io); }
static inline int mg_io_shutdown(mg_io_t *io) { return io->ops->shutdown(io); }
/* Safe to call twice, and on an io that was never opened (fd -1). */
static inline void mg_io_close(mg_io_t *io) {
    if (io->ops)
        io->ops->close(io);
}

/* TLS (tls.c) on fd with an SSL_CTX (passed as void *, so that io.h
 * needs no OpenSSL header); the handshake happens in the first reads and
 * writes, or in mg_io_handshake. Client side: sni (may be NULL) and a
 * session to resume (an SSL_SESSION, or NULL). MG_OK or MG_ERR (fd is
 * then still the caller's). */
int mg_io_tls_server(mg_io_t *io, int fd, void *sslctx);
int mg_io_tls_client(mg_io_t *io, int fd, void *sslctx, const char *sni, void *session);
/* Drives the handshake on: MG_OK (done, or not TLS), MG_AGAIN (see
 * io->want), MG_ERR (failed: close). */
int mg_io_handshake(mg_io_t *io);
/* "TLSv1.3", "TLS_AES_128_GCM_SHA256"...; NULL on plain TCP. */
const char *mg_io_tls_version(mg_io_t *io);
const char *mg_io_tls_cipher(mg_io_t *io);
/* The subject of the peer's certificate (RFC 2253: "CN=alice,O=Example")
 * into buf, when the peer sent one and it verified: 1, else 0. */
int mg_io_tls_peer_subject(mg_io_t *io, char *buf, size_t len);

/* Hands a connection over (an HTTP session to a WebSocket or a tunnel, an
 * upstream exchange to a relay): dst takes the transport as it is, src is
 * left empty (closing it does nothing). */
static inline void mg_io_move(mg_io_t *dst, mg_io_t *src) {
    *dst = *src;
    *src = (mg_io_t){.fd = -1}; /* not TLS any more either: no SSL behind it */
}

/* Writes from the front of b as much as the transport takes now (up to
 * 64 of its chunks in one writev) and drains what went. Returns the bytes
 * written, or -1 with errno (EAGAIN: nothing went; see io->want). */
int mg_io_write_evbuffer(mg_io_t *io, struct evbuffer *b);
/* The peer's address (getpeername on the socket). MG_OK or MG_ERR. */
int mg_io_peer(mg_io_t *io, struct sockaddr_storage *ss, socklen_t *len);

#endif
