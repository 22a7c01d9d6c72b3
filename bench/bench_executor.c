/*
 * bench_executor.c — the Action/Executor pattern.
 *
 *   BenchmarkExecParallel10         one op: a run of 10 trivial actions on
 *                                   xs_exec_parallel (a group per run, the
 *                                   default pool); per action: ns/op / 10,
 *                                   to compare with BenchmarkErrgroup1000's
 *                                   ns/op / 1000 per task.
 *   BenchmarkExecParallelAll10      the same, fail open (collect mode).
 *   BenchmarkExecPool10             the same on xs_exec_pool(0).
 *   BenchmarkExecSequential10       the same on xs_exec_sequential.
 *   BenchmarkExecMetricsOverhead/{bare,metrics}<k>
 *                                   one op: ONE named action, in runs of k on
 *                                   sequential, bare or under metrics with a
 *                                   source of plain atomic counters; the
 *                                   difference of the two is the decorator's
 *                                   cost per action.  Up to 16 actions the
 *                                   wrappers live on the run's stack, from
 *                                   17 in one heap block per run (16 vs 17
 *                                   shows that cost).  Names are cached
 *                                   before the timer starts.
 *   BenchmarkExecDebounceHot        parallel callers, each op a run of one
 *                                   action named "hot" on
 *                                   debounce(sequential): concurrent runs
 *                                   share executions.
 */
#include "bench.h"

#include <stdio.h>

#include <xsync/executor.h>
#include <xsync/pool.h>

static int trivial(xs_ctx *ctx, void *arg)
{
    (void)ctx;
    (void)arg;
    return 0;
}

static void run_10(xs_bench *b, xs_executor *ex)
{
    if (!ex) {
        xs_bench_fail(b, "executor not created");
        return;
    }
    xs_action a[10];
    for (int i = 0; i < 10; i++)
        a[i] = (xs_action){trivial, NULL, NULL};
    xs_bench_reset_timer(b);
    for (int64_t i = 0, n = xs_bench_n(b); i < n; i++)
        if (xs_exec_run(ex, NULL, a, 10, NULL) != 0) {
            xs_bench_fail(b, "run failed");
            break;
        }
    xs_bench_stop_timer(b);
    xs_exec_free(ex);
}

XS_BENCHMARK(BenchmarkExecParallel10)
{
    xs_executor *ex = NULL;
    if (!xs_pool_default())
        xs_bench_fail(b, "no default pool");
    xs_exec_parallel(NULL, &ex);
    run_10(b, ex);
}

XS_BENCHMARK(BenchmarkExecParallelAll10)
{
    xs_executor *ex = NULL;
    if (!xs_pool_default())
        xs_bench_fail(b, "no default pool");
    xs_exec_parallel_all(NULL, &ex);
    run_10(b, ex);
}

XS_BENCHMARK(BenchmarkExecPool10)
{
    xs_executor *ex = NULL;
    xs_exec_pool(0, NULL, &ex);
    run_10(b, ex);
}

XS_BENCHMARK(BenchmarkExecSequential10)
{
    xs_executor *ex = NULL;
    xs_exec_sequential(NULL, &ex);
    run_10(b, ex);
}

/* ---- metrics overhead ---- */

/* A stat source of plain atomic counters: one counter and one timer shared
 * by every name (the source's own cost is not what is measured). */
typedef struct atomic_source {
    xs_stat_source src;
    xs_stat_counter counter;
    xs_stat_timer timer;
    _Atomic int64_t count, recorded, sum;
} atomic_source;

static void as_add(xs_stat_counter *c, int64_t d)
{
    atomic_source *s = (atomic_source *)(void *)((char *)c - offsetof(atomic_source, counter));
    atomic_fetch_add_explicit(&s->count, d, memory_order_relaxed);
}

static void as_record(xs_stat_timer *t, int64_t ns)
{
    atomic_source *s = (atomic_source *)(void *)((char *)t - offsetof(atomic_source, timer));
    atomic_fetch_add_explicit(&s->recorded, 1, memory_order_relaxed);
    atomic_fetch_add_explicit(&s->sum, ns, memory_order_relaxed);
}

static int as_counter(xs_stat_source *src, const char *name, xs_stat_counter **out)
{
    (void)name;
    *out = &((atomic_source *)(void *)src)->counter;
    return 0;
}

static int as_timer(xs_stat_source *src, const char *name, xs_stat_timer **out)
{
    (void)name;
    *out = &((atomic_source *)(void *)src)->timer;
    return 0;
}

static const xs_stat_source_ops as_ops = {as_counter, as_timer, NULL};

#define MAX_RUN 64

typedef struct mo_arg {
    int per_run;
    bool metrics;
} mo_arg;

static void metrics_overhead(xs_bench *b, void *p)
{
    const mo_arg *m = p;
    static atomic_source src = {.src = {&as_ops}, .counter = {as_add}, .timer = {as_record}};
    static char names[MAX_RUN][16];
    xs_executor *ex = NULL;
    if (xs_exec_sequential(NULL, &ex) != 0 ||
        (m->metrics && xs_exec_metrics(ex, &src.src, NULL, &ex) != 0)) {
        xs_bench_fail(b, "executor not created");
        return;
    }
    xs_action a[MAX_RUN];
    for (int i = 0; i < m->per_run; i++) {
        snprintf(names[i], sizeof names[i], "action-%d", i);
        a[i] = (xs_action){trivial, NULL, names[i]};
    }
    xs_exec_run(ex, NULL, a, (size_t)m->per_run, NULL); /* caches the names */
    xs_bench_reset_timer(b);
    for (int64_t left = xs_bench_n(b); left > 0; left -= m->per_run) {
        size_t k = left < m->per_run ? (size_t)left : (size_t)m->per_run;
        if (xs_exec_run(ex, NULL, a, k, NULL) != 0) {
            xs_bench_fail(b, "run failed");
            break;
        }
    }
    xs_bench_stop_timer(b);
    xs_exec_free(ex);
}

XS_BENCH_REGISTRATIONS(register_metrics_overhead)
{
    static const mo_arg args[] = {{10, false}, {10, true}, {16, true}, {17, true},
                                  {64, false}, {64, true}};
    for (int i = 0; i < 6; i++)
        xs_bench_registerf(metrics_overhead, (void *)&args[i], 0,
                           "BenchmarkExecMetricsOverhead/%s%d",
                           args[i].metrics ? "metrics" : "bare", args[i].per_run);
}

/* ---- debounce ---- */

static void debounce_body(xs_bench_pb *pb, void *p)
{
    xs_executor *ex = p;
    xs_action a = {trivial, NULL, "hot"};
    while (xs_bench_pb_next(pb))
        xs_exec_run(ex, NULL, &a, 1, NULL);
}

XS_BENCHMARK(BenchmarkExecDebounceHot)
{
    xs_executor *ex = NULL;
    if (xs_exec_sequential(NULL, &ex) != 0 || xs_exec_debounce(ex, NULL, &ex) != 0) {
        xs_bench_fail(b, "executor not created");
        return;
    }
    xs_bench_reset_timer(b);
    xs_bench_run_parallel(b, debounce_body, ex);
    xs_bench_stop_timer(b);
    xs_exec_free(ex);
}
