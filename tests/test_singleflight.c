/*
 * Tests for singleflight: Go's singleflight_test.go scenario by scenario,
 * then the context-aware behaviour beyond Go, bad input and allocation
 * failure.  Tests wait for observable events (th_event, joins, the group's
 * interest count polled with a bound), never for a fixed time.
 */
#include <sched.h>
#include <stdlib.h>

#include <xsync/xsync.h>
#include <xsync/singleflight.h>

#include "harness.h"

#define WAIT_MS 10000 /* bound on any single wait for an event */

static xs_ctx *bg(void)
{
    return xs_ctx_background();
}

static xs_sf *new_sf(void)
{
    xs_sf *sf = NULL;
    if (xs_sf_new(NULL, &sf) != 0)
        return NULL;
    return sf;
}

/* Polls xs_sf_interested until it equals n (bounded); true if it did. */
static bool wait_interest(xs_sf *sf, const char *key, int n)
{
    int64_t end = th_now_ns() + (int64_t)WAIT_MS * 1000000;
    while (th_now_ns() < end) {
        if (xs_sf_interested(sf, key, strlen(key)) == n)
            return true;
        sched_yield();
    }
    return xs_sf_interested(sf, key, strlen(key)) == n;
}

/* ---- functions the tests run ---- */

static int ret_bar(xs_ctx *ctx, void *arg, void **value, xs_sf_value_free *vf)
{
    (void)ctx, (void)arg, (void)vf;
    *value = (void *)"bar";
    return 0;
}

#define SOME_ERR 4242

static int ret_err(xs_ctx *ctx, void *arg, void **value, xs_sf_value_free *vf)
{
    (void)ctx, (void)arg, (void)value, (void)vf;
    return SOME_ERR;
}

static int never_called(xs_ctx *ctx, void *arg, void **value, xs_sf_value_free *vf)
{
    (void)ctx, (void)value, (void)vf;
    atomic_fetch_add((_Atomic int *)arg, 1);
    return 0;
}

/*
 * A function that blocks: it counts its runs, signals `started`, and waits
 * for `release` (or, with wait_ctx, for its own context to end, which it
 * then reports), then returns `ret` and `value`.
 */
typedef struct blocker {
    th_event started, release, ctx_ended;
    _Atomic int calls;
    _Atomic(xs_ctx *) ctx;   /* fn's context while it runs */
    _Atomic int ctx_was_done; /* fn's context was done when it returned */
    bool wait_ctx;
    int ret;
    void *value;
    xs_sf_value_free vfree;
} blocker;

static void blocker_init(blocker *b, int ret, void *value)
{
    memset(b, 0, sizeof *b);
    th_event_init(&b->started);
    th_event_init(&b->release);
    th_event_init(&b->ctx_ended);
    atomic_init(&b->calls, 0);
    atomic_init(&b->ctx, NULL);
    atomic_init(&b->ctx_was_done, 0);
    b->ret = ret;
    b->value = value;
}

static void blocker_destroy(blocker *b)
{
    th_event_destroy(&b->started);
    th_event_destroy(&b->release);
    th_event_destroy(&b->ctx_ended);
}

static int blocking_fn(xs_ctx *ctx, void *arg, void **value, xs_sf_value_free *vf)
{
    blocker *b = arg;
    atomic_fetch_add(&b->calls, 1);
    atomic_store(&b->ctx, ctx);
    th_event_signal(&b->started);
    if (b->wait_ctx) {
        if (xs_ctx_wait(ctx, (int64_t)WAIT_MS * XS_MSEC) != 0)
            th_event_signal(&b->ctx_ended);
    }
    th_event_wait(&b->release, 1, WAIT_MS * 2);
    atomic_store(&b->ctx_was_done, xs_ctx_done(ctx));
    atomic_store(&b->ctx, NULL);
    *value = b->value;
    *vf = b->vfree;
    return b->ret;
}

/* ---- a caller on a thread of its own ---- */

typedef struct caller {
    xs_sf *sf;
    xs_ctx *ctx;
    const char *key;
    xs_sf_fn fn;
    void *arg;
    int err;
    xs_sf_result res;
    th_event done;
    pthread_t th;
} caller;

static void *caller_main(void *p)
{
    caller *c = p;
    c->err = xs_sf_do(c->sf, c->ctx, c->key, strlen(c->key), c->fn, c->arg, &c->res);
    th_event_signal(&c->done);
    return NULL;
}

static void caller_start(caller *c, xs_sf *sf, xs_ctx *ctx, const char *key, xs_sf_fn fn,
                         void *arg)
{
    memset(c, 0, sizeof *c);
    c->sf = sf;
    c->ctx = ctx;
    c->key = key;
    c->fn = fn;
    c->arg = arg;
    c->err = -1;
    th_event_init(&c->done);
    pthread_create(&c->th, NULL, caller_main, c);
}

static void caller_join(caller *c)
{
    pthread_join(c->th, NULL);
    xs_sf_result_release(&c->res);
    th_event_destroy(&c->done);
}

/* ---- a do_async completion ---- */

typedef struct async_out {
    th_event done;
    _Atomic int calls;
    int err;
    xs_sf_result res;
} async_out;

static void async_out_init(async_out *o)
{
    memset(o, 0, sizeof *o);
    th_event_init(&o->done);
    atomic_init(&o->calls, 0);
    o->err = -1;
}

static void async_done(void *arg, int err, xs_sf_result *res)
{
    async_out *o = arg;
    o->err = err;
    o->res = *res; /* the callback owns the reference: keep it in o */
    atomic_fetch_add(&o->calls, 1);
    th_event_signal(&o->done);
}

static void async_out_destroy(async_out *o)
{
    xs_sf_result_release(&o->res);
    th_event_destroy(&o->done);
}

/* ================= Go's singleflight_test.go ================= */

/* TestDo */
TEST(do_returns_value)
{
    xs_sf *sf = new_sf();
    ASSERT(sf);
    xs_sf_result r;
    EXPECT_EQ(xs_sf_do(sf, bg(), "key", 3, ret_bar, NULL, &r), 0);
    EXPECT_STREQ((const char *)r.value, "bar");
    EXPECT_EQ(r.err, 0);
    EXPECT(!r.shared);
    xs_sf_result_release(&r);
    EXPECT_PTR_EQ(r.value, NULL);
    EXPECT_EQ(xs_sf_interested(sf, "key", 3), 0); /* nothing left registered */
    EXPECT_EQ(xs_sf_free(sf), 0);
}

/* TestDoErr */
TEST(do_returns_error)
{
    xs_sf *sf = new_sf();
    ASSERT(sf);
    xs_sf_result r;
    EXPECT_EQ(xs_sf_do(sf, bg(), "key", 3, ret_err, NULL, &r), SOME_ERR);
    EXPECT_EQ(r.err, SOME_ERR);
    EXPECT_PTR_EQ(r.value, NULL);
    xs_sf_result_release(&r);
    EXPECT_EQ(xs_sf_free(sf), 0);
}

/* TestDoDupSuppress: 10 concurrent callers of a slow function. */
TEST(do_dup_suppress)
{
    enum { N = 10 };
    xs_sf *sf = new_sf();
    ASSERT(sf);
    blocker b;
    blocker_init(&b, 0, (void *)"bar");
    caller c[N];
    for (int i = 0; i < N; i++)
        caller_start(&c[i], sf, bg(), "key", blocking_fn, &b);
    /* At least one caller is in fn; wait until all have joined its call
     * (they must: it cannot finish before we release it). */
    EXPECT(th_event_wait(&b.started, 1, WAIT_MS));
    EXPECT(wait_interest(sf, "key", N));
    th_event_signal(&b.release);
    int shared = 0;
    for (int i = 0; i < N; i++) {
        EXPECT(th_event_wait(&c[i].done, 1, WAIT_MS));
        pthread_join(c[i].th, NULL);
        EXPECT_EQ(c[i].err, 0);
        EXPECT_STREQ((const char *)c[i].res.value, "bar");
        shared += c[i].res.shared;
        xs_sf_result_release(&c[i].res);
        th_event_destroy(&c[i].done);
    }
    int calls = atomic_load(&b.calls);
    EXPECT_GT(calls, 0);
    EXPECT_LT(calls, N);
    EXPECT_EQ(shared, N); /* every caller shared the one call */
    blocker_destroy(&b);
    EXPECT_EQ(xs_sf_free(sf), 0);
}

static int ret_int(xs_ctx *ctx, void *arg, void **value, xs_sf_value_free *vf)
{
    (void)ctx, (void)vf;
    *value = arg;
    return 0;
}

/* TestForget (golang/go#31420). */
TEST(forget)
{
    xs_sf *sf = new_sf();
    ASSERT(sf);
    blocker first;
    blocker_init(&first, 0, (void *)(intptr_t)1);
    caller c1;
    caller_start(&c1, sf, bg(), "key", blocking_fn, &first);
    ASSERT(th_event_wait(&first.started, 1, WAIT_MS));
    EXPECT_EQ(xs_sf_forget(sf, "key", 3), 0);

    blocker second;
    blocker_init(&second, 0, (void *)(intptr_t)2);
    async_out r2, r3;
    async_out_init(&r2);
    async_out_init(&r3);
    ASSERT_EQ(xs_sf_do_async(sf, bg(), "key", 3, blocking_fn, &second, async_done, &r2), 0);
    EXPECT(th_event_wait(&second.started, 1, WAIT_MS)); /* a fresh call started */

    th_event_signal(&first.release);
    EXPECT(th_event_wait(&c1.done, 1, WAIT_MS));
    EXPECT_EQ(c1.err, 0);
    EXPECT_EQ((intptr_t)c1.res.value, 1);

    int third_calls = 0;
    ASSERT_EQ(xs_sf_do_async(sf, bg(), "key", 3, never_called, &third_calls, async_done, &r3), 0);

    th_event_signal(&second.release);
    EXPECT(th_event_wait(&r2.done, 1, WAIT_MS));
    EXPECT(th_event_wait(&r3.done, 1, WAIT_MS));
    EXPECT_EQ(r2.err, 0);
    EXPECT_EQ((intptr_t)r2.res.value, 2);
    EXPECT_EQ(r3.err, 0);
    EXPECT_EQ((intptr_t)r3.res.value, 2); /* joined the second call */
    EXPECT(r3.res.shared);
    EXPECT_EQ(third_calls, 0);
    EXPECT_EQ(atomic_load(&first.calls), 1);
    EXPECT_EQ(atomic_load(&second.calls), 1);

    caller_join(&c1);
    async_out_destroy(&r2);
    async_out_destroy(&r3);
    blocker_destroy(&first);
    blocker_destroy(&second);
    EXPECT_EQ(xs_sf_forget(sf, "key", 3), XS_ENOENT);
    EXPECT_EQ(xs_sf_free(sf), 0);
}

/* TestDoChan */
TEST(do_async_returns_value)
{
    xs_sf *sf = new_sf();
    ASSERT(sf);
    async_out o;
    async_out_init(&o);
    ASSERT_EQ(xs_sf_do_async(sf, bg(), "key", 3, ret_bar, NULL, async_done, &o), 0);
    EXPECT(th_event_wait(&o.done, 1, WAIT_MS));
    EXPECT_EQ(o.err, 0);
    EXPECT_STREQ((const char *)o.res.value, "bar");
    EXPECT(!o.res.shared);
    EXPECT_EQ(atomic_load(&o.calls), 1);
    async_out_destroy(&o);
    EXPECT_EQ(xs_sf_free(sf), 0);
}

/* ExampleGroup: a second do_async joins the first and shares its result. */
TEST(do_async_shared_when_joined)
{
    xs_sf *sf = new_sf();
    ASSERT(sf);
    blocker b1, b2;
    blocker_init(&b1, 0, (void *)"func 1");
    blocker_init(&b2, 0, (void *)"func 2");
    async_out o1, o2;
    async_out_init(&o1);
    async_out_init(&o2);
    ASSERT_EQ(xs_sf_do_async(sf, bg(), "key", 3, blocking_fn, &b1, async_done, &o1), 0);
    ASSERT_EQ(xs_sf_do_async(sf, bg(), "key", 3, blocking_fn, &b2, async_done, &o2), 0);
    th_event_signal(&b1.release);
    th_event_signal(&b2.release);
    EXPECT(th_event_wait(&o1.done, 1, WAIT_MS));
    EXPECT(th_event_wait(&o2.done, 1, WAIT_MS));
    EXPECT(o2.res.shared);
    EXPECT(o1.res.shared);
    EXPECT_STREQ((const char *)o1.res.value, "func 1");
    EXPECT_STREQ((const char *)o2.res.value, "func 1");
    EXPECT_EQ(atomic_load(&b2.calls), 0);
    /* and a sync caller joining an async call */
    blocker b3;
    blocker_init(&b3, 0, (void *)"func 3");
    async_out o3;
    async_out_init(&o3);
    ASSERT_EQ(xs_sf_do_async(sf, bg(), "k3", 2, blocking_fn, &b3, async_done, &o3), 0);
    ASSERT(th_event_wait(&b3.started, 1, WAIT_MS));
    caller c;
    caller_start(&c, sf, bg(), "k3", never_called, NULL);
    EXPECT(wait_interest(sf, "k3", 2));
    th_event_signal(&b3.release);
    EXPECT(th_event_wait(&c.done, 1, WAIT_MS));
    EXPECT(th_event_wait(&o3.done, 1, WAIT_MS));
    EXPECT_STREQ((const char *)c.res.value, "func 3");
    EXPECT(c.res.shared);
    EXPECT(o3.res.shared);
    caller_join(&c);
    async_out_destroy(&o1);
    async_out_destroy(&o2);
    async_out_destroy(&o3);
    blocker_destroy(&b1);
    blocker_destroy(&b2);
    blocker_destroy(&b3);
    EXPECT_EQ(xs_sf_free(sf), 0);
}

/* A function that fails: every waiter gets its error. */
TEST(failing_function_every_waiter_gets_error)
{
    enum { N = 6 };
    xs_sf *sf = new_sf();
    ASSERT(sf);
    blocker b;
    blocker_init(&b, SOME_ERR, NULL);
    caller c[N];
    caller_start(&c[0], sf, bg(), "key", blocking_fn, &b);
    ASSERT(th_event_wait(&b.started, 1, WAIT_MS));
    for (int i = 1; i < N; i++)
        caller_start(&c[i], sf, bg(), "key", blocking_fn, &b);
    EXPECT(wait_interest(sf, "key", N));
    async_out o;
    async_out_init(&o);
    ASSERT_EQ(xs_sf_do_async(sf, bg(), "key", 3, blocking_fn, &b, async_done, &o), 0);
    th_event_signal(&b.release);
    for (int i = 0; i < N; i++) {
        EXPECT(th_event_wait(&c[i].done, 1, WAIT_MS));
        EXPECT_EQ(c[i].err, SOME_ERR);
        EXPECT_EQ(c[i].res.err, SOME_ERR);
        EXPECT(c[i].res.shared);
        caller_join(&c[i]);
    }
    EXPECT(th_event_wait(&o.done, 1, WAIT_MS));
    EXPECT_EQ(o.err, SOME_ERR);
    EXPECT_EQ(atomic_load(&b.calls), 1);
    async_out_destroy(&o);
    blocker_destroy(&b);
    EXPECT_EQ(xs_sf_free(sf), 0);
}

/* The value's destructor runs exactly once, after the last holder. */
static _Atomic int freed_count;
static void count_free(void *v)
{
    atomic_fetch_add(&freed_count, 1);
    free(v);
}

TEST(destructor_runs_once_after_last_holder)
{
    enum { N = 4 };
    atomic_store(&freed_count, 0);
    xs_sf *sf = new_sf();
    ASSERT(sf);
    blocker b;
    blocker_init(&b, 0, malloc(16));
    b.vfree = count_free;
    caller c[N];
    caller_start(&c[0], sf, bg(), "key", blocking_fn, &b);
    ASSERT(th_event_wait(&b.started, 1, WAIT_MS));
    for (int i = 1; i < N; i++)
        caller_start(&c[i], sf, bg(), "key", blocking_fn, &b);
    EXPECT(wait_interest(sf, "key", N));
    th_event_signal(&b.release);
    for (int i = 0; i < N; i++) {
        pthread_join(c[i].th, NULL);
        EXPECT_PTR_EQ(c[i].res.value, b.value);
    }
    xs_sf_result extra;
    EXPECT_EQ(xs_sf_result_retain(&c[0].res, &extra), 0);
    EXPECT_PTR_EQ(extra.value, b.value);
    for (int i = 0; i < N; i++) {
        xs_sf_result_release(&c[i].res);
        xs_sf_result_release(&c[i].res); /* an emptied result: no-op */
        EXPECT_EQ(atomic_load(&freed_count), 0);
        th_event_destroy(&c[i].done);
    }
    xs_sf_result_release(&extra);
    EXPECT_EQ(atomic_load(&freed_count), 1);
    /* an error result's value is freed too */
    blocker e;
    blocker_init(&e, SOME_ERR, malloc(8));
    e.vfree = count_free;
    th_event_signal(&e.release);
    xs_sf_result r;
    EXPECT_EQ(xs_sf_do(sf, bg(), "e", 1, blocking_fn, &e, &r), SOME_ERR);
    xs_sf_result_release(&r);
    EXPECT_EQ(atomic_load(&freed_count), 2);
    blocker_destroy(&b);
    blocker_destroy(&e);
    EXPECT_EQ(xs_sf_free(sf), 0);
}

/* ================= beyond Go ================= */

/*
 * A waiter whose context ends returns at once; the others keep waiting and
 * get the real result; the function's context stays live meanwhile.
 */
TEST(waiter_context_ends_returns_promptly)
{
    xs_sf *sf = new_sf();
    ASSERT(sf);
    blocker b;
    blocker_init(&b, 0, (void *)"real");
    caller leader, w1, w2, w3;
    caller_start(&leader, sf, bg(), "key", blocking_fn, &b);
    ASSERT(th_event_wait(&b.started, 1, WAIT_MS));
    xs_ctx *c1, *c3, *clk_ctx;
    xs_clock *clk;
    ASSERT_EQ(xs_ctx_with_cancel(bg(), &c1), 0);
    ASSERT_EQ(xs_clock_manual_new(0, NULL, &clk), 0);
    ASSERT_EQ(xs_ctx_with_clock(bg(), clk, &clk_ctx), 0);
    ASSERT_EQ(xs_ctx_with_timeout(clk_ctx, 5 * XS_SEC, 0, &c3), 0);
    caller_start(&w1, sf, c1, "key", never_called, NULL);
    caller_start(&w2, sf, bg(), "key", never_called, NULL);
    caller_start(&w3, sf, c3, "key", never_called, NULL);
    ASSERT(wait_interest(sf, "key", 4));

    xs_ctx_cancel(c1, 0);
    EXPECT(th_event_wait(&w1.done, 1, WAIT_MS));
    EXPECT_EQ(w1.err, XS_ECANCELED);
    EXPECT_PTR_EQ(w1.res.ref_, NULL);
    EXPECT(wait_interest(sf, "key", 3));

    xs_clock_advance(clk, 5 * XS_SEC); /* the deadline fires in this thread */
    EXPECT(th_event_wait(&w3.done, 1, WAIT_MS));
    EXPECT_EQ(w3.err, XS_EDEADLINE);
    EXPECT(wait_interest(sf, "key", 2));

    xs_ctx *fctx = atomic_load(&b.ctx);
    EXPECT(fctx && !xs_ctx_done(fctx)); /* the function's context is live */
    EXPECT_EQ(th_event_count(&w2.done), 0);
    th_event_signal(&b.release);
    EXPECT(th_event_wait(&w2.done, 1, WAIT_MS));
    EXPECT(th_event_wait(&leader.done, 1, WAIT_MS));
    EXPECT_EQ(w2.err, 0);
    EXPECT_STREQ((const char *)w2.res.value, "real");
    EXPECT(w2.res.shared);
    EXPECT_EQ(leader.err, 0);
    EXPECT(leader.res.shared);
    EXPECT_EQ(atomic_load(&b.ctx_was_done), 0);
    caller_join(&leader);
    caller_join(&w1);
    caller_join(&w2);
    caller_join(&w3);
    xs_ctx_release(c1);
    xs_ctx_release(c3);
    xs_ctx_release(clk_ctx);
    EXPECT_EQ(xs_clock_free(clk), 0);
    blocker_destroy(&b);
    EXPECT_EQ(xs_sf_free(sf), 0);
}

/* A context already done neither starts nor joins a call. */
TEST(context_done_on_entry)
{
    xs_sf *sf = new_sf();
    ASSERT(sf);
    xs_ctx *c;
    ASSERT_EQ(xs_ctx_with_cancel(bg(), &c), 0);
    xs_ctx_cancel(c, 0);
    int calls = 0;
    xs_sf_result r;
    EXPECT_EQ(xs_sf_do(sf, c, "key", 3, never_called, &calls, &r), XS_ECANCELED);
    EXPECT_PTR_EQ(r.ref_, NULL);
    async_out o;
    async_out_init(&o);
    EXPECT_EQ(xs_sf_do_async(sf, c, "key", 3, never_called, &calls, async_done, &o),
              XS_ECANCELED);
    EXPECT_EQ(calls, 0);
    EXPECT_EQ(atomic_load(&o.calls), 0);
    async_out_destroy(&o);
    xs_ctx_release(c);
    EXPECT_EQ(xs_sf_free(sf), 0);
}

/* The leader cancels while others wait: the others get the real result. */
TEST(leader_cancels_others_get_result)
{
    xs_sf *sf = new_sf();
    ASSERT(sf);
    blocker b;
    blocker_init(&b, 0, (void *)"real");
    xs_ctx *lc;
    ASSERT_EQ(xs_ctx_with_cancel(bg(), &lc), 0);
    caller leader, w;
    caller_start(&leader, sf, lc, "key", blocking_fn, &b);
    ASSERT(th_event_wait(&b.started, 1, WAIT_MS));
    caller_start(&w, sf, bg(), "key", never_called, NULL);
    ASSERT(wait_interest(sf, "key", 2));
    xs_ctx_cancel(lc, 0);
    EXPECT(wait_interest(sf, "key", 1)); /* the leader no longer counts */
    xs_ctx *fctx = atomic_load(&b.ctx);
    EXPECT(fctx && !xs_ctx_done(fctx));
    EXPECT_EQ(th_event_count(&leader.done), 0); /* the leader runs fn: still inside */
    th_event_signal(&b.release);
    EXPECT(th_event_wait(&w.done, 1, WAIT_MS));
    EXPECT(th_event_wait(&leader.done, 1, WAIT_MS));
    EXPECT_EQ(w.err, 0);
    EXPECT_STREQ((const char *)w.res.value, "real");
    EXPECT_EQ(atomic_load(&b.ctx_was_done), 0);
    /* the leader returns what fn returned */
    EXPECT_EQ(leader.err, 0);
    EXPECT_STREQ((const char *)leader.res.value, "real");
    EXPECT(leader.res.shared);
    caller_join(&leader);
    caller_join(&w);
    xs_ctx_release(lc);
    blocker_destroy(&b);
    EXPECT_EQ(xs_sf_free(sf), 0);
}

/* The function's context carries the leader's values. */
static int value_key;
static int read_value(xs_ctx *ctx, void *arg, void **value, xs_sf_value_free *vf)
{
    (void)arg, (void)vf;
    return xs_ctx_value(ctx, &value_key, value);
}

TEST(function_context_carries_leader_values)
{
    xs_sf *sf = new_sf();
    ASSERT(sf);
    xs_ctx *cc, *vc;
    ASSERT_EQ(xs_ctx_with_cancel(bg(), &cc), 0);
    ASSERT_EQ(xs_ctx_with_value(cc, &value_key, (void *)"v", &vc), 0);
    xs_sf_result r;
    EXPECT_EQ(xs_sf_do(sf, vc, "key", 3, read_value, NULL, &r), 0);
    EXPECT_STREQ((const char *)r.value, "v");
    xs_sf_result_release(&r);
    xs_ctx_release(vc);
    ASSERT_EQ(xs_ctx_with_value(bg(), &value_key, (void *)"w", &vc), 0);
    EXPECT_EQ(xs_sf_do(sf, vc, "key", 3, read_value, NULL, &r), 0);
    EXPECT_STREQ((const char *)r.value, "w");
    xs_sf_result_release(&r);
    xs_ctx_release(vc);
    xs_ctx_release(cc);
    EXPECT_EQ(xs_sf_free(sf), 0);
}

/*
 * Everybody interested goes away: the function's context ends (the function
 * observes it), and the next call with the key starts a fresh execution
 * that never sees the abandoned one's result or error (tailscale#18919).
 */
TEST(everybody_gone_function_context_ends_next_call_fresh)
{
    xs_sf *sf = new_sf();
    ASSERT(sf);
    blocker b;
    blocker_init(&b, XS_ECANCELED, (void *)"stale");
    b.wait_ctx = true;
    xs_ctx *lc, *wc;
    ASSERT_EQ(xs_ctx_with_cancel(bg(), &lc), 0);
    ASSERT_EQ(xs_ctx_with_cancel(bg(), &wc), 0);
    caller leader, w;
    caller_start(&leader, sf, lc, "key", blocking_fn, &b);
    ASSERT(th_event_wait(&b.started, 1, WAIT_MS));
    caller_start(&w, sf, wc, "key", never_called, NULL);
    ASSERT(wait_interest(sf, "key", 2));
    xs_ctx_cancel(wc, 0);
    EXPECT(th_event_wait(&w.done, 1, WAIT_MS));
    EXPECT_EQ(w.err, XS_ECANCELED);
    EXPECT(wait_interest(sf, "key", 1));
    EXPECT_EQ(th_event_count(&b.ctx_ended), 0); /* the leader is still interested */
    xs_ctx_cancel(lc, 0);
    EXPECT(th_event_wait(&b.ctx_ended, 1, WAIT_MS)); /* fn saw its context end */
    EXPECT_EQ(xs_sf_interested(sf, "key", 3), 0);    /* unregistered at once */

    /* The abandoned function is still running: a new caller starts afresh. */
    xs_sf_result r;
    EXPECT_EQ(xs_sf_do(sf, bg(), "key", 3, ret_int, (void *)(intptr_t)7, &r), 0);
    EXPECT_EQ((intptr_t)r.value, 7);
    EXPECT(!r.shared);
    xs_sf_result_release(&r);

    th_event_signal(&b.release);
    EXPECT(th_event_wait(&leader.done, 1, WAIT_MS));
    EXPECT_EQ(leader.err, XS_ECANCELED); /* fn's own answer, to the leader only */
    caller_join(&leader);
    caller_join(&w);
    /* and after the abandoned call has finished, still fresh */
    EXPECT_EQ(xs_sf_do(sf, bg(), "key", 3, ret_int, (void *)(intptr_t)8, &r), 0);
    EXPECT_EQ((intptr_t)r.value, 8);
    xs_sf_result_release(&r);
    xs_ctx_release(lc);
    xs_ctx_release(wc);
    blocker_destroy(&b);
    EXPECT_EQ(xs_sf_free(sf), 0);
}

/* The only caller is the leader: its context ending ends fn's context. */
TEST(lone_leader_cancel_ends_function_context)
{
    xs_sf *sf = new_sf();
    ASSERT(sf);
    blocker b;
    blocker_init(&b, XS_ECANCELED, NULL);
    b.wait_ctx = true;
    xs_ctx *lc;
    ASSERT_EQ(xs_ctx_with_cancel(bg(), &lc), 0);
    caller leader;
    caller_start(&leader, sf, lc, "key", blocking_fn, &b);
    ASSERT(th_event_wait(&b.started, 1, WAIT_MS));
    xs_ctx_cancel(lc, 0);
    EXPECT(th_event_wait(&b.ctx_ended, 1, WAIT_MS));
    th_event_signal(&b.release);
    EXPECT(th_event_wait(&leader.done, 1, WAIT_MS));
    EXPECT_EQ(leader.err, XS_ECANCELED);
    caller_join(&leader);
    xs_ctx_release(lc);
    blocker_destroy(&b);
    EXPECT_EQ(xs_sf_free(sf), 0);
}

/* do_async: the caller's context ending calls done at once with its error;
 * the others keep the call. */
TEST(do_async_context_ends)
{
    xs_sf *sf = new_sf();
    ASSERT(sf);
    blocker b;
    blocker_init(&b, 0, (void *)"real");
    b.wait_ctx = false;
    xs_ctx *c1, *c2;
    ASSERT_EQ(xs_ctx_with_cancel(bg(), &c1), 0);
    ASSERT_EQ(xs_ctx_with_cancel(bg(), &c2), 0);
    async_out o1, o2;
    async_out_init(&o1);
    async_out_init(&o2);
    ASSERT_EQ(xs_sf_do_async(sf, c1, "key", 3, blocking_fn, &b, async_done, &o1), 0);
    ASSERT(th_event_wait(&b.started, 1, WAIT_MS));
    ASSERT_EQ(xs_sf_do_async(sf, c2, "key", 3, never_called, NULL, async_done, &o2), 0);
    xs_ctx_release(c2); /* do_async holds its own reference */
    EXPECT(wait_interest(sf, "key", 2));
    xs_ctx_cancel(c1, 0); /* the starter goes away */
    EXPECT(th_event_wait(&o1.done, 1, WAIT_MS));
    EXPECT_EQ(o1.err, XS_ECANCELED);
    EXPECT_PTR_EQ(o1.res.ref_, NULL);
    EXPECT(wait_interest(sf, "key", 1));
    xs_ctx *fctx = atomic_load(&b.ctx);
    EXPECT(fctx && !xs_ctx_done(fctx));
    th_event_signal(&b.release);
    EXPECT(th_event_wait(&o2.done, 1, WAIT_MS));
    EXPECT_EQ(o2.err, 0);
    EXPECT_STREQ((const char *)o2.res.value, "real");
    EXPECT_EQ(atomic_load(&o1.calls), 1);
    EXPECT_EQ(atomic_load(&o2.calls), 1);
    async_out_destroy(&o1);
    async_out_destroy(&o2);
    xs_ctx_release(c1);
    EXPECT_EQ(xs_sf_free(sf), 0);
    blocker_destroy(&b);
}

/* ---- many keys from many threads ---- */

typedef struct kv {
    int key;
    _Atomic int *freed;
} kv;

static void kv_free(void *p)
{
    kv *v = p;
    atomic_fetch_add(v->freed, 1);
    free(v);
}

typedef struct many_shared {
    xs_sf *sf;
    _Atomic int runs, freed, bad;
    int calls_per_thread, keys;
    bool cancel_some;
} many_shared;

typedef struct many_arg {
    many_shared *sh;
    int key;
    uint64_t rnd;
} many_arg;

static uint64_t xorshift(uint64_t *s)
{
    uint64_t x = *s;
    x ^= x >> 12;
    x ^= x << 25;
    x ^= x >> 27;
    *s = x;
    return x * UINT64_C(2685821657736338717);
}

static int many_fn(xs_ctx *ctx, void *arg, void **value, xs_sf_value_free *vf)
{
    (void)ctx;
    many_arg *a = arg;
    atomic_fetch_add(&a->sh->runs, 1);
    uint64_t spins = a->rnd % 4000; /* a random, slowish function */
    for (uint64_t i = 0; i < spins; i++) {
        if (i % 512 == 511)
            sched_yield();
        __asm__ __volatile__("" ::: "memory"); /* keep the loop */
    }
    kv *v = malloc(sizeof *v);
    if (!v)
        return 99;
    v->key = a->key;
    v->freed = &a->sh->freed;
    *value = v;
    *vf = kv_free;
    return 0;
}

static void *many_thread(void *p)
{
    many_shared *sh = p;
    uint64_t rnd = (uint64_t)(uintptr_t)&rnd ^ (uint64_t)th_now_ns();
    for (int i = 0; i < sh->calls_per_thread; i++) {
        /* half the calls go to a few hot keys, so that calls are shared */
        uint64_t pick = xorshift(&rnd);
        int k = (int)((pick >> 1) % (uint64_t)(pick & 1 ? sh->keys : 16));
        many_arg a = {sh, k, xorshift(&rnd)};
        char key[16];
        int len = snprintf(key, sizeof key, "k%d", a.key);
        xs_ctx *ctx = bg(), *own = NULL;
        if (sh->cancel_some && a.rnd % 4 == 0) {
            /* cancelled before the call, or timing out during it */
            int r = a.rnd % 8 == 0 ? xs_ctx_with_cancel(bg(), &own)
                                   : xs_ctx_with_timeout(bg(), (int64_t)(a.rnd >> 40) % 20000, 0,
                                                         &own);
            if (r == 0) {
                ctx = own;
                if (a.rnd % 8 == 0)
                    xs_ctx_cancel(own, 0);
            }
        }
        xs_sf_result r;
        int err = xs_sf_do(sh->sf, ctx, key, (size_t)len, many_fn, &a, &r);
        if (err == 0) {
            if (!r.value || ((kv *)r.value)->key != a.key)
                atomic_fetch_add(&sh->bad, 1);
        } else if (!(own && (err == XS_ECANCELED || err == XS_EDEADLINE))) {
            atomic_fetch_add(&sh->bad, 1);
        }
        xs_sf_result_release(&r);
        if (own)
            xs_ctx_release(own);
    }
    return NULL;
}

static void run_many(int threads, int calls, int keys, bool cancel_some)
{
    many_shared sh = {.sf = new_sf(), .calls_per_thread = calls / threads, .keys = keys,
                      .cancel_some = cancel_some};
    ASSERT(sh.sf);
    atomic_init(&sh.runs, 0);
    atomic_init(&sh.freed, 0);
    atomic_init(&sh.bad, 0);
    pthread_t th[16];
    for (int i = 0; i < threads; i++)
        pthread_create(&th[i], NULL, many_thread, &sh);
    for (int i = 0; i < threads; i++)
        pthread_join(th[i], NULL);
    printf("    %d runs for %d calls\n", atomic_load(&sh.runs), threads * sh.calls_per_thread);
    EXPECT_EQ(atomic_load(&sh.bad), 0);
    /* every value made was freed exactly once: nothing leaks */
    EXPECT_EQ(atomic_load(&sh.freed), atomic_load(&sh.runs));
    EXPECT_LE(atomic_load(&sh.runs), threads * sh.calls_per_thread);
    EXPECT_EQ(xs_sf_free(sh.sf), 0);
}

/* 10^5 calls over 10^3 keys from many threads, random slow functions. */
TEST_T(many_keys_many_threads, 240)
{
    run_many(8, 100000, 1000, false);
}

/* The same with contexts cancelled before and during calls. */
TEST_T(many_keys_with_cancellation, 240)
{
    run_many(8, 40000, 100, true);
}

/* ---- bad input and allocation failure ---- */

TEST(bad_input_is_einval)
{
    xs_sf *sf = new_sf();
    ASSERT(sf);
    int calls = 0;
    xs_sf_result r;
    async_out o;
    async_out_init(&o);
    EXPECT_EQ(xs_sf_new(NULL, NULL), XS_EINVAL);
    EXPECT_EQ(xs_sf_do(NULL, bg(), "k", 1, never_called, &calls, &r), XS_EINVAL);
    EXPECT_PTR_EQ(r.ref_, NULL);
    EXPECT_EQ(xs_sf_do(sf, bg(), "k", 1, NULL, &calls, &r), XS_EINVAL);
    EXPECT_EQ(xs_sf_do(sf, bg(), NULL, 1, never_called, &calls, &r), XS_EINVAL);
    EXPECT_EQ(xs_sf_do(sf, NULL, "k", 1, never_called, &calls, &r), XS_EINVAL);
    EXPECT_EQ(xs_sf_do(sf, bg(), "k", 1, never_called, &calls, NULL), XS_EINVAL);
    EXPECT_EQ(xs_sf_do(sf, bg(), "k", (size_t)XS_SF_KEY_MAX + 1, never_called, &calls, &r),
              XS_EINVAL);
    EXPECT_EQ(xs_sf_do(sf, bg(), "k", SIZE_MAX, never_called, &calls, &r), XS_EINVAL);
    EXPECT_EQ(xs_sf_do_async(NULL, bg(), "k", 1, never_called, &calls, async_done, &o), XS_EINVAL);
    EXPECT_EQ(xs_sf_do_async(sf, bg(), "k", 1, NULL, &calls, async_done, &o), XS_EINVAL);
    EXPECT_EQ(xs_sf_do_async(sf, bg(), NULL, 1, never_called, &calls, async_done, &o), XS_EINVAL);
    EXPECT_EQ(xs_sf_do_async(sf, NULL, "k", 1, never_called, &calls, async_done, &o), XS_EINVAL);
    EXPECT_EQ(xs_sf_do_async(sf, bg(), "k", 1, never_called, &calls, NULL, &o), XS_EINVAL);
    EXPECT_EQ(xs_sf_forget(NULL, "k", 1), XS_EINVAL);
    EXPECT_EQ(xs_sf_forget(sf, NULL, 1), XS_EINVAL);
    EXPECT_EQ(xs_sf_interested(NULL, "k", 1), XS_EINVAL);
    EXPECT_EQ(xs_sf_interested(sf, NULL, 1), XS_EINVAL);
    xs_sf_result empty = {0};
    EXPECT_EQ(xs_sf_result_retain(&empty, &r), XS_EINVAL);
    EXPECT_EQ(xs_sf_result_retain(NULL, &r), XS_EINVAL);
    xs_sf_result_release(NULL);
    xs_sf_result_release(&empty);
    EXPECT_EQ(xs_sf_free(NULL), 0);
    EXPECT_EQ(calls, 0);
    EXPECT_EQ(atomic_load(&o.calls), 0);
    /* the group is unchanged and works; empty and NULL+0 keys are keys */
    EXPECT_EQ(xs_sf_do(sf, bg(), NULL, 0, ret_bar, NULL, &r), 0);
    EXPECT_STREQ((const char *)r.value, "bar");
    xs_sf_result_release(&r);
    EXPECT_EQ(xs_sf_do(sf, bg(), "", 0, ret_bar, NULL, &r), 0);
    xs_sf_result_release(&r);
    async_out_destroy(&o);
    EXPECT_EQ(xs_sf_free(sf), 0);
}

/* Every allocation of every kind of call fails in turn: XS_ENOMEM, nothing
 * leaked, nothing registered, fn never run, the group still works. */
TEST(allocation_failure_leaves_nothing_registered)
{
    xs_alloc_counter ac;
    xs_alloc_counter_init(&ac, NULL);
    const xs_allocator *prev = xs_allocator_set_default(&ac.allocator);
    xs_sf *sf = NULL;
    xs_alloc_counter_fail_at(&ac, 1, 0);
    EXPECT_EQ(xs_sf_new(NULL, &sf), XS_ENOMEM);
    EXPECT_PTR_EQ(sf, NULL);
    EXPECT_EQ(atomic_load(&ac.live_bytes), 0);
    ASSERT_EQ(xs_sf_new(NULL, &sf), 0);
    int64_t base = atomic_load(&ac.live_bytes);
    xs_ctx *cc;
    ASSERT_EQ(xs_ctx_with_cancel(bg(), &cc), 0);
    base = atomic_load(&ac.live_bytes);

    /* kinds: 0 do/background, 1 do/cancellable, 2 async/background,
     * 3 async/cancellable, 4 async joining a running call */
    for (int kind = 0; kind < 5; kind++) {
        int failures_seen = 0;
        for (int k = 1; k < 32; k++) {
            blocker hold;
            blocker_init(&hold, 0, NULL);
            caller holder;
            if (kind == 4) { /* a call to join, made before arming the failure */
                caller_start(&holder, sf, bg(), "key", blocking_fn, &hold);
                ASSERT(th_event_wait(&hold.started, 1, WAIT_MS));
            }
            int64_t live = atomic_load(&ac.live_bytes);
            int calls = 0;
            xs_sf_result r;
            async_out o;
            async_out_init(&o);
            xs_ctx *ctx = (kind == 1 || kind == 3 || kind == 4) ? cc : bg();
            xs_alloc_counter_fail_at(&ac, k, 0);
            int err;
            if (kind <= 1)
                err = xs_sf_do(sf, ctx, "key", 3, never_called, &calls, &r);
            else
                err = xs_sf_do_async(sf, ctx, "key", 3, never_called, &calls, async_done, &o);
            bool failed = atomic_load(&ac.failures) > failures_seen;
            xs_alloc_counter_fail_at(&ac, 0, 0);
            if (failed) {
                failures_seen = (int)atomic_load(&ac.failures);
                EXPECT_EQ(err, XS_ENOMEM);
                EXPECT_EQ(calls, 0);
                EXPECT_EQ(atomic_load(&o.calls), 0);
                EXPECT_EQ(xs_sf_interested(sf, "key", 3), kind == 4 ? 1 : 0);
                EXPECT_EQ(atomic_load(&ac.live_bytes), live);
            } else { /* k passed every allocation: the call succeeded */
                EXPECT_EQ(err, 0);
                if (kind <= 1) {
                    EXPECT_EQ(calls, 1);
                    xs_sf_result_release(&r);
                }
            }
            if (kind == 4) {
                th_event_signal(&hold.release);
                EXPECT(th_event_wait(&holder.done, 1, WAIT_MS));
                caller_join(&holder);
            }
            if (!failed && kind >= 2)
                EXPECT(th_event_wait(&o.done, 1, WAIT_MS));
            async_out_destroy(&o);
            blocker_destroy(&hold);
            /* the group still works */
            EXPECT_EQ(xs_sf_do(sf, bg(), "key", 3, ret_bar, NULL, &r), 0);
            xs_sf_result_release(&r);
            if (!failed)
                break;
        }
    }
    EXPECT_EQ(xs_sf_free(sf), 0);
    xs_ctx_release(cc);
    xs_allocator_set_default(prev);
    EXPECT_EQ(atomic_load(&ac.live_bytes), 0);
    (void)base;
}

/* ---- the rest of the contract ---- */

TEST(free_while_running_is_busy)
{
    xs_sf *sf = new_sf();
    ASSERT(sf);
    blocker b;
    blocker_init(&b, 0, NULL);
    caller c;
    caller_start(&c, sf, bg(), "key", blocking_fn, &b);
    ASSERT(th_event_wait(&b.started, 1, WAIT_MS));
    EXPECT_EQ(xs_sf_free(sf), XS_EBUSY);
    EXPECT_EQ(xs_sf_interested(sf, "key", 3), 1); /* unchanged */
    th_event_signal(&b.release);
    caller_join(&c);
    EXPECT_EQ(xs_sf_free(sf), 0);
    blocker_destroy(&b);
}

TEST(forget_unknown_key_is_enoent)
{
    xs_sf *sf = new_sf();
    ASSERT(sf);
    EXPECT_EQ(xs_sf_forget(sf, "nope", 4), XS_ENOENT);
    EXPECT_EQ(xs_sf_interested(sf, "nope", 4), 0);
    EXPECT_EQ(xs_sf_free(sf), 0);
}

/* Results outlive the group. */
TEST(result_outlives_group)
{
    atomic_store(&freed_count, 0);
    xs_sf *sf = new_sf();
    ASSERT(sf);
    blocker b;
    blocker_init(&b, 0, malloc(4));
    b.vfree = count_free;
    th_event_signal(&b.release);
    xs_sf_result r;
    EXPECT_EQ(xs_sf_do(sf, bg(), "k", 1, blocking_fn, &b, &r), 0);
    EXPECT_EQ(xs_sf_free(sf), 0);
    EXPECT_EQ(atomic_load(&freed_count), 0);
    xs_sf_result_release(&r);
    EXPECT_EQ(atomic_load(&freed_count), 1);
    blocker_destroy(&b);
}

/* Every key colliding (one stripe, one chain) stays correct, and many calls
 * in flight in one stripe make its table grow. */
static uint64_t const_hash(const void *key, size_t len, uint64_t seed)
{
    (void)key, (void)len, (void)seed;
    return 42;
}

static uint64_t one_stripe_hash(const void *key, size_t len, uint64_t seed)
{
    (void)seed;
    uint64_t h = 0;
    for (size_t i = 0; i < len; i++)
        h = h * 31 + ((const unsigned char *)key)[i];
    return h & 0xffff; /* top bits zero: every key in one stripe */
}

static void colliding_run(xs_sf_hash_fn hash)
{
    enum { N = 40 };
    xs_sf_options opts = {.hash = hash, .seed = 1};
    xs_sf *sf;
    ASSERT_EQ(xs_sf_new(&opts, &sf), 0);
    blocker b[N];
    async_out o[N];
    char keys[N][8];
    for (int i = 0; i < N; i++) {
        blocker_init(&b[i], 0, (void *)(intptr_t)(i + 100));
        async_out_init(&o[i]);
        snprintf(keys[i], sizeof keys[i], "c%d", i);
        ASSERT_EQ(xs_sf_do_async(sf, bg(), keys[i], strlen(keys[i]), blocking_fn, &b[i],
                                 async_done, &o[i]), 0);
    }
    for (int i = 0; i < N; i++) {
        EXPECT(th_event_wait(&b[i].started, 1, WAIT_MS));
        EXPECT_EQ(xs_sf_interested(sf, keys[i], strlen(keys[i])), 1);
    }
    /* a joiner of each finds its own key's call */
    caller c[N];
    for (int i = 0; i < N; i++)
        caller_start(&c[i], sf, bg(), keys[i], never_called, NULL);
    for (int i = 0; i < N; i++)
        EXPECT(wait_interest(sf, keys[i], 2));
    EXPECT_EQ(xs_sf_forget(sf, keys[N / 2], strlen(keys[N / 2])), 0);
    for (int i = 0; i < N; i++)
        th_event_signal(&b[i].release);
    for (int i = 0; i < N; i++) {
        EXPECT(th_event_wait(&o[i].done, 1, WAIT_MS));
        EXPECT(th_event_wait(&c[i].done, 1, WAIT_MS));
        EXPECT_EQ((intptr_t)o[i].res.value, i + 100);
        EXPECT_EQ((intptr_t)c[i].res.value, i + 100);
        caller_join(&c[i]);
        async_out_destroy(&o[i]);
        blocker_destroy(&b[i]);
    }
    EXPECT_EQ(xs_sf_free(sf), 0);
}

TEST(colliding_hashes_stay_correct)
{
    colliding_run(const_hash);
    colliding_run(one_stripe_hash);
}

/*
 * Cancellation racing completion: a waiter's context is cancelled just as
 * the function returns.  Each waiter gets either the real result or its
 * context's error, never anything else; the value is freed exactly once.
 */
typedef struct race {
    xs_sf *sf;
    xs_ctx *ctx;
    _Atomic int go;
    int err;
    xs_sf_result res;
} race;

static int race_fn(xs_ctx *ctx, void *arg, void **value, xs_sf_value_free *vf)
{
    (void)ctx;
    race *r = arg;
    /* spin, so that completion follows the go signal within nanoseconds */
    int64_t end = th_now_ns() + (int64_t)WAIT_MS * 1000000;
    while (!atomic_load(&r->go) && th_now_ns() < end)
        sched_yield(); /* not a sleep: back within a time slice */
    kv *v = malloc(sizeof *v);
    v->key = 5;
    v->freed = &freed_count;
    *value = v;
    *vf = kv_free;
    return 0;
}

static void *race_waiter(void *p)
{
    race *r = p;
    r->err = xs_sf_do(r->sf, r->ctx, "race", 4, never_called, NULL, &r->res);
    return NULL;
}

static void *race_leader(void *p)
{
    race *r = p;
    r->err = xs_sf_do(r->sf, r->ctx, "race", 4, race_fn, r, &r->res);
    return NULL;
}

TEST_T(cancel_races_completion, 120)
{
    xs_sf *sf = new_sf();
    ASSERT(sf);
    int outcomes[2] = {0, 0};
    for (int it = 0; it < 400; it++) {
        atomic_store(&freed_count, 0);
        race lead = {.sf = sf}, w = {.sf = sf};
        atomic_init(&lead.go, 0);
        ASSERT_EQ(xs_ctx_with_cancel(bg(), &lead.ctx), 0);
        ASSERT_EQ(xs_ctx_with_cancel(bg(), &w.ctx), 0);
        pthread_t tl, tw;
        pthread_create(&tl, NULL, race_leader, &lead);
        ASSERT(wait_interest(sf, "race", 1));
        pthread_create(&tw, NULL, race_waiter, &w);
        ASSERT(wait_interest(sf, "race", 2));
        /* all three at once, in varying order: completion, the waiter's
         * cancel, the leader's */
        if (it % 4 == 0)
            xs_ctx_cancel(w.ctx, 0);
        atomic_store(&lead.go, 1);
        if (it % 4 == 1 || it % 4 == 2)
            xs_ctx_cancel(w.ctx, 0);
        if (it % 2)
            xs_ctx_cancel(lead.ctx, 0);
        if (it % 4 == 3) {
            sched_yield();
            xs_ctx_cancel(w.ctx, 0);
        }
        pthread_join(tl, NULL);
        pthread_join(tw, NULL);
        EXPECT_EQ(lead.err, 0); /* the leader always gets fn's result */
        EXPECT(w.err == 0 || w.err == XS_ECANCELED);
        outcomes[w.err == 0]++;
        if (w.err == 0)
            EXPECT_EQ(((kv *)w.res.value)->key, 5);
        else
            EXPECT_PTR_EQ(w.res.ref_, NULL);
        EXPECT_EQ(atomic_load(&freed_count), 0);
        xs_sf_result_release(&w.res);
        xs_sf_result_release(&lead.res);
        EXPECT_EQ(atomic_load(&freed_count), 1);
        xs_ctx_release(lead.ctx);
        xs_ctx_release(w.ctx);
        if (atomic_load(&th_failed_now))
            break;
    }
    printf("    waiter cancelled %d times, got the result %d times\n", outcomes[0], outcomes[1]);
    EXPECT_EQ(xs_sf_free(sf), 0);
}

/*
 * The same race for do_async: the callback runs exactly once, with the
 * result or the context's error; the value is freed exactly once; and the
 * group can be freed as soon as every callback has run (it waits out
 * after-functions that are still on their way).
 */
static int spin_fn(xs_ctx *ctx, void *arg, void **value, xs_sf_value_free *vf)
{
    (void)ctx;
    _Atomic int *go = arg;
    int64_t end = th_now_ns() + (int64_t)WAIT_MS * 1000000;
    while (!atomic_load(go) && th_now_ns() < end)
        sched_yield();
    kv *v = malloc(sizeof *v);
    v->key = 9;
    v->freed = &freed_count;
    *value = v;
    *vf = kv_free;
    return 0;
}

TEST_T(async_cancel_races_completion, 120)
{
    int outcomes[2] = {0, 0};
    for (int it = 0; it < 300; it++) {
        atomic_store(&freed_count, 0);
        xs_sf *sf = new_sf();
        ASSERT(sf);
        _Atomic int go = 0;
        xs_ctx *c1, *c2;
        ASSERT_EQ(xs_ctx_with_cancel(bg(), &c1), 0);
        ASSERT_EQ(xs_ctx_with_cancel(bg(), &c2), 0);
        async_out o1, o2;
        async_out_init(&o1);
        async_out_init(&o2);
        ASSERT_EQ(xs_sf_do_async(sf, c1, "k", 1, spin_fn, &go, async_done, &o1), 0);
        ASSERT_EQ(xs_sf_do_async(sf, c2, "k", 1, spin_fn, &go, async_done, &o2), 0);
        if (it % 3 == 0)
            xs_ctx_cancel(c1, 0);
        atomic_store(&go, 1);
        if (it % 3 == 1)
            xs_ctx_cancel(c1, 0);
        if (it % 2)
            xs_ctx_cancel(c2, 0);
        EXPECT(th_event_wait(&o1.done, 1, WAIT_MS));
        EXPECT(th_event_wait(&o2.done, 1, WAIT_MS));
        EXPECT_EQ(xs_sf_free(sf), 0); /* every callback has run */
        async_out *os[2] = {&o1, &o2};
        for (int i = 0; i < 2; i++) {
            EXPECT_EQ(atomic_load(&os[i]->calls), 1);
            EXPECT(os[i]->err == 0 || os[i]->err == XS_ECANCELED);
            if (os[i]->err == 0)
                EXPECT_EQ(((kv *)os[i]->res.value)->key, 9);
            else
                EXPECT_PTR_EQ(os[i]->res.ref_, NULL);
            outcomes[os[i]->err == 0]++;
        }
        async_out_destroy(&o1);
        async_out_destroy(&o2);
        /* the runner is done (free waited for it) and both released: the
         * value was freed exactly once */
        EXPECT_EQ(atomic_load(&freed_count), 1);
        xs_ctx_release(c1);
        xs_ctx_release(c2);
        if (atomic_load(&th_failed_now))
            break;
    }
    printf("    callbacks cancelled %d times, got the result %d times\n", outcomes[0], outcomes[1]);
}

/* Freeing the group while a call that everybody left is still running:
 * not busy; it waits for that call, so nothing of the group runs after. */
static th_event freed_event;
static void event_free(void *v)
{
    (void)v;
    th_event_signal(&freed_event);
}

typedef struct freer {
    xs_sf *sf;
    int ret;
    long destroyed_before; /* destructor runs seen when free returned */
    th_event done;
} freer;

static void *freer_main(void *p)
{
    freer *f = p;
    f->ret = xs_sf_free(f->sf);
    f->destroyed_before = th_event_count(&freed_event);
    th_event_signal(&f->done);
    return NULL;
}

TEST(free_waits_for_abandoned_call)
{
    th_event_init(&freed_event);
    xs_sf *sf = new_sf();
    ASSERT(sf);
    blocker b;
    blocker_init(&b, 0, (void *)"late");
    b.vfree = event_free;
    xs_ctx *c;
    ASSERT_EQ(xs_ctx_with_cancel(bg(), &c), 0);
    async_out o;
    async_out_init(&o);
    ASSERT_EQ(xs_sf_do_async(sf, c, "key", 3, blocking_fn, &b, async_done, &o), 0);
    ASSERT(th_event_wait(&b.started, 1, WAIT_MS));
    xs_ctx_cancel(c, 0);
    EXPECT(th_event_wait(&o.done, 1, WAIT_MS));
    EXPECT_EQ(o.err, XS_ECANCELED);
    EXPECT_EQ(xs_sf_interested(sf, "key", 3), 0);
    freer f = {.sf = sf, .ret = -1};
    th_event_init(&f.done);
    pthread_t th;
    pthread_create(&th, NULL, freer_main, &f);
    th_event_signal(&b.release); /* the abandoned call returns ... */
    EXPECT(th_event_wait(&f.done, 1, WAIT_MS)); /* ... and then free does */
    pthread_join(th, NULL);
    EXPECT_EQ(f.ret, 0);
    EXPECT_EQ(f.destroyed_before, 1); /* the call was over before free returned */
    th_event_destroy(&f.done);
    async_out_destroy(&o);
    xs_ctx_release(c);
    blocker_destroy(&b);
    th_event_destroy(&freed_event);
}

/* xs_sf_free from a done callback would wait for itself: XS_EBUSY. */
typedef struct free_in_cb {
    xs_sf *sf;
    int ret;
    xs_sf_result res;
    th_event done;
} free_in_cb;

static void done_frees(void *arg, int err, xs_sf_result *res)
{
    (void)err;
    free_in_cb *f = arg;
    f->ret = xs_sf_free(f->sf);
    f->res = *res;
    th_event_signal(&f->done);
}

TEST(free_from_done_callback_is_busy)
{
    xs_sf *sf = new_sf();
    ASSERT(sf);
    free_in_cb f = {.sf = sf, .ret = -1};
    th_event_init(&f.done);
    ASSERT_EQ(xs_sf_do_async(sf, bg(), "key", 3, ret_bar, NULL, done_frees, &f), 0);
    EXPECT(th_event_wait(&f.done, 1, WAIT_MS));
    EXPECT_EQ(f.ret, XS_EBUSY);
    EXPECT_STREQ((const char *)f.res.value, "bar");
    xs_sf_result_release(&f.res);
    EXPECT_EQ(xs_sf_free(sf), 0); /* waits for the runner to be done */
    th_event_destroy(&f.done);
}

/* The call's own context ends when the function returns, even if the
 * function kept a reference to it. */
static xs_ctx *kept_ctx;

static int keep_ctx_fn(xs_ctx *ctx, void *arg, void **value, xs_sf_value_free *value_free)
{
    (void)arg;
    (void)value;
    (void)value_free;
    kept_ctx = xs_ctx_retain(ctx);
    return 0;
}

TEST(function_context_ends_when_function_returns_even_if_kept)
{
    xs_sf *sf;
    xs_ctx *owner;
    ASSERT_EQ(xs_sf_new(NULL, &sf), 0);
    ASSERT_EQ(xs_ctx_with_cancel(xs_ctx_background(), &owner), 0);
    xs_sf_result res;
    EXPECT_EQ(xs_sf_do(sf, owner, "k", 1, keep_ctx_fn, NULL, &res), 0);
    xs_sf_result_release(&res);
    ASSERT(kept_ctx != NULL);
    EXPECT(xs_ctx_done(kept_ctx));
    xs_ctx_release(kept_ctx);
    xs_ctx_release(owner);
    EXPECT_EQ(xs_sf_free(sf), 0);
}
