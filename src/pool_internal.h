/*
 * pool_internal.h — what other modules may ask of the pool beyond its
 * public API.
 */
#ifndef XSYNC_POOL_INTERNAL_H
#define XSYNC_POOL_INTERNAL_H

#include <stdbool.h>

#include <xsync/pool.h>

/*
 * Helping: runs, in the calling thread, one task of `pool` whose function is
 * `fn` and for which match(arg, data) is true, if one is at hand — the
 * newest task of the caller's own queue when the caller is one of the
 * pool's threads, else the newest task of the pool's shared queue — and
 * returns true; returns false, running nothing, otherwise.  Only tasks the
 * waiter is waiting for anyway should match (a group helps with its own
 * tasks), so helping never delays the waiter behind unrelated work.
 */
bool xs__pool_help(xs_pool *pool, void (*fn)(void *), bool (*match)(void *arg, void *data),
                   void *data);

#endif
