/*
 * timer.h -- the worker's cheap timeouts (timer.c): an entry embedded in
 * its owner (no allocation), waiting in one of a few queues, one queue per
 * duration. All the entries of a queue share their duration, so arming
 * appends (the queue stays sorted by deadline) and disarming unlinks: O(1)
 * and no libevent call on the hot path. Each queue has one libevent timer,
 * set for its head's deadline; it is only added when the queue had none
 * pending or the new deadline is earlier. It may fire for an entry that
 * has since been re-armed or disarmed: it then finds nothing due and waits
 * for the new head.
 *
 * Precision: a deadline is the coarse monotonic clock (the kernel's tick,
 * clock_getres(CLOCK_MONOTONIC_COARSE): 1-4 ms) at arming plus the
 * duration, so a timeout fires between one tick early and libevent's own
 * lateness (epoll's 1 ms rounding, a busy loop) late. libevent's common
 * timeouts, used before, took their start from the loop iteration's cached
 * time, which can be older than that.
 *
 * Beyond MG_TM_QUEUES distinct durations an entry falls back to a plain
 * libevent timer of its own (the embedded event), with the same API.
 * Single-threaded: the worker's loop only.
 */
#ifndef MG_TIMER_H
#define MG_TIMER_H

#include "loop/loop.h"

#define MG_TM_QUEUES 16 /* distinct durations with a queue; more fall back */

typedef struct mg_tm_s mg_tm_t;
typedef struct mg_tmq_s mg_tmq_t;

/* Called once when t expires, t already disarmed: it may arm t again,
 * disarm or free any entry (t's owner too). */
typedef void (*mg_tm_cb_t)(mg_tm_t *t, void *arg);

struct mg_tm_s {
    mg_tm_t *prev, *next; /* in q, ordered by deadline */
    mg_tmq_t *q;          /* the queue it waits in; NULL: not queued */
    uint64_t due;         /* deadline, ms on the coarse monotonic clock */
    uint64_t seq;         /* q's arming count when armed (firing stops at its start's) */
    mg_tm_cb_t cb;
    void *arg;
    int plain;       /* waiting on ev instead (a duration without a queue) */
    int ev_set;      /* ev assigned */
    struct event ev; /* the fallback's own libevent timer */
};

/* t disarmed, calling cb(t, arg) when it expires. Once per entry, before
 * its first arming (an armed entry must be disarmed first). */
void mg_tm_init(mg_tm_t *t, mg_tm_cb_t cb, void *arg);
/* t expires ms milliseconds from now (re-armed if it was armed: the old
 * deadline is forgotten); ms <= 0 disarms it. */
void mg_tm_arm(mg_tm_t *t, int ms);
static inline int mg_tm_armed(const mg_tm_t *t) { return t->q != NULL || t->plain; }
void mg_tm_unarm(mg_tm_t *t); /* mg_tm_stop's work */
/* t will not fire until armed again; nothing if not armed. Call it before
 * freeing t's owner. */
static inline void mg_tm_stop(mg_tm_t *t) {
    if (mg_tm_armed(t))
        mg_tm_unarm(t);
}

/* For tests: a fixed clock (ms; 0 = the real clocks), and every queue's
 * due entries fired now, as their libevent timers do. */
extern uint64_t mg_tm_fake_ms;
void mg_tm_expire(void);
int mg_tm_nqueues(void); /* queues made so far */

#endif
