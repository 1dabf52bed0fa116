/*
 * timer.c -- the worker's timeout queues (timer.h): one intrusive list per
 * duration, one libevent timer per list. Arming is a clock read from
 * memory, an unlink and an append (~50 instructions) where an event_add
 * on a common timeout was a few hundred, and ~500 when its queue was
 * found empty and its libevent timer rescheduled (callgrind, seed route).
 */
#include "loop/timer.h"

#include <time.h>

struct mg_tmq_s {
    int ms;               /* the duration of every entry */
    mg_tm_t *head, *tail; /* by deadline, earliest first */
    uint64_t armed;       /* the deadline ev is pending for; 0: not pending */
    uint64_t seq;         /* armings so far */
    struct event ev;      /* fires at armed (or after: the loop's lateness) */
};

uint64_t mg_tm_fake_ms;

static mg_tmq_t mg_tmq[MG_TM_QUEUES];
static int mg_ntmq;

static void mg_tmq_cb(evutil_socket_t fd, short what, void *arg);
static void mg_tm_plain_cb(evutil_socket_t fd, short what, void *arg);

/* the deadline clock: read from memory (vDSO), to the kernel's tick */
static inline uint64_t mg_tm_now(void) {
    struct timespec ts;
    if (mg_tm_fake_ms)
        return mg_tm_fake_ms;
    clock_gettime(CLOCK_MONOTONIC_COARSE, &ts);
    return (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000;
}

/* the same clock to the nanosecond, rounded down to the ms: never behind
 * mg_tm_now (the coarse clock is this one's last tick), for the decision
 * that an entry is due */
static uint64_t mg_tm_now_precise(void) {
    struct timespec ts;
    if (mg_tm_fake_ms)
        return mg_tm_fake_ms;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000;
}

/* the queue of duration ms, made on first use; NULL when all are taken */
static mg_tmq_t *mg_tmq_get(int ms) {
    mg_tmq_t *q;
    for (int i = 0; i < mg_ntmq; i++)
        if (mg_tmq[i].ms == ms)
            return &mg_tmq[i];
    if (mg_ntmq == MG_TM_QUEUES || mg_worker.base == NULL)
        return NULL;
    q = &mg_tmq[mg_ntmq++];
    q->ms = ms;
    evtimer_assign(&q->ev, mg_worker.base, mg_tmq_cb, q);
    return q;
}

/* q's libevent timer set for its head's deadline (now: the clock's ms) */
static void mg_tmq_schedule(mg_tmq_t *q, uint64_t now) {
    uint64_t d = q->head->due > now ? q->head->due - now : 0;
    struct timeval tv = {(time_t)(d / 1000), (suseconds_t)(d % 1000) * 1000};
    q->armed = q->head->due;
    event_add(&q->ev, &tv);
}

static inline void mg_tm_unlink(mg_tm_t *t) {
    mg_tmq_t *q = t->q;
    if (t->prev)
        t->prev->next = t->next;
    else
        q->head = t->next;
    if (t->next)
        t->next->prev = t->prev;
    else
        q->tail = t->prev;
    t->prev = t->next = NULL;
    t->q = NULL;
}

void mg_tm_init(mg_tm_t *t, mg_tm_cb_t cb, void *arg) {
    t->prev = t->next = NULL;
    t->q = NULL;
    t->due = t->seq = 0;
    t->cb = cb;
    t->arg = arg;
    t->plain = 0;
    t->ev_set = 0;
}

/* t armed (mg_tm_stop checked) */
void mg_tm_unarm(mg_tm_t *t) {
    if (t->q)
        mg_tm_unlink(t); /* q's timer stays: it finds nothing and waits for the next head */
    else if (t->plain) {
        event_del(&t->ev);
        t->plain = 0;
    }
}

void mg_tm_arm(mg_tm_t *t, int ms) {
    mg_tmq_t *q = t->q;
    uint64_t now;
    if (ms <= 0) {
        mg_tm_stop(t);
        return;
    }
    if ((q == NULL || q->ms != ms) && (q = mg_tmq_get(ms)) == NULL) {
        /* every queue taken: a timer of its own */
        struct timeval tv = {ms / 1000, (ms % 1000) * 1000};
        mg_tm_stop(t);
        if (!t->ev_set) {
            evtimer_assign(&t->ev, mg_worker.base, mg_tm_plain_cb, t);
            t->ev_set = 1;
        }
        t->plain = 1;
        event_add(&t->ev, &tv);
        return;
    }
    now = mg_tm_now();
    if (t != q->tail) { /* the tail of its queue (the last armed) stays there */
        if (t->q)
            mg_tm_unlink(t);
        else if (t->plain) {
            event_del(&t->ev);
            t->plain = 0;
        }
        t->q = q;
        t->prev = q->tail;
        if (q->tail)
            q->tail->next = t;
        else
            q->head = t;
        q->tail = t;
    }
    t->due = now + (uint64_t)ms;
    t->seq = ++q->seq;
    /* the queue is sorted, so its timer (if pending) is due no later */
    if (q->armed == 0 || t->due < q->armed)
        mg_tmq_schedule(q, now);
}

/* q's due entries in order. Each is unlinked before its callback, and the
 * next one is read from q afterwards, so a callback may disarm, re-arm or
 * free any entry. Those armed during the round (seq above its start's)
 * wait for the next one, even if a short duration and a lagging coarse
 * clock made them due already: no round runs forever. */
static void mg_tmq_fire(mg_tmq_t *q, uint64_t now) {
    uint64_t last = q->seq;
    mg_tm_t *t;
    q->armed = 0; /* not pending now: an arming in a callback may set it */
    while ((t = q->head) != NULL && t->due <= now && t->seq <= last) {
        mg_tm_unlink(t);
        t->cb(t, t->arg);
    }
    if (q->head && (q->armed == 0 || q->head->due < q->armed))
        mg_tmq_schedule(q, now);
}

static void mg_tmq_cb(evutil_socket_t fd, short what, void *arg) {
    (void)fd, (void)what;
    mg_tmq_fire(arg, mg_tm_now_precise());
}

static void mg_tm_plain_cb(evutil_socket_t fd, short what, void *arg) {
    mg_tm_t *t = arg;
    (void)fd, (void)what;
    t->plain = 0;
    t->cb(t, t->arg);
}

void mg_tm_expire(void) {
    for (int i = 0; i < mg_ntmq; i++)
        if (mg_tmq[i].head)
            mg_tmq_fire(&mg_tmq[i], mg_tm_now_precise());
}

int mg_tm_nqueues(void) { return mg_ntmq; }
