/*
 * singleflight — one running call per key, waits that hear their own
 * context, and a call context that ends only when nobody is left.
 *
 * Table.  64 stripes, picked by the top bits of a seeded hash; each stripe is
 * a lock and a small chained table of the calls registered there (it doubles
 * when its chains grow long).  A call stays tied to its stripe for life: the
 * stripe's lock guards the call's bookkeeping too (interest, flags, the list
 * of async waiters), so one lock round trip registers, joins or finishes a
 * call and there is no global lock anywhere.
 *
 * Interest.  `interest` counts the callers still waiting for a call: the
 * sync leader while its context is live (it learns of its end through an
 * after-function, because its own thread is busy running fn), each sync
 * waiter, each async waiter.  The caller that takes it to zero abandons the
 * call: it unlinks it from the table at once (so the next caller starts
 * afresh: tailscale#18919) and cancels the call's own context.
 *
 * Waiting.  A sync waiter spins briefly, then parks on the call's word with
 * a context watch registered (no thread, no allocation).  The word is DONE
 * (bit 0) plus a counter the watch bumps when the waiter's context ends, so
 * a wake-up can never be lost between checking the flag and parking.
 *
 * Lifetimes.  Two counts per call.  `holders` counts references to the
 * result (each handed-out result, plus the runner until it has finished);
 * the value's destructor runs when it reaches zero, so internal bookkeeping
 * never delays it.  `mem` counts references to the call's memory: one for
 * all holders together, one per waiting sync caller, per armed
 * after-function and per async waiter record.
 *
 * The group itself is reference counted, on slow paths only: the user holds
 * one reference, every armed after-function one, every async runner one and
 * every abandoned call that is still running one.  xs_sf_free drops the
 * user's and waits for the others, so when it returns nothing of the group
 * runs any more.
 *
 * Lock order: a stripe lock, then a context's lock (probing a context under
 * the stripe lock).  Context watches and after-functions never take a
 * stripe lock while holding a context's; contexts are cancelled and
 * released only with no stripe lock held.
 */
#include <xsync/singleflight.h>

#include <pthread.h>

#include "context_internal.h"
#include "hash.h"
#include "internal.h"
#include "singleflight_internal.h"
#include "park.h"

#define NSTRIPES 64
#define STRIPE_SHIFT 58 /* 64 - log2(NSTRIPES) */
#define INLINE_HEADS 4
#define SPIN_ITERS 256 /* polls of a running call's word before parking */

#define WORD_DONE 1u
#define WORD_BUMP 2u

typedef struct sf_call sf_call;

typedef struct stripe {
    xs__lock lock;
    uint32_t count;    /* calls linked here */
    uint32_t mask;     /* buckets - 1 */
    uint32_t inflight; /* calls linked here once whose runner has not finished */
    uint32_t orphans;  /* of those, abandoned ones */
    sf_call **heads;
    sf_call *inline_heads[INLINE_HEADS];
} stripe;

/* Padded so that two stripes never share a cache line. */
typedef union stripe_slot {
    stripe s;
    char pad[64];
} stripe_slot;

struct xs_sf {
    stripe_slot *stripes; /* 64-byte aligned, inside this block */
    const xs_allocator *alloc;
    xs_sf_hash_fn hash;
    uint64_t seed;
    xs__hash_key hkey;
    _Atomic uint32_t refs; /* see the file comment */
};

#define SF_BLOCK_SIZE (sizeof(struct xs_sf) + 64 + NSTRIPES * sizeof(stripe_slot))

enum rec_state { REC_NEW, REC_JOINED, REC_TAKEN, REC_GONE };

/* An async waiter (xs_sf_do_async). */
typedef struct sf_rec {
    xs__dnode link; /* in call->recs, under the stripe lock */
    sf_call *call;  /* set when it joins; holds one `mem` of the call */
    stripe *st;
    xs_sf *sf;
    xs_sf_done_fn done;
    void *done_arg;
    xs_ctx *ctx;         /* retained */
    xs_ctx_after *after; /* NULL when ctx can never end */
    const xs_allocator *alloc;
    _Atomic int refs; /* 1 for its owner, 1 for its after-function */
    uint8_t state;    /* enum rec_state, under the stripe lock */
    bool creator;     /* it started the call */
} sf_rec;

struct sf_call {
    sf_call *next; /* chain, under the stripe lock */
    uint64_t hash;
    stripe *st;
    xs_sf *sf;
    const xs_allocator *alloc;
    _Atomic uint32_t word;
    _Atomic int32_t holders;
    _Atomic int32_t mem;

    /* under st->lock */
    int32_t interest;
    uint32_t sync_joined; /* sync waiters that ever joined: wake on finish */
    bool linked, done, abandoned;
    bool counted;         /* in st->inflight: it was linked, it will finish */
    bool leader_in;       /* the sync leader still counts in interest */
    xs__dnode *recs;      /* async waiters (sf_rec.link) */
    xs_ctx *fn_ctx;       /* until finish */

    /* set up before the call is visible, then read-only */
    bool own_ctx;  /* fn_ctx is ours to cancel */
    bool ctx_ref;  /* we hold a reference to fn_ctx */
    xs_sf_fn fn;
    void *arg;
    xs_ctx_after *leader_after;

    /* the result: written by the runner before DONE, read-only after */
    void *value;
    xs_sf_value_free vfree;
    int err;
    bool shared_all; /* more than one caller receives it */

    size_t keylen;
    unsigned char key[];
};

static const xs_sf_result empty_result = {NULL, 0, false, NULL};

/* ---- reference counts ---- */

/*
 * Drops one reference from *count; true if it was the last.  A count of 1
 * seen with acquire is ours alone (counts only grow from a reference the
 * grower holds), which spares the read-modify-write on the common path.
 * acq_rel otherwise: the last one sees every other holder's writes.
 */
static bool drop_ref(_Atomic int32_t *count)
{
    return atomic_load_explicit(count, memory_order_acquire) == 1 ||
           atomic_fetch_sub_explicit(count, 1, memory_order_acq_rel) == 1;
}

static void call_mem_put(sf_call *c)
{
    if (drop_ref(&c->mem))
        xs__free(c->alloc, c, sizeof *c + c->keylen);
}

static void call_holder_put(sf_call *c)
{
    if (drop_ref(&c->holders)) { /* the destructor sees what every holder did */
        if (c->vfree)
            c->vfree(c->value);
        call_mem_put(c);
    }
}

static void rec_put(sf_rec *r)
{
    if (atomic_fetch_sub_explicit(&r->refs, 1, memory_order_acq_rel) == 1) {
        if (r->call)
            call_mem_put(r->call);
        xs_ctx_release(r->ctx);
        xs__free(r->alloc, r, sizeof *r);
    }
}

static void group_get(xs_sf *sf)
{
    atomic_fetch_add_explicit(&sf->refs, 1, memory_order_relaxed);
}

/* xs_sf_free waits on this static word, never on the group, so the last
 * reference can be dropped and the waiter woken without touching memory
 * that may be freed the moment the count reaches zero. */
static _Atomic uint32_t group_epoch;

/* The caller must not touch sf afterwards. */
static void group_put(xs_sf *sf)
{
    /* Release: xs_sf_free, which acquires the zero, sees all our writes. */
    if (atomic_fetch_sub_explicit(&sf->refs, 1, memory_order_release) == 1) {
        atomic_fetch_add_explicit(&group_epoch, 1, memory_order_seq_cst);
        xs__park_wake(&group_epoch, INT32_MAX);
    }
}

/* The group whose done callbacks this thread is running (xs_sf_free from
 * one of them would wait for itself). */
static _Thread_local const xs_sf *delivering;

/* ---- the table ---- */

static inline uint64_t hash_of(const xs_sf *sf, const void *key, size_t len)
{
    if (sf->hash)
        return sf->hash(key, len, sf->seed);
    return xs__hash(&sf->hkey, key, len);
}

static inline stripe *stripe_of(xs_sf *sf, uint64_t h)
{
    return &sf->stripes[h >> STRIPE_SHIFT].s;
}

static sf_call *find_locked(stripe *st, uint64_t h, const void *key, size_t len)
{
    for (sf_call *c = st->heads[h & st->mask]; c; c = c->next)
        if (c->hash == h && c->keylen == len && (len == 0 || memcmp(c->key, key, len) == 0))
            return c;
    return NULL;
}

/* Doubles the bucket array; on allocation failure the chains just stay longer. */
static void grow_locked(xs_sf *sf, stripe *st)
{
    uint32_t nb = (st->mask + 1) * 2;
    sf_call **heads = xs__calloc(sf->alloc, nb * sizeof *heads);
    if (!heads)
        return;
    for (uint32_t i = 0; i <= st->mask; i++) {
        for (sf_call *c = st->heads[i], *next; c; c = next) {
            next = c->next;
            sf_call **h = &heads[c->hash & (nb - 1)];
            c->next = *h;
            *h = c;
        }
    }
    if (st->heads != st->inline_heads)
        xs__free(sf->alloc, st->heads, (st->mask + 1) * sizeof *heads);
    st->heads = heads;
    st->mask = nb - 1;
}

static void link_locked(xs_sf *sf, stripe *st, sf_call *c)
{
    sf_call **h = &st->heads[c->hash & st->mask];
    c->next = *h;
    *h = c;
    c->linked = true;
    if (!c->counted) { /* a call is linked once (forget and abandon unlink it) */
        c->counted = true;
        st->inflight++;
    }
    if (++st->count > 2 * (st->mask + 1) && st->mask < (1u << 24))
        grow_locked(sf, st);
}

static void unlink_locked(stripe *st, sf_call *c)
{
    sf_call **p = &st->heads[c->hash & st->mask];
    while (*p != c)
        p = &(*p)->next;
    *p = c->next;
    c->linked = false;
    st->count--;
}

/* Interest reached zero: nobody is left to receive the result. */
static void abandon_locked(sf_call *c, xs_ctx **cancel)
{
    c->abandoned = true;
    if (c->linked)
        unlink_locked(c->st, c);
    if (c->counted) { /* it still runs: it keeps the group alive till it ends */
        c->st->orphans++;
        group_get(c->sf);
    }
    if (c->own_ctx && c->fn_ctx) /* retained: the runner may release its own */
        *cancel = xs_ctx_retain(c->fn_ctx);
}

static void cancel_abandoned(xs_ctx *cancel)
{
    if (cancel) {
        xs_ctx_cancel(cancel, 0);
        xs_ctx_release(cancel);
    }
}

/* ---- contexts ---- */

/*
 * Whether ctx may end.  Only the background context is known never to: the
 * internal context interface has no query for the others (the watch's
 * `armed` flag is written by cancellations under the context's lock, so it
 * cannot be read from here).  Treating a context that cannot end as if it
 * could is correct and costs only the call's own context and a watch.
 */
static bool ctx_can_end(xs_ctx *ctx)
{
    return ctx != xs_ctx_background();
}

/* The call's own context: the caller's values, none of its cancellation. */
static int make_fn_ctx(xs_ctx *ctx, xs_ctx **out)
{
    xs_ctx *detached;
    int r = xs_ctx_without_cancel(ctx, &detached);
    if (r)
        return r;
    r = xs_ctx_with_cancel(detached, out);
    xs_ctx_release(detached); /* the child keeps what it needs of it */
    return r;
}

/* ---- calls ---- */

static sf_call *call_new(xs_sf *sf, stripe *st, uint64_t h, const void *key, size_t len)
{
    sf_call *c = xs__alloc(sf->alloc, sizeof *c + len);
    if (!c)
        return NULL;
    /* Field by field: a memset of the whole struct costs more here. */
    c->next = NULL;
    c->hash = h;
    c->st = st;
    c->sf = sf;
    c->alloc = sf->alloc;
    atomic_init(&c->word, 0);
    atomic_init(&c->holders, 1); /* the runner's */
    atomic_init(&c->mem, 1);     /* all holders' */
    c->interest = 0;
    c->sync_joined = 0;
    c->linked = c->done = c->abandoned = c->leader_in = c->counted = false;
    c->recs = NULL;
    c->fn_ctx = NULL;
    c->own_ctx = c->ctx_ref = false;
    c->fn = NULL;
    c->arg = NULL;
    c->leader_after = NULL;
    c->value = NULL;
    c->vfree = NULL;
    c->err = 0;
    c->shared_all = false;
    c->keylen = len;
    if (len)
        memcpy(c->key, key, len);
    return c;
}

/* Drops a call that was prepared but never ran (its `done` is set, under
 * the stripe lock, if it was ever visible to its after-function). */
static void call_discard(sf_call *c)
{
    if (c->leader_after && xs_ctx_after_stop(c->leader_after)) {
        group_put(c->sf); /* never the last: our caller is using the group */
        call_mem_put(c);
    }
    if (c->ctx_ref)
        xs_ctx_release(c->fn_ctx);
    call_holder_put(c);
}

/* The sync leader's context ended (an after-function, on its own thread). */
static void leader_gone(void *arg)
{
    sf_call *c = arg;
    xs_sf *sf = c->sf;
    xs_ctx *cancel = NULL;
    xs__lock_acquire(&c->st->lock);
    if (!c->done && c->leader_in) {
        c->leader_in = false;
        if (--c->interest == 0)
            abandon_locked(c, &cancel);
    }
    xs__lock_release(&c->st->lock);
    cancel_abandoned(cancel);
    call_mem_put(c);
    group_put(sf); /* last: sf may go with it */
}

/*
 * A sync leader whose context can end: the call with its own context and an
 * after-function on the leader's, made before the call becomes visible so
 * that failure leaves nothing behind.
 */
static int prepare_leader(xs_sf *sf, stripe *st, uint64_t h, const void *key, size_t len,
                          xs_ctx *ctx, sf_call **out)
{
    sf_call *c = call_new(sf, st, h, key, len);
    if (!c)
        return XS_ENOMEM;
    int r = make_fn_ctx(ctx, &c->fn_ctx);
    if (r) {
        xs__free(c->alloc, c, sizeof *c + len);
        return r;
    }
    c->own_ctx = c->ctx_ref = true;
    c->leader_in = true;
    c->interest = 1;
    group_get(sf);                                                 /* the after-function's */
    atomic_fetch_add_explicit(&c->mem, 1, memory_order_relaxed); /* likewise */
    r = xs_ctx_after_func(ctx, leader_gone, c, &c->leader_after);
    if (r) {
        xs_ctx_release(c->fn_ctx);
        group_put(sf); /* never the last: our caller is using the group */
        xs__free(c->alloc, c, sizeof *c + len);
        return r;
    }
    *out = c;
    return 0;
}

/*
 * Publishes the result and hands it to every caller still interested.
 * Returns with the runner's own holder reference still held.
 */
static void finish(sf_call *c, void *value, xs_sf_value_free vfree, int err, bool sync_leader)
{
    c->value = value;
    c->vfree = vfree;
    c->err = err;
    stripe *st = c->st;
    xs__lock_acquire(&st->lock);
    if (c->linked)
        unlink_locked(st, c);
    c->done = true;
    st->inflight--;
    bool orphan = c->abandoned;
    if (orphan)
        st->orphans--;
    int32_t nrecs = 0;
    for (xs__dnode *n = c->recs; n; n = n->next, nrecs++)
        XS_CONTAINER_OF(n, sf_rec, link)->state = REC_TAKEN;
    xs__dnode *recs = c->recs;
    c->recs = NULL;
    int32_t nsync = c->interest - (c->leader_in ? 1 : 0) - nrecs;
    c->shared_all = nsync + nrecs + (sync_leader ? 1 : 0) > 1;
    /* One reference per receiver, taken while ours keeps the count above 0. */
    atomic_fetch_add_explicit(&c->holders, nsync + nrecs, memory_order_relaxed);
    xs_ctx *fn_ctx = c->fn_ctx;
    c->fn_ctx = NULL;
    bool waiters = c->sync_joined != 0; /* only sync waiters read the word */
    xs__lock_release(&st->lock);
    if (orphan) /* nobody receives it (recs is empty): sf is not touched below */
        group_put(c->sf);
    xs_sf *sf = c->sf; /* for `delivering` only: never dereferenced below */
    if (waiters) {
        /* Release: a waiter that sees DONE sees the result written above. */
        atomic_fetch_or_explicit(&c->word, WORD_DONE, memory_order_release);
        xs__park_wake(&c->word, INT32_MAX);
    }
    if (c->own_ctx) /* ends the call's own context, even if fn kept a reference */
        xs_ctx_cancel(fn_ctx, 0);
    if (c->ctx_ref)
        xs_ctx_release(fn_ctx);
    /* Settle every watch first, so a callback below may free the group. */
    for (xs__dnode *n = recs; n; n = n->next) {
        sf_rec *r = XS_CONTAINER_OF(n, sf_rec, link);
        if (r->after && xs_ctx_after_stop(r->after)) {
            group_put(r->sf); /* may be the last: sf is not touched below */
            rec_put(r);       /* never the last: the list's reference remains */
        }
    }
    for (xs__dnode *n = recs, *next; n; n = next) {
        next = n->next;
        sf_rec *r = XS_CONTAINER_OF(n, sf_rec, link);
        xs_sf_result res = {c->value, c->err, r->creator ? c->shared_all : true, c};
        const xs_sf *outer = delivering;
        delivering = sf;
        r->done(r->done_arg, c->err, &res);
        delivering = outer;
        rec_put(r);
    }
}

/* ---- waiting ---- */

typedef struct sf_waiter {
    xs__ctx_waiter w;
    sf_call *call;
    _Atomic bool fired;
} sf_waiter;

/* Runs in the cancelling thread under the context's lock: flag and wake. */
static void on_ctx_end(xs__ctx_waiter *w)
{
    sf_waiter *sw = XS_CONTAINER_OF(w, sf_waiter, w);
    atomic_store_explicit(&sw->fired, true, memory_order_relaxed);
    /* Release: publishes `fired`; changing the word defeats a racing park. */
    atomic_fetch_add_explicit(&sw->call->word, WORD_BUMP, memory_order_release);
    xs__park_wake(&sw->call->word, INT32_MAX);
}

static int take_result(sf_call *c, xs_sf_result *res)
{
    /* Our holder reference was added by finish; drop the waiting one. */
    *res = (xs_sf_result){c->value, c->err, true, c};
    int err = c->err;
    call_mem_put(c);
    return err;
}

/*
 * A sync waiter of c (joined: interest, sync_joined and mem counted).
 * Returns the result, or the context's error once it has left.
 */
static int wait_for(sf_call *c, xs_ctx *ctx, xs_sf_result *res)
{
    /* Acquire on DONE pairs with finish's release: the result is visible. */
    for (int i = 0; i < SPIN_ITERS; i++) {
        if (atomic_load_explicit(&c->word, memory_order_acquire) & WORD_DONE)
            return take_result(c, res);
        xs__cpu_relax();
    }
    /* (When the task pool lands, this park is where a pool worker marks
     * itself blocked.) */
    sf_waiter sw = {.w = {.fn = on_ctx_end}, .call = c};
    atomic_init(&sw.fired, false);
    if (xs__ctx_watch(ctx, &sw.w)) {
        for (;;) {
            uint32_t v = atomic_load_explicit(&c->word, memory_order_acquire);
            if ((v & WORD_DONE) || atomic_load_explicit(&sw.fired, memory_order_relaxed))
                break;
            xs__park_wait(&c->word, v, XS_FOREVER);
        }
        xs__ctx_unwatch(ctx, &sw.w); /* after this the callback never runs */
        if (atomic_load_explicit(&c->word, memory_order_acquire) & WORD_DONE)
            return take_result(c, res);
    }
    /* Our context ended: leave, unless the result got here first. */
    xs_ctx *cancel = NULL;
    xs__lock_acquire(&c->st->lock);
    if (c->done) {
        xs__lock_release(&c->st->lock);
        return take_result(c, res);
    }
    if (--c->interest == 0)
        abandon_locked(c, &cancel);
    xs__lock_release(&c->st->lock);
    cancel_abandoned(cancel);
    call_mem_put(c);
    return xs_ctx_err(ctx);
}

static void join_sync_locked(sf_call *c)
{
    c->interest++;
    c->sync_joined++;
    atomic_fetch_add_explicit(&c->mem, 1, memory_order_relaxed);
}

/* ---- the sync leader ---- */

static int lead(sf_call *c, xs_sf_fn fn, void *arg, xs_sf_result *res)
{
    void *value = NULL;
    xs_sf_value_free vfree = NULL;
    int err = fn(c->fn_ctx, arg, &value, &vfree);
    if (c->leader_after && xs_ctx_after_stop(c->leader_after)) {
        group_put(c->sf); /* never the last: the call is in flight */
        call_mem_put(c);  /* never the last: we are a holder */
    }
    finish(c, value, vfree, err, true);
    *res = (xs_sf_result){value, err, c->shared_all, c}; /* the runner's reference */
    return err;
}

static bool key_ok(const void *key, size_t len)
{
    return (key || len == 0) && len <= XS_SF_KEY_MAX;
}

int xs_sf_do(xs_sf *sf, xs_ctx *ctx, const void *key, size_t keylen, xs_sf_fn fn, void *arg,
             xs_sf_result *res)
{
    if (res)
        *res = empty_result;
    if (!sf || !ctx || !fn || !res || !key_ok(key, keylen))
        return XS_EINVAL;
    int e = xs_ctx_err(ctx);
    if (e)
        return e;
    uint64_t h = hash_of(sf, key, keylen);
    stripe *st = stripe_of(sf, h);
    sf_call *prep = NULL;
    xs__lock_acquire(&st->lock);
    sf_call *c = find_locked(st, h, key, keylen);
    if (!c) {
        if (!ctx_can_end(ctx)) {
            /* Nothing can make this call lose its leader: fn gets ctx. */
            c = call_new(sf, st, h, key, keylen);
            if (!c) {
                xs__lock_release(&st->lock);
                return XS_ENOMEM;
            }
            c->fn_ctx = ctx;
            c->leader_in = true;
            c->interest = 1;
            link_locked(sf, st, c);
            xs__lock_release(&st->lock);
            return lead(c, fn, arg, res);
        }
        xs__lock_release(&st->lock);
        int r = prepare_leader(sf, st, h, key, keylen, ctx, &prep);
        if (r)
            return r;
        xs__lock_acquire(&st->lock);
        c = find_locked(st, h, key, keylen);
        prep->done = true; /* unless it runs after all, just below */
        if (!c && !prep->abandoned) {
            prep->done = false;
            link_locked(sf, st, prep);
            xs__lock_release(&st->lock);
            return lead(prep, fn, arg, res);
        }
        if (!c) { /* our context ended while we prepared */
            xs__lock_release(&st->lock);
            call_discard(prep);
            return xs_ctx_err(ctx);
        }
        /* somebody else registered the key meanwhile: join theirs */
    }
    join_sync_locked(c);
    xs__lock_release(&st->lock);
    if (prep)
        call_discard(prep);
    return wait_for(c, ctx, res);
}

/* ---- async ---- */

/* An async call's runner: it holds a group reference (taken by start_runner). */
static void run_call(void *arg)
{
    sf_call *c = arg;
    xs_sf *sf = c->sf;
    void *value = NULL;
    xs_sf_value_free vfree = NULL;
    int err = c->fn(c->fn_ctx, c->arg, &value, &vfree);
    finish(c, value, vfree, err, false);
    call_holder_put(c); /* the runner receives nothing itself */
    group_put(sf);      /* last */
}

static void *runner_thread(void *arg)
{
    run_call(arg);
    return NULL;
}

/*
 * Where an async call's function runs: a new detached thread for now.  This
 * is the one place to change when it moves to the task pool
 * (xs_pool_submit(xs_pool_default(), run_call, c)).  If no thread can be
 * started, the call runs in the calling thread.
 */
static void start_runner(sf_call *c)
{
    group_get(c->sf);
    pthread_t th;
    pthread_attr_t attr;
    bool ok = pthread_attr_init(&attr) == 0;
    if (ok) {
        pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
        ok = pthread_create(&th, &attr, runner_thread, c) == 0;
        pthread_attr_destroy(&attr);
    }
    if (!ok)
        run_call(c);
}

/* An async waiter's context ended (an after-function, on its own thread). */
static void rec_gone(void *arg)
{
    sf_rec *r = arg;
    xs_sf *sf = r->sf;
    xs_ctx *cancel = NULL;
    xs__lock_acquire(&r->st->lock);
    uint8_t state = r->state;
    if (state == REC_NEW) { /* not joined yet: the joining thread cleans up */
        r->state = REC_GONE;
    } else if (state == REC_JOINED) {
        sf_call *c = r->call;
        r->state = REC_GONE;
        xs__dremove(&c->recs, &r->link);
        if (--c->interest == 0)
            abandon_locked(c, &cancel);
    }
    xs__lock_release(&r->st->lock);
    if (state == REC_JOINED) {
        cancel_abandoned(cancel);
        xs_ctx_after_stop(r->after); /* we are its function: frees the handle */
        xs_sf_result res = empty_result;
        const xs_sf *outer = delivering; /* (we may run inside a canceller) */
        delivering = sf;
        r->done(r->done_arg, xs_ctx_err(r->ctx), &res);
        delivering = outer;
        rec_put(r); /* the owner's: nobody else will deliver */
    }
    rec_put(r);
    group_put(sf); /* last: sf may go with it */
}

/* Undoes a record that never joined. */
static void rec_discard(sf_rec *r)
{
    if (r->after && xs_ctx_after_stop(r->after)) {
        group_put(r->sf); /* never the last: our caller is using the group */
        rec_put(r);
    }
    rec_put(r);
}

int xs_sf_do_async(xs_sf *sf, xs_ctx *ctx, const void *key, size_t keylen, xs_sf_fn fn,
                   void *arg, xs_sf_done_fn done, void *done_arg)
{
    if (!sf || !ctx || !fn || !done || !key_ok(key, keylen))
        return XS_EINVAL;
    int e = xs_ctx_err(ctx);
    if (e)
        return e;
    uint64_t h = hash_of(sf, key, keylen);
    stripe *st = stripe_of(sf, h);

    sf_rec *r = xs__alloc(sf->alloc, sizeof *r);
    if (!r)
        return XS_ENOMEM;
    memset(r, 0, sizeof *r);
    r->st = st;
    r->sf = sf;
    r->done = done;
    r->done_arg = done_arg;
    r->ctx = xs_ctx_retain(ctx);
    r->alloc = sf->alloc;
    r->state = REC_NEW;
    atomic_init(&r->refs, 1);
    bool can_end = ctx_can_end(ctx);
    if (can_end) {
        group_get(sf);
        atomic_store_explicit(&r->refs, 2, memory_order_relaxed);
        int rr = xs_ctx_after_func(ctx, rec_gone, r, &r->after);
        if (rr) {
            group_put(sf); /* never the last */
            xs_ctx_release(r->ctx);
            xs__free(r->alloc, r, sizeof *r);
            return rr;
        }
    }

    sf_call *prep = NULL;
    bool created = false;
    xs__lock_acquire(&st->lock);
    sf_call *c = find_locked(st, h, key, keylen);
    if (!c && r->state != REC_GONE) {
        xs__lock_release(&st->lock);
        prep = call_new(sf, st, h, key, keylen);
        int rr = prep ? 0 : XS_ENOMEM;
        if (prep) {
            prep->fn = fn;
            prep->arg = arg;
            prep->ctx_ref = true;
            if (can_end) {
                rr = make_fn_ctx(ctx, &prep->fn_ctx);
                prep->own_ctx = true;
            } else {
                prep->fn_ctx = xs_ctx_retain(ctx);
            }
            if (rr) {
                xs__free(prep->alloc, prep, sizeof *prep + keylen);
                prep = NULL;
            }
        }
        if (!prep) {
            rec_discard(r);
            return rr;
        }
        xs__lock_acquire(&st->lock);
        c = find_locked(st, h, key, keylen);
        prep->done = true; /* unless it runs after all, just below */
        if (!c && r->state != REC_GONE) {
            prep->done = false;
            link_locked(sf, st, prep);
            c = prep;
            created = true;
        }
    }
    if (r->state == REC_GONE) { /* ctx ended before we joined */
        xs__lock_release(&st->lock);
        if (prep)
            call_discard(prep);
        e = xs_ctx_err(ctx);
        rec_discard(r);
        return e;
    }
    r->state = REC_JOINED;
    r->call = c;
    r->creator = created;
    atomic_fetch_add_explicit(&c->mem, 1, memory_order_relaxed); /* the record's */
    xs__dpush(&c->recs, &r->link);
    c->interest++;
    xs__lock_release(&st->lock);
    if (prep && !created)
        call_discard(prep);
    if (created)
        start_runner(c);
    return 0;
}

/* ---- the rest ---- */

int xs_sf_new(const xs_sf_options *opts, xs_sf **out)
{
    if (!out)
        return XS_EINVAL;
    *out = NULL;
    const xs_allocator *a = xs__allocator_resolve(opts ? opts->allocator : NULL);
    char *block = xs__alloc(a, SF_BLOCK_SIZE);
    if (!block)
        return XS_ENOMEM;
    xs_sf *sf = (xs_sf *)(void *)block;
    memset(sf, 0, sizeof *sf);
    uintptr_t p = (uintptr_t)(block + sizeof *sf);
    sf->stripes = (stripe_slot *)(void *)((p + 63) & ~(uintptr_t)63);
    for (int i = 0; i < NSTRIPES; i++) {
        stripe *st = &sf->stripes[i].s;
        memset(&sf->stripes[i], 0, sizeof sf->stripes[i]);
        atomic_init(&st->lock.word, 0);
        st->heads = st->inline_heads;
        st->mask = INLINE_HEADS - 1;
    }
    sf->alloc = a;
    sf->hash = opts ? opts->hash : NULL;
    sf->seed = opts && opts->seed ? opts->seed : xs__hash_random_seed();
    xs__hash_key_init(&sf->hkey, sf->seed);
    atomic_init(&sf->refs, 1); /* the user's */
    *out = sf;
    return 0;
}

bool xs__sf_busy(xs_sf *sf)
{
    if (delivering == sf)
        return true;
    /* All stripes at once (in order; nothing else holds two), so no call
     * can pass from one state to the other while we count. */
    bool busy = false;
    for (int i = 0; i < NSTRIPES; i++)
        xs__lock_acquire(&sf->stripes[i].s.lock);
    for (int i = 0; i < NSTRIPES; i++)
        busy |= sf->stripes[i].s.inflight != sf->stripes[i].s.orphans;
    for (int i = NSTRIPES - 1; i >= 0; i--)
        xs__lock_release(&sf->stripes[i].s.lock);
    return busy;
}

int xs_sf_free(xs_sf *sf)
{
    if (!sf)
        return 0;
    if (xs__sf_busy(sf))
        return XS_EBUSY;
    /* Wait out calls nobody waits for, runners and after-functions. */
    group_put(sf);
    for (;;) {
        uint32_t epoch = atomic_load_explicit(&group_epoch, memory_order_seq_cst);
        /* Acquire: pairs with the release of the last group_put. */
        if (atomic_load_explicit(&sf->refs, memory_order_acquire) == 0)
            break;
        xs__park_wait(&group_epoch, epoch, XS_FOREVER);
    }
    for (int i = 0; i < NSTRIPES; i++) {
        stripe *st = &sf->stripes[i].s;
        if (st->heads != st->inline_heads)
            xs__free(sf->alloc, st->heads, (st->mask + 1) * sizeof *st->heads);
    }
    xs__free(sf->alloc, sf, SF_BLOCK_SIZE);
    return 0;
}

int xs_sf_forget(xs_sf *sf, const void *key, size_t keylen)
{
    if (!sf || !key_ok(key, keylen))
        return XS_EINVAL;
    uint64_t h = hash_of(sf, key, keylen);
    stripe *st = stripe_of(sf, h);
    xs__lock_acquire(&st->lock);
    sf_call *c = find_locked(st, h, key, keylen);
    if (c)
        unlink_locked(st, c);
    xs__lock_release(&st->lock);
    return c ? 0 : XS_ENOENT;
}

int xs_sf_interested(xs_sf *sf, const void *key, size_t keylen)
{
    if (!sf || !key_ok(key, keylen))
        return XS_EINVAL;
    uint64_t h = hash_of(sf, key, keylen);
    stripe *st = stripe_of(sf, h);
    xs__lock_acquire(&st->lock);
    sf_call *c = find_locked(st, h, key, keylen);
    int n = c ? c->interest : 0;
    xs__lock_release(&st->lock);
    return n;
}

void xs_sf_result_release(xs_sf_result *res)
{
    if (!res || !res->ref_)
        return;
    sf_call *c = res->ref_;
    *res = empty_result;
    call_holder_put(c);
}

int xs_sf_result_retain(const xs_sf_result *res, xs_sf_result *out)
{
    if (!res || !out || !res->ref_)
        return XS_EINVAL;
    sf_call *c = res->ref_;
    /* Relaxed: the caller's own reference keeps the count above zero. */
    atomic_fetch_add_explicit(&c->holders, 1, memory_order_relaxed);
    *out = *res;
    return 0;
}
