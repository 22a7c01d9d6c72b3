/*
 * executor — the Action/Executor pattern, composed from the other modules.
 *
 * Executors: sequential (a loop), parallel and parallel_all (one xs_group
 * per run, fail closed or in collect mode), and a pool with threads of its
 * own.  Decorators wrap another executor; those that need per-action state
 * (metrics, debounce, rate limit) hand the inner executor a copy of the
 * actions whose fn is a wrapper and whose arg points at a record (the
 * original action, the decorator, one word of its own).  The copy and the
 * records live on the run's stack up to STACK_ACTIONS actions and in one
 * block from the executor's allocator beyond.
 *
 * The pool: a FIFO of runs that still have unclaimed actions, under one
 * lock.  A run lives on its caller's stack.  Workers and the caller claim
 * actions one at a time (index `claimed`); the run leaves the queue when
 * its last action is claimed.  The caller claims its own actions until
 * none is left, then parks on `left`, the count of actions not finished;
 * whoever finishes the last one wakes it and never touches the run again
 * (xs__park_wake does not dereference its address), so the caller may
 * return at once.
 */
#include <xsync/executor.h>

#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdio.h>
#include <time.h>
#include <unistd.h>

#include <xsync/group.h>
#include <xsync/map.h>
#include <xsync/semaphore.h>
#include <xsync/time.h>

#include "internal.h"
#include "park.h"
#include "singleflight_internal.h"

#define STACK_ACTIONS 16 /* actions whose wrappers a run keeps on its stack */
#define POOL_MAX_THREADS 4096
#define SPINS 200 /* polls of a run's `left` before its caller parks */
#define SEARCH_ROUNDS 32 /* polls of the pool's queue before a worker sleeps */
#define NAME_BUF 256

/* ---- the entry points ---- */

static void fill(int *errs, size_t from, size_t n, int e)
{
    if (errs)
        for (size_t i = from; i < n; i++)
            errs[i] = e;
}

int xs_exec_run(xs_executor *ex, xs_ctx *ctx, const xs_action *actions, size_t n, int *errs)
{
    if (!ex || !ex->ops || !ex->ops->run || (!actions && n) || n > XS_EXEC_MAX_ACTIONS)
        return XS_EINVAL;
    for (size_t i = 0; i < n; i++)
        if (!actions[i].fn)
            return XS_EINVAL;
    if (n == 0)
        return 0;
    return ex->ops->run(ex, ctx ? ctx : xs_ctx_background(), actions, n, errs);
}

int xs_exec_close(xs_executor *ex)
{
    if (!ex || !ex->ops || !ex->ops->close)
        return XS_EINVAL;
    return ex->ops->close(ex);
}

int xs_exec_free(xs_executor *ex)
{
    if (!ex || !ex->ops || !ex->ops->free)
        return 0;
    return ex->ops->free(ex);
}

/* ---- what every built-in executor has ---- */

typedef struct base {
    xs_executor ex;
    const xs_allocator *alloc;
    size_t size; /* of the block to free */
    _Atomic bool closed;
} base;

static const xs_exec_opts no_opts;

/* Options, or the defaults; NULL when they are invalid (unknown flags). */
static const xs_exec_opts *opts_or_default(const xs_exec_opts *o)
{
    if (!o)
        return &no_opts;
    return o->flags & ~(unsigned)XS_EXEC_BORROW ? NULL : o;
}

static void *base_new(const xs_exec_opts *o, size_t size, const xs_executor_ops *ops)
{
    const xs_allocator *a = xs__allocator_resolve(o->alloc);
    base *b = xs__calloc(a, size);
    if (!b)
        return NULL;
    b->ex.ops = ops;
    b->alloc = a;
    b->size = size;
    atomic_init(&b->closed, false);
    return b;
}

static void base_free(base *b)
{
    xs__free(b->alloc, b, b->size);
}

/* Relaxed: a close that happens-before a run is seen by it (coherence); one
 * that races it may or may not be, either order being correct. */
static bool is_closed(const xs_executor *ex)
{
    return atomic_load_explicit(&((const base *)(const void *)ex)->closed, memory_order_relaxed);
}

static int base_close(xs_executor *ex)
{
    atomic_store_explicit(&((base *)(void *)ex)->closed, true, memory_order_relaxed);
    return 0;
}

static int base_free_op(xs_executor *ex)
{
    base_free((base *)(void *)ex);
    return 0;
}

/* The prologue of parallel, parallel_all and the pool: closed, then a done
 * context (either runs nothing). */
static int run_gate(xs_executor *ex, xs_ctx *ctx, size_t n, int *errs)
{
    int e = is_closed(ex) ? XS_ECLOSED : xs_ctx_err(ctx);
    if (e)
        fill(errs, 0, n, e);
    return e;
}

/* ---- sequential ---- */

static int seq_run(xs_executor *ex, xs_ctx *ctx, const xs_action *a, size_t n, int *errs)
{
    if (is_closed(ex)) {
        fill(errs, 0, n, XS_ECLOSED);
        return XS_ECLOSED;
    }
    for (size_t i = 0; i < n; i++) {
        int e = xs_ctx_err(ctx);
        if (e) {
            fill(errs, i, n, e);
            return e;
        }
        e = a[i].fn(ctx, a[i].arg);
        if (errs)
            errs[i] = e;
        if (e) {
            fill(errs, i + 1, n, XS_ECANCELED);
            return e;
        }
    }
    return 0;
}

static const xs_executor_ops seq_ops = {seq_run, base_close, base_free_op};

int xs_exec_sequential(const xs_exec_opts *opts, xs_executor **out)
{
    opts = opts_or_default(opts);
    if (!out || !opts)
        return XS_EINVAL;
    base *b = base_new(opts, sizeof(base), &seq_ops);
    if (!b)
        return XS_ENOMEM;
    *out = &b->ex;
    return 0;
}

/* ---- parallel and parallel_all, on a group ---- */

typedef struct par {
    base b;
    xs_pool *pool;
} par;

/* A task that has not started when the group's context ends does not run. */
static int par_task(xs_ctx *ctx, void *arg)
{
    const xs_action *a = arg;
    int e = xs_ctx_err(ctx);
    return e ? e : a->fn(ctx, a->arg);
}

typedef struct par_rec {
    const xs_action *a;
    int *err;
} par_rec;

static int par_task_errs(xs_ctx *ctx, void *arg)
{
    par_rec *r = arg;
    int e = xs_ctx_err(ctx);
    if (!e)
        e = r->a->fn(ctx, r->a->arg);
    *r->err = e;
    return e;
}

static int par_run(xs_executor *ex, xs_ctx *ctx, const xs_action *a, size_t n, int *errs)
{
    par *p = (par *)(void *)ex;
    int e = run_gate(ex, ctx, n, errs);
    if (e)
        return e;
    par_rec stack[STACK_ACTIONS], *recs = NULL;
    size_t bytes = 0;
    if (errs) {
        recs = stack;
        if (n > STACK_ACTIONS) {
            bytes = n * sizeof *recs;
            recs = xs__alloc(p->b.alloc, bytes);
            if (!recs) {
                fill(errs, 0, n, XS_ENOMEM);
                return XS_ENOMEM;
            }
        }
    }
    xs_group_opts o = {.pool = p->pool, .flags = XS_GROUP_STOP_ON_FAILURE, .alloc = p->b.alloc};
    xs_group *g;
    e = xs_group_new(ctx, &o, &g, NULL);
    if (e) {
        fill(errs, 0, n, e);
    } else {
        size_t i;
        int ge = 0;
        for (i = 0; i < n && !ge; i++) {
            if (recs) {
                recs[i] = (par_rec){&a[i], &errs[i]};
                ge = xs_group_go(g, par_task_errs, &recs[i]);
            } else {
                ge = xs_group_go(g, par_task, (void *)&a[i]);
            }
        }
        /* XS_ECANCELED: an action failed, which cancelled the group.  Any
         * other refusal leaves actions unstarted: cancel those running. */
        if (ge && ge != XS_ECANCELED)
            xs_ctx_cancel(xs_group_ctx(g), ge);
        e = xs_group_wait(g);
        if (ge == XS_ECANCELED) /* the group's context ended: say how */
            fill(errs, i - 1, n, xs_ctx_err(xs_group_ctx(g)));
        else if (ge)
            fill(errs, i - 1, n, e = ge);
        xs_group_free(g);
    }
    if (bytes)
        xs__free(p->b.alloc, recs, bytes);
    return e;
}

static int pall_run(xs_executor *ex, xs_ctx *ctx, const xs_action *a, size_t n, int *errs)
{
    par *p = (par *)(void *)ex;
    int e = run_gate(ex, ctx, n, errs);
    if (e)
        return e;
    xs_group_opts o = {.pool = p->pool, .flags = XS_GROUP_COLLECT, .alloc = p->b.alloc};
    xs_group *g;
    e = xs_group_new(ctx, &o, &g, NULL);
    if (e) {
        fill(errs, 0, n, e);
        return e;
    }
    size_t i;
    int ge = 0;
    for (i = 0; i < n && !ge; i++)
        ge = xs_group_go(g, a[i].fn, a[i].arg);
    /* Fail open: what started runs to its end even if not all could. */
    e = xs_group_wait_errs(g, errs, n);
    xs_group_free(g);
    if (ge) {
        fill(errs, i - 1, n, ge);
        return ge;
    }
    return e;
}

static const xs_executor_ops par_ops = {par_run, base_close, base_free_op};
static const xs_executor_ops pall_ops = {pall_run, base_close, base_free_op};

static int par_new(const xs_exec_opts *opts, const xs_executor_ops *ops, xs_executor **out)
{
    opts = opts_or_default(opts);
    if (!out || !opts)
        return XS_EINVAL;
    par *p = base_new(opts, sizeof *p, ops);
    if (!p)
        return XS_ENOMEM;
    p->pool = opts->pool;
    *out = &p->b.ex;
    return 0;
}

int xs_exec_parallel(const xs_exec_opts *opts, xs_executor **out)
{
    return par_new(opts, &par_ops, out);
}

int xs_exec_parallel_all(const xs_exec_opts *opts, xs_executor **out)
{
    return par_new(opts, &pall_ops, out);
}

/* ---- the pool ---- */

typedef struct prun prun;
struct prun {
    prun *prev, *next; /* in the queue while actions are unclaimed (mu) */
    const xs_action *acts;
    int *errs;
    xs_ctx *ctx; /* the run's own: a child of the caller's */
    size_t n;
    size_t claimed;        /* mu */
    _Atomic uint32_t left; /* actions not finished; the caller parks here */
    _Atomic int err;       /* the first error */
};

typedef struct xpool {
    base b;
    xs__lock mu;
    prun *head, *tail;     /* runs with unclaimed actions, oldest first */
    _Atomic size_t queued; /* runs in that queue: written under mu, peeked without */
    _Atomic uint32_t work; /* bumped under mu to wake workers; they park here */
    int idle;              /* workers asleep, not yet woken (mu) */
    int pending;           /* workers woken, not yet back under mu (mu) */
    bool stopping;         /* mu */
    size_t runs;           /* runs in progress (mu) */
    int nthreads;
    pthread_t *threads;
} xpool;

static void q_push(xpool *p, prun *r)
{
    atomic_store_explicit(&p->queued, atomic_load_explicit(&p->queued, memory_order_relaxed) + 1,
                          memory_order_relaxed);
    r->next = NULL;
    r->prev = p->tail;
    if (p->tail)
        p->tail->next = r;
    else
        p->head = r;
    p->tail = r;
}

static void q_remove(xpool *p, prun *r)
{
    atomic_store_explicit(&p->queued, atomic_load_explicit(&p->queued, memory_order_relaxed) - 1,
                          memory_order_relaxed);
    if (r->prev)
        r->prev->next = r->next;
    else
        p->head = r->next;
    if (r->next)
        r->next->prev = r->prev;
    else
        p->tail = r->prev;
}

/* mu held: the index of the next unclaimed action of r, or r->n. */
static size_t claim(xpool *p, prun *r)
{
    if (r->claimed == r->n)
        return r->n;
    size_t i = r->claimed++;
    if (r->claimed == r->n)
        q_remove(p, r);
    return i;
}

/* Runs (or skips, once the run has failed or its context ended) action i;
 * the decrement of `left` is the last touch of r. */
static void pool_exec(prun *r, size_t i)
{
    int e;
    if (atomic_load_explicit(&r->err, memory_order_relaxed) || xs_ctx_done(r->ctx)) {
        e = xs_ctx_err(r->ctx);
        if (!e) /* a failure won the race and is cancelling the context */
            e = XS_ECANCELED;
    } else {
        e = r->acts[i].fn(r->ctx, r->acts[i].arg);
    }
    if (r->errs)
        r->errs[i] = e;
    int zero = 0;
    /* Relaxed: the caller reads err after acquiring `left`. */
    if (e && atomic_compare_exchange_strong_explicit(&r->err, &zero, e, memory_order_relaxed,
                                                     memory_order_relaxed))
        xs_ctx_cancel(r->ctx, e);
    /* Release: the caller's acquire of 0 sees every action's effects (each
     * decrement continues the release sequences of the ones before). */
    if (atomic_fetch_sub_explicit(&r->left, 1, memory_order_release) == 1)
        xs__park_wake(&r->left, 1);
}

/*
 * Polls the queue for a while, without the lock, before a worker goes to
 * sleep: back-to-back runs then find it awake and wake nobody.  A worker
 * searching is not idle, so a run queued meanwhile does not count on waking
 * it; the decision to sleep is then taken under mu, where runs are queued.
 */
static bool search(xpool *p)
{
    for (int round = 0; round < SEARCH_ROUNDS; round++) {
        if (atomic_load_explicit(&p->queued, memory_order_relaxed))
            return true;
        xs__poll_pause(round, SEARCH_ROUNDS);
    }
    return false;
}

static void *pool_worker(void *arg)
{
    xpool *p = arg;
    xs__lock_acquire(&p->mu);
    for (;;) {
        prun *r = p->head;
        if (r) {
            size_t i = claim(p, r);
            xs__lock_release(&p->mu);
            pool_exec(r, i);
            xs__lock_acquire(&p->mu);
            continue;
        }
        if (p->stopping)
            break;
        xs__lock_release(&p->mu);
        bool found = search(p);
        xs__lock_acquire(&p->mu);
        if (found || p->head || p->stopping)
            continue;
        p->idle++;
        uint32_t w = atomic_load_explicit(&p->work, memory_order_relaxed);
        xs__lock_release(&p->mu);
        xs__park_sleep(&p->work, w, XS_FOREVER);
        xs__lock_acquire(&p->mu);
        /* A waker moved us from idle to pending; a spurious wake-up did not,
         * and then some woken worker finds pending empty: the sum is kept. */
        if (p->pending)
            p->pending--;
        else
            p->idle--;
    }
    xs__lock_release(&p->mu);
    return NULL;
}

static int pool_run(xs_executor *ex, xs_ctx *ctx, const xs_action *a, size_t n, int *errs)
{
    xpool *p = (xpool *)(void *)ex;
    int e = run_gate(ex, ctx, n, errs);
    if (e)
        return e;
    prun r = {.acts = a, .errs = errs, .n = n, .claimed = 1};
    atomic_init(&r.left, (uint32_t)n);
    atomic_init(&r.err, 0);
    e = xs_ctx_with_cancel(ctx, &r.ctx);
    if (e) {
        fill(errs, 0, n, e);
        return e;
    }
    int wake = 0;
    xs__lock_acquire(&p->mu);
    if (atomic_load_explicit(&p->b.closed, memory_order_relaxed)) {
        xs__lock_release(&p->mu);
        xs_ctx_release(r.ctx);
        fill(errs, 0, n, XS_ECLOSED);
        return XS_ECLOSED;
    }
    p->runs++;
    if (n > 1) { /* action 0 is ours; the others go to the queue */
        q_push(p, &r);
        wake = n - 1 < (size_t)p->idle ? (int)(n - 1) : p->idle;
        if (wake) {
            p->idle -= wake;
            p->pending += wake;
            atomic_fetch_add_explicit(&p->work, 1, memory_order_relaxed);
        }
    }
    xs__lock_release(&p->mu);
    if (wake)
        xs__park_wake(&p->work, wake);
    /* Help: run our own actions until none is left to claim. */
    for (size_t i = 0; i < n;) {
        pool_exec(&r, i);
        xs__lock_acquire(&p->mu);
        i = claim(p, &r);
        xs__lock_release(&p->mu);
    }
    for (int spins = 0;;) {
        uint32_t left = atomic_load_explicit(&r.left, memory_order_acquire);
        if (!left)
            break;
        if (spins++ < SPINS)
            xs__cpu_relax();
        else
            xs__park_wait(&r.left, left, XS_FOREVER); /* a library wait */
    }
    xs__lock_acquire(&p->mu);
    p->runs--;
    xs__lock_release(&p->mu);
    e = atomic_load_explicit(&r.err, memory_order_relaxed);
    xs_ctx_release(r.ctx);
    return e;
}

static int pool_close(xs_executor *ex)
{
    xpool *p = (xpool *)(void *)ex;
    xs__lock_acquire(&p->mu);
    atomic_store_explicit(&p->b.closed, true, memory_order_relaxed);
    xs__lock_release(&p->mu);
    return 0;
}

/* Stops and joins the first `started` threads, then frees p. */
static void pool_destroy(xpool *p, int started)
{
    xs__lock_acquire(&p->mu);
    p->stopping = true;
    atomic_fetch_add_explicit(&p->work, 1, memory_order_relaxed);
    xs__lock_release(&p->mu);
    xs__park_wake(&p->work, INT32_MAX);
    for (int i = 0; i < started; i++)
        pthread_join(p->threads[i], NULL);
    if (p->threads)
        xs__free(p->b.alloc, p->threads, (size_t)p->nthreads * sizeof *p->threads);
    base_free(&p->b);
}

static int pool_free(xs_executor *ex)
{
    xpool *p = (xpool *)(void *)ex;
    xs__lock_acquire(&p->mu);
    bool busy = p->runs != 0;
    if (!busy)
        atomic_store_explicit(&p->b.closed, true, memory_order_relaxed);
    xs__lock_release(&p->mu);
    if (busy)
        return XS_EBUSY;
    pool_destroy(p, p->nthreads);
    return 0;
}

static const xs_executor_ops pool_ops = {pool_run, pool_close, pool_free};

int xs_exec_pool(int n, const xs_exec_opts *opts, xs_executor **out)
{
    opts = opts_or_default(opts);
    if (!out || !opts || n > POOL_MAX_THREADS)
        return XS_EINVAL;
    if (n <= 0) {
        long c = sysconf(_SC_NPROCESSORS_ONLN);
        n = c < 1 ? 1 : c > POOL_MAX_THREADS ? POOL_MAX_THREADS : (int)c;
    }
    xpool *p = base_new(opts, sizeof *p, &pool_ops);
    if (!p)
        return XS_ENOMEM;
    atomic_init(&p->work, 0);
    p->nthreads = n;
    p->threads = xs__alloc(p->b.alloc, (size_t)n * sizeof *p->threads);
    if (!p->threads) {
        base_free(&p->b);
        return XS_ENOMEM;
    }
    for (int i = 0; i < n; i++) {
        if (pthread_create(&p->threads[i], NULL, pool_worker, p) != 0) {
            pool_destroy(p, i);
            return XS_ENOMEM;
        }
    }
    *out = &p->b.ex;
    return 0;
}

/* ---- decorators ---- */

typedef struct deco {
    base b;
    xs_executor *inner;
    bool owns;
} deco;

static void *deco_new(xs_executor *inner, const xs_exec_opts *o, size_t size,
                      const xs_executor_ops *ops)
{
    deco *d = base_new(o, size, ops);
    if (!d)
        return NULL;
    d->inner = inner;
    d->owns = !(o->flags & XS_EXEC_BORROW);
    return d;
}

static bool inner_ok(const xs_executor *inner)
{
    return inner && inner->ops && inner->ops->run;
}

/* Wrapped actions are valid by construction: no second validation. */
static int inner_run(const deco *d, xs_ctx *ctx, const xs_action *a, size_t n, int *errs)
{
    return d->inner->ops->run(d->inner, ctx, a, n, errs);
}

static int deco_close(xs_executor *ex)
{
    deco *d = (deco *)(void *)ex;
    base_close(ex);
    if (d->owns)
        xs_exec_close(d->inner); /* XS_EINVAL: not closeable, nothing to do */
    return 0;
}

/* Frees the inner executor if owned: 0, or its error with nothing freed.
 * Once freed it is forgotten, so a retry after a later error is safe. */
static int deco_free_inner(deco *d)
{
    if (!d->owns)
        return 0;
    int r = xs_exec_free(d->inner);
    if (r == 0)
        d->owns = false;
    return r;
}

/* A wrapped action's arg: the original, the decorator, a word of its own. */
typedef struct wrap {
    const xs_action *a;
    const void *dec;
    void *aux;
} wrap;

/* Per-run storage for wrapped actions: on the stack for small runs. */
typedef struct wrapbuf {
    xs_action *acts;
    wrap *recs;
    size_t bytes; /* of the heap block, 0 on the stack */
    xs_action sacts[STACK_ACTIONS];
    wrap srecs[STACK_ACTIONS];
} wrapbuf;

static int wrapbuf_get(wrapbuf *w, const xs_allocator *a, size_t n)
{
    if (n <= STACK_ACTIONS) {
        w->acts = w->sacts;
        w->recs = w->srecs;
        w->bytes = 0;
        return 0;
    }
    w->bytes = n * (sizeof(xs_action) + sizeof(wrap));
    w->acts = xs__alloc(a, w->bytes);
    if (!w->acts)
        return XS_ENOMEM;
    w->recs = (wrap *)(void *)(w->acts + n);
    return 0;
}

static void wrapbuf_put(wrapbuf *w, const xs_allocator *a)
{
    if (w->bytes)
        xs__free(a, w->acts, w->bytes);
}

/* ---- control flow ---- */

typedef struct flow {
    deco d;
    int64_t max_actions;
    xs_sem *calls, *acts;
} flow;

static int flow_run(xs_executor *ex, xs_ctx *ctx, const xs_action *a, size_t n, int *errs)
{
    flow *f = (flow *)(void *)ex;
    int e = is_closed(ex) ? XS_ECLOSED : (int64_t)n > f->max_actions ? XS_ELIMIT : 0;
    if (!e) {
        e = xs_sem_acquire(f->calls, ctx, 1);
        if (!e) {
            e = xs_sem_acquire(f->acts, ctx, (int64_t)n);
            if (!e) {
                e = inner_run(&f->d, ctx, a, n, errs);
                xs_sem_release(f->acts, (int64_t)n);
                xs_sem_release(f->calls, 1);
                return e;
            }
            xs_sem_release(f->calls, 1);
        }
    }
    fill(errs, 0, n, e);
    return e;
}

static int flow_free(xs_executor *ex)
{
    flow *f = (flow *)(void *)ex;
    if (xs_sem_held(f->calls) || xs_sem_waiters(f->calls) || xs_sem_waiters(f->acts))
        return XS_EBUSY;
    int r = deco_free_inner(&f->d);
    if (r)
        return r;
    xs_sem_free(f->calls);
    xs_sem_free(f->acts);
    base_free(&f->d.b);
    return 0;
}

static const xs_executor_ops flow_ops = {flow_run, deco_close, flow_free};

int xs_exec_control_flow(xs_executor *inner, int64_t max_calls, int64_t max_actions,
                         const xs_exec_opts *opts, xs_executor **out)
{
    opts = opts_or_default(opts);
    if (!inner_ok(inner) || !out || !opts || max_calls < 1 || max_actions < 1 ||
        max_calls > XS_SEM_MAX || max_actions > XS_SEM_MAX)
        return XS_EINVAL;
    flow *f = deco_new(inner, opts, sizeof *f, &flow_ops);
    if (!f)
        return XS_ENOMEM;
    f->max_actions = max_actions;
    if (xs_sem_new(max_calls, f->d.b.alloc, &f->calls) != 0) {
        base_free(&f->d.b);
        return XS_ENOMEM;
    }
    if (xs_sem_new(max_actions, f->d.b.alloc, &f->acts) != 0) {
        xs_sem_free(f->calls);
        base_free(&f->d.b);
        return XS_ENOMEM;
    }
    *out = &f->d.b.ex;
    return 0;
}

/* ---- debounce ---- */

typedef struct debounce {
    deco d;
    xs_sf *sf;
    bool own_sf;
    size_t plen;              /* key prefix: varint(scope length), scope */
    unsigned char prefix[];
} debounce;

static size_t varint_len(size_t v)
{
    size_t k = 1;
    for (; v >= 0x80; v >>= 7)
        k++;
    return k;
}

static size_t varint_put(unsigned char *p, size_t v)
{
    size_t k = 0;
    for (; v >= 0x80; v >>= 7)
        p[k++] = (unsigned char)(v | 0x80);
    p[k++] = (unsigned char)v;
    return k;
}

int xs_exec_debounce_key(const char *scope, const char *name, void *buf, size_t cap, size_t *len)
{
    if (!name || !len || (!buf && cap))
        return XS_EINVAL;
    size_t sl = scope ? strlen(scope) : 0, nl = strlen(name);
    size_t need = varint_len(sl) + sl + nl;
    *len = need;
    if (need > cap)
        return XS_EOVERFLOW;
    unsigned char *p = buf;
    size_t k = varint_put(p, sl);
    if (sl)
        memcpy(p + k, scope, sl);
    memcpy(p + k + sl, name, nl);
    return 0;
}

static int debounce_body(xs_ctx *ctx, void *arg, void **value, xs_sf_value_free *value_free)
{
    (void)value;
    (void)value_free;
    const xs_action *a = arg;
    return a->fn(ctx, a->arg);
}

static int debounce_fn(xs_ctx *ctx, void *arg)
{
    const wrap *w = arg;
    const debounce *d = w->dec;
    size_t klen = d->plen + (size_t)(uintptr_t)w->aux;
    unsigned char sbuf[NAME_BUF], *key = sbuf;
    if (klen > sizeof sbuf && !(key = xs__alloc(d->d.b.alloc, klen)))
        return XS_ENOMEM;
    memcpy(key, d->prefix, d->plen);
    memcpy(key + d->plen, w->a->name, klen - d->plen);
    xs_sf_result res;
    int r = xs_sf_do(d->sf, ctx, key, klen, debounce_body, (void *)w->a, &res);
    xs_sf_result_release(&res);
    if (key != sbuf)
        xs__free(d->d.b.alloc, key, klen);
    return r;
}

static int debounce_run(xs_executor *ex, xs_ctx *ctx, const xs_action *a, size_t n, int *errs)
{
    debounce *d = (debounce *)(void *)ex;
    if (is_closed(ex)) {
        fill(errs, 0, n, XS_ECLOSED);
        return XS_ECLOSED;
    }
    size_t i = 0;
    while (i < n && !a[i].name)
        i++;
    if (i == n) /* nothing to debounce */
        return inner_run(&d->d, ctx, a, n, errs);
    wrapbuf w;
    int e = wrapbuf_get(&w, d->d.b.alloc, n);
    if (e) {
        fill(errs, 0, n, e);
        return e;
    }
    for (i = 0; i < n; i++) {
        if (!a[i].name) {
            w.acts[i] = a[i];
            continue;
        }
        size_t nl = strlen(a[i].name);
        if (nl + d->plen > XS_SF_KEY_MAX) {
            wrapbuf_put(&w, d->d.b.alloc);
            fill(errs, 0, n, XS_EINVAL);
            return XS_EINVAL;
        }
        w.recs[i] = (wrap){&a[i], d, (void *)(uintptr_t)nl};
        w.acts[i] = (xs_action){debounce_fn, &w.recs[i], a[i].name};
    }
    e = inner_run(&d->d, ctx, w.acts, n, errs);
    wrapbuf_put(&w, d->d.b.alloc);
    return e;
}

static int debounce_free(xs_executor *ex)
{
    debounce *d = (debounce *)(void *)ex;
    /* Busy first, so that XS_EBUSY frees nothing (the inner one included). */
    if (d->own_sf && xs__sf_busy(d->sf))
        return XS_EBUSY;
    int r = deco_free_inner(&d->d);
    if (r)
        return r;
    if (d->own_sf) {
        r = xs_sf_free(d->sf);
        if (r)
            return r;
    }
    base_free(&d->d.b);
    return 0;
}

static const xs_executor_ops debounce_ops = {debounce_run, deco_close, debounce_free};

int xs_exec_debounce(xs_executor *inner, const xs_exec_opts *opts, xs_executor **out)
{
    opts = opts_or_default(opts);
    if (!inner_ok(inner) || !out || !opts)
        return XS_EINVAL;
    size_t sl = opts->scope ? strlen(opts->scope) : 0;
    if (sl > XS_SF_KEY_MAX)
        return XS_EINVAL;
    size_t plen = varint_len(sl) + sl;
    if (plen > XS_SF_KEY_MAX) /* no room for any key */
        return XS_EINVAL;
    debounce *d = deco_new(inner, opts, sizeof *d + plen, &debounce_ops);
    if (!d)
        return XS_ENOMEM;
    d->plen = plen;
    size_t k = varint_put(d->prefix, sl);
    if (sl)
        memcpy(d->prefix + k, opts->scope, sl);
    d->sf = opts->group;
    if (!d->sf) {
        xs_sf_options so = {.allocator = d->d.b.alloc};
        if (xs_sf_new(&so, &d->sf) != 0) {
            base_free(&d->d.b);
            return XS_ENOMEM;
        }
        d->own_sf = true;
    }
    *out = &d->d.b.ex;
    return 0;
}

/* ---- metrics ---- */

typedef struct statset {
    xs_stat_counter *ok, *err;
    xs_stat_timer *lat;
} statset;

typedef struct metrics {
    deco d;
    xs_stat_source *src;
    xs_clock *clock; /* NULL: the tick clock below */
    xs_map *sets;    /* name -> statset */
    statset all;
} metrics;

/*
 * The latency clock.  Two reads of CLOCK_MONOTONIC cost about 50 ns, more
 * than everything else the decorator does per action.  On x86-64 Linux
 * whose kernel clocksource is the TSC (the kernel has found it invariant
 * and synchronised across CPUs) latencies are read with rdtsc instead and
 * scaled to ns by a factor calibrated once against CLOCK_MONOTONIC (over 2
 * ms, at the first metrics executor of the process).  Elsewhere, and in
 * the portable build, ticks are xs_now() nanoseconds.  A negative interval
 * (a counter skew the kernel missed) is recorded as 0.
 */
static pthread_once_t tsc_once = PTHREAD_ONCE_INIT;

#if defined(__x86_64__) && defined(__linux__) && !defined(XS_PORTABLE)
#define XS_TSC 1

/* ns per tick << 32; 0: ticks are ns.  Set once, under tsc_once, before
 * the first metrics executor using it exists. */
static uint64_t tsc_mult;

/* A TSC reading taken with xs_now(): the midpoint of a tight bracket. */
static void tsc_sample(uint64_t *tsc, int64_t *ns)
{
    for (int tries = 0;; tries++) {
        uint64_t a = __builtin_ia32_rdtsc();
        int64_t n = xs_now();
        uint64_t b = __builtin_ia32_rdtsc();
        if (b - a < 20000 || tries == 100) {
            *tsc = a + (b - a) / 2;
            *ns = n;
            return;
        }
    }
}

static void tsc_calibrate(void)
{
    char cs[32] = {0};
    FILE *f = fopen("/sys/devices/system/clocksource/clocksource0/current_clocksource", "re");
    if (!f)
        return;
    bool tsc = fgets(cs, sizeof cs, f) && strncmp(cs, "tsc", 3) == 0 && (cs[3] == '\n' || !cs[3]);
    fclose(f);
    if (!tsc)
        return;
    uint64_t c0, c1;
    int64_t n0, n1;
    tsc_sample(&c0, &n0);
    struct timespec ts = {0, 2 * XS_MSEC};
    while (nanosleep(&ts, &ts) != 0)
        ;
    tsc_sample(&c1, &n1);
    if (c1 > c0 && n1 > n0)
        tsc_mult = (uint64_t)(((unsigned __int128)(uint64_t)(n1 - n0) << 32) / (c1 - c0));
}
#else
static void tsc_calibrate(void)
{
}
#endif

static inline int64_t ticks(void)
{
#ifdef XS_TSC
    if (tsc_mult)
        return (int64_t)__builtin_ia32_rdtsc();
#endif
    return xs_now();
}

static inline int64_t ticks_ns(int64_t d)
{
    if (d <= 0)
        return 0;
#ifdef XS_TSC
    if (tsc_mult)
        return (int64_t)(((unsigned __int128)(uint64_t)d * tsc_mult) >> 32);
#endif
    return d;
}

/* Asks src for "<name>.success", "<name>.error" and "<name>.latency". */
static int statset_make(metrics *m, const char *name, size_t len, statset *s)
{
    static const char sfx_ok[] = ".success", sfx_err[] = ".error", sfx_lat[] = ".latency";
    char sbuf[NAME_BUF], *buf = sbuf;
    size_t cap = len + sizeof sfx_lat; /* the longest suffix, with its NUL */
    if (cap > sizeof sbuf && !(buf = xs__alloc(m->d.b.alloc, cap)))
        return XS_ENOMEM;
    memcpy(buf, name, len);
    memcpy(buf + len, sfx_ok, sizeof sfx_ok);
    int r = xs_stat_counter_get(m->src, buf, &s->ok);
    if (!r) {
        memcpy(buf + len, sfx_err, sizeof sfx_err);
        r = xs_stat_counter_get(m->src, buf, &s->err);
    }
    if (!r) {
        memcpy(buf + len, sfx_lat, sizeof sfx_lat);
        r = xs_stat_timer_get(m->src, buf, &s->lat);
    }
    if (buf != sbuf)
        xs__free(m->d.b.alloc, buf, cap);
    return r;
}

static int statset_create(const void *key, size_t len, void *arg, void **value)
{
    metrics *m = arg;
    statset *s = xs__alloc(m->d.b.alloc, sizeof *s);
    if (!s)
        return XS_ENOMEM;
    int r = statset_make(m, key, len, s);
    if (r) {
        xs__free(m->d.b.alloc, s, sizeof *s);
        return r;
    }
    *value = s;
    return 0;
}

static void statset_destroy(void *value, void *arg)
{
    metrics *m = arg;
    xs__free(m->d.b.alloc, value, sizeof(statset));
}

static void emit(const statset *s, int r, int64_t ns)
{
    xs_stat_record(s->lat, ns);
    xs_stat_add(r ? s->err : s->ok, 1);
}

static int metrics_fn(xs_ctx *ctx, void *arg)
{
    const wrap *w = arg;
    const metrics *m = w->dec;
    int64_t ns, t0 = m->clock ? xs_clock_now(m->clock) : ticks();
    int r = w->a->fn(ctx, w->a->arg);
    if (m->clock) {
        ns = xs_clock_now(m->clock) - t0;
        ns = ns < 0 ? 0 : ns; /* as ticks_ns: a source never sees a negative latency */
    } else {
        ns = ticks_ns(ticks() - t0);
    }
    emit(&m->all, r, ns);
    if (w->aux)
        emit(w->aux, r, ns);
    return r;
}

static int metrics_run(xs_executor *ex, xs_ctx *ctx, const xs_action *a, size_t n, int *errs)
{
    metrics *m = (metrics *)(void *)ex;
    if (is_closed(ex)) {
        fill(errs, 0, n, XS_ECLOSED);
        return XS_ECLOSED;
    }
    wrapbuf w;
    int e = wrapbuf_get(&w, m->d.b.alloc, n);
    if (e) {
        fill(errs, 0, n, e);
        return e;
    }
    for (size_t i = 0; i < n; i++) {
        void *set = NULL;
        if (a[i].name) {
            e = xs_map_load_or_create(m->sets, a[i].name, strlen(a[i].name), statset_create, m,
                                      &set, NULL);
            if (e) {
                wrapbuf_put(&w, m->d.b.alloc);
                fill(errs, 0, n, e);
                return e;
            }
        }
        w.recs[i] = (wrap){&a[i], m, set};
        w.acts[i] = (xs_action){metrics_fn, &w.recs[i], a[i].name};
    }
    e = inner_run(&m->d, ctx, w.acts, n, errs);
    wrapbuf_put(&w, m->d.b.alloc);
    return e;
}

static int metrics_free(xs_executor *ex)
{
    metrics *m = (metrics *)(void *)ex;
    int r = deco_free_inner(&m->d);
    if (r)
        return r;
    xs_map_free(m->sets);
    base_free(&m->d.b);
    return 0;
}

static const xs_executor_ops metrics_ops = {metrics_run, deco_close, metrics_free};

int xs_exec_metrics(xs_executor *inner, xs_stat_source *src, const xs_exec_opts *opts,
                    xs_executor **out)
{
    opts = opts_or_default(opts);
    if (!inner_ok(inner) || !src || !out || !opts)
        return XS_EINVAL;
    metrics *m = deco_new(inner, opts, sizeof *m, &metrics_ops);
    if (!m)
        return XS_ENOMEM;
    m->src = src;
    m->clock = opts->clock;
    if (!m->clock)
        pthread_once(&tsc_once, tsc_calibrate);
    xs_map_options mo = {.destroy = statset_destroy, .destroy_arg = m, .allocator = m->d.b.alloc};
    int r = xs_map_new(&mo, &m->sets);
    if (!r) {
        r = statset_make(m, "all_actions", strlen("all_actions"), &m->all);
        if (r)
            xs_map_free(m->sets);
    }
    if (r) {
        base_free(&m->d.b);
        return r;
    }
    *out = &m->d.b.ex;
    return 0;
}

/* ---- rate limit ---- */

typedef struct ratelim {
    deco d;
    xs_rate *lim;
} ratelim;

static int rate_fn(xs_ctx *ctx, void *arg)
{
    const wrap *w = arg;
    const ratelim *rl = w->dec;
    int e = xs_rate_wait(rl->lim, ctx);
    return e ? e : w->a->fn(ctx, w->a->arg);
}

static int rate_run(xs_executor *ex, xs_ctx *ctx, const xs_action *a, size_t n, int *errs)
{
    ratelim *rl = (ratelim *)(void *)ex;
    if (is_closed(ex)) {
        fill(errs, 0, n, XS_ECLOSED);
        return XS_ECLOSED;
    }
    wrapbuf w;
    int e = wrapbuf_get(&w, rl->d.b.alloc, n);
    if (e) {
        fill(errs, 0, n, e);
        return e;
    }
    for (size_t i = 0; i < n; i++) {
        w.recs[i] = (wrap){&a[i], rl, NULL};
        w.acts[i] = (xs_action){rate_fn, &w.recs[i], a[i].name};
    }
    e = inner_run(&rl->d, ctx, w.acts, n, errs);
    wrapbuf_put(&w, rl->d.b.alloc);
    return e;
}

static int rate_free(xs_executor *ex)
{
    ratelim *rl = (ratelim *)(void *)ex;
    int r = deco_free_inner(&rl->d);
    if (r)
        return r;
    base_free(&rl->d.b);
    return 0;
}

static const xs_executor_ops rate_ops = {rate_run, deco_close, rate_free};

int xs_exec_rate_limit(xs_executor *inner, xs_rate *limiter, const xs_exec_opts *opts,
                       xs_executor **out)
{
    opts = opts_or_default(opts);
    if (!inner_ok(inner) || !limiter || !out || !opts)
        return XS_EINVAL;
    ratelim *rl = deco_new(inner, opts, sizeof *rl, &rate_ops);
    if (!rl)
        return XS_ENOMEM;
    rl->lim = limiter;
    *out = &rl->d.b.ex;
    return 0;
}
