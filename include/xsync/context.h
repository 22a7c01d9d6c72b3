/*
 * xsync/context.h — cancellation, deadlines and request-scoped values
 * (Go's package context).
 *
 * A context is a node in a tree.  Cancelling a node cancels every descendant
 * before xs_ctx_cancel returns; the first cancellation to reach a node wins
 * and fixes its error and cause for good.  Contexts are reference counted:
 * every constructor hands out one reference, which the caller gives back with
 * xs_ctx_release.  A child keeps its ancestors' memory alive (values and
 * deadlines stay reachable while any descendant lives) but not their
 * liveness: releasing the last reference to a cancellable context cancels it
 * and its descendants (they see XS_ECANCELED) and detaches it from its
 * parent, even while children are still held; its memory goes with the last
 * child.  Nothing stays registered anywhere.
 *
 * Errors and causes are int codes.  A context's error is 0 while it is live,
 * then XS_ECANCELED or XS_EDEADLINE.  Its cause is the code given to the
 * cancellation that ended it (positive user codes welcome), or the error
 * itself when none was given.
 *
 * Thread-safety: every function may be called from any thread on any
 * context the caller holds a reference to.  After fork(), the child process
 * keeps working (deadlines keep firing) as long as no other thread of the
 * parent was inside a context call at the moment of the fork.  Memory ordering: a thread that
 * observes a context done (through xs_ctx_done, xs_ctx_err, xs_ctx_wait, its
 * fd, or an after-function running) also observes everything the cancelling
 * thread did before it called xs_ctx_cancel.
 */
#ifndef XSYNC_CONTEXT_H
#define XSYNC_CONTEXT_H

#include <stdbool.h>
#include <stdint.h>

#include <xsync/export.h>
#include <xsync/time.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef struct xs_ctx xs_ctx;
typedef struct xs_ctx_after xs_ctx_after;

/* The root: never cancelled, no values, no deadline, the system clock.  A
 * static object: retain and release are no-ops on it.  Never NULL. */
XS_API xs_ctx *xs_ctx_background(void);

/*
 * A cancellable child of `parent`.  If the parent is already done, the child
 * is born done with the parent's error and cause.  Returns 0 and one
 * reference in *out; XS_EINVAL (parent or out NULL) or XS_ENOMEM, with the
 * parent unaffected.  Allocation: one block from the process default
 * allocator.
 */
XS_API int xs_ctx_with_cancel(xs_ctx *parent, xs_ctx **out);

/*
 * A cancellable child that ends by itself with XS_EDEADLINE when the clock
 * of `parent` (see xs_ctx_with_clock) reaches `deadline`, even if nobody is
 * waiting.  `cause` (0: XS_EDEADLINE) becomes its cause when the deadline is
 * what ends it.  A deadline at or before now: born done.  A deadline later
 * than the parent's changes nothing: the child reports and obeys the
 * parent's.  Errors as xs_ctx_with_cancel.
 */
XS_API int xs_ctx_with_deadline(xs_ctx *parent, int64_t deadline, int cause, xs_ctx **out);

/* xs_ctx_with_deadline(parent, now + timeout, cause, out).  A negative
 * timeout is XS_EINVAL; 0 gives a context born done. */
XS_API int xs_ctx_with_timeout(xs_ctx *parent, int64_t timeout, int cause, xs_ctx **out);

/*
 * A child carrying (key, value).  Keys compare by pointer identity: use the
 * address of a static object of your own.  The value is borrowed: keep it
 * alive as long as the context.  A NULL value is a value (it shadows outer
 * ones).  XS_EINVAL for a NULL parent, key or out; XS_ENOMEM.
 */
XS_API int xs_ctx_with_value(xs_ctx *parent, const void *key, void *value, xs_ctx **out);

/*
 * A child that keeps the parent's values but is never cancelled and has no
 * deadline (Go's WithoutCancel).  Errors as xs_ctx_with_value.
 */
XS_API int xs_ctx_without_cancel(xs_ctx *parent, xs_ctx **out);

/*
 * A child whose descendants measure deadlines on `clock` (a manual clock in
 * tests); it is otherwise the same as its parent.  The clock must outlive
 * every context that arms a deadline on it.  XS_EINVAL for NULL arguments.
 */
XS_API int xs_ctx_with_clock(xs_ctx *parent, xs_clock *clock, xs_ctx **out);

/*
 * Cancels ctx and all its descendants with XS_ECANCELED and `cause` (0: the
 * cause is XS_ECANCELED too), runs its after-functions each on a thread of
 * its own, makes its fd readable and wakes its waiters — all before
 * returning, except that it never waits for an after-function to finish.
 * Cancelling a context that is already done changes nothing and returns 0.
 * XS_EINVAL if ctx is NULL or not cancellable (background, value, clock or
 * without_cancel contexts).
 */
XS_API int xs_ctx_cancel(xs_ctx *ctx, int cause);

/* 0 while live, then XS_ECANCELED or XS_EDEADLINE.  NULL: XS_EINVAL. */
XS_API int xs_ctx_err(const xs_ctx *ctx);

/* 0 while live, then the cause (see above).  NULL: XS_EINVAL. */
XS_API int xs_ctx_cause(const xs_ctx *ctx);

/* Whether ctx is done: one or two loads, never blocks.  NULL: false. */
XS_API bool xs_ctx_done(const xs_ctx *ctx);

/* Stores ctx's deadline in *deadline and returns true, or returns false if
 * it has none (deadline untouched; may be NULL).  The deadline is on the
 * clock it was set on: under xs_ctx_with_clock, a deadline inherited from
 * above the clock context is on the outer clock. */
XS_API bool xs_ctx_deadline(const xs_ctx *ctx, int64_t *deadline);

/* The clock the context's deadlines are measured on. NULL: the system clock. */
XS_API xs_clock *xs_ctx_clock(const xs_ctx *ctx);

/*
 * Looks `key` up from ctx towards the root; the nearest match wins.
 * Returns 0 with the value in *value (which may be NULL), XS_ENOENT when no
 * context on the way carries the key, XS_EINVAL for NULL ctx or key.
 */
XS_API int xs_ctx_value(const xs_ctx *ctx, const void *key, void **value);

/*
 * Blocks until ctx is done or `timeout` ns of real time (XS_FOREVER: no
 * limit) have passed, and returns xs_ctx_err(ctx) at that moment (0 if the
 * timeout passed first).  XS_EINVAL for NULL or a negative timeout.
 */
XS_API int xs_ctx_wait(xs_ctx *ctx, int64_t timeout);

/*
 * Arranges for fn(arg) to run on a new thread once ctx is done (at once if
 * it already is; never if ctx can never be done).  If stop is not NULL it
 * receives a handle that must be passed to xs_ctx_after_stop exactly once;
 * pass NULL if you will never stop it.  0, XS_EINVAL (ctx or fn NULL),
 * XS_ENOMEM.  If no thread can be started, fn runs in the thread that
 * found ctx done (the canceller, the deadline's timer thread, or the
 * registering thread): keep after-functions short if that matters.
 */
XS_API int xs_ctx_after_func(xs_ctx *ctx, void (*fn)(void *arg), void *arg, xs_ctx_after **stop);

/*
 * Stops the after-function and frees the handle (so a second call on the
 * same handle is undefined, as for free()).  Returns true if this call kept
 * fn from running; false if ctx was already done (fn has started or will
 * start on its own thread).  NULL: false.
 */
XS_API bool xs_ctx_after_stop(xs_ctx_after *h);

/*
 * A file descriptor that becomes readable (POLLIN) when ctx is done and stays
 * readable; it never becomes readable for a context that cannot be done.  It
 * belongs to the context: do not read, write or close it; it is valid while
 * you hold your reference.  Created on first use.  Returns the fd, or
 * XS_EINVAL, XS_EMFILE, XS_ENOMEM.
 */
XS_API int xs_ctx_fd(xs_ctx *ctx);

/* Adds a reference and returns ctx.  NULL: NULL. */
XS_API xs_ctx *xs_ctx_retain(xs_ctx *ctx);

/* Gives back a reference.  The last one cancels a cancellable context (as
 * xs_ctx_cancel(ctx, 0)), detaches it and frees it.  NULL: no-op.  Giving
 * back more references than were taken is undefined, as for free(). */
XS_API void xs_ctx_release(xs_ctx *ctx);

#ifdef __cplusplus
}
#endif
#endif
