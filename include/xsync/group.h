/*
 * xsync/group.h — errgroup: run tasks on a pool, wait for all of them, keep
 * the first error (Go's golang.org/x/sync/errgroup), with a limit on active
 * tasks, plus two things Go declined: a collect mode that reports every
 * task's error, and stopping new tasks once the group has failed.
 *
 * A task is `int fn(xs_ctx *ctx, void *arg)`: ctx is the group's derived
 * context (borrowed for the call), the return value its error (0: success;
 * use positive codes for your own errors).  The first non-zero result
 * cancels the derived context with that result as its cause; xs_group_wait
 * returns it.  Tasks run on the group's pool; every wait of the group is a
 * library wait, so a task may call go or wait on other groups (groups of
 * groups of blocking tasks finish) — see pool.h.
 *
 * Thread-safety: go, try_go and wait may be called from any thread,
 * including the group's own tasks; set_limit and free follow the rules at
 * each.  Memory ordering: everything a task did happens-before xs_group_wait
 * returns; everything before go happens-before the task runs.
 */
#ifndef XSYNC_GROUP_H
#define XSYNC_GROUP_H

#include <stddef.h>

#include <xsync/alloc.h>
#include <xsync/error.h>
#include <xsync/context.h>
#include <xsync/export.h>
#include <xsync/pool.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef struct xs_group xs_group;

typedef int (*xs_group_fn)(xs_ctx *ctx, void *arg);

/* Flags for xs_group_opts.flags. */
enum {
    /* Every task runs to the end; errors do not cancel the derived context;
     * xs_group_wait_errs reports each task's result by submission index,
     * and wait returns the lowest-index error.  The group keeps a small
     * record (about 32 bytes) per task until the next wait. */
    XS_GROUP_COLLECT = 1u << 0,
    /* Once a task has failed, go and try_go return XS_ECANCELED without
     * running anything. */
    XS_GROUP_STOP_ON_FAILURE = 1u << 1,
    /* While the limit is full, go runs the group's queued tasks on the
     * calling thread instead of waiting for another thread to finish one:
     * far faster for short tasks (no thread hand-off per task).  Only for
     * groups whose tasks never wait for something the caller of go does
     * after go returns — such a task, run by go itself, would wait forever
     * (in Go another task finishing would have let go return). */
    XS_GROUP_GO_HELPS = 1u << 2,
};

/*
 * Options; a NULL pointer or zero fields take the defaults.
 *   pool   where tasks run (NULL: xs_pool_default())
 *   limit  > 0: at most that many active tasks; 0: no limit (Go's default).
 *          To refuse every task use xs_group_set_limit(g, 0).
 *   flags  XS_GROUP_* above
 *   alloc  the group's allocator (NULL: the process default)
 */
typedef struct xs_group_opts {
    xs_pool *pool;
    int limit;
    unsigned flags;
    const xs_allocator *alloc;
} xs_group_opts;

/* Largest limit accepted; also the most tasks a group can have active. */
#define XS_GROUP_MAX_LIMIT ((1 << 28) - 2)

/*
 * Creates a group whose derived context is a cancellable child of `parent`
 * (NULL: background).  *ctx_out (may be NULL) receives the derived context,
 * borrowed: it stays valid until xs_group_free (xs_ctx_retain it to keep it
 * longer).  Returns 0; XS_EINVAL (out NULL, limit < 0 or too large, unknown
 * flags); XS_ENOMEM (memory, or the default pool could not start).
 */
XS_API int xs_group_new(xs_ctx *parent, const xs_group_opts *opts, xs_group **out,
                        xs_ctx **ctx_out);

/* The derived context, borrowed (see xs_group_new).  NULL: NULL. */
XS_API xs_ctx *xs_group_ctx(const xs_group *g);

/*
 * Starts fn(ctx, arg) on the pool.  Blocks while the limit is full — a
 * library wait that lends the caller's pool slot to another thread, so
 * calling it from a task of the same group does not starve the pool (with
 * limit 1 that task waits for itself forever, as in Go).  On a full limit
 * the task is handed to the next task of the group that ends, which runs it
 * at once in its own slot and thread (no queue, no wake-up: see pool.h,
 * "Order"); go returns as soon as it has started, as Go's does.  Blocked
 * goers take turns at the hand-off in no promised order.  With
 * XS_GROUP_STOP_ON_FAILURE a go that overlaps the first failure may still
 * start its task.  It never runs a
 * task in the caller (that task might wait for what the caller does next)
 * unless the group has XS_GROUP_GO_HELPS.  Returns 0; XS_EINVAL (g or fn NULL);
 * XS_ELIMIT at once when the limit is 0 (Go blocks forever); XS_ECANCELED
 * with XS_GROUP_STOP_ON_FAILURE once a task failed; XS_ENOMEM; XS_EOVERFLOW
 * (too many active tasks); XS_ECLOSED (the pool is being freed).  On error
 * nothing was started.
 */
XS_API int xs_group_go(xs_group *g, xs_group_fn fn, void *arg);

/*
 * As xs_group_go but never blocks: XS_EAGAIN when the limit is full (Go's
 * TryGo returning false), other errors as xs_group_go.
 */
XS_API int xs_group_try_go(xs_group *g, xs_group_fn fn, void *arg);

/*
 * Sets the limit on active tasks: n > 0 at most n, n == 0 refuse every
 * task, n < 0 no limit.  Allowed only while no task is active: otherwise
 * XS_EBUSY with the limit unchanged (Go panics).  XS_EINVAL for NULL or
 * n > XS_GROUP_MAX_LIMIT.
 */
XS_API int xs_group_set_limit(xs_group *g, int n);

/*
 * Blocks until every task started so far (including tasks started by
 * tasks while it waits) has returned — helping to run the group's queued
 * tasks meanwhile — then cancels the derived context (cause: the result)
 * and returns the first error, or 0.  The error stays: later waits return
 * it again.  In collect mode it returns instead the lowest-index error
 * among the tasks started since the previous wait.  XS_EINVAL for NULL.
 * The group may be used again after wait (its context stays done).
 */
XS_API int xs_group_wait(xs_group *g);

/*
 * xs_group_wait that, in collect mode, also stores in errs[i] (i < n) the
 * result of the i-th task started since the previous wait (submission
 * order: the order in which go/try_go calls succeeded); entries for tasks
 * that did not exist are set to 0.  Outside collect mode errs is left
 * alone.  Call it while no other thread is starting tasks.
 */
XS_API int xs_group_wait_errs(xs_group *g, int *errs, size_t n);

/*
 * Frees the group and releases its derived context (a task or caller that
 * retained it keeps its own reference).  Call it after wait: while tasks
 * are active it returns XS_EBUSY and frees nothing.  NULL: 0.
 */
XS_API int xs_group_free(xs_group *g);

#ifdef __cplusplus
}
#endif
#endif
