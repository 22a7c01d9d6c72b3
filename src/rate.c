/*
 * rate — Go's token bucket (x/time/rate) and Sometimes.
 *
 * The limiter is Go's: a double number of tokens at time `last`, refilled
 * lazily when a call looks at it, and `last_event`, the time to act of the
 * latest reservation, which cancel uses to work out how many tokens it may
 * give back.  One xs__lock guards the state; nothing under it blocks,
 * allocates or calls user code.
 *
 * Differences from Go, all deliberate (see rate.h): time is clamped so it
 * never goes back; the wait for a deficit is rounded up, not truncated, and
 * saturates instead of overflowing; limit 0 is handled by the arithmetic (the
 * bucket just never refills) instead of by spending the burst; a cancelled
 * reservation cannot give tokens back twice; failed calls change nothing.
 */
#include <xsync/rate.h>

#include <math.h>
#include <stddef.h>

#include <xsync/error.h>
#include <xsync/time.h>

#include "internal.h"
#include "park.h"

struct xs_rate {
    xs__lock lock;
    double limit;       /* events per second; XS_RATE_INF: no limit */
    int64_t burst;
    double tokens;      /* tokens at time `last`; negative while reservations wait */
    int64_t last;       /* the latest time the state was advanced to; never decreases */
    int64_t last_event; /* the time to act of the latest reservation */
    const xs_allocator *alloc;
};

/* ---- arithmetic (Go's, with the fixes listed above) ---- */

static bool is_inf(double limit)
{
    return limit >= XS_RATE_INF;
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
    double ns = ceil(tokens / limit * 1e9);
    if (!(ns < 0x1p63)) /* also +inf */
        return XS_FOREVER;
    int64_t d = (int64_t)ns;
    /* the division rounds: at most a step or two short */
    for (int i = 0; i < 2 && d < XS_FOREVER && tokens_from_duration(limit, d) < tokens; i++)
        d++;
    return d;
}

/*
 * The state at time *t without storing it: *t is clamped so it never
 * precedes `last` (time going back adds and loses nothing), and the tokens
 * then are returned, capped at the burst.  Lock held.
 */
static double advance(const xs_rate *lim, int64_t *t)
{
    if (*t < lim->last)
        *t = lim->last;
    double tokens = lim->tokens + tokens_from_duration(lim->limit, sub_sat(*t, lim->last));
    double burst = (double)lim->burst;
    return tokens > burst ? burst : tokens;
}

/*
 * Go's reserveN.  Grants n tokens at t if they can be there within max_wait
 * of the (clamped) time and no later than act_by, storing the time to act in
 * *act; otherwise changes nothing.  Returns 0, XS_ELIMIT (n > burst, or limit
 * 0 and the tokens missing: they would never come) or XS_EDEADLINE (too
 * late).  Lock held.
 */
static int reserve_locked(xs_rate *lim, int64_t t, int64_t n, int64_t max_wait, int64_t act_by,
                          int64_t *act)
{
    if (is_inf(lim->limit)) { /* takes nothing, waits for nothing */
        *act = t;
        return 0;
    }
    if (n > lim->burst)
        return XS_ELIMIT;
    int64_t now = t;
    double tokens = advance(lim, &now) - (double)n;
    int64_t wait = 0;
    if (tokens < 0) {
        if (lim->limit == 0)
            return XS_ELIMIT;
        wait = duration_from_tokens(lim->limit, -tokens);
    }
    int64_t when = xs__add_sat(now, wait);
    if (wait > max_wait || when > act_by)
        return XS_EDEADLINE;
    lim->last = now;
    lim->tokens = tokens;
    lim->last_event = when;
    *act = when;
    return 0;
}

/* ---- the limiter ---- */

int xs_rate_new(double limit, int64_t burst, const xs_rate_options *opts, xs_rate **out)
{
    if (!out || isnan(limit) || limit < 0 || bad_count(burst))
        return XS_EINVAL;
    const xs_allocator *a = xs__allocator_resolve(opts ? opts->allocator : NULL);
    xs_rate *lim = xs__calloc(a, sizeof *lim);
    if (!lim)
        return XS_ENOMEM;
    lim->limit = is_inf(limit) ? XS_RATE_INF : limit;
    lim->burst = burst;
    lim->tokens = (double)burst; /* full; any later time refills it to full anyway */
    lim->last = INT64_MIN;
    lim->last_event = INT64_MIN;
    lim->alloc = a;
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
    xs__lock_acquire(&lim->lock);
    int rc = reserve_locked(lim, t, n, 0, XS_FOREVER, &act);
    xs__lock_release(&lim->lock);
    return rc == 0;
}

bool xs_rate_allow_n(xs_rate *lim, int64_t n)
{
    return xs_rate_allow_n_at(lim, xs_now(), n);
}

bool xs_rate_allow_at(xs_rate *lim, int64_t t)
{
    return xs_rate_allow_n_at(lim, t, 1);
}

bool xs_rate_allow(xs_rate *lim)
{
    return xs_rate_allow_n_at(lim, xs_now(), 1);
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
    xs__lock_acquire(&lim->lock);
    double limit = lim->limit;
    int rc = reserve_locked(lim, t, n, XS_FOREVER, XS_FOREVER, &act);
    xs__lock_release(&lim->lock);
    r->limit = limit;
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
    int64_t now = t;
    if (now < lim->last)
        now = lim->last;
    if (!is_inf(lim->limit) && r->time_to_act >= now) {
        /* Tokens reserved after r (up to last_event) stay reserved. */
        int64_t after = sub_sat(lim->last_event, r->time_to_act);
        double restore = (double)n - tokens_from_duration(r->limit, after > 0 ? after : 0);
        if (restore > 0) {
            double tokens = advance(lim, &now) + restore;
            double burst = (double)lim->burst;
            lim->tokens = tokens > burst ? burst : tokens;
            lim->last = now;
            if (r->time_to_act == lim->last_event && r->limit > 0) {
                int64_t prev = sub_sat(r->time_to_act, duration_from_tokens(r->limit, (double)n));
                if (prev >= now)
                    lim->last_event = prev;
            }
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

    xs_rate_reservation r = {.ok = true, .tokens = n, .lim = lim};
    xs__lock_acquire(&lim->lock);
    r.limit = lim->limit;
    /* Go's order: the burst first, then the context, then the deadline. */
    int rc = !is_inf(lim->limit) && n > lim->burst ? XS_ELIMIT : xs_ctx_err(ctx);
    if (rc == 0)
        rc = reserve_locked(lim, t, n, XS_FOREVER, act_by, &r.time_to_act);
    xs__lock_release(&lim->lock);
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
    return wait_n(lim, ctx, xs_now(), xs_clock_now(ctx ? xs_ctx_clock(ctx) : NULL), n);
}

int xs_rate_wait(xs_rate *lim, xs_ctx *ctx)
{
    return xs_rate_wait_n(lim, ctx, 1);
}

/* ---- settings and observers ---- */

int xs_rate_set_limit_at(xs_rate *lim, int64_t t, double limit)
{
    if (!lim || isnan(limit) || limit < 0)
        return XS_EINVAL;
    xs__lock_acquire(&lim->lock);
    int64_t now = t;
    lim->tokens = advance(lim, &now); /* what accrued so far, at the old limit */
    lim->last = now;
    lim->limit = is_inf(limit) ? XS_RATE_INF : limit;
    xs__lock_release(&lim->lock);
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
    xs__lock_acquire(&lim->lock);
    int64_t now = t;
    lim->tokens = advance(lim, &now);
    lim->last = now;
    lim->burst = burst;
    xs__lock_release(&lim->lock);
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
    xs__lock_acquire(&lim->lock);
    double tokens = advance(lim, &t);
    xs__lock_release(&lim->lock);
    return tokens;
}

double xs_rate_tokens(xs_rate *lim)
{
    return xs_rate_tokens_at(lim, xs_now());
}

double xs_rate_limit(xs_rate *lim)
{
    if (!lim)
        return 0;
    xs__lock_acquire(&lim->lock);
    double limit = lim->limit;
    xs__lock_release(&lim->lock);
    return limit;
}

int64_t xs_rate_burst(xs_rate *lim)
{
    if (!lim)
        return 0;
    xs__lock_acquire(&lim->lock);
    int64_t burst = lim->burst;
    xs__lock_release(&lim->lock);
    return burst;
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
