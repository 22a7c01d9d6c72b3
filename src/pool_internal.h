/*
 * pool_internal.h — what other modules may ask of the pool beyond its
 * public API.
 */
#ifndef XSYNC_POOL_INTERNAL_H
#define XSYNC_POOL_INTERNAL_H

#include <stdbool.h>

#include <xsync/pool.h>

/* Any function pointer, cast back to its real type before the call. */
typedef void (*xs__fn)(void);

/* A task the pool runs as run(f, a, b). */
typedef void (*xs__task_run)(xs__fn f, void *a, void *b);

/* xs_pool_submit for a task of that shape (no allocation either way). */
int xs__pool_submit_task(xs_pool *pool, xs__task_run run, xs__fn f, void *a, void *b);

/*
 * Helping: runs, in the calling thread, one queued task of `pool` whose
 * runner is `run` and whose `b` is `b`, if one is at hand — the newest
 * task of the caller's own queue when the caller is one of the pool's
 * threads, else the newest task of the pool's shared queue — and returns
 * true; returns false, running nothing, otherwise.  Only tasks the waiter is
 * waiting for anyway should match (a group helps with its own tasks), so
 * helping never delays the waiter behind unrelated work.  Nested helping is
 * bounded (deeper waits park instead).
 */
bool xs__pool_help(xs_pool *pool, xs__task_run run, const void *b);

/*
 * For a task about to run more work of its own in the same slot (a group
 * running tasks handed to it one after another): true when it should stop
 * and let its thread return to the pool — the calling pool thread no longer
 * holds a run slot (it blocked, or the watchdog took it), or tasks wait in
 * the shared queue or in its own queue.  False outside the pool's threads
 * (a thread helping in a wait is an extra thread, not a pool slot).
 */
bool xs__pool_should_yield(void);

/* For tests: threads asleep as idle right now (a snapshot). */
int xs__pool_idle_threads(const xs_pool *pool);

#endif
