/*
 * bench_semaphore.c — weighted semaphore benchmarks.
 *
 * The first three are the (its names, Go figures measured with
 * semaphore.Weighted): one acquire(1) + release(1) pair per op, with a
 * background context.  The rest mirror Go's semaphore_bench_test.go under
 * its names (the Weighted half; its semChan comparison has no C analogue).
 */
#include "bench.h"

#include <xsync/context.h>
#include <xsync/semaphore.h>

static xs_sem *bench_sem(xs_bench *b, int64_t size)
{
    xs_sem *s = NULL;
    if (xs_sem_new(size, NULL, &s) != 0)
        xs_bench_fail(b, "xs_sem_new(%lld) failed", (long long)size);
    return s;
}

/* One thread, size 1: the lock-free path of both calls. */
XS_BENCHMARK(BenchmarkSemaphoreUncontended)
{
    xs_sem *s = bench_sem(b, 1);
    if (!s)
        return;
    xs_ctx *bg = xs_ctx_background();
    xs_bench_reset_timer(b);
    for (int64_t i = 0, n = xs_bench_n(b); i < n; i++) {
        if (xs_sem_acquire(s, bg, 1) != 0 || xs_sem_release(s, 1) != 0) {
            xs_bench_fail(b, "acquire/release failed");
            break;
        }
    }
    xs_bench_stop_timer(b);
    xs_sem_free(s);
}

static void contended_body(xs_bench_pb *pb, void *arg)
{
    xs_sem *s = arg;
    xs_ctx *bg = xs_ctx_background();
    while (xs_bench_pb_next(pb)) {
        xs_sem_acquire(s, bg, 1);
        xs_sem_release(s, 1);
    }
}

/* One thread per CPU, weight 1 on a semaphore of size 1: every acquire
 * that finds it held queues and is handed the weight by a release (the
 * worst case: a mutex with FIFO hand-off). */
XS_BENCHMARK(BenchmarkSemaphoreContended)
{
    xs_sem *s = bench_sem(b, 1);
    if (!s)
        return;
    xs_bench_reset_timer(b);
    xs_bench_run_parallel(b, contended_body, s);
    xs_bench_stop_timer(b);
    if (xs_sem_held(s) != 0)
        xs_bench_fail(b, "weight leaked: %lld held", (long long)xs_sem_held(s));
    xs_sem_free(s);
}

static void try_body(xs_bench_pb *pb, void *arg)
{
    xs_sem *s = arg;
    while (xs_bench_pb_next(pb)) {
        if (xs_sem_try_acquire(s, 1) == 0)
            xs_sem_release(s, 1);
    }
}

/* One thread per CPU, try_acquire(1) + release(1) on a semaphore large
 * enough that every try succeeds: the contended lock-free path. */
XS_BENCHMARK(BenchmarkTryAcquireParallel)
{
    xs_sem *s = bench_sem(b, 1 << 20);
    if (!s)
        return;
    xs_bench_reset_timer(b);
    xs_bench_run_parallel(b, try_body, s);
    xs_bench_stop_timer(b);
    xs_sem_free(s);
}

/* ---- Go's semaphore_bench_test.go ---- */

static void new_seq(xs_bench *b, void *arg)
{
    int64_t size = (int64_t)(intptr_t)arg;
    for (int64_t i = 0, n = xs_bench_n(b); i < n; i++) {
        xs_sem *s;
        if (xs_sem_new(size, NULL, &s) != 0) {
            xs_bench_fail(b, "xs_sem_new failed");
            return;
        }
        xs_bench_keep(s);
        xs_sem_free(s);
    }
}

typedef struct seq_case {
    int64_t cap, size;
    int n;
    bool try_;
} seq_case;

/* Go's acquireN / tryAcquireN: N acquires of `size`, then N releases. */
static void acquire_seq(xs_bench *b, void *arg)
{
    const seq_case *c = arg;
    xs_sem *s = bench_sem(b, c->cap);
    if (!s)
        return;
    xs_ctx *bg = xs_ctx_background();
    xs_bench_reset_timer(b);
    for (int64_t i = 0, n = xs_bench_n(b); i < n; i++) {
        for (int j = 0; j < c->n; j++) {
            int r = c->try_ ? xs_sem_try_acquire(s, c->size) : xs_sem_acquire(s, bg, c->size);
            if (r != 0) {
                xs_bench_fail(b, "acquire(%lld) failed: %d", (long long)c->size, r);
                goto out;
            }
        }
        for (int j = 0; j < c->n; j++)
            xs_sem_release(s, c->size);
    }
out:
    xs_bench_stop_timer(b);
    xs_sem_free(s);
}

XS_BENCH_REGISTRATIONS(register_semaphore_go)
{
    static const int64_t caps[] = {1, 128};
    for (int i = 0; i < 2; i++)
        xs_bench_registerf(new_seq, (void *)(intptr_t)caps[i], 0, "BenchmarkNewSeq/Weighted-%lld",
                           (long long)caps[i]);

    static seq_case cases[20];
    static const int64_t table[10][3] = {
        {1, 1, 1},  {2, 1, 1},  {16, 1, 1},  {128, 1, 1}, {2, 2, 1},
        {16, 2, 8}, {128, 2, 64}, {2, 1, 2}, {16, 8, 2},  {128, 64, 2},
    };
    for (int i = 0; i < 10; i++) {
        for (int t = 0; t < 2; t++) {
            seq_case *c = &cases[2 * i + t];
            *c = (seq_case){table[i][0], table[i][1], (int)table[i][2], t == 1};
            xs_bench_registerf(acquire_seq, c, XS_BENCH_FULL, "BenchmarkAcquireSeq/Weighted-%s-%lld-%lld-%d",
                               t ? "tryAcquire" : "acquire", (long long)c->cap, (long long)c->size,
                               c->n);
        }
    }
}
