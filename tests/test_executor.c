/*
 * Tests for the executor module: the seed's Sequential, Parallel,
 * ControlFlow, Debounce and Metrics scenario by scenario, the fail-open
 * parallel, the pool, rate limiting, composition, ownership, bad input and
 * allocation failure.  Actions that must block wait on a gate context (a
 * library wait, so the pool lends their thread's slot); tests wait for
 * observable events (th_event, counters, singleflight interest polled with
 * a bound), never for a fixed time.
 */
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>

#include <xsync/xsync.h>

#include "harness.h"

#define WAIT_MS 10000 /* bound on any single wait for an event */
#define E1 101
#define E2 102
#define E3 103
#define E7 107

static xs_ctx *bg(void)
{
    return xs_ctx_background();
}

/* Polls a condition until it holds (bounded by WAIT_MS); its final value. */
#define WAIT_UNTIL(cond)                                                                   \
    __extension__({                                                                        \
        int64_t end_ = th_now_ns() + (int64_t)WAIT_MS * 1000000;                           \
        while (!(cond) && th_now_ns() < end_)                                              \
            sched_yield();                                                                 \
        (bool)(cond);                                                                      \
    })

static xs_ctx *new_gate(void)
{
    xs_ctx *c = NULL;
    xs_ctx_with_cancel(bg(), &c);
    return c;
}

/* ---- a recording stat source (test-local) ---- */

typedef struct rstat {
    xs_stat_counter c;
    xs_stat_timer t;
    char name[512];
    bool timer;
    _Atomic int64_t value; /* counter: sum of deltas */
    _Atomic int64_t count; /* timer: records */
    _Atomic int64_t sum;   /* timer: ns recorded */
} rstat;

typedef struct rsource {
    xs_stat_source src;
    pthread_mutex_t mu;
    rstat *stats[256];
    int n;
    _Atomic int counter_calls, timer_calls;
    th_event *gate; /* counter() waits for it to reach gate_n, if set */
    long gate_n;
} rsource;

static void rs_add(xs_stat_counter *c, int64_t d)
{
    rstat *s = (rstat *)(void *)((char *)c - offsetof(rstat, c));
    atomic_fetch_add_explicit(&s->value, d, memory_order_relaxed);
}

static void rs_record(xs_stat_timer *t, int64_t ns)
{
    rstat *s = (rstat *)(void *)((char *)t - offsetof(rstat, t));
    atomic_fetch_add_explicit(&s->count, 1, memory_order_relaxed);
    atomic_fetch_add_explicit(&s->sum, ns, memory_order_relaxed);
}

/* The stat named `name` of that kind, made if missing; NULL when full. */
static rstat *rs_find(rsource *rs, const char *name, bool timer, bool make)
{
    rstat *s = NULL;
    pthread_mutex_lock(&rs->mu);
    for (int i = 0; i < rs->n && !s; i++)
        if (rs->stats[i]->timer == timer && strcmp(rs->stats[i]->name, name) == 0)
            s = rs->stats[i];
    if (!s && make && rs->n < 256 && strlen(name) < sizeof s->name) {
        s = calloc(1, sizeof *s);
        s->c.add = rs_add;
        s->t.record = rs_record;
        s->timer = timer;
        strcpy(s->name, name);
        rs->stats[rs->n++] = s;
    }
    pthread_mutex_unlock(&rs->mu);
    return s;
}

static int rs_counter(xs_stat_source *src, const char *name, xs_stat_counter **out)
{
    rsource *rs = (rsource *)(void *)src;
    atomic_fetch_add(&rs->counter_calls, 1);
    if (rs->gate)
        th_event_wait(rs->gate, rs->gate_n, WAIT_MS);
    if (strstr(name, "refused"))
        return XS_EINVAL;
    rstat *s = rs_find(rs, name, false, true);
    if (!s)
        return XS_ENOMEM;
    *out = &s->c;
    return 0;
}

static int rs_timer(xs_stat_source *src, const char *name, xs_stat_timer **out)
{
    rsource *rs = (rsource *)(void *)src;
    atomic_fetch_add(&rs->timer_calls, 1);
    rstat *s = rs_find(rs, name, true, true);
    if (!s)
        return XS_ENOMEM;
    *out = &s->t;
    return 0;
}

static const xs_stat_source_ops rs_ops = {rs_counter, rs_timer, NULL};

static void rs_init(rsource *rs)
{
    memset(rs, 0, sizeof *rs);
    rs->src.ops = &rs_ops;
    pthread_mutex_init(&rs->mu, NULL);
}

static void rs_destroy(rsource *rs)
{
    for (int i = 0; i < rs->n; i++)
        free(rs->stats[i]);
    pthread_mutex_destroy(&rs->mu);
}

/* A counter's value; -1 when it was never made. */
static int64_t rs_value(rsource *rs, const char *name)
{
    rstat *s = rs_find(rs, name, false, false);
    return s ? atomic_load(&s->value) : -1;
}

/* A timer's record count; -1 when it was never made. */
static int64_t rs_count(rsource *rs, const char *name)
{
    rstat *s = rs_find(rs, name, true, false);
    return s ? atomic_load(&s->count) : -1;
}

/* ---- actions ---- */

/* Appends its index to a shared string (sequential order checks). */
typedef struct trace {
    char buf[64];
    int len;
} trace;

typedef struct step {
    trace *t;
    int idx;
    int ret;
} step;

static int act_append(xs_ctx *ctx, void *arg)
{
    (void)ctx;
    step *s = arg;
    s->t->buf[s->t->len++] = (char)('0' + s->idx);
    s->t->buf[s->t->len] = 0;
    return s->ret;
}

static _Atomic int noop_runs;

static int act_noop(xs_ctx *ctx, void *arg)
{
    (void)ctx;
    (void)arg;
    atomic_fetch_add(&noop_runs, 1);
    return 0;
}

static int act_ret(xs_ctx *ctx, void *arg)
{
    (void)ctx;
    return (int)(intptr_t)arg;
}

static int act_count(xs_ctx *ctx, void *arg)
{
    (void)ctx;
    atomic_fetch_add((_Atomic int *)arg, 1);
    return 0;
}

/*
 * A probe for actions that block: each counts its run, signals `started`,
 * then waits for the gate (or its own context) and returns `ret`.
 */
typedef struct probe {
    th_event started;
    xs_ctx *gate;
    _Atomic int runs;
    _Atomic int saw_end;      /* actions whose own context ended while they waited */
    _Atomic int saw_canceled; /* ... with XS_ECANCELED */
} probe;

static void probe_init(probe *p)
{
    th_event_init(&p->started);
    p->gate = new_gate();
    atomic_init(&p->runs, 0);
    atomic_init(&p->saw_end, 0);
    atomic_init(&p->saw_canceled, 0);
}

static void probe_open(probe *p)
{
    xs_ctx_cancel(p->gate, 0);
}

static void probe_destroy(probe *p)
{
    xs_ctx_release(p->gate);
    th_event_destroy(&p->started);
}

typedef struct pact {
    probe *p;
    int ret;
} pact;

/* Blocks until the gate opens, then returns ret. */
static int act_gated(xs_ctx *ctx, void *arg)
{
    (void)ctx;
    pact *a = arg;
    atomic_fetch_add(&a->p->runs, 1);
    th_event_signal(&a->p->started);
    xs_ctx_wait(a->p->gate, XS_FOREVER);
    return a->ret;
}

/* Blocks until its own context ends, notes it, returns the context's error. */
static int act_until_ctx_end(xs_ctx *ctx, void *arg)
{
    pact *a = arg;
    atomic_fetch_add(&a->p->runs, 1);
    th_event_signal(&a->p->started);
    xs_ctx_wait(ctx, XS_FOREVER);
    atomic_fetch_add(&a->p->saw_end, 1);
    if (xs_ctx_err(ctx) == XS_ECANCELED)
        atomic_fetch_add(&a->p->saw_canceled, 1);
    return xs_ctx_err(ctx);
}

/* Waits for the gate (the test opens it once the others have started),
 * then fails with ret. */
static int act_gated_fail(xs_ctx *ctx, void *arg)
{
    (void)ctx;
    pact *a = arg;
    xs_ctx_wait(a->p->gate, XS_FOREVER);
    return a->ret;
}

/* ---- running in another thread ---- */

typedef struct runner {
    pthread_t th;
    xs_executor *ex;
    xs_ctx *ctx;
    const xs_action *acts;
    size_t n;
    int *errs;
    int result;
    th_event done;
} runner;

static void *runner_main(void *arg)
{
    runner *r = arg;
    r->result = xs_exec_run(r->ex, r->ctx, r->acts, r->n, r->errs);
    th_event_signal(&r->done);
    return NULL;
}

static void runner_start(runner *r, xs_executor *ex, xs_ctx *ctx, const xs_action *acts, size_t n,
                         int *errs)
{
    r->ex = ex;
    r->ctx = ctx;
    r->acts = acts;
    r->n = n;
    r->errs = errs;
    r->result = -1;
    th_event_init(&r->done);
    pthread_create(&r->th, NULL, runner_main, r);
}

static int runner_join(runner *r)
{
    EXPECT(th_event_wait(&r->done, 1, WAIT_MS));
    pthread_join(r->th, NULL);
    th_event_destroy(&r->done);
    return r->result;
}

static xs_executor *new_seq(void)
{
    xs_executor *ex = NULL;
    xs_exec_sequential(NULL, &ex);
    return ex;
}

static xs_executor *new_par(void)
{
    xs_executor *ex = NULL;
    xs_exec_parallel(NULL, &ex);
    return ex;
}

static xs_executor *new_pall(void)
{
    xs_executor *ex = NULL;
    xs_exec_parallel_all(NULL, &ex);
    return ex;
}

static xs_executor *new_pool(int n)
{
    xs_executor *ex = NULL;
    xs_exec_pool(n, NULL, &ex);
    return ex;
}

/* ---- sequential ---- */

static void steps_make(trace *t, step *s, xs_action *a, int n, int fail_at)
{
    t->len = 0;
    t->buf[0] = 0;
    for (int i = 0; i < n; i++) {
        s[i] = (step){t, i, i == fail_at ? E1 : 0};
        a[i] = (xs_action){act_append, &s[i], NULL};
    }
}

TEST(sequential_runs_actions_in_order)
{
    xs_executor *ex = new_seq();
    ASSERT(ex);
    trace t;
    step s[10];
    xs_action a[10];
    int errs[10];
    steps_make(&t, s, a, 10, -1);
    EXPECT_EQ(xs_exec_run(ex, bg(), a, 10, errs), 0);
    EXPECT_STREQ(t.buf, "0123456789");
    for (int i = 0; i < 10; i++)
        EXPECT_EQ(errs[i], 0);
    EXPECT_EQ(xs_exec_free(ex), 0);
}

TEST(sequential_stops_at_the_failing_action)
{
    xs_executor *ex = new_seq();
    ASSERT(ex);
    trace t;
    step s[10];
    xs_action a[10];
    int errs[10];
    steps_make(&t, s, a, 10, 4);
    EXPECT_EQ(xs_exec_run(ex, bg(), a, 10, errs), E1);
    EXPECT_STREQ(t.buf, "01234");
    for (int i = 0; i < 4; i++)
        EXPECT_EQ(errs[i], 0);
    EXPECT_EQ(errs[4], E1);
    for (int i = 5; i < 10; i++)
        EXPECT_EQ(errs[i], XS_ECANCELED);
    EXPECT_EQ(xs_exec_free(ex), 0);
}

TEST(sequential_done_context_runs_nothing_and_returns_its_error)
{
    xs_executor *ex = new_seq();
    ASSERT(ex);
    trace t;
    step s[10];
    xs_action a[10];
    int errs[10];
    xs_ctx *c;
    ASSERT_EQ(xs_ctx_with_cancel(bg(), &c), 0);
    xs_ctx_cancel(c, E2);
    steps_make(&t, s, a, 10, -1);
    EXPECT_EQ(xs_exec_run(ex, c, a, 10, errs), XS_ECANCELED);
    EXPECT_EQ(t.len, 0);
    for (int i = 0; i < 10; i++)
        EXPECT_EQ(errs[i], XS_ECANCELED);
    xs_ctx_release(c);
    ASSERT_EQ(xs_ctx_with_timeout(bg(), 0, 0, &c), 0); /* born past its deadline */
    EXPECT_EQ(xs_exec_run(ex, c, a, 10, NULL), XS_EDEADLINE);
    EXPECT_EQ(t.len, 0);
    xs_ctx_release(c);
    EXPECT_EQ(xs_exec_free(ex), 0);
}

/* The context is checked before each action: one that cancels it stops the
 * rest even though it returned 0. */
static int act_cancel_arg(xs_ctx *ctx, void *arg)
{
    (void)ctx;
    xs_ctx_cancel(arg, 0);
    return 0;
}

TEST(sequential_checks_the_context_before_each_action)
{
    xs_executor *ex = new_seq();
    ASSERT(ex);
    xs_ctx *c;
    ASSERT_EQ(xs_ctx_with_cancel(bg(), &c), 0);
    _Atomic int runs = 0;
    xs_action a[3] = {{act_count, &runs, NULL}, {act_cancel_arg, c, NULL}, {act_count, &runs, NULL}};
    int errs[3];
    EXPECT_EQ(xs_exec_run(ex, c, a, 3, errs), XS_ECANCELED);
    EXPECT_EQ(atomic_load(&runs), 1);
    EXPECT_EQ(errs[0], 0);
    EXPECT_EQ(errs[1], 0);
    EXPECT_EQ(errs[2], XS_ECANCELED);
    xs_ctx_release(c);
    EXPECT_EQ(xs_exec_free(ex), 0);
}

/* ---- parallel ---- */

TEST(parallel_runs_every_action)
{
    xs_executor *ex = new_par();
    ASSERT(ex);
    _Atomic int runs = 0;
    xs_action a[10];
    int errs[10];
    for (int i = 0; i < 10; i++)
        a[i] = (xs_action){act_count, &runs, NULL};
    EXPECT_EQ(xs_exec_run(ex, bg(), a, 10, errs), 0);
    EXPECT_EQ(atomic_load(&runs), 10);
    for (int i = 0; i < 10; i++)
        EXPECT_EQ(errs[i], 0);
    atomic_store(&runs, 0);
    EXPECT_EQ(xs_exec_run(ex, bg(), a, 10, NULL), 0); /* without errs */
    EXPECT_EQ(atomic_load(&runs), 10);
    EXPECT_EQ(xs_exec_free(ex), 0);
}

/* 9 actions wait for their context; the 10th fails once they have all
 * started: the run returns its error and the 9 see their context end. */
static void fail_cancels_the_others(xs_executor *ex)
{
    /* (a pool needs 9 threads beside its caller for this) */
    probe p;
    probe_init(&p);
    pact blockers = {&p, 0}, failer = {&p, E1};
    xs_action a[10];
    int errs[10];
    for (int i = 0; i < 9; i++)
        a[i] = (xs_action){act_until_ctx_end, &blockers, NULL};
    a[9] = (xs_action){act_gated_fail, &failer, NULL};
    runner r;
    runner_start(&r, ex, bg(), a, 10, errs);
    EXPECT(th_event_wait(&p.started, 9, WAIT_MS));
    probe_open(&p);
    EXPECT_EQ(runner_join(&r), E1);
    EXPECT_EQ(atomic_load(&p.runs), 9);
    EXPECT_EQ(atomic_load(&p.saw_end), 9);
    EXPECT_EQ(atomic_load(&p.saw_canceled), 9);
    for (int i = 0; i < 9; i++)
        EXPECT_EQ(errs[i], XS_ECANCELED);
    EXPECT_EQ(errs[9], E1);
    probe_destroy(&p);
}

TEST(parallel_error_is_returned_and_cancels_the_others)
{
    xs_executor *ex = new_par();
    ASSERT(ex);
    fail_cancels_the_others(ex);
    EXPECT_EQ(xs_exec_free(ex), 0);
}

static void done_ctx_runs_nothing(xs_executor *ex)
{
    _Atomic int runs = 0;
    xs_action a[10];
    int errs[10];
    for (int i = 0; i < 10; i++)
        a[i] = (xs_action){act_count, &runs, NULL};
    xs_ctx *c;
    ASSERT_EQ(xs_ctx_with_cancel(bg(), &c), 0);
    xs_ctx_cancel(c, E2);
    EXPECT_EQ(xs_exec_run(ex, c, a, 10, errs), XS_ECANCELED);
    for (int i = 0; i < 10; i++)
        EXPECT_EQ(errs[i], XS_ECANCELED);
    xs_ctx_release(c);
    ASSERT_EQ(xs_ctx_with_timeout(bg(), 0, 0, &c), 0);
    EXPECT_EQ(xs_exec_run(ex, c, a, 10, NULL), XS_EDEADLINE);
    xs_ctx_release(c);
    EXPECT_EQ(atomic_load(&runs), 0);
}

TEST(parallel_done_context_runs_nothing)
{
    xs_executor *ex = new_par();
    ASSERT(ex);
    done_ctx_runs_nothing(ex);
    EXPECT_EQ(xs_exec_free(ex), 0);
}

/* The caller's context ending mid-run is seen by running actions and the
 * run returns its error (the actions return it). */
TEST(parallel_caller_cancel_reaches_the_actions)
{
    xs_executor *ex = new_par();
    ASSERT(ex);
    probe p;
    probe_init(&p);
    pact pa = {&p, 0};
    xs_action a[4];
    for (int i = 0; i < 4; i++)
        a[i] = (xs_action){act_until_ctx_end, &pa, NULL};
    xs_ctx *c;
    ASSERT_EQ(xs_ctx_with_cancel(bg(), &c), 0);
    runner r;
    runner_start(&r, ex, c, a, 4, NULL);
    EXPECT(th_event_wait(&p.started, 4, WAIT_MS));
    xs_ctx_cancel(c, 0);
    EXPECT_EQ(runner_join(&r), XS_ECANCELED);
    EXPECT_EQ(atomic_load(&p.saw_end), 4);
    xs_ctx_release(c);
    probe_destroy(&p);
    EXPECT_EQ(xs_exec_free(ex), 0);
}

/* ---- parallel_all ---- */

/* Fails with ret; the second failure opens the gate the others wait on. */
typedef struct fo_arg {
    probe *p;
    _Atomic int *failed;
    _Atomic int *saw_done; /* non-failing actions that found their context done */
    int ret;
} fo_arg;

static int act_fail_open(xs_ctx *ctx, void *arg)
{
    fo_arg *a = arg;
    atomic_fetch_add(&a->p->runs, 1);
    if (a->ret) {
        if (atomic_fetch_add(a->failed, 1) == 1)
            probe_open(a->p);
        return a->ret;
    }
    xs_ctx_wait(a->p->gate, XS_FOREVER); /* both failures have happened */
    if (xs_ctx_done(ctx))
        atomic_fetch_add(a->saw_done, 1);
    return 0;
}

TEST(parallel_all_reports_failures_where_they_happened_and_runs_everything)
{
    xs_executor *ex = new_pall();
    ASSERT(ex);
    probe p;
    probe_init(&p);
    _Atomic int failed = 0, saw_done = 0;
    fo_arg args[10];
    xs_action a[10];
    int errs[10];
    for (int i = 0; i < 10; i++) {
        args[i] = (fo_arg){&p, &failed, &saw_done, i == 3 ? E3 : i == 7 ? E7 : 0};
        a[i] = (xs_action){act_fail_open, &args[i], NULL};
    }
    EXPECT_EQ(xs_exec_run(ex, bg(), a, 10, errs), E3); /* the lowest index */
    EXPECT_EQ(atomic_load(&p.runs), 10);
    EXPECT_EQ(atomic_load(&saw_done), 0); /* failures cancel nothing */
    for (int i = 0; i < 10; i++)
        EXPECT_EQ(errs[i], i == 3 ? E3 : i == 7 ? E7 : 0);
    probe_destroy(&p);
    EXPECT_EQ(xs_exec_free(ex), 0);
}

TEST(parallel_all_done_context_runs_nothing)
{
    xs_executor *ex = new_pall();
    ASSERT(ex);
    done_ctx_runs_nothing(ex);
    EXPECT_EQ(xs_exec_free(ex), 0);
}

/* ---- the pool ---- */

TEST(pool_runs_every_action)
{
    xs_executor *ex = new_pool(2);
    ASSERT(ex);
    _Atomic int runs = 0;
    xs_action a[100];
    int errs[100];
    for (int i = 0; i < 100; i++)
        a[i] = (xs_action){act_count, &runs, NULL};
    for (int round = 0; round < 50; round++)
        EXPECT_EQ(xs_exec_run(ex, bg(), a, 100, errs), 0);
    EXPECT_EQ(atomic_load(&runs), 5000);
    for (int i = 0; i < 100; i++)
        EXPECT_EQ(errs[i], 0);
    EXPECT_EQ(xs_exec_run(ex, bg(), a, 1, NULL), 0);
    EXPECT_EQ(xs_exec_free(ex), 0);
}

TEST(pool_zero_actions_returns_zero)
{
    xs_executor *ex = new_pool(2);
    ASSERT(ex);
    EXPECT_EQ(xs_exec_run(ex, bg(), NULL, 0, NULL), 0);
    xs_action a = {act_noop, NULL, NULL};
    EXPECT_EQ(xs_exec_run(ex, bg(), &a, 0, NULL), 0);
    EXPECT_EQ(xs_exec_free(ex), 0);
}

TEST(pool_returns_an_action_error)
{
    xs_executor *ex = new_pool(2);
    ASSERT(ex);
    xs_action a[10];
    int errs[10];
    for (int i = 0; i < 10; i++)
        a[i] = (xs_action){act_ret, (void *)(intptr_t)(i == 5 ? E1 : 0), NULL};
    EXPECT_EQ(xs_exec_run(ex, bg(), a, 10, errs), E1);
    EXPECT_EQ(errs[5], E1);
    for (int i = 0; i < 10; i++) /* each ran and succeeded, or was skipped */
        EXPECT(errs[i] == 0 || errs[i] == XS_ECANCELED || i == 5);
    EXPECT_EQ(xs_exec_free(ex), 0);
}

TEST(pool_error_cancels_the_others)
{
    xs_executor *ex = new_pool(9);
    ASSERT(ex);
    fail_cancels_the_others(ex);
    EXPECT_EQ(xs_exec_free(ex), 0);
}

/* The pool's only thread and a caller are blocked in one run; another run
 * fails at its first action, run by its caller, which then skips the rest
 * (nobody else could have taken them). */
TEST(pool_actions_not_taken_before_a_failure_are_skipped)
{
    xs_executor *ex = new_pool(1);
    ASSERT(ex);
    probe p;
    probe_init(&p);
    pact pa = {&p, 0};
    xs_action hold[2] = {{act_gated, &pa, NULL}, {act_gated, &pa, NULL}};
    runner r;
    runner_start(&r, ex, bg(), hold, 2, NULL);
    EXPECT(th_event_wait(&p.started, 2, WAIT_MS));
    _Atomic int runs = 0;
    xs_action a[6];
    int errs[6];
    a[0] = (xs_action){act_ret, (void *)(intptr_t)E1, NULL};
    for (int i = 1; i < 6; i++)
        a[i] = (xs_action){act_count, &runs, NULL};
    EXPECT_EQ(xs_exec_run(ex, bg(), a, 6, errs), E1);
    EXPECT_EQ(atomic_load(&runs), 0);
    EXPECT_EQ(errs[0], E1);
    for (int i = 1; i < 6; i++)
        EXPECT_EQ(errs[i], XS_ECANCELED);
    probe_open(&p);
    EXPECT_EQ(runner_join(&r), 0);
    probe_destroy(&p);
    EXPECT_EQ(xs_exec_free(ex), 0);
}

TEST(pool_done_context_runs_nothing)
{
    xs_executor *ex = new_pool(2);
    ASSERT(ex);
    done_ctx_runs_nothing(ex);
    EXPECT_EQ(xs_exec_free(ex), 0);
}

TEST(pool_closed_is_eclosed)
{
    xs_executor *ex = new_pool(2);
    ASSERT(ex);
    _Atomic int runs = 0;
    xs_action a[3] = {{act_count, &runs, NULL}, {act_count, &runs, NULL}, {act_count, &runs, NULL}};
    int errs[3];
    EXPECT_EQ(xs_exec_run(ex, bg(), a, 3, NULL), 0);
    EXPECT_EQ(xs_exec_close(ex), 0);
    EXPECT_EQ(xs_exec_close(ex), 0); /* twice is fine */
    EXPECT_EQ(xs_exec_run(ex, bg(), a, 3, errs), XS_ECLOSED);
    for (int i = 0; i < 3; i++)
        EXPECT_EQ(errs[i], XS_ECLOSED);
    EXPECT_EQ(atomic_load(&runs), 3);
    EXPECT_EQ(xs_exec_free(ex), 0);
}

/* An action that runs actions on the same pool, nesting `depth` levels. */
typedef struct nest {
    xs_executor *ex;
    int depth, width;
    _Atomic int *leaves;
} nest;

static int act_nest(xs_ctx *ctx, void *arg)
{
    nest *n = arg;
    if (n->depth == 0) {
        atomic_fetch_add(n->leaves, 1);
        return 0;
    }
    nest child = {n->ex, n->depth - 1, n->width, n->leaves};
    xs_action a[8];
    for (int i = 0; i < n->width; i++)
        a[i] = (xs_action){act_nest, &child, NULL};
    return xs_exec_run(n->ex, ctx, a, (size_t)n->width, NULL);
}

TEST(pool_actions_running_the_same_pool_finish)
{
    for (int workers = 1; workers <= 3; workers++) {
        xs_executor *ex = new_pool(workers);
        ASSERT(ex);
        _Atomic int leaves = 0;
        nest root = {ex, 3, 4, &leaves};
        EXPECT_EQ(act_nest(bg(), &root), 0);
        EXPECT_EQ(atomic_load(&leaves), 64);
        EXPECT_EQ(xs_exec_free(ex), 0);
    }
}

/* Every worker of a one-thread pool is blocked in an action that waits for
 * a nested run on the same pool: the nested run still completes. */
TEST(pool_nested_run_progresses_with_every_worker_busy)
{
    xs_executor *ex = new_pool(1);
    ASSERT(ex);
    _Atomic int leaves = 0;
    nest mid = {ex, 1, 8, &leaves};
    xs_action a[4];
    for (int i = 0; i < 4; i++)
        a[i] = (xs_action){act_nest, &mid, NULL};
    runner r[3];
    for (int i = 0; i < 3; i++)
        runner_start(&r[i], ex, bg(), a, 4, NULL);
    for (int i = 0; i < 3; i++)
        EXPECT_EQ(runner_join(&r[i]), 0);
    EXPECT_EQ(atomic_load(&leaves), 3 * 4 * 8);
    EXPECT_EQ(xs_exec_free(ex), 0);
}

static int act_free_ex(xs_ctx *ctx, void *arg)
{
    (void)ctx;
    return xs_exec_free(arg);
}

TEST(pool_free_from_its_own_action_is_busy)
{
    xs_executor *ex = new_pool(2);
    ASSERT(ex);
    xs_action a[2] = {{act_free_ex, ex, NULL}, {act_free_ex, ex, NULL}};
    int errs[2];
    EXPECT_EQ(xs_exec_run(ex, bg(), a, 2, errs), XS_EBUSY);
    EXPECT_EQ(errs[0], XS_EBUSY);
    EXPECT_EQ(xs_exec_run(ex, bg(), a, 1, NULL), XS_EBUSY);
    EXPECT_EQ(xs_exec_free(ex), 0);
}

/* ---- control flow ---- */

TEST(control_flow_more_actions_than_the_limit_is_elimit_at_once)
{
    xs_executor *ex = NULL;
    ASSERT_EQ(xs_exec_control_flow(new_seq(), 5, 2, NULL, &ex), 0);
    _Atomic int runs = 0;
    xs_action a[3] = {{act_count, &runs, NULL}, {act_count, &runs, NULL}, {act_count, &runs, NULL}};
    int errs[3];
    EXPECT_EQ(xs_exec_run(ex, bg(), a, 3, errs), XS_ELIMIT);
    for (int i = 0; i < 3; i++)
        EXPECT_EQ(errs[i], XS_ELIMIT);
    EXPECT_EQ(atomic_load(&runs), 0);
    EXPECT_EQ(xs_exec_run(ex, bg(), a, 2, errs), 0);
    EXPECT_EQ(atomic_load(&runs), 2);
    EXPECT_EQ(xs_exec_free(ex), 0);
}

/* A run holds the semaphores (its first action blocks on the gate) while a
 * second run with a 1 ms deadline waits for them and gives up. */
static void flow_busy(int64_t max_calls, int64_t max_actions, size_t hold_actions)
{
    xs_executor *ex = NULL;
    ASSERT_EQ(xs_exec_control_flow(new_seq(), max_calls, max_actions, NULL, &ex), 0);
    probe p;
    probe_init(&p);
    pact pa = {&p, 0};
    xs_action hold[2] = {{act_gated, &pa, NULL}, {act_gated, &pa, NULL}};
    runner r;
    runner_start(&r, ex, bg(), hold, hold_actions, NULL);
    EXPECT(th_event_wait(&p.started, 1, WAIT_MS));
    _Atomic int runs = 0;
    xs_action one = {act_count, &runs, NULL};
    int err = 0;
    xs_ctx *c;
    ASSERT_EQ(xs_ctx_with_timeout(bg(), XS_MSEC, 0, &c), 0);
    EXPECT_EQ(xs_exec_run(ex, c, &one, 1, &err), XS_EDEADLINE);
    EXPECT_EQ(err, XS_EDEADLINE);
    xs_ctx_release(c);
    ASSERT_EQ(xs_ctx_with_cancel(bg(), &c), 0);
    xs_ctx_cancel(c, 0);
    EXPECT_EQ(xs_exec_run(ex, c, &one, 1, NULL), XS_ECANCELED);
    xs_ctx_release(c);
    EXPECT_EQ(atomic_load(&runs), 0);
    probe_open(&p);
    EXPECT_EQ(runner_join(&r), 0);
    EXPECT_EQ(xs_exec_run(ex, bg(), &one, 1, NULL), 0); /* everything was given back */
    EXPECT_EQ(atomic_load(&runs), 1);
    probe_destroy(&p);
    EXPECT_EQ(xs_exec_free(ex), 0);
}

TEST(control_flow_busy_calls_semaphore_deadline)
{
    flow_busy(1, 10, 1);
}

TEST(control_flow_busy_actions_semaphore_deadline)
{
    flow_busy(2, 2, 2);
}

/* ---- debounce ---- */

static size_t dkey(const char *scope, const char *name, char *buf)
{
    size_t len = 0;
    xs_exec_debounce_key(scope, name, buf, 256, &len);
    return len;
}

static int interest(xs_sf *sf, const char *scope, const char *name)
{
    char k[256];
    size_t len = dkey(scope, name, k);
    return xs_sf_interested(sf, k, len);
}

/* Per-name probes: each execution counts under its name. */
typedef struct named {
    probe *p;
    _Atomic int runs;
} named;

static int act_named(xs_ctx *ctx, void *arg)
{
    (void)ctx;
    named *n = arg;
    atomic_fetch_add(&n->runs, 1);
    atomic_fetch_add(&n->p->runs, 1);
    th_event_signal(&n->p->started);
    xs_ctx_wait(n->p->gate, XS_FOREVER);
    return 0;
}

static xs_executor *new_debounce(xs_executor *inner, xs_sf *sf, const char *scope, unsigned flags)
{
    xs_exec_opts o = {.group = sf, .scope = scope, .flags = flags};
    xs_executor *ex = NULL;
    xs_exec_debounce(inner, &o, &ex);
    return ex;
}

TEST(debounce_on_parallel_runs_each_name_once)
{
    xs_sf *sf;
    ASSERT_EQ(xs_sf_new(NULL, &sf), 0);
    xs_executor *ex = new_debounce(new_par(), sf, NULL, 0);
    ASSERT(ex);
    probe p;
    probe_init(&p);
    named na = {&p, 0}, nb = {&p, 0}, nc = {&p, 0};
    xs_action a[5] = {{act_named, &na, "a"}, {act_named, &na, "a"}, {act_named, &nb, "b"},
                      {act_named, &nb, "b"}, {act_named, &nc, "c"}};
    int errs[5];
    runner r;
    runner_start(&r, ex, bg(), a, 5, errs);
    EXPECT(th_event_wait(&p.started, 3, WAIT_MS));
    EXPECT(WAIT_UNTIL(interest(sf, NULL, "a") == 2 && interest(sf, NULL, "b") == 2));
    EXPECT_EQ(interest(sf, NULL, "c"), 1);
    probe_open(&p);
    EXPECT_EQ(runner_join(&r), 0);
    EXPECT_EQ(atomic_load(&p.runs), 3);
    EXPECT_EQ(atomic_load(&na.runs), 1);
    EXPECT_EQ(atomic_load(&nb.runs), 1);
    EXPECT_EQ(atomic_load(&nc.runs), 1);
    for (int i = 0; i < 5; i++)
        EXPECT_EQ(errs[i], 0);
    probe_destroy(&p);
    EXPECT_EQ(xs_exec_free(ex), 0);
    EXPECT_EQ(xs_sf_free(sf), 0);
}

TEST(debounce_concurrent_runs_share_executions)
{
    xs_sf *sf;
    ASSERT_EQ(xs_sf_new(NULL, &sf), 0);
    xs_executor *ex = new_debounce(new_par(), sf, "svc", 0);
    ASSERT(ex);
    probe p;
    probe_init(&p);
    named na = {&p, 0}, nb = {&p, 0};
    xs_action a[2] = {{act_named, &na, "a"}, {act_named, &nb, "b"}};
    runner r1, r2;
    runner_start(&r1, ex, bg(), a, 2, NULL);
    runner_start(&r2, ex, bg(), a, 2, NULL);
    EXPECT(th_event_wait(&p.started, 2, WAIT_MS));
    /* both callers of each name have joined the one execution */
    EXPECT(WAIT_UNTIL(interest(sf, "svc", "a") == 2 && interest(sf, "svc", "b") == 2));
    probe_open(&p);
    EXPECT_EQ(runner_join(&r1), 0);
    EXPECT_EQ(runner_join(&r2), 0);
    EXPECT_EQ(atomic_load(&na.runs), 1);
    EXPECT_EQ(atomic_load(&nb.runs), 1);
    /* later actions with the same names run again */
    probe q;
    probe_init(&q);
    probe_open(&q);
    named again = {&q, 0};
    xs_action b[2] = {{act_named, &again, "a"}, {act_named, &again, "b"}};
    EXPECT_EQ(xs_exec_run(ex, bg(), b, 2, NULL), 0);
    EXPECT_EQ(atomic_load(&again.runs), 2);
    probe_destroy(&q);
    probe_destroy(&p);
    EXPECT_EQ(xs_exec_free(ex), 0);
    EXPECT_EQ(xs_sf_free(sf), 0);
}

TEST(debounce_unnamed_actions_pass_through)
{
    xs_executor *ex = new_debounce(new_par(), NULL, NULL, 0);
    ASSERT(ex);
    probe p;
    probe_init(&p);
    named n = {&p, 0};
    xs_action a[4] = {{act_named, &n, NULL}, {act_named, &n, NULL}, {act_named, &n, NULL},
                      {act_named, &n, NULL}};
    runner r;
    runner_start(&r, ex, bg(), a, 4, NULL);
    EXPECT(th_event_wait(&p.started, 4, WAIT_MS)); /* all four run at once */
    probe_open(&p);
    EXPECT_EQ(runner_join(&r), 0);
    EXPECT_EQ(atomic_load(&n.runs), 4);
    probe_destroy(&p);
    EXPECT_EQ(xs_exec_free(ex), 0);
}

/* Scope "ab" + name "c" and scope "a" + name "bc" concatenate alike but
 * are different keys: both execute, concurrently, in one shared group. */
TEST(debounce_composite_names_never_collide)
{
    char k1[256], k2[256];
    size_t l1 = dkey("ab", "c", k1), l2 = dkey("a", "bc", k2);
    EXPECT_EQ(l1, 4);
    EXPECT_EQ(l2, 4);
    EXPECT(memcmp(k1, "\x02" "abc", 4) == 0);
    EXPECT(memcmp(k2, "\x01" "abc", 4) == 0);
    EXPECT_EQ(dkey(NULL, "abc", k1), 4); /* no scope: a zero length */
    EXPECT(memcmp(k1, "\x00" "abc", 4) == 0);
    EXPECT_EQ(dkey("", "abc", k2), 4);
    EXPECT(memcmp(k1, k2, 4) == 0);

    xs_sf *sf;
    ASSERT_EQ(xs_sf_new(NULL, &sf), 0);
    xs_executor *par = new_par();
    ASSERT(par);
    /* both borrow the one parallel executor */
    xs_executor *d1 = new_debounce(par, sf, "ab", XS_EXEC_BORROW);
    xs_executor *d2 = new_debounce(par, sf, "a", XS_EXEC_BORROW);
    ASSERT(d1 && d2);
    probe p;
    probe_init(&p);
    named n1 = {&p, 0}, n2 = {&p, 0};
    xs_action a1 = {act_named, &n1, "c"}, a2 = {act_named, &n2, "bc"};
    runner r1, r2;
    runner_start(&r1, d1, bg(), &a1, 1, NULL);
    runner_start(&r2, d2, bg(), &a2, 1, NULL);
    EXPECT(th_event_wait(&p.started, 2, WAIT_MS));
    EXPECT_EQ(interest(sf, "ab", "c"), 1);
    EXPECT_EQ(interest(sf, "a", "bc"), 1);
    probe_open(&p);
    EXPECT_EQ(runner_join(&r1), 0);
    EXPECT_EQ(runner_join(&r2), 0);
    EXPECT_EQ(atomic_load(&n1.runs), 1);
    EXPECT_EQ(atomic_load(&n2.runs), 1);
    probe_destroy(&p);
    EXPECT_EQ(xs_exec_free(d1), 0);
    EXPECT_EQ(xs_exec_free(d2), 0);
    EXPECT_EQ(xs_exec_run(par, bg(), &(xs_action){act_noop, NULL, NULL}, 1, NULL), 0);
    EXPECT_EQ(xs_exec_free(par), 0);
    EXPECT_EQ(xs_sf_free(sf), 0);
}

/* A joined action receives the execution's error, not its own. */
TEST(debounce_shares_the_result)
{
    xs_sf *sf;
    ASSERT_EQ(xs_sf_new(NULL, &sf), 0);
    xs_executor *ex = new_debounce(new_par(), sf, NULL, 0);
    ASSERT(ex);
    probe p;
    probe_init(&p);
    pact fail = {&p, E1}, ok = {&p, 0};
    xs_action a[2] = {{act_gated, &fail, "x"}, {act_gated, &ok, "x"}};
    int errs[2];
    runner r;
    runner_start(&r, ex, bg(), a, 2, errs);
    EXPECT(th_event_wait(&p.started, 1, WAIT_MS));
    EXPECT(WAIT_UNTIL(interest(sf, NULL, "x") == 2));
    probe_open(&p);
    int res = runner_join(&r);
    EXPECT_EQ(atomic_load(&p.runs), 1);
    /* whichever ran, both got its result */
    EXPECT_EQ(errs[0], errs[1]);
    EXPECT_EQ(res, errs[0]);
    probe_destroy(&p);
    EXPECT_EQ(xs_exec_free(ex), 0);
    EXPECT_EQ(xs_sf_free(sf), 0);
}

/* ---- metrics ---- */

/* A scope so long that no key fits: refused at creation; one that leaves
 * room for the empty name only: a run with a longer name is refused before
 * anything runs (its check must not wrap around). */
TEST(debounce_scope_near_the_key_limit_refuses_before_running)
{
    size_t big = XS_SF_KEY_MAX;
    char *scope = malloc(big + 1);
    ASSERT(scope);
    xs_executor *ex = NULL, *par = new_par();
    ASSERT(par);
    for (size_t sl = big - 3; sl <= big; sl++) { /* varint of 65533..65536: 3 bytes */
        memset(scope, 's', sl);
        scope[sl] = 0;
        xs_exec_opts o = {.scope = scope, .flags = XS_EXEC_BORROW};
        int r = xs_exec_debounce(par, &o, &ex);
        if (sl + 3 > big) {
            EXPECT_EQ(r, XS_EINVAL);
            continue;
        }
        ASSERT_EQ(r, 0);
        _Atomic int runs = 0;
        xs_action a[2] = {{act_count, &runs, NULL}, {act_count, &runs, "x"}};
        int errs[2] = {1, 1};
        EXPECT_EQ(xs_exec_run(ex, bg(), a, 2, errs), XS_EINVAL);
        EXPECT_EQ(atomic_load(&runs), 0);
        EXPECT_EQ(errs[0], XS_EINVAL);
        EXPECT_EQ(errs[1], XS_EINVAL);
        EXPECT_EQ(xs_exec_free(ex), 0);
    }
    free(scope);
    EXPECT_EQ(xs_exec_free(par), 0);
}

/* Free while a run is in progress through the debounce's own group:
 * XS_EBUSY and nothing freed (the inner executor included); after the run,
 * free succeeds. */
TEST(debounce_free_while_busy_frees_nothing)
{
    xs_alloc_counter ac;
    xs_alloc_counter_init(&ac, NULL);
    xs_exec_opts o = {.alloc = &ac.allocator};
    xs_executor *par = NULL, *ex = NULL;
    ASSERT_EQ(xs_exec_parallel(&o, &par), 0);
    ASSERT_EQ(xs_exec_debounce(par, &o, &ex), 0);
    probe p;
    probe_init(&p);
    named nk = {&p, 0};
    xs_action a[1] = {{act_named, &nk, "k"}};
    runner r;
    runner_start(&r, ex, bg(), a, 1, NULL);
    EXPECT(th_event_wait(&p.started, 1, WAIT_MS));
    int64_t live = atomic_load(&ac.live_bytes);
    EXPECT_EQ(xs_exec_free(ex), XS_EBUSY);
    EXPECT_EQ(atomic_load(&ac.live_bytes), live);
    probe_open(&p);
    EXPECT_EQ(runner_join(&r), 0);
    EXPECT_EQ(atomic_load(&nk.runs), 1);
    EXPECT_EQ(xs_exec_free(ex), 0);
    EXPECT_EQ(atomic_load(&ac.live_bytes), 0);
    probe_destroy(&p);
}

static xs_executor *new_metrics(xs_executor *inner, rsource *rs)
{
    xs_executor *ex = NULL;
    xs_exec_metrics(inner, &rs->src, NULL, &ex);
    return ex;
}

TEST(metrics_on_parallel_count_all_and_named_actions)
{
    rsource rs;
    rs_init(&rs);
    xs_executor *ex = new_metrics(new_par(), &rs);
    ASSERT(ex);
    xs_action a[2] = {{act_noop, NULL, NULL}, {act_noop, NULL, "foo"}};
    EXPECT_EQ(xs_exec_run(ex, bg(), a, 2, NULL), 0);
    EXPECT_EQ(rs_value(&rs, "all_actions.success"), 2);
    EXPECT_EQ(rs_value(&rs, "all_actions.error"), 0);
    EXPECT_EQ(rs_count(&rs, "all_actions.latency"), 2);
    EXPECT_EQ(rs_value(&rs, "foo.success"), 1);
    EXPECT_EQ(rs_value(&rs, "foo.error"), 0);
    EXPECT_EQ(rs_count(&rs, "foo.latency"), 1);
    EXPECT_EQ(xs_exec_free(ex), 0);
    rs_destroy(&rs);
}

TEST(metrics_on_sequential_count_a_failure)
{
    rsource rs;
    rs_init(&rs);
    xs_executor *ex = new_metrics(new_seq(), &rs);
    ASSERT(ex);
    xs_action a[2] = {{act_noop, NULL, NULL}, {act_ret, (void *)(intptr_t)E1, "bar"}};
    int errs[2];
    EXPECT_EQ(xs_exec_run(ex, bg(), a, 2, errs), E1);
    EXPECT_EQ(errs[0], 0);
    EXPECT_EQ(errs[1], E1);
    EXPECT_EQ(rs_value(&rs, "all_actions.success"), 1);
    EXPECT_EQ(rs_value(&rs, "all_actions.error"), 1);
    EXPECT_EQ(rs_count(&rs, "all_actions.latency"), 2);
    EXPECT_EQ(rs_value(&rs, "bar.error"), 1);
    EXPECT_EQ(rs_value(&rs, "bar.success"), 0);
    EXPECT_EQ(rs_count(&rs, "bar.latency"), 1);
    EXPECT_EQ(xs_exec_free(ex), 0);
    rs_destroy(&rs);
}

TEST(metrics_refused_name_fails_the_run_before_anything_runs)
{
    rsource rs;
    rs_init(&rs);
    xs_executor *ex = new_metrics(new_seq(), &rs);
    ASSERT(ex);
    _Atomic int runs = 0;
    xs_action a[2] = {{act_count, &runs, "fine"}, {act_count, &runs, "refused"}};
    int errs[2];
    EXPECT_EQ(xs_exec_run(ex, bg(), a, 2, errs), XS_EINVAL);
    EXPECT_EQ(errs[0], XS_EINVAL);
    EXPECT_EQ(errs[1], XS_EINVAL);
    EXPECT_EQ(atomic_load(&runs), 0);
    EXPECT_EQ(xs_exec_run(ex, bg(), a, 1, NULL), 0);
    EXPECT_EQ(rs_value(&rs, "fine.success"), 1);
    EXPECT_EQ(xs_exec_free(ex), 0);
    rs_destroy(&rs);
}

/* 64 threads ask for 2 new names at once; the source's counter() blocks
 * until all 64 have arrived, so the others pile up behind the creators. */
typedef struct cache_arg {
    xs_executor *ex;
    th_event *arrived;
    const char *name;
    int result;
} cache_arg;

static void *cache_thread(void *arg)
{
    cache_arg *c = arg;
    th_event_signal(c->arrived);
    xs_action a = {act_noop, NULL, c->name};
    c->result = xs_exec_run(c->ex, bg(), &a, 1, NULL);
    return NULL;
}

TEST(metrics_stat_sets_are_created_once_per_name)
{
    rsource rs;
    rs_init(&rs);
    xs_executor *ex = new_metrics(new_seq(), &rs);
    ASSERT(ex);
    int c0 = atomic_load(&rs.counter_calls), t0 = atomic_load(&rs.timer_calls);
    EXPECT_EQ(c0, 2); /* all_actions: success and error */
    EXPECT_EQ(t0, 1);
    th_event arrived;
    th_event_init(&arrived);
    rs.gate = &arrived;
    rs.gate_n = 64;
    pthread_t th[64];
    cache_arg args[64];
    for (int i = 0; i < 64; i++) {
        args[i] = (cache_arg){ex, &arrived, i % 2 ? "odd" : "even", -1};
        pthread_create(&th[i], NULL, cache_thread, &args[i]);
    }
    for (int i = 0; i < 64; i++) {
        pthread_join(th[i], NULL);
        EXPECT_EQ(args[i].result, 0);
    }
    EXPECT_EQ(atomic_load(&rs.counter_calls) - c0, 4); /* 2 names x (success, error) */
    EXPECT_EQ(atomic_load(&rs.timer_calls) - t0, 2);
    EXPECT_EQ(rs_value(&rs, "odd.success"), 32);
    EXPECT_EQ(rs_value(&rs, "even.success"), 32);
    EXPECT_EQ(rs_value(&rs, "all_actions.success"), 64);
    EXPECT_EQ(xs_exec_free(ex), 0);
    th_event_destroy(&arrived);
    rs_destroy(&rs);
}

static int64_t rs_sum(rsource *rs, const char *name)
{
    rstat *s = rs_find(rs, name, true, false);
    return s ? atomic_load(&s->sum) : -1;
}

static int act_advance(xs_ctx *ctx, void *arg)
{
    (void)ctx;
    return xs_clock_advance(arg, 5 * XS_MSEC);
}

/* On a manual clock the latencies are exact. */
TEST(metrics_latency_is_read_on_the_given_clock)
{
    xs_clock *clock;
    ASSERT_EQ(xs_clock_manual_new(1000, NULL, &clock), 0);
    rsource rs;
    rs_init(&rs);
    xs_exec_opts o = {.clock = clock};
    xs_executor *ex = NULL;
    ASSERT_EQ(xs_exec_metrics(new_seq(), &rs.src, &o, &ex), 0);
    xs_action a[3] = {{act_advance, clock, "slow"}, {act_noop, NULL, "fast"}, {act_advance, clock, NULL}};
    EXPECT_EQ(xs_exec_run(ex, bg(), a, 3, NULL), 0);
    EXPECT_EQ(rs_sum(&rs, "all_actions.latency"), 10 * XS_MSEC);
    EXPECT_EQ(rs_sum(&rs, "slow.latency"), 5 * XS_MSEC);
    EXPECT_EQ(rs_sum(&rs, "fast.latency"), 0);
    EXPECT_EQ(rs_count(&rs, "fast.latency"), 1);
    EXPECT_EQ(xs_exec_free(ex), 0);
    rs_destroy(&rs);
    EXPECT_EQ(xs_clock_free(clock), 0);
}

/* On the default clock a latency is about what the action took. */
static int act_spin_1ms(xs_ctx *ctx, void *arg)
{
    (void)ctx;
    (void)arg;
    int64_t end = th_now_ns() + XS_MSEC;
    while (th_now_ns() < end)
        ;
    return 0;
}

TEST(metrics_latency_on_the_default_clock_is_in_nanoseconds)
{
    rsource rs;
    rs_init(&rs);
    xs_executor *ex = new_metrics(new_seq(), &rs);
    ASSERT(ex);
    xs_action a = {act_spin_1ms, NULL, NULL};
    int64_t t0 = th_now_ns();
    EXPECT_EQ(xs_exec_run(ex, bg(), &a, 1, NULL), 0);
    int64_t took = th_now_ns() - t0, lat = rs_sum(&rs, "all_actions.latency");
    EXPECT_GE(lat, XS_MSEC * 99 / 100);
    EXPECT_LE(lat, took + took / 100);
    EXPECT_EQ(xs_exec_free(ex), 0);
    rs_destroy(&rs);
}

/* ---- rate limit ---- */

TEST(rate_limit_each_action_waits_for_a_token)
{
    xs_rate *lim;
    ASSERT_EQ(xs_rate_new(xs_rate_every(3600 * XS_SEC), 3, NULL, &lim), 0); /* 3 now, then 1/h */
    xs_executor *ex = NULL;
    ASSERT_EQ(xs_exec_rate_limit(new_seq(), lim, NULL, &ex), 0);
    _Atomic int runs = 0;
    xs_action a[5];
    int errs[5];
    for (int i = 0; i < 5; i++)
        a[i] = (xs_action){act_count, &runs, NULL};
    xs_ctx *c;
    ASSERT_EQ(xs_ctx_with_timeout(bg(), 60 * XS_SEC, 0, &c), 0);
    /* the 4th token is an hour away, past the deadline: XS_EDEADLINE at once */
    EXPECT_EQ(xs_exec_run(ex, c, a, 5, errs), XS_EDEADLINE);
    EXPECT_EQ(atomic_load(&runs), 3);
    EXPECT_EQ(errs[2], 0);
    EXPECT_EQ(errs[3], XS_EDEADLINE);
    EXPECT_EQ(errs[4], XS_ECANCELED);
    xs_ctx_release(c);
    EXPECT_EQ(xs_exec_free(ex), 0);
    xs_rate_free(lim); /* borrowed: still ours */

    ASSERT_EQ(xs_rate_new(0, 1, NULL, &lim), 0); /* one token, never another */
    ASSERT_EQ(xs_exec_rate_limit(new_par(), lim, NULL, &ex), 0);
    atomic_store(&runs, 0);
    EXPECT_EQ(xs_exec_run(ex, bg(), a, 2, errs), XS_ELIMIT);
    EXPECT_EQ(atomic_load(&runs), 1);
    EXPECT(errs[0] == XS_ELIMIT || errs[1] == XS_ELIMIT);
    EXPECT_EQ(xs_exec_free(ex), 0);
    xs_rate_free(lim);
}

/* ---- your own executor, closing, ownership ---- */

/* A user executor: runs the actions in reverse order. */
typedef struct reverse {
    xs_executor ex;
    _Atomic int *freed;
} reverse;

static int reverse_run(xs_executor *ex, xs_ctx *ctx, const xs_action *a, size_t n, int *errs)
{
    (void)ex;
    int first = 0;
    for (size_t i = n; i-- > 0;) {
        int e = a[i].fn(ctx, a[i].arg);
        if (errs)
            errs[i] = e;
        if (e && !first)
            first = e;
    }
    return first;
}

static int reverse_free(xs_executor *ex)
{
    reverse *r = (reverse *)(void *)ex;
    atomic_fetch_add(r->freed, 1);
    free(r);
    return 0;
}

static const xs_executor_ops reverse_ops = {reverse_run, NULL, reverse_free};

TEST(decorators_work_over_a_user_executor)
{
    _Atomic int freed = 0;
    reverse *rv = malloc(sizeof *rv);
    rv->ex.ops = &reverse_ops;
    rv->freed = &freed;
    rsource rs;
    rs_init(&rs);
    xs_executor *m = new_metrics(&rv->ex, &rs), *ex = NULL;
    ASSERT(m);
    ASSERT_EQ(xs_exec_debounce(m, NULL, &ex), 0);
    ASSERT_EQ(xs_exec_control_flow(ex, 2, 4, NULL, &ex), 0);
    trace t;
    step s[4];
    xs_action a[4];
    steps_make(&t, s, a, 4, -1);
    a[1].name = "one";
    EXPECT_EQ(xs_exec_run(ex, bg(), a, 4, NULL), 0);
    EXPECT_STREQ(t.buf, "3210");
    EXPECT_EQ(rs_value(&rs, "all_actions.success"), 4);
    EXPECT_EQ(rs_value(&rs, "one.success"), 1);
    EXPECT_EQ(xs_exec_close(ex), 0); /* closes the decorators; the user one cannot be */
    EXPECT_EQ(xs_exec_run(ex, bg(), a, 4, NULL), XS_ECLOSED);
    EXPECT_EQ(xs_exec_run(m, bg(), a, 4, NULL), XS_ECLOSED);
    EXPECT_EQ(xs_exec_free(ex), 0); /* the whole stack */
    EXPECT_EQ(atomic_load(&freed), 1);
    rs_destroy(&rs);
}

TEST(closing_a_decorator_closes_an_owned_inner_but_not_a_borrowed_one)
{
    xs_executor *pool = new_pool(2), *owner = NULL, *borrower = NULL;
    ASSERT(pool);
    xs_exec_opts borrow = {.flags = XS_EXEC_BORROW};
    ASSERT_EQ(xs_exec_control_flow(pool, 4, 4, &borrow, &borrower), 0);
    xs_action one = {act_noop, NULL, NULL};
    EXPECT_EQ(xs_exec_close(borrower), 0);
    EXPECT_EQ(xs_exec_run(borrower, bg(), &one, 1, NULL), XS_ECLOSED);
    EXPECT_EQ(xs_exec_run(pool, bg(), &one, 1, NULL), 0);
    EXPECT_EQ(xs_exec_free(borrower), 0);
    EXPECT_EQ(xs_exec_run(pool, bg(), &one, 1, NULL), 0); /* still ours */
    ASSERT_EQ(xs_exec_control_flow(pool, 4, 4, NULL, &owner), 0);
    EXPECT_EQ(xs_exec_close(owner), 0);
    EXPECT_EQ(xs_exec_run(pool, bg(), &one, 1, NULL), XS_ECLOSED);
    EXPECT_EQ(xs_exec_free(owner), 0); /* frees the pool too */

    xs_executor *ex[3] = {new_seq(), new_par(), new_pall()};
    for (int i = 0; i < 3; i++) {
        EXPECT_EQ(xs_exec_close(ex[i]), 0);
        EXPECT_EQ(xs_exec_run(ex[i], bg(), &one, 1, NULL), XS_ECLOSED);
        EXPECT_EQ(xs_exec_free(ex[i]), 0);
    }
}

/* Freeing the outermost frees the stack: nothing left on the allocator. */
TEST(freeing_the_outermost_frees_the_whole_stack)
{
    xs_alloc_counter ac;
    xs_alloc_counter_init(&ac, NULL);
    xs_exec_opts o = {.alloc = &ac.allocator};
    rsource rs;
    rs_init(&rs);
    xs_rate *lim;
    ASSERT_EQ(xs_rate_new(XS_RATE_INF, 1, NULL, &lim), 0);
    xs_executor *ex = NULL;
    ASSERT_EQ(xs_exec_pool(2, &o, &ex), 0);
    ASSERT_EQ(xs_exec_rate_limit(ex, lim, &o, &ex), 0);
    ASSERT_EQ(xs_exec_control_flow(ex, 4, 64, &o, &ex), 0);
    ASSERT_EQ(xs_exec_metrics(ex, &rs.src, &o, &ex), 0);
    ASSERT_EQ(xs_exec_debounce(ex, &o, &ex), 0);
    xs_action a[40];
    for (int i = 0; i < 40; i++) /* beyond the stack storage */
        a[i] = (xs_action){act_noop, NULL, i % 3 ? NULL : "n"};
    EXPECT_EQ(xs_exec_run(ex, bg(), a, 40, NULL), 0);
    EXPECT_GT(atomic_load(&ac.live_bytes), 0);
    EXPECT_EQ(xs_exec_free(ex), 0);
    EXPECT_EQ(atomic_load(&ac.live_bytes), 0);
    EXPECT_EQ(atomic_load(&ac.allocs), atomic_load(&ac.frees));
    xs_rate_free(lim);
    rs_destroy(&rs);
}

/* ---- the stack under load ---- */

#define STACK_THREADS 8
#define STACK_RUNS 10000 /* per thread; about 8 s under TSan on 2 CPUs */

/* Counts, then yields once: widens the window in which runs share "hot". */
static int act_count_yield(xs_ctx *ctx, void *arg)
{
    (void)ctx;
    atomic_fetch_add((_Atomic int *)arg, 1);
    sched_yield();
    return 0;
}

typedef struct stack_arg {
    xs_executor *ex;
    int id;
    _Atomic int *counted, *hot;
    int failures;
} stack_arg;

static void *stack_thread(void *arg)
{
    stack_arg *s = arg;
    char name[16];
    snprintf(name, sizeof name, "t%d", s->id);
    /* Two unnamed actions and one named after the thread (never concurrent
     * with itself: one run at a time per thread) each execute exactly once
     * per run; "hot" is shared by concurrent runs, so it executes at most
     * once per run. */
    xs_action a[4] = {{act_count, s->counted, NULL},
                      {act_count, s->counted, NULL},
                      {act_count, s->counted, name},
                      {act_count_yield, s->hot, "hot"}};
    for (int i = 0; i < STACK_RUNS; i++)
        if (xs_exec_run(s->ex, bg(), a, 4, NULL) != 0)
            s->failures++;
    return NULL;
}

TEST_T(stack_debounce_metrics_control_flow_parallel_counts_add_up, 120)
{
    rsource rs;
    rs_init(&rs);
    xs_executor *ex = new_par();
    ASSERT(ex);
    ASSERT_EQ(xs_exec_control_flow(ex, 4, 8, NULL, &ex), 0);
    ASSERT_EQ(xs_exec_metrics(ex, &rs.src, NULL, &ex), 0);
    ASSERT_EQ(xs_exec_debounce(ex, NULL, &ex), 0);
    _Atomic int counted = 0, hot = 0;
    pthread_t th[STACK_THREADS];
    stack_arg args[STACK_THREADS];
    for (int i = 0; i < STACK_THREADS; i++) {
        args[i] = (stack_arg){ex, i, &counted, &hot, 0};
        pthread_create(&th[i], NULL, stack_thread, &args[i]);
    }
    for (int i = 0; i < STACK_THREADS; i++) {
        pthread_join(th[i], NULL);
        EXPECT_EQ(args[i].failures, 0);
    }
    int64_t runs = (int64_t)STACK_THREADS * STACK_RUNS;
    EXPECT_EQ(atomic_load(&counted), runs * 3);
    EXPECT_GE(atomic_load(&hot), 1);
    EXPECT_LE(atomic_load(&hot), runs);
    /* metrics sits inside debounce: every action of every run is counted
     * once, whether its execution was its own or shared */
    EXPECT_EQ(rs_value(&rs, "all_actions.success"), runs * 4);
    EXPECT_EQ(rs_value(&rs, "all_actions.error"), 0);
    EXPECT_EQ(rs_count(&rs, "all_actions.latency"), runs * 4);
    EXPECT_EQ(rs_value(&rs, "hot.success"), runs);
    for (int i = 0; i < STACK_THREADS; i++) {
        char name[32];
        snprintf(name, sizeof name, "t%d.success", i);
        EXPECT_EQ(rs_value(&rs, name), STACK_RUNS);
    }
    printf("    %d runs, \"hot\" executed %d times\n", (int)runs, atomic_load(&hot));
    EXPECT_EQ(xs_exec_free(ex), 0);
    rs_destroy(&rs);
}

/* ---- bad input ---- */

static int no_run_free(xs_executor *ex)
{
    (void)ex;
    return 0;
}

TEST(bad_input_is_einval_and_changes_nothing)
{
    xs_executor *ex = new_seq();
    ASSERT(ex);
    _Atomic int runs = 0;
    xs_action ok = {act_count, &runs, NULL};
    xs_action bad[2] = {{act_count, &runs, NULL}, {NULL, NULL, "x"}};
    int errs[2] = {7, 7};
    EXPECT_EQ(xs_exec_run(NULL, bg(), &ok, 1, NULL), XS_EINVAL);
    EXPECT_EQ(xs_exec_run(ex, bg(), NULL, 1, NULL), XS_EINVAL);
    EXPECT_EQ(xs_exec_run(ex, bg(), bad, 2, errs), XS_EINVAL);
    EXPECT_EQ(errs[0], 7); /* nothing written */
    EXPECT_EQ(xs_exec_run(ex, bg(), &ok, XS_EXEC_MAX_ACTIONS + 1, NULL), XS_EINVAL);
    EXPECT_EQ(atomic_load(&runs), 0);
    EXPECT_EQ(xs_exec_run(ex, NULL, &ok, 1, NULL), 0); /* NULL ctx: background */
    EXPECT_EQ(atomic_load(&runs), 1);
    xs_executor_ops no_run = {NULL, NULL, no_run_free};
    xs_executor user = {&no_run}, nothing = {NULL};
    EXPECT_EQ(xs_exec_run(&user, bg(), &ok, 1, NULL), XS_EINVAL);
    EXPECT_EQ(xs_exec_run(&nothing, bg(), &ok, 1, NULL), XS_EINVAL);
    EXPECT_EQ(xs_exec_close(NULL), XS_EINVAL);
    EXPECT_EQ(xs_exec_close(&user), XS_EINVAL);
    EXPECT_EQ(xs_exec_free(NULL), 0);

    xs_executor *out = (xs_executor *)&runs; /* untouched on error */
    xs_executor *const sentinel = out;
    EXPECT_EQ(xs_exec_sequential(NULL, NULL), XS_EINVAL);
    EXPECT_EQ(xs_exec_parallel(NULL, NULL), XS_EINVAL);
    EXPECT_EQ(xs_exec_parallel_all(NULL, NULL), XS_EINVAL);
    EXPECT_EQ(xs_exec_pool(2, NULL, NULL), XS_EINVAL);
    EXPECT_EQ(xs_exec_pool(4097, NULL, &out), XS_EINVAL);
    EXPECT_EQ(xs_exec_control_flow(NULL, 1, 1, NULL, &out), XS_EINVAL);
    EXPECT_EQ(xs_exec_control_flow(&user, 1, 1, NULL, &out), XS_EINVAL);
    EXPECT_EQ(xs_exec_control_flow(ex, 0, 1, NULL, &out), XS_EINVAL);
    EXPECT_EQ(xs_exec_control_flow(ex, 1, 0, NULL, &out), XS_EINVAL);
    EXPECT_EQ(xs_exec_control_flow(ex, -1, 1, NULL, &out), XS_EINVAL);
    EXPECT_EQ(xs_exec_control_flow(ex, 1, XS_SEM_MAX + 1, NULL, &out), XS_EINVAL);
    EXPECT_EQ(xs_exec_control_flow(ex, 1, 1, NULL, NULL), XS_EINVAL);
    EXPECT_EQ(xs_exec_debounce(NULL, NULL, &out), XS_EINVAL);
    EXPECT_EQ(xs_exec_debounce(ex, NULL, NULL), XS_EINVAL);
    rsource rs;
    rs_init(&rs);
    EXPECT_EQ(xs_exec_metrics(NULL, &rs.src, NULL, &out), XS_EINVAL);
    EXPECT_EQ(xs_exec_metrics(ex, NULL, NULL, &out), XS_EINVAL);
    EXPECT_EQ(xs_exec_metrics(ex, &rs.src, NULL, NULL), XS_EINVAL);
    xs_rate *lim;
    ASSERT_EQ(xs_rate_new(1, 1, NULL, &lim), 0);
    EXPECT_EQ(xs_exec_rate_limit(NULL, lim, NULL, &out), XS_EINVAL);
    EXPECT_EQ(xs_exec_rate_limit(ex, NULL, NULL, &out), XS_EINVAL);
    EXPECT_EQ(xs_exec_rate_limit(ex, lim, NULL, NULL), XS_EINVAL);
    xs_exec_opts unknown = {.flags = 1u << 7};
    EXPECT_EQ(xs_exec_sequential(&unknown, &out), XS_EINVAL);
    EXPECT_EQ(xs_exec_parallel(&unknown, &out), XS_EINVAL);
    EXPECT_EQ(xs_exec_parallel_all(&unknown, &out), XS_EINVAL);
    EXPECT_EQ(xs_exec_pool(1, &unknown, &out), XS_EINVAL);
    EXPECT_EQ(xs_exec_control_flow(ex, 1, 1, &unknown, &out), XS_EINVAL);
    EXPECT_EQ(xs_exec_debounce(ex, &unknown, &out), XS_EINVAL);
    EXPECT_EQ(xs_exec_metrics(ex, &rs.src, &unknown, &out), XS_EINVAL);
    EXPECT_EQ(xs_exec_rate_limit(ex, lim, &unknown, &out), XS_EINVAL);
    EXPECT_PTR_EQ(out, sentinel);

    char buf[8];
    size_t len = 0;
    EXPECT_EQ(xs_exec_debounce_key(NULL, NULL, buf, 8, &len), XS_EINVAL);
    EXPECT_EQ(xs_exec_debounce_key(NULL, "a", buf, 8, NULL), XS_EINVAL);
    EXPECT_EQ(xs_exec_debounce_key(NULL, "a", NULL, 8, &len), XS_EINVAL);
    EXPECT_EQ(xs_exec_debounce_key("scope", "name", buf, 8, &len), XS_EOVERFLOW);
    EXPECT_EQ(len, 10);
    EXPECT_EQ(xs_exec_debounce_key("scope", "name", NULL, 0, &len), XS_EOVERFLOW);

    /* a name whose debounce key is too long: XS_EINVAL, nothing runs */
    xs_executor *db = NULL;
    ASSERT_EQ(xs_exec_debounce(new_seq(), NULL, &db), 0);
    char *huge = malloc(XS_SF_KEY_MAX + 1);
    memset(huge, 'k', XS_SF_KEY_MAX);
    huge[XS_SF_KEY_MAX] = 0;
    xs_action longname[2] = {{act_count, &runs, NULL}, {act_count, &runs, huge}};
    EXPECT_EQ(xs_exec_run(db, bg(), longname, 2, errs), XS_EINVAL);
    EXPECT_EQ(errs[0], XS_EINVAL);
    EXPECT_EQ(atomic_load(&runs), 1);
    huge[XS_SF_KEY_MAX - 1] = 0; /* fits with the 1-byte prefix */
    EXPECT_EQ(xs_exec_run(db, bg(), longname, 2, NULL), 0);
    EXPECT_EQ(atomic_load(&runs), 3);
    free(huge);
    EXPECT_EQ(xs_exec_free(db), 0);

    xs_rate_free(lim);
    rs_destroy(&rs);
    EXPECT_EQ(xs_exec_free(ex), 0);
}

/* ---- allocation failure ---- */

typedef int (*make_fn)(xs_executor *inner, const xs_exec_opts *o, void *arg, xs_executor **out);

static int make_seq(xs_executor *inner, const xs_exec_opts *o, void *arg, xs_executor **out)
{
    (void)inner, (void)arg;
    return xs_exec_sequential(o, out);
}
static int make_par(xs_executor *inner, const xs_exec_opts *o, void *arg, xs_executor **out)
{
    (void)inner, (void)arg;
    return xs_exec_parallel(o, out);
}
static int make_pall(xs_executor *inner, const xs_exec_opts *o, void *arg, xs_executor **out)
{
    (void)inner, (void)arg;
    return xs_exec_parallel_all(o, out);
}
static int make_pool(xs_executor *inner, const xs_exec_opts *o, void *arg, xs_executor **out)
{
    (void)inner, (void)arg;
    return xs_exec_pool(2, o, out);
}
static int make_flow(xs_executor *inner, const xs_exec_opts *o, void *arg, xs_executor **out)
{
    (void)arg;
    return xs_exec_control_flow(inner, 4, 64, o, out);
}
static int make_debounce(xs_executor *inner, const xs_exec_opts *o, void *arg, xs_executor **out)
{
    (void)arg;
    xs_exec_opts d = *o;
    d.scope = "a scope";
    return xs_exec_debounce(inner, &d, out);
}
static int make_metrics(xs_executor *inner, const xs_exec_opts *o, void *arg, xs_executor **out)
{
    return xs_exec_metrics(inner, arg, o, out);
}
static int make_rate(xs_executor *inner, const xs_exec_opts *o, void *arg, xs_executor **out)
{
    return xs_exec_rate_limit(inner, arg, o, out);
}

typedef struct maker {
    const char *name;
    make_fn make;
    bool decorator;
} maker;

TEST(allocation_failure_in_every_constructor_leaks_nothing)
{
    xs_alloc_counter ac;
    xs_alloc_counter_init(&ac, NULL);
    xs_exec_opts o = {.alloc = &ac.allocator};
    rsource rs;
    rs_init(&rs);
    xs_rate *lim;
    ASSERT_EQ(xs_rate_new(XS_RATE_INF, 1, NULL, &lim), 0);
    const maker makers[] = {{"sequential", make_seq, false}, {"parallel", make_par, false},
                            {"parallel_all", make_pall, false}, {"pool", make_pool, false},
                            {"control_flow", make_flow, true}, {"debounce", make_debounce, true},
                            {"metrics", make_metrics, true}, {"rate_limit", make_rate, true}};
    for (size_t m = 0; m < sizeof makers / sizeof *makers; m++) {
        void *arg = makers[m].make == make_rate ? (void *)lim : (void *)&rs.src;
        int failures = (int)atomic_load(&ac.failures), failures0 = failures;
        for (int k = 1; k < 64; k++) {
            xs_executor *inner = NULL, *ex = NULL;
            if (makers[m].decorator)
                ASSERT_EQ(xs_exec_sequential(&o, &inner), 0);
            int64_t live = atomic_load(&ac.live_bytes);
            xs_alloc_counter_fail_at(&ac, k, 0);
            int r = makers[m].make(inner, &o, arg, &ex);
            bool failed = atomic_load(&ac.failures) > failures;
            xs_alloc_counter_fail_at(&ac, 0, 0);
            if (failed) {
                failures = (int)atomic_load(&ac.failures);
                if (!EXPECT_EQ(r, XS_ENOMEM))
                    printf("    %s, allocation %d\n", makers[m].name, k);
                EXPECT_PTR_EQ(ex, NULL);
                EXPECT_EQ(atomic_load(&ac.live_bytes), live);
                if (inner) { /* still the caller's, and usable */
                    EXPECT_EQ(xs_exec_run(inner, bg(), &(xs_action){act_noop, NULL, NULL}, 1,
                                          NULL),
                              0);
                    EXPECT_EQ(xs_exec_free(inner), 0);
                }
            } else {
                EXPECT_EQ(r, 0);
                EXPECT_EQ(xs_exec_run(ex, bg(), &(xs_action){act_noop, NULL, "x"}, 1, NULL), 0);
                EXPECT_EQ(xs_exec_free(ex), 0);
            }
            EXPECT_EQ(atomic_load(&ac.live_bytes), 0);
            if (!failed)
                break;
        }
        printf("    %s: %d allocations failed in turn\n", makers[m].name, failures - failures0);
    }
    xs_rate_free(lim);
    rs_destroy(&rs);
}

/* One kind of run per case: the stack, the actions, what a failure means. */
typedef struct run_case {
    const char *name;
    int inner;     /* 0 sequential, 1 parallel, 2 parallel_all, 3 pool */
    make_fn deco;  /* NULL: the bare executor */
    size_t n;      /* > 16: decorators' and parallel's records on the heap */
    const char *action_name;
    bool with_errs;
} run_case;

TEST_T(allocation_failure_in_runs_fails_cleanly_and_leaks_nothing, 120)
{
    /* the default pool exists before the default allocator changes */
    ASSERT(xs_pool_default());
    rsource rs;
    rs_init(&rs);
    xs_rate *lim;
    ASSERT_EQ(xs_rate_new(XS_RATE_INF, 1, NULL, &lim), 0);
    xs_alloc_counter ac;
    xs_alloc_counter_init(&ac, NULL);
    const xs_allocator *prev = xs_allocator_set_default(&ac.allocator); /* contexts too */
    xs_exec_opts o = {.alloc = &ac.allocator};
    static char longname[400];
    memset(longname, 'L', sizeof longname - 1);
    const run_case cases[] = {
        {"parallel", 1, NULL, 4, NULL, false},
        {"parallel errs", 1, NULL, 20, NULL, true},
        {"parallel_all", 2, NULL, 70, NULL, true},
        {"pool", 3, NULL, 4, NULL, true},
        {"metrics new name", 0, make_metrics, 4, "fresh", true},
        {"metrics long name", 0, make_metrics, 2, longname, true},
        {"metrics big run", 0, make_metrics, 40, NULL, true},
        {"debounce", 0, make_debounce, 4, "d", true},
        {"debounce long name", 1, make_debounce, 2, longname, true},
        {"debounce big run", 0, make_debounce, 40, "d", true},
        {"rate big run", 1, make_rate, 40, NULL, true},
        {"control flow", 1, make_flow, 20, NULL, true},
    };
    xs_action acts[70];
    int errs[70];
    for (size_t c = 0; c < sizeof cases / sizeof *cases; c++) {
        const run_case *rc = &cases[c];
        int failures = (int)atomic_load(&ac.failures), failures0 = failures;
        bool completed = false;
        for (int k = 1; k < 200 && !completed; k++) {
            xs_executor *ex = NULL;
            int r = rc->inner == 0   ? xs_exec_sequential(&o, &ex)
                    : rc->inner == 1 ? xs_exec_parallel(&o, &ex)
                    : rc->inner == 2 ? xs_exec_parallel_all(&o, &ex)
                                     : xs_exec_pool(2, &o, &ex);
            ASSERT_EQ(r, 0);
            if (rc->deco)
                ASSERT_EQ(rc->deco(ex, &o, rc->deco == make_rate ? (void *)lim : (void *)&rs.src,
                                   &ex),
                          0);
            _Atomic int runs = 0;
            for (size_t i = 0; i < rc->n; i++)
                acts[i] = (xs_action){act_count, &runs, i % 2 ? NULL : rc->action_name};
            xs_alloc_counter_fail_at(&ac, k, 0);
            r = xs_exec_run(ex, bg(), acts, rc->n, rc->with_errs ? errs : NULL);
            bool failed = atomic_load(&ac.failures) > failures;
            xs_alloc_counter_fail_at(&ac, 0, 0);
            if (failed) {
                failures = (int)atomic_load(&ac.failures);
                if (!EXPECT_EQ(r, XS_ENOMEM))
                    printf("    %s, allocation %d\n", rc->name, k);
                if (rc->with_errs) {
                    bool seen = false;
                    for (size_t i = 0; i < rc->n; i++)
                        seen |= errs[i] == XS_ENOMEM;
                    EXPECT(seen);
                }
            } else {
                EXPECT_EQ(r, 0);
                EXPECT_EQ(atomic_load(&runs), (int)rc->n);
                completed = true;
            }
            /* the executor still works, then everything goes */
            atomic_store(&runs, 0);
            EXPECT_EQ(xs_exec_run(ex, bg(), acts, rc->n, NULL), 0);
            EXPECT_EQ(atomic_load(&runs), (int)rc->n);
            EXPECT_EQ(xs_exec_free(ex), 0);
            if (!EXPECT_EQ(atomic_load(&ac.live_bytes), 0))
                printf("    %s, allocation %d\n", rc->name, k);
        }
        EXPECT(completed);
        printf("    %s: %d allocations failed in turn\n", rc->name,
               (int)atomic_load(&ac.failures) - failures0);
    }
    xs_allocator_set_default(prev);
    xs_rate_free(lim);
    rs_destroy(&rs);
}
