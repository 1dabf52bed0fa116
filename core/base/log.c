/*
 * log.c -- error log lines on stderr and the buffered JSON access log.
 * A log line is written with a single write(2) so lines from several
 * workers sharing stderr never interleave mid-line.
 */
#include "base/base.h"

#include <event2/event.h>

#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <strings.h>
#include <time.h>
#include <unistd.h>

int mg_log_level = MG_LOG_INFO;

static const char *mg_log_names[] = {"debug", "info", "warn", "error"};

static char mg_access_buf[32 * 1024];
static size_t mg_access_len;
static struct event *mg_access_timer;

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
        ssize_t n = write(STDERR_FILENO, mg_access_buf + off, mg_access_len - off);
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
        if (write(STDERR_FILENO, line, len) < 0) {
        }
        return;
    }
    memcpy(mg_access_buf + mg_access_len, line, len);
    mg_access_len += len;
}
