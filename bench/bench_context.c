/*
 * bench_context.c — context benchmarks, under the names of Go's context
 * benchmarks where one exists.
 */
#include "bench.h"

#include <xsync/context.h>

/* with_cancel on a live cancellable parent, cancel, release. */
XS_BENCHMARK(BenchmarkContextWithCancel)
{
    xs_ctx *parent, *c;
    xs_ctx_with_cancel(xs_ctx_background(), &parent);
    xs_bench_reset_timer(b);
    for (int64_t i = 0, n = xs_bench_n(b); i < n; i++) {
        if (xs_ctx_with_cancel(parent, &c) != 0) {
            xs_bench_fail(b, "with_cancel failed");
            break;
        }
        xs_ctx_cancel(c, 0);
        xs_ctx_release(c);
    }
    xs_bench_stop_timer(b);
    xs_ctx_release(parent);
}

static void done_body(xs_bench_pb *pb, void *arg)
{
    xs_ctx *ctx = arg;
    int done = 0;
    while (xs_bench_pb_next(pb))
        done += xs_ctx_done(ctx);
    xs_bench_keep(&done);
}

/* Checking done on a live context from every thread. */
XS_BENCHMARK(BenchmarkContextDone)
{
    xs_ctx *parent, *ctx;
    xs_ctx_with_cancel(xs_ctx_background(), &parent);
    xs_ctx_with_value(parent, &parent, NULL, &ctx); /* through a value node, as usual */
    xs_bench_reset_timer(b);
    xs_bench_run_parallel(b, done_body, ctx);
    xs_ctx_release(ctx);
    xs_ctx_release(parent);
}

/* Go's BenchmarkCheckCanceled: err and done on a cancelled context. */
XS_BENCHMARK(BenchmarkCheckCanceled)
{
    xs_ctx *ctx;
    xs_ctx_with_cancel(xs_ctx_background(), &ctx);
    xs_ctx_cancel(ctx, 0);
    xs_bench_reset_timer(b);
    int sum = 0;
    for (int64_t i = 0, n = xs_bench_n(b); i < n; i++)
        sum += xs_ctx_err(ctx) + xs_ctx_done(ctx);
    xs_bench_keep(&sum);
    xs_bench_stop_timer(b);
    xs_ctx_release(ctx);
}

static void common_parent_body(xs_bench_pb *pb, void *arg)
{
    xs_ctx *parent = arg, *c;
    while (xs_bench_pb_next(pb)) {
        xs_ctx_with_cancel(parent, &c);
        xs_ctx_cancel(c, 0);
        xs_ctx_release(c);
    }
}

/* Go's BenchmarkCommonParentCancel: every thread makes and cancels children
 * of one shared parent (contention on the parent's children list). */
XS_BENCHMARK(BenchmarkCommonParentCancel)
{
    xs_ctx *parent;
    xs_ctx_with_cancel(xs_ctx_background(), &parent);
    xs_bench_reset_timer(b);
    xs_bench_run_parallel(b, common_parent_body, parent);
    xs_ctx_release(parent);
}

static void timeout_body(xs_bench_pb *pb, void *arg)
{
    xs_ctx *parent = arg, *c;
    while (xs_bench_pb_next(pb)) {
        xs_ctx_with_timeout(parent, 3600 * XS_SEC, 0, &c);
        xs_ctx_cancel(c, 0);
        xs_ctx_release(c);
    }
}

/* Go's BenchmarkWithTimeout shape: a timer armed and disarmed per op. */
XS_BENCHMARK(BenchmarkWithTimeout)
{
    xs_bench_run_parallel(b, timeout_body, xs_ctx_background());
}

static int depth_key;

/* Go's BenchmarkDeepValueSameGoRoutine: a lookup that walks 10 nodes up. */
XS_BENCHMARK(BenchmarkDeepValue10)
{
    xs_ctx *c[11];
    xs_ctx_with_value(xs_ctx_background(), &depth_key, &depth_key, &c[0]);
    for (int i = 1; i <= 10; i++)
        xs_ctx_with_value(c[i - 1], &c[i], NULL, &c[i]);
    xs_bench_reset_timer(b);
    void *v = NULL;
    for (int64_t i = 0, n = xs_bench_n(b); i < n; i++)
        xs_ctx_value(c[10], &depth_key, &v);
    xs_bench_keep(v);
    xs_bench_stop_timer(b);
    for (int i = 10; i >= 0; i--)
        xs_ctx_release(c[i]);
}
