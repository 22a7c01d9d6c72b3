/*
 * timer — one-shot timers on an xs_clock.
 *
 * The system clock's timers fire on one internal thread, started when the
 * first timer is armed and kept for the life of the process.  A manual
 * clock's timers fire in the thread that calls xs_clock_advance.  Either way
 * callbacks run one at a time, in deadline order, with no lock held.
 */
#ifndef XSYNC_TIMER_H
#define XSYNC_TIMER_H

#include <stdbool.h>
#include <stdint.h>

#include <xsync/time.h>

typedef struct xs__timer {
    int64_t when;                       /* absolute, on the clock */
    void (*fn)(struct xs__timer *t);    /* runs once, when due */
    size_t slot;                        /* heap index + 1; 0 = not queued */
} xs__timer;

/* Queues t (t->when and t->fn set by the caller).  0 or XS_ENOMEM. */
int xs__timer_add(xs_clock *c, xs__timer *t);

/*
 * Removes t if it is still queued and returns true.  Otherwise returns false:
 * it has fired or is firing.  `final` says the caller is done with t for
 * good (once per successful add): the call also waits until a callback
 * running right now on another thread has returned, so t may be freed, and
 * the clock stops counting t against xs_clock_free.  Never call with final
 * while holding a lock the callback takes.
 */
bool xs__timer_del(xs_clock *c, xs__timer *t, bool final);

#endif
