/* Tests for errgroup, mirroring Go's errgroup_test.go, plus our additions. */
#include <sched.h>

#include <xsync/context.h>
#include <xsync/group.h>
#include <xsync/pool.h>
#include <xsync/time.h>

#include "harness.h"

#define E1 101
#define E2 102
#define EDOOM 666

static int return_arg(xs_ctx *ctx, void *arg)
{
    (void)ctx;
    return (int)(intptr_t)arg;
}

/* Go's TestZeroGroup: a plain group, wait after each go. */
TEST(group_plain_wait_returns_first_error_from_then_on)
{
    static const int cases[][3] = {{0, 0, 0}, {E1, 0, 0}, {E1, 0, E2}, {0, E1, E2}};
    static const int lens[] = {1, 1, 3, 3};
    for (int c = 0; c < 4; c++) {
        xs_group *g;
        ASSERT_EQ(xs_group_new(NULL, NULL, &g, NULL), 0);
        int first = 0;
        for (int i = 0; i < lens[c]; i++) {
            int e = cases[c][i];
            ASSERT_EQ(xs_group_go(g, return_arg, (void *)(intptr_t)e), 0);
            if (!first)
                first = e;
            EXPECT_EQ(xs_group_wait(g), first);
        }
        EXPECT_EQ(xs_group_free(g), 0);
    }
}

/* Go's TestWithContext. */
TEST(group_with_context_cancels_with_first_error_as_cause)
{
    static const int cases[][2] = {{0, 0}, {0, 0}, {EDOOM, 0}, {0, EDOOM}};
    static const int lens[] = {0, 1, 1, 2};
    for (int c = 0; c < 4; c++) {
        xs_ctx *parent, *ctx;
        xs_group *g;
        ASSERT_EQ(xs_ctx_with_cancel(xs_ctx_background(), &parent), 0);
        ASSERT_EQ(xs_group_new(parent, NULL, &g, &ctx), 0);
        EXPECT_PTR_EQ(xs_group_ctx(g), ctx);
        EXPECT(!xs_ctx_done(ctx));
        int want = 0;
        for (int i = 0; i < lens[c]; i++) {
            ASSERT_EQ(xs_group_go(g, return_arg, (void *)(intptr_t)cases[c][i]), 0);
            if (cases[c][i])
                want = cases[c][i];
        }
        EXPECT_EQ(xs_group_wait(g), want);
        EXPECT(xs_ctx_done(ctx));
        EXPECT_EQ(xs_ctx_err(ctx), XS_ECANCELED);
        EXPECT_EQ(xs_ctx_cause(ctx), want ? want : XS_ECANCELED);
        EXPECT(!xs_ctx_done(parent)); /* the parent is not affected */
        EXPECT_EQ(xs_group_free(g), 0);
        xs_ctx_release(parent);
    }
}

/* Tasks that block until a gate context is cancelled (a library wait). */
static int gated(xs_ctx *ctx, void *arg)
{
    (void)ctx;
    xs_ctx_wait(arg, XS_FOREVER);
    return 0;
}

static xs_ctx *new_gate(void)
{
    xs_ctx *c = NULL;
    xs_ctx_with_cancel(xs_ctx_background(), &c);
    return c;
}

/* Tasks not yet started still hold the pointer: release after wait. */
static void open_gate(xs_ctx *c)
{
    xs_ctx_cancel(c, 0);
}

/* Go's TestTryGo, plus limit 0 making go fail at once. */
TEST(group_try_go_respects_limit_and_limit_zero_refuses_everything)
{
    xs_group *g;
    ASSERT_EQ(xs_group_new(NULL, NULL, &g, NULL), 0);
    ASSERT_EQ(xs_group_set_limit(g, 42), 0);
    xs_ctx *gate = new_gate();
    for (int i = 0; i < 42; i++)
        ASSERT_EQ(xs_group_try_go(g, gated, gate), 0);
    EXPECT_EQ(xs_group_try_go(g, gated, gate), XS_EAGAIN);
    open_gate(gate);
    EXPECT_EQ(xs_group_wait(g), 0);
    xs_ctx_release(gate);

    gate = new_gate();
    EXPECT_EQ(xs_group_try_go(g, gated, gate), 0);
    open_gate(gate);
    EXPECT_EQ(xs_group_wait(g), 0);
    xs_ctx_release(gate);

    ASSERT_EQ(xs_group_set_limit(g, 1), 0);
    gate = new_gate();
    EXPECT_EQ(xs_group_try_go(g, gated, gate), 0);
    EXPECT_EQ(xs_group_try_go(g, gated, gate), XS_EAGAIN);
    open_gate(gate);
    EXPECT_EQ(xs_group_wait(g), 0);
    xs_ctx_release(gate);

    ASSERT_EQ(xs_group_set_limit(g, 0), 0);
    for (int i = 0; i < 1 << 10; i++)
        ASSERT_EQ(xs_group_try_go(g, return_arg, NULL), XS_ELIMIT);
    int64_t t0 = th_now_ns();
    EXPECT_EQ(xs_group_go(g, return_arg, NULL), XS_ELIMIT);
    EXPECT_LT(th_now_ns() - t0, 1000000000LL);
    EXPECT_EQ(xs_group_wait(g), 0);
    EXPECT_EQ(xs_group_free(g), 0);
}

/* Go's TestGoLimit: never more than the limit active at once. */
typedef struct hw {
    _Atomic int active, high, ran;
} hw;

static int limited(xs_ctx *ctx, void *arg)
{
    (void)ctx;
    hw *h = arg;
    int now = atomic_fetch_add(&h->active, 1) + 1;
    int high = atomic_load(&h->high);
    while (now > high && !atomic_compare_exchange_weak(&h->high, &high, now))
        ;
    for (int i = 0; i < 10; i++)
        sched_yield(); /* let overlaps happen */
    atomic_fetch_sub(&h->active, 1);
    atomic_fetch_add(&h->ran, 1);
    return 0;
}

TEST(group_limit_10_never_more_than_10_active)
{
    xs_group *g;
    ASSERT_EQ(xs_group_new(NULL, NULL, &g, NULL), 0);
    ASSERT_EQ(xs_group_set_limit(g, 10), 0);
    hw h = {0};
    for (int i = 0; i < 1025; i++)
        ASSERT_EQ(xs_group_go(g, limited, &h), 0);
    EXPECT_EQ(xs_group_wait(g), 0);
    EXPECT_EQ(atomic_load(&h.ran), 1025);
    EXPECT_LE(atomic_load(&h.high), 10);
    EXPECT_GE(atomic_load(&h.high), 1);
    EXPECT_EQ(xs_group_free(g), 0);

    /* With go helping: the limit holds just the same. */
    xs_group_opts oh = {.limit = 10, .flags = XS_GROUP_GO_HELPS};
    ASSERT_EQ(xs_group_new(NULL, &oh, &g, NULL), 0);
    hw hh = {0};
    for (int i = 0; i < 1025; i++)
        ASSERT_EQ(xs_group_go(g, limited, &hh), 0);
    EXPECT_EQ(xs_group_wait(g), 0);
    EXPECT_EQ(atomic_load(&hh.ran), 1025);
    EXPECT_LE(atomic_load(&hh.high), 10);
    EXPECT_EQ(xs_group_free(g), 0);

    /* The same through the options. */
    xs_group_opts o = {.limit = 3};
    ASSERT_EQ(xs_group_new(NULL, &o, &g, NULL), 0);
    hw h3 = {0};
    for (int i = 0; i < 200; i++)
        ASSERT_EQ(xs_group_go(g, limited, &h3), 0);
    EXPECT_EQ(xs_group_wait(g), 0);
    EXPECT_EQ(atomic_load(&h3.ran), 200);
    EXPECT_LE(atomic_load(&h3.high), 3);
    EXPECT_EQ(xs_group_free(g), 0);
}

TEST(group_set_limit_while_active_is_ebusy_and_keeps_the_limit)
{
    xs_group *g;
    ASSERT_EQ(xs_group_new(NULL, NULL, &g, NULL), 0);
    ASSERT_EQ(xs_group_set_limit(g, 2), 0);
    xs_ctx *gate = new_gate();
    ASSERT_EQ(xs_group_go(g, gated, gate), 0);
    EXPECT_EQ(xs_group_set_limit(g, 5), XS_EBUSY);
    EXPECT_EQ(xs_group_set_limit(g, -1), XS_EBUSY);
    EXPECT_EQ(xs_group_free(g), XS_EBUSY); /* and free refuses too */
    /* Still limit 2: one more fits, the next does not. */
    EXPECT_EQ(xs_group_try_go(g, gated, gate), 0);
    EXPECT_EQ(xs_group_try_go(g, gated, gate), XS_EAGAIN);
    open_gate(gate);
    EXPECT_EQ(xs_group_wait(g), 0);
    xs_ctx_release(gate);
    EXPECT_EQ(xs_group_set_limit(g, -1), 0);
    EXPECT_EQ(xs_group_set_limit(g, XS_GROUP_MAX_LIMIT + 1), XS_EINVAL);
    EXPECT_EQ(xs_group_free(g), 0);
}

/* A task may call go on its own group; wait covers those too. */
typedef struct tree {
    xs_group *g;
    _Atomic int ran;
} tree;

static int tree_node(xs_ctx *ctx, void *arg);

static tree the_tree;

static int tree_node(xs_ctx *ctx, void *arg)
{
    (void)ctx;
    int depth = (int)(intptr_t)arg;
    atomic_fetch_add(&the_tree.ran, 1);
    if (depth < 6)
        for (int i = 0; i < 3; i++)
            if (xs_group_go(the_tree.g, tree_node, (void *)(intptr_t)(depth + 1)) != 0)
                return 1;
    return 0;
}

TEST(group_task_may_go_on_its_own_group_and_wait_covers_it)
{
    ASSERT_EQ(xs_group_new(NULL, NULL, &the_tree.g, NULL), 0);
    ASSERT_EQ(xs_group_go(the_tree.g, tree_node, (void *)(intptr_t)0), 0);
    EXPECT_EQ(xs_group_wait(the_tree.g), 0);
    EXPECT_EQ(atomic_load(&the_tree.ran), 1 + 3 + 9 + 27 + 81 + 243 + 729);
    EXPECT_EQ(xs_group_free(the_tree.g), 0);

}

/* A task that calls go on its own full group waits (helping or lending its
 * slot) for its earlier task, even on a 1-worker pool. */
static xs_group *own_g;
static _Atomic int own_ran;

static int own_leaf(xs_ctx *ctx, void *arg)
{
    (void)ctx;
    (void)arg;
    atomic_fetch_add(&own_ran, 1);
    return 0;
}

static int own_root(xs_ctx *ctx, void *arg)
{
    (void)ctx;
    (void)arg;
    for (int i = 0; i < 5; i++)
        if (xs_group_go(own_g, own_leaf, NULL) != 0)
            return 1;
    atomic_fetch_add(&own_ran, 1);
    return 0;
}

TEST(group_task_blocked_in_go_on_its_own_full_group_does_not_stall_pool)
{
    xs_pool_opts po = {.workers = 1};
    xs_pool *p;
    ASSERT_EQ(xs_pool_new(&po, &p), 0);
    xs_group_opts o = {.pool = p, .limit = 2};
    ASSERT_EQ(xs_group_new(NULL, &o, &own_g, NULL), 0);
    ASSERT_EQ(xs_group_go(own_g, own_root, NULL), 0);
    EXPECT_EQ(xs_group_wait(own_g), 0);
    EXPECT_EQ(atomic_load(&own_ran), 6);
    EXPECT_EQ(xs_group_free(own_g), 0);
    EXPECT_EQ(xs_pool_free(p), 0);
}

/* Collect mode: every task runs, each error at its index. */
typedef struct collect {
    _Atomic int ran;
} collect;

static collect coll;

static int fail_3_and_7(xs_ctx *ctx, void *arg)
{
    int i = (int)(intptr_t)arg;
    atomic_fetch_add(&coll.ran, 1);
    EXPECT(!xs_ctx_done(ctx)); /* errors do not cancel in collect mode */
    return i == 3 ? 1003 : i == 7 ? 1007 : 0;
}

TEST(group_collect_mode_runs_all_and_reports_errors_by_index)
{
    xs_group *g;
    xs_group_opts o = {.flags = XS_GROUP_COLLECT, .limit = 2};
    ASSERT_EQ(xs_group_new(NULL, &o, &g, NULL), 0);
    for (int i = 0; i < 10; i++)
        ASSERT_EQ(xs_group_go(g, fail_3_and_7, (void *)(intptr_t)i), 0);
    int errs[12];
    for (int i = 0; i < 12; i++)
        errs[i] = -12345;
    EXPECT_EQ(xs_group_wait_errs(g, errs, 12), 1003);
    EXPECT_EQ(atomic_load(&coll.ran), 10);
    for (int i = 0; i < 12; i++)
        EXPECT_EQ(errs[i], i == 3 ? 1003 : i == 7 ? 1007 : 0);
    /* A second round starts its indexes at 0 again. */
    ASSERT_EQ(xs_group_go(g, return_arg, (void *)(intptr_t)0), 0);
    ASSERT_EQ(xs_group_go(g, return_arg, (void *)(intptr_t)55), 0);
    EXPECT_EQ(xs_group_wait_errs(g, errs, 2), 55);
    EXPECT_EQ(errs[0], 0);
    EXPECT_EQ(errs[1], 55);
    EXPECT_EQ(xs_group_free(g), 0);
}

/* Stop-on-failure: after the first error go refuses without running. */
static _Atomic int stop_ran;

static int count_and_return(xs_ctx *ctx, void *arg)
{
    (void)ctx;
    atomic_fetch_add(&stop_ran, 1);
    return (int)(intptr_t)arg;
}

TEST(group_stop_on_failure_refuses_new_tasks_after_first_error)
{
    xs_group *g;
    xs_ctx *ctx;
    xs_group_opts o = {.flags = XS_GROUP_STOP_ON_FAILURE};
    ASSERT_EQ(xs_group_new(NULL, &o, &g, &ctx), 0);
    ASSERT_EQ(xs_group_go(g, count_and_return, (void *)(intptr_t)0), 0);
    ASSERT_EQ(xs_group_go(g, count_and_return, (void *)(intptr_t)E1), 0);
    /* The failure is observable through the context, before wait. */
    int64_t end = th_now_ns() + 10 * 1000000000LL;
    while ((!xs_ctx_done(ctx) || atomic_load(&stop_ran) < 2) && th_now_ns() < end)
        sched_yield();
    ASSERT(xs_ctx_done(ctx));
    int before = atomic_load(&stop_ran);
    EXPECT_EQ(xs_group_go(g, count_and_return, (void *)(intptr_t)0), XS_ECANCELED);
    EXPECT_EQ(xs_group_try_go(g, count_and_return, (void *)(intptr_t)0), XS_ECANCELED);
    EXPECT_EQ(xs_group_wait(g), E1);
    EXPECT_EQ(atomic_load(&stop_ran), before);
    EXPECT_EQ(atomic_load(&stop_ran), 2);
    EXPECT_EQ(xs_group_go(g, count_and_return, (void *)(intptr_t)0), XS_ECANCELED);
    EXPECT_EQ(xs_group_free(g), 0);

    /* Without the option, go keeps starting tasks after a failure (Go). */
    ASSERT_EQ(xs_group_new(NULL, NULL, &g, NULL), 0);
    ASSERT_EQ(xs_group_go(g, count_and_return, (void *)(intptr_t)E1), 0);
    EXPECT_EQ(xs_group_wait(g), E1);
    EXPECT_EQ(xs_group_go(g, count_and_return, (void *)(intptr_t)0), 0);
    EXPECT_EQ(xs_group_wait(g), E1);
    EXPECT_EQ(xs_group_free(g), 0);
}

/* The first error cancels the derived context while others are blocked in
 * library waits on it; they return promptly. */
typedef struct blocked {
    _Atomic int waiting, woke_canceled;
} blocked;

static blocked blk;

static int wait_on_group_ctx(xs_ctx *ctx, void *arg)
{
    (void)arg;
    atomic_fetch_add(&blk.waiting, 1);
    if (xs_ctx_wait(ctx, XS_FOREVER) == XS_ECANCELED)
        atomic_fetch_add(&blk.woke_canceled, 1);
    return 0;
}

TEST(group_first_error_wakes_tasks_blocked_on_the_context_promptly)
{
    xs_pool_opts po = {.workers = 2};
    xs_pool *p;
    ASSERT_EQ(xs_pool_new(&po, &p), 0);
    xs_group *g;
    xs_ctx *ctx;
    xs_group_opts o = {.pool = p};
    ASSERT_EQ(xs_group_new(NULL, &o, &g, &ctx), 0);
    for (int i = 0; i < 50; i++)
        ASSERT_EQ(xs_group_go(g, wait_on_group_ctx, NULL), 0);
    int64_t end = th_now_ns() + 20 * 1000000000LL;
    while (atomic_load(&blk.waiting) < 50 && th_now_ns() < end)
        sched_yield();
    ASSERT_EQ(atomic_load(&blk.waiting), 50);
    int64_t t0 = th_now_ns();
    ASSERT_EQ(xs_group_go(g, return_arg, (void *)(intptr_t)EDOOM), 0);
    EXPECT_EQ(xs_group_wait(g), EDOOM);
    int64_t took = th_now_ns() - t0;
    printf("    cancel to wait-return: %.3f ms\n", (double)took / 1e6);
    EXPECT_LT(took, 2000000000LL);
    EXPECT_EQ(atomic_load(&blk.woke_canceled), 50);
    EXPECT_EQ(xs_ctx_cause(ctx), EDOOM);
    EXPECT_EQ(xs_group_free(g), 0);
    EXPECT_EQ(xs_pool_free(p), 0);
}

/* ---- bad input and allocation failure ---- */

TEST(group_bad_input_is_einval)
{
    xs_group *g = NULL;
    EXPECT_EQ(xs_group_new(NULL, NULL, NULL, NULL), XS_EINVAL);
    xs_group_opts o = {.limit = -1};
    EXPECT_EQ(xs_group_new(NULL, &o, &g, NULL), XS_EINVAL);
    o = (xs_group_opts){.flags = 1u << 7};
    EXPECT_EQ(xs_group_new(NULL, &o, &g, NULL), XS_EINVAL);
    EXPECT_PTR_EQ(g, NULL);
    EXPECT_EQ(xs_group_go(NULL, return_arg, NULL), XS_EINVAL);
    EXPECT_EQ(xs_group_try_go(NULL, return_arg, NULL), XS_EINVAL);
    EXPECT_EQ(xs_group_set_limit(NULL, 1), XS_EINVAL);
    EXPECT_EQ(xs_group_wait(NULL), XS_EINVAL);
    EXPECT_EQ(xs_group_free(NULL), 0);
    EXPECT_PTR_EQ(xs_group_ctx(NULL), NULL);
    ASSERT_EQ(xs_group_new(NULL, NULL, &g, NULL), 0);
    EXPECT_EQ(xs_group_go(g, NULL, NULL), XS_EINVAL);
    EXPECT_EQ(xs_group_wait(g), 0);
    EXPECT_EQ(xs_group_free(g), 0);
}

TEST(group_out_of_memory_leaks_nothing_and_leaves_group_usable)
{
    xs_alloc_counter c;
    xs_alloc_counter_init(&c, NULL);
    xs_group_opts o = {.alloc = &c.allocator};
    xs_group *g;
    xs_alloc_counter_fail_at(&c, 1, 0);
    EXPECT_EQ(xs_group_new(NULL, &o, &g, NULL), XS_ENOMEM);
    EXPECT_EQ(atomic_load(&c.live_bytes), 0);
    ASSERT_EQ(xs_group_new(NULL, &o, &g, NULL), 0);
    /* A plain go allocates nothing. */
    int64_t allocs = atomic_load(&c.allocs);
    xs_alloc_counter_fail_at(&c, 1, 1);
    EXPECT_EQ(xs_group_go(g, return_arg, (void *)(intptr_t)0), 0);
    EXPECT_EQ(xs_group_wait(g), 0);
    xs_alloc_counter_fail_at(&c, 0, 0);
    EXPECT_EQ(atomic_load(&c.allocs), allocs);
    EXPECT_EQ(xs_group_free(g), 0);
    EXPECT_EQ(atomic_load(&c.live_bytes), 0);

    /* Collect mode: the first go needs a chunk of result records. */
    o.flags = XS_GROUP_COLLECT;
    ASSERT_EQ(xs_group_new(NULL, &o, &g, NULL), 0);
    xs_alloc_counter_fail_at(&c, 1, 0);
    EXPECT_EQ(xs_group_go(g, return_arg, (void *)(intptr_t)E1), XS_ENOMEM);
    EXPECT_EQ(xs_group_set_limit(g, 3), 0); /* nothing active: the failed go left nothing */
    EXPECT_EQ(xs_group_go(g, return_arg, (void *)(intptr_t)E2), 0);
    int errs[2] = {-1, -1};
    EXPECT_EQ(xs_group_wait_errs(g, errs, 2), E2);
    EXPECT_EQ(errs[0], E2); /* the failed go took no index */
    EXPECT_EQ(errs[1], 0);
    EXPECT_EQ(xs_group_free(g), 0);
    EXPECT_EQ(atomic_load(&c.live_bytes), 0);
}

/* Stress: many outside threads starting tasks on one group at once, with
 * a limit. */
typedef struct stress {
    xs_group *g;
    _Atomic int ran;
} stress;

static stress st;

static int stress_leaf(xs_ctx *ctx, void *arg)
{
    (void)ctx;
    (void)arg;
    atomic_fetch_add(&st.ran, 1);
    return 0;
}

static void *stress_thread(void *arg)
{
    (void)arg;
    for (int i = 0; i < 2000; i++)
        if (xs_group_go(st.g, stress_leaf, (void *)(intptr_t)(i & 1)) != 0)
            atomic_fetch_add(&st.ran, 1000000);
    return NULL;
}

TEST(group_stress_concurrent_go_with_limit)
{
    xs_group_opts o = {.limit = 8};
    ASSERT_EQ(xs_group_new(NULL, &o, &st.g, NULL), 0);
    pthread_t th[4];
    for (int i = 0; i < 4; i++)
        pthread_create(&th[i], NULL, stress_thread, NULL);
    for (int i = 0; i < 4; i++)
        pthread_join(th[i], NULL);
    EXPECT_EQ(xs_group_wait(st.g), 0);
    EXPECT_EQ(atomic_load(&st.ran), 4 * 2000);
    EXPECT_EQ(xs_group_free(st.g), 0);
}

/* Stress: the hand-off of a blocked go's task to the task that ends next.
 * Small limits on a 2-worker pool, many rounds, one and several goers,
 * plain and collect mode: every task runs exactly once, collect indexes
 * are a permutation of 0..n-1, and no go or wait is left parked (a lost
 * wake-up hangs the test, which the watchdog fails by name). */
typedef struct handoff {
    xs_group *g;
    int per_thread;
    _Atomic int ran;
    _Atomic int bad;
    _Atomic int active;
    _Atomic int seq; /* collect mode: each task returns a distinct seq + 1 */
    int lim;
    bool collect;
} handoff;

static int handoff_task(xs_ctx *ctx, void *arg)
{
    (void)ctx;
    handoff *h = arg;
    int a = atomic_fetch_add(&h->active, 1) + 1;
    if (a > h->lim)
        atomic_fetch_add(&h->bad, 1);
    /* Some tasks run a while, so that the goers' waits go all the way to
     * parking, with the next task ending at a random moment of it. */
    int r = atomic_fetch_add(&h->ran, 1);
    if (r % 7 == 0) {
        int64_t until = xs_now() + (r * 2654435761u) % (40 * XS_USEC);
        while (xs_now() < until)
            ;
    }
    atomic_fetch_sub(&h->active, 1);
    return h->collect ? atomic_fetch_add(&h->seq, 1) + 1 : 0;
}

static void *handoff_goer(void *arg)
{
    handoff *h = arg;
    for (int i = 0; i < h->per_thread; i++)
        if (xs_group_go(h->g, handoff_task, h) != 0)
            atomic_fetch_add(&h->bad, 1);
    return NULL;
}

TEST_T(group_stress_blocked_go_hands_its_task_to_the_next_ending_task, 120)
{
    xs_pool_opts po = {.workers = 2};
    xs_pool *p;
    ASSERT_EQ(xs_pool_new(&po, &p), 0);
#ifdef TH_TSAN
    int rounds = 40; /* TSan runs this 10-20x slower; the scenario is the same */
#else
    int rounds = 200;
#endif
    for (int round = 0; round < rounds; round++) {
        unsigned flags = round & 1 ? XS_GROUP_COLLECT : 0;
        int goers = 1 + round % 3, lim = 1 + (round / 2) % 2;
        handoff h = {.per_thread = 600, .lim = lim, .collect = flags != 0};
        xs_group_opts o = {.pool = p, .limit = lim, .flags = flags};
        ASSERT_EQ(xs_group_new(NULL, &o, &h.g, NULL), 0);
        pthread_t th[3];
        for (int i = 0; i < goers; i++)
            ASSERT_EQ(pthread_create(&th[i], NULL, handoff_goer, &h), 0);
        for (int i = 0; i < goers; i++)
            pthread_join(th[i], NULL);
        int n = goers * h.per_thread;
        static int errs[3 * 600 + 1];
        static bool seen[3 * 600 + 1];
        errs[n] = -1;
        int e = xs_group_wait_errs(h.g, errs, (size_t)n + 1);
        EXPECT_EQ(atomic_load(&h.ran), n);
        EXPECT_EQ(atomic_load(&h.bad), 0);
        if (!flags) {
            EXPECT_EQ(e, 0);
            EXPECT_EQ(errs[n], -1); /* left alone outside collect mode */
        } else {
            /* n results at indexes 0..n-1, a permutation of 1..n; wait
             * returns index 0's; nothing past them. */
            EXPECT_EQ(e, errs[0]);
            EXPECT_EQ(errs[n], 0);
            memset(seen, 0, sizeof seen);
            int dup = 0;
            for (int i = 0; i < n; i++) {
                int v = errs[i];
                if (v < 1 || v > n || seen[v])
                    dup++;
                else
                    seen[v] = true;
            }
            EXPECT_EQ(dup, 0);
        }
        EXPECT_EQ(xs_group_free(h.g), 0);
    }
    EXPECT_EQ(xs_pool_free(p), 0);
}

/* A go returns once its task has started (Go's Go()), even while other
 * goers contend for the same full limit: a task that waits for what its
 * goer does after go returns never deadlocks.  The goer A loops
 * "go(a task that waits for gate i); open gate i" while two threads keep
 * starting short tasks on the same limit-1 group.  A lost wake-up of A
 * (its task taken, A asleep) hangs the test. */
typedef struct contend {
    xs_group *g;
    _Atomic int stop;
} contend;

static int wait_gate(xs_ctx *ctx, void *arg)
{
    (void)ctx;
    xs_ctx *gate = arg;
    xs_ctx_wait(gate, XS_FOREVER);
    xs_ctx_release(gate); /* the task's reference */
    return 0;
}

static int short_task(xs_ctx *ctx, void *arg)
{
    (void)ctx;
    (void)arg;
    return 0;
}

static void *contend_goer(void *arg)
{
    contend *c = arg;
    while (!atomic_load(&c->stop))
        if (xs_group_go(c->g, short_task, NULL) != 0)
            break;
    return NULL;
}

TEST_T(group_go_returns_once_its_task_started_while_others_contend, 120)
{
    xs_pool_opts po = {.workers = 2};
    xs_pool *p;
    ASSERT_EQ(xs_pool_new(&po, &p), 0);
#ifdef TH_TSAN
    int iters = 3000; /* TSan runs this 10-20x slower; the scenario is the same */
#else
    int iters = 30000;
#endif
    for (int round = 0; round < 2; round++) {
        contend c = {0};
        xs_group_opts o = {.pool = p, .limit = 1};
        ASSERT_EQ(xs_group_new(NULL, &o, &c.g, NULL), 0);
        pthread_t th[2];
        for (int i = 0; i < 2; i++)
            ASSERT_EQ(pthread_create(&th[i], NULL, contend_goer, &c), 0);
        int bad = 0;
        for (int i = 0; i < iters / 2; i++) {
            xs_ctx *gate;
            ASSERT_EQ(xs_ctx_with_cancel(xs_ctx_background(), &gate), 0);
            xs_ctx_retain(gate);
            if (xs_group_go(c.g, wait_gate, gate) != 0) {
                bad++;
                xs_ctx_release(gate);
            }
            xs_ctx_cancel(gate, 0);
            xs_ctx_release(gate);
        }
        atomic_store(&c.stop, 1);
        for (int i = 0; i < 2; i++)
            pthread_join(th[i], NULL);
        EXPECT_EQ(xs_group_wait(c.g), 0);
        EXPECT_EQ(bad, 0);
        EXPECT_EQ(xs_group_free(c.g), 0);
    }
    EXPECT_EQ(xs_pool_free(p), 0);
}

/* Tasks handed from a blocked go to the task that ends run one after
 * another on that task's thread; the chain must stop at the next task
 * boundary once other work waits in the pool, or a steady goer would starve
 * it.  One worker, limit 1, a goer that never stops: a plain task
 * submitted meanwhile runs after a few group tasks, not after the goer. */
typedef struct chain {
    xs_group *g;
    _Atomic int started; /* group tasks started */
    _Atomic int at_plain; /* `started` when the plain task ran; -1: not yet */
    th_event plain_ran;
} chain;

static int chain_task(xs_ctx *ctx, void *arg)
{
    (void)ctx;
    chain *c = arg;
    atomic_fetch_add(&c->started, 1);
    /* Long enough for the goer to wake and offer the next task before
     * this one ends, so that the hand-off chain never breaks by itself. */
    int64_t until = xs_now() + XS_MSEC;
    while (xs_now() < until)
        ;
    return 0;
}

static void plain_task(void *arg)
{
    chain *c = arg;
    atomic_store(&c->at_plain, atomic_load(&c->started));
    th_event_signal(&c->plain_ran);
}

TEST_T(group_chain_of_handed_off_tasks_lets_queued_pool_work_run, 60)
{
    xs_pool_opts po = {.workers = 1, .watchdog = -1};
    xs_pool *p;
    ASSERT_EQ(xs_pool_new(&po, &p), 0);
    chain c = {.at_plain = -1};
    th_event_init(&c.plain_ran);
    xs_group_opts o = {.pool = p, .limit = 1};
    ASSERT_EQ(xs_group_new(NULL, &o, &c.g, NULL), 0);
    /* Get a chain going: the goer blocks on the full limit from now on. */
    for (int i = 0; i < 20; i++)
        ASSERT_EQ(xs_group_go(c.g, chain_task, &c), 0);
    int before = atomic_load(&c.started);
    ASSERT_EQ(xs_pool_submit(p, plain_task, &c), 0);
    for (int i = 0; i < 1000 && atomic_load(&c.at_plain) < 0; i++)
        ASSERT_EQ(xs_group_go(c.g, chain_task, &c), 0);
    EXPECT(th_event_wait(&c.plain_ran, 1, 30000));
    EXPECT_LE(atomic_load(&c.at_plain) - before, 3);
    EXPECT_EQ(xs_group_wait(c.g), 0);
    EXPECT_EQ(xs_group_free(c.g), 0);
    EXPECT_EQ(xs_pool_free(p), 0);
    th_event_destroy(&c.plain_ran);
}

/* Stress: set_limit racing goers.  set_limit succeeds only at the moments
 * nothing is active, so goers that read an older limit must never sleep
 * under it nor hand their task over twice: every task runs exactly once
 * and every go returns. */
typedef struct relimit {
    xs_group *g;
    _Atomic int ran, stop, changed;
} relimit;

static int relimit_task(xs_ctx *ctx, void *arg)
{
    (void)ctx;
    relimit *r = arg;
    atomic_fetch_add(&r->ran, 1);
    return 0;
}

static void *relimit_goer(void *arg)
{
    relimit *r = arg;
    for (int i = 0; i < 3000; i++)
        if (xs_group_go(r->g, relimit_task, r) != 0)
            atomic_fetch_add(&r->ran, 1000000);
    return NULL;
}

static void *relimit_setter(void *arg)
{
    relimit *r = arg;
    for (unsigned i = 0; !atomic_load(&r->stop); i++)
        if (xs_group_set_limit(r->g, 1 + (int)(i % 4)) == 0)
            atomic_fetch_add(&r->changed, 1);
    return NULL;
}

TEST_T(group_stress_set_limit_races_goers, 120)
{
    xs_pool_opts po = {.workers = 2};
    xs_pool *p;
    ASSERT_EQ(xs_pool_new(&po, &p), 0);
    relimit r = {0};
    xs_group_opts o = {.pool = p, .limit = 1};
    ASSERT_EQ(xs_group_new(NULL, &o, &r.g, NULL), 0);
    pthread_t set, go[3];
    ASSERT_EQ(pthread_create(&set, NULL, relimit_setter, &r), 0);
    for (int i = 0; i < 3; i++)
        ASSERT_EQ(pthread_create(&go[i], NULL, relimit_goer, &r), 0);
    for (int i = 0; i < 3; i++)
        pthread_join(go[i], NULL);
    atomic_store(&r.stop, 1);
    pthread_join(set, NULL);
    EXPECT_EQ(xs_group_wait(r.g), 0);
    EXPECT_EQ(atomic_load(&r.ran), 3 * 3000);
    printf("    the limit changed %d times meanwhile\n", atomic_load(&r.changed));
    EXPECT_EQ(xs_group_free(r.g), 0);
    EXPECT_EQ(xs_pool_free(p), 0);
}

/* Stress: cancellation racing completion.  Many rounds of a group whose
 * tasks either fail with their own code, wait on the group's context, or
 * return at once; wait must return one of the failures (or 0 if none) and
 * the context's cause must equal it. */
static int race_task(xs_ctx *ctx, void *arg)
{
    int kind = (int)(intptr_t)arg;
    if (kind >= 1000)
        return kind; /* a failure with its own code */
    if (kind == 1)
        xs_ctx_wait(ctx, XS_FOREVER);
    return 0;
}

TEST(group_stress_cancel_races_completion)
{
    xs_pool_opts po = {.workers = 2};
    xs_pool *p;
    ASSERT_EQ(xs_pool_new(&po, &p), 0);
    uint32_t rng = 12345;
    for (int round = 0; round < 300; round++) {
        xs_group *g;
        xs_ctx *ctx;
        xs_group_opts o = {.pool = p};
        ASSERT_EQ(xs_group_new(NULL, &o, &g, &ctx), 0);
        int fails = 0, n = 1 + (int)(rng % 40);
        bool has_fail = false;
        for (int i = 0; i < n; i++) {
            rng = rng * 1103515245u + 12345u;
            int kind = (int)((rng >> 16) % 4);
            if (kind == 3) {
                kind = 1000 + i;
                fails++;
                has_fail = true;
            }
            ASSERT_EQ(xs_group_go(g, race_task, (void *)(intptr_t)kind), 0);
        }
        if (!has_fail) /* tasks blocked on ctx need somebody to fail */
            ASSERT_EQ(xs_group_go(g, race_task, (void *)(intptr_t)(1000 + n)), 0);
        int e = xs_group_wait(g);
        EXPECT_GE(e, 1000);
        EXPECT_LE(e, 1000 + n);
        EXPECT_EQ(xs_ctx_cause(ctx), e);
        EXPECT_EQ(xs_group_free(g), 0);
        (void)fails;
    }
    EXPECT_EQ(xs_pool_free(p), 0);
}

/*
 * go on a full group must not run another of the group's tasks in the
 * caller: that task may wait for what the caller does after go returns,
 * while in Go another task finishing would free the slot.  Here X frees the
 * slot once the busy worker gets to it; A waits for the caller's gate.
 */
typedef struct nohelp {
    th_event busy_started;
    xs_ctx *gate;
    _Atomic int a_timed_out;
} nohelp;

static nohelp nh;

static void busy_100ms(void *arg)
{
    (void)arg;
    th_event_signal(&nh.busy_started);
    int64_t end = th_now_ns() + 100 * 1000000LL;
    while (th_now_ns() < end)
        sched_yield();
}

static int task_x(xs_ctx *ctx, void *arg)
{
    (void)ctx;
    (void)arg;
    return 0;
}

static int task_a(xs_ctx *ctx, void *arg)
{
    (void)ctx;
    (void)arg;
    if (xs_ctx_wait(nh.gate, 3 * XS_SEC) == 0)
        atomic_store(&nh.a_timed_out, 1);
    return 0;
}

TEST(group_go_on_full_limit_never_runs_a_task_in_the_caller)
{
    th_event_init(&nh.busy_started);
    nh.gate = new_gate();
    xs_pool_opts po = {.workers = 1, .watchdog = -1};
    xs_pool *p;
    ASSERT_EQ(xs_pool_new(&po, &p), 0);
    ASSERT_EQ(xs_pool_submit(p, busy_100ms, NULL), 0);
    ASSERT(th_event_wait(&nh.busy_started, 1, 10000));
    xs_group *g;
    xs_group_opts o = {.pool = p, .limit = 2};
    ASSERT_EQ(xs_group_new(NULL, &o, &g, NULL), 0);
    ASSERT_EQ(xs_group_go(g, task_x, NULL), 0);
    ASSERT_EQ(xs_group_go(g, task_a, NULL), 0);
    int64_t t0 = th_now_ns();
    EXPECT_EQ(xs_group_go(g, task_x, NULL), 0); /* waits for X, not for A */
    EXPECT_LT(th_now_ns() - t0, 2 * XS_SEC);
    open_gate(nh.gate);
    EXPECT_EQ(xs_group_wait(g), 0);
    EXPECT_EQ(atomic_load(&nh.a_timed_out), 0);
    EXPECT_EQ(xs_group_free(g), 0);
    EXPECT_EQ(xs_pool_free(p), 0);
    xs_ctx_release(nh.gate);
    th_event_destroy(&nh.busy_started);
}

/* A refused go never counts as an active task, not even for a moment. */
static xs_group *refused_group;
static _Atomic int refused_stop;
static _Atomic long refused_attempts;

static int refused_nop(xs_ctx *ctx, void *arg)
{
    (void)ctx;
    (void)arg;
    return 0;
}

static void *refused_spammer(void *arg)
{
    (void)arg;
    while (!atomic_load(&refused_stop)) {
        if (xs_group_go(refused_group, refused_nop, NULL) != XS_ELIMIT)
            atomic_store(&refused_stop, 2); /* limit 0 must refuse every task */
        atomic_fetch_add(&refused_attempts, 1);
    }
    return NULL;
}

TEST(group_refused_go_never_makes_set_limit_busy)
{
    ASSERT_EQ(xs_group_new(xs_ctx_background(), NULL, &refused_group, NULL), 0);
    ASSERT_EQ(xs_group_set_limit(refused_group, 0), 0);
    pthread_t th;
    pthread_create(&th, NULL, refused_spammer, NULL);
    int busy = 0;
    /* until the other thread has been refused 10^5 times meanwhile */
    while (atomic_load(&refused_attempts) < 100000 && atomic_load(&refused_stop) == 0)
        busy += xs_group_set_limit(refused_group, 0) == XS_EBUSY;
    int how = atomic_exchange(&refused_stop, 1);
    pthread_join(th, NULL);
    EXPECT_EQ(busy, 0);
    EXPECT_NE(how, 2);
    EXPECT_EQ(xs_group_wait(refused_group), 0);
    EXPECT_EQ(xs_group_free(refused_group), 0);
}
