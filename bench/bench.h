/*
 * bench.h — the xsync-bench harness: Go's testing.B model for C.
 *
 * A benchmark is a function that performs the measured operation
 * xs_bench_n(b) times.  The harness calls it with n = 1 first, then with a
 * growing n until the timed part reaches -benchtime, and prints one line per
 * (benchmark, -cpu value, -count repetition) in `go test -bench` format, so
 * the output can be fed to benchstat.
 *
 * Writing one (in a file bench/bench_<module>.c, picked up by the build):
 *
 *     #include "bench.h"
 *
 *     XS_BENCHMARK(BenchmarkThing)
 *     {
 *         thing *t = thing_new();          // setup, not measured ...
 *         xs_bench_reset_timer(b);         // ... once the timer is reset
 *         int64_t n = xs_bench_n(b);
 *         for (int64_t i = 0; i < n; i++)
 *             xs_bench_keep(thing_op(t));
 *         xs_bench_stop_timer(b);          // teardown, not measured
 *         thing_free(t);
 *     }
 *
 * Parallel benchmarks (Go's b.RunParallel) hand a body to
 * xs_bench_run_parallel; several entries from one function (Go's
 * sub-benchmarks, named "BenchmarkX/param") are registered from an
 * XS_BENCH_REGISTRATIONS block with xs_bench_registerf.
 *
 * Allocation counting: during every run the harness installs a counting
 * allocator (per-thread counters) as the process-wide default, so objects created
 * with a NULL allocator inside the benchmark are counted in B/op and
 * allocs/op.  Objects created before the run keep the allocator they were
 * created with and are not counted.
 *
 * Threads: everything except xs_bench_pb_*, xs_bench_n, xs_bench_procs,
 * xs_bench_fail and xs_bench_failed must be called from the thread that runs
 * the benchmark function (never from a parallel body), as in Go.
 */
#ifndef XSYNC_BENCH_H
#define XSYNC_BENCH_H

#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>

/* ---- per-run state ---- */

typedef struct xs_bench xs_bench;

/* The number of iterations to perform in this run (Go's b.N), >= 1. */
int64_t xs_bench_n(const xs_bench *b);

/* The current P: the -cpu value of this run (Go's GOMAXPROCS). */
int xs_bench_procs(const xs_bench *b);

/* The registered name, without the -P suffix. */
const char *xs_bench_name(const xs_bench *b);

/*
 * Timer control, as in Go.  The timer is running when the benchmark function
 * is called.  reset_timer zeroes the elapsed time and the allocation counts
 * (it does not start or stop the timer); stop_timer/start_timer pause and
 * resume both time and allocation counting.
 */
void xs_bench_reset_timer(xs_bench *b);
void xs_bench_stop_timer(xs_bench *b);
void xs_bench_start_timer(xs_bench *b);

/* Bytes processed per operation; when > 0 the result also shows MB/s. */
void xs_bench_set_bytes(xs_bench *b, int64_t n);

/*
 * Marks this run failed and records the message (printed under
 * "--- FAIL: name", and the run ends with FAIL and exit status 1).  Unlike
 * Go's b.Fatal it does not stop the function: return promptly after calling
 * it.  No further growth runs happen once a run failed.  Thread-safe: may be
 * called from parallel bodies.
 */
void xs_bench_fail(xs_bench *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
bool xs_bench_failed(const xs_bench *b);

/* ---- parallel benchmarks (Go's b.RunParallel) ---- */

/*
 * Per-thread iteration source.  The fields are private to the harness; they
 * are visible only so that xs_bench_pb_next inlines into the measured loop.
 */
typedef struct xs_bench_pb {
    uint64_t cache_;           /* iterations left in the current batch */
    uint64_t grain_;           /* batch size */
    uint64_t n_;               /* b.N */
    _Atomic uint64_t *next_;   /* shared: iterations handed out so far */
    int thread_;
} xs_bench_pb;

/* Internal: takes the next batch from the shared counter. */
bool xs_bench_pb_next_slow(xs_bench_pb *pb);

/* True while there are iterations left; every thread loops until false. */
static inline bool xs_bench_pb_next(xs_bench_pb *pb)
{
    if (pb->cache_ != 0) {
        pb->cache_--;
        return true;
    }
    return xs_bench_pb_next_slow(pb);
}

/* This thread's index, 0 .. threads-1 (threads = procs * parallelism). */
int xs_bench_pb_thread(const xs_bench_pb *pb);

/*
 * Runs body(pb, arg) on procs * parallelism threads (procs = the -cpu value),
 * released together once all are started; the b.N iterations are handed out
 * in batches of ~100 us worth from a shared counter.  The wall time from the
 * first body starting to the last one returning is timed (thread creation,
 * wake-up and exit are not), so ns/op = wall time / b.N.  Each body must loop
 * until xs_bench_pb_next is false (if every body returns early the run
 * fails, as in Go).  Call it from the benchmark function itself, normally
 * once: each call performs all b.N iterations.  A body must not call the
 * timer functions or xs_bench_run_parallel.
 */
void xs_bench_run_parallel(xs_bench *b, void (*body)(xs_bench_pb *pb, void *arg), void *arg);

/*
 * Multiplies the thread count of xs_bench_run_parallel by p (p >= 1; default
 * 1, reset for every run), for benchmarks that block (Go's SetParallelism).
 */
void xs_bench_set_parallelism(xs_bench *b, int p);

/* ---- keeping the optimizer honest ---- */

/*
 * Makes the compiler assume p escapes and the memory behind it is read and
 * written here, so the work that produced it (or stores through it) cannot be
 * deleted or hoisted out of the loop.  Costs no instructions.  Pass the
 * address of a result variable: xs_bench_keep(&sum), or a returned pointer.
 */
static inline void xs_bench_keep(const void *p)
{
    __asm__ __volatile__("" : : "r"(p) : "memory");
}

/* A compiler-only memory barrier: memory must be up to date here. */
static inline void xs_bench_clobber(void)
{
    __asm__ __volatile__("" : : : "memory");
}

/* ---- registration ---- */

typedef void (*xs_bench_fn)(xs_bench *b, void *arg);

/* Only in the full run (-full), not in the default quick set. */
#define XS_BENCH_FULL 1u

/*
 * Registers a benchmark; call it from a constructor (the macros below).  The
 * name is copied; it must start with "Benchmark" and contain no whitespace,
 * and names must be unique (the program refuses to run otherwise).  arg is
 * passed to fn unchanged.
 */
void xs_bench_register(const char *name, xs_bench_fn fn, void *arg, unsigned flags);

/* The same with a printf-formatted name, e.g. "BenchmarkSyncMapCache/%d". */
void xs_bench_registerf(xs_bench_fn fn, void *arg, unsigned flags, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));

/*
 * XS_BENCHMARK(BenchmarkName) { ... body using b ... }
 * defines and registers a benchmark named after the identifier.
 * XS_BENCHMARK_FLAGS(BenchmarkName, XS_BENCH_FULL) { ... } adds flags.
 */
#define XS_BENCHMARK(name) XS_BENCHMARK_FLAGS(name, 0u)

#define XS_BENCHMARK_FLAGS(name, flags)                                        \
    static void name(xs_bench *b);                                             \
    static void name##_xs_entry(xs_bench *b, void *arg)                        \
    {                                                                          \
        (void)arg;                                                             \
        name(b);                                                               \
    }                                                                          \
    __attribute__((constructor)) static void name##_xs_register(void)          \
    {                                                                          \
        xs_bench_register(#name, name##_xs_entry, (void *)0, (flags));         \
    }                                                                          \
    static void name(xs_bench *b)

/*
 * XS_BENCH_REGISTRATIONS(register_my_module) { xs_bench_registerf(...); ... }
 * defines a constructor that registers any number of entries, typically one
 * shared function with different args:
 *
 *     static void bench_cache(xs_bench *b, void *arg)
 *     { int size = (int)(intptr_t)arg; ... }
 *
 *     XS_BENCH_REGISTRATIONS(register_syncmap)
 *     {
 *         static const int sizes[] = {10, 100, 1000};
 *         for (int i = 0; i < 3; i++)
 *             xs_bench_registerf(bench_cache, (void *)(intptr_t)sizes[i], 0,
 *                                "BenchmarkSyncMapCache/%d", sizes[i]);
 *     }
 */
#define XS_BENCH_REGISTRATIONS(fname)                                          \
    __attribute__((constructor)) static void fname(void);                      \
    static void fname(void)

#endif
