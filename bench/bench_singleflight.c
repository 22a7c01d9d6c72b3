/*
 * bench_singleflight.c — singleflight under the benchmark names of the
 * Go ports of x/sync's singleflight (BenchmarkDo: random 10-byte keys, a
 * function that returns at once, every goroutine calling Do in a loop).
 *
 *   BenchmarkSingleflightDo       parallel; each thread cycles through keys
 *                                 of its own, so no call is ever shared:
 *                                 the cost of registering, running and
 *                                 retiring a call.
 *   BenchmarkSingleflightSameKey  parallel; every thread calls one hot key:
 *                                 contention on one stripe and one call.
 *
 * The caller's context is xs_ctx_background() (Go's Do takes none), and each
 * result is released in the loop, as a Go caller drops its value.
 */
#include "bench.h"

#include <stdlib.h>

#include <xsync/singleflight.h>

#define NKEYS 10240
#define KEYLEN 10

static unsigned char keys[NKEYS][KEYLEN];

static void make_keys(void)
{
    uint64_t s = UINT64_C(0x9E3779B97F4A7C15);
    for (int i = 0; i < NKEYS; i++)
        for (int j = 0; j < KEYLEN; j++) {
            s ^= s >> 12;
            s ^= s << 25;
            s ^= s >> 27;
            keys[i][j] = (unsigned char)((s * UINT64_C(2685821657736338717)) >> 56);
        }
}

static int return_nil(xs_ctx *ctx, void *arg, void **value, xs_sf_value_free *vf)
{
    (void)ctx, (void)arg, (void)value, (void)vf;
    return 0;
}

typedef struct bench_arg {
    xs_bench *b;
    xs_sf *sf;
    int threads;
} bench_arg;

static void distinct_body(xs_bench_pb *pb, void *p)
{
    bench_arg *a = p;
    int t = xs_bench_pb_thread(pb);
    int per = NKEYS / a->threads, base = t * per;
    xs_ctx *bg = xs_ctx_background();
    for (int i = 0; xs_bench_pb_next(pb); i = i + 1 == per ? 0 : i + 1) {
        xs_sf_result r;
        if (xs_sf_do(a->sf, bg, keys[base + i], KEYLEN, return_nil, NULL, &r) != 0) {
            xs_bench_fail(a->b, "xs_sf_do failed");
            break;
        }
        xs_sf_result_release(&r);
    }
    while (xs_bench_pb_next(pb))
        ;
}

XS_BENCHMARK(BenchmarkSingleflightDo)
{
    make_keys();
    bench_arg a = {b, NULL, xs_bench_procs(b)};
    if (a.threads > NKEYS)
        a.threads = NKEYS;
    if (xs_sf_new(NULL, &a.sf) != 0) {
        xs_bench_fail(b, "xs_sf_new failed");
        return;
    }
    xs_bench_reset_timer(b);
    xs_bench_run_parallel(b, distinct_body, &a);
    xs_bench_stop_timer(b);
    if (xs_sf_free(a.sf) != 0)
        xs_bench_fail(b, "xs_sf_free failed");
}

static void same_key_body(xs_bench_pb *pb, void *p)
{
    bench_arg *a = p;
    xs_ctx *bg = xs_ctx_background();
    while (xs_bench_pb_next(pb)) {
        xs_sf_result r;
        if (xs_sf_do(a->sf, bg, "key", 3, return_nil, NULL, &r) != 0) {
            xs_bench_fail(a->b, "xs_sf_do failed");
            break;
        }
        xs_sf_result_release(&r);
    }
    while (xs_bench_pb_next(pb))
        ;
}

XS_BENCHMARK(BenchmarkSingleflightSameKey)
{
    bench_arg a = {b, NULL, xs_bench_procs(b)};
    if (xs_sf_new(NULL, &a.sf) != 0) {
        xs_bench_fail(b, "xs_sf_new failed");
        return;
    }
    xs_bench_reset_timer(b);
    xs_bench_run_parallel(b, same_key_body, &a);
    xs_bench_stop_timer(b);
    if (xs_sf_free(a.sf) != 0)
        xs_bench_fail(b, "xs_sf_free failed");
}
