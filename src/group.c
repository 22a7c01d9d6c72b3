/*
 * group — errgroup on the pool.
 *
 * One 32-bit word, `st`, carries the number of active tasks (started and
 * not returned: Go's semaphore tokens and WaitGroup count are the same
 * set) and three flags: SETTING (set_limit in progress), WAITS (a go is
 * parked on a full limit), WAITZ (a wait is parked until zero).  Waiters
 * park on `st` itself, so the decrement that ends a task is also the
 * futex change: after it the finishing thread touches the group only
 * through xs__park_wake's address, which never dereferences it — a waiter
 * may already have returned and freed the group.
 *
 * The limit lives beside the word.  go increments the count first and then
 * reads the limit, undoing the increment if it was full; set_limit changes
 * the limit only by turning a zero word into SETTING, so the limit a go
 * reads while its increment stands cannot change under it.
 *
 * A task is queued on the pool as (runner, user function, user argument,
 * group): no allocation per task.  Collect mode needs a result slot per
 * task: records from chunks owned by the group (a handful of allocations
 * for 1000 tasks); a finished task pushes its record onto a lock-free stack
 * (`done`) that wait takes whole — one consumer taking everything, so no
 * ABA — and recycles under `mu`.
 */
#include <xsync/group.h>

#include <sched.h>

#include "internal.h"
#include "park.h"
#include "pool_internal.h"

#define COUNT_MASK ((UINT32_C(1) << 29) - 1)
#define F_SETTING (UINT32_C(1) << 29)
#define F_WAITS (UINT32_C(1) << 30)
#define F_WAITZ (UINT32_C(1) << 31)
#define CHUNK 64
#define SPINS 200 /* polls of the word before parking ... */
#define YIELDS 16 /* ... and polls between sched_yield calls */

typedef struct rec {
    void *arg;
    struct rec *next;
    uint32_t idx; /* submission index since the last wait (collect mode) */
    int err;
} rec;

typedef struct chunk {
    struct chunk *next;
    rec recs[CHUNK];
} chunk;

/* Laid out so that what finishing tasks write (st, the done stack) and what
 * go writes (mu and its fields) sit on different cache lines. */
struct xs_group {
    _Atomic uint32_t st;
    _Atomic int limit; /* -1: none; changed only under SETTING */
    _Atomic int err;   /* first non-zero task result */
    unsigned flags;
    xs_pool *pool;
    xs_ctx *ctx;
    const xs_allocator *alloc;
    char pad1_[64]; /* padding, not alignment: blocks come from any allocator */
    xs__lock mu; /* free, chunks, carve, next_idx */
    rec *free;
    chunk *chunks;
    unsigned carve;
    uint32_t next_idx;
    char pad2_[64];
    _Atomic(rec *) done;
};

static void push(_Atomic(rec *) *head, rec *r)
{
    rec *h = atomic_load_explicit(head, memory_order_relaxed);
    do
        r->next = h;
    /* Release: the consumer's acquire exchange sees the record's fields. */
    while (!atomic_compare_exchange_weak_explicit(head, &h, r, memory_order_release,
                                                  memory_order_relaxed));
}

/* Ends one active task (or undoes a go's increment) and wakes whoever the
 * flags say is parked.  The last touch of g. */
static void slot_release(xs_group *g)
{
    uint32_t s = atomic_load_explicit(&g->st, memory_order_relaxed), n;
    do {
        n = (s - 1) & ~F_WAITS;
        if ((n & COUNT_MASK) == 0)
            n &= ~F_WAITZ;
    } while (!atomic_compare_exchange_weak_explicit(&g->st, &s, n, memory_order_release,
                                                    memory_order_relaxed));
    if ((s ^ n) & (F_WAITS | F_WAITZ))
        xs__park_wake(&g->st, INT32_MAX);
}

/* Records a task's result: the first error is kept and (outside collect
 * mode) cancels the derived context. */
static void note_result(xs_group *g, int e)
{
    if (!e)
        return;
    int zero = 0;
    /* Relaxed: readers that need the value acquire it through st. */
    if (atomic_compare_exchange_strong_explicit(&g->err, &zero, e, memory_order_relaxed,
                                                memory_order_relaxed) &&
        !(g->flags & XS_GROUP_COLLECT))
        xs_ctx_cancel(g->ctx, e);
}

/* The pool runs a task as group_run(user fn, user arg, group). */
static void group_run(xs__fn f, void *arg, void *gp)
{
    xs_group *g = gp;
    note_result(g, ((xs_group_fn)f)(g->ctx, arg));
    slot_release(g);
}

/* Collect mode: the argument is the task's record. */
static void group_run_collect(xs__fn f, void *rp, void *gp)
{
    xs_group *g = gp;
    rec *r = rp;
    r->err = ((xs_group_fn)f)(g->ctx, r->arg);
    note_result(g, r->err);
    push(&g->done, r);
    slot_release(g);
}

static xs__task_run runner(const xs_group *g)
{
    return g->flags & XS_GROUP_COLLECT ? group_run_collect : group_run;
}

/* mu held. */
static rec *rec_get(xs_group *g)
{
    rec *r = g->free;
    if (r) {
        g->free = r->next;
        return r;
    }
    if (!g->chunks || g->carve == CHUNK) {
        chunk *c = xs__alloc(g->alloc, sizeof *c);
        if (!c)
            return NULL;
        c->next = g->chunks;
        g->chunks = c;
        g->carve = 0;
    }
    return &g->chunks->recs[g->carve++];
}

/*
 * Waits until the count may be below lim: polls briefly, then parks (a
 * library wait, so a pool thread lends its slot).  It helps only when the
 * group opted in: a task run here could wait for what our caller does once
 * go returns, where in Go another task finishing would have freed the slot.
 */
static void wait_for_slot(xs_group *g, int lim)
{
    if ((g->flags & XS_GROUP_GO_HELPS) && xs__pool_help(g->pool, runner(g), g))
        return;
    for (int i = 0; i < SPINS + YIELDS; i++) {
        if ((atomic_load_explicit(&g->st, memory_order_relaxed) & COUNT_MASK) < (uint32_t)lim)
            return;
        if (i < SPINS)
            xs__cpu_relax();
        else
            sched_yield();
    }
    uint32_t s = atomic_load_explicit(&g->st, memory_order_relaxed);
    if ((s & COUNT_MASK) < (uint32_t)lim)
        return;
    if (!(s & F_WAITS) && !atomic_compare_exchange_strong_explicit(
                              &g->st, &s, s | F_WAITS, memory_order_relaxed, memory_order_relaxed))
        return;
    xs__park_wait(&g->st, s | F_WAITS, XS_FOREVER);
}

static bool stopped(xs_group *g)
{
    return (g->flags & XS_GROUP_STOP_ON_FAILURE) &&
           atomic_load_explicit(&g->err, memory_order_relaxed) != 0;
}

/* Takes an active-task slot: 0, or an error with nothing taken. */
static int acquire_slot(xs_group *g, bool block)
{
    for (;;) {
        /* Acquire: a set_limit that finished is visible (its release store). */
        uint32_t s = atomic_load_explicit(&g->st, memory_order_acquire);
        if (s & F_SETTING) {
            xs__cpu_relax();
            continue;
        }
        if ((s & COUNT_MASK) == COUNT_MASK)
            return XS_EOVERFLOW;
        /* Decide "full" before touching the count, so that a refused go
         * never shows as an active task (set_limit would see it busy). */
        int lim = atomic_load_explicit(&g->limit, memory_order_relaxed);
        if (lim >= 0 && (s & COUNT_MASK) >= (uint32_t)lim) {
            if (lim == 0)
                return XS_ELIMIT;
            if (!block)
                return XS_EAGAIN;
            wait_for_slot(g, lim);
            if (stopped(g))
                return XS_ECANCELED;
            continue;
        }
        if (!atomic_compare_exchange_weak_explicit(&g->st, &s, s + 1, memory_order_acquire,
                                                   memory_order_relaxed))
            continue;
        /* A set_limit between our load of the limit and the CAS (its flag
         * came and went, leaving the word as it was): decide again. */
        int now = atomic_load_explicit(&g->limit, memory_order_relaxed);
        if (now < 0 || (s & COUNT_MASK) < (uint32_t)now)
            return 0;
        slot_release(g);
    }
}

static int go_common(xs_group *g, xs_group_fn fn, void *arg, bool block)
{
    if (!g || !fn)
        return XS_EINVAL;
    if (stopped(g))
        return XS_ECANCELED;
    int r = acquire_slot(g, block);
    if (r)
        return r;
    if (!(g->flags & XS_GROUP_COLLECT)) {
        r = xs__pool_submit_task(g->pool, group_run, (xs__fn)fn, arg, g);
        if (r)
            slot_release(g);
        return r;
    }
    xs__lock_acquire(&g->mu);
    rec *rc = rec_get(g);
    if (rc) {
        rc->idx = g->next_idx++;
        rc->arg = arg;
        rc->err = 0;
    }
    xs__lock_release(&g->mu);
    if (!rc) {
        slot_release(g);
        return XS_ENOMEM;
    }
    r = xs__pool_submit_task(g->pool, group_run_collect, (xs__fn)fn, rc, g);
    if (r) {
        xs__lock_acquire(&g->mu);
        if (rc->idx + 1 == g->next_idx)
            g->next_idx--;
        rc->next = g->free;
        g->free = rc;
        xs__lock_release(&g->mu);
        slot_release(g);
    }
    return r;
}

int xs_group_go(xs_group *g, xs_group_fn fn, void *arg)
{
    return go_common(g, fn, arg, true);
}

int xs_group_try_go(xs_group *g, xs_group_fn fn, void *arg)
{
    return go_common(g, fn, arg, false);
}

int xs_group_set_limit(xs_group *g, int n)
{
    if (!g || n > XS_GROUP_MAX_LIMIT)
        return XS_EINVAL;
    uint32_t zero = 0;
    if (!atomic_compare_exchange_strong_explicit(&g->st, &zero, F_SETTING, memory_order_acquire,
                                                 memory_order_relaxed))
        return XS_EBUSY;
    atomic_store_explicit(&g->limit, n < 0 ? -1 : n, memory_order_relaxed);
    /* Release: a go that sees the word without SETTING sees the limit. */
    atomic_store_explicit(&g->st, 0, memory_order_release);
    return 0;
}

/* Collect mode: reports the results since the last wait and recycles their
 * records.  Returns the lowest-index error. */
static int harvest(xs_group *g, int *errs, size_t n)
{
    if (errs)
        for (size_t i = 0; i < n; i++)
            errs[i] = 0;
    xs__lock_acquire(&g->mu);
    rec *r = atomic_exchange_explicit(&g->done, NULL, memory_order_acquire);
    uint32_t best = UINT32_MAX;
    int e = 0;
    while (r) {
        rec *next = r->next;
        if (errs && r->idx < n)
            errs[r->idx] = r->err;
        if (r->err && r->idx < best) {
            best = r->idx;
            e = r->err;
        }
        r->next = g->free;
        g->free = r;
        r = next;
    }
    g->next_idx = 0;
    xs__lock_release(&g->mu);
    return e;
}

int xs_group_wait_errs(xs_group *g, int *errs, size_t n)
{
    if (!g)
        return XS_EINVAL;
    for (int spins = 0;;) {
        /* Acquire: the last decrement heads a release sequence of all of
         * them, so every task's effects are visible once we see zero. */
        uint32_t s = atomic_load_explicit(&g->st, memory_order_acquire);
        if ((s & COUNT_MASK) == 0)
            break;
        if (xs__pool_help(g->pool, runner(g), g)) {
            spins = 0;
            continue;
        }
        if (spins++ < SPINS) {
            xs__cpu_relax();
            continue;
        }
        if (!(s & F_WAITZ) && !atomic_compare_exchange_strong_explicit(
                                  &g->st, &s, s | F_WAITZ, memory_order_relaxed, memory_order_relaxed))
            continue;
        xs__park_wait(&g->st, s | F_WAITZ, XS_FOREVER);
    }
    int e = g->flags & XS_GROUP_COLLECT ? harvest(g, errs, n)
                                         : atomic_load_explicit(&g->err, memory_order_relaxed);
    xs_ctx_cancel(g->ctx, e);
    return e;
}

int xs_group_wait(xs_group *g)
{
    return xs_group_wait_errs(g, NULL, 0);
}

xs_ctx *xs_group_ctx(const xs_group *g)
{
    return g ? g->ctx : NULL;
}

int xs_group_new(xs_ctx *parent, const xs_group_opts *opts, xs_group **out, xs_ctx **ctx_out)
{
    xs_group_opts d = {0};
    if (!opts)
        opts = &d;
    if (!out || opts->limit < 0 || opts->limit > XS_GROUP_MAX_LIMIT ||
        (opts->flags & ~(unsigned)(XS_GROUP_COLLECT | XS_GROUP_STOP_ON_FAILURE | XS_GROUP_GO_HELPS)))
        return XS_EINVAL;
    xs_pool *pool = opts->pool ? opts->pool : xs_pool_default();
    if (!pool)
        return XS_ENOMEM;
    const xs_allocator *a = xs__allocator_resolve(opts->alloc);
    xs_group *g = xs__calloc(a, sizeof *g);
    if (!g)
        return XS_ENOMEM;
    int r = xs_ctx_with_cancel(parent ? parent : xs_ctx_background(), &g->ctx);
    if (r) {
        xs__free(a, g, sizeof *g);
        return r;
    }
    g->alloc = a;
    g->pool = pool;
    g->flags = opts->flags;
    atomic_init(&g->limit, opts->limit > 0 ? opts->limit : -1);
    *out = g;
    if (ctx_out)
        *ctx_out = g->ctx;
    return 0;
}

int xs_group_free(xs_group *g)
{
    if (!g)
        return 0;
    if (atomic_load_explicit(&g->st, memory_order_acquire) & COUNT_MASK)
        return XS_EBUSY;
    xs_ctx_release(g->ctx);
    for (chunk *c = g->chunks, *next; c; c = next) {
        next = c->next;
        xs__free(g->alloc, c, sizeof *c);
    }
    xs__free(g->alloc, g, sizeof *g);
    return 0;
}
