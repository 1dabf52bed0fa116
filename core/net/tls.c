/*
 * tls.c -- the TLS transport: OpenSSL on a non-blocking socket, behind
 * the same mg_io_ops_t as plain TCP, so sessions above never know. The
 * handshake runs inside the first reads and writes (SSL_read/SSL_write
 * drive it), so a session that reads a request head also completes the
 * handshake, under the same header timeout. Contexts (certificates,
 * settings) are made elsewhere (the generation's, at load); this file
 * only drives one connection on one of them.
 *
 * Like nginx and H2O: partial writes and moving write buffers are
 * allowed (SSL_MODE_ENABLE_PARTIAL_WRITE, ACCEPT_MOVING_WRITE_BUFFER),
 * so a retry after EAGAIN may pass the same bytes from a new place, and
 * more of them; small iovecs are gathered into one record.
 */
#include "net/io.h"

#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <string.h>
#include <stdlib.h>
#include <unistd.h>

#include <openssl/err.h>
#include <openssl/ssl.h>

/* How many bytes of small iovecs are gathered into one SSL_write: a
 * full TLS record's worth. */
#define MG_TLS_GATHER 16384

/* A server-side handshake that failed: counted in the worker record and
 * logged at most once per MG_TLS_REPORT seconds, with the count since the
 * last line and the last failure's peer and reason (a scan or a broken
 * client must not fill the log). */
#define MG_TLS_REPORT 1.0

static void mg_tls_failed(mg_io_t *io, const char *why) {
    double now = mg_now_coarse();
    mg_worker.tls_failed++;
    if (now - mg_worker.tls_failed_reported >= MG_TLS_REPORT) {
        struct sockaddr_storage ss;
        socklen_t len;
        char ip[64] = "?";
        if (mg_io_peer(io, &ss, &len) == MG_OK) {
            if (ss.ss_family == AF_INET)
                inet_ntop(AF_INET, &((struct sockaddr_in *)&ss)->sin_addr, ip, sizeof(ip));
            else if (ss.ss_family == AF_INET6)
                inet_ntop(AF_INET6, &((struct sockaddr_in6 *)&ss)->sin6_addr, ip, sizeof(ip));
        }
        mg_warn("tls: %llu failed handshakes since the last report (%llu in all; last: %s: %s)",
                (unsigned long long)(mg_worker.tls_failed - mg_worker.tls_failed_logged),
                (unsigned long long)mg_worker.tls_failed, ip, why);
        mg_worker.tls_failed_logged = mg_worker.tls_failed;
        mg_worker.tls_failed_reported = now;
    }
}

/* The outcome of an SSL call as a system call's: -1 with errno, and
 * io->want set on EAGAIN. A clean or unclean end of the stream reads as 0
 * from read (SSL_OP_IGNORE_UNEXPECTED_EOF is set on every context). A
 * server handshake that ends here is counted (mg_tls_failed); a client
 * that connects and closes without a byte (a TCP health check) is not. */
static ssize_t mg_tls_fail(mg_io_t *io, int rc) {
    SSL *ssl = io->ctx;
    int e = SSL_get_error(ssl, rc);
    int hs = SSL_is_server(ssl) && !SSL_is_init_finished(ssl);
    switch (e) {
    case SSL_ERROR_WANT_READ:
        io->want = MG_IO_WANT_READ;
        errno = EAGAIN;
        return -1;
    case SSL_ERROR_WANT_WRITE:
        io->want = MG_IO_WANT_WRITE;
        errno = EAGAIN;
        return -1;
    case SSL_ERROR_ZERO_RETURN:
        if (hs && BIO_number_read(SSL_get_rbio(ssl)) > 0)
            mg_tls_failed(io, "closed in the handshake");
        return 0;
    case SSL_ERROR_SYSCALL:
        ERR_clear_error();
        if (hs && BIO_number_read(SSL_get_rbio(ssl)) > 0)
            mg_tls_failed(io, errno ? strerror(errno) : "closed in the handshake");
        if (errno == 0)
            errno = ECONNRESET;
        return -1;
    default: /* SSL_ERROR_SSL: a protocol error (bad ClientHello, bad record) */
        if (hs) {
            const char *why = ERR_reason_error_string(ERR_peek_last_error());
            mg_tls_failed(io, why ? why : "protocol error");
        }
        ERR_clear_error();
        errno = EPROTO;
        return -1;
    }
}

/* What the handshake agreed, once it is done: ALPN and SNI as the
 * session sees them, noted once (io->hs). No copies, so nothing is
 * allocated per connection beside the SSL: the SNI name is the SSL's own
 * (valid until it is freed), an ALPN name one of these static strings (a
 * protocol not listed here is not reported). */
static const char *const mg_tls_alpn_names[] = {"http/1.1", "h2", "http/1.0", "acme-tls/1"};

static void mg_tls_note_done(mg_io_t *io) {
    SSL *ssl = io->ctx;
    const unsigned char *p;
    unsigned int n;
    if (io->hs)
        return;
    io->hs = 1;
    SSL_get0_alpn_selected(ssl, &p, &n);
    for (size_t i = 0; n > 0 && i < sizeof(mg_tls_alpn_names) / sizeof(mg_tls_alpn_names[0]); i++)
        if (strlen(mg_tls_alpn_names[i]) == n && memcmp(mg_tls_alpn_names[i], p, n) == 0)
            io->alpn = mg_tls_alpn_names[i];
    io->sni = SSL_get_servername(ssl, TLSEXT_NAMETYPE_host_name);
}

static ssize_t mg_tls_read(mg_io_t *io, void *buf, size_t len) {
    SSL *ssl = io->ctx;
    int n;
    if (len > INT32_MAX)
        len = INT32_MAX;
    ERR_clear_error();
    n = SSL_read(ssl, buf, (int)len);
    if (n > 0) {
        mg_tls_note_done(io);
        return n;
    }
    return mg_tls_fail(io, n);
}

static ssize_t mg_tls_write_one(mg_io_t *io, const void *p, size_t len) {
    int n;
    if (len > INT32_MAX)
        len = INT32_MAX;
    ERR_clear_error();
    n = SSL_write(io->ctx, p, (int)len);
    return n > 0 ? n : mg_tls_fail(io, n);
}

static ssize_t mg_tls_writev(mg_io_t *io, const struct iovec *iov, int iovcnt) {
    char gather[MG_TLS_GATHER];
    size_t g = 0;
    int i;
    for (i = 0; i < iovcnt && iov[i].iov_len == 0; i++)
        ;
    if (i == iovcnt)
        return 0;
    /* a big first piece goes as it is; small ones are gathered so that a
     * frame header and its payload make one record, not two */
    if (iov[i].iov_len >= MG_TLS_GATHER / 2)
        return mg_tls_write_one(io, iov[i].iov_base, iov[i].iov_len);
    for (; i < iovcnt && g < sizeof(gather); i++) {
        size_t k = iov[i].iov_len;
        if (k > sizeof(gather) - g)
            k = sizeof(gather) - g;
        memcpy(gather + g, iov[i].iov_base, k);
        g += k;
    }
    return mg_tls_write_one(io, gather, g);
}

static size_t mg_tls_pending(mg_io_t *io) {
    SSL *ssl = io->ctx;
    int n = SSL_pending(ssl);
    if (n > 0)
        return (size_t)n;
    return SSL_has_pending(ssl) ? 1 : 0;
}

static int mg_tls_shutdown(mg_io_t *io) {
    /* close_notify, once, without waiting for the peer's; then the FIN */
    if (!(SSL_get_shutdown(io->ctx) & SSL_SENT_SHUTDOWN) && SSL_is_init_finished(io->ctx)) {
        ERR_clear_error();
        SSL_shutdown(io->ctx);
        ERR_clear_error();
    }
    return shutdown(io->fd, SHUT_WR);
}

static void mg_tls_close(mg_io_t *io) {
    SSL *ssl = io->ctx;
    if (ssl) {
        /* a quiet shutdown: no close_notify on a close (a shutdown sent one
         * already where the protocol ends cleanly) */
        SSL_set_quiet_shutdown(ssl, 1);
        SSL_free(ssl);
        io->ctx = NULL;
        io->sni = NULL; /* it was the SSL's */
    }
    if (io->fd >= 0)
        close(io->fd);
    io->fd = -1;
}

static const mg_io_ops_t mg_tls_ops = {
    .name = "tls",
    .read = mg_tls_read,
    .writev = mg_tls_writev,
    .pending = mg_tls_pending,
    .shutdown = mg_tls_shutdown,
    .close = mg_tls_close,
};

static int mg_tls_new(mg_io_t *io, int fd, void *sslctx) {
    SSL *ssl = SSL_new(sslctx);
    if (ssl == NULL || SSL_set_fd(ssl, fd) != 1) {
        SSL_free(ssl);
        ERR_clear_error();
        return MG_ERR;
    }
    SSL_set_mode(ssl, SSL_MODE_ENABLE_PARTIAL_WRITE | SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER |
                          SSL_MODE_RELEASE_BUFFERS);
    *io = (mg_io_t){.ops = &mg_tls_ops, .fd = fd, .tls = 1, .ctx = ssl};
    return MG_OK;
}

int mg_io_tls_server(mg_io_t *io, int fd, void *sslctx) {
    if (mg_tls_new(io, fd, sslctx) != MG_OK)
        return MG_ERR;
    SSL_set_accept_state(io->ctx);
    return MG_OK;
}

int mg_io_tls_client(mg_io_t *io, int fd, void *sslctx, const char *sni, void *session) {
    SSL *ssl;
    if (mg_tls_new(io, fd, sslctx) != MG_OK)
        return MG_ERR;
    ssl = io->ctx;
    if (sni && *sni && SSL_set_tlsext_host_name(ssl, sni) != 1) {
        io->fd = -1; /* MG_ERR: fd is still the caller's */
        mg_tls_close(io);
        return MG_ERR;
    }
    if (session)
        SSL_set_session(ssl, session);
    SSL_set_connect_state(ssl);
    return MG_OK;
}

int mg_io_handshake(mg_io_t *io) {
    int rc;
    if (!io->tls)
        return MG_OK;
    if (SSL_is_init_finished(io->ctx))
        return MG_OK;
    ERR_clear_error();
    rc = SSL_do_handshake(io->ctx);
    if (rc == 1) {
        mg_tls_note_done(io);
        return MG_OK;
    }
    return mg_tls_fail(io, rc) < 0 && errno == EAGAIN ? MG_AGAIN : MG_ERR;
}

const char *mg_io_tls_version(mg_io_t *io) { return io->tls ? SSL_get_version(io->ctx) : NULL; }

const char *mg_io_tls_cipher(mg_io_t *io) {
    return io->tls ? SSL_get_cipher_name((SSL *)io->ctx) : NULL;
}

int mg_io_tls_peer_subject(mg_io_t *io, char *buf, size_t len) {
    X509 *x;
    BIO *b;
    int n, ok = 0;
    if (!io->tls || len == 0)
        return 0;
    x = SSL_get0_peer_certificate(io->ctx);
    if (x == NULL || SSL_get_verify_result(io->ctx) != X509_V_OK)
        return 0;
    b = BIO_new(BIO_s_mem());
    if (b && X509_NAME_print_ex(b, X509_get_subject_name(x), 0, XN_FLAG_RFC2253) >= 0) {
        n = BIO_read(b, buf, (int)(len - 1 > INT32_MAX ? INT32_MAX : len - 1));
        if (n >= 0) {
            buf[n] = '\0';
            ok = 1;
        }
    }
    BIO_free(b);
    ERR_clear_error();
    return ok;
}
