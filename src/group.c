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
 * Hand-off.  A go that finds the limit full offers its task in `offer`
 * (one offer at a time; further goers wait on `st` as before) and waits.
 * A task that ends looks at `offer` before giving back its slot: if a task
 * is offered it takes it and runs it at once on the same thread, so the
 * slot passes from one task to the next without touching the pool's
 * queues or waking a thread.  The goer, told `taken`, returns; if instead a
 * slot comes free (a task ended without seeing the offer) or the group
 * stops, it withdraws its offer with a CAS and goes the ordinary way.
 * The offer never runs in the goer's own thread.
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

/* A go's task offered on a full limit; lives on the goer's stack until
 * `taken` is set (after which the goer may return at once). */
typedef struct offer {
    xs__fn f;
    void *a; /* the user's argument, or the task's record (collect mode) */
    _Atomic uint32_t taken;
} offer;

typedef struct chunk {
    struct chunk *next;
    rec recs[CHUNK];
} chunk;

/* Laid out so that what finishing tasks write (st, the done stack) and what
 * go writes (mu and its fields) sit on different cache lines. */
struct xs_group {
    _Atomic uint32_t st;
    _Atomic(offer *) offer; /* beside st: goer and taker touch both */
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

/* Runs one task: the user's function, then its result. */
static void run_one(xs_group *g, xs__fn f, void *a)
{
    if (!(g->flags & XS_GROUP_COLLECT)) {
        note_result(g, ((xs_group_fn)f)(g->ctx, a));
        return;
    }
    rec *r = a;
    r->err = ((xs_group_fn)f)(g->ctx, r->arg);
    note_result(g, r->err);
    push(&g->done, r);
}

/* A goer parked on st for its offer: clearing F_WAITS changes the word it
 * sleeps on, so the wake cannot fall between its check and its sleep. */
static void wake_goers(xs_group *g)
{
    /* Release: a goer that reads st after this (or after a later RMW in
     * its release sequence) sees `taken`. */
    if (atomic_fetch_and_explicit(&g->st, ~F_WAITS, memory_order_acq_rel) & F_WAITS)
        xs__park_wake(&g->st, INT32_MAX);
}

static bool stopped(xs_group *g)
{
    return (g->flags & XS_GROUP_STOP_ON_FAILURE) &&
           atomic_load_explicit(&g->err, memory_order_relaxed) != 0;
}

/* The pool runs a task as group_run(user fn, argument, group): the task,
 * then every task offered meanwhile on the same slot, then the slot goes
 * back. */
static void group_run(xs__fn f, void *a, void *gp)
{
    xs_group *g = gp;
    for (;;) {
        run_one(g, f, a);
        /* Acquire: the offer's fields, written before it was published. */
        offer *o = atomic_load_explicit(&g->offer, memory_order_relaxed);
        if (!o || stopped(g) ||
            !(o = atomic_exchange_explicit(&g->offer, NULL, memory_order_acquire)))
            break;
        f = o->f;
        a = o->a;
        if (g->flags & XS_GROUP_COLLECT) {
            xs__lock_acquire(&g->mu);
            ((rec *)a)->idx = g->next_idx++; /* go succeeds now */
            xs__lock_release(&g->mu);
        }
        /* Release: the goer may reuse *o once it sees this; our reads of
         * it come first. */
        atomic_store_explicit(&o->taken, 1, memory_order_release);
        wake_goers(g);
    }
    /* The offer we did not see: its goer sees our decrement (both are
     * RMWs on st, or its offer CAS precedes our load and we saw it). */
    slot_release(g);
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

/* Sleeps on st until it changes, announcing the sleep with F_WAITS; `s`
 * is the value last read.  Returns at once if the word moved, or if the
 * offer `o` (NULL: none) turns out to be taken. */
static void park_on_st(xs_group *g, uint32_t s, offer *o)
{
    /* Acq_rel: if our CAS reads from a taker's wake_goers (which found no
     * flag to clear), its `taken` is visible to the load below. */
    if (!(s & F_WAITS) && !atomic_compare_exchange_strong_explicit(
                              &g->st, &s, s | F_WAITS, memory_order_acq_rel, memory_order_relaxed))
        return;
    if (o && atomic_load_explicit(&o->taken, memory_order_acquire))
        return;
    xs__park_wait(&g->st, s | F_WAITS, XS_FOREVER);
}

/*
 * The limit is full: waits until a slot may be free (false) or until a task
 * that ended took the offered task `o` in its slot (true).  Polls briefly,
 * then parks (a library wait, so a pool thread lends its slot).  It runs a
 * task itself only when the group opted in (XS_GROUP_GO_HELPS): a task run
 * here could wait for what our caller does once go returns, where in Go
 * another task finishing would have freed the slot.
 */
static bool wait_full(xs_group *g, int lim, offer *o)
{
    if ((g->flags & XS_GROUP_GO_HELPS) && xs__pool_help(g->pool, group_run, g))
        return false;
    offer *none = NULL;
    /* Release: a taker's acquire exchange sees the offer's fields. */
    bool offered = atomic_compare_exchange_strong_explicit(&g->offer, &none, o, memory_order_release,
                                                           memory_order_relaxed);
    bool mine = offered; /* ours to withdraw */
    for (int i = 0;; i++) {
        if (offered && atomic_load_explicit(&o->taken, memory_order_acquire))
            return true;
        uint32_t s = atomic_load_explicit(&g->st, memory_order_acquire);
        if ((mine || !offered) && ((s & COUNT_MASK) < (uint32_t)lim || stopped(g))) {
            offer *me = o;
            if (!offered || atomic_compare_exchange_strong_explicit(
                                &g->offer, &me, NULL, memory_order_relaxed, memory_order_relaxed))
                return false;
            mine = false; /* a task has it: `taken` follows, then wake_goers */
        }
        if (i < SPINS)
            xs__cpu_relax();
        else if (i < SPINS + YIELDS)
            sched_yield();
        else
            park_on_st(g, s, offered ? o : NULL);
    }
}

/* Takes an active-task slot (0), or has a task take `o` in its own slot
 * (1), or fails (an error, nothing taken). */
static int acquire_slot(xs_group *g, bool block, offer *o)
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
            if (wait_full(g, lim, o))
                return 1;
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
    rec *rc = NULL;
    if (g->flags & XS_GROUP_COLLECT) {
        xs__lock_acquire(&g->mu);
        rc = rec_get(g);
        xs__lock_release(&g->mu);
        if (!rc)
            return XS_ENOMEM;
        rc->arg = arg;
        rc->err = 0;
        rc->idx = UINT32_MAX; /* none yet: given when the task is started */
    }
    offer o = {(xs__fn)fn, rc ? (void *)rc : arg, 0};
    int r = acquire_slot(g, block, &o);
    if (r == 1)
        return 0; /* a task took it: running, with its index */
    if (r == 0) {
        if (rc) {
            xs__lock_acquire(&g->mu);
            rc->idx = g->next_idx++;
            xs__lock_release(&g->mu);
        }
        r = xs__pool_submit_task(g->pool, group_run, o.f, o.a, g);
        if (r == 0)
            return 0;
        slot_release(g);
    }
    if (rc) {
        xs__lock_acquire(&g->mu);
        if (rc->idx != UINT32_MAX && rc->idx + 1 == g->next_idx)
            g->next_idx--;
        rc->next = g->free;
        g->free = rc;
        xs__lock_release(&g->mu);
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
        if (xs__pool_help(g->pool, group_run, g)) {
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
