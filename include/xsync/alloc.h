/*
 * xsync/alloc.h — the allocator hook.
 *
 * Every allocation xsync makes goes through an xs_allocator.  Objects take one
 * in their options (NULL: the process-wide default, read once at creation and
 * kept for the object's whole life, so an object always frees with the
 * allocator it allocated with).  Tests inject failures through it and
 * benchmarks count bytes and allocations through it.
 */
#ifndef XSYNC_ALLOC_H
#define XSYNC_ALLOC_H

#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>

#include <xsync/export.h>

#ifdef __cplusplus
extern "C" {
#endif

/*
 * An allocator: `alloc` returns `size` bytes aligned for any object type, or
 * NULL on failure; `free` releases a block, given the same size it was
 * allocated with (never NULL).  Both must be thread-safe.  The struct must
 * outlive every object that uses it.
 */
typedef struct xs_allocator {
    void *(*alloc)(void *state, size_t size);
    void (*free)(void *state, void *ptr, size_t size);
    void *state;
} xs_allocator;

/* The allocator backed by malloc/free. */
XS_API const xs_allocator *xs_allocator_libc(void);

/* The process-wide default (initially xs_allocator_libc()).  Thread-safe. */
XS_API const xs_allocator *xs_allocator_default(void);

/*
 * Sets the process-wide default; NULL restores xs_allocator_libc().  Objects
 * created afterwards use it; existing objects keep theirs.  Thread-safe
 * (release store; a creator that reads the new value sees it initialised).
 * Returns the previous default.
 */
XS_API const xs_allocator *xs_allocator_set_default(const xs_allocator *a);

/*
 * A counting allocator for tests and benchmarks: it forwards to `inner`,
 * counts calls and bytes, and can be told to fail allocations.  Initialise
 * with xs_alloc_counter_init and pass &c->allocator wherever an allocator is
 * taken.  Every field may be read with atomic loads at any time.
 *
 *   fail_at     fail the fail_at-th allocation counted from now (1 = the
 *               next one); 0 never fails.  Set with xs_alloc_counter_fail_at.
 *   fail_all    after fail_at triggers, keep failing every later allocation
 *               too (otherwise only that one fails).
 */
typedef struct xs_alloc_counter {
    xs_allocator allocator;          /* pass &c->allocator to objects */
    const xs_allocator *inner;
    _Atomic int64_t allocs;          /* successful allocations */
    _Atomic int64_t frees;
    _Atomic int64_t bytes;           /* bytes allocated in total */
    _Atomic int64_t live_bytes;      /* allocated minus freed */
    _Atomic int64_t failures;        /* allocations refused */
    _Atomic int64_t countdown;       /* internal: calls left before a failure */
    _Atomic int fail_all;
} xs_alloc_counter;

/* inner NULL: xs_allocator_libc(). */
XS_API void xs_alloc_counter_init(xs_alloc_counter *c, const xs_allocator *inner);

/* Arms a failure at the k-th allocation from now (k >= 1), or disarms (k = 0). */
XS_API void xs_alloc_counter_fail_at(xs_alloc_counter *c, int64_t k, int fail_all);

#ifdef __cplusplus
}
#endif
#endif
