/*
 * log.c -- error log lines on stderr and the buffered JSON access log.
 * A log line is written with a single write(2) so lines from several
 * workers sharing stderr never interleave mid-line. The access log goes to
 * stderr, stdout or a file opened with O_APPEND (each worker's buffered
 * writes are whole lines, so workers sharing it do not interleave either);
 * the file is opened again on SIGUSR1 (after logrotate moved it).
 */
#include "base/base.h"

#include <event2/event.h>

#include <errno.h>
#include <fcntl.h>

#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <strings.h>
#include <time.h>
#include <unistd.h>

int mg_log_level = MG_LOG_INFO;

static const char *mg_log_names[] = {"debug", "info", "warn", "error"};

/* 256 KiB: the kernel's cost per line of a file's appends falls with the
 * write's size (ext4 here, 432-byte lines, median of 10: ~226 ns of system
 * time per line written 64 KiB at a time, ~157 at 256 KiB); the 200 ms
 * timer still bounds how long a line waits */
char mg_access_buf[MG_ACCESS_BUF_SIZE]; /* base.h's inline begin/commit fill it */
size_t mg_access_len;
static struct event *mg_access_timer;
static int mg_access_fd = STDERR_FILENO;
static char mg_access_path[4096]; /* the file mg_access_fd is, or "" (stderr, stdout) */

int mg_log_level_parse(const char *s) {
    for (int i = 0; i < 4; i++)
        if (strcasecmp(s, mg_log_names[i]) == 0)
            return i;
    return MG_LOG_INFO;
}

void mg_log(int level, const char *fmt, ...) {
    char line[4096];
    struct timespec ts;
    struct tm tm;
    va_list ap;
    int n;

    if (level < mg_log_level)
        return;
    clock_gettime(CLOCK_REALTIME, &ts);
    gmtime_r(&ts.tv_sec, &tm);
    n = snprintf(line, sizeof(line),
                 "%04d-%02d-%02dT%02d:%02d:%02d.%03ldZ [%s] %d: ", tm.tm_year + 1900, tm.tm_mon + 1,
                 tm.tm_mday, tm.tm_hour, tm.tm_min, tm.tm_sec, ts.tv_nsec / 1000000,
                 mg_log_names[level], (int)getpid());
    va_start(ap, fmt);
    n += vsnprintf(line + n, sizeof(line) - n, fmt, ap);
    va_end(ap);
    if (n >= (int)sizeof(line) - 1)
        n = sizeof(line) - 2;
    line[n++] = '\n';
    if (write(STDERR_FILENO, line, n) < 0) {
        /* nowhere left to report it */
    }
}

void mg_access_log_flush(void) {
    size_t off = 0;
    while (off < mg_access_len) {
        ssize_t n = write(mg_access_fd, mg_access_buf + off, mg_access_len - off);
        if (n <= 0)
            break;
        off += n;
    }
    mg_access_len = 0;
}

static void mg_access_timer_cb(evutil_socket_t fd, short what, void *arg) {
    (void)fd, (void)what, (void)arg;
    mg_access_log_flush();
}

void mg_access_log_init(struct event_base *base) {
    struct timeval tv = {0, 200000};
    mg_access_timer = event_new(base, -1, EV_PERSIST, mg_access_timer_cb, NULL);
    event_add(mg_access_timer, &tv);
}

void mg_access_log_write(const char *line, size_t len) {
    if (mg_access_len + len > sizeof(mg_access_buf))
        mg_access_log_flush();
    if (len > sizeof(mg_access_buf)) {
        if (write(mg_access_fd, line, len) < 0) {
        }
        return;
    }
    memcpy(mg_access_buf + mg_access_len, line, len);
    mg_access_len += len;
}

/* Opens path for the access log: the descriptor, or -1 (logged). */
static int mg_access_log_open_file(const char *path) {
    int fd = open(path, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0644);
    if (fd < 0)
        mg_error("access_log %s: %s (the access log keeps its destination)", path, strerror(errno));
    return fd;
}

static void mg_access_log_set(int fd, const char *path) {
    mg_access_log_flush(); /* what was written so far goes where it was meant to */
    if (mg_access_fd > STDERR_FILENO && mg_access_fd != fd)
        close(mg_access_fd);
    mg_access_fd = fd;
    snprintf(mg_access_path, sizeof(mg_access_path), "%s", path);
}

void mg_access_log_open(const char *dest) {
    int fd;
    if (dest == NULL || strcmp(dest, "stderr") == 0) {
        mg_access_log_set(STDERR_FILENO, "");
        return;
    }
    if (strcmp(dest, "stdout") == 0) {
        mg_access_log_set(STDOUT_FILENO, "");
        return;
    }
    if (strcmp(dest, mg_access_path) == 0 && mg_access_fd > STDERR_FILENO)
        return; /* already open (a reload that kept it, or inherited from the master) */
    fd = mg_access_log_open_file(dest);
    if (fd >= 0)
        mg_access_log_set(fd, dest);
}

int mg_access_log_reopen(void) {
    char path[sizeof(mg_access_path)];
    int fd;
    if (mg_access_path[0] == '\0')
        return 0;
    snprintf(path, sizeof(path), "%s", mg_access_path);
    fd = mg_access_log_open_file(path);
    if (fd < 0)
        return -1;
    mg_access_log_set(fd, path);
    return 1;
}

/* ISO 8601 UTC with milliseconds: "2026-12-01T22:48:00.123Z" (25 bytes
 * with the NUL); the milliseconds cut, not rounded. */
size_t mg_iso_time(char *out, double t) {
    mg_fmt_t b = {out, 0, MG_ISO_TIME_MAX - 1};
    int64_t s = (int64_t)t, ms = (int64_t)((t - (double)s) * 1000.0);
    if (ms < 0)
        ms = 0;
    if (ms > 999)
        ms = 999;
    mg_fmt_iso_ms(&b, s * 1000 + ms);
    out[b.len] = '\0';
    return b.len;
}
