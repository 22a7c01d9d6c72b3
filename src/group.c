/*
 * group — errgroup on the pool.
 *
 * One 32-bit word, `st`, carries the number of active tasks (started and
 * not returned: Go's semaphore tokens and WaitGroup count are the same
 * set) and four flags: SETTING (set_limit in progress), WAITS (a go is
 * parked on a full limit), WAITZ (a wait is parked until zero), OFFER (a
 * go's task waits in the mailbox, below).  Waiters
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
 * Hand-off.  A go that finds the limit full offers its task: it claims the
 * one-entry mailbox `offer` (CAS from NULL), then publishes it by setting
 * OFFER in `st` with a CAS that requires the count still full, and sleeps
 * on the offer's own state word.  Every end of a task goes through one CAS
 * loop on `st` (end_slot), so it sees a published offer in the same CAS
 * that would decrement: it clears OFFER instead, keeps its slot and runs
 * the offered task at once on the same thread — the slot passes from one
 * task to the next without the pool's queues or a thread wake-up — or, if
 * it may not (the group stopped, the thread should give the pool's queued
 * work a turn, or it is undoing a go), hands the offer back (REFUSED), and
 * the goer decides again.  Only the goer resets its state word, so its
 * sleep cannot miss the answer.  Goers that find the mailbox taken wait on
 * `st` (WAITS) until it is free.  An offer never runs in the goer's own
 * thread.
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

#define COUNT_MASK ((UINT32_C(1) << 28) - 1)
#define F_OFFER (UINT32_C(1) << 28)
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

/* Offer states. */
#define O_PENDING 0u
#define O_TAKEN 1u   /* running in the slot of the task that took it */
#define O_REFUSED 2u /* handed back: the goer decides again */

/* A go's task offered on a full limit; lives on the goer's stack.  The goer
 * sleeps on `state`, which nobody but it sets back to PENDING. */
typedef struct offer {
    xs__fn f;
    void *a; /* the user's argument, or the task's record (collect mode) */
    _Atomic uint32_t state;
} offer;

typedef struct chunk {
    struct chunk *next;
    rec recs[CHUNK];
} chunk;

/* Laid out so that what finishing tasks write (st, the done stack) and what
 * go writes (mu and its fields) sit on different cache lines. */
struct xs_group {
    _Atomic uint32_t st;
    /* The mailbox: claimed by a goer (CAS from NULL), published by OFFER in
     * st, read and emptied only by the thread that clears OFFER.  Beside
     * st: goer and taker touch both. */
    _Atomic(offer *) offer;
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

static bool stopped(xs_group *g)
{
    return (g->flags & XS_GROUP_STOP_ON_FAILURE) &&
           atomic_load_explicit(&g->err, memory_order_relaxed) != 0;
}

/* Set while a go of an XS_GROUP_GO_HELPS group runs a queued task itself:
 * that task takes no offers, or the go would not return while other goers
 * keep offering. */
static _Thread_local bool helping_go;

/*
 * Ends one active task (or undoes a go's increment).  A published offer is
 * seen in the same CAS as the decrement would be, so it cannot be missed:
 * with `take`, unless the group stopped or the thread should return to
 * the pool (see group_run), it is taken — true, *f and *a set, the slot
 * kept for it — else handed back to its goer in the same CAS that releases
 * the slot.  After a false return g was touched after the decrement only to
 * answer an offer (its goer, inside go, keeps g alive): otherwise that CAS
 * is the last touch of g.
 */
static bool end_slot(xs_group *g, bool take, xs__fn *f, void **a)
{
    uint32_t s = atomic_load_explicit(&g->st, memory_order_relaxed);
    for (;;) {
        bool offered = s & F_OFFER;
        /* Asked only when there is an offer: the pool's queues are lines
         * that other threads write. */
        bool took = offered && take && !helping_go && !xs__pool_should_yield() && !stopped(g);
        uint32_t n;
        if (took) {
            n = s & ~(F_OFFER | F_WAITS); /* the slot stays, for the offer */
        } else {
            /* Release the slot; an offer goes back in the same CAS, so its
             * goer finds the slot free when it decides again. */
            n = (s - 1) & ~(F_OFFER | F_WAITS);
            if ((n & COUNT_MASK) == 0)
                n &= ~F_WAITZ;
        }
        /* Acquire: the goer's publishing CAS (release) came after its writes
         * of the mailbox and the offer.  Release: what this task did comes
         * before whoever sees the count drop. */
        if (!atomic_compare_exchange_weak_explicit(&g->st, &s, n, memory_order_acq_rel,
                                                   memory_order_relaxed))
            continue;
        if (offered) {
            /* Only the thread that cleared OFFER empties the mailbox, so it
             * is still there; and g is alive: its goer is inside go. */
            offer *o = atomic_load_explicit(&g->offer, memory_order_relaxed);
            if (took) {
                *f = o->f;
                *a = o->a;
                if (g->flags & XS_GROUP_COLLECT) {
                    xs__lock_acquire(&g->mu);
                    ((rec *)*a)->idx = g->next_idx++; /* its go succeeds now */
                    xs__lock_release(&g->mu);
                }
            }
            atomic_store_explicit(&g->offer, NULL, memory_order_relaxed);
            /* Release: our reads of *o come first; the goer may then return
             * and reuse the frame. */
            atomic_store_explicit(&o->state, took ? O_TAKEN : O_REFUSED, memory_order_release);
            xs__park_wake(&o->state, 1); /* the address only */
        }
        if ((s ^ n) & (F_WAITS | F_WAITZ))
            xs__park_wake(&g->st, INT32_MAX); /* the count dropped or the mailbox is free */
        return took;
    }
}

static void slot_release(xs_group *g)
{
    xs__fn f;
    void *a;
    (void)end_slot(g, false, &f, &a);
}

/* The pool runs a task as group_run(user fn, argument, group): the task,
 * then each task offered meanwhile, in the same slot, for as long as the
 * pool's other work does not need the thread (see xs__pool_should_yield);
 * then the slot goes back. */
static void group_run(xs__fn f, void *a, void *gp)
{
    xs_group *g = gp;
    do
        run_one(g, f, a);
    while (end_slot(g, true, &f, &a));
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

/* Sleeps on st until it changes, announcing the sleep with WAITS; `s` is
 * the value last read, with the count full.  Returns at once if the word
 * moved, or if the limit now in force leaves a slot free. */
static void park_on_st(xs_group *g, uint32_t s)
{
    /* An RMW even when WAITS is already set: it reads the latest value.
     * Acquire: with the count nonzero set_limit cannot run, and through
     * st's release sequence we see the limit it stored last. */
    if (!atomic_compare_exchange_strong_explicit(&g->st, &s, s | F_WAITS, memory_order_acquire,
                                                 memory_order_relaxed))
        return;
    int lim = atomic_load_explicit(&g->limit, memory_order_relaxed);
    if (lim < 0 || (s & COUNT_MASK) < (uint32_t)lim)
        return; /* raised since our caller read it (st went through 0) */
    /* A task that cleared OFFER before our WAITS empties the mailbox after
     * its CAS, without waking us: if it is free now, try it. */
    if (!(s & F_OFFER) && !atomic_load_explicit(&g->offer, memory_order_relaxed))
        return;
    xs__park_wait(&g->st, s | F_WAITS, XS_FOREVER);
}

/* Polls, then yields, then parks: the wait policy of every loop below. */
static void pause_or_park(xs_group *g, int i, uint32_t s)
{
    if (i < SPINS)
        xs__cpu_relax();
    else if (i < SPINS + YIELDS)
        sched_yield();
    else
        park_on_st(g, s);
}

/* Published: waits on the offer's own word until a task takes it (true)
 * or hands it back (false). */
static bool wait_offer(offer *o)
{
    for (int i = 0;; i++) {
        /* Acquire: pairs with end_slot's release of the state. */
        uint32_t v = atomic_load_explicit(&o->state, memory_order_acquire);
        if (v != O_PENDING)
            return v == O_TAKEN;
        if (i < SPINS)
            xs__cpu_relax();
        else if (i < SPINS + YIELDS)
            sched_yield();
        else
            xs__park_wait(&o->state, O_PENDING, XS_FOREVER);
    }
}

/* The mailbox came free without a task ending: goers waiting for it on st
 * try again (clearing WAITS changes the word they sleep on). */
static void wake_waits(xs_group *g)
{
    if (atomic_fetch_and_explicit(&g->st, ~F_WAITS, memory_order_relaxed) & F_WAITS)
        xs__park_wake(&g->st, INT32_MAX);
}

/* Takes our published offer `o` back (true), unless a task that ended
 * took or refused it first (false: its answer is on o's state).  The OFFER
 * we clear may by then be another goer's: whoever clears OFFER answers the
 * offer in the mailbox, so we refuse that one. */
static bool withdraw(xs_group *g, offer *o)
{
    uint32_t s = atomic_load_explicit(&g->st, memory_order_relaxed);
    while (s & F_OFFER)
        /* Acquire: the mailbox as its publisher wrote it. */
        if (atomic_compare_exchange_weak_explicit(&g->st, &s, s & ~F_OFFER, memory_order_acquire,
                                                  memory_order_relaxed)) {
            offer *m = atomic_load_explicit(&g->offer, memory_order_relaxed);
            atomic_store_explicit(&g->offer, NULL, memory_order_relaxed);
            if (m != o) {
                /* Release: as end_slot's answer. */
                atomic_store_explicit(&m->state, O_REFUSED, memory_order_release);
                xs__park_wake(&m->state, 1);
            }
            wake_waits(g);
            return m == o;
        }
    return false;
}

/*
 * The limit looked full: returns true once a task that ended took `o` into
 * its own slot, false when the caller should decide again (a slot may be
 * free, the limit changed, the group stopped, set_limit runs, or the offer
 * was handed back).  A library wait (a pool thread lends its slot while
 * parked).  It runs a task itself only when the group opted in
 * (XS_GROUP_GO_HELPS): a task run here could wait for what our caller does
 * once go returns, where in Go another task finishing would have freed the
 * slot.
 */
static bool wait_full(xs_group *g, offer *o)
{
    if (g->flags & XS_GROUP_GO_HELPS) {
        bool outer = helping_go; /* a helped task may itself be a go that helps */
        helping_go = true;
        bool ran = xs__pool_help(g->pool, group_run, g);
        helping_go = outer;
        if (ran)
            return false;
    }
    for (int i = 0;; i++) {
        uint32_t s = atomic_load_explicit(&g->st, memory_order_acquire);
        int lim = atomic_load_explicit(&g->limit, memory_order_relaxed);
        if (lim < 0 || (s & COUNT_MASK) < (uint32_t)lim || (s & F_SETTING) || stopped(g))
            return false;
        offer *none = NULL;
        if (!(s & F_OFFER) && atomic_compare_exchange_strong_explicit(
                                  &g->offer, &none, o, memory_order_relaxed, memory_order_relaxed)) {
            atomic_store_explicit(&o->state, O_PENDING, memory_order_relaxed);
            /* Publish while the count is still full.  Release: the mailbox
             * and *o, to whoever clears OFFER. */
            while ((s & COUNT_MASK) >= (uint32_t)lim && !(s & F_SETTING) && !stopped(g)) {
                if (!atomic_compare_exchange_weak_explicit(&g->st, &s, s | F_OFFER,
                                                           memory_order_acq_rel, memory_order_relaxed))
                    continue;
                /* With OFFER set st is not 0, so set_limit cannot run: the
                 * limit read now is the one in force (acquire, through st's
                 * release sequence).  If it was raised since we read it,
                 * the count is not full: take the offer back. */
                int now = atomic_load_explicit(&g->limit, memory_order_relaxed);
                if ((now < 0 || (s & COUNT_MASK) < (uint32_t)now) && withdraw(g, o))
                    return false;
                return wait_offer(o);
            }
            atomic_store_explicit(&g->offer, NULL, memory_order_relaxed);
            wake_waits(g);
            return false;
        }
        /* The mailbox is taken (published, or between a claim and its
         * publication): wait for it to come free. */
        pause_or_park(g, i, s);
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
            if (wait_full(g, o))
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
        /* Refusals that need no record come first (a snapshot: acquire_slot
         * decides for good). */
        int lim = atomic_load_explicit(&g->limit, memory_order_relaxed);
        if (lim == 0)
            return XS_ELIMIT;
        if (!block && lim > 0 &&
            (atomic_load_explicit(&g->st, memory_order_relaxed) & COUNT_MASK) >= (uint32_t)lim)
            return XS_EAGAIN;
        xs__lock_acquire(&g->mu);
        rc = rec_get(g);
        xs__lock_release(&g->mu);
        if (!rc)
            return XS_ENOMEM;
        rc->arg = arg;
        rc->err = 0;
        rc->idx = UINT32_MAX; /* none yet: given when the task is started */
    }
    offer o = {(xs__fn)fn, rc ? (void *)rc : arg, O_PENDING};
    int r = acquire_slot(g, block, &o);
    if (r == 1)
        return 0; /* a task took it: running, with its index */
    bool holds = r == 0;
    if (holds) {
        if (rc) {
            xs__lock_acquire(&g->mu);
            rc->idx = g->next_idx++;
            xs__lock_release(&g->mu);
        }
        r = xs__pool_submit_task(g->pool, group_run, o.f, o.a, g);
        if (r == 0)
            return 0;
    }
    if (rc) {
        xs__lock_acquire(&g->mu);
        if (rc->idx != UINT32_MAX && rc->idx + 1 == g->next_idx)
            g->next_idx--;
        rc->next = g->free;
        g->free = rc;
        xs__lock_release(&g->mu);
    }
    if (holds)
        slot_release(g); /* the last touch of g */
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
