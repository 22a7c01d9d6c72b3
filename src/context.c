/*
 * context — a tree of reference-counted nodes.
 *
 * Cancellable nodes (with_cancel/deadline/timeout) carry the state; value,
 * clock and without_cancel nodes only point at the nearest cancellable
 * ancestor ("canceler"), so done checks are two loads wherever they start.
 *
 * Locking: each cancellable node has a lock guarding its children list, its
 * after-functions, its waiters and its fd.  Locks nest only parent before
 * child, along one path, during cancellation (see cancel_node); everything
 * else takes one node lock at a time.  The clock's lock is a leaf.
 *
 * Lifetimes: `refs` counts user references; when it reaches zero a
 * cancellable node is cancelled and detached, even if it has children (they
 * end with it, as the header promises).  `mrefs` keeps the memory alive: 1 for
 * all user references together, 1 per child (children read their ancestors'
 * values, deadline and lock), and 1 per after-function handle still to be
 * stopped (stop locks the node).
 */
#include <xsync/context.h>

#include <fcntl.h>
#include <pthread.h>
#include <unistd.h>
#if defined(__linux__) && !defined(XS_PORTABLE)
#include <sys/eventfd.h>
#define XS_HAVE_EVENTFD 1
#endif

#include "context_internal.h"
#include "internal.h"
#include "park.h"
#include "timer.h"

enum kind { K_BACKGROUND, K_CANCEL, K_VALUE, K_DETACHED, K_CLOCK };

struct xs_ctx {
    _Atomic int32_t refs;
    _Atomic int32_t mrefs;
    uint8_t kind;
    xs_ctx *parent;              /* holds one of its mrefs; NULL for background */
    xs_ctx *canceler;            /* nearest cancellable node at or above, or NULL */
    xs_clock *clock;             /* resolved; NULL only for background */
    const xs_allocator *alloc;
    const void *key;             /* K_VALUE */
    void *value;

    /* ---- K_CANCEL only: other kinds are allocated without this part ---- */
    /* 0 while live, then -err.  Written once, under `lock`, with release
     * after `cause`; read with acquire.  Also the futex word of xs_ctx_wait. */
    _Atomic uint32_t state;
    int cause;
    xs__lock lock;
    uint32_t waiters;            /* threads in xs_ctx_wait; under lock */
    int64_t deadline;            /* effective deadline (own or inherited) */
    xs_clock *dl_clock;          /* the clock `deadline` is on */
    int dl_cause;                /* the cause `deadline` ends us with */
    xs_ctx *link_parent;         /* canceler we are registered with */
    /* In link_parent->kids.  Set true at creation; set false under
     * link_parent's lock, with release, once the parent will not touch this
     * node again; so an acquire load that sees false needs no lock. */
    _Atomic bool linked;
    xs__dnode *kids;             /* our children (their `sib` nodes) */
    xs__dnode sib;               /* in link_parent->kids; then a work-list link */
    xs__dnode *afters;
    xs__dnode *watches;      /* library waiters (context_internal.h) */
    int fd_read, fd_write;
    bool timer_armed;            /* written only at creation */
    xs__timer timer;
};

struct xs_ctx_after {
    void (*fn)(void *arg);
    void *arg;
    xs_ctx *owner;               /* the canceler it is registered with, or NULL */
    xs__dnode link;              /* in owner->afters (under its lock), then a fire list */
    bool armed;                  /* under owner->lock (no owner: "can never run") */
    _Atomic int refs;            /* 1 for the list or the run, 1 for the handle */
    const xs_allocator *alloc;
};

#define NODE_SIZE(kind) ((kind) == K_CANCEL ? sizeof(xs_ctx) : offsetof(xs_ctx, state))

static xs_ctx background = {.kind = K_BACKGROUND};

xs_ctx *xs_ctx_background(void)
{
    return &background;
}

static inline int err_of(uint32_t st)
{
    return -(int)st;
}

/* ---- after-functions ---- */

static void after_put(xs_ctx_after *h)
{
    if (atomic_fetch_sub_explicit(&h->refs, 1, memory_order_acq_rel) == 1)
        xs__free(h->alloc, h, sizeof *h);
}

static void *after_thread(void *arg)
{
    xs_ctx_after *h = arg;
    h->fn(h->arg);
    after_put(h);
    return NULL;
}

static bool spawn_detached(void *(*fn)(void *), void *arg)
{
    pthread_t th;
    pthread_attr_t attr;
    pthread_attr_init(&attr);
    pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
    bool ok = pthread_create(&th, &attr, fn, arg) == 0;
    pthread_attr_destroy(&attr);
    return ok;
}

static void fire(xs_ctx_after *h)
{
    if (!spawn_detached(after_thread, h))
        after_thread(h); /* documented fallback: run in the calling thread */
}

static void *fire_each(void *list)
{
    for (xs__dnode *n = list, *next; n; n = next) {
        next = n->next;
        fire(XS_CONTAINER_OF(n, xs_ctx_after, link));
    }
    return NULL;
}

/* Starts a thread per after-function.  Several are started from a thread of
 * their own, so a cancelling thread (or the timer thread, which every
 * deadline waits on) pays for one thread creation, not one per function. */
static void fire_all(xs__dnode *list)
{
    if (list && (!list->next || !spawn_detached(fire_each, list)))
        fire_each(list);
}

/* ---- cancellation ---- */

static void signal_fd(xs_ctx *c)
{
#ifdef XS_HAVE_EVENTFD
    uint64_t one = 1;
    ssize_t r = write(c->fd_write, &one, sizeof one);
#else
    char one = 1;
    ssize_t r = write(c->fd_write, &one, 1);
#endif
    (void)r; /* the fd only needs to be readable; a full counter/pipe already is */
}

/*
 * Ends c: c->lock is held and c is live.  Its after-functions go to
 * *fire_list, to run once no lock is held; its children are the caller's.
 */
static void end_locked(xs_ctx *c, uint32_t st, int cause, xs__dnode **fire_list)
{
    c->cause = cause;
    atomic_store_explicit(&c->state, st, memory_order_release);
    if (c->fd_write >= 0)
        signal_fd(c);
    if (c->waiters)
        xs__park_wake(&c->state, INT32_MAX);
    for (xs__dnode *n = c->afters, *next; n; n = next) {
        next = n->next;
        XS_CONTAINER_OF(n, xs_ctx_after, link)->armed = false;
        n->next = *fire_list;
        *fire_list = n;
    }
    c->afters = NULL;
    for (xs__dnode *n = c->watches, *next; n; n = next) {
        next = n->next;
        xs__ctx_waiter *w = XS_CONTAINER_OF(n, xs__ctx_waiter, link);
        w->armed = false;
        w->fn(w);
    }
    c->watches = NULL;
    if (c->timer_armed)
        xs__timer_del(c->clock, &c->timer, false);
}

static void unlink_from_parent(xs_ctx *c)
{
    if (!atomic_load_explicit(&c->linked, memory_order_acquire))
        return;
    xs_ctx *p = c->link_parent;
    xs__lock_acquire(&p->lock);
    if (atomic_load_explicit(&c->linked, memory_order_relaxed)) {
        xs__dremove(&p->kids, &c->sib);
        atomic_store_explicit(&c->linked, false, memory_order_relaxed);
    }
    xs__lock_release(&p->lock);
}

static inline bool live(const xs_ctx *c)
{
    return atomic_load_explicit(&c->state, memory_order_relaxed) == 0;
}

/*
 * Ends c (if live) and every descendant, then detaches c from its parent.
 * The walk is depth-first with lock coupling and no recursion: a node stays
 * locked until its whole subtree has ended, so whoever takes a node's lock
 * and finds it done also finds its subtree done (a second cancel returns
 * only once the first has finished), and a linked child cannot be freed
 * under us (its owner needs our lock to unlink it).
 */
static void cancel_node(xs_ctx *c, uint32_t st, int cause)
{
    xs__dnode *fire_list = NULL;
    xs_ctx *n = c;
    xs__lock_acquire(&c->lock);
    if (live(c))
        end_locked(c, st, cause, &fire_list);
    for (;;) {
        if (n->kids) { /* descend into the first child, keeping n locked */
            xs_ctx *kid = XS_CONTAINER_OF(n->kids, xs_ctx, sib);
            xs__lock_acquire(&kid->lock);
            xs__dremove(&n->kids, &kid->sib);
            /* A child already done was ended by its own cancel or release,
             * which came first; its subtree is done too. */
            if (live(kid))
                end_locked(kid, st, cause, &fire_list);
            n = kid;
            continue;
        }
        if (n == c)
            break;
        xs_ctx *p = n->link_parent;
        xs__lock_release(&n->lock);
        /* The last touch of n: its owner may free it once it sees this (we
         * still hold p, which its unlink would take). */
        atomic_store_explicit(&n->linked, false, memory_order_release);
        n = p;
    }
    xs__lock_release(&c->lock);
    unlink_from_parent(c);
    fire_all(fire_list); /* last: an after-function may free c */
}

static void on_deadline(xs__timer *t)
{
    xs_ctx *c = XS_CONTAINER_OF(t, xs_ctx, timer);
    cancel_node(c, (uint32_t)-XS_EDEADLINE, c->dl_cause);
}

int xs_ctx_cancel(xs_ctx *ctx, int cause)
{
    if (!ctx || ctx->kind != K_CANCEL)
        return XS_EINVAL;
    cancel_node(ctx, (uint32_t)-XS_ECANCELED, cause ? cause : XS_ECANCELED);
    return 0;
}

/* ---- construction and destruction ---- */

static xs_ctx *new_node(xs_ctx *parent, enum kind kind)
{
    const xs_allocator *a = xs_allocator_default();
    xs_ctx *c = xs__alloc(a, NODE_SIZE(kind));
    if (!c)
        return NULL;
    atomic_init(&c->refs, 1);
    atomic_init(&c->mrefs, 1);
    c->kind = (uint8_t)kind;
    c->parent = parent;
    if (parent->kind != K_BACKGROUND) /* the caller's reference keeps it >= 1 */
        atomic_fetch_add_explicit(&parent->mrefs, 1, memory_order_relaxed);
    c->canceler = parent->canceler;
    c->clock = parent->clock ? parent->clock : xs_clock_system();
    c->alloc = a;
    c->key = NULL;
    c->value = NULL;
    return c;
}

/* Frees c (no references of either kind left) and returns its parent, whose
 * memory reference the caller must drop. */
static xs_ctx *destroy(xs_ctx *c)
{
    xs_ctx *parent = c->parent;
    if (c->kind == K_CANCEL && c->fd_read >= 0) {
        close(c->fd_read);
        if (c->fd_write != c->fd_read)
            close(c->fd_write);
    }
    xs__free(c->alloc, c, NODE_SIZE(c->kind));
    return parent;
}

/* Drops one memory reference; true if it was the last. */
static bool drop_mem(xs_ctx *c)
{
    /* Acquire on the fast path pairs with the release in a handle's drop. */
    return atomic_load_explicit(&c->mrefs, memory_order_acquire) == 1 ||
           atomic_fetch_sub_explicit(&c->mrefs, 1, memory_order_acq_rel) == 1;
}

/* Drops a memory reference of c, freeing it and, in turn, ancestors that
 * nothing holds any more (a loop, not recursion). */
static void put_mem(xs_ctx *c)
{
    while (c && c->kind != K_BACKGROUND && drop_mem(c))
        c = destroy(c);
}

static int new_cancel(xs_ctx *parent, int64_t deadline, int dl_cause, xs_ctx **out)
{
    if (!parent || !out)
        return XS_EINVAL;
    xs_ctx *c = new_node(parent, K_CANCEL);
    if (!c)
        return XS_ENOMEM;
    c->canceler = c;
    atomic_init(&c->state, 0);
    c->cause = 0;
    atomic_init(&c->lock.word, 0);
    c->waiters = 0;
    c->link_parent = NULL;
    atomic_init(&c->linked, false);
    c->kids = NULL;
    c->afters = NULL;
    c->watches = NULL;
    c->fd_read = c->fd_write = -1;

    xs_ctx *p = parent->canceler;
    c->deadline = p ? p->deadline : XS_FOREVER;
    c->dl_clock = p ? p->dl_clock : NULL;
    c->dl_cause = p ? p->dl_cause : XS_EDEADLINE;
    /* Go's rule: only a parent deadline strictly earlier makes ours moot. */
    bool own = deadline != XS_FOREVER && !(c->dl_clock == c->clock && c->deadline < deadline);
    if (own) {
        c->deadline = deadline;
        c->dl_clock = c->clock;
        c->dl_cause = dl_cause ? dl_cause : XS_EDEADLINE;
    }

    /* Decided before c becomes visible to the parent's cancellation, which
     * reads timer_armed.  An inherited deadline that has passed (its timer
     * not yet run) also makes c born done: "a past deadline is born done". */
    bool expired = c->deadline != XS_FOREVER && c->dl_clock == c->clock &&
                   c->deadline <= xs_clock_now(c->clock);
    c->timer_armed = own && !expired;
    if (c->timer_armed) {
        c->timer.when = deadline;
        c->timer.fn = on_deadline;
        c->timer.slot = 0;
    }

    uint32_t st = 0;
    if (p) {
        xs__lock_acquire(&p->lock);
        st = atomic_load_explicit(&p->state, memory_order_relaxed);
        if (st) { /* born done: the parent's end comes first */
            c->cause = p->cause;
        } else if (!expired) {
            c->link_parent = p;
            xs__dpush(&p->kids, &c->sib);
            atomic_store_explicit(&c->linked, true, memory_order_relaxed);
        }
        xs__lock_release(&p->lock);
    }
    if (!st && expired) { /* born done: the deadline has passed */
        st = (uint32_t)-XS_EDEADLINE;
        c->cause = c->dl_cause;
    }
    if (st) {
        atomic_store_explicit(&c->state, st, memory_order_relaxed);
        c->timer_armed = false; /* c was never linked: nobody else sees it yet */
    } else if (c->timer_armed) {
        int r = xs__timer_add(c->clock, &c->timer);
        if (r) {
            unlink_from_parent(c); /* after this the parent never touches c */
            put_mem(c);
            return r;
        }
    }
    *out = c;
    return 0;
}

int xs_ctx_with_cancel(xs_ctx *parent, xs_ctx **out)
{
    return new_cancel(parent, XS_FOREVER, 0, out);
}

int xs_ctx_with_deadline(xs_ctx *parent, int64_t deadline, int cause, xs_ctx **out)
{
    if (deadline == XS_FOREVER) /* "never" is a plain cancellable context */
        return new_cancel(parent, XS_FOREVER, 0, out);
    return new_cancel(parent, deadline, cause, out);
}

int xs_ctx_with_timeout(xs_ctx *parent, int64_t timeout, int cause, xs_ctx **out)
{
    if (!parent || !out || timeout < 0)
        return XS_EINVAL;
    int64_t now = xs_clock_now(parent->clock);
    return xs_ctx_with_deadline(parent, xs__add_sat(now, timeout), cause, out);
}

static int new_plain(xs_ctx *parent, enum kind kind, xs_ctx **out, xs_ctx **made)
{
    if (!parent || !out)
        return XS_EINVAL;
    xs_ctx *c = new_node(parent, kind);
    if (!c)
        return XS_ENOMEM;
    *made = c;
    *out = c;
    return 0;
}

int xs_ctx_with_value(xs_ctx *parent, const void *key, void *value, xs_ctx **out)
{
    xs_ctx *c;
    if (!key)
        return XS_EINVAL;
    int r = new_plain(parent, K_VALUE, out, &c);
    if (r == 0) {
        c->key = key;
        c->value = value;
    }
    return r;
}

int xs_ctx_without_cancel(xs_ctx *parent, xs_ctx **out)
{
    xs_ctx *c;
    int r = new_plain(parent, K_DETACHED, out, &c);
    if (r == 0)
        c->canceler = NULL;
    return r;
}

int xs_ctx_with_clock(xs_ctx *parent, xs_clock *clock, xs_ctx **out)
{
    xs_ctx *c;
    if (!clock)
        return XS_EINVAL;
    int r = new_plain(parent, K_CLOCK, out, &c);
    if (r == 0)
        c->clock = clock;
    return r;
}

xs_ctx *xs_ctx_retain(xs_ctx *ctx)
{
    if (ctx && ctx->kind != K_BACKGROUND)
        atomic_fetch_add_explicit(&ctx->refs, 1, memory_order_relaxed);
    return ctx;
}

void xs_ctx_release(xs_ctx *c)
{
    if (!c || c->kind == K_BACKGROUND ||
        atomic_fetch_sub_explicit(&c->refs, 1, memory_order_acq_rel) != 1)
        return;
    if (c->kind == K_CANCEL) {
        /* Ends it if live; if not, waits out a cancellation still walking
         * its subtree; either way detaches it. */
        cancel_node(c, (uint32_t)-XS_ECANCELED, XS_ECANCELED);
        if (c->timer_armed) /* and a deadline callback still running */
            xs__timer_del(c->clock, &c->timer, true);
    }
    put_mem(c);
}

/* ---- queries ---- */

int xs_ctx_err(const xs_ctx *ctx)
{
    if (!ctx)
        return XS_EINVAL;
    const xs_ctx *c = ctx->canceler;
    return c ? err_of(atomic_load_explicit(&c->state, memory_order_acquire)) : 0;
}

int xs_ctx_cause(const xs_ctx *ctx)
{
    if (!ctx)
        return XS_EINVAL;
    const xs_ctx *c = ctx->canceler;
    /* Acquire on state makes the cause written before it visible. */
    if (!c || atomic_load_explicit(&c->state, memory_order_acquire) == 0)
        return 0;
    return c->cause;
}

bool xs_ctx_done(const xs_ctx *ctx)
{
    const xs_ctx *c = ctx ? ctx->canceler : NULL;
    return c && atomic_load_explicit(&c->state, memory_order_acquire) != 0;
}

bool xs_ctx_deadline(const xs_ctx *ctx, int64_t *deadline)
{
    const xs_ctx *c = ctx ? ctx->canceler : NULL;
    if (!c || c->deadline == XS_FOREVER)
        return false;
    if (deadline)
        *deadline = c->deadline;
    return true;
}

xs_clock *xs_ctx_clock(const xs_ctx *ctx)
{
    return ctx && ctx->clock ? ctx->clock : xs_clock_system();
}

int xs_ctx_value(const xs_ctx *ctx, const void *key, void **value)
{
    if (!ctx || !key)
        return XS_EINVAL;
    for (const xs_ctx *c = ctx; c; c = c->parent) {
        if (c->kind == K_VALUE && c->key == key) {
            if (value)
                *value = c->value;
            return 0;
        }
    }
    return XS_ENOENT;
}

/* ---- waiting ---- */

int xs_ctx_wait(xs_ctx *ctx, int64_t timeout)
{
    if (!ctx || timeout < 0)
        return XS_EINVAL;
    int64_t deadline = timeout == XS_FOREVER ? XS_FOREVER : xs__add_sat(xs_now(), timeout);
    xs_ctx *c = ctx->canceler;
    if (!c) { /* can never end: just let the time pass */
        _Atomic uint32_t never = 0;
        while (xs__park_wait(&never, 0, deadline) != XS_EDEADLINE)
            ;
        return 0;
    }
    uint32_t st = atomic_load_explicit(&c->state, memory_order_acquire);
    if (st)
        return err_of(st);
    /* Registered under the lock: a canceller either sees us counted and
     * wakes us after setting state, or set state before we re-check it. */
    xs__lock_acquire(&c->lock);
    c->waiters++;
    xs__lock_release(&c->lock);
    while ((st = atomic_load_explicit(&c->state, memory_order_acquire)) == 0)
        if (xs__park_wait(&c->state, 0, deadline) == XS_EDEADLINE)
            break;
    xs__lock_acquire(&c->lock);
    c->waiters--;
    xs__lock_release(&c->lock);
    return err_of(atomic_load_explicit(&c->state, memory_order_acquire));
}

/* ---- after-functions: registration and stop ---- */

int xs_ctx_after_func(xs_ctx *ctx, void (*fn)(void *arg), void *arg, xs_ctx_after **stop)
{
    if (!ctx || !fn)
        return XS_EINVAL;
    xs_ctx *c = ctx->canceler;
    if (!c && !stop)
        return 0; /* can never run and nobody will stop it */
    const xs_allocator *a = xs_allocator_default();
    xs_ctx_after *h = xs__alloc(a, sizeof *h);
    if (!h)
        return XS_ENOMEM;
    h->fn = fn;
    h->arg = arg;
    h->owner = NULL;
    h->alloc = a;
    if (!c) {
        h->armed = true; /* never runs; stop reports it stopped */
        atomic_init(&h->refs, 1);
        *stop = h;
        return 0;
    }
    atomic_init(&h->refs, stop ? 2 : 1);
    xs__lock_acquire(&c->lock);
    /* A local copy: once unlocked, a cancellation may clear h->armed. */
    bool armed = atomic_load_explicit(&c->state, memory_order_relaxed) == 0;
    h->armed = armed;
    if (armed) {
        h->owner = c;
        xs__dpush(&c->afters, &h->link);
        if (stop) /* we hold a user reference, so mrefs >= 1 already */
            atomic_fetch_add_explicit(&c->mrefs, 1, memory_order_relaxed);
    }
    xs__lock_release(&c->lock);
    if (!armed)
        fire(h); /* already done: run at once */
    if (stop)
        *stop = h;
    return 0;
}

bool xs_ctx_after_stop(xs_ctx_after *h)
{
    if (!h)
        return false;
    xs_ctx *c = h->owner;
    bool stopped;
    if (c) {
        xs__lock_acquire(&c->lock);
        stopped = h->armed;
        if (stopped) {
            xs__dremove(&c->afters, &h->link);
            h->armed = false;
        }
        xs__lock_release(&c->lock);
        if (stopped)
            after_put(h); /* the list's reference */
        put_mem(c);
    } else {
        stopped = h->armed;
    }
    after_put(h);
    return stopped;
}

/* ---- library waiters ---- */

bool xs__ctx_watch(xs_ctx *ctx, xs__ctx_waiter *w)
{
    xs_ctx *c = ctx->canceler;
    w->armed = false;
    if (!c)
        return true;
    xs__lock_acquire(&c->lock);
    bool live = atomic_load_explicit(&c->state, memory_order_relaxed) == 0;
    if (live) {
        w->armed = true;
        xs__dpush(&c->watches, &w->link);
    }
    xs__lock_release(&c->lock);
    return live;
}

bool xs__ctx_unwatch(xs_ctx *ctx, xs__ctx_waiter *w)
{
    xs_ctx *c = ctx->canceler;
    if (!c)
        return true;
    /* Taking the lock also waits out a cancellation running w->fn. */
    xs__lock_acquire(&c->lock);
    bool was = w->armed;
    if (was) {
        xs__dremove(&c->watches, &w->link);
        w->armed = false;
    }
    xs__lock_release(&c->lock);
    return was;
}

/* ---- fd ---- */

static int errno_code(int e)
{
    if (e == EMFILE || e == ENFILE)
        return XS_EMFILE;
    if (e == ENOMEM)
        return XS_ENOMEM;
    return -e;
}

/* Makes a readable-when-signalled pair; returns 0 or an error code. */
static int make_fd(int *rd, int *wr)
{
#ifdef XS_HAVE_EVENTFD
    int fd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
    if (fd < 0)
        return errno_code(errno);
    *rd = *wr = fd;
#else
    int p[2];
    if (pipe(p) != 0)
        return errno_code(errno);
    for (int i = 0; i < 2; i++) {
        fcntl(p[i], F_SETFD, FD_CLOEXEC);
        fcntl(p[i], F_SETFL, fcntl(p[i], F_GETFL) | O_NONBLOCK);
    }
    *rd = p[0];
    *wr = p[1];
#endif
    return 0;
}

static int never_fd = -1, never_err;
static pthread_once_t never_once = PTHREAD_ONCE_INIT;

static void never_init(void)
{
    int wr;
    never_err = make_fd(&never_fd, &wr); /* wr is never written */
}

int xs_ctx_fd(xs_ctx *ctx)
{
    if (!ctx)
        return XS_EINVAL;
    xs_ctx *c = ctx->canceler;
    if (!c) {
        pthread_once(&never_once, never_init);
        return never_err ? never_err : never_fd;
    }
    int r = 0;
    xs__lock_acquire(&c->lock);
    if (c->fd_read < 0) {
        r = make_fd(&c->fd_read, &c->fd_write);
        if (r == 0 && atomic_load_explicit(&c->state, memory_order_relaxed))
            signal_fd(c);
    }
    if (r == 0)
        r = c->fd_read;
    xs__lock_release(&c->lock);
    return r;
}
