/*
 * xsync/time.h — monotonic time and injectable clocks.
 *
 * Times are int64_t nanoseconds on the monotonic clock; deadlines are
 * absolute.  Modules with time semantics take an xs_clock so tests can drive
 * time by hand: a manual clock only moves when told to, and timers armed on it
 * (context deadlines) fire in the thread that moves it, in deadline order.
 */
#ifndef XSYNC_TIME_H
#define XSYNC_TIME_H

#include <stdint.h>

#include <xsync/alloc.h>
#include <xsync/export.h>

#ifdef __cplusplus
extern "C" {
#endif

/* "No deadline" / "wait without limit". */
#define XS_FOREVER INT64_MAX

#define XS_NSEC  INT64_C(1)
#define XS_USEC  INT64_C(1000)
#define XS_MSEC  INT64_C(1000000)
#define XS_SEC   INT64_C(1000000000)

/* Nanoseconds on CLOCK_MONOTONIC.  Thread-safe, never fails. */
XS_API int64_t xs_now(void);

typedef struct xs_clock xs_clock;

/* The system monotonic clock (a static object; freeing it is a no-op).
 * Its timers fire on one internal thread, started when first needed. */
XS_API xs_clock *xs_clock_system(void);

/* The clock's current time.  NULL means the system clock. */
XS_API int64_t xs_clock_now(const xs_clock *c);

/*
 * A manual clock starting at `start`.  alloc NULL: the process default.
 * Returns 0, XS_EINVAL (out NULL) or XS_ENOMEM.
 */
XS_API int xs_clock_manual_new(int64_t start, const xs_allocator *alloc, xs_clock **out);

/*
 * Moves a manual clock forward by d >= 0 ns and, before returning, runs every
 * timer now due, in deadline order, in the calling thread (so a context
 * deadline that passed is done when this returns).  Concurrent calls are
 * serialised.  Returns XS_EINVAL for d < 0, the system clock or NULL.
 */
XS_API int xs_clock_advance(xs_clock *c, int64_t d);

/*
 * Frees a manual clock.  Every context that armed a deadline on it must be
 * released first (cancelling is not enough): until then it returns XS_EBUSY
 * and frees nothing.  Contexts under xs_ctx_with_clock read the clock when
 * they derive deadlines, so release them all before freeing it.  NULL and
 * the system clock: no-op, returns 0.
 */
XS_API int xs_clock_free(xs_clock *c);

#ifdef __cplusplus
}
#endif
#endif
