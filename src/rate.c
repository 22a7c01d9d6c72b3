/*
 * rate — Go's token bucket (x/time/rate) and Sometimes.
 *
 * The limiter is Go's: a double number of tokens at time `last`, refilled
 * lazily when a call looks at it, and `last_event`, the time to act of the
 * latest reservation, which cancel uses to work out how many tokens it may
 * give back.  The arithmetic works on a plain copy of that state (a bucket).
 *
 * Concurrency: writers hold an xs__lock (nothing under it blocks, allocates
 * or calls user code) and publish each change under a sequence count.  Every
 * call first works on a consistent snapshot, read without the lock and
 * without writing shared memory.  A call that fails there is done — failed
 * calls change nothing, so failing on the snapshot is failing at the moment
 * it was taken — which keeps an overloaded limiter, refusing most calls,
 * from serialising its callers.  A grant takes the lock and publishes the
 * state it computed if no writer came since the snapshot, else computes
 * again.
 *
 * Differences from Go, all deliberate (see rate.h): time is clamped so it
 * never goes back; the wait for a deficit is rounded up, not truncated, and
 * saturates instead of overflowing; limit 0 is handled by the arithmetic (the
 * bucket just never refills) instead of by spending the burst; a cancelled
 * reservation cannot give tokens back twice; failed calls change nothing.
 */
#include <xsync/rate.h>

#include <stddef.h>

#include <xsync/error.h>
#include <xsync/time.h>

#include "internal.h"
#include "park.h"

/* The limiter's state, as the arithmetic sees it. */
typedef struct bucket {
    double limit;       /* events per second; XS_RATE_INF: no limit */
    int64_t burst;
    double tokens;      /* tokens at time `last`; negative while reservations wait */
    int64_t last;       /* the latest time the state was advanced to; never decreases */
    int64_t last_event; /* the time to act of the latest reservation */
} bucket;

/*
 * The same fields, atomic so that snapshot readers race with nothing.
 * Writers change them only with `lock` held and `seq` odd; `seq` is even
 * between changes.  A reader that sees the same even `seq` before and after
 * its (relaxed) loads has a state some writer published in full.
 */
struct xs_rate {
    xs__lock lock;
    _Atomic uint64_t seq; /* 64 bits: it never wraps, so equal means unchanged */
    _Atomic double limit;
    _Atomic int64_t burst;
    _Atomic double tokens;
    _Atomic int64_t last;
    _Atomic int64_t last_event;
    const xs_allocator *alloc;
};

/* ---- the state: loading, publishing, snapshots ---- */

/* Relaxed loads: under the lock they see the last writer's stores (its
 * unlock released them); in a snapshot `seq` checks them. */
static bucket load(const xs_rate *lim)
{
    return (bucket){
        .limit = atomic_load_explicit(&lim->limit, memory_order_relaxed),
        .burst = atomic_load_explicit(&lim->burst, memory_order_relaxed),
        .tokens = atomic_load_explicit(&lim->tokens, memory_order_relaxed),
        .last = atomic_load_explicit(&lim->last, memory_order_relaxed),
        .last_event = atomic_load_explicit(&lim->last_event, memory_order_relaxed),
    };
}

/* Stores b as the new state.  Lock held. */
static void publish(xs_rate *lim, const bucket *b)
{
    uint64_t q = atomic_load_explicit(&lim->seq, memory_order_relaxed);
    atomic_store_explicit(&lim->seq, q + 1, memory_order_relaxed);
    /* Release fence: a reader whose loads see any store below also sees
     * seq odd (or later) on its re-check, after its acquire fence. */
    atomic_thread_fence(memory_order_release);
    atomic_store_explicit(&lim->limit, b->limit, memory_order_relaxed);
    atomic_store_explicit(&lim->burst, b->burst, memory_order_relaxed);
    atomic_store_explicit(&lim->tokens, b->tokens, memory_order_relaxed);
    atomic_store_explicit(&lim->last, b->last, memory_order_relaxed);
    atomic_store_explicit(&lim->last_event, b->last_event, memory_order_relaxed);
    /* Release: a reader that acquires the even value sees every store above. */
    atomic_store_explicit(&lim->seq, q + 2, memory_order_release);
}

/* A consistent copy of the state without the lock, and its number in *seq;
 * or false if a writer was busy (the caller then takes the lock). */
static bool snapshot(const xs_rate *lim, bucket *b, uint64_t *seq)
{
    uint64_t q = atomic_load_explicit(&lim->seq, memory_order_acquire);
    if (q & 1)
        return false;
    *b = load(lim);
    /* Acquire fence: pairs with publish's release fence (see there). */
    atomic_thread_fence(memory_order_acquire);
    *seq = q;
    return atomic_load_explicit(&lim->seq, memory_order_relaxed) == q;
}

/* A consistent copy of the state: a snapshot, or under the lock if a writer
 * is busy. */
static bucket current(xs_rate *lim)
{
    bucket b;
    uint64_t seq;
    if (!snapshot(lim, &b, &seq)) {
        xs__lock_acquire(&lim->lock);
        b = load(lim);
        xs__lock_release(&lim->lock);
    }
    return b;
}

/* ---- arithmetic (Go's, with the fixes listed above) ---- */

static bool is_inf(double limit)
{
    return limit >= XS_RATE_INF;
}

static bool bad_limit(double limit)
{
    return !(limit >= 0); /* negative or NaN */
}

static bool bad_count(int64_t n)
{
    return n < 0 || n > XS_RATE_MAX_N;
}

/* a - b clamped to [INT64_MIN, INT64_MAX]. */
static int64_t sub_sat(int64_t a, int64_t b)
{
    int64_t r;
    if (__builtin_sub_overflow(a, b, &r))
        return b < 0 ? INT64_MAX : INT64_MIN;
    return r;
}

/* Go's Duration.Seconds: whole seconds and nanoseconds converted apart. */
static double seconds(int64_t d)
{
    return (double)(d / XS_SEC) + (double)(d % XS_SEC) / 1e9;
}

/* The tokens that accrue in d >= 0 ns. */
static double tokens_from_duration(double limit, int64_t d)
{
    return limit > 0 ? seconds(d) * limit : 0;
}

/*
 * The wait for `tokens` > 0 at limit > 0: the smallest whole ns after which
 * tokens_from_duration gives them back (Go truncates, which can leave the
 * waiter a hair short), or XS_FOREVER when that does not fit in an int64_t.
 */
static int64_t duration_from_tokens(double limit, double tokens)
{
    double ns = tokens / limit * 1e9;
    if (!(ns < 0x1p63)) /* also +inf */
        return XS_FOREVER;
    int64_t d = (int64_t)ns; /* truncates; then round up (no libm needed) */
    if ((double)d < ns)
        d++;
    /* the division rounds: at most a step or two short */
    for (int i = 0; i < 2 && d < XS_FOREVER && tokens_from_duration(limit, d) < tokens; i++)
        d++;
    return d;
}

/*
 * The tokens at time *t, capped at the burst, without changing b; *t is
 * clamped so it never precedes b->last (time going back adds and loses
 * nothing).
 */
static double advance(const bucket *b, int64_t *t)
{
    if (*t < b->last)
        *t = b->last;
    double tokens = b->tokens + tokens_from_duration(b->limit, sub_sat(*t, b->last));
    double burst = (double)b->burst;
    return tokens > burst ? burst : tokens;
}

/*
 * Go's reserveN.  Grants n tokens at t if they can be there within max_wait
 * of the (clamped) time and no later than act_by, storing the time to act in
 * *act and updating b; otherwise leaves b alone.  Returns 0, XS_ELIMIT (n >
 * burst, or limit 0 and the tokens missing: they would never come) or
 * XS_EDEADLINE (too late).  A grant at XS_RATE_INF takes nothing.
 */
static int reserve_n(bucket *b, int64_t t, int64_t n, int64_t max_wait, int64_t act_by,
                     int64_t *act)
{
    if (is_inf(b->limit)) {
        *act = t;
        return 0;
    }
    if (n > b->burst)
        return XS_ELIMIT;
    int64_t now = t;
    double tokens = advance(b, &now) - (double)n;
    int64_t wait = 0;
    if (tokens < 0) {
        if (b->limit == 0)
            return XS_ELIMIT;
        if (max_wait == 0) /* any deficit means a wait of at least 1 ns */
            return XS_EDEADLINE;
        wait = duration_from_tokens(b->limit, -tokens);
    }
    int64_t when = xs__add_sat(now, wait);
    if (wait > max_wait || when > act_by)
        return XS_EDEADLINE;
    b->last = now;
    b->tokens = tokens;
    b->last_event = when;
    *act = when;
    return 0;
}

/*
 * reserve_n on the limiter.  It is worked out on a snapshot first: a failure
 * stands as it is (failures change nothing, so failing on the snapshot is
 * failing at that moment), and so does a grant at XS_RATE_INF (it changes
 * nothing either).  Any other grant is published under the lock if no
 * writer came since the snapshot, and otherwise made again on the current
 * state.  *limit (if not NULL): the limit it was decided with.
 */
static int take(xs_rate *lim, int64_t t, int64_t n, int64_t max_wait, int64_t act_by,
                int64_t *act, double *limit)
{
    bucket b;
    uint64_t seq;
    bool fresh = snapshot(lim, &b, &seq);
    int rc = fresh ? reserve_n(&b, t, n, max_wait, act_by, act) : 0;
    if (!fresh || (rc == 0 && !is_inf(b.limit))) {
        xs__lock_acquire(&lim->lock);
        /* seq changes only under the lock: equal means b is still current */
        if (!fresh || atomic_load_explicit(&lim->seq, memory_order_relaxed) != seq) {
            b = load(lim);
            rc = reserve_n(&b, t, n, max_wait, act_by, act);
        }
        if (rc == 0 && !is_inf(b.limit))
            publish(lim, &b);
        xs__lock_release(&lim->lock);
    }
    if (limit)
        *limit = b.limit;
    return rc;
}

/* ---- the limiter ---- */

int xs_rate_new(double limit, int64_t burst, const xs_rate_options *opts, xs_rate **out)
{
    if (!out || bad_limit(limit) || bad_count(burst))
        return XS_EINVAL;
    const xs_allocator *a = xs__allocator_resolve(opts ? opts->allocator : NULL);
    xs_rate *lim = xs__calloc(a, sizeof *lim);
    if (!lim)
        return XS_ENOMEM;
    lim->alloc = a;
    bucket b = {
        .limit = is_inf(limit) ? XS_RATE_INF : limit + 0.0, /* + 0.0: -0.0 becomes 0 */
        .burst = burst,
        .tokens = (double)burst, /* full; any later time refills it to full anyway */
        .last = INT64_MIN,
        .last_event = INT64_MIN,
    };
    publish(lim, &b); /* nobody else sees lim yet */
    *out = lim;
    return 0;
}

void xs_rate_free(xs_rate *lim)
{
    if (lim)
        xs__free(lim->alloc, lim, sizeof *lim);
}

double xs_rate_every(int64_t interval_ns)
{
    return interval_ns <= 0 ? XS_RATE_INF : 1 / seconds(interval_ns);
}

bool xs_rate_allow_n_at(xs_rate *lim, int64_t t, int64_t n)
{
    if (!lim || bad_count(n))
        return false;
    int64_t act;
    return take(lim, t, n, 0, XS_FOREVER, &act, NULL) == 0;
}

/* Allow now: at XS_RATE_INF (seen at that moment) the answer needs no clock. */
bool xs_rate_allow_n(xs_rate *lim, int64_t n)
{
    if (lim && !bad_count(n) && is_inf(atomic_load_explicit(&lim->limit, memory_order_relaxed)))
        return true;
    return xs_rate_allow_n_at(lim, xs_now(), n);
}

bool xs_rate_allow_at(xs_rate *lim, int64_t t)
{
    return xs_rate_allow_n_at(lim, t, 1);
}

bool xs_rate_allow(xs_rate *lim)
{
    return xs_rate_allow_n(lim, 1);
}

/* ---- reservations ---- */

int xs_rate_reserve_n_at(xs_rate *lim, int64_t t, int64_t n, xs_rate_reservation *r)
{
    if (!r)
        return XS_EINVAL;
    *r = (xs_rate_reservation){.ok = false, .time_to_act = XS_FOREVER, .lim = lim};
    if (!lim || bad_count(n))
        return XS_EINVAL;
    int64_t act;
    int rc = take(lim, t, n, XS_FOREVER, XS_FOREVER, &act, &r->limit);
    if (rc == 0) {
        r->ok = true;
        r->tokens = n;
        r->time_to_act = act;
    }
    return rc;
}

int xs_rate_reserve_n(xs_rate *lim, int64_t n, xs_rate_reservation *r)
{
    return xs_rate_reserve_n_at(lim, xs_now(), n, r);
}

int xs_rate_reserve_at(xs_rate *lim, int64_t t, xs_rate_reservation *r)
{
    return xs_rate_reserve_n_at(lim, t, 1, r);
}

int xs_rate_reserve(xs_rate *lim, xs_rate_reservation *r)
{
    return xs_rate_reserve_n_at(lim, xs_now(), 1, r);
}

bool xs_rate_reservation_ok(const xs_rate_reservation *r)
{
    return r && r->ok;
}

int64_t xs_rate_reservation_delay_from(const xs_rate_reservation *r, int64_t t)
{
    if (!r || !r->ok)
        return XS_FOREVER;
    int64_t d = sub_sat(r->time_to_act, t);
    return d > 0 ? d : 0;
}

int64_t xs_rate_reservation_delay(const xs_rate_reservation *r)
{
    return xs_rate_reservation_delay_from(r, xs_now());
}

void xs_rate_reservation_cancel_at(xs_rate_reservation *r, int64_t t)
{
    if (!r || !r->ok || r->tokens == 0 || !r->lim)
        return;
    xs_rate *lim = r->lim;
    int64_t n = r->tokens;
    r->tokens = 0; /* cancelled: a second cancel gives nothing */
    if (is_inf(r->limit))
        return; /* it took no tokens */
    xs__lock_acquire(&lim->lock);
    bucket b = load(lim);
    int64_t now = t;
    if (now < b.last)
        now = b.last;
    if (!is_inf(b.limit) && r->time_to_act >= now) {
        /* Tokens reserved after r (up to last_event) stay reserved. */
        int64_t after = sub_sat(b.last_event, r->time_to_act);
        double restore = (double)n - tokens_from_duration(r->limit, after > 0 ? after : 0);
        if (restore > 0) {
            double tokens = advance(&b, &now) + restore;
            double burst = (double)b.burst;
            b.tokens = tokens > burst ? burst : tokens;
            b.last = now;
            if (r->time_to_act == b.last_event && r->limit > 0) {
                int64_t prev = sub_sat(r->time_to_act, duration_from_tokens(r->limit, (double)n));
                if (prev >= now)
                    b.last_event = prev;
            }
            publish(lim, &b);
        }
    }
    xs__lock_release(&lim->lock);
}

void xs_rate_reservation_cancel(xs_rate_reservation *r)
{
    xs_rate_reservation_cancel_at(r, xs_now());
}

/* ---- wait ---- */

/* wait_n with the limiter's time t and the context's clock reading ctx_now
 * (the same when the caller gave t). */
static int wait_n(xs_rate *lim, xs_ctx *ctx, int64_t t, int64_t ctx_now, int64_t n)
{
    if (!lim || !ctx || bad_count(n))
        return XS_EINVAL;
    int64_t act_by = XS_FOREVER, deadline;
    if (xs_ctx_deadline(ctx, &deadline))
        act_by = xs__add_sat(t, sub_sat(deadline, ctx_now));

    /* Go's order: the burst first, then the context, then the deadline (the
     * reservation checks the burst again, on the state it changes). */
    bucket now = current(lim);
    if (!is_inf(now.limit) && n > now.burst)
        return XS_ELIMIT;
    int rc = xs_ctx_err(ctx);
    if (rc != 0)
        return rc;
    xs_rate_reservation r = {.ok = true, .tokens = n, .lim = lim};
    rc = take(lim, t, n, XS_FOREVER, act_by, &r.time_to_act, &r.limit);
    if (rc != 0)
        return rc;

    int64_t delay = xs_rate_reservation_delay_from(&r, t);
    if (delay == 0)
        return 0;
    int64_t start = xs_now();
    int err = xs_ctx_wait(ctx, delay);
    if (err != 0) /* ended first: give the tokens back for others */
        xs_rate_reservation_cancel_at(&r, xs__add_sat(t, xs_now() - start));
    return err;
}

int xs_rate_wait_n_at(xs_rate *lim, xs_ctx *ctx, int64_t t, int64_t n)
{
    return wait_n(lim, ctx, t, t, n);
}

int xs_rate_wait_n(xs_rate *lim, xs_ctx *ctx, int64_t n)
{
    int64_t t = xs_now();
    xs_clock *clock = ctx ? xs_ctx_clock(ctx) : NULL;
    return wait_n(lim, ctx, t, clock == xs_clock_system() ? t : xs_clock_now(clock), n);
}

int xs_rate_wait(xs_rate *lim, xs_ctx *ctx)
{
    return xs_rate_wait_n(lim, ctx, 1);
}

/* ---- settings and observers ---- */

/* Advances the state to t and applies change(b, value).  Lock taken. */
static void update_at(xs_rate *lim, int64_t t, void (*change)(bucket *b, const void *value),
                      const void *value)
{
    xs__lock_acquire(&lim->lock);
    bucket b = load(lim);
    b.tokens = advance(&b, &t); /* what accrued up to t, at the old settings */
    b.last = t;
    change(&b, value);
    publish(lim, &b);
    xs__lock_release(&lim->lock);
}

static void change_limit(bucket *b, const void *value)
{
    double limit = *(const double *)value;
    b->limit = is_inf(limit) ? XS_RATE_INF : limit;
}

static void change_burst(bucket *b, const void *value)
{
    b->burst = *(const int64_t *)value;
}

int xs_rate_set_limit_at(xs_rate *lim, int64_t t, double limit)
{
    if (!lim || bad_limit(limit))
        return XS_EINVAL;
    limit += 0.0; /* -0.0 becomes 0 */
    update_at(lim, t, change_limit, &limit);
    return 0;
}

int xs_rate_set_limit(xs_rate *lim, double limit)
{
    return xs_rate_set_limit_at(lim, xs_now(), limit);
}

int xs_rate_set_burst_at(xs_rate *lim, int64_t t, int64_t burst)
{
    if (!lim || bad_count(burst))
        return XS_EINVAL;
    update_at(lim, t, change_burst, &burst);
    return 0;
}

int xs_rate_set_burst(xs_rate *lim, int64_t burst)
{
    return xs_rate_set_burst_at(lim, xs_now(), burst);
}

double xs_rate_tokens_at(xs_rate *lim, int64_t t)
{
    if (!lim)
        return 0;
    bucket b = current(lim);
    return advance(&b, &t);
}

double xs_rate_tokens(xs_rate *lim)
{
    return xs_rate_tokens_at(lim, xs_now());
}

/* One field needs no snapshot: each is published whole. */
double xs_rate_limit(xs_rate *lim)
{
    return lim ? atomic_load_explicit(&lim->limit, memory_order_relaxed) : 0;
}

int64_t xs_rate_burst(xs_rate *lim)
{
    return lim ? atomic_load_explicit(&lim->burst, memory_order_relaxed) : 0;
}

/* ---- Sometimes ---- */

/* The caller's struct holds the lock word; xs__lock is exactly that word, as
 * its only member (C11 6.7.2.1p15). */
_Static_assert(sizeof(xs__lock) == sizeof(_Atomic uint32_t) && offsetof(xs__lock, word) == 0,
               "xs__lock is one word");

static xs__lock *sometimes_lock(xs_sometimes *s)
{
    return (xs__lock *)(void *)&s->lock_;
}

/* Go's rule: the first call, or any filter that allows.  Counts the call.
 * Lock held. */
static bool sometimes_pass(xs_sometimes *s, int64_t t)
{
    int64_t c = s->count_;
    bool run = c == 0 || (s->first > 0 && c < s->first) || (s->every > 0 && c % s->every == 0) ||
               (s->interval > 0 && sub_sat(t, s->last_) >= s->interval);
    if (c < INT64_MAX)
        s->count_ = c + 1;
    return run;
}

bool xs_sometimes_allow_at(xs_sometimes *s, int64_t t)
{
    if (!s)
        return false;
    xs__lock_acquire(sometimes_lock(s));
    bool run = sometimes_pass(s, t);
    if (run)
        s->last_ = t;
    xs__lock_release(sometimes_lock(s));
    return run;
}

bool xs_sometimes_allow(xs_sometimes *s)
{
    return xs_sometimes_allow_at(s, xs_now());
}

bool xs_sometimes_do(xs_sometimes *s, void (*fn)(void *arg), void *arg)
{
    if (!s || !fn)
        return false;
    xs__lock_acquire(sometimes_lock(s));
    bool run = sometimes_pass(s, xs_now());
    if (run) {
        fn(arg); /* under the lock, as Go: concurrent calls run one by one */
        s->last_ = xs_now();
    }
    xs__lock_release(sometimes_lock(s));
    return run;
}
