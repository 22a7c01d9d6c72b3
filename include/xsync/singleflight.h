/*
 * xsync/singleflight.h — call deduplication (Go's x/sync/singleflight) that
 * survives cancellation.
 *
 * A group runs at most one call per key at a time.  The first caller of a
 * key starts the call; callers of the same key that arrive while it runs
 * join it, wait, and receive the same result with `shared` set.  Once the
 * call has finished (or been forgotten) the next caller starts a new one.
 *
 * Keys are byte strings of 0 to XS_SF_KEY_MAX bytes, copied: the caller's
 * buffer may be reused as soon as a call returns.
 *
 * Contexts (beyond Go).  Every caller passes its own context.  A waiter
 * whose context ends returns its error (XS_ECANCELED, XS_EDEADLINE) at once;
 * the other callers keep waiting.  The function runs under a context of the
 * call's own, which ends only when every caller interested in the call has
 * gone, so one caller's cancellation never poisons the result the others
 * get.  When everybody has gone the call is abandoned: it is removed from
 * the group at that moment, so the next caller of the key starts a fresh
 * call and never sees the abandoned one's result or error.  The function's
 * context carries the values of the context of the caller that started the
 * call, but not its cancellation or deadline.  If that caller's context is
 * xs_ctx_background(), nobody can make the call lose all its callers before
 * it returns, and the function receives that context itself.
 *
 * Results and ownership.  The function returns an int (0 or your error; use
 * positive codes) and may hand back a value and that value's destructor.
 * Results are reference counted: every caller that receives one holds a
 * reference, given back with xs_sf_result_release; the destructor runs
 * exactly once, in the thread that gives back the last reference, after
 * every holder is done — including when no caller is left to receive the
 * result (an abandoned call).  Memory ordering: a caller that receives a
 * result sees everything the function did before it returned, and the
 * destructor sees everything every holder did before releasing.
 *
 * Errors.  Bad input — a NULL group, context, function or result, a NULL
 * key with a nonzero length, a key longer than XS_SF_KEY_MAX — is XS_EINVAL
 * and changes nothing.  XS_ENOMEM leaves the group exactly as it was: no
 * call is started or joined.  Every function is thread-safe except
 * xs_sf_free.  The function may call into the group (other keys; calling
 * its own key from inside it waits for itself, as in Go, until the caller's
 * context ends).
 */
#ifndef XSYNC_SINGLEFLIGHT_H
#define XSYNC_SINGLEFLIGHT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <xsync/alloc.h>
#include <xsync/context.h>
#include <xsync/error.h>
#include <xsync/export.h>

#ifdef __cplusplus
extern "C" {
#endif

/* The longest key, in bytes. */
#define XS_SF_KEY_MAX 65536

typedef struct xs_sf xs_sf;

/* Frees a value a function handed back (free() fits). */
typedef void (*xs_sf_value_free)(void *value);

/*
 * The function a call runs.  `ctx` is the call's context (see the file
 * comment), valid until the function returns (a context of the call's own
 * is cancelled then): retain it to keep it longer.
 * It may set *value and *value_free (both NULL on entry); the value, if
 * any, is owned by the result from then on and passed to value_free once,
 * whatever the returned code.  Returns 0 or an error of yours.
 */
typedef int (*xs_sf_fn)(xs_ctx *ctx, void *arg, void **value, xs_sf_value_free *value_free);

/*
 * What a caller receives.  `value` and `err` are what the function handed
 * back and returned; `shared` is Go's: true when the result was given to
 * more than one caller (always true for a caller that joined a running
 * call).  A result holds one reference to the value: give it back with
 * xs_sf_result_release, exactly once per reference (copying the struct does
 * not add one; xs_sf_result_retain does).
 */
typedef struct xs_sf_result {
    void *value;
    int err;
    bool shared;
    void *ref_; /* private: the call, or NULL when the result is empty */
} xs_sf_result;

/*
 * The completion callback of xs_sf_do_async.  `err` is what xs_sf_do would
 * have returned; `res` is filled as xs_sf_do fills it, and the callback owns
 * its reference (release it, or copy the struct and release the copy
 * later).  It runs in the thread that finished the call, or, when the
 * caller's context ends first, on a thread of its own.
 */
typedef void (*xs_sf_done_fn)(void *done_arg, int err, xs_sf_result *res);

/* A hash function for tests (constant or truncated hashes): the group is
 * correct with any function, fast only with a good one. */
typedef uint64_t (*xs_sf_hash_fn)(const void *key, size_t len, uint64_t seed);

typedef struct xs_sf_options {
    const xs_allocator *allocator; /* NULL: the process default, read once */
    uint64_t seed;                 /* hash seed; 0: a random seed for this group */
    xs_sf_hash_fn hash;            /* NULL: the built-in keyed hash */
} xs_sf_options;

/*
 * Creates a group.  opts may be NULL (all defaults).  Returns 0 and the group
 * in *out; XS_EINVAL (out NULL); XS_ENOMEM.  Allocation: one block.  Each
 * call then allocates one block for itself and its key; unless the starting
 * caller's context is xs_ctx_background(), also the call's own context (two
 * blocks) and an after-function on the caller's context (when that context
 * ends, its after-function runs on a thread of its own).  Each
 * xs_sf_do_async caller allocates a record, and an after-function unless its
 * context is the background.  Contexts and after-functions come from the
 * process default allocator.  Calling xs_sf_free from inside a call's
 * function is not allowed (it would wait for itself).
 */
XS_API int xs_sf_new(const xs_sf_options *opts, xs_sf **out);

/*
 * Frees the group.  Calls that everybody has left may still be running
 * (their function has seen its context end): this blocks until they have
 * returned and the group's internal threads are done, so once it returns 0
 * nothing of the group runs any more.  Results still held stay valid, and
 * use the group's allocator until released.  XS_EBUSY, changing nothing,
 * while a call of the group still has a caller waiting for it (a pending
 * do_async callback included) and when called from a done callback.  NULL:
 * 0.  Not thread-safe: no other thread may be inside a function of this
 * group.
 */
XS_API int xs_sf_free(xs_sf *sf);

/*
 * Runs fn(call context, arg, ...) once for all concurrent callers of `key`
 * and fills *res.  The first caller (the leader) runs fn in its own thread
 * and returns when fn returns, with fn's result, even if its context ended
 * meanwhile (it then no longer counts as interested: fn keeps running for
 * the others, or sees its context end if there are none).  A caller that
 * joins a running call blocks until the result arrives or its own context
 * ends; in the latter case it returns xs_ctx_err(ctx) at once with an empty
 * *res — unless the result arrived first.
 *
 * Returns the function's code when a result was received (res->err, 0 on
 * success), or XS_ECANCELED / XS_EDEADLINE (ctx ended: a context already
 * done on entry neither starts nor joins a call), XS_EINVAL, XS_ENOMEM with
 * an empty *res.  Either way xs_sf_result_release(res) is correct afterwards.
 * The caller must hold its reference to ctx for the duration of the call.
 */
XS_API int xs_sf_do(xs_sf *sf, xs_ctx *ctx, const void *key, size_t keylen, xs_sf_fn fn, void *arg,
                    xs_sf_result *res);

/*
 * Go's DoChan: as xs_sf_do, but never blocks; done(done_arg, err, &res) is
 * called exactly once with what xs_sf_do would have returned — if and only
 * if this returns 0.  A new call runs fn on a thread of its own (if no thread
 * can be started, in the calling thread before this returns).  The caller
 * stays interested until done is called; if ctx ends first, done is called
 * with xs_ctx_err(ctx) and an empty result, on a thread of its own.  ctx is
 * retained as long as needed: the caller may release it at once.  Returns 0;
 * XS_ECANCELED / XS_EDEADLINE when ctx is already done; XS_EINVAL (done NULL,
 * or as xs_sf_do); XS_ENOMEM.
 */
XS_API int xs_sf_do_async(xs_sf *sf, xs_ctx *ctx, const void *key, size_t keylen, xs_sf_fn fn,
                          void *arg, xs_sf_done_fn done, void *done_arg);

/*
 * Go's Forget: the running call for key, if any, is no longer found by new
 * callers, which start a fresh call; the forgotten call finishes for the
 * callers it already has (golang/go#31420).  Returns 0, XS_ENOENT when no
 * call for key is running, XS_EINVAL.  Never blocks for long.
 */
XS_API int xs_sf_forget(xs_sf *sf, const void *key, size_t keylen);

/*
 * The number of callers still interested in the running call for key (the
 * leader while its context is live or its do_async callback is pending, and
 * every waiter), 0 when no call for key is registered; XS_EINVAL.  A
 * snapshot, for metrics and tests.
 */
XS_API int xs_sf_interested(xs_sf *sf, const void *key, size_t keylen);

/*
 * Gives back the reference *res holds and empties *res.  An empty result
 * (and NULL) is a no-op.  When this was the last reference anywhere, the
 * value's destructor runs here.  Release (in the memory-order sense): see
 * the file comment.
 */
XS_API void xs_sf_result_release(xs_sf_result *res);

/*
 * Makes *out a second holder of the result *res holds (one more reference).
 * *out is overwritten, not released.  Returns 0, or XS_EINVAL when res or
 * out is NULL or *res is empty.
 */
XS_API int xs_sf_result_retain(const xs_sf_result *res, xs_sf_result *out);

#ifdef __cplusplus
}
#endif
#endif
