/*
 * ct.h -- the C unit tests' assertion macros and runner (spec/c/). Each
 * test_*.c is one binary linked against the real objects in build/; its
 * main runs its cases with CT_RUN and returns ct_end(). One line per case
 * ("ok - name" or "FAIL - name"), each failed check on its own line, and a
 * last line "ct: N passed, N failed" that tools/run-specs.sh adds to the
 * busted counts. Each case counts as one.
 */
#ifndef MG_CT_H
#define MG_CT_H

#include <stdio.h>
#include <string.h>

static int ct_passed, ct_failed, ct_case_bad;

#define CHECK(cond)                                                                                \
    do {                                                                                           \
        if (!(cond)) {                                                                             \
            ct_case_bad = 1;                                                                       \
            printf("    %s:%d: check failed: %s\n", __FILE__, __LINE__, #cond);                    \
        }                                                                                          \
    } while (0)

#define CHECK_INT(got, want)                                                                       \
    do {                                                                                           \
        long long ct_g = (long long)(got), ct_w = (long long)(want);                               \
        if (ct_g != ct_w) {                                                                        \
            ct_case_bad = 1;                                                                       \
            printf("    %s:%d: %s is %lld, want %lld\n", __FILE__, __LINE__, #got, ct_g, ct_w);    \
        }                                                                                          \
    } while (0)

#define CHECK_STR(got, want)                                                                       \
    do {                                                                                           \
        const char *ct_g = (got), *ct_w = (want);                                                  \
        if (ct_g == NULL || strcmp(ct_g, ct_w) != 0) {                                             \
            ct_case_bad = 1;                                                                       \
            printf("    %s:%d: %s is \"%s\", want \"%s\"\n", __FILE__, __LINE__, #got,             \
                   ct_g ? ct_g : "(null)", ct_w);                                                  \
        }                                                                                          \
    } while (0)

#define CT_RUN(fn)                                                                                 \
    do {                                                                                           \
        ct_case_bad = 0;                                                                           \
        fn();                                                                                      \
        if (ct_case_bad)                                                                           \
            ct_failed++;                                                                           \
        else                                                                                       \
            ct_passed++;                                                                           \
        printf("%s - %s: %s\n", ct_case_bad ? "FAIL" : "ok", __FILE__, #fn);                       \
        fflush(stdout);                                                                            \
    } while (0)

static inline int ct_end(void) {
    printf("ct: %d passed, %d failed\n", ct_passed, ct_failed);
    return ct_failed ? 1 : 0;
}

#endif
