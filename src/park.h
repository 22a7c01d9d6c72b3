/*
 * park — blocking on a 32-bit word, and the small lock built on it.
 *
 * On Linux this is the futex; with XS_PORTABLE (or elsewhere) it is a table
 * of mutex+condvar buckets hashed by address.  Both give the futex contract:
 * xs__park_wait sleeps only if *addr still equals `expected` at the moment it
 * goes to sleep, so a waker that changes the word and then calls
 * xs__park_wake can never be missed.  Waits may return spuriously: callers
 * loop on their own condition.
 */
#ifndef XSYNC_PARK_H
#define XSYNC_PARK_H

#include <stdatomic.h>
#include <stdint.h>

/*
 * Sleeps while *addr == expected, until woken or the absolute monotonic
 * `deadline` (XS_FOREVER: none) passes.  Returns 0 when woken, on a value
 * mismatch or spuriously; XS_EDEADLINE once the deadline has passed.
 * If the calling thread has a park hook (a pool worker), the hook's block
 * runs before the sleep and its unblock after it, so the pool can lend the
 * worker's slot to another thread while this one sleeps.
 */
int xs__park_wait(_Atomic uint32_t *addr, uint32_t expected, int64_t deadline);

/* xs__park_wait without the hook: for the pool's own idle sleeps. */
int xs__park_sleep(_Atomic uint32_t *addr, uint32_t expected, int64_t deadline);

/*
 * Wakes up to n threads parked on addr (n = INT32_MAX: all of them).  It
 * never dereferences addr, so a waker may call it after the word's memory
 * has been freed by a waiter that saw the change (it then wakes nobody, or
 * causes a spurious wake-up that every waiter tolerates).
 */
void xs__park_wake(_Atomic uint32_t *addr, int n);

/*
 * The park hook: a per-thread pair of callbacks around every sleep in
 * xs__park_wait.  While they run the thread has no hook, so a wait inside
 * them (or inside anything between xs__park_swap_hook(NULL) and restoring
 * it) is not reported again.  They must not hold a lock across the sleep.
 */
typedef struct xs__park_hook {
    void (*block)(struct xs__park_hook *h);   /* about to sleep */
    void (*unblock)(struct xs__park_hook *h); /* woke up */
} xs__park_hook;

/* Sets the calling thread's hook (NULL: none) and returns the previous one. */
xs__park_hook *xs__park_swap_hook(xs__park_hook *h);

/*
 * A mutex in one word: 0 free, 1 held, 2 held with sleepers.  Acquire has
 * acquire semantics and release has release semantics, as for any mutex.
 * Zero-initialised is unlocked.  Not recursive.
 */
typedef struct xs__lock {
    _Atomic uint32_t word;
} xs__lock;

void xs__lock_slow(xs__lock *l);
void xs__unlock_slow(xs__lock *l);

static inline void xs__lock_acquire(xs__lock *l)
{
    uint32_t expect = 0;
    if (!atomic_compare_exchange_strong_explicit(&l->word, &expect, 1, memory_order_acquire,
                                                 memory_order_relaxed))
        xs__lock_slow(l);
}

static inline void xs__lock_release(xs__lock *l)
{
    if (atomic_exchange_explicit(&l->word, 0, memory_order_release) == 2)
        xs__unlock_slow(l);
}

#endif
