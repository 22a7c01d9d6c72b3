/*
 * bench_selftest.c — benchmarks of the harness itself, so it is exercised
 * before any module has benchmarks: the serial loop overhead, and a parallel
 * run whose allocation counts are known (64 B/op, 1 allocs/op).
 */
#include "bench.h"

#include <xsync/alloc.h>

XS_BENCHMARK(BenchmarkHarnessNoop)
{
    int64_t n = xs_bench_n(b);
    for (int64_t i = 0; i < n; i++)
        xs_bench_keep(b);
}

static void alloc_body(xs_bench_pb *pb, void *arg)
{
    xs_bench *b = arg;
    /* the counting allocator the harness installed for this run */
    const xs_allocator *a = xs_allocator_default();
    while (xs_bench_pb_next(pb)) {
        void *p = a->alloc(a->state, 64);
        if (!p) {
            xs_bench_fail(b, "allocation failed in thread %d", xs_bench_pb_thread(pb));
            return;
        }
        xs_bench_keep(p);
        a->free(a->state, p, 64);
    }
}

XS_BENCHMARK(BenchmarkHarnessAllocParallel)
{
    xs_bench_run_parallel(b, alloc_body, b);
}
