/*
 * xsync/semaphore.h — a weighted semaphore (Go's semaphore.Weighted), plus
 * resizing.
 *
 * A semaphore has a size and hands out weight: acquire(n) blocks until n
 * units fit beside the weight already held, release(n) gives units back.
 * Waiters are served in strict arrival order: a request at the head of the
 * queue that does not fit yet blocks every smaller request behind it, so a
 * large request (a "writer" taking the whole size) is never starved by a
 * stream of small ones, and try_acquire never jumps the queue.  A request
 * larger than the size can never be served; it waits for its context
 * without blocking anyone (and joins the queue if a resize makes it fit).
 *
 * Weights are int64_t in [0, XS_SEM_MAX]; anything else is XS_EINVAL.
 * Weight 0 follows Go: acquire(0) succeeds once nobody is queued ahead of it
 * and the semaphore is not over-committed by a shrink; release(0) does
 * nothing.
 *
 * Thread-safety: every function may be called from any thread, except
 * xs_sem_free, which must not race with any other call on the semaphore.
 * Memory ordering: a successful acquire synchronizes with the releases
 * whose weight it was granted — everything a thread did before
 * xs_sem_release(n) happens before the return of an acquire that obtained
 * any of those n units, as with a mutex.
 *
 * Cost: uncontended acquire, try_acquire and release are lock-free (one
 * compare-and-swap on one word) and allocate nothing; a blocked acquire
 * allocates nothing either (its queue node lives on its own stack).
 */
#ifndef XSYNC_SEMAPHORE_H
#define XSYNC_SEMAPHORE_H

#include <stdint.h>

#include <xsync/alloc.h>
#include <xsync/context.h>
#include <xsync/export.h>

#ifdef __cplusplus
extern "C" {
#endif

/* The largest size and the largest weight of one call: 2^61 - 1. */
#define XS_SEM_MAX ((INT64_C(1) << 61) - 1)

typedef struct xs_sem xs_sem;

/*
 * Creates a semaphore of the given size (0 .. XS_SEM_MAX; 0 is a closed gate
 * that a resize can open) with no weight held.  alloc NULL: the process
 * default, kept for the semaphore's life; one allocation.  Returns 0 and the
 * semaphore in *out; XS_EINVAL (out NULL or size out of range) or XS_ENOMEM,
 * with *out untouched.
 */
XS_API int xs_sem_new(int64_t size, const xs_allocator *alloc, xs_sem **out);

/*
 * Frees the semaphore.  Weight still held is simply forgotten (as when a Go
 * semaphore is dropped).  No call on s may be in progress or start later —
 * including a release that has already granted your acquire but may not
 * have returned yet: join the threads that use s first.  As a safety net,
 * returns XS_EBUSY and frees nothing if it sees an acquire blocked on s.
 * NULL: no-op, 0.
 */
XS_API int xs_sem_free(xs_sem *s);

/*
 * Acquires weight n, blocking until it is granted or ctx is done.  Returns 0
 * on success; on failure the semaphore is unchanged and the result is
 * xs_ctx_err(ctx) (XS_ECANCELED or XS_EDEADLINE).  A context that is
 * already done fails at once even if the weight is free.  If the context
 * ends while the grant is in flight, the weight is given back and the call
 * fails, so a failed acquire never holds anything.  A request that does not
 * fit waits in FIFO order behind those already waiting; n > size waits only
 * for ctx (see above).  XS_EINVAL: s or ctx NULL (use xs_ctx_background() to
 * wait without limit), n out of range.  The caller must hold its reference to
 * ctx for the duration of the call.
 */
XS_API int xs_sem_acquire(xs_sem *s, xs_ctx *ctx, int64_t n);

/*
 * Acquires weight n only if it can be done at once: nobody is waiting and n
 * fits.  Never blocks (beyond a short internal lock), never jumps the queue.
 * Returns 0 if acquired, XS_EAGAIN if not (nothing changed), XS_EINVAL for
 * NULL s or n out of range.
 */
XS_API int xs_sem_try_acquire(xs_sem *s, int64_t n);

/*
 * Gives back weight n and grants waiters, in order, as long as the head
 * fits.  Never blocks (beyond a short internal lock).  Returns 0, or
 * XS_EINVAL (nothing changed) for NULL s, n out of range, or releasing more
 * than is held (Go panics here).  The check is on the total held: the
 * semaphore does not know who holds what.  A release has release semantics.
 */
XS_API int xs_sem_release(xs_sem *s, int64_t n);

/*
 * Changes the size to `size` (0 .. XS_SEM_MAX).  Growing grants the waiters
 * that now fit, in order.  Shrinking never takes weight back: holders keep
 * what they have and release it as usual, and acquires wait until the held
 * weight has dropped enough to fit under the new size.  Waiters larger than
 * the new size leave the queue (they no longer block anyone); waiters that
 * fit again after a later grow rejoin it in their original arrival order.
 * Returns 0 or XS_EINVAL (NULL s, size out of range).
 *
 * Concurrency: acquires and try_acquires are ordered exactly with a resize.
 * The over-release check of a release that runs concurrently with a shrink
 * may use the size from before the shrink (so a release that would over-
 * release only under the new size can slip through); correct programs,
 * which never over-release, are unaffected.
 */
XS_API int xs_sem_resize(xs_sem *s, int64_t size);

/* The current size, or XS_EINVAL for NULL.  One atomic load. */
XS_API int64_t xs_sem_size(const xs_sem *s);

/*
 * The weight held at this moment (may exceed the size after a shrink), or
 * XS_EINVAL for NULL.  A snapshot: other threads may change it at once.
 * Takes the internal lock briefly (to read size and weight consistently).
 */
XS_API int64_t xs_sem_held(xs_sem *s);

/*
 * The number of acquire calls blocked on s at this moment (queued or
 * waiting oversize), or XS_EINVAL for NULL.  A snapshot, as above.  A call
 * counts from the moment it is queued until it is granted or gives up.
 */
XS_API int64_t xs_sem_waiters(const xs_sem *s);

#ifdef __cplusplus
}
#endif
#endif
