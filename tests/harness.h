/*
 * tests/harness.h — the test harness: named tests, assertions that print
 * file:line and both values, a per-test timeout that fails the hung test by
 * name, and the closing line "N passed, N failed".
 *
 *   TEST(name) { ... }              registers a test (timeout: TH_TIMEOUT_S)
 *   TEST_T(name, seconds) { ... }   same, with its own timeout
 *   EXPECT_*(...)                   records a failure and goes on (any thread)
 *   ASSERT_*(...)                   records a failure and returns (test body)
 *
 * A test program runs every test, or those whose names contain argv[1].
 * XS_TEST_TIMEOUT_SCALE (env) multiplies every timeout (sanitizer builds).
 * Include it in exactly one .c file per test program: it defines main().
 */
#ifndef XSYNC_TESTS_HARNESS_H
#define XSYNC_TESTS_HARNESS_H

#include <inttypes.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

/* TH_TSAN: defined in ThreadSanitizer builds (gcc and clang), for the few
 * tests TSan cannot run (threads started after a multi-threaded fork). */
#if defined(__SANITIZE_THREAD__)
#define TH_TSAN 1
#elif defined(__has_feature)
#if __has_feature(thread_sanitizer)
#define TH_TSAN 1
#endif
#endif

#ifndef TH_TIMEOUT_S
#define TH_TIMEOUT_S 60
#endif
#define TH_MAX_TESTS 512

typedef struct th_test {
    const char *name;
    void (*fn)(void);
    int timeout_s;
} th_test;

static th_test th_tests[TH_MAX_TESTS];
static int th_ntests;
static _Atomic int th_failed_now; /* failures in the running test */

static inline void th_register(const char *name, void (*fn)(void), int timeout_s)
{
    if (th_ntests < TH_MAX_TESTS)
        th_tests[th_ntests++] = (th_test){name, fn, timeout_s};
}

#define TEST_T(name, seconds)                                                  \
    static void test_##name(void);                                             \
    __attribute__((constructor)) static void th_reg_##name(void)               \
    {                                                                          \
        th_register(#name, test_##name, seconds);                              \
    }                                                                          \
    static void test_##name(void)
#define TEST(name) TEST_T(name, TH_TIMEOUT_S)

static inline void th_fail(const char *file, int line, const char *what, const char *detail)
{
    atomic_fetch_add(&th_failed_now, 1);
    flockfile(stdout);
    printf("    %s:%d: %s%s%s\n", file, line, what, detail[0] ? "\n        " : "", detail);
    fflush(stdout);
    funlockfile(stdout);
}

static inline bool th_check(bool ok, const char *file, int line, const char *expr)
{
    if (!ok)
        th_fail(file, line, expr, "");
    return ok;
}

static inline bool th_check_int(bool ok, const char *file, int line, const char *op,
                                const char *ea, const char *eb, long long a, long long b)
{
    if (!ok) {
        char what[512], detail[256];
        snprintf(what, sizeof what, "expected %s %s %s", ea, op, eb);
        snprintf(detail, sizeof detail, "left: %lld, right: %lld", a, b);
        th_fail(file, line, what, detail);
    }
    return ok;
}

static inline bool th_check_str(const char *file, int line, const char *ea, const char *eb,
                                const char *a, const char *b)
{
    bool ok = a && b && strcmp(a, b) == 0;
    if (!ok) {
        char what[512], detail[512];
        snprintf(what, sizeof what, "expected %s == %s", ea, eb);
        snprintf(detail, sizeof detail, "left: \"%s\", right: \"%s\"", a ? a : "(null)",
                 b ? b : "(null)");
        th_fail(file, line, what, detail);
    }
    return ok;
}

/* Each operand is evaluated exactly once. */
#define TH_CMP(a, op, b)                                                       \
    __extension__({                                                            \
        long long th_a_ = (long long)(a), th_b_ = (long long)(b);              \
        th_check_int(th_a_ op th_b_, __FILE__, __LINE__, #op, #a, #b, th_a_, th_b_); \
    })

#define EXPECT(cond) th_check(!!(cond), __FILE__, __LINE__, #cond)
#define EXPECT_EQ(a, b) TH_CMP(a, ==, b)
#define EXPECT_NE(a, b) TH_CMP(a, !=, b)
#define EXPECT_LT(a, b) TH_CMP(a, <, b)
#define EXPECT_LE(a, b) TH_CMP(a, <=, b)
#define EXPECT_GT(a, b) TH_CMP(a, >, b)
#define EXPECT_GE(a, b) TH_CMP(a, >=, b)
#define EXPECT_PTR_EQ(a, b) TH_CMP((intptr_t)(a), ==, (intptr_t)(b))
#define EXPECT_STREQ(a, b) th_check_str(__FILE__, __LINE__, #a, #b, a, b)

#define ASSERT(cond) do { if (!EXPECT(cond)) return; } while (0)
#define ASSERT_EQ(a, b) do { if (!EXPECT_EQ(a, b)) return; } while (0)
#define ASSERT_NE(a, b) do { if (!EXPECT_NE(a, b)) return; } while (0)
#define ASSERT_LE(a, b) do { if (!EXPECT_LE(a, b)) return; } while (0)
#define ASSERT_GE(a, b) do { if (!EXPECT_GE(a, b)) return; } while (0)

/* ---- waiting for observable events (never sleep-and-hope) ---- */

/* A counter threads can bump and others can wait on. */
typedef struct th_event {
    pthread_mutex_t mu;
    pthread_cond_t cond;
    long count;
} th_event;

static inline void th_event_init(th_event *e)
{
    pthread_condattr_t a;
    pthread_condattr_init(&a);
    pthread_condattr_setclock(&a, CLOCK_MONOTONIC);
    pthread_mutex_init(&e->mu, NULL);
    pthread_cond_init(&e->cond, &a);
    pthread_condattr_destroy(&a);
    e->count = 0;
}

static inline void th_event_destroy(th_event *e)
{
    pthread_mutex_destroy(&e->mu);
    pthread_cond_destroy(&e->cond);
}

static inline void th_event_signal(th_event *e)
{
    pthread_mutex_lock(&e->mu);
    e->count++;
    pthread_cond_broadcast(&e->cond);
    pthread_mutex_unlock(&e->mu);
}

static inline long th_event_count(th_event *e)
{
    pthread_mutex_lock(&e->mu);
    long n = e->count;
    pthread_mutex_unlock(&e->mu);
    return n;
}

static inline int64_t th_now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

/* Waits until the count reaches n or timeout_ms passes; true if it did. */
static inline bool th_event_wait(th_event *e, long n, int64_t timeout_ms)
{
    int64_t end = th_now_ns() + timeout_ms * 1000000;
    struct timespec ts = {end / 1000000000, end % 1000000000};
    pthread_mutex_lock(&e->mu);
    while (e->count < n)
        if (pthread_cond_timedwait(&e->cond, &e->mu, &ts) != 0)
            break;
    bool ok = e->count >= n;
    pthread_mutex_unlock(&e->mu);
    return ok;
}

/* ---- the runner ---- */

static struct {
    pthread_mutex_t mu;
    pthread_cond_t cond;
    int64_t generation; /* bumped when a test finishes */
    const char *name;
    int64_t deadline_ns;
    int passed, failed;
} th_run = {PTHREAD_MUTEX_INITIALIZER, PTHREAD_COND_INITIALIZER, 0, NULL, 0, 0, 0};

static void *th_watchdog(void *arg)
{
    (void)arg;
    pthread_mutex_lock(&th_run.mu);
    for (;;) {
        int64_t gen = th_run.generation;
        if (th_run.name && th_now_ns() >= th_run.deadline_ns) {
            printf("--- FAIL: %s (timed out: the test hung)\n", th_run.name);
            printf("%d passed, %d failed\n", th_run.passed, th_run.failed + 1);
            fflush(stdout);
            _exit(1);
        }
        pthread_mutex_unlock(&th_run.mu);
        usleep(50 * 1000); /* the watchdog polls; tests never do */
        pthread_mutex_lock(&th_run.mu);
        (void)gen;
    }
    return NULL;
}

int main(int argc, char **argv)
{
    const char *filter = argc > 1 ? argv[1] : NULL;
    double scale = 1.0;
    const char *s = getenv("XS_TEST_TIMEOUT_SCALE");
    if (s && atof(s) > 0)
        scale = atof(s);
    setvbuf(stdout, NULL, _IOLBF, 0);
    pthread_t wd;
    pthread_create(&wd, NULL, th_watchdog, NULL);
    pthread_detach(wd);
    for (int i = 0; i < th_ntests; i++) {
        th_test *t = &th_tests[i];
        if (filter && !strstr(t->name, filter))
            continue;
        printf("=== RUN   %s\n", t->name);
        atomic_store(&th_failed_now, 0);
        int64_t start = th_now_ns();
        pthread_mutex_lock(&th_run.mu);
        th_run.name = t->name;
        th_run.deadline_ns = start + (int64_t)(t->timeout_s * scale * 1e9);
        pthread_mutex_unlock(&th_run.mu);
        t->fn();
        double secs = (double)(th_now_ns() - start) / 1e9;
        bool ok = atomic_load(&th_failed_now) == 0;
        pthread_mutex_lock(&th_run.mu);
        th_run.name = NULL;
        th_run.generation++;
        if (ok)
            th_run.passed++;
        else
            th_run.failed++;
        pthread_mutex_unlock(&th_run.mu);
        printf("--- %s: %s (%.2fs)\n", ok ? "PASS" : "FAIL", t->name, secs);
    }
    pthread_mutex_lock(&th_run.mu);
    int passed = th_run.passed, failed = th_run.failed;
    pthread_mutex_unlock(&th_run.mu);
    printf("%d passed, %d failed\n", passed, failed);
    return failed ? 1 : 0;
}

#endif
