/*
 * bench_stats.c — the stat sources' emitting paths, which the executor's
 * metrics decorator runs on every action.
 *
 *   BenchmarkStatCounterAdd       registry counter, add(1) from every thread
 *                                 into the same counter (striped)
 *   BenchmarkStatTimerRecord      registry timer, record(latency) from every
 *                                 thread into the same timer; latencies
 *                                 spread over 0..1 ms by a per-thread
 *                                 xorshift (what real latencies look like
 *                                 to the buckets)
 *   BenchmarkStatTimerRecordSameBucket  the same, every thread recording
 *                                 the same latency (one bucket): the worst
 *                                 case for a shared histogram line
 *   BenchmarkStatsdCounterAdd     the statsd source's counter add
 *   BenchmarkStatPrometheusWrite/N  render N counters and N timers
 *
 * Handles are fetched before the timer starts, as the decorator caches
 * them: the loops measure emitting only, and must allocate nothing.
 */
#include "bench.h"

#include <stdlib.h>
#include <stdio.h>

#include <xsync/stats.h>

static xs_stat_source *bench_registry(xs_bench *b)
{
    xs_stat_source *r = NULL;
    if (xs_stat_registry_new(NULL, &r) != 0)
        xs_bench_fail(b, "xs_stat_registry_new failed");
    return r;
}

static void add_body(xs_bench_pb *pb, void *arg)
{
    xs_stat_counter *c = arg;
    while (xs_bench_pb_next(pb))
        xs_stat_add(c, 1);
}

XS_BENCHMARK(BenchmarkStatCounterAdd)
{
    xs_stat_source *r = bench_registry(b);
    if (!r)
        return;
    xs_stat_counter *c = NULL;
    if (xs_stat_counter_get(r, "all_actions.success", &c) != 0) {
        xs_bench_fail(b, "counter failed");
        xs_stat_source_free(r);
        return;
    }
    xs_bench_reset_timer(b);
    xs_bench_run_parallel(b, add_body, c);
    xs_bench_stop_timer(b);
    int64_t v = 0;
    xs_stat_counter_value(c, &v);
    if (v != xs_bench_n(b))
        xs_bench_fail(b, "counter %lld, want %lld", (long long)v, (long long)xs_bench_n(b));
    xs_stat_source_free(r);
}

static void record_body(xs_bench_pb *pb, void *arg)
{
    xs_stat_timer *t = arg;
    uint64_t s = (uint64_t)(xs_bench_pb_thread(pb) + 1) * UINT64_C(0x9E3779B97F4A7C15);
    while (xs_bench_pb_next(pb)) {
        s ^= s >> 12;
        s ^= s << 25;
        s ^= s >> 27;
        xs_stat_record(t, (int64_t)((s * UINT64_C(2685821657736338717)) >> 44)); /* < 2^20 ns */
    }
}

static void same_bucket_body(xs_bench_pb *pb, void *arg)
{
    xs_stat_timer *t = arg;
    while (xs_bench_pb_next(pb))
        xs_stat_record(t, 123456);
}

static void bench_timer(xs_bench *b, void (*body)(xs_bench_pb *, void *))
{
    xs_stat_source *r = bench_registry(b);
    if (!r)
        return;
    xs_stat_timer *t = NULL;
    if (xs_stat_timer_get(r, "all_actions.latency", &t) != 0) {
        xs_bench_fail(b, "timer failed");
        xs_stat_source_free(r);
        return;
    }
    xs_bench_reset_timer(b);
    xs_bench_run_parallel(b, body, t);
    xs_bench_stop_timer(b);
    xs_stat_summary s;
    xs_stat_timer_snapshot(t, &s);
    if ((int64_t)s.count != xs_bench_n(b))
        xs_bench_fail(b, "count %llu, want %lld", (unsigned long long)s.count,
                      (long long)xs_bench_n(b));
    xs_stat_source_free(r);
}

XS_BENCHMARK(BenchmarkStatTimerRecord)
{
    bench_timer(b, record_body);
}

XS_BENCHMARK(BenchmarkStatTimerRecordSameBucket)
{
    bench_timer(b, same_bucket_body);
}

XS_BENCHMARK(BenchmarkStatsdCounterAdd)
{
    xs_stat_source *s = NULL;
    if (xs_stat_statsd_new(NULL, &s) != 0) {
        xs_bench_fail(b, "xs_stat_statsd_new failed");
        return;
    }
    xs_stat_counter *c = NULL;
    if (xs_stat_counter_get(s, "all_actions.success", &c) != 0) {
        xs_bench_fail(b, "counter failed");
        xs_stat_source_free(s);
        return;
    }
    xs_bench_reset_timer(b);
    xs_bench_run_parallel(b, add_body, c);
    xs_bench_stop_timer(b);
    xs_stat_source_free(s); /* its last flush goes to 127.0.0.1:8125, listened to or not */
}

static void bench_prometheus(xs_bench *b, void *arg)
{
    int n = (int)(intptr_t)arg;
    xs_stat_source *r = bench_registry(b);
    if (!r)
        return;
    for (int i = 0; i < n; i++) {
        char name[64];
        xs_stat_counter *c = NULL;
        xs_stat_timer *t = NULL;
        snprintf(name, sizeof name, "action-%d.success", i);
        xs_stat_counter_get(r, name, &c);
        xs_stat_add(c, i);
        snprintf(name, sizeof name, "action-%d.latency", i);
        xs_stat_timer_get(r, name, &t);
        for (int k = 0; k < 100; k++)
            xs_stat_record(t, (int64_t)(k + 1) * 12345);
    }
    size_t len = 0;
    xs_stat_prometheus_write(r, NULL, 0, &len);
    size_t cap = len + 1;
    char *buf = malloc(cap);
    if (!buf) {
        xs_bench_fail(b, "malloc");
        xs_stat_source_free(r);
        return;
    }
    xs_bench_reset_timer(b);
    for (int64_t i = 0, iters = xs_bench_n(b); i < iters; i++) {
        if (xs_stat_prometheus_write(r, buf, cap, &len) != 0 || len >= cap) {
            xs_bench_fail(b, "prometheus_write failed");
            break;
        }
    }
    xs_bench_stop_timer(b);
    xs_bench_set_bytes(b, (int64_t)len);
    free(buf);
    xs_stat_source_free(r);
}

XS_BENCH_REGISTRATIONS(register_stats)
{
    static const int sizes[] = {10, 100};
    for (int i = 0; i < 2; i++)
        xs_bench_registerf(bench_prometheus, (void *)(intptr_t)sizes[i], 0,
                           "BenchmarkStatPrometheusWrite/%d", sizes[i]);
}
