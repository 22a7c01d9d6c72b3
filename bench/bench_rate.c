/*
 * bench_rate.c — the rate limiter: allow uncontended and from every thread
 * (every call granted, so every call writes the state: the worst case), the
 * same when every call is refused (an overloaded limiter), the granted path
 * without the clock read, and Go's rate_test.go benchmarks under their
 * names.
 */
#include "bench.h"

#include <xsync/context.h>
#include <xsync/rate.h>

static xs_rate *new_lim(xs_bench *b, double limit, int64_t burst)
{
    xs_rate *lim = NULL;
    if (xs_rate_new(limit, burst, NULL, &lim) != 0)
        xs_bench_fail(b, "xs_rate_new failed");
    return lim;
}

/* A limit no benchmark can exhaust: every allow succeeds and updates. */
#define PLENTY 1e15

XS_BENCHMARK(BenchmarkRateAllow)
{
    xs_rate *lim = new_lim(b, PLENTY, 1000);
    if (!lim)
        return;
    int64_t n = xs_bench_n(b), ok = 0;
    xs_bench_reset_timer(b);
    for (int64_t i = 0; i < n; i++)
        ok += xs_rate_allow(lim);
    xs_bench_stop_timer(b);
    if (ok < n / 2)
        xs_bench_fail(b, "only %lld of %lld allowed", (long long)ok, (long long)n);
    xs_rate_free(lim);
}

/* The limiter's own cost on the granted path: times given, no clock read. */
XS_BENCHMARK(BenchmarkRateAllowAt)
{
    xs_rate *lim = new_lim(b, PLENTY, 1000);
    if (!lim)
        return;
    int64_t n = xs_bench_n(b), ok = 0, t = xs_now();
    xs_bench_reset_timer(b);
    for (int64_t i = 0; i < n; i++)
        ok += xs_rate_allow_at(lim, t + i);
    xs_bench_stop_timer(b);
    if (ok < n / 2)
        xs_bench_fail(b, "only %lld of %lld allowed", (long long)ok, (long long)n);
    xs_rate_free(lim);
}

static void allow_body(xs_bench_pb *pb, void *arg)
{
    xs_rate *lim = arg;
    int64_t ok = 0;
    while (xs_bench_pb_next(pb))
        ok += xs_rate_allow(lim);
    xs_bench_keep(&ok);
}

XS_BENCHMARK(BenchmarkRateAllowParallel)
{
    xs_rate *lim = new_lim(b, PLENTY, 1000);
    if (!lim)
        return;
    xs_bench_reset_timer(b);
    xs_bench_run_parallel(b, allow_body, lim);
    xs_bench_stop_timer(b);
    xs_rate_free(lim);
}

/* Overload: the bucket is empty and every call is refused. */
XS_BENCHMARK(BenchmarkRateAllowDenied)
{
    xs_rate *lim = new_lim(b, 1e-9, 1);
    if (!lim)
        return;
    xs_rate_allow(lim);
    int64_t n = xs_bench_n(b), ok = 0;
    xs_bench_reset_timer(b);
    for (int64_t i = 0; i < n; i++)
        ok += xs_rate_allow(lim);
    xs_bench_stop_timer(b);
    if (ok != 0)
        xs_bench_fail(b, "%lld allowed", (long long)ok);
    xs_rate_free(lim);
}

XS_BENCHMARK(BenchmarkRateAllowDeniedParallel)
{
    xs_rate *lim = new_lim(b, 1e-9, 1);
    if (!lim)
        return;
    xs_rate_allow(lim);
    xs_bench_reset_timer(b);
    xs_bench_run_parallel(b, allow_body, lim);
    xs_bench_stop_timer(b);
    xs_rate_free(lim);
}

/* Go's BenchmarkAllowN: Every(1 s), burst 1, one fixed time, all threads
 * (so after the first call every call is refused, without a clock read). */
typedef struct allow_n_arg {
    xs_rate *lim;
    int64_t now;
} allow_n_arg;

static void allow_n_body(xs_bench_pb *pb, void *arg)
{
    allow_n_arg *a = arg;
    int64_t ok = 0;
    while (xs_bench_pb_next(pb))
        ok += xs_rate_allow_n_at(a->lim, a->now, 1);
    xs_bench_keep(&ok);
}

XS_BENCHMARK(BenchmarkAllowN)
{
    allow_n_arg a = {new_lim(b, xs_rate_every(XS_SEC), 1), xs_now()};
    if (!a.lim)
        return;
    xs_bench_reset_timer(b);
    xs_bench_run_parallel(b, allow_n_body, &a);
    xs_bench_stop_timer(b);
    xs_rate_free(a.lim);
}

/* Go's BenchmarkWaitNNoDelay: limit b.N, burst b.N, b.N waits that never
 * have to wait. */
XS_BENCHMARK(BenchmarkWaitNNoDelay)
{
    int64_t n = xs_bench_n(b);
    xs_rate *lim = new_lim(b, (double)n, n);
    if (!lim)
        return;
    xs_ctx *ctx = xs_ctx_background();
    xs_bench_reset_timer(b);
    for (int64_t i = 0; i < n; i++)
        if (xs_rate_wait_n(lim, ctx, 1) != 0) {
            xs_bench_fail(b, "wait %lld failed", (long long)i);
            break;
        }
    xs_bench_stop_timer(b);
    xs_rate_free(lim);
}

/* xs_sometimes_allow on a filter that refuses most calls. */
XS_BENCHMARK(BenchmarkSometimesAllow)
{
    xs_sometimes s = {.every = 1000};
    int64_t n = xs_bench_n(b), ok = 0;
    xs_bench_reset_timer(b);
    for (int64_t i = 0; i < n; i++)
        ok += xs_sometimes_allow(&s);
    xs_bench_keep(&ok);
}
