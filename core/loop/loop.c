/*
 * loop.c -- what every part of a worker shares: the event base and worker
 * record (mg_worker), the shared timeout queues, the clock, and the
 * worker's random numbers and request ids.
 */
#include "loop/loop.h"

#include <string.h>
#include <time.h>

mg_worker_t mg_worker;

/* libevent's own messages in moongate's log, with its time, pid and level
 * (libevent writes them bare to stderr otherwise) */
static void mg_loop_libevent_log(int severity, const char *msg) {
    switch (severity) {
    case EVENT_LOG_DEBUG: mg_debug("libevent: %s", msg); break;
    case EVENT_LOG_MSG: mg_info("libevent: %s", msg); break;
    case EVENT_LOG_WARN: mg_warn("libevent: %s", msg); break;
    default: mg_error("libevent: %s", msg); break;
    }
}

void mg_loop_log_init(void) { event_set_log_callback(mg_loop_libevent_log); }

/* libevent "common timeouts": all timers of one duration share a queue, so
 * 100 000 connections with the same idle timeout cost O(1) per re-arm
 * instead of a heap operation. */
static struct {
    int ms;
    const struct timeval *tv;
} mg_ct[32];
static int mg_nct;

const struct timeval *mg_timeout_tv(int ms) {
    static struct timeval plain;
    struct timeval tv;
    int i;
    for (i = 0; i < mg_nct; i++)
        if (mg_ct[i].ms == ms)
            return mg_ct[i].tv;
    tv.tv_sec = ms / 1000;
    tv.tv_usec = (ms % 1000) * 1000;
    if (mg_nct < 32 && mg_worker.base) {
        mg_ct[mg_nct].ms = ms;
        mg_ct[mg_nct].tv = event_base_init_common_timeout(mg_worker.base, &tv);
        if (mg_ct[mg_nct].tv)
            return mg_ct[mg_nct++].tv;
    }
    plain = tv;
    return &plain;
}

double mg_now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return ts.tv_sec + ts.tv_nsec * 1e-9;
}

/* mg_now to the kernel's tick (a few ms): read from memory, without the
 * clock read that costs as much as the rest of a small WebSocket frame.
 * For stamps that only need to be fresh to the tick (peer silence is
 * judged in seconds). */
double mg_now_coarse(void) {
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME_COARSE, &ts);
    return ts.tv_sec + ts.tv_nsec * 1e-9;
}

uint64_t mg_rng_next(void) {
    uint64_t s1 = mg_worker.rng[0];
    const uint64_t s0 = mg_worker.rng[1];
    mg_worker.rng[0] = s0;
    s1 ^= s1 << 23;
    mg_worker.rng[1] = s1 ^ s0 ^ (s1 >> 17) ^ (s0 >> 26);
    return mg_worker.rng[1] + s0;
}

/* v's 16 nibbles, lowest first, as lowercase hex digits at out (no NUL):
 * each nibble spread to a byte of its own, then '0' added, and 'a' - '0'
 * - 10 more where it is 10 or over (~20 instructions, was a 16-step loop) */
static void mg_hex16_lsb(char *out, uint64_t v) {
#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__
    for (int h = 0; h < 2; h++) {
        uint64_t x = (v >> (h * 32)) & 0xffffffffu;
        x = (x | (x << 16)) & 0x0000ffff0000ffffull;
        x = (x | (x << 8)) & 0x00ff00ff00ff00ffull;
        x = (x | (x << 4)) & 0x0f0f0f0f0f0f0f0full;
        x += 0x3030303030303030ull +
             (((x + 0x0606060606060606ull) >> 4) & 0x0101010101010101ull) * 39;
        memcpy(out + h * 8, &x, 8);
    }
#else
    static const char hex[] = "0123456789abcdef";
    for (int i = 0; i < 16; i++)
        out[i] = hex[(v >> (i * 4)) & 15];
#endif
}

void mg_request_id(char *out) {
    uint64_t a = mg_rng_next(), b = mg_rng_next();
    mg_hex16_lsb(out, a);
    mg_hex16_lsb(out + 16, b);
    out[32] = '\0';
}
