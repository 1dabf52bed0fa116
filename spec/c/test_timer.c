/*
 * test_timer.c -- the worker's timeout queues (core/loop/timer.c) on a real
 * event base: entries fire in deadline order and not before their time,
 * re-arming moves a deadline (and an entry between queues), disarming
 * keeps an entry from firing, a callback may free its own owner and
 * others (the ASan build checks the memory), durations beyond the queues
 * fall back to plain libevent timers. Then a property test on a fixed
 * clock (mg_tm_fake_ms): random armings, disarmings, frees and clock steps
 * against a reference that keeps every entry's deadline; the fired entries
 * and their order in each duration must be the reference's. Seeded
 * (MG_PROP_SEED overrides the seed, MG_PROP_STEPS the count).
 */
#include "ct.h"
#include "loop/timer.h"

#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

/* the fixed clock when a test set one, as core/loop/timer.c reads it */
static uint64_t ms_now(void) {
    struct timespec ts;
    if (mg_tm_fake_ms)
        return mg_tm_fake_ms;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000;
}

/* when an arming starts, on the deadline's own clock (timer.c's coarse one,
 * which may lag the precise clock by more than a tick on a busy machine): a
 * deadline is that clock's reading at mg_tm_arm plus ms, and that reading is
 * never before this one, so a fire measured from here is never early */
static uint64_t ms_arm_now(void) {
    struct timespec ts;
    if (mg_tm_fake_ms)
        return mg_tm_fake_ms;
    clock_gettime(CLOCK_MONOTONIC_COARSE, &ts);
    return (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000;
}

/* an owner of a timer, as a connection is */
typedef struct {
    mg_tm_t tm;
    int id;
    int ms;       /* the duration it was last armed with */
    uint64_t t0;  /* when (ms_now) */
    int fired;    /* times its callback ran */
    int action;   /* what its callback does (below) */
    void *victim; /* the owner that action frees or disarms */
} owner_t;

enum { ACT_NONE, ACT_FREE_SELF, ACT_FREE_VICTIM_AND_SELF, ACT_STOP_VICTIM, ACT_REARM3 };

static int order[64], norder;
static uint64_t order_due[64]; /* each fired owner's deadline (ms_now) */
static int early;              /* fired more than a tick and a ms before its time */

static void record(owner_t *o) {
    uint64_t el = ms_now() - o->t0;
    if (el + 6 < (uint64_t)o->ms) { /* the coarse clock's tick (<= 4 ms) and rounding */
        early++;
        printf("    owner %d fired after %llu ms, armed for %d\n", o->id, (unsigned long long)el,
               o->ms);
    }
    if (norder < 64) {
        order_due[norder] = o->t0 + (uint64_t)o->ms;
        order[norder++] = o->id;
    }
}

static void on_fire(mg_tm_t *t, void *arg) {
    owner_t *o = arg;
    CHECK(t == &o->tm);
    CHECK(!mg_tm_armed(t)); /* disarmed before its callback */
    o->fired++;
    record(o);
    switch (o->action) {
    case ACT_FREE_SELF: free(o); break;
    case ACT_FREE_VICTIM_AND_SELF: {
        owner_t *v = o->victim;
        mg_tm_stop(&v->tm);
        free(v);
        free(o);
        break;
    }
    case ACT_STOP_VICTIM: mg_tm_stop(&((owner_t *)o->victim)->tm); break;
    case ACT_REARM3:
        if (o->fired < 3) {
            o->t0 = ms_arm_now();
            mg_tm_arm(&o->tm, o->ms);
        }
        break;
    default: break;
    }
}

static owner_t *owner_new(int id, int action) {
    owner_t *o = calloc(1, sizeof(*o));
    o->id = id;
    o->action = action;
    mg_tm_init(&o->tm, on_fire, o);
    return o;
}

static void arm(owner_t *o, int ms) {
    o->ms = ms;
    o->t0 = ms_arm_now();
    mg_tm_arm(&o->tm, ms);
}

/* the loop for ms milliseconds (a sentinel timer of libevent's own) */
static void run_for(int ms) {
    struct timeval tv = {ms / 1000, (ms % 1000) * 1000};
    event_base_loopexit(mg_worker.base, &tv);
    event_base_dispatch(mg_worker.base);
}

static void reset(void) {
    norder = 0;
    early = 0;
}

/* The entries fired in the order of their deadlines, give or take the
 * coarse clock's tick and a ms (what the queues promise): checked on the
 * deadlines the arms gave, not on the durations, since on a busy machine
 * the process may be preempted between two arms or sleep past several
 * deadlines (then they all fire at once, still in this order). */
static int fired_in_deadline_order(void) {
    int bad = 0;
    for (int i = 1; i < norder; i++)
        if (order_due[i - 1] > order_due[i] + 6) {
            printf("    owner %d (due %llu) fired before owner %d (due %llu)\n", order[i - 1],
                   (unsigned long long)order_due[i - 1], order[i],
                   (unsigned long long)order_due[i]);
            bad++;
        }
    return bad == 0;
}

static int position(int id) {
    for (int i = 0; i < norder; i++)
        if (order[i] == id)
            return i;
    return -1;
}

static void order_by_deadline(void) {
    owner_t *a = owner_new(1, ACT_NONE), *b = owner_new(2, ACT_NONE), *c = owner_new(3, ACT_NONE),
            *d = owner_new(4, ACT_NONE);
    reset();
    arm(a, 60);
    arm(b, 20);
    arm(c, 40);
    arm(d, 20); /* same queue as b, after it */
    run_for(120);
    CHECK_INT(norder, 4);
    CHECK(position(1) >= 0 && position(2) >= 0 && position(3) >= 0 && position(4) >= 0);
    CHECK(position(2) < position(4)); /* one queue: first armed, first fired */
    CHECK(fired_in_deadline_order());
    CHECK_INT(early, 0);
    CHECK(!mg_tm_armed(&a->tm) && !mg_tm_armed(&d->tm));
    free(a), free(b), free(c), free(d);
}

/* On the fixed clock (mg_tm_fake_ms, mg_tm_expire): what has fired at a
 * given time must not depend on how late the scheduler ran this process
 * (on a busy machine the real loop's 15 ms can be 40) */
static void rearm_moves_the_deadline(void) {
    owner_t *a = owner_new(1, ACT_NONE), *b = owner_new(2, ACT_NONE), *c = owner_new(3, ACT_NONE);
    reset();
    mg_tm_fake_ms = 20000;
    arm(a, 20);
    arm(b, 20);
    arm(a, 20); /* a goes behind b */
    arm(c, 60);
    arm(c, 10); /* another queue: the shorter one wins */
    mg_tm_fake_ms += 15;
    mg_tm_expire();
    CHECK_INT(norder, 1);
    CHECK_INT(order[0], 3);
    /* a re-armed again and again before its time never fires */
    for (int i = 0; i < 5; i++) {
        arm(a, 30);
        mg_tm_fake_ms += 10;
        mg_tm_expire();
    }
    CHECK_INT(norder, 2); /* b only */
    CHECK_INT(order[1], 2);
    CHECK_INT(a->fired, 0);
    mg_tm_fake_ms += 19;
    mg_tm_expire();
    CHECK_INT(a->fired, 0); /* 29 of its 30 ms */
    mg_tm_fake_ms += 1;
    mg_tm_expire();
    CHECK_INT(a->fired, 1);
    CHECK_INT(early, 0);
    /* a callback that re-arms its own entry */
    a->action = ACT_REARM3;
    a->fired = 0;
    arm(a, 10);
    for (int i = 0; i < 8; i++) {
        mg_tm_fake_ms += 10;
        mg_tm_expire();
    }
    CHECK_INT(a->fired, 3);
    CHECK(!mg_tm_armed(&a->tm));
    CHECK(!mg_tm_armed(&b->tm) && !mg_tm_armed(&c->tm));
    CHECK_INT(early, 0);
    mg_tm_fake_ms = 0;
    /* and on the real loop, where only "once, not early" holds on any
     * machine: moved from a long queue to a shorter one, it fires once */
    reset();
    a->action = ACT_NONE;
    a->fired = 0;
    arm(a, 60);
    arm(a, 10);
    run_for(100);
    CHECK_INT(a->fired, 1);
    CHECK_INT(norder, 1);
    CHECK_INT(early, 0);
    run_for(20); /* the 60 ms queue's timer, if still pending, finds nothing */
    CHECK_INT(a->fired, 1);
    free(a), free(b), free(c);
}

static void disarm(void) {
    owner_t *a = owner_new(1, ACT_NONE), *b = owner_new(2, ACT_NONE), *c = owner_new(3, ACT_NONE);
    reset();
    arm(a, 20);
    arm(b, 20);
    arm(c, 20);
    mg_tm_stop(&a->tm); /* the head */
    mg_tm_stop(&c->tm); /* the tail */
    mg_tm_stop(&c->tm); /* twice: nothing */
    CHECK(!mg_tm_armed(&a->tm));
    CHECK(mg_tm_armed(&b->tm));
    arm(c, 0); /* 0 ms: disarmed */
    run_for(50);
    CHECK_INT(norder, 1);
    CHECK_INT(order[0], 2);
    /* the only entry disarmed: its queue's timer fires for nothing */
    arm(a, 10);
    mg_tm_stop(&a->tm);
    run_for(30);
    CHECK_INT(norder, 1);
    free(a), free(b), free(c);
}

static void free_in_callback(void) {
    /* same deadline: a frees b (next in the queue) and itself; c frees
     * itself; d disarms e, which is then freed here */
    owner_t *a = owner_new(1, ACT_FREE_VICTIM_AND_SELF), *b = owner_new(2, ACT_NONE);
    owner_t *c = owner_new(3, ACT_FREE_SELF), *d = owner_new(4, ACT_STOP_VICTIM);
    owner_t *e = owner_new(5, ACT_NONE), *f = owner_new(6, ACT_NONE);
    reset();
    a->victim = b;
    d->victim = e;
    mg_tm_fake_ms = 5000; /* one deadline for all */
    arm(a, 20);
    arm(b, 20);
    arm(c, 20);
    arm(d, 20);
    arm(e, 20);
    arm(f, 20);
    mg_tm_fake_ms = 0;
    a->ms = c->ms = d->ms = f->ms = 0; /* their time is the fixed clock's: not checked */
    run_for(5);
    mg_tm_fake_ms = 5020;
    mg_tm_expire();
    mg_tm_fake_ms = 0;
    CHECK_INT(norder, 3 + 1); /* a, c, d, f */
    CHECK_INT(order[0], 1);
    CHECK_INT(order[1], 3);
    CHECK_INT(order[2], 4);
    CHECK_INT(order[3], 6);
    CHECK_INT(e->fired, 0);
    CHECK(!mg_tm_armed(&e->tm));
    free(d), free(e), free(f);
    /* and on the real loop: an owner freeing itself */
    reset();
    c = owner_new(7, ACT_FREE_SELF);
    arm(c, 10);
    run_for(40);
    CHECK_INT(norder, 1);
    run_for(20); /* the queue's timer, if still pending, finds nothing */
}

/* 40 durations: the first ones get queues (some exist), the rest fall back
 * to their own libevent timers; all fire in deadline order, fallbacks disarm and
 * move into a queue when re-armed with a queued duration */
static void many_durations(void) {
    owner_t *o[40];
    reset();
    for (int i = 0; i < 40; i++) {
        o[i] = owner_new(i, ACT_NONE);
        arm(o[i], 200 - i * 4); /* 200 .. 44 ms, armed longest first */
    }
    CHECK_INT(mg_tm_nqueues(), MG_TM_QUEUES);
    CHECK(o[39]->tm.plain); /* a fallback */
    mg_tm_stop(&o[39]->tm); /* disarmed */
    CHECK(!mg_tm_armed(&o[39]->tm));
    arm(o[38], 20); /* into a queue made earlier */
    CHECK(o[38]->tm.q != NULL && !o[38]->tm.plain);
    run_for(260);
    CHECK_INT(norder, 39);
    for (int i = 0; i < 39; i++)
        CHECK_INT(o[i]->fired, 1);
    CHECK(fired_in_deadline_order());
    CHECK_INT(o[39]->fired, 0);
    CHECK_INT(early, 0);
    for (int i = 0; i < 40; i++)
        free(o[i]);
}

/* ---- the property test ---- */

static uint64_t rng_state;
static uint64_t rnd(void) { /* xorshift64* */
    rng_state ^= rng_state >> 12;
    rng_state ^= rng_state << 25;
    rng_state ^= rng_state >> 27;
    return rng_state * 2685821657736338717ULL;
}
static int below(int n) { return (int)(rnd() % (uint64_t)n); }

#define NP 48
static const int PDUR[] = {20, 40, 60, 10}; /* queues that exist by now */
#define NPDUR 4
typedef struct {
    mg_tm_t tm;
    int id;
    int live;  /* allocated */
    int armed; /* the reference's view */
    uint64_t due, seq;
    int ms;
} pent_t;
static pent_t *pent[NP];
static uint64_t pseq;
static int pfired[NP * 4], pfired_ms[NP * 4], npfired, pbad;

static void parm(pent_t *p, int ms) {
    p->armed = 1;
    p->due = mg_tm_fake_ms + (uint64_t)ms;
    p->seq = ++pseq;
    p->ms = ms;
    mg_tm_arm(&p->tm, ms);
}

static void pfire(mg_tm_t *t, void *arg) {
    pent_t *p = arg;
    if (!p->armed || p->due > mg_tm_fake_ms)
        pbad++;
    p->armed = 0;
    if (npfired < NP * 4) {
        pfired_ms[npfired] = p->ms;
        pfired[npfired++] = p->id;
    }
    switch (below(4)) { /* what the callback does */
    case 0: parm(p, PDUR[below(NPDUR)]); break;
    case 1:
        pent[p->id] = NULL;
        free(p); /* its owner gone */
        break;
    default: break;
    }
    (void)t;
}

static int cmp_due(const void *a, const void *b) {
    const pent_t *x = *(pent_t *const *)a, *y = *(pent_t *const *)b;
    if (x->ms != y->ms)
        return x->ms < y->ms ? -1 : 1;
    if (x->due != y->due)
        return x->due < y->due ? -1 : 1;
    return x->seq < y->seq ? -1 : x->seq > y->seq;
}

static void property(void) {
    const char *s = getenv("MG_PROP_SEED"), *n = getenv("MG_PROP_STEPS");
    int steps = n ? atoi(n) : 20000, rounds = 0, fired = 0;
    rng_state = s ? strtoull(s, NULL, 10) : 0x7157e75ULL;
    mg_tm_fake_ms = 100000;
    for (int step = 0; step < steps && !ct_case_bad; step++) {
        int i = below(NP), op = below(10);
        pent_t *p = pent[i];
        if (p == NULL) {
            p = pent[i] = calloc(1, sizeof(*p));
            p->id = i;
            mg_tm_init(&p->tm, pfire, p);
        }
        if (op < 5)
            parm(p, PDUR[below(NPDUR)]);
        else if (op < 6) {
            p->armed = 0;
            mg_tm_stop(&p->tm);
        } else if (op < 7) {
            mg_tm_stop(&p->tm);
            pent[i] = NULL;
            free(p);
        } else { /* the clock moves; what is due fires */
            pent_t *want[NP];
            int nw = 0;
            mg_tm_fake_ms += (uint64_t)below(25);
            for (int k = 0; k < NP; k++)
                if (pent[k] && pent[k]->armed && pent[k]->due <= mg_tm_fake_ms)
                    want[nw++] = pent[k];
            /* in each duration by deadline then arming; the queues fire one
             * after the other in the order they were made */
            qsort(want, nw, sizeof(want[0]), cmp_due);
            int wid[NP], wms[NP];
            for (int k = 0; k < nw; k++)
                wid[k] = want[k]->id, wms[k] = want[k]->ms;
            npfired = 0;
            mg_tm_expire();
            rounds++;
            fired += npfired;
            CHECK_INT(npfired, nw);
            CHECK_INT(pbad, 0);
            /* each one once, and each duration in the reference's order */
            {
                int seen[NP] = {0};
                for (int k = 0; k < npfired; k++)
                    seen[pfired[k]]++;
                for (int k = 0; k < nw; k++)
                    CHECK_INT(seen[wid[k]], 1);
                for (int d = 0; d < NPDUR; d++)
                    for (int a = 0, b = 0;; a++, b++) {
                        while (a < nw && wms[a] != PDUR[d])
                            a++;
                        while (b < npfired && pfired_ms[b] != PDUR[d])
                            b++;
                        if (a >= nw || b >= npfired) {
                            CHECK(a >= nw && b >= npfired);
                            break;
                        }
                        CHECK_INT(pfired[b], wid[a]);
                    }
            }
        }
        /* every live entry armed as the reference says, with its deadline */
        for (int k = 0; k < NP; k++)
            if (pent[k]) {
                CHECK_INT(mg_tm_armed(&pent[k]->tm), pent[k]->armed);
                if (pent[k]->armed)
                    CHECK_INT(pent[k]->tm.due, pent[k]->due);
            }
        if (ct_case_bad)
            printf("    seed %llu, step %d\n",
                   (unsigned long long)(s ? strtoull(s, NULL, 10) : 0x7157e75ULL), step);
    }
    for (int k = 0; k < NP; k++)
        if (pent[k]) {
            mg_tm_stop(&pent[k]->tm);
            free(pent[k]);
            pent[k] = NULL;
        }
    mg_tm_fake_ms = 0;
    CHECK(rounds > 1000 && fired > 1000);
}

/* ---- request ids (core/loop/loop.c) ---- */

/* mg_request_id against the loop it replaced: the rng's next two draws,
 * each as 16 hex digits lowest nibble first, then a NUL and nothing past
 * it; on 200 000 random rng states */
static void request_ids(void) {
    static const char hex[] = "0123456789abcdef";
    uint64_t keep0 = mg_worker.rng[0], keep1 = mg_worker.rng[1];
    int bad = 0;
    rng_state = 0x9e3779b97f4a7c15ULL;
    for (int n = 0; n < 200000; n++) {
        char id[40], want[33];
        uint64_t s0 = rnd() | 1, s1 = rnd(), a, b;
        mg_worker.rng[0] = s0, mg_worker.rng[1] = s1;
        a = mg_rng_next();
        b = mg_rng_next();
        for (int i = 0; i < 16; i++) {
            want[i] = hex[(a >> (i * 4)) & 15];
            want[16 + i] = hex[(b >> (i * 4)) & 15];
        }
        want[32] = '\0';
        memset(id, 'x', sizeof id);
        mg_worker.rng[0] = s0, mg_worker.rng[1] = s1;
        mg_request_id(id);
        if (memcmp(id, want, 33) != 0 || id[33] != 'x')
            bad++;
    }
    CHECK_INT(bad, 0);
    mg_worker.rng[0] = keep0, mg_worker.rng[1] = keep1;
}

int main(void) {
    mg_worker.base = event_base_new();
    CT_RUN(order_by_deadline);
    CT_RUN(rearm_moves_the_deadline);
    CT_RUN(disarm);
    CT_RUN(free_in_callback);
    CT_RUN(property);
    CT_RUN(many_durations);
    CT_RUN(request_ids);
    event_base_free(mg_worker.base);
    return ct_end();
}
