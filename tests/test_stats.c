/*
 * Tests for the stat sources: the vtable entry points, the in-memory
 * registry (counters, log-linear timers), the Prometheus text writer and
 * the statsd emitter.
 *
 * statsd tests talk to a UDP socket of their own on 127.0.0.1 (ephemeral
 * port) and wait for datagrams with poll() bounded by a timeout, or for a
 * sentinel line sent last (loopback keeps one socket's datagrams in order),
 * never for a fixed time.
 */
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <netinet/in.h>
#include <poll.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <xsync/alloc.h>
#include <xsync/context.h>
#include <xsync/error.h>
#include <xsync/pool.h>
#include <xsync/stats.h>
#include <xsync/time.h>

#include "harness.h"

#define WAIT_MS 10000

static uint64_t rng_next(uint64_t *s)
{
    uint64_t x = *s;
    x ^= x >> 12;
    x ^= x << 25;
    x ^= x >> 27;
    *s = x;
    return x * UINT64_C(2685821657736338717);
}

/* uniform in [0, 1) */
static double rng_unit(uint64_t *s)
{
    return (double)(rng_next(s) >> 11) * (1.0 / 9007199254740992.0);
}

/* The test programs do not link libm: the three functions they need. */
static double abs_d(double x)
{
    return x < 0 ? -x : x;
}

static size_t ceil_rank(double x)
{
    size_t r = (size_t)x;
    return (double)r < x ? r + 1 : r;
}

/* Natural log of x > 0: x = m * 2^e, m in [0.5, 1), ln m by the atanh series. */
static double ln(double x)
{
    int e = 0;
    while (x < 0.5) {
        x *= 2;
        e--;
    }
    while (x >= 1) {
        x /= 2;
        e++;
    }
    double y = (x - 1) / (x + 1), y2 = y * y, term = y, sum = 0;
    for (int k = 1; k < 80; k += 2) {
        sum += term / k;
        term *= y2;
    }
    return 2 * sum + e * 0.69314718055994530942;
}

static xs_stat_source *new_registry(const xs_allocator *a)
{
    xs_stat_source *r = NULL;
    int rc = xs_stat_registry_new(a, &r);
    if (rc != 0)
        printf("    xs_stat_registry_new: %s\n", xs_strerror(rc));
    return r;
}

static xs_stat_counter *counter_of(xs_stat_source *s, const char *name)
{
    xs_stat_counter *c = NULL;
    int rc = xs_stat_counter_get(s, name, &c);
    if (rc != 0)
        printf("    counter \"%s\": %s\n", name, xs_strerror(rc));
    return c;
}

static xs_stat_timer *timer_of(xs_stat_source *s, const char *name)
{
    xs_stat_timer *t = NULL;
    int rc = xs_stat_timer_get(s, name, &t);
    if (rc != 0)
        printf("    timer \"%s\": %s\n", name, xs_strerror(rc));
    return t;
}

static int64_t counter_value(xs_stat_source *s, const char *name)
{
    int64_t v = INT64_MIN;
    int rc = xs_stat_registry_counter_value(s, name, &v);
    if (rc != 0)
        printf("    counter_value \"%s\": %s\n", name, xs_strerror(rc));
    return v;
}

/* ======================================================================
 * The interface
 * ====================================================================== */

TEST(vtable_entry_points_check_arguments)
{
    xs_stat_counter *c = (xs_stat_counter *)1;
    xs_stat_timer *t = (xs_stat_timer *)1;
    EXPECT_EQ(xs_stat_counter_get(NULL, "x", &c), XS_EINVAL);
    EXPECT_EQ(xs_stat_timer_get(NULL, "x", &t), XS_EINVAL);
    xs_stat_source *r = new_registry(NULL);
    ASSERT(r);
    EXPECT_EQ(xs_stat_counter_get(r, NULL, &c), XS_EINVAL);
    EXPECT_EQ(xs_stat_timer_get(r, NULL, &t), XS_EINVAL);
    EXPECT_EQ(xs_stat_counter_get(r, "x", NULL), XS_EINVAL);
    EXPECT_EQ(xs_stat_timer_get(r, "x", NULL), XS_EINVAL);
    EXPECT_PTR_EQ(c, 1);
    EXPECT_PTR_EQ(t, 1);
    /* a source without ops, or without the op */
    xs_stat_source bare = {NULL};
    EXPECT_EQ(xs_stat_counter_get(&bare, "x", &c), XS_EINVAL);
    xs_stat_source_ops none = {NULL, NULL, NULL};
    xs_stat_source empty = {&none};
    EXPECT_EQ(xs_stat_timer_get(&empty, "x", &t), XS_EINVAL);
    xs_stat_source_free(&empty); /* no free op: nothing */
    xs_stat_source_free(NULL);
    /* NULL handles are no-ops */
    xs_stat_add(NULL, 1);
    xs_stat_record(NULL, 1);
    xs_stat_source_free(r);
}

/* ======================================================================
 * Registry
 * ====================================================================== */

TEST(registry_counters_add_and_read)
{
    xs_stat_source *r = new_registry(NULL);
    ASSERT(r);
    xs_stat_counter *a = counter_of(r, "req.success");
    xs_stat_counter *a2 = counter_of(r, "req.success");
    ASSERT(a && a2);
    EXPECT_PTR_EQ(a, a2); /* one handle per name */
    xs_stat_add(a, 3);
    xs_stat_add(a2, 4);
    xs_stat_add(a, -2);
    EXPECT_EQ(counter_value(r, "req.success"), 5);
    int64_t v = 0;
    EXPECT_EQ(xs_stat_counter_value(a, &v), 0);
    EXPECT_EQ(v, 5);
    /* unknown names, and a counter is not a timer */
    EXPECT_EQ(xs_stat_registry_counter_value(r, "nope", &v), XS_ENOENT);
    xs_stat_summary s;
    EXPECT_EQ(xs_stat_registry_timer_snapshot(r, "req.success", &s), XS_ENOENT);
    /* a timer may share a counter's name: separate namespaces */
    xs_stat_timer *t = timer_of(r, "req.success");
    ASSERT(t);
    EXPECT((void *)t != (void *)a);
    xs_stat_record(t, 7);
    EXPECT_EQ(counter_value(r, "req.success"), 5);
    EXPECT_EQ(xs_stat_registry_timer_snapshot(r, "req.success", &s), 0);
    EXPECT_EQ(s.count, 1);
    /* extremes wrap, they do not trap */
    xs_stat_counter *big = counter_of(r, "big");
    ASSERT(big);
    xs_stat_add(big, INT64_MAX);
    xs_stat_add(big, 1);
    EXPECT_EQ(counter_value(r, "big"), INT64_MIN);
    xs_stat_source_free(r);
}

TEST(registry_timer_snapshot_exact_fields)
{
    xs_stat_source *r = new_registry(NULL);
    ASSERT(r);
    xs_stat_timer *t = timer_of(r, "lat");
    ASSERT(t);
    xs_stat_summary s;
    memset(&s, 0xff, sizeof s);
    EXPECT_EQ(xs_stat_timer_snapshot(t, &s), 0);
    EXPECT_EQ(s.count, 0); /* empty: all zero */
    EXPECT_EQ(s.sum, 0);
    EXPECT_EQ(s.min, 0);
    EXPECT_EQ(s.max, 0);
    EXPECT_EQ(s.p50, 0);
    EXPECT_EQ(s.p99, 0);
    int64_t q = -1;
    EXPECT_EQ(xs_stat_timer_quantile(t, 0.5, &q), 0);
    EXPECT_EQ(q, 0);
    /* below 256 ns every value has its own bucket: exact */
    for (int v = 1; v <= 100; v++)
        xs_stat_record(t, v);
    EXPECT_EQ(xs_stat_timer_snapshot(t, &s), 0);
    EXPECT_EQ(s.count, 100);
    EXPECT_EQ(s.sum, 5050);
    EXPECT_EQ(s.min, 1);
    EXPECT_EQ(s.max, 100);
    EXPECT_EQ(s.p50, 50);
    EXPECT_EQ(s.p90, 90);
    EXPECT_EQ(s.p99, 99);
    EXPECT_EQ(xs_stat_timer_quantile(t, 0.0, &q), 0);
    EXPECT_EQ(q, 1);
    EXPECT_EQ(xs_stat_timer_quantile(t, 1.0, &q), 0);
    EXPECT_EQ(q, 100);
    EXPECT_EQ(xs_stat_timer_quantile(t, 0.255, &q), 0);
    EXPECT_EQ(q, 26); /* rank ceil(25.5) = 26 */
    /* negative durations count as 0 */
    xs_stat_record(t, -5);
    EXPECT_EQ(xs_stat_timer_snapshot(t, &s), 0);
    EXPECT_EQ(s.count, 101);
    EXPECT_EQ(s.min, 0);
    EXPECT_EQ(s.sum, 5050);
    /* the largest value fits the last bucket; max and quantile 1 exact */
    xs_stat_record(t, INT64_MAX);
    EXPECT_EQ(xs_stat_timer_snapshot(t, &s), 0);
    EXPECT_EQ(s.max, INT64_MAX);
    EXPECT_EQ(xs_stat_timer_quantile(t, 1.0, &q), 0);
    EXPECT_EQ(q, INT64_MAX);
    xs_stat_source_free(r);
}

TEST(registry_quantile_rejects_bad_q_and_foreign_handles)
{
    xs_stat_source *r = new_registry(NULL);
    ASSERT(r);
    xs_stat_timer *t = timer_of(r, "t");
    ASSERT(t);
    int64_t q = 42;
    EXPECT_EQ(xs_stat_timer_quantile(t, -0.01, &q), XS_EINVAL);
    EXPECT_EQ(xs_stat_timer_quantile(t, 1.01, &q), XS_EINVAL);
    EXPECT_EQ(xs_stat_timer_quantile(t, NAN, &q), XS_EINVAL);
    EXPECT_EQ(xs_stat_timer_quantile(t, 0.5, NULL), XS_EINVAL);
    EXPECT_EQ(xs_stat_timer_quantile(NULL, 0.5, &q), XS_EINVAL);
    EXPECT_EQ(q, 42);
    xs_stat_summary s;
    EXPECT_EQ(xs_stat_timer_snapshot(NULL, &s), XS_EINVAL);
    EXPECT_EQ(xs_stat_timer_snapshot(t, NULL), XS_EINVAL);
    int64_t v;
    EXPECT_EQ(xs_stat_counter_value(NULL, &v), XS_EINVAL);
    /* handles of another kind of source */
    xs_stat_source *sd = NULL;
    ASSERT_EQ(xs_stat_statsd_new(NULL, &sd), 0);
    xs_stat_counter *c = counter_of(sd, "c");
    xs_stat_timer *st = timer_of(sd, "t");
    ASSERT(c && st);
    EXPECT_EQ(xs_stat_counter_value(c, &v), XS_EINVAL);
    EXPECT_EQ(xs_stat_timer_snapshot(st, &s), XS_EINVAL);
    EXPECT_EQ(xs_stat_timer_quantile(st, 0.5, &q), XS_EINVAL);
    EXPECT_EQ(xs_stat_registry_counter_value(sd, "c", &v), XS_EINVAL);
    EXPECT_EQ(xs_stat_registry_timer_snapshot(sd, "t", &s), XS_EINVAL);
    EXPECT_EQ(xs_stat_registry_counter_value(NULL, "c", &v), XS_EINVAL);
    EXPECT_EQ(xs_stat_registry_counter_value(r, NULL, &v), XS_EINVAL);
    EXPECT_EQ(xs_stat_registry_counter_value(r, "c", NULL), XS_EINVAL);
    EXPECT_EQ(xs_stat_registry_timer_snapshot(r, "t", NULL), XS_EINVAL);
    xs_stat_source_free(sd);
    xs_stat_source_free(r);
}

TEST(registry_names_any_bytes_but_not_null_or_empty)
{
    xs_stat_source *r = new_registry(NULL);
    ASSERT(r);
    xs_stat_counter *c = (xs_stat_counter *)1;
    EXPECT_EQ(xs_stat_counter_get(r, "", &c), XS_EINVAL);
    xs_stat_timer *t = (xs_stat_timer *)1;
    EXPECT_EQ(xs_stat_timer_get(r, "", &t), XS_EINVAL);
    EXPECT_PTR_EQ(c, 1);
    /* the vtable functions themselves check too */
    EXPECT_EQ(r->ops->counter(r, NULL, &c), XS_EINVAL);
    EXPECT_EQ(r->ops->timer(r, "x", NULL), XS_EINVAL);
    /* every other byte is kept verbatim */
    const char *odd = "\x01\xff:|@\n \"\\%{}=";
    xs_stat_counter *o = counter_of(r, odd);
    ASSERT(o);
    xs_stat_add(o, 9);
    EXPECT_EQ(counter_value(r, odd), 9);
    int64_t v;
    EXPECT_EQ(xs_stat_registry_counter_value(r, "\x01\xff:|@\n \"\\%{}", &v), XS_ENOENT);
    /* too long for the map */
    size_t n = 65536 + 2;
    char *lng = malloc(n);
    ASSERT(lng);
    memset(lng, 'a', n - 1);
    lng[n - 1] = 0;
    EXPECT_EQ(xs_stat_counter_get(r, lng, &c), XS_EINVAL);
    free(lng);
    xs_stat_source_free(r);
}

static int visit(const char *name, xs_stat_counter *c, xs_stat_timer *t, void *arg)
{
    int *seen = arg;
    EXPECT((c == NULL) != (t == NULL));
    if (c && strcmp(name, "c1") == 0)
        seen[0]++;
    else if (c && strcmp(name, "c2") == 0)
        seen[1]++;
    else if (t && strcmp(name, "c1") == 0)
        seen[2]++;
    else
        seen[3]++;
    if (c) {
        int64_t v = 0;
        EXPECT_EQ(xs_stat_counter_value(c, &v), 0);
        EXPECT_EQ(v, strcmp(name, "c1") == 0 ? 1 : 2);
    }
    return 0;
}

static int stop_at_first(const char *name, xs_stat_counter *c, xs_stat_timer *t, void *arg)
{
    (void)name, (void)c, (void)t;
    ++*(int *)arg;
    return 77;
}

TEST(registry_range_visits_every_metric_once)
{
    xs_stat_source *r = new_registry(NULL);
    ASSERT(r);
    int seen[4] = {0};
    EXPECT_EQ(xs_stat_registry_range(r, visit, seen), 0); /* empty */
    EXPECT_EQ(seen[0] + seen[1] + seen[2] + seen[3], 0);
    xs_stat_add(counter_of(r, "c1"), 1);
    xs_stat_add(counter_of(r, "c2"), 2);
    xs_stat_record(timer_of(r, "c1"), 5);
    EXPECT_EQ(xs_stat_registry_range(r, visit, seen), 0);
    EXPECT_EQ(seen[0], 1);
    EXPECT_EQ(seen[1], 1);
    EXPECT_EQ(seen[2], 1);
    EXPECT_EQ(seen[3], 0);
    int calls = 0;
    EXPECT_EQ(xs_stat_registry_range(r, stop_at_first, &calls), 77);
    EXPECT_EQ(calls, 1);
    EXPECT_EQ(xs_stat_registry_range(r, NULL, NULL), XS_EINVAL);
    EXPECT_EQ(xs_stat_registry_range(NULL, visit, seen), XS_EINVAL);
    xs_stat_source_free(r);
}

static int64_t stripes_here(void);

TEST(registry_emitting_allocates_at_most_a_histogram_per_stripe)
{
    xs_alloc_counter ac;
    xs_alloc_counter_init(&ac, NULL);
    xs_stat_source *r = new_registry(&ac.allocator);
    ASSERT(r);
    xs_stat_counter *c = counter_of(r, "c");
    xs_stat_timer *t = timer_of(r, "t");
    ASSERT(c && t);
    int64_t before = atomic_load(&ac.allocs);
    for (int i = 0; i < 100000; i++) {
        xs_stat_add(c, 1);
        xs_stat_record(t, i * 997);
    }
    /* counters never allocate; one thread's stripe may get its own histogram
     * (after many records on the shared one), once */
    EXPECT_LE(atomic_load(&ac.allocs) - before, 1);
    before = atomic_load(&ac.allocs);
    for (int i = 0; i < 100000; i++)
        xs_stat_record(t, i * 997);
    EXPECT_EQ(atomic_load(&ac.allocs), before);
    /* asking again for an existing name allocates nothing either */
    for (int i = 0; i < 1000; i++)
        EXPECT_PTR_EQ(counter_of(r, "c"), c);
    EXPECT_EQ(atomic_load(&ac.allocs), before);
    xs_stat_source_free(r);
    EXPECT_EQ(atomic_load(&ac.live_bytes), 0);
}

typedef struct ns_arg {
    xs_stat_timer *t;
    int64_t value;
} ns_arg;

static void *neighbour_main(void *p)
{
    ns_arg *a = p;
    for (int i = 0; i < 10000; i++)
        xs_stat_record(a->t, a->value);
    return NULL;
}

TEST(registry_timer_stripes_on_neighbouring_buckets_get_their_own_histograms)
{
    /* Two new threads get consecutive stripes, at most one of them stripe 0
     * (which owns the shared histogram).  They record neighbouring buckets
     * (1000 and 1008 ns: one cache line), which never makes a CAS fail; the
     * other stripe must still get a histogram of its own. */
    if (stripes_here() < 2) {
        printf("    skipped: one stripe on this machine\n");
        return;
    }
    xs_alloc_counter ac;
    xs_alloc_counter_init(&ac, NULL);
    xs_stat_source *r = new_registry(&ac.allocator);
    ASSERT(r);
    xs_stat_timer *t = timer_of(r, "t");
    ASSERT(t);
    int64_t before = atomic_load(&ac.allocs);
    ns_arg args[2] = {{t, 1000}, {t, 1008}};
    for (int i = 0; i < 2; i++) { /* one after the other: no CAS can fail */
        pthread_t th;
        ASSERT_EQ(pthread_create(&th, NULL, neighbour_main, &args[i]), 0);
        pthread_join(th, NULL);
    }
    int64_t made = atomic_load(&ac.allocs) - before;
    EXPECT_GE(made, 1);
    EXPECT_LE(made, 2);
    xs_stat_summary sum;
    EXPECT_EQ(xs_stat_timer_snapshot(t, &sum), 0);
    EXPECT_EQ(sum.count, 20000);
    EXPECT_EQ(sum.sum, 10000 * 1000 + 10000 * 1008);
    int64_t q = 0;
    EXPECT_EQ(xs_stat_timer_quantile(t, 0.25, &q), 0);
    EXPECT(q >= 1000 && q < 1008); /* 1000's bucket, not 1008's */
    EXPECT_EQ(xs_stat_timer_quantile(t, 1.0, &q), 0);
    EXPECT_EQ(q, 1008);
    xs_stat_source_free(r);
    EXPECT_EQ(atomic_load(&ac.live_bytes), 0);
}

/* ---- histogram accuracy: 10^6 samples against the sorted sample ---- */

static int cmp_i64(const void *a, const void *b)
{
    int64_t x = *(const int64_t *)a, y = *(const int64_t *)b;
    return (x > y) - (x < y);
}

/* The value at rank ceil(q * n) (at least 1) of the sorted sample. */
static int64_t exact_quantile(const int64_t *sorted, size_t n, double q)
{
    size_t rank = ceil_rank(q * (double)n);
    if (rank < 1)
        rank = 1;
    if (rank > n)
        rank = n;
    return sorted[rank - 1];
}

static void check_quantiles(const char *what, int64_t *sample, size_t n)
{
    xs_stat_source *r = new_registry(NULL);
    if (!EXPECT(r))
        return;
    xs_stat_timer *t = timer_of(r, what);
    if (!EXPECT(t)) {
        xs_stat_source_free(r);
        return;
    }
    int64_t sum = 0;
    for (size_t i = 0; i < n; i++) {
        xs_stat_record(t, sample[i]);
        sum += sample[i];
    }
    qsort(sample, n, sizeof *sample, cmp_i64);
    xs_stat_summary s;
    EXPECT_EQ(xs_stat_timer_snapshot(t, &s), 0);
    EXPECT_EQ(s.count, n);
    EXPECT_EQ(s.sum, sum);
    EXPECT_EQ(s.min, sample[0]);
    EXPECT_EQ(s.max, sample[n - 1]);
    static const double qs[] = {0,    0.001, 0.01, 0.1,  0.25,   0.5,    0.75,
                                0.9,  0.95,  0.99, 0.999, 0.9999, 1.0};
    double worst = 0;
    for (size_t i = 0; i < sizeof qs / sizeof qs[0]; i++) {
        int64_t want = exact_quantile(sample, n, qs[i]), got = -1;
        EXPECT_EQ(xs_stat_timer_quantile(t, qs[i], &got), 0);
        double err = want ? abs_d((double)got - (double)want) / (double)want : (double)(got != 0);
        if (err > worst)
            worst = err;
        if (err >= 0.01)
            printf("    %s q=%g: got %lld, exact %lld (error %.4f%%)\n", what, qs[i],
                   (long long)got, (long long)want, err * 100);
        EXPECT(err < 0.01);
    }
    /* the snapshot's quantiles are the same numbers */
    int64_t p;
    xs_stat_timer_quantile(t, 0.5, &p);
    EXPECT_EQ(s.p50, p);
    xs_stat_timer_quantile(t, 0.9, &p);
    EXPECT_EQ(s.p90, p);
    xs_stat_timer_quantile(t, 0.99, &p);
    EXPECT_EQ(s.p99, p);
    printf("    %s: worst relative error %.4f%% over %zu quantiles\n", what, worst * 100,
           sizeof qs / sizeof qs[0]);
    xs_stat_source_free(r);
}

TEST(histogram_quantiles_uniform_1e6_within_1pct)
{
    size_t n = 1000000;
    int64_t *v = malloc(n * sizeof *v);
    ASSERT(v);
    uint64_t s = 0x1234567;
    for (size_t i = 0; i < n; i++) /* uniform over [0, 10 s) in ns */
        v[i] = (int64_t)(rng_unit(&s) * 1e10);
    check_quantiles("uniform", v, n);
    free(v);
}

TEST(histogram_quantiles_exponential_1e6_within_1pct)
{
    size_t n = 1000000;
    int64_t *v = malloc(n * sizeof *v);
    ASSERT(v);
    uint64_t s = 0xfeedface;
    for (size_t i = 0; i < n; i++) /* exponential, mean 1 ms */
        v[i] = (int64_t)(-ln(1.0 - rng_unit(&s)) * 1e6);
    check_quantiles("exponential", v, n);
    free(v);
}

/* ---- allocation failure ---- */

TEST(registry_enomem_at_every_k)
{
    /* the constructor */
    int k, created = 0;
    for (k = 1; k < 200 && !created; k++) {
        xs_alloc_counter ac;
        xs_alloc_counter_init(&ac, NULL);
        xs_alloc_counter_fail_at(&ac, k, 0);
        xs_stat_source *r = NULL;
        int rc = xs_stat_registry_new(&ac.allocator, &r);
        if (rc == 0) {
            created = 1;
            xs_alloc_counter_fail_at(&ac, 0, 0);
            xs_stat_add(counter_of(r, "c"), 1);
            EXPECT_EQ(counter_value(r, "c"), 1);
            xs_stat_source_free(r);
        } else {
            EXPECT_EQ(rc, XS_ENOMEM);
            EXPECT(r == NULL);
        }
        EXPECT_EQ(atomic_load(&ac.live_bytes), 0);
    }
    EXPECT(created);
    printf("    registry_new: %d allocations\n", k - 2);

    /* the first counter and the first timer (also with every later
     * allocation failing: fail_all) */
    for (int kind = 0; kind < 2; kind++) {
        for (int all = 0; all < 2; all++) {
            int done = 0;
            for (k = 1; k < 200 && !done; k++) {
                xs_alloc_counter ac;
                xs_alloc_counter_init(&ac, NULL);
                xs_stat_source *r = new_registry(&ac.allocator);
                ASSERT(r);
                xs_alloc_counter_fail_at(&ac, k, all);
                xs_stat_counter *c = (xs_stat_counter *)1;
                xs_stat_timer *t = (xs_stat_timer *)1;
                int rc = kind == 0 ? xs_stat_counter_get(r, "first", &c)
                                   : xs_stat_timer_get(r, "first", &t);
                xs_alloc_counter_fail_at(&ac, 0, 0);
                if (rc == 0) {
                    done = 1;
                } else {
                    EXPECT_EQ(rc, XS_ENOMEM);
                    EXPECT_PTR_EQ(kind == 0 ? (void *)c : (void *)t, 1);
                    int64_t v;
                    xs_stat_summary s;
                    EXPECT_EQ(kind == 0 ? xs_stat_registry_counter_value(r, "first", &v)
                                        : xs_stat_registry_timer_snapshot(r, "first", &s),
                              XS_ENOENT);
                }
                /* usable afterwards */
                xs_stat_add(counter_of(r, "first"), 2);
                xs_stat_record(timer_of(r, "first"), 3);
                EXPECT_EQ(counter_value(r, "first"), 2);
                xs_stat_summary s;
                EXPECT_EQ(xs_stat_registry_timer_snapshot(r, "first", &s), 0);
                EXPECT_EQ(s.count, 1);
                xs_stat_source_free(r);
                EXPECT_EQ(atomic_load(&ac.live_bytes), 0);
            }
            EXPECT(done);
        }
    }
}

/* ---- concurrency ---- */

#define CONC_THREADS 8
#define CONC_OPS 100000

typedef struct conc_arg {
    xs_stat_source *src;
    int id;
    th_event *go;
} conc_arg;

static void *conc_worker(void *p)
{
    conc_arg *a = p;
    th_event_wait(a->go, 1, WAIT_MS);
    char own[32];
    snprintf(own, sizeof own, "own.%d", a->id);
    /* handles are fetched inside the threads: creation races too */
    xs_stat_counter *shared = counter_of(a->src, "shared");
    xs_stat_counter *mine = counter_of(a->src, own);
    xs_stat_timer *tshared = timer_of(a->src, "shared");
    xs_stat_timer *tmine = timer_of(a->src, own);
    EXPECT(shared && mine && tshared && tmine);
    for (int i = 0; i < CONC_OPS; i++) {
        xs_stat_add(shared, 1);
        xs_stat_add(mine, 2);
        xs_stat_record(tshared, (int64_t)a->id * CONC_OPS + i);
        xs_stat_record(tmine, i);
        if ((i & 1023) == 0) /* lookups of existing names in the mix */
            EXPECT_PTR_EQ(counter_of(a->src, "shared"), shared);
    }
    return NULL;
}

TEST_T(registry_concurrent_adds_and_records_exact, 300)
{
    xs_stat_source *r = new_registry(NULL);
    ASSERT(r);
    th_event go;
    th_event_init(&go);
    pthread_t th[CONC_THREADS];
    conc_arg args[CONC_THREADS];
    for (int i = 0; i < CONC_THREADS; i++) {
        args[i] = (conc_arg){r, i, &go};
        ASSERT_EQ(pthread_create(&th[i], NULL, conc_worker, &args[i]), 0);
    }
    th_event_signal(&go);
    for (int i = 0; i < CONC_THREADS; i++)
        pthread_join(th[i], NULL);
    EXPECT_EQ(counter_value(r, "shared"), (int64_t)CONC_THREADS * CONC_OPS);
    int64_t n = (int64_t)CONC_THREADS * CONC_OPS;
    xs_stat_summary s;
    EXPECT_EQ(xs_stat_registry_timer_snapshot(r, "shared", &s), 0);
    EXPECT_EQ(s.count, n);
    EXPECT_EQ(s.sum, n * (n - 1) / 2);
    EXPECT_EQ(s.min, 0);
    EXPECT_EQ(s.max, n - 1);
    for (int i = 0; i < CONC_THREADS; i++) {
        char own[32];
        snprintf(own, sizeof own, "own.%d", i);
        EXPECT_EQ(counter_value(r, own), 2 * CONC_OPS);
        EXPECT_EQ(xs_stat_registry_timer_snapshot(r, own, &s), 0);
        EXPECT_EQ(s.count, CONC_OPS);
        EXPECT_EQ(s.sum, (int64_t)CONC_OPS * (CONC_OPS - 1) / 2);
        EXPECT_EQ(s.max, CONC_OPS - 1);
    }
    th_event_destroy(&go);
    xs_stat_source_free(r);
}

/* ---- many threads recording the same latency (one histogram bucket) ---- */

#define SB_VALUE 123456
#define SB_RARE 7000000 /* every fourth record, so the quantiles mean something */

typedef struct sb_arg {
    xs_stat_timer *t;
    th_event *go;
} sb_arg;

static void *same_bucket_worker(void *p)
{
    sb_arg *a = p;
    th_event_wait(a->go, 1, WAIT_MS);
    for (int i = 0; i < CONC_OPS; i++)
        xs_stat_record(a->t, (i & 3) == 3 ? SB_RARE : SB_VALUE);
    return NULL;
}

/* The stripe count the registry uses: CPUs rounded up to a power of two, at
 * most 64. */
static int64_t stripes_here(void)
{
    long n = sysconf(_SC_NPROCESSORS_CONF);
    int64_t s = 1;
    while (s < n && s < 64)
        s <<= 1;
    return s;
}

/* Records from CONC_THREADS threads into one timer, every thread the same
 * two values; checks that nothing was lost or double counted.  Returns the
 * allocations the recording made. */
static int64_t same_bucket_round(xs_alloc_counter *ac, bool fail_allocations)
{
    xs_stat_source *r = new_registry(&ac->allocator);
    if (!EXPECT(r))
        return -1;
    xs_stat_timer *t = timer_of(r, "hot");
    if (!EXPECT(t)) {
        xs_stat_source_free(r);
        return -1;
    }
    th_event go;
    th_event_init(&go);
    pthread_t th[CONC_THREADS];
    sb_arg arg = {t, &go};
    int64_t before = atomic_load(&ac->allocs);
    if (fail_allocations)
        xs_alloc_counter_fail_at(ac, 1, 1);
    for (int i = 0; i < CONC_THREADS; i++)
        EXPECT_EQ(pthread_create(&th[i], NULL, same_bucket_worker, &arg), 0);
    th_event_signal(&go);
    for (int i = 0; i < CONC_THREADS; i++)
        pthread_join(th[i], NULL);
    xs_alloc_counter_fail_at(ac, 0, 0);
    int64_t made = atomic_load(&ac->allocs) - before;
    int64_t n = (int64_t)CONC_THREADS * CONC_OPS, rare = n / 4;
    xs_stat_summary s;
    EXPECT_EQ(xs_stat_timer_snapshot(t, &s), 0);
    EXPECT_EQ(s.count, n);
    EXPECT_EQ(s.sum, (n - rare) * SB_VALUE + rare * SB_RARE);
    EXPECT_EQ(s.min, SB_VALUE);
    EXPECT_EQ(s.max, SB_RARE);
    EXPECT(abs_d((double)s.p50 - SB_VALUE) <= SB_VALUE * 0.004);
    EXPECT(abs_d((double)s.p90 - SB_RARE) <= SB_RARE * 0.004); /* among the rare ones */
    int64_t q = 0;
    EXPECT_EQ(xs_stat_timer_quantile(t, 0.74, &q), 0);
    EXPECT(abs_d((double)q - SB_VALUE) <= SB_VALUE * 0.004);
    EXPECT_EQ(xs_stat_timer_quantile(t, 0.76, &q), 0);
    EXPECT(abs_d((double)q - SB_RARE) <= SB_RARE * 0.004);
    EXPECT_EQ(xs_stat_timer_quantile(t, 1.0, &q), 0);
    EXPECT_EQ(q, SB_RARE); /* the max, exactly */
    th_event_destroy(&go);
    xs_stat_source_free(r);
    EXPECT_EQ(atomic_load(&ac->live_bytes), 0);
    return made;
}

TEST_T(registry_timer_same_bucket_from_many_threads_exact, 300)
{
    xs_alloc_counter ac;
    xs_alloc_counter_init(&ac, NULL);
    int64_t made = same_bucket_round(&ac, false);
    /* contention may give stripes their own histograms: at most one each
     * for the stripes other than the first */
    EXPECT_GE(made, 0);
    EXPECT_LE(made, stripes_here() - 1);
    printf("    %lld stripe histograms allocated (%lld stripes)\n", (long long)made,
           (long long)stripes_here());
}

TEST_T(registry_timer_contention_survives_allocation_failure, 300)
{
    /* every allocation fails while the threads record: the timer keeps
     * counting in its shared histogram, exactly */
    xs_alloc_counter ac;
    xs_alloc_counter_init(&ac, NULL);
    EXPECT_EQ(same_bucket_round(&ac, true), 0);
}

/* ======================================================================
 * Prometheus
 * ====================================================================== */

/* The exposition as a malloc'ed string (size query, then render). */
static char *render(xs_stat_source *r)
{
    size_t len = 0;
    int rc = xs_stat_prometheus_write(r, NULL, 0, &len);
    if (rc != 0) {
        printf("    prometheus_write: %s\n", xs_strerror(rc));
        return NULL;
    }
    char *buf = malloc(len + 1);
    if (!buf)
        return NULL;
    size_t len2 = 0;
    rc = xs_stat_prometheus_write(r, buf, len + 1, &len2);
    EXPECT_EQ(rc, 0);
    EXPECT_EQ(len2, len);
    return buf;
}

TEST(prometheus_exact_exposition)
{
    xs_stat_source *r = new_registry(NULL);
    ASSERT(r);
    xs_stat_add(counter_of(r, "all_actions.success"), 12);
    xs_stat_add(counter_of(r, "Error.count"), -5);
    xs_stat_timer *lat = timer_of(r, "all_actions.latency");
    xs_stat_record(lat, 100);
    xs_stat_record(lat, 250);
    xs_stat_record(lat, 200);
    timer_of(r, "idle");
    char *out = render(r);
    ASSERT(out);
    const char *want =
        "# HELP error_count_total xsync counter \"Error.count\"\n"
        "# TYPE error_count_total counter\n"
        "error_count_total -5\n"
        "# HELP all_actions_latency_seconds xsync timer \"all_actions.latency\"\n"
        "# TYPE all_actions_latency_seconds summary\n"
        "all_actions_latency_seconds{quantile=\"0.5\"} 0.0000002\n"
        "all_actions_latency_seconds{quantile=\"0.9\"} 0.00000025\n"
        "all_actions_latency_seconds{quantile=\"0.99\"} 0.00000025\n"
        "all_actions_latency_seconds_sum 0.00000055\n"
        "all_actions_latency_seconds_count 3\n"
        "# HELP all_actions_success_total xsync counter \"all_actions.success\"\n"
        "# TYPE all_actions_success_total counter\n"
        "all_actions_success_total 12\n"
        "# HELP idle_seconds xsync timer \"idle\"\n"
        "# TYPE idle_seconds summary\n"
        "idle_seconds{quantile=\"0.5\"} NaN\n"
        "idle_seconds{quantile=\"0.9\"} NaN\n"
        "idle_seconds{quantile=\"0.99\"} NaN\n"
        "idle_seconds_sum 0\n"
        "idle_seconds_count 0\n";
    EXPECT_STREQ(out, want);
    free(out);
    /* seconds are printed exactly */
    xs_stat_timer *big = timer_of(r, "big");
    xs_stat_record(big, INT64_C(12345678901));
    out = render(r);
    ASSERT(out);
    EXPECT(strstr(out, "big_seconds_sum 12.345678901\n") != NULL);
    EXPECT(strstr(out, "big_seconds_count 1\n") != NULL);
    free(out);
    xs_stat_source_free(r);
}

TEST(prometheus_empty_registry_is_empty_text)
{
    xs_stat_source *r = new_registry(NULL);
    ASSERT(r);
    size_t len = 99;
    EXPECT_EQ(xs_stat_prometheus_write(r, NULL, 0, &len), 0);
    EXPECT_EQ(len, 0);
    char b[4] = "xyz";
    EXPECT_EQ(xs_stat_prometheus_write(r, b, sizeof b, &len), 0);
    EXPECT_EQ(len, 0);
    EXPECT_EQ(b[0], 0);
    xs_stat_source_free(r);
}

/* Does the exposition contain this line? */
static bool has_line(const char *text, const char *line)
{
    size_t n = strlen(line);
    for (const char *p = text; (p = strstr(p, line)) != NULL; p++)
        if ((p == text || p[-1] == '\n') && p[n] == '\n')
            return true;
    return false;
}

TEST(prometheus_names_sanitized_as_documented)
{
    xs_stat_source *r = new_registry(NULL);
    ASSERT(r);
    xs_stat_add(counter_of(r, "db/query 1"), 1);
    xs_stat_add(counter_of(r, "9lives"), 1);
    xs_stat_add(counter_of(r, "getUser.success"), 1);
    xs_stat_add(counter_of(r, "HTTPServer"), 1);
    xs_stat_add(counter_of(r, "get2Fast"), 1);
    xs_stat_add(counter_of(r, "x:y"), 1);
    xs_stat_add(counter_of(r, "caf\xc3\xa9"), 1);
    xs_stat_add(counter_of(r, "line\nbreak\\\"%"), 1);
    xs_stat_add(counter_of(r, "done_total"), 1);
    xs_stat_record(timer_of(r, "getUser.latency"), 1);
    xs_stat_record(timer_of(r, "rt_seconds"), 1);
    char *out = render(r);
    ASSERT(out);
    EXPECT(has_line(out, "# TYPE db_query_1_total counter"));
    EXPECT(has_line(out, "# TYPE _9lives_total counter"));
    EXPECT(has_line(out, "# TYPE get_user_success_total counter"));
    EXPECT(has_line(out, "# TYPE httpserver_total counter"));
    EXPECT(has_line(out, "# TYPE get2_fast_total counter"));
    EXPECT(has_line(out, "# TYPE x_y_total counter"));
    EXPECT(has_line(out, "# TYPE caf___total counter"));
    EXPECT(has_line(out, "# HELP caf___total xsync counter \"caf%C3%A9\""));
    EXPECT(has_line(out, "# TYPE line_break____total counter"));
    EXPECT(has_line(out, "# HELP line_break____total xsync counter \"line%0Abreak%5C%22%25\""));
    EXPECT(has_line(out, "# TYPE done_total counter")); /* not done_total_total */
    EXPECT(has_line(out, "# TYPE get_user_latency_seconds summary"));
    EXPECT(has_line(out, "# TYPE rt_seconds summary"));
    EXPECT(has_line(out, "get_user_latency_seconds_count 1"));
    if (atomic_load(&th_failed_now))
        printf("%s", out);
    free(out);
    xs_stat_source_free(r);
}

TEST(prometheus_collisions_resolved_deterministically)
{
    /* the same set of names, created in two different orders */
    static const char *counters[] = {"x_total", "a_b", "A.B", "a_b_2", "x", "a.b"};
    static const char *timers[] = {"t_seconds", "a.b", "t"};
    char *outs[2] = {NULL, NULL};
    for (int pass = 0; pass < 2; pass++) {
        xs_stat_source *r = new_registry(NULL);
        ASSERT(r);
        for (int i = 0; i < 6; i++)
            xs_stat_add(counter_of(r, counters[pass ? 5 - i : i]), 1);
        for (int i = 0; i < 3; i++)
            xs_stat_record(timer_of(r, timers[pass ? 2 - i : i]), 1);
        outs[pass] = render(r);
        xs_stat_source_free(r);
        ASSERT(outs[pass]);
    }
    EXPECT_STREQ(outs[0], outs[1]);
    const char *o = outs[0];
    EXPECT(has_line(o, "# HELP a_b_total xsync counter \"A.B\""));
    EXPECT(has_line(o, "# HELP a_b_3_total xsync counter \"a.b\""));
    EXPECT(has_line(o, "# HELP a_b_4_total xsync counter \"a_b\""));
    EXPECT(has_line(o, "# HELP a_b_2_total xsync counter \"a_b_2\""));
    EXPECT(has_line(o, "# HELP x_total xsync counter \"x\""));
    EXPECT(has_line(o, "# HELP x_2_total xsync counter \"x_total\""));
    EXPECT(has_line(o, "# HELP a_b_seconds xsync timer \"a.b\""));
    EXPECT(has_line(o, "# HELP t_seconds xsync timer \"t\""));
    EXPECT(has_line(o, "# HELP t_2_seconds xsync timer \"t_seconds\""));
    if (atomic_load(&th_failed_now))
        printf("%s", o);
    free(outs[0]);
    free(outs[1]);
}

TEST(prometheus_truncates_like_snprintf)
{
    xs_stat_source *r = new_registry(NULL);
    ASSERT(r);
    xs_stat_add(counter_of(r, "a"), 1);
    char *full = render(r);
    ASSERT(full);
    size_t n = strlen(full);
    EXPECT_EQ(n, strlen("# HELP a_total xsync counter \"a\"\n# TYPE a_total counter\na_total 1\n"));
    for (size_t size = 1; size <= n + 1; size++) {
        char buf[256];
        memset(buf, '#', sizeof buf);
        size_t len = 0;
        EXPECT_EQ(xs_stat_prometheus_write(r, buf, size, &len), 0);
        EXPECT_EQ(len, n);
        EXPECT_EQ(buf[size - 1], 0);
        EXPECT_EQ(strncmp(buf, full, size - 1), 0);
        EXPECT_EQ(buf[size], '#'); /* nothing written past size */
    }
    /* bad input */
    size_t len;
    char b[8];
    EXPECT_EQ(xs_stat_prometheus_write(NULL, b, sizeof b, &len), XS_EINVAL);
    EXPECT_EQ(xs_stat_prometheus_write(r, b, sizeof b, NULL), XS_EINVAL);
    EXPECT_EQ(xs_stat_prometheus_write(r, NULL, 8, &len), XS_EINVAL);
    EXPECT_EQ(xs_stat_prometheus_fwrite(r, NULL), XS_EINVAL);
    EXPECT_EQ(xs_stat_prometheus_fwrite(NULL, stdout), XS_EINVAL);
    xs_stat_source *sd = NULL;
    ASSERT_EQ(xs_stat_statsd_new(NULL, &sd), 0);
    EXPECT_EQ(xs_stat_prometheus_write(sd, b, sizeof b, &len), XS_EINVAL);
    xs_stat_source_free(sd);
    free(full);
    xs_stat_source_free(r);
}

TEST(prometheus_fwrite_matches_buffer)
{
    xs_stat_source *r = new_registry(NULL);
    ASSERT(r);
    for (int i = 0; i < 50; i++) {
        char name[32];
        snprintf(name, sizeof name, "m%d.latency", i);
        xs_stat_record(timer_of(r, name), i * 1000 + 7);
        snprintf(name, sizeof name, "m%d.success", i);
        xs_stat_add(counter_of(r, name), i);
    }
    char *want = render(r);
    ASSERT(want);
    FILE *f = tmpfile();
    ASSERT(f);
    EXPECT_EQ(xs_stat_prometheus_fwrite(r, f), 0);
    long n = ftell(f);
    EXPECT_EQ(n, (long)strlen(want));
    rewind(f);
    char *got = calloc(1, (size_t)n + 1);
    ASSERT(got);
    EXPECT_EQ(fread(got, 1, (size_t)n, f), (size_t)n);
    EXPECT_STREQ(got, want);
    fclose(f);
    /* a stream that refuses writes */
    f = fopen("/dev/full", "w");
    if (f) {
        setvbuf(f, NULL, _IONBF, 0);
        int rc = xs_stat_prometheus_fwrite(r, f);
        EXPECT(rc < 0);
        EXPECT(rc != XS_EINVAL && rc != XS_ENOMEM);
        fclose(f);
    }
    free(got);
    free(want);
    xs_stat_source_free(r);
}

TEST(prometheus_enomem_at_every_k)
{
    xs_alloc_counter ac;
    xs_alloc_counter_init(&ac, NULL);
    xs_stat_source *r = new_registry(&ac.allocator);
    ASSERT(r);
    for (int i = 0; i < 20; i++) {
        char name[32];
        snprintf(name, sizeof name, "n%d", i % 10);
        if (i < 10)
            xs_stat_add(counter_of(r, name), i);
        else
            xs_stat_record(timer_of(r, name), i);
    }
    xs_stat_add(counter_of(r, "n.0"), 1); /* a collision: n_0_2_total */
    char *want = render(r);
    ASSERT(want);
    int64_t base = atomic_load(&ac.live_bytes);
    int k, ok = 0;
    for (k = 1; k < 1000 && !ok; k++) {
        xs_alloc_counter_fail_at(&ac, k, 0);
        size_t len = 0;
        int rc = xs_stat_prometheus_write(r, NULL, 0, &len);
        xs_alloc_counter_fail_at(&ac, 0, 0);
        if (rc == 0) {
            ok = 1;
            EXPECT_EQ(len, strlen(want));
        } else {
            EXPECT_EQ(rc, XS_ENOMEM);
        }
        EXPECT_EQ(atomic_load(&ac.live_bytes), base);
    }
    EXPECT(ok);
    printf("    rendering: %d allocations\n", k - 2);
    char *again = render(r);
    EXPECT(again && strcmp(again, want) == 0);
    free(again);
    free(want);
    xs_stat_source_free(r);
    EXPECT_EQ(atomic_load(&ac.live_bytes), 0);
}

/* promtool, from Debian's `prometheus` package, if it is on PATH. */
static bool find_in_path(const char *prog)
{
    const char *path = getenv("PATH");
    if (!path)
        return false;
    while (*path) {
        const char *end = strchr(path, ':');
        size_t n = end ? (size_t)(end - path) : strlen(path);
        char full[4096];
        if (n > 0 && n + strlen(prog) + 2 < sizeof full) {
            memcpy(full, path, n);
            full[n] = '/';
            strcpy(full + n + 1, prog);
            if (access(full, X_OK) == 0)
                return true;
        }
        path += n;
        if (*path == ':')
            path++;
    }
    return false;
}

TEST(prometheus_output_passes_promtool_check_metrics)
{
    if (!find_in_path("promtool")) {
        printf("    SKIP prometheus_output_passes_promtool_check_metrics: promtool not found"
               " in PATH (Debian package: prometheus)\n");
        fprintf(stderr, "SKIP: promtool not found; the Prometheus output was not checked\n");
        return;
    }
    xs_stat_source *r = new_registry(NULL);
    ASSERT(r);
    /* what the metrics decorator makes, and names from the wild */
    static const char *actions[] = {"all_actions", "fetch.user", "getUser", "db/query 1",
                                    "9lives",      "caf\xc3\xa9", "get:user|by@id\nnow\tok",
                                    "\x01\xff",    "HTTPServer"};
    uint64_t s = 99;
    for (size_t i = 0; i < sizeof actions / sizeof actions[0]; i++) {
        char name[128];
        snprintf(name, sizeof name, "%s.success", actions[i]);
        xs_stat_add(counter_of(r, name), (int64_t)i * 10);
        snprintf(name, sizeof name, "%s.error", actions[i]);
        xs_stat_add(counter_of(r, name), (int64_t)i);
        snprintf(name, sizeof name, "%s.latency", actions[i]);
        xs_stat_timer *t = timer_of(r, name);
        for (int j = 0; j < (int)i * 100; j++)
            xs_stat_record(t, (int64_t)(rng_next(&s) % 5000000000u));
    }
    /* collisions */
    xs_stat_add(counter_of(r, "fetch_user.success"), 1);
    xs_stat_add(counter_of(r, "fetch.user.success_total"), 1);
    char *out = render(r);
    ASSERT(out);
    fflush(stdout);
    FILE *p = popen("promtool check metrics 2>&1", "w");
    ASSERT(p);
    fputs(out, p);
    int st = pclose(p);
    EXPECT(WIFEXITED(st));
    EXPECT_EQ(WEXITSTATUS(st), 0);
    if (!WIFEXITED(st) || WEXITSTATUS(st) != 0)
        printf("---- exposition given to promtool:\n%s----\n", out);
    free(out);
    xs_stat_source_free(r);
}

/* Candidate names the collision resolution has tried, process-wide (an
 * internal counter of src/stats.c, for this test). */
extern _Atomic uint64_t xs__stat_pm_probes;

/* Name i of a family of names that all rewrite to the same stem: nine
 * bytes from ". - / space", each of which becomes '_'. */
static void colliding_name(char out[10], int i)
{
    static const char sym[4] = {'.', '-', '/', ' '};
    for (int k = 0; k < 9; k++, i >>= 2)
        out[k] = sym[i & 3];
    out[9] = 0;
}

static int cmp_name10(const void *a, const void *b)
{
    return strcmp((const char *)a, (const char *)b);
}

#define MANY_COLLIDING 16000

TEST_T(prometheus_many_colliding_names_linear_unique_deterministic, 120)
{
    char(*names)[10] = malloc(MANY_COLLIDING * sizeof *names);
    ASSERT(names);
    for (int i = 0; i < MANY_COLLIDING; i++)
        colliding_name(names[i], i);
    char *outs[2] = {NULL, NULL};
    for (int pass = 0; pass < 2; pass++) {
        xs_stat_source *r = new_registry(NULL);
        ASSERT(r);
        for (int i = 0; i < MANY_COLLIDING; i++) /* created in two different orders */
            xs_stat_add(counter_of(r, names[pass ? MANY_COLLIDING - 1 - i : i]), 1);
        uint64_t probes = atomic_load(&xs__stat_pm_probes);
        int64_t start = th_now_ns();
        outs[pass] = render(r); /* renders twice: the size, then the text */
        int64_t ns = th_now_ns() - start;
        probes = atomic_load(&xs__stat_pm_probes) - probes;
        /* Linear: each colliding name tries about one candidate per
         * rendering, not one per earlier colliding name (n^2 / 2). */
        EXPECT_LE(probes, (uint64_t)2 * 2 * MANY_COLLIDING);
        printf("    %d colliding names: %llu candidate names tried, %.1f ms for two renderings\n",
               MANY_COLLIDING, (unsigned long long)probes, (double)ns / 1e6);
        xs_stat_source_free(r);
        ASSERT(outs[pass]);
    }
    EXPECT(strcmp(outs[0], outs[1]) == 0);
    /* Families come in the bytewise order of the original names; the first
     * keeps the natural name, the k-th gets suffix _k: all distinct. */
    qsort(names, MANY_COLLIDING, sizeof *names, cmp_name10);
    const char *p = outs[0];
    int bad = 0;
    for (int i = 0; i < MANY_COLLIDING && p; i++) {
        char family[64], want[128];
        if (i == 0)
            snprintf(family, sizeof family, "__________total");
        else
            snprintf(family, sizeof family, "__________%d_total", i + 1);
        int n = snprintf(want, sizeof want,
                         "# HELP %s xsync counter \"%s\"\n# TYPE %s counter\n%s 1\n", family,
                         names[i], family, family);
        if (strncmp(p, want, (size_t)n) != 0) {
            if (bad++ < 3)
                printf("    family %d: want \"%s\"\n", i, want);
        }
        p = strchr(p, '\n');
        for (int k = 0; k < 2 && p; k++)
            p = strchr(p + 1, '\n');
        if (p)
            p++;
    }
    EXPECT_EQ(bad, 0);
    EXPECT(p && *p == 0); /* nothing after the last family */
    free(outs[0]);
    free(outs[1]);
    free(names);
}

/* Reads everything from fd until EOF into a malloc'ed string. */
static char *read_all(int fd)
{
    size_t cap = 1 << 16, len = 0;
    char *buf = malloc(cap + 1);
    for (;;) {
        if (len == cap) {
            cap *= 2;
            buf = realloc(buf, cap + 1);
        }
        ssize_t n = read(fd, buf + len, cap - len);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0)
            break;
        len += (size_t)n;
    }
    buf[len] = 0;
    return buf;
}

typedef struct fd_reader {
    int fd;
    char *got;
} fd_reader;

static void *fd_reader_main(void *p)
{
    fd_reader *r = p;
    r->got = read_all(r->fd);
    return NULL;
}

static xs_stat_source *registry_with_many_metrics(int n)
{
    xs_stat_source *r = new_registry(NULL);
    for (int i = 0; r && i < n; i++) {
        char name[32];
        snprintf(name, sizeof name, "metric.%d", i);
        xs_stat_add(counter_of(r, name), i);
        snprintf(name, sizeof name, "metric.%d.latency", i);
        xs_stat_record(timer_of(r, name), i * 1000);
    }
    return r;
}

TEST(prometheus_write_fd_matches_buffer_on_sockets_pipes_and_files)
{
    /* well over a socket's and a pipe's buffer: the writer must loop */
    xs_stat_source *r = registry_with_many_metrics(2000);
    ASSERT(r);
    char *want = render(r);
    ASSERT(want);
    EXPECT_GT(strlen(want), (size_t)1 << 18);
    for (int kind = 0; kind < 2; kind++) { /* a stream socket, a pipe */
        int sv[2];
        if (kind == 0)
            ASSERT_EQ(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv), 0);
        else
            ASSERT_EQ(pipe(sv), 0);
        int rd = kind == 0 ? sv[1] : sv[0], wr = kind == 0 ? sv[0] : sv[1];
        fd_reader fr = {rd, NULL};
        pthread_t th;
        ASSERT_EQ(pthread_create(&th, NULL, fd_reader_main, &fr), 0);
        EXPECT_EQ(xs_stat_prometheus_write_fd(r, wr), 0);
        close(wr); /* EOF for the reader */
        pthread_join(th, NULL);
        close(rd);
        EXPECT(fr.got && strcmp(fr.got, want) == 0);
        free(fr.got);
    }
    /* a regular file */
    FILE *f = tmpfile();
    ASSERT(f);
    EXPECT_EQ(xs_stat_prometheus_write_fd(r, fileno(f)), 0);
    EXPECT_EQ(lseek(fileno(f), 0, SEEK_SET), 0);
    char *got = read_all(fileno(f));
    EXPECT(strcmp(got, want) == 0);
    free(got);
    fclose(f);
    /* bad input */
    EXPECT_EQ(xs_stat_prometheus_write_fd(NULL, 1), XS_EINVAL);
    EXPECT_EQ(xs_stat_prometheus_write_fd(r, -1), XS_EINVAL);
    int dead = dup(0);
    ASSERT(dead >= 0);
    close(dead);
    EXPECT_EQ(xs_stat_prometheus_write_fd(r, dead), -EBADF);
    free(want);
    xs_stat_source_free(r);
}

TEST(prometheus_write_fd_to_a_hung_up_socket_returns_epipe)
{
    xs_stat_source *r = registry_with_many_metrics(2000);
    ASSERT(r);
    int sv[2];
    ASSERT_EQ(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv), 0);
    close(sv[1]); /* the scraper hung up */
    /* SIGPIPE's default action would end the process here */
    EXPECT_EQ(xs_stat_prometheus_write_fd(r, sv[0]), -EPIPE);
    EXPECT_EQ(xs_stat_prometheus_write_fd(r, sv[0]), -EPIPE); /* and again */
    close(sv[0]);
    xs_stat_source_free(r);
}

/* ======================================================================
 * statsd
 * ====================================================================== */

typedef struct receiver {
    int fd;
    uint16_t port;
} receiver;

static bool receiver_open(receiver *r, int rcvbuf)
{
    r->fd = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    if (r->fd < 0)
        return false;
    if (rcvbuf > 0)
        setsockopt(r->fd, SOL_SOCKET, SO_RCVBUF, &rcvbuf, sizeof rcvbuf);
    int one = 1;
    setsockopt(r->fd, SOL_SOCKET, SO_RXQ_OVFL, &one, sizeof one);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = 0};
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    socklen_t len = sizeof a;
    if (bind(r->fd, (struct sockaddr *)&a, sizeof a) != 0 ||
        getsockname(r->fd, (struct sockaddr *)&a, &len) != 0) {
        close(r->fd);
        return false;
    }
    r->port = ntohs(a.sin_port);
    return true;
}

/* A collection of received lines. */
typedef struct lines {
    char **v;
    size_t n, cap;
    size_t datagrams;
    size_t max_datagram;
    uint32_t kernel_drops; /* SO_RXQ_OVFL: datagrams the receive buffer dropped */
} lines;

static void lines_add(lines *l, const char *s, size_t n)
{
    if (l->n == l->cap) {
        l->cap = l->cap ? l->cap * 2 : 64;
        l->v = realloc(l->v, l->cap * sizeof *l->v);
    }
    char *c = malloc(n + 1);
    memcpy(c, s, n);
    c[n] = 0;
    l->v[l->n++] = c;
}

static void lines_free(lines *l)
{
    for (size_t i = 0; i < l->n; i++)
        free(l->v[i]);
    free(l->v);
    memset(l, 0, sizeof *l);
}

static int cmp_str(const void *a, const void *b)
{
    return strcmp(*(char *const *)a, *(char *const *)b);
}

/* Receives one datagram if one is ready (or arrives within timeout_ms) and
 * splits it into lines.  Returns false on timeout. */
static bool recv_one(receiver *r, lines *l, int timeout_ms)
{
    struct pollfd p = {.fd = r->fd, .events = POLLIN};
    if (poll(&p, 1, timeout_ms) != 1)
        return false;
    char buf[65536];
    char cbuf[CMSG_SPACE(sizeof(uint32_t))];
    struct iovec iov = {buf, sizeof buf};
    struct msghdr m = {.msg_iov = &iov, .msg_iovlen = 1, .msg_control = cbuf,
                       .msg_controllen = sizeof cbuf};
    ssize_t n = recvmsg(r->fd, &m, MSG_DONTWAIT);
    if (n < 0)
        return false;
    for (struct cmsghdr *c = CMSG_FIRSTHDR(&m); c; c = CMSG_NXTHDR(&m, c))
        if (c->cmsg_level == SOL_SOCKET && c->cmsg_type == SO_RXQ_OVFL)
            memcpy(&l->kernel_drops, CMSG_DATA(c), sizeof l->kernel_drops);
    l->datagrams++;
    if ((size_t)n > l->max_datagram)
        l->max_datagram = (size_t)n;
    EXPECT(n > 0 && buf[n - 1] != '\n'); /* no trailing newline */
    size_t start = 0;
    for (size_t i = 0; i <= (size_t)n; i++)
        if (i == (size_t)n || buf[i] == '\n') {
            lines_add(l, buf + start, i - start);
            start = i + 1;
        }
    return true;
}

/* Receives until the line `last` arrives; false if WAIT_MS passes first. */
static bool recv_until(receiver *r, lines *l, const char *last)
{
    int64_t end = th_now_ns() + (int64_t)WAIT_MS * 1000000;
    for (;;) {
        for (size_t i = 0; i < l->n; i++)
            if (strcmp(l->v[i], last) == 0)
                return true;
        int64_t left = (end - th_now_ns()) / 1000000;
        if (left <= 0 || !recv_one(r, l, (int)left))
            return false;
    }
}

static xs_stat_source *new_statsd(xs_stat_statsd_options o)
{
    xs_stat_source *s = NULL;
    int rc = xs_stat_statsd_new(&o, &s);
    if (rc != 0)
        printf("    xs_stat_statsd_new: %s\n", xs_strerror(rc));
    return s;
}

/* Checks that l holds exactly `want` (any order) followed by nothing else. */
static void expect_lines(lines *l, const char **want, size_t n)
{
    char **sorted_want = malloc(n * sizeof *sorted_want);
    memcpy(sorted_want, want, n * sizeof *want);
    qsort(sorted_want, n, sizeof *sorted_want, cmp_str);
    qsort(l->v, l->n, sizeof *l->v, cmp_str);
    EXPECT_EQ(l->n, n);
    for (size_t i = 0; i < n && i < l->n; i++)
        EXPECT_STREQ(l->v[i], sorted_want[i]);
    if (l->n != n)
        for (size_t i = 0; i < l->n; i++)
            printf("    got: \"%s\"\n", l->v[i]);
    free(sorted_want);
}

TEST(statsd_receiver_gets_exactly_the_expected_lines)
{
    receiver rv;
    ASSERT(receiver_open(&rv, 0));
    xs_stat_source *s = new_statsd((xs_stat_statsd_options){
        .host = "127.0.0.1", .port = rv.port, .prefix = "app."});
    ASSERT(s);
    xs_stat_counter *ok = counter_of(s, "req.success");
    EXPECT_PTR_EQ(counter_of(s, "req.success"), ok);
    xs_stat_add(ok, 3);
    xs_stat_add(ok, 4);
    xs_stat_add(counter_of(s, "req.error"), 1);
    counter_of(s, "idle"); /* never changed: no line */
    xs_stat_counter *zero = counter_of(s, "zero");
    xs_stat_add(zero, 5);
    xs_stat_add(zero, -5); /* no change since the last flush: no line */
    xs_stat_add(counter_of(s, "neg"), -2);
    xs_stat_timer *lat = timer_of(s, "req.latency");
    xs_stat_record(lat, 1500000);
    xs_stat_record(lat, 2000000);
    xs_stat_record(lat, 1);
    xs_stat_record(lat, -7);
    xs_stat_record(lat, INT64_C(123456789012345));
    xs_stat_add(counter_of(s, "a:b|c@d\ne f\x7f\xc3\xa9"), 1);
    EXPECT_EQ(xs_stat_statsd_flush(s), 0);
    xs_stat_add(counter_of(s, "end"), 1); /* the sentinel */
    EXPECT_EQ(xs_stat_statsd_flush(s), 0);
    lines l = {0};
    EXPECT(recv_until(&rv, &l, "app.end:1|c"));
    const char *want[] = {
        "app.req.success:7|c",   "app.req.error:1|c",           "app.neg:-2|c",
        "app.req.latency:1.5|ms", "app.req.latency:2|ms",       "app.req.latency:0.000001|ms",
        "app.req.latency:0|ms",   "app.req.latency:123456789.012345|ms",
        "app.a_b_c_d_e_f_\xc3\xa9:1|c", "app.end:1|c"};
    expect_lines(&l, want, sizeof want / sizeof want[0]);
    EXPECT_EQ(xs_stat_statsd_sent(s), sizeof want / sizeof want[0]);
    EXPECT_EQ(xs_stat_statsd_drops(s), 0);
    EXPECT_EQ(l.kernel_drops, 0);
    lines_free(&l);
    /* a flush with nothing new sends nothing; the next change is a delta */
    EXPECT_EQ(xs_stat_statsd_flush(s), 0);
    xs_stat_add(ok, 1);
    EXPECT_EQ(xs_stat_statsd_flush(s), 0);
    xs_stat_add(counter_of(s, "end"), 1);
    EXPECT_EQ(xs_stat_statsd_flush(s), 0);
    EXPECT(recv_until(&rv, &l, "app.end:1|c"));
    const char *want2[] = {"app.req.success:1|c", "app.end:1|c"};
    expect_lines(&l, want2, 2);
    lines_free(&l);
    xs_stat_source_free(s);
    close(rv.fd);
}

TEST(statsd_batches_lines_into_datagrams_up_to_max_payload)
{
    receiver rv;
    ASSERT(receiver_open(&rv, 1 << 20));
    xs_stat_source *s = new_statsd((xs_stat_statsd_options){
        .port = rv.port, .max_payload = 64, .queue_size = 1024});
    ASSERT(s);
    xs_stat_timer *t = timer_of(s, "timer.name");
    for (int i = 0; i < 200; i++)
        xs_stat_record(t, (int64_t)i * 1000000); /* "timer.name:<i>|ms" */
    EXPECT_EQ(xs_stat_statsd_flush(s), 0);
    xs_stat_add(counter_of(s, "end"), 1); /* the sentinel, in a later datagram */
    EXPECT_EQ(xs_stat_statsd_flush(s), 0);
    lines l = {0};
    EXPECT(recv_until(&rv, &l, "end:1|c"));
    EXPECT_EQ(l.n, 201);
    EXPECT_LE(l.max_datagram, 64);
    /* datagrams are filled greedily, in record order: as many whole
     * lines as fit, then the next datagram (plus the sentinel's own) */
    size_t expect_dgrams = 1, fill = 0;
    for (int i = 0; i < 200; i++) {
        char line[64];
        size_t n = (size_t)snprintf(line, sizeof line, "timer.name:%d|ms", i);
        if (fill && fill + 1 + n > 64) {
            expect_dgrams++;
            fill = n;
        } else {
            fill += (fill ? 1 : 0) + n;
        }
    }
    EXPECT_EQ(l.datagrams, expect_dgrams + 1);
    EXPECT_GE(l.max_datagram, 60);
    int seen[200] = {0};
    for (size_t i = 0; i < l.n; i++) {
        int v;
        char tail[8];
        if (sscanf(l.v[i], "timer.name:%d|%7s", &v, tail) == 2 && v >= 0 && v < 200 &&
            strcmp(tail, "ms") == 0)
            seen[v]++;
        else
            EXPECT_STREQ(l.v[i], "end:1|c");
    }
    for (int i = 0; i < 200; i++)
        EXPECT_EQ(seen[i], 1);
    lines_free(&l);
    xs_stat_source_free(s);
    close(rv.fd);
}

/* A UDP port on loopback that nobody listens on. */
static uint16_t closed_port(void)
{
    receiver r;
    if (!receiver_open(&r, 0))
        return 0;
    close(r.fd);
    return r.port;
}

TEST(statsd_closed_port_never_blocks_and_counts_drops)
{
    uint16_t port = closed_port();
    ASSERT(port);
    xs_stat_source *s = new_statsd((xs_stat_statsd_options){.port = port});
    ASSERT(s);
    xs_stat_counter *c = counter_of(s, "c");
    xs_stat_timer *t = timer_of(s, "t");
    /* The first datagram is lost without a word; the ICMP "port
     * unreachable" it causes makes a later send fail with ECONNREFUSED.
     * Bounded: at most 1000 flushes, each of which returns at once. */
    int refused = 0, i;
    int64_t start = th_now_ns();
    for (i = 0; i < 1000 && xs_stat_statsd_drops(s) == 0; i++) {
        xs_stat_add(c, 1);
        xs_stat_record(t, 1000);
        int rc = xs_stat_statsd_flush(s);
        if (rc == -ECONNREFUSED)
            refused++;
        else
            EXPECT(rc == 0 || rc == XS_EAGAIN || rc == -ENOBUFS);
    }
    EXPECT_GT(xs_stat_statsd_drops(s), 0);
    EXPECT_GE(refused, 1);
    /* every line is either sent (to the void) or counted as dropped */
    EXPECT_EQ(xs_stat_statsd_sent(s) + xs_stat_statsd_drops(s), (uint64_t)i * 2);
    printf("    %d flushes, %d refused, %.3f ms\n", i, refused,
           (double)(th_now_ns() - start) / 1e6);
    xs_stat_source_free(s);
}

TEST(statsd_stalled_receiver_never_blocks_and_lines_are_accounted)
{
    /* A receiver with a tiny buffer that stops reading. */
    receiver rv;
    ASSERT(receiver_open(&rv, 2048));
    /* One line per datagram (each line is over half of max_payload), so
     * the receiver's datagram drop count is a line count. */
    xs_stat_source *s = new_statsd((xs_stat_statsd_options){
        .port = rv.port, .max_payload = 64, .queue_size = 64});
    ASSERT(s);
    xs_stat_timer *t = timer_of(s, "a.timer.with.a.name.long.enough");
    int64_t start = th_now_ns();
    uint64_t emitted = 0;
    for (int round = 0; round < 100; round++) {
        for (int i = 0; i < 10; i++, emitted++)
            xs_stat_record(t, 1000000 + i);
        xs_stat_statsd_flush(s);
    }
    uint64_t sent = xs_stat_statsd_sent(s), drops = xs_stat_statsd_drops(s);
    EXPECT_EQ(sent + drops, emitted);
    /* the queue holds 64 records: without a flush the rest are dropped */
    for (int i = 0; i < 200; i++, emitted++)
        xs_stat_record(t, 5);
    EXPECT_EQ(xs_stat_statsd_drops(s), drops + 200 - 64);
    xs_stat_statsd_flush(s);
    sent = xs_stat_statsd_sent(s);
    drops = xs_stat_statsd_drops(s);
    EXPECT_EQ(sent + drops, emitted);
    printf("    %llu records in %.3f ms: %llu sent, %llu dropped by the source\n",
           (unsigned long long)emitted, (double)(th_now_ns() - start) / 1e6,
           (unsigned long long)sent, (unsigned long long)drops);
    /* now drain: what was sent either arrived or was dropped by the
     * receiver's full buffer (which the kernel counts, not the sender) */
    lines l = {0};
    while (recv_one(&rv, &l, 0))
        ;
    /* A datagram carries the drop count of the moment it was queued: a
     * marker sent now, after the drain, carries the final one. */
    int m = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    ASSERT(m >= 0);
    struct sockaddr_in to = {.sin_family = AF_INET, .sin_port = htons(rv.port)};
    to.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    EXPECT_EQ(sendto(m, "marker", 6, 0, (struct sockaddr *)&to, sizeof to), 6);
    close(m);
    EXPECT(recv_until(&rv, &l, "marker"));
    size_t got = l.n - 1; /* without the marker */
    EXPECT_EQ(got, l.datagrams - 1);
    EXPECT_EQ(got + l.kernel_drops, sent);
    EXPECT_GT(l.kernel_drops, 0); /* the receiver did overflow */
    printf("    receiver: %zu lines, %u dropped by its full buffer\n", got, l.kernel_drops);
    lines_free(&l);
    xs_stat_source_free(s);
    close(rv.fd);
}

TEST(statsd_periodic_flush_on_a_manual_clock)
{
    receiver rv;
    ASSERT(receiver_open(&rv, 0));
    xs_clock *clk = NULL;
    ASSERT_EQ(xs_clock_manual_new(0, NULL, &clk), 0);
    xs_stat_source *s = new_statsd((xs_stat_statsd_options){
        .port = rv.port, .flush_interval = 100 * XS_MSEC, .clock = clk});
    ASSERT(s);
    xs_stat_counter *c = counter_of(s, "ticks");
    for (int round = 1; round <= 3; round++) {
        xs_stat_add(c, round);
        xs_clock_advance(clk, 99 * XS_MSEC); /* not yet due */
        lines l = {0};
        EXPECT(!recv_one(&rv, &l, 0));
        xs_clock_advance(clk, 1 * XS_MSEC); /* due: flushes in this thread */
        char want[32];
        snprintf(want, sizeof want, "ticks:%d|c", round);
        EXPECT(recv_until(&rv, &l, want));
        EXPECT_EQ(l.n, 1);
        lines_free(&l);
    }
    /* free with the timer armed; then the clock has no timers left */
    xs_stat_source_free(s);
    EXPECT_EQ(xs_clock_free(clk), 0);
    close(rv.fd);
}

TEST(statsd_periodic_flush_on_the_system_clock)
{
    receiver rv;
    ASSERT(receiver_open(&rv, 0));
    xs_stat_source *s = new_statsd((xs_stat_statsd_options){
        .port = rv.port, .flush_interval = 5 * XS_MSEC});
    ASSERT(s);
    xs_stat_add(counter_of(s, "auto"), 2);
    xs_stat_record(timer_of(s, "auto"), 3000000);
    lines l = {0};
    /* nobody calls flush: the timer thread does */
    EXPECT(recv_until(&rv, &l, "auto:2|c"));
    EXPECT(recv_until(&rv, &l, "auto:3|ms"));
    lines_free(&l);
    xs_stat_source_free(s);
    close(rv.fd);
}

TEST(statsd_bad_input)
{
    xs_stat_source *s = (xs_stat_source *)1;
    EXPECT_EQ(xs_stat_statsd_new(NULL, NULL), XS_EINVAL);
    EXPECT_EQ(xs_stat_statsd_new(&(xs_stat_statsd_options){.max_payload = 63}, &s), XS_EINVAL);
    EXPECT_EQ(xs_stat_statsd_new(&(xs_stat_statsd_options){.max_payload = 65508}, &s),
              XS_EINVAL);
    EXPECT_EQ(xs_stat_statsd_new(&(xs_stat_statsd_options){.flush_interval = -1}, &s),
              XS_EINVAL);
    EXPECT_EQ(xs_stat_statsd_new(&(xs_stat_statsd_options){.flush_interval = 1}, &s),
              XS_EINVAL);
    EXPECT_EQ(xs_stat_statsd_new(&(xs_stat_statsd_options){.queue_size = (1u << 24) + 1}, &s),
              XS_EINVAL);
    EXPECT_EQ(xs_stat_statsd_new(&(xs_stat_statsd_options){.host = ""}, &s), XS_EINVAL);
    char prefix[64];
    memset(prefix, 'p', 31);
    prefix[31] = 0; /* max_payload 64 - 33 = 31 bytes: the longest prefix */
    EXPECT_EQ(xs_stat_statsd_new(
                  &(xs_stat_statsd_options){.max_payload = 64, .prefix = "ppppppppppppppppppppppppppppppppp"},
                  &s),
              XS_EINVAL);
    EXPECT_PTR_EQ(s, 1);
    s = new_statsd((xs_stat_statsd_options){.max_payload = 64, .prefix = prefix});
    ASSERT(s);
    /* names: NULL, empty, too long for a datagram */
    xs_stat_counter *c = (xs_stat_counter *)1;
    EXPECT_EQ(xs_stat_counter_get(s, NULL, &c), XS_EINVAL);
    EXPECT_EQ(xs_stat_counter_get(s, "", &c), XS_EINVAL);
    EXPECT_EQ(xs_stat_counter_get(s, "xx", &c), XS_EINVAL); /* 31 + 2 > 64 - 32 */
    EXPECT_EQ(s->ops->timer(s, "x", NULL), XS_EINVAL);
    EXPECT_PTR_EQ(c, 1);
    EXPECT_EQ(xs_stat_counter_get(s, "x", &c), 0);
    xs_stat_source_free(s);
    /* calls on things that are not statsd sources */
    EXPECT_EQ(xs_stat_statsd_flush(NULL), XS_EINVAL);
    xs_stat_source *r = new_registry(NULL);
    ASSERT(r);
    EXPECT_EQ(xs_stat_statsd_flush(r), XS_EINVAL);
    EXPECT_EQ(xs_stat_statsd_drops(r), 0);
    EXPECT_EQ(xs_stat_statsd_sent(r), 0);
    EXPECT_EQ(xs_stat_statsd_drops(NULL), 0);
    EXPECT_EQ(xs_stat_statsd_sent(NULL), 0);
    xs_stat_source_free(r);
}

/* The lowest free descriptor: equal before and after means no fd leaked. */
static int lowest_free_fd(void)
{
    int fd = dup(0);
    if (fd >= 0)
        close(fd);
    return fd;
}

TEST(statsd_enomem_at_every_k)
{
    receiver rv;
    ASSERT(receiver_open(&rv, 0));
    int fd0 = lowest_free_fd();
    int k, created = 0;
    for (k = 1; k < 200 && !created; k++) {
        xs_alloc_counter ac;
        xs_alloc_counter_init(&ac, NULL);
        xs_alloc_counter_fail_at(&ac, k, 0);
        xs_stat_source *s = NULL;
        int rc = xs_stat_statsd_new(
            &(xs_stat_statsd_options){.port = rv.port, .allocator = &ac.allocator,
                                      .flush_interval = XS_SEC},
            &s);
        xs_alloc_counter_fail_at(&ac, 0, 0);
        if (rc == 0) {
            created = 1;
            xs_stat_source_free(s);
        } else {
            EXPECT_EQ(rc, XS_ENOMEM);
        }
        EXPECT_EQ(atomic_load(&ac.live_bytes), 0);
        EXPECT_EQ(lowest_free_fd(), fd0);
    }
    EXPECT(created);
    printf("    statsd_new: %d allocations\n", k - 2);
    for (int kind = 0; kind < 2; kind++) {
        int done = 0;
        for (k = 1; k < 200 && !done; k++) {
            xs_alloc_counter ac;
            xs_alloc_counter_init(&ac, NULL);
            xs_stat_source *s = new_statsd(
                (xs_stat_statsd_options){.port = rv.port, .allocator = &ac.allocator});
            ASSERT(s);
            xs_alloc_counter_fail_at(&ac, k, 1);
            xs_stat_counter *c = NULL;
            xs_stat_timer *t = NULL;
            int rc = kind == 0 ? xs_stat_counter_get(s, "first", &c)
                               : xs_stat_timer_get(s, "first", &t);
            xs_alloc_counter_fail_at(&ac, 0, 0);
            if (rc == 0)
                done = 1;
            else
                EXPECT_EQ(rc, XS_ENOMEM);
            /* usable afterwards */
            xs_stat_add(counter_of(s, "first"), 1);
            xs_stat_record(timer_of(s, "first"), 1000000);
            EXPECT_EQ(xs_stat_statsd_flush(s), 0);
            xs_stat_add(counter_of(s, "end"), 1);
            EXPECT_EQ(xs_stat_statsd_flush(s), 0);
            lines l = {0};
            EXPECT(recv_until(&rv, &l, "end:1|c"));
            const char *want[] = {"first:1|c", "first:1|ms", "end:1|c"};
            expect_lines(&l, want, 3);
            lines_free(&l);
            xs_stat_source_free(s);
            EXPECT_EQ(atomic_load(&ac.live_bytes), 0);
        }
        EXPECT(done);
    }
    close(rv.fd);
}

/* ---- statsd under concurrency: exact totals ---- */

typedef struct sd_conc {
    xs_stat_source *src;
    receiver rv;
    th_event go, received; /* received: one signal per line */
    _Atomic int producers_left;
    _Atomic bool stop;
    int64_t sums[CONC_THREADS + 1]; /* per own counter; [CONC_THREADS] = shared */
    int64_t timer_lines;
    int64_t others;
} sd_conc;

typedef struct sd_conc_arg {
    sd_conc *c;
    int id;
} sd_conc_arg;

static void *sd_producer(void *p)
{
    sd_conc_arg *a = p;
    sd_conc *c = a->c;
    th_event_wait(&c->go, 1, WAIT_MS);
    char own[32];
    snprintf(own, sizeof own, "own.%d", a->id);
    xs_stat_counter *shared = counter_of(c->src, "shared");
    xs_stat_counter *mine = counter_of(c->src, own);
    xs_stat_timer *t = timer_of(c->src, "lat");
    EXPECT(shared && mine && t);
    for (int i = 0; i < CONC_OPS; i++) {
        xs_stat_add(shared, 1);
        xs_stat_add(mine, 3);
        xs_stat_record(t, i);
    }
    atomic_fetch_sub(&c->producers_left, 1);
    return NULL;
}

static void *sd_receiver(void *p)
{
    sd_conc *c = p;
    lines l = {0};
    while (!atomic_load(&c->stop)) {
        if (!recv_one(&c->rv, &l, 50))
            continue;
        for (size_t i = 0; i < l.n; i++) {
            int id;
            long long v;
            if (sscanf(l.v[i], "own.%d:%lld|c", &id, &v) == 2 && id >= 0 && id < CONC_THREADS)
                c->sums[id] += v;
            else if (sscanf(l.v[i], "shared:%lld|c", &v) == 1)
                c->sums[CONC_THREADS] += v;
            else if (strncmp(l.v[i], "lat:", 4) == 0)
                c->timer_lines++;
            else
                c->others++;
            th_event_signal(&c->received);
        }
        lines_free(&l);
    }
    return NULL;
}

TEST_T(statsd_concurrent_emitters_exact_totals, 300)
{
    sd_conc *c = calloc(1, sizeof *c);
    ASSERT(c);
    ASSERT(receiver_open(&c->rv, 1 << 20));
    c->src = new_statsd((xs_stat_statsd_options){.port = c->rv.port, .queue_size = 1024});
    ASSERT(c->src);
    th_event_init(&c->go);
    th_event_init(&c->received);
    atomic_store(&c->producers_left, CONC_THREADS);
    pthread_t rth, th[CONC_THREADS];
    sd_conc_arg args[CONC_THREADS];
    ASSERT_EQ(pthread_create(&rth, NULL, sd_receiver, c), 0);
    for (int i = 0; i < CONC_THREADS; i++) {
        args[i] = (sd_conc_arg){c, i};
        ASSERT_EQ(pthread_create(&th[i], NULL, sd_producer, &args[i]), 0);
    }
    th_event_signal(&c->go);
    /* This thread flushes while the producers emit, and after each flush
     * waits until the receiver has every line sent so far, so the
     * receiver's buffer never overflows and the totals must be exact. */
    int flushes = 0;
    bool last = false;
    while (!last) {
        last = atomic_load(&c->producers_left) == 0;
        EXPECT_EQ(xs_stat_statsd_flush(c->src), 0);
        flushes++;
        if (!EXPECT(th_event_wait(&c->received, (long)xs_stat_statsd_sent(c->src), WAIT_MS)))
            break;
    }
    for (int i = 0; i < CONC_THREADS; i++)
        pthread_join(th[i], NULL);
    atomic_store(&c->stop, true);
    pthread_join(rth, NULL);
    uint64_t sent = xs_stat_statsd_sent(c->src), drops = xs_stat_statsd_drops(c->src);
    EXPECT_EQ(c->sums[CONC_THREADS], (int64_t)CONC_THREADS * CONC_OPS);
    for (int i = 0; i < CONC_THREADS; i++)
        EXPECT_EQ(c->sums[i], 3 * CONC_OPS);
    /* timer records: each sent or dropped by the full queue, never lost */
    EXPECT_EQ((uint64_t)c->timer_lines + drops, (uint64_t)CONC_THREADS * CONC_OPS);
    EXPECT_EQ(c->others, 0);
    EXPECT_EQ((long)sent, th_event_count(&c->received));
    printf("    %d flushes; %lld timer lines received, %llu records dropped (queue full)\n",
           flushes, (long long)c->timer_lines, (unsigned long long)drops);
    xs_stat_source_free(c->src);
    close(c->rv.fd);
    th_event_destroy(&c->go);
    th_event_destroy(&c->received);
    free(c);
}

/* ---- flushes are bounded; the periodic one stays off the timer thread ---- */

/* A thread recording into one timer as fast as it can until told to stop
 * (or, should a test fail to stop it, HAMMER_MAX records). */
#define HAMMER_MAX 50000000

typedef struct hammer {
    xs_stat_timer *t;
    _Atomic bool stop;
    _Atomic uint64_t made; /* records so far, updated every 1024 */
    uint64_t records;
    th_event started; /* signalled once 1000 records were made */
    pthread_t th;
} hammer;

static void *hammer_main(void *p)
{
    hammer *h = p;
    uint64_t n = 0;
    for (; n < HAMMER_MAX && !atomic_load_explicit(&h->stop, memory_order_relaxed); n++) {
        xs_stat_record(h->t, 1234567 + (int64_t)(n & 1023));
        if ((n & 1023) == 0)
            atomic_store_explicit(&h->made, n, memory_order_relaxed);
        if (n == 1000)
            th_event_signal(&h->started);
    }
    h->records = n;
    th_event_signal(&h->started);
    return NULL;
}

static bool hammer_start(hammer *h, xs_stat_source *s)
{
    memset(h, 0, sizeof *h);
    h->t = timer_of(s, "hammered");
    th_event_init(&h->started);
    if (!h->t || pthread_create(&h->th, NULL, hammer_main, h) != 0)
        return false;
    return th_event_wait(&h->started, 1, WAIT_MS);
}

static uint64_t hammer_stop(hammer *h)
{
    atomic_store_explicit(&h->stop, true, memory_order_relaxed);
    pthread_join(h->th, NULL);
    th_event_destroy(&h->started);
    return h->records;
}

TEST_T(statsd_flush_takes_at_most_a_queue_of_records_while_a_producer_records, 120)
{
    receiver rv; /* never read: what it cannot hold, the kernel drops */
    ASSERT(receiver_open(&rv, 0));
    xs_stat_source *s = new_statsd((xs_stat_statsd_options){.port = rv.port, .queue_size = 64});
    ASSERT(s);
    hammer h;
    ASSERT(hammer_start(&h, s));
    /* Each flush takes the records claimed before it began: at most a
     * queue's worth, however fast the producer refills the queue.  Flush
     * until the producer has made 200000 records meanwhile (bounded). */
    uint64_t most = 0, total = 0, start = atomic_load(&h.made);
    int64_t end = th_now_ns() + (int64_t)WAIT_MS * 1000000;
    int flushes = 0;
    while (atomic_load(&h.made) - start < 200000 && th_now_ns() < end) {
        uint64_t before = xs_stat_statsd_sent(s);
        xs_stat_statsd_flush(s);
        uint64_t n = xs_stat_statsd_sent(s) - before;
        total += n;
        if (n > most)
            most = n;
        flushes++;
    }
    uint64_t made = atomic_load(&h.made) - start;
    hammer_stop(&h);
    EXPECT_GE(made, 200000);
    EXPECT_LE(most, 64);
    EXPECT_GT(total, 0);
    printf("    %d flushes sent %llu lines (at most %llu each) while %llu records were made\n",
           flushes, (unsigned long long)total, (unsigned long long)most, (unsigned long long)made);
    xs_stat_source_free(s);
    close(rv.fd);
}

TEST_T(statsd_periodic_flush_does_not_delay_context_deadlines, 120)
{
    receiver rv;
    ASSERT(receiver_open(&rv, 0));
    xs_stat_source *s = new_statsd((xs_stat_statsd_options){
        .port = rv.port, .queue_size = 1 << 16, .flush_interval = XS_MSEC});
    ASSERT(s);
    hammer h;
    ASSERT(hammer_start(&h, s));
    lines l = {0};
    EXPECT(recv_one(&rv, &l, WAIT_MS)); /* periodic flushes are running */
    lines_free(&l);
    /* The system clock's timer thread fires every context deadline of the
     * process: a flush must not hold it up. */
    int64_t worst = 0, took[20];
    for (int i = 0; i < 20; i++) {
        xs_ctx *c = NULL;
        ASSERT_EQ(xs_ctx_with_timeout(xs_ctx_background(), 5 * XS_MSEC, 0, &c), 0);
        int64_t start = th_now_ns();
        EXPECT_EQ(xs_ctx_wait(c, 2 * XS_SEC), XS_EDEADLINE);
        took[i] = th_now_ns() - start;
        xs_ctx_release(c);
        if (took[i] > worst)
            worst = took[i];
    }
    uint64_t records = hammer_stop(&h);
    /* The median, not the worst: a flush on the timer thread delays every
     * deadline by a whole flush (hundreds of ms here before the fix), while
     * one deadline can always be late on a loaded machine (a sanitizer
     * build on 2 shared CPUs). */
    int64_t sorted[20];
    memcpy(sorted, took, sizeof sorted);
    for (int i = 1; i < 20; i++)
        for (int j = i; j > 0 && sorted[j - 1] > sorted[j]; j--) {
            int64_t t = sorted[j];
            sorted[j] = sorted[j - 1];
            sorted[j - 1] = t;
        }
    if (!EXPECT_LE(sorted[10], 100 * XS_MSEC))
        for (int i = 0; i < 20; i++)
            printf("    deadline %d: %.3f ms\n", i, (double)took[i] / 1e6);
    printf("    5 ms deadlines fired within %.3f ms (median %.3f) while %llu records were made"
           " (%llu sent, %llu dropped)\n",
           (double)worst / 1e6, (double)sorted[10] / 1e6, (unsigned long long)records,
           (unsigned long long)xs_stat_statsd_sent(s), (unsigned long long)xs_stat_statsd_drops(s));
    xs_stat_source_free(s);
    close(rv.fd);
}

TEST_T(statsd_free_races_the_periodic_flush_cleanly, 120)
{
    /* Create, emit, free with a 1 ms period: frees land before, during and
     * after periodic flushes (ASan and TSan builds check the overlap). */
    receiver rv;
    ASSERT(receiver_open(&rv, 1 << 20));
    int waited = 0;
    for (int cycle = 0; cycle < 200; cycle++) {
        lines l = {0};
        while (recv_one(&rv, &l, 0)) /* what earlier cycles sent */
            ;
        lines_free(&l);
        xs_stat_source *s = new_statsd((xs_stat_statsd_options){
            .port = rv.port, .queue_size = 64, .flush_interval = XS_MSEC});
        ASSERT(s);
        xs_stat_timer *t = timer_of(s, "t");
        xs_stat_counter *c = counter_of(s, "c");
        for (int i = 0; i < 100; i++) {
            xs_stat_record(t, i * 1000);
            xs_stat_add(c, 1);
        }
        if (cycle % 2 == 0) { /* free right after a periodic flush sent something */
            waited += EXPECT(recv_one(&rv, &l, WAIT_MS));
            lines_free(&l);
        }
        xs_stat_source_free(s);
    }
    EXPECT_EQ(waited, 100);
    close(rv.fd);
}

TEST(statsd_queue_size_one_rounds_up_to_two)
{
    receiver rv;
    ASSERT(receiver_open(&rv, 0));
    xs_stat_source *s = new_statsd((xs_stat_statsd_options){.port = rv.port, .queue_size = 1});
    ASSERT(s);
    xs_stat_timer *t = timer_of(s, "lat");
    xs_stat_record(t, 1000000);
    xs_stat_record(t, 2000000);
    xs_stat_record(t, 3000000); /* the queue holds two: dropped */
    EXPECT_EQ(xs_stat_statsd_drops(s), 1);
    EXPECT_EQ(xs_stat_statsd_flush(s), 0);
    EXPECT_EQ(xs_stat_statsd_sent(s), 2);
    xs_stat_record(t, 4000000);
    EXPECT_EQ(xs_stat_statsd_flush(s), 0);
    EXPECT_EQ(xs_stat_statsd_sent(s), 3);
    xs_stat_add(counter_of(s, "end"), 1);
    EXPECT_EQ(xs_stat_statsd_flush(s), 0);
    lines l = {0};
    EXPECT(recv_until(&rv, &l, "end:1|c"));
    const char *want[] = {"lat:1|ms", "lat:2|ms", "lat:4|ms", "end:1|c"};
    expect_lines(&l, want, 4);
    lines_free(&l);
    xs_stat_source_free(s);
    close(rv.fd);
}

TEST(statsd_first_tick_races_creation_cleanly)
{
    /* The first periodic flush may fire while xs_stat_statsd_new is still
     * returning (TSan checks the source's own bookkeeping). */
    receiver rv;
    ASSERT(receiver_open(&rv, 0));
    for (int round = 0; round < 20; round++) {
        xs_stat_source *s = new_statsd((xs_stat_statsd_options){
            .port = rv.port, .flush_interval = XS_MSEC}); /* no metrics yet */
        ASSERT(s);
        xs_stat_add(counter_of(s, "after"), 1);
        lines l = {0};
        EXPECT(recv_until(&rv, &l, "after:1|c")); /* a tick's flush, observed */
        lines_free(&l);
        xs_stat_source_free(s);
    }
    close(rv.fd);
}

typedef struct advancer {
    xs_clock *clk;
    _Atomic bool stop;
    th_event started;
} advancer;

/* Advances the clock by 1 ms at a time until told to stop (or, should the
 * test fail to stop it, for 5 minutes). */
static void *advancer_main(void *p)
{
    advancer *a = p;
    int64_t end = th_now_ns() + 300 * INT64_C(1000000000);
    for (int n = 0; !atomic_load(&a->stop) && th_now_ns() < end; n++) {
        xs_clock_advance(a->clk, XS_MSEC);
        if (n == 0)
            th_event_signal(&a->started);
    }
    return NULL;
}

TEST_T(statsd_manual_clock_ticking_during_creation_leaves_the_clock_free, 120)
{
    receiver rv;
    ASSERT(receiver_open(&rv, 0));
    advancer a = {0};
    ASSERT_EQ(xs_clock_manual_new(0, NULL, &a.clk), 0);
    th_event_init(&a.started);
    pthread_t th;
    ASSERT_EQ(pthread_create(&th, NULL, advancer_main, &a), 0);
    EXPECT(th_event_wait(&a.started, 1, WAIT_MS));
    /* Another thread moves the clock all along: ticks fire during creation,
     * while the source is used, and during free. */
    for (int i = 0; i < 100; i++) {
        xs_stat_source *s = new_statsd((xs_stat_statsd_options){
            .port = rv.port, .flush_interval = XS_MSEC, .clock = a.clk}); /* no metrics yet */
        ASSERT(s);
        if (i % 2 == 0) {
            xs_stat_add(counter_of(s, "after"), 1);
            lines l = {0};
            EXPECT(recv_until(&rv, &l, "after:1|c")); /* a tick's flush, observed */
            lines_free(&l);
        }
        xs_stat_source_free(s);
    }
    atomic_store(&a.stop, true);
    pthread_join(th, NULL);
    EXPECT_EQ(xs_clock_free(a.clk), 0); /* every timer the sources armed was ended */
    th_event_destroy(&a.started);
    close(rv.fd);
}

/* ---- the periodic flush and the default pool ---- */

/* Internal, for tests: periodic flush tasks submitted and not yet ended; and
 * taking or releasing the flush lock as a flush in progress holds it. */
int xs__stat_statsd_tasks(const xs_stat_source *src);
void xs__stat_statsd_hold_flush(xs_stat_source *src, bool hold);

/* Waits until the source has at most `most` flush tasks; false if WAIT_MS
 * passes first. */
static bool tasks_at_most(xs_stat_source *s, int most)
{
    int64_t end = th_now_ns() + (int64_t)WAIT_MS * 1000000;
    while (xs__stat_statsd_tasks(s) > most)
        if (th_now_ns() > end)
            return false;
        else
            usleep(100); /* polling an observable state, not hoping */
    return true;
}

TEST_T(statsd_flush_tasks_do_not_pile_up_behind_a_flush_in_progress, 120)
{
    receiver rv;
    ASSERT(receiver_open(&rv, 0));
    xs_clock *clk = NULL;
    ASSERT_EQ(xs_clock_manual_new(0, NULL, &clk), 0);
    xs_stat_source *s = new_statsd((xs_stat_statsd_options){
        .port = rv.port, .flush_interval = XS_MSEC, .clock = clk});
    ASSERT(s);
    xs_pool *pool = xs_pool_default();
    ASSERT(pool);
    int threads0 = xs_pool_threads(pool), workers = xs_pool_workers(pool);
    xs_stat_add(counter_of(s, "held"), 1);
    /* A flush runs elsewhere (a user's, or a slow periodic one) all along. */
    xs__stat_statsd_hold_flush(s, true);
    /* Ticks in quick succession: one task queued, one running at most. */
    int most = 0;
    for (int i = 0; i < 20; i++) {
        xs_clock_advance(clk, XS_MSEC);
        int n = xs__stat_statsd_tasks(s);
        if (n > most)
            most = n;
    }
    EXPECT_LE(most, 2);
    /* A tick's task that finds a flush in progress ends: it does not hold a
     * pool thread waiting for it. */
    bool ended = true;
    for (int i = 0; i < 20 && ended; i++) {
        xs_clock_advance(clk, XS_MSEC);
        ended = EXPECT(tasks_at_most(s, 0));
    }
    int threads = xs_pool_threads(pool);
    EXPECT_LE(threads, threads0 > workers ? threads0 : workers);
    printf("    20 ticks during a flush: at most %d flush tasks; default pool threads %d -> %d"
           " (%d workers)\n", most, threads0, threads, workers);
    xs__stat_statsd_hold_flush(s, false);
    /* The next period flushes what the held one left. */
    xs_clock_advance(clk, XS_MSEC);
    lines l = {0};
    EXPECT(recv_until(&rv, &l, "held:1|c"));
    lines_free(&l);
    xs_stat_source_free(s);
    EXPECT_EQ(xs_clock_free(clk), 0);
    close(rv.fd);
}

typedef struct spinners {
    xs_ctx *ctx;
    th_event started, ended, marker;
    _Atomic int gave_up;
} spinners;

static void marker_main(void *p)
{
    th_event_signal(p);
}

#define SPIN_CAP_NS (30 * INT64_C(1000000000))

/* Computes until ctx is done (a deadline on a manual clock), or gives up
 * after SPIN_CAP_NS of real time so a regression ends rather than hangs. */
static void spinner_main(void *p)
{
    spinners *sp = p;
    th_event_signal(&sp->started);
    int64_t end = th_now_ns() + SPIN_CAP_NS;
    while (!xs_ctx_done(sp->ctx))
        if (th_now_ns() > end) {
            atomic_fetch_add(&sp->gave_up, 1);
            break;
        }
    th_event_signal(&sp->ended);
}

TEST_T(statsd_free_does_not_wait_for_a_flush_task_that_has_not_started, 120)
{
    receiver rv;
    ASSERT(receiver_open(&rv, 0));
    xs_clock *clk = NULL;
    ASSERT_EQ(xs_clock_manual_new(0, NULL, &clk), 0);
    xs_stat_source *s = new_statsd((xs_stat_statsd_options){
        .port = rv.port, .flush_interval = XS_MSEC, .clock = clk});
    ASSERT(s);
    xs_ctx *cc = NULL, *ctx = NULL;
    ASSERT_EQ(xs_ctx_with_clock(xs_ctx_background(), clk, &cc), 0);
    ASSERT_EQ(xs_ctx_with_timeout(cc, 10 * XS_MSEC, 0, &ctx), 0);
    /* Every run slot of the default pool computes until a deadline of the
     * manual clock, which only this thread moves. */
    spinners sp = {.ctx = ctx};
    th_event_init(&sp.started);
    th_event_init(&sp.ended);
    th_event_init(&sp.marker);
    int w = xs_pool_workers(xs_pool_default());
    for (int i = 0; i < w; i++)
        ASSERT_EQ(xs_pool_submit(xs_pool_default(), spinner_main, &sp), 0);
    EXPECT(th_event_wait(&sp.started, w, WAIT_MS));
    /* A marker queued first (the shared queue is FIFO): the flush task can
     * start only after the marker has. */
    ASSERT_EQ(xs_pool_submit(xs_pool_default(), marker_main, &sp.marker), 0);
    xs_clock_advance(clk, XS_MSEC); /* a tick: its task waits behind the spinners */
    EXPECT_EQ(xs__stat_statsd_tasks(s), 1);
    /* (The pool's watchdog may lend a slot to queued work if the spinners
     * get too little CPU; if it did already, this run cannot judge.) */
    bool judged = th_event_count(&sp.marker) == 0;
    int64_t t0 = th_now_ns();
    xs_stat_source_free(s); /* must not wait for that task */
    int64_t took = th_now_ns() - t0;
    long ran = th_event_count(&sp.marker);
    xs_clock_advance(clk, 20 * XS_MSEC); /* the spinners' deadline */
    EXPECT(th_event_wait(&sp.ended, w, (SPIN_CAP_NS / 1000000) + WAIT_MS));
    EXPECT(th_event_wait(&sp.marker, 1, WAIT_MS));
    EXPECT_EQ(atomic_load(&sp.gave_up), 0);
    if (judged)
        EXPECT_EQ(ran, 0); /* free returned while the task was still queued */
    else
        printf("    the pool ran queued work before free: not judged\n");
    printf("    free took %.3f ms with the pool's %d slots busy\n", (double)took / 1e6, w);
    xs_ctx_release(ctx);
    xs_ctx_release(cc);
    EXPECT_EQ(xs_clock_free(clk), 0);
    th_event_destroy(&sp.started);
    th_event_destroy(&sp.ended);
    th_event_destroy(&sp.marker);
    close(rv.fd);
}

TEST_T(statsd_forked_child_does_not_flush_the_parents_records, 60)
{
#ifdef TH_TSAN
    /* TSan does not support starting threads in the child of a
     * multi-threaded fork (it warns and may hang); the normal, ASan and
     * portable builds run this test. */
    printf("    skipped under TSan: no threads after a multi-threaded fork\n");
    return;
#else
    receiver rv;
    ASSERT(receiver_open(&rv, 1 << 20));
    xs_stat_source *s = new_statsd((xs_stat_statsd_options){
        .port = rv.port, .flush_interval = 20 * XS_MSEC});
    ASSERT(s);
    xs_stat_add(counter_of(s, "forked"), 5); /* pending at the fork */
    pid_t pid = fork();
    ASSERT(pid >= 0);
    if (pid == 0) {
        /* The child never uses the source; its timers still fire: a
         * deadline after ten of the parent's periods. */
        xs_ctx *c;
        int ok = xs_ctx_with_timeout(xs_ctx_background(), 200 * XS_MSEC, 0, &c) == 0 &&
                 xs_ctx_wait(c, 10 * XS_SEC) == XS_EDEADLINE;
        _exit(ok ? 0 : 1);
    }
    int status = 0;
    ASSERT_EQ(waitpid(pid, &status, 0), pid);
    EXPECT(WIFEXITED(status));
    EXPECT_EQ(WEXITSTATUS(status), 0);
    xs_stat_add(counter_of(s, "end"), 1);
    EXPECT_EQ(xs_stat_statsd_flush(s), 0);
    lines l = {0};
    EXPECT(recv_until(&rv, &l, "end:1|c"));
    int forked = 0;
    for (size_t i = 0; i < l.n; i++)
        forked += strcmp(l.v[i], "forked:5|c") == 0;
    EXPECT_EQ(forked, 1);
    lines_free(&l);
    xs_stat_source_free(s);
    close(rv.fd);
#endif
}
