/*
 * xsync/rate.h — a token-bucket rate limiter (Go's golang.org/x/time/rate).
 *
 * A limiter holds a bucket of at most `burst` tokens, full at creation and
 * refilled at `limit` tokens per second.  An event of weight n takes n
 * tokens.  allow takes them only if they are there now; reserve takes them
 * in any case (the bucket goes negative) and says how long to wait before
 * acting; wait blocks for that time, or fails at once if its context would
 * end first.  XS_RATE_INF allows everything, whatever the burst.
 *
 * Time: int64_t nanoseconds on the monotonic clock (xs_now()).  Every call
 * that depends on time has an _at variant taking the time explicitly (for
 * tests, or callers that already read the clock).  Time never runs backwards
 * inside a limiter: a call stamped earlier than the latest time the limiter
 * has recorded (the time of the latest call that changed its state) is
 * handled as if made at that latest time, so jumping back adds no tokens and
 * loses none.  (Go's limiter instead moves its clock back, which
 * credits the same interval twice once time moves forward again.)
 *
 * Precision: the limit is a double (events per second) and the bucket holds
 * a double number of tokens, with Go's arithmetic, so results match Go's.
 * tokens(d) = seconds(d) * limit, seconds(d) splitting d into whole seconds
 * and nanoseconds as Go does.  Going back, the wait for a deficit of k tokens
 * is rounded up so that the limiter's own arithmetic has refilled them when
 * it ends (it may be 1 ns longer than the least such wait; for waits beyond
 * about 194 days the double's precision can leave it a few microseconds
 * short).  Go truncates, so its waiters may act up to 1 ns before the tokens
 * exist.  Waits too long for an int64_t saturate at
 * XS_FOREVER.  Burst and weights are limited to XS_RATE_MAX_N (2^53), the
 * largest count a double holds exactly.  Limit 0 allows the tokens in the
 * bucket and nothing more until the limit is raised.
 *
 * Failed calls change no state.  Bad input (NULL, negative or oversize
 * values, NaN) is an error (or false, for the bool functions) and changes
 * nothing.  Where Go panics or misbehaves this is documented per function.
 *
 * Thread-safety: every function on an xs_rate may be called concurrently,
 * and each call takes effect atomically (linearizable).  Calls that change
 * the state hold the limiter's lock for a few dozen instructions, never
 * blocking or running user code under it.  Calls that fail (a refused allow,
 * a reservation over the burst, a wait past its deadline), grants at
 * XS_RATE_INF and the observers decide on a consistent snapshot, without the
 * lock and without writing shared memory (unless the snapshot catches a
 * writer mid-change: then they take the lock), so an overloaded limiter does
 * not serialise its callers.  Memory ordering: none is implied for the caller's
 * own data (pace work with a limiter; do not publish data through it).  A
 * reservation (xs_rate_reservation) and an xs_sometimes filter are plain
 * structs owned by the caller (see each).
 */
#ifndef XSYNC_RATE_H
#define XSYNC_RATE_H

#include <float.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>

#include <xsync/alloc.h>
#include <xsync/context.h>
#include <xsync/export.h>

#ifdef __cplusplus
extern "C" {
#endif

/* The infinite rate: every event is allowed, whatever the burst.  Any limit
 * at or above it (including +infinity) is stored and reported as this. */
#define XS_RATE_INF DBL_MAX

/* The largest burst and event weight: 2^53, exact as a double. */
#define XS_RATE_MAX_N (INT64_C(1) << 53)

typedef struct xs_rate xs_rate;

/* Options for xs_rate_new; NULL means all defaults. */
typedef struct xs_rate_options {
    const xs_allocator *allocator; /* NULL: the process default */
} xs_rate_options;

/*
 * A limiter allowing `limit` events per second (>= 0, not NaN; XS_RATE_INF:
 * no limit) with bursts of up to `burst` events (0 <= burst <=
 * XS_RATE_MAX_N), its bucket full.  Returns 0 and the limiter in *out;
 * XS_EINVAL (bad value, out NULL) or XS_ENOMEM, with *out untouched.  One
 * allocation; nothing else allocates.
 */
XS_API int xs_rate_new(double limit, int64_t burst, const xs_rate_options *opts, xs_rate **out);

/* Frees the limiter.  No call may be running on it, and reservations taken
 * from it must not be cancelled afterwards.  NULL: no-op. */
XS_API void xs_rate_free(xs_rate *lim);

/* The limit (events per second) for an interval between events: 1 /
 * interval, in seconds.  interval <= 0 gives XS_RATE_INF (Go's Every). */
XS_API double xs_rate_every(int64_t interval_ns);

/*
 * Whether n events may happen at time t; if so their tokens are taken.
 * Never blocks.  Use it to drop or skip events over the limit.  n = 0 is
 * true unless reservations have driven the bucket negative.  False, with
 * nothing changed, when the tokens are not there, n > burst (and the limit
 * is finite), or on bad input (lim NULL, n < 0 or n > XS_RATE_MAX_N).
 */
XS_API bool xs_rate_allow_n_at(xs_rate *lim, int64_t t, int64_t n);
/* xs_rate_allow_n_at(lim, xs_now(), n). */
XS_API bool xs_rate_allow_n(xs_rate *lim, int64_t n);
/* xs_rate_allow_n_at(lim, t, 1). */
XS_API bool xs_rate_allow_at(xs_rate *lim, int64_t t);
/* xs_rate_allow_n_at(lim, xs_now(), 1). */
XS_API bool xs_rate_allow(xs_rate *lim);

/*
 * A reservation: tokens taken now for events that may happen at
 * `time_to_act`.  The caller owns it (a plain struct, usually on the stack):
 * read `ok` and the delay, then act or cancel.  One reservation must not be
 * used by two threads at once.  Fields are read-only for the caller.
 */
typedef struct xs_rate_reservation {
    bool ok;             /* the tokens were granted */
    int64_t tokens;      /* tokens taken (n); 0 once cancelled */
    int64_t time_to_act; /* when the events may happen (valid if ok) */
    double limit;        /* the limit when it was made */
    xs_rate *lim;        /* the limiter it was taken from */
} xs_rate_reservation;

/*
 * Reserves n tokens at time t, waiting for none: fills *r and returns 0 with
 * r->ok true; the caller must wait xs_rate_reservation_delay_from(r, t)
 * before acting, or cancel.  The limiter counts the reservation at once:
 * later callers wait behind it.  On failure *r is filled with ok false
 * (cancelling it is a no-op) and nothing changes: XS_ELIMIT when n > burst
 * with a finite limit (Go: "exceeds limiter's burst"), or when the limit is
 * 0 and the bucket lacks the tokens (they would never come); XS_EINVAL for
 * lim or r NULL, n < 0 or n > XS_RATE_MAX_N (r, if not NULL, still filled).
 * Never blocks, never allocates.
 */
XS_API int xs_rate_reserve_n_at(xs_rate *lim, int64_t t, int64_t n, xs_rate_reservation *r);
/* xs_rate_reserve_n_at(lim, xs_now(), n, r). */
XS_API int xs_rate_reserve_n(xs_rate *lim, int64_t n, xs_rate_reservation *r);
/* xs_rate_reserve_n_at(lim, t, 1, r). */
XS_API int xs_rate_reserve_at(xs_rate *lim, int64_t t, xs_rate_reservation *r);
/* xs_rate_reserve_n_at(lim, xs_now(), 1, r). */
XS_API int xs_rate_reserve(xs_rate *lim, xs_rate_reservation *r);

/* Whether the reservation was granted.  NULL: false. */
XS_API bool xs_rate_reservation_ok(const xs_rate_reservation *r);

/* How long the holder must wait from time t before acting: 0 means now,
 * XS_FOREVER means never (not ok, or NULL) — or, for a granted reservation,
 * a wait too long for an int64_t. */
XS_API int64_t xs_rate_reservation_delay_from(const xs_rate_reservation *r, int64_t t);
/* xs_rate_reservation_delay_from(r, xs_now()). */
XS_API int64_t xs_rate_reservation_delay(const xs_rate_reservation *r);

/*
 * The holder will not act: gives back as many tokens as possible at time t,
 * as Go's CancelAt.  Nothing is given back if the reservation was not ok,
 * took 0 tokens, was made at XS_RATE_INF, the limit is now XS_RATE_INF, or t
 * is past its time to act; tokens reserved by later reservations stay
 * reserved.  Sets r->tokens to 0, so cancelling twice gives back nothing
 * more (Go gives the tokens back again).  The limiter must still exist.
 * NULL: no-op.
 */
XS_API void xs_rate_reservation_cancel_at(xs_rate_reservation *r, int64_t t);
/* xs_rate_reservation_cancel_at(r, xs_now()). */
XS_API void xs_rate_reservation_cancel(xs_rate_reservation *r);

/*
 * Blocks until n events may happen, then returns 0 with their tokens taken.
 * Fails without waiting and without changing anything: XS_EINVAL (lim or ctx
 * NULL, n < 0 or n > XS_RATE_MAX_N), XS_ELIMIT (n > burst with a finite
 * limit, or limit 0 and the tokens missing), the context's error if it is
 * already done, and XS_EDEADLINE if the needed wait would pass the context's
 * deadline (the deadline is read on the context's clock).  If the context
 * ends while waiting, gives the reservation back (as cancel) and returns the
 * context's error (XS_ECANCELED or XS_EDEADLINE).  Waits on the context
 * (xs_ctx_wait), with no thread or allocation of its own.
 */
XS_API int xs_rate_wait_n(xs_rate *lim, xs_ctx *ctx, int64_t n);
/* xs_rate_wait_n(lim, ctx, 1). */
XS_API int xs_rate_wait(xs_rate *lim, xs_ctx *ctx);
/*
 * xs_rate_wait_n as if called at time t: the reservation is made at t, the
 * deadline is compared with t, and the delay measured from t is then waited
 * in real time; a cancel while waiting gives the tokens back at t plus the
 * real time waited.  For tests and callers that keep their own time.
 */
XS_API int xs_rate_wait_n_at(xs_rate *lim, xs_ctx *ctx, int64_t t, int64_t n);

/*
 * Sets the limit from time t on (tokens up to t accrue at the old limit).
 * Reservations already made keep their times, so the new limit may be
 * exceeded or underused by them for a while.  XS_EINVAL (lim NULL, limit
 * negative or NaN), nothing changed.
 */
XS_API int xs_rate_set_limit_at(xs_rate *lim, int64_t t, double limit);
/* xs_rate_set_limit_at(lim, xs_now(), limit). */
XS_API int xs_rate_set_limit(xs_rate *lim, double limit);

/*
 * Sets the burst from time t on.  A smaller burst caps the bucket at the
 * next look; a larger one adds no tokens by itself.  XS_EINVAL (lim NULL,
 * burst < 0 or > XS_RATE_MAX_N), nothing changed.
 */
XS_API int xs_rate_set_burst_at(xs_rate *lim, int64_t t, int64_t burst);
/* xs_rate_set_burst_at(lim, xs_now(), burst). */
XS_API int xs_rate_set_burst(xs_rate *lim, int64_t burst);

/* The tokens available at time t (negative while reservations wait), without
 * changing anything.  NULL: 0. */
XS_API double xs_rate_tokens_at(xs_rate *lim, int64_t t);
/* xs_rate_tokens_at(lim, xs_now()). */
XS_API double xs_rate_tokens(xs_rate *lim);

/* The current limit (XS_RATE_INF for no limit).  NULL: 0. */
XS_API double xs_rate_limit(xs_rate *lim);

/* The current burst.  NULL: 0. */
XS_API int64_t xs_rate_burst(xs_rate *lim);

/*
 * Go's Sometimes: runs an action on some calls only — a union of filters.
 * The first call always runs; after that a call runs if it is among the
 * first `first` calls, or its index (from 0) is a multiple of `every`, or
 * `interval` ns have passed since the last run.  Zero (or negative) fields
 * are off, so a zeroed struct runs only the first call (like a once).
 *
 * The caller owns it: initialise it with the three fields set and the rest
 * zero (xs_sometimes s = {.every = 10};), and never copy or move it while in
 * use.  Thread-safe: calls are serialised by an internal lock.
 */
typedef struct xs_sometimes {
    int64_t first;     /* if > 0, the first `first` calls run */
    int64_t every;     /* if > 0, every `every`-th call runs, from the first */
    int64_t interval;  /* if > 0, a call runs once this many ns passed since the last run */
    /* private: zero-initialised, touched only by the functions below */
    _Atomic uint32_t lock_;
    int64_t count_;
    int64_t last_;
} xs_sometimes;

/*
 * Counts a call at time t and returns whether it may run (updating the
 * last-run time to t if so); the caller runs its action afterwards, outside
 * any lock.  NULL: false.  Never blocks for long (the lock is held for a few
 * instructions, or while xs_sometimes_do runs an action).
 */
XS_API bool xs_sometimes_allow_at(xs_sometimes *s, int64_t t);
/* xs_sometimes_allow_at(s, xs_now()). */
XS_API bool xs_sometimes_allow(xs_sometimes *s);

/*
 * Go's Sometimes.Do: runs fn(arg) if allowed, holding the lock while it
 * runs, so concurrent calls wait and run one after another; the last-run
 * time is the time fn returned.  Returns whether fn ran.  fn must not call
 * into the same xs_sometimes (it would deadlock, as in Go); keep it short.
 * NULL s or fn: false, nothing counted.
 */
XS_API bool xs_sometimes_do(xs_sometimes *s, void (*fn)(void *arg), void *arg);

#ifdef __cplusplus
}
#endif
#endif
