/*
 * bench_group.c — errgroup and pool benchmarks, under the names of Go's
 * errgroup benchmarks (BenchmarkGo and friends, 1000 tasks per op).
 */
#include "bench.h"

#include <sched.h>

#include <xsync/context.h>
#include <xsync/group.h>
#include <xsync/pool.h>

static int trivial(xs_ctx *ctx, void *arg)
{
    (void)ctx;
    (void)arg;
    return 0;
}

static void errgroup_1000(xs_bench *b, int limit, unsigned flags)
{
    xs_group_opts o = {.flags = flags};
    if (!xs_pool_default()) {
        xs_bench_fail(b, "no default pool");
        return;
    }
    for (int64_t i = 0, n = xs_bench_n(b); i < n; i++) {
        xs_group *g;
        if (xs_group_new(NULL, &o, &g, NULL) != 0) {
            xs_bench_fail(b, "group_new failed");
            return;
        }
        if (limit)
            xs_group_set_limit(g, limit);
        for (int k = 0; k < 1000; k++)
            if (xs_group_go(g, trivial, NULL) != 0)
                xs_bench_fail(b, "go failed");
        if (xs_group_wait(g) != 0)
            xs_bench_fail(b, "wait failed");
        xs_group_free(g);
    }
}

/* One op: a group, 1000 trivial tasks, wait. */
XS_BENCHMARK(BenchmarkErrgroup1000)
{
    errgroup_1000(b, 0, 0);
}

/* The same with set_limit(2): every go past the second waits for a task to
 * finish on another thread (Go's semantics exactly). */
XS_BENCHMARK(BenchmarkErrgroupLimit1000)
{
    errgroup_1000(b, 2, 0);
}

/* The same with XS_GROUP_GO_HELPS: go runs queued tasks itself. */
XS_BENCHMARK(BenchmarkErrgroupLimit1000GoHelps)
{
    errgroup_1000(b, 2, XS_GROUP_GO_HELPS);
}

static int block_on_ctx(xs_ctx *ctx, void *arg)
{
    (void)arg;
    xs_ctx_wait(ctx, XS_FOREVER);
    return 0;
}

static int fail(xs_ctx *ctx, void *arg)
{
    (void)ctx;
    (void)arg;
    return 1;
}

/* One op: 1000 tasks blocked on the group's context, one more fails, wait. */
XS_BENCHMARK(BenchmarkErrgroupCancel1000)
{
    if (!xs_pool_default()) {
        xs_bench_fail(b, "no default pool");
        return;
    }
    for (int64_t i = 0, n = xs_bench_n(b); i < n; i++) {
        xs_group *g;
        if (xs_group_new(NULL, NULL, &g, NULL) != 0) {
            xs_bench_fail(b, "group_new failed");
            return;
        }
        for (int k = 0; k < 1000; k++)
            xs_group_go(g, block_on_ctx, NULL);
        xs_group_go(g, fail, NULL);
        if (xs_group_wait(g) != 1)
            xs_bench_fail(b, "wait did not return the failure");
        xs_group_free(g);
    }
}

static _Atomic int64_t pool_ran;

static void count_task(void *arg)
{
    (void)arg;
    atomic_fetch_add_explicit(&pool_ran, 1, memory_order_relaxed);
}

static void submit_body(xs_bench_pb *pb, void *arg)
{
    xs_pool *p = arg;
    while (xs_bench_pb_next(pb))
        while (xs_pool_submit(p, count_task, NULL) != 0)
            sched_yield();
}

/* Parallel: submit + run of a trivial task on the default pool (the timer
 * runs until every submitted task has run). */
XS_BENCHMARK(BenchmarkPoolSubmit)
{
    xs_pool *p = xs_pool_default();
    if (!p) {
        xs_bench_fail(b, "no default pool");
        return;
    }
    atomic_store(&pool_ran, 0);
    xs_bench_run_parallel(b, submit_body, p);
    while (atomic_load_explicit(&pool_ran, memory_order_relaxed) < xs_bench_n(b))
        sched_yield();
}
