/* Tests for the task runtime: issue 4's pool scenarios, plus bad input. */
#include <sys/resource.h>
#include <sys/wait.h>
#include <time.h>

#include <xsync/context.h>
#include <xsync/group.h>
#include <xsync/pool.h>
#include <xsync/semaphore.h>

#include "harness.h"
#include "pool_internal.h"

static xs_pool *new_pool(int workers)
{
    xs_pool_opts o = {.workers = workers};
    xs_pool *p = NULL;
    if (xs_pool_new(&o, &p) != 0)
        return NULL;
    return p;
}

/* Without the watchdog: only library waits and announcements lend slots,
 * so a test that passes on such a pool pins down that mechanism. */
static xs_pool *new_pool_no_watchdog(int workers)
{
    xs_pool_opts o = {.workers = workers, .watchdog = -1};
    xs_pool *p = NULL;
    if (xs_pool_new(&o, &p) != 0)
        return NULL;
    return p;
}

/* ---- 10^6 trivial tasks, each exactly once ---- */

#define MILLION 1000000
#define SPAWNERS 1000

static _Atomic uint8_t ran_flags[MILLION];
static _Atomic long ran_total;
static th_event all_ran;
static xs_pool *million_pool;

static void leaf_task(void *arg)
{
    size_t i = (size_t)(uintptr_t)arg;
    atomic_fetch_add_explicit(&ran_flags[i], 1, memory_order_relaxed);
    if (atomic_fetch_add_explicit(&ran_total, 1, memory_order_acq_rel) + 1 == MILLION)
        th_event_signal(&all_ran);
}

/* Half the tasks come from outside, half from tasks (own deques, stealing). */
static void spawner_task(void *arg)
{
    size_t base = (size_t)(uintptr_t)arg;
    for (size_t k = 1; k < MILLION / SPAWNERS; k++)
        if (xs_pool_submit(million_pool, leaf_task, (void *)(uintptr_t)(base + k)) != 0)
            abort();
    leaf_task(arg);
}

TEST(pool_million_trivial_tasks_run_exactly_once_on_2_workers)
{
    th_event_init(&all_ran);
    million_pool = new_pool(2);
    ASSERT(million_pool);
    for (size_t s = 0; s < SPAWNERS; s++) {
        size_t base = s * (MILLION / SPAWNERS);
        if (s % 2 == 0) {
            ASSERT_EQ(xs_pool_submit(million_pool, spawner_task, (void *)(uintptr_t)base), 0);
        } else {
            for (size_t k = 0; k < MILLION / SPAWNERS; k++)
                ASSERT_EQ(xs_pool_submit(million_pool, leaf_task, (void *)(uintptr_t)(base + k)), 0);
        }
    }
    EXPECT(th_event_wait(&all_ran, 1, 120000));
    EXPECT_EQ(xs_pool_free(million_pool), 0);
    EXPECT_EQ(atomic_load(&ran_total), MILLION);
    long wrong = 0;
    for (size_t i = 0; i < MILLION; i++)
        wrong += atomic_load_explicit(&ran_flags[i], memory_order_relaxed) != 1;
    EXPECT_EQ(wrong, 0);
    th_event_destroy(&all_ran);
}

/* ---- barriers of 100 on a 2-worker pool ---- */

#define PARTIES 100

/* A barrier from library waits: the last to arrive cancels a context the
 * others wait on. */
typedef struct ctx_barrier {
    xs_ctx *ctx;
    _Atomic int arrived;
} ctx_barrier;

typedef struct barrier_run {
    ctx_barrier cb;
    pthread_barrier_t pb;
    int mode; /* 0 ctx, 1 pthread announced, 2 pthread unannounced */
    _Atomic int passed;
    th_event done;
} barrier_run;

static void barrier_task(void *arg)
{
    barrier_run *r = arg;
    if (r->mode == 0) {
        if (atomic_fetch_add(&r->cb.arrived, 1) + 1 == PARTIES)
            xs_ctx_cancel(r->cb.ctx, 0);
        else
            xs_ctx_wait(r->cb.ctx, XS_FOREVER);
    } else if (r->mode == 1) {
        xs_pool_block_begin();
        pthread_barrier_wait(&r->pb);
        xs_pool_block_end();
    } else {
        pthread_barrier_wait(&r->pb);
    }
    atomic_fetch_add(&r->passed, 1);
    th_event_signal(&r->done);
}

static int64_t run_barrier(int mode, int64_t bound_ms)
{
    barrier_run r = {.mode = mode};
    th_event_init(&r.done);
    xs_ctx_with_cancel(xs_ctx_background(), &r.cb.ctx);
    pthread_barrier_init(&r.pb, NULL, PARTIES);
    xs_pool *p = mode == 2 ? new_pool(2) : new_pool_no_watchdog(2);
    if (!p)
        return -1;
    int64_t start = th_now_ns();
    for (int i = 0; i < PARTIES; i++)
        EXPECT_EQ(xs_pool_submit(p, barrier_task, &r), 0);
    bool ok = th_event_wait(&r.done, PARTIES, bound_ms);
    int64_t took = (th_now_ns() - start) / 1000000;
    EXPECT(ok);
    EXPECT_EQ(atomic_load(&r.passed), ok ? PARTIES : atomic_load(&r.passed));
    if (ok) {
        EXPECT_EQ(xs_pool_free(p), 0);
        pthread_barrier_destroy(&r.pb);
        xs_ctx_release(r.cb.ctx);
        th_event_destroy(&r.done);
    } /* else: leak on purpose, the tasks are stuck */
    return ok ? took : -1;
}

TEST(pool_barrier_of_100_from_library_waits_completes_on_2_workers)
{
    EXPECT_GE(run_barrier(0, 20000), 0);
}

TEST(pool_barrier_of_100_pthread_announced_completes_on_2_workers)
{
    EXPECT_GE(run_barrier(1, 20000), 0);
}

/*
 * The documented bound (pool.h): about two watchdog periods per `workers`
 * unannounced blocked tasks ahead — 98 tasks ahead, 2 workers, 10 ms:
 * about 1 s.  Allow 3x that, scaled for sanitizers.
 */
TEST(pool_barrier_of_100_unannounced_pthread_completes_by_watchdog_bound)
{
    const char *s = getenv("XS_TEST_TIMEOUT_SCALE");
    double scale = s && atof(s) > 0 ? atof(s) : 1.0;
    int64_t bound = (int64_t)(3 * 2 * (PARTIES / 2) * 10 * scale);
    int64_t took = run_barrier(2, bound);
    EXPECT_GE(took, 0);
    printf("    unannounced barrier took %lld ms (bound %lld ms)\n", (long long)took, (long long)bound);
}

/* ---- groups of groups of leaves blocking on a semaphore ---- */

typedef struct gog {
    xs_pool *pool;
    xs_sem *sem;
    _Atomic int started, finished;
    th_event done;
} gog;

static int leaf(xs_ctx *ctx, void *arg)
{
    gog *t = arg;
    if (atomic_fetch_add(&t->started, 1) + 1 == 64)
        xs_sem_release(t->sem, 64); /* the last to start frees weight for all */
    int r = xs_sem_acquire(t->sem, ctx, 1);
    if (r)
        return r;
    atomic_fetch_add(&t->finished, 1);
    return xs_sem_release(t->sem, 1);
}

static int mid(xs_ctx *ctx, void *arg)
{
    gog *t = arg;
    xs_group *g;
    xs_group_opts o = {.pool = t->pool};
    if (xs_group_new(ctx, &o, &g, NULL) != 0)
        return 1;
    for (int i = 0; i < 8; i++)
        xs_group_go(g, leaf, t);
    int r = xs_group_wait(g);
    xs_group_free(g);
    return r;
}

static void root(void *arg)
{
    gog *t = arg;
    xs_group *g;
    xs_group_opts o = {.pool = t->pool};
    if (xs_group_new(NULL, &o, &g, NULL) == 0) {
        for (int i = 0; i < 8; i++)
            xs_group_go(g, mid, t);
        EXPECT_EQ(xs_group_wait(g), 0);
        xs_group_free(g);
    }
    th_event_signal(&t->done);
}

TEST(pool_groups_of_groups_of_blocking_leaves_complete_on_2_workers)
{
    gog t = {0};
    th_event_init(&t.done);
    ASSERT_EQ(xs_sem_new(64, NULL, &t.sem), 0);
    ASSERT_EQ(xs_sem_try_acquire(t.sem, 64), 0); /* every leaf must block at first */
    t.pool = new_pool_no_watchdog(2);
    ASSERT(t.pool);
    ASSERT_EQ(xs_pool_submit(t.pool, root, &t), 0);
    EXPECT(th_event_wait(&t.done, 1, 20000));
    EXPECT_EQ(atomic_load(&t.started), 64);
    EXPECT_EQ(atomic_load(&t.finished), 64);
    EXPECT_EQ(xs_pool_free(t.pool), 0);
    EXPECT_EQ(xs_sem_held(t.sem), 0);
    EXPECT_EQ(xs_sem_free(t.sem), 0);
    th_event_destroy(&t.done);
}

/* ---- an idle pool uses next to no CPU ---- */

static int64_t process_cpu_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts);
    return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

static void count_task(void *arg)
{
    th_event_signal(arg);
}

TEST(pool_idle_uses_next_to_no_cpu)
{
    xs_pool *p = new_pool(4);
    ASSERT(p);
    th_event ev;
    th_event_init(&ev);
    for (int i = 0; i < 1000; i++)
        ASSERT_EQ(xs_pool_submit(p, count_task, &ev), 0);
    ASSERT(th_event_wait(&ev, 1000, 10000));
    /* Also the default pool, which every process may have running. */
    ASSERT_EQ(xs_pool_submit(xs_pool_default(), count_task, &ev), 0);
    ASSERT(th_event_wait(&ev, 1001, 10000));
    int64_t cpu0 = process_cpu_ns();
    th_event never;
    th_event_init(&never);
    th_event_wait(&never, 1, 1000); /* the measured second of idleness */
    int64_t used = process_cpu_ns() - cpu0;
    printf("    CPU used over 1 s idle: %.3f ms\n", (double)used / 1e6);
    EXPECT_LT(used, 10 * 1000000);
    th_event_destroy(&never);
    EXPECT_EQ(xs_pool_free(p), 0);
    th_event_destroy(&ev);
}

/* ---- freeing a pool with queued and running tasks ---- */

typedef struct free_run {
    xs_pool *pool;
    xs_ctx *gate;
    _Atomic int ran, children_ok, running;
    th_event started;
} free_run;

static void child_task(void *arg)
{
    free_run *f = arg;
    atomic_fetch_add(&f->ran, 1);
}

static void gated_task(void *arg)
{
    free_run *f = arg;
    atomic_fetch_add(&f->running, 1);
    th_event_signal(&f->started);
    xs_ctx_wait(f->gate, XS_FOREVER);
    /* Submissions from the pool's own tasks are still taken while it closes. */
    if (xs_pool_submit(f->pool, child_task, f) == 0)
        atomic_fetch_add(&f->children_ok, 1);
    atomic_fetch_add(&f->ran, 1);
}

static void *free_thread(void *arg)
{
    free_run *f = arg;
    EXPECT_EQ(xs_pool_free(f->pool), 0);
    return NULL;
}

TEST(pool_free_drains_queued_and_running_tasks_and_refuses_outsiders)
{
    free_run f = {0};
    th_event_init(&f.started);
    xs_ctx_with_cancel(xs_ctx_background(), &f.gate);
    f.pool = new_pool(2);
    ASSERT(f.pool);
    const int n = 300;
    for (int i = 0; i < n; i++)
        ASSERT_EQ(xs_pool_submit(f.pool, gated_task, &f), 0);
    /* Some are running (blocked on the gate), the rest queued. */
    ASSERT(th_event_wait(&f.started, 2, 10000));
    pthread_t th;
    pthread_create(&th, NULL, free_thread, &f);
    /* Once free has begun, outsiders are refused. */
    int extra = 0, r = 0;
    for (int64_t end = th_now_ns() + 10 * 1000000000LL; th_now_ns() < end;) {
        r = xs_pool_submit(f.pool, child_task, &f);
        if (r == XS_ECLOSED)
            break;
        EXPECT_EQ(r, 0);
        extra++;
        sched_yield();
    }
    EXPECT_EQ(r, XS_ECLOSED);
    xs_ctx_cancel(f.gate, 0);
    pthread_join(th, NULL);
    EXPECT_EQ(atomic_load(&f.children_ok), n);
    EXPECT_EQ(atomic_load(&f.ran), n + n + extra);
    xs_ctx_release(f.gate);
    th_event_destroy(&f.started);
}

/* ---- bad input, errors, small contracts ---- */

static void nop_task(void *arg)
{
    (void)arg;
}

typedef struct self_free {
    xs_pool *pool;
    _Atomic int result;
    th_event done;
} self_free;

static void free_self_task(void *arg)
{
    self_free *s = arg;
    atomic_store(&s->result, xs_pool_free(s->pool));
    th_event_signal(&s->done);
}

TEST(pool_bad_input_is_einval_and_changes_nothing)
{
    xs_pool *p = NULL;
    EXPECT_EQ(xs_pool_new(NULL, NULL), XS_EINVAL);
    xs_pool_opts o = {.workers = -1};
    EXPECT_EQ(xs_pool_new(&o, &p), XS_EINVAL);
    o = (xs_pool_opts){.max_standins = -5};
    EXPECT_EQ(xs_pool_new(&o, &p), XS_EINVAL);
    o = (xs_pool_opts){.workers = 1 << 20};
    EXPECT_EQ(xs_pool_new(&o, &p), XS_EINVAL);
    EXPECT_PTR_EQ(p, NULL);
    EXPECT_EQ(xs_pool_submit(NULL, nop_task, NULL), XS_EINVAL);
    EXPECT_EQ(xs_pool_submit(xs_pool_default(), NULL, NULL), XS_EINVAL);
    EXPECT_EQ(xs_pool_free(NULL), XS_EINVAL);
    EXPECT_EQ(xs_pool_free(xs_pool_default()), XS_EINVAL);
    EXPECT_EQ(xs_pool_threads(NULL), 0);
    EXPECT_EQ(xs_pool_workers(NULL), 0);
    /* Outside any pool, block_begin/_end do nothing (and may nest). */
    xs_pool_block_begin();
    xs_pool_block_begin();
    xs_pool_block_end();
    xs_pool_block_end();
    xs_pool_block_end();

    /* A pool's own task cannot free it. */
    self_free s = {0};
    th_event_init(&s.done);
    s.pool = new_pool(1);
    ASSERT(s.pool);
    EXPECT_EQ(xs_pool_workers(s.pool), 1);
    ASSERT_EQ(xs_pool_submit(s.pool, free_self_task, &s), 0);
    ASSERT(th_event_wait(&s.done, 1, 10000));
    EXPECT_EQ(atomic_load(&s.result), XS_EBUSY);
    EXPECT_EQ(xs_pool_free(s.pool), 0);
    th_event_destroy(&s.done);
}

TEST(pool_new_out_of_memory_leaks_nothing)
{
    xs_alloc_counter c;
    xs_alloc_counter_init(&c, NULL);
    int64_t k;
    for (k = 1; k < 100; k++) {
        xs_alloc_counter_fail_at(&c, k, 0);
        xs_pool_opts o = {.workers = 2, .alloc = &c.allocator};
        xs_pool *p = NULL;
        int r = xs_pool_new(&o, &p);
        xs_alloc_counter_fail_at(&c, 0, 0);
        if (r == 0) {
            EXPECT_EQ(xs_pool_free(p), 0);
            break;
        }
        EXPECT_EQ(r, XS_ENOMEM);
        EXPECT_EQ(atomic_load(&c.live_bytes), 0);
    }
    EXPECT_GT(k, 1);
    EXPECT_EQ(atomic_load(&c.live_bytes), 0);
}

static void block_marked_task(void *arg)
{
    th_event *ev = arg;
    xs_pool_block_begin();
    xs_pool_block_begin(); /* nests */
    xs_pool_block_end();
    xs_pool_block_end();
    th_event_signal(ev);
}

TEST(pool_default_runs_tasks_and_block_marks_nest)
{
    xs_pool *p = xs_pool_default();
    ASSERT(p);
    EXPECT_PTR_EQ(xs_pool_default(), p);
    EXPECT_GE(xs_pool_workers(p), 1);
    th_event ev;
    th_event_init(&ev);
    for (int i = 0; i < 100; i++)
        ASSERT_EQ(xs_pool_submit(p, block_marked_task, &ev), 0);
    EXPECT(th_event_wait(&ev, 100, 10000));
    EXPECT_GE(xs_pool_threads(p), 1);
    th_event_destroy(&ev);
}

/* Stand-ins are capped: with 1 worker and 3 stand-ins, at most 4 tasks
 * block at once, and the pool still completes the rest afterwards. */
typedef struct cap_run {
    xs_ctx *gate;
    _Atomic int inside, high;
    th_event entered, done;
} cap_run;

static void cap_task(void *arg)
{
    cap_run *c = arg;
    int now = atomic_fetch_add(&c->inside, 1) + 1;
    int h = atomic_load(&c->high);
    while (now > h && !atomic_compare_exchange_weak(&c->high, &h, now))
        ;
    th_event_signal(&c->entered);
    xs_ctx_wait(c->gate, XS_FOREVER);
    atomic_fetch_sub(&c->inside, 1);
    th_event_signal(&c->done);
}

TEST(pool_standins_respect_the_cap)
{
    xs_pool_opts o = {.workers = 1, .max_standins = 3, .watchdog = -1};
    xs_pool *p;
    ASSERT_EQ(xs_pool_new(&o, &p), 0);
    cap_run c = {0};
    th_event_init(&c.entered);
    th_event_init(&c.done);
    xs_ctx_with_cancel(xs_ctx_background(), &c.gate);
    for (int i = 0; i < 10; i++)
        ASSERT_EQ(xs_pool_submit(p, cap_task, &c), 0);
    EXPECT(th_event_wait(&c.entered, 4, 10000));
    EXPECT_LE(xs_pool_threads(p), 4);
    xs_ctx_cancel(c.gate, 0);
    EXPECT(th_event_wait(&c.done, 10, 10000));
    EXPECT_EQ(atomic_load(&c.high), 4);
    EXPECT_EQ(xs_pool_free(p), 0);
    xs_ctx_release(c.gate);
    th_event_destroy(&c.entered);
    th_event_destroy(&c.done);
}

/* ---- stress: a random mix of trivial, spawning and blocking tasks ---- */

#define STRESS_TASKS 20000

typedef struct mix {
    xs_pool *pool;
    xs_ctx *never; /* waited on with timeouts: a library wait that times out */
    _Atomic uint8_t ran[STRESS_TASKS];
    _Atomic int next, done;
    th_event finished;
} mix;

static mix *the_mix;

static void mix_task(void *arg)
{
    mix *m = the_mix;
    int id = (int)(intptr_t)arg;
    atomic_fetch_add(&m->ran[id], 1);
    uint32_t h = (uint32_t)id * 2654435761u;
    switch (h >> 29) {
    case 0: /* spawn up to two more */
        for (int k = 0; k < 2; k++) {
            int nid = atomic_fetch_add(&m->next, 1);
            if (nid < STRESS_TASKS)
                EXPECT_EQ(xs_pool_submit(m->pool, mix_task, (void *)(intptr_t)nid), 0);
        }
        break;
    case 1: /* a library wait that times out */
        xs_ctx_wait(m->never, 50 * 1000);
        break;
    case 2: { /* announced blocking */
        struct timespec ts = {0, 20 * 1000};
        xs_pool_block_begin();
        nanosleep(&ts, NULL);
        xs_pool_block_end();
        break;
    }
    default:
        break;
    }
    if (atomic_fetch_add(&m->done, 1) + 1 == STRESS_TASKS)
        th_event_signal(&m->finished);
}

TEST(pool_stress_mixed_tasks_each_run_once)
{
    the_mix = calloc(1, sizeof *the_mix);
    ASSERT(the_mix);
    mix *m = the_mix;
    th_event_init(&m->finished);
    xs_ctx_with_cancel(xs_ctx_background(), &m->never);
    m->pool = new_pool(2);
    ASSERT(m->pool);
    /* Outside threads submit too, while tasks spawn. */
    for (;;) {
        int id = atomic_fetch_add(&m->next, 1);
        if (id >= STRESS_TASKS)
            break;
        ASSERT_EQ(xs_pool_submit(m->pool, mix_task, (void *)(intptr_t)id), 0);
        if (id % 64 == 0)
            sched_yield();
    }
    EXPECT(th_event_wait(&m->finished, 1, 60000));
    EXPECT_EQ(xs_pool_free(m->pool), 0);
    int wrong = 0;
    for (int i = 0; i < STRESS_TASKS; i++)
        wrong += atomic_load(&m->ran[i]) != 1;
    EXPECT_EQ(wrong, 0);
    xs_ctx_release(m->never);
    th_event_destroy(&m->finished);
    free(m);
}

/* ---- stress: nested groups whose leaves block in different ways ---- */

typedef struct nest {
    xs_pool *pool;
    xs_sem *sem;
    _Atomic int leaves;
} nest;

static nest *the_nest;

static int nest_node(xs_ctx *ctx, void *arg)
{
    nest *n = the_nest;
    int code = (int)(intptr_t)arg; /* depth * 16 + kind */
    int depth = code >> 4, kind = code & 15;
    if (depth == 0) {
        switch (kind % 4) {
        case 0: /* a library wait with a timeout */
            xs_ctx_wait(ctx, 20 * 1000);
            break;
        case 1: /* the semaphore: take one, give it back */
            if (xs_sem_acquire(n->sem, ctx, 1) == 0)
                xs_sem_release(n->sem, 1);
            break;
        case 2: { /* announced blocking */
            struct timespec ts = {0, 10 * 1000};
            xs_pool_block_begin();
            nanosleep(&ts, NULL);
            xs_pool_block_end();
            break;
        }
        default:
            break;
        }
        atomic_fetch_add(&n->leaves, 1);
        return 0;
    }
    xs_group *g;
    xs_group_opts o = {.pool = n->pool, .limit = (kind & 1) ? 3 : 0};
    if (xs_group_new(ctx, &o, &g, NULL) != 0)
        return 1;
    for (int i = 0; i < 4; i++)
        if (xs_group_go(g, nest_node, (void *)(intptr_t)(((depth - 1) << 4) | ((kind + i) & 15))) != 0)
            return 1;
    int r = xs_group_wait(g);
    xs_group_free(g);
    return r;
}

TEST(pool_stress_nested_groups_with_blocking_leaves)
{
    the_nest = calloc(1, sizeof *the_nest);
    ASSERT(the_nest);
    nest *n = the_nest;
    ASSERT_EQ(xs_sem_new(2, NULL, &n->sem), 0); /* leaves queue for two units */
    n->pool = new_pool_no_watchdog(2);
    ASSERT(n->pool);
    for (int round = 0; round < 50; round++) {
        atomic_store(&n->leaves, 0);
        xs_group *g;
        xs_group_opts o = {.pool = n->pool};
        ASSERT_EQ(xs_group_new(NULL, &o, &g, NULL), 0);
        ASSERT_EQ(xs_group_go(g, nest_node, (void *)(intptr_t)((3 << 4) | round)), 0);
        EXPECT_EQ(xs_group_wait(g), 0);
        EXPECT_EQ(xs_group_free(g), 0);
        EXPECT_EQ(atomic_load(&n->leaves), 64);
    }
    EXPECT_EQ(xs_pool_free(n->pool), 0);
    EXPECT_EQ(xs_sem_free(n->sem), 0);
    free(n);
}

#ifndef TH_TSAN
static void set_flag(void *arg)
{
    atomic_store((_Atomic int *)arg, 1);
}
#endif

TEST(pool_default_works_in_a_forked_child)
{
#ifdef TH_TSAN
    printf("    skipped under TSan: no threads after a multi-threaded fork\n");
    return;
#else
    th_event ev;
    th_event_init(&ev);
    ASSERT_EQ(xs_pool_submit(xs_pool_default(), count_task, &ev), 0); /* threads running */
    ASSERT(th_event_wait(&ev, 1, 10000));
    /* Fork with every thread asleep as idle: the parent's idle list then
     * names threads the child does not have. */
    xs_pool *dp = xs_pool_default();
    int64_t end0 = th_now_ns() + 10 * 1000000000LL;
    while (xs__pool_idle_threads(dp) != xs_pool_threads(dp) && th_now_ns() < end0)
        sched_yield();
    ASSERT_EQ(xs__pool_idle_threads(dp), xs_pool_threads(dp));
    pid_t pid = fork();
    ASSERT(pid >= 0);
    if (pid == 0) {
        static _Atomic int flag;
        int ok = xs_pool_submit(xs_pool_default(), set_flag, (void *)&flag) == 0;
        int64_t end = th_now_ns() + 10 * 1000000000LL;
        while (ok && !atomic_load(&flag) && th_now_ns() < end)
            sched_yield();
        _exit(ok && atomic_load(&flag) ? 0 : 1);
    }
    int status = 0;
    ASSERT_EQ(waitpid(pid, &status, 0), pid);
    EXPECT(WIFEXITED(status));
    EXPECT_EQ(WEXITSTATUS(status), 0);
    th_event_destroy(&ev);
#endif
}
