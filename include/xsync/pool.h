/*
 * xsync/pool.h — the task runtime: a work-stealing pool of threads that
 * keeps running queued tasks while some of its tasks block.
 *
 * A task is a function and an argument.  A pool has `workers` run slots (one
 * per CPU for the default pool): a thread takes a slot to start a task, so
 * at most that many threads start tasks at once; a thread that blocked and
 * gave its slot away finishes its current task without one (so for a moment
 * more threads than slots may be computing) and takes a slot again before
 * its next task.  Every
 * wait of the library (group wait, a full group's go, semaphore acquire,
 * singleflight wait, context wait, the library's internal locks) and every
 * region between xs_pool_block_begin and xs_pool_block_end hands the
 * thread's slot to another thread — an idle one, or a stand-in started for
 * the purpose — when tasks are queued; the blocked thread gets a slot back
 * after its task returns.  Stand-ins are capped (`max_standins`).
 *
 * Blocking the library cannot see (a plain pthread_barrier, a read on a
 * socket) is caught by the starvation watchdog: once every `watchdog`
 * period (default 10 ms) while tasks are queued and every slot is held, a
 * thread that has been inside the same task for a whole period without
 * using CPU time loses its slot to another thread.  So a queued task starts
 * within about two periods per `workers` unannounced blocked tasks ahead of
 * it (100 tasks in a plain pthread_barrier on 2 workers: about 1 s), as
 * long as the cap allows threads.  Tasks that compute are never disturbed.
 * Announce blocking instead wherever you can: it costs nothing to wait for.
 *
 * Threads: the first starts with the pool, the others when work is queued
 * and a slot is free but no thread is idle.  A thread, once started, stays
 * (asleep when idle) until the pool is freed; at most workers +
 * max_standins exist.  When every one of them is blocked, queued tasks wait
 * for one to return.
 *
 * Order: tasks submitted from outside the pool go to a shared queue, which
 * workers take from oldest first in batches (within a batch, newest first);
 * tasks submitted by a task of the pool go to its worker's own queue, run
 * newest first by that worker and oldest first by thieves.  A thread
 * waiting for a group (xs_group_wait) may run that group's queued tasks
 * itself, newest first.  A group task that ends may run, on its thread
 * and in its slot, the task of a go blocked on the group's full limit
 * (group.h), and so on one after another — until tasks wait in the shared
 * queue or in that thread's own queue, or the thread has lost its slot.  No
 * other order is promised.
 *
 * Memory ordering: everything a thread did before xs_pool_submit
 * happens-before the task runs.  Idle threads sleep without spinning (a few
 * microseconds of polling first); an idle pool uses no CPU.
 */
#ifndef XSYNC_POOL_H
#define XSYNC_POOL_H

#include <stdint.h>

#include <xsync/alloc.h>
#include <xsync/error.h>
#include <xsync/export.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef struct xs_pool xs_pool;

/* Default stand-in cap and watchdog period. */
#define XS_POOL_DEFAULT_STANDINS 256
#define XS_POOL_DEFAULT_WATCHDOG (10 * 1000 * 1000) /* ns */

/*
 * Options for xs_pool_new; zero fields take the defaults.
 *   workers       run slots (0: one per online CPU); at most 4096
 *   max_standins  extra threads for slots lent by blocked threads
 *                 (0: XS_POOL_DEFAULT_STANDINS); at most 65536
 *   watchdog      period in ns (0: XS_POOL_DEFAULT_WATCHDOG; < 0: no
 *                 watchdog thread at all)
 *   alloc         the pool's allocator (NULL: the process default)
 */
typedef struct xs_pool_opts {
    int workers;
    int max_standins;
    int64_t watchdog;
    const xs_allocator *alloc;
} xs_pool_opts;

/*
 * The process-wide pool with the default options, created on first use and
 * never freed (its idle threads sleep).  Returns NULL only if it could not
 * be created (out of memory or threads); a later call tries again.
 * Thread-safe.  After fork the child gets a new default pool on first use
 * (tasks queued in the parent do not run in the child); private pools do
 * not survive fork — free them only in the parent.
 */
XS_API xs_pool *xs_pool_default(void);

/*
 * Creates a pool (opts NULL: defaults) and starts its first thread and its
 * watchdog; further threads start on demand.  Returns 0 and the pool in
 * *out, XS_EINVAL (out NULL, an option out of range) or XS_ENOMEM (memory
 * or threads), with nothing left behind.
 */
XS_API int xs_pool_new(const xs_pool_opts *opts, xs_pool **out);

/*
 * Closes the pool, waits for every queued and running task to finish —
 * including tasks those tasks submit, which the pool still accepts — then
 * stops its threads and frees it.  While it waits, submissions from
 * threads that are not the pool's own fail with XS_ECLOSED.  Blocking.
 * Returns 0; XS_EINVAL for NULL or the default pool; XS_EBUSY when called
 * from one of the pool's own threads (it would wait for itself), with the
 * pool unchanged.  The pool must not be used once this returns, and
 * whatever runs tasks on it (groups) must be done with it before the call.
 */
XS_API int xs_pool_free(xs_pool *pool);

/*
 * Queues fn(arg) to run once on one of the pool's threads.  Never blocks
 * for long (a short lock; it may start a thread).  Returns 0;
 * XS_EINVAL (pool or fn NULL); XS_ENOMEM when the shared queue cannot grow
 * (the task is not queued); XS_ECLOSED when xs_pool_free has begun and the
 * caller is not one of the pool's threads.  Thread-safe.
 */
XS_API int xs_pool_submit(xs_pool *pool, void (*fn)(void *arg), void *arg);

/*
 * Marks the start and the end of a blocking call the library cannot see
 * (read(2), a pthread_cond_wait, ...) made by a task.  Between the two the
 * calling thread's run slot goes to another thread if tasks are waiting.
 * Pairs nest; calls from a thread that is not a pool thread do nothing.
 * Cheap when nothing is queued.  Never fails.
 */
XS_API void xs_pool_block_begin(void);
XS_API void xs_pool_block_end(void);

/*
 * Statistics, each a snapshot that may be stale when it returns: threads
 * started and alive, and the configured run slots.  NULL: 0.
 */
XS_API int xs_pool_threads(const xs_pool *pool);
XS_API int xs_pool_workers(const xs_pool *pool);

#ifdef __cplusplus
}
#endif
#endif
