/*
 * context_internal.h — how the library's own blocking calls hear about a
 * context ending, without a thread or an allocation per wait.
 *
 * A waiter embeds an xs__ctx_waiter, registers it before it sleeps and
 * unregisters it when it wakes.  fn runs in the cancelling thread, with the
 * context's lock held: it must be short, must not block and must not call
 * into the context (typically: set a flag, xs__park_wake).
 */
#ifndef XSYNC_CONTEXT_INTERNAL_H
#define XSYNC_CONTEXT_INTERNAL_H

#include <stdbool.h>

#include <xsync/context.h>

#include "internal.h"

typedef struct xs__ctx_waiter {
    void (*fn)(struct xs__ctx_waiter *w);
    xs__dnode link;                    /* private */
    bool armed;                        /* private */
} xs__ctx_waiter;

/*
 * Registers w (w->fn set by the caller).  Returns false, registering
 * nothing, if ctx is already done; true otherwise (for a context that can
 * never end, true and nothing to undo: xs__ctx_unwatch is still correct).
 * The caller must hold a reference to ctx until xs__ctx_unwatch returns.
 */
bool xs__ctx_watch(xs_ctx *ctx, xs__ctx_waiter *w);

/*
 * Unregisters w.  When it returns, fn is not running and will never run.
 * Returns true if w was still registered (fn never ran).
 */
bool xs__ctx_unwatch(xs_ctx *ctx, xs__ctx_waiter *w);

#endif
