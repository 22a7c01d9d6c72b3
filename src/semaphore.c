/*
 * semaphore — Go's semaphore.Weighted with a lock-free uncontended path.
 *
 * The state word.  One atomic 64-bit word holds the available weight
 * (size - held, signed: negative after a shrink below the held weight) and
 * two flags:
 *
 *   ST_BUSY     a slow-path operation owns the word (it holds `lock`)
 *   ST_QUEUED   the FIFO queue is not empty
 *
 * Fast paths (acquire, try_acquire, release) compare-and-swap the word only
 * while both flags are clear; everything else takes `lock`, sets ST_BUSY
 * with an atomic RMW (which sees every fast-path change before it) and from
 * then on is the only writer of the word: a fast-path CAS expects a value
 * with ST_BUSY clear, so it cannot succeed until the lock holder publishes
 * the new word, with ST_QUEUED recomputed, by one release store.
 *
 * Why a fast-path release never strands a waiter (the lost wake-up): a
 * waiter is queued under the lock, between the ST_BUSY RMW and the store
 * that publishes ST_QUEUED.  A fast release whose CAS precedes the RMW is
 * seen by it: the enqueuer decides "wait" on an avail that already includes
 * the released weight.  A fast release after the RMW finds ST_BUSY or
 * ST_QUEUED set, fails its CAS and goes to the slow path, which grants.  So
 * whenever the queue is not empty, the published word has ST_QUEUED set and
 * its head does not fit in avail (every slow path ends by granting what
 * fits), and only slow paths can change the word.
 *
 * Why acquires are ordered exactly with a resize: acquire only looks at the
 * available weight, never at the size, and resize changes the available
 * weight on the word itself.  Release checks `avail + n <= size` against a
 * size it loads separately; see the header for what that means for a
 * release racing a shrink.
 *
 * Waiters.  A blocked acquire puts a node on its own stack into the queue
 * (n <= size) or the oversize list (n > size: it blocks nobody), both kept
 * in arrival (ticket) order, and waits on the node's 32-bit word: GRANTED
 * is set under the lock by whoever hands it weight, CTX_DONE by its
 * context's cancellation callback; SLEEPING tells them a futex wake is
 * needed.  After GRANTED is set the granter touches nothing of the node but
 * the address of its word for the wake (the owner may already have
 * returned; a stray wake is harmless: every park loop re-checks its word).
 *
 * Why a grant racing a cancellation gives the weight back: GRANTED is set
 * only under the lock, on a node it unlinks at the same time.  A woken
 * waiter first unwatches its context, then: GRANTED and the context done
 * means the weight goes back through the lock (granting whoever fits);
 * not GRANTED means it takes the lock, under which GRANTED cannot change,
 * and either finds a grant slipped in (gives it back) or unlinks itself
 * (granting those behind if it was the head).  A failed acquire never
 * keeps weight, and weight it gives back is never left idle with a
 * waiter that fits.
 */
#include <xsync/semaphore.h>

#include "context_internal.h"
#include "internal.h"
#include "park.h"

#define ST_BUSY UINT64_C(1)
#define ST_QUEUED UINT64_C(2)
#define ST_FLAGS (ST_BUSY | ST_QUEUED)
#define ST_SHIFT 2

#define W_SLEEPING 1u
#define W_GRANTED 2u
#define W_CTX_DONE 4u

/* Pauses a waiter spins before it parks: about 5 us on current x86, the
 * order of a futex sleep and wake-up.  With one thread per CPU a hand-off
 * takes ~0.1 us, so waiters near the head are granted while spinning; when
 * threads outnumber CPUs the spinning mostly delays the granted thread. */
#define SPIN_ROUNDS 200

struct waiter {
    struct waiter *prev, *next; /* under lock */
    int64_t n;
    uint64_t ticket;            /* arrival order */
    bool oversize;              /* in s->oversize rather than s->queue */
    _Atomic uint32_t word;      /* W_* bits */
    xs__ctx_waiter cw;
};

struct list {
    struct waiter *head, *tail;
};

struct xs_sem {
    _Atomic uint64_t state;     /* avail << ST_SHIFT | ST_* */
    _Atomic int64_t size;       /* written under lock; read anywhere */
    xs_ctx *background;         /* never done: acquire skips the check */
    _Atomic int64_t nwaiters;   /* written under lock; read anywhere */
    xs__lock lock;
    struct list queue;          /* n <= size, FIFO; under lock */
    struct list oversize;       /* n > size, arrival order; under lock */
    uint64_t next_ticket;       /* under lock */
    const xs_allocator *alloc;
};

static inline int64_t st_avail(uint64_t st)
{
    return (int64_t)st >> ST_SHIFT; /* arithmetic shift keeps the sign */
}

static inline uint64_t st_make(int64_t avail, uint64_t flags)
{
    return ((uint64_t)avail << ST_SHIFT) | flags;
}

static inline bool weight_ok(int64_t n)
{
    return n >= 0 && n <= XS_SEM_MAX;
}

/* ---- lists (under lock) ---- */

static void list_append(struct list *l, struct waiter *w)
{
    w->next = NULL;
    w->prev = l->tail;
    if (l->tail)
        l->tail->next = w;
    else
        l->head = w;
    l->tail = w;
}

static void list_remove(struct list *l, struct waiter *w)
{
    if (w->prev)
        w->prev->next = w->next;
    else
        l->head = w->next;
    if (w->next)
        w->next->prev = w->prev;
    else
        l->tail = w->prev;
}

/* ---- the slow-path protocol ---- */

/* Takes the lock and the word; returns the available weight. */
static int64_t sem_lock(xs_sem *s)
{
    xs__lock_acquire(&s->lock);
    /* Acquire: pairs with the release CAS of fast-path releases, whose
     * weight this lock holder may hand to a waiter. */
    uint64_t st = atomic_fetch_or_explicit(&s->state, ST_BUSY, memory_order_acquire);
    return st_avail(st);
}

/* Publishes the word (clearing ST_BUSY) and drops the lock. */
static void sem_unlock(xs_sem *s, int64_t avail)
{
    uint64_t flags = s->queue.head ? ST_QUEUED : 0;
    /* Release: a fast-path acquire that takes weight freed here sees the
     * writes of whoever released it. */
    atomic_store_explicit(&s->state, st_make(avail, flags), memory_order_release);
    xs__lock_release(&s->lock);
}

static void waiters_add(xs_sem *s, int64_t d)
{
    int64_t v = atomic_load_explicit(&s->nwaiters, memory_order_relaxed);
    atomic_store_explicit(&s->nwaiters, v + d, memory_order_relaxed);
}

/* Grants queued waiters in order while the head fits; returns what is left. */
static int64_t grant_waiters(xs_sem *s, int64_t avail)
{
    struct waiter *w;
    while ((w = s->queue.head) != NULL && w->n <= avail) {
        avail -= w->n;
        list_remove(&s->queue, w);
        waiters_add(s, -1);
        _Atomic uint32_t *word = &w->word;
        /* Release: the waiter's acquire load sees the releases that freed
         * this weight (they happen before our lock).  From here on the node
         * may be gone. */
        uint32_t old = atomic_fetch_or_explicit(word, W_GRANTED, memory_order_release);
        if (old & W_SLEEPING)
            xs__park_wake(word, 1);
    }
    return avail;
}

/*
 * Re-sorts every waiter into the queue (fits in `size`) or the oversize
 * list (does not), keeping arrival order in both: a merge of the two lists
 * by ticket, splitting as it goes.
 */
static void repartition(xs_sem *s, int64_t size)
{
    struct list q = {NULL, NULL}, o = {NULL, NULL};
    struct waiter *a = s->queue.head, *b = s->oversize.head;
    while (a || b) {
        struct waiter *w;
        if (!b || (a && a->ticket < b->ticket)) {
            w = a;
            a = a->next;
        } else {
            w = b;
            b = b->next;
        }
        w->oversize = w->n > size;
        list_append(w->oversize ? &o : &q, w);
    }
    s->queue = q;
    s->oversize = o;
}

/* ---- waiting ---- */

static void on_ctx_done(xs__ctx_waiter *cw)
{
    struct waiter *w = XS_CONTAINER_OF(cw, struct waiter, cw);
    /* The owner unwatches before its node goes, so w is alive here. */
    uint32_t old = atomic_fetch_or_explicit(&w->word, W_CTX_DONE, memory_order_release);
    if (old & W_SLEEPING)
        xs__park_wake(&w->word, 1);
}

/* Returns once the word carries W_GRANTED or W_CTX_DONE. */
static void wait_word(struct waiter *w)
{
    for (int i = 0; i < SPIN_ROUNDS; i++) {
        if (atomic_load_explicit(&w->word, memory_order_acquire) != 0)
            return;
        xs__cpu_relax();
    }
    uint32_t expect = 0;
    /* Acquire on failure: the grant or cancel that beat us is then seen. */
    if (!atomic_compare_exchange_strong_explicit(&w->word, &expect, W_SLEEPING,
                                                 memory_order_acquire, memory_order_acquire))
        return;
    while (atomic_load_explicit(&w->word, memory_order_acquire) == W_SLEEPING)
        xs__park_wait(&w->word, W_SLEEPING, XS_FOREVER);
}

/* Gives weight n back and grants whoever now fits. */
static void give_back(xs_sem *s, int64_t n)
{
    int64_t avail = sem_lock(s);
    sem_unlock(s, grant_waiters(s, avail + n));
}

/* Out of line, so the fast paths stay small (no frame for the waiter). */
#define SLOW_PATH __attribute__((noinline))

static SLOW_PATH int acquire_slow(xs_sem *s, xs_ctx *ctx, int64_t n)
{
    int64_t avail = sem_lock(s);
    if (!s->queue.head && avail >= n) {
        sem_unlock(s, avail - n);
        return 0;
    }
    struct waiter w;
    w.n = n;
    w.ticket = s->next_ticket++;
    w.oversize = n > atomic_load_explicit(&s->size, memory_order_relaxed);
    atomic_init(&w.word, 0);
    w.cw.fn = on_ctx_done;
    list_append(w.oversize ? &s->oversize : &s->queue, &w);
    waiters_add(s, 1);
    sem_unlock(s, avail);

    if (!xs__ctx_watch(ctx, &w.cw))
        atomic_fetch_or_explicit(&w.word, W_CTX_DONE, memory_order_relaxed);
    wait_word(&w);
    xs__ctx_unwatch(ctx, &w.cw); /* from here on only granters touch w.word */

    if (atomic_load_explicit(&w.word, memory_order_acquire) & W_GRANTED) {
        if (!xs_ctx_done(ctx))
            return 0;
        give_back(s, n); /* the grant raced the cancellation: undo it */
        return xs_ctx_err(ctx);
    }

    /* The context ended first; leave, unless a grant slipped in meanwhile. */
    avail = sem_lock(s);
    if (atomic_load_explicit(&w.word, memory_order_relaxed) & W_GRANTED) {
        avail = grant_waiters(s, avail + n);
    } else {
        bool was_head = s->queue.head == &w;
        list_remove(w.oversize ? &s->oversize : &s->queue, &w);
        waiters_add(s, -1);
        if (was_head) /* those behind a cancelled head may fit now */
            avail = grant_waiters(s, avail);
    }
    sem_unlock(s, avail);
    return xs_ctx_err(ctx);
}

static SLOW_PATH int try_acquire_slow(xs_sem *s, int64_t n)
{
    int64_t avail = sem_lock(s);
    bool ok = !s->queue.head && avail >= n;
    sem_unlock(s, ok ? avail - n : avail);
    return ok ? 0 : XS_EAGAIN;
}

static SLOW_PATH int release_slow(xs_sem *s, int64_t n)
{
    int64_t avail = sem_lock(s);
    if (avail > atomic_load_explicit(&s->size, memory_order_relaxed) - n) {
        sem_unlock(s, avail);
        return XS_EINVAL;
    }
    sem_unlock(s, grant_waiters(s, avail + n));
    return 0;
}

/* ---- public API ---- */

int xs_sem_new(int64_t size, const xs_allocator *alloc, xs_sem **out)
{
    if (!out || !weight_ok(size))
        return XS_EINVAL;
    alloc = xs__allocator_resolve(alloc);
    xs_sem *s = xs__calloc(alloc, sizeof *s);
    if (!s)
        return XS_ENOMEM;
    atomic_init(&s->state, st_make(size, 0));
    atomic_init(&s->size, size);
    atomic_init(&s->nwaiters, 0);
    s->alloc = alloc;
    s->background = xs_ctx_background();
    *out = s;
    return 0;
}

int xs_sem_free(xs_sem *s)
{
    if (!s)
        return 0;
    if (atomic_load_explicit(&s->nwaiters, memory_order_acquire) != 0)
        return XS_EBUSY;
    xs__free(s->alloc, s, sizeof *s);
    return 0;
}

int xs_sem_acquire(xs_sem *s, xs_ctx *ctx, int64_t n)
{
    if (XS_UNLIKELY(!s || !ctx || !weight_ok(n)))
        return XS_EINVAL;
    /* A done context fails even when the weight is free. */
    if (ctx != s->background && XS_UNLIKELY(xs_ctx_done(ctx)))
        return xs_ctx_err(ctx);
    uint64_t st = atomic_load_explicit(&s->state, memory_order_relaxed);
    while (!(st & ST_FLAGS) && st_avail(st) >= n) {
        /* Acquire: pairs with the release that freed this weight. */
        if (atomic_compare_exchange_weak_explicit(&s->state, &st, st - ((uint64_t)n << ST_SHIFT),
                                                  memory_order_acquire, memory_order_relaxed))
            return 0;
    }
    return acquire_slow(s, ctx, n);
}

int xs_sem_try_acquire(xs_sem *s, int64_t n)
{
    if (XS_UNLIKELY(!s || !weight_ok(n)))
        return XS_EINVAL;
    uint64_t st = atomic_load_explicit(&s->state, memory_order_relaxed);
    /* Decide only on published words: a word marked busy may already be
     * out of date (a grant can be seen before the word is republished). */
    while (!(st & ST_BUSY)) {
        if ((st & ST_QUEUED) || st_avail(st) < n)
            return XS_EAGAIN; /* someone is queued, or n does not fit, as of this load */
        if (atomic_compare_exchange_weak_explicit(&s->state, &st, st - ((uint64_t)n << ST_SHIFT),
                                                  memory_order_acquire, memory_order_relaxed))
            return 0;
    }
    return try_acquire_slow(s, n);
}

int xs_sem_release(xs_sem *s, int64_t n)
{
    if (XS_UNLIKELY(!s || !weight_ok(n)))
        return XS_EINVAL;
    if (n == 0)
        return 0;
    uint64_t st = atomic_load_explicit(&s->state, memory_order_relaxed);
    while (!(st & ST_FLAGS)) {
        int64_t size = atomic_load_explicit(&s->size, memory_order_relaxed);
        if (st_avail(st) > size - n)
            break; /* looks like an over-release: the slow path decides */
        /* Release: publishes the holder's writes to the next acquirer. */
        if (atomic_compare_exchange_weak_explicit(&s->state, &st, st + ((uint64_t)n << ST_SHIFT),
                                                  memory_order_release, memory_order_relaxed))
            return 0;
    }
    return release_slow(s, n);
}

int xs_sem_resize(xs_sem *s, int64_t size)
{
    if (!s || !weight_ok(size))
        return XS_EINVAL;
    int64_t avail = sem_lock(s);
    avail += size - atomic_load_explicit(&s->size, memory_order_relaxed);
    /* More available than the size means held < 0: only an over-release
     * that raced a shrink gets here (documented).  Dropping the excess keeps
     * the packed field in range however close to XS_SEM_MAX we are. */
    if (avail > size)
        avail = size;
    atomic_store_explicit(&s->size, size, memory_order_relaxed);
    repartition(s, size);
    sem_unlock(s, grant_waiters(s, avail));
    return 0;
}

int64_t xs_sem_size(const xs_sem *s)
{
    if (!s)
        return XS_EINVAL;
    return atomic_load_explicit(&s->size, memory_order_relaxed);
}

int64_t xs_sem_held(xs_sem *s)
{
    if (!s)
        return XS_EINVAL;
    /* Under the lock the size is fixed, so one load of the word gives a
     * consistent held weight even while fast paths run. */
    xs__lock_acquire(&s->lock);
    int64_t size = atomic_load_explicit(&s->size, memory_order_relaxed);
    int64_t avail = st_avail(atomic_load_explicit(&s->state, memory_order_relaxed));
    xs__lock_release(&s->lock);
    return size - avail;
}

int64_t xs_sem_waiters(const xs_sem *s)
{
    if (!s)
        return XS_EINVAL;
    return atomic_load_explicit(&s->nwaiters, memory_order_relaxed);
}
